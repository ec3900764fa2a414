"""A client-side deadline for PostgreSQL reads, which libpq does not have.

PyMySQL has a socket read timeout; libpq has none.  ``statement_timeout``
bounds what the *server* does, TCP keepalives find a dead peer, but a path
that stays up and stops passing bytes (a stalled relay, a hung middlebox)
leaves a thread blocked in a read forever.  No maintained driver option covers
that, so this module does: a statement (or a fetch of a server-side cursor)
arms a deadline on its connection's socket; one watcher thread per process
shuts the socket down when a deadline passes, the blocked read fails at once,
and the pool drops the broken connection.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref

import sqlalchemy as sa

log = logging.getLogger(__name__)


class Deadlines:
    """Socket deadlines, checked by one daemon thread that starts on first use."""

    def __init__(self, tick: float = 0.25):
        self.tick = tick
        self._armed: dict[int, float] = {}  # socket fd -> monotonic deadline
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def arm(self, fd: int, seconds: float) -> None:
        with self._lock:
            self._armed[fd] = time.monotonic() + seconds
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="pg-read-deadlines", daemon=True)
                self._thread.start()

    def disarm(self, fd: int) -> None:
        with self._lock:
            self._armed.pop(fd, None)

    def _watch(self) -> None:
        while True:
            time.sleep(self.tick)
            now = time.monotonic()
            with self._lock:
                late = [fd for fd, deadline in self._armed.items() if deadline <= now]
                for fd in late:
                    del self._armed[fd]
            for fd in late:
                log.error("database read past its deadline: connection cut")
                try:
                    # A duplicate of the descriptor, so that the driver's own stays valid to close.
                    with socket.socket(fileno=os.dup(fd)) as sock:
                        sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


DEADLINES = Deadlines()
#: The engines under watch, and their deadline in seconds.
WATCHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def watch_postgresql(engine, seconds: float) -> None:
    """Bound every statement of *engine* (a PostgreSQL one) by a client-side deadline of *seconds*."""
    WATCHED[engine] = seconds

    @sa.event.listens_for(engine, "checkout")
    def _ping(dbapi_connection, connection_record, connection_proxy):
        # The pool's own pre-ping has no deadline: this one, under the deadline, replaces it
        # (create the engine without pool_pre_ping).  A failure retries on a new connection.
        fd = dbapi_connection.fileno()
        DEADLINES.arm(fd, seconds)
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
        except Exception as exc:
            raise sa.exc.DisconnectionError(f"the pooled connection is gone ({exc.__class__.__name__})") from exc
        finally:
            DEADLINES.disarm(fd)

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _arm(conn, cursor, statement, parameters, context, executemany):
        DEADLINES.arm(conn.connection.dbapi_connection.fileno(), seconds)

    @sa.event.listens_for(engine, "after_cursor_execute")
    def _disarm(conn, cursor, statement, parameters, context, executemany):
        DEADLINES.disarm(conn.connection.dbapi_connection.fileno())

    @sa.event.listens_for(engine, "handle_error")
    def _disarm_on_error(context):
        connection = context.connection
        if connection is not None and connection.connection.dbapi_connection is not None:
            try:
                DEADLINES.disarm(connection.connection.dbapi_connection.fileno())
            except Exception:  # a connection already closed has no descriptor
                pass


def guarded_fetch(cursor, conn, seconds: float):
    """``fetchmany`` of *cursor* (a DB-API server-side cursor of *conn*), each call under a deadline.

    Only the fetches count: while the caller holds the rows (a slow client
    reading the feed), no deadline runs.
    """
    fd = conn.connection.dbapi_connection.fileno()

    def fetchmany(size: int):
        DEADLINES.arm(fd, seconds)
        try:
            return cursor.fetchmany(size)
        finally:
            DEADLINES.disarm(fd)

    return fetchmany
