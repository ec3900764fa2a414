"""Whether the shim can read the database right now, and what it does when it cannot.

When a feed request meets a database error, the shim tells two cases apart:

- the database answers a plain ``SELECT 1``: the request itself made its query
  fail (a character a utf8mb3 column cannot compare, say).  That request is
  forwarded; nothing else changes;
- it does not (a wrong password, no route, a silent server): the shim is
  *degraded*.  Feed requests are forwarded without touching the database, so
  sync goes on through the legacy server, which may well still reach it;
  ``/_shim/health`` says ``degraded`` and why; ``shim_feed_degraded_total``
  counts the requests forwarded so.  At most every ``retry_interval`` seconds
  one request tries the database again, and the first success ends it.

A feed request forwarded while degraded that the legacy server cannot answer
either gets 503 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import threading
import time

import sqlalchemy as sa

from . import db
from .cache import Clock

log = logging.getLogger(__name__)


class DatabaseState:
    """Degraded or not, with the reason; thread-safe, one per process."""

    def __init__(self, engines, retry_interval: float = 5.0, clock: Clock | None = None):
        # Engines of their own, unpooled: "is it alive?" must open a new connection,
        # not wait on a pooled one that went bad with the server.
        self.engines = engines  # the feed's: the primary, and its replica if any
        self.retry_interval = retry_interval
        self.clock = clock or time.monotonic
        self.reason: str | None = None
        self.since: float | None = None
        self._next_try = 0.0
        self._lock = threading.Lock()

    @property
    def degraded(self) -> bool:
        return self.reason is not None

    def should_try(self) -> bool:
        """Whether this request may use the database: always when healthy, one per interval when degraded."""
        if self.reason is None:
            return True
        now = self.clock()
        with self._lock:
            if now >= self._next_try:
                self._next_try = now + self.retry_interval
                return True
        return False

    def succeeded(self) -> None:
        if self.reason is not None:
            with self._lock:
                if self.reason is not None:
                    log.warning(
                        "database reachable again after %.0f s: the shim serves the feed itself again",
                        self.clock() - (self.since or self.clock()),
                    )
                    self.reason, self.since = None, None

    def failed(self, exc: BaseException) -> bool:
        """Record a failure; True when it means the database is out of reach (degraded), False for a bad query."""
        if self.alive():
            return False
        reason = db.first_line(exc)
        with self._lock:
            if self.reason is None:
                self.since = self.clock()
                log.error("database unreachable (%s): feed requests go to the legacy server until it answers", reason)
            self.reason = reason
            self._next_try = self.clock() + self.retry_interval
        return True

    def alive(self) -> bool:
        """Whether every engine the feed needs answers ``SELECT 1``."""
        try:
            for engine in self.engines:
                with engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.SQLAlchemyError:
            return False
