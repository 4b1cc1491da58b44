"""``hybrid_gn.curve_fit`` against ``scipy.optimize.curve_fit`` on common curve models.

Every model is written once with ``jax.numpy`` as ``f(x, *p)``; scipy calls the same function
through a numpy wrapper. The scipy reference is converged as tightly as it will go
(``ftol = xtol = gtol = 1e-15``) and is given the exact (autodiff) Jacobian, so neither its
optimum nor its covariance carries finite-difference error. Unbounded fits use MINPACK
``method='lm'``; bounded fits use ``method='trf'``.

Tolerances (the required ones; do not loosen):

* ``popt``: ``rtol=1e-6`` plus ``atol = 1e-6 * standard error`` per parameter. The absolute
  term only matters for a parameter whose value is small compared with its uncertainty
  (e.g. a near-zero background); there a relative tolerance is meaningless and a millionth
  of a standard error is the natural scale of "the same optimum".
* ``pcov``: ``rtol=1e-4`` plus ``atol_ij = 1e-6 * sqrt(pcov_ii * pcov_jj)``. The absolute term
  copes with near-zero off-diagonals; it amounts to comparing correlation coefficients to
  1e-6 and is never looser than ``1e-6 * max|pcov|`` (the largest entry of a covariance
  matrix is on its diagonal), while staying tight for parameters of very different scales.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import hybrid_gn

jax.config.update("jax_enable_x64", True)

POPT_RTOL, POPT_ATOL_SE = 1e-6, 1e-6
PCOV_RTOL, PCOV_ATOL_CORR = 1e-4, 1e-6
REFERENCE_TOLS = {"ftol": 1e-15, "xtol": 1e-15, "gtol": 1e-15}
REFERENCE_MAX_NFEV = 100_000


# --------------------------------------------------------------------------------------------
# Models (jax.numpy, scipy's f(x, *params) convention)
# --------------------------------------------------------------------------------------------


def exp_decay(x, a, k, c):
    return a * jnp.exp(-k * x) + c


def gauss_linear(x, a, mu, s, b0, b1):
    return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x


def double_exp(x, a1, k1, a2, k2):
    return a1 * jnp.exp(-k1 * x) + a2 * jnp.exp(-k2 * x)


def lorentzian(x, a, x0, g, c):
    return a / (1.0 + ((x - x0) / g) ** 2) + c


def logistic(x, top, k, x0, c):
    return top / (1.0 + jnp.exp(-k * (x - x0))) + c


def power_law(x, a, b, c):
    return a * x**b + c


def rational(x, a, b, c):
    return (a + b * x) / (1.0 + c * x)


def damped_sine(x, a, tau, w, phi, c):
    return a * jnp.exp(-x / tau) * jnp.cos(w * x + phi) + c


@dataclass(frozen=True)
class Case:
    name: str
    f: Any
    truth: tuple[float, ...]
    p0: tuple[float, ...]
    x_range: tuple[float, float]
    bounds: tuple[tuple[float, ...], tuple[float, ...]]  # finite, optimum strictly inside
    n: int
    seed: int
    noise: float = 0.02  # noise scale as a fraction of the signal's range


CASES = [
    Case("exp_decay", exp_decay, (5.0, 1.3, 0.5), (4.0, 1.0, 0.6), (0.0, 5.0),
         ((0.0, 0.0, -5.0), (50.0, 10.0, 5.0)), 150, 101),
    Case("gauss_linear", gauss_linear, (3.0, 5.0, 0.8, 0.5, 0.1), (2.4, 5.5, 1.0, 0.4, 0.08),
         (0.0, 10.0), ((0.0, 2.0, 0.1, -5.0, -2.0), (20.0, 8.0, 5.0, 5.0, 2.0)), 300, 102),
    Case("double_exp", double_exp, (4.0, 2.5, 2.0, 0.3), (3.2, 2.0, 2.4, 0.36), (0.0, 10.0),
         ((0.0, 0.5, 0.0, 0.01), (20.0, 10.0, 20.0, 1.0)), 400, 103),
    Case("lorentzian", lorentzian, (5.0, 1.0, 0.7, 0.5), (4.0, 1.2, 0.9, 0.4), (-5.0, 5.0),
         ((0.0, -3.0, 0.05, -5.0), (50.0, 3.0, 5.0, 5.0)), 250, 104),
    Case("logistic", logistic, (10.0, 1.5, 3.0, 1.0), (8.0, 1.2, 3.5, 1.2), (-2.0, 8.0),
         ((0.0, 0.1, -2.0, -10.0), (100.0, 10.0, 8.0, 10.0)), 200, 105),
    Case("power_law", power_law, (2.0, 0.7, 1.0), (2.4, 0.6, 0.8), (0.5, 10.0),
         ((0.0, 0.0, -10.0), (20.0, 3.0, 10.0)), 200, 106),
    Case("rational", rational, (1.0, 3.0, 0.5), (1.2, 2.5, 0.6), (0.0, 10.0),
         ((-10.0, 0.0, 0.0), (10.0, 20.0, 5.0)), 200, 107),
    Case("damped_sine", damped_sine, (3.0, 4.0, 2.0, 0.5, 0.2), (2.5, 3.2, 1.9, 0.6, 0.15),
         (0.0, 12.0), ((0.0, 0.5, 1.0, -1.5, -2.0), (20.0, 20.0, 3.0, 2.5, 2.0)), 400, 108),
]
CASES_BY_NAME = {case.name: case for case in CASES}


@dataclass(frozen=True)
class ActiveCase:
    """A model case with bounds that cut off its unconstrained optimum."""

    name: str
    base: str
    p0: tuple[float, ...]  # strictly feasible
    bounds: tuple[tuple[float, ...], tuple[float, ...]]
    active: tuple[int, ...]  # parameter indices pinned to a bound at the reference optimum


_INF = np.inf
ACTIVE_CASES = [
    # offset capped below its fitted value (~0.5)
    ActiveCase("exp_decay_c_upper", "exp_decay", (4.0, 1.0, 0.3),
               ((-_INF, -_INF, -_INF), (_INF, _INF, 0.4)), (2,)),
    # exponent held above its fitted value (~0.7)
    ActiveCase("power_law_b_lower", "power_law", (2.4, 0.9, 0.8),
               ((0.0, 0.8, -10.0), (20.0, 3.0, 10.0)), (1,)),
    # offset forced non-positive (fitted ~0.5) together with a finite box elsewhere
    ActiveCase("lorentzian_c_upper", "lorentzian", (4.0, 1.2, 0.9, -0.2),
               ((0.0, -3.0, 0.05, -5.0), (50.0, 3.0, 5.0, 0.0)), (3,)),
]


# --------------------------------------------------------------------------------------------
# Data and reference
# --------------------------------------------------------------------------------------------


def make_data(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic data: heteroscedastic Gaussian noise, sigma growing 4x across the range."""
    rng = np.random.default_rng(case.seed)
    x = np.linspace(*case.x_range, case.n)
    y_true = np.asarray(case.f(x, *case.truth))
    t = (x - x[0]) / (x[-1] - x[0])
    sigma = case.noise * np.ptp(y_true) * (0.5 + 1.5 * t)
    y = y_true + sigma * rng.standard_normal(case.n)
    return x, y, sigma


@functools.cache
def numpy_model(f):
    """``f`` and its exact Jacobian as numpy callables in scipy's ``(x, *params)`` convention."""
    fun = jax.jit(lambda x, p: f(x, *p))
    jac = jax.jit(jax.jacfwd(lambda p, x: f(x, *p)))

    @functools.wraps(f)  # keeps f's signature, so scipy can count parameters when p0 is None
    def numpy_f(x, *p):
        return np.asarray(fun(x, jnp.asarray(p)))

    def numpy_jac(x, *p):
        return np.asarray(jac(jnp.asarray(p), x))

    return numpy_f, numpy_jac


def scipy_reference(f, x, y, p0, *, full_output=False, **kwargs):
    """Tightly converged scipy curve_fit: 'trf' if bounds are given, else MINPACK 'lm'."""
    fun, jac = numpy_model(f)
    if "bounds" in kwargs:
        method, budget = "trf", {"max_nfev": REFERENCE_MAX_NFEV}
    else:
        method, budget = "lm", {"maxfev": REFERENCE_MAX_NFEV}
    return scipy.optimize.curve_fit(fun, x, y, p0=p0, jac=jac, method=method,
                                    full_output=full_output, **REFERENCE_TOLS, **budget, **kwargs)


def assert_matches_reference(popt, pcov, ref_popt, ref_pcov):
    p = len(ref_popt)
    assert isinstance(popt, np.ndarray) and popt.shape == (p,)
    assert isinstance(pcov, np.ndarray) and pcov.shape == (p, p)
    # Dividing both sides by the per-entry scale turns the per-entry atol into a scalar one:
    # |a/s - d/s| <= atol + rtol*|d/s|  <=>  |a - d| <= atol*s + rtol*|d|.
    se = np.sqrt(np.diag(ref_pcov))
    np.testing.assert_allclose(
        popt / se, ref_popt / se, rtol=POPT_RTOL, atol=POPT_ATOL_SE,
        err_msg=f"popt (shown in units of its standard error) differs from scipy:\n"
                f" popt={popt!r}\n  ref={ref_popt!r}")
    scale = np.outer(se, se)
    np.testing.assert_allclose(
        pcov / scale, ref_pcov / scale, rtol=PCOV_RTOL, atol=PCOV_ATOL_CORR,
        err_msg=f"pcov (shown divided by sqrt(pcov_ii * pcov_jj)) differs from scipy:\n"
                f" pcov={pcov!r}\n  ref={ref_pcov!r}")


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


VARIANTS = ["plain", "sigma", "absolute_sigma", "interior_bounds"]


def variant_kwargs(variant: str, case: Case, sigma: np.ndarray) -> dict:
    return {
        "plain": {},
        "sigma": {"sigma": sigma},
        "absolute_sigma": {"sigma": sigma, "absolute_sigma": True},
        "interior_bounds": {"bounds": case.bounds},
    }[variant]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_scipy(case, variant):
    """popt and pcov equal tightly converged scipy curve_fit ('lm'; 'trf' when bounded) on the
    same data: unweighted, 1-D heteroscedastic sigma (relative and absolute), and finite bounds
    with an interior optimum."""
    x, y, sigma = make_data(case)
    kwargs = variant_kwargs(variant, case, sigma)
    ref_popt, ref_pcov = scipy_reference(case.f, x, y, case.p0, **kwargs)
    if "bounds" in kwargs:  # the reference optimum must really be interior
        lb, ub = map(np.asarray, case.bounds)
        margin = np.sqrt(np.diag(ref_pcov))
        assert np.all((ref_popt - lb > margin) & (ub - ref_popt > margin))

    popt, pcov = hybrid_gn.curve_fit(case.f, x, y, p0=case.p0, **kwargs)
    assert_matches_reference(popt, pcov, ref_popt, ref_pcov)


@pytest.mark.parametrize("active_case", ACTIVE_CASES, ids=lambda c: c.name)
def test_active_bounds_match_scipy_trf(active_case):
    """With bounds that cut off the unconstrained optimum, popt (pinned on the bound) and pcov
    equal tightly converged scipy curve_fit(method='trf'), and popt is feasible."""
    case = CASES_BY_NAME[active_case.base]
    x, y, _ = make_data(case)
    lb, ub = map(np.asarray, active_case.bounds)
    ref_popt, ref_pcov = scipy_reference(case.f, x, y, active_case.p0, bounds=active_case.bounds)
    pinned = np.isclose(ref_popt, lb, rtol=0, atol=1e-10) | np.isclose(
        ref_popt, ub, rtol=0, atol=1e-10)
    assert tuple(np.flatnonzero(pinned)) == active_case.active

    popt, pcov = hybrid_gn.curve_fit(case.f, x, y, p0=active_case.p0, bounds=active_case.bounds)
    assert np.all((popt >= lb) & (popt <= ub)), f"popt {popt} outside bounds"
    assert_matches_reference(popt, pcov, ref_popt, ref_pcov)


def test_p0_none_starts_from_ones_like_scipy():
    """p0=None means a start of all ones, as in scipy: the result equals scipy curve_fit('lm')
    run with p0=None on a model that converges from ones."""
    case = CASES_BY_NAME["rational"]
    x, y, _ = make_data(case)
    ref_popt, ref_pcov = scipy_reference(case.f, x, y, None)
    np.testing.assert_allclose(ref_popt, case.truth, rtol=0.1)  # ones reach the right minimum

    popt, pcov = hybrid_gn.curve_fit(case.f, x, y)
    assert_matches_reference(popt, pcov, ref_popt, ref_pcov)


def test_full_output_tuple_and_weighted_residuals():
    """full_output=True returns (popt, pcov, infodict, mesg, ier) like scipy: infodict['fvec']
    is the weighted residual (f(x, *popt) - y) / sigma (recomputed here in numpy),
    infodict['nfev'] is a positive int, ier is a scipy success code, and popt/pcov equal the
    scipy 'lm' reference."""
    case = CASES_BY_NAME["gauss_linear"]
    x, y, sigma = make_data(case)
    ref_popt, ref_pcov = scipy_reference(case.f, x, y, case.p0, sigma=sigma)

    out = hybrid_gn.curve_fit(case.f, x, y, p0=case.p0, sigma=sigma, full_output=True)
    assert isinstance(out, tuple) and len(out) == 5
    popt, pcov, infodict, mesg, ier = out
    assert_matches_reference(popt, pcov, ref_popt, ref_pcov)

    a, mu, s, b0, b1 = popt
    expected_fvec = (a * np.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x - y) / sigma
    fvec = np.asarray(infodict["fvec"])
    assert fvec.shape == (case.n,)
    np.testing.assert_allclose(fvec, expected_fvec, rtol=1e-10, atol=1e-10)

    nfev = infodict["nfev"]
    assert isinstance(nfev, int | np.integer) and not isinstance(nfev, bool) and nfev > 0
    assert isinstance(mesg, str)
    assert int(ier) in (1, 2, 3, 4)
