"""`fit_batch`: many independent problems in one call, ragged sizes padded with weight 0.

The same transitions as `fit` (`_pipeline`), vmapped, with the loops driven
here: every problem keeps its own state and status, a problem that has
stopped is frozen while the others run on, so its answer equals its solo
fit, and the problems still running are stepped in gathered chunks of
B / 8, so finished ones cost nothing (`compacted_loop`). Problems with fewer
points are padded to the longest with masked (weight-0) points, which add
nothing to any sum.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import Array, PyTree

from .. import _pipeline as pipeline
from .._config import DEFAULT, Config
from .._group_weights import GroupWeights
from .._jit import jit
from .._model import Model
from .._pipeline import PipelineState as State
from .._result import Result, Trace
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
    batch of 128 problems or more, the active problems are stepped in gathered
    chunks of B / 8, so the slow few do not make the finished ones pay for
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
        config: the settings of the four phases (`Config()` when None).
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
    """Every problem of the batch, each by the pipeline's transitions (vmapped)."""
    # the model's arrays are shared by every problem: closed over, not batched
    def prepare(p0, x, y, sigma, bounds, args, mask):
        return pipeline.prepare(model, p0, x, y, sigma, bounds, (model_arrays, args), mask,
                                config)

    # phase 0 once per problem, outside the loops (the steps only read its result)
    setups, data = jax.vmap(prepare)(p0, x, y, sigma, bounds, args, mask)
    inputs = (setups, data)

    def gauss_newton_step(inputs, state):
        return pipeline.gauss_newton_step(*inputs, state)

    def finish(inputs, eta, mask, state):
        setup, data = inputs
        x, y, sigma, args = eta
        return pipeline.finish(setup, state, data, (x, y, sigma, (model_arrays, args)), mask,
                               absolute_sigma)

    states = jax.vmap(pipeline.start)(setups)
    if setups.warmup_runs:
        states = compacted_loop(pipeline.warming_up, lambda inputs, state: pipeline.warmup_step(
            inputs[0], state), states, inputs)
    states = compacted_loop(pipeline.running, gauss_newton_step, states, inputs)
    return jax.vmap(finish)(inputs, (x, y, sigma, args), mask, states)


def compacted_loop(active: Callable[[State], Array],
                   step: Callable[[PyTree, State], State], states: State, inputs: PyTree,
                   shrink: int = 8, smallest: int = 16) -> State:
    """`while active: state = step(inputs, state)` for every problem of a batch, a chunk
    of B / shrink problems at a time.

    Each turn of one `while` loop gathers the next chunk of active problems (in batch
    order from where the last chunk ended, cyclically, so each active problem is stepped
    once per sweep) with their inputs, steps it and scatters it back. Problems that have
    finished stop costing steps at once, a few slow ones run on in chunks of their own,
    and `step` is compiled once, for the chunk. A chunk with fewer active problems than its
    size is filled with finished ones, which the step leaves as they are (`where`), so each
    problem's states are those of its solo loop. Only the trace entry a step writes is
    gathered and scattered. A batch smaller than `shrink * smallest` is stepped whole.
    """
    def masked_step(inputs, state):
        return _unless_inactive(active(state), step(inputs, state), state)

    def any_active(carry):
        return jnp.any(jax.vmap(active)(carry[0]))

    size = jax.tree.leaves(states)[0].shape[0]
    chunk = size // shrink
    if chunk < smallest:
        return jax.lax.while_loop(lambda s: any_active((s,)),
                                  lambda s: jax.vmap(masked_step)(inputs, s), states)

    def turn(carry):
        states, cursor = carry
        index, cursor = _next_chunk(jax.vmap(active)(states), cursor, chunk)
        sub = _gather_states(states, index)
        sub = jax.vmap(masked_step)(jax.tree.map(lambda a: a[index], inputs), sub)
        return _scatter_states(states, index, sub), cursor

    states, _ = jax.lax.while_loop(any_active, turn, (states, jnp.asarray(0)))
    return states


def _next_chunk(on: Array, cursor: Array, chunk: int) -> tuple[Array, Array]:
    """`(index, cursor)`: `chunk` distinct problems, the first active ones at or after
    `cursor` (cyclically) and then, when fewer are active, finished ones; and where the
    next chunk starts."""
    size = on.shape[0]
    rolled = jnp.roll(on, -cursor)  # position k: problem (cursor + k) % size
    running = jnp.nonzero(rolled, size=chunk, fill_value=size)[0]
    idle = jnp.nonzero(~rolled, size=chunk, fill_value=size)[0]
    count = jnp.minimum(jnp.sum(rolled), chunk)
    k = jnp.arange(chunk)
    position = jnp.where(k < count, running, idle[jnp.maximum(k - count, 0)])
    last = running[jnp.maximum(count - 1, 0)]
    return (position + cursor) % size, (cursor + last + 1) % size


def _slot(trace: Trace) -> Array:
    """The entry the next step writes (the last once the trace is full)."""
    return jnp.minimum(trace.length, trace.cost.shape[-1] - 1)


def _gather_states(states: State, index: Array) -> State:
    """The problems `index` of `states`, each with a one-entry trace: the entry its next
    step writes."""
    trace = states.trace
    slot = _slot(trace)[index]
    entries = (a[index, slot][:, None] for a in (trace.cost, trace.grad_norm, trace.radius,
                                                 trace.phase))
    rest = jax.tree.map(lambda a: a[index], eqx.tree_at(lambda s: s.trace, states, None))
    return eqx.tree_at(lambda s: s.trace, rest, Trace(*entries, trace.length[index]),
                       is_leaf=lambda x: x is None)


def _scatter_states(states: State, index: Array, sub: State) -> State:
    """`states` with the problems `index` replaced by `sub` (from `_gather_states`)."""
    trace = states.trace
    slot = _slot(trace)[index]
    entries = (a.at[index, slot].set(b[:, 0], unique_indices=True) for a, b in zip(
        (trace.cost, trace.grad_norm, trace.radius, trace.phase),
        (sub.trace.cost, sub.trace.grad_norm, sub.trace.radius, sub.trace.phase), strict=True))
    trace = Trace(*entries, trace.length.at[index].set(sub.trace.length, unique_indices=True))
    rest = jax.tree.map(lambda a, b: a.at[index].set(b, unique_indices=True),
                        eqx.tree_at(lambda s: s.trace, states, None),
                        eqx.tree_at(lambda s: s.trace, sub, None))
    return eqx.tree_at(lambda s: s.trace, rest, trace, is_leaf=lambda x: x is None)


def _unless_inactive(on, new: State, old: State) -> State:
    """`new` where the problem is active, else `old`: a select on the small fields, and on
    the trace only at the entry the step wrote (selecting whole traces cost as much as
    the step itself for 1e5 problems)."""
    def keep(a, b):
        return jnp.where(on, a, b)

    k = jnp.minimum(old.trace.length, old.trace.cost.shape[0] - 1)
    trace = Trace(*(b.at[k].set(keep(a[k], b[k])) for a, b in zip(
        (new.trace.cost, new.trace.grad_norm, new.trace.radius, new.trace.phase),
        (old.trace.cost, old.trace.grad_norm, old.trace.radius, old.trace.phase),
        strict=True)), keep(new.trace.length, old.trace.length))
    rest = jax.tree.map(keep, eqx.tree_at(lambda s: s.trace, new, None),
                        eqx.tree_at(lambda s: s.trace, old, None))
    return eqx.tree_at(lambda s: s.trace, rest, trace, is_leaf=lambda x: x is None)
