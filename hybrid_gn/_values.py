"""Value checks of B problems at once: a single fit is a batch of one.

Every entry point calls `check_values` on concrete inputs, with a leading
problem axis (B = 1 for `fit`, `fit_multistart`, `curve_fit`; the batch for
`fit_batch`; the streamed chunks check their own values as they are read).
Each check is one vectorized test over the batch; the first bad problem is
named (`problem b: ...`) when there is more than the one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ._config import Config


class Values(NamedTuple):
    """The concrete inputs of B problems, as numpy arrays with a leading problem axis."""

    theta0: np.ndarray  # (B, p) flat starts
    lower: np.ndarray  # (B, p) flat bounds (-inf/inf where unbounded)
    upper: np.ndarray
    x: list[np.ndarray]  # the leaves of x, each (B, n, ...)
    y: np.ndarray  # (B, n)
    sigma: np.ndarray | None  # (B, n)
    used: np.ndarray  # (B, n) bool: the points that count (mask, ragged padding)


def check_values(values: Values, check_finite: bool, config: Config, batched: bool) -> None:
    """Raise a ValueError naming the argument (and the first bad problem when `batched`) for
    too few points, NaN/Inf (with `check_finite`), sigma <= 0, bad bounds, p0 outside."""
    def first(bad: np.ndarray, message: Callable[[int], str]) -> None:
        if np.any(bad):
            b = int(np.argmax(bad))
            raise ValueError((f"problem {b}: " if batched else "") + message(b))

    theta0, used = values.theta0, values.used
    p = theta0.shape[1]
    n_used = used.sum(axis=1)
    first(n_used < p, lambda b: f"too few data points: {n_used[b]} points are used, fewer "
                                f"than the p = {p} parameters of p0")
    if check_finite:
        _check_finite(values, first, batched)
    if values.sigma is not None:
        first(np.any((values.sigma <= 0) & used, axis=1),
              lambda b: "sigma must be strictly positive")
    _check_bounds(values, config, first)


def _check_finite(values: Values, first, batched: bool) -> None:
    fails_alone = " (the problem then fails alone)" if batched else ""
    used = values.used
    arrays = [("y", values.y)] + [("x", leaf) for leaf in values.x] + (
        [] if values.sigma is None else [("sigma", values.sigma)])
    for name, a in arrays:
        if not np.issubdtype(a.dtype, np.inexact):
            continue
        flat = a.reshape(*used.shape, -1)
        count = np.sum(~np.isfinite(flat) & used[:, :, None], axis=(1, 2))
        first(count > 0, lambda b, name=name, count=count: (
            f"{name} contains NaN or Inf ({count[b]} values); clean the data or pass "
            f"check_finite=False{fails_alone}"))
    first(np.any(~np.isfinite(values.theta0), axis=1), lambda b: "p0 contains NaN or Inf")


def _check_bounds(values: Values, config: Config, first) -> None:
    theta0, lb, ub = values.theta0, values.lower, values.upper
    first(np.any(np.isnan(lb) | np.isnan(ub), axis=1), lambda b: "bounds contain NaN")

    def parameter(bad: np.ndarray, message: Callable[[int, int], str]) -> None:
        first(np.any(bad, axis=1), lambda b: message(b, int(np.argmax(bad[b]))))

    parameter(lb >= ub, lambda b, i: (
        f"bounds: each lower bound must be strictly less than its upper bound: parameter {i} "
        f"has lower {lb[b, i]} >= upper {ub[b, i]}"))
    parameter((theta0 < lb) | (theta0 > ub), lambda b, i: (
        f"p0 is outside the bounds: parameter {i} = {theta0[b, i]} is not in "
        f"[{lb[b, i]}, {ub[b, i]}]"))
    if config.normalization == "bounds":
        first(np.any(~np.isfinite(lb) | ~np.isfinite(ub), axis=1),
              lambda b: "normalization='bounds' needs finite lower and upper bounds")
