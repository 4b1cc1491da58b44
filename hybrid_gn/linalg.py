"""Trust-region subproblem and pseudo-inverse from a triangular factor R.

With R^T R = J^T J and qtr = Q^T r, the Gauss-Newton model is
||R s + qtr||^2. An SVD of the small p x p matrix R (scaled) is rank
revealing, accurate to the conditioning of J (not its square), and turns the
Levenberg-Marquardt secular equation ||s(lambda)|| = radius into a scalar
root-finding problem (More & Sorensen), so the step lies in the region
rather than being a Gauss-Newton step scaled down.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

_NEWTON_ITERATIONS = 40


def trust_region_step(
    factor: Float[Array, "p p"],
    qtr: Float[Array, " p"],
    scale: Float[Array, " p"],
    radius: Float[Array, ""],
    free: Bool[Array, " p"],
    rcond: float | Float[Array, ""],
) -> Float[Array, " p"]:
    """argmin_s ||R s + qtr||  subject to ||scale * s|| <= radius and s[~free] = 0.

    In z = scale * s: z(lambda) = -sum_i s_i b_i / (s_i^2 + lambda) v_i with
    A = R diag(1/scale) = U S V^T and b = U^T qtr. lambda = 0 (pseudo-inverse
    Gauss-Newton step, singular values below rcond * s_max dropped) when that
    step fits, else lambda > 0 by Newton's method on 1/||z|| - 1/radius,
    which is concave and increasing, so Newton from the left is monotone.
    """
    a_mat = jnp.where(free[None, :], factor / scale[None, :], 0)
    u_mat, sv, vt = jnp.linalg.svd(a_mat)
    b = u_mat.T @ qtr
    tiny = jnp.finfo(sv.dtype).tiny
    floor = jnp.maximum(rcond * sv[0], tiny)
    keep = sv > floor

    gn = jnp.where(keep, b / jnp.where(keep, sv, 1), 0)
    gn_norm = jnp.linalg.norm(gn)
    eig = sv**2
    sb = sv * b

    def coefficients(lam):
        return sb / (eig + lam)

    def newton(_, lam):
        q = coefficients(lam)
        q_norm = jnp.maximum(jnp.linalg.norm(q), tiny)
        dnorm = -jnp.sum(q**2 / (eig + lam)) / q_norm  # d||q||/d lambda < 0
        step = (1 / q_norm - 1 / radius) * q_norm**2 / jnp.minimum(dnorm, -tiny)
        return jnp.maximum(lam + jnp.where(jnp.isfinite(step), step, 0), lam)

    lam0 = floor**2
    lam = jax.lax.fori_loop(0, _NEWTON_ITERATIONS, newton, lam0)
    damped = coefficients(lam)
    damped = damped * jnp.minimum(1, radius / jnp.maximum(jnp.linalg.norm(damped), tiny))
    coef = jnp.where(gn_norm <= radius, gn, damped)
    z = -(vt.T @ coef)
    return jnp.where(free, z / scale, 0)


def pinv_gram(factor: Float[Array, "p p"], rcond) -> Float[Array, "p p"]:
    """(R^T R)^+ from an SVD of R, dropping singular values below `rcond * max`.

    The same threshold on the same singular values (those of J) as
    `scipy.optimize.curve_fit`, so rank-deficient problems agree with it.
    """
    _, sv, vt = jnp.linalg.svd(factor)
    keep = sv > rcond * sv[0]
    inv = jnp.where(keep, 1 / jnp.where(keep, sv, 1) ** 2, 0)
    return (vt.T * inv) @ vt
