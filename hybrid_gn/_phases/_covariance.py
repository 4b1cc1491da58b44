"""Phase 3: parameter covariance with `scipy.optimize.curve_fit` semantics.

pcov = s^2 (J^T J)^+, with J = J_u S^-1 the Jacobian of the weighted
residuals with respect to theta (J_u in normalized coordinates, S =
diag(d theta / d u) the normalization Jacobian), (J^T J)^+ the
pseudo-inverse dropping singular values of J below
eps * max(n, p) * s_max, and s^2 = RSS / (n - p) unless `absolute_sigma`
(then 1). With n <= p and relative sigma, or a NaN, pcov is all inf.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._linalg import pinv_gram


def covariance(
    factor: Float[Array, "p p"],
    cost: Float[Array, ""],
    scale: Float[Array, " p"],
    n_points,
    absolute_sigma,
) -> Float[Array, "p p"]:
    """Covariance of theta from R (R^T R = J^T J in normalized coordinates)."""
    p = factor.shape[0]
    eps = jnp.finfo(factor.dtype).eps
    rcond = eps * jnp.maximum(n_points, p)
    pcov = pinv_gram(factor / scale[None, :], rcond)  # R of theta: J_theta = J_u S^-1
    dof = n_points - p
    s_sq = 2 * cost / jnp.where(dof > 0, dof, 1)
    pcov = jnp.where(absolute_sigma, pcov, jnp.where(dof > 0, pcov * s_sq, jnp.inf))
    return jnp.where(jnp.any(jnp.isnan(pcov)), jnp.inf, pcov)
