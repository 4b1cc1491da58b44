"""`fit_stream`: the fit of data read from disk or a generator, in bounded memory.

A thin host loop (`_stream_run`) around the pipeline's transitions, each a
compiled call (`_stream_steps`): the warmup runs on an in-memory subsample,
each Gauss-Newton iteration is one pass over the source, folding every
block into the trial's accumulator (fixed block shape, the last block padded
with weight 0, so it compiles once). Memory is one block in flight (plus
the read-ahead queue) and the O(p^2) state, whatever the size of the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from .. import sources
from .._config import Config
from .._loss import describe
from .._model import Model
from .._problem import flat_bounds
from .._result import Result
from .._validate import Inputs, check_fit, check_stream_arguments, check_type, float_dtype
from ..sources._survey import Survey, survey
from . import _checkpoint as checkpoints
from . import _stream_steps as steps
from ._progress import Progress
from ._stream_run import StreamRun


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
    block_size: int = 1 << 18,
    warmup_chunks: int | None = 8,
    prefetch: int = 2,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    resume: str | os.PathLike | None = None,
    progress: bool = True,
    chunk_size: int | None = None,
) -> Result:
    """Fit `model(params, x) ~ y` to data streamed from `source`, in bounded memory.

    For data bigger than memory (an HDF5 file, memory-mapped arrays, data
    generated on the fly) and for long fits that must survive a restart. The
    same phases as `fit` run from a thin host loop over data read block by
    block, keeping one block (plus the read-ahead queue) and the O(p^2) state
    in memory, whatever the size of the data; each Gauss-Newton iteration is
    one pass. Each block is accumulated in sub-chunks of `config.chunk_size`
    points. The L-BFGS warmup runs in memory on a strided subsample of at
    most `config.warmup_max_points` points drawn from `warmup_chunks` chunks
    spread evenly over the data. The result equals `fit`'s on the same data
    up to rounding.

    With `checkpoint` (a path), the state is written atomically every
    `checkpoint_every` iterations and at the end; `resume` continues from such
    a file after checking that it belongs to this problem and configuration:
    the model, the start and bounds, the configuration and a digest of all
    the data, which the first pass after a resume must match before any state
    is updated (every later pass must match the first one).

    Args:
        model: as in `fit`.
        p0: as in `fit`.
        source: a `hybrid_gn.sources.ChunkSource` (`ArraySource` for numpy
            arrays and memmaps, `HDF5Source` for datasets of an HDF5 file,
            `CallableSource`), a tuple `(x, y[, sigma])` of arrays, or a
            callable returning a new iterator of `(x, y[, sigma])` chunks for
            each pass.
        bounds: as in `fit`.
        args: as in `fit`.
        absolute_sigma: as in `fit`.
        check_finite: as in `fit`; bad data raises an error naming the chunk.
        config: as in `fit`.
        block_size: points read at a time; at least the number of parameters.
        warmup_chunks: chunks the warmup subsample is drawn from (None: all
            chunks, which reproduces `fit`'s warmup).
        prefetch: blocks read ahead in a thread (0 reads in turn with the
            computation).
        checkpoint: None, or the path of the checkpoint file to write.
        checkpoint_every: iterations between checkpoint writes.
        resume: None, or the path of a checkpoint to continue from.
        progress: show a tqdm bar over iterations and chunks (a widget in
            notebooks).
        chunk_size: the former name of `block_size` (deprecated, with a
            `FutureWarning`: it collided with `Config.chunk_size`).

    Returns:
        A `Result`, as from `fit`.

    Raises:
        CheckpointError: `resume` names a checkpoint that is truncated,
            corrupt, or written for another problem, configuration or data.
        ValueError: bad input or data, as in `fit` (naming the chunk), an
            invalid `block_size`, `checkpoint_every`, `prefetch` or
            `warmup_chunks`, or data that changed between passes.
        TypeError: as in `fit`, or a `source` of the wrong kind (an iterator,
            which can be read only once, for instance).
        OSError: a `checkpoint` that cannot be written there (checked before
            the fit starts).

    Examples:
        >>> import os
        >>> import tempfile
        >>> import jax.numpy as jnp
        >>> import numpy as np
        >>> import hybrid_gn
        >>> def model(p, x):
        ...     return p[0] * jnp.exp(-p[1] * x)
        >>> x = np.linspace(0.0, 4.0, 1000)
        >>> source = hybrid_gn.sources.ArraySource(x, 2.0 * np.exp(-1.3 * x))
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "fit.ckpt")
        ...     result = hybrid_gn.fit_stream(model, np.ones(2), source, block_size=256,
        ...                                   checkpoint=path, progress=False)
        ...     resumed = hybrid_gn.fit_stream(model, np.ones(2), source, block_size=256,
        ...                                    resume=path, progress=False)
        >>> print(bool(result.success), np.round(result.params, 3))
        True [2.  1.3]
        >>> print(np.round(resumed.params, 3))
        [2.  1.3]
    """
    config = Config() if config is None else config
    block_size = _block_size(block_size, chunk_size)
    check_type("config", config, Config, "hybrid_gn.Config")
    check_stream_arguments(block_size, warmup_chunks, prefetch, checkpoint_every)
    if checkpoint is not None:
        checkpoints.check_writable(checkpoint)
    source = sources.as_source(source)
    surveyed = survey(source, block_size, check_finite)
    inputs = _check_inputs(model, p0, surveyed, bounds, args, check_finite, config, block_size)
    block_size = min(block_size, surveyed.n_points)  # no block longer than the data
    dtype = float_dtype(inputs.p0, surveyed.head.y)
    p0 = jax.tree.map(lambda a: jnp.asarray(a, dtype), inputs.p0)
    bounds = None if inputs.bounds is None else jax.tree.map(lambda b: jnp.asarray(b, dtype),
                                                             inputs.bounds)
    run = StreamRun(source, surveyed.n_points, block_size, dtype, check_finite, prefetch,
                    warmup_chunks, checkpoint, checkpoint_every)
    run.identify(_fingerprint(inputs, p0, bounds, surveyed),
                 _settings(config, block_size, warmup_chunks, absolute_sigma, check_finite))
    saved = None if resume is None else run.expect(resume)
    setup = steps.make_setup(inputs.model, p0, bounds, inputs.model_args, config,
                             run.sample(config), surveyed.n_points)
    state = steps.start(setup) if saved is None else run.restore(saved, setup)
    with Progress(progress, -(-surveyed.n_points // block_size)) as bar:
        state = run.iterate(setup, state, bar)
    return steps.result(steps.for_gauss_newton(setup), state, jnp.asarray(surveyed.n_points),
                        absolute_sigma)


def _block_size(block_size: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return block_size
    warnings.warn("fit_stream(chunk_size=) is now block_size= (the points read per block; "
                  "Config.chunk_size is the sub-chunk the accumulation works on)",
                  FutureWarning, stacklevel=3)
    return chunk_size


def _check_inputs(model, p0, survey: Survey, bounds, args, check_finite: bool,
                  config: Config, block_size: int) -> Inputs:
    """`check_fit` on the first block, after the counts only a stream has."""
    n, head = survey.n_points, survey.head
    p = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(p0))
    if n < p:
        raise ValueError(f"too few data points: the source has n = {n}, fewer than the number "
                         f"of parameters p = {p}")
    if head.length < p:
        raise ValueError(f"block_size = {block_size} must be at least the number of "
                         f"parameters p = {p}")
    return check_fit(model, p0, head.x, head.y, head.sigma, bounds, check_finite, config, args,
                     n_points=n)


def _fingerprint(inputs: Inputs, p0: PyTree, bounds, survey: Survey) -> dict:
    """What identifies the problem: the model's computation (its jaxpr and constants, then
    its arrays with `args`), parameter layout, start and box, data layout. The data itself
    is matched by its digests (`StreamRun`)."""
    head, dtype = survey.head, jax.tree.leaves(p0)[0].dtype

    def digest(*trees) -> str:
        h = hashlib.sha256()
        for leaf in jax.tree.leaves(trees):
            a = np.asarray(leaf)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:32]

    return {
        "model": inputs.model.key.fingerprint[:32],
        "params": f"{jax.tree.structure(p0)} {[list(np.shape(a)) for a in jax.tree.leaves(p0)]}",
        "dtype": str(np.dtype(dtype)),
        "n_points": int(survey.n_points),
        "x": str(jax.tree.map(lambda a: (a.shape[1:], a.dtype.str), head.x)),
        "sigma": head.sigma is not None,
        "start_and_bounds": digest(p0, flat_bounds(bounds, p0, dtype)),
        "args": digest(inputs.model_args),
        "first_points": digest(head.take(0, 64)),  # whatever the block size
    }


def _settings(config: Config, block_size: int, warmup_chunks, absolute_sigma,
              check_finite) -> dict:
    """The configuration as JSON-able values (what a resumed fit must share)."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    values = {k: (float(v) if isinstance(v, float | np.floating | jax.Array) else v)
              for k, v in fields.items()}
    values.update(loss=describe(config.loss), block_size=block_size, warmup_chunks=warmup_chunks,
                  absolute_sigma=bool(absolute_sigma), check_finite=bool(check_finite))
    return values


