"""Value checks of B problems at once: a single fit is a batch of one.

Every entry point calls `check_values` on concrete inputs, with a leading
problem axis (B = 1 for `fit`, `fit_multistart`, `curve_fit`; the batch for
`fit_batch`; the streamed chunks check their own values as they are read).
Each check is one vectorized test over the batch; the first bad problem is
named (`problem b: ...`) when there is more than the one. Data spread over
several processes is counted by one compiled reduction instead
(`check_spread_values`), so that every process reaches the same verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
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
    too few points, NaN/Inf (with `check_finite`), sigma <= 0, bad bounds, p0 outside.

    Inputs that pass every check (the common case) are recognised by a few whole-array
    tests; only a failing input is counted problem by problem to name the first bad one.
    """
    if _all_good(values, check_finite, config):
        return
    _judge(values, count(values, check_finite, np), check_finite, config, batched)


def _all_good(values: Values, check_finite: bool, config: Config) -> bool:
    """Whether `values` pass every check of `_judge` (tested on whole arrays, ignoring
    which points count: a NaN where the mask is False sends the input to `_judge`)."""
    theta0, lb, ub, used = values.theta0, values.lower, values.upper, values.used
    p = theta0.shape[1]
    if used.shape[1] < p or (used.size and not used.all()):
        return False
    if check_finite and not all(np.isfinite(a).all() for a in (values.y, *values.x, theta0)
                                if np.issubdtype(a.dtype, np.inexact)):
        return False
    if values.sigma is not None and not (np.isfinite(values.sigma).all() or not check_finite):
        return False
    if values.sigma is not None and not (values.sigma > 0).all():
        return False
    if not ((lb < ub).all() and (theta0 >= lb).all() and (theta0 <= ub).all()):
        return False  # NaN bounds fail here too
    return config.normalization != "bounds" or bool(np.isfinite(lb).all()
                                                    and np.isfinite(ub).all())


def check_spread_values(values: Values, check_finite: bool, config: Config) -> None:
    """`check_values` of one problem whose data is spread over processes (arrays not fully
    addressable here, given without the problem axis; `used` None when every point counts).

    One compiled reduction counts what the checks look at; every process receives the
    same few counts, so all of them raise the same error (none waits for a peer that
    stopped), and nothing data-sized moves.
    """
    def counts(x, y, sigma, used):
        used = jnp.ones(y.shape, bool) if used is None else used
        whole = Values(values.theta0, values.lower, values.upper, [a[None] for a in x],
                       y[None], None if sigma is None else sigma[None], used[None])
        return count(whole, check_finite, jnp)

    found = jax.jit(counts)(values.x, values.y, values.sigma, values.used)
    _judge(values, jax.tree.map(np.asarray, found), check_finite, config, batched=False)


class Counts(eqx.Module):
    """What the data checks look at, per problem (each (B,))."""

    used: Any  # the points that count
    nonfinite: list  # per data array named in `names`: NaN/Inf among the points that count
    sigma_nonpositive: Any  # sigma <= 0 among the points that count (None without sigma)
    names: tuple[str, ...] = eqx.field(static=True)


def count(values: Values, check_finite: bool, xp) -> Counts:
    """The `Counts` of `values`, with numpy or (under `jit`) `jax.numpy` as `xp`."""
    used = values.used
    arrays = [("y", values.y)] + [("x", leaf) for leaf in values.x] + (
        [] if values.sigma is None else [("sigma", values.sigma)])
    checked = [(name, a) for name, a in arrays
               if check_finite and xp.issubdtype(a.dtype, xp.inexact)]
    nonfinite = [xp.sum(~xp.isfinite(a.reshape(*used.shape, -1)) & used[:, :, None], axis=(1, 2))
                 for _, a in checked]
    bad_sigma = None if values.sigma is None else xp.any((values.sigma <= 0) & used, axis=1)
    return Counts(used.sum(axis=1), nonfinite, bad_sigma, tuple(name for name, _ in checked))


def _judge(values: Values, counts: Counts, check_finite: bool, config: Config,
           batched: bool) -> None:
    def first(bad: np.ndarray, message: Callable[[int], str]) -> None:
        if np.any(bad):
            b = int(np.argmax(bad))
            raise ValueError((f"problem {b}: " if batched else "") + message(b))

    p = values.theta0.shape[1]
    n_used = counts.used
    first(n_used < p, lambda b: f"too few data points: {n_used[b]} points are used, fewer "
                                f"than the p = {p} parameters of p0")
    fails_alone = " (the problem then fails alone)" if batched else ""
    for name, bad in zip(counts.names, counts.nonfinite, strict=True):
        first(bad > 0, lambda b, name=name, bad=bad: (
            f"{name} contains NaN or Inf ({bad[b]} values); clean the data or pass "
            f"check_finite=False{fails_alone}"))
    if check_finite:
        first(np.any(~np.isfinite(values.theta0), axis=1), lambda b: "p0 contains NaN or Inf")
    if counts.sigma_nonpositive is not None:
        first(counts.sigma_nonpositive, lambda b: "sigma must be strictly positive")
    _check_bounds(values, config, first)


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
