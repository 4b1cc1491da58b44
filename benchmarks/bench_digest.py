"""Cost of the streamed data digest next to the accumulation it rides along with.

    python benchmarks/bench_digest.py [--chunk 262144] [--repeats 30]

Every chunk of a streamed pass is folded into J^T J, J^T r and the cost (`_fold`)
and into the data digest that ties checkpoints to their data (`_digest.fold`).
Both are timed warm on the same device chunk (median of --repeats) for two
models: a cheap 5-parameter peak (the digest's worst case relative to the fold)
and a 2-D x with 8 parameters. Printed: ns per point of each and their ratio.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import hybrid_gn  # noqa: F401  (float64 on)
from hybrid_gn import _digest
from hybrid_gn._config import Config, with_tolerances
from hybrid_gn._drivers import _stream as streaming
from hybrid_gn._phases import _accumulate as accumulate
from hybrid_gn._problem import make_problem
from hybrid_gn._validate import check_fit


def peak(p, x):
    a, mu, s, b0, b1 = p
    return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x


def plane(p, x):
    a, mx, my, s, b0, b1, b2, c = p
    r2 = (x[:, 0] - mx) ** 2 + (x[:, 1] - my) ** 2
    return a * jnp.exp(-0.5 * r2 / s**2) + b0 + b1 * x[:, 0] + b2 * x[:, 1] + c * r2


def median_time(f, repeats: int) -> float:
    jax.block_until_ready(f())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(model, p0, x, repeats: int) -> tuple[float, float]:
    n = x.shape[0]
    y = np.asarray(model(jnp.asarray(p0) * 1.1, jnp.asarray(x)))
    w = np.ones(n)
    config = with_tolerances(Config(), jnp.float64)
    inputs = check_fit(model, p0, x, y, None, None, True, config)
    fixed = streaming._Fixed(inputs.model, jnp.asarray(p0), None, inputs.model_args, config)
    u = make_problem(inputs.model, jnp.asarray(p0), None, config, jnp.float64).u0
    xd, yd, wd = jax.device_put((x, y, w))
    acc = accumulate.empty_accumulator(len(p0), jnp.float64, False)
    fold = median_time(lambda: streaming._fold(fixed, u, acc, xd, yd, wd), repeats)
    digest = median_time(lambda: _digest.fold(_digest.empty(), 0, xd, yd, wd), repeats)
    return fold / n * 1e9, digest / n * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=1 << 18)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cases = {
        "peak, x (n,), p = 5": (peak, np.array([2.0, 4.6, 1.1, 0.2, 0.0]),
                                np.linspace(0, 10, args.chunk)),
        "plane, x (n, 2), p = 8": (plane, np.array([2.0, 0.1, -0.2, 1.0, 0.1, 0.0, 0.0, 0.0]),
                                   rng.uniform(-3, 3, (args.chunk, 2))),
    }
    print(f"chunk of {args.chunk} points, median of {args.repeats}")
    print("| model | fold ns/point | digest ns/point | digest / fold |")
    print("|---|---|---|---|")
    for name, (model, p0, x) in cases.items():
        fold, digest = measure(model, p0, x, args.repeats)
        print(f"| {name} | {fold:.2f} | {digest:.2f} | {digest / fold:.3f} |")


if __name__ == "__main__":
    main()
