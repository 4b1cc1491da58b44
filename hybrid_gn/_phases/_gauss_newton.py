"""Phase 2: trust-region Gauss-Newton on exact, streamed normal equations.

Each update solves the trust-region subproblem at the current point, projects
the trial point onto the box, evaluates J^T J, J^T r and cost there in one
pass over the data, and accepts it when the actual/predicted reduction ratio
is good enough. An accepted trial's normal equations are those of the next
iteration, so an iteration costs one pass. The first update only evaluates
the start. Stopping tests follow scipy/MINPACK: ftol on the relative cost
reduction (or on a full Gauss-Newton step whose predicted and actual changes
are both at rounding level: it is taken, and ends the fit), xtol on the
relative step, gtol on the largest cosine between a (projected) gradient
component and the residual. A full Gauss-Newton step that promises to remove at
most ftol of the cost (the Newton decrement) is the last: it is taken without the
pass that would only confirm it (`final_step`). The region is a ball in
normalized coordinates: phase 0 already puts the parameters on a common
scale, which (unlike Jacobian-column scaling) does not drift with the
iterate. (The valley retry below scales it once, by the columns at the start.)

The first radius depends on how well the start fits. From a poor start (the
shape of its prediction is wrong, or it is far off the data: see
`Config.poor_shape_threshold`, `_start_fit`) the linear model is
poor, yet a long Gauss-Newton step can still lower the cost: the ratio test
accepts it, and the fit goes on in whatever basin the leap landed in. On sums
of peaks, damped sinusoids and sums of exponentials a full first radius made
the default stop at a worse stationary point than scipy's `trf` from the same
start in up to a third of random starts (`benchmarks/bench_multipeak.py`).
Such a start gets the small region `poor_start_radius`, which grows (doubles)
with each step that proves the model, so the path follows the local descent,
for a few extra iterations (about log2 of the ratio of the radii); a good
start keeps `initial_radius` and pays nothing. Growing the small region
faster (x4), or keeping it for one step only, lost much or all of the gain.
Running the L-BFGS warmup from such starts helped less on the same problems,
and would compile a warmup loop into every fit of small data.

A fit can also run off along a valley with no minimum in reach: two peaks
merging into one with amplitudes of opposite sign growing without bound, a
rate running to zero. Each step lowers the cost a little, so no tolerance is
ever met, and the fit would run to `max_iter` (under `jax.vmap`, holding back
every problem of the batch). Every `valley_window` iterations the fit
compares itself with the last check: when the cost fell by at most
`valley_rtol` (relative) while the point kept moving outward (by more than
1e-2 of its norm, at least half as far as in the window before, its norm
growing by at least half the move), and the window before looked the same,
it stops with `Status.VALLEY` (not a success). A converging fit that slow
takes steps that shrink from window to window, and a peak that walks slowly
across the data to a better place does not head off to infinity, so neither
is stopped.

A walk down such a valley is fast: the amplitudes of two merging peaks grow by
5-30 % of the norm per window, while the cost falls by 1e-4 to 1e-3 per window
for a hundred iterations before it falls below `valley_rtol`. So a window that
moved by more than `VALLEY_FAST_MOVE` (5 %) of the norm is suspect already when
the cost fell by at most `VALLEY_FAST_RTOL` (100) times `valley_rtol`, and by no
more than in the window before: on two Lorentzians from Gaussian starts the
slowest of 1e4 fits now take 260 iterations instead of 680, and the batch half
the time. A slow crawl (about 1.5 % of the norm per window, a damped sinusoid with
its amplitude near zero) that leaves its plateau after 300 iterations, and a
walk whose fall grows from window to window (on its way out), keep the strict
`valley_rtol`: stopped early, the retry ended both at a worse minimum.

A fit can also crawl: every step is accepted, the radius stays where the
ratio of actual to predicted reduction is middling, and the point moves by a
constant, tiny amount per iteration while the cost barely falls. There J^T J
misses the curvature of a large residual in some direction (a Gauss-Newton
step of norm 50 along an eigenvalue of 6e-4, a sinusoid stuck at the wrong
frequency) or the fit creeps down a valley at a radius of 1e-4. Moving by less
than `VALLEY_MOVE` of its norm per window, it could not get far within
`max_iter` anyway, so a window in which it did so with the cost falling by at
most `valley_rtol`, its move and its fall each within `VALLEY_CRAWL_STEADY`
(10 %) of the window before's, is suspect too, outward or not: the fit stops
with VALLEY (and retries) instead of running to `max_iter`. A converging fit's
moves and falls shrink, and one that lingers at its minimum moves and falls by
erratic amounts (its cost even rises by 1e-9 between checks): neither is
stopped.

A valley is often the price of a poor scale rather than of the data: a centre
that starts near zero by accident gets the normalized scale |p0| (0.03, say,
for a peak 1 wide), the region barely lets it move, and the amplitudes grow
into the valley of two merging peaks instead. So a fit that stops there starts
once more from where Gauss-Newton started (`Config.valley_retry`), in the
region |D s| <= radius with D the Jacobian's column norms there over their
largest (`retry_metric`): the step per unit of radius is then one of equal
effect on the residuals for every variable, whatever its |p0|. The retry
shares `max_iter` with the first attempt, and the fit ends at the better of the
two ends by cost. On two Lorentzians from Gaussian-perturbed starts it brings
39 of 45 valley stops to the best minimum any method found (the other 6 have
their best at infinity too). Scaling the region so from the first step of
every poor start instead moved NIST Hahn1 and MGH10 (start 1) to other
minima, and raising the phase-0 scale of small parameters to equal influence
moved Lanczos1-3 and MGH10 (start 1): the retry is kept to the fits that
failed.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .._config import Config, matrix_free
from .._result import Status
from . import _matrix_free
from ._accumulate import Linearization
from ._cholesky import accurate_steps, lower_rows, solve_upper
from ._linalg import trust_region_step

Model = Linearization | _matrix_free.GradientModel  # the latter above Config.dense_max_params
# a fit in a valley moves per window by more than VALLEY_MOVE of its norm, by at least
# VALLEY_SHRINK of what it moved in the window before, and mostly outward: its norm grows
# by at least VALLEY_OUTWARD of the move
VALLEY_MOVE = 1e-2
# a fast walk (moving by more than VALLEY_FAST_MOVE of its norm per window) is a valley
# already when the cost fell by at most VALLEY_FAST_RTOL times `valley_rtol`
VALLEY_FAST_MOVE = 5e-2
VALLEY_FAST_RTOL = 100.0
# a crawl (a move of at most VALLEY_MOVE of the norm per window, more than rounding) is a
# valley when its cost fell by at most `valley_rtol`, its move and its fall each within
# VALLEY_CRAWL_STEADY (relative) of the window before's
VALLEY_CRAWL_STEADY = 0.1
VALLEY_SHRINK = 0.5
VALLEY_OUTWARD = 0.5
UNRESOLVED_RISE = 1e3  # eps (relative): a cost rise above the rounding of a sum of squares
QR_HYSTERESIS = 8.0  # back from the QR route once cond(J) is this far below qr_condition
RETRY_MIN_METRIC = 1e-2  # the least metric of a variable on the valley retry (`retry_metric`)
FIRST, RETRY, BACK = 0, 1, 2  # GaussNewtonState.attempt


class GaussNewtonState(eqx.Module):
    u: Float[Array, " p"]
    model: Model  # at u
    use_qr: Bool[Array, ""]  # evaluate by streamed QR (`next_route`)
    radius: Float[Array, ""]
    iteration: Int[Array, ""]
    resets: Int[Array, ""]
    started: Bool[Array, ""]
    status: Int[Array, ""]
    # at the last valley check (every Config.valley_window iterations): the point, the cost,
    # and how far the point had moved and the cost had fallen since the check before (inf
    # before the first)
    anchor_u: Float[Array, " p"]
    anchor_cost: Float[Array, ""]
    anchor_step: Float[Array, ""]
    anchor_fell: Float[Array, ""]
    anchor_suspect: Bool[Array, ""]  # the window before that check looked like a valley
    # the valley retry (`Config.valley_retry`): where Gauss-Newton started, whether the start
    # was poor, the column norms of J there, the attempt (FIRST, RETRY, or BACK: going back
    # to the first attempt's end, which was better) and that end's point and cost
    start_u: Float[Array, " p"]
    poor: Bool[Array, ""]
    start_columns: Float[Array, " p"]
    attempt: Int[Array, ""]
    first_u: Float[Array, " p"]
    first_cost: Float[Array, ""]

    @property
    def metric(self) -> Float[Array, " p"]:
        """The trust region is |metric * step| <= radius: ones, and `retry_metric` on the
        retry."""
        return jnp.where(self.attempt == RETRY, retry_metric(self.start_columns), 1)

    @property
    def running(self):
        return self.status == Status.RUNNING


def init(u0: Float[Array, " p"], poor, config: Config) -> GaussNewtonState:
    """A state whose first update evaluates `u0` (no step is taken); a `poor` start
    (`_start_fit.poor_start`) gets the small first radius."""
    p = u0.shape[0]
    zero = jnp.zeros((), u0.dtype)
    free_of_matrices = matrix_free(config, p)
    model = (_matrix_free.placeholder(p, u0.dtype) if free_of_matrices else
             Linearization.triangular(jnp.zeros((p, p), u0.dtype), jnp.zeros_like(u0), zero))
    use_qr = config.factorization == "qr" and not free_of_matrices
    ones = jnp.ones_like(u0)
    return GaussNewtonState(u=u0, model=model, use_qr=jnp.asarray(use_qr),
                            radius=first_radius(u0, poor, config),
                            iteration=jnp.asarray(0), resets=jnp.asarray(0),
                            started=jnp.asarray(False), status=jnp.asarray(Status.RUNNING),
                            anchor_u=u0, anchor_cost=zero, anchor_step=jnp.asarray(
                                jnp.inf, u0.dtype), anchor_fell=jnp.asarray(jnp.inf, u0.dtype),
                            anchor_suspect=jnp.asarray(False),
                            start_u=u0, poor=jnp.asarray(poor), start_columns=ones,
                            attempt=jnp.asarray(FIRST), first_u=u0, first_cost=zero)


def free_variables(u, gradient, lower, upper) -> Bool[Array, " p"]:
    """Variables not held at a bound by a gradient pointing out of the box."""
    held_low = (u <= lower) & (gradient > 0)
    held_high = (u >= upper) & (gradient < 0)
    return ~(held_low | held_high)


def gradient_cosine(model: Model, free) -> Float[Array, ""]:
    """max_j |(J^T r)_j| / (||J_j|| ||r||) over free j: scale-free gtol measure."""
    col = model.column_norms
    rnorm = jnp.sqrt(2 * model.cost)
    cos = jnp.abs(model.gradient) / jnp.where(col > 0, col, 1) / jnp.where(rnorm > 0, rnorm, 1)
    return jnp.where(rnorm > 0, jnp.max(jnp.where(free, cos, 0)), 0)


def first_radius(u0, poor, config: Config, metric=1.0) -> Float[Array, ""]:
    """The radius of the first step: `initial_radius`, or the smaller `poor_start_radius`
    from a `poor` start (see the module docstring); both times max(|metric * u0|, 1)."""
    factor = jnp.where(poor, jnp.minimum(config.poor_start_radius, config.initial_radius),
                       config.initial_radius)
    size = jnp.linalg.norm(metric * u0)
    return (factor * jnp.maximum(size, 1)).astype(u0.dtype)


def retry_metric(columns: Float[Array, " p"]) -> Float[Array, " p"]:
    """The region's metric on a valley retry: each variable's column norm of J at the
    start over the largest, at least `RETRY_MIN_METRIC` (a variable without
    influence there, an exponent in saturation, say, would otherwise be free to leap)."""
    top = jnp.max(columns)
    relative = jnp.where((top > 0) & jnp.isfinite(top), columns / jnp.where(top > 0, top, 1), 1)
    return jnp.clip(jnp.where(jnp.isfinite(relative), relative, 1), RETRY_MIN_METRIC, 1)


def rcond(use_qr, p: int, dtype) -> Float[Array, ""]:
    """Relative singular-value cutoff of R: rounding level of a QR, or of J^T J."""
    level = 10 * p * float(jnp.finfo(dtype).eps)
    return jnp.where(use_qr, level, level**0.5).astype(dtype)


def next_route(use_qr, new: Model, accept, config: Config) -> Bool[Array, ""]:
    """Whether the next evaluation takes the streamed QR route ("auto" factorization).

    Judged on the model the fit goes on with (an accepted trial's; a rejected one says
    nothing of the point): QR once cond(J) exceeds `qr_condition`, where J^T J loses half
    its digits, and back to J^T J once it is `QR_HYSTERESIS` times below (a fit that
    passed a badly conditioned stretch, like two decay rates crossing, need not pay for
    QR to its end; under `vmap` one problem on it makes the whole batch pay). The
    `condition` of a model is cond(J) or an upper bound of it, so the route back is safe.
    """
    if not isinstance(new, Linearization) or config.factorization != "auto":  # static
        return use_qr
    judged = accept & new.finite
    enter = judged & ~use_qr & (new.condition > config.qr_condition)
    leave = judged & use_qr & (new.condition * QR_HYSTERESIS <= config.qr_condition)
    return (use_qr | enter) & ~leave


class Proposal(eqx.Module):
    """A trial point and the reduction the Gauss-Newton model predicts for it."""

    trial: Float[Array, " p"]
    predicted: Float[Array, ""]


def propose(state: GaussNewtonState, lower, upper) -> Proposal:
    """The trust-region trial point (the current point itself before the first update)."""
    eq = state.model
    u = state.u
    cutoff = rcond(state.use_qr, u.shape[0], u.dtype)
    free = free_variables(u, eq.gradient, lower, upper)
    metric = state.metric  # the region is |metric * step| <= radius
    # (rows of R orthogonal are no longer so once its columns are scaled)
    step = trust_region_step(eq.factor / metric, eq.qtr, state.radius, free, cutoff,
                             orthogonal_rows=eq.orthogonal_rows & jnp.all(metric == 1),
                             well_conditioned=~eq.orthogonal_rows & (
                                 eq.condition <= accurate_steps(u.dtype))) / metric
    trial = jnp.where(state.started, jnp.clip(u + step, lower, upper), u)
    r_step = eq.factor @ (trial - u)
    return Proposal(trial, -(eq.qtr @ r_step + 0.5 * r_step @ r_step))


def conclude(state: GaussNewtonState, proposal: Proposal, new: Model, lower, upper,
             config: Config) -> GaussNewtonState:
    """Accept or reject the trial given its model `new`; update radius and status.

    One iteration is `propose`, the evaluation of the trial (one pass over the
    data, by the driver: in memory or streamed from the host), then this.
    """
    eq = state.model
    u = state.u
    trial, predicted = proposal.trial, proposal.predicted
    step = trial - u
    actual = eq.cost - new.cost
    ratio = jnp.where(predicted > 0, actual / jnp.where(predicted > 0, predicted, 1), 0)
    good = new.finite & (predicted > 0) & (actual > config.accept_ratio * predicted)
    step_norm = jnp.linalg.norm(step)
    region_norm = jnp.linalg.norm(state.metric * step)  # what the radius bounds
    # A full (not radius-limited) Gauss-Newton step that promised, and changed the cost
    # by, no more than the cost can resolve (sqrt(eps) relative, far above the rounding
    # of a sum of squares: the rounding of `actual` depends on how the program was
    # compiled, and a batch and a single fit must decide alike), either sign, is taken
    # without judging its ratio: a ratio of two rounding-level numbers would reject it
    # at random, and the rejection would collapse the radius (the fit then crawls on
    # in radius-limited steps, and a batch and a single fit run apart by several
    # iterations). The point after a full Gauss-Newton step is the optimum to second
    # order, so the answer does not depend on that rounding. Where the step also
    # promised at most ftol, it ends the fit (ftol, MINPACK's second form).
    full_step = region_norm < 0.99 * state.radius
    resolution = jnp.maximum(config.ftol, jnp.sqrt(jnp.finfo(eq.cost.dtype).eps))
    unresolved = (state.started & new.finite & full_step & (predicted <= resolution * eq.cost)
                  & (jnp.abs(actual) <= resolution * eq.cost))
    noise_level = unresolved & (predicted <= config.ftol * eq.cost)
    # but a step that did not end the fit and raised the cost by more than rounding
    # (UNRESOLVED_RISE eps, relative) is rejected like any other: taken, such steps kept a
    # fit at its minimum drifting uphill by 1e-12 a step for 100-200 iterations
    rose = actual < -UNRESOLVED_RISE * jnp.finfo(eq.cost.dtype).eps * eq.cost
    unresolved = unresolved & (noise_level | ~rose)
    accept = jnp.where(state.started, good | unresolved, True)

    u_next = jnp.where(accept, trial, u)
    eq_next = jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, eq)
    shrink = ~new.finite | ((ratio < 0.25) & ~unresolved)
    grow = (ratio > 0.75) & (region_norm > 0.95 * state.radius)
    radius = jnp.where(shrink, config.radius_shrink * region_norm,
                       jnp.where(grow, jnp.maximum(state.radius, 2 * region_norm), state.radius))
    radius = jnp.where(state.started, radius, state.radius)  # the first one is set by init

    free_next = free_variables(u_next, eq_next.gradient, lower, upper)
    cosine = gradient_cosine(eq_next, free_next)
    gtol_ok = cosine <= config.gtol
    # judged on what the step promised, which has no cancellation: the actual reduction is
    # a difference of two costs, at the rounding level here, and its rounding depends on
    # how the program was compiled (a batch and a single fit would stop apart)
    ftol_ok = state.started & (
        (accept & (predicted <= config.ftol * eq.cost) & (ratio > 0.25)) | noise_level)
    xtol_ok = state.started & (
        step_norm <= config.xtol * (config.xtol + jnp.linalg.norm(u_next)))
    # a step that collapsed through NaN/Inf trials is a stall, not convergence
    stalled = xtol_ok & ~accept & ~new.finite
    recover = stalled & (state.resets < config.max_radius_resets)
    iteration = state.iteration + state.started.astype(state.iteration.dtype)

    at_check, suspect, moved, fell = _valley_check(state, iteration, u_next, eq_next.cost, config)
    in_valley = suspect & state.anchor_suspect  # two windows in a row

    status = jnp.select(
        [~state.started & ~new.finite, gtol_ok, ftol_ok, recover, stalled, xtol_ok, in_valley,
         iteration >= config.max_iter],
        [Status.NONFINITE_START, Status.CONVERGED_GTOL, Status.CONVERGED_FTOL, Status.RUNNING,
         Status.STALLED, Status.CONVERGED_XTOL, Status.VALLEY, Status.MAX_ITERATIONS],
        Status.RUNNING).astype(state.status.dtype)

    radius = jnp.where(recover, first_radius(u_next, False, config, state.metric), radius)
    last, last_step = final_step(eq_next, free_next, radius, u_next, lower, upper, config,
                                 state.metric)
    last = last & (status == Status.RUNNING)
    u_next = jnp.where(last, u_next + last_step, u_next)
    status = jnp.where(last, Status.CONVERGED_FTOL, status).astype(state.status.dtype)
    start_columns = state.start_columns
    if isinstance(new, Linearization):  # static: the matrix-free model has no metric
        start_columns = jnp.where(state.started | (state.attempt != FIRST), start_columns,
                                  new.column_norms)
    done = GaussNewtonState(
        u=u_next, model=eq_next, use_qr=next_route(state.use_qr, new, accept, config),
        radius=radius, iteration=iteration, resets=state.resets + recover,
        started=jnp.asarray(True), status=status,
        anchor_u=jnp.where(at_check, u_next, state.anchor_u),
        anchor_cost=jnp.where(at_check, eq_next.cost, state.anchor_cost),
        anchor_step=jnp.where(at_check, moved, state.anchor_step),
        anchor_fell=jnp.where(at_check, fell, state.anchor_fell),
        anchor_suspect=jnp.where(at_check, suspect, state.anchor_suspect),
        start_u=state.start_u, poor=state.poor, start_columns=start_columns,
        attempt=state.attempt, first_u=state.first_u, first_cost=state.first_cost)
    return _valley_retry(done, config)


def _valley_retry(state: GaussNewtonState, config: Config) -> GaussNewtonState:
    """The state after `conclude`, with `Config.valley_retry` applied: a first attempt
    that just stopped in a valley starts again from the start (unstarted: the next update
    evaluates it), in the region of `retry_metric`, its end's point and cost kept; a
    retry that just stopped above that cost goes BACK to that point (one evaluation,
    not counted as an iteration, instead of a copy of its model in every state), which
    then ends the fit there with VALLEY.
    """
    if not config.valley_retry or not isinstance(state.model, Linearization):  # static
        return state
    restart = (state.attempt == FIRST) & (state.status == Status.VALLEY)
    back = (state.attempt == RETRY) & (state.status != Status.RUNNING) & (
        state.first_cost < state.model.cost)
    again = restart | back  # from an unstarted state at start_u or first_u
    returned = state.attempt == BACK  # the first attempt's end, evaluated again
    retry = jnp.where(restart, RETRY, state.attempt)
    metric = retry_metric(state.start_columns)
    radius = first_radius(state.start_u, state.poor, config, metric)
    u = jnp.where(restart, state.start_u, jnp.where(back | returned, state.first_u, state.u))
    status = jnp.where(again, Status.RUNNING, jnp.where(returned, Status.VALLEY, state.status))
    return eqx.tree_at(
        lambda s: (s.u, s.radius, s.started, s.status, s.anchor_u, s.anchor_cost,
                   s.anchor_step, s.anchor_fell, s.anchor_suspect, s.attempt, s.first_u,
                   s.first_cost),
        state, (u, jnp.where(restart, radius, state.radius), state.started & ~again,
                status.astype(state.status.dtype), jnp.where(restart, u, state.anchor_u),
                jnp.where(restart, 0, state.anchor_cost),
                jnp.where(restart, jnp.inf, state.anchor_step),
                jnp.where(restart, jnp.inf, state.anchor_fell),
                state.anchor_suspect & ~restart,
                jnp.where(back, BACK, retry).astype(state.attempt.dtype),
                jnp.where(restart, state.u, state.first_u),
                jnp.where(restart, state.model.cost, state.first_cost)))


def final_step(model: Model, free, radius, u, lower, upper, config: Config, metric=1.0
               ) -> tuple[Bool[Array, ""], Float[Array, " p"]]:
    """`(last, step)`: whether the full Gauss-Newton step from `u` is the fit's last, taken
    without evaluating it, and that step.

    It is when the cost it promises to remove, 1/2 |qtr|^2 (the Newton decrement), is
    at most min(ftol, sqrt(eps)) of the cost: the fit would take it, see a change at the
    rounding level and stop (ftol), so the pass that evaluates it tells nothing. The point
    after it is the minimum to second order; `cost` and the model (the covariance) stay
    those before it, within that bound. Only where the step is plain (R triangular and
    well conditioned, every variable free, the step inside the region and the box); the
    other fits take it the usual way.
    """
    if not isinstance(model, Linearization):  # static: matrix-free, no triangular factor
        return jnp.asarray(False), jnp.zeros_like(u)
    dtype = u.dtype
    step = -solve_upper(lower_rows(model.factor.T), model.qtr)  # R s = -qtr
    bound = jnp.minimum(config.ftol, jnp.sqrt(jnp.finfo(dtype).eps)) * model.cost
    plain = (model.finite & ~model.orthogonal_rows & (model.condition <= accurate_steps(dtype))
             & jnp.all(free) & jnp.all(jnp.isfinite(step)))
    inside = (jnp.linalg.norm(metric * step) < 0.99 * radius) & jnp.all(
        (u + step >= lower) & (u + step <= upper))
    return plain & inside & (0.5 * jnp.sum(model.qtr**2) <= bound), step


def _valley_check(state: GaussNewtonState, iteration, u_next, cost, config: Config):
    """`(at_check, suspect, moved, fell)`: whether this iteration is a valley check (every
    `valley_window` iterations from the start); whether the window looks like a valley; how
    far the point moved and the cost fell in it. A window looks like a valley when the
    point moved by more than `VALLEY_MOVE` of its norm, by at least `VALLEY_SHRINK` of what
    it moved in the window before (a converging fit's steps shrink; these do not), and
    outward (its norm grew by `VALLEY_OUTWARD` of the move: off to infinity), while the
    cost fell by at most `valley_rtol` (relative), or, on a fast walk (a move of more than
    `VALLEY_FAST_MOVE` of the norm), by at most `VALLEY_FAST_RTOL` times that and no more
    than in the window before (a walk that speeds up may be on its way out). It also does
    when the fit crawls: the cost fell, by at most `valley_rtol`, while the point moved by
    at most `VALLEY_MOVE` of its norm (more than rounding), the move and the fall each
    within `VALLEY_CRAWL_STEADY` of the window before's. See the module docstring."""
    moved = jnp.linalg.norm(u_next - state.anchor_u)
    fell = jnp.where(state.started, state.anchor_cost - cost, jnp.inf)
    window = config.valley_window
    if window == 0:  # static: never
        return jnp.asarray(False), jnp.asarray(False), moved, fell
    at_check = iteration % window == 0
    size = jnp.linalg.norm(state.anchor_u)
    scale = jnp.maximum(size, 1)
    rtol = config.valley_rtol * state.anchor_cost
    moving = moved > VALLEY_MOVE * scale
    fast = (moved > VALLEY_FAST_MOVE * scale) & (fell <= state.anchor_fell)
    slow = (fell <= rtol) | (fast & (fell <= VALLEY_FAST_RTOL * rtol))
    steady = moved >= VALLEY_SHRINK * state.anchor_step
    outward = jnp.linalg.norm(u_next) - size >= VALLEY_OUTWARD * moved
    def near(value, before):  # within VALLEY_CRAWL_STEADY of a finite `before`
        return ((value >= (1 - VALLEY_CRAWL_STEADY) * before)
                & (value <= (1 + VALLEY_CRAWL_STEADY) * before))

    crawl = ((fell <= rtol) & (fell > 0) & ~moving
             & (moved > jnp.sqrt(jnp.finfo(u_next.dtype).eps) * scale)
             & near(moved, state.anchor_step) & near(fell, state.anchor_fell))
    suspect = state.started & at_check & (iteration > 0) & (
        (slow & moving & steady & outward) | crawl)
    return at_check, suspect, moved, fell
