"""The streaming driver (`fit_stream`) against the in-memory fused driver (`fit`).

The reference is `hybrid_gn.fit` on the same arrays with the same configuration (default
tolerances; warmup forced on, on a 1000-point subsample): the streamed fit must reach the
same parameters, covariance and cost to 1e-10 relative, whatever the source (arrays,
memmap, HDF5, generator) and chunk size, including chunk sizes that do not divide n.
Summation order differs between the drivers (and between chunk sizes); the last,
rounding-level Gauss-Newton step is taken, so the answer does not depend on it.

Compiling costs seconds, so the tests share one model, one data size and one configuration.
"""

from __future__ import annotations

import dataclasses
import threading

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hybrid_gn
from hybrid_gn import Config, fit_stream, sources
from hybrid_gn._drivers import _stream_steps as steps

N = 3000
# a warmup sample of 1000 points: every 3rd point of all 3000, or all points of 2 chunks of
# 500, so the warmup programs compile once for both
CONFIG = Config(warmup=True, warmup_max_points=1000)
TRUTH = np.array([3.0, 5.0, 0.8, 0.5, 0.1])
P0 = np.array([2.0, 4.6, 1.1, 0.2, 0.0])


def peak(p, x):
    a, mu, s, b0, b1 = p
    return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x


def plane_peak(p, x, args):
    """A peak over a plane in two inputs: x has shape (n, 2); args shifts the peak."""
    a, mu, s, b0, b1 = p
    return a * jnp.exp(-0.5 * ((x[:, 0] + args["shift"] - mu) / s) ** 2) + b0 + b1 * x[:, 1]


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0, 10, N))
    sigma = rng.uniform(0.1, 0.3, N)
    y = np.asarray(peak(TRUTH, x)) + sigma * rng.standard_normal(N)
    return x, y, sigma


X, Y, SIGMA = _data()


@pytest.fixture(scope="module")
def reference() -> hybrid_gn.Result:
    return hybrid_gn.fit(peak, P0, X, Y, sigma=SIGMA, config=CONFIG)


def assert_same_fit(result: hybrid_gn.Result, ref: hybrid_gn.Result, rtol: float) -> None:
    np.testing.assert_allclose(result.params, ref.params, rtol=rtol, atol=0)
    se = np.sqrt(np.diag(ref.pcov))  # entries relative to the standard errors
    np.testing.assert_allclose(result.pcov / np.outer(se, se), ref.pcov / np.outer(se, se),
                               rtol=0, atol=100 * rtol)
    np.testing.assert_allclose(result.cost, ref.cost, rtol=rtol)
    assert int(result.n_points) == int(ref.n_points)
    assert bool(result.success)


@pytest.mark.parametrize("chunk_size", [1000, 1024, 4096])
def test_matches_in_memory_fit(reference, chunk_size):
    """1000 divides n, 1024 does not (a padded last chunk), 4096 > n (one padded chunk)."""
    result = fit_stream(peak, P0, (X, Y, SIGMA), config=CONFIG, block_size=chunk_size,
                        progress=False)
    assert_same_fit(result, reference, 1e-10)
    # the streamed warmup is the fused one (all chunks sampled): same iterations
    assert int(result.warmup_iterations) == int(reference.warmup_iterations)
    assert int(result.warmup_reason) == int(reference.warmup_reason)
    length = int(result.trace.length)
    assert length == int(result.warmup_iterations) + int(result.gn_iterations) + 1
    np.testing.assert_array_equal(result.trace.phase[:length], reference.trace.phase[:length])


def test_stream_equals_fit_from_a_start_near_zero(monkeypatch, capfd):
    """Phase 0 is the same in both drivers: from p0 = [1, 0] the second parameter's scale is
    floored by its influence on the residuals (1e4 here, not |p0| = 0 -> 1), so both take
    the same iterations to the same answer; with Config(progress=True) both report them."""
    def model(p, x):
        return p[0] * x + 1e-6 * p[1] * x ** 2

    rng = np.random.default_rng(3)
    x = np.linspace(0.0, 1.0, 400)
    y = 2.0 * x + 3e-5 * x ** 2 + 0.01 * rng.standard_normal(x.size)
    p0 = np.array([1.0, 0.0])
    config = Config(progress=True)
    setups = []
    make_setup = steps.make_setup
    monkeypatch.setattr(steps, "make_setup", lambda *a: setups.append(make_setup(*a))
                        or setups[-1])
    streamed = fit_stream(model, p0, (x, y), config=config, block_size=x.size, progress=False)
    stream_lines = capfd.readouterr().err.count("hybrid_gn gauss-newton iteration")
    fused = hybrid_gn.fit(model, p0, x, y, config=config)
    jax.effects_barrier()
    fused_lines = capfd.readouterr().err.count("hybrid_gn gauss-newton iteration")

    fused_setup, _ = hybrid_gn._pipeline.prepare(model, jnp.asarray(p0), x, jnp.asarray(y),
                                                 None, None, None, None, config)
    scale = np.asarray(fused_setup.problem.norm.scale)
    assert scale[1] > 1e3  # the influence floor, not |p0| = 0 -> 1
    np.testing.assert_array_equal(np.asarray(setups[0].problem.norm.scale), scale)
    assert int(streamed.gn_iterations) == int(fused.gn_iterations)
    np.testing.assert_allclose(streamed.params, fused.params, rtol=1e-10, atol=0)
    passes = int(fused.gn_iterations) + 1
    assert fused_lines == passes and stream_lines == passes


def test_one_compiled_fold_for_all_chunks_and_passes():
    """Every chunk, including the padded last one, and every pass reuse one program."""
    pieces = (steps.start, steps.warmup_step, steps.propose, steps.fold, steps.conclude)
    for piece in pieces:
        piece.clear_cache()
    result = fit_stream(peak, P0, (X, Y, SIGMA), config=CONFIG, block_size=777, progress=False)
    passes = int(result.gn_iterations) + 1
    assert passes >= 3 and -(-N // 777) == 4  # 4 chunks (the last padded) per pass
    assert steps.fold.cache_size() == 1
    # a second fit of other data with the same shapes compiles nothing new
    x, y, sigma = _data(seed=1)
    fit_stream(peak, P0, (x, y, sigma), config=CONFIG, block_size=777, progress=False)
    for piece in pieces:
        assert piece.cache_size() <= 1, piece.__name__


def test_switch_to_streamed_qr(reference):
    """factorization="auto" switches to the streamed QR once cond(J) > qr_condition (here
    at once): the host picks the QR accumulator from the state, one more compiled fold,
    and the same optimum."""
    config = dataclasses.replace(CONFIG, qr_condition=1.0)  # a traced field: no recompile
    steps.fold.clear_cache()
    result = fit_stream(peak, P0, (X, Y, SIGMA), config=config, block_size=1100,
                        progress=False)
    # the start is evaluated with the normal equations, every later pass by QR: two programs
    assert steps.fold.cache_size() == 2
    assert int(result.gn_iterations) >= 2
    assert_same_fit(result, reference, 1e-10)


def test_memmap_hdf5_and_generator_sources_agree(reference, tmp_path):
    """The three other sources give the array source's fit (same chunks: same rounding)."""
    base = fit_stream(peak, P0, (X, Y, SIGMA), config=CONFIG, block_size=1024, progress=False)
    with pytest.warns(FutureWarning, match="block_size"):  # the former name still works
        old_name = fit_stream(peak, P0, (X, Y, SIGMA), config=CONFIG, chunk_size=1024,
                              progress=False)
    np.testing.assert_array_equal(old_name.params, base.params)

    mm = np.lib.format.open_memmap(tmp_path / "data.npy", mode="w+", shape=(3, N))
    mm[:] = np.stack([X, Y, SIGMA])
    mm.flush()
    mm = np.load(tmp_path / "data.npy", mmap_mode="r")
    from_memmap = fit_stream(peak, P0, sources.ArraySource(mm[0], mm[1], mm[2]), config=CONFIG,
                             block_size=1024, progress=False)

    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["x"], f["y"], f["sigma"] = X, Y, SIGMA
    from_hdf5 = fit_stream(peak, P0, sources.HDF5Source(path, sigma="sigma"), config=CONFIG,
                           block_size=1024, progress=False)

    cuts = [0, 7, 700, 701, 1900, 2999, N]  # ragged chunks, re-cut by the driver

    def chunks():
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            yield X[a:b], Y[a:b], SIGMA[a:b]

    from_generator = fit_stream(peak, P0, chunks, config=CONFIG, block_size=1024,
                                progress=False)
    for result in (from_memmap, from_hdf5, from_generator):
        assert_same_fit(result, base, 1e-13)
    assert_same_fit(from_hdf5, reference, 1e-10)


def test_hdf5_two_dimensional_x_bounds_args_absolute_sigma(tmp_path):
    """x stored as an (n, 2) dataset, a bound that binds, model args and absolute_sigma,
    against `fit` on the same arrays with the same chunks.

    Same chunking, nearly the same order of summation (the last chunk is padded here,
    shifted back there): equal to rounding.
    """
    rng = np.random.default_rng(2)
    args = {"shift": jnp.asarray(0.25)}
    x = np.stack([np.sort(rng.uniform(0, 10, N)), rng.uniform(-1, 1, N)], axis=1)
    sigma = np.full(N, 0.2)
    y = np.asarray(plane_peak(TRUTH, x, args)) + sigma * rng.standard_normal(N)
    bounds = (np.array([0.0, 0.0, 0.1, -1.0, 0.0]), np.array([10.0, 10.0, 5.0, 0.45, 1.0]))
    path = tmp_path / "plane.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("inputs/x", data=x)
        f.create_dataset("inputs/y", data=y)
        f.create_dataset("sd", data=sigma)
    ref = hybrid_gn.fit(plane_peak, P0, x, y, sigma=sigma, bounds=bounds, args=args,
                        absolute_sigma=True, config=dataclasses.replace(CONFIG, chunk_size=1024))
    source = sources.HDF5Source(path, x="inputs/x", y="inputs/y", sigma="sd")
    result = fit_stream(plane_peak, P0, source, bounds=bounds, args=args, absolute_sigma=True,
                        config=CONFIG, block_size=1024, progress=False)
    assert float(ref.params[3]) == pytest.approx(0.45, rel=1e-15)  # the bound binds
    assert_same_fit(result, ref, 1e-11)
    np.testing.assert_allclose(result.params, TRUTH, rtol=0.15)  # sanity: a real fit


class CountingSource(sources.ArraySource):
    """An array source that counts the points it is asked to read."""

    def __init__(self, *arrays):
        super().__init__(*arrays)
        self.points_read = 0

    def block_range(self, start, stop):
        self.points_read += stop - start
        return super().block_range(start, stop)


def test_warmup_reads_only_the_sampled_chunks(reference):
    """warmup_chunks=2 of 6: the warmup reads 2 chunks, not the file, and GN still converges
    to the in-memory optimum."""
    source = CountingSource(X, Y, SIGMA)
    result = fit_stream(peak, P0, source, config=CONFIG, block_size=500, warmup_chunks=2,
                        progress=False)
    passes = int(result.gn_iterations) + 1
    # the head (one chunk) + 2 warmup chunks + the passes (each also reads 1 point for the
    # per-point shapes of its buffers)
    assert source.points_read == 500 + 2 * 500 + passes * (N + 1)
    assert int(result.warmup_iterations) > 0
    assert_same_fit(result, reference, 1e-10)


@pytest.mark.slow  # compiles every piece once more, for float32 (~10 s)
def test_float32_stays_float32(reference):
    """float32 data and start give a float32 fit close to the float64 one."""
    result = fit_stream(peak, P0.astype(np.float32),
                        (X.astype(np.float32), Y.astype(np.float32), SIGMA.astype(np.float32)),
                        block_size=1024, progress=False)
    assert result.params.dtype == jnp.float32
    np.testing.assert_allclose(result.params, reference.params, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Bad input while streaming
# ---------------------------------------------------------------------------------------------


def test_nan_chunk_names_the_chunk():
    y = Y.copy()
    y[2100] = np.nan
    message = r"chunk 2 \(points 2048 to 2999\): y contains NaN.*point 2100"
    with pytest.raises(ValueError, match=message):
        fit_stream(peak, P0, (X, y), block_size=1024, progress=False)


def test_nan_in_hdf5_names_dataset_and_chunk(tmp_path):
    """Found during a pass (after the start was evaluated), raised in the main thread."""
    y = Y.copy()
    y[-1] = np.inf
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["x"], f["values"] = X, y
    threads = threading.active_count()
    with pytest.raises(ValueError, match=r"chunk 2 .*dataset 'values' of bad.h5.*NaN or Inf"):
        fit_stream(peak, P0, sources.HDF5Source(path, y="values"), block_size=1024,
                   progress=False)
    assert threading.active_count() == threads  # the read-ahead thread has stopped


def test_missing_hdf5_dataset(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["x"], f["y"] = X, Y
    with pytest.raises(ValueError, match=r"dataset 'sigma' \(for sigma\) does not exist"):
        sources.HDF5Source(path, sigma="sigma")
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        sources.HDF5Source(tmp_path / "missing.h5")


def test_mismatched_chunks_from_a_generator():
    def lengths_differ():
        yield X[:100], Y[:99]

    with pytest.raises(ValueError, match=r"chunk 0 .*has shape \(100,\) but y has 99 points"):
        fit_stream(peak, P0, lengths_differ, progress=False)

    def shape_changes():
        yield X[:100], Y[:100]
        yield X[100:200, None], Y[100:200]

    with pytest.raises(ValueError, match=r"chunk 1 \(points 100 to 199\): x has per-point"):
        fit_stream(peak, P0, shape_changes, progress=False)

    def sigma_appears():
        yield X[:100], Y[:100]
        yield X[100:200], Y[100:200], SIGMA[100:200]

    with pytest.raises(ValueError, match=r"chunk 1 .*sigma is given here but missing"):
        fit_stream(peak, P0, sigma_appears, progress=False)

    def not_a_tuple():
        yield X[:100]

    with pytest.raises(ValueError, match="chunk 0 from the source must be a tuple"):
        fit_stream(peak, P0, not_a_tuple, progress=False)


def test_empty_sources():
    with pytest.raises(ValueError, match="source is empty"):
        fit_stream(peak, P0, lambda: iter(()), progress=False)
    with pytest.raises(ValueError, match="source is empty"):
        fit_stream(peak, P0, (np.zeros(0), np.zeros(0)), progress=False)


def test_nonpositive_sigma_and_changing_source():
    sigma = SIGMA.copy()
    sigma[5] = 0.0
    with pytest.raises(ValueError, match=r"chunk 0 .*sigma must be strictly positive.*point 5"):
        fit_stream(peak, P0, (X, Y, sigma), block_size=1024, progress=False)

    calls = []

    def shrinking():  # fewer points from the third pass on
        calls.append(1)
        stop = N if len(calls) < 3 else N - 10
        yield X[:stop], Y[:stop]

    with pytest.raises(ValueError, match="source changed between passes"):
        fit_stream(peak, P0, shrinking, config=CONFIG, block_size=1024, progress=False)


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------


def test_progress_bar(capsys):
    fit_stream(peak, P0, (X, Y, SIGMA), config=CONFIG, block_size=1024, progress=True)
    err = capsys.readouterr().err
    assert "hybrid_gn iterations" in err and "gauss-newton" in err
    fit_stream(peak, P0, (X, Y, SIGMA), config=CONFIG, block_size=1024, progress=False)
    assert capsys.readouterr().err == ""


def test_fused_progress_callback_compiled_out_when_off():
    """Config.progress adds a jax.debug.callback to the fused program; off, none is there."""
    def jaxpr(progress: bool) -> str:
        config = Config(progress=progress, chunk_size=64)
        return str(jax.make_jaxpr(
            lambda p0, y: hybrid_gn.fit(peak, p0, X[:200], y, config=config))(P0, Y[:200]))

    assert "callback" not in jaxpr(False)
    assert "debug_callback" in jaxpr(True)


# ---------------------------------------------------------------------------------------------
# Bounded memory
# ---------------------------------------------------------------------------------------------

MEMORY_SCRIPT = """
import sys
from pathlib import Path

import numpy as np
import jax.numpy as jnp


def rss_mib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024


import hybrid_gn

baseline = rss_mib("VmRSS")
n = int(sys.argv[1])


def model(p, x):
    a, mu, s, b0, b1 = p
    return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x


def chunks():  # generated on the fly: the data never exists in memory as a whole
    rng = np.random.default_rng(0)
    for start in range(0, n, 100_000):
        x = 10.0 * np.arange(start, min(start + 100_000, n)) / (n - 1)
        y = 3 * np.exp(-0.5 * ((x - 5) / 0.8) ** 2) + 0.5 + 0.1 * x
        yield x, y + 0.2 * rng.standard_normal(x.size)


result = hybrid_gn.fit_stream(model, np.array([2.0, 4.6, 1.1, 0.2, 0.0]), chunks,
                              block_size=1 << 16, progress=False)
assert bool(result.success), result.message
print(rss_mib("VmHWM") - baseline)
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_n(tmp_path):
    """Peak RSS above the post-import baseline, for 1e6 and 1.6e7 generated points (the
    latter's x and y alone would take 256 MB): the same to within 40 MB."""
    import subprocess
    import sys

    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT)
    peaks = [float(subprocess.run([sys.executable, str(script), str(n)], check=True,
                                  capture_output=True, text=True).stdout.split()[-1])
             for n in (1_000_000, 16_000_000)]
    assert abs(peaks[1] - peaks[0]) < 40, peaks
    assert peaks[1] < 300, peaks
