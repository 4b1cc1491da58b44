"""Cost of a gradient through the fit, relative to the fit itself.

    python benchmarks/bench_gradient.py [--repeats 5]

Two cases, each timed warm (median of --repeats) in one process:

* one fit of a 5-parameter peak on n = 1e5 points: `fit` against
  `jax.grad` (reverse) and `jax.jacfwd` (forward) of the fitted centre with
  respect to y, and `jax.grad` with respect to a model argument;
* 1e3 small Gaussian fits under `jax.vmap`: the batched fit against the
  batched gradient of each fitted centre with respect to that problem's y.

The gradient includes the fit (it needs the solution), so the ratio
gradient / fit is the whole price of the derivative; the implicit function
theorem adds one Hessian and one linear solve at the solution, not the
iterations. Target: at most 2.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import hybrid_gn


def peak(p, x, shift=0.0):
    a, mu, s, b0, b1 = p
    return a * jnp.exp(-0.5 * ((x - mu - shift) / s) ** 2) + b0 + b1 * x


def gauss(p, x):
    a, mu, s, c = p
    return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + c


def timed(f, *args, repeats: int) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    n = 100_000
    x = jnp.asarray(rng.uniform(0, 10, n))
    truth = jnp.asarray([3.0, 5.0, 0.8, 0.5, 0.1])
    y = peak(truth, x) + 0.2 * jnp.asarray(rng.standard_normal(n))
    p0 = jnp.asarray([2.0, 4.6, 1.1, 0.2, 0.0])

    def centre(y):
        return hybrid_gn.fit(peak, p0, x, y).params[1]

    def centre_args(shift):
        return hybrid_gn.fit(lambda p, x, s: peak(p, x, s), p0, x, y, args=shift).params[1]

    fit_only = jax.jit(centre)
    rows = [("one fit, n = 1e5", "fit", timed(fit_only, y, repeats=args.repeats))]
    for name, f, arg in (("grad wrt y (reverse)", jax.jit(jax.grad(centre)), y),
                         ("jacfwd wrt y[:5] (forward, 5 tangents)",
                          jax.jit(lambda y5: jax.jacfwd(lambda v: centre(y.at[:5].set(v)))(y5)),
                          y[:5]),
                         ("grad wrt model argument", jax.jit(jax.grad(centre_args)),
                          jnp.asarray(0.0))):
        rows.append(("one fit, n = 1e5", name, timed(f, arg, repeats=args.repeats)))

    b, m = 1000, 64
    xs = jnp.linspace(-4.0, 4.0, m)
    truths = jnp.stack([rng.uniform(1, 3, b), rng.uniform(-1, 1, b), rng.uniform(0.5, 1.5, b),
                        rng.uniform(-0.5, 0.5, b)], axis=1)
    ys = jax.vmap(lambda p: gauss(p, xs))(truths) + 0.05 * jnp.asarray(
        rng.standard_normal((b, m)))
    starts = truths * jnp.asarray(rng.uniform(0.8, 1.2, (b, 4)))

    def small_centre(y, p0):
        return hybrid_gn.fit(gauss, p0, xs, y).params[1]

    rows.append(("1e3 small fits, vmap", "fit",
                 timed(jax.jit(jax.vmap(small_centre)), ys, starts, repeats=args.repeats)))
    rows.append(("1e3 small fits, vmap", "grad wrt y (reverse)",
                 timed(jax.jit(jax.vmap(jax.grad(small_centre))), ys, starts,
                       repeats=args.repeats)))

    print("| case | computation | warm s | / fit |")
    print("|---|---|---|---|")
    base = {}
    for case, name, seconds in rows:
        base.setdefault(case, seconds)
        print(f"| {case} | {name} | {seconds:.4f} | {seconds / base[case]:.2f} |")


if __name__ == "__main__":
    main()
