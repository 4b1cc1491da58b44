"""Phase 0: an affine map between parameters and normalized coordinates.

theta = offset + scale * u. Per parameter, strategy `bounds` maps [lb, ub] to
[0, 1], `p0` maps p0 to +-1 (scale |p0|, or 1 where p0 = 0), `none` is the
identity, and `auto` uses `bounds` where both bounds are finite, else `p0`.
The scale is also the diagonal Jacobian d theta / d u used by the covariance.

|p0| is no scale when p0 is near 0 by accident (a centre at 3e-6 where the
data spans units): such a parameter barely moves the residuals per
normalized unit, the trust region needs ~20 doublings to reach it, and
cond(J) is inflated by 1/|p0| for no reason in the data (enough to force
the slower QR route). Given each parameter's influence ||d r / d theta_j||
at p0, a `p0` scale is raised until the normalized influence is
`MIN_RELATIVE_INFLUENCE` of the largest, but only for a parameter that is
both nearly without influence and near zero (|p0| below `NEAR_ZERO` of the
largest |p0|): a parameter of ordinary size with little influence at p0
(an exponent in saturation, say) keeps |p0|, as its true scale is unknown.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._config import Normalization as Strategy


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


MIN_RELATIVE_INFLUENCE = 1e-2
NEAR_ZERO = 1e-3


def make_normalization(p0, lb, ub, strategy: Strategy, influence=None) -> Normalization:
    """Build the map for flat `p0` and bounds `lb`, `ub` (same shape, may be inf).

    `influence` (optional, flat like p0): ||d r / d theta_j|| at p0, which
    floors the `p0` scales (see the module docstring).
    """
    one = jnp.ones_like(p0)
    zero = jnp.zeros_like(p0)
    p0_scale = jnp.where(p0 != 0, jnp.abs(p0), one)
    if influence is not None:
        p0_scale = _floored(p0_scale, influence, jnp.abs(p0) < NEAR_ZERO * jnp.max(jnp.abs(p0)))
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


def _floored(scale, influence, near_zero):
    """`scale`, raised where near zero and `influence * scale` is below
    MIN_RELATIVE_INFLUENCE of its maximum."""
    usable = jnp.isfinite(influence) & (influence > 0)
    normalized = jnp.where(usable, influence * scale, 0)
    target = MIN_RELATIVE_INFLUENCE * jnp.max(normalized)
    floor = jnp.where(usable & near_zero, target / jnp.where(usable, influence, 1), 0)
    return jnp.where(jnp.isfinite(target), jnp.maximum(scale, floor), scale)
