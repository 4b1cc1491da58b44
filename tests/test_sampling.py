"""Multi-start samplers in ``hybrid_gn.sampling`` against independent references.

* Unscrambled Sobol' and Halton points equal ``scipy.stats.qmc`` (``scramble=False``) to
  1e-15; the shipped Joe-Kuo rows equal the first rows of the published file
  ``new-joe-kuo-6.21201``, typed in here.
* Exact structural properties checked by counting: Latin hypercube points fill every
  stratum [k/n, (k+1)/n) of every axis once; scrambled Sobol' (first 2**m points) and
  scrambled Halton (first b**m points in base b) keep the same one-point-per-interval
  property per axis, which the linear matrix scramble, digital shift and digit
  permutations must preserve.
* Scrambled sequences keep low discrepancy (``scipy.stats.qmc.discrepancy``) compared to
  uniform random points.
* Determinism per key, difference across keys, jit/vmap, and the box mapping of
  ``candidates`` recomputed here from the documented rule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import qmc

import hybrid_gn  # noqa: F401  (turns on float64)
from hybrid_gn import sampling

pytestmark = pytest.mark.filterwarnings("ignore:The balance properties of Sobol")

KEYS = [jax.random.key(seed) for seed in (0, 1, 2)]

# First rows of new-joe-kuo-6.21201 (Joe & Kuo 2008): d, s, a, m_1..m_s.
JOE_KUO_HEAD = [
    (2, 1, 0, [1]),
    (3, 2, 1, [1, 3]),
    (4, 3, 1, [1, 3, 1]),
    (5, 3, 2, [1, 1, 1]),
    (6, 4, 1, [1, 1, 3, 3]),
    (7, 4, 4, [1, 3, 5, 13]),
    (8, 5, 2, [1, 1, 5, 5, 17]),
    (9, 5, 4, [1, 1, 5, 5, 5]),
    (10, 5, 7, [1, 1, 7, 11, 19]),
    (11, 5, 11, [1, 1, 5, 1, 1]),
    (12, 5, 13, [1, 1, 1, 3, 11]),
    (13, 5, 14, [1, 3, 5, 5, 31]),
]


def assert_one_per_stratum(x: np.ndarray, strata: int) -> None:
    """Every column has exactly one point in each [k/strata, (k+1)/strata)."""
    k = np.arange(strata)
    for column in np.asarray(x).T:
        s = np.sort(column)
        assert s.shape == (strata,)
        assert np.all(s >= k / strata), column
        assert np.all(s < (k + 1) / strata), column


# ----------------------------------------------------------------------- scipy equality


def test_joe_kuo_table_matches_published_rows():
    with np.load(sampling._SOBOL_FILE) as data:
        s, a, m = data["s"], data["a"], data["m"]
    assert sampling.sobol_max_dim() == len(s) + 1 >= 1024
    for dim, deg, coef, init in JOE_KUO_HEAD:
        row = dim - 2
        assert (s[row], a[row]) == (deg, coef)
        np.testing.assert_array_equal(m[row, :deg], init)
        assert not np.any(m[row, deg:])


@pytest.mark.parametrize("d", [1, 2, 5, 20])
@pytest.mark.parametrize("n", [1, 7, 64, 1000])
def test_sobol_matches_scipy(n, d):
    expected = qmc.Sobol(d, scramble=False).random(n)
    got = np.asarray(sampling.sobol(n, d))
    assert got.dtype == np.float64 and got.shape == (n, d)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)


def test_sobol_matches_scipy_all_stored_dimensions():
    d = sampling.sobol_max_dim()
    n = 300  # 9 bits: exercises the recurrence past every stored degree's m_i for s <= 9
    expected = qmc.Sobol(d, scramble=False).random(n)
    np.testing.assert_allclose(np.asarray(sampling.sobol(n, d)), expected, rtol=0, atol=1e-15)


def joe_kuo_directions(s: int, a: int, m: list[int], bits: int = 32) -> list[int]:
    """Scalar transcription of Joe & Kuo's sobol.cc recurrence (1-based there)."""
    v = [m[i] << (bits - 1 - i) for i in range(min(s, bits))]
    for i in range(s, bits):
        x = v[i - s] ^ (v[i - s] >> s)
        for k in range(1, s):
            x ^= ((a >> (s - 1 - k)) & 1) * v[i - k]
        v.append(x)
    return v


def test_sobol_direction_numbers_all_bits():
    """All 32 bits of every stored dimension (points up to 2**32 depend on them)."""
    table = sampling._sobol_directions()
    with np.load(sampling._SOBOL_FILE) as data:
        s, a, m = data["s"], data["a"], data["m"]
    np.testing.assert_array_equal(table[0], [1 << (31 - j) for j in range(32)])
    for row in range(len(s)):
        ref = joe_kuo_directions(int(s[row]), int(a[row]), [int(x) for x in m[row]])
        assert table[row + 1].tolist() == ref, row
    # scipy's private initializer with 32 bits, where available, gives the same table
    init = getattr(__import__("scipy.stats._sobol", fromlist=["_"]), "_initialize_v", None)
    if init is not None:
        v = np.zeros(table.shape, dtype=np.uint32)
        init(v, dim=table.shape[0], bits=32)
        np.testing.assert_array_equal(v, table)


@pytest.mark.parametrize("d", [1, 2, 5, 20])
@pytest.mark.parametrize("n", [1, 7, 64, 1000])
def test_halton_matches_scipy(n, d):
    expected = qmc.Halton(d, scramble=False).random(n)
    got = np.asarray(sampling.halton(n, d))
    assert got.dtype == np.float64 and got.shape == (n, d)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)


def test_halton_matches_scipy_many_dimensions():
    expected = qmc.Halton(150, scramble=False).random(500)
    np.testing.assert_allclose(np.asarray(sampling.halton(500, 150)), expected, rtol=0, atol=1e-15)


def test_first_primes():
    reference = [p for p in range(2, 2000) if all(p % q for q in range(2, int(p**0.5) + 1))]
    np.testing.assert_array_equal(sampling.first_primes(300), reference[:300])
    np.testing.assert_array_equal(sampling.first_primes(5), [2, 3, 5, 7, 11])


# ----------------------------------------------------------------------- structure


@pytest.mark.parametrize("n, d", [(1, 1), (2, 3), (7, 5), (100, 4), (257, 2)])
def test_latin_hypercube_one_point_per_stratum(n, d):
    for key in KEYS:
        x = np.asarray(sampling.latin_hypercube(n, d, key=key))
        assert x.shape == (n, d) and x.dtype == np.float64
        assert_one_per_stratum(x, n)


def test_scrambled_sobol_keeps_stratification():
    for key in KEYS:
        x = np.asarray(sampling.sobol(256, 6, key=key, scramble=True))
        assert_one_per_stratum(x, 256)
        assert np.all(x[0] != 0)  # the shift moved the origin
        # 2-D elementary intervals of size 1/16 x 1/16 hold one point each for dims 0, 1
        cells = np.floor(x[:, :2] * 16).astype(int)
        assert len({tuple(c) for c in cells}) == 256


def test_scrambled_halton_keeps_stratification():
    for key in KEYS:
        x = np.asarray(sampling.halton(243, 3, key=key, scramble=True))
        assert_one_per_stratum(x[:128, :1], 128)  # base 2
        assert_one_per_stratum(x[:, 1:2], 243)  # base 3
        assert_one_per_stratum(x[:125, 2:3], 125)  # base 5
        assert np.all((x >= 0) & (x < 1))


def test_scrambled_sequences_keep_low_discrepancy():
    n, d = 256, 4
    for key in KEYS:
        rand = qmc.discrepancy(np.asarray(sampling.uniform(n, d, key=key)))
        sob = qmc.discrepancy(np.asarray(sampling.sobol(n, d, key=key, scramble=True)))
        hal = qmc.discrepancy(np.asarray(sampling.halton(n, d, key=key, scramble=True)))
        lhs = qmc.discrepancy(np.asarray(sampling.latin_hypercube(n, d, key=key)))
        assert sob < 0.1 * rand, (sob, rand)
        assert hal < 0.25 * rand, (hal, rand)
        assert lhs < rand, (lhs, rand)


def test_points_in_unit_cube():
    for key in KEYS[:1]:
        for x in (
            sampling.sobol(100, 7, key=key, scramble=True),
            sampling.halton(100, 7, key=key, scramble=True),
            sampling.latin_hypercube(100, 7, key=key),
            sampling.uniform(100, 7, key=key),
        ):
            x = np.asarray(x)
            assert x.shape == (100, 7) and np.all((x >= 0) & (x < 1))


# ----------------------------------------------------------------------- keys, jit


GENERATORS = {
    "sobol": lambda n, d, key: sampling.sobol(n, d, key=key, scramble=True),
    "halton": lambda n, d, key: sampling.halton(n, d, key=key, scramble=True),
    "lhs": lambda n, d, key: sampling.latin_hypercube(n, d, key=key),
    "random": lambda n, d, key: sampling.uniform(n, d, key=key),
}


@pytest.mark.parametrize("method", sorted(GENERATORS))
def test_deterministic_per_key_and_different_across_keys(method):
    gen = GENERATORS[method]
    a1, a2 = np.asarray(gen(32, 3, KEYS[0])), np.asarray(gen(32, 3, KEYS[0]))
    b = np.asarray(gen(32, 3, KEYS[1]))
    np.testing.assert_array_equal(a1, a2)
    assert np.all(a1 != b)
    # legacy uint32 keys work too
    legacy = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(gen(32, 3, legacy), gen(32, 3, legacy))


def test_unscrambled_ignores_key():
    np.testing.assert_array_equal(sampling.sobol(16, 3, key=KEYS[0]), sampling.sobol(16, 3))
    np.testing.assert_array_equal(sampling.halton(16, 3, key=KEYS[0]), sampling.halton(16, 3))


@pytest.mark.parametrize("method", sorted(GENERATORS))
def test_jit_and_vmap(method):
    gen = GENERATORS[method]
    jitted = jax.jit(gen, static_argnums=(0, 1))
    np.testing.assert_array_equal(jitted(32, 3, KEYS[0]), gen(32, 3, KEYS[0]))
    keys = jax.random.split(KEYS[0], 4)
    batch = jax.vmap(lambda k: gen(32, 3, k))(keys)
    assert batch.shape == (4, 32, 3)
    np.testing.assert_array_equal(batch[2], gen(32, 3, keys[2]))
    cand = jax.jit(sampling.candidates, static_argnums=(0, 1))
    p0 = jnp.array([1.0, -2.0, 0.0])
    np.testing.assert_array_equal(
        cand(method, 9, p0, jnp.array([0.0, -jnp.inf, -1.0]), 5.0, key=KEYS[0], box_scale=2.0),
        sampling.candidates(
            method, 9, p0, jnp.array([0.0, -np.inf, -1.0]), 5.0, key=KEYS[0], box_scale=2.0
        ),
    )


def test_jit_unscrambled_matches_scipy():
    got = jax.jit(sampling.sobol, static_argnums=(0, 1))(64, 5)
    np.testing.assert_allclose(got, qmc.Sobol(5, scramble=False).random(64), rtol=0, atol=1e-15)
    got = jax.jit(sampling.halton, static_argnums=(0, 1))(64, 5)
    np.testing.assert_allclose(got, qmc.Halton(5, scramble=False).random(64), rtol=0, atol=1e-15)


def test_errors():
    with pytest.raises(ValueError, match="key"):
        sampling.sobol(4, 2, scramble=True)
    with pytest.raises(ValueError, match="key"):
        sampling.halton(4, 2, scramble=True)
    with pytest.raises(ValueError, match="d <="):
        sampling.sobol(4, sampling.sobol_max_dim() + 1)
    with pytest.raises(TypeError, match="static"):
        sampling.sobol(4.0, 2)
    with pytest.raises(ValueError, match="method"):
        sampling.candidates("grid", 4, jnp.zeros(2), key=KEYS[0])
    with pytest.raises(ValueError, match="box_scale"):
        sampling.candidates("lhs", 4, jnp.zeros(2), key=KEYS[0], box_scale=0.0)


def test_empty_shapes():
    assert sampling.sobol(0, 3).shape == (0, 3)
    assert sampling.halton(1, 0, key=KEYS[0], scramble=True).shape == (1, 0)
    assert sampling.latin_hypercube(0, 2, key=KEYS[0]).shape == (0, 2)
    np.testing.assert_array_equal(sampling.halton(1, 4), np.zeros((1, 4)))


# ----------------------------------------------------------------------- candidates


P0 = np.array([0.5, 3.0, -20.0, 0.0, 7.0, 2.0])
LOWER = np.array([0.0, 1.0, -np.inf, -np.inf, 6.0, -np.inf])
UPPER = np.array([1.0, np.inf, -15.0, np.inf, 10.0, np.inf])


def expected_box(p0, lower, upper, scale):
    """The documented rule, elementwise in plain Python."""
    lo, hi = [], []
    for p, lb, ub in zip(p0, lower, upper, strict=True):
        c = min(max(p, lb), ub)
        if np.isfinite(lb) and np.isfinite(ub):
            lo.append(lb), hi.append(ub)
        else:
            half = scale * max(abs(c), 1.0)
            lo.append(max(c - half, lb)), hi.append(min(c + half, ub))
    return np.array(lo), np.array(hi)


@pytest.mark.parametrize("method", sampling.METHODS)
def test_candidates_box_mapping(method):
    lo, hi = expected_box(P0, LOWER, UPPER, 1.5)
    np.testing.assert_allclose(lo, [0.0, 1.0, -50.0, -1.5, 6.0, -1.0])
    np.testing.assert_allclose(hi, [1.0, 7.5, -15.0, 1.5, 10.0, 5.0])
    for key in KEYS:
        c = np.asarray(sampling.candidates(method, 65, P0, LOWER, UPPER, key=key, box_scale=1.5))
        assert c.shape == (65, 6) and c.dtype == np.float64
        np.testing.assert_array_equal(c[0], P0)
        assert np.all((c >= lo) & (c <= hi)) and np.all((c >= LOWER) & (c <= UPPER))
        # the 64 drawn points spread over the box (not just a corner)
        spread = (c[1:].max(0) - c[1:].min(0)) / (hi - lo)
        assert np.all(spread > 0.8), spread
        # and they are exactly the affine image of the unit-cube sampler's first 64 points
        u = np.asarray(sampling.unit_points(method, 64, 6, key=key))
        np.testing.assert_allclose(c[1:], lo + u * (hi - lo), rtol=1e-15, atol=1e-15)


def test_candidates_options():
    key = KEYS[0]
    # without p0: n drawn points; lhs then stratifies each finite box exactly
    c = np.asarray(sampling.candidates("lhs", 10, P0, LOWER, UPPER, key=key, include_p0=False))
    assert c.shape == (10, 6)
    lo, hi = expected_box(P0, LOWER, UPPER, 1.0)
    assert_one_per_stratum((c - lo) / (hi - lo) * (1 - 1e-12), 10)
    # p0 outside the bounds is clipped, and candidates stay inside
    p0 = np.array([2.0, -5.0])
    c = np.asarray(sampling.candidates("sobol", 17, p0, [0.0, 0.0], [1.0, np.inf], key=key))
    np.testing.assert_array_equal(c[0], [1.0, 0.0])
    assert np.all((c >= 0) & (c[:, 0] <= 1))
    assert np.all(c[:, 1] <= 1.0)  # clip(p0) = 0, half-width max(|0|, 1) = 1
    # unbounded: default box p0 +- max(|p0|, 1); shapes of p0 are kept
    p0 = np.array([[100.0, -0.25], [0.0, 3.0]])
    c = np.asarray(sampling.candidates("halton", 5, p0, key=key))
    assert c.shape == (5, 2, 2)
    np.testing.assert_array_equal(c[0], p0)
    assert np.all(np.abs(c - p0) <= np.maximum(np.abs(p0), 1))
    # n = 1 is p0 alone; float32 p0 stays float32
    np.testing.assert_array_equal(sampling.candidates("random", 1, P0, key=key), P0[None])
    c32 = sampling.candidates("sobol", 8, P0.astype(np.float32), LOWER, UPPER, key=key)
    assert c32.dtype == jnp.float32
    assert np.all(
        (np.asarray(c32) >= LOWER.astype(np.float32))
        & (np.asarray(c32) <= UPPER.astype(np.float32))
    )
