"""Direct tests of the numerical kernels, each against an independent reference.

- the eigen / SVD wrappers (`linalg`) against `numpy.linalg`, on random and
  rank-deficient matrices, float64 and float32, and under `vmap` / `jit`;
- `pinv_gram` against a closed form;
- `compacted.compacted_loop` against a plain loop per problem (numpy) and a vmapped
  `lax.while_loop`, on batch sizes that take each of its paths;
- `gauss_newton.conclude` (and `propose`): every status it can produce, from designed
  states whose outcome follows from the stopping rules by hand.

The kernels are reached through the module aliases imported below (one place to change
when the modules move).
"""

from __future__ import annotations

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_gn import _compacted as compacted
from hybrid_gn import _config as config
from hybrid_gn import _control as control
from hybrid_gn import _result as result
from hybrid_gn._phases import _accumulate as accumulate
from hybrid_gn._phases import _cholesky as cholesky
from hybrid_gn._phases import _gauss_newton as gauss_newton
from hybrid_gn._phases import _linalg as linalg

jax.config.update("jax_enable_x64", True)

Status = result.Status
Trace = result.Trace

# --------------------------------------------------------------------------------------------
# 1. eigen and SVD wrappers against numpy.linalg
# --------------------------------------------------------------------------------------------

DTYPES = [np.float64, np.float32]


def _tol(p: int, dtype) -> float:
    """Error allowed relative to ||A||_2: a few rounding errors per column (float64: 9e-15 at
    p <= 2 ... 4.4e-14 at p = 10, well under 1e-12)."""
    return 20 * max(p, 2) * float(np.finfo(dtype).eps)


def symmetric_cases(p: int, seed: int) -> dict[str, np.ndarray]:
    """Symmetric p x p matrices: random (positive definite, graded, indefinite) and rank
    deficient. Every one but "indefinite" is positive semi-definite."""
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((p + 2, p))
    zero_column = b.copy()
    zero_column[:, p // 2] = 0  # exact zero row and column p // 2
    repeated = b.copy()
    repeated[:, -1] = repeated[:, 0]  # two equal columns of B: rank p - 1
    c = rng.standard_normal((p, p))
    v = rng.standard_normal(p)
    q = np.linalg.qr(rng.standard_normal((p, p)))[0]
    twice = np.array([3.0, 3.0, 1.0, 0.5, 0.25] * 2)[:p]  # a double eigenvalue 3
    d = 10.0 ** -np.linspace(0, 3, p)
    return {
        "positive definite": b.T @ b,
        "graded": (b.T @ b) * d[:, None] * d[None, :],  # D H D: eigenvalues down to ~1e-6
        "indefinite": (c + c.T) / 2,
        "zero column": zero_column.T @ zero_column,
        "repeated columns": repeated.T @ repeated,
        "rank 1": np.outer(v, v),
        "zero": np.zeros((p, p)),
        "diagonal, repeated values": np.diag([2.0 if k % 3 != 2 else 1.0 for k in range(p)]),
        "rotated, repeated values": (q * twice) @ q.T,
    }


def rectangular_cases(m: int, p: int, seed: int) -> dict[str, np.ndarray]:
    """m x p matrices (m >= p): random and rank deficient."""
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((m, p))
    zero_column = b.copy()
    zero_column[:, p // 2] = 0
    repeated = b.copy()
    repeated[:, -1] = repeated[:, 0]
    diagonal = np.zeros((m, p))
    diagonal[:p, :p] = np.diag([2.0 if k % 3 != 2 else 1.0 for k in range(p)])
    return {
        "random": b,
        "graded columns": b * 10.0 ** -np.linspace(0, 6, p),
        "zero column": zero_column,
        "repeated columns": repeated,
        "rank 1": np.outer(rng.standard_normal(m), rng.standard_normal(p)),
        "zero": np.zeros((m, p)),
        "diagonal, repeated values": diagonal,
    }


@functools.cache
def _batched(kernel):
    """The kernel vmapped and jitted, one program per kernel and shape for the whole module."""
    return jax.jit(jax.vmap(kernel))


def _run(kernel, cases: dict[str, np.ndarray], dtype):
    """The kernel on every case at once (one compiled, vmapped program), as numpy arrays."""
    stack = jnp.asarray(np.stack(list(cases.values())).astype(dtype))
    outputs = _batched(kernel)(stack)
    for out in outputs:
        assert out.dtype == dtype
    return [np.asarray(out) for out in outputs]


def assert_same_subspaces(values, vectors, ref_values, ref_vectors, scale, tol, what,
                          skip_below=-np.inf):
    """The spectral projectors agree cluster by cluster (basis- and sign-free).

    `values` / `ref_values` are sorted alike, `vectors` / `ref_vectors` hold the matching
    vectors as columns. Values within sqrt(tol) * scale of each other form a cluster (a
    repeated value, or the numerical null space); a cluster's projector sum v v^T may
    differ by the backward errors over the gap to the other values (Davis-Kahan).
    A singleton cluster is an eigenvector (singular vector) up to sign. Clusters whose
    values are all at most `skip_below` are not compared.
    """
    k = len(ref_values)
    start = 0
    while start < k:
        stop = start + 1
        while stop < k and abs(ref_values[stop] - ref_values[stop - 1]) <= tol**0.5 * scale:
            stop += 1
        others = np.concatenate([ref_values[:start], ref_values[stop:]])
        gap = np.min(np.abs(others[:, None] - ref_values[None, start:stop])) if len(
            others) else np.inf
        if np.max(ref_values[start:stop]) <= skip_below:
            start = stop
            continue
        ours, ref = vectors[:, start:stop], ref_vectors[:, start:stop]
        error = np.max(np.abs(ours @ ours.T - ref @ ref.T))
        bound = tol + 8 * tol * scale / gap
        assert error <= bound, (what, start, stop, error, bound)
        start = stop


def check_eigen(a, w, vt, tol, name):
    """(w, vt) an eigendecomposition of the symmetric `a` (eigenvectors as rows of vt)."""
    p = a.shape[0]
    a64 = a.astype(np.float64)
    ref_w, ref_v = np.linalg.eigh(a64)
    scale = np.linalg.norm(a64, 2)
    w64, vt64 = w.astype(np.float64), vt.astype(np.float64)
    order = np.argsort(w64, kind="stable")
    assert np.max(np.abs(w64[order] - ref_w)) <= tol * scale, name
    assert np.max(np.abs((vt64.T * w64) @ vt64 - a64)) <= tol * scale, name
    assert np.max(np.abs(vt64 @ vt64.T - np.eye(p))) <= tol, name
    assert_same_subspaces(w64[order], vt64[order].T, ref_w, ref_v, scale, tol, name)


def check_svd(a, u, s, vt, tol, name):
    """(u, s, vt) a thin SVD of `a`, singular values descending."""
    p = a.shape[1]
    a64 = a.astype(np.float64)
    ref_u, ref_s, ref_vt = np.linalg.svd(a64, full_matrices=False)
    scale = ref_s[0]
    u64, s64, vt64 = (x.astype(np.float64) for x in (u, s, vt))
    assert np.all(s64 >= 0) and np.all(np.diff(s64) <= 0), (name, s64)
    assert np.max(np.abs(s64 - ref_s)) <= tol * scale, name
    assert np.max(np.abs((u64 * s64) @ vt64 - a64)) <= tol * scale, name
    assert np.max(np.abs(vt64 @ vt64.T - np.eye(p))) <= tol, name
    positive = u64[:, s64 > 0]
    assert np.max(np.abs(positive.T @ positive - np.eye(positive.shape[1])), initial=0) <= tol
    assert_same_subspaces(s64, vt64.T, ref_s, ref_vt.T, scale, tol, name + " (right)")
    assert_same_subspaces(s64, u64, ref_s, ref_u, scale, tol, name + " (left)",
                          skip_below=tol**0.5 * scale)  # left vectors of the range only


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1, 2, 4, 8])
def test_symmetric_eigen_against_numpy(p, dtype):
    """`symmetric_eigen`: eigenvalues and reconstruction to tol * ||A||, orthogonal
    eigenvectors (as rows) and the same eigenvectors (up to sign) / eigenspaces (repeated
    values) as `numpy.linalg.eigh`, on random definite and indefinite and on rank-deficient
    matrices."""
    cases = symmetric_cases(p, seed=p)
    w, vt = _run(linalg.symmetric_eigen, cases, dtype)
    tol = _tol(p, dtype)
    for i, (name, a) in enumerate(cases.items()):
        check_eigen(a.astype(dtype), w[i], vt[i], tol, name)


@pytest.mark.parametrize("m, p, dtype", [
    *[(m, p, np.float64) for m, p in [(4, 1), (5, 2), (3, 3), (4, 4), (9, 7), (8, 8), (12, 10)]],
    *[(m, p, np.float32) for m, p in [(1, 1), (7, 4), (9, 7)]]])
def test_svd_against_numpy(m, p, dtype):
    """`svd`: singular values (descending) and U diag(s) V^T to tol * ||A||, orthogonal V,
    orthonormal columns of U, the same singular subspaces as `numpy.linalg.svd`, on square
    and tall, random, graded and rank-deficient matrices."""
    cases = rectangular_cases(m, p, seed=10 * m + p)
    u, s, vt = _run(linalg.svd, cases, dtype)
    tol = _tol(p, dtype)
    for i, (name, a) in enumerate(cases.items()):
        check_svd(a.astype(dtype), u[i], s[i], vt[i], tol, name)


@pytest.mark.parametrize("kernel, shape", [("symmetric_eigen", (3, 3)), ("svd", (3, 3))])
def test_kernels_under_vmap_and_jit(kernel, shape):
    """A problem's result does not depend on the batch around it (the vmapped kernel gives
    bit-identical results on a batch, the same batch reversed and a smaller one), and the
    vmapped and the jitted single computations agree to a few roundings (their fused
    arithmetic differs)."""
    fn = getattr(linalg, kernel)
    m, p = shape
    cases = (symmetric_cases(p, seed=p) if kernel == "symmetric_eigen"
             else rectangular_cases(m, p, seed=10 * m + p))  # the stack tested above
    stack = jnp.asarray(np.stack(list(cases.values())))
    whole = [np.asarray(x) for x in _batched(fn)(stack)]
    reversed_ = [np.asarray(x)[::-1] for x in _batched(fn)(stack[::-1])]
    part = [np.asarray(x) for x in _batched(fn)(stack[:3])]
    for x, y, z in zip(whole, reversed_, part, strict=True):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x[:3], z)
    tol = _tol(p, np.float64)
    for i in (0, 1):  # random and graded: distinct values, so comparable vectors
        scale = float(np.linalg.norm(stack[i], 2))
        for x, y in zip(whole, jax.jit(fn)(stack[i]), strict=True):
            np.testing.assert_allclose(x[i], np.asarray(y), rtol=0, atol=tol * scale)


def test_pinv_gram_closed_form():
    """(R^T R)^+ for R = Q diag(sv) W^T is W diag(1 / sv^2) W^T over the singular values
    kept (above rcond * max): full rank, one value dropped by the cutoff (1e-9 < 1e-6 while
    1e-3 is kept), an exact zero column, and the zero matrix (all dropped: 0)."""
    rng = np.random.default_rng(3)
    q = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    w = np.linalg.qr(rng.standard_normal((4, 4)))[0]

    def closed_form(sv, kept):
        inv = np.where(kept, 1 / np.where(kept, sv, 1) ** 2, 0)
        return (w * inv) @ w.T

    full, cut = np.array([2.0, 1.0, 0.5, 0.25]), np.array([1.0, 0.5, 1e-3, 1e-9])
    r_zero = (q * full) @ w.T
    r_zero[:, 2] = 0
    stack = np.stack([(q * full) @ w.T, (q * cut) @ w.T, r_zero, np.zeros((4, 4))])
    got = np.asarray(jax.jit(jax.vmap(lambda r: linalg.pinv_gram(r, 1e-6)))(jnp.asarray(stack)))
    ref = closed_form(full, np.ones(4, bool))
    np.testing.assert_allclose(got[0], ref, rtol=0, atol=1e-12 * np.max(np.abs(ref)))
    ref = closed_form(cut, cut > 1e-6)
    np.testing.assert_allclose(got[1], ref, rtol=0, atol=1e-12 * np.max(np.abs(ref)))
    ref = np.linalg.pinv(r_zero.T @ r_zero, rcond=1e-10, hermitian=True)
    np.testing.assert_allclose(got[2], ref, rtol=0, atol=1e-12 * np.max(np.abs(ref)))
    assert np.all(got[2][2] == 0) and np.all(got[2][:, 2] == 0)
    np.testing.assert_array_equal(got[3], np.zeros((4, 4)))


@pytest.mark.parametrize("p", [3, 8, 10])
def test_pinv_gram_of_triangular_factors(p):
    """A triangular R (the Cholesky and QR routes) takes R^-1 R^-T where nothing would be
    dropped (unrolled up to 8 columns, LAPACK above), and the SVD elsewhere, under one
    `vmap`: well conditioned, graded (cond ~1e4), near the cutoff (one singular value
    1e-8 below the largest, cutoff 1e-6: dropped), an exact zero diagonal entry, and
    the zero matrix; each as `numpy.linalg.pinv` of R^T R with the same cutoff on the
    singular values of R."""
    rng = np.random.default_rng(p)
    well = np.triu(rng.standard_normal((p, p))) + 3 * np.eye(p)
    graded = well * np.logspace(0, -4, p)[None, :]
    u, sv, vt = np.linalg.svd(well)
    cut = np.linalg.qr((u * np.r_[sv[:-1], 1e-8 * sv[0]]) @ vt)[1]
    zero_pivot = well.copy()
    zero_pivot[p // 2, p // 2:] = 0
    cases = [well, graded, cut, zero_pivot, np.zeros((p, p))]
    rcond = 1e-6
    got = np.asarray(jax.jit(jax.vmap(lambda r: linalg.pinv_gram(r, rcond, True)))(
        jnp.asarray(np.stack(cases))))
    for name, r, g in zip(["well", "graded", "cut", "zero pivot", "zero"], cases, got,
                          strict=True):
        s = np.linalg.svd(r, compute_uv=False)
        ref = np.linalg.pinv(r.T @ r, rcond=rcond**2 * (s[0] > 0), hermitian=True)
        scale = max(np.max(np.abs(ref)), 1e-300)
        np.testing.assert_allclose(g, ref, rtol=0, atol=1e-9 * scale, err_msg=name)
    assert np.all(np.isfinite(got))


# --------------------------------------------------------------------------------------------
# 2. compacted_loop against the plain loop
# --------------------------------------------------------------------------------------------

TRACE_LENGTH = 8  # shorter than the longest runs: the last entry is overwritten (clamped)


class Counter(eqx.Module):
    """A per-problem loop state shaped like the pipeline's: it has a `Trace`."""

    steps: jax.Array  # steps taken
    target: jax.Array  # steps to take (0: never active)
    value: jax.Array
    trace: Trace


def counting(state: Counter):
    return state.steps < state.target


def halve_and_add(c, state: Counter) -> Counter:
    """value <- value / 2 + c (exact in float64 for these small integers and step counts);
    records one trace entry the way the pipeline does (clamped at the last entry)."""
    value = 0.5 * state.value + c
    t = state.trace
    k = jnp.minimum(t.length, t.cost.shape[0] - 1)
    trace = Trace(t.cost.at[k].set(value), t.grad_norm.at[k].set(state.steps.astype(value.dtype)),
                  t.radius.at[k].set(c), t.phase.at[k].set(state.steps + 1), t.length + 1)
    return Counter(state.steps + 1, state.target, value, trace)


def start_states(targets: np.ndarray, values: np.ndarray) -> Counter:
    b = len(targets)
    nan = jnp.full((b, TRACE_LENGTH), jnp.nan)
    return Counter(jnp.zeros(b, jnp.int32), jnp.asarray(targets, jnp.int32),
                   jnp.asarray(values, jnp.float64),
                   Trace(nan, nan, nan, jnp.zeros((b, TRACE_LENGTH), jnp.int32),
                         jnp.zeros(b, jnp.int32)))


def plain_loop(targets, values, inputs):
    """The reference: each problem's loop in numpy, one after another."""
    out = {name: [] for name in ("steps", "value", "cost", "grad_norm", "radius", "phase",
                                 "length")}
    for target, value, c in zip(targets, values, inputs, strict=True):
        cost, grad, radius = (np.full(TRACE_LENGTH, np.nan) for _ in range(3))
        phase = np.zeros(TRACE_LENGTH, np.int32)
        for k in range(target):
            value = 0.5 * value + c
            j = min(k, TRACE_LENGTH - 1)
            cost[j], grad[j], radius[j], phase[j] = value, k, c, k + 1
        for name, x in (("steps", target), ("value", value), ("cost", cost), ("grad_norm", grad),
                        ("radius", radius), ("phase", phase), ("length", target)):
            out[name].append(x)
    return {name: np.stack(x) for name, x in out.items()}


def as_dict(s: Counter) -> dict[str, np.ndarray]:
    return {"steps": s.steps, "value": s.value, "cost": s.trace.cost,
            "grad_norm": s.trace.grad_norm, "radius": s.trace.radius, "phase": s.trace.phase,
            "length": s.trace.length}


@functools.cache
def _compacted(shrink: int, smallest: int):
    return functools.partial(compacted.compacted_loop, counting, halve_and_add, shrink=shrink,
                             smallest=smallest)


_jitted = functools.cache(jax.jit)


@jax.jit
@jax.vmap
def _vmapped_while(state: Counter, c) -> Counter:
    """The plain vmapped loop: a batched `lax.while_loop` (a select on every problem)."""
    return jax.lax.while_loop(counting, functools.partial(halve_and_add, c), state)


def _traced_steps(shrink: int, smallest: int, *args) -> int:
    """How many times `compacted_loop` traces the step (each trace is a compiled copy)."""
    traced = []

    def counted(c, state):
        traced.append(1)
        return halve_and_add(c, state)

    jax.make_jaxpr(functools.partial(compacted.compacted_loop, counting, counted, shrink=shrink,
                                     smallest=smallest))(*args)
    return len(traced)


def _scenario(name: str, rng) -> tuple[np.ndarray, int, int]:
    """Step counts per problem, shrink and smallest, for each path through the chunks."""
    if name == "whole batch: fewer than two chunks":
        return rng.integers(0, 13, 31), 8, 16  # chunks of max(31 // 8, 16) = 16 > 31 / 2
    if name == "chunks: all active, then exactly a chunk":
        # 128 // 8 = 16: after 3 steps exactly 16 problems are left
        return rng.permutation(np.r_[np.full(16, 12), rng.integers(0, 4, 111), 3]), 8, 16
    if name == "chunks: fewer active than a chunk":
        # 25 problems active until step 6, then 5: chunks of 16 filled with finished ones
        return rng.permutation(np.r_[np.full(20, 6), 7, 8, 9, 10, 11, np.zeros(103, int)]), 8, 16
    if name == "chunks: few active from the start":
        return rng.permutation(np.r_[5, 9, 1, np.zeros(125, int)]), 8, 16
    if name == "chunks: nothing to do":
        return np.zeros(128, int), 8, 16
    if name == "chunks: small shrink and smallest, uneven":
        return rng.integers(0, 13, 23), 4, 2  # chunks of 5, wrapping round 23 problems
    if name == "chunks: the smallest chunk above B // shrink":
        return rng.integers(0, 13, 40), 8, 16  # chunks of max(5, 16) = 16
    raise AssertionError(name)


@pytest.mark.parametrize("scenario", [
    "whole batch: fewer than two chunks", "chunks: all active, then exactly a chunk",
    "chunks: fewer active than a chunk", "chunks: few active from the start",
    "chunks: nothing to do", "chunks: small shrink and smallest, uneven",
    "chunks: the smallest chunk above B // shrink"])
def test_compacted_loop_equals_plain_loop(scenario):
    """Each problem's final state and trace (values, step counts, every trace entry including
    the clamped last one, the untouched NaN ones) are exactly those of its own plain loop
    (numpy) and of a vmapped `lax.while_loop`, and the step is traced (compiled) once."""
    rng = np.random.default_rng(sum(map(ord, scenario)))
    targets, shrink, smallest = _scenario(scenario, rng)
    b = len(targets)
    values = rng.integers(-50, 50, b).astype(float)
    inputs = rng.integers(-1000, 1000, b).astype(float)
    states = start_states(targets, values)

    assert _traced_steps(shrink, smallest, states, jnp.asarray(inputs)) == 1
    got = as_dict(_jitted(_compacted(shrink, smallest))(states, jnp.asarray(inputs)))
    vmapped = as_dict(_vmapped_while(states, jnp.asarray(inputs)))
    ref = plain_loop(targets, values, inputs)
    for name, expected in ref.items():
        np.testing.assert_array_equal(np.asarray(got[name]), expected, err_msg=name)
        np.testing.assert_array_equal(np.asarray(vmapped[name]), expected, err_msg=name)
    assert np.all(np.asarray(got["steps"]) == targets)


def test_active_first_takes_active_problems_then_finished_ones():
    """The active problems in batch order, then finished ones to fill the length, no
    repeats; more active problems than the length: the first of them."""
    on = jnp.asarray(np.array([1, 0, 1, 1, 0, 0, 1, 1, 0, 1], bool))
    assert list(np.asarray(control.active_first(on, 3))) == [0, 2, 3]
    assert list(np.asarray(control.active_first(on, 10))) == [0, 2, 3, 6, 7, 9, 1, 4, 5, 8]
    few = jnp.asarray(np.array([0, 0, 1, 0, 0], bool))
    assert list(np.asarray(control.active_first(few, 3))) == [2, 0, 1]


def test_active_first_against_its_rule_on_random_batches():
    """On random batches, for five batch sizes and lengths: the active problems in batch
    order, then the finished ones, cut to the length (a plain list reference)."""
    rng = np.random.default_rng(14)
    active_first = jax.jit(control.active_first, static_argnums=1)
    for size, length in [(2, 1), (23, 5), (64, 32), (257, 16), (40, 40)] * 40:
        on = rng.random(size) < rng.random()
        expected = ([i for i in range(size) if on[i]] + [i for i in range(size) if not on[i]])
        assert list(np.asarray(active_first(jnp.asarray(on), length))) == expected[:length]


def _costly(x):
    """A route with a loop of its own that the test can count: x + (iterations run)."""
    return jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] + 1, c[1] + 1), (x, 0))[0]


@pytest.mark.parametrize("share", [False, True])
def test_run_for_few_equals_the_lazy_cond_under_vmap(share):
    """`run_for_few` under `vmap` gives every problem what `run_if` gives it (the route's
    value where the predicate holds, the placeholder elsewhere), for a batch of 50 in
    groups of 7 (none, a few and all taking the route), with the route's input batched or
    shared; alone it is `run_if`."""
    rng = np.random.default_rng(3)
    offset = jnp.asarray(2.5)

    def both(pred, x):
        x = offset if share else x
        def route():
            return _costly(x) * 2, x + 1
        placeholder = (-x, jnp.zeros_like(x))
        return (control.run_for_few(pred, route, placeholder),
                control.run_if(pred, route, placeholder))

    for fraction in (0.0, 0.1, 1.0):
        pred = jnp.asarray(rng.random(50) < fraction)
        x = jnp.asarray(rng.standard_normal(50))
        few, lazy = jax.jit(jax.vmap(both))(pred, x)
        for a, b in zip(few, lazy, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        expected = np.where(np.asarray(pred), (np.asarray(offset if share else x) + 3) * 2,
                            -np.asarray(offset if share else x))
        np.testing.assert_allclose(np.asarray(few[0]), expected)
    single = jax.jit(both)(jnp.asarray(True), jnp.asarray(1.0))
    np.testing.assert_array_equal(np.asarray(single[0][0]), np.asarray(single[1][0]))


def test_unless_inactive_keeps_or_takes_the_whole_state():
    """The select `compacted_loop` steps with: an inactive problem keeps its old state
    exactly (trace entry included), an active one gets the new state; a full trace
    (length past its end) selects at the clamped last entry."""
    step, select = jax.jit(halve_and_add), jax.jit(compacted._unless_inactive)
    values = np.random.default_rng(0).standard_normal(3)
    old = start_states(np.array([4, 4, 4]), values)
    old = jax.vmap(step)(jnp.ones(3), old)  # one entry recorded
    full = jax.tree.map(lambda a: a[0], old)
    for _ in range(TRACE_LENGTH + 2):
        full = step(2.0, full)
    for state in (jax.tree.map(lambda a: a[1], old), full):
        new = step(3.0, state)
        for keep, expected in ((False, state), (True, new)):
            got = select(jnp.asarray(keep), new, state)
            for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------------------------
# 3. gauss_newton.conclude: every status from a designed case
# --------------------------------------------------------------------------------------------

# ftol 1e-3 keeps the designed numbers readable; xtol and gtol are float64's defaults
# (xtol = sqrt(eps) / 100 = 1.5e-10, gtol = 10 eps); a cap of 5 iterations is easy to reach.
CONFIG = config.with_tolerances(config.Config(ftol=1e-3, max_iter=5), jnp.float64)
U = np.array([1.0, 2.0])
START = (np.array([3.0, 4.0]), np.array([2.0, 0.5]))  # a start and the column norms of J there
INF = np.full(2, np.inf)


def model(qtr, cost, factor=None) -> accumulate.Linearization:
    """A Gauss-Newton model ||R s + qtr||^2 / 2 + const; with R = I, the gradient is qtr and
    the gtol measure (the largest cosine) is max |qtr_j| / sqrt(2 cost)."""
    factor = jnp.asarray(np.eye(2) if factor is None else factor, jnp.float64)
    return accumulate.from_normal_equations(factor.T @ factor, factor.T @ jnp.asarray(qtr),
                                            jnp.asarray(cost, jnp.float64))


# the current model: gradient (1, 0), cost 1, cosine 1 / sqrt(2) > gtol
CURRENT = model([1.0, 0.0], 1.0)


def state(started=True, radius=1.0, iteration=1, resets=0, current=CURRENT, u=U,
          anchor=(U, 1.0, np.inf, False), start=None, retry=None):
    """A Gauss-Newton state at `u` with the model `current`, dtypes as `init` makes them;
    `anchor`: the point, cost, move and verdict of the last valley check, and optionally
    the cost's fall in its window (inf by default); `start`: where
    the attempt started and the column norms of J there (`u` and ones by default);
    `retry`: None on the first attempt, else the attempt (RETRY or BACK) and the first
    attempt's end (point, cost)."""
    anchor_u, anchor_cost, anchor_step, anchor_suspect, *fell = anchor
    anchor_fell = fell[0] if fell else np.inf
    start = (u, np.ones(np.shape(u))) if start is None else start
    start_u, start_columns = (jnp.asarray(a, jnp.float64) for a in start)
    attempt, first_u, first_cost = ((gauss_newton.FIRST, u, 0.0) if retry is None
                                    else retry)
    return gauss_newton.GaussNewtonState(
        u=jnp.asarray(u, jnp.float64), model=current, use_qr=jnp.asarray(False),
        radius=jnp.asarray(radius, jnp.float64), iteration=jnp.asarray(iteration, jnp.int64),
        resets=jnp.asarray(resets, jnp.int64), started=jnp.asarray(started),
        status=jnp.asarray(Status.RUNNING, jnp.int64),
        anchor_u=jnp.asarray(anchor_u, jnp.float64),
        anchor_cost=jnp.asarray(anchor_cost, jnp.float64),
        anchor_step=jnp.asarray(anchor_step, jnp.float64),
        anchor_fell=jnp.asarray(anchor_fell, jnp.float64),
        anchor_suspect=jnp.asarray(anchor_suspect), start_u=start_u,
        poor=jnp.asarray(False), start_columns=start_columns,
        attempt=jnp.asarray(attempt, jnp.int64), first_u=jnp.asarray(first_u, jnp.float64),
        first_cost=jnp.asarray(first_cost, jnp.float64))


def proposal(trial, predicted) -> gauss_newton.Proposal:
    return gauss_newton.Proposal(jnp.asarray(trial, jnp.float64),
                                 jnp.asarray(predicted, jnp.float64))


def step_along_gradient(length: float) -> gauss_newton.Proposal:
    """The trial u - length * e0 and its predicted reduction under CURRENT (R = I, qtr = e0):
    -(qtr . s + |s|^2 / 2) = length - length^2 / 2."""
    return proposal(U - [length, 0.0], length - length**2 / 2)


_conclude = eqx.filter_jit(gauss_newton.conclude)  # the configuration's numbers are static


def conclude(s, proposal, new, cfg=CONFIG, lower=-INF, upper=INF):
    out = _conclude(s, proposal, new, jnp.asarray(lower), jnp.asarray(upper), cfg)
    assert bool(out.running) == (int(out.status) == Status.RUNNING)
    return out


def test_conclude_running_and_the_first_evaluation():
    """RUNNING: (a) the first update only evaluates the start: accepted whatever its cost,
    no iteration counted, radius kept, `started` set; (b) a good step (ratio 1) that meets
    no tolerance is accepted and counted; (c) an accepted step with ratio 0.09 < 0.25 shrinks
    the radius to radius_shrink * |step| and does not count for ftol although its actual
    reduction is below ftol * cost; (d) a non-finite trial away from the current point is
    rejected and the radius shrinks (not a stall)."""
    first = conclude(state(started=False, iteration=0, radius=0.7), proposal(U, 0.0),
                     model([0.5, 0.0], 5.0))
    assert int(first.status) == Status.RUNNING and bool(first.started)
    assert int(first.iteration) == 0 and float(first.radius) == 0.7
    assert float(first.model.cost) == 5.0

    out = conclude(state(), step_along_gradient(0.5), model([0.5, 0.0], 0.625))  # actual 0.375
    assert int(out.status) == Status.RUNNING and int(out.iteration) == 2
    np.testing.assert_array_equal(np.asarray(out.u), U - [0.5, 0])
    assert float(out.radius) == 1.0  # ratio 1 but the step is inside the region: kept

    poor = proposal(U - [0.01, 0], 0.01)
    out = conclude(state(), poor, model([0.99, 0.0], 1.0 - 9e-4))
    assert int(out.status) == Status.RUNNING
    np.testing.assert_array_equal(np.asarray(out.u), U - [0.01, 0])
    np.testing.assert_allclose(float(out.radius), 0.5 * 0.01, rtol=1e-15)

    out = conclude(state(), step_along_gradient(0.5), model([np.nan, 0.0], np.inf))
    assert int(out.status) == Status.RUNNING and int(out.resets) == 0
    np.testing.assert_array_equal(np.asarray(out.u), U)
    assert float(out.model.cost) == 1.0
    np.testing.assert_allclose(float(out.radius), 0.5 * 0.5, rtol=1e-15)


@pytest.mark.parametrize("bad", ["cost", "qtr", "factor"])
def test_conclude_nonfinite_start(bad):
    """NONFINITE_START: the first evaluation is NaN/Inf in any part of the model; before every
    other test (a NaN model has no meaningful gradient)."""
    qtr, cost, factor = [0.0, 0.0], 1.0, np.eye(2)
    if bad == "cost":
        cost = np.nan
    elif bad == "qtr":
        qtr = [np.inf, 0.0]
    else:
        factor = np.array([[1.0, np.nan], [0.0, 1.0]])
    out = conclude(state(started=False, iteration=0), proposal(U, 0.0), model(qtr, cost, factor))
    assert int(out.status) == Status.NONFINITE_START and not bool(out.running)


def test_conclude_gtol():
    """CONVERGED_GTOL: (a) an accepted step onto a zero gradient with cost left; (b) a start
    that is already optimal (at the first evaluation); (c) a perfect fit (cost 0); (d) at a
    lower bound with the descent direction pointing out of the box (the projected gradient
    is 0) although the plain gradient is not, while the same point inside the box runs on;
    (e) gtol is tested before ftol: a step that satisfies both reports gtol."""
    out = conclude(state(), step_along_gradient(1.0), model([0.0, 0.0], 0.5))
    assert int(out.status) == Status.CONVERGED_GTOL and not bool(out.running)
    np.testing.assert_array_equal(np.asarray(out.u), U - [1.0, 0])

    start = proposal(U, 0.0)
    out = conclude(state(started=False, iteration=0), start, model([0.0, 0.0], 3.0))
    assert int(out.status) == Status.CONVERGED_GTOL and int(out.iteration) == 0
    out = conclude(state(started=False, iteration=0), start, model([0.0, 0.0], 0.0))
    assert int(out.status) == Status.CONVERGED_GTOL

    at_bound = conclude(state(started=False, iteration=0), start, model([0.5, 0.0], 1.0),
                        lower=np.array([1.0, -np.inf]))
    assert int(at_bound.status) == Status.CONVERGED_GTOL
    inside = conclude(state(started=False, iteration=0), start, model([0.5, 0.0], 1.0),
                      lower=np.array([0.0, -np.inf]))
    assert int(inside.status) == Status.RUNNING

    both = conclude(state(), step_along_gradient(1e-3), model([0.0, 0.0], 1.0 - 5e-4))
    assert int(both.status) == Status.CONVERGED_GTOL


def test_conclude_ftol_both_forms():
    """CONVERGED_FTOL: (a) an accepted step that promised 9e-4 <= ftol * cost and delivered
    8e-4 (ratio 0.89 > 0.25); one that delivered as little but promised 1.9e-3, above
    ftol * cost, is accepted and runs on: the test reads the promise, which has no
    cancellation, not the difference of two costs, whose rounding depends on how the
    program was compiled; (b) MINPACK's second form: a full (not radius-limited) step that
    promised and delivered at most ftol * cost, here a tiny cost *increase*: taken all the
    same; (c) the same step limited by the radius is not: rejected, radius shrunk, still
    RUNNING; (d) ftol before the iteration cap."""
    out = conclude(state(), proposal(U - [0.0009, 0], 9e-4), model([0.999, 0.0], 1.0 - 8e-4))
    assert int(out.status) == Status.CONVERGED_FTOL and not bool(out.running)
    np.testing.assert_array_equal(np.asarray(out.u), U - [0.0009, 0])
    out = conclude(state(), proposal(U - [0.0019, 0], 1.9e-3),
                   model([0.998, 0.0], 1.0 - 9e-4))
    assert int(out.status) == Status.RUNNING
    np.testing.assert_array_equal(np.asarray(out.u), U - [0.0019, 0])

    noise = proposal(U - [4e-4, 0], 4e-4)
    worse = model([0.9996, 0.0], 1.0 + 1e-5)
    out = conclude(state(radius=1.0), noise, worse)
    assert int(out.status) == Status.CONVERGED_FTOL
    np.testing.assert_array_equal(np.asarray(out.u), U - [4e-4, 0])  # taken
    assert float(out.model.cost) == 1.0 + 1e-5

    out = conclude(state(radius=4e-4), noise, worse)  # |step| = radius: not a full step
    assert int(out.status) == Status.RUNNING
    np.testing.assert_array_equal(np.asarray(out.u), U)
    np.testing.assert_allclose(float(out.radius), 0.5 * 4e-4, rtol=1e-12)

    last = conclude(state(iteration=CONFIG.max_iter - 1), noise, worse)
    assert int(last.status) == Status.CONVERGED_FTOL


def test_conclude_unresolved_full_step_that_raised_the_cost():
    """With the default tolerances (ftol 10 eps), a full step that promised 1e-9 of the
    cost (between ftol and sqrt(eps): unresolved, not the fit's end) is taken when the
    cost changed by rounding (a rise of 1e-14 relative), and rejected, the radius shrunk,
    when it rose by 1e-12, above UNRESOLVED_RISE (1e3) eps: such steps kept fits at their
    minimum drifting uphill."""
    cfg = config.with_tolerances(config.Config(max_iter=100), jnp.float64)
    tiny = proposal(U - [1e-9, 0], 1e-9)
    taken = conclude(state(radius=1.0), tiny, model([1.0, 0.0], 1.0 + 1e-14), cfg=cfg)
    assert int(taken.status) == Status.RUNNING
    np.testing.assert_array_equal(np.asarray(taken.u), U - [1e-9, 0])
    assert float(taken.radius) == 1.0
    rejected = conclude(state(radius=1.0), tiny, model([1.0, 0.0], 1.0 + 1e-12), cfg=cfg)
    assert int(rejected.status) == Status.RUNNING
    np.testing.assert_array_equal(np.asarray(rejected.u), U)
    assert float(rejected.model.cost) == 1.0 and float(rejected.radius) < 1e-8


def test_conclude_xtol():
    """CONVERGED_XTOL: a step of 1e-12 <= xtol * (xtol + |u|) (3.3e-10) to a finite but worse
    point: rejected, and no tolerance but xtol holds (the cost rose by far more than
    ftol * cost, so it is not the noise-level form of ftol); also a zero step. xtol is tested
    before the iteration cap."""
    for length in (1e-12, 0.0):
        tiny = proposal(U - [length, 0], length)
        out = conclude(state(), tiny, model([1.0, 0.0], 1.5))
        assert int(out.status) == Status.CONVERGED_XTOL and not bool(out.running), length
        np.testing.assert_array_equal(np.asarray(out.u), U)
    out = conclude(state(iteration=CONFIG.max_iter - 1), tiny, model([1.0, 0.0], 1.5))
    assert int(out.status) == Status.CONVERGED_XTOL
    big = proposal(U - [1e-8, 0], 1e-8)
    assert int(conclude(state(), big, model([1.0, 0.0], 1.5)).status) == Status.RUNNING


def test_conclude_stalled_after_the_radius_resets():
    """STALLED: a step collapsed to below xtol whose trial is NaN/Inf. The first
    max_radius_resets (2) times the radius is reset to initial_radius * max(|u|, 1) and the
    fit runs on (RUNNING, resets counted); the next time it stops as STALLED, not as
    converged on xtol. With max_radius_resets = 0 it stalls at once."""
    collapsed = proposal(U - [1e-12, 0], 1e-12)
    nan_model = model([np.nan, np.nan], np.nan)
    s = state(radius=1e-12)
    for resets in range(CONFIG.max_radius_resets):
        s = conclude(s, collapsed, nan_model)
        assert int(s.status) == Status.RUNNING and int(s.resets) == resets + 1
        np.testing.assert_allclose(float(s.radius), np.linalg.norm(U), rtol=1e-15)
        np.testing.assert_array_equal(np.asarray(s.u), U)
        assert float(s.model.cost) == 1.0  # the NaN model is not taken
        s = eqx.tree_at(lambda s: s.radius, s, jnp.asarray(1e-12, jnp.float64))  # collapses
    s = conclude(s, collapsed, nan_model)
    assert int(s.status) == Status.STALLED and not bool(s.running)
    assert int(s.resets) == CONFIG.max_radius_resets

    no_resets = config.with_tolerances(config.Config(ftol=1e-3, max_iter=5,
                                                     max_radius_resets=0), jnp.float64)
    out = conclude(state(radius=1e-12), collapsed, nan_model, cfg=no_resets)
    assert int(out.status) == Status.STALLED
    inf_cost = conclude(state(radius=1e-12, resets=2), collapsed, model([1.0, 0.0], np.inf))
    assert int(inf_cost.status) == Status.STALLED


def test_conclude_max_iterations():
    """MAX_ITERATIONS: the update that brings the count to max_iter (the first evaluation not
    counted) stops there, its good step taken; one update earlier it is RUNNING."""
    good = (step_along_gradient(0.5), model([0.5, 0.0], 0.625))
    out = conclude(state(iteration=CONFIG.max_iter - 1), *good)
    assert int(out.status) == Status.MAX_ITERATIONS and not bool(out.running)
    assert int(out.iteration) == CONFIG.max_iter
    np.testing.assert_array_equal(np.asarray(out.u), U - [0.5, 0])
    assert int(conclude(state(iteration=CONFIG.max_iter - 2), *good).status) == Status.RUNNING
    one = config.with_tolerances(config.Config(max_iter=1), jnp.float64)
    first = conclude(state(started=False, iteration=0), proposal(U, 0.0), CURRENT, cfg=one)
    assert int(first.status) == Status.RUNNING and int(first.iteration) == 0


def test_conclude_valley():
    """VALLEY: at a check (every valley_window = 4 iterations here), a window in which the
    cost fell by at most valley_rtol (1e-3 here) while the point moved outward (by more
    than 1e-2 of its norm, at least half as far as in the window before, its norm growing
    by half the move) is suspect; the second suspect window in a row stops the fit, its
    step taken. A first suspect window, a point that barely moved, a move that shrank to
    below half the previous one (a converging fit), a move across rather than outward, a
    larger fall, an iteration between checks: all run on. A check moves the anchor."""
    cfg = config.with_tolerances(config.Config(ftol=1e-12, max_iter=100, valley_window=4,
                                               valley_rtol=1e-3, valley_retry=False),
                                 jnp.float64)
    good = (step_along_gradient(0.5), model([0.5, 0.0], 0.625))  # to U - (0.5, 0), cost 0.625
    inner = U * 0.2  # |inner| = 0.45; the new point is 1.6 away and 1.6 farther out
    out = conclude(state(iteration=3, anchor=(inner, 0.6255, 1.6, True)), *good, cfg=cfg)
    assert int(out.status) == Status.VALLEY and not bool(out.running)
    np.testing.assert_array_equal(np.asarray(out.u), U - [0.5, 0])
    across = np.array([-0.5, -2.0])  # as far from the origin as the new point: not outward
    for anchor, iteration in (((inner, 0.6255, 1.6, False), 3),  # the first suspect window
                              ((U - [0.5, 1e-4], 0.6255, 1.6, True), 3),  # barely moved
                              ((inner, 0.6255, 8.0, True), 3),  # moved 1.6 after 8: shrinking
                              ((across, 0.6255, 1.6, True), 3),  # across
                              ((inner, 0.8, 1.6, True), 3),  # fell by 0.175: > 100x 1e-3 * 0.8
                              ((inner, 0.6255, 1.6, True), 2)):  # not a check
        out = conclude(state(iteration=iteration, anchor=anchor), *good, cfg=cfg)
        assert int(out.status) == Status.RUNNING, (anchor, iteration)
    first = conclude(state(iteration=3, anchor=(inner, 0.6255, 1.6, False)), *good, cfg=cfg)
    np.testing.assert_array_equal(np.asarray(first.anchor_u), U - [0.5, 0])
    assert float(first.anchor_cost) == 0.625 and bool(first.anchor_suspect)
    np.testing.assert_allclose(float(first.anchor_step), np.linalg.norm(U - [0.5, 0] - inner))
    between = conclude(state(iteration=2, anchor=(inner, 0.7, 1.6, True)), *good, cfg=cfg)
    assert float(between.anchor_cost) == 0.7 and float(between.anchor_step) == 1.6
    never = config.with_tolerances(config.Config(ftol=1e-12, max_iter=100, valley_window=0,
                                                 valley_rtol=1e-3), jnp.float64)
    out = conclude(state(iteration=3, anchor=(inner, 0.6255, 1.6, True)), *good, cfg=never)
    assert int(out.status) == Status.RUNNING


def test_conclude_valley_fast_walk():
    """A fast walk (a move of more than VALLEY_FAST_MOVE = 5e-2 of the norm in the window) is
    suspect when the cost fell by at most VALLEY_FAST_RTOL = 100 times valley_rtol (1e-5
    here), and by no more than in the window before; a walk whose fall grows (speeding up)
    or a slower one (a move of 1.5 % of the norm) needs the fall below valley_rtol itself.
    A check records the fall."""
    cfg = config.with_tolerances(config.Config(ftol=1e-12, max_iter=100, valley_window=4,
                                               valley_rtol=1e-5, valley_retry=False),
                                 jnp.float64)
    good = (step_along_gradient(0.5), model([0.5, 0.0], 0.625))  # to P = U - (0.5, 0)
    fast, slow = U * 0.2, (U - [0.5, 0]) * (1 - 0.03 / np.linalg.norm(U - [0.5, 0]))
    fell = 3e-4  # from 0.6253 to 0.625: 4.8e-4 relative, between 1e-5 and 100 x 1e-5
    for anchor, verdict in (((fast, 0.6253, 1.6, True, 1e-3), Status.VALLEY),
                            ((fast, 0.6253, 1.6, True, 1e-4), Status.RUNNING),  # speeding up
                            ((fast, 0.65, 1.6, True, 1.0), Status.RUNNING),  # fell 3.8 %
                            ((slow, 0.6253, 0.04, True, 1e-3), Status.RUNNING),  # 1.5 %
                            ((slow, 0.625001, 0.04, True, 1e-3), Status.VALLEY)):  # 1.6e-6
        out = conclude(state(iteration=3, anchor=anchor), *good, cfg=cfg)
        assert int(out.status) == verdict, anchor
    out = conclude(state(iteration=3, anchor=(fast, 0.6253, 1.6, False)), *good, cfg=cfg)
    np.testing.assert_allclose(float(out.anchor_fell), fell, rtol=1e-9)
    between = conclude(state(iteration=2, anchor=(fast, 0.6253, 1.6, False, 7.0)), *good,
                       cfg=cfg)
    assert float(between.anchor_fell) == 7.0
    unstarted = conclude(state(started=False, iteration=0), proposal(U, 0.0), CURRENT, cfg=cfg)
    assert float(unstarted.anchor_fell) == np.inf


def test_conclude_valley_crawl():
    """A crawl: a window in which the point moved by at most VALLEY_MOVE (1e-2) of its norm,
    more than rounding, outward or not, while the cost fell by at most valley_rtol (1e-5
    here) but fell, the move and the fall each within VALLEY_CRAWL_STEADY (10 %) of the
    window before's, is suspect; the second in a row stops the fit. A first suspect
    window, a move or a fall that shrank or grew (a converging fit, or one stagnating at
    its minimum in rounding noise), a larger fall, a cost that rose, a move at rounding
    level, no window before (infinite anchors, as after a restart): all run on."""
    cfg = config.with_tolerances(config.Config(ftol=1e-12, max_iter=100, valley_window=4,
                                               valley_rtol=1e-5, valley_retry=False),
                                 jnp.float64)
    good = (step_along_gradient(0.5), model([0.5, 0.0], 0.625))  # to P = (0.5, 2), cost 0.625
    beside = U - [0.5, 0] + [0.01, 0]  # 0.01 from P (0.5 % of the norm), not outward
    near = U - [0.5, 0] + [1e-10, 0]
    for anchor, verdict in (((beside, 0.625001, 0.0105, True, 1.05e-6), Status.VALLEY),
                            ((beside, 0.625001, 0.0105, False, 1.05e-6), Status.RUNNING),
                            ((beside, 0.625001, 0.02, True, 1.05e-6), Status.RUNNING),  # move
                            ((beside, 0.625001, 0.005, True, 1.05e-6), Status.RUNNING),
                            ((beside, 0.625001, 0.0105, True, 2e-6), Status.RUNNING),  # fall
                            ((beside, 0.625001, 0.0105, True, 0.5e-6), Status.RUNNING),
                            ((beside, 0.63, 0.0105, True, 5e-3), Status.RUNNING),  # 0.8 %
                            ((beside, 0.624999, 0.0105, True, -1e-6), Status.RUNNING),  # rose
                            ((near, 0.625001, 1e-10, True, 1.05e-6), Status.RUNNING),
                            ((beside, 0.625001, np.inf, True, np.inf), Status.RUNNING)):
        out = conclude(state(iteration=3, anchor=anchor), *good, cfg=cfg)
        assert int(out.status) == verdict, anchor


VALLEY_CONFIG = config.with_tolerances(config.Config(ftol=1e-12, max_iter=100, valley_window=4,
                                                     valley_rtol=1e-3), jnp.float64)
IN_VALLEY = U * 0.2  # an anchor from which the step of `test_conclude_valley` is a valley's


def test_conclude_valley_retry():
    """The retry (Config.valley_retry, the default): a first attempt that stops in a valley
    starts again from its start, unstarted (the next update evaluates it), the radius
    initial_radius * max(|metric * start|, 1) in the metric of `retry_metric` of the start's
    column norms, the valley checks reset, its end's point and cost kept. A retry that
    stops above that cost goes BACK there, unstarted; the evaluation there ends the fit
    with VALLEY at that point (no step, no iteration counted). A retry that ends lower, or
    one still running, keeps its own. The first evaluation records the column norms of J
    at the start."""
    good = (step_along_gradient(0.5), model([0.5, 0.0], 0.625))
    valley = (IN_VALLEY, 0.6255, 1.6, True)
    out = conclude(state(iteration=3, anchor=valley, start=START), *good, cfg=VALLEY_CONFIG)
    assert int(out.status) == Status.RUNNING and not bool(out.started)
    assert int(out.attempt) == gauss_newton.RETRY
    start_u, columns = START
    np.testing.assert_array_equal(np.asarray(out.u), start_u)
    metric = np.array([1.0, 0.25])  # the column norms over the largest
    np.testing.assert_array_equal(np.asarray(out.metric), metric)
    np.testing.assert_allclose(float(out.radius), VALLEY_CONFIG.initial_radius * np.linalg.norm(
        metric * start_u), rtol=1e-15)
    np.testing.assert_array_equal(np.asarray(out.first_u), U - [0.5, 0])
    assert float(out.first_cost) == 0.625 and int(out.iteration) == 4
    np.testing.assert_array_equal(np.asarray(out.anchor_u), start_u)
    assert float(out.anchor_step) == np.inf and not bool(out.anchor_suspect)
    assert float(out.anchor_fell) == np.inf

    lower_first = (gauss_newton.RETRY, U * 3, 0.5)  # the first attempt ended at cost 0.5
    out = conclude(state(iteration=3, anchor=valley, retry=lower_first), *good,
                   cfg=VALLEY_CONFIG)
    assert int(out.status) == Status.RUNNING and not bool(out.started)
    assert int(out.attempt) == gauss_newton.BACK
    np.testing.assert_array_equal(np.asarray(out.u), U * 3)
    np.testing.assert_array_equal(np.asarray(out.metric), [1.0, 1.0])
    there = model([0.1, 0.0], 0.5)
    end = conclude(out, proposal(U * 3, 0.0), there, cfg=VALLEY_CONFIG)
    assert int(end.status) == Status.VALLEY and bool(end.started)
    np.testing.assert_array_equal(np.asarray(end.u), U * 3)
    assert float(end.model.cost) == 0.5 and int(end.iteration) == int(out.iteration)

    higher_first = (gauss_newton.RETRY, U * 3, 0.7)
    out = conclude(state(iteration=3, anchor=valley, retry=higher_first), *good,
                   cfg=VALLEY_CONFIG)
    assert int(out.status) == Status.VALLEY and float(out.model.cost) == 0.625
    np.testing.assert_array_equal(np.asarray(out.u), U - [0.5, 0])
    running = conclude(state(iteration=2, anchor=valley, retry=lower_first), *good,
                       cfg=VALLEY_CONFIG)
    assert int(running.status) == Status.RUNNING and float(running.model.cost) == 0.625
    assert int(running.attempt) == gauss_newton.RETRY

    first = conclude(state(started=False, iteration=0), proposal(U, 0.0),
                     model([0.5, 0.0], 5.0, factor=[[3.0, 0.0], [4.0, 0.5]]))
    np.testing.assert_allclose(np.asarray(first.start_columns), [5.0, 0.5], rtol=1e-15)
    later = conclude(first, step_along_gradient(0.5), model([0.5, 0.0], 0.625))
    np.testing.assert_array_equal(np.asarray(later.start_columns), first.start_columns)


def test_retry_metric():
    """Column norms over the largest, floored at RETRY_MIN_METRIC (a variable without
    influence at the start); no usable largest (all zero, or not finite): ones."""
    metric = gauss_newton.retry_metric(jnp.asarray([4.0, 1.0, 0.0, 1e-5]))
    np.testing.assert_array_equal(np.asarray(metric), [1.0, 0.25, gauss_newton.RETRY_MIN_METRIC,
                                                       gauss_newton.RETRY_MIN_METRIC])
    for columns in ([0.0, 0.0], [np.inf, 1.0], [np.nan, 1.0]):
        np.testing.assert_array_equal(np.asarray(gauss_newton.retry_metric(
            jnp.asarray(columns))), [1.0, 1.0])


def test_every_status_is_reached():
    """The designed cases above cover every member of Status (a guard for new members)."""
    covered = {Status.RUNNING, Status.NONFINITE_START, Status.CONVERGED_GTOL,
               Status.CONVERGED_FTOL, Status.CONVERGED_XTOL, Status.STALLED,
               Status.MAX_ITERATIONS, Status.VALLEY}
    assert covered == set(Status)


def test_propose_on_a_linear_model():
    """`propose` on r(u) = A u - b with the model from the normal equations: with a large
    radius the trial is the least-squares solution and the predicted reduction is exactly
    the actual one (the model is the cost); with a small radius the step's length is
    between the radius and (1 + cholesky.BOUNDARY_TOLERANCE) times it and it still predicts
    the actual reduction; before the first update the trial is the current point; a
    variable at its bound with the gradient pointing out stays."""
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((8, 3)), rng.standard_normal(8)
    u0 = rng.standard_normal(3)

    def cost(u):
        return 0.5 * np.sum((a @ u - b) ** 2)

    lin = jax.jit(accumulate.from_normal_equations)(
        jnp.asarray(a.T @ a), jnp.asarray(a.T @ (a @ u0 - b)), jnp.asarray(cost(u0)))
    propose = jax.jit(gauss_newton.propose)

    def trial(radius, started=True, lower=-np.inf, upper=np.inf):
        s = state(started=started, radius=radius, current=lin, u=u0)
        p = propose(s, jnp.asarray(np.broadcast_to(lower, 3)),
                    jnp.asarray(np.broadcast_to(upper, 3)))
        return np.asarray(p.trial), float(p.predicted)

    solution = np.linalg.lstsq(a, b, rcond=None)[0]
    t, predicted = trial(1e6)
    np.testing.assert_allclose(t, solution, rtol=1e-12)
    np.testing.assert_allclose(predicted, cost(u0) - cost(solution), rtol=1e-12)
    radius = 0.2 * np.linalg.norm(solution - u0)
    t, predicted = trial(radius)
    length = np.linalg.norm(t - u0)
    assert radius * (1 - 1e-12) <= length <= (1 + cholesky.BOUNDARY_TOLERANCE) * radius
    np.testing.assert_allclose(predicted, cost(u0) - cost(t), rtol=1e-12)
    assert cost(t) < cost(u0)
    t, predicted = trial(1e6, started=False)
    np.testing.assert_array_equal(t, u0)
    assert predicted == 0
    gradient = a.T @ (a @ u0 - b)
    held = int(np.argmax(np.abs(gradient)))
    at = np.arange(3) == held  # u0[held] is the bound on the side the descent direction leaves
    if gradient[held] > 0:
        t, _ = trial(1e6, lower=np.where(at, u0, -np.inf))
    else:
        t, _ = trial(1e6, upper=np.where(at, u0, np.inf))
    assert t[held] == u0[held]
    others = np.arange(3) != held
    reduced = np.linalg.lstsq(a[:, others], b - a[:, held] * u0[held], rcond=None)[0]
    np.testing.assert_allclose(t[others], reduced, rtol=1e-10)


def test_propose_in_the_retry_metric():
    """On the retry the region is |D s| <= radius, D = `retry_metric` of the start's column
    norms ((4, 1, 2) here: D = (1, 0.25, 0.5)). The trial is the minimizer of the linear
    model in that region whichever route the model took: the Cholesky factor (cond(J) =
    10), and the eigen route (cond(J) = 1e7), whose rows D makes not orthogonal. Reference:
    numpy's s(lam) = -(A + lam D^2)^-1 g, lam found by bisection so that |D s(lam)| is the
    trial's; that length is between the radius and (1 + BOUNDARY_TOLERANCE) times it."""
    rng = np.random.default_rng(7)
    left, _, right = np.linalg.svd(rng.standard_normal((6, 3)), full_matrices=False)
    resid = rng.standard_normal(6)
    metric = np.array([1.0, 0.25, 0.5])
    for cond, rows in ((10.0, False), (1e7, True)):
        jac = left @ np.diag([1.0, 0.3, 1 / cond]) @ right
        a, g = jac.T @ jac, jac.T @ resid
        lin = accumulate.from_normal_equations(jnp.asarray(a), jnp.asarray(g),
                                               jnp.asarray(0.5 * resid @ resid))
        assert bool(lin.orthogonal_rows) == rows
        radius = 0.05
        s = state(radius=radius, current=lin, u=np.zeros(3),
                  start=(np.zeros(3), [4.0, 1.0, 2.0]), retry=(gauss_newton.RETRY, np.zeros(3),
                                                               1.0))
        np.testing.assert_array_equal(np.asarray(s.metric), metric)
        step = np.asarray(gauss_newton.propose(s, jnp.full(3, -np.inf),
                                               jnp.full(3, np.inf)).trial)
        length = np.linalg.norm(metric * step)
        assert radius * (1 - 1e-9) <= length <= (1 + cholesky.BOUNDARY_TOLERANCE) * radius

        def damped(lam, a=a, g=g):
            return -np.linalg.solve(a + lam * np.diag(metric**2), g)

        low, high = 0.0, 1e12
        for _ in range(200):  # |D s(lam)| falls as lam grows
            mid = np.sqrt(low * high) if low > 0 else high * 1e-12
            low, high = (mid, high) if np.linalg.norm(metric * damped(mid)) > length else (
                low, mid)
        np.testing.assert_allclose(step, damped(high), rtol=1e-6, atol=1e-12)


def test_final_step_is_the_gauss_newton_step_below_ftol():
    """`final_step` takes the full Gauss-Newton step -R^-1 qtr (lstsq of the linear model)
    exactly when its Newton decrement 1/2 |qtr|^2 is at most min(ftol, sqrt eps) of the
    cost, the step lies in the region and the box and every variable is free; never from
    the eigen route (rows of R orthogonal, not triangular)."""
    rng = np.random.default_rng(5)
    factor = np.triu(rng.standard_normal((3, 3))) + 3 * np.eye(3)
    u = np.array([0.5, -1.0, 2.0])
    cfg = config.with_tolerances(config.Config(), jnp.float64)
    cost = 10.0
    ftol = float(cfg.ftol)

    def last(qtr, radius=1.0, lower=-np.inf, upper=np.inf, free=True, rows=False):
        model = accumulate.Linearization.triangular(
            jnp.asarray(factor), jnp.asarray(qtr), jnp.asarray(cost),
            cholesky.condition_bound(jnp.asarray(factor)))
        model = dataclasses.replace(model, orthogonal_rows=jnp.asarray(rows))
        take, step = gauss_newton.final_step(
            model, jnp.asarray(np.full(3, free)), jnp.asarray(radius), jnp.asarray(u),
            jnp.asarray(np.broadcast_to(lower, 3)), jnp.asarray(np.broadcast_to(upper, 3)),
            cfg)
        return bool(take), np.asarray(step)

    direction = rng.standard_normal(3)
    small = direction * np.sqrt(2 * 0.5 * ftol * cost) / np.linalg.norm(direction)
    take, step = last(small)
    assert take
    np.testing.assert_allclose(step, np.linalg.solve(factor, -small), rtol=1e-12)
    assert not last(small * 1.5)[0]  # decrement 2.25 x 0.5 ftol: above ftol
    assert not last(small, radius=0.5 * np.linalg.norm(step))[0]
    assert not last(small, lower=u - 0.5 * np.abs(step), upper=u + 0.5 * np.abs(step))[0]
    assert not last(small, free=False)[0]
    assert not last(small, rows=True)[0]


# --------------------------------------------------------------------------------------------
# Large matrices: float32 decompositions of columns of norm ~1e10 stay right (a rotation test
# of an earlier kernel overflowed there, and float32 covariances were silently wrong)
# --------------------------------------------------------------------------------------------


def test_svd_of_large_float32_matrix():
    """The SVD is scale-equivariant: svd(c A) = c svd(A) while c A is representable."""
    a = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    s = np.asarray(jax.jit(linalg.svd)(jnp.asarray(a * np.float32(1e10)))[1])
    ref = np.linalg.svd(a.astype(np.float64), compute_uv=False) * 1e10
    np.testing.assert_allclose(s, ref, rtol=1e-5)


def test_symmetric_eigen_of_large_float32_matrix():
    """Eigenvalues are scale-equivariant: eig(c A) = c eig(A) while c A is representable."""
    b = np.random.default_rng(0).standard_normal((6, 3))
    a = (b.T @ b * 1e20).astype(np.float32)
    w = np.asarray(jax.jit(linalg.symmetric_eigen)(jnp.asarray(a))[0])
    ref = np.linalg.eigvalsh(a.astype(np.float64))
    np.testing.assert_allclose(np.sort(w), ref, rtol=1e-5)


def test_float32_covariance_of_a_large_scale_model_matches_float64():
    """End to end: a float32 fit whose Jacobian columns are ~1e10 gets the covariance of
    the float64 fit (before the fix it reported success with a diagonal, 5x too small)."""
    import hybrid_gn

    def model(p, x):
        return 1e9 * (p[0] * jnp.sin(x) + p[1] * (jnp.sin(x) + 0.5 * jnp.cos(x)))

    x = np.linspace(0, 6, 100)
    noise = 1 + 0.01 * np.random.default_rng(0).standard_normal(100)
    y = np.asarray(model(np.array([1.2, -0.7]), x)) * noise
    fits = [hybrid_gn.fit(model, jnp.asarray([0.5, 0.5], dtype), jnp.asarray(x, dtype),
                          jnp.asarray(y, dtype)) for dtype in (np.float32, np.float64)]
    assert all(bool(f.success) for f in fits)
    np.testing.assert_allclose(np.asarray(fits[0].pcov, np.float64), fits[1].pcov, rtol=2e-2)


# --------------------------------------------------------------------------------------------
# 1b. Cholesky factors of the normal equations and the route between J^T J and QR
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [3, 8, 10])  # 10: the LAPACK branch, beyond the unrolled one
def test_cholesky_factor_of_normal_equations(p):
    """R is upper triangular with R^T R = J^T J and R^T qtr = J^T r (1e-13 relative), and
    its condition bound lies between cond(J) and p cond(J); a singular J^T J gets an
    infinite bound, and `from_normal_equations` then falls back to the eigendecomposition,
    whose rows are orthogonal and whose R^T R is J^T J again."""
    rng = np.random.default_rng(p)
    jac = rng.standard_normal((40, p)) * np.logspace(0, 2, p)
    res = rng.standard_normal(40)
    jtj, jtr = jac.T @ jac, jac.T @ res
    factor, qtr, bound = (np.asarray(a) for a in jax.jit(cholesky.factor_normal_equations)(
        jnp.asarray(jtj), jnp.asarray(jtr)))
    assert np.all(np.tril(factor, -1) == 0)
    np.testing.assert_allclose(factor.T @ factor, jtj, rtol=0, atol=1e-13 * np.abs(jtj).max())
    np.testing.assert_allclose(factor.T @ qtr, jtr, rtol=0, atol=1e-13 * np.abs(jtr).max())
    cond = np.linalg.cond(jac)
    assert cond * (1 - 1e-12) <= bound <= p * cond

    singular = jac.copy()
    singular[:, 1] = singular[:, 0]
    jtj = singular.T @ singular
    _, _, bound = cholesky.factor_normal_equations(jnp.asarray(jtj), jnp.asarray(jtr))
    assert np.isinf(bound)
    got = accumulate.from_normal_equations(jnp.asarray(jtj), jnp.asarray(jtr), jnp.asarray(1.0))
    assert bool(got.orthogonal_rows) and got.condition > 1e6  # cond(J) at rounding level
    r_mat = np.asarray(got.factor)
    np.testing.assert_allclose(r_mat.T @ r_mat, jtj, rtol=0, atol=1e-12 * np.abs(jtj).max())


def test_route_to_qr_and_back():
    """"auto" factorization: an accepted model with cond(J) above qr_condition sends the
    next evaluation to QR, a rejected one does not; on QR the route returns to J^T J only
    below qr_condition / QR_HYSTERESIS; "qr" and "normal" never move."""
    limit = CONFIG.qr_condition
    hysteresis = gauss_newton.QR_HYSTERESIS

    def route(use_qr, condition, accept=True, cfg=CONFIG):
        new = accumulate.Linearization.triangular(jnp.eye(2), jnp.zeros(2), jnp.asarray(1.0),
                                                  condition)
        return bool(gauss_newton.next_route(jnp.asarray(use_qr), new, jnp.asarray(accept),
                                            cfg))

    assert not route(False, 0.5 * limit) and route(False, 2 * limit)
    assert not route(False, 2 * limit, accept=False)
    assert route(True, 0.5 * limit) and route(True, 1.01 * limit / hysteresis)
    assert not route(True, 0.99 * limit / hysteresis)
    assert route(True, 0.5 * limit / hysteresis, accept=False)
    for fixed, use_qr in (("qr", True), ("normal", False)):
        cfg = dataclasses.replace(CONFIG, factorization=fixed)
        assert route(use_qr, 0.0, cfg=cfg) == use_qr == route(use_qr, np.inf, cfg=cfg)
