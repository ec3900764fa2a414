"""A small bounded cache whose entries expire, with a clock tests can drive.

No well-kept library offers both an LRU bound and a per-entry lifetime with
an injectable clock in a few lines (``cachetools.TTLCache`` has one lifetime
for all entries); this is that, thread-safe.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

Clock = Callable[[], float]


class TTLCache:
    """A bounded mapping whose entries expire (least recently used dropped first).

    *clock* returns seconds (default :func:`time.monotonic`); tests pass a
    fake one instead of sleeping.
    """

    def __init__(self, max_entries: int, clock: Clock | None = None):
        self.max_entries = max(1, max_entries)
        self.clock = clock or time.monotonic
        self._data: collections.OrderedDict[Hashable, tuple[float, Any]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        """The value under *key*, or None when absent or expired."""
        now = self.clock()
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            expires, value = entry
            if expires <= now:
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any, ttl: float) -> None:
        """Keep *value* under *key* for *ttl* seconds (nothing when ``ttl <= 0``)."""
        if ttl <= 0:
            return
        with self._lock:
            self._data[key] = (self.clock() + ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def pop(self, key: Hashable) -> Any:
        with self._lock:
            entry = self._data.pop(key, None)
        return None if entry is None else entry[1]

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def keys(self) -> list:
        """The current keys (expired ones included until they are next read)."""
        with self._lock:
            return list(self._data)
