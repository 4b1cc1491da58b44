"""`fit(..., mesh=)`: one problem whose points are split over the devices of a mesh.

The points are split along one mesh axis; inside `shard_map` every device
runs the pipeline on its share, and the only reduction is that of each
Gauss-Newton pass (`_accumulate.combine`): one all-reduce of p x p + p + 1
numbers (or a gather of the (p + 1)-square QR factors), so nothing
data-sized crosses devices. Phase 0 and the warmup work on the strided
subsample of the whole data (gathered once, at most `warmup_max_points`
points), the trust-region step, the covariance and the implicit rule run
replicated: every device holds the same answer, equal to the single-device
fit's up to the order of the sums.

Points already placed on the mesh (`jax.device_put(x, NamedSharding(mesh,
P(axis)))`) with n a multiple of the axis size are used where they lie;
otherwise they are split (and padded with weight-0 points) inside the
compiled program.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .. import _pipeline as pipeline
from .._config import Config
from .._data import Data
from .._jit import jit
from .._result import Result
from .._validate import Inputs


def fit_sharded(inputs: Inputs, absolute_sigma, config: Config, mesh: Mesh, axis: str
                ) -> Result:
    """The fused fit with its points split over `axis` of `mesh` (see the module).

    Arrays placed on a mesh whose axes are Explicit (`jax.make_mesh`'s default)
    are re-labelled, where they lie, as placed on the same mesh with Auto axes.
    """
    mesh = automatic(mesh)
    inputs = inputs._replace(**{name: jax.tree.map(functools.partial(_on, mesh),
                                                   getattr(inputs, name))
                                for name in ("x", "y", "sigma", "mask")})
    return _fit_sharded(*inputs, absolute_sigma, config, mesh, axis)


def _on(mesh: Mesh, a):
    """`a` as placed on `mesh`, if it is a concrete array placed on the same devices."""
    sharding = getattr(a, "sharding", None)
    if isinstance(a, jax.core.Tracer) or not isinstance(sharding, NamedSharding) or (
            sharding.mesh.devices.tolist() != mesh.devices.tolist()):
        return a
    return jax.device_put(a, NamedSharding(mesh, sharding.spec))


@functools.partial(jit, static_argnames=("model", "absolute_sigma", "mesh", "axis"))
def _fit_sharded(model, p0, x, y, sigma, bounds, args, mask, absolute_sigma, config: Config,
                 mesh: Mesh, axis: str) -> Result:
    setup, data = pipeline.prepare(model, p0, x, y, sigma, bounds, args, mask, config)
    shards = _split(data, mesh.shape[axis])

    def local_run(setup: pipeline.Setup, x, y, weight) -> pipeline.PipelineState:
        local = Data(x, y, weight, min(setup.config.chunk_size, y.shape[0]), axis)
        return pipeline.run(setup, local)

    points = PartitionSpec(axis)
    x_, y_, w_ = jax.lax.with_sharding_constraint((shards.x, shards.y, shards.weight),
                                                  NamedSharding(mesh, points))
    state = jax.shard_map(local_run, mesh=mesh, in_specs=(PartitionSpec(), points, points, points),
                          out_specs=PartitionSpec(), check_vma=False)(setup, x_, y_, w_)
    return pipeline.finish(setup, state, data, (x, y, sigma, args), mask, absolute_sigma)


def automatic(mesh: Mesh) -> Mesh:
    """`mesh` with every axis of the Auto type (the compiler places what the program does
    not constrain), whatever the type the user's mesh has (`jax.make_mesh` makes Explicit
    ones): the driver says itself where the points go, and runs under any transformation."""
    return Mesh(mesh.devices, mesh.axis_names,
                axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))


def _split(data: Data, devices: int) -> Data:
    """`data` with n a multiple of `devices` (weight-0 points repeating the last x added)."""
    extra = -data.n % devices
    if extra == 0:
        return data

    def pad(a, fill=None):
        tail = jnp.repeat(a[-1:], extra, axis=0) if fill is None else jnp.full(
            (extra, *a.shape[1:]), fill, a.dtype)
        return jnp.concatenate([a, tail])

    return Data(jax.tree.map(pad, data.x), pad(data.y, 0), pad(data.weight, 0), data.chunk_size)
