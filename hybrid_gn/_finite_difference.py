"""Finite-difference Jacobians on the host, with scipy's rules (`approx_derivative`).

A model that JAX cannot trace is evaluated in numpy, and so is its Jacobian:
'2-point' (forward differences), '3-point' (central, one-sided at a bound)
or 'cs' (complex step). The absolute step is `rel_step * sign(x) * |x|`,
by default `EPS**(1/2)` ('2-point', 'cs') or `EPS**(1/3)` ('3-point') times
`sign(x) * max(1, |x|)` (EPS of the coarsest float type of x and f), and it
is turned around or shortened so that no evaluation leaves the bounds: the
same numbers scipy's `least_squares` would use, so a fit lands where
scipy's does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Scheme = str  # "2-point", "3-point" or "cs"
SCHEMES = ("2-point", "3-point", "cs")


def relative_eps(x_dtype, f_dtype, scheme: Scheme) -> float:
    """scipy's default relative step: EPS**(1/2), or EPS**(1/3) for '3-point'."""
    eps = max(np.finfo(d).eps for d in (np.float64, x_dtype, f_dtype)
              if np.issubdtype(d, np.floating))
    return float(eps ** (1 / 3) if scheme == "3-point" else eps**0.5)


def absolute_step(x, f0, scheme: Scheme, rel_step=None) -> np.ndarray:
    """The signed step per variable (sign(0) = +1)."""
    sign = (x >= 0).astype(float) * 2 - 1
    default = relative_eps(x.dtype, f0.dtype, scheme) * sign * np.maximum(1.0, np.abs(x))
    if rel_step is None:
        return default
    step = np.asarray(rel_step, float) * sign * np.abs(x)
    return np.where((x + step) - x == 0, default, step)


def fit_to_bounds(x, h, scheme: Scheme, lb, ub) -> tuple[np.ndarray, np.ndarray]:
    """Steps that keep every evaluation in [lb, ub], and which use a one-sided formula."""
    if scheme == "3-point":
        h = np.abs(h)
    if scheme == "cs" or (np.all(np.isneginf(lb)) and np.all(np.isposinf(ub))):
        return h, np.full(x.shape, scheme == "2-point")
    lower, upper = x - lb, ub - x
    if scheme == "2-point":
        out = (x + h < lb) | (x + h > ub)
        fits = np.abs(h) <= np.maximum(lower, upper)
        h = np.where(out & fits, -h, h)
        h = np.where(~fits, np.where(upper >= lower, upper, -lower), h)
        return h, np.ones(x.shape, bool)
    central = (lower >= h) & (upper >= h)
    forward = (upper >= lower) & ~central
    h = np.where(forward, np.minimum(h, 0.5 * upper),
                 np.where(~central, -np.minimum(h, 0.5 * lower), h))
    one_sided = ~central
    nearest = np.minimum(upper, lower)
    recentred = ~central & (np.abs(h) <= nearest)
    return np.where(recentred, nearest, h), one_sided & ~recentred


def jacobian(fun: Callable[[np.ndarray], np.ndarray], x, f0, scheme: Scheme, rel_step=None,
             lb=-np.inf, ub=np.inf) -> np.ndarray:
    """The (m, p) Jacobian of `fun` at `x` (where it returns `f0`), by `scheme`."""
    x = np.asarray(x, float)
    lb, ub = np.broadcast_to(lb, x.shape), np.broadcast_to(ub, x.shape)
    h, one_sided = fit_to_bounds(x, absolute_step(x, f0, scheme, rel_step), scheme, lb, ub)
    columns = [_column(fun, x, f0, i, h[i], scheme, one_sided[i]) for i in range(x.size)]
    return np.stack(columns, axis=-1).reshape(f0.size, x.size)


def _column(fun, x, f0, i: int, h: float, scheme: Scheme, one_sided: bool) -> np.ndarray:
    def at(step):
        shifted = x.astype(complex if scheme == "cs" else float)
        shifted[i] += step
        return np.asarray(fun(shifted)), shifted[i] - x[i]

    if scheme == "cs":
        return np.asarray(fun(x + 1j * h * np.eye(x.size)[i])).imag.ravel() / h
    if scheme == "2-point":
        f1, dx = at(h)
        return (f1 - f0).ravel() / dx
    if one_sided:
        (f1, _), (f2, dx) = at(h), at(2 * h)
        return (-3 * f0 + 4 * f1 - f2).ravel() / dx
    (f1, x1), (f2, x2) = at(-h), at(h)
    return (f2 - f1).ravel() / (x2 - x1)
