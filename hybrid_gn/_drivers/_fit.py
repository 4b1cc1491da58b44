"""`fit`: input checks (before any tracing), then the pipeline in one jitted function."""

from __future__ import annotations

import functools

from jaxtyping import PyTree

from .. import _pipeline as pipeline
from .._config import Config
from .._jit import jit
from .._model import Model
from .._result import Result
from .._validate import check_fit


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
    return _fit(*inputs, absolute_sigma, config)


@functools.partial(jit, static_argnames=("model",))
def _fit(model, p0, x, y, sigma, bounds, args, mask, absolute_sigma, config: Config) -> Result:
    setup, data = pipeline.prepare(model, p0, x, y, sigma, bounds, args, mask, config)
    state = pipeline.run(setup, data)
    return pipeline.finish(setup, state, data, (x, y, sigma, args), mask, absolute_sigma)
