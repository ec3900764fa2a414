"""gunicorn's gthread worker, with request headers gathered without a thread and within a deadline.

gthread hands a connection to a thread as soon as a byte arrives, and the
thread then reads the headers with a blocking socket: a few dozen clients
sending one byte every few seconds hold every thread, and the feed, which
needs none of their bytes, goes down with them.  Here the worker's own event
loop reads the header block (non-blocking, as nginx does) and hands the
connection to a thread only once it is complete; a client that does not send
it within ``server.header_timeout`` seconds is disconnected.  After that,
each read of the request body waits at most ``server.client_timeout`` seconds
(``SO_RCVTIMEO``; the application then sees the body break off).

New connections are also spread over the workers by their open connections
(:mod:`shim.balance`): a worker holding more than another lets that one accept.

gunicorn's own classes are extended, not copied; the shim pins gunicorn's
minor version (pyproject.toml) because this builds on the worker's internals.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
from functools import partial

from gunicorn.workers.gthread import ThreadWorker

from .balance import ConnectionCounts
from .threadpool import LastIdleFirstExecutor

#: A header block larger than this is handed on as it is, for gunicorn to refuse (431).
MAX_HEADER_BLOCK = 64 * 1024


def _set_read_timeout(sock: socket.socket, seconds: float) -> None:
    if seconds > 0:
        whole = int(seconds)
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
        )


class ShimThreadWorker(ThreadWorker):
    """The shim's gunicorn worker class (``worker_class`` in :mod:`shim.gunicorn_conf`)."""

    #: Set from the shim's configuration by :mod:`shim.gunicorn_conf` (seconds).
    header_timeout = 20.0
    client_timeout = 60.0
    #: The server's table of open connections per worker and this worker's slot
    #: in it, set by :mod:`shim.gunicorn_conf` before the worker is forked.
    connection_counts: ConnectionCounts | None = None
    connection_slot: int | None = None
    #: While another worker holds fewer connections, accepting pauses this long, then looks again...
    ACCEPT_PAUSE = 0.001
    #: ...for this long at most: a worker that has not taken the connection by then is not waited for.
    ACCEPT_PAUSE_LIMIT = 0.02

    def init_process(self):
        self.gathering: dict = {}  # conn -> [header bytes so far, deadline]
        self._accept_resumes_at = 0.0
        self._pausing_since = 0.0
        super().init_process()  # runs the worker's loop

    def get_thread_pool(self):
        """The request threads: the one that went idle last takes the next request (shim.threadpool)."""
        return LastIdleFirstExecutor(max_workers=self.cfg.threads)

    def accept(self, listener):
        """gthread's accept, unless a worker with fewer connections should take this one."""
        if not self._leave_to_another_worker():
            super().accept(listener)
            self._publish_connections()

    def _leave_to_another_worker(self) -> bool:
        counts, slot = self.connection_counts, self.connection_slot
        if counts is None or slot is None:
            return False
        fewest = counts.fewest_elsewhere(slot)
        if fewest is None or self.nr_conns <= fewest:
            return False
        now = time.monotonic()
        if now > self._accept_resumes_at + self.ACCEPT_PAUSE:
            self._pausing_since = now  # the listener stayed quiet since the last pause: a new connection
        elif now - self._pausing_since >= self.ACCEPT_PAUSE_LIMIT:
            return False
        self._accept_resumes_at = now + self.ACCEPT_PAUSE
        self.set_accept_enabled(False)
        return True

    def set_accept_enabled(self, enabled):
        if enabled and time.monotonic() < self._accept_resumes_at:
            return  # paused for another worker (the loop enables accepting again each turn)
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout):
        self._publish_connections()
        pause_left = self._accept_resumes_at - time.monotonic()
        if pause_left > 0:
            timeout = min(timeout, pause_left)
        elif self.alive and not self._accepting and self.nr_conns < self.worker_connections:
            # The pause ended between the loop's enabling (refused) and now: enable
            # here, or the listener would stay off for the whole select timeout.
            super().set_accept_enabled(True)
        super().wait_for_and_dispatch_events(timeout)

    def _publish_connections(self):
        if self.connection_counts is not None and self.connection_slot is not None:
            # A stopping worker accepts no more: it must not look like the one to leave connections to.
            self.connection_counts.publish(self.connection_slot, self.pid if self.alive else -1, self.nr_conns)

    def enqueue_req(self, conn):
        """Gather the next request's header block in the event loop, then hand it to a thread."""
        parser = conn.parser
        if parser is not None and parser.unreader.buf.getvalue():
            # The previous request's drain already read into this one: it is here.
            return super().enqueue_req(conn)
        conn.sock.setblocking(False)
        _set_read_timeout(conn.sock, self.client_timeout)
        self.gathering[conn] = [bytearray(), time.monotonic() + self.header_timeout]
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._header_bytes, conn))

    def _header_bytes(self, conn, _sock):
        entry = self.gathering.get(conn)
        if entry is None:
            return
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the client went away before sending a request
            self._drop(conn)
            return
        buffer = entry[0]
        buffer += data
        if b"\r\n\r\n" not in buffer and b"\n\n" not in buffer and len(buffer) < MAX_HEADER_BLOCK:
            return
        self.poller.unregister(conn.sock)
        del self.gathering[conn]
        conn.sock.setblocking(True)
        conn.init()
        conn.parser.unreader.unread(bytes(buffer))
        conn.data_ready = True
        super().enqueue_req(conn)

    def _drop(self, conn):
        self.gathering.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (OSError, KeyError, ValueError):
            pass
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self):
        """gthread's sweep, plus the connections whose header block is late."""
        super().murder_pending()
        now = time.monotonic()
        for conn, (_buffer, deadline) in list(self.gathering.items()):
            if deadline <= now:
                self.log.debug("Closing a connection that sent no complete request in time.")
                self._drop(conn)
