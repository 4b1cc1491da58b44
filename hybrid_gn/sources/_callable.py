"""A user function returning a fresh iterator of chunks for each pass, as a source."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from ._protocol import Block, ChunkSource


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
