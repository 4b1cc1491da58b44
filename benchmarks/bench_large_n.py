"""Large-n benchmark: one 5-parameter peak fit at n = 1e5, 1e6, 1e7 points.

    python benchmarks/bench_large_n.py [--sizes 1e5,1e6,1e7] [--repeats 3] [--out FILE]

Model y = a exp(-(x - mu)^2 / (2 s^2)) + b0 + b1 x, truth (3, 5, 0.8, 0.5, 0.1),
start (2, 4.6, 1.1, 0.2, 0), noise sd 0.2, float64. Every (method, n) runs in
its own subprocess, so compile time and peak memory are clean:

- first: wall time of the first call (includes tracing and compilation);
- warm: median wall time of `--repeats` further calls;
- memory: peak RSS minus the RSS just before, via /proc/self/clear_refs and
  VmHWM (Linux), for the warm calls (the solver's working memory; data
  already in memory) and for the first call (which adds the compiler's);
- one pass: the library's own jitted pass computing the normal equations
  (QR factor, Q^T r and cost) over all n points, the floor of any fit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TRUTH = np.array([3.0, 5.0, 0.8, 0.5, 0.1])
START = np.array([2.0, 4.6, 1.1, 0.2, 0.0])
NOISE = 0.2
METHODS = ("hybrid_gn", "hybrid_gn normal", "hybrid_gn no-warmup", "one pass",
           "scipy trf", "scipy lm", "optimistix LM")


# ----------------------------------------------------------------- in the child


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


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
        from scipy.optimize import curve_fit

        algo = method.split()[1]

        def run():
            popt, _, info, _, _ = curve_fit(_numpy_model, x, y, p0=START, method=algo,
                                            full_output=True)
            r = info["fvec"]
            return popt, 0.5 * float(r @ r), int(info["nfev"]), int(info["nfev"])

        return run

    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def model(p, x):
        a, mu, s, b0, b1 = p
        return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x

    if method.startswith("hybrid_gn"):
        import hybrid_gn

        config = {"hybrid_gn": hybrid_gn.Config(),
                  "hybrid_gn normal": hybrid_gn.Config(factorization="normal"),
                  "hybrid_gn no-warmup": hybrid_gn.Config(warmup=False)}[method]
        p0 = jnp.asarray(START)

        def run():
            r = jax.block_until_ready(hybrid_gn.fit(model, p0, xj, yj, config=config))
            iters = f"{int(r.warmup_iterations)}+{int(r.gn_iterations)}"
            return np.asarray(r.params), float(r.cost), iters, int(r.passes)

        return run

    if method == "one pass":
        import hybrid_gn
        from hybrid_gn._data import make_data
        from hybrid_gn._phases import _accumulate as accumulate

        config = hybrid_gn.Config()

        @jax.jit
        def one_pass(p, x, y):
            data = make_data(x, y, None, config.chunk_size, jnp.float64)

            def residual(u, xc, yc, wc):
                return jnp.where(wc > 0, wc * (model(u, xc) - yc), 0)

            return accumulate.linearize(residual, p, data, "forward", config.factorization)

        p0 = jnp.asarray(START)

        def run():
            lin = jax.block_until_ready(one_pass(p0, xj, yj))
            return START, float(lin.cost), 0, 1

        return run

    if method == "optimistix LM":
        import optimistix as optx

        solver = optx.LevenbergMarquardt(rtol=1e-10, atol=1e-10)

        @jax.jit
        def solve(p0, x, y):
            sol = optx.least_squares(lambda p, args: model(p, args[0]) - args[1], solver, p0,
                                     args=(x, y), max_steps=1000, throw=False)
            r = model(sol.value, x) - y
            return sol.value, 0.5 * r @ r, sol.stats["num_steps"]

        p0 = jnp.asarray(START)

        def run():
            value, cost, steps = jax.block_until_ready(solve(p0, xj, yj))
            return np.asarray(value), float(cost), int(steps), int(steps)

        return run

    raise ValueError(f"unknown method {method!r}")


def child(method: str, n: int, repeats: int) -> dict:
    x, y = _data(n)
    run = _make_runner(method, x, y)
    baseline = _rss_kib("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    params, cost, iterations, passes = run()
    first = time.perf_counter() - t0
    first_peak = _rss_kib("VmHWM") - baseline
    baseline = _rss_kib("VmRSS")
    _reset_peak()
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        params, cost, iterations, passes = run()
        warm.append(time.perf_counter() - t0)
    warm_peak = _rss_kib("VmHWM") - baseline
    return {"method": method, "n": n, "first": first, "warm": float(np.median(warm)),
            "warm_all": warm, "memory_mb": warm_peak / 1024, "first_memory_mb": first_peak / 1024,
            "data_mb": (x.nbytes + y.nbytes) / 2**20, "params": list(map(float, params)),
            "cost": cost, "iterations": str(iterations), "passes": passes}


# ---------------------------------------------------------------- in the parent


def run_child(method: str, n: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--n", str(n), "--repeats", str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = []
    for n in sorted({r["n"] for r in rows}):
        group = [r for r in rows if r["n"] == n]
        by = {r["method"]: r for r in group}
        ref = min((r for r in group if r["method"] != "one pass"), key=lambda r: r["cost"])
        one = by.get("one pass")
        lines += [f"\nn = {n:.0e}  (x and y: {group[0]['data_mb']:.0f} MB; reference = lowest "
                  f"cost, {ref['method']})",
                  "| method | warm s | first s | compile s | warm peak MB | first-call peak MB | "
                  "iterations | passes | warm / one pass | max rel. dev. from ref | "
                  "cost - ref cost |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in group:
            dev = np.max(np.abs(np.subtract(r["params"], ref["params"])) / np.abs(ref["params"]))
            in_passes = f"{r['warm'] / one['warm']:.1f}" if one else "-"
            lines.append(
                f"| {r['method']} | {r['warm']:.3f} | {r['first']:.2f} | "
                f"{max(r['first'] - r['warm'], 0):.2f} | {r['memory_mb']:.0f} | "
                f"{r['first_memory_mb']:.0f} | {r['iterations']} "
                f"| {r['passes']} | {in_passes} | "
                f"{dev if r['method'] != 'one pass' else float('nan'):.1e} | "
                f"{r['cost'] - ref['cost'] if r['method'] != 'one pass' else float('nan'):.2e} |")
        hy = by.get("hybrid_gn")
        if hy:
            ratios = [f"{m}: {by[m]['warm'] / hy['warm']:.1f}x" for m in
                      ("scipy trf", "scipy lm", "optimistix LM") if m in by]
            lines.append(f"\nhybrid_gn speed-up (warm): {', '.join(ratios)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e5,1e6,1e7")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.repeats)))
        return
    rows = []
    for n in (int(float(s)) for s in args.sizes.split(",")):
        for method in args.methods.split(","):
            rows.append(run_child(method, n, args.repeats))
            r = rows[-1]
            print(f"  {method:20s} n={n:.0e} warm {r['warm']:.3f} s first {r['first']:.2f} s "
                  f"mem {r['memory_mb']:.0f} MB iterations {r['iterations']}", flush=True)
    text = table(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
