"""Many small fits: B problems of a 4-parameter Gaussian + offset, 64 points each.

    PYTHONPATH=. python benchmarks/bench_many_small.py --sizes 1e3,1e4 --repeats 3  # RESULTS.md
    python benchmarks/bench_many_small.py [--methods ...] [--dtype float64|float32]
                                          [--timeout 600]

Truth per problem: amplitude U(1, 3), centre U(-1, 1), width U(0.5, 1.5),
offset U(-0.5, 0.5); noise sd 0.05; start: truth perturbed by 20% of the
amplitude/width and 0.3 in centre and offset. Each (method, B) runs in its
own subprocess (`harness.in_subprocess`; one past --timeout is reported as timed out).
Reported: fits per second (warm, median of --repeats), the warm time for all B
(median, min–max), compile (first call minus warm), and the success fraction: problems whose
fitted parameters are all within 0.1 of the truth (noise alone gives errors
of about 0.01; a wrong local minimum misses by far more). The scipy loop is
timed on 200 problems (all of them when B is smaller) and extrapolated.
"""

from __future__ import annotations

import argparse
import os

import harness
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
        return _scipy_loop(x, y, start)
    import jax
    import jax.numpy as jnp

    # float32 runs with x64 off, as a float32 user would (optimistix mixes in float64
    # scalars otherwise); hybrid_gn leaves x64 alone when JAX_ENABLE_X64 is set
    os.environ["JAX_ENABLE_X64"] = "1" if dtype == "float64" else "0"
    jax.config.update("jax_enable_x64", dtype == "float64")
    xj, yj, sj = (jnp.asarray(a, dtype) for a in (x, y, start))
    solvers = {"hybrid_gn fit_batch": _fit_batch, "hybrid_gn vmap(fit)": _vmap_fit,
               "optimistix LM": _optimistix, "jaxopt LM": _jaxopt}
    if method not in solvers:
        raise ValueError(method)
    solve = solvers[method](xj, yj)

    def run():
        return np.asarray(jax.block_until_ready(solve(yj, sj)))

    return run


def _scipy_loop(x, y, start):
    from scipy.optimize import curve_fit

    sample = min(SCIPY_SAMPLE, len(y))

    def run():
        out = np.empty((sample, 4))
        for i in range(sample):
            try:
                out[i] = curve_fit(_gauss_np, x, y[i], p0=start[i])[0]
            except RuntimeError:
                out[i] = np.nan
        return out

    return run


def _jax_model(p, x):
    import jax.numpy as jnp

    a, mu, s, c = p
    return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + c


def _fit_batch(xj, yj):
    import jax.numpy as jnp

    import hybrid_gn

    xb = jnp.broadcast_to(xj, yj.shape)
    return lambda y, p0: hybrid_gn.fit_batch(_jax_model, p0, xb, y).params


def _vmap_fit(xj, yj):
    import jax

    import hybrid_gn

    return jax.jit(jax.vmap(lambda y, p0: hybrid_gn.fit(_jax_model, p0, xj, y).params))


def _optimistix(xj, yj):
    import jax
    import optimistix as optx

    solver = optx.LevenbergMarquardt(rtol=1e-8, atol=1e-8)

    def one(y, p0):
        sol = optx.least_squares(lambda p, y: _jax_model(p, xj) - y, solver, p0, args=y,
                                 max_steps=200, throw=False)
        return sol.value

    return jax.jit(jax.vmap(one))


def _jaxopt(xj, yj):
    import jax
    import jaxopt

    def one(y, p0):
        lm = jaxopt.LevenbergMarquardt(lambda p, y: _jax_model(p, xj) - y, maxiter=200,
                                       tol=1e-8)
        return lm.run(p0, y).params

    return jax.jit(jax.vmap(one))


def measure(method: str, b: int, repeats: int, dtype: str) -> dict:
    """One (method, B) in this process: a first call, then `repeats` warm calls."""
    x, y, truth, start = problems(b)
    run = _runner(method, x, y, start, dtype)
    first, warm = harness.time_calls(run, repeats)
    params = warm.result
    fitted = len(params)
    ok = np.all(np.abs(params - truth[:fitted]) < 0.1, axis=1)
    w = warm.stats.median
    import jax

    return {"method": method, "B": b, "dtype": dtype, "fits_per_s": fitted / w,
            "warm": [t * b / fitted for t in warm.seconds],
            "compile": max(first.seconds[0] - w, 0.0), "success": float(np.mean(ok)),
            "device": f"jax {jax.__version__} on {jax.devices()[0].device_kind}"}


HEADER = ["B", "method", "fits/s", "warm s (all B)", "compile s", "success",
          "fit_batch fits/s ÷ this"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e3,1e4")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    args = parser.parse_args()
    rows, cells = [], []
    for b in (int(float(s)) for s in args.sizes.split(",")):
        for method in args.methods.split(","):
            out = harness.in_subprocess(measure, method, b, args.repeats, args.dtype,
                                        timeout=args.timeout)
            if not out.ok:
                print(f"  {method:20s} B={harness.sci(b)} {out.describe()}", flush=True)
                cells.append([harness.sci(b), method, out.describe(), None, None, None, None])
                continue
            r = out.value
            rows.append(r)
            print(f"  {method:20s} B={harness.sci(b)} {r['fits_per_s']:10.0f} fits/s  compile "
                  f"{r['compile']:.1f} s  success {r['success']:.3f}  ({r['device']})",
                  flush=True)
            ref = next((q for q in rows if q["B"] == b and q["method"] == METHODS[0]), None)
            cells.append([harness.sci(b), method, f"{r['fits_per_s']:.0f}",
                          harness.Stats.of(r["warm"]).text(".2f"), f"{r['compile']:.1f}",
                          f"{r['success']:.3f}",
                          f"{ref['fits_per_s'] / r['fits_per_s']:.2f}" if ref else None])
    print()
    print(harness.markdown_table(HEADER, cells))


if __name__ == "__main__":
    main()
