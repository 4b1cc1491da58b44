"""The input checks of `fit_batch`: B problems, ragged ones padded, each named on error.

The batch's shapes are checked here (a leading batch axis B on every leaf
of p0, x, sigma and args; ragged sequences padded to the longest with
weight-0 points; bounds shared or per problem), the model and the first
problem's layout by `check_fit`, and the values of every problem at once by
`_values.check_values`, whose messages name the first bad problem.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._config import Config
from ._problem import flat_bounds
from ._validate import Inputs, check_bounds, check_fit, native, native_tree, real_array
from ._values import Values, check_values


def check_batch(model, p0, x, y, sigma, bounds, args, check_finite: bool,
                config: Config) -> Inputs:
    """The checked, padded inputs of B problems (every array with a leading axis B)."""
    x, y, sigma, mask = pad_ragged(x, y, sigma)
    batch = y.shape[0]
    if batch == 0:
        raise ValueError("y holds no problems (B = 0)")
    p0 = jax.tree.map(native, p0)
    for name, tree in (("p0", p0), ("x", x), ("sigma", sigma), ("args", args)):
        for leaf in jax.tree.leaves(tree):
            if np.ndim(leaf) == 0 or np.shape(leaf)[0] != batch:
                raise ValueError(f"{name} must have a leading batch axis of size B = {batch} "
                                 f"(the number of problems in y), got a leaf of shape "
                                 f"{np.shape(leaf)}")
    bounds = batch_bounds(bounds, p0, batch)
    first = jax.tree.map(lambda a: a[0], (p0, x, y, sigma, args, mask, bounds))
    inputs = check_fit(model, *first[:4], first[6], False, config, first[4], first[5])
    check_values(_as_values(p0, x, y, sigma, bounds, mask), check_finite, config, batched=True)
    return Inputs(inputs.model, p0, x, y, sigma, bounds, (inputs.model_args[0], args), mask)


def _as_values(p0, x, y, sigma, bounds, mask) -> Values:
    """The batch's concrete inputs, flattened for `check_values`."""
    batch = np.shape(y)[0]
    theta0 = np.concatenate([np.asarray(leaf).reshape(batch, -1)
                             for leaf in jax.tree.leaves(p0)], axis=1)
    if bounds is None:
        lower, upper = np.full_like(theta0, -np.inf), np.full_like(theta0, np.inf)
    else:
        lower, upper = (np.asarray(b) for b in jax.vmap(
            lambda p, b: flat_bounds(b, p, theta0.dtype))(p0, bounds))
    return Values(theta0, lower, upper, [np.asarray(leaf) for leaf in jax.tree.leaves(x)],
                  np.asarray(y), None if sigma is None else np.asarray(sigma),
                  np.ones(np.shape(y), bool) if mask is None else np.asarray(mask))


def batch_bounds(bounds, p0, batch: int) -> tuple | None:
    """Bounds with a leading batch axis B (shared ones are broadcast).

    Per-problem bounds are a pair of (B, p) arrays or pytrees whose leaves have p0's
    batched shapes; anything else is one box for every problem (broadcast here).
    """
    if bounds is None:
        return None
    one = jax.tree.map(lambda a: a[0], p0)
    if not (isinstance(bounds, tuple | list) and len(bounds) == 2):
        raise ValueError("bounds must be a pair (lower, upper) or None")
    p = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(one))

    def as_batched(side):
        """`side` as per-problem bounds, or None where it is one box for every problem."""
        if side is None:
            return None
        if jax.tree.structure(side) == jax.tree.structure(p0) and all(
                np.shape(b) == np.shape(a)
                for b, a in zip(jax.tree.leaves(side), jax.tree.leaves(p0), strict=True)):
            return jax.tree.map(native, side)
        if np.ndim(side) == 2 and np.shape(side) == (batch, p):
            return native(side)
        return None

    batched = [as_batched(side) for side in bounds]
    checked = check_bounds(tuple(side if b is None else None
                                 for side, b in zip(bounds, batched, strict=True)), one)
    return tuple(_broadcast(shared, batch) if b is None else b
                 for b, shared in zip(batched, checked, strict=True))


def _broadcast(tree, batch: int):
    return jax.tree.map(lambda b: np.broadcast_to(np.asarray(b), (batch, *np.shape(b))), tree)


def pad_ragged(x, y, sigma=None):
    """Stack B problems into (B, n_max) arrays and a (B, n_max) mask of real points (None
    when `y` is one (B, n) array: every point is real).

    Padding repeats each problem's last x (a point where the model is known to
    be finite), with y = 0, sigma = 1 and mask False.
    """
    if not isinstance(y, Sequence) or isinstance(y, np.ndarray | jax.Array):
        y = real_array("y", y)
        if y.ndim != 2:
            raise ValueError(f"y must be (B, n) or a sequence of 1-D arrays, got shape {y.shape}")
        sigma = None if sigma is None else real_array("sigma", sigma)
        return native_tree(x), y, sigma, None
    return _pad_sequences(x, y, sigma)


def _pad_sequences(x, y: Sequence, sigma):
    """`pad_ragged` of B sequences of 1-D arrays of different lengths."""
    if len(y) == 0:
        raise ValueError("y is an empty sequence: there are no problems")
    if not isinstance(x, Sequence) or len(x) != len(y):
        raise ValueError("with ragged y (a sequence), x must be a sequence of the same length")
    if sigma is not None and (not isinstance(sigma, Sequence) or len(sigma) != len(y)):
        raise ValueError("with ragged y (a sequence), sigma must be None or a sequence of the "
                         "same length")
    y = [real_array("y", yb, f"problem {b}: ") for b, yb in enumerate(y)]
    x = [native_tree(xb) for xb in x]
    sizes = [np.shape(yb) for yb in y]
    for b, shape in enumerate(sizes):
        if len(shape) != 1 or shape[0] == 0:
            raise ValueError(f"problem {b}: y must be a non-empty 1-D array, got shape {shape}")
    n_max = max(shape[0] for shape in sizes)

    def pad(a, n, fill=None):
        a = np.asarray(a)
        if a.shape[0] != n:
            raise ValueError(f"leading axis {a.shape[0]} does not match len(y) = {n}")
        extra = np.repeat(a[-1:], n_max - n, axis=0) if fill is None else np.full(
            (n_max - n, *a.shape[1:]), fill, a.dtype)
        return np.concatenate([a, extra])

    try:
        xs = [jax.tree.map(lambda a, n=shape[0]: pad(a, n), xb)
              for xb, shape in zip(x, sizes, strict=True)]
    except ValueError as err:
        raise ValueError(f"x and y disagree: {err}") from None
    x_out = jax.tree.map(lambda *leaves: jnp.asarray(np.stack(leaves)), *xs)
    y_out = jnp.asarray(np.stack([pad(yb, s[0], 0) for yb, s in zip(y, sizes, strict=True)]))
    sigma_out = None if sigma is None else jnp.asarray(
        np.stack([pad(sb, s[0], 1) for sb, s in zip(sigma, sizes, strict=True)]))
    mask = jnp.asarray(np.arange(n_max)[None, :] < np.array([s[0] for s in sizes])[:, None])
    return x_out, y_out, sigma_out, mask
