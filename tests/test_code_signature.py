"""The memo that lets a new lambda of a known model skip tracing must never serve a stale
trace: whatever a function reads (closure cells, globals, helper functions, arrays by
content) is part of its signature, and anything whose contents cannot be told cheaply
(objects with attributes, large arrays, tracers) has no signature and is traced as before.
The reference for the fits is the closed form of the model the data was made with."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import hybrid_gn
from hybrid_gn._code_signature import code_signature

X = np.linspace(0.0, 1.0, 20)
SCALE = 2.0


def helper(x):
    return jnp.sin(x)


def make_scaled(a):
    return lambda p, x: p[0] * a * x


def test_same_code_and_values_give_one_signature():
    first = lambda p, x: p[0] * jnp.exp(-p[1] * x)  # noqa: E731
    second = lambda p, x: p[0] * jnp.exp(-p[1] * x)  # noqa: E731
    other = lambda p, x: p[0] * jnp.exp(-p[1] * x) + 0  # noqa: E731
    assert code_signature(first) == code_signature(second) is not None
    assert code_signature(first) != code_signature(other)
    assert code_signature(make_scaled(2.0)) == code_signature(make_scaled(2.0))
    assert code_signature(make_scaled(2.0)) != code_signature(make_scaled(3.0))


def test_what_a_function_reads_is_in_its_signature():
    global SCALE, helper

    def model(p, x):
        return p[0] * SCALE * helper(x)

    before = code_signature(model)
    SCALE = 3.0
    assert code_signature(model) != before
    SCALE = 2.0
    assert code_signature(model) == before
    original = helper
    helper = jnp.cos  # noqa: F811  (a global helper redefined)
    try:
        assert code_signature(model) != before
    finally:
        helper = original
    assert code_signature(model) == before


def test_values_that_cannot_be_told_cheaply_give_no_signature():
    class Holder:
        scale = 2.0

    holder = Holder()
    big = np.ones(100_000)
    assert code_signature(lambda p, x: p[0] * holder.scale * x) is None
    assert code_signature(lambda p, x: p[0] * big[: x.shape[0]] * x) is None

    @jax.jit
    def inside(a):
        assert code_signature(lambda p, x: p[0] * a * x) is None
        return a

    inside(1.0)


def test_a_mutated_closure_array_is_seen_by_the_next_fit():
    weights = np.array([1.0, 2.0])

    def model(p, x):
        return p[0] * weights[0] * x + weights[1]

    y = 3.0 * X + 2.0
    first = hybrid_gn.fit(model, jnp.array([1.0]), X, y)
    np.testing.assert_allclose(first.params, [3.0], rtol=1e-10)
    weights[0] = 3.0  # in place: same object, new contents
    second = hybrid_gn.fit(model, jnp.array([1.0]), X, y)
    np.testing.assert_allclose(second.params, [1.0], rtol=1e-10)
    fresh = lambda p, x: p[0] * weights[0] * x + weights[1]  # noqa: E731
    np.testing.assert_allclose(hybrid_gn.fit(fresh, jnp.array([1.0]), X, y).params, [1.0],
                               rtol=1e-10)


def test_library_functions_by_name_instances_not():
    import functools

    def base(p, x):
        return p[0] * x

    one, two = functools.partial(base), functools.partial(jnp.multiply, 2.0)
    assert code_signature(lambda p, x: one(p, x)) is None  # a partial instance: traced
    assert code_signature(lambda p, x: two(p, x)) is None
    assert code_signature(lambda p, x: jnp.exp(x) + np.pi) is not None
