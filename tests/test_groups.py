"""Group weights and the group-variance penalty against scipy on the same residuals.

The model is a small multi-angle correlation fit: g2_a(tau) = offset_a + contrast_a *
exp(-2 Gamma tau) over A angles, with Gamma shared. The penalty adds rows
sqrt(lambda) (theta_i - mean_g theta) for the contrasts and for the offsets; scipy's
`least_squares` solves the same augmented residual vector (its Jacobian by JAX autodiff
of a plain function), and its pcov is formed as the library documents: (J^T J)^-1 times
2 cost / (n - p), n the data points. Group weights are the residuals scaled by sqrt(w_g).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from test_robust_loss import assert_gradient_matches_refits

import hybrid_gn
from hybrid_gn import Config, GroupPenalty, GroupWeights

A = 5  # angles
TAU = np.logspace(-3, 1, 40)
TIGHT = dict(xtol=1e-15, ftol=1e-15, gtol=1e-15)


def g2(p, x):
    """x: (n, 2) columns tau and angle index; p = (Gamma, contrasts (A), offsets (A))."""
    tau, angle = x[:, 0], x[:, 1].astype(jnp.int32)
    return p[1 + A + angle] + p[1 + angle] * jnp.exp(-2 * p[0] * tau)


def make_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    angle = np.repeat(np.arange(A), TAU.size)
    x = np.stack([np.tile(TAU, A), angle.astype(float)], axis=1)
    truth = np.concatenate([[1.3], 0.3 + 0.02 * rng.standard_normal(A),
                            1.0 + 0.01 * rng.standard_normal(A)])
    y = np.asarray(g2(jnp.asarray(truth), x)) + 0.01 * rng.standard_normal(x.shape[0])
    return x, y


X, Y = make_data()
P0 = np.concatenate([[1.0], np.full(A, 0.25), np.full(A, 0.9)])
PENALTY = GroupPenalty([range(1, 1 + A), range(1 + A, 1 + 2 * A)], strength=50.0)


def scipy_reference(residual, n_data: int):
    jac = jax.jit(jax.jacfwd(residual))
    ref = scipy.optimize.least_squares(lambda p: np.asarray(residual(p)), P0,
                                       jac=lambda p: np.asarray(jac(p)), **TIGHT)
    pcov = np.linalg.inv(ref.jac.T @ ref.jac) * 2 * ref.cost / (n_data - P0.size)
    return ref, pcov


def test_penalty_equals_scipy_on_the_augmented_residuals():
    def augmented(p):
        return jnp.concatenate([g2(p, X) - Y, PENALTY.rows(p)])

    ref, pcov_ref = scipy_reference(augmented, Y.size)
    result = hybrid_gn.fit(g2, P0, X, Y, config=Config(penalty=PENALTY))
    assert result.success, result.message
    np.testing.assert_allclose(result.params, ref.x, rtol=1e-6)
    np.testing.assert_allclose(result.cost, ref.cost, rtol=1e-9)
    np.testing.assert_allclose(result.pcov, pcov_ref, rtol=1e-4)


def test_group_weights_equal_scipy_with_scaled_residuals():
    weights = np.linspace(0.5, 3.0, A)
    scale = np.sqrt(weights[X[:, 1].astype(int)])

    ref, pcov_ref = scipy_reference(lambda p: scale * (g2(p, X) - Y), Y.size)
    by_labels = hybrid_gn.fit(g2, P0, X, Y,
                              group_weights=GroupWeights(weights, labels=X[:, 1].astype(int)))
    np.testing.assert_allclose(by_labels.params, ref.x, rtol=1e-6)
    np.testing.assert_allclose(by_labels.pcov, pcov_ref, rtol=1e-4)
    by_column = hybrid_gn.fit(g2, P0, X, Y, group_weights=GroupWeights(weights, column=1))
    np.testing.assert_allclose(by_column.params, by_labels.params, rtol=1e-12)


def test_stream_sees_weights_and_penalty():
    weights = np.linspace(0.5, 3.0, A)
    config = Config(penalty=PENALTY)
    groups = GroupWeights(weights, column=1)
    solo = hybrid_gn.fit(g2, P0, X, Y, config=config, group_weights=groups)
    stream = hybrid_gn.fit_stream(g2, P0, (X, Y), block_size=64, progress=False,
                                  config=dataclasses.replace(config, chunk_size=32),
                                  group_weights=groups)
    np.testing.assert_allclose(stream.params, solo.params, rtol=1e-9)
    np.testing.assert_allclose(stream.cost, solo.cost, rtol=1e-10)
    np.testing.assert_allclose(stream.pcov, solo.pcov, rtol=1e-7)


@pytest.mark.slow
def test_batch_sees_weights_and_penalty():
    """The default suite has the stream's (the same rows and weights, another driver)."""
    weights = np.linspace(0.5, 3.0, A)
    config = Config(penalty=PENALTY)
    groups = GroupWeights(weights, column=1)
    solo = hybrid_gn.fit(g2, P0, X, Y, config=config, group_weights=groups)
    x2, y2 = make_data(1)
    batch = hybrid_gn.fit_batch(g2, np.stack([P0, P0]), np.stack([X, x2]), np.stack([Y, y2]),
                                config=config, group_weights=groups)
    np.testing.assert_allclose(batch.params[0], solo.params, rtol=1e-9)
    other = hybrid_gn.fit(g2, P0, x2, y2, config=config, group_weights=groups)
    np.testing.assert_allclose(batch.params[1], other.params, rtol=1e-9)


def test_implicit_gradient_sees_the_penalty():
    config = Config(penalty=PENALTY)

    def fitted(y):
        return hybrid_gn.fit(g2, P0, X, y, config=config).params

    assert_gradient_matches_refits(fitted, Y, 3, atol=1e-8)


def test_penalty_from_a_pytree_mask():
    p0 = {"gamma": 1.0, "contrast": np.zeros(3), "offset": np.zeros(3)}
    penalty = GroupPenalty.from_mask(p0, {"gamma": -1, "contrast": 0, "offset": 1})
    # ravel order of a dict is by sorted key: contrast, gamma, offset
    assert penalty.groups == ((0, 1, 2), (4, 5, 6))


def test_bad_groups_are_named():
    with pytest.raises(ValueError, match="group 0 must name at least two distinct"):
        GroupPenalty([[1]])
    with pytest.raises(ValueError, match="strength must be >= 0"):
        GroupPenalty([[0, 1]], strength=-1.0)
    with pytest.raises(ValueError, match="names parameter index 40, but p0 has 11"):
        hybrid_gn.fit(g2, P0, X, Y, config=Config(penalty=GroupPenalty([[0, 40]])))
    with pytest.raises(ValueError, match="penalty needs the dense Gauss-Newton path: p = 11"):
        hybrid_gn.fit(g2, P0, X, Y, config=Config(penalty=PENALTY, dense_max_params=10))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        hybrid_gn.fit(g2, P0, X, Y, group_weights=GroupWeights([1.0, 2.0], column=1))
    with pytest.raises(ValueError, match="exactly one of labels="):
        GroupWeights([1.0])
    with pytest.raises(ValueError, match="finite positive"):
        GroupWeights([1.0, 0.0], column=1)
    with pytest.raises(ValueError, match="reads the group of each point from x"):
        hybrid_gn.fit_stream(g2, P0, (X, Y), progress=False,
                             group_weights=GroupWeights(np.ones(A), labels=X[:, 1]))
