"""Loops over a batch of independent problems that stop at different times.

`compacted_loop` steps only the problems still running, in gathered chunks,
with one compiled copy of the step; each problem's states are exactly those
of its own loop. `fit_batch` drives its phases with it, and `fit` under
`jax.vmap` does too (`_pipeline.run`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from ._control import active_first
from ._result import Trace

State = TypeVar("State", bound=eqx.Module)  # a problem's loop state, with a `trace: Trace`


def compacted_loop(active: Callable[[State], Array],
                   step: Callable[[PyTree, State], State], states: State, inputs: PyTree,
                   shrink: int = 32, smallest: int = 128, largest: int = 256,
                   batched: PyTree | None = None) -> State:
    """`while active: state = step(inputs, state)` for every problem of a batch, a chunk
    of B / shrink problems (at least `smallest`, at most `largest`) at a time.

    Each sweep lists the active problems once; each turn of one `while` loop gathers the
    next chunk of that list with their inputs, steps it and scatters it back, so each
    active problem is stepped once per sweep. Problems that have finished stop costing
    steps at the next sweep, a few slow ones run on in chunks of their own, and `step`
    is compiled once, for the chunk. A chunk with fewer active problems than its size is
    filled with finished ones, which the step leaves as they are (`where`), so each
    problem's states are those of its solo loop. Only the trace entry a step writes is
    gathered and scattered. A batch of fewer than two chunks is stepped whole.

    The chunk size trades the tail against the cost of each turn: a few slow problems
    cost their iterations times the chunk, and every turn has a fixed cost of its own
    (the step's operations, whatever their size). Only the sweep's list is as long as
    the batch, so a turn costs the chunk, not the batch, and chunks can stay small at
    any B: two Lorentzians from Gaussian starts (B = 1e5, six problems running 1000
    iterations) ran 3.7x as fast in chunks of at most 256 as in chunks of B / 32; below
    about 128 problems the fixed cost dominates (`benchmarks/RESULTS.md`).

    `batched` (bools shaped like `inputs`; None: all) marks the inputs with a leading
    batch axis; the others are shared by every problem, neither gathered nor copied.
    """
    def masked_step(inputs, state):
        return _unless_inactive(active(state), step(inputs, state), state)

    if batched is None:
        batched = jax.tree.map(lambda _: True, inputs)
    stepped = jax.vmap(masked_step, in_axes=(
        jax.tree.map(lambda b: 0 if b else None, batched), 0))

    def take(index):
        return jax.tree.map(lambda a, b: a[index] if b else a, inputs, batched)

    size = jax.tree.leaves(states)[0].shape[0]
    chunk = min(max(size // shrink, smallest), largest)
    if 2 * chunk > size:
        return jax.lax.while_loop(lambda s: jnp.any(jax.vmap(active)(s)),
                                  lambda s: stepped(inputs, s), states)

    def sweep(states):  # the active problems first, their count, and the start
        # the barrier keeps XLA from constant-folding the first sweep, whose flags can be
        # constants (every problem starts active): folding that running count took 1.2 s
        # of the compile at B = 1e5 and 7 s at 1e6 (benchmarks/RESULTS.md)
        on = jax.lax.optimization_barrier(jax.vmap(active)(states))
        order = active_first(on, size)
        return order, jnp.sum(on, dtype=jnp.int32), jnp.asarray(0, jnp.int32)

    def turn(carry):
        states, order, count, start = carry
        # distinct problems (the list is a permutation); past its end the window slides
        # back, and a problem stepped twice in a sweep is still on its own loop
        index = jax.lax.dynamic_slice_in_dim(order, start, chunk)
        sub = stepped(take(index), _gather_states(states, index))
        states = _scatter_states(states, index, sub)
        start = start + chunk
        return states, *jax.lax.cond(start >= count, sweep, lambda _: (order, count, start),
                                     states)

    return jax.lax.while_loop(lambda c: c[2] > 0, turn, (states, *sweep(states)))[0]


def _records(trace: Trace) -> tuple[Array, ...]:
    return trace.cost, trace.grad_norm, trace.radius, trace.phase


def _without_trace(state: State) -> State:
    return eqx.tree_at(lambda s: s.trace, state, None)


def _with_trace(rest: State, trace: Trace) -> State:
    return eqx.tree_at(lambda s: s.trace, rest, trace, is_leaf=lambda x: x is None)


def _gather_states(states: State, index: Array) -> State:
    """The problems `index` of `states`, each with a one-entry trace: the entry its next
    step writes."""
    trace = states.trace
    slot = trace.next_entry[index]
    entries = (a[index, slot][:, None] for a in _records(trace))
    rest = jax.tree.map(lambda a: a[index], _without_trace(states))
    return _with_trace(rest, Trace(*entries, trace.length[index]))


def _scatter_states(states: State, index: Array, sub: State) -> State:
    """`states` with the problems `index` replaced by `sub` (from `_gather_states`)."""
    trace = states.trace
    slot = trace.next_entry[index]
    entries = (a.at[index, slot].set(b[:, 0], unique_indices=True)
               for a, b in zip(_records(trace), _records(sub.trace), strict=True))
    trace = Trace(*entries, trace.length.at[index].set(sub.trace.length, unique_indices=True))
    rest = jax.tree.map(lambda a, b: a.at[index].set(b, unique_indices=True),
                        _without_trace(states), _without_trace(sub))
    return _with_trace(rest, trace)


def _unless_inactive(on, new: State, old: State) -> State:
    """`new` where the problem is active, else `old`: a select on the small fields, and on
    the trace only at the entry the step wrote (selecting whole traces cost as much as
    the step itself for 1e5 problems)."""
    def keep(a, b):
        return jnp.where(on, a, b)

    k = old.trace.next_entry
    trace = Trace(*(b.at[k].set(keep(a[k], b[k]))
                    for a, b in zip(_records(new.trace), _records(old.trace), strict=True)),
                  keep(new.trace.length, old.trace.length))
    rest = jax.tree.map(keep, _without_trace(new), _without_trace(old))
    return _with_trace(rest, trace)
