"""The first fit, as a scipy user meets it: `curve_fit` once per dataset, a new lambda each time.

    python benchmarks/bench_first_fit.py --sizes 1e2,1e3,1e4   # RESULTS.md
    python benchmarks/bench_first_fit.py [--timeout 600]

An exponential decay with offset, `f(x, a, b, c) = a exp(-b x) + c`, noise sd 0.05,
start (1, 1, 0). In a fresh subprocess per size (`harness.in_subprocess`):

- first call: `import hybrid_gn` done, the first `curve_fit` in the process (tracing and
  compiling included);
- new lambda: calls each with a freshly written lambda of the same code on new data of
  the same size (the program is reused when the function computes the same thing;
  median of 9);
- scipy, new lambda: `scipy.optimize.curve_fit` right after each of those calls, on the
  same new data with a new numpy lambda, the same start (median of 9): the two libraries
  met the same way, a call now and then between other work;
- warm: further calls with one function on one dataset, back to back (median of 9), and
  scipy's the same way (its caches then hold everything its call touches).

Each size runs twice: with JAX's default asynchronous dispatch on the CPU, and with
`jax_cpu_enable_async_dispatch=False` (set by the environment variable
`JAX_CPU_ENABLE_ASYNC_DISPATCH=0` before JAX starts), under which a small program runs
in the calling thread instead of handing over to a worker thread and back. The first
call is also measured in a process whose compiled program is already in JAX's persistent
compilation cache (`JAX_COMPILATION_CACHE_DIR`, filled by an earlier process).
"""

from __future__ import annotations

import argparse
import tempfile

import harness
import numpy as np

REPEATS = 9
DISPATCH = {"async": {}, "inline": {"JAX_CPU_ENABLE_ASYNC_DISPATCH": "0"}}


def _data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 4.0, n)
    return x, 2.0 * np.exp(-1.3 * x) + 0.5 + 0.05 * rng.standard_normal(n)


def measure(n: int) -> dict:
    """Seconds of the first, new-lambda and warm `curve_fit` calls, and of scipy's."""
    import time

    import jax.numpy as jnp
    import scipy.optimize

    import hybrid_gn

    p0 = [1.0, 1.0, 0.0]
    x, y = _data(n, 0)
    t = time.perf_counter()
    hybrid_gn.curve_fit(lambda x, a, b, c: a * jnp.exp(-b * x) + c, x, y, p0=p0)
    first = time.perf_counter() - t
    x2, y2 = _data(n, 1)
    new_lambda, scipy_new = [], []
    for seed in range(2, 2 + REPEATS):  # each call on new data, as a script meets them
        x3, y3 = _data(n, seed)
        t = time.perf_counter()
        hybrid_gn.curve_fit(lambda x, a, b, c: a * jnp.exp(-b * x) + c, x3, y3, p0=p0)
        new_lambda.append(time.perf_counter() - t)
        t = time.perf_counter()
        scipy.optimize.curve_fit(lambda x, a, b, c: a * np.exp(-b * x) + c, x3, y3, p0=p0)
        scipy_new.append(time.perf_counter() - t)
    popt = hybrid_gn.curve_fit(lambda x, a, b, c: a * jnp.exp(-b * x) + c, x2, y2, p0=p0)[0]

    def f(x, a, b, c):
        return a * jnp.exp(-b * x) + c

    def g(x, a, b, c):
        return a * np.exp(-b * x) + c

    warm = harness.timed_calls(lambda: hybrid_gn.curve_fit(f, x2, y2, p0=p0), REPEATS)
    reference = harness.timed_calls(lambda: scipy.optimize.curve_fit(g, x2, y2, p0=p0),
                                    REPEATS)
    deviation = float(np.max(np.abs(popt - reference.result[0]) / np.abs(reference.result[0])))
    return {"first": first, "new_lambda": new_lambda, "warm": warm.seconds,
            "scipy": reference.seconds, "scipy_new": scipy_new, "deviation": deviation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e2,1e3,1e4")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per size")
    args = parser.parse_args()
    rows = []
    for n in (int(float(s)) for s in args.sizes.split(",")):
        for dispatch, env in DISPATCH.items():
            out = harness.in_subprocess(measure, n, timeout=args.timeout, env=env)
            if not out.ok:
                rows.append([harness.sci(n), dispatch, out.describe()] + ["–"] * 8)
                continue
            v = out.value
            scipy_s, scipy_new_s, new_s, warm_s = (harness.Stats.of(v[k]).median for k in (
                "scipy", "scipy_new", "new_lambda", "warm"))
            rows.append([harness.sci(n), dispatch, f"{v['first']:.2f}",
                         _first_from_cache(n, env, args.timeout), f"{new_s * 1e3:.2f}",
                         f"{scipy_new_s * 1e3:.2f}", f"{new_s / scipy_new_s:.1f}",
                         f"{warm_s * 1e3:.2f}", f"{scipy_s * 1e3:.2f}", f"{warm_s / scipy_s:.1f}",
                         f"{v['deviation']:.1e}"])
    print(harness.markdown_table(
        ["n", "dispatch", "first call s", "first call, cache on disk s", "new lambda ms",
         "scipy, new lambda ms", "new lambda / scipy", "warm ms", "scipy warm ms",
         "warm / scipy warm", "max rel. dev. of popt from scipy"], rows))


def _first_from_cache(n: int, env: dict, timeout: float) -> str:
    """The first call of a process whose program JAX's persistent compilation cache holds
    (written by an earlier process with the same cache directory)."""
    with tempfile.TemporaryDirectory(prefix="jax-cache-") as cache:
        env = {**env, "JAX_COMPILATION_CACHE_DIR": cache}
        outcomes = [harness.in_subprocess(measure, n, timeout=timeout, env=env)
                    for _ in range(2)]
    return f"{outcomes[1].value['first']:.2f}" if outcomes[1].ok else outcomes[1].describe()


if __name__ == "__main__":
    main()
