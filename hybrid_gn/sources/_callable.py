"""A user function returning a fresh iterator of chunks for each pass, as a source."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from ._protocol import Block, ChunkSource


class CallableSource(ChunkSource):
    """`make_iterator()` returns a new iterator of `(x, y)` or `(x, y, sigma)` per pass.

    For data generated on the fly or read by code of your own (a generator
    function is the natural `make_iterator`). Chunks may have any length;
    they are re-cut into the driver's chunk size. The number of points is
    unknown until a pass has been read. A callable passed to `fit_stream`
    becomes one.

    Args:
        make_iterator: called once per pass; it must return a fresh iterator
            each time (the data is read once per iteration).

    Raises:
        TypeError: `make_iterator` is not callable.
        ValueError: (while reading) `make_iterator` returned None or the
            iterator of the last pass, or a chunk that is not a tuple
            `(x, y)` or `(x, y, sigma)`.

    Examples:
        >>> import numpy as np
        >>> import hybrid_gn
        >>> def chunks():
        ...     for start in range(0, 10, 3):
        ...         x = np.arange(start, min(start + 3, 10), dtype=float)
        ...         yield x, 2.0 * x
        >>> source = hybrid_gn.sources.CallableSource(chunks)
        >>> print(source.n_points)
        None
        >>> [block.length for block in source.blocks(4)]  # as the callable yields them
        [3, 3, 3, 1]
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
