"""Many parameters: fit time and memory of the dense and matrix-free paths, and scipy.

    PYTHONPATH=. python benchmarks/bench_many_params.py --sizes 10,100,1000,5000  # RESULTS.md
    python benchmarks/bench_many_params.py [--methods ...] [--repeats 2] [--timeout 120]

A sum of K = p / 3 Gaussian peaks (amplitude, centre, width) on a unit grid, 9 points
per cell, each point seeing the peaks of its three nearest cells (`tests/many_params.py`:
the cost per point does not grow with p); start: truth with amplitudes and widths
perturbed by 10%, centres by 0.05. Methods: hybrid_gn with the dense path
(`dense_max_params` above p), the matrix-free path (`dense_max_params=0`), both without
covariance (`covariance="none"`, as scipy computes none), and scipy `least_squares`
(trf, `tr_solver="lsmr"`, the Jacobian by finite differences grouped by its sparsity
pattern). Each (method, p) runs in its own subprocess: the first call, then --repeats
warm calls (median); peak MB is the peak RSS of the warm calls above the RSS before them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import harness

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

METHODS = ("dense", "matrix-free", "scipy lsmr")
POINTS_PER_CELL = 9


def measure(method: str, p: int, repeats: int) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from many_params import jacobian_sparsity, peaks_problem

    n_peaks = max(p // 3, 1)
    model, x, y, truth, p0 = peaks_problem(n_peaks, POINTS_PER_CELL)
    if method == "scipy lsmr":
        from scipy.optimize import least_squares

        residual = jax.jit(lambda q: model(q, jnp.asarray(x)) - y)
        sparsity = jacobian_sparsity(x, n_peaks, 0)

        def run():
            return least_squares(lambda q: np.asarray(residual(q)), p0, method="trf",
                                 tr_solver="lsmr", jac_sparsity=sparsity)
    else:
        import hybrid_gn

        limit = 0 if method == "matrix-free" else 10**6
        config = hybrid_gn.Config(dense_max_params=limit, covariance="none")

        def run():
            return hybrid_gn.fit(model, p0, x, y, config=config)

    first = harness.timed_calls(run)
    with harness.PeakRSS() as peak:
        warm = harness.timed_calls(run, repeats)
    out = warm.result
    cost = float(out.cost)
    return {"first": first.seconds[0], "warm": warm.seconds, "peak_mib": peak.mib,
            "cost": cost, "p": int(p0.size), "n": int(x.size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,5000")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for p in (int(s) for s in args.sizes.split(",")):
        best = {}
        for method in args.methods.split(","):
            outcome = harness.in_subprocess(measure, method, p, args.repeats,
                                            timeout=args.timeout)
            if not outcome.ok:
                rows.append([p, method, outcome.describe(), None, None, None, None])
                continue
            v = outcome.value
            warm = harness.Stats.of(v["warm"])
            best[method] = v["cost"]
            rows.append([v["p"], method, warm.text(), f"{v['first']:.2f}",
                         f"{v['peak_mib']:.0f}", f"{v['cost']:.6f}", v["n"]])
        print(f"p = {p}: " + ", ".join(f"{m} cost {c:.8g}" for m, c in best.items()),
              flush=True)
    table = harness.markdown_table(["p", "method", "warm s", "first s", "warm peak MB", "cost",
                                    "n"], rows)
    harness.write_out(table, args.out)


if __name__ == "__main__":
    main()
