"""Checks of the blocks a source delivers, with errors naming the chunk and the data."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from ._protocol import Block, ChunkSource


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
