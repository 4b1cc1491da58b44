"""A running digest of streamed data, computed on the device while the chunks go by.

Every real point (weight > 0) contributes a hash of its bits (x, y, weight)
mixed with its global index; the contributions are summed modulo 2^32 in two
lanes (the hashes, and the hashes times an odd function of the index). A sum
does not depend on how the data was cut into chunks or in which order chunks
arrive, so one pass gives the digest of the whole data at the cost of a few
integer operations per word of each chunk, next to the Jacobian
(`benchmarks/bench_digest.py`). It detects accidental change (a value, a moved point, a
different file), not an adversary: 64 bits, not a cryptographic hash.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree, UInt32

_GOLDEN = 0x9E3779B1  # odd: point index * _GOLDEN is a bijection mod 2^32
_SALT = 0x85EBCA77  # odd: (2 j + 1) * _SALT weighs word j of a point


def empty() -> UInt32[Array, " lanes"]:
    return jnp.zeros(2, jnp.uint32)


def _mix(h):
    """murmur3's 32-bit finalizer: every input bit flips about half the output bits."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _bits(a: Array) -> list[Array]:
    """The bits of `a` as uint32 arrays of its shape (two for 8-byte types)."""
    if a.dtype == jnp.bool_:
        return [a.astype(jnp.uint32)]
    size = a.dtype.itemsize
    if size == 8:
        bits = jax.lax.bitcast_convert_type(a, jnp.uint64)
        return [bits.astype(jnp.uint32), (bits >> 32).astype(jnp.uint32)]
    unsigned = {4: jnp.uint32, 2: jnp.uint16, 1: jnp.uint8}[size]
    return [jax.lax.bitcast_convert_type(a, unsigned).astype(jnp.uint32)]


def _point_words(leaves: list[Array], c: int) -> UInt32[Array, " c"]:
    """Each point's words combined as sum_j K_j * word_j mod 2^32 with distinct odd K_j,
    so a change in any one word changes the sum (a multiply-add per word; the mixing
    is done once per point). Word columns are taken one at a time: 1-D operations over
    contiguous points vectorize, a (c, k) block of words was 7x slower."""
    total, row = jnp.zeros(c, jnp.uint32), 0
    for a in leaves:
        a = a.reshape(c, -1)
        for j in range(a.shape[1]):
            for words in _bits(a[:, j]):
                total = total + words * jnp.uint32((2 * row + 1) * _SALT % 2**32)
                row += 1
    return total


@jax.jit
def fold(digest: UInt32[Array, " lanes"], start, x: PyTree, y, weight
         ) -> UInt32[Array, " lanes"]:
    """`digest` with the points of one chunk added; `start` is the index of its first point.

    Each real point's hash mixes its words with its global index; the chunk adds the
    sum of those hashes and the sum of them times an odd function of the index.
    """
    c = y.shape[0]
    base = (jnp.asarray(start, jnp.uint32) + jnp.arange(c, dtype=jnp.uint32)) * jnp.uint32(
        _GOLDEN)
    words = _point_words([y, weight, *jax.tree.leaves(x)], c)
    point = jnp.where(weight > 0, _mix(words ^ _mix(base)), 0)
    return digest + jnp.stack([jnp.sum(point, dtype=jnp.uint32),
                               jnp.sum(point * (base | 1), dtype=jnp.uint32)])


def text(digest) -> str:
    """The digest as 16 hex digits (for checkpoint headers and messages)."""
    a, b = (int(v) for v in np.asarray(digest))
    return f"{a:08x}{b:08x}"
