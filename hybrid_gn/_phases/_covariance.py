"""Phase 3: parameter covariance with `scipy.optimize.curve_fit` semantics.

pcov = s^2 (J^T J)^+, with J = J_u S^-1 the Jacobian of the weighted
residuals with respect to theta (J_u in normalized coordinates, S =
diag(d theta / d u) the normalization Jacobian), (J^T J)^+ the
pseudo-inverse dropping singular values of J below
eps * max(n, p) * s_max, and s^2 = RSS / (n - p) unless `absolute_sigma`
(then 1). With n <= p and relative sigma, or a NaN, pcov is all inf.

Without a p x p matrix (`variances`), only the diagonal is computed: one
Jacobi-preconditioned CG solve of J_u^T J_u x = e_j per parameter, on
products J^T J v (`_matrix_free.gram_product`), in blocks of columns
solved together under `vmap` (the model's values are then computed once
per block and chunk). Exact to the CG tolerance where J has full column
rank; a parameter the data does not determine gets a huge or inf variance
(scipy's pinv would give it 0 there, dropping the direction).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ._linalg import pinv_gram

_BLOCK = 16  # columns solved together (memory: 16 x chunk_size x per-point state)
_RTOL = 1e-10  # the solves' relative residual


def covariance(
    factor: Float[Array, "p p"],
    cost: Float[Array, ""],
    scale: Float[Array, " p"],
    n_points,
    absolute_sigma,
    triangular: Bool[Array, ""] | bool = False,
) -> Float[Array, "p p"]:
    """Covariance of theta from R (R^T R = J^T J in normalized coordinates; `triangular`:
    R is upper triangular, which `pinv_gram` can use)."""
    p = factor.shape[0]
    eps = jnp.finfo(factor.dtype).eps
    rcond = eps * jnp.maximum(n_points, p)
    # R of theta (J_theta = J_u S^-1), still triangular where R is
    pcov = pinv_gram(factor / scale[None, :], rcond, triangular)
    return _scaled(pcov, cost, n_points, absolute_sigma)


def variances(
    hess: Callable[[Float[Array, " p"]], Float[Array, " p"]],
    diagonal: Float[Array, " p"],
    cost: Float[Array, ""],
    scale: Float[Array, " p"],
    n_points,
    absolute_sigma,
    max_iter: int,
) -> Float[Array, " p"]:
    """The diagonal of the covariance of theta, from products `hess` (v -> J_u^T J_u v)
    and diag(J_u^T J_u) (the preconditioner); no p x p matrix. See the module."""
    p = diagonal.shape[0]
    top = jnp.max(diagonal)
    inverse = jnp.where(diagonal > 1e-12 * top, 1 / jnp.where(diagonal > 0, diagonal, 1),
                        1 / jnp.where(top > 0, top, 1))

    def one(j):
        unit = jnp.zeros(p, diagonal.dtype).at[j].set(1)
        x, _ = jax.scipy.sparse.linalg.cg(hess, unit, tol=_RTOL, maxiter=max_iter,
                                          M=lambda v: inverse * v)
        return x[j]

    inv_diag = jax.lax.map(one, jnp.arange(p), batch_size=min(p, _BLOCK))
    inv_diag = jnp.where(inv_diag > 0, inv_diag, jnp.inf)  # not determined by the data
    return _scaled(inv_diag * scale**2, cost, n_points, absolute_sigma)  # S H_u^-1 S


def _scaled(pcov, cost, n_points, absolute_sigma):
    """`pcov` times s^2 = RSS / (n - p) unless `absolute_sigma`; inf where undefined."""
    p = pcov.shape[0]
    dof = n_points - p
    s_sq = 2 * cost / jnp.where(dof > 0, dof, 1)
    pcov = jnp.where(absolute_sigma, pcov, jnp.where(dof > 0, pcov * s_sq, jnp.inf))
    return jnp.where(jnp.any(jnp.isnan(pcov)), jnp.inf, pcov)
