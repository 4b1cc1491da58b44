"""The one accumulation of J^T J, J^T r and cost over data chunks.

Every driver uses these functions: a `lax.scan` over chunk indices, each
chunk's residuals and Jacobian computed by forward mode (p JVPs) or reverse
mode (one VJP per residual), whichever the configuration or shape favours.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from .config import JacobianMode
from .data import Data

# residual(u, x_chunk, y_chunk, weight_chunk) -> weighted residuals of the chunk
ResidualFn = Callable[[Float[Array, " p"], PyTree, Array, Array], Float[Array, " c"]]

_HIGHEST = jax.lax.Precision.HIGHEST


class NormalEquations(eqx.Module):
    """Sufficient statistics of the linearized problem at a point."""

    jtj: Float[Array, "p p"]
    jtr: Float[Array, " p"]
    cost: Float[Array, ""]  # 0.5 * sum of squared weighted residuals

    def __add__(self, other: NormalEquations) -> NormalEquations:
        return NormalEquations(self.jtj + other.jtj, self.jtr + other.jtr,
                               self.cost + other.cost)

    @property
    def finite(self):
        return (jnp.isfinite(self.cost) & jnp.all(jnp.isfinite(self.jtr))
                & jnp.all(jnp.isfinite(self.jtj)))


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
    return jac(with_aux, has_aux=True)(u)[::-1]


def normal_equations(residual: ResidualFn, u, data: Data, mode: JacobianMode) -> NormalEquations:
    """Exact J^T J, J^T r and cost at `u`, accumulated chunk by chunk."""
    forward = use_forward_mode(mode, u.shape[0], data.chunk_size)

    def one_chunk(i) -> NormalEquations:
        x, y, w = data.chunk(i)
        r, jac = chunk_jacobian(residual, u, x, y, w, forward)
        return NormalEquations(jnp.dot(jac.T, jac, precision=_HIGHEST),
                               jnp.dot(jac.T, r, precision=_HIGHEST),
                               0.5 * jnp.dot(r, r, precision=_HIGHEST))

    return _sum_over_chunks(one_chunk, data.n_chunks)


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
