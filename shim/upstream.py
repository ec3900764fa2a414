"""How the shim talks to the legacy server: one small transport interface, two transports.

An :class:`Upstream` sends one request and returns an :class:`UpstreamResponse`
whose body is still to be read (in the manner of requests' ``BaseAdapter``:
``send`` and ``close``, nothing else).  :func:`make_upstream` picks the
transport named by ``upstream.url``:

- :class:`shim.http_upstream.HttpUpstream` speaks HTTP/1.1 to the legacy
  server's web server (Apache, nginx + PHP-FPM);
- :class:`shim.fcgi_upstream.FastCGIUpstream` speaks FastCGI to PHP-FPM
  itself, playing the web server's part.

Both refuse an answer whose framing could be read two ways (see
:func:`check_framing`): relaying one could split the client's responses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

#: Bytes relayed per read: 256 KiB moved 1 GiB half again as fast as 64 KiB for
#: half the CPU (docs/benchmarks.md), and stays small next to a worker's memory.
CHUNK = 256 * 1024


class UpstreamError(Exception):
    """The legacy server could not be reached or broke the exchange (502)."""

    status = 502


class UpstreamTimeout(UpstreamError):
    """The legacy server did not answer in time (504)."""

    status = 504


class UpstreamBusy(UpstreamError):
    """Too many requests are already waiting on the legacy server (503)."""

    status = 503


class RequestRefused(Exception):
    """The client's request cannot be forwarded as it is (400, or :attr:`status`)."""

    status = 400


class ClientBodyError(RequestRefused):
    """The client's request body broke off before its announced end (400)."""


@dataclass
class UpstreamResponse:
    """A response from the legacy server, body not yet read."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: Iterator[bytes]
    _close: Callable[[], None] | None = None
    bytes_sent: int = field(default=0)

    def close(self) -> None:
        if self._close is not None:
            closer, self._close = self._close, None
            closer()

    def read_all(self, limit: int = 1 << 20) -> bytes:
        """The whole body, for small answers only (probes); stops at *limit*."""
        data = bytearray()
        try:
            for chunk in self.body:
                data += chunk
                if len(data) >= limit:
                    break
        finally:
            self.close()
        return bytes(data)


class SizedBody:
    """A request body of known length, as the transports take it.

    ``len()`` gives the Content-Length sent ahead; ``read(n)`` returns up to *n*
    bytes, ``b""`` at the end.  Subclasses say where the bytes come from.
    """

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def read(self, size: int = CHUNK) -> bytes:
        raise NotImplementedError


class Upstream(Protocol):
    """The legacy server, as the shim sends requests to it."""

    @property
    def origin(self) -> str | None:
        """``scheme://host[:port]`` of the legacy server, or None when PHP names the public
        host itself (FastCGI): URL rewriting then maps paths only."""

    def send(self, method: str, target: str, headers: list[tuple[str, str]], body=None) -> UpstreamResponse:
        """Send one request; *target* is the exact request target (path and query).

        *body* is None, bytes, or a :class:`SizedBody`.
        Raises :class:`UpstreamError` (502), :class:`UpstreamTimeout` (504) or
        :class:`RequestRefused` (the request cannot be sent as it is).
        """

    def close(self) -> None:
        """Release every connection kept for reuse."""


#: A header name (RFC 9110 token); below, a value once obsolete line folding is undone.
TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_NAME = re.compile(TOKEN)
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")  # also what a reason phrase may hold


def check_status(status: int, reason: str) -> None:
    """Refuse (:class:`UpstreamError`) a final answer with an interim status, or a reason with a control character.

    A 1xx relayed as the final answer leaves the client waiting for the one
    that follows (and a 101 would switch it to another protocol); a control
    character in the reason phrase would break the status line.
    """
    if status < 200:
        raise UpstreamError(f"the legacy server answered {status} as its final answer")
    if not _VALUE.fullmatch(reason):
        raise UpstreamError("the legacy server sent a control character in the status line")


def transfer_codings(values: list[str]) -> list[str]:
    """The codings of every Transfer-Encoding field, in order, lower-cased (``gzip, chunked`` gives two)."""
    return [coding.strip(" \t").lower() for value in values for coding in value.split(",") if coding.strip(" \t")]


def check_framing(headers: list[tuple[str, str]]) -> None:
    """Refuse (:class:`UpstreamError`) an answer whose length or headers could be read two ways.

    ``Transfer-Encoding`` beside a ``Content-Length``, more than one
    ``Content-Length``, a transfer coding but ``chunked``, a header name that
    is not a token (a space in it), a value holding a CR or another control
    character: a proxy that passes such an answer on lets the next hop split it
    differently (response splitting).
    """
    lengths: list[str] = []
    encodings: list[str] = []  # the Transfer-Encoding values
    for name, value in headers:
        if not _NAME.fullmatch(name):
            raise UpstreamError(f"the legacy server sent an invalid header name {name[:40]!r}")
        if not _VALUE.fullmatch(value):
            raise UpstreamError(f"the legacy server sent a control character in header {name!r}")
        lname = name.lower()
        if lname == "content-length":
            lengths.extend(v.strip(" \t") for v in value.split(","))  # OWS is SP and HTAB, nothing else
        elif lname == "transfer-encoding":
            encodings.append(value)
    codings = transfer_codings(encodings)
    if encodings and codings != ["chunked"]:
        # Another coding would reach the client decoded by nobody (the field is hop-by-hop).
        raise UpstreamError(f"the legacy server sent a transfer coding other than chunked ({', '.join(codings)[:40]})")
    if len(lengths) > 1:
        raise UpstreamError("the legacy server sent more than one Content-Length")
    if lengths and encodings:
        raise UpstreamError("the legacy server sent both Transfer-Encoding and Content-Length")
    if lengths and not (lengths[0].isascii() and lengths[0].isdigit()):
        raise UpstreamError(f"the legacy server sent an invalid Content-Length {lengths[0][:20]!r}")


def make_upstream(config) -> Upstream:
    """The transport named by ``upstream.url`` (HTTP or FastCGI)."""
    if config.upstream_is_fastcgi:
        from .fcgi_upstream import FastCGIUpstream

        return FastCGIUpstream(config)
    from .http_upstream import HttpUpstream

    return HttpUpstream(config.upstream_url, config.upstream_connect_timeout, config.upstream_read_timeout)
