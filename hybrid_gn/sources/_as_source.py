"""The source for what a user passes: a source, a tuple of arrays or a callable."""

from __future__ import annotations

from collections.abc import Iterator

from ._arrays import ArraySource
from ._callable import CallableSource
from ._protocol import ChunkSource


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
