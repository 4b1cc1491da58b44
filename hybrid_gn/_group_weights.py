"""Per-group residual weights: every point of group g counts w_g times in the cost.

The cost becomes 1/2 sum_g w_g sum_{i in g} r_i^2. A weight is folded into
the point's standard deviation (sigma_i / sqrt(w_g)), so it reaches every
driver through the one per-point weight the accumulation already has: in
memory, batched, streamed (block by block) and sharded alike. The group of
a point is given by a separate integer array, or read from a column of x
(an index into the last axis of a 2-D x, or a key of a dict x), which is
what a streamed source carries.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import equinox as eqx
import jax
import numpy as np
from jaxtyping import PyTree

from .sources._protocol import Block, ChunkSource


class GroupWeights(eqx.Module):
    """A weight per group of points, folded into sigma.

    Attributes:
        weights: (G,) positive weights, one per group label 0..G-1.
        labels: (n,) integer group labels (or (B, n) for `fit_batch`), or None to
            read them from `column` of x.
        column: where x holds the labels: an int (the last axis of a 2-D x) or a str
            (a key of a dict x); None when `labels` is given.

    Examples:
        >>> import numpy as np
        >>> import hybrid_gn
        >>> groups = hybrid_gn.GroupWeights([1.0, 4.0], labels=[0, 0, 1])
        >>> groups.sigma(np.zeros(3), None)
        array([1. , 1. , 0.5])
    """

    weights: np.ndarray
    labels: np.ndarray | None = None
    column: int | str | None = eqx.field(static=True, default=None)

    def __init__(self, weights, labels=None, column: int | str | None = None):
        weights = np.asarray(weights, float)
        if weights.ndim != 1 or weights.size == 0 or not np.all(np.isfinite(weights)) \
                or not np.all(weights > 0):
            raise ValueError(f"group weights must be a non-empty 1-D array of finite positive "
                             f"values, got {weights!r}")
        if (labels is None) == (column is None):
            raise ValueError("GroupWeights needs exactly one of labels= (an integer array) "
                             "and column= (where x holds the labels)")
        if column is not None and (isinstance(column, bool)
                                   or not isinstance(column, numbers.Integral | str)):
            raise TypeError(f"column must be an int (of a 2-D x) or a str (a key of a dict "
                            f"x), got {column!r}")
        self.weights = weights
        self.labels = None if labels is None else _integers("labels", labels)
        self.column = column

    def sigma(self, x: PyTree, sigma) -> np.ndarray:
        """The per-point sigma with the group weights folded in (shape of the labels)."""
        labels = self.labels if self.column is None else _integers("x's label column",
                                                                   _column(x, self.column))
        if labels.size and (labels.min() < 0 or labels.max() >= self.weights.size):
            raise ValueError(f"group labels must lie in [0, {self.weights.size}) (one weight "
                             f"per group), got labels from {labels.min()} to {labels.max()}")
        base = 1.0 if sigma is None else np.asarray(sigma, float)
        try:
            return np.broadcast_to(base, labels.shape) / np.sqrt(self.weights[labels])
        except ValueError:
            raise ValueError(f"group labels of shape {labels.shape} do not match sigma of "
                             f"shape {np.shape(sigma)}") from None

    def source(self, source: ChunkSource) -> ChunkSource:
        """`source` with the weights folded into each block's sigma (labels read from x)."""
        if self.column is None:
            raise ValueError("a streamed fit reads the group of each point from x: give "
                             "GroupWeights(weights, column=...) rather than labels=")
        return _Weighted(source, self)


class _Weighted(ChunkSource):
    """A source whose blocks carry the group weights in their sigma."""

    def __init__(self, inner: ChunkSource, groups: GroupWeights):
        self.inner, self.groups = inner, groups
        self.n_points, self.random_access = inner.n_points, inner.random_access

    def _weighted(self, block: Block) -> Block:
        block = block.as_numpy()
        return Block(block.x, block.y, self.groups.sigma(block.x, block.sigma))

    def blocks(self, size: int) -> Iterator[Block]:
        return (self._weighted(block) for block in self.inner.blocks(size))

    def block_range(self, start: int, stop: int) -> Block:
        return self._weighted(self.inner.block_range(start, stop))

    def describe(self, field: str) -> str:
        return self.inner.describe(field)


def _column(x: PyTree, column: int | str) -> np.ndarray:
    if isinstance(column, str):
        if not isinstance(x, dict) or column not in x:
            raise ValueError(f"GroupWeights column {column!r} is not a key of x")
        return np.asarray(x[column])
    leaves = jax.tree.leaves(x)
    if len(leaves) != 1 or np.ndim(leaves[0]) < 2:
        raise ValueError(f"GroupWeights column={column} needs x to be one array of shape "
                         f"(n, k); give column= a key of a dict x, or labels=")
    return np.asarray(leaves[0])[..., column]


def _integers(name: str, values) -> np.ndarray:
    a = np.asarray(values)
    if a.dtype.kind not in "iu":
        if a.dtype.kind != "f" or not np.all(a == np.round(a)):
            raise ValueError(f"{name} must hold integer group labels, got dtype {a.dtype}")
        a = a.astype(np.int64)
    return a
