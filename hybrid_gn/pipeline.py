"""The whole fit, warmup then Gauss-Newton, inside one jitted function.

The state holds both phases' states, a phase code and the trace; each
iteration advances the active phase by one pure `update` and records a
trace entry. The phases run as two consecutive `lax.while_loop`s over that
one state rather than one loop switching on the phase: under `vmap` a
switch on a batched phase runs both branches every iteration (measured: the
two loops fit 1e4 small problems 1.7x faster), and XLA's CPU runtime was
seen to hang intermittently on the batched switch around the line search's
own loop.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from . import accumulate, gauss_newton, warmup
from .accumulate import ResidualFn
from .config import Config, warmup_pays_off
from .data import Data
from .gauss_newton import GaussNewtonState
from .result import Phase, Trace
from .warmup import WarmupState

_DONE = 0


class PipelineState(eqx.Module):
    phase: Int[Array, ""]
    warmup: WarmupState
    gauss_newton: GaussNewtonState
    trace: Trace


def total_cost(data: Data) -> Float[Array, ""]:
    """Half the weighted total sum of squares of `y`: the cost of its weighted mean."""
    w2 = data.weight**2
    y_mean = jnp.sum(w2 * data.y) / jnp.sum(w2)
    return 0.5 * jnp.sum(w2 * (data.y - y_mean) ** 2)


def relative(cost, total) -> Float[Array, ""]:
    """`cost` over `total` (`total_cost`); inf for a cost above a zero total."""
    return jnp.where(total > 0, cost / jnp.where(total > 0, total, 1),
                     jnp.where(cost > 0, jnp.inf, 0))


def relative_loss(residual: ResidualFn, u, data: Data) -> Float[Array, ""]:
    """Weighted RSS at `u` over the weighted total sum of squares of `y`."""
    return relative(accumulate.cost(residual, u, data), total_cost(data))


def gauss_newton_start(ws: WarmupState, sample: Data, config: Config) -> GaussNewtonState:
    """Gauss-Newton's state at the warmup's best point, its first radius set by the
    relative loss there (the warmup loss is the mean cost over `sample`)."""
    rel = relative(ws.best_loss * jnp.sum(sample.weight > 0), total_cost(sample))
    return gauss_newton.init(ws.best_u, rel, config)


def report(phase, iteration, cost, grad_norm, radius) -> None:
    """Host side of `Config.progress`: one line per iteration on stderr (batched under vmap)."""
    name = "warmup" if int(np.ravel(phase)[0]) == Phase.WARMUP else "gauss-newton"

    def show(a) -> str:
        return np.array2string(np.asarray(a), precision=6, separator=", ")

    print(f"hybrid_gn {name} iteration {show(iteration)}: cost {show(cost)} "
          f"|grad| {show(grad_norm)} radius {show(radius)}", file=sys.stderr, flush=True)


class Phases(NamedTuple):
    """The pipeline's pure pieces for one problem: its start and one step of each phase."""

    start: Callable[[Float[Array, " p"]], PipelineState]
    warmup_step: Callable[[PipelineState], PipelineState]
    gauss_newton_step: Callable[[PipelineState], PipelineState]
    warmup_runs: bool  # static: whether the warmup loop exists at all


def phases(residual: ResidualFn, lower, upper, data: Data, config: Config) -> Phases:
    """Build the start and step functions for one problem inside the box [lower, upper]."""
    sample = data.subsample(config.warmup_max_points)
    n_sample = jnp.sum(sample.weight > 0)

    def loss(u):
        return accumulate.cost(residual, jnp.clip(u, lower, upper), sample) / n_sample

    def evaluate(u, use_qr):
        return accumulate.linearize(residual, u, data, config.jacobian, config.factorization,
                                    use_qr)

    length = config.trace_length

    def start(u0) -> PipelineState:
        ws = warmup.init(u0, loss, relative_loss(residual, u0, sample), config, data.n)
        nan = jnp.full(length, jnp.nan, u0.dtype)
        return PipelineState(
            phase=jnp.where(ws.running, Phase.WARMUP, Phase.GAUSS_NEWTON).astype(jnp.int32),
            warmup=ws,
            gauss_newton=gauss_newton_start(ws, sample, config),
            trace=Trace(nan, nan, nan, jnp.zeros(length, jnp.int32), jnp.asarray(0)))

    def record(trace: Trace, phase, cost, grad_norm, radius) -> Trace:
        k = jnp.minimum(trace.length, length - 1)
        return Trace(trace.cost.at[k].set(cost), trace.grad_norm.at[k].set(grad_norm),
                     trace.radius.at[k].set(radius), trace.phase.at[k].set(phase),
                     trace.length + 1)

    def warmup_step(s: PipelineState) -> PipelineState:
        ws = warmup.update(s.warmup, loss, lower, upper, config)
        phase = jnp.where(ws.running, Phase.WARMUP, Phase.GAUSS_NEWTON).astype(jnp.int32)
        trace = record(s.trace, Phase.WARMUP, ws.loss, jnp.linalg.norm(ws.grad), jnp.nan)
        if config.progress:  # static: without it no callback is compiled in
            jax.debug.callback(report, Phase.WARMUP, trace.length, ws.loss,
                               jnp.linalg.norm(ws.grad), jnp.nan)
        return PipelineState(phase, ws, gauss_newton_start(ws, sample, config), trace)

    def gauss_newton_step(s: PipelineState) -> PipelineState:
        gs = gauss_newton.update(s.gauss_newton, evaluate, lower, upper, config)
        phase = jnp.where(gs.running, Phase.GAUSS_NEWTON, _DONE).astype(jnp.int32)
        gradient = gs.model.gradient
        free = gauss_newton.free_variables(gs.u, gradient, lower, upper)
        grad_norm = jnp.linalg.norm(jnp.where(free, gradient, 0))
        trace = record(s.trace, Phase.GAUSS_NEWTON, gs.model.cost, grad_norm, gs.radius)
        if config.progress:
            jax.debug.callback(report, Phase.GAUSS_NEWTON, trace.length, gs.model.cost,
                               grad_norm, gs.radius)
        return PipelineState(phase, s.warmup, gs, trace)

    return Phases(start, warmup_step, gauss_newton_step, warmup_pays_off(config, data.n))


def warming_up(state: PipelineState):
    return state.phase == Phase.WARMUP


def running(state: PipelineState):
    return state.phase != _DONE


def run(residual: ResidualFn, u0, lower, upper, data: Data, config: Config) -> PipelineState:
    """Run both phases from normalized start `u0` inside the box [lower, upper]."""
    steps = phases(residual, lower, upper, data, config)
    state = steps.start(u0)
    if steps.warmup_runs:
        state = jax.lax.while_loop(warming_up, steps.warmup_step, state)
    return jax.lax.while_loop(running, steps.gauss_newton_step, state)
