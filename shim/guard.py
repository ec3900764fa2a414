"""The last wrapper around every answer: failures stay inside it, and one access line per request.

A response can fail while it is being made or sent: the database drops during
a feed's first fetch, the legacy server closes after its headers.  An
exception leaving the application would make the server answer with a page of
its own and log the raw request line, whose ``auth_token`` and ``auth_hash``
replay.  So:

- before the first byte of the body, the status line has not gone out yet
  (:class:`~shim.responses.RawResponse` reads the first piece before it sends
  it): :func:`error_answer` gives a short error of the shim's own instead, 503
  for the database, 502/504 for the legacy server;
- after it, the client can only learn that the body is incomplete:
  :class:`GuardedBody` cuts the connection (through the server's socket when it
  offers one), so that it never takes a truncated body for a whole one.

Either way the failure is logged once, with the request target masked, and the
access line records what the client got.
"""

from __future__ import annotations

import logging
import socket
import time

from . import accesslog
from .feed import FeedError
from .responses import plain
from .upstream import RequestRefused, UpstreamError

log = logging.getLogger("shim")


class StatusTracker:
    """``start_response`` for the application, remembering the status it was given."""

    def __init__(self, start_response, fields: accesslog.LogFields):
        self.start_response = start_response
        self.fields = fields

    def __call__(self, status: str, headers, exc_info=None):
        self.fields.status = int(status.split(" ", 1)[0])
        return self.start_response(status, headers, exc_info)


def error_answer(request, exc: Exception):
    """The shim's own answer to a request whose response failed before anything was sent."""
    if isinstance(exc, FeedError):
        status, text = 503, "pydio-shim: the database is unavailable"
    elif isinstance(exc, (UpstreamError, RequestRefused)):
        status, text = exc.status, f"pydio-shim: {exc}"
    else:
        status, text = 500, "internal error in pydio-shim"
    if status == 500:
        log.exception("unexpected error on %s %s", request.loggable_method, request.loggable_target)
    elif not isinstance(exc, RequestRefused):
        log.error("%s %s failed: %s", request.loggable_method, request.loggable_target, accesslog.mask_text(str(exc)))
    return plain(status, text)


class GuardedBody:
    """Wraps a response iterable: counts its bytes, contains its failures, logs it when closed."""

    def __init__(self, inner, request, started: float, on_finished):
        self.inner = inner
        self.request = request
        self.started = started
        self.on_finished = on_finished

    def __iter__(self):
        fields = self.request.log
        try:
            for chunk in self.inner:
                fields.bytes += len(chunk)
                yield chunk
        except Exception as exc:
            log.error(
                "%s %s cut after %d body bytes: %s: %s",
                self.request.loggable_method,
                self.request.loggable_target,
                fields.bytes,
                exc.__class__.__name__,
                accesslog.mask_text(str(exc)),
            )
            fields.kind += ",aborted"
            if not self._cut_connection():
                raise ConnectionAbortedError("response aborted") from None

    def _end_reading(self) -> None:
        """The answer is sent; the body the request still carries will not be read (nor drained by the server).

        Refused early (no slot, no spool space), the request's body may still be
        trickling in: the server would wait on it to keep the connection alive.
        """
        sock = self.request.environ.get("gunicorn.socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass

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
            if self.request.unread_body:
                self._end_reading()
        finally:
            seconds = time.perf_counter() - self.started
            try:
                self.on_finished(self.request, seconds)
            finally:
                r = self.request
                accesslog.write_line(r.peer or "-", r.loggable_method, r.loggable_target, r.log, seconds)
