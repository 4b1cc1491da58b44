"""Matrix-free Gauss-Newton (above `Config.dense_max_params`): no p x p matrix.

References: the dense path on the same problem (params at the optimum, bounds active,
covariance, the implicit gradient), scipy's `least_squares(method='trf',
tr_solver='lsmr')` (cost at p = 5000, slow), the exact trust-region subproblem solved
with numpy (the truncated CG step), and the compiled program itself (no buffer of p x p
elements, temporary memory far below 8 p^2 bytes). The problems (`many_params`) are sums
of Gaussian peaks seen through a window, so a point costs O(1) whatever p.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from many_params import jacobian_sparsity, peaks_problem

import hybrid_gn
from hybrid_gn._phases import _steihaug as steihaug

jax.config.update("jax_enable_x64", True)

DENSE = hybrid_gn.Config(dense_max_params=10**6)
FREE = hybrid_gn.Config(dense_max_params=0)


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def test_cg_path_equals_dense_path_at_p300():
    """p = 300 (100 peaks, 3000 points): both paths converge to the same optimum."""
    model, x, y, truth, p0 = peaks_problem(100, 30)
    dense = hybrid_gn.fit(model, p0, x, y, config=DENSE)
    free = hybrid_gn.fit(model, p0, x, y, config=FREE)
    assert bool(dense.success) and bool(free.success)
    assert _rel(free.params, dense.params) < 1e-8
    assert abs(float(free.cost) / float(dense.cost) - 1) < 1e-12
    assert free.pcov.shape == (300, 300)  # within the default budget: dense, formed once
    assert _rel(free.perr, dense.perr) < 1e-6


@pytest.mark.slow
def test_active_bounds_cg_path_equals_dense_path():
    """Upper bounds on the widths, below the truth for some peaks: the same KKT point."""
    model, x, y, truth, p0 = peaks_problem(20, 30, seed=1)
    upper = np.full(p0.size, np.inf)
    upper[2::3] = 0.22
    lower = np.full(p0.size, -np.inf)
    lower[2::3] = 0.05
    p0 = np.clip(p0, lower, upper)
    dense = hybrid_gn.fit(model, p0, x, y, bounds=(lower, upper), config=DENSE)
    free = hybrid_gn.fit(model, p0, x, y, bounds=(lower, upper), config=FREE)
    assert bool(dense.success) and bool(free.success)
    at_bound = np.isclose(np.asarray(free.params[2::3]), 0.22, rtol=1e-12, atol=0)
    assert at_bound.sum() >= 3  # the bound is active for several peaks
    assert np.array_equal(at_bound, np.isclose(np.asarray(dense.params[2::3]), 0.22,
                                               rtol=1e-12, atol=0))
    # ftol stops both where a step lowers the cost by 10 eps: the params are then known to
    # about sqrt(10 eps), here 1.5e-8 apart
    assert _rel(free.params, dense.params) < 1e-7


def test_diagonal_covariance_equals_the_dense_diagonal():
    """`covariance="diagonal"` (CG per parameter, no p x p matrix) against the dense pinv,
    with relative and absolute sigma."""
    model, x, y, truth, p0 = peaks_problem(30, 20, seed=2)
    sigma = np.full(x.size, 0.02)
    for absolute in (False, True):
        dense = hybrid_gn.fit(model, p0, x, y, sigma=sigma, absolute_sigma=absolute,
                              config=DENSE)
        diagonal = hybrid_gn.fit(model, p0, x, y, sigma=sigma, absolute_sigma=absolute,
                                 config=dataclasses.replace(FREE, covariance="diagonal"))
        assert diagonal.pcov.shape == (90,)
        assert _rel(diagonal.pcov, np.diagonal(dense.pcov)) < 1e-6
        assert _rel(diagonal.perr, dense.perr) < 1e-6
    none = hybrid_gn.fit(model, p0, x, y, config=dataclasses.replace(FREE, covariance="none"))
    assert none.pcov.shape == (90,) and np.all(np.isnan(none.pcov))


def test_implicit_gradient_matrix_free_equals_the_dense_rule():
    """d(sum of fitted params * weights)/dy by CG on Hessian-vector products (reverse
    mode), against the dense rule (the full Hessian) and a central finite difference."""
    model, x, y, truth, p0 = peaks_problem(8, 20, seed=3)
    weights = np.random.default_rng(0).standard_normal(p0.size)

    def summary(config):
        return lambda y: jnp.sum(hybrid_gn.fit(model, p0, x, y, config=config).params
                                 * weights)

    dense, free = jax.grad(summary(DENSE))(y), jax.grad(summary(FREE))(y)
    assert float(jnp.max(jnp.abs(free - dense))) < 1e-7 * float(jnp.max(jnp.abs(dense)))
    tangent = np.random.default_rng(1).standard_normal(y.size)
    h = 1e-5
    difference = (summary(FREE)(y + h * tangent) - summary(FREE)(y - h * tangent)) / (2 * h)
    assert abs(float(free @ tangent) / float(difference) - 1) < 1e-5


@pytest.mark.slow
def test_fit_batch_matrix_free_equals_dense_solo_fits():
    """Under vmap (fit_batch): each problem's CG fit equals its dense solo fit."""
    problems = [peaks_problem(6, 20, seed=s) for s in range(3)]
    model = problems[0][0]
    x = np.stack([p[1] for p in problems])
    y = np.stack([p[2] for p in problems])
    p0 = np.stack([p[4] for p in problems])
    batch = hybrid_gn.fit_batch(model, p0, x, y, config=FREE)
    for b in range(3):
        solo = hybrid_gn.fit(model, p0[b], x[b], y[b], config=DENSE)
        assert _rel(batch.params[b], solo.params) < 1e-8


@pytest.mark.slow
def test_stream_matrix_free_matches_fit():
    """fit_stream (subproblem on the sample's products, one pass per step) reaches fit's
    optimum to its tolerances."""
    model, x, y, truth, p0 = peaks_problem(8, 50, seed=4)
    config = dataclasses.replace(FREE, warmup_max_points=200, chunk_size=128)
    streamed = hybrid_gn.fit_stream(model, p0, (x, y), config=config, block_size=200,
                                    progress=False)
    reference = hybrid_gn.fit(model, p0, x, y, config=DENSE)
    assert bool(streamed.success)
    assert _rel(streamed.params, reference.params) < 1e-6
    assert abs(float(streamed.cost) / float(reference.cost) - 1) < 1e-10


@pytest.mark.slow
def test_float32_cg_path_close_to_float64():
    model, x, y, truth, p0 = peaks_problem(20, 30, seed=5)
    reference = hybrid_gn.fit(model, p0, x, y, config=DENSE)
    single = hybrid_gn.fit(model, p0.astype(np.float32), x.astype(np.float32),
                           y.astype(np.float32), config=FREE)
    assert single.params.dtype == np.float32
    assert _rel(single.params, reference.params) < 1e-3


# ------------------------------------------------------------------ the subproblem, directly

def _subproblem(p: int, seed: int):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((2 * p, p)) * np.logspace(0, 2, p)
    return a.T @ a, rng.standard_normal(p)


def test_steihaug_interior_step_is_the_newton_step():
    """A radius larger than the Newton step: CG returns -H^-1 g and its model value."""
    h, g = _subproblem(20, 0)
    newton = -np.linalg.solve(h, g)
    step, predicted = steihaug.steihaug(lambda v: h @ v, g, np.diagonal(h), 10 * np.linalg.norm(
        newton), np.ones(20, bool), 1e-12, 100)
    assert _rel(step, newton) < 1e-8
    assert abs(float(predicted) / float(-(g @ newton + 0.5 * newton @ h @ newton)) - 1) < 1e-10


def test_steihaug_boundary_step_and_fixed_variables():
    """A small radius: the step lies on the boundary, its predicted reduction is exact, at
    least the Cauchy point's, and fixed variables do not move."""
    h, g = _subproblem(20, 1)
    free = np.arange(20) % 4 != 0
    newton = np.linalg.solve(h[np.ix_(free, free)], g[free])
    radius = 0.3 * np.linalg.norm(newton)
    step, predicted = steihaug.steihaug(lambda v: h @ v, g, np.diagonal(h), radius, free,
                                        1e-12, 100)
    step = np.asarray(step)
    assert abs(np.linalg.norm(step) / radius - 1) < 1e-10
    assert np.all(step[~free] == 0)
    assert abs(float(predicted) / -(g @ step + 0.5 * step @ h @ step) - 1) < 1e-10
    gf = np.where(free, g, 0)
    cauchy = -radius * gf / np.linalg.norm(gf)
    t = min(1.0, (gf @ gf) * np.linalg.norm(gf) / (radius * gf @ h @ gf))
    assert float(predicted) >= -(g @ (t * cauchy) + 0.5 * t * t * cauchy @ h @ cauchy)


# ------------------------------------------------------------------ p = 5000

def _five_thousand(points_per_cell: int):
    return peaks_problem(1000, points_per_cell, knots=2000, seed=6)


def test_p5000_program_has_no_p_by_p_buffer():
    """p = 5000: the compiled fit (with its covariance, implicit rule and warmup) holds no
    array of p x p elements, its temporary memory is far below 8 p^2 bytes. (The slow
    variant also runs it: `test_p5000_iterates`, and the whole fit against scipy.)"""
    model, x, y, truth, p0 = _five_thousand(10)
    p = p0.size
    assert p == 5000

    def fit(p0, x, y, config):
        return hybrid_gn.fit(model, p0, x, y, config=config)

    config = hybrid_gn.Config(max_iter=3)  # covariance "auto": the diagonal at this p
    compiled = jax.jit(fit, static_argnums=3).lower(p0, x, y, config).compile()
    sizes = [np.prod([int(d) for d in dims.split(",")]) for dims in
             re.findall(r"[fsu]\d+\[([\d,]+)\]", compiled.as_text())]
    assert max(sizes) < p * p / 10
    assert compiled.memory_analysis().temp_size_in_bytes < 8 * p * p / 4  # measured: 43 MB


@pytest.mark.slow
def test_p5000_iterates():
    """A few matrix-free iterations at p = 5000 lower the cost tenfold."""
    model, x, y, truth, p0 = _five_thousand(10)
    p = p0.size
    config = hybrid_gn.Config(max_iter=3)
    result = hybrid_gn.fit(model, p0, x, y, config=dataclasses.replace(config,
                                                                      covariance="none"))
    start_cost = 0.5 * np.sum((np.asarray(model(p0, x)) - y) ** 2)
    assert float(result.cost) < 0.1 * start_cost
    assert result.pcov.shape == (p,)


@pytest.mark.slow
def test_p5000_fit_reaches_scipy_lsmr_cost():
    """p = 5000, 20000 points: the matrix-free fit reaches scipy's trf/lsmr cost or better
    (scipy with the Jacobian's sparsity, grouped finite differences)."""
    from scipy.optimize import least_squares

    model, x, y, truth, p0 = _five_thousand(20)
    result = hybrid_gn.fit(model, p0, x, y, config=hybrid_gn.Config(covariance="none"))
    residual = jax.jit(lambda p: model(p, jnp.asarray(x)) - y)
    reference = least_squares(lambda p: np.asarray(residual(p)), p0, method="trf",
                              tr_solver="lsmr", jac_sparsity=jacobian_sparsity(x, 1000, 2000))
    assert bool(result.success)
    assert float(result.cost) <= reference.cost * (1 + 1e-9)


# ------------------------------------------------------------------ sharded

SHARDED = textwrap.dedent('''
    import json, sys
    import numpy as np, jax
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, sys.argv[1])
    import hybrid_gn
    from many_params import peaks_problem
    assert jax.device_count() == 4
    mesh = jax.make_mesh((4,), ("data",))
    model, x, y, truth, p0 = peaks_problem(10, 41, seed=7)
    free = hybrid_gn.Config(dense_max_params=0, chunk_size=64)
    one = hybrid_gn.fit(model, p0, x, y, config=hybrid_gn.Config(dense_max_params=10**6))
    split = hybrid_gn.fit(model, p0, x, y, config=free, mesh=mesh)
    print(json.dumps({"params": float(np.max(np.abs(split.params / one.params - 1))),
                      "success": bool(split.success)}))
''')


@pytest.mark.slow
def test_sharded_matrix_free_equals_the_dense_single_device_fit():
    """fit(..., mesh=) on 4 devices, the products reduced by a psum of p numbers."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", SHARDED, here], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["success"] and got["params"] < 1e-8
