"""Demo: fit a Gaussian peak on a linear background to a few million points.

    python -m hybrid_gn [--n 3000000] [--seed 0]

The data are generated on the fly from known parameters plus Gaussian noise,
so the printout compares each fitted parameter (± its standard error) with
the truth, then shows the phase timeline and the wall time.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import hybrid_gn
from hybrid_gn import Phase, Status, WarmupReason

NAMES = ("amplitude", "centre", "width", "offset", "slope")
TRUTH = np.array([3.0, 5.0, 0.8, 0.5, 0.1])
START = np.array([2.0, 4.6, 1.1, 0.2, 0.0])
NOISE = 0.2


def peak_on_background(p, x):
    """a * exp(-(x - mu)^2 / (2 s^2)) + b0 + b1 * x."""
    a, mu, s, b0, b1 = p
    return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 10.0, n)
    y = np.asarray(peak_on_background(TRUTH, x)) + NOISE * rng.standard_normal(n)
    return x, y


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hybrid_gn", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=3_000_000, help="number of data points")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    x, y = make_data(args.n, args.seed)
    x, y = jnp.asarray(x), jnp.asarray(y)
    print(f"hybrid_gn {hybrid_gn.__version__} on {jax.devices()[0].platform}: "
          f"{args.n:,} points of a 5-parameter peak on a linear background, noise sd {NOISE}")

    t0 = time.perf_counter()
    result = jax.block_until_ready(hybrid_gn.fit(peak_on_background, jnp.asarray(START), x, y))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = jax.block_until_ready(hybrid_gn.fit(peak_on_background, jnp.asarray(START), x, y))
    warm = time.perf_counter() - t0

    params, perr = np.asarray(result.params), np.asarray(result.perr)
    print(f"\n{'parameter':10s} {'fitted':>12s} {'± std err':>11s} {'truth':>8s} "
          f"{'|dev|/err':>10s}")
    for name, p, e, t in zip(NAMES, params, perr, TRUTH, strict=True):
        print(f"{name:10s} {p:12.6f} {e:11.2e} {t:8.3f} {abs(p - t) / e:10.2f}")

    trace = result.trace
    phases = np.asarray(trace.phase)[: int(trace.length)]
    costs = np.asarray(trace.cost)[: int(trace.length)]
    print("\nphase timeline")
    warm_costs = costs[phases == Phase.WARMUP]
    mode = hybrid_gn.WarmupMode(int(result.warmup_mode)).name.lower()
    print(f"  L-BFGS warmup  {int(result.warmup_iterations):3d} iterations ({mode} first step)"
          f"{f', mean loss {warm_costs[-1]:.4e} on a subsample' if len(warm_costs) else ''}"
          f"  -> {WarmupReason(int(result.warmup_reason)).message}")
    print(f"  Gauss-Newton   {int(result.gn_iterations):3d} iterations, "
          f"cost {float(result.cost):.6e}"
          f"  -> {Status(int(result.status)).message}")
    print(f"  passes over the data: {int(result.passes)}")
    print(f"\nwall time: {first:.2f} s first call (includes compilation), {warm:.2f} s warm")


if __name__ == "__main__":
    main()
