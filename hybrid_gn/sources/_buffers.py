"""Blocks into fixed-size chunks in recycled host buffers (weighted, the last one padded),
then onto the device: the reader allocates nothing per chunk, and each chunk is copied
once on its way to the device."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import numpy as np
from jaxtyping import PyTree

from ._checks import check_block, checked_blocks
from ._protocol import Block, Chunk, ChunkSource, native_dtype
from ._readahead import Stopped, prefetch


class Slot(NamedTuple):
    """One host buffer of a chunk, reused pass after pass."""

    x: PyTree
    y: np.ndarray
    weight: np.ndarray


class SlotPool:
    """At most `count` host buffers, allocated on first use and recycled.

    Reading into recycled buffers keeps the reader from allocating per chunk:
    fresh arrays allocated in one thread and freed in another fragment the
    allocator's arenas, and the resident memory then creeps up pass after pass.
    """

    def __init__(self, count: int, size: int, dtype):
        self.count, self.size, self.dtype = count, size, dtype
        self.made = 0
        self.free: queue.Queue = queue.Queue()
        self.closed = threading.Event()

    def acquire(self, like: Block) -> Slot:
        if self.free.empty() and self.made < self.count:
            self.made += 1
            return Slot(jax.tree.map(
                lambda a: np.empty((self.size, *a.shape[1:]), native_dtype(a.dtype)), like.x),
                         np.empty(self.size, self.dtype), np.empty(self.size, self.dtype))
        while True:
            if self.closed.is_set():
                raise Stopped
            try:
                return self.free.get(timeout=0.05)
            except queue.Empty:
                continue

    def release(self, slot: Slot) -> None:
        self.free.put(slot)


def filled(source: ChunkSource, size: int, dtype, check_finite: bool,
            acquire: Callable[[Block], Slot]) -> Iterator[tuple[Chunk, Slot]]:
    """One pass as chunks of exactly `size` points written into buffers from `acquire`.

    The blocks of the source are copied in (cast to `dtype`, weight 1/sigma);
    the last chunk is padded with copies of its last point and weight 0.
    """
    if source.random_access:
        yield from _filled_directly(source, size, check_finite, acquire)
        return
    slot, fill, index = None, 0, 0
    for _, block in checked_blocks(source, size, check_finite):
        m, taken = block.length, 0
        while taken < m:
            if slot is None:
                slot, fill = acquire(block), 0
            k = min(size - fill, m - taken)
            _copy_into(slot, slice(fill, fill + k), block, slice(taken, taken + k))
            fill, taken = fill + k, taken + k
            if fill == size:
                yield Chunk(index, index * size, size, slot.x, slot.y, slot.weight,
                            block.sigma is None), slot
                slot, index = None, index + 1
    if slot is not None:
        _pad(slot, fill)
        yield Chunk(index, index * size, fill, slot.x, slot.y, slot.weight), slot


def _copy_into(slot: Slot, dst: slice, block: Block, src: slice) -> None:
    """Points `src` of `block` into points `dst` of `slot`, with weight 1/sigma (or 1)."""
    for d, a in zip(jax.tree.leaves(slot.x), jax.tree.leaves(block.x), strict=True):
        np.copyto(d[dst], a[src])
    np.copyto(slot.y[dst], block.y[src], casting="unsafe")
    if block.sigma is None:
        slot.weight[dst] = 1
    else:
        np.copyto(slot.weight[dst], block.sigma[src], casting="unsafe")
        np.reciprocal(slot.weight[dst], out=slot.weight[dst])


def _pad(slot: Slot, m: int) -> None:
    """Points `m:` of `slot` as copies of point `m - 1`, with weight 0."""
    for a in (*jax.tree.leaves(slot.x), slot.y):
        a[m:] = a[m - 1]
    slot.weight[m:] = 0


def _filled_directly(source: ChunkSource, size: int, check_finite: bool,
                     acquire: Callable[[Block], Slot]) -> Iterator[tuple[Chunk, Slot]]:
    """`filled` for random-access sources: each chunk read straight into its buffer
    (sigma into the weight buffer, then inverted in place), checked there."""
    n = int(source.n_points)
    like = source.block_range(0, 1)
    with source.reader() as read:
        for index, start in enumerate(range(0, n, size)):
            m = min(size, n - start)
            slot = acquire(like)
            view = Block(jax.tree.map(lambda a, m=m: a[:m], slot.x), slot.y[:m],
                         None if like.sigma is None else slot.weight[:m])
            read(start, start + m, view)
            yield _finished(source, slot, view, index, start, size, check_finite), slot


def _finished(source: ChunkSource, slot: Slot, view: Block, index: int, start: int,
              size: int, check_finite: bool) -> Chunk:
    """The chunk in `slot` once its `view` has been read: checked, weighted, padded."""
    m = view.length
    check_block(source, view, index, start, None, check_finite)
    if view.sigma is None:
        slot.weight[:m] = 1
    else:
        np.reciprocal(view.sigma, out=view.sigma)
    if m < size:
        _pad(slot, m)
    return Chunk(index, start, m, slot.x, slot.y, slot.weight, view.sigma is None and m == size)


def chunks(source: ChunkSource, size: int, dtype, check_finite: bool) -> Iterator[Chunk]:
    """One pass as host chunks of exactly `size` points (the last padded with weight 0).

    Each chunk's arrays are overwritten by the next one: copy what you keep.
    """
    pool = SlotPool(1, size, dtype)
    for chunk, slot in filled(source, size, dtype, check_finite, pool.acquire):
        yield chunk
        pool.release(slot)


def device_chunks(source: ChunkSource, size: int, dtype, check_finite: bool,
                  depth: int, put: Callable[[PyTree], PyTree] = jax.device_put
                  ) -> Iterator[Chunk]:
    """One pass as device chunks, read and checked up to `depth` chunks ahead in a thread.

    The reader fills a ring of `depth + 2` host buffers; the consumer copies
    each chunk out and hands its buffer back. On CPU, `jax.device_put` aliases
    a 64-byte aligned numpy array instead of copying it (and copies any other),
    so a buffer that will be overwritten is copied once, into a fresh aligned
    array that the device array then owns. Without sigma, full chunks share
    one device array of unit weights. `depth = 0` reads in turn with the
    consumer. `put` places the chunk (the default device; a driver that spreads
    chunks over several devices keeps them on the host and places them itself).
    """
    pool = SlotPool(1 if depth <= 0 else depth + 2, size, dtype)
    items = prefetch(filled(source, size, dtype, check_finite, pool.acquire), depth)
    ones = None
    try:
        for chunk, slot in items:
            unit = chunk.unit_weight
            x, y = jax.tree.map(_aligned_copy, (chunk.x, chunk.y))
            w = None if unit else _aligned_copy(chunk.weight)
            pool.release(slot)
            if unit and ones is None:
                ones = put(np.ones(size, dtype))
            x, y, w = put((x, y, ones if unit else w))
            yield chunk._replace(x=x, y=y, weight=w)
    finally:
        pool.closed.set()
        items.close()


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    """A copy of `a` in a new 64-byte aligned buffer (which `device_put` can adopt)."""
    raw = np.empty(a.nbytes + 64, np.uint8)
    offset = -raw.ctypes.data % 64
    out = raw[offset:offset + a.nbytes].view(a.dtype).reshape(a.shape)
    np.copyto(out, a)
    return out
