"""Latin hypercube and plain uniform points, and the dispatch on a method name."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._common import (
    METHODS,
    Method,
    check_sizes,
    float_dtype,
    random_uniform,
)
from ._halton import halton
from ._sobol import sobol


@functools.partial(jax.jit, static_argnames=("n", "d"))
def latin_hypercube(n: int, d: int, *, key: PRNGKeyArray) -> Float[Array, "n d"]:
    """`n` points in [0, 1)^d with exactly one point in each stratum [k/n, (k+1)/n) per axis.

    Latin hypercube sampling: every one-dimensional projection is evenly
    covered. Independent random permutations (argsort of uniforms) assign
    strata per dimension; the position inside a stratum is uniform. Points
    are clamped into their stratum so rounding in (k + u) / n cannot push one
    onto the next stratum's left edge.

    Args:
        n: number of points, a static Python int.
        d: dimension, a static Python int.
        key: a JAX random key.

    Returns:
        An (n, d) array in the default float dtype.

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> import hybrid_gn
        >>> points = hybrid_gn.sampling.latin_hypercube(8, 3, key=jax.random.key(0))
        >>> strata = np.sort(np.floor(np.asarray(points) * 8), axis=0)
        >>> bool(np.all(strata == np.arange(8)[:, None]))  # one point per stratum and axis
        True
    """
    n, d = check_sizes(n, d)
    dtype = float_dtype()
    if n == 0 or d == 0:
        return jnp.zeros((n, d), dtype)
    u = random_uniform(key, (2, n, d), dtype)
    stratum = jnp.argsort(u[0], axis=0).astype(dtype)  # a uniform permutation per column
    x = (stratum + u[1]) / n
    right = jnp.nextafter((stratum + 1) / n, jnp.zeros((), dtype))
    return jnp.clip(x, stratum / n, right)


@functools.partial(jax.jit, static_argnames=("n", "d"))
def uniform(n: int, d: int, *, key: PRNGKeyArray) -> Float[Array, "n d"]:
    """`n` independent uniform points in [0, 1)^d (the plain Monte Carlo baseline).

    Args:
        n: number of points, a static Python int.
        d: dimension, a static Python int.
        key: a JAX random key.

    Returns:
        An (n, d) array in the default float dtype.

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> import hybrid_gn
        >>> points = hybrid_gn.sampling.uniform(5, 2, key=jax.random.key(0))
        >>> points.shape, bool(np.all((points >= 0) & (points < 1)))
        ((5, 2), True)
    """
    n, d = check_sizes(n, d)
    return random_uniform(key, (n, d), float_dtype())


def unit_points(method: Method, n: int, d: int, *, key: PRNGKeyArray) -> Float[Array, "n d"]:
    """`n` points in [0, 1)^d from `method`; Sobol' and Halton are scrambled with `key`.

    One entry point for the four generators, as `candidates` and the
    multi-start tournament use them.

    Args:
        method: "sobol" (`sobol`, scrambled), "halton" (`halton`,
            scrambled), "lhs" (`latin_hypercube`) or "random" (`uniform`).
        n: number of points, a static Python int.
        d: dimension, a static Python int.
        key: a JAX random key.

    Returns:
        An (n, d) array in the default float dtype.

    Raises:
        ValueError: an unknown `method`.

    Examples:
        >>> import jax
        >>> import hybrid_gn
        >>> key = jax.random.key(0)
        >>> hybrid_gn.sampling.unit_points("halton", 6, 3, key=key).shape
        (6, 3)
    """
    if method == "sobol":
        return sobol(n, d, key=key, scramble=True)
    if method == "halton":
        return halton(n, d, key=key, scramble=True)
    if method == "lhs":
        return latin_hypercube(n, d, key=key)
    if method == "random":
        return uniform(n, d, key=key)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")

