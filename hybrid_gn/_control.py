"""Control flow that stays cheap under `vmap`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

T = TypeVar("T")

# a route that `run_for_few` gathers runs on groups of ceil(B / GROUPS) problems
GROUPS = 8


def run_if(pred, fn: Callable[[], T], placeholder: T) -> T:
    """`fn()` where `pred`, else `placeholder`: a `lax.cond` that stays lazy under vmap.

    A `while_loop` that runs `fn` at most once: under `vmap` it runs once for
    the whole batch if any problem needs it and not at all otherwise, where a
    batched `lax.cond` evaluates both branches for every problem.

    `fn`'s closed-over arrays travel in the loop carry through an optimization
    barrier that also holds the loop flag: otherwise XLA sees a body that
    does not depend on the carry and hoists it out of the loop (loop-invariant
    code motion), so `fn` would run every time.
    """
    converted, consts = _hoisted(fn)
    return _once(jnp.asarray(pred), converted, placeholder, consts)


def _hoisted(fn: Callable[[], T]) -> tuple[Callable[..., T], tuple]:
    """`fn` as a function of the arrays it closes over, and those arrays: every one,
    whatever its dtype (`jax.closure_convert` keeps integer ones in the closure, where a
    `custom_vmap` rule cannot see that they are batched: integer x data, say)."""
    closed, shape = jax.make_jaxpr(fn, return_shape=True)()
    tree = jax.tree.structure(shape)

    def converted(*consts):
        return jax.tree.unflatten(tree, jax.core.eval_jaxpr(closed.jaxpr, consts))

    return converted, tuple(closed.consts)


def _once(pred, converted: Callable, placeholder: T, consts: tuple) -> T:
    def body(carry):
        flag, _, consts = carry
        flag, consts = jax.lax.optimization_barrier((flag, consts))
        return jnp.zeros_like(flag), converted(*consts), consts

    return jax.lax.while_loop(lambda c: c[0], body, (pred, placeholder, consts))[1]


def run_for_few(pred, fn: Callable[[], T], placeholder: T) -> T:
    """`run_if` for a costly route that few problems of a batch take.

    Alone, it is `run_if`. Under `vmap` (batch B) it gathers the problems whose `pred`
    holds, ceil(B / `GROUPS`) at a time, runs `fn` on them and scatters the results back:
    a route taken by one problem costs a group, not the batch. A batch in which every
    problem takes it pays `GROUPS` turns of a loop over the same work. This matters at
    the tail of a batched fit, where the few problems still running are often the
    ill-conditioned ones (the QR and SVD routes) in a chunk of finished ones: with one
    such problem among 3e4 two-Lorentzian fits, those routes took 3.1 of the 5.3 s
    (0.45 of 2.5 s gathered; `benchmarks/RESULTS.md`).
    """
    converted, consts = _hoisted(fn)

    @jax.custom_batching.custom_vmap
    def lazy(pred, placeholder, consts):
        return _once(pred, converted, placeholder, consts)

    @lazy.def_vmap
    def _rule(axis_size, in_batched, pred, placeholder, consts):
        pred_batched, placeholder_batched, consts_batched = in_batched
        pred = jnp.broadcast_to(pred, (axis_size,)) if not pred_batched else pred
        placeholder = jax.tree.map(
            lambda a, b: a if b else jnp.broadcast_to(a, (axis_size, *jnp.shape(a))),
            placeholder, placeholder_batched)
        group = -(-axis_size // GROUPS)
        stepped = jax.vmap(converted, in_axes=tuple(0 if b else None for b in consts_batched),
                           axis_size=group)

        def body(carry):
            out, todo = carry
            index = active_first(todo, group)
            sub = tuple(c[index] if b else c for c, b in zip(consts, consts_batched, strict=True))
            new = stepped(*sub)
            take = todo[index]
            out = jax.tree.map(lambda o, n: o.at[index].set(
                jnp.where(take.reshape(-1, *(1,) * (n.ndim - 1)), n, o[index]),
                unique_indices=True), out, new)
            return out, todo.at[index].set(False, unique_indices=True)

        out, _ = jax.lax.while_loop(lambda c: jnp.any(c[1]), body, (placeholder, pred))
        return out, jax.tree.map(lambda _: True, out)

    return lazy(jnp.asarray(pred), placeholder, consts)


def active_first(on: Bool[Array, " B"], length: int) -> Int[Array, " length"]:
    """`length` distinct problems of the batch: the active ones in batch order, then, when
    fewer are active, finished ones in batch order.

    One running count over the batch places every problem: the active one at its rank
    among the active, a finished one after all active ones, at its rank among the
    finished; one scatter keeps the first `length` places (two `nonzero`s, a count and a
    scatter each, cost a quarter of a fit of 1e4 exponential decays).
    """
    size = on.shape[0]
    k = jnp.arange(size, dtype=jnp.int32)
    active_to = jnp.cumsum(on, dtype=jnp.int32)  # active problems in 0..k
    count = jnp.minimum(active_to[-1], length)
    place = jnp.where(on, active_to - 1, count + k - active_to)
    place = jnp.where(place < length, place, length + k)  # beyond `length`: distinct, dropped
    return jnp.zeros(length, jnp.int32).at[place].set(k, mode="drop", unique_indices=True)
