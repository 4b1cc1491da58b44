"""Starting points of a multi-start fit: unit-cube points mapped onto a box around p0."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._common import METHODS, Method, check_sizes
from ._random import unit_points


def candidate_box(
    p0: ArrayLike,
    lower: ArrayLike | None = None,
    upper: ArrayLike | None = None,
    *,
    box_scale: float | Array = 1.0,
) -> tuple[Array, Array, Array]:
    """The sampling box [lo, hi] and the clipped `p0` used by `candidates` (same shapes).

    Where both bounds are finite, the box is [lower, upper]. Elsewhere it is
    c +- box_scale * max(|c|, 1) around c = clip(p0, lower, upper), cut at the
    finite bound if there is one; the max(., 1) keeps a box around p0 = 0
    from collapsing.

    Args:
        p0: the starting point, an array.
        lower: None (no lower bounds) or lower bounds broadcastable to `p0`.
        upper: None (no upper bounds) or upper bounds broadcastable to `p0`.
        box_scale: the half-width of the box, in units of max(|c|, 1), where
            a parameter is not bounded on both sides.

    Returns:
        `(lo, hi, c)`, each of the shape of `p0`.

    Examples:
        >>> import numpy as np
        >>> import hybrid_gn
        >>> lo, hi, c = hybrid_gn.sampling.candidate_box(
        ...     np.array([1.0, 0.0]), lower=np.array([0.0, -np.inf]),
        ...     upper=np.array([2.0, np.inf]))
        >>> print(lo, hi, c)
        [ 0. -1.] [2. 1.] [1. 0.]
    """
    p0 = jnp.asarray(p0)
    p0 = p0.astype(jnp.result_type(p0, float))
    inf = jnp.full(p0.shape, jnp.inf, p0.dtype)
    lb = -inf if lower is None else jnp.broadcast_to(jnp.asarray(lower, p0.dtype), p0.shape)
    ub = inf if upper is None else jnp.broadcast_to(jnp.asarray(upper, p0.dtype), p0.shape)
    center = jnp.clip(p0, lb, ub)
    half = box_scale * jnp.maximum(jnp.abs(center), 1)
    finite = jnp.isfinite(lb) & jnp.isfinite(ub)
    lo = jnp.where(finite, lb, jnp.maximum(center - half, lb))
    hi = jnp.where(finite, ub, jnp.minimum(center + half, ub))
    return lo, hi, center


def candidates(
    method: Method,
    n: int,
    p0: ArrayLike,
    lower: ArrayLike | None = None,
    upper: ArrayLike | None = None,
    *,
    key: PRNGKeyArray,
    box_scale: float | Array = 1.0,
    include_p0: bool = True,
) -> Float[Array, "n ..."]:
    """`n` starting points for a multi-start fit, shape (n, *p0.shape).

    The candidates of `fit_multistart`, also usable for a tournament of your
    own. Unit-cube points from `method` are mapped affinely onto the box of
    `candidate_box` (bounds where both are finite, else p0 +- box_scale *
    max(|p0|, 1)) and clipped into it, so every candidate satisfies the
    bounds. With `include_p0` (default) row 0 is p0 itself (clipped into the
    bounds) and the other n - 1 rows are sampled: the user's guess is never
    lost to the random draw. For a full 2**m Sobol' block plus p0, pass
    n = 2**m + 1. `method`, `n` and `include_p0` are static; `box_scale` and
    the arrays may be traced.

    Args:
        method: "sobol", "halton" (both scrambled with `key`), "lhs" or
            "random".
        n: number of candidates, a static Python int.
        p0: the starting point, an array.
        lower: None or lower bounds broadcastable to `p0`.
        upper: None or upper bounds broadcastable to `p0`; needs
            lower <= upper.
        key: a JAX random key.
        box_scale: as in `candidate_box`; positive.
        include_p0: whether row 0 is p0.

    Returns:
        An (n, *p0.shape) array.

    Raises:
        ValueError: an unknown `method`, a negative `n` or a `box_scale`
            that is not positive.

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> import hybrid_gn
        >>> lower, upper = np.array([0.0, -np.inf]), np.array([2.0, np.inf])
        >>> points = hybrid_gn.sampling.candidates(
        ...     "sobol", 9, np.array([1.0, 0.0]), lower, upper, key=jax.random.key(0))
        >>> points.shape
        (9, 2)
        >>> print(points[0])  # p0 itself
        [1. 0.]
        >>> bool(np.all((points >= lower) & (points <= upper)))
        True
    """
    n = check_sizes(n, 0)[0]
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(box_scale, int | float) and not box_scale > 0:
        raise ValueError(f"box_scale must be positive, got {box_scale}")
    p0 = jnp.asarray(p0)
    lower = None if lower is None else jnp.asarray(lower)
    upper = None if upper is None else jnp.asarray(upper)
    lo, hi, center = _jit_box(p0, lower, upper, box_scale)
    drawn = n - 1 if include_p0 and n > 0 else n
    u = unit_points(method, drawn, center.size, key=key)
    return _place(u, lo, hi, center, include_p0 and n > 0)


@jax.jit
def _jit_box(p0, lower, upper, box_scale):
    """`candidate_box`, compiled once per shape and shared by all methods."""
    return candidate_box(p0, lower, upper, box_scale=box_scale)


@functools.partial(jax.jit, static_argnums=(4,))
def _place(u: Array, lo: Array, hi: Array, center: Array, include_p0: bool) -> Array:
    """Map unit points (m, p) onto the box [lo, hi] (shape of p0), p0 first if asked."""
    shape = center.shape
    lo, hi, center = lo.ravel(), hi.ravel(), center.ravel()
    points = jnp.clip(lo + u.astype(center.dtype) * (hi - lo), lo, hi)
    if include_p0:
        points = jnp.concatenate([center[None], points])
    return points.reshape((points.shape[0], *shape))

