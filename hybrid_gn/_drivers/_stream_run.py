"""The host side of one streamed fit: passes over the source, digests, checkpoints.

Each pass folds every chunk into the accumulator of the trial point, and
also into a running digest of the data (`_digest`). The digest of the first
pass is the data's; a later pass that reads other data (or another number of
points) is an error, and so is a resumed checkpoint whose data digests (of
the warmup subsample and of a whole pass) differ from those read now: a
state is never continued on other data.

Between iterations the host reads the phase and `use_qr` (to pick the
normal-equations or streamed-QR accumulator for the next pass), writes
checkpoints and updates the progress bar; nothing else leaves the device.
"""

from __future__ import annotations

import contextlib
import time

import jax
import jax.numpy as jnp

from .. import _digest, sources
from .. import _pipeline as pipeline
from .._config import Config, warmup_pays_off
from .._data import Data
from .._pipeline import PipelineState
from .._result import Phase
from ..sources._buffers import device_chunks
from ..sources._survey import subsample
from . import _checkpoint as checkpoints
from . import _stream_steps as steps
from ._progress import Progress
from ._stream_devices import OneDevice, OverMesh, groups


class StreamRun:
    """Passes over `source` in blocks of `block_size` points, and the checkpoints."""

    def __init__(self, source: sources.ChunkSource, n: int, block_size: int, dtype,
                 check_finite: bool, prefetch: int, warmup_chunks: int | None,
                 checkpoint=None, checkpoint_every: int = 10,
                 devices: OneDevice | OverMesh | None = None):
        self.source, self.n, self.block_size, self.dtype = source, n, block_size, dtype
        self.check_finite, self.prefetch, self.warmup_chunks = check_finite, prefetch, \
            warmup_chunks
        self.checkpoint, self.checkpoint_every = checkpoint, checkpoint_every
        self.devices = OneDevice() if devices is None else devices  # where passes are folded
        # digests of the warmup subsample and of a whole pass, once known; those of a
        # resumed checkpoint must be matched before its state is used
        self.digests: dict[str, str | None] = {"sample": None, "data": None}
        self.expected: dict[str, str | None] = {"sample": None, "data": None}
        self.resumed_from = None
        self.fingerprint: dict = {}  # what ties a checkpoint to this problem (`identify`)
        self.settings: dict = {}
        self.done = 0

    def identify(self, fingerprint: dict, settings: dict) -> None:
        """The problem's identity and the configuration a checkpoint must share."""
        self.fingerprint, self.settings = fingerprint, settings

    # --- the data --------------------------------------------------------------------------

    def sample(self, config: Config) -> Data:
        """The warmup's in-memory subsample: every k-th point of `warmup_chunks` chunks spread
        over the data, at most `warmup_max_points` (`chunk_size` where the warmup does not
        run: the sample then only measures the start), its digest checked."""
        max_points = config.warmup_max_points
        if not warmup_pays_off(config, self.n):
            max_points = max_points or config.chunk_size
        chunk = subsample(self.source, self.block_size, self.n, self.warmup_chunks, max_points,
                          self.dtype, self.check_finite)
        data = Data(jax.device_put(chunk.x), jnp.asarray(chunk.y), jnp.asarray(chunk.weight),
                    chunk.n_valid)
        self._match("sample", _digest.text(_digest.fold(_digest.empty(), 0, data.x, data.y,
                                                        data.weight)))
        return data

    def one_pass(self, setup: pipeline.Setup | None = None, u=None,
                 acc: steps.Accumulator | None = None, bar: Progress | None = None):
        """Read the source once, folding each chunk into `acc` at `u` when given (on the
        devices, `group` chunks a step); the pass's digest must match the data's, else
        nothing computed from it is used. Returns the pass's combined accumulator."""
        devices, digest, seen = self.devices, self.devices.empty_digest(), 0
        with contextlib.closing(device_chunks(self.source, self.block_size, self.dtype,
                                              self.check_finite, self.prefetch,
                                              devices.put)) as chunks:
            for group in groups(chunks, devices.group):
                previous, step = (acc, digest), devices.place(group)
                if acc is not None:
                    acc = devices.fold(setup, u, acc, step)
                digest = devices.digest(digest, step)
                if self.prefetch == 0:  # strictly in turn: read, then compute
                    jax.block_until_ready((acc, digest))
                else:  # at most one step queued behind the running one
                    jax.block_until_ready(previous)
                seen += sum(chunk.n_valid for chunk in group)
                if bar is not None:
                    bar.chunk(len(group))
        if seen != self.n:
            raise ValueError(f"the source changed between passes: it had {self.n} points, "
                             f"this pass read {seen}")
        self._match("data", _digest.text(devices.combine_digest(digest)))
        return None if acc is None else devices.combine(acc)

    def _match(self, what: str, digest: str) -> None:
        expected = self.expected[what]
        if expected is not None and expected != digest:
            raise checkpoints.CheckpointError(
                f"checkpoint {self.resumed_from} was written for different data: the "
                f"{'warmup subsample' if what == 'sample' else 'data'} read now has digest "
                f"{digest}, the checkpoint's had {expected}; refusing to resume from it")
        known = self.digests[what]
        if known is not None and known != digest:
            raise ValueError(f"the source changed between passes: the data read now has "
                             f"digest {digest}, the first pass read {known}")
        self.digests[what], self.expected[what] = digest, None

    # --- checkpoints -----------------------------------------------------------------------

    def expect(self, path) -> checkpoints.Checkpoint:
        """Read the checkpoint at `path`, refuse it unless it belongs to this problem and
        configuration (`identify`); the data read from now on must match its digests."""
        saved = checkpoints.read(path)
        checkpoints.check_identity(saved, self.fingerprint, self.settings, path)
        progress = saved.header["progress"]
        self.resumed_from = path
        self.expected = {"sample": progress.get("sample_digest"),
                         "data": progress.get("data_digest")}
        return saved

    def restore(self, saved: checkpoints.Checkpoint, setup: pipeline.Setup) -> PipelineState:
        """The saved state (`expect` has matched its problem and configuration)."""
        template = steps.start.eval_shape(setup)
        state = checkpoints.restore(saved, template, self.resumed_from)
        if int(state.phase) == pipeline.DONE and self.expected["data"] is not None:
            self.one_pass()  # nothing else would read the data: verify it before answering
        self.done = int(state.trace.length)
        return state

    def save(self, state: PipelineState, finished: bool) -> None:
        """Write the checkpoint (atomically), if there is one."""
        if self.checkpoint is None:
            return
        checkpoints.save(self.checkpoint, state, self.fingerprint, self.settings,
                         {"iteration": self.done, "finished": finished,
                          "phase": int(state.phase), "time": time.time(),
                          "sample_digest": self.digests["sample"],
                          "data_digest": self.digests["data"]})

    # --- the iterations --------------------------------------------------------------------

    def iterate(self, setup: pipeline.Setup, state: PipelineState, bar: Progress
                ) -> PipelineState:
        """Warmup steps on the sample, then one pass per Gauss-Newton iteration, to the end,
        with a checkpoint every `checkpoint_every` iterations and one at the end."""
        bar.iteration(state, self.done)
        lean = steps.for_gauss_newton(setup)
        while int(state.phase) != pipeline.DONE:
            if int(state.phase) == Phase.WARMUP:
                state = steps.warmup_step(setup, state)
            else:
                state = self._gauss_newton_step(setup, lean, state, bar)
            self.done += 1
            bar.iteration(state, self.done)
            if self.done % self.checkpoint_every == 0 and int(state.phase) != pipeline.DONE:
                self.save(state, finished=False)
        self.save(state, finished=True)
        return state

    def _gauss_newton_step(self, full: pipeline.Setup, setup: pipeline.Setup,
                           state: PipelineState, bar: Progress) -> PipelineState:
        """One iteration: the trial (matrix-free: on the `full` setup's sample, see
        `_stream_steps`), then one pass to evaluate it."""
        use_qr = bool(state.gauss_newton.use_qr)
        if setup.matrix_free:
            proposal = steps.propose_matrix_free(full, state)
        else:
            proposal = steps.propose(setup, state)
        acc = self.devices.empty(setup, proposal.trial.shape[0], self.dtype, use_qr)
        bar.new_pass()
        acc = self.one_pass(setup, proposal.trial, acc, bar)
        return steps.conclude(setup, state, proposal, acc)
