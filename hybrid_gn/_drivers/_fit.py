"""`fit`: input checks (before any tracing), then the pipeline in one jitted function."""

from __future__ import annotations

import functools

from jax.sharding import Mesh
from jaxtyping import PyTree

from .. import _pipeline as pipeline
from .._config import DEFAULT, Config
from .._group_weights import GroupWeights
from .._jit import jit
from .._model import Model
from .._result import Result
from .._validate import check_fit, mesh_axis, weighted_sigma
from ._sharded import fit_sharded


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
    group_weights: GroupWeights | None = None,
    mesh: Mesh | None = None,
    data_axis: str | None = None,
) -> Result:
    """Fit `model(params, x) ~ y` by nonlinear least squares, in one jitted call.

    The four phases (normalization, L-BFGS warmup, trust-region Gauss-Newton,
    covariance) run inside one compiled function with no host round trips. It
    is pure and jittable, and vmappable over problems: under `jax.vmap` only the
    problems still running are stepped, in chunks, as in `fit_batch`, which fits
    many problems (ragged ones too) in one call. `Result.params` is
    differentiable (forward and reverse mode) with respect to `x`, `y`,
    `sigma` and `args` by implicit differentiation at the solution; the other
    fields carry no derivatives.

    The model's arrays (the fields of an `equinox.Module`, the arguments of a
    `functools.partial`) are data, differentiable like `args`; everything else
    about the model is compiled in, and a model that now computes something
    else (a changed attribute or closure) gets a new program. Shapes are
    checked always, values (NaN/Inf, bounds, p0 inside bounds) whenever the
    inputs are concrete.

    Args:
        model: `model(params, x)`, or `model(params, x, args)` when `args` is
            given, returning the (n,) predictions; written with `jax.numpy`.
        p0: the starting point, any pytree of arrays (the structure of
            `params`).
        x: a pytree of arrays with leading axis n.
        y: the (n,) data.
        sigma: None or (n,) standard deviations (residuals are divided by
            them).
        bounds: None or `(lower, upper)`, each a scalar, a flat (p,) array or a
            pytree like `p0`.
        args: extra data passed to the model as its third argument.
        mask: None or (n,) bool, False for points that must not count (padding
            of ragged batches: weight 0, their y and sigma are ignored, the
            model is still evaluated there, so pad x with harmless values).
        absolute_sigma: whether `sigma` is in the units of `y`, as in
            `scipy.optimize.curve_fit` (else the covariance is scaled by the
            reduced chi-square).
        check_finite: refuse NaN/Inf in the data and in `p0`.
        config: the settings of the four phases (`Config()` when None).
        group_weights: a `GroupWeights`: group g's points count w_g times in the
            cost (folded into `sigma`), or None.
        mesh: None, or a `jax.sharding.Mesh` whose devices share the points: each
            accumulates the Gauss-Newton model of its share, and one all-reduce
            of p x p + p + 1 numbers per pass combines them (nothing data-sized
            crosses devices). The answer equals the single-device fit's up to
            the order of the sums. The devices may belong to several processes
            (after `jax.distributed.initialize()`): each then passes its share as
            global arrays (`jax.make_array_from_process_local_data`), and every
            process gets the whole answer.
        data_axis: the mesh axis the points are split over (the mesh's first
            when None).

    Returns:
        A `Result` pytree: `params` and `perr` with the structure of `p0`,
        `pcov`, `cost`, the status and the per-iteration `trace`.

    Raises:
        ValueError: bad input (shapes, NaN/Inf with `check_finite`, sigma <= 0,
            p0 outside the bounds, lower >= upper, too few points), refused
            before anything is compiled; the message names the argument.
        TypeError: data that is not real (complex, for instance), a model that
            is not callable, cannot be traced or returns complex values, or a
            `config` that is not a `Config`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import numpy as np
        >>> import hybrid_gn
        >>> def model(p, x):
        ...     return p[0] * jnp.exp(-p[1] * x)
        >>> x = np.linspace(0.0, 4.0, 50)
        >>> y = 2.0 * np.exp(-1.3 * x)
        >>> result = hybrid_gn.fit(model, jnp.array([1.0, 1.0]), x, y)
        >>> print(bool(result.success), np.round(result.params, 3))
        True [2.  1.3]
    """
    config = DEFAULT if config is None else config
    sigma = weighted_sigma(group_weights, x, y, sigma)
    inputs = check_fit(model, p0, x, y, sigma, bounds, check_finite, config, args, mask)
    if mesh is not None or data_axis is not None:
        axis = mesh_axis(mesh, data_axis, "data_axis")
        return fit_sharded(inputs, absolute_sigma, config, mesh, axis)
    return _fit(*inputs, absolute_sigma, config)


@functools.partial(jit, static_argnames=("model",))
def _fit(model, p0, x, y, sigma, bounds, args, mask, absolute_sigma, config: Config) -> Result:
    setup, data = pipeline.prepare(model, p0, x, y, sigma, bounds, args, mask, config)
    state = pipeline.run(setup, data, compact=True)
    return pipeline.finish(setup, state, data, (x, y, sigma, args), mask, absolute_sigma)
