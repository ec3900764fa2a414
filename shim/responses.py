"""The few kinds of answers the shim writes itself.

:func:`plain` is a Werkzeug response (the shim's own short messages).
:class:`RawResponse` passes a status, headers and body on exactly as given:
answers relayed from the legacy server must not gain a ``Content-Type`` or
lose headers the way Werkzeug's :class:`~werkzeug.wrappers.Response` adjusts
them (it drops entity headers from a 304, for instance).  It reads the first
piece of its body before the status line goes out, so that a body failing at
once (the database dropping at the first fetch, the legacy server closing
after its headers) can still be answered with an error of the shim's own.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from http import HTTPStatus

from werkzeug.wrappers import Response


def reason_phrase(status: int) -> str:
    """The standard reason phrase of *status*, "" for a code without one."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def status_line(status: int, reason: str | None = None) -> str:
    return f"{status} {reason or reason_phrase(status) or 'Unknown'}"


def plain(status: int, text: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """A short ``text/plain`` answer of the shim's own (its body ends with a newline)."""
    return Response(text + "\n", status=status, headers=list(headers), content_type="text/plain; charset=utf-8")


class RawResponse:
    """A WSGI application answering with exactly this status line, these headers and this body."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: Iterable[bytes], reason: str | None = None):
        self.status = status_line(status, reason)
        self.headers = headers
        self.body = body

    def __call__(self, environ, start_response):
        pieces = iter(self.body)
        try:
            first = next(pieces)  # may raise: nothing is sent yet, the caller answers instead
            start_response(self.status, self.headers)  # may raise too (a status the server refuses)
        except StopIteration:
            try:
                start_response(self.status, self.headers)
            except BaseException:
                self._close_body()
                raise
            return self.body
        except BaseException:
            self._close_body()  # gives back what the body holds (a connection, a forwarding slot)
            raise
        return _Chained(first, pieces, self.body)

    def _close_body(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()


class _Chained:
    """The first piece, then the rest; closing closes the original body (WSGI's ``close``)."""

    def __init__(self, first: bytes, rest, original):
        self.first, self.rest, self.original = first, rest, original

    def __iter__(self):
        return itertools.chain((self.first,), self.rest)

    def close(self):
        close = getattr(self.original, "close", None)
        if close is not None:
            close()
