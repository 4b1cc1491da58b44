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
    """
    def body(carry):
        return jnp.zeros_like(carry[0]), fn()

    return jax.lax.while_loop(lambda c: c[0], body, (jnp.asarray(pred), placeholder))[1]
