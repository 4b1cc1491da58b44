"""Numpy arrays and memmaps as a source."""

from __future__ import annotations

from collections.abc import Iterator

import jax
from jaxtyping import PyTree

from ._protocol import Block, ChunkSource


class ArraySource(ChunkSource):
    """In-memory numpy arrays or `np.memmap`s, sliced without copying.

    For data that is already an array, or a memory-mapped file larger than
    memory: a memmap stays on disk and blocks are converted as they are read.
    A tuple `(x, y[, sigma])` passed to `fit_stream` becomes one. It has
    random access, so the warmup subsample reads only the chunks it needs.

    Args:
        x: a pytree of arrays with leading axis n.
        y: the (n,) data.
        sigma: None or (n,) standard deviations.

    Raises:
        ValueError: `y` not 1-D, or `x` or `sigma` whose leading axis is not
            n.

    Examples:
        >>> import numpy as np
        >>> import hybrid_gn
        >>> source = hybrid_gn.sources.ArraySource(np.arange(10.0), np.ones(10))
        >>> source.n_points
        10
        >>> [block.length for block in source.blocks(4)]
        [4, 4, 2]
        >>> source.block_range(2, 5).x
        array([2., 3., 4.])
    """

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
