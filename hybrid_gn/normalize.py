"""Phase 0: an affine map between parameters and normalized coordinates.

theta = offset + scale * u. Per parameter, strategy `bounds` maps [lb, ub] to
[0, 1], `p0` maps p0 to +-1 (scale |p0|, or 1 where p0 = 0), `none` is the
identity, and `auto` uses `bounds` where both bounds are finite, else `p0`.
The scale is also the diagonal Jacobian d theta / d u used by the covariance.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .config import Normalization as Strategy


class Normalization(eqx.Module):
    offset: Float[Array, " p"]
    scale: Float[Array, " p"]

    def to_normalized(self, theta: Float[Array, " p"]) -> Float[Array, " p"]:
        return (theta - self.offset) / self.scale

    def to_params(self, u: Float[Array, " p"]) -> Float[Array, " p"]:
        return self.offset + self.scale * u

    def bounds(self, lb, ub) -> tuple[Float[Array, " p"], Float[Array, " p"]]:
        """Box bounds in normalized coordinates (scale > 0 keeps the order)."""
        return self.to_normalized(lb), self.to_normalized(ub)


def make_normalization(p0, lb, ub, strategy: Strategy) -> Normalization:
    """Build the map for flat `p0` and bounds `lb`, `ub` (same shape, may be inf)."""
    one = jnp.ones_like(p0)
    zero = jnp.zeros_like(p0)
    p0_scale = jnp.where(p0 != 0, jnp.abs(p0), one)
    finite = jnp.isfinite(lb) & jnp.isfinite(ub)
    width = jnp.where(finite, ub - lb, one)
    lower = jnp.where(finite, lb, zero)
    if strategy == "none":
        return Normalization(zero, one)
    if strategy == "p0":
        return Normalization(zero, p0_scale)
    if strategy == "bounds":
        return Normalization(lower, width)
    return Normalization(lower, jnp.where(finite, width, p0_scale))
