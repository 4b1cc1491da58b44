"""Robust losses: the cost is 1/2 sum rho(r_i^2), with scipy's `least_squares` definitions.

A loss is a function rho of the squared residual z = r^2, given with its
first two derivatives (the three rows of scipy's convention). `f_scale` C
sets the residual size where the loss turns robust: rho_C(z) = C^2 rho(z / C^2).

Gauss-Newton folds the loss into the data, as scipy's `trf` does: each
residual and its Jacobian row are scaled so that the usual sums give the
gradient of the robust cost and its Gauss-Newton Hessian,

    J_i <- sqrt(a_i) J_i,   r_i <- rho'_i r_i / sqrt(a_i),   a_i = max(rho'_i + 2 z_i rho''_i, eps),

so J^T J, J^T r (and the streamed QR) are accumulated in the same single
pass, with no change to the trust region or the covariance.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._model import fingerprint

# rho(z) -> (3, m): values, first and second derivatives in z (scipy's callable convention),
# or rho(z) -> (m,): values only, the derivatives then taken by automatic differentiation
RhoFn = Callable[[Float[Array, " m"]], Float[Array, "3 m"] | Float[Array, " m"]]


def _linear(z):
    return jnp.stack([z, jnp.ones_like(z), jnp.zeros_like(z)])


def _soft_l1(z):
    t = 1 + z
    return jnp.stack([2 * (jnp.sqrt(t) - 1), t**-0.5, -0.5 * t**-1.5])


def _huber(z):
    inside = z <= 1
    outer = jnp.where(inside, 1, z)  # no infinity in the branch not taken (nor its gradient)
    return jnp.stack([jnp.where(inside, z, 2 * jnp.sqrt(outer) - 1),
                      jnp.where(inside, 1, outer**-0.5),
                      jnp.where(inside, 0, -0.5 * outer**-1.5)])


def _cauchy(z):
    t = 1 + z
    return jnp.stack([jnp.log1p(z), 1 / t, -1 / t**2])


def _arctan(z):
    t = 1 + z**2
    return jnp.stack([jnp.arctan(z), 1 / t, -2 * z / t**2])


LOSSES: dict[str, Callable] = {"linear": _linear, "soft_l1": _soft_l1, "huber": _huber,
                               "cauchy": _cauchy, "arctan": _arctan}


class Loss(eqx.Module):
    """A robust loss with its scale: `loss(z)` gives rho, rho' and rho'' at z = r^2."""

    rho: str | RhoFn = eqx.field(static=True)  # a name of LOSSES or the user's function
    f_scale: Float[Array, ""] | float = 1.0

    @property
    def linear(self) -> bool:
        """Static: plain least squares (no scaling of the residuals at all)."""
        return isinstance(self.rho, str) and self.rho == "linear"

    def __call__(self, z: Float[Array, " m"]) -> Float[Array, "3 m"]:
        c2 = jnp.asarray(self.f_scale, z.dtype) ** 2
        rho = _evaluate(self.rho, z / c2)
        return jnp.stack([c2 * rho[0], rho[1], rho[2] / c2])

    def cost(self, r: Float[Array, " m"]) -> Float[Array, ""]:
        """1/2 sum rho(r^2): the cost of residuals `r`."""
        if self.linear:
            return 0.5 * jnp.dot(r, r, precision=jax.lax.Precision.HIGHEST)
        return 0.5 * jnp.sum(self(r * r)[0])

    def scale(self, r: Float[Array, " m"]) -> tuple[Float[Array, " m"], Float[Array, " m"]]:
        """(sqrt(a), rho' r / sqrt(a)): the Jacobian rows' factor and the scaled residuals."""
        z = r * r
        rho = self(z)
        eps = jnp.finfo(z.dtype).eps
        root = jnp.sqrt(jnp.maximum(rho[1] + 2 * rho[2] * z, eps))
        return root, r * rho[1] / root


def _evaluate(rho: str | RhoFn, z):
    if isinstance(rho, str):
        return LOSSES[rho](z)
    out = jnp.asarray(rho(z))
    if out.shape == (3, *z.shape):
        return out
    if out.shape == z.shape:  # values only: the derivatives by forward mode (elementwise)
        def first(v):
            return jax.jvp(rho, (v,), (jnp.ones_like(v),))[1]

        return jnp.stack([out, first(z), jax.jvp(first, (z,), (jnp.ones_like(z),))[1]])
    raise ValueError(f"a callable loss must return rho(z) with shape (3, m) (values, first "
                     f"and second derivatives, scipy's convention) or (m,) (values), for z "
                     f"of shape (m,); got shape {out.shape} for m = {z.shape[0]}")


def describe(rho: str | RhoFn) -> str:
    """A name that identifies the loss across processes: its name, or for a function the
    fingerprint of what it computes (so a checkpoint resumes only with the same loss)."""
    if isinstance(rho, str):
        return rho
    z = jax.ShapeDtypeStruct((4,), jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    return "callable " + fingerprint(jax.make_jaxpr(rho)(z))[:32]


LINEAR = Loss("linear")
