"""Hostile input: answers that would be silently wrong, and inputs that used to die deep
inside JAX or numpy.

Every case either fits, checked against an independent reference (scipy `curve_fit`, the
same fit on clean native arrays, a solo fit), or raises a `ValueError`/`TypeError` (or a
`CheckpointError`) whose message names the argument at fault. The property-based sweep at
the end draws shapes, dtypes, bounds, sigma and NaN placement for `fit`, `fit_batch` and
`curve_fit`.
"""

from __future__ import annotations

import functools
import re

import equinox as eqx
import h5py
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from hypothesis import HealthCheck, given, settings

import hybrid_gn
from hybrid_gn import CheckpointError, Config, fit, fit_batch, fit_stream, sources
from hybrid_gn._drivers import _fit as api

N = 200
X = np.linspace(0.0, 5.0, N)
TRUTH = np.array([3.0, 1.3, 0.5])
Y = TRUTH[0] * np.exp(-TRUTH[1] * X) + TRUTH[2] + 0.01 * np.sin(7 * X)
P0 = np.array([1.0, 1.0, 0.0])


def decay(p, x):
    return p[0] * jnp.exp(-p[1] * x) + p[2]


def decay_minus(p, x):
    return p[0] * jnp.exp(-p[1] * x) - p[2]


@pytest.fixture(scope="module")
def reference() -> hybrid_gn.Result:
    return fit(decay, P0, X, Y)


def close(a, b, rtol=1e-10):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=1e-12)


# ------------------------------------------------------------------------------------------
# Resume only into the same problem
# ------------------------------------------------------------------------------------------

STREAM = {"block_size": 64, "progress": False}


def test_resume_with_another_model_is_refused(tmp_path):
    """The fingerprint holds the model's computation, not its name: a sign flip is seen."""
    path = tmp_path / "c.ckpt"
    fit_stream(decay, P0, (X, Y), checkpoint=path, **STREAM)
    other = decay_minus
    other.__name__ = other.__qualname__ = "decay"  # same name, other computation
    with pytest.raises(CheckpointError, match="different problem.*model"):
        fit_stream(other, P0, (X, Y), resume=path, **STREAM)
    with pytest.raises(CheckpointError, match="different problem.*model"):
        fit_stream(lambda p, x: p[0] * jnp.exp(-p[1] * x) - p[2], P0, (X, Y), resume=path,
                   **STREAM)


def _interrupted_checkpoint(tmp_path, source) -> str:
    """A checkpoint written after two Gauss-Newton passes of a fit stopped by max_iter."""
    path = tmp_path / "c.ckpt"
    fit_stream(decay, P0, source, checkpoint=path, checkpoint_every=1,
               config=Config(max_iter=2), **STREAM)
    return path


def test_resume_with_data_changed_after_the_first_points_is_refused(tmp_path):
    path = _interrupted_checkpoint(tmp_path, (X, Y))
    changed = Y.copy()
    changed[100:] *= 3
    with pytest.raises(CheckpointError, match="different data"):
        fit_stream(decay, P0, (X, changed), resume=path, config=Config(max_iter=2), **STREAM)
    # the same data resumes (the digest does not depend on how the source cuts its blocks)
    pieces = [(X[i:i + 37], Y[i:i + 37]) for i in range(0, N, 37)]
    result = fit_stream(decay, P0, lambda: iter(pieces), resume=path, config=Config(max_iter=2),
                        **STREAM)
    assert int(result.gn_iterations) == 2


def test_resume_from_a_finished_checkpoint_checks_the_data(tmp_path, reference):
    path = tmp_path / "c.ckpt"
    fit_stream(decay, P0, (X, Y), checkpoint=path, **STREAM)
    close(fit_stream(decay, P0, (X, Y), resume=path, **STREAM).params, reference.params, 1e-9)
    changed = Y.copy()
    changed[-1] += 1e-9
    with pytest.raises(CheckpointError, match="different data"):
        fit_stream(decay, P0, (X, changed), resume=path, **STREAM)


class _NoPasses(sources.ArraySource):
    """Arrays whose full passes are interrupted (as by Ctrl-C): only the warmup runs."""

    def reader(self):
        raise KeyboardInterrupt


def test_resume_during_warmup_checks_the_subsample(tmp_path):
    config = Config(warmup=True, warmup_max_points=50)
    path = tmp_path / "w.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit_stream(decay, P0, _NoPasses(X, Y), checkpoint=path, checkpoint_every=1,
                   config=config, **STREAM)
    changed = Y.copy()
    changed[100::4] += 1.0  # beyond the first points, on the strided subsample
    with pytest.raises(CheckpointError, match="different data: the warmup subsample"):
        fit_stream(decay, P0, (X, changed), resume=path, config=config, **STREAM)
    fit_stream(decay, P0, (X, Y), resume=path, config=config, **STREAM)  # the same data


class _ReplacedFile(sources.HDF5Source):
    """An HDF5 source whose file is rewritten before pass `when` (as a user might)."""

    def __init__(self, path, when: int, x, y):
        super().__init__(path)
        self.when, self.new, self.passes = when, (x, y), 0

    def reader(self):
        self.passes += 1
        if self.passes == self.when:
            write_h5(self.path, *self.new)
        return super().reader()


def write_h5(path, x, y, dtype="<f8") -> None:
    with h5py.File(path, "w") as f:
        f["x"] = np.asarray(x, dtype)
        f["y"] = np.asarray(y, dtype)


@pytest.mark.parametrize("how", ["longer", "same size, new values"])
def test_file_replaced_between_passes_is_seen(tmp_path, how):
    path = tmp_path / "d.h5"
    write_h5(path, X, Y)
    if how == "longer":
        x2 = np.concatenate([X, X + 5])
        new = (x2, np.concatenate([Y, Y]))
    else:
        new = (X, Y * 1.5)
    with pytest.raises(ValueError, match="source changed between passes"):
        fit_stream(decay, P0, _ReplacedFile(path, 3, *new), **STREAM)


# ------------------------------------------------------------------------------------------
# Models that change are seen
# ------------------------------------------------------------------------------------------


class Scaled:
    """A plain callable object with a mutable attribute."""

    def __init__(self, scale):
        self.scale = scale

    def __call__(self, p, x):
        return self.scale * decay(p, x)

    def method(self, p, x):
        return self.scale * decay(p, x)


def test_mutated_callable_object_gets_a_new_program(reference):
    model = Scaled(2.0)
    first = fit(model, P0, X, Y).params[0]
    model.scale = 4.0
    close(fit(model, P0, X, Y).params[0], first / 2, 1e-6)
    close(first, reference.params[0] / 2, 1e-6)


def test_mutated_bound_method_and_closure_are_seen():
    model = Scaled(2.0)
    first = fit(model.method, P0, X, Y).params[0]
    model.scale = 4.0
    close(fit(model.method, P0, X, Y).params[0], first / 2, 1e-6)

    factor = np.array([2.0])

    def closure(p, x):
        return factor[0] * decay(p, x)

    first = fit(closure, P0, X, Y).params[0]
    factor[0] = 4.0  # mutated in place: the constant baked into the program changed
    close(fit(closure, P0, X, Y).params[0], first / 2, 1e-6)


class Module(eqx.Module):
    scale: jax.Array

    def __call__(self, p, x):
        return self.scale * decay(p, x)


def scaled(scale, p, x):
    return scale * decay(p, x)


@pytest.mark.parametrize("make", [Module, lambda s: functools.partial(scaled, s)],
                         ids=["equinox-module", "partial"])
def test_array_models_are_data_not_constants(make, reference):
    """The model's arrays are traced: a new value gives the new answer without a recompile."""
    first = fit(make(jnp.asarray(2.0)), P0, X, Y)
    compiled = api._fit.cache_size()
    second = fit(make(jnp.asarray(4.0)), P0, X, Y)
    assert api._fit.cache_size() == compiled
    close(first.params[0], reference.params[0] / 2, 1e-6)
    close(second.params[0], reference.params[0] / 4, 1e-6)


def test_a_new_lambda_of_the_same_code_reuses_the_program(reference):
    """Functions compare by what they compute: a fresh lambda per call (as a scipy user
    writes) compiles once; one with another constant is another model (new program)."""
    def fresh(scale):
        return lambda p, x: scale * decay(p, x)

    first = fit(fresh(2.5), P0, X, Y)
    compiled = api._fit.cache_size()
    again = fit(fresh(2.5), P0, X, Y)
    assert api._fit.cache_size() == compiled
    np.testing.assert_array_equal(again.params, first.params)
    other = fit(fresh(1.25), P0, X, Y)  # a constant no other test uses: a new program
    assert api._fit.cache_size() == compiled + 1
    close(other.params[0], 2 * first.params[0], 1e-6)
    close(first.params[0], reference.params[0] / 2.5, 1e-6)
    popt = hybrid_gn.curve_fit(lambda x, a, b, c: a * jnp.exp(-b * x) + c, X, Y, p0=P0)[0]
    compiled = api._fit.cache_size()
    again = hybrid_gn.curve_fit(lambda x, a, b, c: a * jnp.exp(-b * x) + c, X, Y, p0=P0)[0]
    assert api._fit.cache_size() == compiled
    np.testing.assert_array_equal(again, popt)


def test_a_known_curve_fit_model_on_new_values_is_checked_and_fitted_afresh():
    """A later `curve_fit` call of known code on data of known shapes skips the shape checks
    and the tracing, not the data or the value checks: new constants, new y and sigma give
    scipy's answers, and bad values raise what a first call raises."""
    def model(scale):
        return lambda x, a, b, c: scale * (a * jnp.exp(-b * x) + c)

    def numpy_model(x, a, b, c):
        return a * np.exp(-b * x) + c

    sigma = 0.01 + 0.02 * X
    for scale, y in ((1.0, Y), (1.0, 1.5 * Y + 0.1), (2.0, Y), (2.0, 1.5 * Y + 0.1)):
        for s in (sigma, 2 * sigma[::-1]):
            popt, pcov = hybrid_gn.curve_fit(model(scale), X, y, p0=P0, sigma=s)
            ref, ref_cov = scipy.optimize.curve_fit(numpy_model, X, y / scale, p0=P0,
                                                    sigma=s / scale)
            close(popt, ref, 1e-6)
            close(pcov, ref_cov, 1e-4)
    bad_y = Y.copy()
    bad_y[3] = np.nan
    with pytest.raises(ValueError, match="ydata contains NaN"):
        hybrid_gn.curve_fit(model(1.0), X, bad_y, p0=P0, sigma=sigma)
    with pytest.raises(ValueError, match="sigma must be strictly positive"):
        hybrid_gn.curve_fit(model(1.0), X, Y, p0=P0, sigma=np.where(X > 2, sigma, 0.0))
    with pytest.raises(TypeError, match="sigma is complex"):
        hybrid_gn.curve_fit(model(1.0), X, Y, p0=P0, sigma=sigma + 0j)
    bounds = ([0, 0, -1], [10, 10, 1])
    hybrid_gn.curve_fit(model(1.0), X, Y, p0=P0, bounds=bounds)
    with pytest.raises(ValueError, match="infeasible"):
        hybrid_gn.curve_fit(model(1.0), X, Y, p0=[20.0, 1.0, 0.0], bounds=bounds)


def test_closures_over_outer_tracers_compare_by_identity():
    """Under an outer jit a model closing over a traced value is known only by its shape:
    two such closures must not share a program (each fit sees its own value)."""
    def amplitude(scale):
        return fit(lambda p, x: scale * decay(p, x), P0, X, Y).params[0]

    both = jax.jit(lambda s, t: (amplitude(s), amplitude(t)))(2.0, 4.0)
    close(both[0], 2 * both[1], 1e-6)


def test_gradient_with_respect_to_the_model_arrays():
    """d popt / d scale = -popt_a / scale for the amplitude (popt_a * scale is fixed)."""
    def amplitude(scale):
        return fit(Module(scale), P0, X, Y).params[0]

    scale = jnp.asarray(2.0)
    close(jax.grad(amplitude)(scale), -amplitude(scale) / scale, 1e-6)


def test_curve_fit_and_fit_stream_see_a_mutated_model(reference):
    model = Scaled(2.0)

    def f(x, a, b, c):
        return model(jnp.array([a, b, c]), x)

    first = hybrid_gn.curve_fit(f, X, Y, p0=P0)[0][0]
    model.scale = 4.0
    close(hybrid_gn.curve_fit(f, X, Y, p0=P0)[0][0], first / 2, 1e-6)

    model = Scaled(2.0)
    first = fit_stream(model, P0, (X, Y), **STREAM).params[0]
    model.scale = 4.0
    close(fit_stream(model, P0, (X, Y), **STREAM).params[0], first / 2, 1e-6)


# ------------------------------------------------------------------------------------------
# Items of the reproducer list
# ------------------------------------------------------------------------------------------


def test_curve_fit_check_finite_none_checks_like_scipy():
    y = np.where(X > 4, np.nan, Y)
    f = lambda x, a, b, c: a * jnp.exp(-b * x) + c  # noqa: E731
    with pytest.raises(ValueError, match="NaN"):
        hybrid_gn.curve_fit(f, X, y, p0=P0, check_finite=None)
    with pytest.raises(ValueError):  # scipy agrees
        scipy.optimize.curve_fit(lambda x, a, b, c: a * np.exp(-b * x) + c, X, y, p0=P0,
                                 check_finite=None)


SMALL_TOURNAMENT = hybrid_gn.Tournament(n_candidates=4, rounds=1, iterations=3)


def test_multistart_on_nan_data_returns_the_start_with_a_failed_status():
    y = Y.copy()
    y[5] = np.nan
    for seed in range(2):
        result = hybrid_gn.fit_multistart(decay, P0, X, y, key=jax.random.key(seed),
                                          check_finite=False, tournament=SMALL_TOURNAMENT)
        assert not bool(result.success)
        close(result.params, P0, 0)
        assert int(result.status) == int(fit(decay, P0, X, y, check_finite=False).status)


def test_curve_fit_with_a_covariance_matrix_equals_scipy():
    rng = np.random.default_rng(0)
    n = 40
    x = np.linspace(0, 4, n)
    a = rng.uniform(0.5, 1.0, (n, n)) * 0.01
    cov = a @ a.T + np.diag(rng.uniform(0.01, 0.02, n))
    y = 2 * np.exp(-0.7 * x) + 0.3 + rng.multivariate_normal(np.zeros(n), cov)
    popt, pcov = hybrid_gn.curve_fit(lambda x, a, b, c: a * jnp.exp(-b * x) + c, x, y,
                                     p0=[1.0, 1.0, 0.0], sigma=cov)
    ref, ref_cov = scipy.optimize.curve_fit(lambda x, a, b, c: a * np.exp(-b * x) + c, x, y,
                                            p0=[1.0, 1.0, 0.0], sigma=cov, ftol=1e-15,
                                            xtol=1e-15, gtol=1e-15)
    close(popt, ref, 1e-6)
    close(pcov, ref_cov, 1e-4)


BIG = np.dtype(">f8")


def test_big_endian_arrays_fit_like_native_ones(tmp_path, reference):
    xb, yb = X.astype(BIG), Y.astype(BIG)
    close(fit(decay, P0.astype(BIG), xb, yb, sigma=np.ones(N, BIG)).params, reference.params)
    batch = fit_batch(decay, np.tile(P0, (2, 1)).astype(BIG), np.tile(xb, (2, 1)),
                      np.tile(yb, (2, 1)))
    close(batch.params, np.tile(reference.params, (2, 1)))
    native = fit_stream(decay, P0, (X, Y), **STREAM)
    close(fit_stream(decay, P0, (xb, yb), **STREAM).params, native.params)
    close(fit_stream(decay, P0, sources.ArraySource(xb, yb), **STREAM).params, native.params)
    path = tmp_path / "big.h5"
    write_h5(path, X, Y, dtype=">f8")
    close(fit_stream(decay, P0, sources.HDF5Source(path), **STREAM).params, native.params)


def test_checkpoint_path_is_checked_before_the_first_pass(tmp_path):
    passes = []

    def source():
        passes.append(1)
        yield X, Y

    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing"))):
        fit_stream(decay, P0, source, checkpoint=tmp_path / "missing" / "c.ckpt", **STREAM)
    (tmp_path / "file").write_text("")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fit_stream(decay, P0, source, checkpoint=tmp_path / "file" / "c.ckpt", **STREAM)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        fit_stream(decay, P0, source, checkpoint=tmp_path, **STREAM)
    assert passes == []


def test_stale_temporary_files_are_removed(tmp_path):
    """A save killed mid-write leaves `.name.*.tmp`; the next fit with that path removes it."""
    stale = tmp_path / ".c.ckpt.abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    fit_stream(decay, P0, (X, Y), checkpoint=tmp_path / "c.ckpt", **STREAM)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt"]


def test_failed_save_names_the_path_and_leaves_no_temporary(tmp_path, monkeypatch):
    from hybrid_gn._drivers import _checkpoint as checkpoints

    def failing_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("no space left on device")

    monkeypatch.setattr(checkpoints.np, "savez", failing_savez)
    path = tmp_path / "c.ckpt"
    with pytest.raises(OSError, match=re.escape(str(path)) + ".*no space left"):
        fit_stream(decay, P0, (X, Y), checkpoint=path, **STREAM)
    assert list(tmp_path.iterdir()) == []


PARTIAL_SCRIPT = """
import functools, sys
import jax.numpy as jnp, numpy as np
import hybrid_gn

class Model:
    def __init__(self, scale):
        self.scale = scale
    def __call__(self, p, x):
        return self.scale * (p[0] * jnp.exp(-p[1] * x) + p[2])

def scaled(scale, p, x):
    return scale * (p[0] * jnp.exp(-p[1] * x) + p[2])

x = np.linspace(0.0, 5.0, 200)
y = 3.0 * np.exp(-1.3 * x) + 0.5 + 0.01 * np.sin(7 * x)
kind, path, mode = sys.argv[1:]
model = Model(2.0) if kind == "instance" else functools.partial(scaled, np.float64(2.0))
config = hybrid_gn.Config(max_iter=2) if mode == "write" else hybrid_gn.Config(max_iter=2)
kwargs = {"checkpoint": path} if mode == "write" else {"resume": path}
r = hybrid_gn.fit_stream(model, np.array([1.0, 1.0, 0.0]), (x, y), block_size=64,
                         progress=False, config=config, **kwargs)
print(repr(np.asarray(r.params).tolist()))
"""


@pytest.mark.parametrize("kind", ["instance", "partial"])
def test_partial_and_instance_checkpoints_resume_in_a_new_process(tmp_path, kind):
    import subprocess
    import sys

    path = str(tmp_path / "c.ckpt")
    outs = [subprocess.run([sys.executable, "-c", PARTIAL_SCRIPT, kind, path, mode],
                           capture_output=True, text=True, timeout=300) for mode in
            ("write", "resume")]
    for out in outs:
        assert out.returncode == 0, out.stderr[-2000:]
    assert outs[0].stdout == outs[1].stdout


def test_one_shot_generators_are_named():
    chunks = ((X[i:i + 50], Y[i:i + 50]) for i in range(0, N, 50))
    with pytest.raises(ValueError, match="fresh iterator for each pass"):
        fit_stream(decay, P0, lambda: chunks, **STREAM)
    with pytest.raises(TypeError, match="can be read only once"):
        fit_stream(decay, P0, (c for c in [(X, Y)]), **STREAM)


@pytest.mark.parametrize("field, value", [
    ("accept_ratio", 2.0), ("accept_ratio", -0.1), ("max_radius_resets", -1),
    ("max_radius_resets", 1.5), ("qr_condition", 0.5), ("qr_condition", float("nan")),
    ("max_iter", 2.5), ("max_iter", 0), ("chunk_size", True), ("chunk_size", 0),
    ("trace_length", "10"), ("warmup", 1), ("warmup", "yes"), ("plateau_patience", 0),
    ("ftol", -1.0), ("ftol", "tight"), ("initial_radius", 0.0), ("warmup_max_points", 0),
    ("valley_retry", "no"), ("valley_retry", 1),
])
def test_config_fields_are_checked(field, value):
    with pytest.raises(ValueError, match=field):
        Config(**{field: value})


# ------------------------------------------------------------------------------------------
# Errors that name the argument, or the right answer
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
def test_half_precision_data_is_fitted_in_float32(dtype):
    x, y = X.astype(dtype), Y.astype(dtype)
    result = fit(decay, P0.astype(np.float32), x, y)
    assert result.params.dtype == np.float32
    ref = fit(decay, P0.astype(np.float32), np.asarray(x, np.float32), np.asarray(y, np.float32))
    close(result.params, ref.params, 1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda: fit(decay, P0, X, Y.astype(complex)), "y is complex"),
    (lambda: fit(lambda p, x: decay(p, x) + 0j, P0, X, Y), "model returns complex"),
    (lambda: fit(decay, P0 + 0j, X, Y), "p0 is complex"),
    (lambda: fit(decay, P0, X, Y, bounds=([0, 0], [9, 9])), r"bounds \(lower\).*p = 3"),
    (lambda: fit(decay, P0, X, Y, bounds=([0, None, 0], 9)), r"bounds \(lower\).*None"),
    (lambda: fit(decay, P0, X, Y, bounds=(0, 9, 10)), "bounds must be a pair"),
    (lambda: fit(lambda p, x: decay([p["a"], p["b"], p["c"]], x),
                 {"a": 1.0, "b": 1.0, "c": 0.0}, X, Y,
                 bounds=({"a": 0.0, "b": 0.0}, {"a": 9.0, "b": 9.0, "c": 9.0})),
     r"bounds \(lower\).*keys \['a', 'b'\]"),
    (lambda: fit(decay, P0, X, Y, config={"ftol": 1e-9}), "config must be"),
    (lambda: fit(decay, P0, X, np.array(["a"] * N)), "y must hold real numbers"),
    (lambda: fit(lambda p, x: np.exp(p[0]) * x, P0, X, Y), "model could not be traced"),
    (lambda: fit(decay, P0, X[:10], Y), "x and y disagree"),
    (lambda: fit(decay, [], X, Y), "p0 has no parameters"),
    (lambda: fit_batch(decay, np.zeros((0, 3)), np.zeros((0, 10)), np.zeros((0, 10))),
     "no problems"),
    (lambda: fit_batch(decay, np.tile(P0, (4, 1)), np.tile(X, (3, 1)), np.tile(Y, (4, 1))),
     "x must have a leading batch axis"),
    (lambda: fit_batch(decay, np.tile(P0, (4, 1)), np.tile(X, (4, 1)),
                       np.tile(Y, (4, 1)).astype(complex)), "y is complex"),
    (lambda: fit_stream(decay, P0, lambda: iter([(X[:100], Y[:100]), (X[100:], Y[100:] + 0j)]),
                        **STREAM), r"chunk 1 \(points 100 to 199\): y has dtype complex"),
    (lambda: hybrid_gn.fit_multistart(decay, P0, X, Y, key="seed"), "key must be"),
    (lambda: hybrid_gn.fit_multistart(decay, P0, X, Y, key=0,
                                      tournament={"n_candidates": 4}), "tournament must be"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_plain_lists_and_none_bounds_fit(reference):
    close(fit(decay, list(P0), list(X), list(Y)).params, reference.params)
    bounded = fit(decay, P0, X, Y, bounds=(None, [10.0, 10.0, 10.0]))
    close(bounded.params, reference.params, 1e-8)
    batch = fit_batch(decay, np.tile(P0, (2, 1)), [list(X), list(X[:100])],
                      [list(Y), list(Y[:100])])
    close(batch.params[0], reference.params)
    short = scipy.optimize.curve_fit(lambda x, a, b, c: a * np.exp(-b * x) + c, X[:100],
                                     Y[:100], p0=P0, ftol=1e-15, xtol=1e-15, gtol=1e-15)[0]
    close(batch.params[1], short, 1e-7)


def test_fit_batch_with_per_problem_bounds_equals_solo_fits():
    lower = np.array([[0.0, 0.0, -1.0], [0.0, 1.5, -1.0], [3.2, 0.0, -1.0]])
    upper = np.array([[10.0, 10.0, 1.0], [10.0, 10.0, 1.0], [10.0, 10.0, 0.4]])
    start = np.array([[1.0, 1.0, 0.0], [1.0, 2.0, 0.0], [3.5, 1.0, 0.0]])
    batch = fit_batch(decay, start, np.tile(X, (3, 1)), np.tile(Y, (3, 1)),
                      bounds=(lower, upper))
    for b in range(3):
        solo = fit(decay, start[b], X, Y, bounds=(lower[b], upper[b]))
        close(batch.params[b], solo.params, 1e-9)
    assert batch.params[1, 1] == pytest.approx(1.5)  # held at its own lower bound
    # per-problem lower bounds as nested lists, one shared upper bound
    mixed = fit_batch(decay, start, np.tile(X, (3, 1)), np.tile(Y, (3, 1)),
                      bounds=(lower.tolist(), 10.0))
    for b in range(3):
        close(mixed.params[b], fit(decay, start[b], X, Y, bounds=(lower[b], 10.0)).params, 1e-9)
    with pytest.raises(ValueError, match="problem 2: p0 is outside the bounds"):
        fit_batch(decay, start[[0, 1, 0]], np.tile(X, (3, 1)), np.tile(Y, (3, 1)),
                  bounds=(lower, upper))


def test_multistart_accepts_an_int_seed():
    a = hybrid_gn.fit_multistart(decay, P0, X, Y, key=3, tournament=SMALL_TOURNAMENT)
    b = hybrid_gn.fit_multistart(decay, P0, X, Y, key=jax.random.key(3),
                                 tournament=SMALL_TOURNAMENT)
    close(a.params, b.params, 0)


# ------------------------------------------------------------------------------------------
# Property-based sweep: fit, fit_batch and curve_fit on drawn inputs
# ------------------------------------------------------------------------------------------

ARGUMENT = re.compile(r"\b(x|y|xdata|ydata|sigma|p0|bounds|mask|model|config|problem \d+)\b")
SIZES = [1, 2, 3, 12, 40]  # few shapes: each compiles a program
DTYPES = ["<f8", ">f8", "<f4", "<f2", "<i4", "<c16"]


@st.composite
def cases(draw):
    n = draw(st.sampled_from(SIZES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = np.linspace(0.0, 4.0, n)
    y = 2.0 * np.exp(-0.8 * x) + 0.3 + 0.05 * rng.standard_normal(n)
    p0 = np.array([1.0, 1.0, 0.0])
    sigma = draw(st.sampled_from([None, "ones", "random", "zero", "short"]))
    sigma = {None: None, "ones": np.ones(n), "random": rng.uniform(0.05, 0.2, n),
             "zero": np.where(np.arange(n) == 0, 0.0, 1.0), "short": np.ones(max(n - 1, 0))
             }[sigma]
    bounds = draw(st.sampled_from([None, "box", "crossed", "short", "nan", "outside"]))
    bounds = {None: None, "box": ([0.0, 0.0, -1.0], [10.0, 5.0, 1.0]),
              "crossed": ([0.0, 2.0, -1.0], [10.0, 1.0, 1.0]), "short": ([0.0], [1.0, 2.0]),
              "nan": ([0.0, np.nan, -1.0], 10.0), "outside": ([2.0, 0.0, -1.0], 10.0)}[bounds]
    bad = draw(st.sampled_from([None, "y", "x", "sigma", "p0"]))
    target = {"y": y, "x": x, "sigma": sigma, "p0": p0}.get(bad)
    if target is not None and target.size:
        target[draw(st.integers(0, target.size - 1))] = draw(st.sampled_from([np.nan, np.inf]))
    dtype = draw(st.sampled_from(DTYPES))
    cast = draw(st.sampled_from(["x", "y", "both"]))
    if cast in ("x", "both"):
        x = x.astype(dtype)
    if cast in ("y", "both"):
        y = y.astype(dtype)
    return x, y, p0, sigma, bounds, draw(st.booleans())


def _expect_named_error_or_good_fit(run, x, y, p0, sigma, bounds):
    try:
        popt, success, cost = run()
    except (ValueError, TypeError) as error:
        assert ARGUMENT.search(str(error)), f"message names no argument: {error}"
        return
    if success:
        assert np.all(np.isfinite(popt)) and np.isfinite(cost), "NaN result with success"
        clean = all(np.all(np.isfinite(np.asarray(a, complex))) for a in (x, y, p0)) and (
            sigma is None or np.all(np.isfinite(sigma)))
        if clean and not np.iscomplexobj(y) and not np.iscomplexobj(x):
            _compare_with_scipy(x, y, p0, sigma, bounds, cost)


def _compare_with_scipy(x, y, p0, sigma, bounds, cost) -> None:
    """Our cost is no worse than scipy's (both from p0), where scipy succeeds."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    lb, ub = (-np.inf, np.inf) if bounds is None else bounds
    try:
        ref, _ = scipy.optimize.curve_fit(lambda x, a, b, c: a * np.exp(-b * x) + c, x, y,
                                          p0=p0, sigma=sigma, bounds=(lb, ub), maxfev=10000)
    except (RuntimeError, ValueError):
        return
    w = 1.0 if sigma is None else 1 / np.asarray(sigma)
    ref_cost = 0.5 * np.sum((w * (ref[0] * np.exp(-ref[1] * x) + ref[2] - y)) ** 2)
    assert cost <= ref_cost * (1 + 1e-6) + 1e-10 * max(1.0, np.sum(y**2))


SWEEP = settings(max_examples=12, deadline=None, derandomize=True,
                 suppress_health_check=list(HealthCheck))
SWEEP_SLOW = settings(max_examples=150, deadline=None,
                      suppress_health_check=list(HealthCheck))


def _sweep_fit(case):
    x, y, p0, sigma, bounds, check = case

    def run():
        r = fit(decay, p0, x, y, sigma=sigma, bounds=bounds, check_finite=check)
        return np.asarray(r.params), bool(r.success), float(r.cost)

    _expect_named_error_or_good_fit(run, x, y, p0, sigma, bounds)


def _sweep_batch(case):
    x, y, p0, sigma, bounds, check = case

    def run():
        def tile(a):
            return (None if a is None else np.stack([a, a]))
        r = fit_batch(decay, tile(p0), tile(x), tile(y), sigma=tile(sigma), bounds=bounds,
                      check_finite=check)
        assert np.array_equal(np.asarray(r.params[0]), np.asarray(r.params[1]),
                              equal_nan=True)
        return np.asarray(r.params[0]), bool(r.success[0]), float(r.cost[0])

    _expect_named_error_or_good_fit(run, x, y, p0, sigma, bounds)


def _sweep_curve_fit(case):
    x, y, p0, sigma, bounds, check = case

    def run():
        popt, _ = hybrid_gn.curve_fit(lambda x, a, b, c: a * jnp.exp(-b * x) + c, x, y,
                                      p0=p0, sigma=sigma, check_finite=check,
                                      bounds=(-np.inf, np.inf) if bounds is None else bounds)
        w = 1.0 if sigma is None else 1 / np.asarray(sigma, float)
        xf, yf = np.asarray(x, float), np.asarray(y, float)
        cost = 0.5 * np.sum((w * (popt[0] * np.exp(-popt[1] * xf) + popt[2] - yf)) ** 2)
        return popt, True, cost

    try:
        _expect_named_error_or_good_fit(run, x, y, p0, sigma, bounds)
    except RuntimeError as error:  # scipy's way to say "no convergence"
        assert "Optimal parameters not found" in str(error)


DRIVERS = {"fit": _sweep_fit, "fit_batch": _sweep_batch, "curve_fit": _sweep_curve_fit}


@pytest.mark.parametrize("driver", DRIVERS)
@SWEEP
@given(case=cases())
def test_sweep(driver, case):
    DRIVERS[driver](case)


@pytest.mark.slow
@pytest.mark.parametrize("driver", DRIVERS)
@SWEEP_SLOW
@given(case=cases())
def test_sweep_long(driver, case):
    DRIVERS[driver](case)


# ------------------------------------------------------------------------------------------
# The data digest that ties a checkpoint to its data
# ------------------------------------------------------------------------------------------


def test_digest_is_independent_of_chunking_and_sees_every_change():
    """Reference: the same digest folded in one chunk; any single changed word, a swap of
    two points, or a changed column of a 2-D x must change it; padding must not."""
    from hybrid_gn import _digest

    rng = np.random.default_rng(0)
    n = 1000
    x = {"a": rng.standard_normal(n), "b": rng.standard_normal((n, 2)).astype(np.float32)}
    y, w = rng.standard_normal(n), rng.uniform(0.5, 2.0, n)

    def digest(x, y, w, cuts=(0, n)):
        d = _digest.empty()
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            d = _digest.fold(d, lo, jax.tree.map(lambda a, lo=lo, hi=hi: a[lo:hi], x),
                             y[lo:hi], w[lo:hi])
        return _digest.text(d)

    whole = digest(x, y, w)
    assert digest(x, y, w, (0, 7, 600, n)) == whole
    padded = jax.tree.map(lambda a: np.concatenate([a, a[-3:]]), (x, y))
    assert digest(*padded, np.concatenate([w, np.zeros(3)]), (0, n + 3)) == whole
    changes = []
    for i in (0, 500, n - 1):
        y2 = y.copy()
        y2[i] = np.nextafter(y2[i], np.inf)  # one ulp
        changes.append(digest(x, y2, w))
        w2 = w.copy()
        w2[i] *= 2
        changes.append(digest(x, y, w2))
        b2 = x["b"].copy()
        b2[i, 1] += 1
        changes.append(digest({"a": x["a"], "b": b2}, y, w))
    swapped = y.copy()
    swapped[[3, 4]] = swapped[[4, 3]]
    changes.append(digest(x, swapped, w))
    assert whole not in changes and len(set(changes)) == len(changes)
