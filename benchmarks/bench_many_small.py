"""Many small fits across problem families: B independent problems per family, one batch.

    PYTHONPATH=. python benchmarks/bench_many_small.py --sizes 1e4 --repeats 3  # RESULTS.md
    python benchmarks/bench_many_small.py [--family NAME[,NAME...]] [--starts uniform,gaussian]
        [--sizes 1e3,1e4] [--methods ...] [--repeats 3] [--rounds 1]
        [--dtype float64|float32] [--timeout 600]

Families (`FAMILIES`; each a model written once against an array module, its truth box,
its x grid and its noise sd):

* gaussian_offset: a exp(-((x - mu) / s)^2 / 2) + c, p = 4, 64 points (the original
  single family of this benchmark, unchanged with --starts uniform);
* two_lorentzians: two overlapping Lorentzians + linear background, p = 8, 128 points;
* exp_offset: a exp(-k x) + c, p = 3, 50 points;
* double_exp: a1 exp(-k1 x) + a2 exp(-k2 x) + c, rates 10x apart, p = 5, 128 points;
* logistic: L / (1 + exp(-k (x - x0))) + c, p = 4, 64 points;
* damped_sine: a exp(-x / tau) sin(w x + phi) + c, p = 5, 128 points.

Four more, outside the default set (name them with --family), for models the work was
not tuned on:

* power_law: a x^b + c, b in [-1.5, -0.3], p = 3, 80 points on [0.1, 10];
* hill: v x^n / (k^n + x^n) + c, p = 4, 60 points on [0.05, 10];
* three_gauss: three Gaussians, the outer two 3 from the middle one, + offset, p = 10,
  200 points;
* sine_poly: a sin(w x + phi) + c0 + c1 x + c2 x^2, p = 6, 100 points on [0, 10].

Truth: each parameter uniform in its box. Starts (both keep widths, rates and amplitudes
positive by reflecting them with abs()):

* uniform: truth + sign * d per parameter, d = 20 % of the truth for scale parameters
  and U(-shift, shift) for location parameters (centres, offsets, phases);
* gaussian: truth * (1 + 0.2 N(0, 1)) + N(0, shift) for location parameters (which can
  be zero), truth * (1 + 0.2 N(0, 1)) for the others: a heavier tail of poor starts.

Methods: `hybrid_gn.fit_batch`, `jax.jit(jax.vmap(hybrid_gn.fit))`, optimistix LM
(rtol = atol = 1e-8, 200 steps) and jaxopt LM (tol 1e-8, 200 iterations) under
`jit(vmap)`, and a scipy `curve_fit` loop over the first 200 problems (all when B is
smaller), extrapolated. Each (family, starts, method, B) runs in its own subprocess
(`harness.in_subprocess`; one past --timeout is reported as timed out) and returns its
fitted parameters; the parent compares them.

Columns of the table per (family, starts):

* fits/s: B / warm time (median of --repeats warm calls; with --rounds R, the median
  over the R runs, which are taken in turn, method after method, so that a slow
  stretch of a shared machine touches every method);
* warm s (all B): the warm times for all B, median (min–max) over every round;
* compile s: the first call minus the warm median (trace and compile), median over the
  rounds;
* best cost: fraction of problems whose cost 0.5 * sum(r^2) at the method's parameters
  (`costs`, one numpy function for every method) is within 1e-6 (relative) + 1e-12 of
  the lowest cost any method found for that problem (the scipy loop: over its sample);
* near truth: fraction of problems whose parameters are all within `tol` of the truth
  (the family's `tol`, 2-4x the largest error noise alone gives in 200 fits from the
  truth; a wrong local minimum misses by far more);
* ÷ optimistix: this method's fits/s over optimistix LM's in the same round, median
  over the rounds.

The summary table gives, per (family, starts, B), fits/s of `fit_batch` and of
`vmap(fit)` over optimistix LM's and their best-cost fractions minus optimistix's, and
the minimum of each column over the families.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import NamedTuple

import harness
import numpy as np

METHODS = ("hybrid_gn fit_batch", "hybrid_gn vmap(fit)", "optimistix LM", "jaxopt LM",
           "scipy loop")
REFERENCE = "optimistix LM"
STARTS = ("uniform", "gaussian")
SCIPY_SAMPLE = 200
RTOL, ATOL = 1e-6, 1e-12  # a cost this close to the best counts as reaching it


# ---------------------------------------------------------------------------- families


class Param(NamedTuple):
    """One parameter: truth U(lo, hi); `shift` None for a scale parameter (started 20 %
    off), else the location parameter's start shift; `positive` reflects starts with abs()."""

    lo: float
    hi: float
    shift: float | None = None
    positive: bool = True


class Family(NamedTuple):
    """A problem family: `model(p, x, xp)` written once for numpy and jax.numpy."""

    model: Callable
    params: tuple[Param, ...]
    x: tuple[float, float, int]  # linspace(lo, hi, n)
    noise: float
    tol: float  # "near truth": every parameter within tol


def _loc(lo: float, hi: float, shift: float) -> Param:
    return Param(lo, hi, shift, positive=False)


def gaussian_offset(p, x, xp=np):
    a, mu, s, c = (p[i] for i in range(4))
    return a * xp.exp(-0.5 * ((x - mu) / s) ** 2) + c


def two_lorentzians(p, x, xp=np):
    a1, m1, g1, a2, m2, g2, b0, b1 = (p[i] for i in range(8))
    return a1 / (1 + ((x - m1) / g1) ** 2) + a2 / (1 + ((x - m2) / g2) ** 2) + b0 + b1 * x


def exp_offset(p, x, xp=np):
    a, k, c = (p[i] for i in range(3))
    return a * xp.exp(-k * x) + c


def double_exp(p, x, xp=np):
    a1, k1, a2, k2, c = (p[i] for i in range(5))
    return a1 * xp.exp(-k1 * x) + a2 * xp.exp(-k2 * x) + c


def logistic(p, x, xp=np):
    big_l, k, x0, c = (p[i] for i in range(4))
    return big_l / (1 + xp.exp(-k * (x - x0))) + c


def damped_sine(p, x, xp=np):
    a, tau, w, phi, c = (p[i] for i in range(5))
    return a * xp.exp(-x / tau) * xp.sin(w * x + phi) + c


def power_law(p, x, xp=np):
    a, b, c = (p[i] for i in range(3))
    return a * x**b + c


def hill(p, x, xp=np):
    v, k, n, c = (p[i] for i in range(4))
    return v * x**n / (k**n + x**n) + c


def three_gauss(p, x, xp=np):
    peaks = sum(p[i] * xp.exp(-0.5 * ((x - p[i + 1]) / p[i + 2]) ** 2) for i in (0, 3, 6))
    return peaks + p[9]


def sine_poly(p, x, xp=np):
    a, w, phi, c0, c1, c2 = (p[i] for i in range(6))
    return a * xp.sin(w * x + phi) + c0 + c1 * x + c2 * x**2


FAMILIES = {
    "gaussian_offset": Family(
        gaussian_offset, (Param(1, 3), _loc(-1, 1, 0.3), Param(0.5, 1.5), _loc(-0.5, 0.5, 0.3)),
        (-4.0, 4.0, 64), noise=0.05, tol=0.1),
    "two_lorentzians": Family(
        two_lorentzians, (Param(1, 3), _loc(-1.5, -0.5, 0.3), Param(0.5, 1.0),
                          Param(1, 3), _loc(0.5, 1.5, 0.3), Param(0.5, 1.0),
                          _loc(-0.5, 0.5, 0.2), _loc(-0.05, 0.05, 0.02)),
        (-5.0, 5.0, 128), noise=0.05, tol=0.3),
    "exp_offset": Family(
        exp_offset, (Param(1, 3), Param(0.5, 2), _loc(-0.5, 0.5, 0.3)),
        (0.0, 5.0, 50), noise=0.02, tol=0.2),
    "double_exp": Family(
        double_exp, (Param(1, 2), Param(0.2, 0.4), Param(1, 2), Param(2, 4),
                     _loc(-0.2, 0.2, 0.1)),
        (0.0, 10.0, 128), noise=0.01, tol=0.3),
    "logistic": Family(
        logistic, (Param(1, 3), Param(0.5, 2), _loc(-2, 2, 0.5), _loc(-0.5, 0.5, 0.3)),
        (-6.0, 6.0, 64), noise=0.05, tol=0.6),
    "damped_sine": Family(
        damped_sine, (Param(1, 2), Param(1.5, 4), Param(1, 2), _loc(-1, 1, 0.3),
                      _loc(-0.2, 0.2, 0.1)),
        (0.0, 8.0, 128), noise=0.05, tol=0.6),
}
DEFAULT_FAMILIES = tuple(FAMILIES)  # the six above; the four below only on request
FAMILIES |= {
    "power_law": Family(
        power_law, (Param(1, 3), Param(-1.5, -0.3, positive=False), _loc(-0.5, 0.5, 0.3)),
        (0.1, 10.0, 80), noise=0.02, tol=0.3),
    "hill": Family(
        hill, (Param(1, 3), Param(0.5, 3), Param(1, 4), _loc(-0.2, 0.2, 0.1)),
        (0.05, 10.0, 60), noise=0.02, tol=0.5),
    "three_gauss": Family(
        three_gauss, (Param(1, 3), _loc(-3.5, -2.5, 0.3), Param(0.4, 0.8),
                      Param(1, 3), _loc(-0.5, 0.5, 0.3), Param(0.4, 0.8),
                      Param(1, 3), _loc(2.5, 3.5, 0.3), Param(0.4, 0.8),
                      _loc(-0.3, 0.3, 0.1)),
        (-6.0, 6.0, 200), noise=0.05, tol=0.3),
    "sine_poly": Family(
        sine_poly, (Param(1, 2), Param(1.5, 2.5), _loc(-1, 1, 0.3), _loc(-1, 1, 0.3),
                    _loc(-0.2, 0.2, 0.05), _loc(-0.02, 0.02, 0.005)),
        (0.0, 10.0, 100), noise=0.05, tol=0.3),
}


def grid(family: Family) -> np.ndarray:
    return np.linspace(*family.x)


def _uniform_starts(family: Family, truth, rng):
    # the original benchmark's draws, in its order: shifts, then one sign per parameter
    delta = np.stack([0.2 * truth[:, j] if q.shift is None
                      else rng.uniform(-q.shift, q.shift, len(truth))
                      for j, q in enumerate(family.params)], axis=1)
    return truth + delta * rng.choice([-1, 1], truth.shape)


def _gaussian_starts(family: Family, truth, rng):
    sd = np.array([q.shift or 0.0 for q in family.params])
    return (truth * (1 + 0.2 * rng.standard_normal(truth.shape))
            + sd * rng.standard_normal(truth.shape))


def problems(name: str, starts: str, b: int, seed: int = 0):
    """x (n,), y (B, n), truth (B, p) and starts (B, p) of family `name`; y and truth do
    not depend on `starts`."""
    family = FAMILIES[name]
    rng = np.random.default_rng(seed)
    truth = np.stack([rng.uniform(q.lo, q.hi, b) for q in family.params], axis=1)
    x = grid(family)
    y = family.model(truth.T[..., None], x[None, :]) + family.noise * rng.standard_normal(
        (b, len(x)))
    draw = {"uniform": _uniform_starts, "gaussian": _gaussian_starts}[starts]
    start = draw(family, truth, rng)
    positive = np.array([q.positive for q in family.params])
    return x, y, truth, np.where(positive, np.abs(start), start)


def costs(name: str, x, y, params) -> np.ndarray:
    """0.5 * sum(r^2) per problem at `params` (k, p) for the first k problems of y; inf
    where the parameters or the cost are not finite."""
    k = len(params)
    r = FAMILIES[name].model(np.asarray(params, float).T[..., None], x[None, :]) - y[:k]
    with np.errstate(all="ignore"):
        c = 0.5 * np.sum(r**2, axis=1)
    return np.where(np.isfinite(c), c, np.inf)


# ----------------------------------------------------------------------- in the child


def _runner(method: str, name: str, x, y, start, dtype: str = "float64"):
    if method == "scipy loop":
        return _scipy_loop(FAMILIES[name].model, x, y, start)
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
    family_model = FAMILIES[name].model

    def model(p, x):
        return family_model(p, x, jnp)

    solve = solvers[method](model, xj, yj)

    def run():
        return np.asarray(jax.block_until_ready(solve(yj, sj)))

    return run


def _scipy_loop(family_model, x, y, start):
    from scipy.optimize import curve_fit

    sample = min(SCIPY_SAMPLE, len(y))

    def model(x, *p):
        return family_model(p, x)

    def run():
        out = np.empty((sample, start.shape[1]))
        for i in range(sample):
            try:
                out[i] = curve_fit(model, x, y[i], p0=start[i])[0]
            except RuntimeError:
                out[i] = np.nan
        return out

    return run


def _fit_batch(model, xj, yj):
    import jax.numpy as jnp

    import hybrid_gn

    xb = jnp.broadcast_to(xj, yj.shape)
    return lambda y, p0: hybrid_gn.fit_batch(model, p0, xb, y).params


def _vmap_fit(model, xj, yj):
    import jax

    import hybrid_gn

    return jax.jit(jax.vmap(lambda y, p0: hybrid_gn.fit(model, p0, xj, y).params))


def _optimistix(model, xj, yj):
    import jax
    import optimistix as optx

    solver = optx.LevenbergMarquardt(rtol=1e-8, atol=1e-8)

    def one(y, p0):
        sol = optx.least_squares(lambda p, y: model(p, xj) - y, solver, p0, args=y,
                                 max_steps=200, throw=False)
        return sol.value

    return jax.jit(jax.vmap(one))


def _jaxopt(model, xj, yj):
    import jax
    import jaxopt

    def one(y, p0):
        lm = jaxopt.LevenbergMarquardt(lambda p, y: model(p, xj) - y, maxiter=200, tol=1e-8)
        return lm.run(p0, y).params

    return jax.jit(jax.vmap(one))


def measure(name: str, starts: str, method: str, b: int, repeats: int, dtype: str) -> dict:
    """One (family, starts, method, B) in this process: a first call, then `repeats` warm
    calls. `params` are the fitted parameters of the first len(params) problems (all but
    for the scipy loop)."""
    x, y, _, start = problems(name, starts, b)
    run = _runner(method, name, x, y, start, dtype)
    first, warm = harness.time_calls(run, repeats)
    params = warm.result
    fitted = len(params)
    w = warm.stats.median
    import jax

    return {"fits_per_s": fitted / w, "warm": [t * b / fitted for t in warm.seconds],
            "compile": max(first.seconds[0] - w, 0.0),
            "params": np.asarray(params, float).tolist(),
            "device": f"jax {jax.__version__} on {jax.devices()[0].device_kind}"}


# ---------------------------------------------------------------------- in the parent


def compare(name: str, starts: str, b: int, values: dict[str, dict]) -> dict[str, dict]:
    """Per method: the best-cost and near-truth fractions of its problems."""
    x, y, truth, _ = problems(name, starts, b)
    cost = {m: costs(name, x, y, v["params"]) for m, v in values.items()}
    best = np.full(b, np.inf)
    for c in cost.values():
        best[: len(c)] = np.minimum(best[: len(c)], c)
    tol = FAMILIES[name].tol
    out = {}
    for m, c in cost.items():
        p = np.asarray(values[m]["params"], float)
        near = np.all(np.abs(p - truth[: len(p)]) < tol, axis=1)
        out[m] = {"best": float(np.mean(c <= best[: len(c)] * (1 + RTOL) + ATOL)),
                  "near": float(np.mean(near))}
    return out


HEADER = ["B", "method", "fits/s", "warm s (all B)", "compile s", "best cost", "near truth",
          "÷ optimistix"]


def _row(b: int, method: str, out: harness.Outcome, frac: dict) -> list:
    if not out.ok:
        return [harness.sci(b), method, out.describe(), None, None, None, None, None]
    r = out.value
    ratio = None if r["ratio"] is None else f"{r['ratio']:.2f}"
    return [harness.sci(b), method, f"{r['fits_per_s']:.0f}",
            harness.Stats.of(r["warm"]).text(".3f"), f"{r['compile']:.1f}",
            f"{frac['best']:.3f}", f"{frac['near']:.3f}", ratio]


def run_case(name: str, starts: str, b: int, args) -> tuple[list, dict]:
    """Every method on one (family, starts, B), --rounds times in turn (A, B, C, A, B, C,
    ...: each run a fresh process): table rows and {method: (value, fractions)}. A
    method's value pools its rounds (`_pooled`); its ratio to optimistix is the median
    of the per-round ratios, each against the optimistix run beside it."""
    methods = args.methods.split(",")
    runs: dict[str, list] = {m: [] for m in methods}
    for k in range(args.rounds):
        for method in methods:
            out = harness.in_subprocess(measure, name, starts, method, b, args.repeats,
                                        args.dtype, timeout=args.timeout)
            runs[method].append(out)
            line = (f"{out.value['fits_per_s']:10.0f} fits/s  compile "
                    f"{out.value['compile']:.1f} s" if out.ok else out.describe())
            print(f"  {name} {starts} {method:20s} B={harness.sci(b)} round {k + 1} {line}",
                  flush=True)
    outs = {m: _pooled(o, runs.get(REFERENCE)) for m, o in runs.items()}
    values = {m: o.value for m, o in outs.items() if o.ok}
    fracs = compare(name, starts, b, values)
    rows = [_row(b, m, o, fracs.get(m, {})) for m, o in outs.items()]
    return rows, {m: (values[m], fracs[m]) for m in values}


def _pooled(runs: list, reference: list | None) -> harness.Outcome:
    """One method's rounds as one outcome: fits/s and compile the medians over rounds,
    the warm times of all rounds, the ratio to optimistix the median of the paired
    per-round ratios (None without optimistix); the first failure, if any."""
    failed = harness.failure(runs)
    if failed is not None:
        return failed
    values = [o.value for o in runs]
    ratios = [v["fits_per_s"] / r.value["fits_per_s"]
              for v, r in zip(values, reference or [], strict=False) if r.ok]
    return harness.Outcome("ok", {
        **values[0],
        "fits_per_s": float(np.median([v["fits_per_s"] for v in values])),
        "compile": float(np.median([v["compile"] for v in values])),
        "warm": [t for v in values for t in v["warm"]],
        "ratio": float(np.median(ratios)) if ratios else None})


SUMMARY = ["family", "starts", "B", "fit_batch ÷ optimistix", "vmap(fit) ÷ optimistix",
           "fit_batch − optimistix best cost", "vmap(fit) − optimistix best cost"]


def summary_row(name: str, starts: str, b: int, res: dict) -> list:
    """fits/s ratios and best-cost differences of the two hybrid_gn methods vs optimistix."""
    if REFERENCE not in res:
        return [name, starts, harness.sci(b), None, None, None, None]
    _, ref_frac = res[REFERENCE]
    hybrid = [res.get(m) for m in METHODS[:2]]
    ratios = [v[0]["ratio"] if v else None for v in hybrid]
    diffs = [v[1]["best"] - ref_frac["best"] if v else None for v in hybrid]
    return [name, starts, harness.sci(b), *ratios, *diffs]


def minimum_rows(rows: list[list]) -> list[list]:
    """Per (starts, B): the minimum of each numeric column over the families."""
    out = []
    for key in dict.fromkeys((r[1], r[2]) for r in rows):
        group = [r for r in rows if (r[1], r[2]) == key]
        mins = [min((r[i] for r in group if r[i] is not None), default=None)
                for i in range(3, len(SUMMARY))]
        out.append(["**min over families**", *key, *mins])
    return out


def _fmt(row: list) -> list:
    return [f"{v:+.3f}" if isinstance(v, float) and i >= 5 else
            f"{v:.2f}" if isinstance(v, float) else v for i, v in enumerate(row)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default=",".join(DEFAULT_FAMILIES))
    parser.add_argument("--starts", default=",".join(STARTS))
    parser.add_argument("--sizes", default="1e3,1e4")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="fresh-process runs of every method, taken in turn")
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    args = parser.parse_args()
    tables, summary = [], []
    for name in args.family.split(","):
        for starts in args.starts.split(","):
            cells = []
            for b in (int(float(s)) for s in args.sizes.split(",")):
                rows, res = run_case(name, starts, b, args)
                cells += rows
                summary.append(summary_row(name, starts, b, res))
            tables.append(f"{name}, {starts} starts:\n\n" + harness.markdown_table(HEADER, cells))
    print()
    print("\n\n".join(tables))
    print("\nSummary (hybrid_gn against optimistix LM):\n")
    rows = summary + minimum_rows(summary)
    print(harness.markdown_table(SUMMARY, [_fmt(r) for r in rows]))


if __name__ == "__main__":
    main()
