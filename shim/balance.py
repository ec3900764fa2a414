"""Open connections per worker, shared by the workers of one gunicorn server.

A kept-alive connection stays with the worker that accepted it, and every
worker wakes for a new connection on the shared listening socket: the first
to call ``accept()`` wins, and a worker already running tends to win a burst
whole.  nginx opening its upstream keep-alive pool, or a benchmark opening 8
connections at once, could then leave every connection on one worker and one
core (seen: 1,280 instead of 3,200 proxied requests/s on 2 cores).  With
these counts a worker that holds more connections than another one lets that
one accept first (least connections, as nginx's ``least_conn``), for a few
milliseconds at most: a worker that does not take the connection in that
time is not waited for.

The table lives in anonymous shared memory mapped by the master before it
forks (:mod:`shim.gunicorn_conf`), so every worker sees it; the master gives
each worker its slot (``pre_fork``) and frees it when the worker exits.  Each
worker writes only its own slot; a value read while another worker writes it
is at worst a moment old, which only makes one choice less even.
"""

from __future__ import annotations

import mmap
import struct

#: Slots of the table: more than the workers of a server, old and new ones during a reload.
SLOTS = 1024
_SLOT = struct.Struct("qq")  # the worker's pid (0: free, -1: claimed, not started yet), its connections
_HEAD = struct.Struct("q")  # slots ever claimed: readers look no further


class ConnectionCounts:
    """A table of ``(pid, open connections)`` per worker, in memory shared across ``fork()``."""

    def __init__(self, slots: int = SLOTS):
        self.slots = slots
        # Anonymous and MAP_SHARED: the same pages in the master and every worker it forks.
        self._memory = mmap.mmap(-1, _HEAD.size + slots * _SLOT.size)

    def _offset(self, slot: int) -> int:
        return _HEAD.size + slot * _SLOT.size

    def claim(self) -> int | None:
        """A free slot for a worker about to be forked (master), or None when none is left."""
        for slot in range(self.slots):
            pid, _ = _SLOT.unpack_from(self._memory, self._offset(slot))
            if pid == 0:
                _SLOT.pack_into(self._memory, self._offset(slot), -1, 0)
                (claimed,) = _HEAD.unpack_from(self._memory, 0)
                _HEAD.pack_into(self._memory, 0, max(claimed, slot + 1))
                return slot
        return None

    def release(self, slot: int | None) -> None:
        """The worker holding *slot* has exited (master)."""
        if slot is not None:
            _SLOT.pack_into(self._memory, self._offset(slot), 0, 0)

    def publish(self, slot: int, pid: int, connections: int) -> None:
        """How many connections the worker in *slot* holds now (that worker)."""
        _SLOT.pack_into(self._memory, self._offset(slot), pid, connections)

    def fewest_elsewhere(self, slot: int) -> int | None:
        """The fewest connections any other started worker holds, None when there is none."""
        (claimed,) = _HEAD.unpack_from(self._memory, 0)
        fewest = None
        for other in range(claimed):
            pid, connections = _SLOT.unpack_from(self._memory, self._offset(other))
            if pid > 0 and other != slot and (fewest is None or connections < fewest):
                fewest = connections
        return fewest
