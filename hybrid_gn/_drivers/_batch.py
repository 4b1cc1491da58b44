"""`fit_batch`: many independent problems in one call, ragged sizes padded with weight 0.

`fit`'s pipeline (`_pipeline`), vmapped: every problem keeps its own state
and status, a problem that has stopped is frozen while the others run on, so
its answer equals its solo fit, and the problems still running are stepped in
gathered chunks of max(B / 32, 128), so finished ones cost nothing
(`pipeline.run`, `compacted_loop`). Problems with fewer
points are padded to the longest with masked (weight-0) points, which add
nothing to any sum.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import PyTree

from .. import _pipeline as pipeline
from .._config import DEFAULT, Config, trace_length
from .._group_weights import GroupWeights
from .._jit import jit
from .._model import Model
from .._result import Result
from .._validate import mesh_axis, weighted_sigma
from .._validate_batch import check_batch
from ._sharded import automatic


def fit_batch(
    model: Model,
    p0: PyTree,
    x,
    y,
    *,
    sigma=None,
    bounds=None,
    args: PyTree = None,
    absolute_sigma: bool = False,
    check_finite: bool = True,
    config: Config | None = None,
    group_weights: GroupWeights | None = None,
    mesh: Mesh | None = None,
    batch_axis: str | None = None,
) -> Result:
    """Fit B independent problems `model(params, x_b) ~ y_b` in one jitted call.

    For many problems of the same model (spectra, pixels, sensors): each
    problem keeps its own state and status, and a problem that has stopped is
    frozen while the others run on, so its answer equals its solo fit. In a
    batch of 256 problems or more, the active problems are stepped in gathered
    chunks of max(B / 32, 128), so the slow few do not make the finished ones pay for
    full iterations. Problems of different lengths (ragged) are padded
    to the longest with weight-0 points, which add nothing to any sum. A
    problem with NaN data (`check_finite=False`), a model that returns Inf
    there, or that hits the iteration cap fails alone.

    Args:
        model: `model(params, x)`, or `model(params, x, args)` when `args` is
            given, as in `fit`; shared by every problem.
        p0: the starting points, a pytree whose leaves have a leading batch
            axis B.
        x: (B, n, ...) arrays, or a sequence of B problems' x when `y` is
            ragged.
        y: a (B, n) array, or a sequence of B 1-D arrays of different lengths
            (ragged: each is padded to the longest with weight-0 points).
        sigma: None, or (B, n) standard deviations, or a sequence matching a
            ragged `y`.
        bounds: None or `(lower, upper)`: one box for every problem (each side
            a scalar, a flat (p,) array or a pytree like one problem's start),
            or per problem, each side a (B, p) array or a pytree whose leaves
            have the batched shapes of `p0`; one side may be per problem and
            the other shared.
        args: None or a pytree whose leaves have a leading batch axis B.
        absolute_sigma: as in `fit`.
        check_finite: with it, NaN/Inf in a problem's data or start raises an
            error naming the problem; without it, such a problem just gets
            its own failed status.
        config: the settings of the four phases (`Config()` when None); each
            problem's trace keeps 32 records unless `Config.trace_length` says.
        group_weights: as in `fit`; its labels (or x's label column) are per problem
            (B, n) or shared (n,).
        mesh: None, or a `jax.sharding.Mesh` whose devices share the problems:
            each device runs its own compacted loops on its problems, with no
            traffic between devices; the answers are those of one device.
        batch_axis: the mesh axis the problems are split over (the mesh's
            first when None).

    Returns:
        A `Result` batched over B (every leaf has a leading axis B);
        `Result.summary()` describes the batch.

    Raises:
        ValueError: bad input, naming the first bad problem (`problem 3: p0
            is outside the bounds`), or inputs without the leading batch
            axis B.

    Examples:
        >>> import jax.numpy as jnp
        >>> import numpy as np
        >>> import hybrid_gn
        >>> def model(p, x):
        ...     return p[0] * jnp.exp(-p[1] * x)
        >>> x = np.linspace(0.0, 4.0, 50)
        >>> rates = np.array([0.5, 1.0, 2.0])
        >>> ys = 2.0 * np.exp(-rates[:, None] * x)
        >>> xs = np.broadcast_to(x, ys.shape)
        >>> result = hybrid_gn.fit_batch(model, np.ones((3, 2)), xs, ys)
        >>> print(np.round(result.params, 3))
        [[2.  0.5]
         [2.  1. ]
         [2.  2. ]]
        >>> print(result.summary().splitlines()[0])
        3 problems: 3 converged, 0 did not

        Ragged problems are given as sequences:

        >>> xs = [x, x[:30], x[:40]]
        >>> ys = [2.0 * np.exp(-r * xb) for r, xb in zip(rates, xs)]
        >>> result = hybrid_gn.fit_batch(model, np.ones((3, 2)), xs, ys)
        >>> print(np.round(result.params[:, 1], 3), result.n_points)
        [0.5 1.  2. ] [50 30 40]
    """
    config = DEFAULT if config is None else config
    if isinstance(config, Config) and config.trace_length is None:  # else refused below
        config = dataclasses.replace(config, trace_length=trace_length(config, batch=True))
    sigma = weighted_sigma(group_weights, x, y, sigma)
    inputs = check_batch(model, p0, x, y, sigma, bounds, args, check_finite, config)
    batched = (inputs.p0, inputs.x, inputs.y, inputs.sigma, inputs.bounds, args, inputs.mask)
    if mesh is None and batch_axis is None:
        return _batched(inputs.model, inputs.model_args[0], *batched, absolute_sigma, config)
    axis = mesh_axis(mesh, batch_axis, "batch_axis")
    return _spread(inputs.model, inputs.model_args[0], batched, absolute_sigma, config,
                   automatic(mesh), axis)


@functools.partial(jit, static_argnames=("model", "absolute_sigma", "mesh", "axis"))
def _spread(model, model_arrays, batched: tuple, absolute_sigma, config, mesh: Mesh,
            axis: str) -> Result:
    """`_solve` with the problems split over `axis` of `mesh` (B padded to a multiple of
    its size with copies of problem 0, whose answers are dropped)."""
    size = jax.tree.leaves(batched)[0].shape[0]
    extra = -size % mesh.shape[axis]
    padded = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[:1], extra, axis=0)]),
                          batched)

    def local(model_arrays, config, batched):
        return _solve(model, model_arrays, *batched, absolute_sigma, config)

    problems, shared = PartitionSpec(axis), PartitionSpec()
    result = jax.shard_map(local, mesh=mesh, in_specs=(shared, shared, problems),
                           out_specs=problems, check_vma=False)(model_arrays, config, padded)
    return jax.tree.map(lambda a: a[:size], result)


@functools.partial(jit, static_argnames=("model", "absolute_sigma"))
def _batched(model, model_arrays, p0, x, y, sigma, bounds, args, mask, absolute_sigma,
             config) -> Result:
    return _solve(model, model_arrays, p0, x, y, sigma, bounds, args, mask, absolute_sigma,
                  config)


def _solve(model, model_arrays, p0, x, y, sigma, bounds, args, mask, absolute_sigma,
           config) -> Result:
    """Every problem of the batch by `fit`'s pipeline, vmapped: inside one `vmap` what the
    problems share (the unit weights of unmasked data, say) stays shared, and
    `pipeline.run` steps the running problems in compacted chunks."""
    # the model's arrays are shared by every problem: closed over, not batched
    def one(p0, x, y, sigma, bounds, args, mask):
        eta = (x, y, sigma, (model_arrays, args))
        setup, data = pipeline.prepare(model, p0, *eta[:3], bounds, eta[3], mask, config)
        state = pipeline.run(setup, data, compact=True)
        return pipeline.finish(setup, state, data, eta, mask, absolute_sigma)

    return jax.vmap(one)(p0, x, y, sigma, bounds, args, mask)
