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

from .._control import run_for_few, run_if
from . import _cholesky as cholesky

_NEWTON_ITERATIONS = 40


def svd(a: Float[Array, "m p"]) -> tuple[Float[Array, "m p"], Float[Array, " p"],
                                        Float[Array, "p p"]]:
    """Thin SVD `a = u @ diag(sv) @ vt`, singular values descending (LAPACK).

    Only the rare routes take it (an ill-conditioned or rank-deficient step, the
    covariance): the well-conditioned steps of small fits are Cholesky
    (`_cholesky`), and under `vmap` a route runs only when some problem takes it.
    LAPACK's small program keeps the compile short: the unrolled Jacobi kernels
    this replaced made 1e4 small fits no faster (three families measured) and
    their compile 1.5x longer (`benchmarks/RESULTS.md`).
    """
    u, sv, vt = jnp.linalg.svd(a, full_matrices=False)
    return u, sv, vt


def symmetric_eigen(a: Float[Array, "p p"]) -> tuple[Float[Array, " p"], Float[Array, "p p"]]:
    """Eigenvalues and eigenvectors (as rows) of a symmetric `a`, ascending (LAPACK, for
    the same reason as `svd`)."""
    eigval, eigvec = jnp.linalg.eigh(a)
    return eigval, eigvec.T


def trust_region_step(
    factor: Float[Array, "p p"],
    qtr: Float[Array, " p"],
    radius: Float[Array, ""],
    free: Bool[Array, " p"],
    rcond: float | Float[Array, ""],
    orthogonal_rows: Bool[Array, ""] | bool = False,
    well_conditioned: Bool[Array, ""] | bool = False,
) -> Float[Array, " p"]:
    """argmin_s ||R s + qtr||  subject to ||s|| <= radius and s[~free] = 0, to MINPACK's
    accuracy: a damped step is the exact minimizer in a ball of radius between `radius`
    and (1 + `_cholesky.BOUNDARY_TOLERANCE`) radius (see `_cholesky.trust_region_step`).

    The region is a ball: phase 0 has already put the variables on one scale
    (an ellipsoid ||D s|| <= radius is the ball in z = D s, with R D^-1).
    s(lambda) = -sum_i s_i b_i / (s_i^2 + lambda) v_i with A = R[:, free] =
    U S V^T and b = U^T qtr. lambda = 0 (pseudo-inverse Gauss-Newton step,
    singular values below rcond * s_max dropped) when that step fits, else
    lambda > 0 by Newton's method on 1/||s|| - 1/radius, which is concave and
    increasing, so Newton from the left is monotone (and stops once ||s|| is within
    the tolerance).

    `orthogonal_rows` says that the rows of R are orthogonal (R = sqrt(E) V^T
    from the normal equations): then its SVD is read off its rows unless a
    variable is fixed, and no decomposition is computed. `well_conditioned` says that
    cond(R) is small (`_cholesky.accurate_steps`): then the step is found by Cholesky
    factorizations (`_cholesky.trust_region_step`, the same minimizer) and no SVD either.
    Under `vmap` the Cholesky route runs when some problem of the batch takes it, the
    SVD and the damped step only for the problems that take them (`_control.run_for_few`).
    """
    a_mat = jnp.where(free[None, :], factor, 0)
    tiny = jnp.finfo(a_mat.dtype).tiny
    row_norms = jnp.linalg.norm(a_mat, axis=1)
    from_rows = (jnp.eye(a_mat.shape[0], dtype=a_mat.dtype), row_norms,
                 a_mat / jnp.where(row_norms > 0, row_norms, 1)[:, None])
    well_conditioned = jnp.asarray(well_conditioned)
    by_cholesky = run_if(well_conditioned, lambda: cholesky.trust_region_step(
        factor, qtr, radius, free), jnp.zeros_like(qtr))
    needs_svd = ~well_conditioned & ~(orthogonal_rows & jnp.all(free))
    u_mat, sv, vt = run_for_few(needs_svd, lambda: svd(a_mat), from_rows)
    b = u_mat.T @ qtr
    floor = jnp.maximum(rcond * jnp.max(sv), tiny)
    keep = sv > floor

    gn = jnp.where(keep, b / jnp.where(keep, sv, 1), 0)
    gn_norm = jnp.linalg.norm(gn)
    eig = sv**2
    sb = sv * b

    def coefficients(lam):
        return sb / (eig + lam)

    def newton(carry):  # q(lambda), and the next lambda while q is too long
        lam, _, _, count = carry
        q = coefficients(lam)
        length = jnp.linalg.norm(q)
        q_norm = jnp.maximum(length, tiny)
        dnorm = -jnp.sum(q**2 / (eig + lam)) / q_norm  # d||q||/d lambda < 0
        step = (1 / q_norm - 1 / radius) * q_norm**2 / jnp.minimum(dnorm, -tiny)
        lam_next = jnp.maximum(lam + jnp.where(jnp.isfinite(step), step, 0), lam)
        more = cholesky.too_long(length, radius) & (lam_next > lam)
        return lam_next, q, more, count + 1

    def damped_step():  # q evaluated once per pass, as in `_cholesky.trust_region_step`
        _, q, _, _ = jax.lax.while_loop(lambda c: c[2] & (c[3] <= _NEWTON_ITERATIONS), newton,
                                        (floor**2, jnp.zeros_like(sb), jnp.asarray(True),
                                         jnp.asarray(0)))
        return q

    fits = gn_norm <= radius
    coef = jnp.where(fits, gn, run_for_few(~fits & ~well_conditioned, damped_step, gn))
    return jnp.where(well_conditioned, by_cholesky, jnp.where(free, -(vt.T @ coef), 0))


def pinv_gram(factor: Float[Array, "p p"], rcond, triangular: Bool[Array, ""] | bool = False
              ) -> Float[Array, "p p"]:
    """(R^T R)^+ from an SVD of R, dropping singular values below `rcond * max`.

    The same threshold on the same singular values (those of J) as
    `scipy.optimize.curve_fit`, so rank-deficient problems agree with it. Where
    R is `triangular` (upper) and an upper bound of cond(R) is below 1 / rcond,
    nothing would be dropped: it is R^-1 R^-T, by substitution (accurate to
    cond(R) eps, as the SVD's 1 / s^2 are); under `vmap` the SVD then runs only for
    the problems that need it (run for the whole batch of 1e5 problems of p = 4, it
    cost as much as the rest of the result).
    """
    inverse = cholesky.inverse_upper(factor)
    bound = cholesky.condition_bound(factor, inverse)  # >= cond(R), inf where singular
    fast = jnp.asarray(triangular) & (bound * rcond < 1)

    def by_svd():
        _, sv, vt = svd(factor)
        keep = sv > rcond * jnp.max(sv)
        inv = jnp.where(keep, 1 / jnp.where(keep, sv, 1) ** 2, 0)
        return (vt.T * inv) @ vt

    by_inverse = cholesky.gram(inverse.T)  # R^-1 R^-T
    return jnp.where(fast, by_inverse, run_for_few(~fast, by_svd, by_inverse))
