"""`fit`: input validation (before any tracing), then the jitted pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import PyTree

from . import accumulate, gauss_newton, implicit, pipeline
from .config import Config, with_tolerances
from .covariance import covariance
from .data import Data, make_data
from .problem import Problem, flat_bounds, make_problem
from .result import Result

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
    Pure and jittable (`model` must be hashable, it is a static argument);
    vmappable over problems. Shapes are checked always, values (NaN/Inf,
    bounds, p0 inside bounds) whenever the inputs are concrete.
    """
    config = Config() if config is None else config
    validate(model, p0, x, y, sigma, bounds, check_finite, config, args, mask)
    return _jitted_fit(model, p0, x, y, sigma, bounds, args, mask, absolute_sigma, config)


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
    dtype = _float_dtype(p0, y)
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


def _float_dtype(p0, y):
    dtype = jnp.result_type(*jax.tree.leaves(p0), y)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(dtype, float)
    return dtype


def _concrete(*trees) -> bool:
    return not any(isinstance(a, jax.core.Tracer) for t in trees for a in jax.tree.leaves(t))


def validate(model, p0, x, y, sigma, bounds, check_finite: bool, config: Config,
             args: PyTree = None, mask=None) -> None:
    """Raise a clear ValueError/TypeError for bad input, before any tracing."""
    if not callable(model):
        raise TypeError(f"model must be callable as model(params, x), got {type(model).__name__}")
    if not isinstance(config, Config):
        raise TypeError(f"config must be a hybrid_gn.Config, got {type(config).__name__}")
    p0_leaves = jax.tree.leaves(p0)
    if not p0_leaves:
        raise ValueError("p0 has no parameters")
    for leaf in p0_leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.number):
            raise TypeError(f"p0 must contain numeric arrays, got dtype {jnp.result_type(leaf)}")
    p = sum(int(np.size(leaf)) for leaf in p0_leaves)
    if np.ndim(y) != 1:
        raise ValueError(f"y must be 1-D of shape (n,), got shape {np.shape(y)}")
    n = np.shape(y)[0]
    if n == 0:
        raise ValueError("y is empty: there are no data points")
    for leaf in jax.tree.leaves(x):
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] != n:
            raise ValueError(
                f"x and y disagree: x has an array of shape {np.shape(leaf)}, whose leading "
                f"axis must equal len(y) = {n}")
    if sigma is not None and np.shape(sigma) != (n,):
        raise ValueError(f"sigma must have shape (n,) = ({n},), got {np.shape(sigma)}")
    if mask is not None and (np.shape(mask) != (n,) or jnp.result_type(mask) != jnp.bool_):
        raise ValueError(f"mask must be a bool array of shape (n,) = ({n},), got "
                         f"{jnp.result_type(mask)} of shape {np.shape(mask)}")
    if n < p:
        raise ValueError(f"too few data points: n = {n} is less than the number of "
                         f"parameters p = {p}")
    if bounds is not None and not (isinstance(bounds, tuple | list) and len(bounds) == 2):
        raise ValueError("bounds must be a pair (lower, upper)")
    dtype = _float_dtype(p0, y)
    with jax.ensure_compile_time_eval():  # concrete values even under an outer jit
        lb, ub = flat_bounds(bounds, p0, dtype) if _concrete(bounds) else (None, None)
    _check_model_shape(model, p0, x, n, config, args)
    if not _concrete(p0, x, y, sigma, bounds, mask):
        return
    used = np.ones(n, bool) if mask is None else np.asarray(mask)
    n_used = int(np.sum(used))
    if n_used < p:
        raise ValueError(f"too few data points: mask leaves {n_used} points, fewer than the "
                         f"number of parameters p = {p}")
    if check_finite:
        _check_finite("y", np.asarray(y)[used])
        for leaf in jax.tree.leaves(x):
            _check_finite("x", np.asarray(leaf)[used])
        if sigma is not None:
            _check_finite("sigma", np.asarray(sigma)[used])
        for leaf in p0_leaves:
            _check_finite("p0", leaf)
    if sigma is not None and not np.all(np.asarray(sigma)[used] > 0):
        raise ValueError("sigma must be strictly positive")
    with jax.ensure_compile_time_eval():
        theta0 = np.asarray(ravel_pytree(jax.tree.map(lambda a: jnp.asarray(a, dtype), p0))[0])
    lb, ub = np.asarray(lb), np.asarray(ub)
    if np.any(np.isnan(lb)) or np.any(np.isnan(ub)):
        raise ValueError("bounds contain NaN")
    if np.any(lb >= ub):
        i = int(np.argmax(lb >= ub))
        raise ValueError(f"each lower bound must be strictly less than its upper bound: "
                         f"parameter {i} has lower {lb[i]} >= upper {ub[i]}")
    outside = (theta0 < lb) | (theta0 > ub)
    if np.any(outside):
        i = int(np.argmax(outside))
        raise ValueError(f"p0 is outside the bounds: parameter {i} = {theta0[i]} is not in "
                         f"[{lb[i]}, {ub[i]}]")
    if config.normalization == "bounds" and not (np.all(np.isfinite(lb)) and
                                                 np.all(np.isfinite(ub))):
        raise ValueError("normalization='bounds' needs finite lower and upper bounds")


def _check_finite(name: str, a) -> None:
    a = np.asarray(a)
    if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.sum(np.isfinite(a)))
        raise ValueError(f"{name} contains NaN or Inf ({bad} values); clean the data or "
                         f"pass check_finite=False")


def _check_model_shape(model, p0, x, n: int, config: Config, args: PyTree) -> None:
    size = min(config.chunk_size, n)
    chunk = jax.tree.map(lambda a: jax.ShapeDtypeStruct((size, *np.shape(a)[1:]),
                                                        jnp.result_type(a)), x)
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), p0)
    out = (jax.eval_shape(model, params, chunk) if args is None
           else jax.eval_shape(model, params, chunk, args))
    if not isinstance(out, jax.ShapeDtypeStruct) or tuple(out.shape) != (size,):
        shape = out.shape if isinstance(out, jax.ShapeDtypeStruct) else type(out).__name__
        raise ValueError(f"model(params, x) must return one value per point: for a chunk of "
                         f"{size} points it returned shape {shape}")
