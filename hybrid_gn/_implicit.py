"""Derivatives of the fitted parameters by the implicit function theorem.

At a solution u* of min_u L(u, eta) (eta: the data x, y, sigma and the
model's extra arguments) the gradient vanishes, g(u*(eta), eta) = 0, so

    du*/deta = -H^-1 d^2L/(du deta),   H = d^2L/du^2 (the full Hessian).

The full Hessian matters: its Gauss-Newton part J^T J alone is wrong
wherever the residuals are not zero. Variables held at a bound do not move
(their tangent is zero) and the system is solved on the free ones. This is a
`jax.custom_jvp`: the solver's loop is never differentiated, forward mode
uses the rule directly, and reverse mode transposes it (the rule is linear
in the tangents, the Hessian comes from the primal values only).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Bool, Float, PyTree

Objective = Callable[[Float[Array, " p"], PyTree], Float[Array, ""]]


def solution(objective: Objective, u_star: Float[Array, " p"], free: Bool[Array, " p"],
             eta: PyTree) -> Float[Array, " p"]:
    """`u_star`, with the derivatives with respect to `eta` of argmin_u objective(u, eta)."""
    converted, consts = jax.closure_convert(objective, u_star, eta)
    u_star, free, consts = jax.lax.stop_gradient((u_star, free, consts))
    return _solution(converted, u_star, free, eta, consts)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _solution(objective, u_star, free, eta, consts):
    del objective, free, eta, consts
    return u_star


def _solution_jvp(objective, primals, tangents):
    u_star, free, eta, consts = primals
    # only the perturbed parts of eta enter the mixed term: with symbolic zeros the
    # derivative with respect to a model argument does not also differentiate (with zero
    # tangents) through x, y and sigma at every data point
    leaves, treedef = jax.tree.flatten(eta)
    dots = jax.tree.leaves(tangents[2], is_leaf=lambda t: isinstance(t, SymbolicZero))
    moving = [not isinstance(d, SymbolicZero) for d in dots]
    if not any(moving):
        return u_star, jnp.zeros_like(u_star)

    def gradient(*moving_leaves):
        given = iter(moving_leaves)
        full = [next(given) if m else leaf for leaf, m in zip(leaves, moving, strict=True)]
        return jax.grad(objective)(u_star, treedef.unflatten(full), *consts)

    # d^2L/(du deta) . eta_dot
    _, mixed = jax.jvp(gradient, tuple(a for a, m in zip(leaves, moving, strict=True) if m),
                       tuple(d for d, m in zip(dots, moving, strict=True) if m))
    hessian = jax.hessian(objective)(u_star, eta, *consts)
    both_free = free[:, None] & free[None, :]
    reduced = jnp.where(both_free, hessian, jnp.eye(hessian.shape[0], dtype=hessian.dtype))
    inverse = jnp.linalg.pinv(reduced, hermitian=True)
    return u_star, -(inverse @ jnp.where(free, mixed, 0))


_solution.defjvp(_solution_jvp, symbolic_zeros=True)
