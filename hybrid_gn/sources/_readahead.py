"""Reading ahead: a background thread produces the chunks while the consumer computes."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import NamedTuple


class Stopped(Exception):
    """Raised in the reading thread once the consumer has gone: the reader stops quietly."""


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
    except Stopped:
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
