"""Cholesky factors of small normal equations, and the trust-region step from them.

The eigendecomposition of J^T J (`_linalg`) is rank revealing but costs an
iterative Jacobi process per Gauss-Newton iteration, which dominated the
iteration of many small fits (p = 5 to 8). Where J is well conditioned
(cond(J) <= `well_conditioned`) nothing needs revealing: a Cholesky factor of
J^T J, scaled to a unit diagonal (accurate to the conditioning of the scaled
matrix, like the Jacobi route), is a factor R with R^T R = J^T J, and the
trust-region subproblem is solved to the same answer by Newton's method on
lambda with one Cholesky factorization of J^T J + lambda I per Newton step
(More & Sorensen 1983), all in a few hundred scalar operations. The QR route's
R takes the same step while cond(R) <= `accurate_steps`.

Up to `UNROLLED_MAX_P` the factorizations and triangular solves are written
out in scalar jnp operations: under `vmap` each entry is a contiguous (B,)
array, so they are plain vector arithmetic with no gathers (LAPACK per
problem is slow under `vmap` on CPU). Larger p: LAPACK and BLAS.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Bool, Float

UNROLLED_MAX_P = 8
_NEWTON_ITERATIONS = 40


def well_conditioned(dtype) -> float:
    """The largest cond(J) the Cholesky route takes: eps^(-1/4), where J^T J keeps half
    its digits (the default `Config.qr_condition`)."""
    return float(jnp.finfo(dtype).eps) ** -0.25


def _entries(m):
    p = m.shape[-1]
    return [[m[..., i, j] for j in range(p)] for i in range(p)]


def _stack(rows):
    return jnp.stack([jnp.stack(row, axis=-1) for row in rows], axis=-2)


def cholesky(a: Float[Array, "p p"]) -> tuple[Float[Array, "p p"], Bool[Array, ""]]:
    """Lower L with L L^T = a, and whether a is numerically positive definite (every
    pivot positive and finite; where not, L is finite but meaningless)."""
    p = a.shape[-1]
    if p > UNROLLED_MAX_P:
        low = jnp.linalg.cholesky(a)
        return low, jnp.all(jnp.isfinite(low))
    am = _entries(a)
    zero = jnp.zeros_like(am[0][0])
    low = [[zero] * p for _ in range(p)]
    ok = jnp.asarray(True)
    for j in range(p):
        pivot = am[j][j] - sum((low[j][k] ** 2 for k in range(j)), zero)
        good = jnp.isfinite(pivot) & (pivot > 0)
        ok = ok & good
        diagonal = jnp.sqrt(jnp.where(good, pivot, 1))
        low[j][j] = diagonal
        for i in range(j + 1, p):
            low[i][j] = (am[i][j] - sum((low[i][k] * low[j][k] for k in range(j)), zero)
                         ) / diagonal
    return _stack(low), ok


def solve_lower(low: Float[Array, "p p"], b: Float[Array, " p"]) -> Float[Array, " p"]:
    """L^-1 b, by forward substitution."""
    p = low.shape[-1]
    if p > UNROLLED_MAX_P:
        return jsl.solve_triangular(low, b, lower=True)
    lm = _entries(low)
    x = []
    for i in range(p):
        x.append((b[..., i] - sum((lm[i][k] * x[k] for k in range(i)), jnp.zeros_like(b[..., i])))
                 / lm[i][i])
    return jnp.stack(x, axis=-1)


def solve_upper(low: Float[Array, "p p"], b: Float[Array, " p"]) -> Float[Array, " p"]:
    """L^-T b, by back substitution."""
    p = low.shape[-1]
    if p > UNROLLED_MAX_P:
        return jsl.solve_triangular(low, b, lower=True, trans="T")
    lm = _entries(low)
    x = [None] * p
    for i in reversed(range(p)):
        x[i] = (b[..., i] - sum((lm[k][i] * x[k] for k in range(i + 1, p)),
                                jnp.zeros_like(b[..., i]))) / lm[i][i]
    return jnp.stack(x, axis=-1)


def gram(factor: Float[Array, "p p"]) -> Float[Array, "p p"]:
    """R^T R, as products and a sum (fused under `vmap`; a batched dot of tiny matrices
    is slow on CPU)."""
    return jnp.sum(factor[:, :, None] * factor[:, None, :], axis=0)


def _scale(a):
    d = jnp.sqrt(jnp.diagonal(a))
    d = jnp.where(d > 0, d, 1)
    return a / (d[:, None] * d[None, :]), d


def factor_normal_equations(jtj: Float[Array, "p p"], jtr: Float[Array, " p"]
                            ) -> tuple[Float[Array, "p p"], Float[Array, " p"],
                                       Float[Array, ""]]:
    """`(R, qtr, condition)`: upper R = L^T D with R^T R = J^T J, qtr = R^-T J^T r, and
    `condition_bound(R)` (inf where J^T J is not positive definite).

    D is the square root of the diagonal of J^T J and L the Cholesky factor of the
    scaled D^-1 J^T J D^-1.
    """
    scaled, d = _scale(jtj)
    low, ok = cholesky(scaled)
    factor = low.T * d[None, :]
    return factor, solve_lower(low, jtr / d), jnp.where(ok, condition_bound(factor), jnp.inf)


def condition_bound(factor: Float[Array, "p p"]) -> Float[Array, ""]:
    """||R||_F ||R^-1||_F of an upper triangular R: at least cond(R), at most p cond(R)
    (within a factor 2 of it on random matrices); inf where R is singular."""
    p = factor.shape[-1]
    eye = jnp.eye(p, dtype=factor.dtype)
    inverse_t = jax.vmap(lambda e: solve_lower(factor.T, e))(eye)  # rows: R^-T e_i
    bound = jnp.sqrt(jnp.sum(factor**2) * jnp.sum(inverse_t**2))
    return jnp.where(jnp.isfinite(bound), bound, jnp.inf)


def accurate_steps(dtype) -> float:
    """The largest cond(R) for which `trust_region_step` is taken: eps^(-3/8). Its
    solves with R^T R + lambda I then err by at most ~eps^(1/4) relative, which costs a
    Gauss-Newton iteration nothing measurable; the model (R, qtr) stays exact."""
    return float(jnp.finfo(dtype).eps) ** -0.375


def trust_region_step(factor: Float[Array, "p p"], qtr: Float[Array, " p"],
                      radius: Float[Array, ""], free: Bool[Array, " p"]) -> Float[Array, " p"]:
    """argmin_s ||R s + qtr|| subject to ||s|| <= radius and s[~free] = 0, for a well
    conditioned R (see `_linalg.trust_region_step` for the general one).

    s(lambda) = -(A + lambda I)^-1 g on the free variables, A = R^T R, g = R^T qtr:
    lambda = 0 when that step fits, else Newton's method on 1/||s|| - 1/radius from
    lambda = 0 (concave and increasing, so the iterates rise monotonically to the root),
    d||s||/d lambda = -s^T (A + lambda I)^-1 s / ||s||, each step one Cholesky
    factorization of the scaled A + lambda I.
    """
    dtype = factor.dtype
    both = free[:, None] & free[None, :]
    a_mat = jnp.where(both, gram(factor), jnp.eye(factor.shape[0], dtype=dtype))
    g = jnp.where(free, factor.T @ qtr, 0)
    scaled, d = _scale(a_mat)
    tiny = jnp.finfo(dtype).tiny
    eps = jnp.finfo(dtype).eps

    def solve(lam):
        low, _ = cholesky(scaled + jnp.diag(lam / d**2))
        return solve_upper(low, solve_lower(low, -g / d)) / d, low

    def newton(carry):
        lam, s, low, _, count = carry
        s_norm = jnp.maximum(jnp.linalg.norm(s), tiny)
        q_norm2 = jnp.sum(solve_lower(low, s / d) ** 2)  # s^T (A + lambda I)^-1 s
        step = (s_norm**2 / jnp.maximum(q_norm2, tiny)) * (s_norm - radius) / radius
        lam_next = lam + jnp.where(jnp.isfinite(step) & (step > 0), step, 0)
        s_next, low_next = solve(lam_next)
        # to convergence (lambda stalls at the rounding level), so that the step does not
        # depend on how many iterations rounding allowed (a batch and a single fit agree)
        return lam_next, s_next, low_next, lam_next > lam * (1 + 4 * eps), count + 1

    zero = jnp.zeros((), dtype)
    gn, low = solve(zero)
    fits = jnp.linalg.norm(gn) <= radius
    _, s, _, _, _ = jax.lax.while_loop(lambda c: c[3] & (c[4] < _NEWTON_ITERATIONS), newton,
                                       (zero, gn, low, ~fits, jnp.asarray(0)))
    s = s * jnp.minimum(1, radius / jnp.maximum(jnp.linalg.norm(s), tiny))
    return jnp.where(free, s, 0)
