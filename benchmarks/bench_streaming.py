"""Streaming benchmark: a peak fit to an HDF5 file bigger than we would like to hold.

    python benchmarks/bench_streaming.py --n 1e8 --path /tmp/stream_1e8.h5 --reference-n 1e7
    python benchmarks/bench_streaming.py [--chunk 262144] [--keep] [--timeout 3600]

(the first line gives the figures of RESULTS.md). Writes an HDF5 file of n float64 points
(datasets x and y: 16 bytes a point) in blocks, then, each in a fresh subprocess
(`harness.in_subprocess`; one past --timeout, in seconds, is reported as timed out):

- stream (read-ahead on, then off): `fit_stream` on the file. Memory: the RSS right
  after `import hybrid_gn` is the baseline; the peak (VmHWM) over the whole run, compiling
  included, is reported above it, with the process's whole peak (ru_maxrss). Time per
  pass: the median (min–max) time between the starts of consecutive passes (reading,
  accumulating, the step), after compiling on a small file of the same chunk shape;
- memory: the fused driver on `--reference-n` points held in memory: the warm `fit` time
  and one jitted pass of the accumulation over all points (`accumulate.linearize`), both
  medians of 3.

The model and data are those of bench_large_n.py: y = a exp(-(x - mu)^2 / (2 s^2)) + b0 +
b1 x, truth (3, 5, 0.8, 0.5, 0.1), start (2, 4.6, 1.1, 0.2, 0), noise sd 0.2, x on a grid
over [0, 10].
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import harness
import numpy as np

TRUTH = np.array([3.0, 5.0, 0.8, 0.5, 0.1])
START = np.array([2.0, 4.6, 1.1, 0.2, 0.0])
NOISE = 0.2
BLOCK = 1 << 20


def _truth_curve(x):
    a, mu, s, b0, b1 = TRUTH
    return a * np.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x


def write(path: str, n: int) -> dict:
    """x on a grid over [0, 10], y = truth + noise, written block by block (bounded memory)."""
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        dx = f.create_dataset("x", (n,), "f8")
        dy = f.create_dataset("y", (n,), "f8")
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            x = 10.0 * np.arange(start, stop) / (n - 1)
            dx[start:stop] = x
            dy[start:stop] = _truth_curve(x) + NOISE * rng.standard_normal(stop - start)
    return {}


def model(p, x):
    import jax.numpy as jnp

    a, mu, s, b0, b1 = p
    return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x


def stream(path: str, warm_path: str, chunk: int, prefetch: int) -> dict:
    """`fit_stream` on the file at `path` after a first fit on `warm_path` (compiling)."""
    import hybrid_gn
    from hybrid_gn import sources

    class TimedSource(sources.HDF5Source):
        """Records when each pass starts."""

        starts: list[float] = []

        @contextlib.contextmanager
        def reader(self):
            self.starts.append(time.perf_counter())
            with super().reader() as read:
                yield read

    # the RSS after import is the reference of the memory bound; the peak counts from the
    # start of the process (compiling included)
    with harness.PeakRSS(reset=False) as peak:
        first = harness.timed_calls(lambda: hybrid_gn.fit_stream(
            model, START, sources.HDF5Source(warm_path), block_size=chunk, prefetch=prefetch,
            progress=False))
        source = TimedSource(path)
        fit = harness.timed_calls(lambda: hybrid_gn.fit_stream(
            model, START, source, block_size=chunk, prefetch=prefetch, progress=False))
    result = fit.result
    pass_times = np.diff(source.starts)
    return {"prefetch": prefetch, "n": source.n_points, "baseline_mib": peak.baseline_mib,
            "peak_above_baseline_mib": peak.mib, "first_small_fit_s": first.seconds[0],
            "xla_compile_s": first.compile_s, "wall_s": fit.seconds[0],
            "fit_xla_compile_s": fit.compile_s, "fit_compiles": fit.compiles,
            "passes": len(source.starts), "pass_s_median": float(np.median(pass_times)),
            "pass_s_all": pass_times.tolist(),
            "warmup_iterations": int(result.warmup_iterations),
            "gn_iterations": int(result.gn_iterations),
            "params": np.asarray(result.params).tolist(), "message": result.message}


def memory(n: int) -> dict:
    """The fused in-memory driver on n points: one jitted pass and the warm fit."""
    import jax
    import jax.numpy as jnp

    import hybrid_gn
    from hybrid_gn._data import make_data
    from hybrid_gn._phases import _accumulate as accumulate

    x = 10.0 * np.arange(n) / (n - 1)
    y = _truth_curve(x) + NOISE * np.random.default_rng(0).standard_normal(n)
    x, y = jnp.asarray(x), jnp.asarray(y)
    config = hybrid_gn.Config()

    @jax.jit
    def one_pass(p, x, y):
        data = make_data(x, y, None, config.chunk_size, x.dtype)

        def residual(u, xc, yc, wc):
            return wc * (model(u, xc) - yc)

        return accumulate.linearize(residual, p, data, "forward", "normal")

    _, one = harness.time_calls(lambda: one_pass(jnp.asarray(START), x, y), 3)
    _, fit = harness.time_calls(lambda: hybrid_gn.fit(model, START, x, y), 3)
    return {"n": n, "one_pass_s": one.stats.median, "one_pass_all": one.seconds,
            "fit_s": fit.stats.median, "fit_all": fit.seconds, "passes": int(fit.result.passes),
            "params": np.asarray(fit.result.params).tolist()}


def _columns(rows: list[harness.Outcome], n: int) -> list[list]:
    """The table's rows: one quantity, then its value read-ahead on and off."""

    def each(f):
        return [f(o) if o.ok else o.describe() for o in rows]

    ok = next((o.value for o in rows if o.ok), None)
    k = len(ok["pass_s_all"]) if ok else "?"
    return [
        ["peak RSS above the RSS right after `import hybrid_gn` (compiling included)",
         *each(lambda o: f"{o.value['peak_above_baseline_mib']:.0f} MiB")],
        ["peak RSS of the whole process (ru_maxrss)", *each(lambda o: f"{o.max_rss_mib:.0f} MiB")],
        [f"time per pass over {n:.0e} points (median (min–max) of {k} passes)",
         *each(lambda o: harness.Stats.of(o.value["pass_s_all"]).text(".2f") + " s")],
        ["per point per pass",
         *each(lambda o: f"{o.value['pass_s_median'] / n * 1e9:.1f} ns")],
        ["whole fit (compiled beforehand on a small file of the same chunk shape; XLA "
         "compiles left in it)",
         *each(lambda o: f"{o.value['wall_s']:.1f} s ({o.value['fit_compiles']} programs, "
                         f"{o.value['fit_xla_compile_s']:.1f} s)")],
        ["first fit, on the small file (XLA compile within it)",
         *each(lambda o: f"{o.value['first_small_fit_s']:.1f} s "
                         f"({o.value['xla_compile_s']:.1f} s)")],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=float, default=1e8)
    parser.add_argument("--path", default="/tmp/hybrid_gn_stream.h5")
    parser.add_argument("--reference-n", type=float, default=1e7)
    parser.add_argument("--chunk", type=int, default=1 << 18)
    parser.add_argument("--keep", action="store_true", help="keep the HDF5 files")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per subprocess")
    args = parser.parse_args()
    n, n_ref = int(args.n), int(args.reference_n)
    warm = args.path + ".warm.h5"
    t = time.perf_counter()
    # same chunk shape and warmup sample shape for the small file
    for path, size in ((args.path, n), (warm, 8 * args.chunk)):
        out = harness.in_subprocess(write, path, size, timeout=args.timeout)
        if not out.ok:
            raise SystemExit(f"writing {path}: {out.describe()}")
    print(f"wrote {n:.3g} points ({os.path.getsize(args.path) / 2**30:.2f} GiB) in "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    try:
        rows = [harness.in_subprocess(stream, args.path, warm, args.chunk, depth,
                                      timeout=args.timeout) for depth in (2, 0)]
    finally:
        if not args.keep:
            for p in (args.path, warm):
                if os.path.exists(p):
                    os.unlink(p)
    ref = harness.in_subprocess(memory, n_ref, timeout=args.timeout)
    for r in (*rows, ref):
        value = {k: v for k, v in r.value.items() if not k.endswith("_all")} if r.ok else {}
        print(json.dumps(value) if r.ok else r.describe())

    print(f"\nstreaming {n:.0e} points from HDF5, chunk {args.chunk}:\n")
    print(harness.markdown_table(["quantity", "read-ahead on", "read-ahead off"],
                                 _columns(rows, n)))
    on, off = (r.value if r.ok else None for r in rows)
    if on and off:
        print(f"\n  baseline (RSS after import) {on['baseline_mib']:.0f} MiB; read-ahead gain "
              f"{off['pass_s_median'] / on['pass_s_median']:.2f}x")
    if on:
        print(f"  whole fit: {on['wall_s']:.1f} s, {on['warmup_iterations']} warmup + "
              f"{on['gn_iterations']} Gauss-Newton iterations, {on['passes']} passes; "
              f"{on['message']}")
    if on and ref.ok:
        per_point = on["pass_s_median"] / n
        ref_point = ref.value["one_pass_s"] / n_ref
        fit_point = ref.value["fit_s"] / ref.value["passes"] / n_ref
        print(f"  per point: {per_point * 1e9:.1f} ns streamed vs {ref_point * 1e9:.1f} ns for "
              f"one in-memory fused pass at {n_ref:.0e} ({per_point / ref_point:.2f}x); the "
              f"in-memory fit costs {fit_point * 1e9:.1f} ns a point a pass "
              f"({per_point / fit_point:.2f}x)")


if __name__ == "__main__":
    main()
