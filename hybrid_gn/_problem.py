"""A least-squares problem in normalized coordinates (phase 0 applied).

Everything a driver needs besides the data: the flat normalized start, the
box in normalized coordinates, the map back to the user's parameter pytree,
and the weighted residual of one chunk. The fused driver (`fit`), the
streaming driver and multi-start all build their problem here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from ._config import Config, JacobianMode, matrix_free
from ._data import Data
from ._phases import _matrix_free
from ._phases._accumulate import ResidualFn, empty_accumulator, fold_chunk, use_forward_mode
from ._phases._normalize import Normalization, make_normalization


class Unravel(eqx.Module):
    """Flat parameters -> the user's params pytree (`ravel_pytree`'s inverse).

    Its fields are static and compare by value, so two fits of the same layout
    share compiled programs (`ravel_pytree` returns a new closure every time).
    """

    treedef: Any = eqx.field(static=True)
    shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)

    def __call__(self, theta: Float[Array, " p"]) -> PyTree:
        sizes = [math.prod(shape) for shape in self.shapes]
        parts = jnp.split(theta, np.cumsum(sizes)[:-1].tolist()) if sizes else []
        return jax.tree.unflatten(self.treedef, [part.reshape(shape) for part, shape
                                                 in zip(parts, self.shapes, strict=True)])


def ravel(params: PyTree) -> tuple[Float[Array, " p"], Unravel]:
    """`params` as one flat array, and the map back."""
    leaves, treedef = jax.tree.flatten(params)
    flat = jnp.concatenate([jnp.ravel(a) for a in leaves]) if leaves else jnp.zeros(0)
    return flat, Unravel(treedef, tuple(tuple(np.shape(a)) for a in leaves))


class Problem(eqx.Module):
    """`model(params, x[, args]) ~ y` over flat normalized parameters u."""

    model: Callable = eqx.field(static=True)
    unravel: Unravel  # flat theta -> params pytree
    norm: Normalization
    lb: Float[Array, " p"]  # bounds of theta (may be infinite)
    ub: Float[Array, " p"]
    u0: Float[Array, " p"]  # the start, clipped into the box

    @property
    def dtype(self):
        return self.u0.dtype

    @property
    def lower(self) -> Float[Array, " p"]:
        return self.norm.to_normalized(self.lb)

    @property
    def upper(self) -> Float[Array, " p"]:
        return self.norm.to_normalized(self.ub)

    def to_theta(self, u: Float[Array, " p"]) -> Float[Array, " p"]:
        """Flat parameters at `u`: clipped into the bounds (rounding in the map can
        leave the box by an ulp) with a unit derivative."""
        theta = self.norm.to_params(u)
        return theta + jax.lax.stop_gradient(jnp.clip(theta, self.lb, self.ub) - theta)

    def to_params(self, u: Float[Array, " p"]) -> PyTree:
        return self.unravel(self.to_theta(u))

    def residual(self, model_args: PyTree = None) -> ResidualFn:
        """residual(u, x, y, w) = w * (model - y), exactly 0 where w = 0 (padding)."""
        model, dtype = self.model, self.dtype

        def residual(u, xc, yc, wc):
            params = self.to_params(u)
            f = model(params, xc) if model_args is None else model(params, xc, model_args)
            return jnp.where(wc > 0, wc * (jnp.asarray(f, dtype) - yc), 0)

        return residual


def make_problem(model: Callable, p0: PyTree, bounds, config: Config, dtype,
                 sample: Data | None = None, model_args: PyTree = None) -> Problem:
    """Flatten `p0` and `bounds`, build the normalization, place the start.

    With a data `sample` (the warmup subsample), each parameter's influence on
    the residuals at p0 floors its `p0` scale (`_normalize.make_normalization`).
    """
    p0 = jax.tree.map(lambda a: jnp.asarray(a, dtype), p0)
    theta0, unravel = ravel(p0)
    lb, ub = flat_bounds(bounds, p0, dtype)
    influence = None
    if sample is not None:
        identity = Normalization(jnp.zeros_like(theta0), jnp.ones_like(theta0))
        in_theta = Problem(model, unravel, identity, lb, ub, theta0).residual(model_args)
        influence = parameter_influence(in_theta, theta0, sample, config.jacobian,
                                        matrix_free(config, theta0.shape[0]))
    norm = make_normalization(theta0, lb, ub, config.normalization, influence)
    lower, upper = norm.bounds(lb, ub)
    u0 = jnp.clip(norm.to_normalized(theta0), lower, upper)
    return Problem(model, unravel, norm, lb, ub, u0)


def parameter_influence(residual: ResidualFn, theta, sample: Data,
                        mode: JacobianMode, without_matrix: bool = False) -> Float[Array, " p"]:
    """||d r / d theta_j|| over the sample: the column norms of the Jacobian at `theta`
    (`without_matrix`: their matrix-free estimate, `_matrix_free`)."""
    if without_matrix:
        return _matrix_free.evaluate(residual, theta, sample).column_norms
    acc = empty_accumulator(theta.shape[0], theta.dtype, qr=False)
    forward = use_forward_mode(mode, theta.shape[0], sample.n)
    acc = fold_chunk(residual, theta, acc, sample.x, sample.y, sample.weight, forward)
    return jnp.sqrt(jnp.diagonal(acc.jtj))


def flat_bounds(bounds, p0: PyTree, dtype, xp=jnp) -> tuple[jax.Array, jax.Array]:
    """`(lower, upper)` as flat (p,) arrays in ravel order of `p0`; `xp=numpy` gives numpy
    arrays (the input checks, which must not pay for eager JAX operations)."""
    p = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(p0))
    if bounds is None:
        return xp.full(p, -np.inf, dtype), xp.full(p, np.inf, dtype)
    lower, upper = bounds
    return _flat_bound(lower, p0, p, dtype, xp), _flat_bound(upper, p0, p, dtype, xp)


def _flat_bound(b, p0, p: int, dtype, xp) -> jax.Array:
    if jax.tree.structure(b) == jax.tree.structure(p0):
        leaves = [xp.broadcast_to(xp.asarray(bl, dtype), np.shape(pl)).ravel()
                  for bl, pl in zip(jax.tree.leaves(b), jax.tree.leaves(p0), strict=True)]
        return xp.concatenate(leaves) if leaves else xp.zeros(0, dtype)
    return xp.broadcast_to(xp.asarray(b, dtype).ravel(), (p,))
