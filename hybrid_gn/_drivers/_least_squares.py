"""`least_squares` with the signature and result of `scipy.optimize.least_squares`.

`fun(x, *args, **kwargs)` returns the residual vector. It runs through
`fit` with the residual index as the data and y = 0 (`_scipy_model`), so it
gets the same checks, normalization, trust region and stopping tests as
every other fit, and a function JAX can trace is compiled and
differentiated exactly; a numpy function is evaluated on the host with
scipy's finite differences.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .. import _host as host
from .._config import Config, robust_loss
from .._result import Result, Status
from .._validate import real_array
from ._fit import fit
from ._scipy_model import (
    Derivatives,
    IndexedModel,
    ResidualFunction,
    abstract,
    jax_values,
    on_host,
    split_data,
)
from ._scipy_options import (
    check_bounds,
    check_loss,
    check_method,
    scipy_options,
    scipy_status,
    split_bounds,
)


@dataclasses.dataclass(frozen=True)
class LeastSquaresResult:
    """The outcome of `least_squares`: the fields of scipy's `OptimizeResult`.

    Attributes:
        x: the solution, (n,).
        cost: the cost at `x`: half the sum of rho of the squared residuals (half
            their sum of squares for the linear loss).
        fun: the residuals at `x`, (m,).
        jac: the Jacobian at `x`, (m, n) (exact for a function JAX can trace,
            finite differences or the given `jac` for one on the host), its rows
            scaled for a robust loss as scipy's 'trf' scales them.
        grad: the gradient of the cost.
        optimality: the first-order optimality: the uniform norm of the
            gradient scaled as scipy's 'trf' scales it near bounds.
        active_mask: per variable, -1 (at its lower bound), 1 (upper) or 0.
        nfev: passes over the residuals (each evaluates them and their
            Jacobian once).
        njev: Jacobian evaluations (one per pass).
        status: scipy's code: 1 gtol, 2 ftol, 3 xtol, 0 evaluation cap
            reached, -1 stopped otherwise (a stalled trust region).
        message: the reason, in scipy's words where scipy has them.
        success: whether `status` > 0.

    Examples:
        >>> import jax.numpy as jnp
        >>> import hybrid_gn
        >>> result = hybrid_gn.least_squares(lambda p: jnp.array([p[0] - 1.0, p[1] + 2.0]),
        ...                                  [0.0, 0.0])
        >>> result.x.round(6).tolist(), result.success, result.active_mask.tolist()
        ([1.0, -2.0], True, [0, 0])
    """

    x: np.ndarray
    cost: float
    fun: np.ndarray
    jac: np.ndarray
    grad: np.ndarray
    optimality: float
    active_mask: np.ndarray
    nfev: int
    njev: int
    status: int
    message: str
    success: bool


def least_squares(fun, x0, jac="2-point", bounds=(-np.inf, np.inf), method="trf", ftol=1e-8,
                  xtol=1e-8, gtol=1e-8, x_scale=None, loss="linear", f_scale=1.0,
                  diff_step=None, tr_solver=None, tr_options=None, jac_sparsity=None,
                  max_nfev=None, verbose=0, args=(), kwargs=None, callback=None, workers=None,
                  *, config: Config | None = None) -> LeastSquaresResult:
    """Minimize `0.5 * sum(fun(x)**2)` subject to bounds, like scipy's `least_squares`.

    A drop-in for `scipy.optimize.least_squares`: the same arguments, read
    and checked as scipy reads them, and a result with scipy's fields. The
    solver underneath is this library's trust-region Gauss-Newton for every
    `method`. A `fun` written with `jax.numpy` is compiled and differentiated
    exactly (a string `jac` then has no effect); one written with `numpy` is
    evaluated on the host, differentiated by `jac` (scipy's finite
    differences, or the callable), with a `HostModelWarning`.

    Args:
        fun: `fun(x, *args, **kwargs)` -> the (m,) residuals.
        x0: the (n,) start.
        jac: '2-point', '3-point', 'cs' or `jac(x, *args, **kwargs)` -> (m, n).
        bounds: `(lb, ub)` or a `scipy.optimize.Bounds`.
        method: 'trf', 'dogbox' or 'lm' ('lm' refuses bounds, as scipy does).
        ftol: stop when the relative reduction of the cost is below it
            (None: not tested).
        xtol: stop when the relative step is below it (None: not tested).
        gtol: stop when the scaled gradient is below it (None: not tested).
        x_scale: checked as scipy checks it; the variables are scaled by
            `Config.normalization` instead.
        loss: 'linear', 'soft_l1', 'huber', 'cauchy', 'arctan', or a callable
            `rho(z) -> (3, m)` written with jax.numpy (`Config.loss`).
        f_scale: the residual scale of a robust loss (`Config.f_scale`).
        diff_step: the relative finite-difference step (host functions).
        tr_solver: None, 'exact' or 'lsmr': checked; the step solver is
            this library's.
        tr_options: must be empty.
        jac_sparsity: checked for its shape; the differences are dense.
        max_nfev: the cap on passes over the residuals (`Config.max_iter`).
        verbose: 0, 1 (print the outcome) or 2 (also each iteration).
        args: extra positional arguments of `fun` and `jac`.
        kwargs: extra keyword arguments of `fun` and `jac`.
        callback: must be None.
        workers: accepted; evaluations run one after another.
        config: a `Config` for everything else (the keywords above are set
            on it, defaults included).

    Returns:
        A `LeastSquaresResult`.

    Raises:
        ValueError: bad input, with scipy's message where scipy has one.

    Examples:
        >>> import numpy as np
        >>> import jax.numpy as jnp
        >>> import hybrid_gn
        >>> t = np.linspace(0.0, 3.0, 30)
        >>> y = 2.0 * np.exp(-1.5 * t)
        >>> def residuals(p, t, y):
        ...     return p[0] * jnp.exp(-p[1] * t) - y
        >>> result = hybrid_gn.least_squares(residuals, [1.0, 1.0], args=(t, y),
        ...                                  bounds=([0.0, 0.0], [10.0, 10.0]))
        >>> print(np.round(result.x, 4), result.success, result.status in (1, 2, 3))
        [2.  1.5] True True
    """
    x0 = _start(x0)
    n = x0.size
    lb, ub = split_bounds(bounds, n)
    _check_arguments(method, jac, loss, f_scale, lb, ub)
    check_bounds(x0, lb, ub)
    options = scipy_options(
        {"ftol": ftol, "xtol": xtol, "gtol": gtol, "x_scale": x_scale, "loss": loss,
         "f_scale": f_scale, "diff_step": diff_step, "tr_solver": tr_solver,
         "tr_options": tr_options, "max_nfev": max_nfev, "verbose": verbose,
         "callback": callback, "workers": workers, "config": config}, n, method,
        "least_squares")
    data, constant = split_data((tuple(args), dict(kwargs or {})))
    residual = ResidualFunction(fun, constant)
    derivatives = Derivatives(ResidualFunction(jac, constant) if callable(jac) else jac,
                              options.rel_step, tuple(lb.tolist()), tuple(ub.tolist()))
    theta = jax.ShapeDtypeStruct((n,), jnp.asarray(x0).dtype)
    host_function = on_host(residual, derivatives.jac, theta, abstract(data))
    if host_function:
        host.warn_host_model("fun", stacklevel=2)
    m = _residual_count(residual, x0, data, host_function, method)
    _check_sparsity(jac_sparsity, m, n)
    model = IndexedModel(jax_values(residual, derivatives, m, host_function), m)
    bounded = bool(np.any(np.isfinite(lb) | np.isfinite(ub)))
    result = fit(model, jnp.asarray(x0), np.arange(m), np.zeros(m),
                 bounds=(lb, ub) if bounded else None, args=(data, None),
                 config=dataclasses.replace(options.config, chunk_size=m))
    out = _result(model, data, result, lb, ub, options.config)
    if options.verbose >= 1:
        print(f"{out.message}\nFunction evaluations {out.nfev}, final cost {out.cost:.4e}, "
              f"first-order optimality {out.optimality:.2e}.")
    return out


def _start(x0) -> np.ndarray:
    if np.iscomplexobj(x0):
        raise ValueError("`x0` must be real.")
    x0 = np.atleast_1d(np.asarray(real_array("x0", x0), float))
    if x0.ndim > 1:
        raise ValueError("`x0` must have at most 1 dimension.")
    return x0


def _check_arguments(method, jac, loss, f_scale, lb, ub) -> None:
    if method == "lm" and np.any(np.isfinite(lb) | np.isfinite(ub)):
        raise ValueError("Method 'lm' doesn't support bounds.")
    check_method(method, False, loss)
    if jac not in ("2-point", "3-point", "cs") and not callable(jac):
        raise ValueError("`jac` must be '2-point', '3-point', 'cs' or callable.")
    check_loss(loss, f_scale)


def _residual_count(residual, x0, data, host_function: bool, method: str) -> int:
    """m, from the residuals at x0 (checked as scipy checks them)."""
    if host_function:
        f0 = np.asarray(residual(x0, data))
    else:
        f0 = np.asarray(residual(jnp.asarray(x0), data))
    if f0.ndim > 1:
        raise ValueError(f"`fun` must return at most 1-d array_like. f0.shape: {f0.shape}")
    if not np.all(np.isfinite(f0)):
        raise ValueError("Residuals are not finite in the initial point.")
    if method == "lm" and f0.size < x0.size:
        raise ValueError("Method 'lm' doesn't work when the number of residuals is less than "
                         "the number of variables.")
    return f0.size


def _check_sparsity(jac_sparsity, m: int, n: int) -> None:
    if jac_sparsity is not None and np.shape(np.atleast_2d(jac_sparsity)) != (m, n):
        raise ValueError("`jac_sparsity` has wrong shape.")


def _result(model: IndexedModel, data, result: Result, lb, ub, config: Config
            ) -> LeastSquaresResult:
    """scipy's fields at the solution of `result`."""
    x = np.asarray(result.params)
    index = np.arange(model.m)

    def residuals(theta):
        return model(theta, index, (data, None))

    theta = jnp.asarray(x)
    f = residuals(theta)
    loss = robust_loss(config)
    root, scaled = loss.scale(f)  # scipy's loss-scaled Jacobian rows and residuals
    jacobian = np.asarray(root[:, None] * jax.jacfwd(residuals)(theta))
    grad = jacobian.T @ np.asarray(scaled)
    code, message = scipy_status(Status(int(result.status)), "trf")
    passes = int(result.passes)
    xtol = config.xtol if config.xtol is not None else 0.0
    return LeastSquaresResult(
        x=x, cost=float(loss.cost(f)), fun=np.asarray(f), jac=jacobian, grad=grad,
        optimality=float(np.linalg.norm(grad * _scaling(x, grad, lb, ub), np.inf)),
        active_mask=_active(x, lb, ub, xtol), nfev=passes, njev=passes, status=code,
        message=message, success=code > 0)


def _scaling(x, g, lb, ub) -> np.ndarray:
    """Coleman-Li scaling (as scipy's 'trf' measures optimality): distance to the bound the
    gradient points at, 1 where that bound is infinite."""
    v = np.ones_like(x)
    toward_upper = (g < 0) & np.isfinite(ub)
    toward_lower = (g > 0) & np.isfinite(lb)
    v[toward_upper] = ub[toward_upper] - x[toward_upper]
    v[toward_lower] = x[toward_lower] - lb[toward_lower]
    return v


def _active(x, lb, ub, rtol: float) -> np.ndarray:
    """-1 / 1 where x is within rtol (relative) of its lower / upper bound, as scipy's
    `find_active_constraints`."""
    active = np.zeros(x.shape, int)
    if rtol == 0:
        active[x <= lb] = -1
        active[x >= ub] = 1
        return active
    lower, upper = x - lb, ub - x
    at_lower = np.isfinite(lb) & (lower <= np.minimum(upper, rtol * np.maximum(1, np.abs(lb))))
    at_upper = np.isfinite(ub) & (upper <= np.minimum(lower, rtol * np.maximum(1, np.abs(ub))))
    active[at_lower] = -1
    active[at_upper] = 1
    return active
