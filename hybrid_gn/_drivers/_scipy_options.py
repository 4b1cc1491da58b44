"""scipy's optimizer arguments, checked as scipy checks them and mapped onto `Config`.

`curve_fit` and `least_squares` take scipy's keywords. Each one either sets
a `Config` field (`ftol`, `xtol`, `gtol`, `max_nfev`/`maxfev` -> `max_iter`,
`loss`, `f_scale`, `verbose=2` -> `progress`), steers the finite differences of a model
evaluated on the host (`diff_step`, `epsfcn`), is checked and has no effect
because this library's solver does that part its own way (`x_scale`,
`diag`, `tr_solver`, `jac_sparsity`, `workers`), or is refused with an
error naming it. Where scipy raises for bad input, the same message is
raised here, so scripts that match on it keep working.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, NamedTuple

import numpy as np

from .._config import Config
from .._result import Status

try:  # scipy is optional: its warning class and Bounds are used when it is there
    from scipy.optimize import Bounds as _ScipyBounds
    from scipy.optimize import OptimizeWarning as _WarningBase
except ImportError:  # pragma: no cover - exercised only without scipy
    _ScipyBounds = None

    class _WarningBase(UserWarning):
        """Stands in for `scipy.optimize.OptimizeWarning` when scipy is not installed."""


EPS = float(np.finfo(float).eps)
METHODS = ("trf", "dogbox", "lm")
LOSSES = ("linear", "huber", "soft_l1", "cauchy", "arctan")


class CovarianceWarning(_WarningBase):
    """The covariance of the parameters could not be estimated (pcov is inf).

    `curve_fit` warns with it, as scipy does, when `pcov` is not finite: with
    no more points than parameters and relative sigma, for instance. It is a
    subclass of `scipy.optimize.OptimizeWarning` when scipy is installed (so
    filters written for scipy catch it), of `UserWarning` otherwise.

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


class Options(NamedTuple):
    """What scipy's keywords amount to here."""

    config: Config
    rel_step: tuple[float, ...] | None  # finite-difference relative step (host models)
    verbose: int  # 1: print the outcome, 2: also every iteration
    col_deriv: bool  # a callable jac returns the transposed Jacobian (MINPACK)


def split_bounds(bounds, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`(lb, ub)` of length n from a `(lb, ub)` pair or a `scipy.optimize.Bounds`."""
    if _ScipyBounds is not None and isinstance(bounds, _ScipyBounds):
        pair = (bounds.lb, bounds.ub)
    elif isinstance(bounds, tuple | list) and len(bounds) == 2:
        pair = bounds
    else:
        raise ValueError("`bounds` must contain 2 elements.")
    lb, ub = (np.asarray(b, float) for b in pair)
    try:
        return np.broadcast_to(lb, (n,)).copy(), np.broadcast_to(ub, (n,)).copy()
    except ValueError:
        raise ValueError(f"Inconsistent shapes between bounds and `x0`: bounds of shapes "
                         f"{lb.shape} and {ub.shape} for {n} parameters") from None


def check_bounds(x0: np.ndarray, lb: np.ndarray, ub: np.ndarray) -> None:
    """scipy's checks of the box and the start, with scipy's messages."""
    if np.any(lb >= ub):
        raise ValueError("Each lower bound must be strictly less than each upper bound.")
    outside = np.flatnonzero((x0 < lb) | (x0 > ub))
    if outside.size:
        i = int(outside[0])
        raise ValueError(f"Initial guess is outside of provided bounds (`x0` is infeasible.): "
                         f"parameter {i} = {x0[i]} is not in [{lb[i]}, {ub[i]}]")


def check_method(method: str, bounded: bool, loss) -> None:
    if method not in METHODS:
        raise ValueError("`method` must be 'trf', 'dogbox' or 'lm'.")
    if method == "lm" and bounded:
        raise ValueError("Method 'lm' only works for unconstrained problems. Use 'trf' or "
                         "'dogbox' instead.")
    if method == "lm" and not (isinstance(loss, str) and loss == "linear"):
        raise ValueError("method='lm' supports only 'linear' loss function.")


def check_loss(loss, f_scale) -> dict[str, Any]:
    """The `Config` fields of a loss given as scipy gives it (a name, or a callable
    `rho(z) -> (3, m)` written with jax.numpy)."""
    if not (callable(loss) or (isinstance(loss, str) and loss in LOSSES)):
        raise ValueError(f"`loss` must be one of {LOSSES} or a callable.")
    return {"loss": loss, "f_scale": f_scale}


def tolerance(name: str, value) -> float:
    """scipy's reading of a tolerance: None disables it, below EPS warns."""
    if value is None:
        return 0.0
    if value < EPS:
        warnings.warn(f"Setting `{name}` below the machine epsilon ({EPS:.2e}) effectively "
                      f"disables the corresponding termination condition.", stacklevel=4)
    return float(value)


def check_x_scale(x_scale, n: int) -> None:
    """Checked as scipy checks it ('jac' or positive numbers, one or n of them)."""
    if x_scale is None or (isinstance(x_scale, str) and x_scale == "jac"):
        return
    try:
        scale = np.asarray(x_scale, float)
        valid = bool(np.all(np.isfinite(scale)) and np.all(scale > 0))
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise ValueError("`x_scale` must be 'jac' or array_like with positive numbers.")
    if scale.ndim != 0 and scale.shape != (n,):
        raise ValueError("Inconsistent shapes between `x_scale` and `x0`.")


def check_max_nfev(max_nfev) -> int | None:
    if max_nfev is None:
        return None
    if isinstance(max_nfev, bool) or not isinstance(max_nfev, int | np.integer) or max_nfev <= 0:
        raise ValueError("`max_nfev` must be None or positive integer.")
    return int(max_nfev)


def check_solver_choices(tr_solver, tr_options, verbose, callback) -> None:
    """Arguments about scipy's own trust-region machinery."""
    if tr_solver not in (None, "exact", "lsmr"):
        raise ValueError("`tr_solver` must be None, 'exact' or 'lsmr'.")
    if tr_options:
        raise ValueError(f"tr_options={tr_options!r} is not supported: the trust-region step "
                         f"is solved by this library's own dense or matrix-free solver "
                         f"(see Config)")
    if verbose not in (0, 1, 2):
        raise ValueError("`verbose` must be in [0, 1, 2].")
    if callback is not None:
        raise ValueError("callback is not supported: the iterations run inside one compiled "
                         "function; use verbose=2 (or Config(progress=True)) to follow them, "
                         "and Result.trace for their record")


def make_config(config: Config | None, fields: dict[str, Any]) -> Config:
    """`config` (or `Config()`) with `fields` set; None values are left at the default."""
    fields = {k: v for k, v in fields.items() if v is not None}
    if config is None:
        try:
            return _config_of(tuple(sorted(fields.items())))
        except TypeError:  # an unhashable value (an array): made afresh
            return Config(**fields)
    if not isinstance(config, Config):
        raise TypeError(f"config must be a hybrid_gn.Config, got {type(config).__name__}")
    return dataclasses.replace(config, **fields) if fields else config


@functools.lru_cache(maxsize=64)
def _config_of(fields: tuple[tuple[str, Any], ...]) -> Config:
    """The `Config` with these fields (made once: a Config is immutable, and making one
    costs more than a small fit's host work)."""
    return Config(**dict(fields))


def relative_step(diff_step, epsfcn, n: int) -> tuple[float, ...] | None:
    """The finite-difference relative step: `diff_step`, or MINPACK's sqrt(epsfcn)."""
    if diff_step is None and epsfcn is not None:
        diff_step = np.sqrt(max(float(epsfcn), EPS))
    if diff_step is None:
        return None
    return tuple(float(v) for v in np.broadcast_to(np.asarray(diff_step, float), (n,)))


# scipy's status codes and messages, per method family
_LEAST_SQUARES = {  # least_squares (curve_fit with 'trf' or 'dogbox'): code, message
    Status.CONVERGED_GTOL: (1, "`gtol` termination condition is satisfied."),
    Status.CONVERGED_FTOL: (2, "`ftol` termination condition is satisfied."),
    Status.CONVERGED_XTOL: (3, "`xtol` termination condition is satisfied."),
    Status.MAX_ITERATIONS: (0, "The maximum number of function evaluations is exceeded."),
}
_MINPACK = {  # leastsq (curve_fit with 'lm'): ier, message
    Status.CONVERGED_FTOL: (1, "Both actual and predicted relative reductions in the sum of "
                               "squares\n  are at most ftol"),
    Status.CONVERGED_XTOL: (2, "The relative error between two consecutive iterates is at "
                               "most xtol"),
    Status.CONVERGED_GTOL: (4, "The cosine of the angle between func(x) and any column of the"
                               "\n  Jacobian is at most gtol in absolute value"),
    Status.MAX_ITERATIONS: (5, "Number of calls to function has reached maxfev."),
}


def scipy_status(status: Status, method: str) -> tuple[int, str]:
    """scipy's code and message for this library's `status` under `method`.

    A stalled trust region or a non-finite start have no scipy code: they
    get -1 (not a success for either family) and this library's message.
    """
    table = _MINPACK if method == "lm" else _LEAST_SQUARES
    return table.get(status, (-1, status.message))


_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(Config))
# scipy keywords that are checked and then left to this library's own solver
_CHECKED_ONLY = ("x_scale", "diag", "tr_solver", "jac_sparsity", "workers")


def scipy_options(kwargs: dict[str, Any], n: int, method: str, caller: str) -> Options:
    """Read scipy's keywords (and `Config` fields, or `config=`) for a fit of n parameters.

    Unknown names raise scipy's `TypeError`; names with no meaning here raise
    a `ValueError` that says what to use instead.
    """
    kwargs = dict(kwargs)
    config = kwargs.pop("config", None)
    _refuse(kwargs, caller)
    max_nfev = check_max_nfev(_one_of_names(kwargs, "max_nfev", "maxfev"))
    check_x_scale(kwargs.pop("x_scale", None), n)
    check_x_scale(kwargs.pop("diag", None), n)
    loss = check_loss(kwargs.pop("loss", "linear"), kwargs.pop("f_scale", 1.0))
    verbose = kwargs.pop("verbose", 0)
    check_solver_choices(kwargs.pop("tr_solver", None), kwargs.pop("tr_options", None),
                         verbose, kwargs.pop("callback", None))
    for name in _CHECKED_ONLY:
        kwargs.pop(name, None)
    rel_step = relative_step(kwargs.pop("diff_step", None), kwargs.pop("epsfcn", None), n)
    col_deriv = bool(kwargs.pop("col_deriv", False))
    fields = {**_tolerances(kwargs, method), **loss}
    unknown = sorted(set(kwargs) - _CONFIG_FIELDS)
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
    fields.update(kwargs, max_iter=max_nfev, progress=True if verbose == 2 else None)
    return Options(make_config(config, fields), rel_step, verbose, col_deriv)


def _refuse(kwargs: dict[str, Any], caller: str) -> None:
    if caller == "curve_fit" and "args" in kwargs:
        raise ValueError("'args' is not a supported keyword argument.")
    if "factor" in kwargs:
        raise ValueError("factor (MINPACK's initial step bound) is not supported: the first "
                         "trust radius is Config(initial_radius=...)")


def _one_of_names(kwargs: dict[str, Any], name: str, alias: str):
    """`kwargs[name]`, else `kwargs[alias]` (scipy's two names of the evaluation cap)."""
    value, other = kwargs.pop(name, None), kwargs.pop(alias, None)
    return other if value is None else value


def _tolerances(kwargs: dict[str, Any], method: str) -> dict[str, float]:
    """The given ones of ftol, xtol, gtol, read as scipy reads them."""
    given = {name: tolerance(name, kwargs.pop(name)) for name in ("ftol", "xtol", "gtol")
             if name in kwargs}
    if not given:
        return {}
    values = [given.get(name, np.inf) for name in ("ftol", "xtol", "gtol")]
    if method == "lm" and min(values) < EPS:
        raise ValueError(f"All tolerances must be higher than machine epsilon ({EPS:.2e}) for "
                         f"method 'lm'.")
    if max(given.values()) < EPS and len(given) == 3:
        raise ValueError(f"At least one of the tolerances must be higher than machine epsilon "
                         f"({EPS:.2e}).")
    return given
