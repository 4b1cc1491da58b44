"""The pipeline's pure transitions: every driver is a loop around these.

A fit is a `Setup` (the normalized problem, the model's arguments, the
warmup's in-memory sample, the configuration) and a `PipelineState` (both
phases' states, the phase code and the trace). The transitions are
`start`, `warmup_step`, `propose` / `conclude` (one Gauss-Newton iteration
split around the evaluation of the trial, which a streaming driver does on
the host, chunk by chunk) or `gauss_newton_step` (the same with the data in
memory), and `finish` (phase 3). The fused driver runs them in two
consecutive `lax.while_loop`s (`run`; under `vmap`, `fit`'s and the batched
driver's loops step only the running problems, `_compacted`), multi-start on
each survivor, the streaming one as separate jitted calls between reads.

The phases run as two loops over one state rather than one loop switching
on the phase: under `vmap` a switch on a batched phase runs both branches
every iteration (measured: the two loops fit 1e4 small problems 1.7x
faster), and XLA's CPU runtime was seen to hang intermittently on the
batched switch around the line search's own loop.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PyTree

from . import _implicit as implicit
from ._compacted import compacted_loop
from ._config import (
    Config,
    covariance_kind,
    matrix_free,
    robust_loss,
    trace_length,
    warmup_pays_off,
    with_tolerances,
)
from ._data import Data, make_data
from ._loss import Loss
from ._phases import _accumulate as accumulate
from ._phases import _gauss_newton as gauss_newton
from ._phases import _matrix_free as matrix_free_model
from ._phases import _steihaug as steihaug
from ._phases import _warmup as warmup
from ._phases._covariance import covariance, variances
from ._phases._gauss_newton import GaussNewtonState, Proposal
from ._phases._start_fit import poor_start, start_fit
from ._phases._warmup import WarmupState
from ._problem import Problem, make_problem
from ._result import Phase, Result, Trace
from ._validate import float_dtype

DONE = 0  # the phase code of a finished fit


class Setup(eqx.Module):
    """What the transitions read and never change: one problem ready to run."""

    problem: Problem
    model_args: PyTree  # the third argument of the model (its arrays, the user's args)
    sample: Data  # the warmup's subsample (in memory, whatever the driver)
    config: Config  # tolerances filled in for the dtype
    n_points: int = eqx.field(static=True)  # of the whole data (warmup="auto" decides on it)

    @property
    def residual(self) -> accumulate.ResidualFn:
        return self.problem.residual(self.model_args)

    @property
    def loss(self) -> Loss:
        """The robust loss rho of the cost 1/2 sum rho(r^2) (linear: plain least squares)."""
        return robust_loss(self.config)

    @property
    def penalty_rows(self) -> accumulate.RowsFn | None:
        """The configured penalty's residual rows as a function of u (None: no penalty)."""
        penalty, problem = self.config.penalty, self.problem
        if penalty is None:
            return None
        return lambda u: penalty.rows(problem.to_theta(u))

    def penalty_cost(self, u: Float[Array, " p"]) -> Float[Array, ""]:
        """1/2 |rows(u)|^2: the penalty's part of the cost (0 without one)."""
        rows = self.penalty_rows
        return jnp.zeros((), u.dtype) if rows is None else 0.5 * jnp.sum(rows(u) ** 2)

    @property
    def warmup_runs(self) -> bool:
        """Static: whether a warmup loop exists at all."""
        return warmup_pays_off(self.config, self.n_points)

    @property
    def matrix_free(self) -> bool:
        """Static: Gauss-Newton without a p x p matrix (`Config.dense_max_params`)."""
        return matrix_free(self.config, self.problem.u0.shape[0])

    def gram_operator(self, u: Float[Array, " p"], data: Data, weight=1.0
                      ) -> steihaug.Operator:
        """v -> weight * J^T J v at `u` over `data` (one pass per product)."""
        residual, loss = self.residual, self.loss
        return lambda v: weight * matrix_free_model.gram_product(residual, u, data, v, loss)

    def evaluate(self, u: Float[Array, " p"], data: Data, use_qr=False) -> gauss_newton.Model:
        """The Gauss-Newton model at `u`: one pass over `data`."""
        config = self.config
        if self.matrix_free:
            return matrix_free_model.evaluate(self.residual, u, data, self.loss)
        return accumulate.linearize(self.residual, u, data, config.jacobian,
                                    config.factorization, use_qr, self.loss,
                                    self.penalty_rows)


class PipelineState(eqx.Module):
    phase: Int[Array, ""]
    warmup: WarmupState
    gauss_newton: GaussNewtonState
    trace: Trace


def make_setup(model, p0: PyTree, bounds, model_args: PyTree, config: Config, dtype,
               sample: Data, n_points: int) -> Setup:
    """Phase 0 on the warmup `sample`: flatten, normalize, place the start.

    Each parameter's influence on the residuals at p0 floors its scale
    (`_normalize`); it is measured on at most `warmup_max_points` (else
    `chunk_size`) points of the sample, evaluated as one chunk.
    """
    config = with_tolerances(config, dtype)
    influence = sample.subsample(config.warmup_max_points or config.chunk_size)
    problem = make_problem(model, p0, bounds, config, dtype, influence, model_args)
    return Setup(problem, model_args, sample, config, n_points)


def prepare(model, p0, x, y, sigma, bounds, args, mask, config: Config) -> tuple[Setup, Data]:
    """The `Setup` and `Data` of a problem held in memory. The loops run on constants
    (stop_gradient); derivatives come from `implicit.solution` in `finish`."""
    dtype = float_dtype(p0, y)
    x, y, sigma, args, p0, bounds, mask, config = jax.lax.stop_gradient(
        (x, y, sigma, args, p0, bounds, mask, config))
    data = make_data(x, y, sigma, config.chunk_size, dtype, mask)
    setup = make_setup(model, p0, bounds, args, config, dtype,
                       data.subsample(config.warmup_max_points), data.n)
    return setup, data


def warmup_loss(setup: Setup, sample: Data | None = None) -> Callable[[Array], Array]:
    """The warmup's loss: the mean cost per point (1/2 rho(r^2)) on `sample` (the setup's
    by default), plus the penalty spread over the data's points, the argument projected
    onto the box."""
    sample = setup.sample if sample is None else sample
    residual, problem, robust = setup.residual, setup.problem, setup.loss
    n_sample = jnp.sum(sample.weight > 0)

    def loss(u):
        u = jnp.clip(u, problem.lower, problem.upper)
        return (accumulate.cost(residual, u, sample, robust) / n_sample
                + setup.penalty_cost(u) / max(setup.n_points, 1))

    return loss


def start(setup: Setup, u0: Float[Array, " p"] | None = None) -> PipelineState:
    """The state at `u0` (the problem's start by default): the start evaluated on the
    sample, the warmup's regime and Gauss-Newton's first radius chosen."""
    config = setup.config
    u0 = setup.problem.u0 if u0 is None else u0
    fit = start_fit(setup.residual, u0, setup.sample)
    ws = warmup.init(u0, warmup_loss(setup), fit.relative, config, setup.n_points)
    records = trace_length(config)
    nan = jnp.full(records, jnp.nan, u0.dtype)
    return _strong(PipelineState(
        phase=jnp.where(ws.running, Phase.WARMUP, Phase.GAUSS_NEWTON).astype(jnp.int32),
        warmup=ws, gauss_newton=gauss_newton.init(u0, poor_start(fit, config), config),
        trace=Trace(nan, nan, nan, jnp.zeros(records, jnp.int32), jnp.asarray(0))))


def warmup_step(setup: Setup, state: PipelineState) -> PipelineState:
    """One L-BFGS iteration; at its last, Gauss-Newton's start at the warmup's best point
    (under vmap both are computed: one more evaluation on the sample per step)."""
    problem, config = setup.problem, setup.config
    ws = warmup.update(state.warmup, warmup_loss(setup), problem.lower, problem.upper, config)
    phase = jnp.where(ws.running, Phase.WARMUP, Phase.GAUSS_NEWTON).astype(jnp.int32)
    gs = jax.lax.cond(ws.running, lambda: state.gauss_newton,
                      lambda: _gauss_newton_start(setup, ws.best_u))
    trace = _record(config, state.trace, Phase.WARMUP, ws.loss, jnp.linalg.norm(ws.grad),
                    jnp.nan)
    return _strong(PipelineState(phase, ws, gs, trace))


def _gauss_newton_start(setup: Setup, u: Float[Array, " p"]) -> GaussNewtonState:
    """Gauss-Newton's state at `u`, its first radius set by the fit there on the sample."""
    fit = start_fit(setup.residual, u, setup.sample)
    return gauss_newton.init(u, poor_start(fit, setup.config), setup.config)


def propose(setup: Setup, state: PipelineState, hess: steihaug.Operator | None = None
            ) -> Proposal:
    """The trial point of the next Gauss-Newton iteration (the start, at the first).

    A matrix-free setup needs `hess`, the J^T J products at the current point
    (`Setup.gram_operator`); the dense path reads its stored factor.
    """
    gs, problem = state.gauss_newton, setup.problem
    if setup.matrix_free:
        return steihaug.propose(gs, problem.lower, problem.upper, hess, setup.config.cg_max_iter)
    return gauss_newton.propose(gs, problem.lower, problem.upper)


def conclude(setup: Setup, state: PipelineState, proposal: Proposal,
             new: gauss_newton.Model) -> PipelineState:
    """Accept or reject the trial given its Gauss-Newton model `new`; record the step."""
    problem, config = setup.problem, setup.config
    gs = gauss_newton.conclude(state.gauss_newton, proposal, new, problem.lower, problem.upper,
                               config)
    phase = jnp.where(gs.running, Phase.GAUSS_NEWTON, DONE).astype(jnp.int32)
    free = gauss_newton.free_variables(gs.u, gs.model.gradient, problem.lower, problem.upper)
    grad_norm = jnp.linalg.norm(jnp.where(free, gs.model.gradient, 0))
    trace = _record(config, state.trace, Phase.GAUSS_NEWTON, gs.model.cost, grad_norm,
                    gs.radius)
    return _strong(PipelineState(phase, state.warmup, gs, trace))


def gauss_newton_step(setup: Setup, data: Data, state: PipelineState) -> PipelineState:
    """One Gauss-Newton iteration on data in memory: one pass to evaluate the trial (and,
    matrix-free, one per CG iteration of the step)."""
    proposal = propose(setup, state, setup.gram_operator(state.gauss_newton.u, data))
    new = setup.evaluate(proposal.trial, data, state.gauss_newton.use_qr)
    return conclude(setup, state, proposal, new)


def warming_up(state: PipelineState):
    return state.phase == Phase.WARMUP


def running(state: PipelineState):
    return state.phase != DONE


def run(setup: Setup, data: Data, u0: Float[Array, " p"] | None = None,
        compact: bool = False) -> PipelineState:
    """Both phases from `u0` (the problem's start by default), to the end.

    With `compact`, under `jax.vmap` the problems are stepped by `compacted_loop` (only
    those still running, in gathered chunks) instead of a batched `while_loop`, which
    steps every problem until the slowest has finished; each problem's states are the
    same either way.
    """
    state = start(setup, u0)
    if not compact:
        return _loops(setup, data, state)
    arrays, static = eqx.partition((setup, data, state), eqx.is_array)
    return eqx.combine(_compactable(static)(arrays), static[2])


def _loops(setup: Setup, data: Data, state: PipelineState) -> PipelineState:
    if setup.warmup_runs:
        state = jax.lax.while_loop(warming_up, lambda s: warmup_step(setup, s), state)
    return jax.lax.while_loop(running, lambda s: gauss_newton_step(setup, data, s), state)


def _compactable(static: PyTree) -> Callable[[PyTree], PyTree]:
    """`_loops` over the arrays of `(setup, data, state)`, whose rule under `jax.vmap` runs
    the loops by `compacted_loop` (on the problems' own setups and data, and on those
    shared by all of them, as the vmap has them)."""
    def combined(arrays):
        return eqx.combine(arrays, static)

    @jax.custom_batching.custom_vmap
    def loops(arrays):
        setup, data, state = combined(arrays)
        return eqx.filter(_loops(setup, data, state), eqx.is_array)

    @loops.def_vmap
    def _rule(axis_size, in_batched, arrays):
        setups, data, states = arrays
        batched = in_batched[0][:2]  # shared inputs (x, say) stay shared: not copied
        states = eqx.combine(jax.tree.map(lambda a, b: a if b else jnp.broadcast_to(
            a, (axis_size, *jnp.shape(a))), states, in_batched[0][2]), static[2])

        def inputs(i):  # the setup and data of the problems of a chunk: arrays only
            return eqx.combine(i, static[:2])

        if static[0].warmup_runs:
            states = compacted_loop(warming_up, lambda i, s: warmup_step(inputs(i)[0], s),
                                    states, (setups, data), batched=batched)
        states = compacted_loop(running, lambda i, s: gauss_newton_step(*inputs(i), s),
                                states, (setups, data), batched=batched)
        out = eqx.filter(states, eqx.is_array)
        return out, jax.tree.map(lambda _: True, out)

    return loops


def result(setup: Setup, state: PipelineState, params: PyTree, n_points,
           absolute_sigma, data: Data | None = None) -> Result:
    """Phase 3: the covariance (curve_fit semantics) and the `Result` of a finished run.

    `n_points` counts the points with nonzero weight (summed on device in
    memory, counted while reading when streamed). A matrix-free fit's
    covariance needs the `data` in memory (else it is not computed).
    """
    gs, ws = state.gauss_newton, state.warmup
    pcov = parameter_covariance(setup, gs, n_points, absolute_sigma, data)
    variance = pcov if pcov.ndim == 1 else jnp.diagonal(pcov)
    return Result(
        params=params, pcov=pcov,
        perr=setup.problem.unravel(jnp.sqrt(variance)), cost=gs.model.cost,
        status=gs.status, warmup_reason=ws.reason, warmup_mode=ws.mode,
        warmup_iterations=ws.iteration, gn_iterations=gs.iteration,
        passes=gs.iteration + 1, n_points=n_points, trace=state.trace)


def parameter_covariance(setup: Setup, gs: GaussNewtonState, n_points, absolute_sigma,
                         data: Data | None) -> Array:
    """pcov as `Config.covariance` asks: (p, p) when dense, else the (p,) variances (NaN
    when not computed)."""
    problem, config, model = setup.problem, setup.config, gs.model
    p, scale = problem.u0.shape[0], problem.norm.scale
    kind = covariance_kind(config, p, problem.dtype)
    if kind == "none" or setup.matrix_free and data is None:
        return jnp.full(p, jnp.nan, problem.dtype)
    if kind == "diagonal" and setup.matrix_free:
        return variances(setup.gram_operator(gs.u, data), model.diagonal, model.cost, scale,
                         n_points, absolute_sigma, 10 * config.cg_max_iter)
    if setup.matrix_free:  # dense within the budget: J^T J formed once, at the end
        model = accumulate.linearize(setup.residual, gs.u, data, config.jacobian, "normal",
                                     False, setup.loss)
    pcov = covariance(model.factor, model.cost, scale, n_points, absolute_sigma,
                      ~model.orthogonal_rows)
    return jnp.diagonal(pcov) if kind == "diagonal" else pcov


def finish(setup: Setup, state: PipelineState, data: Data, eta: PyTree, mask,
           absolute_sigma) -> Result:
    """The `Result` of a run on data in memory, its params differentiable in
    `eta` = (x, y, sigma, model_args) by the implicit rule at the solution."""
    gs, problem, config, robust = state.gauss_newton, setup.problem, setup.config, setup.loss
    # as a float, so that closure conversion hoists it (it leaves integer tracers closed over)
    keep = None if mask is None else jnp.asarray(mask, problem.dtype)

    def objective(u, eta):
        x, y, sigma, model_args = eta
        data = make_data(x, y, sigma, config.chunk_size, problem.dtype, keep)
        return (accumulate.cost(problem.residual(model_args), u, data, robust)
                + setup.penalty_cost(u))

    free = gauss_newton.free_variables(gs.u, gs.model.gradient, problem.lower, problem.upper)
    # matrix-free: the implicit rule solves with Hessian-vector products, preconditioned by
    # diag(J^T J), instead of forming the p x p Hessian
    diagonal = gs.model.diagonal if setup.matrix_free else None
    u_final = implicit.solution(objective, gs.u, free, eta, diagonal)
    return result(setup, state, problem.to_params(u_final), jnp.sum(data.weight > 0),
                  absolute_sigma, data)


def _record(config: Config, trace: Trace, phase, cost, grad_norm, radius) -> Trace:
    """`trace` with one more entry (the last slot is overwritten once it is full); with
    `config.progress`, the entry is also reported on the host."""
    if config.progress:  # static: without it no callback is compiled in
        jax.debug.callback(_report, phase, trace.length + 1, cost, grad_norm, radius)
    k = trace.next_entry
    return Trace(trace.cost.at[k].set(cost), trace.grad_norm.at[k].set(grad_norm),
                 trace.radius.at[k].set(radius), trace.phase.at[k].set(phase),
                 trace.length + 1)


def _report(phase, iteration, cost, grad_norm, radius) -> None:
    """Host side of `Config.progress`: one line per iteration on stderr (batched under vmap)."""
    name = "warmup" if int(np.ravel(phase)[0]) == Phase.WARMUP else "gauss-newton"

    def show(a) -> str:
        return np.array2string(np.asarray(a), precision=6, separator=", ")

    print(f"hybrid_gn {name} iteration {show(iteration)}: cost {show(cost)} "
          f"|grad| {show(grad_norm)} radius {show(radius)}", file=sys.stderr, flush=True)


def _strong(tree: PyTree) -> PyTree:
    """`tree` without weakly typed leaves, so every iteration's state has one signature."""
    return jax.tree.map(lambda a: jnp.asarray(a, dtype=a.dtype), tree)
