"""What the change table holds lately, known to every request of a process: idle polls from memory.

Most polls find nothing new for their workspace.  Instead of asking the
database each time, one reader per process learns ``MAX(seq)`` and, for every
row added since it started, which ``repository_identifier`` it belongs to; it
reads again at most every ``feed.refresh_interval`` seconds (0.15 by default),
at once when a request needs a fresher view, and after a write this process
forwarded (a client that uploads and polls sees its own change at once).  A poll whose identifier has
no row after its seq then gets the empty answer straight from memory, the one
PHP would have given at an instant of that interval.

Certainty comes first:

- Only seqs above the *floor* are known: ``INITIAL_TAIL`` seqs below the MAX
  when the process first read the table, raised when the memory bound is reached.  A poll below it goes to
  the database, as before.
- Seqs can commit out of order (two transactions, a rollback): a seq missing
  between two known ones is a *gap*, read again at each refresh until its row
  appears or ``GAP_LIFETIME`` passes; the floor then rises above it, so a row
  committed that late is still found, by the database.
- A table whose MAX went down (emptied, restored) is forgotten and read anew.
- A seq beyond the known MAX makes the request refresh first; a client still
  ahead after that is the caller's to handle (the feed forwards it for a
  replica, answers "start again" as PHP does for the primary).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa

from . import db
from .cache import Clock

log = logging.getLogger(__name__)

#: Seconds a missing seq is waited for before the floor rises above it.
GAP_LIFETIME = 300.0
#: Identifiers and gaps remembered at most; beyond, the oldest are forgotten (the floor rises).
MAX_IDENTIFIERS = 100_000
MAX_GAPS = 10_000
#: Rows read in one refresh at most; a larger burst resets the memory (the floor becomes the MAX).
MAX_ROWS_PER_REFRESH = 50_000
#: Seqs below the MAX learned at the first read (the table's latest rows).
INITIAL_TAIL = 10_000

_MAX = sa.select(sa.func.max(db.changes.c.seq))


def _new_rows(after: int, upto: int, gaps):
    """The rows past the known MAX (up to *upto*), and those of the seqs still missing."""
    c = db.changes.c
    condition = sa.and_(c.seq > after, c.seq <= upto)
    if gaps:
        condition = sa.or_(condition, c.seq.in_(sorted(gaps)))
    return sa.select(c.seq, c.repository_identifier).where(condition).order_by(c.seq).limit(MAX_ROWS_PER_REFRESH + 1)


@dataclass(frozen=True)
class View:
    """What a request may rely on: the table's MAX and whether an identifier has rows after a seq."""

    max_seq: int
    floor: int
    watermark: Watermark

    def quiet(self, identifier: str, seq: int) -> bool:
        """True when no row of *identifier* can follow *seq* (certain); False: ask the database."""
        if seq < self.floor or seq > self.max_seq:
            return False
        return self.watermark.last_of(identifier) <= seq


class Watermark:
    """The per-process reader; thread-safe."""

    def __init__(self, engine, refresh_interval: float = 0.15, clock: Clock | None = None, metrics=None):
        self.engine = engine
        self.refresh_interval = refresh_interval
        self.clock = clock or time.monotonic
        self.metrics = metrics
        self.max_seq = 0
        self.floor = 0
        self._last_of: dict[str, int] = {}  # identifier -> its highest seq above the floor
        self._gaps: dict[int, float] = {}  # missing seq -> when it was first missed
        self._read_at: float | None = None  # when the last completed refresh started
        self._stale = False  # a write went through this process since: read again before answering
        self._lock = threading.Lock()
        self.refreshes = 0  # refreshes begun so far (counted under the lock, when each begins)

    def invalidate(self) -> None:
        """Something was written through this process: the next view reads the table first."""
        self._stale = True

    def last_of(self, identifier: str) -> int:
        return self._last_of.get(identifier, 0)

    def view(self, seq: int | None = None) -> View:
        """The state as of a refresh started less than ``refresh_interval`` before this call.

        With *seq* beyond the known MAX, the refresh is made now whatever its age.
        Raises :class:`sqlalchemy.exc.SQLAlchemyError` when the database fails.
        """
        now = self.clock()
        reads_begun = self.refreshes
        read_at = self._read_at
        fresh = read_at is not None and not self._stale and now - read_at < self.refresh_interval
        if fresh and (seq is None or seq <= self.max_seq):
            return View(self.max_seq, self.floor, self)
        with self._lock:
            read_at = self._read_at  # another request may have refreshed while this one waited
            fresh = read_at is not None and not self._stale and now - read_at < self.refresh_interval
            if seq is not None and seq > self.max_seq:
                fresh = self.refreshes > reads_begun  # only a read begun after this request counts
            if not fresh:
                self._refresh()
            return View(self.max_seq, self.floor, self)

    def _refresh(self) -> None:
        started = self.clock()
        self._stale = False  # a write landing during this read marks it stale again
        self.refreshes += 1
        try:
            self._read(started)
        except sa.exc.DBAPIError as exc:
            # Pooled feed connections are not pinged before use (shim.db): one the
            # server closed fails its first statement, and a new one is asked once.
            if not exc.connection_invalidated:
                raise
            self._read(started)
        self._read_at = started
        if self.metrics is not None:
            self.metrics.watermark_refreshes.inc()

    def _read(self, started: float) -> None:
        with self.engine.connect() as conn:
            table_max = int(conn.execute(_MAX).scalar() or 0)
            if self._read_at is None:
                # The last rows already there count too: a client a little behind
                # (it polled a moment before this process started) is answered as well.
                self._reset(table_max, "first read")
                self.max_seq = self.floor = max(0, table_max - INITIAL_TAIL)
                self._learn(conn.execute(_new_rows(self.max_seq, table_max, {})).all(), table_max, started)
                log.info("feed watermark: polls at or above seq %d are answered from memory", self.floor)
            elif table_max < self.max_seq:
                self._reset(table_max, "the table's MAX went down")
            elif table_max > self.max_seq or self._gaps:
                rows = conn.execute(_new_rows(self.max_seq, table_max, self._gaps)).all()
                if len(rows) > MAX_ROWS_PER_REFRESH:
                    self._reset(table_max, f"more than {MAX_ROWS_PER_REFRESH} new rows at once")
                else:
                    self._learn(rows, table_max, started)

    def _reset(self, table_max: int, why: str) -> None:
        log.info("feed watermark: %s; the memory starts at seq %d", why, table_max)
        self.max_seq = self.floor = table_max
        self._last_of.clear()
        self._gaps.clear()

    def _learn(self, rows, table_max: int, now: float) -> None:
        expected = self.max_seq + 1
        for seq, identifier in rows:
            seq = int(seq)
            if seq in self._gaps:
                del self._gaps[seq]  # a late commit
            elif seq > self.max_seq:
                for missing in range(expected, seq):
                    self._gaps.setdefault(missing, now)
                expected = seq + 1
            else:
                continue  # already known (read again below a gap)
            key = db.as_text(identifier)
            if self._last_of.get(key, 0) < seq:
                self._last_of[key] = seq
        for missing in range(expected, table_max + 1):
            self._gaps.setdefault(missing, now)  # counted in MAX but not visible yet
        self.max_seq = max(self.max_seq, table_max)
        self._expire(now)

    def _expire(self, now: float) -> None:
        """Give up old gaps and excess memory: the floor rises above what is forgotten."""
        for seq, since in list(self._gaps.items()):
            if now - since > GAP_LIFETIME or len(self._gaps) > MAX_GAPS:
                del self._gaps[seq]
                self.floor = max(self.floor, seq)
        if len(self._last_of) > MAX_IDENTIFIERS:
            ranked = sorted(self._last_of.items(), key=lambda item: item[1])
            dropped, kept = ranked[: -MAX_IDENTIFIERS // 2], ranked[-MAX_IDENTIFIERS // 2 :]
            # A forgotten identifier reads as quiet: only seqs above all its rows are certain.
            self.floor = max(self.floor, dropped[-1][1])
            self._last_of = dict(kept)
