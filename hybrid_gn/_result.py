"""Outcomes as data: status codes with messages, and the `Result` pytree.

Codes are plain integers inside the loop (jit/vmap friendly); they become
readable messages only here, at the edge.
"""

from __future__ import annotations

import enum

import equinox as eqx
import numpy as np
from jaxtyping import Array, Float, Int, PyTree


class Status(enum.IntEnum):
    """Why the whole fit stopped."""

    RUNNING = 0
    CONVERGED_FTOL = 1
    CONVERGED_XTOL = 2
    CONVERGED_GTOL = 3
    MAX_ITERATIONS = 4
    NONFINITE_START = 5
    STALLED = 6

    @property
    def message(self) -> str:
        return _STATUS_MESSAGES[self]

    @property
    def success(self) -> bool:
        return self in (Status.CONVERGED_FTOL, Status.CONVERGED_XTOL, Status.CONVERGED_GTOL)


_STATUS_MESSAGES = {
    Status.RUNNING: "still running (the loop was cut short)",
    Status.CONVERGED_FTOL: "converged: relative reduction of the cost below ftol",
    Status.CONVERGED_XTOL: "converged: relative step size below xtol",
    Status.CONVERGED_GTOL: "converged: scaled (projected) gradient below gtol",
    Status.MAX_ITERATIONS: "stopped: Gauss-Newton iteration cap reached",
    Status.NONFINITE_START: "failed: the cost or Jacobian at the starting point is NaN/Inf",
    Status.STALLED: "stopped: trust region collapsed without meeting a tolerance",
}


class WarmupReason(enum.IntEnum):
    """Why the L-BFGS warmup handed over to Gauss-Newton."""

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
    """First-step regime chosen from the relative loss at the start."""

    REFINE = 0
    CAREFUL = 1
    EXPLORE = 2


class Phase(enum.IntEnum):
    """Phase of the pipeline, as stored in the trace."""

    WARMUP = 1
    GAUSS_NEWTON = 2


class Trace(eqx.Module):
    """Fixed-length per-iteration record; entries past `length` are NaN / 0.

    `cost` is the warmup loss (mean half squared residual over the warmup
    subsample) in warmup entries and the full cost (half the weighted RSS)
    in Gauss-Newton entries; `radius` is NaN in warmup entries.
    """

    cost: Float[Array, " T"]
    grad_norm: Float[Array, " T"]
    radius: Float[Array, " T"]
    phase: Int[Array, " T"]
    length: Int[Array, ""]


class Result(eqx.Module):
    """The outcome of a fit, a pytree (so it passes through jit and vmap).

    `params` and `perr` have the structure of `p0`; `pcov` is over the
    flattened parameters (`jax.flatten_util.ravel_pytree` order). `cost` is
    half the weighted residual sum of squares, as in scipy's `least_squares`.
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
        return _describe(np.asarray(self.warmup_reason), WarmupReason)


def _describe(codes: np.ndarray, enum_type: type[enum.IntEnum]) -> str:
    if codes.ndim == 0:
        return enum_type(int(codes)).message
    values, counts = np.unique(codes, return_counts=True)
    return "; ".join(
        f"{c} x {enum_type(int(v)).message}" for v, c in zip(values, counts, strict=True)
    )
