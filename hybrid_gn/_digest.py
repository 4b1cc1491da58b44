"""A running digest of streamed data, computed on the device while the chunks go by.

Every real point (weight > 0) contributes a hash of its bits (x, y, weight)
mixed with its global index; the contributions are summed modulo 2^32 in two
independent lanes. A sum does not depend on how the data was cut into chunks
or in which order chunks arrive, so one pass gives the digest of the whole
data at the cost of an integer pass over each chunk (memory-bound, next to
the Jacobian). It detects accidental change (a value, a moved point, a
different file), not an adversary: 64 bits, not a cryptographic hash.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree, UInt32

_SEEDS = (0x9E3779B9, 0x7F4A7C15)


def empty() -> UInt32[Array, 2]:
    return jnp.zeros(2, jnp.uint32)


def _mix(h):
    """murmur3's 32-bit finalizer: every input bit flips about half the output bits."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _words(a: Array) -> UInt32[Array, "c k"]:
    """The bits of each point's values as uint32 words, one row per point."""
    a = a.reshape(a.shape[0], -1)
    if a.dtype == jnp.bool_:
        return a.astype(jnp.uint32)
    size = a.dtype.itemsize
    if size == 8:
        return jax.lax.bitcast_convert_type(a, jnp.uint32).reshape(a.shape[0], -1)
    unsigned = {4: jnp.uint32, 2: jnp.uint16, 1: jnp.uint8}[size]
    return jax.lax.bitcast_convert_type(a, unsigned).astype(jnp.uint32)


@jax.jit
def fold(digest: UInt32[Array, 2], start, x: PyTree, y, weight) -> UInt32[Array, 2]:
    """`digest` with the points of one chunk added; `start` is the index of its first point."""
    words = jnp.concatenate([_words(a) for a in (y, weight, *jax.tree.leaves(x))], axis=1)
    c, k = words.shape
    point = jnp.asarray(start, jnp.uint32) + jnp.arange(c, dtype=jnp.uint32)
    position = point[:, None] * jnp.uint32(k) + jnp.arange(k, dtype=jnp.uint32)[None, :]
    live = (weight > 0)[:, None]
    lanes = [jnp.sum(jnp.where(live, _mix(words ^ _mix(position + jnp.uint32(seed))), 0),
                     dtype=jnp.uint32) for seed in _SEEDS]
    return digest + jnp.stack(lanes)


def text(digest) -> str:
    """The digest as 16 hex digits (for checkpoint headers and messages)."""
    a, b = (int(v) for v in np.asarray(digest))
    return f"{a:08x}{b:08x}"
