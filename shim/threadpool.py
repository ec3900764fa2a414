"""A thread pool that hands each request to the thread that went idle last.

gthread's pool (``concurrent.futures.ThreadPoolExecutor``) grows to
``server.threads`` threads at a busy moment (the shipped 32) and keeps them;
its queue then wakes its waiting threads in turn, so 8 steady clients are
served by all 32 threads one after another instead of by the 8 that just
finished.  Every switch costs caches and a GIL hand-over: a forwarded 1 KiB
request took 0.55-0.62 ms of CPU after a 64-client load against 0.42-0.48 ms
before it (0.46-0.52 with 8 threads).  Here the thread that went idle last
takes the next item (a stack of waiting threads), so a steady load keeps to as
few threads as it needs.  Only the queue is replaced: the executor's own
logic (growth, shutdown, futures) is the standard library's.
"""

from __future__ import annotations

import collections
import queue
import threading
from concurrent import futures


class _Waiter:
    """One idle thread: blocked on *handed* until put() has set *item*."""

    __slots__ = ("handed", "item")

    def __init__(self):
        self.handed = threading.Lock()
        self.handed.acquire()
        self.item = None


class _LastIdleFirst:
    """The executor's work queue, as far as it uses one: items first in, first out; waiters last in, first out."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: collections.deque = collections.deque()
        self._waiters: list[_Waiter] = []

    def put(self, item, block=True, timeout=None):
        with self._lock:
            if self._waiters:
                waiter = self._waiters.pop()  # the thread that went idle last
                waiter.item = item
                waiter.handed.release()
                return
            self._items.append(item)

    def get(self, block=True, timeout=None):
        with self._lock:
            if self._items:
                return self._items.popleft()
            if not block:
                raise queue.Empty
            waiter = _Waiter()
            self._waiters.append(waiter)
        waiter.handed.acquire()  # released by put() once the item is set
        return waiter.item

    def get_nowait(self):
        return self.get(block=False)

    def put_nowait(self, item):
        self.put(item)

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items


class LastIdleFirstExecutor(futures.ThreadPoolExecutor):
    """``ThreadPoolExecutor`` whose next item goes to the thread that went idle last."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Set before any thread exists: every thread gets this one.
        self._work_queue = _LastIdleFirst()  # type: ignore[assignment]  # the part of SimpleQueue the executor uses
