"""The matrix-free trust-region step: Steihaug-Toint truncated conjugate gradients.

min_s g.s + 1/2 s.H s subject to ||s|| <= radius and s[~free] = 0, where H
is only available as products (J^T J v, `_matrix_free.gram_product`). CG
from s = 0, preconditioned by diag(H) (Jacobi), stops at the first of: a
residual ||H s + g|| below `rtol ||g||` (the inexact Newton step), a step
that would leave the ball (the point where its segment crosses the
boundary), a direction of non-positive curvature (followed to the
boundary), or `max_iter` products. Each iterate lowers the model, and the
first one is the preconditioned steepest-descent step, so the step is at
least a (scaled) Cauchy step and the trust-region method converges.

The region is the same Euclidean ball in normalized coordinates as on the
dense path (`_gauss_newton`), so `conclude`'s radius rules apply unchanged;
the preconditioner only changes the path the iterates take inside it.

Box bounds are handled as on the dense path: variables held at a bound by
the gradient are fixed (CG on the free ones), the step is then projected
onto the box. The model reduction -(g.s + 1/2 s.H s) comes free from the
CG recurrences (with r = H s + g it is -1/2 s.(g + r)); a step the
projection changed costs one more product to predict its reduction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .._control import run_if
from ._gauss_newton import GaussNewtonState, Proposal, free_variables, gradient_cosine

Operator = Callable[[Float[Array, " p"]], Float[Array, " p"]]  # v -> H v


class _CG(NamedTuple):
    s: Float[Array, " p"]  # the step so far
    r: Float[Array, " p"]  # H s + g, the model's gradient at s
    d: Float[Array, " p"]  # the search direction
    rz: Float[Array, ""]  # r . M^-1 r
    count: Int[Array, ""]
    done: Bool[Array, ""]


def _to_boundary(s, d, radius):
    """tau >= 0 with ||s + tau d|| = radius (||s|| <= radius), in a stable form."""
    a, b, c = d @ d, 2 * (s @ d), s @ s - radius**2
    root = jnp.sqrt(jnp.maximum(b * b - 4 * a * c, 0))
    tiny = jnp.finfo(s.dtype).tiny
    return jnp.where(b >= 0, -2 * c / jnp.maximum(b + root, tiny),
                     (root - b) / jnp.maximum(2 * a, tiny))


def steihaug(hess: Operator, g: Float[Array, " p"], diagonal: Float[Array, " p"], radius,
             free: Bool[Array, " p"], rtol, max_iter: int
             ) -> tuple[Float[Array, " p"], Float[Array, ""]]:
    """The truncated-CG step (see the module) and the reduction its model predicts."""
    g = jnp.where(free, g, 0)
    scale = jnp.max(jnp.where(free, diagonal, 0))
    usable = free & (diagonal > 1e-12 * scale)
    inverse = jnp.where(usable, 1 / jnp.where(usable, diagonal, 1),
                        1 / jnp.where(scale > 0, scale, 1))  # M^-1, Jacobi

    def product(v):
        return jnp.where(free, hess(jnp.where(free, v, 0)), 0)

    tol = rtol * jnp.linalg.norm(g)

    def body(cg: _CG) -> _CG:
        hd = product(cg.d)
        curvature = cg.d @ hd
        alpha = cg.rz / jnp.where(curvature > 0, curvature, 1)
        s_next = cg.s + alpha * cg.d
        leaves = (curvature <= 0) | (jnp.linalg.norm(s_next) >= radius)
        tau = jnp.where(leaves, _to_boundary(cg.s, cg.d, radius), alpha)
        s, r = cg.s + tau * cg.d, cg.r + tau * hd
        z = inverse * r
        rz = r @ z
        d = -z + rz / jnp.where(cg.rz > 0, cg.rz, 1) * cg.d
        done = leaves | (jnp.linalg.norm(r) <= tol) | ~jnp.isfinite(rz)
        new = _CG(s, r, d, rz, cg.count + 1, done)
        return jax.tree.map(lambda a, b: jnp.where(cg.done, b, a), new, cg)  # frozen (vmap)

    z0 = inverse * g
    start = _CG(jnp.zeros_like(g), g, -z0, g @ z0, jnp.asarray(0),
                (jnp.linalg.norm(g) <= tol) | (radius <= 0))
    cg = jax.lax.while_loop(lambda c: ~c.done & (c.count < max_iter), body, start)
    return cg.s, -0.5 * (cg.s @ (g + cg.r))


def forcing(state: GaussNewtonState, free) -> Float[Array, ""]:
    """CG's relative tolerance: min(0.1, sqrt(gradient cosine)), loose far from the
    optimum and tightening as it nears (superlinear inexact Newton, Eisenstat-Walker)."""
    return jnp.minimum(0.1, jnp.sqrt(gradient_cosine(state.model, free)))


def propose(state: GaussNewtonState, lower, upper, hess: Operator, max_iter: int
            ) -> Proposal:
    """The trust-region trial point by truncated CG on products `hess` at `state.u` (the
    current point itself before the first update)."""
    eq, u = state.model, state.u
    free = free_variables(u, eq.gradient, lower, upper)
    step, predicted = steihaug(hess, eq.gradient, eq.diagonal, state.radius, free,
                               forcing(state, free), max_iter)
    trial = jnp.where(state.started, jnp.clip(u + step, lower, upper), u)
    projected = state.started & jnp.any(trial != u + step)

    def reduction():
        s = trial - u
        return -(eq.gradient @ s + 0.5 * (s @ hess(s)))

    predicted = jnp.where(projected, run_if(projected, reduction, predicted), predicted)
    return Proposal(trial, jnp.where(state.started, predicted, 0))
