"""The source for what a user passes: a source, a tuple of arrays or a callable."""

from __future__ import annotations

from collections.abc import Iterator

from ._arrays import ArraySource
from ._callable import CallableSource
from ._protocol import ChunkSource


def as_source(data) -> ChunkSource:
    """A `ChunkSource` from a source, a tuple `(x, y[, sigma])` of arrays, or a callable.

    What `fit_stream` does with its `source` argument: a source is kept, a
    tuple becomes an `ArraySource`, a callable a `CallableSource`.

    Args:
        data: a `ChunkSource`, a tuple `(x, y)` or `(x, y, sigma)` of arrays,
            or a callable returning a fresh iterator of such chunks for each
            pass.

    Returns:
        The `ChunkSource`.

    Raises:
        TypeError: an iterator (a generator, say), which can be read only
            once while the fit reads the data once per iteration, or anything
            else that is not a source.

    Examples:
        >>> import numpy as np
        >>> import hybrid_gn
        >>> source = hybrid_gn.sources.as_source((np.arange(5.0), np.ones(5)))
        >>> type(source).__name__, source.n_points
        ('ArraySource', 5)
        >>> def chunks():
        ...     yield np.arange(3.0), np.ones(3)
        >>> type(hybrid_gn.sources.as_source(chunks)).__name__
        'CallableSource'
        >>> hybrid_gn.sources.as_source(chunks())
        Traceback (most recent call last):
        ...
        TypeError: source is an iterator (e.g. a generator), which can be read only once, ...
    """
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
