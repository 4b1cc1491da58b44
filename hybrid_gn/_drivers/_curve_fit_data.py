"""`curve_fit`'s inputs read as scipy reads them: data, NaN policy, sigma, start, bounds.

The rules are scipy's, argument by argument: `check_finite=None` checks
unless a `nan_policy` is given; `nan_policy='omit'` drops the points where
x or y is NaN, with their entries of `sigma`; `'propagate'` is refused when
the data is not checked, as scipy refuses it; lists and tuples of x become
one float array, other objects are passed to `f` as they are; `ydata` may
broadcast against `f`'s output; `sigma` is a scalar, one standard deviation
per point, or a covariance matrix (whitened by its Cholesky factor).
"""

from __future__ import annotations

import inspect
import types
from typing import Any, NamedTuple

import jax
import numpy as np

from .._validate import real_array
from ._scipy_options import split_bounds


class CurveData(NamedTuple):
    xdata: Any  # a float array (any shape), or an object passed to f as it is
    ydata: np.ndarray  # (m,) after broadcasting against f's output
    sigma: np.ndarray | None  # (m,) standard deviations, or None
    chol: np.ndarray | None  # (m, m) lower Cholesky factor of a covariance sigma


def read_data(xdata, ydata, sigma, check_finite: bool | None, nan_policy) -> tuple:
    """`(xdata, ydata, sigma, check_finite)` as scipy's `curve_fit` reads them."""
    check_finite = (nan_policy is None) if check_finite is None else bool(check_finite)
    ydata = _floats("ydata", ydata, check_finite)
    if isinstance(xdata, list | tuple | np.ndarray | jax.Array):
        xdata = _floats("xdata", xdata, check_finite)
    if ydata.size == 0:
        raise ValueError("`ydata` must not be empty!")
    if not check_finite and nan_policy is not None:
        xdata, ydata, sigma = _apply_nan_policy(xdata, ydata, sigma, nan_policy)
    return xdata, ydata, sigma, check_finite


def _floats(name: str, a, check_finite: bool) -> np.ndarray:
    a = np.asarray(real_array(name, a), float)
    if check_finite and not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf: array must not contain infs or NaNs "
                         f"(clean the data, pass nan_policy='omit', or check_finite=False)")
    return a


def _apply_nan_policy(xdata, ydata, sigma, nan_policy):
    if nan_policy == "propagate":
        raise ValueError("`nan_policy='propagate'` is not supported by this function.")
    if nan_policy not in ("raise", "omit"):
        raise ValueError("nan_policy must be one of {None, 'raise', 'omit'}")
    x_nan = np.isnan(xdata) if isinstance(xdata, np.ndarray) else np.zeros((), bool)
    if nan_policy == "raise":
        if np.any(x_nan) or np.any(np.isnan(ydata)):
            raise ValueError("The input contains nan values")
        return xdata, ydata, sigma
    has_nan = x_nan.any(axis=tuple(range(x_nan.ndim - 1))) | np.isnan(ydata)
    if not np.any(has_nan):
        return xdata, ydata, sigma
    keep = ~has_nan
    if sigma is not None:
        sigma = np.asarray(sigma)
        sigma = sigma[keep] if sigma.ndim == 1 else (sigma[keep][:, keep] if sigma.ndim == 2
                                                      else sigma)
    return xdata[..., keep], ydata[keep], sigma


def broadcast(xdata, ydata: np.ndarray, sigma, out_shape: tuple[int, ...]) -> CurveData:
    """The data against f's output shape: y broadcast to the (m,) residuals, sigma read."""
    shape = tuple(out_shape)
    if shape != ydata.shape:  # (np.broadcast_shapes costs more than a small fit's checks)
        try:
            shape = np.broadcast_shapes(shape, ydata.shape)
        except ValueError:
            shape = None
    if shape is None or len(shape) > 1:
        raise ValueError(f"f(xdata, *p0) - ydata must be one residual per point (1-D): f "
                         f"returned shape {tuple(out_shape)}, ydata has shape {ydata.shape}")
    m = shape[0] if shape else 1
    ydata = ydata if ydata.shape == (m,) else np.broadcast_to(ydata, (m,))
    if sigma is None:
        return CurveData(xdata, ydata, None, None)
    sigma = np.asarray(real_array("sigma", sigma), float)
    if sigma.size == 1 or sigma.shape == (m,):
        return CurveData(xdata, ydata, np.broadcast_to(sigma.ravel(), (m,)), None)
    if sigma.shape != (m, m):
        raise ValueError(f"`sigma` has incorrect shape. sigma must have shape (n,) = ({m},) "
                         f"or be a 2-D sigma of shape (n, n) = ({m}, {m}), got {sigma.shape}")
    return CurveData(xdata, ydata, None, _cholesky(sigma))


def _cholesky(sigma: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(sigma)):
        raise ValueError("sigma contains NaN or Inf")
    try:
        return np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError as error:
        raise ValueError("`sigma` must be positive definite.") from error


def start_and_bounds(f, p0, bounds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p0 (scipy's feasible default when None) and the bounds as (p,) arrays."""
    n = count_params(f, p0)
    p0 = None if p0 is None else np.atleast_1d(np.asarray(real_array("p0", p0), float))
    if p0 is not None and p0.ndim != 1:
        raise ValueError(f"p0 must be 1-D, got shape {p0.shape}")
    if p0 is not None and n is not None and p0.size != n:
        raise ValueError(f"p0 has {p0.size} values but f takes {n} parameters")
    n = p0.size if p0 is not None else n
    lb, ub = split_bounds(bounds, n)
    return (initialize_feasible(lb, ub) if p0 is None else p0), lb, ub


def count_params(f, p0) -> int | None:
    """Number of parameters from f's signature (None if it takes *args and p0 is given)."""
    kinds = _parameter_kinds(f)
    if kinds is not None:
        if inspect.Parameter.VAR_POSITIONAL not in kinds:
            positional = [k for k in kinds if k in (inspect.Parameter.POSITIONAL_ONLY,
                                                    inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            if len(positional) >= 2:
                return len(positional) - 1
    if p0 is None:
        raise ValueError("Unable to determine number of fit parameters.")
    return None


def _parameter_kinds(f) -> list | None:
    """The kinds of f's parameters, as `inspect.signature` gives them (None without one);
    a plain function's are read off its code (a tenth of the cost)."""
    if (isinstance(f, types.FunctionType) and not hasattr(f, "__wrapped__")
            and not hasattr(f, "__signature__")):
        code = f.__code__
        kinds = [inspect.Parameter.POSITIONAL_ONLY] * code.co_posonlyargcount + [
            inspect.Parameter.POSITIONAL_OR_KEYWORD] * (code.co_argcount
                                                        - code.co_posonlyargcount)
        return kinds + [inspect.Parameter.VAR_POSITIONAL] * bool(
            code.co_flags & inspect.CO_VARARGS)
    try:
        return [p.kind for p in inspect.signature(f).parameters.values()]
    except (TypeError, ValueError):
        return None


def initialize_feasible(lb: np.ndarray, ub: np.ndarray) -> np.ndarray:
    """scipy's default start: ones, moved inside the bounds where they are finite."""
    p0 = np.ones(lb.shape)
    both = np.isfinite(lb) & np.isfinite(ub)
    p0[both] = 0.5 * (lb[both] + ub[both])
    only_lb = np.isfinite(lb) & ~np.isfinite(ub)
    p0[only_lb] = lb[only_lb] + 1
    only_ub = ~np.isfinite(lb) & np.isfinite(ub)
    p0[only_ub] = ub[only_ub] - 1
    return p0
