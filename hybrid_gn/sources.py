"""Data sources for the streaming driver: the data is read in passes, chunk by chunk.

A source only has to produce, for each pass, a fresh sequence of raw blocks
`(x, y, sigma or None)`; this module turns them into fixed-size chunks
`(x, y, weight)` with the last, short chunk padded by weight-0 points (so one
compiled accumulation serves every chunk), checks each block (shapes, dtypes,
NaN/Inf, sigma > 0) with errors that name the chunk and the dataset, and can
read ahead in a background thread while the current chunk is being computed.

Three sources: `ArraySource` (numpy arrays, `np.memmap`), `HDF5Source`
(datasets of an HDF5 file read slice by slice) and `CallableSource` (a user
function returning a new iterator of chunks for each pass). Array and HDF5
sources have random access, so the warmup subsample reads only the chunks it
needs.
"""

from __future__ import annotations

import abc
import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree


class Block(NamedTuple):
    """Raw data of consecutive points as a source delivers it (numpy arrays)."""

    x: PyTree  # arrays with leading axis m
    y: np.ndarray  # (m,)
    sigma: np.ndarray | None  # (m,) standard deviations, or None

    @property
    def length(self) -> int:
        """The number of points (the length of `y`)."""
        return int(np.shape(self.y)[0])

    def take(self, start: int, stop: int) -> Block:
        """Points `start:stop` (views, no copy)."""
        return Block(jax.tree.map(lambda a: a[start:stop], self.x), self.y[start:stop],
                     None if self.sigma is None else self.sigma[start:stop])

    def as_numpy(self, native: bool = True) -> Block:
        """Every array as a numpy array (see `numpy_array`); `y` and `sigma` are one array
        each even when given as lists."""
        return Block(jax.tree.map(lambda a: numpy_array(a, native), self.x),
                     numpy_array(self.y, native),
                     None if self.sigma is None else numpy_array(self.sigma, native))


def numpy_array(a, native: bool = True) -> np.ndarray:
    """`a` as a numpy array: numpy arrays (a memmap too) are kept as they are, unless
    `native` and their byte order is not the machine's (big-endian HDF5/FITS data)."""
    a = a if isinstance(a, np.ndarray) else np.asarray(a)
    return a if not native or a.dtype.isnative else a.astype(native_dtype(a.dtype))


def native_dtype(dtype: np.dtype) -> np.dtype:
    """`dtype` in the machine's byte order."""
    return dtype.newbyteorder("=")


class Chunk(NamedTuple):
    """`size` points ready for the accumulation; padding points have weight 0."""

    index: int
    start: int  # index of the chunk's first point in the data
    n_valid: int  # real points (the rest is padding)
    x: PyTree
    y: np.ndarray | jax.Array
    weight: np.ndarray | jax.Array
    unit_weight: bool = False  # every weight is 1 (no sigma, no padding)


class ChunkSource(abc.ABC):
    """Data that can be read from the start as often as needed (one read per pass).

    `n_points` is the number of points when known without a pass (else None).
    Sources with `random_access` also implement `block_range`, which the
    warmup uses to read only the chunks it samples.
    """

    n_points: int | None = None
    random_access: bool = False

    @abc.abstractmethod
    def blocks(self, size: int) -> Iterator[Block]:
        """A fresh pass over all points, in blocks of (preferably) `size` points.

        The driver copies each block before it asks for the next one, so a
        source may reuse its arrays from block to block.
        """

    def block_range(self, start: int, stop: int) -> Block:
        """Points `start:stop` (random-access sources only)."""
        raise NotImplementedError(f"{type(self).__name__} has no random access")

    @contextlib.contextmanager
    def reader(self) -> Iterator[Callable[[int, int, Block], None]]:
        """For one pass: `read(start, stop, out)` writes points `start:stop` into the
        arrays of `out` (random access only; `out.sigma` is None without sigma).

        Sources that can read straight into a buffer (HDF5) override this to
        save a copy, and keep their file open for the pass.
        """
        def read(start: int, stop: int, out: Block) -> None:
            block = self.block_range(start, stop)
            for d, a in zip(jax.tree.leaves(out.x), jax.tree.leaves(block.x), strict=True):
                np.copyto(d, a, casting="unsafe")
            np.copyto(out.y, block.y, casting="unsafe")
            if out.sigma is not None:
                np.copyto(out.sigma, block.sigma, casting="unsafe")

        yield read

    def describe(self, field: str) -> str:
        """How error messages name the data of `field` ('x', 'y' or 'sigma')."""
        return field


class ArraySource(ChunkSource):
    """In-memory numpy arrays or `np.memmap`s, sliced without copying."""

    random_access = True

    def __init__(self, x: PyTree, y, sigma=None):
        # kept as given (a memmap stays on disk); blocks are converted as they are read
        self.x, self.y, self.sigma = Block(x, y, sigma).as_numpy(native=False)
        if self.y.ndim != 1:
            raise ValueError(f"y must be 1-D of shape (n,), got shape {self.y.shape}")
        self.n_points = int(self.y.shape[0])
        for leaf in jax.tree.leaves(self.x):
            if leaf.ndim == 0 or leaf.shape[0] != self.n_points:
                raise ValueError(f"x and y disagree: x has an array of shape {leaf.shape}, "
                                 f"whose leading axis must equal len(y) = {self.n_points}")
        if self.sigma is not None and self.sigma.shape != (self.n_points,):
            raise ValueError(f"sigma must have shape (n,) = ({self.n_points},), "
                             f"got {self.sigma.shape}")

    def block_range(self, start: int, stop: int) -> Block:
        return Block(self.x, self.y, self.sigma).take(start, stop)

    def blocks(self, size: int) -> Iterator[Block]:
        for start in range(0, self.n_points, size):
            yield self.block_range(start, min(start + size, self.n_points))


class HDF5Source(ChunkSource):
    """Named datasets of an HDF5 file: `x` (n,) or (n, d), `y` (n,), optional `sigma` (n,).

    The file is opened for each pass (in the reading thread) and read one
    slice at a time, so memory stays at one chunk whatever the file size.
    """

    random_access = True

    def __init__(self, path: str | os.PathLike, x: str = "x", y: str = "y",
                 sigma: str | None = None):
        import h5py

        self.path = os.fspath(path)
        self.names = {"x": x, "y": y, "sigma": sigma}
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"HDF5 file not found: {self.path}")
        with h5py.File(self.path, "r") as f:
            shapes = {}
            for field, name in self.names.items():
                if name is None:
                    continue
                if name not in f or not isinstance(f[name], h5py.Dataset):
                    available = sorted(k for k in f if isinstance(f[k], h5py.Dataset))
                    raise ValueError(f"HDF5 dataset {name!r} (for {field}) does not exist in "
                                     f"{self.path}; datasets there: {available}")
                shapes[field] = f[name].shape
        n = shapes["y"][0] if len(shapes["y"]) == 1 else None
        if n is None:
            raise ValueError(f"{self.describe('y')} must be 1-D, got shape {shapes['y']}")
        if len(shapes["x"]) not in (1, 2) or shapes["x"][0] != n:
            raise ValueError(f"{self.describe('x')} must have shape (n,) or (n, d) with "
                             f"n = {n} (the length of {self.describe('y')}), "
                             f"got {shapes['x']}")
        if sigma is not None and shapes["sigma"] != (n,):
            raise ValueError(f"{self.describe('sigma')} must have shape ({n},), "
                             f"got {shapes['sigma']}")
        self.n_points = int(n)

    def describe(self, field: str) -> str:
        return f"dataset {self.names[field]!r} of {os.path.basename(self.path)}"

    def _check_length(self, f) -> None:
        """The file is read anew for each pass: it must still hold the points it had."""
        for field, name in self.names.items():
            if name is not None and f[name].shape[0] != self.n_points:
                raise ValueError(f"the source changed between passes: {self.describe(field)} "
                                 f"now has {f[name].shape[0]} points, it had {self.n_points}")

    def _read(self, f, start: int, stop: int) -> Block:
        sigma = self.names["sigma"]
        return Block(f[self.names["x"]][start:stop], f[self.names["y"]][start:stop],
                     None if sigma is None else f[sigma][start:stop])

    def block_range(self, start: int, stop: int) -> Block:
        import h5py

        with h5py.File(self.path, "r") as f:
            return self._read(f, start, stop)

    @contextlib.contextmanager
    def reader(self) -> Iterator[Callable[[int, int, Block], None]]:
        import h5py

        with h5py.File(self.path, "r") as f:
            self._check_length(f)
            datasets = {field: f[name] for field, name in self.names.items() if name is not None}

            def read(start: int, stop: int, out: Block) -> None:
                for field, buffer in (("x", out.x), ("y", out.y), ("sigma", out.sigma)):
                    if buffer is not None:
                        datasets[field].read_direct(buffer, np.s_[start:stop])

            yield read

    def blocks(self, size: int) -> Iterator[Block]:
        """Reads into two or three buffers reused for every block of the pass."""
        import h5py

        with h5py.File(self.path, "r") as f:
            datasets = [f[name] for name in self.names.values() if name is not None]
            self._check_length(f)
            buffers = [np.empty((size, *d.shape[1:]), native_dtype(d.dtype)) for d in datasets]
            for start in range(0, self.n_points, size):
                m = min(size, self.n_points - start)
                for d, b in zip(datasets, buffers, strict=True):
                    d.read_direct(b, np.s_[start:start + m], np.s_[0:m])
                views = [b[:m] for b in buffers]
                yield Block(views[0], views[1], views[2] if len(views) == 3 else None)


class CallableSource(ChunkSource):
    """`make_iterator()` returns a new iterator of `(x, y)` or `(x, y, sigma)` per pass.

    Chunks may have any length; they are re-cut into the driver's chunk size.
    The number of points is unknown until a pass has been read.
    """

    def __init__(self, make_iterator: Callable[[], Iterable]):
        if not callable(make_iterator):
            raise TypeError("make_iterator must be callable, returning an iterator of "
                            "(x, y) or (x, y, sigma) chunks")
        self.make_iterator = make_iterator
        self._previous = None  # the iterator of the last pass: a new one is due each pass

    def blocks(self, size: int) -> Iterator[Block]:
        items = self.make_iterator()
        if items is self._previous or items is None:
            raise ValueError("the source callable must return a fresh iterator for each pass "
                             "(the data is read once per iteration); it returned "
                             + ("None" if items is None else "the iterator of the last pass")
                             + ": write it as a generator function, or return iter(...) of a "
                               "list of chunks")
        self._previous = items
        for i, item in enumerate(items):
            if not isinstance(item, tuple | list) or len(item) not in (2, 3):
                raise ValueError(f"chunk {i} from the source must be a tuple (x, y) or "
                                 f"(x, y, sigma), got {type(item).__name__}")
            x, y, sigma = (*item, None) if len(item) == 2 else item
            yield Block(x, y, sigma).as_numpy()


def as_source(data) -> ChunkSource:
    """A `ChunkSource` from a source, a tuple `(x, y[, sigma])` of arrays, or a callable."""
    if isinstance(data, ChunkSource):
        return data
    if isinstance(data, tuple) and len(data) in (2, 3):
        return ArraySource(*data)
    if callable(data):
        return CallableSource(data)
    if isinstance(data, Iterator):
        raise TypeError("source is an iterator (e.g. a generator), which can be read only once, "
                        "but the fit reads the data once per iteration: pass a callable that "
                        "returns a fresh iterator for each pass, e.g. the generator function "
                        "itself")
    raise TypeError("source must be a hybrid_gn.sources.ChunkSource, a tuple (x, y[, sigma]) "
                    f"of arrays or a callable returning an iterator of chunks; got "
                    f"{type(data).__name__}")


# ------------------------------------------------------------------------------------------
# Blocks -> fixed-size, checked, padded chunks
# ------------------------------------------------------------------------------------------


class Layout(NamedTuple):
    """Per-point shapes and dtypes every block must share (from the first block)."""

    x: PyTree  # a pytree of (trailing shape, dtype) pairs
    has_sigma: bool

    @classmethod
    def of(cls, block: Block) -> Layout:
        return cls(jax.tree.map(lambda a: (a.shape[1:], a.dtype.str), block.x),
                   block.sigma is not None)


def check_block(source: ChunkSource, block: Block, index: int, start: int,
                layout: Layout | None, check_finite: bool) -> None:
    """Raise a ValueError naming chunk `index` (points from `start`) for bad data."""
    if np.ndim(block.y) != 1:
        raise ValueError(f"chunk {index}: {source.describe('y')} must be 1-D, got shape "
                         f"{np.shape(block.y)}")
    m = np.shape(block.y)[0]
    where = f"chunk {index} (points {start} to {start + m - 1})"
    _check_shapes(source, block, m, where)
    if layout is not None:
        _check_layout(source, block, layout, where)
    if check_finite:
        _check_finite(source, block, m, start, where)
    _check_positive(source, block, m, start, where)


def _check_shapes(source: ChunkSource, block: Block, m: int, where: str) -> None:
    """Every array holds `m` points (sigma one number each) of real numbers (y, sigma)."""
    for leaf in jax.tree.leaves(block.x):
        if leaf.ndim == 0 or leaf.shape[0] != m:
            raise ValueError(f"{where}: {source.describe('x')} has shape {leaf.shape} but "
                             f"{source.describe('y')} has {m} points")
    for name, a in (("y", block.y), ("sigma", block.sigma)):
        if a is not None and not _real(a.dtype):
            raise ValueError(f"{where}: {source.describe(name)} has dtype {a.dtype}; it must "
                             f"hold real numbers")
    if block.sigma is not None and block.sigma.shape != (m,):
        raise ValueError(f"{where}: {source.describe('sigma')} has shape {block.sigma.shape}, "
                         f"expected ({m},)")


def _check_layout(source: ChunkSource, block: Block, layout: Layout, where: str) -> None:
    """The block has chunk 0's per-point shapes and dtypes, and sigma if and only if it had."""
    mine = Layout.of(block)
    if mine.has_sigma != layout.has_sigma:
        raise ValueError(f"{where}: sigma is {'given' if mine.has_sigma else 'missing'} "
                         f"here but {'given' if layout.has_sigma else 'missing'} in chunk 0")
    if jax.tree.structure(mine.x) != jax.tree.structure(layout.x) or mine.x != layout.x:
        raise ValueError(f"{where}: {source.describe('x')} has per-point shapes/dtypes "
                         f"{mine.x}, but chunk 0 had {layout.x}")


def _check_finite(source: ChunkSource, block: Block, m: int, start: int, where: str) -> None:
    """No NaN or Inf in x, y or sigma."""
    fields = [("y", block.y), *[("x", a) for a in jax.tree.leaves(block.x)]]
    if block.sigma is not None:
        fields.append(("sigma", block.sigma))
    for name, a in fields:  # a sum is NaN/Inf if any value is (or, rarely, on overflow)
        if (np.issubdtype(a.dtype, np.inexact) and not np.isfinite(np.sum(a))
                and not np.all(np.isfinite(a))):
            bad = np.flatnonzero(~np.isfinite(a).reshape(m, -1).all(axis=1))
            raise ValueError(f"{where}: {source.describe(name)} contains NaN or Inf "
                             f"({bad.size} points, first at point {start + bad[0]}); "
                             f"clean the data or pass check_finite=False")


def _check_positive(source: ChunkSource, block: Block, m: int, start: int, where: str) -> None:
    """sigma, where given, is strictly positive."""
    if block.sigma is not None and m and not np.min(block.sigma) > 0:
        bad = int(np.argmin(block.sigma > 0))
        raise ValueError(f"{where}: {source.describe('sigma')} must be strictly positive "
                         f"(point {start + bad} has {block.sigma[bad]})")


def _real(dtype) -> bool:
    return (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
            or dtype == np.bool_)


def _weight(block: Block, dtype) -> np.ndarray:
    if block.sigma is None:
        return np.ones(np.shape(block.y)[0], dtype)
    return (1 / np.asarray(block.sigma, dtype)).astype(dtype)


def _concat(parts: Sequence[_Points]) -> _Points:
    """The points of `parts` (blocks, or weighted points, of one layout) one after another."""
    if len(parts) == 1:
        return parts[0]
    return jax.tree.map(lambda *a: np.concatenate(a), *parts)


def checked_blocks(source: ChunkSource, size: int, check_finite: bool,
                   blocks: Iterable[Block] | None = None) -> Iterator[tuple[int, Block]]:
    """The source's blocks of one pass, each checked, with the index of their first point."""
    layout = None
    start = 0
    for i, block in enumerate(source.blocks(size) if blocks is None else blocks):
        block = block.as_numpy()
        check_block(source, block, i, start, layout, check_finite)
        if layout is None:
            layout = Layout.of(block)
        if block.length:
            yield start, block
        start += block.length


class _Slot(NamedTuple):
    """One host buffer of a chunk, reused pass after pass."""

    x: PyTree
    y: np.ndarray
    weight: np.ndarray


class _SlotPool:
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

    def acquire(self, like: Block) -> _Slot:
        if self.free.empty() and self.made < self.count:
            self.made += 1
            return _Slot(jax.tree.map(
                lambda a: np.empty((self.size, *a.shape[1:]), native_dtype(a.dtype)), like.x),
                         np.empty(self.size, self.dtype), np.empty(self.size, self.dtype))
        while True:
            if self.closed.is_set():
                raise _Stopped
            try:
                return self.free.get(timeout=0.05)
            except queue.Empty:
                continue

    def release(self, slot: _Slot) -> None:
        self.free.put(slot)


class _Stopped(Exception):
    """The consumer has gone; the reader stops."""


def _filled(source: ChunkSource, size: int, dtype, check_finite: bool,
            acquire: Callable[[Block], _Slot]) -> Iterator[tuple[Chunk, _Slot]]:
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


def _copy_into(slot: _Slot, dst: slice, block: Block, src: slice) -> None:
    """Points `src` of `block` into points `dst` of `slot`, with weight 1/sigma (or 1)."""
    for d, a in zip(jax.tree.leaves(slot.x), jax.tree.leaves(block.x), strict=True):
        np.copyto(d[dst], a[src])
    np.copyto(slot.y[dst], block.y[src], casting="unsafe")
    if block.sigma is None:
        slot.weight[dst] = 1
    else:
        np.copyto(slot.weight[dst], block.sigma[src], casting="unsafe")
        np.reciprocal(slot.weight[dst], out=slot.weight[dst])


def _pad(slot: _Slot, m: int) -> None:
    """Points `m:` of `slot` as copies of point `m - 1`, with weight 0."""
    for a in (*jax.tree.leaves(slot.x), slot.y):
        a[m:] = a[m - 1]
    slot.weight[m:] = 0


def _filled_directly(source: ChunkSource, size: int, check_finite: bool,
                     acquire: Callable[[Block], _Slot]) -> Iterator[tuple[Chunk, _Slot]]:
    """`_filled` for random-access sources: each chunk read straight into its buffer
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


def _finished(source: ChunkSource, slot: _Slot, view: Block, index: int, start: int,
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
    pool = _SlotPool(1, size, dtype)
    for chunk, slot in _filled(source, size, dtype, check_finite, pool.acquire):
        yield chunk
        pool.release(slot)


def device_chunks(source: ChunkSource, size: int, dtype, check_finite: bool,
                  depth: int) -> Iterator[Chunk]:
    """One pass as device chunks, read and checked up to `depth` chunks ahead in a thread.

    The reader fills a ring of `depth + 2` host buffers; the consumer copies
    each chunk out and hands its buffer back. On CPU, `jax.device_put` aliases
    a 64-byte aligned numpy array instead of copying it (and copies any other),
    so a buffer that will be overwritten is copied once, into a fresh aligned
    array that the device array then owns. Without sigma, full chunks share
    one device array of unit weights. `depth = 0` reads in turn with the
    consumer.
    """
    pool = _SlotPool(1 if depth <= 0 else depth + 2, size, dtype)
    items = prefetch(_filled(source, size, dtype, check_finite, pool.acquire), depth)
    ones = None
    try:
        for chunk, slot in items:
            unit = chunk.unit_weight
            x, y = jax.tree.map(_aligned_copy, (chunk.x, chunk.y))
            w = None if unit else _aligned_copy(chunk.weight)
            pool.release(slot)
            if unit and ones is None:
                ones = jax.device_put(np.ones(size, dtype))
            x, y, w = jax.device_put((x, y, ones if unit else w))
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


# ------------------------------------------------------------------------------------------
# Reading ahead
# ------------------------------------------------------------------------------------------

_END = object()


class _Failure(NamedTuple):
    error: BaseException


def prefetch(items: Iterator, depth: int) -> Iterator:
    """The items of `items`, produced up to `depth` ahead in a background thread.

    The producer (reading, checking, padding) overlaps with the consumer's
    computation. An error in the producer is re-raised in the consumer where
    its item would have arrived; a consumer that stops early stops the
    producer. `depth = 0` produces in turn, in the consumer's thread.
    """
    if depth <= 0:
        yield from items
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(items, buffer, stop),
                              name="hybrid_gn-reader", daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not _END:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def _produce(items: Iterator, buffer: queue.Queue, stop: threading.Event) -> None:
    """The reading thread: every item into `buffer`, then `_END` or the error that ended it."""
    try:
        for item in items:
            if not _put(buffer, stop, item):
                return
        _put(buffer, stop, _END)
    except _Stopped:
        return
    except BaseException as error:  # handed to the consumer, re-raised there
        _put(buffer, stop, _Failure(error))


def _put(buffer: queue.Queue, stop: threading.Event, item) -> bool:
    """`item` into `buffer` once it has room; False if the consumer stops first."""
    while not stop.is_set():
        try:
            buffer.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


# ------------------------------------------------------------------------------------------
# Survey and warmup subsample
# ------------------------------------------------------------------------------------------


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
        head = source.block_range(0, min(size, n))
        head = head.as_numpy()
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
