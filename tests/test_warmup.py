"""Phase 1, the L-BFGS warmup: its four defenses and its switching criteria.

Two levels:

* ``hybrid_gn.fit`` on one small exponential-decay problem (n = 100, so the warmup's strided
  subsample is the whole data set and the warmup loss is exactly ``cost / n``). Each case
  checks what ``Result`` reports (``warmup_reason``, ``warmup_mode``, ``warmup_iterations``,
  ``trace``) against quantities computed here independently, and that the final answer
  still matches ``scipy.optimize.curve_fit`` to 1e-8 relative.
* ``hybrid_gn._phases._warmup.init`` / ``update`` driven directly on analytic losses, where step
  norms and loss values are known in closed form.

Independent checks used throughout:

* ``assert_switching_rule``: the documented switching rules (NaN/Inf, cost guard, small
  gradient and plateau only from ``warmup_min_iter`` on, iteration cap) replayed on the
  recorded warmup trace, starting from the initial loss and gradient norm computed here,
  must hand over at exactly the reported iteration and for the reported reason.
* ``assert_handed_over_best``: the first Gauss-Newton entry of the trace evaluates the
  point the warmup handed over; its cost must be ``n * min(initial loss, finite warmup
  losses)``, i.e. the warmup returns the best point it has seen, not its last one.

Compilation dominates the runtime, so all fit-level cases share one model object, one data
shape and three static configurations (default/zoom, backtracking with one step, warmup
off); the numeric knobs are pytree leaves and do not recompile. Direct tests pass their loss
as a ``jax.tree_util.Partial`` so one compiled ``update`` serves every target and curvature.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import hybrid_gn
from hybrid_gn import Phase, Status, WarmupMode, WarmupReason
from hybrid_gn._phases import _warmup as warmup

# these problems are small, where warmup='auto' would skip the warmup under test
Config = functools.partial(hybrid_gn.Config, warmup=True)

jax.config.update("jax_enable_x64", True)

FIT_RTOL = 1e-8  # final parameters vs scipy, relative
SCIPY_TOLS = {"ftol": 1e-15, "xtol": 1e-15, "gtol": 1e-15}

# --------------------------------------------------------------------------------------------
# The fit-level problem: y = a exp(-sqrt(q) x) + c. The rate is parameterized as sqrt(q) so
# the model is NaN for q < 0, which the NaN-guard case uses; elsewhere q stays positive.
# --------------------------------------------------------------------------------------------

N = 100
X = np.linspace(0.0, 5.0, N)
TRUTH = np.array([5.0, 1.69, 0.5])
Y = TRUTH[0] * np.exp(-np.sqrt(TRUTH[1]) * X) + TRUTH[2] \
    + 0.005 * np.random.default_rng(0).standard_normal(N)


def decay(p, x):
    return p[0] * jnp.exp(-jnp.sqrt(p[1]) * x) + p[2]


# Static configurations (each one compiles `fit` once).
ZOOM = Config()
BACKTRACK1 = Config(warmup_linesearch="backtracking", warmup_linesearch_steps=1)
OFF = Config(warmup=False)

# Starts (a, q, c) and the warmup mode their relative loss selects (checked in a test).
START_REFINE = (4.9, 1.7, 0.5)  # relative loss ~ 7e-4
START_CAREFUL = (4.0, 1.0, 0.6)  # ~ 0.045
START_EXPLORE = (20.0, 3.0, -2.0)  # ~ 7.9


def numpy_residual(p):
    a, q, c = np.asarray(p, float)
    return a * np.exp(-np.sqrt(q) * X) + c - Y


def initial_loss(p0) -> float:
    """The warmup loss at p0: mean half squared residual over all n points."""
    r = numpy_residual(p0)
    return 0.5 * float(r @ r) / N


def relative_loss(p0) -> float:
    """Residual sum of squares over the total sum of squares of y."""
    r = numpy_residual(p0)
    return float(r @ r) / float(np.sum((Y - Y.mean()) ** 2))


def initial_grad_norm(p0) -> float:
    """|grad| of the warmup loss at p0 in normalized units (no bounds: u = theta / |p0|)."""
    p0 = jnp.asarray(p0, float)

    def loss(p):
        r = decay(p, X) - Y
        return 0.5 * jnp.sum(r**2) / N

    return float(jnp.linalg.norm(jax.grad(loss)(p0) * jnp.abs(p0)))


@functools.cache
def scipy_optimum() -> np.ndarray:
    def f(x, a, q, c):
        return a * np.exp(-np.sqrt(q) * x) + c

    def jac(x, a, q, c):
        e = np.exp(-np.sqrt(q) * x)
        return np.stack([e, -a * x * e / (2 * np.sqrt(q)), np.ones_like(x)], axis=1)

    popt, _ = scipy.optimize.curve_fit(f, X, Y, p0=TRUTH, jac=jac, method="lm",
                                       maxfev=10_000, **SCIPY_TOLS)
    return popt


def run_fit(p0, config: Config):
    return hybrid_gn.fit(decay, jnp.asarray(p0, float), X, Y, config=config)


def warmup_trace(result):
    """(losses, grad norms) of the warmup iterations, as recorded in the trace."""
    k = int(result.warmup_iterations)
    trace = result.trace
    return np.asarray(trace.cost)[:k], np.asarray(trace.grad_norm)[:k]


def assert_final_matches_scipy(result):
    assert Status(int(result.status)).success, Status(int(result.status)).message
    np.testing.assert_allclose(np.asarray(result.params), scipy_optimum(), rtol=FIT_RTOL)


def assert_trace_layout(result):
    # n is below warmup_max_points: the warmup loss is over all data, cost / n
    assert int(result.n_points) == N <= Config().warmup_max_points
    k, g = int(result.warmup_iterations), int(result.gn_iterations)
    trace = result.trace
    assert int(trace.length) == k + g + 1  # Gauss-Newton's first entry evaluates its start
    phase = np.asarray(trace.phase)[: k + g + 1]
    assert np.all(phase[:k] == Phase.WARMUP)
    assert np.all(phase[k:] == Phase.GAUSS_NEWTON)


def assert_handed_over_best(result, p0):
    """The point handed to Gauss-Newton is the best one the warmup saw (start included)."""
    losses, _ = warmup_trace(result)
    seen = np.concatenate([[initial_loss(p0)], losses[np.isfinite(losses)]])
    first_gn_cost = float(result.trace.cost[int(result.warmup_iterations)])
    np.testing.assert_allclose(first_gn_cost, N * seen.min(), rtol=1e-10)


def replay_switching(losses, grad_norms, loss0, grad_norm0, config: Config):
    """The documented hand-over rules applied to a recorded trace: (reason, iteration)."""
    previous, stalled = loss0, 0
    for k, (loss, grad_norm) in enumerate(zip(losses, grad_norms, strict=True), start=1):
        if not (np.isfinite(loss) and np.isfinite(grad_norm)):
            return WarmupReason.NONFINITE, k
        if loss > (1 + config.cost_increase_tol) * loss0:
            return WarmupReason.COST_INCREASE, k
        stalled = stalled + 1 if (previous - loss) / abs(previous) < config.plateau_rtol else 0
        settled = k >= config.warmup_min_iter
        if settled and grad_norm <= config.warmup_gtol * grad_norm0:
            return WarmupReason.SMALL_GRADIENT, k
        if settled and stalled >= config.plateau_patience:
            return WarmupReason.PLATEAU, k
        if k >= config.warmup_max_iter:
            return WarmupReason.MAX_ITERATIONS, k
        previous = loss
    return WarmupReason.NOT_RUN, len(losses)


def assert_switching_rule(result, p0, config: Config):
    losses, grad_norms = warmup_trace(result)
    expected = replay_switching(losses, grad_norms, initial_loss(p0), initial_grad_norm(p0),
                                config)
    got = (WarmupReason(int(result.warmup_reason)), int(result.warmup_iterations))
    assert got == expected


def check_fit_case(p0, config: Config, reason: WarmupReason):
    """Run, and apply every check that holds for any fit-level case."""
    result = run_fit(p0, config)
    assert WarmupReason(int(result.warmup_reason)) == reason, result.warmup_message
    assert_trace_layout(result)
    assert_handed_over_best(result, p0)
    if reason not in (WarmupReason.DISABLED, WarmupReason.WARM_START):
        assert_switching_rule(result, p0, config)
    assert_final_matches_scipy(result)
    return result


# --------------------------------------------------------------------------------------------
# Fit level: skip / disable
# --------------------------------------------------------------------------------------------


def test_warm_start_at_optimum_skips_warmup():
    p0 = scipy_optimum()
    assert relative_loss(p0) < ZOOM.warm_start_threshold  # the design premise
    result = check_fit_case(p0, ZOOM, WarmupReason.WARM_START)
    # no warmup iteration; Gauss-Newton starts at p0 (checked by assert_handed_over_best)
    assert int(result.warmup_iterations) == 0
    assert WarmupMode(int(result.warmup_mode)) == WarmupMode.REFINE


def test_warm_start_threshold_is_respected():
    """Same start, threshold below its relative loss: the warmup runs."""
    p0 = scipy_optimum()
    config = Config(warm_start_threshold=0.1 * relative_loss(p0))
    result = run_fit(p0, config)
    assert WarmupReason(int(result.warmup_reason)) != WarmupReason.WARM_START
    assert int(result.warmup_iterations) >= 1
    assert_handed_over_best(result, p0)
    assert_final_matches_scipy(result)


def test_warmup_disabled():
    result = check_fit_case(START_EXPLORE, OFF, WarmupReason.DISABLED)
    assert int(result.warmup_iterations) == 0  # and Gauss-Newton starts at p0


# --------------------------------------------------------------------------------------------
# Fit level: adaptive first step (mode from the relative loss)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p0, mode", [(START_REFINE, WarmupMode.REFINE),
                                      (START_CAREFUL, WarmupMode.CAREFUL),
                                      (START_EXPLORE, WarmupMode.EXPLORE)],
                         ids=["refine", "careful", "explore"])
def test_mode_from_relative_loss(p0, mode):
    rel = relative_loss(p0)
    expected = (WarmupMode.REFINE if rel < ZOOM.refine_threshold
                else WarmupMode.EXPLORE if rel > ZOOM.explore_threshold else WarmupMode.CAREFUL)
    assert expected == mode  # the start was designed for this mode
    result = run_fit(p0, ZOOM)
    assert WarmupMode(int(result.warmup_mode)) == mode
    assert int(result.warmup_iterations) >= 1
    assert_trace_layout(result)
    assert_handed_over_best(result, p0)
    assert_switching_rule(result, p0, ZOOM)
    assert_final_matches_scipy(result)


def test_mode_thresholds_are_config_leaves():
    """Moving the thresholds (no recompilation) moves the same start to another mode."""
    rel = relative_loss(START_CAREFUL)
    as_refine = run_fit(START_CAREFUL, Config(refine_threshold=2 * rel, explore_threshold=4 * rel))
    as_explore = run_fit(START_CAREFUL, Config(refine_threshold=rel / 4, explore_threshold=rel / 2))
    assert WarmupMode(int(as_refine.warmup_mode)) == WarmupMode.REFINE
    assert WarmupMode(int(as_explore.warmup_mode)) == WarmupMode.EXPLORE
    for result in (as_refine, as_explore):
        assert_handed_over_best(result, START_CAREFUL)
        assert_final_matches_scipy(result)


# --------------------------------------------------------------------------------------------
# Fit level: cost-increase and NaN guards (backtracking with a single step cannot always
# find a decrease, so the guards get to act)
# --------------------------------------------------------------------------------------------


def test_cost_increase_guard_on_first_step_keeps_start():
    # large first-step caps let the first step overshoot; the guard then keeps the start
    config = Config(warmup_linesearch="backtracking", warmup_linesearch_steps=1,
                    first_step_careful=3.0, max_update_norm=3.0)
    p0 = (5.0, 1.0, 0.5)
    result = check_fit_case(p0, config, WarmupReason.COST_INCREASE)
    losses, _ = warmup_trace(result)
    assert len(losses) == 1 and losses[0] > (1 + config.cost_increase_tol) * initial_loss(p0)
    # best point = the start: Gauss-Newton's first cost is the cost at p0
    np.testing.assert_allclose(float(result.trace.cost[1]), N * initial_loss(p0), rtol=1e-10)


def test_cost_increase_guard_after_progress_keeps_best():
    p0 = (2.0, 4.0, 0.5)
    result = check_fit_case(p0, BACKTRACK1, WarmupReason.COST_INCREASE)
    losses, _ = warmup_trace(result)
    assert len(losses) >= 2
    assert losses.min() < initial_loss(p0)  # progress was made before the blow-up...
    assert losses[-1] > (1 + BACKTRACK1.cost_increase_tol) * initial_loss(p0)
    # ...and that progress is what Gauss-Newton receives (checked in check_fit_case too)
    np.testing.assert_allclose(float(result.trace.cost[len(losses)]), N * losses.min(),
                               rtol=1e-10)


def test_cost_increase_tol_is_respected():
    """A tolerance above the first step's growth lets the warmup go on."""
    p0 = (5.0, 1.0, 0.5)
    loose = Config(warmup_linesearch="backtracking", warmup_linesearch_steps=1,
                   first_step_careful=3.0, max_update_norm=3.0, cost_increase_tol=1e3)
    result = run_fit(p0, loose)
    assert WarmupReason(int(result.warmup_reason)) != WarmupReason.COST_INCREASE
    losses, _ = warmup_trace(result)
    assert losses[0] > 1.1 * initial_loss(p0)  # the same growth the default guard rejects
    assert_switching_rule(result, p0, loose)
    assert_handed_over_best(result, p0)
    assert_final_matches_scipy(result)


def test_nonfinite_guard_keeps_best():
    # an L-BFGS trial point has q < 0, where sqrt(q) is NaN; one backtracking step can't escape
    p0 = (3.0, 9.0, 0.5)
    result = check_fit_case(p0, BACKTRACK1, WarmupReason.NONFINITE)
    losses, _ = warmup_trace(result)
    assert np.isnan(losses[-1]) and np.all(np.isfinite(losses[:-1]))
    np.testing.assert_allclose(float(result.trace.cost[len(losses)]),
                               N * min(initial_loss(p0), losses[:-1].min()), rtol=1e-10)


# --------------------------------------------------------------------------------------------
# Fit level: switching criteria
# --------------------------------------------------------------------------------------------


def test_switch_on_small_gradient():
    result = check_fit_case(START_CAREFUL, ZOOM, WarmupReason.SMALL_GRADIENT)
    _, grad_norms = warmup_trace(result)
    assert grad_norms[-1] <= ZOOM.warmup_gtol * initial_grad_norm(START_CAREFUL)
    assert int(result.warmup_iterations) > ZOOM.warmup_min_iter


def test_switch_on_plateau():
    config = Config(plateau_rtol=0.05, plateau_patience=2)
    result = check_fit_case(START_EXPLORE, config, WarmupReason.PLATEAU)
    losses, _ = warmup_trace(result)
    previous = np.concatenate([[initial_loss(START_EXPLORE)], losses[:-1]])
    decrease = (previous - losses) / previous
    assert np.all(decrease[-2:] < 0.05)  # the last `patience` iterations made no progress
    assert decrease[-3] >= 0.05  # and the one before did


def test_switch_on_iteration_cap():
    # no plateau or gradient switch possible: the cap (default 30) must end the warmup
    config = Config(warmup_gtol=0.0, plateau_rtol=0.0, plateau_patience=10**6)
    result = check_fit_case(START_EXPLORE, config, WarmupReason.MAX_ITERATIONS)
    assert int(result.warmup_iterations) == config.warmup_max_iter


@pytest.mark.parametrize("criterion", ["plateau", "small_gradient"])
def test_min_iter_delays_switching(criterion):
    """Criteria met from iteration 1 on switch only at warmup_min_iter (default 2).
    (A larger warmup_min_iter is checked on warmup.update directly, below.)"""
    if criterion == "plateau":  # every iteration counts as no progress
        config = Config(plateau_rtol=10.0, plateau_patience=1)
        reason = WarmupReason.PLATEAU
    else:  # every gradient counts as small
        config = Config(warmup_gtol=1e6)
        reason = WarmupReason.SMALL_GRADIENT
    assert config.warmup_min_iter == 2
    result = check_fit_case(START_EXPLORE, config, reason)
    assert int(result.warmup_iterations) == config.warmup_min_iter


def test_patience_counts_before_min_iter():
    """No-progress iterations before warmup_min_iter count towards the patience."""
    config = Config(plateau_rtol=10.0, plateau_patience=3)
    result = check_fit_case(START_EXPLORE, config, WarmupReason.PLATEAU)
    assert int(result.warmup_iterations) == 3


# --------------------------------------------------------------------------------------------
# Fit level: optional gradient clipping and the two line searches
# --------------------------------------------------------------------------------------------


def test_grad_clip_norm_changes_warmup_not_answer():
    config = Config(grad_clip_norm=1e-3)
    free, clipped = run_fit(START_EXPLORE, ZOOM), run_fit(START_EXPLORE, config)
    assert warmup_trace(free)[0][0] != warmup_trace(clipped)[0][0]  # the warmup did change
    assert int(clipped.warmup_iterations) >= 1
    assert_trace_layout(clipped)
    assert_handed_over_best(clipped, START_EXPLORE)
    assert_switching_rule(clipped, START_EXPLORE, config)
    assert_final_matches_scipy(clipped)


@pytest.mark.parametrize("linesearch", ["zoom", "backtracking"])
def test_linesearches_reach_scipy(linesearch):
    config = ZOOM if linesearch == "zoom" else BACKTRACK1
    for p0 in (START_CAREFUL, START_EXPLORE):
        result = run_fit(p0, config)
        losses, _ = warmup_trace(result)
        assert len(losses) >= 1 and np.nanmin(losses) < initial_loss(p0)  # warmup made progress
        assert_handed_over_best(result, p0)
        assert_switching_rule(result, p0, config)
        assert_final_matches_scipy(result)


# --------------------------------------------------------------------------------------------
# Direct: warmup.init / warmup.update on analytic losses
# --------------------------------------------------------------------------------------------


def _bowl(target, curvature, nan_from, nan_to, u):
    """0.5 sum curvature (u - target)^2; NaN where nan_from < u[0] < nan_to."""
    value = 0.5 * jnp.sum(curvature * (u - target) ** 2)
    return jnp.where((u[0] > nan_from) & (u[0] < nan_to), jnp.nan, value)


def bowl(target, curvature=(1.0, 4.0), nan_band=(np.inf, np.inf)):
    return jax.tree_util.Partial(_bowl, *(jnp.asarray(a, float) for a in (
        target, curvature, nan_band[0], nan_band[1])))


U0 = jnp.zeros(2)
LOWER, UPPER = jnp.full(2, -jnp.inf), jnp.full(2, jnp.inf)
FAR = (3.0, -4.0)  # a minimum far from U0: unrestricted steps are long
BACKTRACK_DIRECT = Config(warmup_linesearch="backtracking", warmup_linesearch_steps=1)

_init = jax.jit(warmup.init)
_update = jax.jit(warmup.update)


def run_warmup(loss, relative, config: Config, iterations: int, u0=U0):
    """States after init and after each update, until the warmup hands over."""
    state = _init(u0, loss, jnp.asarray(relative, float), config)
    # optax's initial line-search info is weakly typed, update's output is not: make the
    # types match so `_update` compiles once per static configuration (values unchanged)
    state = jax.tree.map(lambda a: jnp.array(a, dtype=a.dtype), state)
    states = [state]
    while bool(state.running) and len(states) <= iterations:
        state = _update(state, loss, LOWER, UPPER, config)
        states.append(state)
    return states


def step_norms(states):
    pairs = zip(states[:-1], states[1:], strict=True)
    return np.array([float(jnp.linalg.norm(b.u - a.u)) for a, b in pairs])


# optax's L-BFGS scales its first direction to norm min(|g|, 1), so an uncapped first step
# here has norm 1 = the default first_step_explore; a smaller explore cap makes all three
# caps distinct and active.
CAPS = Config(first_step_explore=0.6)
UNCAPPED = Config(first_step_refine=1e3, first_step_careful=1e3, first_step_explore=1e3,
                  max_update_norm=1e3)


@pytest.mark.parametrize("relative, mode, cap_name", [
    (1e-3, WarmupMode.REFINE, "first_step_refine"),
    (0.1, WarmupMode.CAREFUL, "first_step_careful"),
    (5.0, WarmupMode.EXPLORE, "first_step_explore")], ids=["refine", "careful", "explore"])
def test_first_step_capped_by_mode(relative, mode, cap_name):
    loss = bowl(FAR)
    uncapped = step_norms(run_warmup(loss, relative, UNCAPPED, 1))[0]
    cap = getattr(CAPS, cap_name)
    assert uncapped > cap  # so the cap has something to do
    states = run_warmup(loss, relative, CAPS, 1)
    assert WarmupMode(int(states[0].mode)) == mode
    np.testing.assert_allclose(step_norms(states)[0], cap, rtol=1e-12)
    assert float(states[1].loss) < float(states[0].loss)  # a capped descent step still descends


def test_mode_threshold_boundaries():
    loss = bowl(FAR)
    modes = {rel: WarmupMode(int(_init(U0, loss, jnp.asarray(rel), ZOOM).mode))
             for rel in (0.0, 0.5e-2, 1e-2, 0.5, 1.0, 1.5, np.inf)}
    assert modes == {0.0: WarmupMode.REFINE, 0.5e-2: WarmupMode.REFINE,
                     1e-2: WarmupMode.CAREFUL, 0.5: WarmupMode.CAREFUL,
                     1.0: WarmupMode.CAREFUL, 1.5: WarmupMode.EXPLORE,
                     np.inf: WarmupMode.EXPLORE}


def test_init_reasons():
    loss = bowl(FAR)
    reason = {
        "warm": _init(U0, loss, jnp.asarray(0.5e-4), ZOOM).reason,
        "run": _init(U0, loss, jnp.asarray(2e-4), ZOOM).reason,
        "off": _init(U0, loss, jnp.asarray(5.0), OFF).reason,
        "zero_iter": _init(U0, loss, jnp.asarray(5.0), Config(warmup_max_iter=0)).reason,
        "nan_start": _init(U0, bowl(FAR, nan_band=(-1.0, np.inf)), jnp.asarray(5.0),
                           ZOOM).reason,
    }
    assert {k: WarmupReason(int(v)) for k, v in reason.items()} == {
        "warm": WarmupReason.WARM_START, "run": WarmupReason.NOT_RUN,
        "off": WarmupReason.DISABLED, "zero_iter": WarmupReason.MAX_ITERATIONS,
        "nan_start": WarmupReason.NONFINITE}


@pytest.mark.parametrize("criterion", ["plateau", "small_gradient"])
def test_larger_min_iter_delays_switching(criterion):
    if criterion == "plateau":
        config = Config(warmup_min_iter=5, plateau_rtol=10.0, plateau_patience=1,
                        warmup_gtol=0.0)
        reason = WarmupReason.PLATEAU
    else:
        config = Config(warmup_min_iter=5, warmup_gtol=1e6, plateau_rtol=0.0)
        reason = WarmupReason.SMALL_GRADIENT
    states = run_warmup(bowl(FAR), 5.0, config, 30)
    assert [WarmupReason(int(s.reason)) for s in states] == [WarmupReason.NOT_RUN] * 5 + [reason]
    assert int(states[-1].iteration) == 5


def test_update_norm_clipped_after_first_step():
    config = Config(max_update_norm=0.1, warmup_gtol=0.0, plateau_rtol=0.0)
    states = run_warmup(bowl(FAR), 5.0, config, 6)
    uncapped = step_norms(run_warmup(bowl(FAR), 5.0, UNCAPPED, 6))
    norms = step_norms(states)
    assert len(norms) == 6 and np.all(uncapped[1:] > 0.1)
    np.testing.assert_allclose(norms[1:], 0.1, rtol=1e-12)  # clipped, and only just
    losses = [float(s.loss) for s in states]
    assert np.all(np.diff(losses) < 0)  # clipped L-BFGS steps still descend here


def test_first_step_also_respects_max_update_norm():
    config = Config(max_update_norm=0.1)  # below first_step_explore = 1.0
    norms = step_norms(run_warmup(bowl(FAR), 5.0, config, 3))
    assert np.all(norms <= 0.1 * (1 + 1e-12)), norms


@pytest.mark.parametrize("tol, guarded", [(40.0, True), (60.0, False)])
def test_cost_increase_guard_direct(tol, guarded):
    """Curvature 100, minimum 0.1 away: the unit-norm first L-BFGS direction overshoots,
    backtracking once lands at 0.8, 0.7 past the minimum: the loss grows by (0.7/0.1)^2 = 49.
    """
    loss = bowl((0.1, 0.0), curvature=(100.0, 100.0))
    config = Config(warmup_linesearch="backtracking", warmup_linesearch_steps=1,
                    cost_increase_tol=tol)
    states = run_warmup(loss, 5.0, config, 1)
    first, second = states[0], states[1]
    np.testing.assert_allclose(float(second.loss) / float(first.loss), 49.0, rtol=1e-9)
    if guarded:
        assert WarmupReason(int(second.reason)) == WarmupReason.COST_INCREASE
    else:
        assert bool(second.running)
    # either way the best point is the start, and its loss is the initial one
    np.testing.assert_array_equal(np.asarray(second.best_u), np.asarray(U0))
    assert float(loss(second.best_u)) == float(second.best_loss) == float(first.initial_loss)


def test_nonfinite_guard_direct():
    """A NaN wall at u[0] > 1.5 on the way to the minimum at u[0] = 3."""
    loss = bowl(FAR, nan_band=(1.5, np.inf))
    states = run_warmup(loss, 5.0, BACKTRACK_DIRECT, 30)
    last = states[-1]
    assert WarmupReason(int(last.reason)) == WarmupReason.NONFINITE
    assert not np.isfinite(float(last.loss))
    finite = [float(s.loss) for s in states if np.isfinite(float(s.loss))]
    assert len(finite) >= 2  # some progress before the wall
    assert float(last.best_loss) == min(finite) < float(states[0].loss)
    assert float(loss(last.best_u)) == float(last.best_loss)  # re-evaluated independently
    assert float(last.best_u[0]) <= 1.5


def test_nonfinite_guard_after_capped_step():
    """The line search's point (u = (1, 0)) is finite, but the first-step cap puts the
    iterate at (0.5, 0), inside a NaN band: the iterate moved, the best point is the start."""
    loss = bowl((3.0, 0.0), nan_band=(0.3, 0.7))
    config = Config(warmup_linesearch="backtracking", warmup_linesearch_steps=1,
                    first_step_careful=0.5)
    first, second = run_warmup(loss, 0.1, config, 1)
    np.testing.assert_allclose(np.asarray(second.u), [0.5, 0.0], rtol=1e-12)
    assert np.isfinite(float(loss(jnp.array([1.0, 0.0]))))
    assert WarmupReason(int(second.reason)) == WarmupReason.NONFINITE
    assert np.isnan(float(second.loss))
    np.testing.assert_array_equal(np.asarray(second.best_u), np.asarray(U0))
    assert float(second.best_loss) == float(first.loss) == float(loss(U0))


@pytest.mark.parametrize("config", [ZOOM, BACKTRACK_DIRECT], ids=["zoom", "backtracking"])
def test_grad_clip_norm_shrinks_first_update(config):
    loss = bowl(FAR)
    free = step_norms(run_warmup(loss, 5.0, config, 1))[0]
    clipped_config = Config(warmup_linesearch=config.warmup_linesearch,
                            warmup_linesearch_steps=config.warmup_linesearch_steps,
                            grad_clip_norm=1e-3)
    clipped = step_norms(run_warmup(loss, 5.0, clipped_config, 1))[0]
    assert clipped < 0.9 * free
    if config.warmup_linesearch == "backtracking":
        # no line-search growth: the step is the clipped gradient itself (step size <= 1)
        assert clipped <= 1e-3 * (1 + 1e-12)


def test_auto_warmup_runs_only_where_it_works_on_a_subsample():
    """warmup='auto' (the default) skips the warmup when the data is no larger than the
    warmup subsample (an L-BFGS iteration would cost a full pass, like a Gauss-Newton one),
    and runs it otherwise; both reach the same optimum as warmup=True."""
    small = hybrid_gn.fit(decay, jnp.asarray(START_EXPLORE, float), X, Y)
    assert WarmupReason(int(small.warmup_reason)) == WarmupReason.SMALL_DATA
    assert int(small.warmup_iterations) == 0
    assert np.all(np.asarray(small.trace.phase)[: int(small.trace.length)] == Phase.GAUSS_NEWTON)
    subsampled = hybrid_gn.fit(decay, jnp.asarray(START_EXPLORE, float), X, Y,
                               config=hybrid_gn.Config(warmup_max_points=N // 2))
    assert int(subsampled.warmup_iterations) > 0
    forced = run_fit(START_EXPLORE, Config())
    assert int(forced.warmup_iterations) > 0
    for result in (small, subsampled):
        assert bool(result.success)
        np.testing.assert_allclose(result.params, forced.params, rtol=1e-7)
    with pytest.raises(ValueError, match="warmup must be True, False or 'auto'"):
        hybrid_gn.Config(warmup="yes")
