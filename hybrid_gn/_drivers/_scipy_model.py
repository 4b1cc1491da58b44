"""scipy-style functions as models of `fit`: the residual index is the data.

`least_squares(fun, x0)` has no data, and `curve_fit` allows an `xdata`
that is not one array with a point axis (any object `f` accepts), a model
evaluated on the host, or a covariance matrix that couples all points. In
those cases the model handed to `fit` evaluates all m values at once and
its "x" is the index of each residual: `model(params, index) =
values(params)[index]`, fitted to y (0 for `least_squares`). `fit` then
brings its checks, normalization, trust region and covariance unchanged,
and its chunks and warmup subsample are sets of indices. The functions'
own arguments (`xdata`, `args`, `kwargs`) travel as data when they are
arrays, so a new value needs no new program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _host as host
from .._model import dtype_of


class Opaque:
    """A value that is not an array (passed to the user's function as it is): compared
    by identity, so it can sit in a compiled program's key."""

    def __init__(self, value: Any):
        self.value = value


@dataclasses.dataclass(frozen=True)
class CurveFunction:
    """`curve_fit`'s `f(x, *theta)` as `(theta, data) -> values`; x is `data`, or the
    constant when `xdata` is not an array."""

    f: Callable
    constant: Opaque | None = None

    def __call__(self, theta, data):
        return self.f(self.constant.value if self.constant else data, *theta)


@dataclasses.dataclass(frozen=True)
class CurveJacobian:
    """`curve_fit`'s `jac(x, *theta)`, transposed when MINPACK's `col_deriv` is set."""

    jac: Callable
    constant: Opaque | None = None
    col_deriv: bool = False

    def __call__(self, theta, data):
        out = self.jac(self.constant.value if self.constant else data, *theta)
        return out.T if self.col_deriv else out


@dataclasses.dataclass(frozen=True)
class ResidualFunction:
    """`least_squares`'s `fun(theta, *args, **kwargs)` (or its `jac`) as `(theta, data)`,
    with `data = (args, kwargs)`, or the constant when they are not all arrays."""

    fun: Callable
    constant: Opaque | None = None

    def __call__(self, theta, data):
        args, kwargs = self.constant.value if self.constant else data
        return self.fun(theta, *args, **kwargs)


def split_data(value: Any) -> tuple[Any, Opaque | None]:
    """`(data, None)` when every leaf of `value` is an array, else `(None, Opaque(value))`."""
    leaves = jax.tree.leaves(value)
    if all(isinstance(leaf, np.ndarray | jax.Array) for leaf in leaves):
        return value, None
    return None, Opaque(value)


@dataclasses.dataclass(frozen=True)
class IndexedModel:
    """`model(params, index, (data, chol))`: the m values, whitened by the lower Cholesky
    factor `chol` of a covariance when there is one, at the residual `index`."""

    values: Callable  # (theta, data) -> (m,) or a scalar, a JAX function
    m: int

    def __call__(self, params, index, args):
        data, chol = args
        out = jnp.broadcast_to(jnp.asarray(self.values(params, data), params.dtype), (self.m,))
        if chol is not None:
            out = jax.scipy.linalg.solve_triangular(chol, out, lower=True)
        return out[index]


@dataclasses.dataclass(frozen=True)
class Derivatives:
    """How the m values are differentiated: `jac` is the user's (theta, data) -> (m, p)
    callable, or a finite-difference scheme used when the function runs on the host."""

    jac: Callable | str
    rel_step: tuple[float, ...] | None
    lb: tuple[float, ...]
    ub: tuple[float, ...]


def on_host(fun: Callable, jac: Callable | str, theta: jax.ShapeDtypeStruct,
            data_struct: Any, identity: Hashable | None = None) -> bool:
    """Whether `fun` (or the user's `jac`) must run on the host: JAX cannot trace it."""
    return traced_output(fun, jac, theta, data_struct, identity) is None


def traced_output(fun: Callable, jac: Callable | str, theta: jax.ShapeDtypeStruct,
                  data_struct: Any, identity: Hashable | None = None
                  ) -> jax.ShapeDtypeStruct | None:
    """What `fun` returns when JAX can trace it (and the user's `jac`), else None.
    `identity`: a code signature of both, under which the answer is remembered."""
    out = host.output_shape(fun, theta, data_struct, identity=identity)
    if out is None or not callable(jac):
        return out
    jac_identity = None if identity is None else ("jac", identity)
    return out if host.traceable(jac, theta, data_struct, identity=jac_identity) else None


def jax_values(fun: Callable, derivatives: Derivatives, m: int, on_the_host: bool) -> Callable:
    """`fun` as a JAX function of `(theta, data)`: traced (differentiated by the user's
    `jac` when there is one), or on the host through `jax.pure_callback`."""
    jac = derivatives.jac
    if on_the_host:
        return host.HostFunction(fun, jac, m, derivatives.rel_step, derivatives.lb,
                                 derivatives.ub)
    return host.GivenJacobian(fun, jac, m) if callable(jac) else fun


def abstract(data: Any) -> Any:
    """The abstract value of `data` (a pytree of arrays, or None)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), dtype_of(a)), data)
