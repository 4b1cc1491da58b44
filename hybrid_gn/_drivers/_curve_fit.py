"""`curve_fit` with the signature and semantics of `scipy.optimize.curve_fit`.

`f(x, *params)` must be written with `jax.numpy`. A 1-D `sigma` divides the
residuals, a 2-D `sigma` is a covariance matrix (residuals whitened by its
Cholesky factor, so all points go in one chunk), `absolute_sigma` and the
pseudo-inverse covariance follow scipy exactly. Extra keyword options are
`Config` fields (e.g. `ftol`, `max_iter`, `chunk_size`); `maxfev`/`max_nfev`
map to `max_iter`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from .._config import Config
from .._result import Status
from .._validate import real_array
from ._fit import fit


class CovarianceWarning(UserWarning):
    """The covariance of the parameters could not be estimated (pcov is inf).

    `curve_fit` warns with it, as scipy does, when `pcov` is not finite: with
    no more points than parameters and relative sigma, for instance. It is a
    `UserWarning`, so it can be filtered or turned into an error with the
    `warnings` module.

    Examples:
        >>> import warnings
        >>> import hybrid_gn
        >>> def line(x, a, b):
        ...     return a * x + b
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     popt, pcov = hybrid_gn.curve_fit(line, [0.0, 1.0], [1.0, 3.0])
        >>> caught[0].category is hybrid_gn.CovarianceWarning
        True
        >>> print(pcov)
        [[inf inf]
         [inf inf]]
    """


def curve_fit(f, xdata, ydata, p0=None, sigma=None, absolute_sigma=False, check_finite=None,
              bounds=(-np.inf, np.inf), method=None, jac=None, *, full_output=False,
              **options):
    """Fit `f(xdata, *params)` to `ydata`; returns `(popt, pcov)` like scipy.

    A drop-in for `scipy.optimize.curve_fit`, with the same signature and
    semantics, running `fit` underneath. `f` must be written with
    `jax.numpy`. A 1-D `sigma` divides the residuals, a 2-D `sigma` is a
    covariance matrix (residuals whitened by its Cholesky factor, so all
    points go in one chunk); `absolute_sigma` and the pseudo-inverse
    covariance follow scipy exactly.

    Args:
        f: the model, `f(xdata, *params)`, returning one value per point.
        xdata: (n,) or (k, n) independent variable(s).
        ydata: the (n,) data.
        p0: the starting point; None starts from ones, moved inside the
            bounds where they are finite (scipy's default), and then the
            number of parameters comes from `f`'s signature.
        sigma: None, (n,) standard deviations, or an (n, n) covariance
            matrix of `ydata`.
        absolute_sigma: whether `sigma` is in the units of `ydata` (else
            `pcov` is scaled by the reduced chi-square).
        check_finite: None (scipy's default) or True checks the inputs for
            NaN/Inf.
        bounds: `(lb, ub)`, each a scalar or one value per parameter.
        method: accepted for compatibility ("lm", "trf", "dogbox" or None)
            and ignored: the solver is always the hybrid trust-region
            Gauss-Newton.
        jac: must be None: the Jacobian comes from automatic differentiation.
        full_output: also return scipy's extra outputs.
        **options: `Config` fields (e.g. `ftol`, `max_iter`, `chunk_size`),
            or `config=` a whole `Config`; `maxfev`/`max_nfev` map to
            `max_iter`.

    Returns:
        `(popt, pcov)` as numpy arrays; with `full_output=True`,
        `(popt, pcov, infodict, mesg, ier)` where `infodict` has `nfev`
        (passes over the data) and `fvec` (weighted residuals at popt),
        `mesg` is the status message and `ier` the `Status` code.

    Raises:
        RuntimeError: the fit does not converge, as scipy does.
        ValueError: bad input (shapes, bounds, NaN/Inf, a 2-D sigma that is
            not positive definite, an unknown `method`).
        TypeError: a `jac`, or both `config=` and other options.

    Warns:
        CovarianceWarning: the covariance could not be estimated (`pcov` is
            inf).

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
    check_finite = True if check_finite is None else bool(check_finite)
    if jac is not None:
        raise TypeError("jac is not supported: the Jacobian comes from automatic differentiation")
    if method not in (None, "lm", "trf", "dogbox"):
        raise ValueError(f"method must be None, 'lm', 'trf' or 'dogbox', got {method!r}")
    config = _config(options)
    p0, lb, ub = _start_and_bounds(f, p0, bounds)
    x, y, multi_dim_x = _points(xdata, ydata)
    whitened = sigma is not None and np.ndim(sigma) == 2
    fit_sigma = None
    if whitened:
        x, y = _whitened(sigma, x, y, check_finite)
        config = dataclasses.replace(config, chunk_size=y.shape[0])  # one chunk: the whole
    elif sigma is not None:
        fit_sigma = np.asarray(sigma, float)

    model = _wrapped_model(f, multi_dim_x, whitened)
    bound_arg = None if np.all(np.isneginf(lb)) and np.all(np.isposinf(ub)) else (lb, ub)
    result = fit(model, jnp.asarray(p0), x, y, sigma=fit_sigma, bounds=bound_arg,
                 absolute_sigma=absolute_sigma, check_finite=check_finite, config=config)
    status = Status(int(result.status))
    if not status.success:
        raise RuntimeError(f"Optimal parameters not found: {status.message}")
    popt = np.asarray(result.params)
    pcov = np.asarray(result.pcov)
    if not np.all(np.isfinite(pcov)):
        warnings.warn("Covariance of the parameters could not be estimated",
                      CovarianceWarning, stacklevel=2)
    if not full_output:
        return popt, pcov
    fvec = np.asarray(model(jnp.asarray(popt), x)) - y
    if fit_sigma is not None:
        fvec = fvec / fit_sigma
    infodict = {"nfev": int(result.passes), "fvec": fvec}
    return popt, pcov, infodict, status.message, int(status)


def _start_and_bounds(f, p0, bounds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p0 (scipy's feasible default when None) and the bounds broadcast to its shape."""
    if not (isinstance(bounds, tuple | list) and len(bounds) == 2):
        raise ValueError("bounds must be a pair (lb, ub)")
    lb, ub = (np.asarray(real_array("bounds", b), float) for b in bounds)
    n_params = _count_params(f, p0)
    p0 = _initialize_feasible(lb, ub, n_params) if p0 is None else np.atleast_1d(
        np.asarray(p0, float))
    if p0.ndim != 1:
        raise ValueError(f"p0 must be 1-D, got shape {p0.shape}")
    if n_params is not None and p0.size != n_params:
        raise ValueError(f"p0 has {p0.size} values but f takes {n_params} parameters")
    for name, b in (("lower", lb), ("upper", ub)):
        if b.size not in (1, p0.size) or b.ndim > 1:
            raise ValueError(f"bounds ({name}) has shape {b.shape}: give a scalar or one value "
                             f"per parameter of p0 ({p0.size})")
    return p0, np.broadcast_to(lb, p0.shape), np.broadcast_to(ub, p0.shape)


def _points(xdata, ydata) -> tuple[np.ndarray, np.ndarray, bool]:
    """x with the points on its leading axis (scipy's (k, n) xdata transposed), y, and
    whether x had several dimensions."""
    ydata = np.asarray(real_array("ydata", ydata), float)
    if ydata.ndim != 1:
        raise ValueError(f"ydata must be 1-D, got shape {ydata.shape}")
    xdata = np.asarray(real_array("xdata", xdata), float)
    n = ydata.shape[0]
    multi_dim_x = xdata.ndim >= 2
    if multi_dim_x and xdata.shape[-1] != n:
        raise ValueError(f"xdata of shape {xdata.shape} must be (k, n) with n = len(ydata) = {n}")
    if not multi_dim_x and xdata.shape[:1] != (n,):
        raise ValueError(f"xdata has shape {xdata.shape} but ydata has {n} points")
    return (np.moveaxis(xdata, -1, 0) if multi_dim_x else xdata), ydata, multi_dim_x


def _whitened(sigma, x, y, check_finite: bool) -> tuple[tuple, np.ndarray]:
    """With a covariance matrix `sigma` = L L^T: x carries L, y becomes L^-1 y."""
    n = y.shape[0]
    sigma = np.asarray(sigma, float)
    if sigma.shape != (n, n):
        raise ValueError(f"2-D sigma must have shape (n, n) = ({n}, {n}), got {sigma.shape}")
    if check_finite and not np.all(np.isfinite(sigma)):
        raise ValueError("sigma contains NaN or Inf")
    try:
        chol = np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError as err:
        raise ValueError("2-D sigma must be a positive definite covariance matrix") from err
    return (x, chol), np.linalg.solve(chol, y)


@functools.lru_cache(maxsize=128)
def _wrapped_model(f, multi_dim_x: bool, whitened: bool):
    """model(params, x) calling f(x, *params); cached so jit sees the same function."""
    def model(params, x):
        if whitened:
            x, chol = x
        out = f(jnp.moveaxis(x, 0, -1) if multi_dim_x else x, *params)
        if jnp.ndim(out) == 0:
            out = jnp.broadcast_to(out, (x.shape[0],))
        if whitened:
            out = jax.scipy.linalg.solve_triangular(chol, out, lower=True)
        return out

    return model


def _config(options: dict) -> Config:
    options = dict(options)
    config = options.pop("config", None)
    for scipy_name in ("maxfev", "max_nfev"):
        if scipy_name in options:
            value = options.pop(scipy_name)
            if value is not None:
                options["max_iter"] = int(value)
    if config is None:
        return Config(**options)
    if options:
        raise TypeError(f"pass either config= or options, not both (got {sorted(options)})")
    return config


def _count_params(f, p0) -> int | None:
    """Number of parameters from f's signature; None if it takes *args."""
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        kinds = [p.kind for p in sig.parameters.values()]
        if inspect.Parameter.VAR_POSITIONAL not in kinds:
            positional = [k for k in kinds if k in (inspect.Parameter.POSITIONAL_ONLY,
                                                    inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            if len(positional) >= 2:
                return len(positional) - 1
    if p0 is None:
        raise ValueError("Unable to determine number of fit parameters.")
    return None


def _initialize_feasible(lb, ub, n: int) -> np.ndarray:
    """scipy's default start: ones, moved inside the bounds where they are finite."""
    try:
        lb, ub = np.broadcast_to(lb, (n,)), np.broadcast_to(ub, (n,))
    except ValueError:
        raise ValueError(f"bounds must be scalars or have one value per parameter (f takes "
                         f"{n}), got shapes {np.shape(lb)} and {np.shape(ub)}") from None
    p0 = np.ones(n)
    both = np.isfinite(lb) & np.isfinite(ub)
    p0[both] = 0.5 * (lb[both] + ub[both])
    only_lb = np.isfinite(lb) & ~np.isfinite(ub)
    p0[only_lb] = lb[only_lb] + 1
    only_ub = ~np.isfinite(lb) & np.isfinite(ub)
    p0[only_ub] = ub[only_ub] - 1
    return p0
