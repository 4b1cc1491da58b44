"""Cost of the streamed data digest next to the accumulation it rides along with.

    PYTHONPATH=. python3 benchmarks/bench_digest.py --repeats 30   # RESULTS.md
    python benchmarks/bench_digest.py [--chunk 262144] [--timeout 600]

Every chunk of a streamed pass is folded into J^T J, J^T r and the cost (`_fold`)
and into the data digest that ties checkpoints to their data (`_digest.fold`).
Both are timed warm on the same device chunk (median of --repeats, after a first call)
for two models, each in its own subprocess (`harness.in_subprocess`): a cheap
5-parameter peak (the digest's worst case relative to the fold) and a 2-D x with 8
parameters. Printed: ns per point of each (median, min–max) and the ratio of the medians.
"""

from __future__ import annotations

import argparse

import harness
import numpy as np

CASES = ("peak, x (n,), p = 5", "plane, x (n, 2), p = 8")


def peak(p, x):
    import jax.numpy as jnp

    a, mu, s, b0, b1 = p
    return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x


def plane(p, x):
    import jax.numpy as jnp

    a, mx, my, s, b0, b1, b2, c = p
    r2 = (x[:, 0] - mx) ** 2 + (x[:, 1] - my) ** 2
    return a * jnp.exp(-0.5 * r2 / s**2) + b0 + b1 * x[:, 0] + b2 * x[:, 1] + c * r2


def _case(name: str, chunk: int):
    rng = np.random.default_rng(0)
    if name == CASES[0]:
        return peak, np.array([2.0, 4.6, 1.1, 0.2, 0.0]), np.linspace(0, 10, chunk)
    return (plane, np.array([2.0, 0.1, -0.2, 1.0, 0.1, 0.0, 0.0, 0.0]),
            rng.uniform(-3, 3, (chunk, 2)))


def measure(name: str, chunk: int, repeats: int) -> dict:
    """Seconds per point of the fold and of the digest of one chunk, warm."""
    import jax
    import jax.numpy as jnp

    import hybrid_gn  # noqa: F401  (float64 on)
    from hybrid_gn import _digest, _pipeline
    from hybrid_gn._config import Config
    from hybrid_gn._data import make_data
    from hybrid_gn._drivers import _stream_steps as steps
    from hybrid_gn._phases import _accumulate as accumulate
    from hybrid_gn._validate import check_fit

    model, p0, x = _case(name, chunk)
    n = x.shape[0]
    y = np.asarray(model(jnp.asarray(p0) * 1.1, jnp.asarray(x)))
    w = np.ones(n)
    config = Config()
    inputs = check_fit(model, p0, x, y, None, None, True, config)
    sample = make_data(x, y, None, config.chunk_size, jnp.float64).subsample(
        config.warmup_max_points)
    setup = _pipeline.make_setup(inputs.model, jnp.asarray(p0), None, inputs.model_args,
                                 config, jnp.float64, sample, n)
    u = setup.problem.u0
    xd, yd, wd = jax.device_put((x, y, w))
    acc = accumulate.empty_accumulator(len(p0), jnp.float64, False)
    _, fold = harness.time_calls(lambda: steps.fold(setup, u, acc, xd, yd, wd), repeats)
    _, digest = harness.time_calls(lambda: _digest.fold(_digest.empty(), 0, xd, yd, wd),
                                   repeats)
    return {"fold": [t / n for t in fold.seconds], "digest": [t / n for t in digest.seconds]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=1 << 18)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per model")
    args = parser.parse_args()
    rows = []
    for name in CASES:
        out = harness.in_subprocess(measure, name, args.chunk, args.repeats,
                                    timeout=args.timeout)
        if not out.ok:
            rows.append([name, out.describe(), None, None])
            continue
        fold, digest = (harness.Stats.of(out.value[k]) for k in ("fold", "digest"))
        rows.append([name, fold.text(".2f", 1e9), digest.text(".2f", 1e9),
                     f"{digest.median / fold.median:.3f}"])
    print(f"chunk of {args.chunk} points, median (min–max) of {args.repeats}")
    print(harness.markdown_table(
        ["model", "fold ns/point", "digest ns/point", "digest / fold"], rows))


if __name__ == "__main__":
    main()
