"""Sobol' points (Joe-Kuo directions), optionally scrambled (a linear matrix scramble
and a digital shift)."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._common import check_sizes, float_dtype, random_bits, require_key

_SOBOL_FILE = Path(__file__).parent.parent / "data" / "sobol_directions.npz"
_SOBOL_BITS = 32  # direction numbers are uint32: n < 2**32 points, resolution 2**-32


@functools.lru_cache(maxsize=1)
def sobol_directions() -> np.ndarray:
    """Direction numbers v[dim, j] (uint32, bit 31 is 1/2) for every stored dimension.

    The file holds Joe & Kuo's degree s, polynomial coefficients a and initial m_1..m_s for
    dimensions 2, 3, ...; dimension 1 is van der Corput (all m_i = 1). Recurrence of their
    paper, vectorized over dimensions: v_i = v_{i-s} ^ (v_{i-s} >> s) ^ sum_k a_k v_{i-k}.
    """
    with np.load(_SOBOL_FILE) as data:
        s = data["s"].astype(np.int64)
        a = data["a"].astype(np.int64)
        m = data["m"].astype(np.int64)
    rows = np.arange(len(s))
    v = np.zeros((len(s) + 1, _SOBOL_BITS), dtype=np.int64)
    v[0] = 1 << (_SOBOL_BITS - 1 - np.arange(_SOBOL_BITS))
    w = v[1:]  # view: dimensions 2, 3, ...
    for i in range(_SOBOL_BITS):
        init = (m[:, i] if i < m.shape[1] else 0) << (_SOBOL_BITS - 1 - i)
        back = w[rows, np.maximum(i - s, 0)]
        rec = back ^ (back >> s)
        for k in range(1, min(i, m.shape[1])):
            bit = (a >> np.maximum(s - 1 - k, 0)) & 1
            rec ^= np.where((k < s) & (bit == 1), w[:, i - k], 0)
        w[:, i] = np.where(i < s, init, rec)
    return v.astype(np.uint32)


def sobol_max_dim() -> int:
    """Largest dimension `sobol` supports (number of stored Joe-Kuo dimensions).

    The direction numbers ship with the package: dimension 1 (van der
    Corput) and the rows for dimensions 2..1024 of Joe and Kuo's table.

    Returns:
        The largest `d` that `sobol` accepts.

    Examples:
        >>> import hybrid_gn
        >>> hybrid_gn.sampling.sobol_max_dim()
        1024
    """
    return sobol_directions().shape[0]


def _linear_matrix_scramble(words: Array, v: Array) -> Array:
    """Left-multiply each generator matrix by a random unit lower-triangular bit matrix.

    Matousek's (1998) linear matrix scramble, as in scipy's default: output bit k (most
    significant first) is the parity of input bits 0..k picked by row k of the matrix, so
    every (t, m, s)-net property survives. Row k is a uint32 mask: bit k set, the random
    bits of `words[i, k]` above it, nothing below. v: (d, 32) direction numbers.
    """
    k = np.arange(_SOBOL_BITS)
    diagonal = np.left_shift(1, _SOBOL_BITS - 1 - k).astype(np.uint32)
    above = np.array([(2**32 - 1) << (32 - i) & (2**32 - 1) for i in k], dtype=np.uint32)
    rows = (words & above) | diagonal  # (d, k)
    parity = jax.lax.population_count(rows[:, :, None] & v[:, None, :]) & 1  # (d, k, j)
    return jnp.sum(
        parity << (_SOBOL_BITS - 1 - k)[None, :, None].astype(np.uint32), axis=1, dtype=jnp.uint32
    )


def uint32_to_unit(x: Array) -> Array:
    """Binary fraction x / 2**32 in the default float, truncated to its mantissa (< 1)."""
    dtype = float_dtype()
    keep = min(_SOBOL_BITS, np.finfo(dtype).nmant + 1)
    return (x >> (_SOBOL_BITS - keep)).astype(dtype) * dtype.type(2.0**-keep)


def sobol(
    n: int, d: int, *, key: PRNGKeyArray | None = None, scramble: bool = False
) -> Float[Array, "n d"]:
    """First `n` points of the `d`-dimensional Sobol' sequence, in [0, 1)^d.

    Low-discrepancy points for multi-start candidates or quasi-Monte Carlo;
    a pure function of `key` that jits and vmaps over keys. Unscrambled,
    point i is the XOR of the direction numbers selected by the Gray code of
    i, which is the order of `scipy.stats.qmc.Sobol(d, scramble=False).random(n)`
    (first point 0), without needing scipy at run time. `scramble=True`
    applies a linear matrix scramble plus a random digital shift (XOR with
    random bits), like scipy's default: points stay a (t, m, d)-net (n = 2**m
    keeps the balance) but are no longer deterministic corners. In float32
    mode the 32-bit fractions are truncated to 24 bits.

    Args:
        n: number of points, a static Python int, n <= 2**32.
        d: dimension, a static Python int, d <= `sobol_max_dim()` (1024).
        key: a JAX random key; needed with `scramble`, ignored without it.
        scramble: whether to scramble the points.

    Returns:
        An (n, d) array in the default float dtype.

    Raises:
        ValueError: `n` or `d` negative or too large, or `scramble` without
            `key`.
        TypeError: `n` or `d` not a static Python int.

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> import hybrid_gn
        >>> print(hybrid_gn.sampling.sobol(4, 2))
        [[0.   0.  ]
         [0.5  0.5 ]
         [0.75 0.25]
         [0.25 0.75]]
        >>> points = hybrid_gn.sampling.sobol(8, 2, key=jax.random.key(0), scramble=True)
        >>> print(np.sum(np.asarray(points) < 0.5, axis=0))  # still balanced
        [4 4]
    """
    n, d = check_sizes(n, d)
    if d > sobol_max_dim():
        raise ValueError(f"sobol supports d <= {sobol_max_dim()}, got d={d}")
    if n > 2**_SOBOL_BITS:
        raise ValueError(f"sobol supports n <= 2**{_SOBOL_BITS}, got n={n}")
    key = require_key(key, "sobol") if scramble else None  # unscrambled: one compile
    return _sobol(n, d, key, scramble)


@functools.partial(jax.jit, static_argnums=(0, 1, 3))
def _sobol(n: int, d: int, key: PRNGKeyArray | None, scramble: bool) -> Array:
    """Jitted body of `sobol` (arguments validated; key is None unless scrambling)."""
    v = jnp.asarray(sobol_directions()[:d])
    shift = jnp.zeros((d,), jnp.uint32)
    if scramble:
        words = random_bits(key, (d, _SOBOL_BITS + 1))
        v = _linear_matrix_scramble(words[:, :_SOBOL_BITS], v)
        shift = words[:, _SOBOL_BITS]
    index = jnp.arange(n, dtype=jnp.uint32)
    gray = index ^ (index >> 1)

    def add_bit(j, x):
        on = ((gray >> j.astype(jnp.uint32)) & 1).astype(bool)[:, None]
        return x ^ jnp.where(on, v[:, j][None, :], jnp.uint32(0))

    bits = max(n - 1, 0).bit_length()
    x = jax.lax.fori_loop(0, bits, add_bit, jnp.broadcast_to(shift, (n, d)))
    return uint32_to_unit(x)

