"""Trust-region subproblem and pseudo-inverse from a triangular factor R.

With R^T R = J^T J and qtr = Q^T r, the Gauss-Newton model is
||R s + qtr||^2. An SVD of the small p x p matrix R (scaled) is rank
revealing, accurate to the conditioning of J (not its square), and turns the
Levenberg-Marquardt secular equation ||s(lambda)|| = radius into a scalar
root-finding problem (More & Sorensen), so the step lies in the region
rather than being a Gauss-Newton step scaled down.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from .._control import run_if
from . import _cholesky as cholesky

_NEWTON_ITERATIONS = 40
JACOBI_MAX_P = 8  # up to this many columns, SVDs are one-sided Jacobi in plain jnp ops
# up to this size, eigendecompositions are unrolled scalar Jacobi rotations: fastest under
# vmap, but the program grows as p^3 (compile time); larger: the one-sided Jacobi SVD
UNROLLED_MAX_P = 4
_JACOBI_MAX_SWEEPS = 16


def svd(a: Float[Array, "m p"]) -> tuple[Float[Array, "m p"], Float[Array, " p"],
                                        Float[Array, "p p"]]:
    """Thin SVD `a = u @ diag(sv) @ vt`, singular values descending.

    For p <= JACOBI_MAX_P a one-sided (Hestenes) Jacobi SVD written in
    elementwise jnp operations: under `vmap` it runs as wide vector code
    rather than one LAPACK call per problem (measured: 1e4 batched 4x4 SVDs
    40 ms through LAPACK), it is accurate to the conditioning of `a` (high
    relative accuracy, Demmel & Veselic 1992), and its result for one
    problem does not depend on the batch around it. Larger p: LAPACK.
    """
    if a.shape[1] > JACOBI_MAX_P:
        u, sv, vt = jnp.linalg.svd(a, full_matrices=False)
        return u, sv, vt
    return _jacobi_svd(a)


def symmetric_eigen(a: Float[Array, "p p"]) -> tuple[Float[Array, " p"], Float[Array, "p p"]]:
    """Eigenvalues and eigenvectors (as rows) of a symmetric `a`, in no particular order.

    For p <= UNROLLED_MAX_P cyclic Jacobi in scalar jnp operations (see
    `_jacobi_eigen`), accurate to the conditioning of `a` scaled to a unit
    diagonal when `a` is positive definite (measured on 1e4 fits of 4
    parameters: 1.7x the fits per second of the SVD route); larger p: `svd`
    (the SVD of a symmetric positive semi-definite matrix is its
    eigendecomposition).
    """
    if a.shape[0] > UNROLLED_MAX_P:
        _, eigval, eigvec_t = svd(a)
        return eigval, eigvec_t
    return _jacobi_eigen(a)


def _jacobi_eigen(a):
    # Cyclic two-sided Jacobi on the symmetric a, accumulating the rotations
    # into v (whose columns end as the eigenvectors). The matrices are held
    # as tuples of scalars: under vmap each entry is a contiguous (B,) array,
    # so the rotations are plain vector arithmetic with no gathers or
    # transposes. A rotation is skipped (exactly: c = 1, s = 0) once
    # |a_ij| <= eps sqrt(a_ii a_jj), the relative criterion under which Jacobi
    # is accurate for positive definite matrices (Demmel & Veselic 1992).
    p = a.shape[0]
    eps = jnp.finfo(a.dtype).eps
    pairs = [(i, j) for i in range(p - 1) for j in range(i + 1, p)]

    def off_diagonal(aii, ajj, aij):
        """Whether a_ij still counts: the rotation criterion and the convergence test."""
        return jnp.abs(aij) > eps * jnp.sqrt(jnp.abs(aii)) * jnp.sqrt(jnp.abs(ajj))

    def unconverged(am):
        return functools.reduce(jnp.logical_or, [
            off_diagonal(am[i][i], am[j][j], am[i][j]) for i, j in pairs], jnp.asarray(False))

    def sweep(carry):
        am, vm, _, count = carry
        am, vm = [list(row) for row in am], [list(row) for row in vm]
        for i, j in pairs:
            aii, ajj, aij = am[i][i], am[j][j], am[i][j]
            active = off_diagonal(aii, ajj, aij)
            theta = (ajj - aii) / (2 * jnp.where(active, aij, 1))
            t = jnp.where(theta >= 0, 1, -1) / (jnp.abs(theta) + jnp.sqrt(1 + theta * theta))
            t = jnp.where(active & jnp.isfinite(t), t, 0)
            c = 1 / jnp.sqrt(1 + t * t)
            s = c * t
            am[i][i], am[j][j] = aii - t * aij, ajj + t * aij
            am[i][j] = am[j][i] = jnp.where(active, 0, aij)
            for k in range(p):
                if k not in (i, j):
                    aki, akj = am[k][i], am[k][j]
                    am[k][i] = am[i][k] = c * aki - s * akj
                    am[k][j] = am[j][k] = s * aki + c * akj
                vki, vkj = vm[k][i], vm[k][j]
                vm[k][i], vm[k][j] = c * vki - s * vkj, s * vki + c * vkj
        am, vm = tuple(map(tuple, am)), tuple(map(tuple, vm))
        return am, vm, unconverged(am), count + 1

    def entries(m):
        return tuple(tuple(m[i, j] for j in range(p)) for i in range(p))

    start = (entries(a), entries(jnp.eye(p, dtype=a.dtype)), unconverged(entries(a)),
             jnp.asarray(0))
    am, vm, _, _ = jax.lax.while_loop(lambda c: c[2] & (c[3] < _JACOBI_MAX_SWEEPS), sweep,
                                      start)
    eigval = jnp.stack([am[i][i] for i in range(p)])
    vt = jnp.stack([jnp.stack([vm[k][i] for k in range(p)]) for i in range(p)])
    return eigval, vt


def _rotation(alpha, beta, gamma, eps):
    """Cosine and sine of the rotation that makes columns of squared norms alpha, beta and
    inner product gamma orthogonal, and whether it is made: not (c = 1, s = 0) once
    |gamma| <= eps sqrt(alpha) sqrt(beta) (relative, so accurate to the conditioning of the
    matrix, Demmel & Veselic 1992; the product of square roots does not overflow)."""
    active = jnp.abs(gamma) > eps * jnp.sqrt(alpha) * jnp.sqrt(beta)
    zeta = (beta - alpha) / (2 * jnp.where(active, gamma, 1))
    t = jnp.where(zeta >= 0, 1, -1) / (jnp.abs(zeta) + jnp.sqrt(1 + zeta * zeta))
    t = jnp.where(active & jnp.isfinite(t), t, 0)
    c = 1 / jnp.sqrt(1 + t * t)
    return c, c * t, active


def _jacobi_svd(a):
    """One-sided (Hestenes) Jacobi in round-robin order, p/2 disjoint pairs at once.

    Held as two halves (rows: the columns of a^T): top[k] pairs with bottom[k]; after a
    round the columns move by the round-robin shift (the first fixed, the others one place
    round the cycle), made of static slices and concatenations (no
    gathers, which are slow under `vmap` on CPU: 1.8x faster on 1e4 batched SVDs of 5 x 5
    and 8 x 8); after p - 1 rounds they are back in place. The program is a few whole-array
    operations per round, p - 1 rounds per sweep: rotating one column pair at a time (p^2/2
    rotations per sweep) was faster again but grew the compile of a p = 8 fit ~1.8x.
    """
    p = a.shape[1]
    even = p + p % 2
    half = even // 2
    eps = jnp.finfo(a.dtype).eps
    at = jnp.pad(a.T, ((0, even - p), (0, 0)))  # a zero column never rotates
    vt = jnp.eye(even, dtype=a.dtype)

    def shift(top, bot):
        if half == 1:
            return top, bot
        return (jnp.concatenate([top[:1], bot[:1], top[1:half - 1]]),
                jnp.concatenate([bot[1:], top[half - 1:]]))

    def sweep(carry):
        (top, bot, vtop, vbot), _, count = carry
        rotated = jnp.asarray(False)
        for _ in range(even - 1):
            c, s, active = _rotation(jnp.sum(top * top, axis=1), jnp.sum(bot * bot, axis=1),
                                     jnp.sum(top * bot, axis=1), eps)
            c, s = c[:, None], s[:, None]
            top, bot = shift(c * top - s * bot, s * top + c * bot)
            vtop, vbot = shift(c * vtop - s * vbot, s * vtop + c * vbot)
            rotated = rotated | jnp.any(active)
        return (top, bot, vtop, vbot), rotated, count + 1

    mats = (at[:half], at[half:][::-1], vt[:half], vt[half:][::-1])
    (top, bot, vtop, vbot), _, _ = jax.lax.while_loop(
        lambda c: c[1] & (c[2] < _JACOBI_MAX_SWEEPS), sweep,
        (mats, jnp.asarray(p > 1), jnp.asarray(0)))
    at = jnp.concatenate([top, bot[::-1]])[:p]
    vt = jnp.concatenate([vtop, vbot[::-1]])[:p, :p]
    sv = jnp.sqrt(jnp.sum(at * at, axis=1))
    order = jnp.argsort(-sv, stable=True)
    sv, at, vt = sv[order], at[order], vt[order]
    u = (at / jnp.where(sv > 0, sv, 1)[:, None]).T
    return u, sv, vt


def trust_region_step(
    factor: Float[Array, "p p"],
    qtr: Float[Array, " p"],
    radius: Float[Array, ""],
    free: Bool[Array, " p"],
    rcond: float | Float[Array, ""],
    orthogonal_rows: Bool[Array, ""] | bool = False,
    well_conditioned: Bool[Array, ""] | bool = False,
) -> Float[Array, " p"]:
    """argmin_s ||R s + qtr||  subject to ||s|| <= radius and s[~free] = 0.

    The region is a ball: phase 0 has already put the variables on one scale
    (an ellipsoid ||D s|| <= radius is the ball in z = D s, with R D^-1).
    s(lambda) = -sum_i s_i b_i / (s_i^2 + lambda) v_i with A = R[:, free] =
    U S V^T and b = U^T qtr. lambda = 0 (pseudo-inverse Gauss-Newton step,
    singular values below rcond * s_max dropped) when that step fits, else
    lambda > 0 by Newton's method on 1/||s|| - 1/radius, which is concave and
    increasing, so Newton from the left is monotone.

    `orthogonal_rows` says that the rows of R are orthogonal (R = sqrt(E) V^T
    from the normal equations): then its SVD is read off its rows unless a
    variable is fixed, and no decomposition is computed. `well_conditioned` says that
    cond(R) is small (`_cholesky.accurate_steps`): then the step is found by Cholesky
    factorizations (`_cholesky.trust_region_step`, the same minimizer) and no SVD either.
    Under `vmap` each route runs only when some problem of the batch takes it.
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
    u_mat, sv, vt = run_if(needs_svd, lambda: svd(a_mat), from_rows)
    b = u_mat.T @ qtr
    floor = jnp.maximum(rcond * jnp.max(sv), tiny)
    keep = sv > floor

    gn = jnp.where(keep, b / jnp.where(keep, sv, 1), 0)
    gn_norm = jnp.linalg.norm(gn)
    eig = sv**2
    sb = sv * b

    def coefficients(lam):
        return sb / (eig + lam)

    def newton(carry):
        lam, _, count = carry
        q = coefficients(lam)
        q_norm = jnp.maximum(jnp.linalg.norm(q), tiny)
        dnorm = -jnp.sum(q**2 / (eig + lam)) / q_norm  # d||q||/d lambda < 0
        step = (1 / q_norm - 1 / radius) * q_norm**2 / jnp.minimum(dnorm, -tiny)
        lam_next = jnp.maximum(lam + jnp.where(jnp.isfinite(step), step, 0), lam)
        return lam_next, lam_next > lam * (1 + 1e-14), count + 1

    def damped_step():
        lam, _, _ = jax.lax.while_loop(
            lambda c: c[1] & (c[2] < _NEWTON_ITERATIONS), newton,
            (floor**2, jnp.asarray(True), jnp.asarray(0)))
        damped = coefficients(lam)
        return damped * jnp.minimum(1, radius / jnp.maximum(jnp.linalg.norm(damped), tiny))

    fits = gn_norm <= radius
    coef = jnp.where(fits, gn, run_if(~fits & ~well_conditioned, damped_step, gn))
    return jnp.where(well_conditioned, by_cholesky, jnp.where(free, -(vt.T @ coef), 0))


def pinv_gram(factor: Float[Array, "p p"], rcond) -> Float[Array, "p p"]:
    """(R^T R)^+ from an SVD of R, dropping singular values below `rcond * max`.

    The same threshold on the same singular values (those of J) as
    `scipy.optimize.curve_fit`, so rank-deficient problems agree with it.
    """
    _, sv, vt = svd(factor)
    keep = sv > rcond * jnp.max(sv)
    inv = jnp.where(keep, 1 / jnp.where(keep, sv, 1) ** 2, 0)
    return (vt.T * inv) @ vt
