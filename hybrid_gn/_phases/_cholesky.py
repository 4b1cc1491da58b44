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

Up to `UNROLLED_MAX_P` a triangle is held as its rows of scalars (`Rows`, row i
has i + 1 entries) from factorization to the last solve: under `vmap` each entry
is a contiguous (B,) array, so the factorizations and substitutions are plain
vector arithmetic with no gathers (LAPACK per problem is slow under `vmap` on
CPU), and the program slices each matrix once (its size is compile time).
Larger p: matrices, LAPACK and BLAS.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Bool, Float

UNROLLED_MAX_P = 8
_NEWTON_ITERATIONS = 40
# a damped step is taken once its length is at most (1 + this) times the radius
BOUNDARY_TOLERANCE = 0.01

Rows = tuple[tuple[Array, ...], ...]  # a lower triangle: row i holds entries 0..i
Lower = Rows | Float[Array, "p p"]  # rows up to UNROLLED_MAX_P, else a matrix


def well_conditioned(dtype) -> float:
    """The largest cond(J) the Cholesky route takes: eps^(-1/4), where J^T J keeps half
    its digits (the default `Config.qr_condition`)."""
    return float(jnp.finfo(dtype).eps) ** -0.25


def accurate_steps(dtype) -> float:
    """The largest cond(R) for which `trust_region_step` is taken: eps^(-3/8). Its
    solves with R^T R + lambda I then err by at most ~eps^(1/4) relative, which costs a
    Gauss-Newton iteration nothing measurable; the model (R, qtr) stays exact."""
    return float(jnp.finfo(dtype).eps) ** -0.375


def _rows(m: Float[Array, "p p"]) -> Rows:
    """The lower triangle of `m` as rows of scalars."""
    return tuple(tuple(m[..., i, j] for j in range(i + 1)) for i in range(m.shape[-1]))


def _dense(rows: Rows) -> Float[Array, "p p"]:
    """The lower triangular matrix of `rows` (zeros above the diagonal)."""
    p = len(rows)
    zero = jnp.zeros_like(rows[0][0])
    return jnp.stack([jnp.stack(row + (zero,) * (p - 1 - i), axis=-1)
                      for i, row in enumerate(rows)], axis=-2)


def _cholesky_rows(a: Rows, shift=None) -> tuple[Rows, Bool[Array, ""]]:
    """Rows of L with L L^T = a + diag(shift), and whether that is numerically positive
    definite (every pivot positive and finite; where not, L is finite but meaningless)."""
    p = len(a)
    zero = jnp.zeros_like(a[0][0])
    low: list[list] = [[] for _ in range(p)]
    ok = jnp.asarray(True)
    for j in range(p):
        pivot = a[j][j] + (0 if shift is None else shift[..., j]) - sum(
            (low[j][k] ** 2 for k in range(j)), zero)
        good = jnp.isfinite(pivot) & (pivot > 0)
        ok = ok & good
        low[j].append(jnp.sqrt(jnp.where(good, pivot, 1)))
        for i in range(j + 1, p):
            low[i].append((a[i][j] - sum((low[i][k] * low[j][k] for k in range(j)), zero))
                          / low[j][j])
    return tuple(map(tuple, low)), ok


def lower_rows(a: Float[Array, "p p"]) -> Lower:
    """The lower triangle of `a` in the form `cholesky` and the substitutions take: its
    rows of scalars up to `UNROLLED_MAX_P`, else the matrix itself."""
    return _rows(a) if a.shape[-1] <= UNROLLED_MAX_P else a


def cholesky(a: Lower, shift: Float[Array, " p"] | None = None) -> tuple[Lower, Bool[Array, ""]]:
    """L with L L^T = a + diag(shift) (a symmetric, from `lower_rows`), and whether that
    is numerically positive definite."""
    if isinstance(a, tuple):
        return _cholesky_rows(a, shift)
    low = jnp.linalg.cholesky(a if shift is None else a + jnp.diag(shift))
    return low, jnp.all(jnp.isfinite(low))


def solve_lower(low: Lower, b: Float[Array, " p"]) -> Float[Array, " p"]:
    """L^-1 b, by forward substitution."""
    if not isinstance(low, tuple):
        return jsl.solve_triangular(low, b, lower=True)
    zero = jnp.zeros_like(b[..., 0])
    x: list = []
    for i, row in enumerate(low):
        x.append((b[..., i] - sum((row[k] * x[k] for k in range(i)), zero)) / row[i])
    return jnp.stack(x, axis=-1)


def solve_upper(low: Lower, b: Float[Array, " p"]) -> Float[Array, " p"]:
    """L^-T b, by back substitution."""
    if not isinstance(low, tuple):
        return jsl.solve_triangular(low, b, lower=True, trans="T")
    p = len(low)
    zero = jnp.zeros_like(b[..., 0])
    x: list = [None] * p
    for i in reversed(range(p)):
        x[i] = (b[..., i] - sum((low[k][i] * x[k] for k in range(i + 1, p)), zero)
                ) / low[i][i]
    return jnp.stack(x, axis=-1)


def inverse_lower(low: Lower) -> Float[Array, "p p"]:
    """L^-1 of a lower triangular L (rows or a matrix), as a dense matrix."""
    if not isinstance(low, tuple):
        eye = jnp.eye(low.shape[-1], dtype=low.dtype)
        return jsl.solve_triangular(low, eye, lower=True)
    # column j of X = L^-1: X_jj = 1 / L_jj, X_ij = -sum_{j<=k<i} L_ik X_kj / L_ii
    p = len(low)
    zero = jnp.zeros_like(low[0][0])
    columns = []
    for j in range(p):
        column = [zero] * p
        column[j] = 1 / low[j][j]
        for i in range(j + 1, p):
            column[i] = -sum(low[i][k] * column[k] for k in range(j, i)) / low[i][i]
        columns.append(jnp.stack(column, axis=-1))
    return jnp.stack(columns, axis=-1)


def inverse_upper(factor: Float[Array, "p p"]) -> Float[Array, "p p"]:
    """R^-1 of an upper triangular R, as a dense matrix (the transposed inverse of R^T)."""
    return inverse_lower(lower_rows(factor.T)).T


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
    low, ok = cholesky(lower_rows(scaled))
    lower = _dense(low) if isinstance(low, tuple) else low
    factor = lower.T * d[None, :]
    return (factor, solve_lower(low, jtr / d),
            jnp.where(ok, condition_bound(factor), jnp.inf))


def condition_bound(factor: Float[Array, "p p"], inverse: Float[Array, "p p"] | None = None
                    ) -> Float[Array, ""]:
    """||R||_F ||R^-1||_F of an upper triangular R: at least cond(R), at most p cond(R)
    (within a factor 2 of it on random matrices); inf where R is singular. `inverse`:
    R^-1 where the caller has it (`inverse_upper`)."""
    inverse = inverse_upper(factor) if inverse is None else inverse
    bound = jnp.sqrt(jnp.sum(factor**2) * jnp.sum(inverse**2))
    return jnp.where(jnp.isfinite(bound), bound, jnp.inf)


def too_long(length, radius) -> Bool[Array, ""]:
    """Whether a damped step of this `length` is still too long to take: above
    (1 + `BOUNDARY_TOLERANCE`) radius (see `trust_region_step`)."""
    return length > (1 + BOUNDARY_TOLERANCE) * radius


def trust_region_step(factor: Float[Array, "p p"], qtr: Float[Array, " p"],
                      radius: Float[Array, ""], free: Bool[Array, " p"]) -> Float[Array, " p"]:
    """argmin_s ||R s + qtr|| subject to ||s|| <= radius and s[~free] = 0, for a well
    conditioned R (see `_linalg.trust_region_step` for the general one), to MINPACK's
    accuracy.

    s(lambda) = -(A + lambda I)^-1 g on the free variables, A = R^T R, g = R^T qtr:
    lambda = 0 when that step fits, else Newton's method on 1/||s|| - 1/radius from
    lambda = 0 (concave and increasing, so the iterates rise monotonically to the root),
    d||s||/d lambda = -s^T (A + lambda I)^-1 s / ||s||, each step one Cholesky
    factorization of the scaled A + lambda I. Like MINPACK's `lmpar` (which allows a
    tenth) it stops once ||s|| <= (1 + `BOUNDARY_TOLERANCE`) radius and takes that
    s(lambda): the exact minimizer in the slightly larger ball of radius ||s||. Solved
    to the rounding level instead (for the whole batch under `vmap`: as many Newton
    steps as its slowest problem needs), the subproblem cost 40 % of a Gauss-Newton
    iteration of 1e4 Gaussians, with the tolerance 20 % (`bench_iteration.py`; whole
    fits, which step chunks of a few hundred problems, ran as fast as before).
    Scaling s onto the boundary instead turned it towards the Gauss-Newton direction
    and made a fit crawl along a curved valley (NIST Bennett5: 37 to 321 iterations).
    Poor starts of multi-minimum problems stopped at a worse point than scipy's `trf`
    in 6 of 400 solved exactly, 8 with this tolerance, 11 with MINPACK's tenth
    (`bench_multipeak.py`). The test compares a norm with a fraction of the radius, so it
    does not flip with rounding (a batch and a single fit agree), where a test for
    convergence at the rounding level could.
    """
    dtype = factor.dtype
    both = free[:, None] & free[None, :]
    a_mat = jnp.where(both, gram(factor), jnp.eye(factor.shape[0], dtype=dtype))
    g = jnp.where(free, factor.T @ qtr, 0)
    scaled, d = _scale(a_mat)
    scaled = lower_rows(scaled)  # sliced once, outside the Newton loop
    tiny = jnp.finfo(dtype).tiny

    def solve(lam):
        low, _ = cholesky(scaled, lam / d**2)
        return solve_upper(low, solve_lower(low, -g / d)) / d, low

    def newton(carry):  # s(lambda), and the next lambda while s is too long
        lam, _, _, count = carry
        s, low = solve(lam)
        length = jnp.linalg.norm(s)
        s_norm = jnp.maximum(length, tiny)
        q_norm2 = jnp.sum(solve_lower(low, s / d) ** 2)  # s^T (A + lambda I)^-1 s
        step = (s_norm**2 / jnp.maximum(q_norm2, tiny)) * (s_norm - radius) / radius
        lam_next = lam + jnp.where(jnp.isfinite(step) & (step > 0), step, 0)
        more = too_long(length, radius) & (lam_next > lam)
        return lam_next, s, more, count + 1

    # one factorization per pass, the first at lambda = 0 (the Gauss-Newton step): the
    # program holds one copy of the factorization and the solves
    zero = jnp.zeros((), dtype)
    _, s, _, _ = jax.lax.while_loop(lambda c: c[2] & (c[3] <= _NEWTON_ITERATIONS), newton,
                                    (zero, jnp.zeros_like(g), jnp.asarray(True),
                                     jnp.asarray(0)))
    return jnp.where(free, s, 0)
