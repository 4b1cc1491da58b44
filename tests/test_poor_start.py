"""The first trust region from a poor start, on two overlapping Gaussians.

From a poor start (the shape of its prediction is wrong, 1 - corr(f, y)^2
above `poor_shape_threshold`, or its relative loss is above
`poor_loss_threshold`) Gauss-Newton begins with the small radius
`poor_start_radius`; a good start keeps `initial_radius`. Checked against
scipy's `least_squares(method='trf')` from the same starts: the default
reaches scipy's cost or a lower one from every start, where the old rule (a
full first radius for every start) stopped at a worse stationary point from
some of them. `benchmarks/bench_multipeak.py` measures the same on four
families and more starts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import hybrid_gn
from hybrid_gn._data import make_data
from hybrid_gn._phases import _start_fit as pipeline

RTOL = 1e-6  # relative cost difference counted as the same minimum
X = np.linspace(0.0, 10.0, 200)
TRUTH = np.array([3.0, 4.3, 0.7, 2.2, 5.5, 1.1, 0.4])  # the peaks are 1.2 apart


def two_peaks_np(p, x):
    return (p[0] * np.exp(-0.5 * ((x - p[1]) / p[2]) ** 2)
            + p[3] * np.exp(-0.5 * ((x - p[4]) / p[5]) ** 2) + p[6])


def two_peaks(p, x):
    return (p[0] * jnp.exp(-0.5 * ((x - p[1]) / p[2]) ** 2)
            + p[3] * jnp.exp(-0.5 * ((x - p[4]) / p[5]) ** 2) + p[6])


def data_and_starts(k: int = 10, seed: int = 9):
    """Noisy data and `k` starts as in bench_multipeak: centres shifted by up to +-2,
    widths scaled by e^U(-1, 1), amplitudes a random fraction of the data range."""
    rng = np.random.default_rng(seed)
    y = two_peaks_np(TRUTH, X) + 0.15 * rng.standard_normal(X.size)
    span = np.ptp(y)
    starts = np.stack([
        rng.uniform(0.2, 1, k) * span, TRUTH[1] + rng.uniform(-2, 2, k),
        TRUTH[2] * np.exp(rng.uniform(-1, 1, k)), rng.uniform(0.2, 1, k) * span,
        TRUTH[4] + rng.uniform(-2, 2, k), TRUTH[5] * np.exp(rng.uniform(-1, 1, k)),
        np.full(k, y.min())], axis=1)
    return y, starts


@jax.jit
def fit_all(y, starts, config):
    return jax.vmap(lambda p0: hybrid_gn.fit(two_peaks, p0, jnp.asarray(X), y, config=config))(
        starts)


def half_rss(p, y) -> float:
    r = two_peaks_np(p, X) - y
    return 0.5 * float(r @ r)


def test_poor_starts_reach_scipy_trf_cost_or_lower():
    y, starts = data_and_starts()
    default = fit_all(jnp.asarray(y), jnp.asarray(starts), hybrid_gn.Config())
    full_radius = fit_all(jnp.asarray(y), jnp.asarray(starts),
                          hybrid_gn.Config(poor_start_radius=1.0))  # = initial_radius
    trf = np.array([half_rss(scipy.optimize.least_squares(
        lambda p: two_peaks_np(p, X) - y, p0, method="trf").x, y) for p0 in starts])
    cost = np.array([half_rss(p, y) for p in np.asarray(default.params)])
    old = np.array([half_rss(p, y) for p in np.asarray(full_radius.params)])

    assert np.all(cost <= trf * (1 + RTOL)), (cost, trf)
    assert np.sum(cost < trf * (1 - RTOL)) >= 2  # and lower than scipy's from some starts
    assert np.any(old > trf * (1 + RTOL)), "the case no longer tells the two rules apart"
    assert np.all(np.asarray(default.success))

    # the first radius: poor_start_radius exactly where the start is poor. p0-normalization
    # maps every parameter to +-1 here (none is near zero), so max(|u0|, 1) = sqrt(p)
    predictions = np.array([two_peaks_np(p0, X) for p0 in starts])
    relative = np.sum((predictions - y) ** 2, axis=1) / np.sum((y - y.mean()) ** 2)
    shape = 1 - np.array([np.corrcoef(f, y)[0, 1] ** 2 for f in predictions])
    config = hybrid_gn.Config()
    poor = (shape > config.poor_shape_threshold) | (relative > config.poor_loss_threshold)
    assert 0 < np.sum(poor) < len(starts)  # both kinds of start occur
    expected = np.where(poor, 0.03, 1.0) * np.sqrt(starts.shape[1])
    np.testing.assert_allclose(np.asarray(default.trace.radius)[:, 0], expected, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(full_radius.trace.radius)[:, 0],
                               np.sqrt(starts.shape[1]), rtol=1e-12)
    # a good start takes exactly the same path under both rules
    np.testing.assert_array_equal(np.asarray(default.params)[~poor],
                                  np.asarray(full_radius.params)[~poor])


def test_start_fit_is_the_weighted_r2_and_correlation_over_chunks():
    """`start_fit` over several chunks (the last one overlapping) with weights
    1/sigma: 1 - R^2 of the prediction, and 1 - its weighted correlation with y squared."""
    rng = np.random.default_rng(1)
    y, starts = data_and_starts(k=1)
    sigma = rng.uniform(0.5, 2.0, X.size)
    data = make_data(jnp.asarray(X), jnp.asarray(y), jnp.asarray(sigma), 64, jnp.float64)
    assert data.n_chunks > 1 and X.size % 64 != 0
    p0 = starts[0]

    def residual(u, x, y, w):
        return jnp.where(w > 0, w * (two_peaks(u, x) - y), 0)

    fit = pipeline.start_fit(residual, jnp.asarray(p0), data)
    w2 = sigma**-2
    f = two_peaks_np(p0, X)

    def centred(a):
        return a - np.sum(w2 * a) / np.sum(w2)

    relative = np.sum(w2 * (f - y) ** 2) / np.sum(w2 * centred(y) ** 2)
    corr = np.sum(w2 * centred(f) * centred(y)) / np.sqrt(
        np.sum(w2 * centred(f) ** 2) * np.sum(w2 * centred(y) ** 2))
    np.testing.assert_allclose(float(fit.relative), relative, rtol=1e-12)
    np.testing.assert_allclose(float(fit.shape), 1 - corr**2, rtol=1e-10)


@pytest.mark.parametrize(("name", "value"), [("poor_shape_threshold", -1.0),
                                             ("poor_loss_threshold", -1.0),
                                             ("poor_start_radius", 0.0)])
def test_poor_start_settings_are_validated(name, value):
    with pytest.raises(ValueError, match=name):
        hybrid_gn.Config(**{name: value})
