"""Derivatives of the fitted parameters (implicit differentiation at the solution).

References: the closed form of linear least squares; the implicit-function
formula evaluated independently here (full Hessian of the loss in parameter
space by `jax.hessian`); central finite differences of the whole fit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import hybrid_gn

X = jnp.linspace(0.0, 3.0, 40)
TRUE = jnp.array([2.0, 1.3, 0.4])
Y = TRUE[0] * jnp.exp(-TRUE[1] * X) + TRUE[2] + 0.05 * jnp.sin(7 * X)  # nonzero residuals
SIGMA = 0.5 + 0.3 * jnp.cos(X) ** 2
P0 = jnp.array([1.5, 1.0, 0.3])
TIGHT = hybrid_gn.Config(ftol=0.0, xtol=0.0, gtol=1e-14, warmup=False)


def decay(p, x):
    return p[0] * jnp.exp(-p[1] * x) + p[2]


def decay_args(p, x, args):
    """Extra model arguments: a known stretch exponent and background slope."""
    return p[0] * jnp.exp(-p[1] * x ** args["power"]) + p[2] + args["slope"] * x


def fitted(y=Y, x=X, sigma=SIGMA, args=None, model=decay):
    return hybrid_gn.fit(model, P0, x, y, sigma=sigma, args=args, config=TIGHT).params


def implicit_reference(theta, x, y, sigma, wrt: str):
    """-H^-1 d^2L/(dtheta d eta) with the full Hessian, in parameter space."""
    def loss(t, e):
        xx, yy, ss = {"y": (x, e, sigma), "x": (e, y, sigma), "sigma": (x, y, e)}[wrt]
        r = (decay(t, xx) - yy) / ss
        return 0.5 * r @ r

    eta = {"y": y, "x": x, "sigma": sigma}[wrt]
    hessian = jax.hessian(loss)(theta, eta)
    mixed = jax.jacfwd(jax.grad(loss), argnums=1)(theta, eta)
    return -np.linalg.solve(hessian, mixed)


def test_linear_least_squares_closed_form():
    def line(p, x):
        return p[0] + p[1] * x

    def params(y):
        return hybrid_gn.fit(line, jnp.zeros(2), X, y).params

    design = np.stack([np.ones_like(X), np.asarray(X)], axis=1)
    closed = np.linalg.solve(design.T @ design, design.T)  # d params / d y
    np.testing.assert_allclose(jax.jacfwd(params)(Y), closed, atol=1e-12)


def test_matches_implicit_function_formula_with_full_hessian():
    """d params / d(x, y, sigma) in reverse and forward mode, one program each."""
    theta = fitted()

    def fn(eta):
        x, y, sigma = eta
        return fitted(y=y, x=x, sigma=sigma)

    eta = (X, Y, SIGMA)
    reverse = jax.jacrev(fn)(eta)
    forward = jax.jacfwd(fn)(eta)
    for i, wrt in enumerate(("x", "y", "sigma")):
        reference = implicit_reference(theta, X, Y, SIGMA, wrt)
        scale = np.max(np.abs(reference))
        np.testing.assert_allclose(reverse[i], reference, rtol=1e-8, atol=1e-8 * scale)
        np.testing.assert_allclose(forward[i], reference, rtol=1e-8, atol=1e-8 * scale)


def test_gauss_newton_hessian_alone_would_be_wrong():
    """With nonzero residuals, J^T J differs from the Hessian: the answer must too."""
    theta = fitted()
    jac = jax.jacfwd(lambda t: (decay(t, X) - Y) / SIGMA)(theta)
    gn = -np.linalg.solve(jac.T @ jac, jac.T / SIGMA)  # Gauss-Newton-only d theta / d y
    ours = jax.jacrev(lambda e: fitted(y=e))(Y)
    assert np.max(np.abs(ours - gn)) > 1e-3 * np.max(np.abs(gn))


def test_central_finite_differences_of_the_whole_fit():
    rng = np.random.default_rng(0)
    direction = {"y": rng.standard_normal(X.shape), "sigma": rng.standard_normal(X.shape)}
    h = 1e-3  # the fit is converged far below h^2 * (third derivative)

    for name, direction_vec in direction.items():
        def along(t, name=name, d=direction_vec):
            kwargs = {"y": Y + t * d} if name == "y" else {"sigma": SIGMA * (1 + t * d)}
            return fitted(**kwargs)

        fd = (np.asarray(along(h)) - np.asarray(along(-h))) / (2 * h)
        _, jvp = jax.jvp(along, (0.0,), (1.0,))
        np.testing.assert_allclose(jvp, fd, rtol=1e-4, atol=1e-6 * np.max(np.abs(fd)))


def test_gradient_through_model_args_jit_and_vmap():
    args = {"power": jnp.asarray(1.1), "slope": jnp.asarray(0.02)}

    def centre(a):
        return fitted(args=a, model=decay_args)[1]

    grad = jax.jit(jax.grad(centre))(args)
    h = 1e-4
    for key in args:
        up = {**args, key: args[key] + h}
        down = {**args, key: args[key] - h}
        fd = (centre(up) - centre(down)) / (2 * h)
        assert abs(fd) > 1e-2  # both arguments really move the centre
        # central differences with h = 1e-4: truncation error ~1e-5 relative here
        np.testing.assert_allclose(grad[key], fd, rtol=1e-4)

    # per-problem gradients under vmap equal the solo ones
    ys = jnp.stack([Y, Y * 1.05 + 0.01, Y * 0.9])

    def total(y):
        return jnp.sum(fitted(y=y))

    batched = jax.vmap(jax.grad(total))(ys)
    for i in range(3):
        # batched and solo fits round differently, so they stop at points ~1e-10 apart
        np.testing.assert_allclose(batched[i], jax.grad(total)(ys[i]), rtol=1e-7)


def test_parameter_held_at_a_bound_does_not_move():
    bounds = (jnp.array([0.0, 0.0, 0.45]), jnp.array([10.0, 10.0, 1.0]))  # offset pinned at 0.45
    def params(y):
        return hybrid_gn.fit(decay, jnp.array([1.5, 1.0, 0.5]), X, y, sigma=SIGMA,
                             bounds=bounds, config=TIGHT).params

    theta = params(Y)
    assert float(theta[2]) == 0.45
    jac = jax.jacrev(params)(Y)
    np.testing.assert_array_equal(jac[2], 0.0)
    # the free pair follows the reduced implicit formula (offset fixed)
    def loss(t2, y):
        r = (decay(jnp.append(t2, 0.45), X) - y) / SIGMA
        return 0.5 * r @ r
    reduced = -np.linalg.solve(jax.hessian(loss)(theta[:2], Y),
                               jax.jacfwd(jax.grad(loss), argnums=1)(theta[:2], Y))
    np.testing.assert_allclose(jac[:2], reduced, rtol=1e-8, atol=1e-10)
