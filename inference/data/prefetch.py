"""Run an iterator on a thread a few items ahead, and count how long its consumer waited.

Why: the training thread should spend its time in torch, not in Zarr decoding or in numpy row
gathers; both release the GIL for their heavy parts, so a producer thread overlaps them with the
training step. The consumer's blocked time is the data path's remaining cost to training.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

_END = object()


def background(source: Iterator[Any], depth: int, owner: Any = None) -> Iterator[Any]:
    """Items of ``source``, produced on a daemon thread up to ``depth`` ahead.

    Args:
        source: any iterator (a generator is closed on the producer thread when the consumer stops
            early).
        depth: items buffered ahead (memory: ``depth`` batches).
        owner: if given, ``owner.wait_seconds`` grows by the time the consumer blocked on the queue.

    An exception raised by ``source`` is re-raised in the consumer at the point it would have
    arrived.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker() -> None:
        try:
            for item in source:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # surfaced in the consumer
            put(e)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    th = threading.Thread(target=worker, daemon=True, name="batch-prefetch")
    th.start()
    try:
        while True:
            t0 = time.perf_counter()
            item = q.get()
            if owner is not None:
                owner.wait_seconds += time.perf_counter() - t0
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        th.join()
