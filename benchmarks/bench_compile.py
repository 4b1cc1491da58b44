"""Where the first call's time goes: trace, lowering and XLA compile, and the program's size.

    PYTHONPATH=. python benchmarks/bench_compile.py [--family gaussian_offset,two_lorentzians]
        [--size 1e3] [--runs 3] [--timeout 300] [--forms "hybrid_gn jit(vmap(fit)),..."]
        [--cache-runs 3]

B problems of a `bench_many_small.py` family (uniform starts, float64), one fresh
process per (family, form, run), and for each form the medians over the runs:

* trace s, lower s: `jax.jit(...).trace(...)` and `.lower()`;
* XLA s, XLA CPU s: `.compile()`, wall and process CPU time (XLA compiles the kernels
  on a thread pool, so CPU time is the steadier figure on a shared machine);
* HLO: instructions of the optimized module; fusions: its fusion instructions outside
  fused computations, the loops XLA's CPU backend generates machine code for (identical
  ones may share a kernel).

Forms: `jit(vmap(fit))` keeping `.params` (the pipeline `fit_batch` runs too, there with
its compile options, the trace and the covariance), `jit(fit)` of one problem, and
optimistix LM under `jit(vmap)` as in `bench_many_small.py`.

With --cache-runs K, instead: the first call of `fit_batch` (wall seconds, to its
result) in 1 + K fresh processes that share a new JAX persistent compilation cache
(`jax_compilation_cache_dir`): the first fills it, the K others read it.
"""

from __future__ import annotations

import argparse
import re
import time

import harness

FORMS = ("hybrid_gn jit(vmap(fit))", "hybrid_gn jit(fit)", "optimistix LM")


def _problems(name: str, b: int):
    """The family's model and, as float64 JAX arrays, its shared x, the B data sets and
    the B uniform starts."""
    import bench_many_small as small
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    x, y, _, start = small.problems(name, "uniform", b)
    family_model = small.FAMILIES[name].model

    def model(p, x):
        return family_model(p, x, jnp)

    return model, jnp.asarray(x), jnp.asarray(y), jnp.asarray(start)


def measure(name: str, form: str, b: int) -> dict:
    """The figures of one form in this (fresh) process."""
    import bench_many_small as small
    import jax
    import jax.numpy as jnp

    import hybrid_gn

    model, xj, yj, sj = _problems(name, b)
    if form == "hybrid_gn jit(vmap(fit))":
        f = jax.jit(jax.vmap(lambda y, p0: hybrid_gn.fit(model, p0, xj, y).params))
        args = (yj, sj)
    elif form == "hybrid_gn jit(fit)":
        f = jax.jit(lambda y, p0: hybrid_gn.fit(model, p0, xj, y).params)
        args = (yj[0], sj[0])
    else:
        f = small._optimistix(model, xj, yj)
        args = (yj, sj)
    jax.block_until_ready(jax.jit(jnp.negative)(1.0))  # the backend is up before timing
    t0 = time.perf_counter()
    traced = f.trace(*args)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    cpu = time.process_time()
    compiled = lowered.compile()
    cpu = time.process_time() - cpu
    t3 = time.perf_counter()
    text = compiled.as_text()
    return {"trace": t1 - t0, "lower": t2 - t1, "xla": t3 - t2, "xla_cpu": cpu,
            "hlo": sum(" = " in line for line in text.splitlines() if line.startswith("  ")),
            "fusions": _fusions(text)}


def first_fit_batch(name: str, b: int, cache: str) -> dict:
    """Wall seconds of the first `fit_batch` call in this process, with the persistent
    compilation cache at `cache`."""
    import jax
    import jax.numpy as jnp

    import hybrid_gn

    jax.config.update("jax_compilation_cache_dir", cache)
    model, x, ys, p0s = _problems(name, b)
    xs = jnp.broadcast_to(x, ys.shape)
    jax.block_until_ready((xs, ys, p0s))
    t0 = time.perf_counter()
    jax.block_until_ready(hybrid_gn.fit_batch(model, p0s, xs, ys).params)
    return {"first": time.perf_counter() - t0}


def _cached(names: list[str], b: int, runs: int, timeout: float) -> None:
    import tempfile

    rows = []
    for name in names:
        with tempfile.TemporaryDirectory() as cache:
            filling = harness.in_subprocess(first_fit_batch, name, b, cache, timeout=timeout)
            reading = harness.in_subprocesses(first_fit_batch, name, b, cache, runs=runs,
                                              timeout=timeout)
        empty, full = harness.pooled([filling], "first"), harness.pooled(reading, "first")
        rows.append([name, empty.text() if empty else filling.status,
                     full.text() if full else reading[0].status])
    print(harness.markdown_table(["family", "first call s, empty cache",
                                  "first call s, cache filled"], rows))


def _fusions(text: str) -> int:
    """Fusion instructions outside fused computations."""
    count, inside = 0, False
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith("{"):
            inside = bool(re.match(r"^%?(fused|wrapped)", line.split()[0].lstrip("%")))
        elif not inside and re.search(r"= \S+ fusion\(", line):
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="gaussian_offset,two_lorentzians")
    parser.add_argument("--size", default="1e3")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--cache-runs", type=int, default=0)
    args = parser.parse_args()
    b = int(float(args.size))
    if args.cache_runs:
        _cached(args.family.split(","), b, args.cache_runs, args.timeout)
        return
    keys = ("trace", "lower", "xla", "xla_cpu", "hlo", "fusions")
    rows = []
    for name in args.family.split(","):
        for form in args.forms.split(","):
            outs = harness.in_subprocesses(measure, name, form, b, runs=args.runs,
                                           timeout=args.timeout)
            bad = harness.failure(outs)
            if bad is not None:
                rows.append([name, form, bad.status, *[""] * (len(keys) - 1)])
                continue
            stats = [harness.pooled(outs, key) for key in keys]
            rows.append([name, form, *(f"{s.median:.2f}" for s in stats[:4]),
                         *(f"{s.median:.0f}" for s in stats[4:])])
            print(rows[-1], flush=True)
    print(harness.markdown_table(
        ["family", "form", "trace s", "lower s", "XLA s", "XLA CPU s", "HLO", "fusions"],
        rows))


if __name__ == "__main__":
    main()
