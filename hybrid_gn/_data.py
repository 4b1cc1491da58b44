"""Data as fixed-size chunks of a flat array, without copying or padding.

Chunk `i` is a dynamic slice of length `chunk_size` starting at
`min(i * chunk_size, n - chunk_size)`: the last chunk is shifted back to stay
in range, and the points it shares with the previous chunk get weight 0. So
every chunk has the same shape (one compiled body), no padded copy of the
data is ever made, and each point counts exactly once.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree


class Data(eqx.Module):
    """Points `x` (pytree, leading axis n), targets `y` and residual weights.

    `weight` is the per-point residual multiplier: 1/sigma for real points,
    0 for points that must not count (padding of ragged problems).
    """

    x: PyTree
    y: Float[Array, " n"]
    weight: Float[Array, " n"]
    chunk_size: int = eqx.field(static=True)
    # inside `shard_map`: the mesh axis this device's share of the points is split over
    # (sums over the data are completed across it); None for data held whole
    axis: str | None = eqx.field(static=True, default=None)

    @property
    def n(self) -> int:
        return self.y.shape[0]

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.chunk_size)

    def chunk(self, i) -> tuple[PyTree, Float[Array, " c"], Float[Array, " c"]]:
        """The `i`-th chunk `(x, y, weight)`; overlap with chunk i-1 has weight 0."""
        size = self.chunk_size
        if self.n_chunks == 1:
            return self.x, self.y, self.weight
        start = jnp.minimum(i * size, self.n - size)

        def take(a):
            return jax.lax.dynamic_slice_in_dim(a, start, size, axis=0)

        index = start + jnp.arange(size)
        fresh = index >= i * size
        weight = jnp.where(fresh, take(self.weight), 0)
        return jax.tree.map(take, self.x), take(self.y), weight

    def subsample(self, max_points: int | None) -> Data:
        """Every k-th point, at most `max_points` of them, as a single chunk.

        A strided subsample covers the whole range of sorted data (a block of
        chunks would not), which is what a cheap warmup needs.
        """
        if max_points is None or max_points >= self.n:
            return Data(self.x, self.y, self.weight, self.n)
        stride = -(-self.n // max_points)

        def take(a):
            return a[::stride]

        return Data(jax.tree.map(take, self.x), take(self.y), take(self.weight),
                    -(-self.n // stride))


def make_data(x: PyTree, y, sigma, chunk_size: int, dtype, mask=None) -> Data:
    """Wrap user arrays; `sigma` (None or per point) becomes the weight 1/sigma.

    Points where `mask` is False (padding of ragged problems) get weight 0;
    their y and sigma are never used, so they may hold anything.
    """
    y = jnp.asarray(y, dtype)
    if sigma is None:
        weight = jnp.ones_like(y)
    else:
        weight = 1 / jnp.asarray(sigma, dtype)
    if mask is not None:
        mask = jnp.asarray(mask) != 0
        weight = jnp.where(mask, weight, 0)
        y = jnp.where(mask, y, 0)
    return Data(x, y, weight, min(chunk_size, y.shape[0]))
