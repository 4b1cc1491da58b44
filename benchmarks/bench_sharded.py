"""One large fit with its points split over a mesh, against the same fit on one device.

    python benchmarks/bench_sharded.py --sizes 1e6,1e7 --devices 4   # RESULTS.md
    python benchmarks/bench_sharded.py [--repeats 3] [--timeout 1800]

The large-n model (a peak on a linear background, 5 parameters, float64, x on a grid over
[0, 10], noise sd 0.2). Each (layout, n) runs in a fresh subprocess with `--devices` host
CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count`): `fit` on one device
and `fit(..., mesh=)` over all of them. On a CPU the forced devices share its cores, so
this measures the overhead of the split (the per-pass all-reduce, the program's shape),
not a speed-up; on real devices each holds 1/N of the points and of the pass time.
"""

from __future__ import annotations

import argparse

import harness
import numpy as np

TRUTH = np.array([3.0, 5.0, 0.8, 0.5, 0.1])
START = np.array([2.0, 4.6, 1.1, 0.2, 0.0])


def measure(layout: str, n: int, repeats: int) -> dict:
    """The first and warm wall times of one fit, its iterations and parameters."""
    import jax
    import jax.numpy as jnp

    import hybrid_gn

    def model(p, x):
        a, mu, s, b0, b1 = p
        return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x

    x = np.linspace(0.0, 10.0, n)
    y = np.asarray(model(TRUTH, x)) + 0.2 * np.random.default_rng(0).standard_normal(n)
    mesh = jax.make_mesh((jax.device_count(),), ("data",)) if layout == "mesh" else None
    x, y = jnp.asarray(x), jnp.asarray(y)

    def run():
        return hybrid_gn.fit(model, jnp.asarray(START), x, y, mesh=mesh)

    first, warm = harness.time_calls(run, repeats)
    result = warm.result
    return {"first": first.seconds[0], "warm": warm.seconds,
            "iterations": f"{int(result.warmup_iterations)}+{int(result.gn_iterations)}",
            "params": [float(v) for v in result.params], "devices": jax.device_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e6,1e7")
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={args.devices}"}
    rows = []
    for n in (int(float(s)) for s in args.sizes.split(",")):
        reference = None
        for layout in ("one device", "mesh"):
            out = harness.in_subprocess(measure, layout, n, args.repeats, timeout=args.timeout,
                                        env=env)
            if not out.ok:
                rows.append([harness.sci(n), layout, out.describe(), "–", "–", "–", "–"])
                continue
            v = out.value
            params = np.asarray(v["params"])
            reference = params if reference is None else reference
            deviation = float(np.max(np.abs(params / reference - 1)))
            rows.append([harness.sci(n), f"{layout} ({v['devices']} devices)",
                         harness.Stats.of(v["warm"]).text(".3f"), f"{v['first']:.2f}",
                         v["iterations"], f"{deviation:.1e}",
                         f"{out.max_rss_mib:.0f}" if out.max_rss_mib else "–"])
    print(harness.markdown_table(
        ["n", "layout", "warm s", "first s", "iterations", "max rel. dev. from one device",
         "process peak MB"], rows))


if __name__ == "__main__":
    main()
