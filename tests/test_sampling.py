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
from hybrid_gn.sampling import _sobol as sobol_module

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
    with np.load(sobol_module._SOBOL_FILE) as data:
        s, a, m = data["s"], data["a"], data["m"]
    assert sampling.sobol_max_dim() == len(s) + 1 >= 1024
    for dim, deg, coef, init in JOE_KUO_HEAD:
        row = dim - 2
        assert (s[row], a[row]) == (deg, coef)
        np.testing.assert_array_equal(m[row, :deg], init)
        assert not np.any(m[row, deg:])


# every n in (1, 7, 64, 1000) and every d in (1, 2, 5, 20), without the full grid of compiles
SCIPY_SIZES = [(1, 20), (7, 5), (64, 2), (1000, 1), (1000, 20)]


@pytest.mark.parametrize("n, d", SCIPY_SIZES)
@pytest.mark.parametrize(("ours", "reference"), [(sampling.sobol, qmc.Sobol),
                                                 (sampling.halton, qmc.Halton)],
                         ids=["sobol", "halton"])
def test_unscrambled_sequence_matches_scipy(ours, reference, n, d):
    expected = reference(d, scramble=False).random(n)
    got = np.asarray(ours(n, d))
    assert got.dtype == np.float64 and got.shape == (n, d)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)


def test_sobol_matches_scipy_all_stored_dimensions():
    d = sampling.sobol_max_dim()
    n = 300  # direction numbers 1..9 of all 1024 dimensions (all 32: the test below)
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
    table = sobol_module.sobol_directions()
    with np.load(sobol_module._SOBOL_FILE) as data:
        s, a, m = data["s"], data["a"], data["m"]
    np.testing.assert_array_equal(table[0], [1 << (31 - j) for j in range(32)])
    for row in range(len(s)):
        ref = joe_kuo_directions(int(s[row]), int(a[row]), [int(x) for x in m[row]])
        assert table[row + 1].tolist() == ref, row
    # scipy's private initializer with 32 bits, where available, gives the same table
    qmc.Sobol(1, scramble=False)  # loads scipy's table
    init = getattr(__import__("scipy.stats._sobol", fromlist=["_"]), "_initialize_v", None)
    if init is not None:
        v = np.zeros(table.shape, dtype=np.uint32)
        init(v, dim=table.shape[0], bits=32)
        np.testing.assert_array_equal(v, table)


def test_halton_matches_scipy_many_dimensions():
    expected = qmc.Halton(150, scramble=False).random(500)
    np.testing.assert_allclose(np.asarray(sampling.halton(500, 150)), expected, rtol=0, atol=1e-15)


def test_first_primes():
    reference = [p for p in range(2, 2000) if all(p % q for q in range(2, int(p**0.5) + 1))]
    np.testing.assert_array_equal(sampling.first_primes(300), reference[:300])
    np.testing.assert_array_equal(sampling.first_primes(5), [2, 3, 5, 7, 11])


def test_unscrambled_ignores_key():
    np.testing.assert_array_equal(sampling.sobol(1000, 20, key=KEYS[0]), sampling.sobol(1000, 20))
    np.testing.assert_array_equal(sampling.halton(1000, 20, key=KEYS[0]), sampling.halton(1000, 20))


# ----------------------------------------------------------------------- structure

# The scrambled generators are checked at one shape, so each compiles once; keys are traced.
N, D = 256, 4
GENERATORS = {
    "sobol": lambda key: sampling.sobol(N, D, key=key, scramble=True),
    "halton": lambda key: sampling.halton(N, D, key=key, scramble=True),
    "lhs": lambda key: sampling.latin_hypercube(N, D, key=key),
    "random": lambda key: sampling.uniform(N, D, key=key),
}


@pytest.mark.parametrize("n, d", [(7, 5), (N, D)])  # and (64, 6) in test_candidates_options
def test_latin_hypercube_one_point_per_stratum(n, d):
    for key in KEYS:
        x = np.asarray(sampling.latin_hypercube(n, d, key=key))
        assert x.shape == (n, d) and x.dtype == np.float64
        assert_one_per_stratum(x, n)


def test_scrambled_sobol_keeps_net_structure():
    for key in KEYS:
        x = np.asarray(GENERATORS["sobol"](key))
        assert_one_per_stratum(x, N)
        assert np.all(x[0] != 0)  # the digital shift moved the origin
        # dims 1 and 2 form a (0, 2)-sequence: one point in each 1/16 x 1/16 square
        cells = np.floor(x[:, :2] * 16).astype(int)
        assert len({tuple(c) for c in cells}) == N


def test_linear_matrix_scramble_is_a_gf2_matrix_product():
    """L @ C over GF(2) with L unit lower triangular, built from the same random words."""
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**32, size=(3, 32), dtype=np.uint32)
    v = sobol_module.sobol_directions()[:3]
    got = np.asarray(sobol_module._linear_matrix_scramble(jnp.asarray(words), jnp.asarray(v)))
    for i in range(3):
        bits = (v[i][None, :] >> (31 - np.arange(32))[:, None].astype(np.uint32)) & 1  # C[k, j]
        lower = (words[i][:, None] >> (31 - np.arange(32))[None, :].astype(np.uint32)) & 1
        lower = np.where(np.arange(32)[:, None] > np.arange(32)[None, :], lower, 0)
        lower = lower + np.eye(32, dtype=lower.dtype)  # L[k, l] = bit (31 - l) of word k
        mixed = (lower.astype(np.int64) @ bits.astype(np.int64)) % 2
        expected = (mixed << (31 - np.arange(32))[:, None]).sum(axis=0)
        np.testing.assert_array_equal(got[i], expected)


def test_scrambled_halton_keeps_van_der_corput_structure():
    for key in KEYS:
        x = np.asarray(GENERATORS["halton"](key))
        for j, m in enumerate([256, 243, 125, 49]):  # powers of 2, 3, 5, 7
            assert_one_per_stratum(x[:m, j : j + 1], m)
        assert np.all(x[0] != 0)  # leading zero digits are permuted too


def test_scrambled_sequences_keep_low_discrepancy():
    """Centered L2 discrepancy, n = 256, d = 4: about 1e-4 (QMC) against 3e-3 (random)."""
    rng = np.random.default_rng(0)
    scipy_sobol = qmc.discrepancy(qmc.Sobol(D, rng=rng).random(N))  # scipy's own scrambles
    scipy_halton = qmc.discrepancy(qmc.Halton(D, rng=rng).random(N))
    for key in KEYS:
        cd = {name: qmc.discrepancy(np.asarray(gen(key))) for name, gen in GENERATORS.items()}
        assert cd["sobol"] < 0.1 * cd["random"] and cd["sobol"] < 2 * scipy_sobol, cd
        assert cd["halton"] < 0.25 * cd["random"] and cd["halton"] < 2 * scipy_halton, cd
        assert cd["lhs"] < cd["random"], cd


@pytest.mark.parametrize("method", sorted(GENERATORS))
def test_in_unit_cube_deterministic_per_key_and_different_across_keys(method):
    gen = GENERATORS[method]
    a1, a2, b = (np.asarray(gen(k)) for k in (KEYS[0], KEYS[0], KEYS[1]))
    assert a1.shape == (N, D) and a1.dtype == np.float64
    assert np.all((a1 >= 0) & (a1 < 1)) and np.all((b >= 0) & (b < 1))
    np.testing.assert_array_equal(a1, a2)
    assert np.all(a1 != b)


# ----------------------------------------------------------------------- jit, vmap


P0 = np.array([0.5, 3.0, -20.0, 0.0, 7.0, 2.0])
LOWER = np.array([0.0, 1.0, -np.inf, -np.inf, 6.0, -np.inf])
UPPER = np.array([1.0, np.inf, -15.0, np.inf, 10.0, np.inf])


def candidates_for(method, key, p0=P0, box_scale=1.5):
    return sampling.candidates(method, 65, p0, LOWER, UPPER, key=key, box_scale=box_scale)


def test_inside_outer_jit_with_traced_arguments():
    """Arrays, bounds and box_scale may be traced; the result equals the direct call."""
    outer = jax.jit(
        lambda key, p0, lower, scale: sampling.candidates(
            "lhs", 65, p0, lower, UPPER, key=key, box_scale=scale
        )
    )
    got = outer(KEYS[1], P0, LOWER, 1.5)
    np.testing.assert_allclose(got, candidates_for("lhs", KEYS[1]), rtol=1e-15, atol=1e-15)


def test_vmap_over_keys():
    """Scrambled Halton (permutation table, gathers) batched over keys."""
    batch = jax.vmap(GENERATORS["halton"])(jnp.stack(KEYS))
    for i, key in enumerate(KEYS):
        np.testing.assert_allclose(batch[i], GENERATORS["halton"](key), rtol=1e-15, atol=1e-15)


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


# ----------------------------------------------------------------------- candidates


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
        c = np.asarray(candidates_for(method, key))
        assert c.shape == (65, 6) and c.dtype == np.float64
        np.testing.assert_array_equal(c[0], P0)
        assert np.all((c >= lo) & (c <= hi)) and np.all((c >= LOWER) & (c <= UPPER))
        # the 64 drawn points spread over the box (not just a corner)
        spread = (c[1:].max(0) - c[1:].min(0)) / (hi - lo)
        assert np.all(spread > 0.8), spread
        if method in ("sobol", "lhs"):
            # exactly the affine image of the unit-cube sampler's first 64 points
            u = np.asarray(sampling.unit_points(method, 64, 6, key=key))
            np.testing.assert_allclose(c[1:], lo + u * (hi - lo), rtol=1e-15, atol=1e-15)


def test_candidates_options():
    key = KEYS[0]
    # same static arguments and shapes as candidates_for: no new compile
    c = np.asarray(candidates_for("lhs", key))
    lo, hi = expected_box(P0, LOWER, UPPER, 1.5)
    assert_one_per_stratum((c[1:] - lo) / (hi - lo) * (1 - 1e-12), 64)  # LHS survives the map
    # p0 outside the bounds is clipped into them, and the box is built around the clipped p0
    p0 = np.array([2.0, 0.0, -10.0, 5.0, 12.0, -3.0])
    c = np.asarray(candidates_for("sobol", key, p0=p0))
    np.testing.assert_array_equal(c[0], [1.0, 1.0, -15.0, 5.0, 10.0, -3.0])
    lo, hi = expected_box(p0, LOWER, UPPER, 1.5)
    np.testing.assert_allclose(lo, [0.0, 1.0, -37.5, -2.5, 6.0, -7.5])
    np.testing.assert_allclose(hi, [1.0, 2.5, -15.0, 12.5, 10.0, 1.5])
    assert np.all((c >= lo) & (c <= hi))
    # unbounded: box p0 +- box_scale * max(|p0|, 1); the shape of p0 is kept
    # (N + 1 rows over N, D = 4 parameters reuse the compiled halton(N, D))
    p0 = np.array([[100.0, -0.25], [0.0, 3.0]])
    c = np.asarray(sampling.candidates("halton", N + 1, p0, key=key, box_scale=0.5))
    assert c.shape == (N + 1, 2, 2)
    np.testing.assert_array_equal(c[0], p0)
    assert np.all(np.abs(c - p0) <= 0.5 * np.maximum(np.abs(p0), 1))
    # without p0 all rows are drawn; float32 p0 stays float32 and inside the bounds
    p0, lower, upper = (x[:D].astype(np.float32) for x in (P0, LOWER, UPPER))
    c32 = sampling.candidates("sobol", N, p0, lower, upper, key=key, include_p0=False)
    c32 = np.asarray(c32)
    assert c32.shape == (N, D) and c32.dtype == np.float32
    assert not np.any(np.all(c32 == p0, axis=1))
    assert np.all((c32 >= lower) & (c32 <= upper))
    assert np.ptp(c32[:, 0]) > 0.95  # spans the finite box [0, 1]
