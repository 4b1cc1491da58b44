"""Input checks and conversions shared by every entry point, before any tracing.

Each function either returns its argument in the form the pipeline expects
(numpy arrays in native byte order, lists as arrays, `None` bounds as
infinite ones) or raises a `ValueError`/`TypeError` whose message names the
argument, so that no bad input dies deep inside JAX or numpy. Shapes are
checked always; values (NaN/Inf, sigma > 0, p0 inside the bounds) whenever
they are concrete.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import PRNGKeyArray, PyTree

from . import _model, _values
from ._config import Config, matrix_free
from ._group_weights import GroupWeights
from ._problem import flat_bounds
from ._values import Values


def native(a):
    """`a` as an array the pipeline accepts: lists become arrays, non-native byte order
    (big-endian data from HDF5 or FITS files) is converted; JAX arrays pass unchanged."""
    if isinstance(a, jax.Array | jax.core.Tracer):
        return a
    a = np.asarray(a)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def native_tree(tree: PyTree) -> PyTree:
    """`native` on every leaf; a list or tuple of plain numbers becomes one array."""
    if isinstance(tree, list | tuple) and tree and all(np.ndim(v) == 0 and not isinstance(
            v, jax.Array | jax.core.Tracer) for v in jax.tree.leaves(tree)):
        return native(tree)
    return jax.tree.map(native, tree)


def real_array(name: str, a, where: str = ""):
    """`a` converted by `native`, refused unless it holds real numbers."""
    try:
        a = native(a)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{where}{name} must be an array of real numbers ({error})") from None
    dtype = jnp.result_type(a) if isinstance(a, jax.Array | jax.core.Tracer) else a.dtype
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(f"{where}{name} is complex ({dtype}); least squares needs real data: "
                        f"fit the real and imaginary parts as separate points")
    if not (jnp.issubdtype(dtype, jnp.number) or dtype == np.bool_):
        raise TypeError(f"{where}{name} must hold real numbers, got dtype {dtype}")
    return a


def check_int(name: str, value, minimum: int) -> None:
    """Refuse anything but an int (not a bool) of at least `minimum`, naming `name`."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def as_key(key) -> PRNGKeyArray:
    """A PRNG key from a key (typed or raw uint32 pair) or an int seed."""
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        return jax.random.key(int(key))
    dtype = getattr(key, "dtype", None)
    if dtype is not None and (jnp.issubdtype(dtype, jax.dtypes.prng_key) or (
            dtype == jnp.uint32 and np.shape(key)[-1:] == (2,))):
        return key
    raise TypeError(f"key must be a JAX random key (jax.random.key(seed)) or an int seed, got "
                    f"{type(key).__name__}")


def check_type(name: str, value, expected: type, called: str) -> None:
    """Refuse a `value` that is not an `expected` (a Config, a Tournament), naming `name`."""
    if not isinstance(value, expected):
        raise TypeError(f"{name} must be a {called}, got {type(value).__name__}")


def weighted_sigma(group_weights, x: PyTree, y, sigma):
    """`sigma` with the group weights folded in (as given without them), shaped like y."""
    if group_weights is None:
        return sigma
    check_type("group_weights", group_weights, GroupWeights, "hybrid_gn.GroupWeights")
    return np.broadcast_to(group_weights.sigma(x, sigma), np.shape(y))


def mesh_axis(mesh, axis: str | None, name: str) -> str:
    """The mesh axis named by argument `name` (the mesh's first when None), checked."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (jax.make_mesh((devices,), "
                        f"('data',))), got {type(mesh).__name__}")
    axis = mesh.axis_names[0] if axis is None else axis
    if axis not in mesh.axis_names:
        raise ValueError(f"{name} {axis!r} is not an axis of the mesh, whose axes are "
                         f"{mesh.axis_names}")
    return axis


def check_stream_arguments(block_size, warmup_chunks, prefetch, checkpoint_every) -> None:
    """The streaming driver's own arguments (those shared with `fit` are `check_fit`'s)."""
    check_int("block_size", block_size, 1)
    check_int("checkpoint_every", checkpoint_every, 1)
    check_int("prefetch", prefetch, 0)
    if warmup_chunks is not None:
        check_int("warmup_chunks", warmup_chunks, 1)


def float_dtype(p0: PyTree, y) -> np.dtype:
    """The dtype the fit computes in: float64 or float32 from p0 and y (half precision and
    integers are promoted: float16 cannot hold J^T J of any real problem)."""
    dtypes = {_model.dtype_of(a) for a in (*jax.tree.leaves(p0), y)}
    # one dtype (the usual case) is its own promotion; else JAX's promotion rules
    dtype = dtypes.pop() if len(dtypes) == 1 else jnp.result_type(*jax.tree.leaves(p0), y)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(dtype, float)
    if jnp.finfo(dtype).bits < 32:
        dtype = jnp.dtype(jnp.float32)
    return dtype


def check_params(name: str, p0: PyTree) -> tuple[PyTree, int]:
    """p0 with native leaves, and its number of parameters."""
    p0 = jax.tree.map(lambda a: real_array(name, a), p0)
    leaves = jax.tree.leaves(p0)
    if not leaves:
        raise ValueError(f"{name} has no parameters")
    for leaf in leaves:
        if _model.dtype_of(leaf) == np.bool_:
            raise TypeError(f"{name} must contain numbers, got a bool array")
    return p0, sum(int(np.size(leaf)) for leaf in leaves)


def check_bounds(bounds, p0: PyTree) -> tuple | None:
    """`bounds` as `(lower, upper)`, each a scalar, a flat (p,) array or a pytree like p0.

    A side given as None is unbounded (scipy's -inf/inf). Wrong lengths, missing
    pytree keys and None inside a side are refused with the argument named.
    """
    if bounds is None:
        return None
    if not (isinstance(bounds, tuple | list) and len(bounds) == 2):
        raise ValueError("bounds must be a pair (lower, upper) or None, got "
                         f"{type(bounds).__name__}")
    p = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(p0))
    return tuple(_check_side(side, p0, p, name, fill)
                 for side, name, fill in zip(bounds, ("lower", "upper"), (-np.inf, np.inf),
                                             strict=True))


def _check_side(side, p0: PyTree, p: int, name: str, fill: float):
    if side is None:
        return fill
    structure = jax.tree.structure(p0)
    if jax.tree.structure(side) == structure and all(
            _broadcasts(b, leaf) for b, leaf in zip(jax.tree.leaves(side),
                                                    jax.tree.leaves(p0), strict=True)):
        return jax.tree.map(lambda b: real_array(f"bounds ({name})", b), side)
    if isinstance(side, dict) or any(leaf is None for leaf in _flat(side)):
        keys = sorted(side) if isinstance(side, dict) else None
        raise ValueError(f"bounds ({name}) must be a scalar, a flat sequence of the p = {p} "
                         f"parameters, or a pytree shaped like p0 (use -inf/inf, not None, "
                         f"for an unbounded parameter); got {type(side).__name__}"
                         + (f" with keys {keys}, p0 is {structure}" if keys else ""))
    side = real_array(f"bounds ({name})", side)
    if np.size(side) not in (1, p) or np.ndim(side) > 1:
        raise ValueError(f"bounds ({name}) has shape {np.shape(side)}: give a scalar or p = {p} "
                         f"values, one per parameter")
    return side


def _broadcasts(b, leaf) -> bool:
    try:
        return np.broadcast_shapes(np.shape(b), np.shape(leaf)) == np.shape(leaf)
    except ValueError:
        return False


def _flat(side) -> list:
    if isinstance(side, list | tuple):
        return [v for item in side for v in _flat(item)]
    return [side]


def concrete(*trees) -> bool:
    return not any(isinstance(a, jax.core.Tracer) for t in trees for a in jax.tree.leaves(t))


def check_model(model: Callable, p0: PyTree, x: PyTree, size: int, args: PyTree
                ) -> tuple[_model.Bound, list]:
    """The model as a static `Bound` plus its arrays, after checking what it returns on a
    chunk of `size` points: one real value per point."""
    if not callable(model):
        raise TypeError(f"model must be callable as model(params, x), got "
                        f"{type(model).__name__}")
    chunk = jax.tree.map(lambda a: jax.ShapeDtypeStruct((size, *np.shape(a)[1:]),
                                                        _model.dtype_of(a)), x)
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), _model.dtype_of(a)),
                          p0)
    try:
        key, arrays, out = _model.split(model, params, chunk, args)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError,
            jax.errors.TracerBoolConversionError) as error:
        raise TypeError(f"model could not be traced by JAX ({type(error).__name__}); write it "
                        f"with jax.numpy and without Python control flow on the parameters"
                        ) from error
    if not isinstance(out, jax.ShapeDtypeStruct) or tuple(out.shape) != (size,):
        shape = out.shape if isinstance(out, jax.ShapeDtypeStruct) else type(out).__name__
        raise ValueError(f"model(params, x) must return one value per point: for a chunk of "
                         f"{size} points it returned shape {shape}")
    if jnp.issubdtype(out.dtype, jnp.complexfloating):
        raise TypeError(f"model returns complex values ({out.dtype}); least squares needs real "
                        f"residuals: return the real and imaginary parts as separate points")
    return _model.Bound(key, args is not None), arrays


class Inputs(NamedTuple):
    """One problem's arguments after checking: what the jitted drivers receive."""

    model: _model.Bound  # static
    p0: PyTree
    x: PyTree
    y: jax.Array | np.ndarray
    sigma: jax.Array | np.ndarray | None
    bounds: tuple | None
    model_args: tuple  # (the model's arrays, the user's args)
    mask: jax.Array | np.ndarray | None


def check_fit(model: Callable, p0: PyTree, x: PyTree, y, sigma, bounds, check_values: bool,
              config: Config, args: PyTree = None, mask=None, n_points: int | None = None
              ) -> Inputs:
    """Check and convert the arguments of one fit; `n_points` is the size of the whole
    data when `x` and `y` are only its first block (streaming)."""
    check_type("config", config, Config, "hybrid_gn.Config")
    p0, p = check_params("p0", p0)
    x = native_tree(x)
    y = real_array("y", y)
    sigma = None if sigma is None else real_array("sigma", sigma)
    args = jax.tree.map(native, args)
    n = _check_shapes(x, y, sigma, mask, p)
    if config.penalty is not None:
        config.penalty.check(p)
        if matrix_free(config, p):
            raise ValueError(f"Config.penalty needs the dense Gauss-Newton path: p = {p} "
                             f"parameters is above Config.dense_max_params = "
                             f"{config.dense_max_params}; raise dense_max_params to at least "
                             f"{p}")
    bounds = check_bounds(bounds, p0)
    # the model is traced on a chunk of the fit's chunk size (of the whole data when it is
    # streamed: not of the block at hand, so the fingerprint is the same for any block size)
    size = min(config.chunk_size, n if n_points is None else n_points)
    bound_model, arrays = check_model(model, p0, x, size, args)
    inputs = Inputs(bound_model, p0, x, y, sigma, bounds, (arrays, args), mask)
    if concrete(p0, x, y, sigma, bounds, mask):
        check_input_values(inputs, check_values, config)
    return inputs


def _check_shapes(x, y, sigma, mask, p: int) -> int:
    if np.ndim(y) != 1:
        raise ValueError(f"y must be 1-D of shape (n,), got shape {np.shape(y)}")
    n = np.shape(y)[0]
    if n == 0:
        raise ValueError("y is empty: there are no data points")
    if not jax.tree.leaves(x):
        raise ValueError(f"x is empty: give the independent variable(s), an array with "
                         f"leading axis n = {n}")
    for leaf in jax.tree.leaves(x):
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] != n:
            raise ValueError(
                f"x and y disagree: x has an array of shape {np.shape(leaf)}, whose "
                f"leading axis must equal len(y) = {n}")
    if sigma is not None and np.shape(sigma) != (n,):
        raise ValueError(f"sigma must have shape (n,) = ({n},), got {np.shape(sigma)}")
    if mask is not None and (np.shape(mask) != (n,) or jnp.result_type(mask) != jnp.bool_):
        raise ValueError(f"mask must be a bool array of shape (n,) = ({n},), got "
                         f"{jnp.result_type(mask)} of shape {np.shape(mask)}")
    if n < p:
        raise ValueError(f"too few data points: y has n = {n} points, fewer than the p = {p} "
                         f"parameters of p0")
    return n


def check_input_values(inputs: Inputs, check_values: bool, config: Config) -> None:
    """The value checks of `_values` on this one problem (a batch of one): what `check_fit`
    checks of concrete inputs besides their types and shapes."""
    _, p0, x, y, sigma, bounds, _, mask = inputs
    dtype = float_dtype(p0, y)
    # numpy, in ravel_pytree's order: eager JAX operations would cost more than a small fit
    theta0 = np.concatenate([np.asarray(a, dtype).ravel() for a in jax.tree.leaves(p0)])
    lower, upper = flat_bounds(bounds, p0, dtype, xp=np)
    if spread(x, y, sigma, mask):
        values = Values(theta0[None], lower[None], upper[None], jax.tree.leaves(x), y, sigma,
                        mask)
        _values.check_spread_values(values, check_values, config)
        return
    n = np.shape(y)[0]
    used = np.ones(n, bool) if mask is None else np.asarray(mask)
    values = Values(theta0[None], lower[None], upper[None],
                    [np.asarray(leaf)[None] for leaf in jax.tree.leaves(x)],
                    np.asarray(y)[None], None if sigma is None else np.asarray(sigma)[None],
                    used[None])
    _values.check_values(values, check_values, config, batched=False)


def spread(*trees) -> bool:
    """Whether some array of `trees` spans devices of other processes (multi-host data)."""
    return any(isinstance(a, jax.Array) and not a.is_fully_addressable
               for tree in trees for a in jax.tree.leaves(tree))
