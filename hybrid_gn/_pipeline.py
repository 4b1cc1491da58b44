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

from ._config import Config, warmup_pays_off
from ._data import Data
from ._phases import _accumulate as accumulate
from ._phases import _gauss_newton as gauss_newton
from ._phases import _warmup as warmup
from ._phases._accumulate import ResidualFn
from ._phases._gauss_newton import GaussNewtonState
from ._phases._warmup import WarmupState
from ._result import Phase, Trace

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


class StartFit(NamedTuple):
    """How well the model at a point explains the data (weighted)."""

    relative: Float[Array, ""]  # RSS over the total sum of squares: 1 - R^2
    shape: Float[Array, ""]  # 1 - corr(f, y)^2: the same after the best a * f + b


def start_fit(residual: ResidualFn, u, data: Data) -> StartFit:
    """`StartFit` of the prediction f at `u`, in one pass over `data`.

    The shape measure ignores what a Gauss-Newton step corrects exactly (the
    scale and offset of f) and sees what it does not (where the peaks are,
    how fast things decay). With r = w (f - y) and d = w (y - ybar), the
    deviations of f from ybar are a = r + d (weighted), so everything is sums
    over chunks of r, a and d; f is taken about ybar, which keeps the sums
    well conditioned unless f is far off (and then `relative` is large).
    """
    w2 = data.weight**2
    y_mean = jnp.sum(w2 * data.y) / jnp.sum(w2)

    def one_chunk(i):
        x, y, w = data.chunk(i)
        r = residual(u, x, y, w)
        d = w * (y - y_mean)
        a = r + d
        pairs = ((w, w), (w, a), (w, d), (a, a), (d, d), (a, d), (r, r))
        return jnp.stack([jnp.sum(left * right) for left, right in pairs])

    w2_sum, a_sum, d_sum, aa, dd, ad, rr = accumulate.sum_over_chunks(one_chunk, data.n_chunks)
    var_f = aa - a_sum**2 / w2_sum
    var_y = dd - d_sum**2 / w2_sum
    cov = ad - a_sum * d_sum / w2_sum
    both = (var_f > 0) & (var_y > 0)
    shape = jnp.where(both, 1 - cov**2 / jnp.where(both, var_f * var_y, 1), 1)
    return StartFit(relative(0.5 * rr, 0.5 * dd), jnp.clip(shape, 0, 1))


def poor_start(fit: StartFit, config: Config):
    """Whether Gauss-Newton starts with `poor_start_radius` (see gauss_newton.py)."""
    return (fit.shape > config.poor_shape_threshold) | (
        fit.relative > config.poor_loss_threshold)


def gauss_newton_start(residual: ResidualFn, u, sample: Data, config: Config
                       ) -> GaussNewtonState:
    """Gauss-Newton's state at `u`, its first radius set by the fit there on `sample`."""
    return gauss_newton.init(u, poor_start(start_fit(residual, u, sample), config), config)


def handed_over(residual: ResidualFn, ws: WarmupState, gs: GaussNewtonState, sample: Data,
                config: Config) -> GaussNewtonState:
    """`gs` while the warmup runs; Gauss-Newton's start at its best point once it stops
    (under vmap both are computed: one more evaluation on the sample per warmup step)."""
    return jax.lax.cond(ws.running, lambda: gs,
                        lambda: gauss_newton_start(residual, ws.best_u, sample, config))


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
        fit = start_fit(residual, u0, sample)
        ws = warmup.init(u0, loss, fit.relative, config, data.n)
        nan = jnp.full(length, jnp.nan, u0.dtype)
        return PipelineState(
            phase=jnp.where(ws.running, Phase.WARMUP, Phase.GAUSS_NEWTON).astype(jnp.int32),
            warmup=ws,
            gauss_newton=gauss_newton.init(u0, poor_start(fit, config), config),
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
        return PipelineState(phase, ws, handed_over(residual, ws, s.gauss_newton, sample, config),
                             trace)

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
