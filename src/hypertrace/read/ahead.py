"""Decoding one batch while the caller exports the one before: an iterator run ahead in
a thread of its own, a bounded number of items in advance.

Why: an export spends its time in numpy, pyarrow and the C gather, which let go of
the GIL for the bulk of their work, so the decoder of batch i+1 and the writer of
batch i run on two cores instead of taking turns. Memory stays flat: at most
`depth` items wait between the two.

The caller sees the same items in the same order and any exception the iterator
raises, where it would have raised it. Closing the generator early (a consumer
that stops, an error in the consumer) stops the thread at its next item.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_END = object()
_POLL_S = 0.1               # how often a blocked producer looks whether it was abandoned


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


def ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """`items`, produced up to `depth` ahead of the consumer in a daemon thread."""
    q: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(x: object) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=_POLL_S)
                return True
            except queue.Full:
                pass
        return False

    def run() -> None:
        it = iter(items)
        try:
            for x in it:
                if not put(x):
                    return
        except BaseException as e:       # handed to the consumer, raised there
            put(_Raised(e))
            return
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        put(_END)

    t = threading.Thread(target=run, name="hypertrace-decode-ahead", daemon=True)
    t.start()
    try:
        while True:
            x = q.get()
            if x is _END:
                return
            if isinstance(x, _Raised):
                raise x.exc
            yield x  # type: ignore[misc]
    finally:
        stop.set()
        t.join()
