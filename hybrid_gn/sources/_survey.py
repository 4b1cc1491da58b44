"""Before the first pass: the number of points, the first points, and the warmup subsample."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple, TypeVar

import jax
import numpy as np
from jaxtyping import PyTree

from ._buffers import chunks
from ._checks import check_block, checked_blocks
from ._protocol import Block, Chunk, ChunkSource


class Weighted(NamedTuple):
    """Points with their weights (1/sigma, or 1 without sigma): the warmup subsample."""

    x: PyTree
    y: np.ndarray
    weight: np.ndarray

    def strided(self, first: int, stride: int, dtype) -> Weighted:
        """A copy of every `stride`-th point from `first` on (`y` and `weight` in `dtype`)."""
        return Weighted(jax.tree.map(lambda a: np.array(a[first::stride]), self.x),
                        np.array(self.y[first::stride], dtype),
                        np.array(self.weight[first::stride], dtype))


_Points = TypeVar("_Points", Block, Weighted)


class Survey(NamedTuple):
    """What the driver needs before the first pass: the size and the first points."""

    n_points: int
    head: Block  # the first min(size, n) points, checked


def survey(source: ChunkSource, size: int, check_finite: bool) -> Survey:
    """Count the points (a checked pass unless the source knows its size) and read the head."""
    if source.random_access:
        n = int(source.n_points)
        if n == 0:
            raise ValueError("the source is empty: it has no data points")
        head = source.block_range(0, min(size, n)).as_numpy()
        check_block(source, head, 0, 0, None, check_finite)
        return Survey(n, head)
    n = 0
    first: list[Block] = []
    for _, block in checked_blocks(source, size, check_finite):
        if n < size:  # a copy: a source may reuse its buffers for the next block
            first.append(jax.tree.map(np.array, block.take(0, size - n)))
        n += block.length
    if n == 0:
        raise ValueError("the source is empty: a pass over it yielded no data points")
    return Survey(n, _concat(first))


def chunk_selection(n_points: int, size: int, n_select: int | None) -> np.ndarray:
    """Indices of `n_select` chunks spread evenly over the data (all when None or more)."""
    n_chunks = -(-n_points // size)
    if n_select is None or n_select >= n_chunks:
        return np.arange(n_chunks)
    return np.unique(np.round(np.linspace(0, n_chunks - 1, n_select)).astype(int))


def subsample(source: ChunkSource, size: int, n_points: int, n_select: int | None,
              max_points: int | None, dtype, check_finite: bool) -> Chunk:
    """The warmup data: every k-th point of the selected chunks, at most `max_points`.

    With all chunks selected this is exactly the in-memory driver's strided
    subsample (`Data.subsample`) of the whole data. `n_points` may be less
    than the data's size: then only its first `n_points` points count. Only
    the selected chunks are read from random-access sources; other sources
    are read up to the last selected chunk.
    """
    chosen = chunk_selection(n_points, size, n_select)
    lengths = np.minimum(size, n_points - chosen * size)
    n_sel = int(lengths.sum())
    stride = 1 if max_points is None or max_points >= n_sel else -(-n_sel // max_points)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    offset = dict(zip(chosen.tolist(), offsets.tolist(), strict=True))
    whole = _concat([part.strided((-offset[j]) % stride, stride, dtype)
                     for j, part in _selected(source, size, n_points, chosen, dtype,
                                              check_finite)])
    return Chunk(0, 0, int(whole.y.shape[0]), whole.x, whole.y, whole.weight)


def _selected(source: ChunkSource, size: int, n_points: int, chosen: np.ndarray, dtype,
              check_finite: bool) -> Iterator[tuple[int, Weighted]]:
    """The `chosen` chunks (within the first `n_points` points) with their indices, checked."""
    if not source.random_access:
        yield from _selected_in_order(source, size, n_points, chosen, dtype, check_finite)
        return
    for j in chosen.tolist():
        start = j * size
        block = source.block_range(start, min(start + size, n_points)).as_numpy()
        check_block(source, block, j, start, None, check_finite)
        yield j, Weighted(block.x, block.y, _weight(block, dtype))


def _selected_in_order(source: ChunkSource, size: int, n_points: int, chosen: np.ndarray,
                       dtype, check_finite: bool) -> Iterator[tuple[int, Weighted]]:
    """`_selected` for sources without random access: one pass up to the last chosen chunk."""
    wanted, last = set(chosen.tolist()), int(chosen[-1])
    with contextlib.closing(chunks(source, size, dtype, check_finite)) as pass_:
        for chunk in pass_:
            if chunk.index in wanted:
                m = min(chunk.n_valid, n_points - chunk.start)
                x = jax.tree.map(lambda a, m=m: a[:m], chunk.x)
                yield chunk.index, Weighted(x, chunk.y[:m], chunk.weight[:m])
            if chunk.index == last:
                break


def _weight(block: Block, dtype) -> np.ndarray:
    if block.sigma is None:
        return np.ones(np.shape(block.y)[0], dtype)
    return (1 / np.asarray(block.sigma, dtype)).astype(dtype)


def _concat(parts: Sequence[_Points]) -> _Points:
    """The points of `parts` (blocks, or weighted points, of one layout) one after another."""
    if len(parts) == 1:
        return parts[0]
    return jax.tree.map(lambda *a: np.concatenate(a), *parts)
