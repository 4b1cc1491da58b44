"""Frozen configuration of the whole pipeline, with validation in one place.

Fields that change the compiled program (sizes, iteration caps, strategy
names) are static; numeric knobs are leaves, so they can be traced, vmapped
or differentiated without recompiling.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._loss import LOSSES, Loss, RhoFn
from ._penalty import GroupPenalty

Normalization = Literal["auto", "bounds", "p0", "none"]
JacobianMode = Literal["auto", "forward", "reverse"]
LineSearch = Literal["zoom", "backtracking"]
Factorization = Literal["auto", "qr", "normal"]
Covariance = Literal["auto", "dense", "diagonal", "none"]


def _static(default):
    return eqx.field(static=True, default=default)


class Config(eqx.Module):
    """Settings of the four phases of a fit; every field has a default.

    One frozen object (an `equinox.Module`) passed as `config=` to every
    driver. Fields that change the compiled program (sizes, iteration caps,
    strategy names) are static; numeric knobs are leaves, so they can be
    traced, vmapped or differentiated without recompiling. Every field is
    checked when the object is made (a numeric knob where its value is
    concrete, not traced). Change a field of an existing configuration with
    `dataclasses.replace`.

    Attributes:
        chunk_size: points per chunk (capped at n); cache-sized is fastest. Default:
            8192.
        loss: the loss rho of the squared residual z, with scipy's definitions: "linear"
            (z), "soft_l1", "huber", "cauchy", "arctan", or a callable rho(z) returning
            an array (3, m) of values, first and second derivatives (scipy's convention)
            or (m,) values only (derivatives by autodiff). The cost is 1/2 sum rho.
            Default: "linear".
        f_scale: the residual size C where the loss turns robust: rho_C(z) = C^2 rho(z /
            C^2). Default: 1.0.
        penalty: a `GroupPenalty`: 1/2 lambda sum_g sum_{i in g} (theta_i - mean_g)^2 added
            to the cost as extra residual rows, or None. Default: None.
        jacobian: "forward" (p JVPs), "reverse" (chunk VJPs) or "auto". Default: "auto".
        factorization: "qr": streamed QR (accurate to cond(J)); "normal": J^T J
            (cheaper, squares cond(J)); "auto": J^T J until cond(J) exceeds
            `qr_condition`, streamed QR until it is 8 times below. Default: "auto".
        normalization: "auto" (from the bounds if all are finite, else from p0),
            "bounds", "p0" or "none". Default: "auto".
        warmup: True, False or "auto": only where a warmup iteration is cheaper than a
            Gauss-Newton pass, i.e. the data has more than `warmup_max_points` points
            (the warmup works on a subsample). Default: "auto".
        warmup_linesearch: "zoom" or "backtracking". Default: "zoom".
        warmup_linesearch_steps: line-search steps per warmup iteration. Default: 20.
        warmup_memory: L-BFGS memory. Default: 10.
        warmup_max_iter: warmup iteration cap. Default: 30.
        warmup_min_iter: plateau / small-gradient switching only after this many
            iterations. Default: 2.
        warmup_max_points: size of the strided data subsample of the warmup; None: all
            data. Default: 16384.
        warm_start_threshold: skip the warmup when the relative loss is below this.
            Default: 1e-4.
        refine_threshold: relative loss below this: "refine" first step. Default: 1e-2.
        explore_threshold: relative loss above this: "explore" first step. Default: 1.0.
        first_step_refine: max norm of the first update (normalized units) in the
            "refine" regime. Default: 0.05.
        first_step_careful: the same in the "careful" regime. Default: 0.25.
        first_step_explore: the same in the "explore" regime. Default: 1.0.
        max_update_norm: clip every warmup update to this norm. Default: 2.0.
        grad_clip_norm: optional global-norm clipping of the gradient. Default: inf.
        cost_increase_tol: abort the warmup when the loss exceeds (1 + tol) times the
            initial loss. Default: 0.1.
        plateau_rtol: relative loss decrease counted as "no progress". Default: 1e-3.
        plateau_patience: consecutive no-progress iterations that make a plateau.
            Default: 2.
        warmup_gtol: switch when |grad| < warmup_gtol * |grad at start|. Default: 1e-3.
        max_iter: Gauss-Newton iteration cap. Default: 1000.
        ftol: relative cost reduction; None: 10 eps of the dtype. Default: None.
        xtol: relative step; None: sqrt(eps) / 100 of the dtype. Default: None.
        gtol: max gradient cosine; None: 10 eps of the dtype. Default: None.
        initial_radius: the first trust radius, times max(|u0|, 1), in normalized units.
            Default: 1.0.
        poor_shape_threshold: a start is poor when the shape of its prediction f is
            wrong: 1 - corr(f, y)^2, the relative loss left after the best a f + b,
            above this. Default: 0.2.
        poor_loss_threshold: a start is also poor when its relative loss (RSS over the
            total sum of squares, 1 - R^2) is above this. Default: 3.0.
        poor_start_radius: the linear model of a poor start is trusted only in a region
            of this radius (if smaller than `initial_radius`) until steps prove it, so
            that a first step does not leap into another basin. Default: 0.03.
        radius_shrink: on a poor step the radius becomes this times its norm. Default:
            0.5.
        qr_condition: cond(J) above which "auto" factorization switches to QR; None:
            eps^(-1/4) of the dtype. Default: None.
        accept_ratio: accept a step when the actual over the predicted reduction exceeds
            this. Default: 1e-4.
        dense_max_params: up to this many parameters, Gauss-Newton forms the p x p
            J^T J (or its streamed QR) and solves the trust-region step exactly; above
            it the fit is matrix-free: truncated conjugate gradients (Steihaug-Toint) on
            J^T J v products (a jvp then a vjp per chunk), Jacobi-preconditioned, so
            memory is O(p) (`_phases/_matrix_free.py`). Chosen from
            `benchmarks/bench_many_params.py`. Default: 100.
        cg_max_iter: matrix-free path: conjugate-gradient iterations per trust-region
            step (each is one J^T J v product, i.e. one pass over the data in memory).
            Default: 100.
        covariance: how `Result.pcov` is computed: "dense" (the p x p matrix, scipy's
            pinv), "diagonal" (only the variances, a (p,) array, by one preconditioned
            CG solve per parameter: no p x p matrix), "none" (a (p,) array of NaN: not
            computed) or "auto": "dense" where p x p numbers fit in
            `covariance_max_bytes` (always on the dense path), else "diagonal".
            Default: "auto".
        covariance_max_bytes: the memory budget of a dense covariance of a matrix-free
            fit (p x p numbers of the dtype; 64 MiB: p <= 2896 in float64). Default:
            2**26.
        max_radius_resets: stall recovery: times the radius is reset after collapsing.
            Default: 2.
        valley_window: every this many Gauss-Newton iterations the fit checks whether it
            runs along a valley of nearly constant cost (see `valley_rtol`); 0: never.
            Default: 20.
        valley_rtol: stop with `Status.VALLEY` when, since the last check, the cost fell
            by at most this (relative) while the point kept moving outward, its steps not
            shrinking as a converging fit's do, two checks in a row; on a fast walk (more
            than 5 % of its norm per window, its fall not growing) 100 times this; also
            when the point crawls, by less than 1 % of its norm per window at a steady
            pace, outward or not (see `_phases/_gauss_newton.py`). Default: 1e-5.
        valley_retry: a fit that stops in a valley starts once more from where
            Gauss-Newton started, in a trust region scaled by the Jacobian's column norms
            there, within the same `max_iter`; the result is the better end by cost (the
            first keeps `Status.VALLEY`). Default: True.
        trace_length: per-iteration records kept in `Result.trace`: the first ones (when
            a fit runs longer, the last record holds its latest iteration); None: 256,
            and 32 per problem in `fit_batch` (256 records of 1e6 problems would take
            7 GB). Default: None.
        progress: report each iteration on stderr through `jax.debug.callback` (not
            compiled in when False); `fit_stream` also has its own progress bar
            (`fit_stream(progress=...)`). Default: False.

    Raises:
        ValueError: a field out of its range or not one of its allowed
            values, naming the field.

    Examples:
        >>> import dataclasses
        >>> import hybrid_gn
        >>> config = hybrid_gn.Config(max_iter=50, ftol=1e-12)
        >>> config.max_iter, config.factorization
        (50, 'auto')
        >>> dataclasses.replace(config, factorization="qr").factorization
        'qr'
        >>> hybrid_gn.Config(chunk_size=0)
        Traceback (most recent call last):
        ...
        ValueError: chunk_size must be an int >= 1, got 0
    """

    # --- data streaming ---
    chunk_size: int = _static(8192)  # points per chunk (capped at n); cache-sized is fastest
    jacobian: JacobianMode = _static("auto")  # forward: p JVPs, reverse: chunk VJPs
    # qr: streamed QR (accurate to cond(J)); normal: J^T J (cheaper, squares cond(J));
    # auto: J^T J until cond(J) exceeds qr_condition, streamed QR until 8 times below
    factorization: Factorization = _static("auto")

    # --- the objective: 1/2 sum rho(r^2), scipy's robust losses ---
    loss: str | RhoFn = _static("linear")  # linear, soft_l1, huber, cauchy, arctan or rho(z)
    f_scale: float = 1.0  # residual size where the loss turns robust
    penalty: GroupPenalty | None = None  # group-variance rows added once per pass

    # --- phase 0: normalization ---
    normalization: Normalization = _static("auto")  # auto: bounds if all finite, else p0

    # --- phase 1: L-BFGS warmup ---
    # auto: only where a warmup iteration is cheaper than a Gauss-Newton pass, i.e. the
    # data has more than warmup_max_points points (the warmup works on a subsample)
    warmup: bool | Literal["auto"] = _static("auto")
    warmup_linesearch: LineSearch = _static("zoom")
    warmup_linesearch_steps: int = _static(20)
    warmup_memory: int = _static(10)
    warmup_max_iter: int = _static(30)
    warmup_min_iter: int = _static(2)  # plateau / small-gradient switching only after this
    warmup_max_points: int | None = _static(16384)  # strided data subsample; None: all data
    warm_start_threshold: float = 1e-4  # skip warmup when relative loss is below this
    refine_threshold: float = 1e-2  # relative loss below: "refine" first step
    explore_threshold: float = 1.0  # relative loss above: "explore" first step
    first_step_refine: float = 0.05  # max norm of the first update (normalized units)
    first_step_careful: float = 0.25
    first_step_explore: float = 1.0
    max_update_norm: float = 2.0  # defense 4: clip every warmup update to this norm
    grad_clip_norm: float = float("inf")  # optional global-norm clipping of the gradient
    cost_increase_tol: float = 0.1  # defense 3: abort when loss > (1 + tol) * initial
    plateau_rtol: float = 1e-3  # relative loss decrease counted as "no progress"
    plateau_patience: int = 2  # consecutive no-progress iterations that make a plateau
    warmup_gtol: float = 1e-3  # switch when |grad| < warmup_gtol * |grad at start|

    # --- phase 2: trust-region Gauss-Newton ---
    max_iter: int = _static(1000)
    ftol: float | None = None  # relative cost reduction; None: 10 eps of the dtype
    xtol: float | None = None  # relative step; None: sqrt(eps) / 100 of the dtype
    gtol: float | None = None  # max gradient cosine; None: 10 eps of the dtype
    initial_radius: float = 1.0  # times max(|u0|, 1), normalized units
    # a poor start: the shape of its prediction f is wrong (1 - corr(f, y)^2, the relative
    # loss left after the best a f + b, above poor_shape_threshold) or its relative loss
    # (RSS over the total sum of squares, 1 - R^2) is above poor_loss_threshold. Its linear
    # model is trusted only in a region of poor_start_radius (if smaller than
    # initial_radius) until steps prove it, so that a first step does not leap into
    # another basin (see _phases/_gauss_newton.py)
    poor_shape_threshold: float = 0.2
    poor_loss_threshold: float = 3.0
    poor_start_radius: float = 0.03
    radius_shrink: float = 0.5  # on a poor step the radius becomes this times its norm
    qr_condition: float | None = None  # auto factorization; None: eps^(-1/4) of the dtype
    accept_ratio: float = 1e-4  # accept a step when actual/predicted reduction exceeds this
    max_radius_resets: int = 2  # stall recovery: times the radius is reset after collapsing
    # every valley_window iterations (0: never): stop (Status.VALLEY) when the cost fell by at
    # most valley_rtol (relative) since the last check while the point kept moving with steps
    # that do not shrink: running off along a valley (_phases/_gauss_newton.py)
    valley_window: int = _static(20)
    valley_rtol: float = 1e-5
    # a fit that stopped in a valley starts once more from its start, its region scaled by
    # the Jacobian's columns there; the better end is kept (_phases/_gauss_newton.py)
    valley_retry: bool = _static(True)
    # above dense_max_params: matrix-free Gauss-Newton (Steihaug-Toint CG on J^T J v products,
    # cg_max_iter per step), no p x p matrix (_phases/_matrix_free.py)
    dense_max_params: int = _static(100)
    cg_max_iter: int = _static(100)
    # pcov: dense, diagonal (variances only, by CG), none, or auto: dense within the budget
    covariance: Covariance = _static("auto")
    covariance_max_bytes: int = _static(2**26)

    def __check_init__(self):
        _check_ints(self)
        _one_of("normalization", self.normalization, ("auto", "bounds", "p0", "none"))
        if not callable(self.loss):
            _one_of("loss", self.loss, tuple(LOSSES))
        if not isinstance(self.penalty, GroupPenalty | None):
            raise TypeError(f"penalty must be a hybrid_gn.GroupPenalty or None, got "
                            f"{type(self.penalty).__name__}")
        _one_of("jacobian", self.jacobian, ("auto", "forward", "reverse"))
        _one_of("factorization", self.factorization, ("auto", "qr", "normal"))
        _one_of("covariance", self.covariance, ("auto", "dense", "diagonal", "none"))
        if not (isinstance(self.warmup, bool) or isinstance(self.warmup, str)
                and self.warmup == "auto"):
            raise ValueError(f"warmup must be True, False or 'auto', got {self.warmup!r}")
        if not isinstance(self.valley_retry, bool):
            raise ValueError(f"valley_retry must be True or False, got {self.valley_retry!r}")
        _one_of("warmup_linesearch", self.warmup_linesearch, ("zoom", "backtracking"))
        _check_numbers(self)

    trace_length: int | None = _static(None)  # records kept; the last slot holds the latest
    # fused driver: report each iteration on stderr through jax.debug.callback (not compiled
    # in when False); the streaming driver has its own progress bar (fit_stream(progress=))
    progress: bool = _static(False)


def robust_loss(config: Config) -> Loss:
    """The configured loss with its scale, as the accumulation uses it."""
    return Loss(config.loss, config.f_scale)


def warmup_pays_off(config: Config, n_points: int) -> bool:
    """Whether warmup="auto" runs the warmup on data of `n_points` points.

    Only when it works on a subsample: on the full data an L-BFGS iteration
    with its line search costs at least one Gauss-Newton pass, and Gauss-
    Newton converges in fewer (measured on 1e4 small Gaussian fits: the
    warmup took 3.6x the time it saved).
    """
    if config.warmup != "auto":
        return bool(config.warmup)
    return config.warmup_max_points is not None and n_points > config.warmup_max_points


def matrix_free(config: Config, n_params: int) -> bool:
    """Whether Gauss-Newton runs matrix-free (no p x p matrix) for `n_params` parameters."""
    return n_params > config.dense_max_params


def covariance_kind(config: Config, n_params: int, dtype) -> Covariance:
    """How the covariance of a fit of `n_params` parameters is computed: "dense",
    "diagonal" or "none" (`Config.covariance`; "auto" on a dense fit is "dense")."""
    if config.covariance != "auto":
        return config.covariance
    dense_bytes = n_params * n_params * jnp.dtype(dtype).itemsize
    if not matrix_free(config, n_params) or dense_bytes <= config.covariance_max_bytes:
        return "dense"
    return "diagonal"


def trace_length(config: Config, batch: bool = False) -> int:
    """The records a fit's trace keeps: `Config.trace_length`, else 256 for a fit and 32
    for each problem of a batch (`fit_batch`)."""
    if config.trace_length is not None:
        return config.trace_length
    return 32 if batch else 256


def with_tolerances(config: Config, dtype) -> Config:
    """`config` with unset tolerances and thresholds replaced by `dtype` defaults."""
    eps = float(jnp.finfo(dtype).eps)
    defaults = {"ftol": 10 * eps, "xtol": eps**0.5 / 100, "gtol": 10 * eps,
                "qr_condition": eps**-0.25}
    unset = {k: v for k, v in defaults.items() if getattr(config, k) is None}
    return dataclasses.replace(config, **unset) if unset else config


# static int fields and their least allowed value (None: the field may also be None)
_INTS = {"chunk_size": 1, "warmup_linesearch_steps": 1, "warmup_memory": 1, "max_iter": 1,
         "trace_length": None, "warmup_max_iter": 0, "warmup_min_iter": 0, "plateau_patience": 1,
         "max_radius_resets": 0, "warmup_max_points": None, "dense_max_params": 0,
         "cg_max_iter": 1, "covariance_max_bytes": 0, "valley_window": 0}
_NON_NEGATIVE = ("ftol", "xtol", "gtol", "warm_start_threshold", "cost_increase_tol",
                 "plateau_rtol", "warmup_gtol", "refine_threshold", "explore_threshold",
                 "poor_shape_threshold", "poor_loss_threshold", "valley_rtol")
_POSITIVE = ("f_scale", "first_step_refine", "first_step_careful", "first_step_explore",
             "max_update_norm", "grad_clip_norm", "initial_radius", "poor_start_radius")


def _check_ints(config: Config) -> None:
    for name, least in _INTS.items():
        value = getattr(config, name)
        if least is None:  # None: all the data (warmup_max_points), the default (trace)
            if value is None:
                continue
            least = 1
        if isinstance(value, jax.Array | jax.core.Tracer):  # a leaf, traced or batched
            continue
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")


def _real(config: Config, name: str):
    """The field's value if it is a concrete real number, None if traced or an array."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real | None):
        if isinstance(value, jax.Array | np.ndarray | jax.core.Tracer):
            return None  # a traced or array value: checked by the user's own code
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return value


def _check_numbers(config: Config) -> None:
    """Numeric knobs, where concrete (they may be traced or batched)."""
    for name in _NON_NEGATIVE:
        value = _real(config, name)
        if value is not None and not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    for name in _POSITIVE:
        value = _real(config, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    _check_ranges(config)


def _check_ranges(config: Config) -> None:
    shrink, ratio, condition = (_real(config, n) for n in ("radius_shrink", "accept_ratio",
                                                           "qr_condition"))
    if shrink is not None and not 0 < shrink < 1:
        raise ValueError(f"radius_shrink must be in (0, 1), got {shrink!r}")
    if ratio is not None and not 0 <= ratio < 1:
        raise ValueError(f"accept_ratio must be in [0, 1): a step is accepted when the actual "
                         f"reduction exceeds accept_ratio times the predicted one, got {ratio!r}")
    if condition is not None and not condition >= 1:
        raise ValueError(f"qr_condition must be >= 1 (a condition number), got {condition!r}")


def _one_of(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


DEFAULT = Config()  # what `config=None` means (made once: making one costs a small fit's time)
