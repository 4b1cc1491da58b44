"""Multi-start candidates: Sobol', Halton, Latin hypercube and uniform points in JAX.

Every generator is a pure function of a PRNG key. The point count `n` and the dimension
`d` fix array shapes, so they are static Python ints; everything else traces, so the
generators jit and vmap over keys. Unscrambled Sobol' and Halton points equal
`scipy.stats.qmc.Sobol(d, scramble=False)` / `Halton(d, scramble=False)` without scipy at run
time: the Sobol' direction numbers ship in `data/sobol_directions.npz`, which holds the
first rows of `new-joe-kuo-6.21201` (S. Joe and F. Y. Kuo, "Constructing Sobol sequences
with better two-dimensional projections", SIAM J. Sci. Comput. 30, 2635-2654, 2008;
https://web.maths.unsw.edu.au/~fkuo/sobol/), the table scipy also uses.

`candidates` maps unit-cube points to starting points of a fit: into the box where both
bounds of a parameter are finite, else into a box around `p0`.
"""

from __future__ import annotations

import functools
import math
import operator
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

Method = Literal["sobol", "halton", "lhs", "random"]
METHODS: tuple[str, ...] = ("sobol", "halton", "lhs", "random")

_SOBOL_FILE = Path(__file__).parent / "data" / "sobol_directions.npz"
_SOBOL_BITS = 32  # direction numbers are uint32: n < 2**32 points, resolution 2**-32


# --------------------------------------------------------------------------- helpers


def _float_dtype() -> np.dtype:
    """The default float: float64 when x64 is on (the package default), else float32."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def _check_sizes(n: int, d: int) -> tuple[int, int]:
    """`n` and `d` fix shapes, so they must be non-negative Python ints (not tracers)."""
    try:
        n, d = operator.index(n), operator.index(d)
    except TypeError as err:
        raise TypeError("n and d must be static Python ints (mark them static under jit)") from err
    if n < 0 or d < 0:
        raise ValueError(f"n and d must be non-negative, got n={n}, d={d}")
    return n, d


def _require_key(key: PRNGKeyArray | None, what: str) -> PRNGKeyArray:
    if key is None:
        raise ValueError(f"{what} with scramble=True needs a PRNG key")
    return key


def _below_one(x: Array) -> Array:
    """Clamp to the largest float below 1 (rounding can reach 1.0 in float32)."""
    return jnp.minimum(x, jnp.nextafter(jnp.ones((), x.dtype), jnp.zeros((), x.dtype)))


# --------------------------------------------------------------------------- Sobol'


@functools.lru_cache(maxsize=1)
def _sobol_directions() -> np.ndarray:
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
    """Largest dimension `sobol` supports (number of stored Joe-Kuo dimensions)."""
    return _sobol_directions().shape[0]


def _linear_matrix_scramble(key: PRNGKeyArray, v: Array) -> Array:
    """Left-multiply each generator matrix by a random unit lower-triangular bit matrix.

    Matousek's (1998) linear matrix scramble, as in scipy's default: output bit k mixes
    input bits 0..k (most significant first), so every (t, m, s)-net property survives.
    """
    d = v.shape[0]
    rows = jnp.arange(_SOBOL_BITS, dtype=jnp.uint32)
    shifts = jnp.uint32(_SOBOL_BITS - 1) - rows
    bits = ((v[:, None, :] >> shifts[None, :, None]) & 1).astype(jnp.int32)  # (dim, bit, col)
    coin = jax.random.bernoulli(key, 0.5, (d, _SOBOL_BITS, _SOBOL_BITS)).astype(jnp.int32)
    eye = jnp.eye(_SOBOL_BITS, dtype=jnp.int32)
    lower = jnp.where(rows[:, None] > rows[None, :], coin, eye)
    mixed = (jnp.einsum("dkl,dlj->dkj", lower, bits) & 1).astype(jnp.uint32)
    return jnp.sum(mixed << shifts[None, :, None], axis=1, dtype=jnp.uint32)


def _uint32_to_unit(x: Array) -> Array:
    """Binary fraction x / 2**32 in the default float, truncated to its mantissa (< 1)."""
    dtype = _float_dtype()
    keep = min(_SOBOL_BITS, np.finfo(dtype).nmant + 1)
    return (x >> (_SOBOL_BITS - keep)).astype(dtype) * dtype.type(2.0**-keep)


def sobol(
    n: int, d: int, *, key: PRNGKeyArray | None = None, scramble: bool = False
) -> Float[Array, "n d"]:
    """First `n` points of the `d`-dimensional Sobol' sequence, in [0, 1)^d.

    Unscrambled, point i is the XOR of the direction numbers selected by the Gray code of
    i, which is the order of `scipy.stats.qmc.Sobol(d, scramble=False).random(n)` (first
    point 0). `scramble=True` needs `key` and applies a linear matrix scramble plus a
    random digital shift (XOR with random bits), like scipy's default: points stay a
    (t, m, d)-net (n = 2**m keeps the balance) but are no longer deterministic corners.
    Without `scramble` the key is ignored. Works for n < 2**32 and d <= `sobol_max_dim()`.
    """
    n, d = _check_sizes(n, d)
    table = _sobol_directions()
    if d > table.shape[0]:
        raise ValueError(f"sobol supports d <= {table.shape[0]}, got d={d}")
    if n > 2**_SOBOL_BITS:
        raise ValueError(f"sobol supports n <= 2**{_SOBOL_BITS}, got n={n}")
    v = jnp.asarray(table[:d])
    shift = jnp.zeros((d,), jnp.uint32)
    if scramble:
        k_matrix, k_shift = jax.random.split(_require_key(key, "sobol"))
        v = _linear_matrix_scramble(k_matrix, v)
        shift = jax.random.bits(k_shift, (d,), jnp.uint32)
    index = jnp.arange(n, dtype=jnp.uint32)
    gray = index ^ (index >> 1)
    x = jnp.broadcast_to(shift, (n, d))
    for j in range(max(n - 1, 0).bit_length()):
        on = ((gray >> j) & 1).astype(bool)[:, None]
        x = x ^ jnp.where(on, v[None, :, j], jnp.uint32(0))
    return _uint32_to_unit(x)


# --------------------------------------------------------------------------- Halton


def first_primes(d: int) -> np.ndarray:
    """The first `d` primes (the Halton bases), by a sieve sized with Rosser's bound."""
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
    key: PRNGKeyArray, bases: np.ndarray, counts: np.ndarray
) -> tuple[Array, np.ndarray]:
    """Independent uniform permutations of range(b), `counts[i]` of them for dimension i.

    Ragged segments in one flat table, shuffled at once by sorting random keys within each
    segment. Returns the table and `offsets[i, k]`, where permutation (i, k) starts.
    """
    dim = np.repeat(np.arange(len(bases)), counts)
    digit = np.concatenate([np.arange(c) for c in counts]) if len(dim) else dim
    sizes = bases[dim]
    starts = (np.cumsum(sizes) - sizes).astype(np.int64)
    offsets = np.zeros((len(bases), max(int(counts.max(initial=0)), 1)), dtype=np.int64)
    offsets[dim, digit] = starts
    segment = np.repeat(np.arange(len(sizes)), sizes)
    order = jnp.lexsort((jax.random.uniform(key, (len(segment),)), jnp.asarray(segment)))
    return order - jnp.asarray(np.repeat(starts, sizes)), offsets


def halton(
    n: int, d: int, *, key: PRNGKeyArray | None = None, scramble: bool = False
) -> Float[Array, "n d"]:
    """First `n` points of the `d`-dimensional Halton sequence, in [0, 1)^d.

    Coordinate j of point i is the radical inverse of i in the j-th prime, summed digit by
    digit in the same order as `scipy.stats.qmc.Halton(d, scramble=False).random(n)` (index
    0 first, so the first point is 0). `scramble=True` needs `key` and applies Owen's (2017)
    random digit permutations, as scipy does: an independent uniform permutation of the
    digits for each dimension and digit position, over all positions that matter in double
    precision (ceil(54 / log2 b) - 1), so leading zero digits get scrambled too. Without
    `scramble` the key is ignored. Scrambling costs O(sum of the first d primes) memory.
    """
    n, d = _check_sizes(n, d)
    dtype = _float_dtype()
    bases = first_primes(d)
    digits = _num_digits(max(n - 1, 0), bases)
    if scramble:
        k_perm, k_digit = jax.random.split(_require_key(key, "halton"))
        counts = np.ceil(54 / np.log2(np.maximum(bases, 2))).astype(np.int64) - 1
        permuted = np.minimum(digits, counts)  # positions some index reaches: permute
        table, offsets = _digit_permutations(k_perm, bases, permuted)
        # beyond those, every digit is 0 and only the image of 0 matters: a uniform digit
        high = jax.random.randint(k_digit, (d, int(counts.max(initial=0))), 0, bases[:, None])
    else:
        counts = permuted = digits
    itype = jax.dtypes.canonicalize_dtype(jnp.int64)
    b = jnp.asarray(bases, itype)
    fb = jnp.asarray(bases, dtype)
    b2r = 1.0 / fb
    q = jnp.broadcast_to(jnp.arange(n, dtype=itype)[:, None], (n, d))
    x = jnp.zeros((n, d), dtype)
    for k in range(int(counts.max(initial=0))):
        digit = q % b
        if scramble:
            if k < offsets.shape[1] and table.size:
                image = jnp.take(table, jnp.asarray(offsets[:, k], itype) + digit, mode="clip")
            else:
                image = digit
            digit = jnp.where(k < permuted, image, high[:, k])
            digit = jnp.where(k < counts, digit, 0)
        x = x + digit.astype(dtype) * b2r
        b2r = b2r / fb
        q = q // b
    return _below_one(x) if scramble else x


# --------------------------------------------------------------------------- LHS, random


def latin_hypercube(n: int, d: int, *, key: PRNGKeyArray) -> Float[Array, "n d"]:
    """`n` points in [0, 1)^d with exactly one point in each stratum [k/n, (k+1)/n) per axis.

    Independent random permutations assign strata per dimension; the position inside a
    stratum is uniform. Points are clamped into their stratum so rounding in (k + u) / n
    cannot push one onto the next stratum's left edge.
    """
    n, d = _check_sizes(n, d)
    dtype = _float_dtype()
    if n == 0 or d == 0:
        return jnp.zeros((n, d), dtype)
    k_perm, k_unif = jax.random.split(key)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(k_perm, d))
    stratum = perms.T.astype(dtype)
    x = (stratum + jax.random.uniform(k_unif, (n, d), dtype)) / n
    right = jnp.nextafter((stratum + 1) / n, jnp.zeros((), dtype))
    return jnp.clip(x, stratum / n, right)


def uniform(n: int, d: int, *, key: PRNGKeyArray) -> Float[Array, "n d"]:
    """`n` independent uniform points in [0, 1)^d (the plain Monte Carlo baseline)."""
    n, d = _check_sizes(n, d)
    return jax.random.uniform(key, (n, d), _float_dtype())


def unit_points(method: Method, n: int, d: int, *, key: PRNGKeyArray) -> Float[Array, "n d"]:
    """`n` points in [0, 1)^d from `method`; Sobol' and Halton are scrambled with `key`."""
    if method == "sobol":
        return sobol(n, d, key=key, scramble=True)
    if method == "halton":
        return halton(n, d, key=key, scramble=True)
    if method == "lhs":
        return latin_hypercube(n, d, key=key)
    if method == "random":
        return uniform(n, d, key=key)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


# --------------------------------------------------------------------------- candidates


def candidate_box(
    p0: ArrayLike,
    lower: ArrayLike | None = None,
    upper: ArrayLike | None = None,
    *,
    box_scale: float | Array = 1.0,
) -> tuple[Array, Array, Array]:
    """The sampling box [lo, hi] and the clipped `p0` used by `candidates` (same shapes).

    Where both bounds are finite, the box is [lower, upper]. Elsewhere it is
    c +- box_scale * max(|c|, 1) around c = clip(p0, lower, upper), cut at the finite bound
    if there is one; the max(., 1) keeps a box around p0 = 0 from collapsing.
    """
    p0 = jnp.asarray(p0)
    p0 = p0.astype(jnp.result_type(p0, float))
    inf = jnp.full(p0.shape, jnp.inf, p0.dtype)
    lb = -inf if lower is None else jnp.broadcast_to(jnp.asarray(lower, p0.dtype), p0.shape)
    ub = inf if upper is None else jnp.broadcast_to(jnp.asarray(upper, p0.dtype), p0.shape)
    center = jnp.clip(p0, lb, ub)
    half = box_scale * jnp.maximum(jnp.abs(center), 1)
    finite = jnp.isfinite(lb) & jnp.isfinite(ub)
    lo = jnp.where(finite, lb, jnp.maximum(center - half, lb))
    hi = jnp.where(finite, ub, jnp.minimum(center + half, ub))
    return lo, hi, center


def candidates(
    method: Method,
    n: int,
    p0: ArrayLike,
    lower: ArrayLike | None = None,
    upper: ArrayLike | None = None,
    *,
    key: PRNGKeyArray,
    box_scale: float | Array = 1.0,
    include_p0: bool = True,
) -> Float[Array, "n ..."]:
    """`n` starting points for a multi-start fit, shape (n, *p0.shape).

    Unit-cube points from `method` ("sobol", "halton": scrambled with `key`; "lhs";
    "random") are mapped affinely onto the box of `candidate_box` (bounds where both are
    finite, else p0 +- box_scale * max(|p0|, 1)) and clipped into it, so every candidate
    satisfies the bounds. With `include_p0` (default) row 0 is p0 itself (clipped into the
    bounds) and the other n - 1 rows are sampled: the user's guess is never lost to the
    random draw. For a full 2**m Sobol' block plus p0, pass n = 2**m + 1.
    `method`, `n` and `include_p0` are static; `box_scale` and the arrays may be traced.
    Needs lower <= upper.
    """
    n = _check_sizes(n, 0)[0]
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(box_scale, int | float) and not box_scale > 0:
        raise ValueError(f"box_scale must be positive, got {box_scale}")
    lo, hi, center = candidate_box(p0, lower, upper, box_scale=box_scale)
    shape = center.shape
    lo, hi, center = lo.ravel(), hi.ravel(), center.ravel()
    drawn = n - 1 if include_p0 and n > 0 else n
    u = unit_points(method, drawn, center.size, key=key).astype(center.dtype)
    points = jnp.clip(lo + u * (hi - lo), lo, hi)
    if include_p0 and n > 0:
        points = jnp.concatenate([center[None], points])
    return points.reshape((n, *shape))
