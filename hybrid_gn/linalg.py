"""Trust-region subproblem and pseudo-inverse, by a symmetric eigensolve.

The eigendecomposition of the (scaled) p x p matrix J^T J is rank revealing
and turns the Levenberg-Marquardt secular equation ||s(lambda)|| = radius
into a cheap scalar root-finding problem (More & Sorensen), so the step lies
in the region rather than being a Gauss-Newton step scaled down.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

_NEWTON_ITERATIONS = 40


def trust_region_step(
    jtj: Float[Array, "p p"],
    jtr: Float[Array, " p"],
    scale: Float[Array, " p"],
    radius: Float[Array, ""],
    free: Bool[Array, " p"],
) -> Float[Array, " p"]:
    """argmin_s  jtr.s + s.jtj.s / 2  subject to ||scale * s|| <= radius, s[~free] = 0.

    Solved as s = -(H + lambda I)^+ g in the variables z = scale * s, with
    lambda = 0 (pseudo-inverse Gauss-Newton step) when that step fits, else
    lambda > 0 chosen by Newton's method on 1/||z(lambda)|| - 1/radius.
    """
    outer_free = free[:, None] & free[None, :]
    h = jnp.where(outer_free, jtj / (scale[:, None] * scale[None, :]), 0)
    h = h + jnp.diag(jnp.where(free, 0, 1).astype(h.dtype))
    g = jnp.where(free, jtr / scale, 0)

    eigval, eigvec = jnp.linalg.eigh(h)
    eigval = jnp.maximum(eigval, 0)
    a = eigvec.T @ g
    eps = jnp.finfo(h.dtype).eps
    tiny = jnp.finfo(h.dtype).tiny
    floor = jnp.maximum(eigval[-1] * h.shape[0] * eps, tiny)

    def coefficients(lam):
        den = eigval + lam
        return jnp.where(a == 0, 0, a / jnp.where(den > 0, den, 1))

    gn = jnp.where(eigval > floor, a / jnp.where(eigval > floor, eigval, 1), 0)
    gn_norm = jnp.linalg.norm(gn)

    def newton(_, lam):
        q = coefficients(lam)
        q_norm = jnp.linalg.norm(q)
        dq2 = -2 * jnp.sum(q**2 / (eigval + lam))  # d ||q||^2 / d lambda
        dnorm = dq2 / (2 * jnp.maximum(q_norm, tiny))
        # Newton step on psi(lambda) = 1/||q|| - 1/radius (concave, increasing)
        step = (1 / q_norm - 1 / radius) * q_norm**2 / jnp.where(dnorm < 0, dnorm, -tiny)
        lam_new = lam + jnp.where(jnp.isfinite(step), step, 0)
        return jnp.maximum(lam_new, floor)

    lam = jax.lax.fori_loop(0, _NEWTON_ITERATIONS, newton, floor)
    damped = coefficients(lam)
    damped = damped * jnp.minimum(1, radius / jnp.maximum(jnp.linalg.norm(damped), tiny))
    coef = jnp.where(gn_norm <= radius, gn, damped)
    z = -(eigvec @ coef)
    return jnp.where(free, z / scale, 0)


def pinv_psd(a: Float[Array, "p p"], rcond: Float[Array, ""]) -> Float[Array, "p p"]:
    """Moore-Penrose inverse of a PSD matrix A = J^T J, with J's columns equilibrated.

    Singular values of J below `rcond * max` are dropped, matching
    `scipy.optimize.curve_fit` (which thresholds the SVD of J).
    """
    d = jnp.sqrt(jnp.diagonal(a))
    d = jnp.where(d > 0, d, 1)
    eigval, eigvec = jnp.linalg.eigh(a / (d[:, None] * d[None, :]))
    sv = jnp.sqrt(jnp.maximum(eigval, 0))
    keep = sv > rcond * sv[-1]
    inv = jnp.where(keep, 1 / jnp.where(keep, eigval, 1), 0)
    return (eigvec * inv) @ eigvec.T / (d[:, None] * d[None, :])
