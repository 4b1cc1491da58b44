"""Shared pieces of the generators: sizes, keys, random words, the float type."""

from __future__ import annotations

import math
import operator
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

Method = Literal["sobol", "halton", "lhs", "random"]
METHODS: tuple[str, ...] = ("sobol", "halton", "lhs", "random")


def float_dtype() -> np.dtype:
    """The default float: float64 when x64 is on (the package default), else float32."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def check_sizes(n: int, d: int) -> tuple[int, int]:
    """`n` and `d` fix shapes, so they must be non-negative Python ints (not tracers)."""
    try:
        n, d = operator.index(n), operator.index(d)
    except TypeError as err:
        raise TypeError("n and d must be static Python ints (mark them static under jit)") from err
    if n < 0 or d < 0:
        raise ValueError(f"n and d must be non-negative, got n={n}, d={d}")
    return n, d


def require_key(key: PRNGKeyArray | None, what: str) -> PRNGKeyArray:
    if key is None:
        raise ValueError(f"{what} with scramble=True needs a PRNG key")
    return key


def random_bits(key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
    """Random uint32 words of `shape`, drawn flat: multi-axis draws compile ~5x slower on CPU."""
    return jax.random.bits(key, (math.prod(shape),), jnp.uint32).reshape(shape)


def random_uniform(key: PRNGKeyArray, shape: tuple[int, ...], dtype) -> Array:
    """Uniform [0, 1) floats of `shape`, drawn flat for the same compile-time reason."""
    return jax.random.uniform(key, (math.prod(shape),), dtype).reshape(shape)


def below_one(x: Array) -> Array:
    """Clamp to the largest float below 1 (rounding can reach 1.0 in float32)."""
    return jnp.minimum(x, jnp.nextafter(jnp.ones((), x.dtype), jnp.zeros((), x.dtype)))

