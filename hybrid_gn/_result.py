"""Outcomes as data: status codes with messages, and the `Result` pytree.

Codes are plain integers inside the loop (jit/vmap friendly); they become
readable messages only here, at the edge.
"""

from __future__ import annotations

import enum

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PyTree


class Status(enum.IntEnum):
    """Why the whole fit stopped: the code in `Result.status`.

    An integer enum, so codes stay plain integers inside jitted loops and
    batches; `message` and `success` read one code at the edge.

    Attributes:
        RUNNING: still running (the loop was cut short).
        CONVERGED_FTOL: converged: relative reduction of the cost below ftol.
        CONVERGED_XTOL: converged: relative step size below xtol.
        CONVERGED_GTOL: converged: scaled (projected) gradient below gtol.
        MAX_ITERATIONS: stopped: Gauss-Newton iteration cap reached.
        NONFINITE_START: failed: the cost or Jacobian at the starting point
            is NaN/Inf.
        STALLED: stopped: trust region collapsed without meeting a tolerance.
        VALLEY: stopped: the parameters run along a valley of nearly constant cost
            (`Config.valley_window`, `valley_rtol`): a degenerate model there or an
            unbounded direction; try other starts or bounds.

    Examples:
        >>> import hybrid_gn
        >>> status = hybrid_gn.Status(2)  # e.g. int(result.status)
        >>> status.name, status.success
        ('CONVERGED_XTOL', True)
        >>> print(hybrid_gn.Status.MAX_ITERATIONS.message)
        stopped: Gauss-Newton iteration cap reached
    """

    RUNNING = 0
    CONVERGED_FTOL = 1
    CONVERGED_XTOL = 2
    CONVERGED_GTOL = 3
    MAX_ITERATIONS = 4
    NONFINITE_START = 5
    STALLED = 6
    VALLEY = 7

    @property
    def message(self) -> str:
        """The readable meaning of the code."""
        return _STATUS_MESSAGES[self]

    @property
    def success(self) -> bool:
        """True for the three converged codes (ftol, xtol, gtol)."""
        return self in (Status.CONVERGED_FTOL, Status.CONVERGED_XTOL, Status.CONVERGED_GTOL)


_STATUS_MESSAGES = {
    Status.RUNNING: "still running (the loop was cut short)",
    Status.CONVERGED_FTOL: "converged: relative reduction of the cost below ftol",
    Status.CONVERGED_XTOL: "converged: relative step size below xtol",
    Status.CONVERGED_GTOL: "converged: scaled (projected) gradient below gtol",
    Status.MAX_ITERATIONS: "stopped: Gauss-Newton iteration cap reached",
    Status.NONFINITE_START: "failed: the cost or Jacobian at the starting point is NaN/Inf",
    Status.STALLED: "stopped: trust region collapsed without meeting a tolerance",
    Status.VALLEY: "stopped: the parameters run along a valley of nearly constant cost (a "
                   "degenerate model there, or an unbounded direction); try other starts or "
                   "bounds",
}


class WarmupReason(enum.IntEnum):
    """Why the L-BFGS warmup handed over to Gauss-Newton: `Result.warmup_reason`.

    Attributes:
        NOT_RUN: warmup has not finished.
        DISABLED: warmup disabled by configuration.
        WARM_START: skipped: start already good (relative loss below
            warm_start_threshold).
        PLATEAU: switched: loss plateaued.
        SMALL_GRADIENT: switched: gradient fell below warmup_gtol of its
            initial norm.
        MAX_ITERATIONS: switched: warmup iteration cap reached.
        COST_INCREASE: aborted: loss grew past the guard, best point kept.
        NONFINITE: aborted: NaN/Inf loss, best point kept.
        SMALL_DATA: skipped (warmup='auto'): the data is no larger than the
            warmup subsample, so Gauss-Newton passes are as cheap.

    Examples:
        >>> import hybrid_gn
        >>> reason = hybrid_gn.WarmupReason(3)  # e.g. int(result.warmup_reason)
        >>> reason.name
        'PLATEAU'
        >>> print(reason.message)
        switched: loss plateaued
    """

    NOT_RUN = 0
    DISABLED = 1
    WARM_START = 2
    PLATEAU = 3
    SMALL_GRADIENT = 4
    MAX_ITERATIONS = 5
    COST_INCREASE = 6
    NONFINITE = 7
    SMALL_DATA = 8

    @property
    def message(self) -> str:
        """The readable meaning of the code."""
        return _WARMUP_MESSAGES[self]


_WARMUP_MESSAGES = {
    WarmupReason.NOT_RUN: "warmup has not finished",
    WarmupReason.DISABLED: "warmup disabled by configuration",
    WarmupReason.WARM_START: (
        "skipped: start already good (relative loss below warm_start_threshold)"),
    WarmupReason.PLATEAU: "switched: loss plateaued",
    WarmupReason.SMALL_GRADIENT: "switched: gradient fell below warmup_gtol of its initial norm",
    WarmupReason.MAX_ITERATIONS: "switched: warmup iteration cap reached",
    WarmupReason.COST_INCREASE: "aborted: loss grew past the guard, best point kept",
    WarmupReason.NONFINITE: "aborted: NaN/Inf loss, best point kept",
    WarmupReason.SMALL_DATA: ("skipped (warmup='auto'): the data is no larger than the warmup "
                              "subsample, so Gauss-Newton passes are as cheap"),
}


class WarmupMode(enum.IntEnum):
    """First-step regime chosen from the relative loss at the start: `Result.warmup_mode`.

    The regime bounds the norm of the warmup's first update (`Config`'s
    `first_step_refine`, `first_step_careful`, `first_step_explore`).

    Attributes:
        REFINE: relative loss below `Config.refine_threshold`.
        CAREFUL: relative loss between the two thresholds.
        EXPLORE: relative loss above `Config.explore_threshold`.

    Examples:
        >>> import hybrid_gn
        >>> [mode.name for mode in hybrid_gn.WarmupMode]
        ['REFINE', 'CAREFUL', 'EXPLORE']
        >>> hybrid_gn.WarmupMode(2).name  # e.g. int(result.warmup_mode)
        'EXPLORE'
    """

    REFINE = 0
    CAREFUL = 1
    EXPLORE = 2


class Phase(enum.IntEnum):
    """Phase of the pipeline, as stored in `Trace.phase` (0 past the trace's length).

    Attributes:
        WARMUP: an L-BFGS warmup iteration.
        GAUSS_NEWTON: a trust-region Gauss-Newton iteration.

    Examples:
        >>> import numpy as np
        >>> import hybrid_gn
        >>> phase = np.array([1, 1, 2, 2, 2, 0])  # e.g. result.trace.phase
        >>> int(np.sum(phase == hybrid_gn.Phase.GAUSS_NEWTON))
        3
    """

    WARMUP = 1
    GAUSS_NEWTON = 2


class Trace(eqx.Module):
    """Fixed-length per-iteration record of a fit: `Result.trace`.

    To see how a fit went: how fast the cost fell, where the warmup handed
    over, how the trust radius moved. The arrays have `Config.trace_length`
    entries (by default 256, and 32 per problem of `fit_batch`); entries past
    `length` are NaN / 0. `length` counts every iteration, so it exceeds the
    array length when a fit runs longer than the trace; the last entry then
    holds the latest iteration.

    Attributes:
        cost: the warmup loss (mean half squared residual over the warmup
            subsample) in warmup entries and the full cost (half the weighted
            RSS) in Gauss-Newton entries.
        grad_norm: the norm of the gradient.
        radius: the trust radius; NaN in warmup entries.
        phase: the `Phase` of each entry (0 past `length`).
        length: the number of iterations recorded.

    Examples:
        >>> import jax.numpy as jnp
        >>> import numpy as np
        >>> import hybrid_gn
        >>> x = np.linspace(-1.0, 1.0, 20)
        >>> result = hybrid_gn.fit(jnp.polyval, jnp.ones(3), x, 0.5 * x**2 - x + 2.0)
        >>> trace = result.trace
        >>> n = int(trace.length)
        >>> bool(np.all(trace.phase[:n] == hybrid_gn.Phase.GAUSS_NEWTON))  # no warmup here
        True
        >>> bool(trace.cost[n - 1] < trace.cost[0]), bool(np.isnan(trace.cost[n]))
        (True, True)
    """

    cost: Float[Array, " T"]
    grad_norm: Float[Array, " T"]
    radius: Float[Array, " T"]
    phase: Int[Array, " T"]
    length: Int[Array, ""]

    @property
    def next_entry(self) -> Int[Array, "*batch"]:
        """The entry the next iteration writes (the last once the trace is full)."""
        return jnp.minimum(self.length, self.cost.shape[-1] - 1)


class Result(eqx.Module):
    """The outcome of a fit, a pytree (so it passes through jit and vmap).

    `fit`, `fit_multistart` and `fit_stream` return one; `fit_batch` returns
    one whose leaves have a leading batch axis B. The status fields are
    integer codes inside jitted code; `success`, `message` and `summary()`
    read them on the host.

    Attributes:
        params: the fitted parameters, with the structure of `p0`.
        pcov: the covariance of the parameters (`scipy.optimize.curve_fit`
            semantics), over the flattened parameters
            (`jax.flatten_util.ravel_pytree` order).
        perr: the standard errors (square root of the diagonal of `pcov`),
            with the structure of `p0`.
        cost: half the weighted residual sum of squares (1/2 sum rho(r^2) with a robust
            `Config.loss`), as in scipy's `least_squares`. A fit that ends on a full
            Gauss-Newton step promising less than `Config.ftol` of the cost takes it
            without another pass: `cost` and `pcov` are then those of the point
            before it, within that relative bound.
        status: a `Status` code: why the fit stopped.
        warmup_reason: a `WarmupReason` code: why the warmup handed over.
        warmup_mode: a `WarmupMode` code: the first-step regime.
        warmup_iterations: L-BFGS warmup iterations run.
        gn_iterations: Gauss-Newton iterations run.
        passes: passes over the data (Gauss-Newton iterations plus one).
        n_points: the number of points with nonzero weight.
        trace: the per-iteration `Trace`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import numpy as np
        >>> import hybrid_gn
        >>> x = np.linspace(-1.0, 1.0, 20)
        >>> result = hybrid_gn.fit(jnp.polyval, jnp.ones(3), x, 0.5 * x**2 - x + 2.0)
        >>> print(np.round(result.params, 3))
        [ 0.5 -1.   2. ]
        >>> bool(result.success), result.pcov.shape, int(result.n_points)
        (True, (3, 3), 20)
        >>> print(result.warmup_message)
        skipped (warmup='auto'): the data is no larger than the warmup subsample, ...
    """

    params: PyTree
    pcov: Float[Array, "p p"]
    perr: PyTree
    cost: Float[Array, ""]
    status: Int[Array, ""]
    warmup_reason: Int[Array, ""]
    warmup_mode: Int[Array, ""]
    warmup_iterations: Int[Array, ""]
    gn_iterations: Int[Array, ""]
    passes: Int[Array, ""]
    n_points: Int[Array, ""]
    trace: Trace

    @property
    def success(self):
        """True where the fit converged by ftol, xtol or gtol."""
        s = np.asarray(self.status)
        return (s >= Status.CONVERGED_FTOL) & (s <= Status.CONVERGED_GTOL)

    @property
    def message(self) -> str:
        """Readable status; for a batch of results, a count per outcome."""
        return _describe(np.asarray(self.status), Status)

    def summary(self) -> str:
        """For a batch of results: how many converged, and why the others did not.

        One line per outcome with its count and, for failures, the first
        problem indices (so they can be inspected or refitted).
        """
        codes = np.asarray(self.status).ravel()
        ok = (codes >= Status.CONVERGED_FTOL) & (codes <= Status.CONVERGED_GTOL)
        lines = [f"{codes.size} problems: {int(ok.sum())} converged, "
                 f"{int((~ok).sum())} did not"]
        for value in np.unique(codes):
            where = np.flatnonzero(codes == value)
            line = f"  {where.size} x {Status(int(value)).message}"
            if not Status(int(value)).success:
                shown = ", ".join(str(i) for i in where[:10])
                line += f" (problems {shown}{', ...' if where.size > 10 else ''})"
            lines.append(line)
        return "\n".join(lines)

    @property
    def warmup_message(self) -> str:
        """Readable warmup reason; for a batch of results, a count per reason."""
        return _describe(np.asarray(self.warmup_reason), WarmupReason)


def _describe(codes: np.ndarray, enum_type: type[enum.IntEnum]) -> str:
    if codes.ndim == 0:
        return enum_type(int(codes)).message
    values, counts = np.unique(codes, return_counts=True)
    return "; ".join(
        f"{c} x {enum_type(int(v)).message}" for v, c in zip(values, counts, strict=True)
    )
