"""`curve_fit` with the signature and semantics of `scipy.optimize.curve_fit`.

Every argument is scipy's and is read by scipy's rules (`_curve_fit_data`,
`_scipy_options`); underneath runs `fit`, this library's trust-region
Gauss-Newton, whatever the `method`. A model JAX can trace, with an `xdata`
that has one entry per point, is fitted chunk by chunk like any `fit`;
otherwise (a numpy model, evaluated on the host; a `jac`; a covariance
`sigma`; an `xdata` of another kind) the model computes all residuals at
once and the residual index is the data (`_scipy_model`).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _host as host
from .._code_signature import code_signature, remember
from .._config import Config
from .._model import Bound, dtype_of
from .._result import Result, Status
from .._validate import Inputs, check_fit, check_input_values
from . import _curve_fit_data as data
from ._fit import _fit
from ._scipy_model import (
    CurveFunction,
    CurveJacobian,
    Derivatives,
    IndexedModel,
    Opaque,
    abstract,
    jax_values,
    traced_output,
)
from ._scipy_options import (
    CovarianceWarning,
    Options,
    check_bounds,
    check_method,
    scipy_options,
    scipy_status,
)


class _Problem(NamedTuple):
    """What `fit` receives from one `curve_fit` call."""

    model: Callable
    x: Any
    y: np.ndarray
    sigma: np.ndarray | None
    args: Any  # (data, chol) for an IndexedModel, None for a chunked model
    chunk_size: int | None  # None: the configuration's; m when all residuals come at once


class _Plan(NamedTuple):
    """What `check_fit` found of a chunked problem (a traced `f`, x with a point axis),
    kept for the next call of the same code on data of the same shapes: only the values
    are then checked, and nothing is traced or flattened again."""

    config: Config  # the call's (the key holds its id: hashing a Config costs ~0.1 ms)
    model: Bound
    arrays: list  # the model's arrays (`fit`'s model_args)
    points: int  # m, the residuals (ydata broadcast against f's output)
    multi_dim: bool  # xdata has several rows (its point axis is its last)


# plans by the code signature of (f, jac) and the shapes and options of the call
_PLANS: dict[Any, _Plan] = {}


def curve_fit(f, xdata, ydata, p0=None, sigma=None, absolute_sigma=False, check_finite=None,
              bounds=(-np.inf, np.inf), method=None, jac=None, *, full_output=False,
              nan_policy=None, **kwargs):
    """Fit `f(xdata, *params)` to `ydata`; returns `(popt, pcov)` like scipy.

    A drop-in for `scipy.optimize.curve_fit`: same signature, same reading of
    every argument, same errors and warnings (`CovarianceWarning` is a
    `scipy.optimize.OptimizeWarning`), the answers of a converged scipy fit.
    Underneath runs this library's trust-region Gauss-Newton (`fit`) for
    every `method`. `f` written with `jax.numpy` is compiled and
    differentiated exactly; written with `numpy` it is evaluated on the host
    with scipy's finite differences (`HostModelWarning` says so once).

    Args:
        f: the model, `f(xdata, *params)`.
        xdata: the independent variable(s): (n,) or (k, n) (lists and tuples
            become a float array), or any object `f` accepts.
        ydata: the (n,) data (it may broadcast against `f`'s output).
        p0: the start; None starts from ones moved inside finite bounds, the
            number of parameters taken from `f`'s signature.
        sigma: None, a scalar or (n,) standard deviations, or an (n, n)
            covariance matrix of `ydata`.
        absolute_sigma: whether `sigma` is in the units of `ydata` (else
            `pcov` is scaled by the reduced chi-square).
        check_finite: refuse NaN/Inf in the data; None: True unless a
            `nan_policy` is given.
        bounds: `(lb, ub)` (scalars or one value per parameter) or a
            `scipy.optimize.Bounds`.
        method: 'lm' (the default without bounds or robust loss: refused
            with them, as scipy does), 'trf' (the default otherwise) or 'dogbox'; they
            choose scipy's codes and messages (`ier`, `mesg`) and extra
            outputs, while the solver is always this library's.
        jac: None (automatic differentiation; '2-point' for a model on the
            host), a callable `jac(x, *params)`, or '2-point', '3-point',
            'cs' (the finite differences of a model on the host; a model JAX
            can trace is differentiated exactly).
        full_output: also return `infodict`, `mesg` and `ier`.
        nan_policy: None, 'raise' or 'omit' (drop points where x or y is
            NaN, and their entries of `sigma`).
        **kwargs: scipy's (`ftol`, `xtol`, `gtol`, `max_nfev`/`maxfev`,
            `diff_step`/`epsfcn`, `verbose`, `x_scale`, `tr_solver`, ...),
            `Config` fields, or `config=` a whole `Config`.

    Returns:
        `(popt, pcov)` as numpy arrays; with `full_output=True`,
        `(popt, pcov, infodict, mesg, ier)`: `infodict` has `nfev` (passes
        over the data) and `fvec` (the weighted residuals at popt), and for
        'lm' also `fjac`, `ipvt`, `qtf`; `ier` and `mesg` are scipy's for
        the method.

    Raises:
        RuntimeError: the fit does not converge, as scipy does.
        ValueError: bad input, with scipy's message where scipy has one.
        TypeError: an unknown keyword, or complex data.

    Warns:
        CovarianceWarning: the covariance could not be estimated.
        HostModelWarning: `f` could not be traced by JAX.

    Examples:
        >>> import jax.numpy as jnp
        >>> import numpy as np
        >>> import hybrid_gn
        >>> def f(x, a, b):
        ...     return a * jnp.exp(-b * x)
        >>> x = np.linspace(0.0, 4.0, 50)
        >>> y = 2.0 * np.exp(-1.3 * x) + 0.001 * np.cos(5.0 * x)
        >>> popt, pcov = hybrid_gn.curve_fit(f, x, y, p0=[1.0, 1.0])
        >>> print(np.round(popt, 2))
        [2.  1.3]
        >>> perr = np.sqrt(np.diag(pcov))  # standard errors
        >>> print(bool(np.all(perr < 0.01)))
        True
    """
    p0, lb, ub = data.start_and_bounds(f, p0, bounds)
    bounded = bool(np.any(np.isfinite(lb) | np.isfinite(ub)))
    loss = kwargs.get("loss", "linear")
    if method is None:  # scipy's choice; a robust loss also needs 'trf' (leastsq has none)
        method = "trf" if bounded or not (isinstance(loss, str) and loss == "linear") else "lm"
    check_method(method, bounded, loss)
    _check_jac(jac)
    xdata, ydata, sigma, check_finite = data.read_data(xdata, ydata, sigma, check_finite,
                                                       nan_policy)
    if method == "lm" and ydata.size != 1 and p0.size > ydata.size:
        raise TypeError(f"The number of func parameters={p0.size} must not exceed the number "
                        f"of data points={ydata.size} (method 'lm' needs at least as many "
                        f"ydata points as p0 has parameters)")
    options = scipy_options(kwargs, p0.size, method, "curve_fit")
    check_bounds(p0, lb, ub)
    bounds = (lb, ub) if bounded else None
    # what f (and jac) compute, when their code tells it: a new lambda is not traced again
    identity = code_signature((f, jac)) if isinstance(xdata, np.ndarray) else None
    key = _plan_key(identity, xdata, ydata, sigma, p0, bounded, options)
    plan = None if key is None else _PLANS.get(key)
    config = options.config
    if plan is None or plan.config is not config:
        problem = _problem(f, jac, xdata, ydata, sigma, p0, lb, ub, options, identity)
        if problem.chunk_size is not None:
            config = dataclasses.replace(config, chunk_size=problem.chunk_size)
        inputs = check_fit(problem.model, p0, problem.x, problem.y, problem.sigma, bounds,
                           check_finite, config, problem.args)
        if key is not None and problem.args is None:
            remember(_PLANS, key, _Plan(options.config, inputs.model, inputs.model_args[0],
                                        problem.y.shape[0], xdata.ndim >= 2))
    else:
        problem = _planned_problem(plan, f, xdata, ydata, sigma)
        inputs = Inputs(plan.model, p0, problem.x, problem.y, problem.sigma, bounds,
                        (plan.arrays, None), None)
        check_input_values(inputs, check_finite, config)
    result = _fit(*inputs, absolute_sigma, config)
    return _outputs(problem, result, method, options.verbose, full_output)


def _plan_key(identity, xdata, ydata: np.ndarray, sigma, p0: np.ndarray, bounded: bool,
              options: Options):
    """The key of a call's `_Plan`, or None when the call has none (an `f` whose code does
    not identify it, an `xdata` that is not an array, an unhashable option)."""
    if identity is None:
        return None
    key = (identity, xdata.shape, ydata.shape, None if sigma is None else np.shape(sigma),
           p0.shape, bounded, id(options.config), options[1:], jax.config.jax_enable_x64)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _planned_problem(plan: _Plan, f, xdata: np.ndarray, ydata: np.ndarray, sigma) -> _Problem:
    """This call's chunked problem, its shapes known from `plan` (sigma's values read)."""
    curve = data.broadcast(xdata, ydata, sigma, (plan.points,))
    x = np.moveaxis(xdata, -1, 0) if plan.multi_dim else xdata
    return _Problem(_chunked_model(f, plan.multi_dim), x, curve.ydata, curve.sigma, None, None)


def _check_jac(jac) -> None:
    if not (jac is None or callable(jac) or jac in ("2-point", "3-point", "cs")):
        raise ValueError("`jac` must be '2-point', '3-point', 'cs' or callable.")


def _problem(f, jac, xdata, ydata, sigma, p0, lb, ub, options: Options, identity) -> _Problem:
    """The model and data handed to `fit`: chunked when it can be, by index otherwise
    (`identity`: the code signature of `(f, jac)`, or None)."""
    operand, constant = (xdata, None) if isinstance(xdata, np.ndarray) else (None, Opaque(xdata))
    fun = CurveFunction(f, constant)
    derivatives = Derivatives(
        "2-point" if jac is None else (CurveJacobian(jac, constant, options.col_deriv)
                                       if callable(jac) else jac),
        options.rel_step, tuple(lb.tolist()), tuple(ub.tolist()))
    theta = jax.ShapeDtypeStruct(p0.shape, dtype_of(p0))
    traced = traced_output(fun, derivatives.jac, theta, abstract(operand), identity)
    host_model = traced is None
    if host_model:
        host.warn_host_model("f", stacklevel=3)
        out_shape = np.shape(fun(p0, operand))
    else:
        out_shape = tuple(traced.shape)
    curve = data.broadcast(xdata, ydata, sigma, out_shape)
    m = curve.ydata.shape[0]
    if not host_model and not callable(jac) and curve.chol is None and _has_point_axis(
            xdata, m):
        multi_dim = xdata.ndim >= 2
        return _Problem(_chunked_model(f, multi_dim),
                        np.moveaxis(xdata, -1, 0) if multi_dim else xdata,
                        curve.ydata, curve.sigma, None, None)
    y = curve.ydata if curve.chol is None else np.linalg.solve(curve.chol, curve.ydata)
    model = IndexedModel(jax_values(fun, derivatives, m, host_model), m)
    return _Problem(model, np.arange(m), y, curve.sigma, (operand, curve.chol), m)


def _has_point_axis(xdata, m: int) -> bool:
    """Whether `xdata` is an array with its point axis (its last) of length m."""
    return isinstance(xdata, np.ndarray) and xdata.ndim >= 1 and xdata.shape[-1] == m


@functools.lru_cache(maxsize=128)
def _chunked_model(f, multi_dim_x: bool):
    """model(params, x) calling f(x, *params) on a chunk of points; cached so jit sees the
    same function for the same f."""
    def model(params, x):
        out = f(jnp.moveaxis(x, 0, -1) if multi_dim_x else x, *params)
        if jnp.ndim(out) == 0:
            out = jnp.broadcast_to(out, (x.shape[0],))
        return out

    return model


def _outputs(problem: _Problem, result: Result, method: str, verbose: int, full_output: bool):
    """scipy's return values (and its RuntimeError, warning and printout)."""
    status = Status(int(result.status))
    ier, mesg = scipy_status(status, method)
    if verbose >= 1:
        print(f"{mesg}\nFunction evaluations {int(result.passes)}, final cost "
              f"{float(result.cost):.4e}.")
    if not status.success:
        raise RuntimeError(f"Optimal parameters not found: {mesg}")
    popt, pcov = np.asarray(result.params), np.asarray(result.pcov)
    if not np.all(np.isfinite(pcov)):
        warnings.warn("Covariance of the parameters could not be estimated",
                      CovarianceWarning, stacklevel=3)
    if not full_output:
        return popt, pcov
    return popt, pcov, _infodict(problem, popt, result, method), mesg, ier


def _residuals(problem: _Problem, popt: jax.Array) -> jax.Array:
    """The weighted residuals at `popt`, scipy's `fvec`."""
    model = problem.model
    out = model(popt, problem.x) if problem.args is None else model(popt, problem.x,
                                                                    problem.args)
    fvec = out - problem.y
    return fvec if problem.sigma is None else fvec / problem.sigma


def _infodict(problem: _Problem, popt: np.ndarray, result: Result, method: str) -> dict:
    """scipy's `infodict`: nfev and fvec, and for 'lm' MINPACK's fjac, ipvt and qtf (R and
    Q^T fvec of an unpivoted QR of the weighted Jacobian at popt: ipvt is 1, 2, ..., p)."""
    theta = jnp.asarray(popt)
    fvec = np.asarray(_residuals(problem, theta))
    info = {"nfev": int(result.passes), "fvec": fvec}
    if method == "lm":
        jacobian = np.asarray(jax.jacfwd(lambda t: _residuals(problem, t))(theta))
        q, r = np.linalg.qr(jacobian)
        fjac = np.zeros((popt.size, fvec.size))
        fjac[:, :popt.size] = r.T
        info.update(fjac=fjac, ipvt=np.arange(1, popt.size + 1, dtype=np.int32),
                    qtf=q.T @ fvec)
    return info
