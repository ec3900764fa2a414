"""What the change table holds lately, known to every request of a process: idle polls from memory.

Most polls find nothing new for their workspace.  Instead of asking the
database each time, one reader per process learns ``MAX(seq)`` and, for every
row added since it started, which ``repository_identifier`` it belongs to; it
reads again at most every ``feed.refresh_interval`` seconds (0.15 by default),
at once when a request needs a fresher view, and after a write this process
forwarded (a client that uploads and polls sees its own change at once).  A
poll whose identifier has no row after its seq then gets the empty answer
straight from memory, the one PHP would have given at an instant of that
interval.

Certainty comes first; whenever memory cannot be sure, the database answers:

- Only seqs above the *floor* are known: ``INITIAL_TAIL`` seqs below the MAX
  when the process first read the table, raised when the memory bound is
  reached.
- Seqs can commit out of order (two transactions, a rollback): a seq missing
  below the MAX is a *gap*, read again at each refresh until its row appears or
  ``GAP_LIFETIME`` passes (the floor then rises above it).  A poll whose seq
  lies below a gap is not answered from memory: the late row may be its own.
- Pydio only ever appends to the table.  The memory is dropped and read anew
  when that is not so (the MAX went down, the newest row known changed), when
  a read failed (a failover may follow), after ``IDLE_REREAD`` seconds without
  a read, and after a burst too large to follow.
- On MySQL an identifier matches under the column's collation (case and
  trailing spaces ignored, accents too): memory compares printable ASCII
  identifiers case-folded, and a row whose identifier is anything else makes
  every poll before it go to the database.
- A request sees one consistent *view* (MAX, floor, gaps and identifiers of
  one read): a refresh replaces what it drops rather than emptying it in
  place, and only adds to what a view may be reading.
- A seq beyond the known MAX makes the request refresh first; a client still
  ahead after that is the caller's to handle (the feed forwards it for a
  replica, answers "start again" as PHP does for the primary).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
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
#: Seconds without a read after which the memory is read anew (what happened meanwhile is unknown).
IDLE_REREAD = 10.0
_PLAIN_ASCII = frozenset(chr(c) for c in range(0x20, 0x7F))


def _new_rows(after: int, upto: int, gaps, anchor: int):
    """The rows past the known MAX (up to *upto*), those of the seqs still missing, and the *anchor*."""
    c = db.changes.c
    condition = sa.and_(c.seq > after, c.seq <= upto)
    wanted = sorted(gaps) + ([anchor] if anchor else [])
    if wanted:
        condition = sa.or_(condition, c.seq.in_(wanted))
    return sa.select(c.seq, c.repository_identifier).where(condition).order_by(c.seq).limit(MAX_ROWS_PER_REFRESH + 2)


def exact_key(identifier: str) -> str | None:
    """How PostgreSQL and SQLite compare identifiers: exactly."""
    return identifier


def collation_key(identifier: str) -> str | None:
    """A MySQL identifier as its ``_ci`` collation compares it, for printable ASCII; None otherwise.

    Folding more than a NO PAD or binary collation would (trailing spaces, case)
    only makes memory less often sure, never wrong.
    """
    if not _PLAIN_ASCII.issuperset(identifier):
        return None
    return identifier.rstrip(" ").lower()


@dataclass(frozen=True)
class View:
    """What a request may rely on, as of one read: the table's MAX, and which identifiers have rows after a seq."""

    max_seq: int
    floor: int
    highest_gap: int  # the highest seq not seen at or below max_seq (0: none)
    odd_seq: int  # the highest seq of a row whose identifier ``key`` cannot compare (0: none)
    last_of: dict[str, int]  # key -> highest seq; only ever raised while this view lives
    key: Callable[[str], str | None]

    def quiet(self, identifier: str, seq: int) -> bool:
        """True when no row of *identifier* can follow *seq* (certain); False: ask the database."""
        if seq < self.floor or seq > self.max_seq or seq < self.highest_gap or seq < self.odd_seq:
            return False
        key = self.key(identifier)
        return key is not None and self.last_of.get(key, 0) <= seq


class Watermark:
    """The per-process reader; thread-safe."""

    def __init__(self, engine, refresh_interval: float = 0.15, clock: Clock | None = None, metrics=None):
        self.engine = engine
        self.refresh_interval = refresh_interval
        self.clock = clock or time.monotonic
        self.metrics = metrics
        self._key = collation_key if engine.dialect.name == "mysql" else exact_key
        self.max_seq = 0
        self.floor = 0
        self._last_of: dict[str, int] = {}  # key -> its highest seq above the floor
        self._gaps: dict[int, float] = {}  # missing seq -> when it was first missed
        self._odd_seq = 0
        self._anchor: tuple[int, str] = (0, "")  # the newest row seen: (seq, identifier)
        self._view = self._publish()
        self._read_at: float | None = None  # when the last completed refresh started
        self._stale = False  # a write went through this process since: read again before answering
        self._lock = threading.Lock()
        self.refreshes = 0  # refreshes begun so far (counted under the lock, when each begins)
        self._reads_done = 0  # refreshes completed: only one begun after a request and done counts for it

    def invalidate(self) -> None:
        """Something was written through this process: the next view reads the table first."""
        self._stale = True

    def view(self, seq: int | None = None) -> View:
        """The state as of a refresh started less than ``refresh_interval`` before this call.

        With *seq* beyond the known MAX, the refresh is made now whatever its age.
        Raises :class:`sqlalchemy.exc.SQLAlchemyError` when the database fails.
        """
        now = self.clock()
        reads_begun, reads_done = self.refreshes, self._reads_done
        fresh = self._fresh(now)
        view = self._view  # read after the age: a refresh publishes its view before its time
        if fresh and (seq is None or seq <= view.max_seq):
            return view
        with self._lock:
            fresh = self._fresh(now)  # another request may have refreshed while this one waited
            if seq is not None and seq > self._view.max_seq:
                # Only a read begun after this request and completed counts (one that failed does not).
                fresh = self.refreshes > reads_begun and self._reads_done > reads_done
            if not fresh:
                self._refresh()
            return self._view

    def _fresh(self, now: float) -> bool:
        read_at = self._read_at
        return read_at is not None and not self._stale and now - read_at < self.refresh_interval

    def _publish(self) -> View:
        self._view = View(self.max_seq, self.floor, max(self._gaps, default=0), self._odd_seq, self._last_of, self._key)
        return self._view

    def _refresh(self) -> None:
        started = self.clock()
        stale, self._stale = self._stale, False  # a write landing during this read marks it stale again
        self.refreshes += 1
        try:
            try:
                self._read(started)
            except sa.exc.DBAPIError as exc:
                # Pooled feed connections are not pinged before use (shim.db): one the
                # server closed fails its first statement, and a new one is asked once.
                if not exc.connection_invalidated:
                    raise
                self._read(started)
        except Exception:
            self._stale = self._stale or stale
            self._read_at = None  # after a failure, start again from the first read
            raise
        self._publish()
        self._read_at = started
        self._reads_done += 1
        if self.metrics is not None:
            self.metrics.watermark_refreshes.inc()

    def _read(self, started: float) -> None:
        with self.engine.connect() as conn:
            table_max = int(conn.execute(_MAX).scalar() or 0)
            if self._read_at is None or started - self._read_at > IDLE_REREAD:
                # The last rows already there count too: a client a little behind
                # (it polled a moment before this process started) is answered as well.
                # After a pause (every poll of a quiet server, maybe) it is said at DEBUG only.
                level = logging.INFO if self._read_at is None else logging.DEBUG
                self._reset(table_max, "first read" if self._read_at is None else "read again after a pause", level)
                self.max_seq = self.floor = max(0, table_max - INITIAL_TAIL)
                self._learn(conn.execute(_new_rows(self.max_seq, table_max, {}, 0)).all(), table_max, started)
                log.log(level, "feed watermark: polls at or above seq %d are answered from memory", self.floor)
            elif table_max < self.max_seq:
                self._reset(table_max, "the table's MAX went down")
            elif table_max > self.max_seq or self._gaps:
                anchor_seq, anchor_identifier = self._anchor
                rows = conn.execute(_new_rows(self.max_seq, table_max, self._gaps, anchor_seq)).all()
                if len(rows) > MAX_ROWS_PER_REFRESH:
                    self._reset(table_max, f"more than {MAX_ROWS_PER_REFRESH} new rows at once")
                elif anchor_seq and not any(int(r[0]) == anchor_seq and r[1] == anchor_identifier for r in rows):
                    self._reset(table_max, f"the row at seq {anchor_seq} changed")
                else:
                    self._learn(rows, table_max, started)

    def _reset(self, table_max: int, why: str, level: int = logging.INFO) -> None:
        log.log(level, "feed watermark: %s; the memory starts at seq %d", why, table_max)
        self.max_seq = self.floor = table_max
        self._last_of = {}  # new containers: a view taken before keeps its own
        self._gaps = {}
        self._odd_seq = 0
        self._anchor = (0, "")

    def _learn(self, rows, table_max: int, now: float) -> None:
        expected = self.max_seq + 1
        for seq, identifier in rows:
            seq = int(seq)
            if seq in self._gaps:
                pass  # a late commit: recorded below, then no longer missing
            elif seq > self.max_seq:
                self._miss(expected, seq, now)
                expected = seq + 1
                self._anchor = (seq, identifier)
            else:
                continue  # already known (the anchor, or read again below a gap)
            key = self._key(db.as_text(identifier))
            if key is None:
                self._odd_seq = max(self._odd_seq, seq)
            elif self._last_of.get(key, 0) < seq:
                self._last_of[key] = seq
            self._gaps.pop(seq, None)
        self._miss(expected, table_max + 1, now)  # counted in MAX but not visible yet
        self.max_seq = max(self.max_seq, table_max)
        self._expire(now)

    def _miss(self, first: int, end: int, now: float) -> None:
        """Seqs *first* .. *end* - 1 are missing: gaps, or, past the bound, below a raised floor."""
        if end - first > MAX_GAPS - len(self._gaps):
            self.floor = max(self.floor, end - 1)  # a jump in the sequence: nothing below is waited for
            self._gaps = {seq: since for seq, since in self._gaps.items() if seq > self.floor}
            return
        for missing in range(first, end):
            self._gaps.setdefault(missing, now)

    def _expire(self, now: float) -> None:
        """Give up old gaps and excess memory: the floor rises above what is forgotten."""
        if self._gaps:
            kept = {seq: since for seq, since in self._gaps.items() if now - since <= GAP_LIFETIME}
            if len(kept) > MAX_GAPS:  # the newest gaps are kept
                cut = sorted(kept)[-MAX_GAPS]
                kept = {seq: since for seq, since in kept.items() if seq >= cut}
            given_up = self._gaps.keys() - kept.keys()
            if given_up:
                self.floor = max(self.floor, *given_up)
                self._gaps = kept
        if len(self._last_of) > MAX_IDENTIFIERS:
            ranked = sorted(self._last_of.items(), key=lambda item: item[1])
            dropped, kept_ids = ranked[: -MAX_IDENTIFIERS // 2], ranked[-MAX_IDENTIFIERS // 2 :]
            # A forgotten identifier reads as quiet: only seqs above all its rows are certain.
            self.floor = max(self.floor, dropped[-1][1])
            self._last_of = dict(kept_ids)
