"""Multi-minimum problems: does the default fit stop where scipy from the same start does?

    PYTHONPATH=. python benchmarks/bench_multipeak.py                # RESULTS.md, 25 starts
    PYTHONPATH=. python benchmarks/bench_multipeak.py --starts 100 --no-scipy-lm
    python benchmarks/bench_multipeak.py [--families two_gauss,...] [--starts 25]
        [--config LABEL:KEY=VALUE,...] [--no-scipy-lm] [--timeout 1800]

Four families, each one data set (fixed seed, moderate noise) and `--starts`
random starts drawn far from the truth (fixed seed):

* two_gauss: two overlapping Gaussians on a linear background (8 parameters,
  400 points); centres shifted by up to +-2 (the peaks are 1.2 apart), widths
  scaled by e^U(-1, 1), amplitudes a random fraction of the data range;
* damped_sine: A e^(-t/tau) sin(2 pi f t + phi) + c (5 parameters, 400
  points over 10 periods, weakly damped); frequency start off by up to
  +-30 %, phase random;
* two_exp: a1 e^(-k1 t) + a2 e^(-k2 t) + c (5 parameters, 200 points); rates
  log-uniform over [0.05, 20];
* three_peaks: three Gaussians, two of them overlapping, plus an offset (10
  parameters, 600 points); centres shifted by up to +-1.5.

Methods from each start: `hybrid_gn.fit` with the default Config, with
`Config(warmup=True)` and with any `--config` variants; scipy
`least_squares(method='trf')` (the reference) and `curve_fit` (its default
for unbounded problems is 'lm'). Costs are 0.5 * sum of squared residuals,
recomputed here from each method's parameters. Reported per method: how many
starts reach the best cost any method found for the family (within `RTOL`),
how many end worse / better than scipy trf from the same start (beyond
`RTOL`; "worse" counts the fits that stopped at a point they report as
converged), how many stopped as running off along a valley (`Status.VALLEY`:
no minimum in reach, where trf crawls on until its ftol stops it; how many of
those ended above trf's cost, and by how much), and the warm wall time per fit
(median, min–max over the starts). Each
(family, method) runs in its own subprocess (`harness.in_subprocess`; one past
--timeout is reported as timed out).
"""

from __future__ import annotations

import argparse
import ast
import functools
import warnings

import harness
import numpy as np

RTOL = 1e-6  # relative cost difference counted as "the same minimum"
SEED = 0


# ------------------------------------------------------------------------------ models
# Each model is written once against an array module `xp` (numpy for scipy, jax.numpy for
# hybrid_gn) with flat parameters.

def two_gauss(p, x, xp=np):
    a1, m1, s1, a2, m2, s2, c, b = (p[i] for i in range(8))
    return (a1 * xp.exp(-0.5 * ((x - m1) / s1) ** 2) + a2 * xp.exp(-0.5 * ((x - m2) / s2) ** 2)
            + c + b * x)


def damped_sine(p, x, xp=np):
    amp, tau, freq, phase, c = (p[i] for i in range(5))
    return amp * xp.exp(-x / tau) * xp.sin(2 * np.pi * freq * x + phase) + c


def two_exp(p, x, xp=np):
    a1, k1, a2, k2, c = (p[i] for i in range(5))
    return a1 * xp.exp(-k1 * x) + a2 * xp.exp(-k2 * x) + c


def three_peaks(p, x, xp=np):
    out = p[9]
    for i in range(3):
        a, m, s = p[3 * i], p[3 * i + 1], p[3 * i + 2]
        out = out + a * xp.exp(-0.5 * ((x - m) / s) ** 2)
    return out


# ------------------------------------------------------------------------ data, starts

def _data(model, x, truth, noise, rng):
    return model(truth, x) + noise * rng.standard_normal(x.shape[0])


def make_two_gauss(n_starts, rng):
    x = np.linspace(0.0, 10.0, 400)
    truth = np.array([3.0, 4.3, 0.7, 2.2, 5.5, 1.1, 0.4, 0.05])
    y = _data(two_gauss, x, truth, 0.15, rng)
    span = np.ptp(y)
    starts = np.stack([
        rng.uniform(0.2, 1.0, n_starts) * span, truth[1] + rng.uniform(-2, 2, n_starts),
        truth[2] * np.exp(rng.uniform(-1, 1, n_starts)),
        rng.uniform(0.2, 1.0, n_starts) * span, truth[4] + rng.uniform(-2, 2, n_starts),
        truth[5] * np.exp(rng.uniform(-1, 1, n_starts)),
        np.full(n_starts, np.min(y)), np.zeros(n_starts)], axis=1)
    return x, y, starts


def make_damped_sine(n_starts, rng):
    x = np.linspace(0.0, 10.0, 400)
    truth = np.array([2.0, 20.0, 1.0, 0.5, 0.1])
    y = _data(damped_sine, x, truth, 0.2, rng)
    starts = np.stack([
        rng.uniform(0.3, 1.0, n_starts) * np.ptp(y) / 2, rng.uniform(5.0, 40.0, n_starts),
        truth[2] * rng.uniform(0.7, 1.3, n_starts), rng.uniform(-np.pi, np.pi, n_starts),
        np.full(n_starts, np.mean(y))], axis=1)
    return x, y, starts


def make_two_exp(n_starts, rng):
    x = np.linspace(0.0, 5.0, 200)
    truth = np.array([2.0, 0.5, 1.5, 3.0, 0.2])
    y = _data(two_exp, x, truth, 0.02, rng)
    rates = np.exp(rng.uniform(np.log(0.05), np.log(20.0), (n_starts, 2)))
    starts = np.stack([
        rng.uniform(0.2, 1.0, n_starts) * np.ptp(y), rates[:, 0],
        rng.uniform(0.2, 1.0, n_starts) * np.ptp(y), rates[:, 1],
        np.full(n_starts, y[-1])], axis=1)
    return x, y, starts


def make_three_peaks(n_starts, rng):
    x = np.linspace(0.0, 10.0, 600)
    truth = np.array([2.0, 2.5, 0.5, 3.0, 3.6, 0.6, 1.5, 7.0, 0.8, 0.3])
    y = _data(three_peaks, x, truth, 0.1, rng)
    span = np.ptp(y)
    cols = []
    for i in range(3):
        cols += [rng.uniform(0.2, 1.0, n_starts) * span,
                 truth[3 * i + 1] + rng.uniform(-1.5, 1.5, n_starts),
                 truth[3 * i + 2] * np.exp(rng.uniform(-1, 1, n_starts))]
    cols.append(np.full(n_starts, np.min(y)))
    return x, y, np.stack(cols, axis=1)


FAMILIES = {"two_gauss": (two_gauss, make_two_gauss),
            "damped_sine": (damped_sine, make_damped_sine),
            "two_exp": (two_exp, make_two_exp),
            "three_peaks": (three_peaks, make_three_peaks)}


def family(name: str, n_starts: int):
    """(model, x, y, starts) of a family; the same for a given name and `n_starts`."""
    model, make = FAMILIES[name]
    rng = np.random.default_rng([SEED, list(FAMILIES).index(name)])
    x, y, starts = make(n_starts, rng)
    return model, x, y, starts


# ----------------------------------------------------------------------------- methods

def cost(model, params, x, y) -> float:
    """0.5 * sum of squared residuals; inf where the parameters or the model are not finite."""
    params = np.asarray(params, float)
    if not np.all(np.isfinite(params)):
        return np.inf
    with np.errstate(all="ignore"):
        r = model(params, x) - y
    return float(0.5 * r @ r) if np.all(np.isfinite(r)) else np.inf


def scipy_trf(model, x, y, p0):
    from scipy.optimize import least_squares
    return least_squares(lambda p: model(p, x) - y, p0, method="trf").x


def scipy_curve_fit(model, x, y, p0):
    from scipy.optimize import curve_fit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return curve_fit(lambda x, *p: model(np.array(p), x), x, y, p0=p0)[0]
    except (RuntimeError, ValueError):
        return np.full_like(p0, np.nan)


def hybrid(config_kwargs: dict):
    """A solver running `hybrid_gn.fit` with Config(**config_kwargs); also records the
    warmup reason and the status of each fit."""
    import jax.numpy as jnp

    import hybrid_gn

    config = hybrid_gn.Config(**config_kwargs)
    cache = {}

    def solve(model, x, y, p0):
        jmodel = cache.setdefault(model, functools.partial(model, xp=jnp))
        result = hybrid_gn.fit(jmodel, jnp.asarray(p0), jnp.asarray(x), jnp.asarray(y),
                               config=config)
        solve.reasons.append(hybrid_gn.WarmupReason(int(result.warmup_reason)).name)
        solve.statuses.append(hybrid_gn.Status(int(result.status)).name)
        return np.asarray(result.params)

    solve.reasons, solve.statuses = [], []
    return solve


def run_method(solve, model, x, y, starts) -> tuple[list[float], list[float]]:
    """Costs from each start and the warm time of each fit (a first call compiles)."""
    harness.timed_calls(lambda: solve(model, x, y, starts[0]))
    if hasattr(solve, "reasons"):
        solve.reasons.clear()
        solve.statuses.clear()
    costs, times = [], []
    for p0 in starts:
        call = harness.timed_calls(lambda p0=p0: solve(model, x, y, p0))
        times.append(call.seconds[0])
        costs.append(cost(model, call.result, x, y))
    return costs, times


def measure(name: str, n_starts: int, method: str, config_kwargs: dict) -> dict:
    """One method on one family in this process: `method` is 'scipy trf', 'scipy
    curve_fit (lm)' or a hybrid_gn variant run with Config(**config_kwargs)."""
    model, x, y, starts = family(name, n_starts)
    reasons, valley = "", [False] * n_starts
    if method == "scipy trf":
        solve = scipy_trf
    elif method == "scipy curve_fit (lm)":
        solve = scipy_curve_fit
    else:
        solve = hybrid(config_kwargs)
    costs, times = run_method(solve, model, x, y, starts)
    if hasattr(solve, "reasons"):
        reasons = _counts(solve.reasons)
        valley = [status == "VALLEY" for status in solve.statuses]
    return {"costs": costs, "times": times, "reasons": reasons, "valley": valley}


def parse_config(text: str) -> tuple[str, dict]:
    """'LABEL:KEY=VALUE,KEY=VALUE' -> (LABEL, {KEY: VALUE}) with Python literals as values."""
    label, _, body = text.partition(":")
    kwargs = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except ValueError:
            kwargs[key.strip()] = value.strip()
    return label, kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--starts", type=int, default=25)
    parser.add_argument("--config", action="append", default=[],
                        help="extra hybrid_gn variant, LABEL:KEY=VALUE,... (repeatable)")
    parser.add_argument("--no-scipy-lm", action="store_true", help="skip curve_fit")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds per (family, method)")
    args = parser.parse_args()

    variants = [("hybrid_gn default", {}), ("hybrid_gn warmup=True", {"warmup": True})]
    variants += [parse_config(c) for c in args.config]
    variants.append(("scipy trf", {}))
    if not args.no_scipy_lm:
        variants.append(("scipy curve_fit (lm)", {}))
    header = ["family", "method", "reach best", "worse than trf", "better than trf",
              "valley stops (above trf, by at most)", "warm s / fit", "warmup reasons"]
    table = []
    for name in args.families.split(","):
        runs = {label: harness.in_subprocess(measure, name, args.starts, label, kwargs,
                                             timeout=args.timeout)
                for label, kwargs in variants}
        done = {label: np.array(o.value["costs"]) for label, o in runs.items() if o.ok}
        best = min((np.min(c) for c in done.values()), default=np.nan)
        ref = done.get("scipy trf")
        for label, out in runs.items():
            if not out.ok:
                table.append([name, label, out.describe(), None, None, None, None, None])
            else:
                costs, valley = done[label], np.array(out.value["valley"])
                reach = int(np.sum(costs <= best * (1 + RTOL)))
                above = costs > ref * (1 + RTOL) if ref is not None else valley & False
                worse = int(np.sum(above & ~valley)) if ref is not None else None
                better = int(np.sum(costs < ref * (1 - RTOL))) if ref is not None else None
                table.append([name, label, f"{reach}/{len(costs)}", worse, better,
                              _valley_stops(valley, above, costs, ref),
                              harness.Stats.of(out.value["times"]).text(".4f"),
                              out.value["reasons"]])
            print("  " + " | ".join(map(str, table[-1])), flush=True)
    print()
    print(harness.markdown_table(header, table))


def _valley_stops(valley: np.ndarray, above: np.ndarray, costs: np.ndarray, ref) -> str:
    """How many fits stopped as running off along a valley (`Status.VALLEY`), how many of
    them ended above scipy trf's cost (trf crawls further along the same valley before
    its ftol stops it: neither is a minimum), and by how much at most (relative)."""
    if not np.any(valley):
        return "0"
    n_above = int(np.sum(valley & above))
    if ref is None or n_above == 0:
        return f"{int(np.sum(valley))} (0)"
    gap = np.max((costs - ref)[valley & above] / ref[valley & above])
    return f"{int(np.sum(valley))} ({n_above}, {gap:.1e})"


def _counts(names: list[str]) -> str:
    values, counts = np.unique(names, return_counts=True)
    return " ".join(f"{v}:{c}" for v, c in zip(values, counts, strict=True))


if __name__ == "__main__":
    main()
