"""Multi-start candidates: Sobol', Halton, Latin hypercube and uniform points in JAX.

Every generator is a pure function of a PRNG key. The point count `n` and the dimension
`d` fix array shapes, so they are static Python ints; everything else traces, so the
generators jit and vmap over keys. Unscrambled Sobol' and Halton points equal
`scipy.stats.qmc.Sobol(d, scramble=False)` / `Halton(d, scramble=False)` without needing
scipy at run time: the Sobol' direction numbers ship in `data/sobol_directions.npz`, the
rows for dimensions 2..1024 of `new-joe-kuo-6.21201` (S. Joe and F. Y. Kuo, "Constructing
Sobol sequences with better two-dimensional projections", SIAM J. Sci. Comput. 30,
2635-2654, 2008; https://web.maths.unsw.edu.au/~fkuo/sobol/), the table scipy also uses.

Scrambling (randomized QMC, needs a key): Sobol' gets a linear matrix scramble plus a
digital shift, Halton gets Owen's random digit permutations; both keep their
stratification. `candidates` maps unit-cube points to starting points of a fit: into the
box where both bounds of a parameter are finite, else into a box around `p0`.
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


def _random_bits(key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
    """Random uint32 words of `shape`, drawn flat: multi-axis draws compile ~5x slower on CPU."""
    return jax.random.bits(key, (math.prod(shape),), jnp.uint32).reshape(shape)


def _random_uniform(key: PRNGKeyArray, shape: tuple[int, ...], dtype) -> Array:
    """Uniform [0, 1) floats of `shape`, drawn flat for the same compile-time reason."""
    return jax.random.uniform(key, (math.prod(shape),), dtype).reshape(shape)


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
    return _sobol_directions().shape[0]


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


def _uint32_to_unit(x: Array) -> Array:
    """Binary fraction x / 2**32 in the default float, truncated to its mantissa (< 1)."""
    dtype = _float_dtype()
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
    n, d = _check_sizes(n, d)
    if d > sobol_max_dim():
        raise ValueError(f"sobol supports d <= {sobol_max_dim()}, got d={d}")
    if n > 2**_SOBOL_BITS:
        raise ValueError(f"sobol supports n <= 2**{_SOBOL_BITS}, got n={n}")
    key = _require_key(key, "sobol") if scramble else None  # unscrambled: one compile
    return _sobol(n, d, key, scramble)


@functools.partial(jax.jit, static_argnums=(0, 1, 3))
def _sobol(n: int, d: int, key: PRNGKeyArray | None, scramble: bool) -> Array:
    """Jitted body of `sobol` (arguments validated; key is None unless scrambling)."""
    v = jnp.asarray(_sobol_directions()[:d])
    shift = jnp.zeros((d,), jnp.uint32)
    if scramble:
        words = _random_bits(key, (d, _SOBOL_BITS + 1))
        v = _linear_matrix_scramble(words[:, :_SOBOL_BITS], v)
        shift = words[:, _SOBOL_BITS]
    index = jnp.arange(n, dtype=jnp.uint32)
    gray = index ^ (index >> 1)

    def add_bit(j, x):
        on = ((gray >> j.astype(jnp.uint32)) & 1).astype(bool)[:, None]
        return x ^ jnp.where(on, v[:, j][None, :], jnp.uint32(0))

    bits = max(n - 1, 0).bit_length()
    x = jax.lax.fori_loop(0, bits, add_bit, jnp.broadcast_to(shift, (n, d)))
    return _uint32_to_unit(x)


# --------------------------------------------------------------------------- Halton


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
    n, d = _check_sizes(n, d)
    key = _require_key(key, "halton") if scramble else None  # unscrambled: one compile
    return _halton(n, d, key, scramble)


@functools.partial(jax.jit, static_argnums=(0, 1, 3))
def _halton(n: int, d: int, key: PRNGKeyArray | None, scramble: bool) -> Array:
    """Jitted body of `halton` (arguments validated; key is None unless scrambling)."""
    dtype = _float_dtype()
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
        u = _random_uniform(key, (size + d * width,), dtype)
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
    return _below_one(x + tail)  # clamping is a no-op in float64 for any reachable n


# --------------------------------------------------------------------------- LHS, random


@functools.partial(jax.jit, static_argnames=("n", "d"))
def latin_hypercube(n: int, d: int, *, key: PRNGKeyArray) -> Float[Array, "n d"]:
    """`n` points in [0, 1)^d with exactly one point in each stratum [k/n, (k+1)/n) per axis.

    Latin hypercube sampling: every one-dimensional projection is evenly
    covered. Independent random permutations (argsort of uniforms) assign
    strata per dimension; the position inside a stratum is uniform. Points
    are clamped into their stratum so rounding in (k + u) / n cannot push one
    onto the next stratum's left edge.

    Args:
        n: number of points, a static Python int.
        d: dimension, a static Python int.
        key: a JAX random key.

    Returns:
        An (n, d) array in the default float dtype.

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> import hybrid_gn
        >>> points = hybrid_gn.sampling.latin_hypercube(8, 3, key=jax.random.key(0))
        >>> strata = np.sort(np.floor(np.asarray(points) * 8), axis=0)
        >>> bool(np.all(strata == np.arange(8)[:, None]))  # one point per stratum and axis
        True
    """
    n, d = _check_sizes(n, d)
    dtype = _float_dtype()
    if n == 0 or d == 0:
        return jnp.zeros((n, d), dtype)
    u = _random_uniform(key, (2, n, d), dtype)
    stratum = jnp.argsort(u[0], axis=0).astype(dtype)  # a uniform permutation per column
    x = (stratum + u[1]) / n
    right = jnp.nextafter((stratum + 1) / n, jnp.zeros((), dtype))
    return jnp.clip(x, stratum / n, right)


@functools.partial(jax.jit, static_argnames=("n", "d"))
def uniform(n: int, d: int, *, key: PRNGKeyArray) -> Float[Array, "n d"]:
    """`n` independent uniform points in [0, 1)^d (the plain Monte Carlo baseline).

    Args:
        n: number of points, a static Python int.
        d: dimension, a static Python int.
        key: a JAX random key.

    Returns:
        An (n, d) array in the default float dtype.

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> import hybrid_gn
        >>> points = hybrid_gn.sampling.uniform(5, 2, key=jax.random.key(0))
        >>> points.shape, bool(np.all((points >= 0) & (points < 1)))
        ((5, 2), True)
    """
    n, d = _check_sizes(n, d)
    return _random_uniform(key, (n, d), _float_dtype())


def unit_points(method: Method, n: int, d: int, *, key: PRNGKeyArray) -> Float[Array, "n d"]:
    """`n` points in [0, 1)^d from `method`; Sobol' and Halton are scrambled with `key`.

    One entry point for the four generators, as `candidates` and the
    multi-start tournament use them.

    Args:
        method: "sobol" (`sobol`, scrambled), "halton" (`halton`,
            scrambled), "lhs" (`latin_hypercube`) or "random" (`uniform`).
        n: number of points, a static Python int.
        d: dimension, a static Python int.
        key: a JAX random key.

    Returns:
        An (n, d) array in the default float dtype.

    Raises:
        ValueError: an unknown `method`.

    Examples:
        >>> import jax
        >>> import hybrid_gn
        >>> key = jax.random.key(0)
        >>> hybrid_gn.sampling.unit_points("halton", 6, 3, key=key).shape
        (6, 3)
    """
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
    c +- box_scale * max(|c|, 1) around c = clip(p0, lower, upper), cut at the
    finite bound if there is one; the max(., 1) keeps a box around p0 = 0
    from collapsing.

    Args:
        p0: the starting point, an array.
        lower: None (no lower bounds) or lower bounds broadcastable to `p0`.
        upper: None (no upper bounds) or upper bounds broadcastable to `p0`.
        box_scale: the half-width of the box, in units of max(|c|, 1), where
            a parameter is not bounded on both sides.

    Returns:
        `(lo, hi, c)`, each of the shape of `p0`.

    Examples:
        >>> import numpy as np
        >>> import hybrid_gn
        >>> lo, hi, c = hybrid_gn.sampling.candidate_box(
        ...     np.array([1.0, 0.0]), lower=np.array([0.0, -np.inf]),
        ...     upper=np.array([2.0, np.inf]))
        >>> print(lo, hi, c)
        [ 0. -1.] [2. 1.] [1. 0.]
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

    The candidates of `fit_multistart`, also usable for a tournament of your
    own. Unit-cube points from `method` are mapped affinely onto the box of
    `candidate_box` (bounds where both are finite, else p0 +- box_scale *
    max(|p0|, 1)) and clipped into it, so every candidate satisfies the
    bounds. With `include_p0` (default) row 0 is p0 itself (clipped into the
    bounds) and the other n - 1 rows are sampled: the user's guess is never
    lost to the random draw. For a full 2**m Sobol' block plus p0, pass
    n = 2**m + 1. `method`, `n` and `include_p0` are static; `box_scale` and
    the arrays may be traced.

    Args:
        method: "sobol", "halton" (both scrambled with `key`), "lhs" or
            "random".
        n: number of candidates, a static Python int.
        p0: the starting point, an array.
        lower: None or lower bounds broadcastable to `p0`.
        upper: None or upper bounds broadcastable to `p0`; needs
            lower <= upper.
        key: a JAX random key.
        box_scale: as in `candidate_box`; positive.
        include_p0: whether row 0 is p0.

    Returns:
        An (n, *p0.shape) array.

    Raises:
        ValueError: an unknown `method`, a negative `n` or a `box_scale`
            that is not positive.

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> import hybrid_gn
        >>> lower, upper = np.array([0.0, -np.inf]), np.array([2.0, np.inf])
        >>> points = hybrid_gn.sampling.candidates(
        ...     "sobol", 9, np.array([1.0, 0.0]), lower, upper, key=jax.random.key(0))
        >>> points.shape
        (9, 2)
        >>> print(points[0])  # p0 itself
        [1. 0.]
        >>> bool(np.all((points >= lower) & (points <= upper)))
        True
    """
    n = _check_sizes(n, 0)[0]
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(box_scale, int | float) and not box_scale > 0:
        raise ValueError(f"box_scale must be positive, got {box_scale}")
    p0 = jnp.asarray(p0)
    lower = None if lower is None else jnp.asarray(lower)
    upper = None if upper is None else jnp.asarray(upper)
    lo, hi, center = _jit_box(p0, lower, upper, box_scale)
    drawn = n - 1 if include_p0 and n > 0 else n
    u = unit_points(method, drawn, center.size, key=key)
    return _place(u, lo, hi, center, include_p0 and n > 0)


@jax.jit
def _jit_box(p0, lower, upper, box_scale):
    """`candidate_box`, compiled once per shape and shared by all methods."""
    return candidate_box(p0, lower, upper, box_scale=box_scale)


@functools.partial(jax.jit, static_argnums=(4,))
def _place(u: Array, lo: Array, hi: Array, center: Array, include_p0: bool) -> Array:
    """Map unit points (m, p) onto the box [lo, hi] (shape of p0), p0 first if asked."""
    shape = center.shape
    lo, hi, center = lo.ravel(), hi.ravel(), center.ravel()
    points = jnp.clip(lo + u.astype(center.dtype) * (hi - lo), lo, hi)
    if include_p0:
        points = jnp.concatenate([center[None], points])
    return points.reshape((points.shape[0], *shape))
