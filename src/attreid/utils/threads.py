"""Running a producer one step ahead of its consumer, in a background thread."""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_DONE = object()


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(items: Iterable[T], ahead: int = 1) -> Iterator[T]:
    """Iterate ``items`` while a background thread produces up to ``ahead`` items in advance.

    Meant for image decoding (PIL and torch release the GIL while they decode and resize) next
    to a model's forward pass: the decoder of the next batch then runs while the model computes.
    The items come in order; an exception raised by ``items`` is raised here, at the item where
    it happened. Closing the iterator early (``break``) stops the thread after the item it is
    producing. ``ahead`` < 1 iterates in the calling thread (no overlap).
    """
    if ahead < 1:
        yield from items
        return
    slots: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put(item)
        except BaseException as exc:  # handed to the consumer, raised there
            slots.put(_Raised(exc))
            return
        slots.put(_DONE)

    worker = threading.Thread(target=produce, name="attreid-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()
