"""The streaming driver: fits data read from disk or a generator, chunk by chunk.

A thin host loop around the same pure, jitted functions the fused driver
runs inside its `while_loop`s: `warmup.init`/`update` on an in-memory
subsample, `gauss_newton.propose`, `accumulate.fold_chunk` once per chunk
(fixed chunk shape, the last chunk padded with weight 0, so it compiles
once), `accumulate.finish` and `gauss_newton.conclude` once per pass, and
`api.make_result` for the covariance. Memory is one chunk in flight (plus
the read-ahead queue) and the O(p^2) state, whatever the size of the data.

Between iterations the host reads the phase and `use_qr` (to pick the
normal-equations or streamed-QR accumulator for the next pass), writes
checkpoints and updates the progress bar; nothing else leaves the device.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import os
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from . import _digest, accumulate, gauss_newton, pipeline, warmup
from . import checkpoint as checkpoints
from ._model import Bound
from ._validate import check_fit, float_dtype
from .api import Model, make_result
from .config import Config, warmup_pays_off, with_tolerances
from .data import Data
from .gauss_newton import Proposal
from .pipeline import PipelineState
from .problem import Problem, make_problem
from .result import Phase, Result, Trace
from .sources import Block, ChunkSource, as_source
from .sources._buffers import device_chunks
from .sources._protocol import Chunk
from .sources._survey import subsample, survey

_DONE = 0  # phase code of a finished fit (as in pipeline)

# Times each jitted piece has been traced (tests check that chunks and passes reuse one program).
TRACE_COUNTS: collections.Counter = collections.Counter()


def fit_stream(
    model: Model,
    p0: PyTree,
    source,
    *,
    bounds=None,
    args: PyTree = None,
    absolute_sigma: bool = False,
    check_finite: bool = True,
    config: Config | None = None,
    chunk_size: int = 1 << 18,
    warmup_chunks: int | None = 8,
    prefetch: int = 2,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    resume: str | os.PathLike | None = None,
    progress: bool = True,
) -> Result:
    """Fit `model(params, x) ~ y` to data streamed from `source`, in bounded memory.

    `source` is a `sources.ChunkSource` (`ArraySource` for numpy arrays and
    memmaps, `HDF5Source` for datasets of an HDF5 file, `CallableSource`), a
    tuple `(x, y[, sigma])` of arrays, or a callable returning a new iterator
    of `(x, y[, sigma])` chunks for each pass. The data is read in chunks of
    `chunk_size` points (`prefetch` chunks read ahead in a thread; 0 reads in
    turn with the computation); each Gauss-Newton iteration is one pass. The
    L-BFGS warmup runs in memory on a strided subsample of at most
    `config.warmup_max_points` points drawn from `warmup_chunks` chunks spread
    evenly over the data (None: all chunks, which reproduces `fit`'s warmup).

    With `checkpoint` (a path), the state is written atomically every
    `checkpoint_every` iterations and at the end; `resume` continues from such
    a file after checking that it belongs to this problem and configuration.
    `progress` shows a tqdm bar over iterations and chunks (a widget in
    notebooks). The other arguments are those of `fit`; the result equals
    `fit`'s on the same data up to rounding.
    """
    config = Config() if config is None else config
    if not isinstance(config, Config):
        raise TypeError(f"config must be a hybrid_gn.Config, got {type(config).__name__}")
    _check_int("chunk_size", chunk_size, 1)
    _check_int("checkpoint_every", checkpoint_every, 1)
    _check_int("prefetch", prefetch, 0)
    if warmup_chunks is not None:
        _check_int("warmup_chunks", warmup_chunks, 1)
    if checkpoint is not None:
        checkpoints.check_writable(checkpoint)
    source = as_source(source)
    n, head = survey(source, chunk_size, check_finite)
    p = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(p0))
    if n < p:
        raise ValueError(f"too few data points: the source has n = {n}, fewer than the number "
                         f"of parameters p = {p}")
    if head.length < p:
        raise ValueError(f"chunk_size = {chunk_size} must be at least the number of "
                         f"parameters p = {p}")
    inputs = check_fit(model, p0, head.x, head.y, head.sigma, bounds, check_finite, config, args,
                       n_points=n)
    dtype = float_dtype(inputs.p0, head.y)
    config = with_tolerances(config, dtype)
    p0 = jax.tree.map(lambda a: jnp.asarray(a, dtype), inputs.p0)
    bounds = None if inputs.bounds is None else jax.tree.map(lambda b: jnp.asarray(b, dtype),
                                                             inputs.bounds)
    fixed = _Fixed(inputs.model, p0, bounds, inputs.model_args, config)
    problem = make_problem(inputs.model, p0, bounds, config, dtype)
    run = _Run(source, fixed, n, chunk_size, dtype, check_finite, prefetch, warmup_chunks,
               checkpoint, checkpoint_every,
               _fingerprint(inputs.model, p0, problem, inputs.model_args, head, n, dtype),
               _settings(config, chunk_size, warmup_chunks, absolute_sigma, check_finite))
    if resume is not None:
        state = run.resume(resume, head)
    else:
        state = _start(fixed, run.sample(), n)
    with _Progress(progress, -(-n // chunk_size)) as bar:
        state = run.iterate(state, bar)
    run.finish(state)
    return _result(fixed, state, jnp.asarray(n), absolute_sigma)


class _Run:
    """The host side of one streamed fit: passes over the source, the data digests that
    tie a checkpoint to its data, and checkpoint writes."""

    def __init__(self, source: ChunkSource, fixed: _Fixed, n: int, chunk_size: int, dtype,
                 check_finite: bool, prefetch: int, warmup_chunks: int | None, checkpoint,
                 checkpoint_every: int, fingerprint: dict, settings: dict):
        self.source, self.fixed, self.n, self.chunk_size = source, fixed, n, chunk_size
        self.dtype, self.check_finite, self.prefetch = dtype, check_finite, prefetch
        self.warmup_chunks, self.checkpoint = warmup_chunks, checkpoint
        self.checkpoint_every, self.fingerprint, self.settings = (checkpoint_every,
                                                                  fingerprint, settings)
        self.warmup_data: Data | None = None
        # digests of the warmup subsample and of a whole pass, once known; those of a
        # resumed checkpoint must be matched before its state is used
        self.digests: dict[str, str | None] = {"sample": None, "data": None}
        self.expected: dict[str, str | None] = {"sample": None, "data": None}
        self.done = 0

    # --- the data --------------------------------------------------------------------------

    def sample(self) -> Data:
        """The warmup subsample (read once), its digest checked against a resumed one."""
        if self.warmup_data is None:
            config, n, size = self.fixed.config, self.n, self.chunk_size
            if not warmup_pays_off(config, n):
                # warmup.init still evaluates the start (the warmup mode in the Result): on
                # the first points, all of them where the data is small, as `fit` does
                first = min(n, config.warmup_max_points or size)
                chunk = subsample(self.source, size, first, None, None, self.dtype,
                                  self.check_finite)
            else:
                chunk = subsample(self.source, size, n, self.warmup_chunks,
                                  config.warmup_max_points, self.dtype, self.check_finite)
            self.warmup_data = _to_data(chunk)
            data = self.warmup_data
            self._match("sample", _digest.text(_digest.fold(_digest.empty(), 0, data.x, data.y,
                                                            data.weight)))
        return self.warmup_data

    def one_pass(self, fold=None, bar=None):
        """Read the source once, folding each chunk into `fold`'s accumulator when given;
        the pass's digest must match the data's (a resumed checkpoint's, or the first
        pass's), else nothing computed from it is used."""
        acc = None if fold is None else fold[1]
        digest, seen = _digest.empty(), 0
        with contextlib.closing(_pass(self.source, self.chunk_size, self.dtype,
                                      self.check_finite, self.prefetch)) as chunks:
            for chunk in chunks:
                previous = (acc, digest)
                if fold is not None:
                    acc = _fold(self.fixed, fold[0], acc, chunk.x, chunk.y, chunk.weight)
                digest = _digest.fold(digest, chunk.start, chunk.x, chunk.y, chunk.weight)
                if self.prefetch == 0:  # strictly in turn: read, then compute
                    jax.block_until_ready((acc, digest))
                else:  # at most one chunk queued behind the running one
                    jax.block_until_ready(previous)
                seen += chunk.n_valid
                if bar is not None:
                    bar.chunk()
        if seen != self.n:
            raise ValueError(f"the source changed between passes: it had {self.n} points, "
                             f"this pass read {seen}")
        self._match("data", _digest.text(digest))
        return acc

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

    # --- the iterations --------------------------------------------------------------------

    def resume(self, path, head: Block) -> PipelineState:
        """The state saved at `path`, once its problem, configuration and data match."""
        saved = checkpoints.read(path)
        template = _start.eval_shape(self.fixed, _to_data(_head_chunk(head, self.dtype)),
                                     self.n)
        state = checkpoints.restore(saved, template, self.fingerprint, self.settings, path)
        progress = saved.header["progress"]
        self.resumed_from = path
        self.expected = {"sample": progress.get("sample_digest"),
                         "data": progress.get("data_digest")}
        if self.expected["data"] is None:
            self.sample()  # checks the subsample; the first pass checks the rest
        elif int(state.phase) == _DONE:
            self.one_pass()  # nothing else would read the data: verify it before answering
        self.done = int(state.trace.length)
        return state

    def iterate(self, state: PipelineState, bar: _Progress) -> PipelineState:
        bar.iteration(state, self.done)
        while int(state.phase) == Phase.WARMUP:
            state = _warmup_step(self.fixed, self.sample(), state)
            self.after_iteration(state, bar)
        while int(state.phase) != _DONE:
            use_qr = bool(state.gauss_newton.use_qr)
            proposal = _propose(self.fixed, state)
            acc = accumulate.empty_accumulator(proposal.trial.shape[0], self.dtype, use_qr)
            bar.new_pass()
            acc = self.one_pass((proposal.trial, acc), bar)
            state = _conclude(self.fixed, state, proposal, acc)
            self.after_iteration(state, bar)
        return state

    def after_iteration(self, state: PipelineState, bar: _Progress) -> None:
        self.done += 1
        bar.iteration(state, self.done)
        if (self.checkpoint is not None and self.done % self.checkpoint_every == 0
                and int(state.phase) != _DONE):
            self.save(state, finished=False)

    def save(self, state: PipelineState, finished: bool) -> None:
        checkpoints.save(self.checkpoint, state, self.fingerprint, self.settings,
                         {"iteration": self.done, "finished": finished,
                          "phase": int(state.phase), "time": time.time(),
                          "sample_digest": self.digests["sample"],
                          "data_digest": self.digests["data"]})

    def finish(self, state: PipelineState) -> None:
        if self.checkpoint is not None:
            self.save(state, finished=True)


# ------------------------------------------------------------------------------------------
# The jitted pieces: each takes the fixed problem description and rebuilds the Problem
# inside, so compiled programs are shared by every fit with the same model, shapes and
# static configuration (a Problem's unravel function is a new object for every fit).
# ------------------------------------------------------------------------------------------


@functools.cache
def _compiler_options() -> dict[str, bool] | None:
    """XLA CPU's classic fusion emitters, where available: they compile these small
    programs faster at the same speed (benchmarks/RESULTS.md)."""
    options = {"xla_cpu_use_fusion_emitters": False}
    try:
        jax.jit(jnp.negative).lower(1.0).compile(compiler_options=options)
    except Exception:  # an XLA without this option: keep its defaults
        return None
    return options


class _jit:
    """`jax.jit` with `_compiler_options()`, built at the first call (so that importing
    the package neither compiles nor starts a backend)."""

    def __init__(self, f, static_argnames: tuple[str, ...] = ()):
        self.f, self.static_argnames = f, static_argnames
        functools.update_wrapper(self, f)

    @functools.cached_property
    def jitted(self):
        options = _compiler_options()
        if options is None:
            return jax.jit(self.f, static_argnames=self.static_argnames)
        return jax.jit(self.f, static_argnames=self.static_argnames, compiler_options=options)

    def __call__(self, *args, **kwargs):
        return self.jitted(*args, **kwargs)

    def eval_shape(self, *args, **kwargs):
        return self.jitted.eval_shape(*args, **kwargs)


def _strong(tree: PyTree) -> PyTree:
    """`tree` without weakly typed leaves, so every iteration's state has one signature."""
    return jax.tree.map(lambda a: jnp.asarray(a, dtype=a.dtype), tree)


class _Fixed(tuple):
    """(model, p0, bounds, args, config): what every jitted piece needs, as a pytree."""

    def __new__(cls, model, p0, bounds, args, config):
        return super().__new__(cls, (model, p0, bounds, args, config))

    @property
    def model(self):
        return self[0]

    @property
    def config(self) -> Config:
        return self[4]

    def problem(self) -> Problem:
        model, p0, bounds, _, config = self
        return make_problem(model, p0, bounds, config, jax.tree.leaves(p0)[0].dtype)

    def residual(self):
        return self.problem().residual(self[3])


jax.tree_util.register_pytree_node(
    _Fixed, lambda f: ((f[1], f[2], f[3], f[4]), f[0]),
    lambda model, children: _Fixed(model, *children))


def _warmup_loss(fixed: _Fixed, sample: Data):
    """The fused driver's warmup loss: mean half squared residual on the subsample."""
    problem = fixed.problem()
    residual = fixed.residual()
    lower, upper = problem.lower, problem.upper
    n_sample = jnp.sum(sample.weight > 0)

    def loss(u):
        return accumulate.cost(residual, jnp.clip(u, lower, upper), sample) / n_sample

    return loss


def _record(trace: Trace, phase, cost, grad_norm, radius) -> Trace:
    """Append one entry to the trace, as the fused driver does."""
    length = trace.cost.shape[0]
    k = jnp.minimum(trace.length, length - 1)
    return Trace(trace.cost.at[k].set(cost), trace.grad_norm.at[k].set(grad_norm),
                 trace.radius.at[k].set(radius), trace.phase.at[k].set(phase),
                 trace.length + 1)


@functools.partial(_jit, static_argnames=("n_points",))
def _start(fixed: _Fixed, sample: Data, n_points: int) -> PipelineState:
    TRACE_COUNTS["start"] += 1
    problem, config = fixed.problem(), fixed.config
    u0 = problem.u0
    fit = pipeline.start_fit(fixed.residual(), u0, sample)
    ws = warmup.init(u0, _warmup_loss(fixed, sample), fit.relative, config, n_points)
    nan = jnp.full(config.trace_length, jnp.nan, u0.dtype)
    return _strong(PipelineState(
        phase=jnp.where(ws.running, Phase.WARMUP, Phase.GAUSS_NEWTON).astype(jnp.int32),
        warmup=ws, gauss_newton=gauss_newton.init(u0, pipeline.poor_start(fit, config), config),
        trace=Trace(nan, nan, nan, jnp.zeros(config.trace_length, jnp.int32), jnp.asarray(0))))


@_jit
def _warmup_step(fixed: _Fixed, sample: Data, s: PipelineState) -> PipelineState:
    TRACE_COUNTS["warmup_step"] += 1
    problem, config = fixed.problem(), fixed.config
    ws = warmup.update(s.warmup, _warmup_loss(fixed, sample), problem.lower, problem.upper,
                       config)
    phase = jnp.where(ws.running, Phase.WARMUP, Phase.GAUSS_NEWTON).astype(jnp.int32)
    trace = _record(s.trace, Phase.WARMUP, ws.loss, jnp.linalg.norm(ws.grad), jnp.nan)
    gs = pipeline.handed_over(fixed.residual(), ws, s.gauss_newton, sample, config)
    return _strong(PipelineState(phase, ws, gs, trace))


@_jit
def _propose(fixed: _Fixed, s: PipelineState) -> Proposal:
    TRACE_COUNTS["propose"] += 1
    problem = fixed.problem()
    return gauss_newton.propose(s.gauss_newton, problem.lower, problem.upper)


@_jit
def _fold(fixed: _Fixed, u, acc: accumulate.Accumulator, x, y, w) -> accumulate.Accumulator:
    """`acc` with one streamed chunk folded in, sub-chunk by sub-chunk (`fold_chunk`).

    The chunk is cut into `config.chunk_size` sub-chunks as in the fused
    driver (cache-sized Jacobians), scanned in one compiled loop.
    """
    TRACE_COUNTS["fold"] += 1
    TRACE_COUNTS["fold qr"] += isinstance(acc, accumulate.QRAccumulator)
    config = fixed.config
    data = Data(x, y, w, min(config.chunk_size, y.shape[0]))
    forward = accumulate.use_forward_mode(config.jacobian, u.shape[0], data.chunk_size)
    residual = fixed.residual()

    def body(acc, i):
        xc, yc, wc = data.chunk(i)
        return accumulate.fold_chunk(residual, u, acc, xc, yc, wc, forward), None

    if data.n_chunks == 1:
        return body(acc, 0)[0]
    return jax.lax.scan(body, acc, jnp.arange(data.n_chunks))[0]


@_jit
def _conclude(fixed: _Fixed, s: PipelineState, proposal: Proposal,
              acc: accumulate.Accumulator) -> PipelineState:
    TRACE_COUNTS["conclude"] += 1
    problem, config = fixed.problem(), fixed.config
    lower, upper = problem.lower, problem.upper
    gs = gauss_newton.conclude(s.gauss_newton, proposal, accumulate.finish(acc), lower, upper,
                               config)
    phase = jnp.where(gs.running, Phase.GAUSS_NEWTON, _DONE).astype(jnp.int32)
    gradient = gs.model.gradient
    free = gauss_newton.free_variables(gs.u, gradient, lower, upper)
    grad_norm = jnp.linalg.norm(jnp.where(free, gradient, 0))
    trace = _record(s.trace, Phase.GAUSS_NEWTON, gs.model.cost, grad_norm, gs.radius)
    return _strong(PipelineState(phase, s.warmup, gs, trace))


@_jit
def _result(fixed: _Fixed, s: PipelineState, n_points, absolute_sigma) -> Result:
    problem = fixed.problem()
    return make_result(problem, problem.to_params(s.gauss_newton.u), s, n_points,
                       absolute_sigma)


# ------------------------------------------------------------------------------------------
# Host-side helpers
# ------------------------------------------------------------------------------------------


def _pass(source: ChunkSource, size: int, dtype, check_finite: bool,
          depth: int) -> Iterator[Chunk]:
    """One pass of padded device chunks, read `depth` chunks ahead in a thread."""
    return device_chunks(source, size, dtype, check_finite, depth)


def _to_data(chunk: Chunk) -> Data:
    return Data(jax.device_put(chunk.x), jnp.asarray(chunk.y), jnp.asarray(chunk.weight),
                chunk.n_valid)


def _head_chunk(head: Block, dtype) -> Chunk:
    m = head.length
    return Chunk(0, 0, m, head.x, np.asarray(head.y, dtype), np.ones(m, dtype))


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _fingerprint(model: Bound, p0: PyTree, problem: Problem, args, head: Block, n: int,
                 dtype) -> dict:
    """What identifies the problem: the model's computation (its jaxpr and constants, then
    its arrays with `args`), parameter layout, start and box, data layout. The data itself
    is matched by its digest on the first pass after a resume (`_Run`)."""

    def digest(*trees) -> str:
        h = hashlib.sha256()
        for leaf in jax.tree.leaves(trees):
            a = np.asarray(leaf)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:32]

    return {
        "model": model.key.fingerprint[:32],
        "params": f"{jax.tree.structure(p0)} {[list(np.shape(a)) for a in jax.tree.leaves(p0)]}",
        "dtype": str(np.dtype(dtype)),
        "n_points": int(n),
        "x": str(jax.tree.map(lambda a: (a.shape[1:], a.dtype.str), head.x)),
        "sigma": head.sigma is not None,
        "start_and_bounds": digest(problem.norm, problem.lb, problem.ub, problem.u0),
        "args": digest(args),
        "first_points": digest(head.take(0, 64)),  # whatever the chunk size
    }


def _settings(config: Config, chunk_size: int, warmup_chunks, absolute_sigma,
              check_finite) -> dict:
    """The configuration as JSON-able values (what a resumed fit must share)."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    values = {k: (float(v) if isinstance(v, float | np.floating | jax.Array) else v)
              for k, v in fields.items()}
    values.update(stream_chunk_size=chunk_size, warmup_chunks=warmup_chunks,
                  absolute_sigma=bool(absolute_sigma), check_finite=bool(check_finite))
    return values


class _Progress:
    """tqdm bars over iterations and over the chunks of the current pass (or nothing)."""

    def __init__(self, enabled: bool, n_chunks: int):
        self.enabled = enabled
        self.n_chunks = n_chunks

    def __enter__(self) -> _Progress:
        if self.enabled:
            from tqdm.auto import tqdm

            self.outer = tqdm(desc="hybrid_gn iterations", unit="it", position=0)
            self.inner = tqdm(desc="pass", total=self.n_chunks, unit="chunk", position=1,
                              leave=False)
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.inner.close()
            self.outer.close()

    def iteration(self, state: PipelineState, done: int) -> None:
        if not self.enabled or done == 0:
            return
        trace = state.trace
        k = min(done, trace.cost.shape[0]) - 1
        phase = "warmup" if int(trace.phase[k]) == Phase.WARMUP else "gauss-newton"
        self.outer.n = done
        self.outer.set_postfix(phase=phase, cost=f"{float(trace.cost[k]):.6g}",
                               grad=f"{float(trace.grad_norm[k]):.3g}",
                               radius=f"{float(trace.radius[k]):.3g}")

    def new_pass(self) -> None:
        if self.enabled:
            self.inner.reset(total=self.n_chunks)

    def chunk(self) -> None:
        if self.enabled:
            self.inner.update(1)
