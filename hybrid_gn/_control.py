"""Control flow that stays cheap under `vmap`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp

T = TypeVar("T")


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
    converted, consts = jax.closure_convert(fn)

    def body(carry):
        flag, _, consts = carry
        flag, consts = jax.lax.optimization_barrier((flag, consts))
        return jnp.zeros_like(flag), converted(*consts), consts

    start = (jnp.asarray(pred), placeholder, consts)
    return jax.lax.while_loop(lambda c: c[0], body, start)[1]
