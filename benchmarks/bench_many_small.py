"""Many small fits: B problems of a 4-parameter Gaussian + offset, 64 points each.

    python benchmarks/bench_many_small.py [--sizes 1e3,1e4] [--repeats 3] [--methods ...]
                                          [--dtype float64|float32]

Truth per problem: amplitude U(1, 3), centre U(-1, 1), width U(0.5, 1.5),
offset U(-0.5, 0.5); noise sd 0.05; start: truth perturbed by 20% of the
amplitude/width and 0.3 in centre and offset. Each (method, B) runs in its
own subprocess. Reported: fits per second (warm, median of --repeats),
compile (first call minus warm), and the success fraction: problems whose
fitted parameters are all within 0.1 of the truth (noise alone gives errors
of about 0.01; a wrong local minimum misses by far more). The scipy loop is
timed on 200 problems and extrapolated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

N_POINTS = 64
METHODS = ("hybrid_gn fit_batch", "hybrid_gn vmap(fit)", "optimistix LM", "jaxopt LM",
           "scipy loop")
SCIPY_SAMPLE = 200


def problems(b: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = np.stack([rng.uniform(1, 3, b), rng.uniform(-1, 1, b), rng.uniform(0.5, 1.5, b),
                      rng.uniform(-0.5, 0.5, b)], axis=1)
    x = np.linspace(-4.0, 4.0, N_POINTS)
    y = _gauss_np(x[None, :], *truth.T[..., None]) + 0.05 * rng.standard_normal((b, N_POINTS))
    start = truth + np.stack([0.2 * truth[:, 0], rng.uniform(-0.3, 0.3, b), 0.2 * truth[:, 2],
                              rng.uniform(-0.3, 0.3, b)], axis=1) * rng.choice([-1, 1], (b, 4))
    return x, y, truth, start


def _gauss_np(x, a, mu, s, c):
    return a * np.exp(-0.5 * ((x - mu) / s) ** 2) + c


def _runner(method: str, x, y, start, dtype: str = "float64"):
    if method == "scipy loop":
        from scipy.optimize import curve_fit

        def run():
            out = np.empty((SCIPY_SAMPLE, 4))
            for i in range(SCIPY_SAMPLE):
                try:
                    out[i] = curve_fit(_gauss_np, x, y[i], p0=start[i])[0]
                except RuntimeError:
                    out[i] = np.nan
            return out

        return run

    import jax
    import jax.numpy as jnp

    # float32 runs with x64 off, as a float32 user would (optimistix mixes in float64
    # scalars otherwise); hybrid_gn leaves x64 alone when JAX_ENABLE_X64 is set
    os.environ["JAX_ENABLE_X64"] = "1" if dtype == "float64" else "0"
    jax.config.update("jax_enable_x64", dtype == "float64")
    xj, yj, sj = (jnp.asarray(a, dtype) for a in (x, y, start))

    def model(p, x):
        a, mu, s, c = p
        return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + c

    if method == "hybrid_gn fit_batch":
        import hybrid_gn

        xb = jnp.broadcast_to(xj, yj.shape)

        def solve(y, p0):
            return hybrid_gn.fit_batch(model, p0, xb, y).params
    elif method == "hybrid_gn vmap(fit)":
        import hybrid_gn

        solve = jax.jit(jax.vmap(lambda y, p0: hybrid_gn.fit(model, p0, xj, y).params))
    elif method == "optimistix LM":
        import optimistix as optx

        solver = optx.LevenbergMarquardt(rtol=1e-8, atol=1e-8)

        def one(y, p0):
            sol = optx.least_squares(lambda p, y: model(p, xj) - y, solver, p0, args=y,
                                     max_steps=200, throw=False)
            return sol.value

        solve = jax.jit(jax.vmap(one))
    elif method == "jaxopt LM":
        import jaxopt

        def one(y, p0):
            lm = jaxopt.LevenbergMarquardt(lambda p, y: model(p, xj) - y, maxiter=200,
                                           tol=1e-8)
            return lm.run(p0, y).params

        solve = jax.jit(jax.vmap(one))
    else:
        raise ValueError(method)

    def run():
        return np.asarray(jax.block_until_ready(solve(yj, sj)))

    return run


def child(method: str, b: int, repeats: int, dtype: str) -> dict:
    x, y, truth, start = problems(b)
    run = _runner(method, x, y, start, dtype)
    t0 = time.perf_counter()
    params = run()
    first = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        params = run()
        warm.append(time.perf_counter() - t0)
    fitted = len(params)
    ok = np.all(np.abs(params - truth[:fitted]) < 0.1, axis=1)
    w = float(np.median(warm))
    import jax

    print(f"# {method}: jax {jax.__version__} on {jax.devices()[0].device_kind}", file=sys.stderr)
    return {"method": method, "B": b, "dtype": dtype, "fits_per_s": fitted / w,
            "warm": w * b / fitted, "compile": max(first - w, 0.0),
            "success": float(np.mean(ok))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e3,1e4")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--b", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.b, args.repeats, args.dtype)))
        return
    rows = []
    for b in (int(float(s)) for s in args.sizes.split(",")):
        for method in args.methods.split(","):
            cmd = [sys.executable, __file__, "--child", method, "--b", str(b),
                   "--repeats", str(args.repeats), "--dtype", args.dtype]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                     timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"  {method:20s} B={b:.0e} timed out after {args.timeout} s", flush=True)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(out.stderr.strip().splitlines()[-1], flush=True)
            r = rows[-1]
            print(f"  {method:20s} B={b:.0e} {r['fits_per_s']:10.0f} fits/s  compile "
                  f"{r['compile']:.1f} s  success {r['success']:.3f}", flush=True)
    print("\n| B | method | fits/s | warm s (all B) | compile s | success | fit_batch speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ref = next((q for q in rows if q["B"] == r["B"] and q["method"] == METHODS[0]), None)
        ratio = f"{ref['fits_per_s'] / r['fits_per_s']:.2f}" if ref else "-"
        print(f"| {r['B']:.0e} | {r['method']} | {r['fits_per_s']:.0f} | {r['warm']:.2f} | "
              f"{r['compile']:.1f} | {r['success']:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
