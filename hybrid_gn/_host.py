"""Models JAX cannot trace (written with numpy, scipy, plain Python), evaluated on the host.

scipy users bring models written with `numpy`. Rather than refuse them, the
scipy-style drivers run the same jitted pipeline with the model evaluated
on the host through `jax.pure_callback`. Its derivative is a `custom_jvp`
whose tangent is `J(theta) @ dtheta`, with `J` computed on the host from
the primal values only (the user's `jac`, or scipy's finite differences,
`_finite_difference`): so it is right under `jax.vmap` over tangents, which
is how the forward-mode Jacobian is formed, and under reverse mode (the
tangent is linear). Each pass over the data costs one host evaluation of
the model and one of its Jacobian (p + 1 evaluations for '2-point').
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from . import _finite_difference as finite_difference
from ._code_signature import remember

# what an abstract trace of a numpy model raises
UNTRACEABLE = (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError)


class HostModelWarning(UserWarning):
    """The model could not be traced by JAX, so it is evaluated on the host.

    `curve_fit` and `least_squares` accept models written with `numpy` (or
    anything else JAX cannot trace) and evaluate them through
    `jax.pure_callback`, with finite-difference (or the given `jac`)
    derivatives. That works, with scipy's answers, but each evaluation
    leaves the compiled program; written with `jax.numpy` the model is
    compiled in and differentiated exactly.

    Examples:
        >>> import warnings
        >>> import numpy as np
        >>> import hybrid_gn
        >>> def line(x, a, b):
        ...     return a * np.asarray(x) + b  # numpy: JAX cannot trace it
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     popt, _ = hybrid_gn.curve_fit(line, [0.0, 1.0, 2.0], [1.0, 3.0, 5.1])
        >>> caught[0].category is hybrid_gn.HostModelWarning
        True
        >>> print(np.round(popt, 2))
        [2.05 0.98]
    """


def traceable(fn: Callable, *abstract_args, identity: Hashable | None = None) -> bool:
    """Whether JAX can trace `fn` on these abstract arguments (`jax.ShapeDtypeStruct`s)."""
    return output_shape(fn, *abstract_args, identity=identity) is not None


def output_shape(fn: Callable, *abstract_args, identity: Hashable | None = None
                 ) -> jax.ShapeDtypeStruct | None:
    """`jax.eval_shape(fn, ...)`, or None when JAX cannot trace `fn`.

    Only the errors of a model that converts tracers to numpy or Python values
    mean "evaluate on the host"; any other error is the model's own and is
    raised. With an `identity` (a code signature of what `fn` computes) the
    answer is remembered: a new lambda of a known model is not traced again.
    """
    if identity is not None:
        leaves, structure = jax.tree.flatten(abstract_args)
        identity = (identity, structure, tuple((a.shape, a.dtype) for a in leaves))
        if identity in _SHAPES:
            return _SHAPES[identity]
    try:
        shape = jax.eval_shape(fn, *abstract_args)
    except UNTRACEABLE:
        shape = None
    if identity is not None:
        remember(_SHAPES, identity, shape)
    return shape


_SHAPES: dict[Hashable, jax.ShapeDtypeStruct | None] = {}


def warn_host_model(name: str, stacklevel: int) -> None:
    """Say once per fit that `name` runs on the host, and how to make it traceable."""
    warnings.warn(f"{name} could not be traced by JAX, so it is evaluated on the host through "
                  f"jax.pure_callback with finite-difference (or the given jac) derivatives: "
                  f"slower than a compiled model. To compile it in and differentiate it "
                  f"exactly, write it with jax.numpy (import jax.numpy as jnp) instead of numpy "
                  f"and without Python control flow on the parameters.", HostModelWarning,
                  stacklevel=stacklevel + 1)


@dataclasses.dataclass(frozen=True)
class HostFunction:
    """`fun(theta, data) -> (m,)`, evaluated on the host, as a JAX function.

    `fun(theta, data)` and a callable `jac(theta, data) -> (m, p)` take and
    return numpy arrays; a string `jac` names a finite-difference scheme,
    taken with `rel_step` and kept inside `[lb, ub]`. Compares by its fields
    (the user's functions by identity), so one function reuses its program.
    """

    fun: Callable[[np.ndarray, Any], np.ndarray]
    jac: Callable[[np.ndarray, Any], np.ndarray] | str
    m: int
    rel_step: tuple[float, ...] | None = None
    lb: tuple[float, ...] | float = -np.inf
    ub: tuple[float, ...] | float = np.inf

    def __call__(self, theta: jax.Array, data) -> jax.Array:
        return _evaluate(self, theta, data)

    def values(self, theta: jax.Array, data) -> jax.Array:
        return _on_host(self._values, (self.m,), theta, data)

    def jacobian(self, theta: jax.Array, data) -> jax.Array:
        return _on_host(self._jacobian, (self.m, theta.shape[0]), theta, data)

    def _values(self, theta, data) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.fun(np.asarray(theta), data)), (self.m,))

    def _jacobian(self, theta, data) -> np.ndarray:
        theta = np.asarray(theta)
        if callable(self.jac):
            return np.asarray(self.jac(theta, data), float).reshape(self.m, theta.size)
        return finite_difference.jacobian(
            lambda t: self.fun(t, data), theta, self._values(theta, data), self.jac,
            None if self.rel_step is None else np.asarray(self.rel_step), np.asarray(self.lb),
            np.asarray(self.ub))


@dataclasses.dataclass(frozen=True)
class GivenJacobian:
    """`fun(theta, data) -> (m,)` traced by JAX, differentiated by the user's traceable
    `jac(theta, data) -> (m, p)` rather than by automatic differentiation."""

    fun: Callable[[jax.Array, Any], jax.Array]
    jac: Callable[[jax.Array, Any], jax.Array]
    m: int

    def __call__(self, theta: jax.Array, data) -> jax.Array:
        return _evaluate(self, theta, data)

    def values(self, theta: jax.Array, data) -> jax.Array:
        return jnp.broadcast_to(jnp.asarray(self.fun(theta, data), theta.dtype), (self.m,))

    def jacobian(self, theta: jax.Array, data) -> jax.Array:
        return jnp.asarray(self.jac(theta, data), theta.dtype).reshape(self.m, theta.shape[0])


def _on_host(fn: Callable, shape: tuple[int, ...], theta: jax.Array, data) -> jax.Array:
    def call(theta, data):
        return np.asarray(np.broadcast_to(fn(theta, data), shape), theta.dtype)

    return jax.pure_callback(call, jax.ShapeDtypeStruct(shape, theta.dtype), theta, data,
                             vmap_method="sequential")


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _evaluate(spec: HostFunction | GivenJacobian, theta: jax.Array, data) -> jax.Array:
    return spec.values(theta, data)


def _evaluate_jvp(spec: HostFunction | GivenJacobian, primals, tangents):
    theta, data = primals
    dtheta, ddata = tangents
    if any(not isinstance(t, SymbolicZero) for t in jax.tree.leaves(
            ddata, is_leaf=lambda t: isinstance(t, SymbolicZero))):
        raise TypeError("a model with a given or finite-difference Jacobian is differentiated "
                        "with respect to its parameters only; write it with jax.numpy (and no "
                        "jac) to differentiate with respect to its data")
    out = spec.values(theta, data)
    if isinstance(dtheta, SymbolicZero):
        return out, jnp.zeros_like(out)
    return out, spec.jacobian(theta, data) @ dtheta


_evaluate.defjvp(_evaluate_jvp, symbolic_zeros=True)
