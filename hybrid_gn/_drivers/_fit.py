"""`fit`: input validation (before any tracing), then the jitted pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from .. import _implicit as implicit
from .. import _pipeline as pipeline
from .._config import Config, with_tolerances
from .._data import Data, make_data
from .._phases import _accumulate as accumulate
from .._phases import _gauss_newton as gauss_newton
from .._phases._covariance import covariance
from .._problem import Problem, make_problem
from .._result import Result
from .._validate import check_fit, float_dtype

Model = Callable[[PyTree, PyTree], jax.Array]


def fit(
    model: Model,
    p0: PyTree,
    x: PyTree,
    y,
    *,
    sigma=None,
    bounds=None,
    args: PyTree = None,
    mask=None,
    absolute_sigma: bool = False,
    check_finite: bool = True,
    config: Config | None = None,
) -> Result:
    """Fit `model(params, x) ~ y` by least squares; returns a `Result` pytree.

    With `args` given, the model is called as `model(params, x, args)`.
    `Result.params` is differentiable (forward and reverse mode) with respect
    to `x`, `y`, `sigma` and `args` by implicit differentiation at the
    solution; the other fields carry no derivatives.

    `p0` is any pytree of arrays (the structure of `params`); `x` a pytree of
    arrays with leading axis n; `y` of shape (n,); `sigma` None or (n,)
    standard deviations (residuals are divided by them); `bounds` None or
    `(lower, upper)`, each a scalar, a flat (p,) array or a pytree like `p0`;
    `mask` None or (n,) bool, False for points that must not count (padding
    of ragged batches: weight 0, their y and sigma are ignored, the model is
    still evaluated there, so pad x with harmless values).
    Pure and jittable; vmappable over problems. The model's arrays (the
    fields of an `equinox.Module`, the arguments of a `functools.partial`)
    are data, differentiable like `args`; everything else about the model
    is compiled in, and a model that now computes something else (a changed
    attribute or closure) gets a new program (`_model`). Shapes are checked
    always, values (NaN/Inf, bounds, p0 inside bounds) whenever the inputs
    are concrete.
    """
    config = Config() if config is None else config
    inputs = check_fit(model, p0, x, y, sigma, bounds, check_finite, config, args, mask)
    return _jitted_fit(*inputs, absolute_sigma, config)


def _fit(model, p0, x, y, sigma, bounds, args, mask, absolute_sigma, config: Config) -> Result:
    setup = prepare(model, p0, x, y, sigma, bounds, args, mask, config)
    state = pipeline.run(setup.residual, setup.problem.u0, setup.problem.lower,
                         setup.problem.upper, setup.data, setup.config)
    return finish(setup.problem, state, setup.data, (x, y, sigma, args), mask, absolute_sigma,
                  setup.config)


class Setup(NamedTuple):
    """One problem ready for the pipeline: normalized, its data wrapped, its residual."""

    problem: Problem
    data: Data
    residual: accumulate.ResidualFn
    config: Config

    @property
    def phases(self) -> pipeline.Phases:
        problem = self.problem
        return pipeline.phases(self.residual, problem.lower, problem.upper, self.data,
                               self.config)


def prepare(model, p0, x, y, sigma, bounds, args, mask, config: Config) -> Setup:
    """Phase 0 and the data of one problem. The loop runs on constants (stop_gradient);
    derivatives come from `implicit.solution` in `finish`."""
    dtype = float_dtype(p0, y)
    config = with_tolerances(config, dtype)
    x, y, sigma, args, p0, bounds, mask, config = jax.lax.stop_gradient(
        (x, y, sigma, args, p0, bounds, mask, config))
    data = make_data(x, y, sigma, config.chunk_size, dtype, mask)
    # the influence at p0 (phase 0) on the warmup subsample; a bounded one when the warmup
    # uses all the data (it is evaluated as one chunk: p x n numbers)
    sample = data.subsample(config.warmup_max_points or config.chunk_size)
    problem = make_problem(model, p0, bounds, config, dtype, sample, args)
    return Setup(problem, data, problem.residual(args), config)


_jitted_fit = jax.jit(_fit, static_argnames=("model",))


def finish(problem: Problem, state: pipeline.PipelineState, data: Data, eta, mask,
           absolute_sigma, config: Config) -> Result:
    """The `Result` of a finished run, its params differentiable in `eta` = (x, y, sigma, args)."""
    gs = state.gauss_newton
    dtype = problem.dtype
    # as a float, so that closure conversion hoists it (it leaves integer tracers closed over)
    keep = None if mask is None else jnp.asarray(mask, dtype)

    def objective(u, eta):
        x, y, sigma, model_args = eta
        return accumulate.cost(problem.residual(model_args), u,
                               make_data(x, y, sigma, config.chunk_size, dtype, keep))

    free = gauss_newton.free_variables(gs.u, gs.model.gradient, problem.lower, problem.upper)
    u_final = implicit.solution(objective, gs.u, free, eta)
    return make_result(problem, problem.to_params(u_final), state, jnp.sum(data.weight > 0),
                       absolute_sigma)


def make_result(problem: Problem, params: PyTree, state: pipeline.PipelineState, n_points,
                absolute_sigma) -> Result:
    """Phase 3: covariance (curve_fit semantics) and the `Result` of a finished run.

    `n_points` counts the points with nonzero weight (the fused driver sums
    them on device; the streaming driver counts them while reading).
    """
    gs, ws = state.gauss_newton, state.warmup
    pcov = covariance(gs.model.factor, gs.model.cost, problem.norm.scale, n_points,
                      absolute_sigma)
    return Result(
        params=params, pcov=pcov,
        perr=problem.unravel(jnp.sqrt(jnp.diagonal(pcov))), cost=gs.model.cost,
        status=gs.status, warmup_reason=ws.reason, warmup_mode=ws.mode,
        warmup_iterations=ws.iteration, gn_iterations=gs.iteration,
        passes=gs.iteration + 1, n_points=n_points, trace=state.trace)
