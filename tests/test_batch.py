"""Batched fitting: `jax.vmap(fit)` and `fit_batch` against solo fits of the same problems.

References: each problem's own solo `fit` (same answer, iteration counts and status), the
unpadded problem for ragged batches, and a clean batch for the isolation of bad problems.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hybrid_gn
from hybrid_gn import Config, Status
from hybrid_gn._drivers._batch import fit_batch

N = 64
X = np.linspace(-4.0, 4.0, N)


def gauss(p, x):
    a, mu, s, c = p
    return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + c


def walled_gauss(p, x, wall):
    """The Gaussian, but Inf wherever the width exceeds `wall` (a per-problem argument)."""
    return jnp.where(p[2] > wall, jnp.inf, gauss(p, x))


def problems(b: int, seed: int):
    """Varied problems: truths, noise levels and starts all differ."""
    rng = np.random.default_rng(seed)
    truth = np.stack([rng.uniform(1, 3, b), rng.uniform(-1, 1, b), rng.uniform(0.5, 1.5, b),
                      rng.uniform(-0.5, 0.5, b)], axis=1)
    noise = rng.uniform(0.01, 0.2, b)[:, None]
    y = np.asarray(jax.vmap(lambda p: gauss(p, X))(jnp.asarray(truth)))
    y = y + noise * rng.standard_normal((b, N))
    start = truth * rng.uniform(0.7, 1.3, (b, 4)) + rng.uniform(-0.3, 0.3, (b, 4)) * [0, 1, 0, 1]
    return y, start


def relative(a, b):
    """max |a - b| / |b| per parameter, a parameter near zero measured against a thousandth
    of the largest (an offset at 1e-5 rounds on the scale of the others)."""
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-3 * np.max(np.abs(b))))


def test_vmap_and_fit_batch_equal_solo_fits_on_320_problems():
    """Each problem of a batch stops on its own: params to 1e-12, and the same Gauss-Newton
    iteration count, status and warmup reason as its solo fit (both batched forms, which
    step the running problems in chunks of 128, wrapping unevenly round the 320).

    Solo and batch compiled alike: `jax.vmap(fit)` inside a user's jit against `fit` inside
    a jit, `fit_batch` against a top-level `fit` (both compiled with the library's XLA
    options). Across compilers, rounding differs and answers agree to the resolution of the
    optimum instead (~1e-9 here; see the ragged test)."""
    y, start = problems(320, seed=1)
    vmapped = jax.jit(jax.vmap(lambda y, p0: hybrid_gn.fit(gauss, p0, X, y)))(
        jnp.asarray(y), jnp.asarray(start))
    batch = fit_batch(gauss, jnp.asarray(start), jnp.broadcast_to(X, y.shape), y)
    iterations = np.asarray(batch.gn_iterations)
    assert iterations.min() < iterations.max()  # problems really stop at different times
    in_jit = jax.jit(lambda y, p0: hybrid_gn.fit(gauss, p0, X, y))
    for i in range(0, 320, 2):  # every other problem: the suite's time
        top_level = hybrid_gn.fit(gauss, jnp.asarray(start[i]), X, y[i])
        nested = in_jit(jnp.asarray(y[i]), jnp.asarray(start[i]))
        for batched, solo in ((vmapped, nested), (batch, top_level)):
            assert relative(batched.params[i], solo.params) <= 1e-12, i
            assert int(batched.gn_iterations[i]) == int(solo.gn_iterations), i
            assert int(batched.status[i]) == int(solo.status), i
            assert int(batched.warmup_reason[i]) == int(solo.warmup_reason), i
            np.testing.assert_allclose(batched.pcov[i], solo.pcov, rtol=1e-10,
                                       atol=1e-10 * np.max(np.abs(solo.pcov)))
    assert np.all(batch.success)


def test_fit_batch_keeps_a_shorter_trace():
    """By default each problem of `fit_batch` keeps 32 trace records (a fit keeps 256),
    each the solo fit's record; `Config(trace_length=...)` sets it for both."""
    y, start = problems(6, seed=3)
    xs = jnp.broadcast_to(X, y.shape)
    batch = fit_batch(gauss, jnp.asarray(start), xs, y)
    assert batch.trace.cost.shape == (6, 32)
    for i in range(6):
        solo = hybrid_gn.fit(gauss, jnp.asarray(start[i]), X, y[i])
        assert solo.trace.cost.shape == (256,)
        n = int(solo.trace.length)
        assert 2 <= n < 32 and int(batch.trace.length[i]) == n
        for field in ("cost", "grad_norm", "radius"):  # |grad| ends at the rounding level
            want = np.asarray(getattr(solo.trace, field)[:n])
            np.testing.assert_allclose(getattr(batch.trace, field)[i, :n], want, rtol=1e-10,
                                       atol=1e-9 * np.max(np.abs(want)))
        assert np.all(np.isnan(batch.trace.cost[i, n:]))
    eight = Config(trace_length=8)
    assert fit_batch(gauss, jnp.asarray(start), xs, y, config=eight).trace.cost.shape == (6, 8)
    assert hybrid_gn.fit(gauss, jnp.asarray(start[0]), X, y[0],
                         config=eight).trace.cost.shape == (8,)


def test_vmap_over_starts_with_shared_data_and_its_gradient():
    """`jax.vmap(fit)` over 320 starts of one problem (the data shared, not batched: the
    chunks gather only the starts) equals each start's solo fit (params to 1e-12, the same
    iteration count), and d params / d y under `jax.vmap` (forward and reverse mode)
    equals the solo one. (When a full step at the cost's resolution was judged by its
    ratio, 5 of these starts stopped 2-6 iterations apart from their solo fits.)"""
    y, start = problems(320, seed=5)
    rng = np.random.default_rng(6)
    starts = jnp.asarray(start[0] * rng.uniform(0.6, 1.4, (320, 4)))
    data = jnp.asarray(y[0])
    fits = jax.jit(jax.vmap(lambda p0: hybrid_gn.fit(gauss, p0, X, data)))(starts)
    in_jit = jax.jit(lambda p0: hybrid_gn.fit(gauss, p0, X, data))
    iterations = np.asarray(fits.gn_iterations)
    assert iterations.min() < iterations.max()
    for i in range(0, 320, 8):
        solo = in_jit(starts[i])
        assert relative(fits.params[i], solo.params) <= 1e-12, i
        assert int(fits.gn_iterations[i]) == int(solo.gn_iterations), i

    def params(y, p0):
        return hybrid_gn.fit(gauss, p0, X, y).params

    ys, p0s = jnp.asarray(y), jnp.asarray(start)
    forward = jax.jit(jax.vmap(jax.jacfwd(params)))(ys, p0s)
    reverse = jax.jit(jax.vmap(jax.jacrev(params)))(ys, p0s)
    solo = jax.jit(jax.jacfwd(params))
    for i in range(0, 320, 32):
        expected = np.asarray(solo(ys[i], p0s[i]))
        scale = np.max(np.abs(expected))
        np.testing.assert_allclose(forward[i], expected, rtol=0, atol=1e-9 * scale)
        np.testing.assert_allclose(reverse[i], expected, rtol=0, atol=1e-9 * scale)


def test_ragged_batch_equals_unpadded_solo_fits():
    """Problems of 20..64 points padded with weight-0 points: the same optimum as the solo
    fit of the unpadded data: cost to 1e-13, params to a millionth of their standard error
    (the padded sums round differently, so the two runs may stop one ftol-sized step
    apart), the same point count, and pcov to 1e-6 (its dof n - p counts real points)."""
    y, start = problems(6, seed=2)  # each size is its own solo compile: 6 keep the test lean
    sizes = np.linspace(20, N, 6).astype(int)
    rng = np.random.default_rng(3)
    xs = [np.sort(rng.uniform(-4, 4, n)) for n in sizes]
    ys = [np.asarray(gauss(jnp.asarray(start[i]) * 1.1, xs[i])) + 0.05 * rng.standard_normal(n)
          for i, n in enumerate(sizes)]
    sigmas = [rng.uniform(0.5, 2.0, n) for n in sizes]
    batch = fit_batch(gauss, jnp.asarray(start), xs, ys, sigma=sigmas)
    np.testing.assert_array_equal(batch.n_points, sizes)
    for i in range(6):
        solo = hybrid_gn.fit(gauss, jnp.asarray(start[i]), xs[i], ys[i], sigma=sigmas[i])
        assert relative(batch.cost[i], solo.cost) <= 1e-13, i
        assert np.all(np.abs(batch.params[i] - solo.params) <= 1e-6 * solo.perr), i
        np.testing.assert_allclose(batch.pcov[i], solo.pcov, rtol=1e-6, atol=1e-12)


def test_integer_x_is_fitted_like_float_x():
    """x of integer dtype, batched per problem (x = 0..63 here): `fit_batch` and
    `jit(vmap(fit))` equal the solo fits on the same x as floats (the routes gathered
    under vmap see every batched input, whatever its dtype)."""
    y, start = problems(3, seed=4)
    xi = np.tile(np.arange(N, dtype=np.int32), (3, 1))
    y = np.asarray(jax.vmap(lambda p: gauss(p, xi[0] / 8.0 - 4.0))(jnp.asarray(start) * 1.1))

    def shifted(p, x):  # the Gaussian on x / 8 - 4: integer x, float arithmetic
        return gauss(p, x / 8.0 - 4.0)

    batch = fit_batch(shifted, jnp.asarray(start), xi, y)
    mapped = jax.jit(jax.vmap(lambda p0, x, y: hybrid_gn.fit(shifted, p0, x, y).params))(
        jnp.asarray(start), jnp.asarray(xi), jnp.asarray(y))
    for i in range(3):
        solo = hybrid_gn.fit(shifted, jnp.asarray(start[i]), xi[i].astype(float), y[i])
        assert bool(solo.success)
        np.testing.assert_allclose(batch.params[i], solo.params, rtol=1e-10)
        np.testing.assert_allclose(mapped[i], solo.params, rtol=1e-10)


def test_isolation_in_a_batch_of_1000():
    """NaN data, a model that is Inf just beyond the start, and a problem that hits the
    iteration cap each get their own status; every other problem's result equals its result
    in the clean batch (bitwise or 1e-12), and the odd ones equal their solo fits."""
    b = 1000
    y, start = problems(b, seed=4)
    wall = np.full(b, np.inf)
    config = Config(max_iter=12)
    nan_data = [7, 300, 901]
    inf_near_start = [13, 500]
    far_start = [42, 777]
    clean = fit_batch(walled_gauss, jnp.asarray(start), np.broadcast_to(X, y.shape), y,
                      args=jnp.asarray(wall), config=config)

    y_bad, start_bad, wall_bad = y.copy(), start.copy(), wall.copy()
    y_bad[nan_data, 5] = np.nan
    wall_bad[inf_near_start] = start[inf_near_start, 2] * 1.01  # Inf 1% wider than the start
    start_bad[far_start, 1] = -3.0  # centre near the edge of the data: 15+ iterations to go
    with pytest.raises(ValueError, match="problem 7: y contains NaN"):
        fit_batch(walled_gauss, jnp.asarray(start_bad), np.broadcast_to(X, y.shape), y_bad,
                  args=jnp.asarray(wall_bad), config=config)
    mixed = fit_batch(walled_gauss, jnp.asarray(start_bad), np.broadcast_to(X, y.shape), y_bad,
                      args=jnp.asarray(wall_bad), config=config, check_finite=False)

    status = np.asarray(mixed.status)
    assert np.all(status[nan_data] == Status.NONFINITE_START)
    assert np.all(status[far_start] == Status.MAX_ITERATIONS)
    assert np.all(np.isfinite(np.asarray(mixed.params)[inf_near_start]))
    assert np.all(np.asarray(mixed.params)[inf_near_start, 2] <= wall_bad[inf_near_start])
    odd = nan_data + inf_near_start + far_start
    others = np.setdiff1d(np.arange(b), odd)
    for field in ("params", "cost", "pcov", "gn_iterations", "status", "warmup_reason"):
        got, want = np.asarray(getattr(mixed, field))[others], np.asarray(getattr(clean, field))[
            others]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=field)
    for i in inf_near_start + far_start + nan_data:
        solo = hybrid_gn.fit(walled_gauss, jnp.asarray(start_bad[i]), X, y_bad[i],
                             args=jnp.asarray(wall_bad[i]), config=config, check_finite=False)
        assert int(solo.status) == status[i]
        assert int(solo.gn_iterations) == int(mixed.gn_iterations[i])
        np.testing.assert_allclose(mixed.params[i], solo.params, rtol=1e-12)

    summary = mixed.summary()
    assert summary.startswith(f"{b} problems: ")
    assert "problems 7, 300, 901" in summary
    capped = np.flatnonzero(status == Status.MAX_ITERATIONS)
    assert f"{capped.size} x {Status.MAX_ITERATIONS.message}" in summary
    assert ", ".join(str(i) for i in capped[:10]) in summary
    assert Status.NONFINITE_START.message in summary


def test_fit_batch_bad_input_names_the_problem():
    y, start = problems(4, seed=5)
    xs = [X, X, X[:10], X]
    with pytest.raises(ValueError, match="x and y disagree"):
        fit_batch(gauss, jnp.asarray(start), xs, list(y))
    with pytest.raises(ValueError, match="leading batch axis of size B = 4"):
        fit_batch(gauss, jnp.asarray(start[:3]), np.broadcast_to(X, y.shape), y)
    with pytest.raises(ValueError, match="problem 2: too few data points"):
        fit_batch(gauss, jnp.asarray(start), [X, X, X[:3], X], [y[0], y[1], y[2, :3], y[3]])
    sigma = np.ones_like(y)
    sigma[1, 4] = 0.0
    with pytest.raises(ValueError, match="problem 1: sigma must be strictly positive"):
        fit_batch(gauss, jnp.asarray(start), np.broadcast_to(X, y.shape), y, sigma=sigma)
    with pytest.raises(ValueError, match="problem 3: p0 is outside the bounds"):
        bad = start.copy()
        bad[3, 0] = 10.0
        fit_batch(gauss, jnp.asarray(bad), np.broadcast_to(X, y.shape), y,
                  bounds=([0, -5, 0.1, -5], [5, 5, 5, 5]))
