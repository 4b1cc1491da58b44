"""Halton points, optionally scrambled with Owen's random digit permutations."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._common import below_one, check_sizes, float_dtype, random_uniform, require_key


def first_primes(d: int) -> np.ndarray:
    """The first `d` primes (the Halton bases), by a sieve sized with Rosser's bound.

    Args:
        d: how many primes.

    Returns:
        A (d,) int64 numpy array.

    Examples:
        >>> import hybrid_gn
        >>> hybrid_gn.sampling.first_primes(5).tolist()
        [2, 3, 5, 7, 11]
    """
    if d == 0:
        return np.zeros(0, dtype=np.int64)
    limit = 15 if d < 6 else int(d * (math.log(d) + math.log(math.log(d)))) + 1
    sieve = np.ones(limit + 1, dtype=bool)
    sieve[:2] = False
    for p in range(2, math.isqrt(limit) + 1):
        if sieve[p]:
            sieve[p * p :: p] = False
    return np.flatnonzero(sieve)[:d].astype(np.int64)


def _num_digits(value: int, bases: np.ndarray) -> np.ndarray:
    """Number of base-b digits of `value` for every base (0 has none)."""
    out = np.zeros(len(bases), dtype=np.int64)
    rest = np.full(len(bases), value, dtype=np.int64)
    while np.any(rest > 0):
        out += rest > 0
        rest //= bases
    return out


def _digit_permutations(
    sort_keys: Array, bases: np.ndarray, counts: np.ndarray, width: int
) -> tuple[Array, np.ndarray]:
    """Independent uniform permutations of range(b), `counts[i]` of them for dimension i.

    Ragged segments in one flat table, shuffled at once by sorting the random `sort_keys`
    (one per table entry) within each segment. Returns the table and `offsets[i, k]`
    (shape (d, max(width, 1))), where permutation (i, k) starts.
    """
    dim = np.repeat(np.arange(len(bases)), counts)
    digit = np.concatenate([np.arange(c) for c in counts]) if len(dim) else dim
    sizes = bases[dim]
    starts = (np.cumsum(sizes) - sizes).astype(np.int64)
    offsets = np.zeros((len(bases), max(width, 1)), dtype=np.int64)
    offsets[dim, digit] = starts
    segment = np.repeat(np.arange(len(sizes)), sizes)
    order = jnp.lexsort((sort_keys, jnp.asarray(segment)))
    return order - jnp.asarray(np.repeat(starts, sizes)), offsets


def halton(
    n: int, d: int, *, key: PRNGKeyArray | None = None, scramble: bool = False
) -> Float[Array, "n d"]:
    """First `n` points of the `d`-dimensional Halton sequence, in [0, 1)^d.

    Low-discrepancy points in any dimension; a pure function of `key` that
    jits and vmaps over keys. Coordinate j of point i is the radical inverse
    of i in the j-th prime, summed digit by digit in the same order as
    `scipy.stats.qmc.Halton(d, scramble=False).random(n)` (index 0 first, so
    the first point is 0). `scramble=True` applies Owen's (2017) random digit
    permutations, as scipy does: an independent uniform permutation of the
    digits for each dimension and digit position, over all positions that
    matter in double precision (ceil(54 / log2 b) - 1), so leading zero
    digits get scrambled too. Scrambling builds at most sum_j b_j * (number
    of base-b_j digits of n - 1) permutation entries, about the sum of the
    first d primes for small n.

    Args:
        n: number of points, a static Python int.
        d: dimension, a static Python int.
        key: a JAX random key; needed with `scramble`, ignored without it.
        scramble: whether to scramble the points.

    Returns:
        An (n, d) array in the default float dtype.

    Raises:
        ValueError: `n` or `d` negative, or `scramble` without `key`.
        TypeError: `n` or `d` not a static Python int.

    Examples:
        >>> import numpy as np
        >>> import hybrid_gn
        >>> print(np.round(hybrid_gn.sampling.halton(4, 2), 3))
        [[0.    0.   ]
         [0.5   0.333]
         [0.25  0.667]
         [0.75  0.111]]
    """
    n, d = check_sizes(n, d)
    key = require_key(key, "halton") if scramble else None  # unscrambled: one compile
    return _halton(n, d, key, scramble)


@functools.partial(jax.jit, static_argnums=(0, 1, 3))
def _halton(n: int, d: int, key: PRNGKeyArray | None, scramble: bool) -> Array:
    """Jitted body of `halton` (arguments validated; key is None unless scrambling)."""
    dtype = float_dtype()
    bases = first_primes(d)
    digits = _num_digits(max(n - 1, 0), bases)
    itype = jax.dtypes.canonicalize_dtype(jnp.int64)
    b = jnp.asarray(bases, itype)
    fb = jnp.asarray(bases, dtype)
    tail = jnp.zeros((d,), dtype)
    if scramble:
        # Owen's scheme permutes positions 0 .. counts-1. Positions some index reaches get
        # a permutation each; beyond them every digit is 0, its image a uniform random digit,
        # so those positions add a per-dimension constant `tail`.
        counts = np.ceil(54 / np.log2(np.maximum(bases, 2))).astype(np.int64) - 1
        width = max(int(counts.max(initial=0)), 1)
        size = int(np.dot(digits, bases))
        u = random_uniform(key, (size + d * width,), dtype)
        table, offsets = _digit_permutations(u[:size], bases, digits, width)
        high = jnp.minimum(jnp.floor(u[size:].reshape(d, width) * fb[:, None]), fb[:, None] - 1)
        k = np.arange(width)
        weight = fb[:, None] ** -(k + 1.0)
        beyond = (k >= digits[:, None]) & (k < counts[:, None])
        tail = jnp.sum(jnp.where(beyond, high * weight, 0), axis=1)

    def add_digit(k, carry):
        x, q, b2r = carry  # same operations, same order as scipy: x += digit * b**-(k+1)
        digit = q % b
        if scramble and table.size:  # (no table when n <= 1: the loop never runs)
            image = jnp.take(table, jnp.asarray(offsets, itype)[:, k] + digit, mode="clip")
            digit = jnp.where(k < digits, image, 0)
        return x + digit.astype(dtype) * b2r, q // b, b2r / fb

    q = jnp.broadcast_to(jnp.arange(n, dtype=itype)[:, None], (n, d))
    init = (jnp.zeros((n, d), dtype), q, 1.0 / fb)
    x = jax.lax.fori_loop(0, int(digits.max(initial=0)), add_digit, init)[0]
    return below_one(x + tail)  # clamping is a no-op in float64 for any reachable n

