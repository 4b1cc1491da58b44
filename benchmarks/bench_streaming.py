"""Streaming benchmark: a peak fit to an HDF5 file bigger than we would like to hold.

    python benchmarks/bench_streaming.py --n 1e8 --path /tmp/stream.h5 [--reference-n 1e7]
        [--chunk 262144] [--keep]

Writes an HDF5 file of n float64 points (datasets x and y: 16 bytes a point) in blocks,
then, each in a fresh subprocess:

- stream (read-ahead on, then off): `fit_stream` on the file. Memory: the RSS right
  after `import hybrid_gn` is the baseline; the peak (VmHWM) over the whole run, compiling
  included, is reported above it. Time per pass: the median time between the starts of
  consecutive Gauss-Newton passes (reading, accumulating, the step), after compiling on a
  small file of the same chunk shape;
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
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TRUTH = np.array([3.0, 5.0, 0.8, 0.5, 0.1])
START = np.array([2.0, 4.6, 1.1, 0.2, 0.0])
NOISE = 0.2
BLOCK = 1 << 20


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _truth_curve(x):
    a, mu, s, b0, b1 = TRUTH
    return a * np.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x


def write(path: str, n: int) -> None:
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


def model(p, x):
    import jax.numpy as jnp

    a, mu, s, b0, b1 = p
    return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x


def stream(path: str, warm_path: str, chunk: int, prefetch: int) -> dict:
    baseline = _rss_mib("VmRSS")
    import hybrid_gn
    from hybrid_gn import sources

    baseline = _rss_mib("VmRSS")  # after import: the reference of the memory bound

    class TimedSource(sources.HDF5Source):
        """Records when each pass starts."""

        starts: list[float] = []

        @contextlib.contextmanager
        def reader(self):
            self.starts.append(time.perf_counter())
            with super().reader() as read:
                yield read

    t = time.perf_counter()
    hybrid_gn.fit_stream(model, START, sources.HDF5Source(warm_path), block_size=chunk,
                         prefetch=prefetch, progress=False)
    compile_s = time.perf_counter() - t
    source = TimedSource(path)
    t = time.perf_counter()
    result = hybrid_gn.fit_stream(model, START, source, block_size=chunk, prefetch=prefetch,
                                  progress=False)
    wall = time.perf_counter() - t
    pass_times = np.diff(source.starts)
    return {"prefetch": prefetch, "n": source.n_points, "baseline_mib": baseline,
            "peak_above_baseline_mib": _rss_mib("VmHWM") - baseline,
            "first_small_fit_s": compile_s, "wall_s": wall,
            "passes": len(source.starts), "pass_s_median": float(np.median(pass_times)),
            "pass_s_all": pass_times.tolist(),
            "warmup_iterations": int(result.warmup_iterations),
            "gn_iterations": int(result.gn_iterations),
            "params": np.asarray(result.params).tolist(), "message": result.message}


def memory(n: int) -> dict:
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

    def timed(f, repeats=3):
        jax.block_until_ready(f())
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            out = jax.block_until_ready(f())
            times.append(time.perf_counter() - t)
        return float(np.median(times)), out

    pass_s, _ = timed(lambda: one_pass(jnp.asarray(START), x, y))
    fit_s, result = timed(lambda: hybrid_gn.fit(model, START, x, y))
    return {"n": n, "one_pass_s": pass_s, "fit_s": fit_s, "passes": int(result.passes),
            "params": np.asarray(result.params).tolist()}


def child(argv: list[str]) -> dict:
    kind = argv[0]
    if kind == "write":
        write(argv[1], int(argv[2]))
        return {}
    if kind == "stream":
        return stream(argv[1], argv[2], int(argv[3]), int(argv[4]))
    return memory(int(argv[1]))


def run_child(*args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2:])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=float, default=1e8)
    parser.add_argument("--path", default="/tmp/hybrid_gn_stream.h5")
    parser.add_argument("--reference-n", type=float, default=1e7)
    parser.add_argument("--chunk", type=int, default=1 << 18)
    parser.add_argument("--keep", action="store_true", help="keep the HDF5 files")
    args = parser.parse_args()
    n, n_ref = int(args.n), int(args.reference_n)
    warm = args.path + ".warm.h5"
    t = time.perf_counter()
    run_child("write", args.path, n)
    run_child("write", warm, 8 * args.chunk)  # same chunk shape and warmup sample shape
    print(f"wrote {n:.3g} points ({os.path.getsize(args.path) / 2**30:.2f} GiB) in "
          f"{time.perf_counter() - t:.1f} s")
    try:
        rows = [run_child("stream", args.path, warm, args.chunk, depth) for depth in (2, 0)]
    finally:
        if not args.keep:
            for p in (args.path, warm):
                if os.path.exists(p):
                    os.unlink(p)
    ref = run_child("memory", n_ref)
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k != "pass_s_all"}))
    print(json.dumps(ref))
    on, off = rows
    per_point = on["pass_s_median"] / n
    ref_point = ref["one_pass_s"] / n_ref
    fit_point = ref["fit_s"] / ref["passes"] / n_ref
    print(f"\nstreaming {n:.0e} points from HDF5, chunk {args.chunk}:")
    print(f"  peak RSS above the post-import baseline: {on['peak_above_baseline_mib']:.0f} MiB "
          f"(read-ahead on), {off['peak_above_baseline_mib']:.0f} MiB (off); baseline "
          f"{on['baseline_mib']:.0f} MiB")
    print(f"  time per pass (median of {on['passes'] - 1}): {on['pass_s_median']:.2f} s "
          f"read-ahead on, {off['pass_s_median']:.2f} s off: read-ahead gain "
          f"{off['pass_s_median'] / on['pass_s_median']:.2f}x")
    print(f"  per point: {per_point * 1e9:.1f} ns streamed vs {ref_point * 1e9:.1f} ns for one "
          f"in-memory fused pass at {n_ref:.0e} ({per_point / ref_point:.2f}x); the in-memory "
          f"fit costs {fit_point * 1e9:.1f} ns a point a pass ({per_point / fit_point:.2f}x)")
    print(f"  whole fit: {on['wall_s']:.1f} s, {on['warmup_iterations']} warmup + "
          f"{on['gn_iterations']} Gauss-Newton iterations, {on['passes']} passes; "
          f"{on['message']}")


if __name__ == "__main__":
    main()
