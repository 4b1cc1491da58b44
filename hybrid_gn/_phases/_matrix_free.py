"""The Gauss-Newton model without a p x p matrix: the matrix-free accumulation.

Above `Config.dense_max_params` parameters, J^T J is never formed. One pass
at a point gives what the dense accumulation gives except the matrix: the
cost, the gradient J^T r and diag(J^T J) (the column norms of the gtol test
and the Jacobi preconditioner of the conjugate gradients); the products
J^T J v the trust-region subproblem needs (`_steihaug`) are one more pass
each, computed chunk by chunk as a `jvp` (J v) then its transpose
(J^T (J v)) of the same linearization. Memory is O(p + chunk) whatever p.

The diagonal is a Hutchinson estimate, E[(J^T z)^2] = diag(J^T J) for
random signs z on the residuals, from `PROBES` probes folded into the
gradient's own `vjp` (one backward pass per probe and chunk). The exact
column norms would need the per-point gradients, p numbers per point (the
cost of forming J), while a model whose points each see a few parameters
costs O(1) per point per probe; the preconditioner and the scale-free
gtol test only need the diagonal within a small factor (relative error
about sqrt(2 / PROBES)). The probes are a fixed function of the chunk's
rank in the pass, so every pass, and every driver, sees the same ones.

Sums over a device mesh's data axis are completed with a `psum` of p
numbers (as `_accumulate.combine` does), and a robust loss rescales the
residuals and Jacobian rows as in `_loss`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .._data import Data
from .._loss import LINEAR, Loss
from ._accumulate import ResidualFn, sum_over_chunks

PROBES = 8  # Hutchinson probes of diag(J^T J) per chunk
_KEY = 0x5EED  # the probes' seed (any fixed number: every pass sees the same probes)


class GradientModel(eqx.Module):
    """The Gauss-Newton model at a point, matrix-free: J^T r, diag(J^T J) and the cost.

    It answers what `conclude` and the gtol test ask of a `Linearization`
    (`gradient`, `column_norms`, `cost`, `finite`); the curvature is given
    by products (`gram_product`), never stored.
    """

    jtr: Float[Array, " p"]
    diagonal: Float[Array, " p"]  # an estimate of diag(J^T J)
    cost: Float[Array, ""]

    @property
    def gradient(self) -> Float[Array, " p"]:
        return self.jtr

    @property
    def column_norms(self) -> Float[Array, " p"]:
        return jnp.sqrt(self.diagonal)

    @property
    def finite(self):
        return (jnp.isfinite(self.cost) & jnp.all(jnp.isfinite(self.jtr))
                & jnp.all(jnp.isfinite(self.diagonal)))


def placeholder(p: int, dtype) -> GradientModel:
    """The model before any evaluation: zeros."""
    zero = jnp.zeros(p, dtype)
    return GradientModel(zero, zero, jnp.zeros((), dtype))


class GradientAccumulator(eqx.Module):
    """Running sums of J^T r, the probes' (J^T z)^2 and the cost; chunks folded so far."""

    jtr: Float[Array, " p"]
    squares: Float[Array, " p"]
    cost: Float[Array, ""]
    chunks: Int[Array, ""]


def empty_accumulator(p: int, dtype) -> GradientAccumulator:
    zero = jnp.zeros(p, dtype)
    return GradientAccumulator(zero, zero, jnp.zeros((), dtype), jnp.zeros((), jnp.int32))


def _scaled(loss: Loss, r):
    """(root, rho' r): the Jacobian rows' factor sqrt(a) and the gradient's cotangent."""
    if loss.linear:
        return jnp.ones_like(r), r
    root, r_scaled = loss.scale(r)
    return root, root * r_scaled


def fold_chunk(residual: ResidualFn, u, acc: GradientAccumulator, x, y, w,
               loss: Loss = LINEAR) -> GradientAccumulator:
    """`acc` with one more chunk folded in: one `vjp` with 1 + PROBES cotangents."""
    r, pullback = jax.vjp(lambda v: residual(v, x, y, w), u)
    root, cotangent = _scaled(loss, r)
    key = jax.random.fold_in(jax.random.key(_KEY), acc.chunks)
    signs = jax.random.rademacher(key, (PROBES, r.shape[0]), r.dtype)
    pulled = jax.vmap(lambda c: pullback(c)[0])(
        jnp.concatenate([cotangent[None, :], signs * root[None, :]]))
    return GradientAccumulator(acc.jtr + pulled[0], acc.squares + jnp.sum(pulled[1:] ** 2, 0),
                               acc.cost + loss.cost(r), acc.chunks + 1)


def fold_data(residual: ResidualFn, u, acc: GradientAccumulator, data: Data,
              loss: Loss = LINEAR) -> GradientAccumulator:
    """`acc` with every chunk of `data` folded in (one compiled scan over the chunks)."""
    def body(acc, i):
        x, y, w = data.chunk(i)
        return fold_chunk(residual, u, acc, x, y, w, loss), None

    if data.n_chunks == 1:
        return body(acc, 0)[0]
    return jax.lax.scan(body, acc, jnp.arange(data.n_chunks))[0]


def finish(acc: GradientAccumulator, axis: str | None = None) -> GradientModel:
    """The model from a complete accumulation (summed over the devices of `axis`)."""
    jtr, squares, cost = acc.jtr, acc.squares, acc.cost
    if axis is not None:
        jtr, squares, cost = jax.lax.psum((jtr, squares, cost), axis)
    return GradientModel(jtr, squares / PROBES, cost)


def evaluate(residual: ResidualFn, u, data: Data, loss: Loss = LINEAR) -> GradientModel:
    """The matrix-free Gauss-Newton model at `u`: one pass over `data`."""
    acc = fold_data(residual, u, empty_accumulator(u.shape[0], u.dtype), data, loss)
    return finish(acc, data.axis)


def gram_product(residual: ResidualFn, u, data: Data, v: Float[Array, " p"],
                 loss: Loss = LINEAR) -> Float[Array, " p"]:
    """J^T J v at `u` (robust rows scaled as in `_loss`): one pass over `data`.

    Per chunk, J v by the linearization's `jvp`, then J^T (J v) by its
    transpose: about three model evaluations, O(p + chunk) memory. Under
    `vmap` over `v` the model's primal values are computed once per chunk.
    """
    def one_chunk(i):
        x, y, w = data.chunk(i)
        r, jvp = jax.linearize(lambda t: residual(t, x, y, w), u)
        root = _scaled(loss, r)[0]
        return jax.linear_transpose(jvp, u)(root**2 * jvp(v))[0]

    product = sum_over_chunks(one_chunk, data.n_chunks)
    return product if data.axis is None else jax.lax.psum(product, data.axis)
