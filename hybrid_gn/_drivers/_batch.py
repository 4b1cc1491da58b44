"""`fit_batch`: many independent problems in one call, ragged sizes padded with weight 0.

The same pipeline pieces as `fit` (`prepare`, `pipeline.phases`, `finish`),
vmapped, with the loops driven here: every problem keeps its own state and
status, a problem that has stopped is frozen while the others run on, so its
answer equals its solo fit, and once most have stopped only the rest are
stepped (`compacted_loop`). Problems with fewer points are padded to the
longest with masked (weight-0) points, which add nothing to any sum.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from .. import _pipeline as pipeline
from .._config import Config, with_tolerances
from .._pipeline import PipelineState as State
from .._problem import flat_bounds
from .._result import Result, Trace
from .._validate import check_bounds, check_fit, native, native_tree, real_array
from ._fit import Model, finish, prepare


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
) -> Result:
    """Fit B independent problems `model(params, x_b) ~ y_b`; a `Result` batched over B.

    `y`: a (B, n) array, or a sequence of B 1-D arrays of different lengths
    (ragged: each is padded to the longest with weight-0 points). `x` and
    `sigma` (optional) match `y`: (B, n, ...) arrays or sequences. `p0` and
    `args` (optional) are pytrees whose leaves have a leading batch axis B;
    `bounds` are shared. With `check_finite`, NaN/Inf in a problem's data or
    start raises an error naming the problem; without it, such a problem just
    gets its own failed status. `Result.summary()` describes the batch.
    """
    config = Config() if config is None else config
    x, y, sigma, mask = pad_ragged(x, y, sigma)
    batch = y.shape[0]
    if batch == 0:
        raise ValueError("y holds no problems (B = 0)")
    p0 = jax.tree.map(native, p0)
    for name, tree in (("p0", p0), ("x", x), ("sigma", sigma), ("args", args)):
        for leaf in jax.tree.leaves(tree):
            if np.ndim(leaf) == 0 or np.shape(leaf)[0] != batch:
                raise ValueError(f"{name} must have a leading batch axis of size B = {batch} "
                                 f"(the number of problems in y), got a leaf of shape "
                                 f"{np.shape(leaf)}")
    bounds = _batch_bounds(bounds, p0, batch)
    first = jax.tree.map(lambda a: a[0], (p0, x, y, sigma, args, mask, bounds))
    inputs = check_fit(model, *first[:4], first[6], False, config, first[4], first[5])
    _check_problems(p0, x, y, sigma, bounds, mask, check_finite)
    return _batched(inputs.model, inputs.model_args[0], p0, x, y, sigma, bounds, args, mask,
                    absolute_sigma, config)


def _batch_bounds(bounds, p0, batch: int) -> tuple | None:
    """Bounds with a leading batch axis B (shared ones are broadcast).

    Per-problem bounds are a pair of (B, p) arrays or pytrees whose leaves have p0's
    batched shapes; anything else is one box for every problem (broadcast here).
    """
    if bounds is None:
        return None
    one = jax.tree.map(lambda a: a[0], p0)
    if not (isinstance(bounds, tuple | list) and len(bounds) == 2):
        raise ValueError("bounds must be a pair (lower, upper) or None")
    p = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(one))

    def as_batched(side):
        """`side` as per-problem bounds, or None where it is one box for every problem."""
        if side is None:
            return None
        if jax.tree.structure(side) == jax.tree.structure(p0) and all(
                np.shape(b) == np.shape(a)
                for b, a in zip(jax.tree.leaves(side), jax.tree.leaves(p0), strict=True)):
            return jax.tree.map(native, side)
        if np.ndim(side) == 2 and np.shape(side) == (batch, p):
            return native(side)
        return None

    batched = [as_batched(side) for side in bounds]
    checked = check_bounds(tuple(side if b is None else None
                                 for side, b in zip(bounds, batched, strict=True)), one)
    return tuple(_broadcast(shared, batch) if b is None else b
                 for b, shared in zip(batched, checked, strict=True))


def _broadcast(tree, batch: int):
    return jax.tree.map(lambda b: np.broadcast_to(np.asarray(b), (batch, *np.shape(b))), tree)


def _check_problems(p0, x, y, sigma, bounds, mask, check_finite: bool) -> None:
    """Per-problem value checks, vectorized; errors name the first bad problem."""
    mask = np.asarray(mask)
    batch = mask.shape[0]
    theta0 = np.concatenate([np.asarray(leaf).reshape(batch, -1)
                             for leaf in jax.tree.leaves(p0)], axis=1)
    p = theta0.shape[1]

    def first(bad: np.ndarray, message: str) -> None:
        if np.any(bad):
            raise ValueError(f"problem {int(np.argmax(bad))}: {message}")

    first(mask.sum(axis=1) < p, f"too few data points: fewer than the p = {p} parameters")
    if check_finite:
        def data_bad(a) -> np.ndarray:
            a = np.asarray(a).reshape(batch, mask.shape[1], -1)
            return np.any(~np.isfinite(a) & mask[:, :, None], axis=(1, 2))

        for name, tree in (("y", y), ("x", x), ("sigma", sigma)):
            for leaf in jax.tree.leaves(tree):
                if np.issubdtype(np.asarray(leaf).dtype, np.inexact):
                    first(data_bad(leaf), f"{name} contains NaN or Inf; clean the data or pass "
                                          f"check_finite=False (the problem then fails alone)")
        first(np.any(~np.isfinite(theta0), axis=1), "p0 contains NaN or Inf")
    if sigma is not None:
        first(np.any((np.asarray(sigma) <= 0) & mask, axis=1), "sigma must be strictly positive")
    if bounds is not None:
        lb, ub = (np.asarray(b) for b in jax.vmap(
            lambda p, b: flat_bounds(b, p, theta0.dtype))(p0, bounds))
        first(np.any(np.isnan(lb) | np.isnan(ub), axis=1), "bounds contain NaN")
        first(np.any(lb >= ub, axis=1), "bounds: each lower bound must be strictly less than "
                                        "its upper bound")
        first(np.any((theta0 < lb) | (theta0 > ub), axis=1), "p0 is outside the bounds")


@functools.partial(jax.jit, static_argnames=("model", "absolute_sigma"))
def _batched(model, model_arrays, p0, x, y, sigma, bounds, args, mask, absolute_sigma,
             config) -> Result:
    # the model's arrays are shared by every problem: closed over, not batched
    def setup(p0, x, y, sigma, bounds, args, mask):
        s = prepare(model, p0, x, y, sigma, bounds, (model_arrays, args), mask, config)
        return s.problem, s.data

    # phase 0 once per problem, outside the loops (the steps only read its result)
    problems, data = jax.vmap(setup)(p0, x, y, sigma, bounds, args, mask)
    inputs = (problems, data, args)
    config = with_tolerances(config, problems.dtype)

    def phases(inputs) -> pipeline.Phases:
        problem, data, args = inputs
        return pipeline.phases(problem.residual((model_arrays, args)), problem.lower,
                               problem.upper, data, config)

    def start(inputs):
        return phases(inputs).start(inputs[0].u0)

    def warmup_step(inputs, state):
        return phases(inputs).warmup_step(state)

    def gauss_newton_step(inputs, state):
        return phases(inputs).gauss_newton_step(state)

    def result(inputs, eta, mask, state):
        problem, data, _ = inputs
        x, y, sigma, args = eta
        return finish(problem, state, data, (x, y, sigma, (model_arrays, args)), mask,
                      absolute_sigma, config)

    states = jax.vmap(start)(inputs)
    if phases(jax.tree.map(lambda a: a[0], inputs)).warmup_runs:
        states = compacted_loop(pipeline.warming_up, warmup_step, states, inputs)
    states = compacted_loop(pipeline.running, gauss_newton_step, states, inputs)
    return jax.vmap(result)(inputs, (x, y, sigma, args), mask, states)


def compacted_loop(active: Callable[[State], Array],
                   step: Callable[[PyTree, State], State], states: State, inputs: PyTree,
                   shrink: int = 8, smallest: int = 16) -> State:
    """`while active: state = step(inputs, state)` for every problem of a batch, in two stages.

    Stage 1 steps the whole batch, in place, until at most B / shrink problems
    are still active; stage 2 gathers those into a sub-batch of B / shrink and
    steps it until none is. So the many problems that finish early stop costing
    full iterations while a few slow ones run on (two stages, not more: each has
    its own compiled copy of `step`). A problem that is not active is left as
    it is (`where`), so each problem's states are those of its solo loop.
    """
    def masked_step(inputs, state):
        return _unless_inactive(active(state), step(inputs, state), state)

    def run_until(states, inputs, target: int):
        """Step until at most `target` problems are active."""
        return jax.lax.while_loop(lambda s: jnp.sum(jax.vmap(active)(s)) > target,
                                  lambda s: jax.vmap(masked_step)(inputs, s), states)

    small = jax.tree.leaves(states)[0].shape[0] // shrink
    if small < smallest:
        return run_until(states, inputs, 0)
    states = run_until(states, inputs, small)  # stage 1: the whole batch, in place
    order = jnp.argsort(~jax.vmap(active)(states), stable=True)[:small]
    sub, sub_inputs = jax.tree.map(lambda a: a[order], (states, inputs))
    sub = run_until(sub, sub_inputs, 0)  # stage 2: the gathered sub-batch
    return jax.tree.map(lambda a, b: a.at[order].set(b), states, sub)


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


def pad_ragged(x, y, sigma=None):
    """Stack B problems into (B, n_max) arrays and a (B, n_max) mask of real points.

    Padding repeats each problem's last x (a point where the model is known to
    be finite), with y = 0, sigma = 1 and mask False.
    """
    if not isinstance(y, Sequence) or isinstance(y, np.ndarray | jax.Array):
        y = real_array("y", y)
        if y.ndim != 2:
            raise ValueError(f"y must be (B, n) or a sequence of 1-D arrays, got shape {y.shape}")
        sigma = None if sigma is None else real_array("sigma", sigma)
        return native_tree(x), y, sigma, jnp.ones(y.shape, bool)
    if len(y) == 0:
        raise ValueError("y is an empty sequence: there are no problems")
    if not isinstance(x, Sequence) or len(x) != len(y):
        raise ValueError("with ragged y (a sequence), x must be a sequence of the same length")
    if sigma is not None and (not isinstance(sigma, Sequence) or len(sigma) != len(y)):
        raise ValueError("with ragged y (a sequence), sigma must be None or a sequence of the "
                         "same length")
    y = [real_array("y", yb, f"problem {b}: ") for b, yb in enumerate(y)]
    x = [native_tree(xb) for xb in x]
    sizes = [np.shape(yb) for yb in y]
    for b, shape in enumerate(sizes):
        if len(shape) != 1 or shape[0] == 0:
            raise ValueError(f"problem {b}: y must be a non-empty 1-D array, got shape {shape}")
    n_max = max(shape[0] for shape in sizes)

    def pad(a, n, fill=None):
        a = np.asarray(a)
        if a.shape[0] != n:
            raise ValueError(f"leading axis {a.shape[0]} does not match len(y) = {n}")
        extra = np.repeat(a[-1:], n_max - n, axis=0) if fill is None else np.full(
            (n_max - n, *a.shape[1:]), fill, a.dtype)
        return np.concatenate([a, extra])

    try:
        xs = [jax.tree.map(lambda a, n=shape[0]: pad(a, n), xb)
              for xb, shape in zip(x, sizes, strict=True)]
    except ValueError as err:
        raise ValueError(f"x and y disagree: {err}") from None
    x_out = jax.tree.map(lambda *leaves: jnp.asarray(np.stack(leaves)), *xs)
    y_out = jnp.asarray(np.stack([pad(yb, s[0], 0) for yb, s in zip(y, sizes, strict=True)]))
    sigma_out = None if sigma is None else jnp.asarray(
        np.stack([pad(sb, s[0], 1) for sb, s in zip(sigma, sizes, strict=True)]))
    mask = jnp.asarray(np.arange(n_max)[None, :] < np.array([s[0] for s in sizes])[:, None])
    return x_out, y_out, sigma_out, mask
