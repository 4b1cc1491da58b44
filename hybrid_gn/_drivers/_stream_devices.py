"""Where a streamed pass is folded: on one device, or one chunk per device of a mesh axis.

The host loop (`_stream_run`) reads the source in chunks and hands them here
`group` at a time (`place`, then `fold` and `digest`). `OneDevice` folds each
chunk in turn. `OverMesh` places consecutive chunks round-robin on the devices
of the data axis (chunk k of a group on device k), and each device folds its
chunk into its own accumulator and its own data digest with the same
`fold_chunk`; the pass ends with the one reduction (`_accumulate.combine`: an
all-reduce of p x p + p + 1 numbers, or the gather of the (p + 1)-square QR
factors) and a sum of the 2-word digests. The warmup, the trust-region step and the
covariance run replicated on the mesh (`replicate`), so every device holds
the same state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

from .. import _digest
from .. import _pipeline as pipeline
from .._phases import _accumulate as accumulate
from .._validate import mesh_axis
from ..sources._protocol import Chunk
from . import _stream_steps as steps
from ._sharded import automatic


def placement(mesh: Mesh | None, data_axis: str | None) -> OneDevice | OverMesh:
    """Where the passes are folded: the default device, or the devices of a mesh axis."""
    if mesh is None and data_axis is None:
        return OneDevice()
    return OverMesh(automatic(mesh), mesh_axis(mesh, data_axis, "data_axis"))


def groups(items: Iterable, size: int) -> Iterator[list]:
    """`items` in lists of `size` (the last may be shorter)."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


@dataclasses.dataclass(frozen=True)
class OneDevice:
    """Every chunk folded on the default device, in turn."""

    group: int = 1

    def put(self, tree: PyTree) -> PyTree:
        return jax.device_put(tree)

    def replicate(self, tree: PyTree) -> PyTree:
        return tree

    def empty(self, setup: pipeline.Setup, p: int, dtype, qr: bool) -> steps.Accumulator:
        return steps.empty_accumulator(setup, p, dtype, qr)

    def empty_digest(self) -> jax.Array:
        return _digest.empty()

    def place(self, chunks: Sequence[Chunk]) -> Sequence[Chunk]:
        return chunks  # already on the device (`put`)

    def fold(self, setup: pipeline.Setup, u, acc: accumulate.Accumulator,
             chunks: Sequence[Chunk]) -> accumulate.Accumulator:
        for chunk in chunks:
            acc = steps.fold(setup, u, acc, chunk.x, chunk.y, chunk.weight)
        return acc

    def digest(self, digest: jax.Array, chunks: Sequence[Chunk]) -> jax.Array:
        for chunk in chunks:
            digest = _digest.fold(digest, chunk.start, chunk.x, chunk.y, chunk.weight)
        return digest

    def combine(self, acc: accumulate.Accumulator) -> accumulate.Accumulator:
        return acc

    def combine_digest(self, digest: jax.Array) -> jax.Array:
        return digest


class Step(NamedTuple):
    """One chunk per device of the data axis: arrays split over it (chunk k on device k)."""

    starts: jax.Array  # (devices,) the index of each chunk's first point, modulo 2^32
    x: PyTree
    y: jax.Array
    weight: jax.Array


@dataclasses.dataclass(frozen=True)
class OverMesh:
    """One chunk per device of `axis` of `mesh` per step; one reduction per pass."""

    mesh: Mesh
    axis: str

    @property
    def group(self) -> int:
        return self.mesh.shape[self.axis]

    def put(self, tree: PyTree) -> PyTree:
        return tree  # the chunks stay on the host until `_spread` places each on its device

    def replicate(self, tree: PyTree) -> PyTree:
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def _stacked(self, tree: PyTree) -> PyTree:
        """`tree` repeated along a new leading axis, one slice per device of `axis`."""
        return jax.device_put(jax.tree.map(lambda a: jnp.stack([a] * self.group), tree),
                              NamedSharding(self.mesh, PartitionSpec(self.axis)))

    def empty(self, setup: pipeline.Setup, p: int, dtype, qr: bool) -> steps.Accumulator:
        return self._stacked(steps.empty_accumulator(setup, p, dtype, qr))

    def empty_digest(self) -> jax.Array:
        return self._stacked(_digest.empty())

    def fold(self, setup: pipeline.Setup, u, acc: accumulate.Accumulator,
             step: Step) -> accumulate.Accumulator:
        return steps.fold_spread(setup, u, acc, step.x, step.y, step.weight, self.mesh,
                                 self.axis)

    def digest(self, digest: jax.Array, step: Step) -> jax.Array:
        return steps.digest_spread(digest, step.starts, step.x, step.y, step.weight, self.mesh,
                                   self.axis)

    def combine(self, acc: accumulate.Accumulator) -> accumulate.Accumulator:
        return steps.combine_spread(acc, self.mesh, self.axis)

    def combine_digest(self, digest: jax.Array) -> jax.Array:
        return steps.sum_digests(digest)

    def place(self, chunks: Sequence[Chunk]) -> Step:
        """Up to `group` host chunks as one step's arrays split over `axis`, chunk k on the
        k-th device; a short last group is completed with weight-0 copies."""
        chunks = list(chunks)
        filler = chunks[-1]._replace(start=0, weight=np.zeros_like(chunks[-1].weight))
        chunks += [filler] * (self.group - len(chunks))
        sharding = NamedSharding(self.mesh, PartitionSpec(self.axis))

        def spread(pick) -> jax.Array:
            first = pick(chunks[0])
            size = first.shape[0]
            return jax.make_array_from_callback(
                (self.group * size, *first.shape[1:]), sharding,
                lambda index: pick(chunks[(index[0].start or 0) // size]))

        # the digest counts point indices modulo 2^32
        starts = spread(lambda c: np.array([c.start % 2**32], np.uint32))
        leaves = range(len(jax.tree.leaves(chunks[0].x)))
        x = jax.tree.unflatten(jax.tree.structure(chunks[0].x),
                               [spread(lambda c, i=i: jax.tree.leaves(c.x)[i]) for i in leaves])
        return Step(starts, x, spread(lambda c: c.y), spread(lambda c: c.weight))
