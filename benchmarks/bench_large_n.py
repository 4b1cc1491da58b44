"""Large-n benchmark: one 5-parameter peak fit at n = 1e5, 1e6, 1e7 points.

    python benchmarks/bench_large_n.py --sizes 1e5,1e6,1e7 --repeats 3   # RESULTS.md
    python benchmarks/bench_large_n.py [--methods ...] [--runs 1] [--timeout 1800] [--out FILE]

Model y = a exp(-(x - mu)^2 / (2 s^2)) + b0 + b1 x, truth (3, 5, 0.8, 0.5, 0.1),
start (2, 4.6, 1.1, 0.2, 0), noise sd 0.2, float64, x on a grid over [0, 10]. Every
(method, n) runs in its own subprocess (`harness.in_subprocess`; `--runs` of them, medians
over the runs), so compile time and peak memory are clean; a run past `--timeout` is
reported as timed out:

- first: wall time of the first call (tracing, compiling and one run);
- warm: median (min–max) wall time of `--repeats` further calls;
- compile: first minus the median warm call; XLA compile: the time XLA spent compiling
  during the first call (JAX's backend-compile events; tracing not included) and the
  number of programs compiled. A warm call that compiles again is reported below the table;
- warm peak / first-call peak: peak RSS minus the RSS just before, via
  /proc/self/clear_refs and VmHWM (Linux), for the warm calls (the solver's working
  memory; data already in memory) and for the first call (which adds the compiler's);
  process peak: the whole subprocess's ru_maxrss (interpreter, libraries and data too);
- one pass: the library's own jitted pass computing the normal equations
  (QR factor, Q^T r and cost) over all n points, the floor of any fit.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import harness
import numpy as np

TRUTH = np.array([3.0, 5.0, 0.8, 0.5, 0.1])
START = np.array([2.0, 4.6, 1.1, 0.2, 0.0])
NOISE = 0.2
METHODS = ("hybrid_gn", "hybrid_gn normal", "hybrid_gn no-warmup", "one pass",
           "scipy trf", "scipy lm", "optimistix LM")


# ----------------------------------------------------------------- in the child


def _data(n: int):
    rng = np.random.default_rng(0)
    x = np.linspace(0.0, 10.0, n)
    a, mu, s, b0, b1 = TRUTH
    y = a * np.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x + NOISE * rng.standard_normal(n)
    return x, y


def _numpy_model(x, a, mu, s, b0, b1):
    return a * np.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x


def _numpy_jac(x, a, mu, s, b0, b1):
    z = (x - mu) / s
    g = np.exp(-0.5 * z**2)
    return np.stack([g, a * g * z / s, a * g * z**2 / s, np.ones_like(x), x], axis=1)


def _make_runner(method: str, x, y):
    """A function fitting (x, y) once, returning (params, cost, iterations, passes)."""
    if method.startswith("scipy"):
        return _scipy_runner(method.split()[1], x, y)
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    if method.startswith("hybrid_gn"):
        return _hybrid_runner(method, xj, yj)
    builders = {"one pass": _one_pass_runner, "optimistix LM": _optimistix_runner}
    if method not in builders:
        raise ValueError(f"unknown method {method!r}")
    return builders[method](xj, yj)


def _jax_model(p, x):
    import jax.numpy as jnp

    a, mu, s, b0, b1 = p
    return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x


def _scipy_runner(algo: str, x, y):
    from scipy.optimize import curve_fit

    def run():
        popt, _, info, _, _ = curve_fit(_numpy_model, x, y, p0=START, method=algo,
                                        full_output=True)
        r = info["fvec"]
        return popt, 0.5 * float(r @ r), int(info["nfev"]), int(info["nfev"])

    return run


def _hybrid_runner(method: str, xj, yj):
    import jax
    import jax.numpy as jnp

    import hybrid_gn

    config = {"hybrid_gn": hybrid_gn.Config(),
              "hybrid_gn normal": hybrid_gn.Config(factorization="normal"),
              "hybrid_gn no-warmup": hybrid_gn.Config(warmup=False)}[method]
    p0 = jnp.asarray(START)

    def run():
        r = jax.block_until_ready(hybrid_gn.fit(_jax_model, p0, xj, yj, config=config))
        iters = f"{int(r.warmup_iterations)}+{int(r.gn_iterations)}"
        return np.asarray(r.params), float(r.cost), iters, int(r.passes)

    return run


def _one_pass_runner(xj, yj):
    import jax
    import jax.numpy as jnp

    import hybrid_gn
    from hybrid_gn._data import make_data
    from hybrid_gn._phases import _accumulate as accumulate

    config = hybrid_gn.Config()

    @jax.jit
    def one_pass(p, x, y):
        data = make_data(x, y, None, config.chunk_size, jnp.float64)

        def residual(u, xc, yc, wc):
            return jnp.where(wc > 0, wc * (_jax_model(u, xc) - yc), 0)

        return accumulate.linearize(residual, p, data, "forward", config.factorization)

    p0 = jnp.asarray(START)

    def run():
        lin = jax.block_until_ready(one_pass(p0, xj, yj))
        return START, float(lin.cost), 0, 1

    return run


def _optimistix_runner(xj, yj):
    import jax
    import jax.numpy as jnp
    import optimistix as optx

    solver = optx.LevenbergMarquardt(rtol=1e-10, atol=1e-10)

    @jax.jit
    def solve(p0, x, y):
        sol = optx.least_squares(lambda p, args: _jax_model(p, args[0]) - args[1], solver, p0,
                                 args=(x, y), max_steps=1000, throw=False)
        r = _jax_model(sol.value, x) - y
        return sol.value, 0.5 * r @ r, sol.stats["num_steps"]

    p0 = jnp.asarray(START)

    def run():
        value, cost, steps = jax.block_until_ready(solve(p0, xj, yj))
        return np.asarray(value), float(cost), int(steps), int(steps)

    return run


def measure(method: str, n: int, repeats: int) -> dict:
    """One (method, n) in this process: the first call, then `repeats` warm calls, each
    with its peak RSS above the RSS just before it."""
    x, y = _data(n)
    run = _make_runner(method, x, y)
    with harness.PeakRSS() as first_peak:
        first = harness.timed_calls(run)
    with harness.PeakRSS() as warm_peak:
        warm = harness.timed_calls(run, repeats)
    params, cost, iterations, passes = warm.result
    return {"method": method, "n": n, "first": first.seconds[0], "warm": warm.seconds,
            "xla_compile": first.compile_s, "compiles": first.compiles,
            "warm_compiles": warm.compiles, "memory_mb": warm_peak.mib,
            "first_memory_mb": first_peak.mib, "data_mb": (x.nbytes + y.nbytes) / 2**20,
            "params": list(map(float, params)), "cost": cost, "iterations": str(iterations),
            "passes": passes}


# ---------------------------------------------------------------- in the parent


@dataclass
class Row:
    """One (method, n) over its runs; `failed` is set when a run timed out or raised."""

    method: str
    n: int
    outcomes: list[harness.Outcome]

    @property
    def failed(self) -> harness.Outcome | None:
        return harness.failure(self.outcomes)

    @property
    def first(self) -> dict:
        return self.outcomes[0].value

    def stats(self, key: str) -> harness.Stats:
        stats = harness.pooled(self.outcomes, key)
        assert stats is not None
        return stats

    @property
    def compile(self) -> harness.Stats:
        """First call minus the median warm call, per run."""
        return harness.Stats.of(max(o.value["first"] - np.median(o.value["warm"]), 0.0)
                                for o in self.outcomes)

    @property
    def process_peak(self) -> harness.Stats:
        return harness.Stats.of(o.max_rss_mib for o in self.outcomes)


HEADER = ["method", "warm s", "first s", "compile s", "XLA compile s (programs)",
          "warm peak MB", "first-call peak MB", "process peak MB", "iterations", "passes",
          "warm / one pass", "max rel. dev. from ref", "cost − ref cost"]


def _cells(r: Row, ref: Row | None, one: Row | None) -> list:
    if r.failed:
        return [r.method, r.failed.describe()] + [None] * (len(HEADER) - 2)
    v = r.first
    warm = r.stats("warm")
    real = r.method != "one pass" and ref is not None
    dev = np.max(np.abs(np.subtract(v["params"], ref.first["params"]))
                 / np.abs(ref.first["params"])) if real else None
    return [r.method, warm.text(".3f"), r.stats("first").text(".2f"), r.compile.text(".2f"),
            r.stats("xla_compile").text(".2f") + f" ({v['compiles']})",
            r.stats("memory_mb").text(".0f"), r.stats("first_memory_mb").text(".0f"),
            r.process_peak.text(".0f"), v["iterations"], v["passes"],
            f"{warm.median / one.stats('warm').median:.1f}" if one else None,
            f"{dev:.1e}" if real else None,
            f"{v['cost'] - ref.first['cost']:.2e}" if real else None]


def table(rows: list[Row]) -> str:
    parts = []
    for n in sorted({r.n for r in rows}):
        group = [r for r in rows if r.n == n]
        good = [r for r in group if not r.failed]
        by = {r.method: r for r in good}
        fits = [r for r in good if r.method != "one pass"]
        ref = min(fits, key=lambda r: r.first["cost"]) if fits else None
        one = by.get("one pass")
        data_mb = 16 * n / 2**20
        parts.append(f"\nn = {harness.sci(n)}  (x and y: {data_mb:.0f} MB; reference = lowest "
                     f"cost, {ref.method if ref else '–'})")
        parts.append(harness.markdown_table(HEADER, [_cells(r, ref, one) for r in group]))
        hy = by.get("hybrid_gn")
        if hy:
            ratios = [f"{m}: {by[m].stats('warm').median / hy.stats('warm').median:.1f}×"
                      for m in ("scipy trf", "scipy lm", "optimistix LM") if m in by]
            parts.append(f"\nhybrid_gn speed-up (warm): {', '.join(ratios)}")
        recompiled = [r.method for r in good if any(o.value["warm_compiles"] for o in r.outcomes)]
        if recompiled:
            parts.append(f"\nrecompiled during the warm calls: {', '.join(recompiled)}")
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e5,1e6,1e7")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=3, help="warm calls per process")
    parser.add_argument("--runs", type=int, default=1,
                        help="fresh processes per (method, n); medians over them")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per process")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    rows = []
    for n in (int(float(s)) for s in args.sizes.split(",")):
        for method in args.methods.split(","):
            outcomes = harness.in_subprocesses(measure, method, n, args.repeats, runs=args.runs,
                                               timeout=args.timeout)
            rows.append(Row(method, n, outcomes))
            r = rows[-1]
            if r.failed:
                print(f"  {method:20s} n={harness.sci(n)} {r.failed.describe()}", flush=True)
                continue
            print(f"  {method:20s} n={harness.sci(n)} warm {r.stats('warm').text()} s first "
                  f"{r.stats('first').text('.2f')} s (XLA compile "
                  f"{r.stats('xla_compile').text('.2f')} s) warm peak "
                  f"{r.stats('memory_mb').text('.0f')} MB iterations {r.first['iterations']}",
                  flush=True)
    harness.write_out(table(rows), args.out)


if __name__ == "__main__":
    main()
