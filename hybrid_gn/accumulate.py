"""The one accumulation of the linearized problem over data chunks.

Every driver uses these functions: a `lax.scan` over chunk indices, each
chunk's residuals r and Jacobian J computed by forward mode (p JVPs) or
reverse mode (one VJP per residual), whichever the configuration or shape
favours. Two exact reductions are offered:

- `normal`: sum J^T J, J^T r (fastest, reduces with a plain sum/psum, but
  squares the condition number);
- `qr`: a streamed QR (TSQR) of [J | r]: the running triangular factor is
  stacked with the next chunk and re-factored, so only (p+1)^2 numbers are
  kept and the result is as accurate as a QR of the whole Jacobian.

`auto` decides per pass from a traced flag: QR where the caller found the
Jacobian ill-conditioned, the normal equations elsewhere (a `lax.cond`, so
one branch runs; under `vmap` with a batched flag both run).

Either way the result is a `Linearization` (R, Q^T r, cost) with
R^T R = J^T J and R^T (Q^T r) = J^T r, the form every later step uses.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from .config import Factorization, JacobianMode
from .data import Data

# residual(u, x_chunk, y_chunk, weight_chunk) -> weighted residuals of the chunk
ResidualFn = Callable[[Float[Array, " p"], PyTree, Array, Array], Float[Array, " c"]]

_HIGHEST = jax.lax.Precision.HIGHEST


class Linearization(eqx.Module):
    """Gauss-Newton model at a point: ||J s + r||^2 = ||R s + qtr||^2 + const."""

    factor: Float[Array, "p p"]  # R, with R^T R = J^T J
    qtr: Float[Array, " p"]  # with R^T qtr = J^T r
    cost: Float[Array, ""]  # 0.5 * sum of squared weighted residuals

    @property
    def gradient(self) -> Float[Array, " p"]:
        """J^T r, the gradient of the cost."""
        return self.factor.T @ self.qtr

    @property
    def column_norms(self) -> Float[Array, " p"]:
        """||J[:, j]||, the square roots of diag(J^T J)."""
        return jnp.linalg.norm(self.factor, axis=0)

    @property
    def finite(self):
        return (jnp.isfinite(self.cost) & jnp.all(jnp.isfinite(self.qtr))
                & jnp.all(jnp.isfinite(self.factor)))


def use_forward_mode(mode: JacobianMode, n_params: int, chunk_size: int) -> bool:
    """Forward mode costs p JVPs per chunk, reverse mode one VJP per residual."""
    if mode == "auto":
        return n_params <= chunk_size
    return mode == "forward"


def chunk_jacobian(residual: ResidualFn, u, x, y, w, forward: bool):
    """Residuals r (c,) and Jacobian J (c, p) of one chunk."""
    def with_aux(v):
        r = residual(v, x, y, w)
        return r, r

    jac = jax.jacfwd if forward else jax.jacrev
    jacobian, r = jac(with_aux, has_aux=True)(u)
    return r, jacobian


def linearize(residual: ResidualFn, u, data: Data, mode: JacobianMode,
              factorization: Factorization, use_qr=False) -> Linearization:
    """Exact Gauss-Newton model at `u`, accumulated chunk by chunk.

    `use_qr` (a traced bool) picks the reduction when `factorization` is auto.
    """
    forward = use_forward_mode(mode, u.shape[0], data.chunk_size)

    def chunk(i):
        x, y, w = data.chunk(i)
        return chunk_jacobian(residual, u, x, y, w, forward)

    def by_qr():
        return _linearize_qr(chunk, data.n_chunks, u.shape[0], u.dtype)

    def by_normal():
        return _linearize_normal(chunk, data.n_chunks)

    if factorization == "qr":
        return by_qr()
    if factorization == "normal":
        return by_normal()
    return jax.lax.cond(use_qr, by_qr, by_normal)


def _linearize_normal(chunk, n_chunks: int) -> Linearization:
    def stats(i):
        r, jac = chunk(i)
        return (jnp.dot(jac.T, jac, precision=_HIGHEST), jnp.dot(jac.T, r, precision=_HIGHEST),
                0.5 * jnp.dot(r, r, precision=_HIGHEST))

    jtj, jtr, cost = _sum_over_chunks(stats, n_chunks)
    return from_normal_equations(jtj, jtr, cost)


def from_normal_equations(jtj, jtr, cost) -> Linearization:
    """R = sqrt(E) V^T from the eigendecomposition J^T J = V E V^T.

    Directions whose eigenvalue is at the rounding level of J^T J carry no
    information; their component of qtr is set to 0.
    """
    eigval, eigvec = jnp.linalg.eigh(jtj)
    s = jnp.sqrt(jnp.maximum(eigval, 0))
    eps = jnp.finfo(jtj.dtype).eps
    informative = eigval > eps * jtj.shape[0] * jnp.maximum(eigval[-1], 0)
    proj = eigvec.T @ jtr
    qtr = jnp.where(informative, proj / jnp.where(informative, s, 1), 0)
    return Linearization(s[:, None] * eigvec.T, qtr, cost)


def _linearize_qr(chunk, n_chunks: int, p: int, dtype) -> Linearization:
    def fold(carry, i):
        r_aug, cost = carry
        r, jac = chunk(i)
        stacked = jnp.concatenate([r_aug, jnp.concatenate([jac, r[:, None]], axis=1)])
        cost = cost + 0.5 * jnp.dot(r, r, precision=_HIGHEST)
        return (jnp.linalg.qr(stacked, mode="r"), cost), None

    start = (jnp.zeros((p + 1, p + 1), dtype), jnp.zeros((), dtype))
    if n_chunks == 1:
        (r_aug, cost), _ = fold(start, 0)
    else:
        (r_aug, cost), _ = jax.lax.scan(fold, start, jnp.arange(n_chunks))
    return Linearization(r_aug[:p, :p], r_aug[:p, p], cost)


def cost(residual: ResidualFn, u, data: Data) -> Float[Array, ""]:
    """0.5 * sum of squared weighted residuals at `u` (no Jacobian)."""
    def one_chunk(i):
        x, y, w = data.chunk(i)
        r = residual(u, x, y, w)
        return 0.5 * jnp.dot(r, r, precision=_HIGHEST)

    return _sum_over_chunks(one_chunk, data.n_chunks)


def _sum_over_chunks(one_chunk, n_chunks: int):
    if n_chunks == 1:
        return one_chunk(0)

    def body(total, i):
        return jax.tree.map(jnp.add, total, one_chunk(i)), None

    first = one_chunk(0)
    total, _ = jax.lax.scan(body, first, jnp.arange(1, n_chunks))
    return total
