"""Checkpoint and resume of the streaming driver.

The reference for a resumed fit is the same fit run without interruption: resuming from a
checkpoint restores the optimizer state bit for bit, so both must reach the same parameters
(to 1e-12; in practice exactly). A checkpoint that is truncated, corrupt, or written for
another problem or configuration must be refused with a clear error, never resumed from.

The model, data and configuration are those of test_streaming.py, so the compiled programs
are shared when both files run in one session.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_streaming import CONFIG, P0, SIGMA, N, X, Y, peak

import hybrid_gn
from hybrid_gn import CheckpointError, Config, Phase, fit_stream
from hybrid_gn._drivers import _checkpoint as checkpoints

CHUNK = 1024


def chunks(delay: float = 0.0, bad_from_pass: int | None = None, calls: list | None = None):
    """A generator source over the shared data, in ragged pieces; optionally slow, or with a
    NaN from a given pass on (counting passes in `calls`)."""
    calls = [] if calls is None else calls

    def make():
        calls.append(1)
        y = Y
        if bad_from_pass is not None and len(calls) >= bad_from_pass:
            y = Y.copy()
            y[N - 5] = np.nan
        for start in range(0, N, 600):
            time.sleep(delay)
            stop = min(start + 600, N)
            yield X[start:stop], y[start:stop], SIGMA[start:stop]

    return make


def run(source=None, **kwargs) -> hybrid_gn.Result:
    kwargs.setdefault("config", CONFIG)
    return fit_stream(peak, P0, chunks() if source is None else source, block_size=CHUNK,
                      progress=False, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted() -> hybrid_gn.Result:
    return run()


@pytest.fixture()
def saved(tmp_path) -> Path:
    """A checkpoint written by a complete fit."""
    path = tmp_path / "fit.ckpt"
    run(checkpoint=path)
    return path


def assert_same_params(result, reference, rtol=1e-12) -> None:
    np.testing.assert_allclose(result.params, reference.params, rtol=rtol, atol=0)
    np.testing.assert_allclose(result.cost, reference.cost, rtol=rtol)


SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_checkpoint import chunks, run
    run(chunks(delay=0.03), checkpoint={path!r}, checkpoint_every=1)
""")


def test_resume_after_sigkill_reaches_the_uninterrupted_result(tmp_path, uninterrupted):
    """A fit in a subprocess, killed with SIGKILL during Gauss-Newton, resumed here."""
    path = tmp_path / "fit.ckpt"
    script = SCRIPT.format(tests=str(Path(__file__).parent), path=str(path))
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    killed_at = None
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if path.exists():
            saved = checkpoints.read(path)
            progress = saved.header["progress"]
            if progress["phase"] == Phase.GAUSS_NEWTON and not progress["finished"] and (
                    saved.iteration >= int(uninterrupted.warmup_iterations) + 2):
                process.send_signal(signal.SIGKILL)
                killed_at = saved.iteration
                break
        time.sleep(0.01)
    process.wait()
    assert killed_at is not None, process.stderr.read().decode()[-2000:]
    assert process.returncode == -signal.SIGKILL

    saved = checkpoints.read(path)  # still valid after the kill
    total = int(uninterrupted.trace.length)
    assert saved.iteration < total and not saved.finished  # really killed mid-run
    # a kill that lands inside a save leaves its temporary file (no handler runs on SIGKILL);
    # nothing else is there, and the resumed fit removes it
    left = {p.name for p in tmp_path.iterdir()} - {"fit.ckpt"}
    assert path.exists() and all(
        name.startswith(".fit.ckpt.") and name.endswith(".tmp") for name in left), left

    resumed = run(resume=path, checkpoint=path)
    assert [p.name for p in tmp_path.iterdir()] == ["fit.ckpt"]  # no temporary file left
    assert_same_params(resumed, uninterrupted)
    np.testing.assert_array_equal(resumed.pcov, uninterrupted.pcov)
    assert int(resumed.trace.length) == total
    assert checkpoints.read(path).finished


def test_resume_from_a_finished_checkpoint_only_verifies_the_data(saved, uninterrupted):
    """No Gauss-Newton pass: the survey that counts the points, the read of the warmup
    subsample (phase 0 measures the parameters' influence on it: the normalization must be
    rebuilt), then one pass that checks the data's digest against the checkpoint's."""
    calls: list = []
    result = run(chunks(calls=calls), resume=saved)
    assert_same_params(result, uninterrupted)
    np.testing.assert_array_equal(result.trace.cost, uninterrupted.trace.cost)
    assert len(calls) == 3


def test_resume_during_warmup(tmp_path, uninterrupted):
    """A checkpoint taken mid-warmup (the optax L-BFGS state included) resumes exactly.

    The fit is stopped (as by Ctrl-C) in its first Gauss-Newton pass; its last checkpoint
    was written one iteration before the end of the warmup.
    """
    warmup_iterations = int(uninterrupted.warmup_iterations)
    assert warmup_iterations >= 3
    path = tmp_path / "warm.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(_interrupting_source(after_passes=3), checkpoint=path,
            checkpoint_every=warmup_iterations - 1)
    saved = checkpoints.read(path)
    assert saved.header["progress"]["phase"] == Phase.WARMUP
    assert saved.iteration == warmup_iterations - 1
    assert_same_params(run(resume=path), uninterrupted)


def _interrupting_source(after_passes: int):
    """A source whose pass number `after_passes` raises KeyboardInterrupt (a user's Ctrl-C)."""
    calls: list = []
    inner = chunks(calls=[])

    def make():
        calls.append(1)
        if len(calls) >= after_passes:
            raise KeyboardInterrupt
        return inner()

    return make


def test_truncated_checkpoint_is_refused(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        run(resume=saved)


def test_corrupt_checkpoint_is_refused(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[len(data) // 3] ^= 0xFF  # one flipped byte inside the stored arrays
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        run(resume=saved)
    # a consistent archive whose content no longer matches its digest
    good = tmp_path / "good.ckpt"
    run(checkpoint=good)
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["leaf_00003"] = arrays["leaf_00003"] + 1
    with open(good, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(CheckpointError, match="does not match its digest"):
        run(resume=good)


def test_checkpoint_of_another_problem_is_refused(saved):
    with pytest.raises(CheckpointError, match="different problem.*start_and_bounds"):
        fit_stream(peak, P0 * 1.01, chunks(), block_size=CHUNK, config=CONFIG, progress=False,
                   resume=saved)
    y = Y.copy()
    y[0] += 1  # other data of the same size
    with pytest.raises(CheckpointError, match="different problem.*first_points"):
        fit_stream(peak, P0, (X, y, SIGMA), block_size=CHUNK, config=CONFIG, progress=False,
                   resume=saved)
    with pytest.raises(CheckpointError, match="different problem.*n_points"):
        fit_stream(peak, P0, (X[:-1], Y[:-1], SIGMA[:-1]), block_size=CHUNK, config=CONFIG,
                   progress=False, resume=saved)

    def other_model(p, x):  # the model's computation counts, not its name
        return peak(p, x) * 1.0000001

    with pytest.raises(CheckpointError, match="different problem.*model"):
        fit_stream(other_model, P0, chunks(), block_size=CHUNK, config=CONFIG, progress=False,
                   resume=saved)


def test_checkpoint_of_another_configuration_is_refused(saved):
    with pytest.raises(CheckpointError, match="different configuration.*ftol"):
        run(resume=saved, config=Config(ftol=1e-12, xtol=1e-15, gtol=1e-15))
    with pytest.raises(CheckpointError, match="different configuration.*loss"):
        run(resume=saved, config=dataclasses.replace(CONFIG, loss="cauchy"))
    with pytest.raises(CheckpointError, match="different configuration.*block_size"):
        fit_stream(peak, P0, chunks(), block_size=512, config=CONFIG, progress=False,
                   resume=saved)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        run(resume=saved.parent / "nothing.ckpt")


def test_failed_write_keeps_the_previous_checkpoint(saved, monkeypatch):
    """A crash while writing leaves the old checkpoint intact and no temporary file."""
    before = saved.read_bytes()

    def failing_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        run(checkpoint=saved)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def test_bad_chunk_mid_fit_leaves_a_valid_checkpoint(tmp_path, uninterrupted):
    """NaN appearing in a later pass: a clear error; the last checkpoint still resumes."""
    path = tmp_path / "fit.ckpt"
    bad = int(uninterrupted.gn_iterations)  # fails on one of the last passes
    with pytest.raises(ValueError, match=r"chunk 4 \(points 2400 to 2999\): y contains NaN"):
        run(chunks(bad_from_pass=bad + 1), checkpoint=path, checkpoint_every=1)
    saved = checkpoints.read(path)
    assert not saved.finished
    assert sorted(os.listdir(tmp_path)) == ["fit.ckpt"]
    assert_same_params(run(resume=path), uninterrupted)


STRESS_SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    from test_checkpoint import chunks, run
    path = {path!r}
    run(chunks(delay=0.02), checkpoint=path, checkpoint_every=1,
        resume=path if os.path.exists(path) else None)
    print("finished")
""")


def _mtime(path: Path):
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _kill_and_resume(tmp_path, kills: int, seed: int, uninterrupted) -> None:
    """`kills` times: start (or resume) the fit in a subprocess and SIGKILL it at a random
    moment of its iterations (0-0.3 s after one of its checkpoint saves: inside a pass or
    inside the next save); then finish the fit here."""
    rng = np.random.default_rng(seed)
    path = tmp_path / "fit.ckpt"
    script = STRESS_SCRIPT.format(tests=str(Path(__file__).parent), path=str(path))
    killed = 0
    for _ in range(kills):
        before = _mtime(path)
        process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while _mtime(path) == before and process.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if process.returncode == -signal.SIGKILL:
            killed += 1
        else:  # it finished before the kill landed: start over, to keep killing mid-run
            assert b"finished" in process.stdout.read(), process.stderr.read()[-2000:]
            path.unlink()
        if path.exists():
            checkpoints.read(path)  # every checkpoint a kill leaves is valid
    assert killed >= kills // 2
    resumed = run(resume=path if path.exists() else None, checkpoint=path)
    assert_same_params(resumed, uninterrupted)
    np.testing.assert_array_equal(resumed.trace.cost, uninterrupted.trace.cost)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.ckpt"]  # no temporary file


def test_killed_three_times_at_random_the_fit_resumes_exactly(tmp_path, uninterrupted):
    """The quick variant of the stress test below."""
    _kill_and_resume(tmp_path, kills=3, seed=1, uninterrupted=uninterrupted)


@pytest.mark.slow
def test_killed_twenty_times_at_random_the_fit_resumes_exactly(tmp_path, uninterrupted):
    _kill_and_resume(tmp_path, kills=20, seed=2, uninterrupted=uninterrupted)
