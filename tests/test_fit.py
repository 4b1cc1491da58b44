"""``hybrid_gn.fit`` (and ``curve_fit``) against independent references.

Every test compares with something computed without the library: scipy's ``curve_fit`` /
``least_squares`` converged as tightly as they go (``ftol = xtol = gtol = 1e-15``) with an
analytic numpy Jacobian, closed forms, brute force, or an unbatched/eager run of the same fit.

Compiling a fit costs seconds, so the tests share a few programs: the same model function
objects, the same data shapes and the same static configuration wherever possible (numeric
``Config`` fields, bounds values and ``absolute_sigma`` are traced and do not recompile).
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from jax.flatten_util import ravel_pytree

import hybrid_gn
from hybrid_gn import Status
from hybrid_gn._phases._cholesky import BOUNDARY_TOLERANCE
from hybrid_gn._phases._linalg import trust_region_step
from hybrid_gn._phases._normalize import make_normalization
from hybrid_gn._pipeline import prepare

jax.config.update("jax_enable_x64", True)

EPS = np.finfo(np.float64).eps
TIGHT = {"ftol": 1e-15, "xtol": 1e-15, "gtol": 1e-15}
POPT_RTOL, POPT_ATOL_SE = 1e-6, 1e-6  # same optimum: as in test_curve_fit_vs_scipy.py
PCOV_RTOL = 1e-4


# --------------------------------------------------------------------------------------------
# Shared models and data
# --------------------------------------------------------------------------------------------


def exp_model(p, x):
    """a * exp(-b x) + c in hybrid_gn's model(params, x) convention."""
    return p[0] * jnp.exp(-p[1] * x) + p[2]


def exp_f(x, a, b, c):
    """The same model in curve_fit's f(x, *params) convention."""
    return a * jnp.exp(-b * x) + c


def exp_np(x, a, b, c):
    return a * np.exp(-b * x) + c


def exp_jac_np(x, a, b, c):
    e = np.exp(-b * x)
    return np.stack([e, -a * x * e, np.ones_like(x)], axis=1)


EVALUATED: list[np.ndarray] = []  # every parameter vector the recording models were called with


def _record(params):
    EVALUATED.append(np.array(params, copy=True))


def exp_model_recording(p, x):
    """exp_model that records each evaluation's parameters (through jacfwd, on the host)."""
    jax.debug.callback(_record, p)
    return exp_model(p, x)


def evaluated_points() -> np.ndarray:
    jax.effects_barrier()
    return np.array(EVALUATED)


X = np.linspace(0.0, 5.0, 60)
TRUTH = np.array([3.0, 1.2, 0.5])
P0 = np.array([2.0, 1.0, 0.3])


def noisy(f, x, truth, seed, noise=0.02):
    rng = np.random.default_rng(seed)
    return f(x, *truth) + noise * rng.standard_normal(np.shape(x))


Y = noisy(exp_np, X, TRUTH, seed=0)


def scipy_lm(x, y, p0, **kwargs):
    """Tight MINPACK curve_fit of the exponential decay with its analytic Jacobian."""
    return scipy.optimize.curve_fit(exp_np, x, y, p0=p0, jac=exp_jac_np, method="lm",
                                    maxfev=100_000, **TIGHT, **kwargs)


def assert_same_optimum(popt, ref_popt, ref_pcov, rtol=POPT_RTOL, atol_se=POPT_ATOL_SE):
    """|popt - ref| <= rtol |ref| + atol_se * standard error, per parameter."""
    se = np.sqrt(np.diag(ref_pcov))
    np.testing.assert_allclose(np.asarray(popt, float) / se, np.asarray(ref_popt) / se,
                               rtol=rtol, atol=atol_se)


def assert_pcov_close(pcov, ref_pcov, rtol=PCOV_RTOL):
    se = np.sqrt(np.diag(ref_pcov))
    scale = np.outer(se, se)
    np.testing.assert_allclose(np.asarray(pcov) / scale, ref_pcov / scale, rtol=rtol,
                               atol=1e-6)


# --------------------------------------------------------------------------------------------
# 1. jit
# --------------------------------------------------------------------------------------------


def test_jit_fit_equals_eager_fit_and_scipy():
    """jax.jit(fit, static_argnames='model') returns the eager result (params, pcov, cost,
    status, iteration counts), and both equal tight scipy curve_fit('lm')."""
    p0 = jnp.asarray(P0)
    eager = hybrid_gn.fit(exp_model, p0, X, Y)
    jitted = jax.jit(hybrid_gn.fit, static_argnames="model")(exp_model, p0, X, Y)

    np.testing.assert_allclose(jitted.params, eager.params, rtol=1e-12, atol=0)
    np.testing.assert_allclose(jitted.pcov, eager.pcov, rtol=1e-10, atol=0)
    np.testing.assert_allclose(jitted.cost, eager.cost, rtol=1e-13)
    assert int(jitted.status) == int(eager.status)
    assert int(jitted.gn_iterations) == int(eager.gn_iterations)
    assert int(jitted.warmup_iterations) == int(eager.warmup_iterations)

    ref_popt, ref_pcov = scipy_lm(X, Y, P0)
    assert bool(eager.success)
    assert_same_optimum(eager.params, ref_popt, ref_pcov)
    assert_pcov_close(eager.pcov, ref_pcov)
    # the cost is half the residual sum of squares, as in least_squares
    np.testing.assert_allclose(eager.cost, 0.5 * np.sum((exp_np(X, *ref_popt) - Y) ** 2),
                               rtol=1e-12)


# --------------------------------------------------------------------------------------------
# 2. vmap over many problems
# --------------------------------------------------------------------------------------------


N_BATCH = 100


def test_vmap_100_problems_equal_solo_fits_and_scipy():
    """jax.vmap(fit) over 100 exponential decays (different truths, noise and starts, shared x)
    gives, problem by problem, the solo fit's optimum and success flag, and the tight scipy
    optimum.

    Batched and unbatched XLA kernels round differently (already ~1e-13 after one iteration),
    so the two runs can stop one iteration apart or by a different criterion (ftol vs xtol);
    the comparison therefore allows a millionth of a standard error besides rtol=1e-10, and
    compares success rather than the exact stopping code.
    """
    rng = np.random.default_rng(1)
    truths = np.stack([rng.uniform(1.0, 5.0, N_BATCH), rng.uniform(0.5, 2.0, N_BATCH),
                       rng.uniform(-1.0, 1.0, N_BATCH)], axis=1)
    ys = truths[:, :1] * np.exp(-truths[:, 1:2] * X) + truths[:, 2:]
    ys = ys + 0.02 * rng.standard_normal(ys.shape)
    p0s = truths * rng.uniform(0.7, 1.3, truths.shape)

    batched = jax.jit(jax.vmap(lambda y, p0: hybrid_gn.fit(exp_model, p0, X, y)))(
        jnp.asarray(ys), jnp.asarray(p0s))
    assert batched.params.shape == (N_BATCH, 3)
    assert batched.pcov.shape == (N_BATCH, 3, 3)
    assert np.all(batched.success), batched.message

    for i in range(N_BATCH):
        solo = hybrid_gn.fit(exp_model, jnp.asarray(p0s[i]), X, jnp.asarray(ys[i]))
        ref_popt, ref_pcov = scipy_lm(X, ys[i], p0s[i])
        assert bool(solo.success) == bool(batched.success[i]), i
        se = np.sqrt(np.diag(ref_pcov))
        np.testing.assert_allclose(batched.params[i] / se, solo.params / se, rtol=1e-10,
                                   atol=1e-6, err_msg=f"problem {i}: vmap vs solo")
        np.testing.assert_allclose(batched.cost[i], solo.cost, rtol=1e-12,
                                   err_msg=f"problem {i}")
        np.testing.assert_allclose(batched.pcov[i], solo.pcov, rtol=1e-6,
                                   err_msg=f"problem {i}")
        assert_same_optimum(batched.params[i], ref_popt, ref_pcov)


# --------------------------------------------------------------------------------------------
# 3. float32
# --------------------------------------------------------------------------------------------


def test_float32_inputs_give_float32_result_close_to_float64_scipy():
    """float32 x, y, p0 (with x64 on) fit in float32: params/pcov/cost are float32, the fit
    succeeds, and params are within 1e-4 relative of float64 scipy curve_fit."""
    f32 = jnp.float32
    result = hybrid_gn.fit(exp_model, jnp.asarray(P0, f32), jnp.asarray(X, f32),
                           jnp.asarray(Y, f32))
    assert result.params.dtype == f32
    assert result.pcov.dtype == f32
    assert result.cost.dtype == f32
    assert bool(result.success), result.message
    ref_popt, ref_pcov = scipy_lm(X, Y, P0)
    np.testing.assert_allclose(np.asarray(result.params, float), ref_popt, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(result.pcov, float), ref_pcov, rtol=1e-3)


# --------------------------------------------------------------------------------------------
# 4. pytree parameters
# --------------------------------------------------------------------------------------------


def gauss_tree(p, x):
    return p["amp"] * jnp.exp(-0.5 * ((x - p["centre"]) / p["width"][0]) ** 2) + p["bg"]["level"]


def gauss_np(x, amp, centre, width, level):
    return amp * np.exp(-0.5 * ((x - centre) / width) ** 2) + level


def gauss_jac_np(x, amp, centre, width, level):
    t = (x - centre) / width
    e = np.exp(-0.5 * t**2)
    return np.stack([e, amp * e * t / width, amp * e * t**2 / width, np.ones_like(x)], axis=1)


def test_pytree_params_and_pytree_bounds_match_flat_scipy():
    """Nested dict params (scalars, a (1,) array, a sub-dict) with pytree bounds: params and
    perr keep p0's structure and shapes, pcov is in ravel_pytree order, and all equal the flat
    scipy curve_fit. The box is narrow around the optimum, so bounds applied in the wrong
    order would cut it off or exclude p0."""
    x = np.linspace(-3.0, 5.0, 80)
    y = noisy(gauss_np, x, (2.5, 1.0, 0.7, 0.3), seed=2, noise=0.03)
    p0 = {"amp": 2.45, "centre": 0.95, "width": jnp.array([0.75]), "bg": {"level": 0.28}}
    lower = {"amp": 2.4, "centre": 0.9, "width": 0.6, "bg": {"level": 0.25}}
    upper = {"amp": 2.6, "centre": 1.1, "width": jnp.array([0.8]), "bg": {"level": 0.35}}
    result = hybrid_gn.fit(gauss_tree, p0, x, y, bounds=(lower, upper))
    assert bool(result.success), result.message

    flat0 = [p0["amp"], p0["centre"], float(p0["width"][0]), p0["bg"]["level"]]
    ref_popt, ref_pcov = scipy.optimize.curve_fit(gauss_np, x, y, p0=flat0, jac=gauss_jac_np,
                                                  method="lm", maxfev=100_000, **TIGHT)
    ref_perr = np.sqrt(np.diag(ref_pcov))

    def as_tree(v):
        amp, centre, width, level = v
        return {"amp": amp, "centre": centre, "width": np.array([width]), "bg": {"level": level}}

    lb, ub = np.array([2.4, 0.9, 0.6, 0.25]), np.array([2.6, 1.1, 0.8, 0.35])  # scipy order
    assert np.all((lb + ref_perr < ref_popt) & (ref_popt < ub - ref_perr))  # optimum interior
    # position[k]: the scipy index of the k-th entry of ravel_pytree(params)
    position = np.asarray(ravel_pytree(as_tree(np.arange(4.0)))[0]).astype(int)

    for got, want, rtol in ((result.params, ref_popt, POPT_RTOL),
                            (result.perr, ref_perr, PCOV_RTOL)):
        assert jax.tree.structure(got) == jax.tree.structure(p0)
        expected = as_tree(want)
        for k, (g, w, leaf0) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(expected),
                                              jax.tree.leaves(p0), strict=True)):
            assert np.shape(g) == np.shape(leaf0), k
            np.testing.assert_allclose(g, w, rtol=rtol, err_msg=f"leaf {k}")

    np.testing.assert_allclose(ravel_pytree(result.params)[0], ref_popt[position],
                               rtol=POPT_RTOL)
    assert_pcov_close(result.pcov, ref_pcov[np.ix_(position, position)])


# --------------------------------------------------------------------------------------------
# 5. bounds
# --------------------------------------------------------------------------------------------

# exp decay whose fitted b (~1.2) lies above b's box and whose fitted c (~1.0) above c's upper
# bound, both pinned at the upper bound in the scipy solution: b has both bounds finite
# ('bounds' normalization), c only an upper one ('p0'). -0.9 + (0.74 + 0.9) = 0.7400000000000001
# and 0.6 * (0.7 / 0.6) = 0.7000000000000001, so these bounds also expose the rounding of the
# normalization map at the upper bound.
BOX_TRUTH = np.array([3.0, 1.2, 1.0])
BOX_LB = np.array([-np.inf, -0.9, -np.inf])
BOX_UB = np.array([np.inf, 0.74, 0.7])
BOX_P0 = np.array([2.0, 0.5, 0.6])
BOX_Y = noisy(exp_np, X, BOX_TRUTH, seed=5)


def bounded_reference():
    fun = lambda p: exp_np(X, *p) - BOX_Y  # noqa: E731
    jac = lambda p: exp_jac_np(X, *p)  # noqa: E731
    ref = scipy.optimize.least_squares(fun, BOX_P0, jac=jac, bounds=(BOX_LB, BOX_UB),
                                       method="trf", x_scale="jac", max_nfev=100_000, **TIGHT)
    assert ref.success
    return ref


def bounded_fit():
    EVALUATED.clear()
    result = hybrid_gn.fit(exp_model_recording, jnp.asarray(BOX_P0), X, BOX_Y,
                           bounds=(BOX_LB, BOX_UB))
    return result, evaluated_points()


def test_active_bounds_match_scipy_trf_and_kkt():
    """With the unconstrained optimum outside the box: the fit succeeds, equals tight scipy
    least_squares('trf') to 1e-6, pins the same variables, and satisfies the KKT conditions
    checked with an independent gradient J^T r (jax.jacfwd at the result): free components
    vanish (cosine with the residual < 1e-6), pinned ones point out of the box. The GN trace
    (accepted costs) is finite and non-increasing, warmup entries are finite, and every point
    the model was evaluated at lies in the box up to one rounding of the normalization map."""
    result, evaluated = bounded_fit()
    ref = bounded_reference()
    assert bool(result.success), result.message
    popt = np.asarray(result.params)

    np.testing.assert_allclose(popt, ref.x, rtol=1e-6, atol=1e-9)
    at_lower = np.isclose(popt, BOX_LB, rtol=0, atol=1e-12)
    at_upper = np.isclose(popt, BOX_UB, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(at_upper.astype(int) - at_lower.astype(int), ref.active_mask)
    assert at_upper[1] and at_upper[2]  # the case really has two active bounds

    def residual(p):
        return exp_model(p, jnp.asarray(X)) - jnp.asarray(BOX_Y)

    jac = np.asarray(jax.jacfwd(residual)(jnp.asarray(popt)))
    r = np.asarray(residual(jnp.asarray(popt)))
    grad = jac.T @ r
    np.testing.assert_allclose(result.cost, 0.5 * r @ r, rtol=1e-12)
    np.testing.assert_allclose(result.cost, ref.cost, rtol=1e-10)
    cosine = np.abs(grad) / (np.linalg.norm(jac, axis=0) * np.linalg.norm(r))
    free = ~(at_lower | at_upper)
    assert np.all(cosine[free] < 1e-6), cosine
    assert np.all(grad[at_upper] < 0) and np.all(grad[at_lower] > 0), grad  # pointing outward

    trace = result.trace
    length = int(trace.length)
    cost, phase = np.asarray(trace.cost)[:length], np.asarray(trace.phase)[:length]
    assert np.all(np.isfinite(cost))
    gn = cost[phase == hybrid_gn.Phase.GAUSS_NEWTON]
    assert gn.size == int(result.gn_iterations) + 1
    assert np.all(np.diff(gn) <= 0), gn
    np.testing.assert_allclose(gn[-1], result.cost, rtol=0)

    assert evaluated.shape[1] == 3 and len(evaluated) > 0
    slack = 4 * EPS * np.abs(np.where(np.isfinite(BOX_UB), BOX_UB, 0))
    assert np.all(evaluated <= BOX_UB + slack) and np.all(evaluated >= BOX_LB - slack)


def test_bounded_params_and_evaluations_exactly_inside_box():
    """result.params and every parameter vector the model is evaluated at lie inside
    [lb, ub] exactly (no rounding slack), as scipy's least_squares guarantees."""
    result, evaluated = bounded_fit()
    popt = np.asarray(result.params)
    assert np.all((popt >= BOX_LB) & (popt <= BOX_UB)), popt - BOX_UB
    assert np.all((evaluated >= BOX_LB) & (evaluated <= BOX_UB))


# --------------------------------------------------------------------------------------------
# 6. NaN trial points
# --------------------------------------------------------------------------------------------

NAN_ABOVE = 2.0
NAN_X = np.linspace(0.0, 2.0, 30)
NAN_Y = noisy(lambda x, c, b: c + b * x, NAN_X, (1.0, 0.5), seed=6)


def nan_model(p, x):
    """t^2 + b x, NaN wherever t > NAN_ABOVE. For t the GN step is Newton's for sqrt(c):
    from t0 = 0.1 it lands near t = (0.1 + 1 / 0.1) / 2 ~ 5, deep in the NaN region."""
    jax.debug.callback(_record, p)
    value = p[0] ** 2 + p[1] * x
    return jnp.where(p[0] > NAN_ABOVE, jnp.nan, value)


def test_nan_trial_is_rejected_and_fit_reaches_closed_form():
    """A Gauss-Newton trial in the NaN region is rejected: the fit still succeeds, its cost
    and accepted trace are finite (and non-increasing), and the params equal the closed form
    t = sqrt(c), b from the linear least-squares fit of c + b x. Warmup is off and the initial
    radius wide, for this poor start too, so the first full GN step really enters the NaN
    region (checked)."""
    config = hybrid_gn.Config(warmup=False, initial_radius=100.0, poor_start_radius=100.0)
    EVALUATED.clear()
    result = hybrid_gn.fit(nan_model, jnp.array([0.1, 0.0]), NAN_X, NAN_Y, config=config)
    evaluated = evaluated_points()
    assert np.any(evaluated[:, 0] > NAN_ABOVE), "no trial entered the NaN region"

    assert bool(result.success), result.message
    assert np.isfinite(float(result.cost))
    (c, b), *_ = np.linalg.lstsq(np.stack([np.ones_like(NAN_X), NAN_X], axis=1), NAN_Y,
                                 rcond=None)
    np.testing.assert_allclose(result.params, [np.sqrt(c), b], rtol=1e-8)
    rss = np.sum((c + b * NAN_X - NAN_Y) ** 2)
    np.testing.assert_allclose(result.cost, 0.5 * rss, rtol=1e-12)

    length = int(result.trace.length)
    gn = np.asarray(result.trace.cost)[:length]
    # non-increasing, up to the final rounding-level step (taken when both its predicted and
    # actual changes are below ftol = 10 eps of the cost, see gauss_newton.conclude)
    ftol = 10 * np.finfo(np.float64).eps
    assert np.all(np.isfinite(gn)) and np.all(np.diff(gn) <= ftol * gn[:-1]), gn


@pytest.mark.slow  # the rule's fast proof: tests/test_kernels.py::test_conclude_valley
def test_a_fit_running_off_along_a_valley_stops_as_valley():
    """a1 e^(-b1 x) + a2 e^(-b2 x) fitted to y = x e^(-x): no minimum exists (x e^(-x) is
    the limit b2 -> b1 = 1, a1 = -a2 -> inf, by the derivative of e^(-b x) in b), so each
    step lowers the cost a little and no tolerance is met. Without the retry the fit stops
    with VALLEY (not a success) long before max_iter, its amplitudes opposite and growing
    and the rates merging; the default retries once (the retry runs into the valley too)
    and keeps the lower end, still VALLEY; with valley_window = 0 the same fit runs to the
    cap of 400, lower in cost by less than 1e-4 (relative): the stop lost nothing the data
    can tell."""
    x = np.linspace(0.0, 6.0, 80)
    y = x * np.exp(-x) + 0.1 * np.cos(7 * x)

    def model(p, x):
        return p[0] * jnp.exp(-p[1] * x) + p[2] * jnp.exp(-p[3] * x)

    p0 = jnp.array([1.0, 0.8, -1.0, 1.2])
    once = hybrid_gn.fit(model, p0, x, y, config=hybrid_gn.Config(valley_retry=False))
    assert int(once.status) == Status.VALLEY and int(once.gn_iterations) <= 300
    out = hybrid_gn.fit(model, p0, x, y)
    assert int(out.status) == Status.VALLEY and not Status(int(out.status)).success
    assert int(once.gn_iterations) < int(out.gn_iterations) <= 600
    assert float(out.cost) <= float(once.cost)
    a1, b1, a2, b2 = np.asarray(out.params)
    assert a1 > 10 and abs(a1 + a2) < 1e-2 * a1 and abs(b1 - b2) < 0.1
    capped = hybrid_gn.fit(model, p0, x, y, config=hybrid_gn.Config(valley_window=0,
                                                                      max_iter=400))
    assert int(capped.status) == Status.MAX_ITERATIONS
    assert 0 <= float(out.cost) - float(capped.cost) < 1e-4 * float(capped.cost)


def lorentzians(p, x):
    """Two Lorentzian peaks (amplitude, centre, width each) on a linear background."""
    return (p[0] / (1 + ((x - p[1]) / p[2]) ** 2) + p[3] / (1 + ((x - p[4]) / p[5]) ** 2)
            + p[6] + p[7] * x)


def test_a_fit_stopped_in_a_valley_retries_and_reaches_the_minimum():
    """Two overlapping Lorentzians, started with a centre near zero (0.044, -0.027), where
    |p0| gives it a scale of 1-2 % of the largest against peaks 0.8 wide: the first
    attempt grows the amplitudes with opposite signs (+-80 when the fast walk stops it)
    into the valley of two merging peaks and stops with VALLEY (valley_retry=False shows
    it); the retry, its region scaled by the Jacobian's columns at the start, reaches
    scipy's lm minimum (same cost to 1e-9, params to 1e-6) and converges. Under jit(vmap)
    beside a good start, each problem equals its single fit."""
    x = np.linspace(-5.0, 5.0, 128)
    truth = np.array([2.0, -0.7, 0.8, 2.5, 0.8, 0.8, 0.2, 0.01])
    y = np.asarray(lorentzians(truth, x)) + 0.05 * np.random.default_rng(3).normal(size=x.size)
    starts = np.array([[2.324, 0.044, 0.865, 2.454, 0.253, 0.938, 0.158, 0.01],
                       [1.635, -0.027, 0.906, 2.376, -0.2, 0.386, 0.145, 0.01], truth * 1.1])
    fit = jax.jit(lambda p0: hybrid_gn.fit(lorentzians, p0, x, y))
    once = hybrid_gn.fit(lorentzians, jnp.asarray(starts[0]), x, y,
                         config=hybrid_gn.Config(valley_retry=False))
    amplitudes = np.asarray(once.params)[[0, 3]]
    assert int(once.status) == Status.VALLEY and np.max(np.abs(amplitudes)) > 50
    batch = jax.jit(jax.vmap(lambda p0: hybrid_gn.fit(lorentzians, p0, x, y)))(
        jnp.asarray(starts))
    for i, start in enumerate(starts):
        ref = scipy.optimize.least_squares(lambda p: np.asarray(lorentzians(p, x)) - y, start,
                                           method="lm", **TIGHT, max_nfev=20000)
        out = fit(jnp.asarray(start))
        assert Status(int(out.status)).success, (i, int(out.status))
        np.testing.assert_allclose(float(out.cost), ref.cost, rtol=1e-9)
        np.testing.assert_allclose(out.params, ref.x, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(batch.params[i], out.params, rtol=1e-12, atol=1e-14)
        assert int(batch.gn_iterations[i]) == int(out.gn_iterations)
    assert int(once.gn_iterations) < int(fit(jnp.asarray(starts[0])).gn_iterations)


# --------------------------------------------------------------------------------------------
# 7. bad input
# --------------------------------------------------------------------------------------------


def _with(a, index, value):
    a = np.array(a, float, copy=True)
    a[index] = value
    return a


def _fit(model=exp_model, p0=P0, x=X, y=Y, **kwargs):
    return lambda: hybrid_gn.fit(model, jnp.asarray(p0), x, y, **kwargs)


def _curve_fit(**kwargs):
    args = {"f": exp_f, "xdata": X, "ydata": Y, "p0": P0}
    args.update(kwargs)
    return lambda: hybrid_gn.curve_fit(**args)


BOX = ([0.0, 0.0, -1.0], [10.0, 10.0, 1.0])
_BAD = [
    # (id, call, exception, message fragment)
    ("fit-x-y-length", _fit(x=X[:50]), ValueError, "x and y disagree"),
    ("fit-y-2d", _fit(y=Y[:, None]), ValueError, "y must be 1-D"),
    ("fit-sigma-shape", _fit(sigma=np.ones(59)), ValueError, r"sigma must have shape \(n,\)"),
    ("fit-nan-y", _fit(y=_with(Y, 3, np.nan)), ValueError, "y contains NaN or Inf"),
    ("fit-inf-x", _fit(x=_with(X, 5, np.inf)), ValueError, "x contains NaN or Inf"),
    ("fit-nan-sigma", _fit(sigma=_with(np.ones(60), 0, np.nan)), ValueError,
     "sigma contains NaN or Inf"),
    ("fit-nan-p0", _fit(p0=[1.0, np.nan, 0.0]), ValueError, "p0 contains NaN"),
    ("fit-sigma-zero", _fit(sigma=_with(np.ones(60), 7, 0.0)), ValueError,
     "sigma must be strictly positive"),
    ("fit-sigma-negative", _fit(sigma=_with(np.ones(60), 7, -1.0)), ValueError,
     "sigma must be strictly positive"),
    ("fit-p0-outside-bounds", _fit(bounds=([0.0, 1.5, -1.0], [10.0, 10.0, 1.0])), ValueError,
     "p0 is outside the bounds: parameter 1"),
    ("fit-lb-gt-ub", _fit(bounds=([0.0, 2.0, -1.0], [10.0, 0.5, 1.0])), ValueError,
     "lower bound must be strictly less than its upper bound: parameter 1"),
    ("fit-lb-eq-ub", _fit(bounds=([0.0, 1.0, -1.0], [10.0, 1.0, 1.0])), ValueError,
     "lower bound must be strictly less than its upper bound: parameter 1"),
    ("fit-nan-bound", _fit(bounds=([0.0, np.nan, -1.0], BOX[1])), ValueError,
     "bounds contain NaN"),
    ("fit-too-few-points", _fit(x=X[:2], y=Y[:2]), ValueError,
     "too few data points: y has n = 2 points, fewer than the p = 3 parameters"),
    ("fit-model-short", _fit(model=lambda p, x: exp_model(p, x)[:-1]), ValueError,
     r"one value per point.*shape \(59,\)"),
    ("fit-model-column", _fit(model=lambda p, x: exp_model(p, x)[:, None]), ValueError,
     r"one value per point.*shape \(60, 1\)"),
    ("fit-model-scalar", _fit(model=lambda p, x: p[0]), ValueError,
     r"one value per point.*shape \(\)"),
    ("fit-bounds-normalization-infinite", _fit(config=hybrid_gn.Config(normalization="bounds")),
     ValueError, "normalization='bounds' needs finite"),
    ("curve_fit-x-y-length", _curve_fit(xdata=X[:50]), ValueError,
     r"f returned shape \(50,\), ydata has shape \(60,\)"),
    ("curve_fit-sigma-shape", _curve_fit(sigma=np.ones(59)), ValueError,
     r"`sigma` has incorrect shape. sigma must have shape \(n,\)"),
    ("curve_fit-sigma-2d-shape", _curve_fit(sigma=np.eye(59)), ValueError,
     r"`sigma` has incorrect shape.*2-D sigma of shape \(n, n\)"),
    ("curve_fit-sigma-2d-not-pd", _curve_fit(sigma=-np.eye(60)), ValueError,
     "positive definite"),
    ("curve_fit-nan-y", _curve_fit(ydata=_with(Y, 3, np.nan)), ValueError,
     "contains NaN or Inf"),
    ("curve_fit-inf-x", _curve_fit(xdata=_with(X, 5, np.inf)), ValueError,
     "contains NaN or Inf"),
    ("curve_fit-sigma-zero", _curve_fit(sigma=_with(np.ones(60), 7, 0.0)), ValueError,
     "sigma must be strictly positive"),
    ("curve_fit-sigma-negative", _curve_fit(sigma=_with(np.ones(60), 7, -1.0)), ValueError,
     "sigma must be strictly positive"),
    ("curve_fit-p0-outside-bounds", _curve_fit(bounds=([0.0, 1.5, -1.0], [10.0, 10.0, 1.0])),
     ValueError, "Initial guess is outside of provided bounds"),
    ("curve_fit-lb-gt-ub", _curve_fit(bounds=([0.0, 2.0, -1.0], [10.0, 0.5, 1.0])),
     ValueError, "Each lower bound must be strictly less than each upper bound"),
    ("curve_fit-lb-eq-ub", _curve_fit(bounds=([0.0, 1.0, -1.0], [10.0, 1.0, 1.0])),
     ValueError, "Each lower bound must be strictly less than each upper bound"),
    ("curve_fit-lb-gt-ub-no-p0", _curve_fit(p0=None, bounds=([0.0, 2.0, -1.0], [10.0, 0.5, 1.0])),
     ValueError, "Each lower bound must be strictly less than each upper bound"),
    ("curve_fit-too-few-points", _curve_fit(xdata=X[:2], ydata=Y[:2]), TypeError,
     r"The number of func parameters=3 must not exceed the number of data points=2 "
     r"\(method 'lm' needs at least as many ydata points as p0 has parameters\)"),
    ("curve_fit-too-few-points-trf", _curve_fit(xdata=X[:2], ydata=Y[:2], method="trf"),
     ValueError, "too few data points"),
    ("curve_fit-p0-too-short", _curve_fit(p0=[1.0, 1.0]), ValueError,
     "p0 has 2 values but f takes 3 parameters"),
    ("curve_fit-p0-too-long", _curve_fit(p0=[1.0, 1.0, 0.0, 1.0]), ValueError,
     "p0 has 4 values but f takes 3 parameters"),
    ("curve_fit-jac", _curve_fit(jac="4-point"), ValueError, "`jac` must be '2-point'"),
    ("curve_fit-method", _curve_fit(method="bogus"), ValueError, "`method` must be"),
]
BAD_INPUTS = [pytest.param(call, error, match, id=name) for name, call, error, match in _BAD]
BAD_INPUTS += [
    pytest.param(_fit(bounds=(BOX[0], BOX[1], BOX[1])), ValueError, "bounds must be a pair",
                 id="fit-bounds-not-pair"),
    pytest.param(_curve_fit(f=lambda x, a, b, c: exp_f(x, a, b, c)[1:]), ValueError,
                 "one residual per point", id="curve_fit-model-short"),
    pytest.param(_curve_fit(f=lambda x, a, b, c: exp_f(x, a, b, c)[:, None]), ValueError,
                 "one residual per point", id="curve_fit-model-column"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_INPUTS)
def test_bad_input_raises_clear_error(call, error, match):
    """Each bad input raises its own error, naming the problem, before any fitting."""
    with pytest.raises(error, match=match):
        call()


def test_check_finite_false_skips_the_check():
    """check_finite=False skips the NaN/Inf check: fit returns (no exception) with status
    NONFINITE_START, because the cost (NaN in y) or the Jacobian (-a x exp(-b x) = -inf * 0
    at x = inf) is not finite at the start; curve_fit reports that as a failed fit
    (RuntimeError, as scipy does), not as the input-validation ValueError."""
    for kwargs in ({"y": _with(Y, 3, np.nan)}, {"x": _with(X, 5, np.inf)}):
        result = _fit(check_finite=False, **kwargs)()
        assert int(result.status) == Status.NONFINITE_START, result.message
    # (the n == p data of the covariance tests: the same compiled program)
    with pytest.raises(RuntimeError, match="Optimal parameters not found"):
        hybrid_gn.curve_fit(exp_f, EXACT_X, _with(EXACT_Y, 1, np.nan), p0=[3.0, 1.0, 0.5],
                            sigma=EXACT_SIGMA, check_finite=False)


# --------------------------------------------------------------------------------------------
# 8. normalization
# --------------------------------------------------------------------------------------------

STRATEGIES = ("auto", "bounds", "p0", "none")


def test_normalization_roundtrip_and_bounds_map():
    """to_params(to_normalized(theta)) == theta to 1e-15 (relative to |theta| + |offset|:
    exact up to the rounding of one affine map), and the bounds map to the box each strategy
    promises: [0, 1] for 'bounds', [lb, ub] / |p0| for 'p0' (|p0| -> 1 where p0 = 0), the
    identity for 'none', and per parameter 'bounds' where both are finite else 'p0' for
    'auto'. Infinite bounds stay infinite."""
    rng = np.random.default_rng(8)
    inf = np.inf
    lb = np.array([-1.0, 0.3, -inf, -inf, 2.0, -5.0, -inf])
    ub = np.array([3.0, 0.9, 4.0, inf, inf, 5.0, inf])
    p0 = np.array([0.5, 0.6, -2.0, 0.0, 1e3, 0.0, -7e-4])
    both = np.isfinite(lb) & np.isfinite(ub)
    p0_scale = np.where(p0 != 0, np.abs(p0), 1.0)
    expected = {
        "bounds": (np.where(both, 0.0, lb), np.where(both, 1.0, ub)),
        "p0": (lb / p0_scale, ub / p0_scale),
        "none": (lb, ub),
        "auto": (np.where(both, 0.0, lb / p0_scale), np.where(both, 1.0, ub / p0_scale)),
    }
    thetas = [p0, np.clip(rng.standard_normal((7,)) * 10 ** rng.uniform(-3, 3, 7), lb, ub)]
    for strategy in STRATEGIES:
        norm = make_normalization(jnp.asarray(p0), jnp.asarray(lb), jnp.asarray(ub), strategy)
        offset = np.asarray(norm.offset)
        for theta in thetas:
            back = np.asarray(norm.to_params(norm.to_normalized(jnp.asarray(theta))))
            assert np.all(np.abs(back - theta) <= 1e-15 * (np.abs(theta) + np.abs(offset))), (
                strategy, back - theta)
            if strategy == "none":
                np.testing.assert_array_equal(back, theta)
        lower, upper = (np.asarray(b) for b in norm.bounds(jnp.asarray(lb), jnp.asarray(ub)))
        np.testing.assert_allclose(lower, expected[strategy][0], rtol=1e-15, atol=0,
                                   err_msg=strategy)
        np.testing.assert_allclose(upper, expected[strategy][1], rtol=1e-15, atol=0,
                                   err_msg=strategy)
        assert np.all(lower < upper)
        # the normalized bounds map back onto the bounds (to one rounding)
        finite = np.isfinite(lb)
        np.testing.assert_allclose(np.asarray(norm.to_params(lower))[finite], lb[finite],
                                   rtol=2 * EPS)
        finite = np.isfinite(ub)
        np.testing.assert_allclose(np.asarray(norm.to_params(upper))[finite], ub[finite],
                                   rtol=2 * EPS)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_normalization_gives_the_scipy_optimum(strategy):
    """With finite bounds around an interior optimum, each normalization strategy reaches the
    tight scipy optimum (interior, so unconstrained 'lm' is the reference) and its pcov."""
    lb, ub = np.array([0.0, 0.1, -2.0]), np.array([10.0, 5.0, 2.0])
    config = hybrid_gn.Config(normalization=strategy)
    result = hybrid_gn.fit(exp_model_recording, jnp.asarray(P0), X, Y, bounds=(lb, ub),
                           config=config)
    assert bool(result.success), result.message
    ref_popt, ref_pcov = scipy_lm(X, Y, P0)
    assert_same_optimum(result.params, ref_popt, ref_pcov)
    assert_pcov_close(result.pcov, ref_pcov)


def _gauss_np(x, a, mu, s, c):
    return a * np.exp(-0.5 * ((x - mu) / s) ** 2) + c


def test_start_near_zero_by_accident_gets_a_usable_scale():
    """A peak centre started at 3e-6 (data spanning units): |p0| is no scale for it. Its
    normalized scale is raised from its influence on the residuals, so the fit reaches
    scipy's optimum in a normal number of iterations (it took 20, mostly radius doublings,
    with the scale |p0|). A parameter of ordinary size with little influence (a width
    whose peak lies off the data) keeps the scale |p0|."""
    rng = np.random.default_rng(3)
    x = np.linspace(-4.0, 4.0, 64)
    y = _gauss_np(x, 2.0, 0.4, 0.9, 0.1) + 0.05 * rng.standard_normal(x.size)
    p0 = np.array([2.3, 3e-6, 1.1, 0.15])

    def gauss(p, x):
        return p[0] * jnp.exp(-0.5 * ((x - p[1]) / p[2]) ** 2) + p[3]

    result = hybrid_gn.fit(gauss, jnp.asarray(p0), x, y)
    ref_popt, ref_pcov = scipy.optimize.curve_fit(_gauss_np, x, y, p0=p0, method="lm",
                                                  xtol=1e-14, ftol=1e-14)
    assert bool(result.success), result.message
    assert_same_optimum(result.params, ref_popt, ref_pcov)
    assert int(result.gn_iterations) <= 10

    setup, _ = prepare(gauss, jnp.asarray(p0), jnp.asarray(x), jnp.asarray(y), None, None, None,
                       None, hybrid_gn.Config())
    scale = np.asarray(setup.problem.norm.scale)
    assert scale[1] > 1e-3  # raised from 3e-6
    np.testing.assert_array_equal(scale[[0, 2, 3]], p0[[0, 2, 3]])  # the others keep |p0|

    far = np.array([2.3, 40.0, 0.5, 0.15])  # the peak far off the data: the width and
    setup, _ = prepare(gauss, jnp.asarray(far), jnp.asarray(x), jnp.asarray(y), None, None, None,
                       None, hybrid_gn.Config())
    np.testing.assert_array_equal(np.asarray(setup.problem.norm.scale), far)  # centre barely
    # move the residuals, but neither is near zero: the scales stay |p0|


# --------------------------------------------------------------------------------------------
# 9. trust-region subproblem
# --------------------------------------------------------------------------------------------


def _lm_step(r_mat, qtr, scale, radius):
    """argmin ||R s + qtr|| s.t. ||scale * s|| = radius: s(lam) = -(R^T R + lam D^2)^-1 R^T qtr
    with lam > 0 found by brentq on ||D s(lam)|| = radius (More & Sorensen)."""
    def step(lam):
        return np.linalg.solve(r_mat.T @ r_mat + lam * np.diag(scale**2), -r_mat.T @ qtr)

    lam = scipy.optimize.brentq(lambda m: np.linalg.norm(scale * step(m)) - radius, 0.0, 1e12,
                                xtol=1e-300, rtol=4 * EPS, maxiter=500)
    return step(lam)


_TR_STEP = jax.jit(trust_region_step, static_argnames="rcond")


def _within_tolerance(length, radius):
    """`length`, asserted between `radius` and (1 + BOUNDARY_TOLERANCE) radius."""
    assert radius * (1 - 1e-12) <= length <= (1 + BOUNDARY_TOLERANCE) * radius
    return length


def _tr_step(r_mat, qtr, scale, radius, free, route="svd"):
    """The step in the ellipsoid ||scale * s|| <= radius: the kernel's ball step in
    z = scale * s, with R diag(1/scale), by the SVD or the Cholesky `route`."""
    p = r_mat.shape[1]
    z = _TR_STEP(jnp.asarray(r_mat / scale[None, :]), jnp.asarray(qtr),
                 jnp.asarray(radius, float), jnp.asarray(free), rcond=10 * p * EPS,
                 well_conditioned=jnp.asarray(route == "cholesky"))
    return np.asarray(z) / scale


@pytest.mark.parametrize("route", ["svd", "cholesky"])
@pytest.mark.parametrize("p", [3, 4, 5, 8, 10])  # 10: the Cholesky route through LAPACK
def test_trust_region_step_against_lstsq_lm_and_brute_force(p, route):
    """(a) a large radius gives the Gauss-Newton step lstsq(R, -qtr); (b) a small radius gives
    a step of length ||scale * s|| between radius and (1 + BOUNDARY_TOLERANCE) radius, equal
    to the Levenberg-Marquardt solution for its own length with lam from brentq, and no
    random point of that ellipsoid does better; (c) with a `free` mask the fixed components
    are exactly 0 and the free ones solve the reduced problem (R[:, free]), for large and
    small radius; (d) a singular R with unit scale gives the minimum-norm least-squares step
    (the SVD route: the Cholesky one is only taken where R is well conditioned)."""
    tr_step = functools.partial(_tr_step, route=route)
    rng = np.random.default_rng(p)
    r_mat = np.triu(rng.standard_normal((p, p))) + 3 * np.eye(p)
    qtr = rng.standard_normal(p)
    scale = rng.uniform(0.5, 2.0, p)
    everywhere = np.ones(p, bool)

    gn = np.linalg.lstsq(r_mat, -qtr, rcond=None)[0]
    np.testing.assert_allclose(tr_step(r_mat, qtr, scale, 1e6, everywhere), gn, rtol=1e-10)

    radius = 0.3 * np.linalg.norm(scale * gn)
    step = tr_step(r_mat, qtr, scale, radius, everywhere)
    length = _within_tolerance(np.linalg.norm(scale * step), radius)
    np.testing.assert_allclose(step, _lm_step(r_mat, qtr, scale, length), rtol=1e-9)
    directions = rng.standard_normal((20_000, p))
    candidates = length * directions / np.linalg.norm(directions, axis=1, keepdims=True) / scale
    best = np.min(np.linalg.norm(candidates @ r_mat.T + qtr, axis=1))
    assert np.linalg.norm(r_mat @ step + qtr) <= best + 1e-12

    free = everywhere.copy()
    free[1] = False
    reduced = r_mat[:, free]
    step = tr_step(r_mat, qtr, scale, 1e6, free)
    assert step[1] == 0
    np.testing.assert_allclose(step[free], np.linalg.lstsq(reduced, -qtr, rcond=None)[0],
                               rtol=1e-10)
    radius = 0.3 * np.linalg.norm(scale[free] * step[free])
    step = tr_step(r_mat, qtr, scale, radius, free)
    assert step[1] == 0
    length = _within_tolerance(np.linalg.norm(scale * step), radius)
    np.testing.assert_allclose(step[free], _lm_step(reduced, qtr, scale[free], length),
                               rtol=1e-9)

    if route == "cholesky":
        return
    singular = r_mat.copy()
    singular[:, 1] = 0
    singular[1, :] = 0
    np.testing.assert_allclose(tr_step(singular, qtr, np.ones(p), 1e6, everywhere),
                               np.linalg.lstsq(singular, -qtr, rcond=None)[0], rtol=1e-10,
                               atol=1e-14)


# --------------------------------------------------------------------------------------------
# 10. covariance edge cases
# --------------------------------------------------------------------------------------------

EXACT_X = np.array([0.0, 1.0, 2.5])
EXACT_Y = np.array([3.4, 1.6, 0.8])
EXACT_SIGMA = np.array([0.1, 0.2, 0.15])


@pytest.mark.parametrize("absolute_sigma", [False, True])
def test_n_equals_p_covariance_like_scipy(absolute_sigma):
    """n == p (zero degrees of freedom): with relative sigma pcov is all inf and a warning is
    issued, like scipy; with absolute_sigma=True pcov is the finite (J^T W J)^-1, equal to
    scipy's. popt interpolates the data exactly either way."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref_popt, ref_pcov = scipy_lm(EXACT_X, EXACT_Y, [3.0, 1.0, 0.5], sigma=EXACT_SIGMA,
                                      absolute_sigma=absolute_sigma)
    scipy_warned = any(issubclass(w.category, scipy.optimize.OptimizeWarning) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        popt, pcov = hybrid_gn.curve_fit(exp_f, EXACT_X, EXACT_Y, p0=[3.0, 1.0, 0.5],
                                         sigma=EXACT_SIGMA, absolute_sigma=absolute_sigma)
    warned = any(issubclass(w.category, hybrid_gn.CovarianceWarning) for w in caught)

    np.testing.assert_allclose(popt, ref_popt, rtol=1e-8)
    np.testing.assert_allclose(exp_np(EXACT_X, *popt), EXACT_Y, rtol=1e-10)
    assert warned == scipy_warned == (not absolute_sigma)
    if absolute_sigma:
        assert np.all(np.isfinite(ref_pcov))
        np.testing.assert_allclose(pcov, ref_pcov, rtol=PCOV_RTOL)
    else:
        assert np.all(np.isposinf(ref_pcov))
        assert np.all(np.isposinf(pcov))


def product_model(x, a, b, k):
    """a and b enter only through a * b: J has rank 2."""
    return a * b * jnp.exp(-k * x)


def product_np(x, a, b, k):
    return a * b * np.exp(-k * x)


def product_jac_np(x, a, b, k):
    e = np.exp(-k * x)
    return np.stack([b * e, a * e, -a * b * x * e], axis=1)


PRODUCT_X = np.linspace(0.0, 3.0, 20)
PRODUCT_Y = noisy(lambda x, k: 6.0 * np.exp(-k * x), PRODUCT_X, (0.8,), seed=10, noise=0.05)
PRODUCT_P0 = [1.0, 4.0, 1.0]  # a and b on different scales


def product_fit_and_scipy_at_same_point():
    popt, pcov = hybrid_gn.curve_fit(product_model, PRODUCT_X, PRODUCT_Y, p0=PRODUCT_P0)
    # scipy 'trf' (whose pcov is the SVD pseudo-inverse; 'lm' inverts MINPACK's R and gives
    # ~1e27 here) started at our optimum stays there, so both pcovs are at the same point
    # with its default gtol, trf stops at once at our optimum (its scaled gradient is below
    # gtol there), so both pcovs are evaluated at the very same point; with tight tolerances
    # it would wander along the unidentified direction (a, b) -> (a t, b / t) on rounding noise
    ref_popt, ref_pcov = scipy.optimize.curve_fit(product_np, PRODUCT_X, PRODUCT_Y, p0=popt,
                                                  jac=product_jac_np, method="trf")
    np.testing.assert_allclose(ref_popt, popt, rtol=1e-12)
    return popt, pcov, ref_popt, ref_pcov


def test_rank_deficient_identifiable_part_matches_scipy():
    """a * b * exp(-k x): the fit succeeds with a finite pcov; the identifiable quantities, the
    product a * b and k, equal those of scipy curve_fit('trf') from the same start; and the
    (co)variances of identifiable combinations (k, and a * b by the delta method) equal
    scipy's at the same point, because c^T G c is the same for every generalized inverse G of
    J^T J when c lies in J's row space."""
    popt, pcov, ref_popt, ref_pcov = product_fit_and_scipy_at_same_point()
    independent, _ = scipy.optimize.curve_fit(product_np, PRODUCT_X, PRODUCT_Y, p0=PRODUCT_P0,
                                              jac=product_jac_np, method="trf", **TIGHT)
    np.testing.assert_allclose(popt[0] * popt[1], independent[0] * independent[1], rtol=1e-8)
    np.testing.assert_allclose(popt[2], independent[2], rtol=1e-8)
    assert np.all(np.isfinite(pcov))
    np.testing.assert_allclose(pcov[2, 2], ref_pcov[2, 2], rtol=PCOV_RTOL)
    grad_ab = np.array([popt[1], popt[0], 0.0])
    np.testing.assert_allclose(grad_ab @ pcov @ grad_ab, grad_ab @ ref_pcov @ grad_ab,
                               rtol=PCOV_RTOL)
    np.testing.assert_allclose(pcov[:2, 2] @ [popt[1], popt[0]],
                               ref_pcov[:2, 2] @ [popt[1], popt[0]], rtol=PCOV_RTOL)


def test_rank_deficient_pcov_matches_scipy_pinv():
    """At the same point, pcov equals scipy curve_fit('trf')'s pseudo-inverse covariance."""
    _, pcov, _, ref_pcov = product_fit_and_scipy_at_same_point()
    np.testing.assert_allclose(pcov, ref_pcov, rtol=PCOV_RTOL,
                               atol=1e-6 * np.max(np.abs(ref_pcov)))
