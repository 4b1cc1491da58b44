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

For a matrix-free fit (given the `diagonal` of J^T J) the p x p Hessian is
never formed: H^-1 is applied by conjugate gradients on Hessian-vector
products (a `jvp` of the gradient), Jacobi-preconditioned by that diagonal.
CG is not linear in its right-hand side, so JAX cannot transpose a forward
rule built on it (and a `custom_linear_solve` inside a `custom_jvp` rule
fails to transpose in JAX 0.10); the matrix-free rule is therefore a
`jax.custom_vjp` (reverse mode, the common use: the adjoint solve
H lambda = u_bar, then eta_bar = -d(grad_u L)/d eta^T lambda), and forward
mode through a matrix-free fit raises JAX's custom_vjp error. CG assumes H
is positive definite on the free variables, as it is at a strict minimum.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Bool, Float, PyTree

Objective = Callable[[Float[Array, " p"], PyTree], Float[Array, ""]]


_CG_RTOL = 1e-12  # relative residual of the matrix-free solve


def solution(objective: Objective, u_star: Float[Array, " p"], free: Bool[Array, " p"],
             eta: PyTree, diagonal: Float[Array, " p"] | None = None) -> Float[Array, " p"]:
    """`u_star`, with the derivatives with respect to `eta` of argmin_u objective(u, eta);
    with `diagonal` (of J^T J, the preconditioner) by the matrix-free solve."""
    converted, consts = jax.closure_convert(objective, u_star, eta)
    u_star, free, consts, diagonal = jax.lax.stop_gradient((u_star, free, consts, diagonal))
    if diagonal is not None:
        return _solution_by_cg(converted, u_star, free, eta, consts, diagonal)
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
    rhs = jnp.where(free, mixed, 0)
    hessian = jax.hessian(objective)(u_star, eta, *consts)
    both_free = free[:, None] & free[None, :]
    reduced = jnp.where(both_free, hessian, jnp.eye(hessian.shape[0], dtype=hessian.dtype))
    inverse = jnp.linalg.pinv(reduced, hermitian=True)
    return u_star, -(inverse @ rhs)


def _solve_by_cg(objective, u_star, free, eta, consts, diagonal, rhs):
    """H^-1 rhs on the free variables (identity on the others) by preconditioned CG on
    Hessian-vector products: no p x p matrix."""
    def grad(u):
        return jax.grad(objective)(u, eta, *consts)

    def hvp(v):
        return jnp.where(free, jax.jvp(grad, (u_star,), (jnp.where(free, v, 0),))[1], v)

    top = jnp.max(diagonal)
    usable = free & (diagonal > 1e-12 * top)
    inverse = jnp.where(usable, 1 / jnp.where(usable, diagonal, 1),
                        jnp.where(free, 1 / jnp.where(top > 0, top, 1), 1))
    x, _ = jax.scipy.sparse.linalg.cg(hvp, rhs, tol=_CG_RTOL, M=lambda v: inverse * v)
    return x


_solution.defjvp(_solution_jvp, symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _solution_by_cg(objective, u_star, free, eta, consts, diagonal):
    del objective, free, eta, consts, diagonal
    return u_star


def _by_cg_forward(objective, u_star, free, eta, consts, diagonal):
    return u_star, (u_star, free, eta, consts, diagonal)


def _by_cg_backward(objective, saved, u_bar):
    """eta_bar = -(d grad_u L / d eta)^T H^-1 u_bar, on the free variables."""
    u_star, free, eta, consts, diagonal = saved
    adjoint = _solve_by_cg(objective, u_star, free, eta, consts, diagonal,
                           jnp.where(free, u_bar, 0))
    _, pullback = jax.vjp(lambda e: jax.grad(objective)(u_star, e, *consts), eta)
    (eta_bar,) = pullback(-jnp.where(free, adjoint, 0))
    return None, None, eta_bar, None, None


_solution_by_cg.defvjp(_by_cg_forward, _by_cg_backward)
