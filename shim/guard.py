"""The last wrapper around every answer: failures stay inside it, and one access line per request.

A response body can fail while it is being sent: the database drops during a
feed's first fetch, the legacy server closes after its headers.  An exception
leaving the WSGI iterable would make the server answer with a page of its own
and log the raw request line, whose ``auth_token`` and ``auth_hash`` replay.
So :class:`GuardedBody` catches it:

- before the first byte of the body, the status line has not gone out yet: it
  is replaced (``start_response`` with ``exc_info``) by a short error of the
  shim's own, 503 for the database, 502/504 for the legacy server;
- after it, the client can only learn that the body is incomplete: the
  connection is cut (through the server's socket when it offers one), so that
  it never takes a truncated body for a whole one.

Either way the failure is logged once, with the request target masked, and the
access line records what the client got.
"""

from __future__ import annotations

import logging
import socket
import sys
import time

from . import accesslog
from .feed import FeedError
from .responses import status_line
from .upstream import RequestRefused, UpstreamError

log = logging.getLogger("shim")


class StatusTracker:
    """``start_response`` for the application, remembering what it was given."""

    def __init__(self, start_response, fields: accesslog.LogFields):
        self.start_response = start_response
        self.fields = fields
        self.headers: list[tuple[str, str]] = []

    def __call__(self, status: str, headers, exc_info=None):
        self.fields.status = int(status.split(" ", 1)[0])
        self.headers = headers
        return self.start_response(status, headers, exc_info)


def _error_for(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, FeedError):
        return 503, "pydio-shim: the database is unavailable"
    if isinstance(exc, UpstreamError):
        return exc.status, f"pydio-shim: {exc}"
    if isinstance(exc, RequestRefused):
        return exc.status, f"pydio-shim: {exc}"
    return 500, "internal error in pydio-shim"


class GuardedBody:
    """Wraps a response iterable: counts its bytes, contains its failures, logs it when closed."""

    def __init__(self, inner, request, tracker: StatusTracker, started: float, on_finished):
        self.inner = inner
        self.request = request
        self.tracker = tracker
        self.started = started
        self.on_finished = on_finished

    def __iter__(self):
        fields = self.request.log
        sent = False
        try:
            for chunk in self.inner:
                sent = True  # even an empty chunk makes the server send the status line
                fields.bytes += len(chunk)
                yield chunk
        except Exception as exc:
            status, text = _error_for(exc)
            log.error(
                "%s %s failed after %d body bytes: %s: %s",
                self.request.method,
                self.request.loggable_target,
                fields.bytes,
                exc.__class__.__name__,
                accesslog.mask_text(str(exc)),
            )
            if not sent:
                body = (text + "\n").encode()
                self.tracker(
                    status_line(status),
                    [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
                    sys.exc_info(),
                )
                fields.bytes = len(body)
                yield body
                return
            fields.kind += ",aborted"
            if not self._cut_connection():
                raise ConnectionAbortedError("response aborted") from None

    def _cut_connection(self) -> bool:
        """Shut the client connection down under the server's feet; False when the server offers no socket."""
        sock = self.request.environ.get("gunicorn.socket")
        if sock is None:
            return False
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return True

    def close(self):
        try:
            close = getattr(self.inner, "close", None)
            if close is not None:
                close()
        finally:
            seconds = time.perf_counter() - self.started
            try:
                self.on_finished(self.request, seconds)
            finally:
                r = self.request
                accesslog.write_line(r.peer or "-", r.method, r.loggable_target, r.log, seconds)
