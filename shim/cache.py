"""Small bounded caches: entries that expire, with a clock tests can drive; answers per short path.

No well-kept library offers both an LRU bound and a per-entry lifetime with
an injectable clock in a few lines (``cachetools.TTLCache`` has one lifetime
for all entries); :class:`TTLCache` is that, thread-safe.
:func:`remembered_for_short_paths` is :func:`functools.lru_cache` with its
memory bounded in bytes too.
"""

from __future__ import annotations

import collections
import functools
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


#: Paths longer than this are answered anew each time (a request line may be 8 KiB long).
LONGEST_REMEMBERED_PATH = 512


def remembered_for_short_paths(max_entries: int, longest: int = LONGEST_REMEMBERED_PATH):
    """Decorate a function of a path (and hashable extras) whose answer never changes: remembered, LRU.

    Only paths (or other strings: header names) of at most *longest*
    characters are kept, so that clients sending long distinct ones cannot make
    the memory grow beyond *max_entries* short ones (sync clients' paths and
    headers are short and repeat).
    """

    def decorate(function):
        cached = functools.lru_cache(maxsize=max_entries)(function)

        @functools.wraps(function)
        def answer(path: str, *extras):
            if len(path) > longest:
                return function(path, *extras)
            return cached(path, *extras)

        answer.cache_info = cached.cache_info  # type: ignore[attr-defined]
        answer.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        return answer

    return decorate
