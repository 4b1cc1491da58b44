"""The source interface (`ChunkSource`), the raw `Block`s it delivers, the `Chunk`s they become."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import numpy as np
from jaxtyping import PyTree


class Block(NamedTuple):
    """Raw data of consecutive points as a source delivers it (numpy arrays).

    What `ChunkSource.blocks` yields, a named tuple `(x, y, sigma)`; the
    driver re-cuts blocks into its own chunks, so a block may have any
    length.

    Attributes:
        x: arrays with leading axis m (a pytree).
        y: the (m,) data.
        sigma: (m,) standard deviations, or None.

    Examples:
        >>> import numpy as np
        >>> import hybrid_gn
        >>> block = hybrid_gn.sources.Block(np.arange(5.0), np.ones(5), None)
        >>> block.length
        5
        >>> block.take(1, 3).x
        array([1., 2.])
    """

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
        """Every array as a numpy array; `y` and `sigma` are one array each even when given
        as lists. Numpy arrays (a memmap too) are kept as they are, unless `native` and
        their byte order is not the machine's (big-endian HDF5/FITS data)."""
        return Block(jax.tree.map(lambda a: _numpy_array(a, native), self.x),
                     _numpy_array(self.y, native),
                     None if self.sigma is None else _numpy_array(self.sigma, native))


def _numpy_array(a, native: bool = True) -> np.ndarray:
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

    The base class of the sources `fit_stream` reads: `ArraySource`,
    `HDF5Source` and `CallableSource`. A source only has to produce, for each
    pass, a fresh sequence of raw `Block`s `(x, y, sigma or None)`; the
    driver cuts them into fixed-size chunks, checks each block (shapes,
    dtypes, NaN/Inf, sigma > 0) with errors that name the chunk and the
    dataset, and can read ahead in a background thread. A new kind of source
    subclasses it and implements `blocks`.

    Attributes:
        n_points: the number of points when known without a pass (else
            None).
        random_access: whether the source also implements `block_range`,
            which the warmup uses to read only the chunks it samples.

    Examples:
        >>> import numpy as np
        >>> import hybrid_gn
        >>> class Ramp(hybrid_gn.sources.ChunkSource):
        ...     # y = 2 x at x = 0, 1, ..., n - 1, made on the fly for each pass
        ...     def __init__(self, n):
        ...         self.n = n
        ...     def blocks(self, size):
        ...         for start in range(0, self.n, size):
        ...             x = np.arange(start, min(start + size, self.n), dtype=float)
        ...             yield hybrid_gn.sources.Block(x, 2.0 * x, None)
        >>> source = Ramp(10)
        >>> print(source.n_points, source.random_access)
        None False
        >>> [block.length for block in source.blocks(4)]
        [4, 4, 2]
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
