"""Phase 0: an affine map between parameters and normalized coordinates.

theta = offset + scale * u. Per parameter, strategy `bounds` maps [lb, ub] to
[0, 1], `p0` maps p0 to +-1 (scale |p0|, or 1 where p0 = 0), `none` is the
identity, and `auto` uses `bounds` where both bounds are finite, else `p0`.
The scale is also the diagonal Jacobian d theta / d u used by the covariance.

|p0| is no scale when p0 is near 0 by accident (a centre at 3e-6, or at 0.03,
where the data spans units): the trust region, a ball in normalized
coordinates, then all but freezes that parameter (a descent step moves it
by scale^2 times its gradient), and a fit from two peaks started near the
same place merges them into one with amplitudes of opposite sign running
off to infinity instead of moving the centres apart. Two measurements at p0,
on the warmup sample, raise such scales:

- a parameter's influence ||d r / d theta_j|| and its reach, the extent
  ||d r / d theta_j|| / ||d^2 r / d theta_j^2|| of its linear model (how far
  it moves before its Jacobian column changes by its own size). A parameter
  the model is nonlinear in gets a scale of at least its reach, up to the
  scale at which its normalized influence equals the largest one: a centre
  near 0 gets about its peak's width, while an exponent in saturation (its
  column changes fast) or a width (reach about its own size) keeps |p0|.
- a parameter the model is linear in (an amplitude, an offset: reach inf)
  has no such extent; its |p0| is kept, unless it is both nearly without
  influence and near zero (|p0| below `NEAR_ZERO` of the largest |p0|),
  when it is raised until its normalized influence is
  `MIN_RELATIVE_INFLUENCE` of the largest. An amplitude far off at p0 (NIST
  MGH10's b1 = 2 beside 4e5) is no accident of zero and keeps |p0|: raising
  it lost that fit.

Where the reach is not measured (the matrix-free path, `jacobian="reverse"`)
every parameter follows the linear rule.
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


def make_normalization(p0, lb, ub, strategy: Strategy, influence=None,
                       reach=None) -> Normalization:
    """Build the map for flat `p0` and bounds `lb`, `ub` (same shape, may be inf).

    `influence` and `reach` (optional, flat like p0): ||d r / d theta_j|| and the
    extent of each parameter's linear model at p0 (inf where linear), which floor the
    `p0` scales (see the module docstring).
    """
    one = jnp.ones_like(p0)
    zero = jnp.zeros_like(p0)
    p0_scale = jnp.where(p0 != 0, jnp.abs(p0), one)
    if influence is not None:
        p0_scale = _floored(p0_scale, influence, jnp.abs(p0) < NEAR_ZERO * jnp.max(jnp.abs(p0)),
                            reach)
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


def _floored(scale, influence, near_zero, reach=None):
    """`scale` raised: a nonlinear parameter's to its reach, at most until its
    normalized influence is the largest; a linear one's (every one without `reach`)
    where near zero and its normalized influence is below MIN_RELATIVE_INFLUENCE of the
    largest, to that level."""
    usable = jnp.isfinite(influence) & (influence > 0)
    normalized = jnp.where(usable, influence * scale, 0)
    largest = jnp.max(normalized)
    per_influence = largest / jnp.where(usable, influence, 1)
    linear = jnp.ones_like(usable) if reach is None else jnp.isinf(reach)
    floor = jnp.where(usable & near_zero & linear, MIN_RELATIVE_INFLUENCE * per_influence, 0)
    if reach is not None:
        nonlinear = usable & ~linear & jnp.isfinite(reach) & (reach > 0)
        floor = jnp.maximum(floor, jnp.where(nonlinear, jnp.minimum(reach, per_influence), 0))
    return jnp.where(jnp.isfinite(largest), jnp.maximum(scale, floor), scale)
