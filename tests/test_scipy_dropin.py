"""``curve_fit`` and ``least_squares`` as drop-ins for scipy's, with scipy as the reference.

Answers: the same data and start given to scipy (converged tightly) and to ``hybrid_gn``;
popt / x to 1e-6 relative, pcov to 1e-4 (the tolerances of ``test_curve_fit_vs_scipy.py``).
Models written with ``numpy`` run on the host (finite differences) and must land where
scipy's do; models written with ``jax.numpy`` must stay compiled. Errors: scipy's message
where scripts match on it, checked against scipy raising for the same input. Each new
function object compiles its own program (a few seconds), so the tests share functions.
"""

from __future__ import annotations

import importlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from test_curve_fit_vs_scipy import CASES_BY_NAME, assert_matches_reference, make_data

import hybrid_gn
from hybrid_gn import _finite_difference as finite_difference
from hybrid_gn import _host as host
from hybrid_gn._drivers import _curve_fit

LSQ_MESSAGES = importlib.import_module("scipy.optimize._lsq.least_squares").TERMINATION_MESSAGES
TIGHT = {"ftol": 1e-15, "xtol": 1e-15, "gtol": 1e-15}


# the parity models of test_curve_fit_vs_scipy.py, written with numpy
def exp_decay_np(x, a, k, c):
    return a * np.exp(-k * x) + c


def gauss_linear_np(x, a, mu, s, b0, b1):
    return a * np.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x


def rational_np(x, a, b, c):
    return np.divide(a + b * x, 1.0 + c * x)  # plain arithmetic alone would trace


def lorentzian_np(x, a, x0, g, c):
    return a / (1.0 + np.square((x - x0) / g)) + c


def damped_sine_np(x, a, tau, w, phi, c):
    return a * np.exp(-x / tau) * np.cos(w * x + phi) + c


NUMPY_MODELS = {"exp_decay": exp_decay_np, "gauss_linear": gauss_linear_np,
                "rational": rational_np, "lorentzian": lorentzian_np,
                "damped_sine": damped_sine_np}
FAST = ("exp_decay", "gauss_linear")


def scipy_tight(f, x, y, p0, **kwargs):
    return scipy.optimize.curve_fit(f, x, y, p0=p0, **TIGHT, **kwargs)


def quiet_curve_fit(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hybrid_gn.HostModelWarning)
        return hybrid_gn.curve_fit(*args, **kwargs)


def _numpy_model_case(name, with_sigma):
    case = CASES_BY_NAME[name]
    x, y, sigma = make_data(case)
    kwargs = {"sigma": sigma} if with_sigma else {}
    ref_popt, ref_pcov = scipy_tight(NUMPY_MODELS[name], x, y, case.p0, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        popt, pcov = hybrid_gn.curve_fit(NUMPY_MODELS[name], x, y, p0=case.p0, **kwargs)
    assert [w.category for w in caught] == [hybrid_gn.HostModelWarning]
    assert "jax.numpy" in str(caught[0].message)
    assert_matches_reference(popt, pcov, ref_popt, ref_pcov)


@pytest.mark.parametrize("name", FAST)
def test_numpy_model_matches_scipy(name):
    """A model written with numpy (JAX cannot trace it) is fitted on the host with one
    HostModelWarning, and popt/pcov equal scipy's (its own finite differences, 'lm')."""
    _numpy_model_case(name, with_sigma=False)


@pytest.mark.slow
@pytest.mark.parametrize("with_sigma", [False, True])
@pytest.mark.parametrize("name", sorted(NUMPY_MODELS))
def test_numpy_models_match_scipy_all(name, with_sigma):
    """All the numpy parity models, unweighted and with 1-D sigma, equal scipy's."""
    _numpy_model_case(name, with_sigma)


def test_jax_model_stays_compiled():
    """A jax.numpy model raises no warning and its model has no callback in the jaxpr; the
    same model in numpy has one (pure_callback)."""
    case = CASES_BY_NAME["exp_decay"]
    x, y, _ = make_data(case)
    options = _curve_fit.scipy_options({}, 3, "lm", "curve_fit")
    lb, ub = np.full(3, -np.inf), np.full(3, np.inf)
    p0 = np.asarray(case.p0)

    def jaxpr(f):
        problem = _curve_fit._problem(f, None, x, y, None, p0, lb, ub, options, None)
        call = (lambda p: problem.model(p, problem.x)) if problem.args is None else (
            lambda p: problem.model(p, problem.x, problem.args))
        return str(jax.make_jaxpr(jax.jacfwd(call))(jnp.asarray(p0)))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no HostModelWarning (nor any other)
        assert "callback" not in jaxpr(case.f)
    with pytest.warns(hybrid_gn.HostModelWarning):
        assert "pure_callback" in jaxpr(exp_decay_np)


def test_host_jacobian_is_right_under_vmap_and_reverse_mode():
    """The host function's derivative (custom_jvp of a pure_callback) gives the finite-
    difference Jacobian by forward mode (vmapped tangents) and by reverse mode, equal to
    scipy's approx_derivative, and jvp of a batch of tangents is J @ T."""
    x = np.linspace(0.0, 3.0, 7)
    spec = host.HostFunction(lambda t, data: exp_decay_np(data, *t), "2-point", 7)
    theta = jnp.array([2.0, 0.7, 0.1])
    reference = scipy.optimize._numdiff.approx_derivative(
        lambda t: exp_decay_np(x, *t), np.asarray(theta), method="2-point")
    np.testing.assert_array_equal(np.asarray(jax.jacfwd(spec)(theta, x)), reference)
    np.testing.assert_array_equal(np.asarray(jax.jacrev(spec)(theta, x)), reference)
    tangents = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)))
    pushed = jax.vmap(lambda t: jax.jvp(lambda p: spec(p, x), (theta,), (t,))[1])(tangents)
    np.testing.assert_allclose(np.asarray(pushed), np.asarray(tangents) @ reference.T,
                               rtol=1e-12)


@pytest.mark.parametrize("scheme", finite_difference.SCHEMES)
def test_finite_differences_equal_scipy(scheme):
    """The host finite differences are scipy's approx_derivative, step for step (also with
    a user diff_step and next to bounds)."""
    def fun(p):
        return np.array([np.exp(-3 * p[0]) * p[1], np.sin(p[0] * p[1]) + p[2] ** 2, p[2] * p[0]])

    x = np.array([1.0, 2.0, 0.5])
    boxes = [(-np.inf, np.inf)] if scheme == "cs" else [
        (-np.inf, np.inf), (np.array([0.0, 2.0, 0.0]), np.array([1.0, 3.0, 0.5 + 1e-9]))]
    for lb, ub in boxes:
        for rel_step in (None, 1e-4):
            reference = scipy.optimize._numdiff.approx_derivative(
                fun, x, method=scheme, rel_step=rel_step, bounds=(lb, ub))
            ours = finite_difference.jacobian(fun, x, fun(x), scheme, rel_step, lb, ub)
            np.testing.assert_array_equal(ours, reference)


def _jac_options_case(schemes: tuple[str, ...]):
    case = CASES_BY_NAME["exp_decay"]
    x, y, sigma = make_data(case)
    ref_popt, ref_pcov = scipy_tight(exp_decay_np, x, y, case.p0, sigma=sigma)

    def jac_np(x, a, k, c):
        e = np.exp(-k * x)
        return np.stack([e, -a * x * e, np.ones_like(x)], axis=1)

    def jac_jnp(x, a, k, c):
        e = jnp.exp(-k * x)
        return jnp.stack([e, -a * x * e, jnp.ones_like(x)], axis=1)

    options = {"3-point": (exp_decay_np, "3-point"), "cs": (exp_decay_np, "cs"),
               "numpy-jac": (exp_decay_np, jac_np), "jax-jac": (case.f, jac_jnp)}
    for f, jac in (options[scheme] for scheme in schemes):
        popt, pcov = quiet_curve_fit(f, x, y, p0=case.p0, sigma=sigma, jac=jac)
        assert_matches_reference(popt, pcov, ref_popt, ref_pcov)


def test_jac_options_match_scipy():
    """'3-point' on a numpy model, and a callable jac(x, *p) with a jax.numpy model (used
    through a custom JVP), give scipy's answer."""
    _jac_options_case(("3-point", "jax-jac"))


@pytest.mark.slow
def test_jac_options_match_scipy_all():
    """Every jac option: '3-point', 'cs', a numpy jac on a numpy model, a jax.numpy jac."""
    _jac_options_case(("3-point", "cs", "numpy-jac", "jax-jac"))


def test_bounds_object_and_tuple_of_x_like_scipy():
    """A scipy.optimize.Bounds, and a tuple of arrays as multi-dimensional x, equal scipy."""
    case = CASES_BY_NAME["exp_decay"]
    x, y, _ = make_data(case)
    box = scipy.optimize.Bounds([0.0, 0.0, -5.0], [50.0, 10.0, 5.0])
    ref = scipy_tight(exp_decay_np, x, y, case.p0, bounds=box)
    assert_matches_reference(*quiet_curve_fit(exp_decay_np, x, y, p0=case.p0, bounds=box), *ref)

    def plane(xy, a, b, c):
        return a * xy[0] + b * xy[1] ** 2 + c

    u, v = np.meshgrid(np.linspace(0, 1, 8), np.linspace(-1, 1, 9))
    xy = (u.ravel(), v.ravel())
    z = 1.5 * xy[0] - 0.5 * xy[1] ** 2 + 0.2 + 0.01 * np.sin(7 * xy[0] + 3 * xy[1])
    ref = scipy_tight(plane, xy, z, [1.0, 1.0, 1.0])
    assert_matches_reference(*quiet_curve_fit(plane, xy, z, p0=[1.0, 1.0, 1.0]), *ref)


@pytest.mark.slow
def test_scalar_sigma_and_broadcast_y_like_scipy():
    """A scalar sigma (absolute), and ydata of one value broadcast to f's output, equal
    scipy."""
    case = CASES_BY_NAME["exp_decay"]
    x, y, _ = make_data(case)
    ref = scipy_tight(exp_decay_np, x, y, case.p0, sigma=0.3, absolute_sigma=True)
    assert_matches_reference(*quiet_curve_fit(exp_decay_np, x, y, p0=case.p0, sigma=0.3,
                                              absolute_sigma=True), *ref)

    def flat(x, a):
        return a * np.ones(5)

    popt, _ = quiet_curve_fit(flat, np.arange(5.0), 3.0, p0=[1.0])
    np.testing.assert_allclose(popt, scipy.optimize.curve_fit(flat, np.arange(5.0), 3.0,
                                                              p0=[1.0])[0], rtol=1e-10)


def test_nan_policy_omit_drops_points_and_sigma_like_scipy():
    """nan_policy='omit' fits only the points without NaN, with their sigma, as scipy does;
    'raise' and None (checked by default) refuse the NaN with scipy's errors."""
    case = CASES_BY_NAME["exp_decay"]
    x, y, sigma = make_data(case)
    y = y.copy()
    y[[3, 40]] = np.nan
    x = x.copy()
    x[77] = np.nan
    ref = scipy_tight(exp_decay_np, x, y, case.p0, sigma=sigma, nan_policy="omit")
    ours = quiet_curve_fit(exp_decay_np, x, y, p0=case.p0, sigma=sigma, nan_policy="omit")
    assert_matches_reference(*ours, *ref)
    with pytest.raises(ValueError, match="The input contains nan values"):
        hybrid_gn.curve_fit(case.f, x, y, p0=case.p0, nan_policy="raise")
    with pytest.raises(ValueError, match="contains NaN or Inf"):
        hybrid_gn.curve_fit(case.f, x, y, p0=case.p0)


def test_full_output_like_scipy():
    """full_output: 'lm' gives nfev, fvec, fjac, ipvt, qtf of scipy's shapes and R^T R =
    J^T J; 'trf' gives nfev and fvec; ier and mesg are scipy's for the method."""
    case = CASES_BY_NAME["exp_decay"]
    x, y, _ = make_data(case)
    popt, pcov, info, mesg, ier = hybrid_gn.curve_fit(case.f, x, y, p0=case.p0,
                                                      full_output=True)
    ref_info = scipy_tight(exp_decay_np, x, y, case.p0, full_output=True)[2]
    assert sorted(info) == sorted(ref_info)
    for key in ref_info:
        assert np.shape(info[key]) == np.shape(ref_info[key]), key
    r = info["fjac"].T[:3]
    jac = np.stack([np.exp(-popt[1] * x), -popt[0] * x * np.exp(-popt[1] * x),
                    np.ones_like(x)], axis=1)
    np.testing.assert_allclose(r.T @ r, jac.T @ jac, rtol=1e-8)
    assert ier in (1, 2, 4) and "at most" in mesg
    _, _, info, mesg, ier = hybrid_gn.curve_fit(case.f, x, y, p0=case.p0, method="trf",
                                                full_output=True)
    assert sorted(info) == ["fvec", "nfev"] and ier in (1, 2, 3)
    assert mesg.endswith("termination condition is satisfied.")


def _least_squares_case(bounds, loss="linear"):
    case = CASES_BY_NAME["exp_decay"]
    t, y, _ = make_data(case)
    y = y.copy()
    y[::10] += 1.0  # outliers, for the robust losses
    kwargs = {"loss": loss, "f_scale": 0.1} if bounds is None else {"bounds": bounds}

    def residual_np(p, t, y):
        return exp_decay_np(t, *p) - y

    def residual_jnp(p, t, y):
        return p[0] * jnp.exp(-p[1] * t) + p[2] - y

    ref = scipy.optimize.least_squares(residual_np, [4.0, 1.0, 0.3], args=(t, y), **TIGHT,
                                       **kwargs)
    for fun in (residual_np, residual_jnp) if loss == "linear" else (residual_jnp,):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", hybrid_gn.HostModelWarning)
            res = hybrid_gn.least_squares(fun, [4.0, 1.0, 0.3], args=(t, y), **TIGHT, **kwargs)
        assert isinstance(res, hybrid_gn.LeastSquaresResult)
        np.testing.assert_allclose(res.x, ref.x, rtol=1e-6)
        np.testing.assert_allclose(res.cost, ref.cost, rtol=1e-9)
        np.testing.assert_allclose(res.fun, ref.fun, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(res.jac, ref.jac, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res.grad, ref.grad, atol=1e-6)
        np.testing.assert_array_equal(res.active_mask, ref.active_mask)
        assert res.success and res.status in (1, 2, 3) and res.nfev == res.njev > 0
        assert res.message == LSQ_MESSAGES[res.status]


def test_least_squares_matches_scipy():
    """least_squares with a bound active at the optimum, on a numpy residual function (host,
    '2-point') and a jax.numpy one, equals scipy's: x to 1e-6, cost, fun, jac, grad,
    active_mask; the result has scipy's fields, codes and messages."""
    _least_squares_case(([0.0, 0.0, 0.0], [4.9, 10.0, 10.0]))


@pytest.mark.parametrize("loss", ["soft_l1"])
def test_least_squares_robust_loss_matches_scipy(loss):
    """least_squares(loss=..., f_scale=0.1) on data with 10% outliers equals scipy's: x,
    the robust cost, the loss-scaled jac and the gradient."""
    _least_squares_case(None, loss)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["linear", "huber", "cauchy", "arctan"])
def test_least_squares_each_loss_matches_scipy(loss):
    """Every other loss (and the unbounded linear fit, numpy and jax.numpy)."""
    _least_squares_case(None, loss)


def test_curve_fit_robust_loss_on_a_numpy_model_matches_scipy():
    """curve_fit(loss='soft_l1') on a numpy model (on the host) with 10% outliers equals
    scipy's popt (1e-6) and pcov (1e-4)."""
    case = CASES_BY_NAME["exp_decay"]
    x, y, _ = make_data(case)
    y = y.copy()
    y[::10] += 1.0
    ref = scipy_tight(exp_decay_np, x, y, case.p0, method="trf", loss="soft_l1", f_scale=0.1)
    popt, pcov = quiet_curve_fit(exp_decay_np, x, y, p0=case.p0, method="trf", loss="soft_l1",
                                 f_scale=0.1)
    assert_matches_reference(popt, pcov, *ref)


def test_covariance_warning_is_scipy_optimize_warning():
    assert issubclass(hybrid_gn.CovarianceWarning, scipy.optimize.OptimizeWarning)
    assert issubclass(hybrid_gn.HostModelWarning, UserWarning)


X5 = np.arange(6.0)
Y5 = 2 * X5 + 1 + 0.01 * np.cos(X5)


def line(x, a, b):
    return a * x + b


def _residual(p):
    return p[0] * X5 + p[1] - Y5


# (call with scipy's function, keyword arguments, error, message): scipy raises the same
_SCIPY_ERRORS = [
    ("curve_fit", {"bounds": ([0, 0], [3, 3]), "method": "lm"}, ValueError,
     "Method 'lm' only works for unconstrained problems. Use 'trf' or 'dogbox' instead."),
    ("curve_fit", {"p0": [5.0, 1.0], "bounds": ([0, 0], [3, 3])}, ValueError,
     "Initial guess is outside of provided bounds"),
    ("curve_fit", {"bounds": ([0, 3], [3, 3])}, ValueError,
     "Each lower bound must be strictly less than each upper bound."),
    ("curve_fit", {"args": (1,)}, ValueError, "'args' is not a supported keyword argument."),
    ("curve_fit", {"method": "trf", "foo": 1}, TypeError, "unexpected keyword argument 'foo'"),
    ("curve_fit", {"nan_policy": "propagate"}, ValueError,
     "`nan_policy='propagate'` is not supported by this function."),
    ("curve_fit", {"nan_policy": "bogus"}, ValueError,
     "nan_policy must be one of {None, 'raise', 'omit'}"),
    ("curve_fit", {"sigma": np.ones(4)}, ValueError, "`sigma` has incorrect shape."),
    ("curve_fit", {"sigma": -np.eye(6)}, ValueError, "`sigma` must be positive definite."),
    ("curve_fit", {"method": "trf", "jac": "4-point"}, ValueError,
     "`jac` must be '2-point', '3-point', 'cs' or callable."),
    ("curve_fit", {"method": "trf", "max_nfev": 0}, ValueError,
     "`max_nfev` must be None or positive integer."),
    ("curve_fit", {"method": "trf", "x_scale": -1.0}, ValueError,
     "`x_scale` must be 'jac' or array_like with positive numbers."),
    ("curve_fit", {"method": "trf", "tr_solver": "qr"}, ValueError,
     "`tr_solver` must be None, 'exact' or 'lsmr'."),
    ("curve_fit", {"method": "trf", "verbose": 3}, ValueError,
     r"`verbose` must be in \[0, 1, 2\]."),
    ("least_squares", {"method": "bogus"}, ValueError,
     "`method` must be 'trf', 'dogbox' or 'lm'."),
    ("least_squares", {"method": "lm", "bounds": (0, 5)}, ValueError,
     "Method 'lm' doesn't support bounds."),
    ("least_squares", {"x0": [[1.0, 1.0]]}, ValueError, "`x0` must have at most 1 dimension."),
    ("least_squares", {"bounds": (0, 1, 2)}, ValueError, "`bounds` must contain 2 elements."),
    ("least_squares", {"jac_sparsity": np.ones((2, 2))}, ValueError,
     "`jac_sparsity` has wrong shape."),
    ("least_squares", {"ftol": 0, "xtol": 0, "gtol": 0}, ValueError,
     "At least one of the tolerances must be higher than machine epsilon"),
    ("least_squares", {"loss": "bogus"}, ValueError, "`loss` must be one of"),
    ("least_squares", {"method": "lm", "loss": "huber"}, ValueError,
     "method='lm' supports only 'linear' loss function."),
]


def _call(which, module, kwargs):
    kwargs = dict(kwargs)
    if which == "curve_fit":
        return lambda: module.curve_fit(line, X5, Y5, **kwargs)
    x0 = kwargs.pop("x0", [1.0, 1.0])
    return lambda: module.least_squares(_residual, x0, **kwargs)


@pytest.mark.parametrize(("which", "kwargs", "error", "match"), _SCIPY_ERRORS,
                         ids=[f"{w}-{'-'.join(k)}" for w, k, _, _ in _SCIPY_ERRORS])
def test_bad_input_raises_scipys_error(which, kwargs, error, match):
    """Bad input raises scipy's exception with scipy's message (checked: scipy raises the
    same for the same input), before anything is fitted."""
    with pytest.raises(error, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _call(which, scipy.optimize, kwargs)()
    with pytest.raises(error, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _call(which, hybrid_gn, kwargs)()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"factor": 10}, "factor .* Config\\(initial_radius"),
    ({"method": "trf", "tr_options": {"regularize": False}}, "tr_options"),
    ({"method": "trf", "callback": print}, "callback is not supported"),
])
def test_unsupported_options_are_refused_by_name(kwargs, match):
    """scipy options with no counterpart here are refused with an error naming them."""
    with pytest.raises(ValueError, match=match):
        hybrid_gn.curve_fit(line, X5, Y5, **kwargs)
