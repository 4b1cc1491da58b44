"""Robust losses against scipy's `least_squares(loss=...)` and `curve_fit(loss=...)`.

The data: an exponential decay with 10% of the points thrown far off. scipy runs with
the analytic Jacobian and tolerances at the rounding level, so both solvers converge to
the same minimizer of 1/2 sum rho(r^2); the parameters must agree to 1e-6, the cost to
1e-9, and `curve_fit`'s pcov (from the loss-scaled Jacobian, scipy's definition) to 1e-4.
Every driver folds the loss in the same accumulation: the batch, the stream and the
multi-start must give the single fit's answer, and the implicit gradient through a robust
fit must match finite differences of refits.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import hybrid_gn
from hybrid_gn import Config

LOSSES = ("soft_l1", "huber", "cauchy", "arctan")  # "linear": every other test
F_SCALE = 0.1
TIGHT = dict(xtol=1e-15, ftol=1e-15, gtol=1e-15)


def decay(p, x):
    return p[0] * jnp.exp(-p[1] * x) + p[2]


def data(seed: int = 0, n: int = 200):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 5, n)
    y = 3 * np.exp(-0.7 * x) + 0.5 + 0.02 * rng.standard_normal(n)
    far = rng.choice(n, n // 10, replace=False)
    y[far] += rng.normal(0, 1.5, far.size)
    return x, y


X, Y = data()
P0 = np.array([1.0, 1.0, 0.0])


def scipy_fit(loss, x=X, y=Y):
    def residual(p):
        return p[0] * np.exp(-p[1] * x) + p[2] - y

    def jacobian(p):
        e = np.exp(-p[1] * x)
        return np.stack([e, -p[0] * x * e, np.ones_like(x)], axis=1)

    return scipy.optimize.least_squares(residual, P0, jac=jacobian, loss=loss,
                                        f_scale=F_SCALE, **TIGHT)


def robust(loss, **fields) -> Config:
    return Config(loss=loss, f_scale=F_SCALE, **fields)


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_equals_scipy_least_squares(loss):
    ref = scipy_fit(loss)
    result = hybrid_gn.fit(decay, P0, X, Y, config=robust(loss))
    assert result.success, result.message
    np.testing.assert_allclose(result.params, ref.x, rtol=1e-6)
    np.testing.assert_allclose(result.cost, ref.cost, rtol=1e-9)


def _cauchy_by_rows(z):  # scipy's convention: values, first and second derivatives
    return jnp.stack([jnp.log1p(z), 1 / (1 + z), -1 / (1 + z) ** 2])


@pytest.mark.parametrize("rho", [_cauchy_by_rows, jnp.log1p], ids=["rows", "values-only"])
def test_callable_loss_equals_scipy_cauchy(rho):
    ref = scipy_fit("cauchy")
    result = hybrid_gn.fit(decay, P0, X, Y, config=robust(rho))
    np.testing.assert_allclose(result.params, ref.x, rtol=1e-6)
    np.testing.assert_allclose(result.cost, ref.cost, rtol=1e-9)


def test_curve_fit_soft_l1_equals_scipy_with_pcov():
    def f(x, a, b, c):
        return a * np.exp(-b * x) + c

    def jac(x, a, b, c):
        e = np.exp(-b * x)
        return np.stack([e, -a * x * e, np.ones_like(x)], axis=1)

    popt_ref, pcov_ref = scipy.optimize.curve_fit(f, X, Y, p0=P0, jac=jac, method="trf",
                                                  loss="soft_l1", f_scale=F_SCALE, **TIGHT)
    popt, pcov = hybrid_gn.curve_fit(lambda x, a, b, c: decay(jnp.stack([a, b, c]), x), X, Y,
                                     p0=P0, loss="soft_l1", f_scale=F_SCALE)
    np.testing.assert_allclose(popt, popt_ref, rtol=1e-6)
    np.testing.assert_allclose(pcov, pcov_ref, rtol=1e-4)


def test_stream_folds_the_loss_in():
    config = robust("huber")
    solo = hybrid_gn.fit(decay, P0, X, Y, config=config)
    stream = hybrid_gn.fit_stream(decay, P0, (X, Y), block_size=64, progress=False,
                                  config=dataclasses.replace(config, chunk_size=32))
    np.testing.assert_allclose(stream.params, solo.params, rtol=1e-8)
    np.testing.assert_allclose(stream.cost, solo.cost, rtol=1e-10)


@pytest.mark.slow
def test_batch_folds_the_loss_in():
    """The default suite has the stream's (the same accumulation, another driver)."""
    config = robust("huber")
    solo = [hybrid_gn.fit(decay, P0, *data(seed), config=config) for seed in range(3)]
    xs, ys = zip(*(data(seed) for seed in range(3)), strict=True)
    batch = hybrid_gn.fit_batch(decay, np.tile(P0, (3, 1)), np.stack(xs), np.stack(ys),
                                config=config)
    np.testing.assert_allclose(batch.params, np.stack([s.params for s in solo]), rtol=1e-8)
    np.testing.assert_allclose(batch.cost, [s.cost for s in solo], rtol=1e-10)


@pytest.mark.slow
def test_multistart_folds_the_loss_in():
    config = robust("huber")
    solo = hybrid_gn.fit(decay, P0, X, Y, config=config)
    best = hybrid_gn.fit_multistart(decay, P0, X, Y, key=jax.random.key(0),
                                    bounds=([0, 0, -2], [10, 5, 2]), config=config)
    np.testing.assert_allclose(best.params, solo.params, rtol=1e-6)


def assert_gradient_matches_refits(fitted, y: np.ndarray, k: int, atol: float) -> None:
    """d fitted(y) / d y[k] by the implicit rule equals central differences of refits."""
    grad = jax.jacobian(fitted)(jnp.asarray(y))[:, k]
    h = 1e-5
    up, down = y.copy(), y.copy()
    up[k] += h
    down[k] -= h
    fd = (np.asarray(fitted(up)) - np.asarray(fitted(down))) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=atol)


def test_implicit_gradient_of_a_robust_fit_matches_finite_differences():
    config = robust("soft_l1")

    def fitted(y):
        return hybrid_gn.fit(decay, P0, X, y, config=config).params

    assert_gradient_matches_refits(fitted, Y, 7, atol=1e-9)  # y[7] is not an outlier


def test_float32_robust_fit():
    ref = scipy_fit("cauchy")
    result = hybrid_gn.fit(decay, P0.astype(np.float32), X.astype(np.float32),
                           Y.astype(np.float32), config=robust("cauchy"))
    assert result.params.dtype == np.float32
    np.testing.assert_allclose(result.params, ref.x, rtol=1e-3)


def test_bad_losses_are_named():
    with pytest.raises(ValueError, match="loss must be one of .*soft_l1.*got 'l1'"):
        Config(loss="l1")
    with pytest.raises(ValueError, match="f_scale must be > 0"):
        Config(f_scale=0.0)
    with pytest.raises(ValueError, match=r"callable loss must return .*\(3, m\).*got shape"):
        hybrid_gn.fit(decay, P0, X, Y, config=Config(loss=lambda z: jnp.stack([z, z])))
