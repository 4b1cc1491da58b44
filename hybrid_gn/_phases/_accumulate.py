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
Jacobian ill-conditioned, the normal equations elsewhere (one branch runs;
under `vmap` a branch runs only if some problem of the batch needs it).

Either way the result is a `Linearization` (R, Q^T r, cost) with
R^T R = J^T J and R^T (Q^T r) = J^T r, the form every later step uses.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PyTree

from .._config import Factorization, JacobianMode
from .._control import run_for_few
from .._data import Data
from .._loss import LINEAR, Loss
from . import _cholesky as cholesky
from ._linalg import symmetric_eigen

# residual(u, x_chunk, y_chunk, weight_chunk) -> weighted residuals of the chunk
ResidualFn = Callable[[Float[Array, " p"], PyTree, Array, Array], Float[Array, " c"]]
# rows(u) -> residual rows that do not come from the data (a penalty's)
RowsFn = Callable[[Float[Array, " p"]], Float[Array, " k"]]

_HIGHEST = jax.lax.Precision.HIGHEST
# chunks up to this many points form J^T J and J^T r as products and a sum, which XLA
# fuses under vmap; a batched dot of tiny matrices was 3x slower on CPU. Longer chunks
# (one large problem) use dot, i.e. BLAS.
_SHORT_CHUNK = 1024


class Linearization(eqx.Module):
    """Gauss-Newton model at a point: ||J s + r||^2 = ||R s + qtr||^2 + const."""

    factor: Float[Array, "p p"]  # R, with R^T R = J^T J
    qtr: Float[Array, " p"]  # with R^T qtr = J^T r
    cost: Float[Array, ""]  # 0.5 * sum of squared weighted residuals
    # the rows of R are orthogonal (R = sqrt(E) V^T from J^T J = V E V^T): its SVD is at hand
    orthogonal_rows: Bool[Array, ""]
    # cond(J), or an upper bound of it (`_cholesky.condition_bound`): picks the QR route and
    # the trust-region solver
    condition: Float[Array, ""]

    @classmethod
    def triangular(cls, factor, qtr, cost, condition=jnp.inf) -> Linearization:
        """The model from a triangular R (the QR route's, or a placeholder of zeros)."""
        return cls(factor, qtr, cost, jnp.asarray(False), jnp.asarray(condition, cost.dtype))

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
    """Residuals r (c,) and the transposed Jacobian J^T (p, c) of one chunk.

    Forward mode pushes the p unit tangents through one `jvp` (vmapped), which
    yields J^T directly, so J^T J and J^T r contract over the long, contiguous
    point axis with no transpose (under `vmap` over problems, a (c, p) layout
    with p = 4 made the Jacobian 5x slower).
    """
    def with_aux(v):
        r = residual(v, x, y, w)
        return r, r

    if forward:
        def tangent(t):
            return jax.jvp(lambda v: residual(v, x, y, w), (u,), (t,))[1]

        r = residual(u, x, y, w)
        return r, jax.vmap(tangent)(jnp.eye(u.shape[0], dtype=u.dtype))
    jacobian, r = jax.jacrev(with_aux, has_aux=True)(u)
    return r, jacobian.T


def linearize(residual: ResidualFn, u, data: Data, mode: JacobianMode,
              factorization: Factorization, use_qr=False, loss: Loss = LINEAR,
              rows: RowsFn | None = None) -> Linearization:
    """Exact Gauss-Newton model at `u` of the cost 1/2 sum loss(r^2), chunk by chunk.

    `use_qr` (a traced bool) picks the reduction when `factorization` is auto.
    `rows` (a penalty's residual rows) are folded in once, after the reduction.
    """
    def by(qr: bool, wanted=True):
        def reduce():
            acc = fold_data(residual, u, empty_accumulator(u.shape[0], u.dtype, qr), data, mode,
                            loss)
            return finish(fold_rows(rows, u, combine(acc, data.axis)), wanted)
        return reduce

    if factorization == "qr":
        return by(True)()
    if factorization == "normal":
        return by(False)()
    p = u.shape[0]
    placeholder = Linearization.triangular(jnp.zeros((p, p), u.dtype), jnp.zeros(p, u.dtype),
                                           jnp.zeros((), u.dtype))
    use_qr = jnp.asarray(use_qr)
    # the normal equations always (nearly every problem needs them; one on the QR route
    # discards them); the QR only for the problems that need it (under vmap gathered)
    by_qr = run_for_few(use_qr, by(True), placeholder)
    by_normal = by(False, wanted=~use_qr)()
    return jax.tree.map(lambda a, b: jnp.where(use_qr, a, b), by_qr, by_normal)


class NormalAccumulator(eqx.Module):
    """Running sums J^T J, J^T r and cost over the chunks seen so far."""

    jtj: Float[Array, "p p"]
    jtr: Float[Array, " p"]
    cost: Float[Array, ""]


class QRAccumulator(eqx.Module):
    """Running triangular factor of [J | r] over the chunks seen so far, and the cost."""

    r_aug: Float[Array, "p+1 p+1"]
    cost: Float[Array, ""]


Accumulator = NormalAccumulator | QRAccumulator


def empty_accumulator(p: int, dtype, qr: bool) -> Accumulator:
    """The accumulator before any chunk: zeros."""
    if qr:
        return QRAccumulator(jnp.zeros((p + 1, p + 1), dtype), jnp.zeros((), dtype))
    return NormalAccumulator(jnp.zeros((p, p), dtype), jnp.zeros(p, dtype), jnp.zeros((), dtype))


def fold_chunk(residual: ResidualFn, u, acc: Accumulator, x, y, w, forward: bool,
               loss: Loss = LINEAR) -> Accumulator:
    """`acc` with one more chunk (x, y, weight w) folded in: the one accumulation step.

    Both the fused driver (inside a `lax.scan`) and the streaming driver (one
    jitted call per chunk from the host) fold chunks with this function. A
    robust `loss` scales the chunk's residuals and Jacobian rows first (see
    `_loss`), so the sums below are its gradient and Gauss-Newton Hessian.
    """
    r, jt = chunk_jacobian(residual, u, x, y, w, forward)
    cost = acc.cost + loss.cost(r)
    if not loss.linear:
        root, r = loss.scale(r)
        jt = jt * root[None, :]
    if isinstance(acc, QRAccumulator):
        stacked = jnp.concatenate([acc.r_aug, jnp.concatenate([jt, r[None, :]]).T])
        return QRAccumulator(jnp.linalg.qr(stacked, mode="r"), cost)
    if r.shape[0] <= _SHORT_CHUNK:
        jtj = jnp.sum(jt[:, None, :] * jt[None, :, :], axis=2)
        jtr = jnp.sum(jt * r[None, :], axis=1)
    else:
        jtj, jtr = jnp.dot(jt, jt.T, precision=_HIGHEST), jnp.dot(jt, r, precision=_HIGHEST)
    return NormalAccumulator(acc.jtj + jtj, acc.jtr + jtr, cost)


def fold_data(residual: ResidualFn, u, acc: Accumulator, data: Data,
              mode: JacobianMode, loss: Loss = LINEAR) -> Accumulator:
    """`acc` with every chunk of `data` folded in (one compiled scan over the chunks)."""
    forward = use_forward_mode(mode, u.shape[0], data.chunk_size)

    def body(acc, i):
        x, y, w = data.chunk(i)
        return fold_chunk(residual, u, acc, x, y, w, forward, loss), None

    if data.n_chunks == 1:
        return body(acc, 0)[0]
    return jax.lax.scan(body, acc, jnp.arange(data.n_chunks))[0]


def fold_rows(rows: RowsFn | None, u, acc: Accumulator) -> Accumulator:
    """`acc` with residual rows that are not data (a penalty's) folded in, plain least
    squares whatever the loss; once per pass, after the reduction over devices."""
    if rows is None:
        return acc
    return fold_chunk(lambda v, x, y, w: rows(v), u, acc, None, None, None, forward=True)


def combine(acc: Accumulator, axis: str | None) -> Accumulator:
    """The accumulation over all devices' shares of the data, from this device's `acc`.

    One all-reduce of p x p + p + 1 numbers for the normal equations; for the
    QR, the (p + 1)-square factors of all devices are gathered and factored
    again (the QR of the stacked factors is the QR of the whole [J | r]).
    Nothing data-sized crosses devices. `axis` None: `acc` is already whole.
    """
    if axis is None:
        return acc
    if isinstance(acc, QRAccumulator):
        stacked = jax.lax.all_gather(acc.r_aug, axis, tiled=True)
        return QRAccumulator(jnp.linalg.qr(stacked, mode="r"), jax.lax.psum(acc.cost, axis))
    return jax.tree.map(lambda a: jax.lax.psum(a, axis), acc)


def finish(acc: Accumulator, wanted=True) -> Linearization:
    """The Gauss-Newton model from a complete accumulation (`wanted`: see
    `from_normal_equations`)."""
    if isinstance(acc, QRAccumulator):
        p = acc.r_aug.shape[0] - 1
        factor = acc.r_aug[:p, :p]
        return Linearization.triangular(factor, acc.r_aug[:p, p], acc.cost,
                                        cholesky.condition_bound(factor))
    return from_normal_equations(acc.jtj, acc.jtr, acc.cost, wanted)


def from_normal_equations(jtj, jtr, cost, wanted=True) -> Linearization:
    """The model from J^T J, J^T r: a scaled Cholesky factor where cond(J) is at most
    `_cholesky.well_conditioned`, else the eigendecomposition (`eigen_model`).

    `wanted` (traced) False: the caller discards this model (a problem on the QR route),
    so no eigendecomposition is computed for it; under `vmap` it runs only for the
    problems that need it (`_control.run_for_few`).
    """
    factor, qtr, condition = cholesky.factor_normal_equations(jtj, jtr)
    fast = condition <= cholesky.well_conditioned(jtj.dtype)
    by_cholesky = Linearization(factor, qtr, cost, jnp.asarray(False), condition)
    exact = run_for_few(jnp.asarray(wanted) & ~fast, lambda: eigen_model(jtj, jtr, cost),
                        by_cholesky)
    return jax.tree.map(lambda a, b: jnp.where(fast, a, b), by_cholesky, exact)


def eigen_model(jtj, jtr, cost) -> Linearization:
    """R = sqrt(E) V^T from the eigendecomposition J^T J = V E V^T.

    Rank revealing: directions whose eigenvalue is at the rounding level of
    J^T J carry no information; their component of qtr is set to 0. The rows
    of R are orthogonal, so their norms are the singular values of J.
    """
    eigval, eigvec_t = symmetric_eigen(jtj)
    eigval = jnp.maximum(eigval, 0)  # rounding can leave a null direction slightly negative
    s = jnp.sqrt(eigval)
    eps = jnp.finfo(jtj.dtype).eps
    informative = eigval > eps * jtj.shape[0] * jnp.max(eigval)
    proj = jnp.sum(eigvec_t * jtr[None, :], axis=1)
    qtr = jnp.where(informative, proj / jnp.where(informative, s, 1), 0)
    smallest = jnp.min(s)
    condition = jnp.where(smallest > 0, jnp.max(s) / jnp.where(smallest > 0, smallest, 1),
                          jnp.inf)
    return Linearization(s[:, None] * eigvec_t, qtr, cost, jnp.asarray(True), condition)


def cost(residual: ResidualFn, u, data: Data, loss: Loss = LINEAR) -> Float[Array, ""]:
    """1/2 sum loss(r^2) of the weighted residuals r at `u` (no Jacobian)."""
    def one_chunk(i):
        x, y, w = data.chunk(i)
        return loss.cost(residual(u, x, y, w))

    return sum_over_chunks(one_chunk, data.n_chunks)


def sum_over_chunks(one_chunk, n_chunks: int):
    """The sum of `one_chunk(i)` (a pytree of arrays) over the chunks i of the data."""
    if n_chunks == 1:
        return one_chunk(0)

    def body(total, i):
        return jax.tree.map(jnp.add, total, one_chunk(i)), None

    first = one_chunk(0)
    total, _ = jax.lax.scan(body, first, jnp.arange(1, n_chunks))
    return total
