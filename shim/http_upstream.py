"""The legacy server over HTTP/1.1, with :mod:`http.client` and kept-alive connections.

``requests`` and ``urllib3`` are not used on this path: urllib3 rewrites the
request target (``%2f`` becomes ``%2F``, ``[`` becomes ``%5B``, and one stray
``%`` turns every ``%2F`` of the target into ``%252F``), adds ``User-Agent``
and ``Accept-Encoding`` headers the client never sent, and regroups repeated
response headers.  The legacy server receives the request target byte for
byte as the client sent it, except bytes >= 0x80 sent unencoded, which are
percent-encoded (the form RFC 3986 requires, which PHP decodes identically).

Responses are streamed back as they arrive, undecoded; an answer whose framing
could be read two ways is refused (:func:`shim.upstream.check_framing`); the
answer itself is read by :class:`shim.http_response.StrictResponse`.
"""

from __future__ import annotations

import http.client
import re
import select
import socket
import ssl
import threading
import time
from urllib.parse import urlsplit

from .http_response import StrictResponse
from .upstream import (
    CHUNK,
    RequestRefused,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
    check_framing,
    check_status,
)

#: An idle upstream connection older than this is closed instead of reused.
#: Apache closes idle connections after 5 s (KeepAliveTimeout); reusing one it
#: is closing at that very moment would fail the request.
IDLE_TIMEOUT = 4.0
#: Requests that may be sent again on a new connection when a kept-alive one
#: turns out to be closed (only when their body can be sent again, too).
RETRYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "PROPFIND"})


def _ascii_target(uri: str) -> str:
    # http.client writes the request line in ASCII: raw non-ASCII bytes (sent
    # unencoded by some clients) are percent-encoded, everything else is kept.
    if uri.isascii():
        return uri
    return "".join(c if ord(c) < 128 else f"%{ord(c):02X}" for c in uri)


def _describe(exc: BaseException) -> str:
    return exc.__class__.__name__ + (f": {exc}" if str(exc) else "")


def _idle_and_open(sock) -> bool:
    """True when a kept-alive socket is still open with nothing unread on it.

    A readable idle socket means the server closed it (EOF) or sent bytes
    nobody asked for: either way it must not carry another request.
    """
    if sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


def _abort(sock):
    """Close *sock* now, whatever still references it (the peer sees it at once)."""
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


#: Request headers the transport writes itself.
_WRITTEN_HERE = frozenset({"host", "content-length", "transfer-encoding"})
#: The header names and values http.client's putheader() refuses: a name with a
#: colon or a blank, a line break in a value that is no folding.  (A NUL passes,
#: as it did: the legacy server answers it.)
_LEGAL_NAME = re.compile(r"[^:\s][^:\r\n]*", re.ASCII)
_LINE_BREAK = re.compile(r"\n(?![ \t])|\r(?![ \t\n])")


def request_head(host: str, headers: list[tuple[str, str]], length: int | None) -> bytes:
    """The header lines of a request (no request line, no blank line), checked as http.client checks them.

    Built in one piece: http.client's putheader() encodes and checks each line
    on its own, a tenth of a small forwarded request's CPU.  Raises
    :class:`ValueError` where putheader() does (see :data:`_LEGAL_NAME`; a
    name must be ASCII, a value latin-1).
    """
    if _LINE_BREAK.search(host):
        raise ValueError("invalid Host header")
    lines = [f"Host: {host}"]
    for name, value in headers:
        if name.lower() in _WRITTEN_HERE:
            continue
        if not (name.isascii() and _LEGAL_NAME.fullmatch(name)) or _LINE_BREAK.search(value):
            raise ValueError(f"invalid header {name[:40]!r}")
        lines.append(f"{name}: {value}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return "\r\n".join(lines).encode("latin-1")


class _HeadWriting:
    """An http.client connection that takes the request's header lines as one block."""

    def put_head(self, head: bytes) -> None:
        self._output(head)  # type: ignore[attr-defined]  # what putheader() does with each line


class _Connection(_HeadWriting, http.client.HTTPConnection):
    pass


class _TLSConnection(_HeadWriting, http.client.HTTPSConnection):
    pass


class HttpUpstream:
    """The legacy server over HTTP(S), with kept-alive connections reused."""

    def __init__(self, url: str, connect_timeout: float = 5.0, read_timeout: float = 300.0, pool_size: int = 32):
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.hostname = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.host_header = parts.netloc.rpartition("@")[2]
        self.origin = f"{parts.scheme}://{self.host_header}"
        # 0 means "no limit" (a zero socket timeout would make sockets non-blocking).
        self.connect_timeout = connect_timeout or None
        self.read_timeout = read_timeout or None
        self.pool_size = pool_size
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []  # oldest first
        self._lock = threading.Lock()
        self._tls = ssl.create_default_context() if self.https else None

    # --- connections -------------------------------------------------------------

    def _connect(self) -> http.client.HTTPConnection:
        assert self.hostname is not None  # config.load refuses an HTTP url without a host
        conn: http.client.HTTPConnection
        if self.https:
            conn = _TLSConnection(self.hostname, self.port, timeout=self.connect_timeout, context=self._tls)
        else:
            conn = _Connection(self.hostname, self.port, timeout=self.connect_timeout)
        conn.response_class = StrictResponse
        try:
            conn.connect()
        except TimeoutError as exc:
            conn.close()
            raise UpstreamTimeout("the legacy server did not accept the connection in time") from exc
        except OSError as exc:
            conn.close()
            raise UpstreamError(f"cannot connect to the legacy server ({_describe(exc)})") from exc
        conn.sock.settimeout(self.read_timeout)
        return conn

    def _checkout(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connection, ``(conn, reused)``: the most recently used idle one, else a new one."""
        stale = []
        found = None
        deadline = time.monotonic() - IDLE_TIMEOUT
        with self._lock:
            while self._idle:
                conn, since = self._idle.pop()
                if since > deadline and _idle_and_open(conn.sock):
                    found = conn
                    break
                stale.append(conn)
        for conn in stale:
            conn.close()
        return (found, True) if found is not None else (self._connect(), False)

    def _checkin(self, conn: http.client.HTTPConnection):
        deadline = time.monotonic() - IDLE_TIMEOUT
        with self._lock:
            expired = [c for c, since in self._idle if since <= deadline]
            self._idle = [(c, since) for c, since in self._idle if since > deadline]
            kept = len(self._idle) < self.pool_size
            if kept:
                self._idle.append((conn, time.monotonic()))
        for old in expired:
            old.close()
        if not kept:
            conn.close()

    def close(self):
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _since in idle:
            conn.close()

    # --- one exchange ------------------------------------------------------------

    def _write_request(self, conn, method: str, target: str, headers, body) -> bool:
        """Send the request line, headers and body; False when the server stopped reading early."""
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        conn.put_head(request_head(self.host_header, headers, None if body is None else len(body)))
        if body is None or isinstance(body, (bytes, bytearray)):
            conn.endheaders(body or None)
            return True
        conn.endheaders()
        try:
            while chunk := body.read(CHUNK):
                conn.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            # The server answered early (401, 413...) and stopped reading: its
            # answer, if it sent one, is the response.
            return False
        return True

    def send(self, method: str, uri: str, headers: list[tuple[str, str]], body=None) -> UpstreamResponse:
        """Send one request; *uri* is the exact request target (path and query).

        *body* is None, bytes, or a sized reader (:class:`~shim.upstream.SizedBody`).  Raises
        :class:`UpstreamError` (502), :class:`UpstreamTimeout` (504) or
        :class:`RequestRefused` (400: a header or target http.client refuses, or a
        client body that broke off).
        """
        target = _ascii_target(uri)
        replayable = body is None or isinstance(body, (bytes, bytearray))
        fresh = False
        while True:
            conn, reused = (self._connect(), False) if fresh else self._checkout()
            sock = conn.sock
            try:
                sent_whole = self._write_request(conn, method, target, headers, body)
                response = conn.getresponse()
            except RequestRefused:
                _abort(sock)
                conn.close()
                raise
            except ValueError as exc:  # http.client refuses a header or the target
                conn.close()
                raise RequestRefused(f"cannot forward this request: {exc}") from None
            except TimeoutError as exc:
                conn.close()
                raise UpstreamTimeout("the legacy server did not answer in time") from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if (
                    reused
                    and replayable
                    and method in RETRYABLE_METHODS
                    # Closed before one byte of an answer (RemoteDisconnected is one):
                    # an answer that came, even garbled, means the request arrived.
                    and isinstance(exc, ConnectionError)
                ):
                    fresh = True  # the kept-alive connection had been closed by the server
                    continue
                raise UpstreamError(f"the legacy server broke the connection ({_describe(exc)})") from exc
            break
        return self._response(conn, sock, method, response, sent_whole)

    def _response(self, conn, sock, method: str, response, sent_whole: bool) -> UpstreamResponse:
        headers = response.fields
        try:
            if response.problem:
                # Part of the header block would pass for something else downstream.
                raise UpstreamError(f"the legacy server sent a malformed header block ({response.problem})")
            check_status(response.status, response.reason)
            check_framing(headers)
        except UpstreamError:
            _abort(sock)
            conn.close()
            raise
        status = response.status
        # No body follows, whatever the headers say (RFC 9112 section 6.3).
        bodyless = method == "HEAD" or status in (204, 304)  # check_status refused any 1xx
        state = {"complete": bodyless}

        def body_iter():
            if bodyless:
                return
            try:
                while chunk := response.read1(CHUNK):
                    yield chunk
            except TimeoutError as exc:
                raise UpstreamTimeout("the legacy server stopped sending (read timeout)") from exc
            except (OSError, http.client.HTTPException) as exc:
                raise UpstreamError(f"the legacy server broke the connection mid-body ({_describe(exc)})") from exc
            if response.length:  # bytes announced by Content-Length that never came
                raise UpstreamError(
                    f"the legacy server closed the connection {response.length} bytes before the end of the body"
                )
            state["complete"] = True

        def close():
            reusable = state["complete"] and sent_whole and not response.will_close and conn.sock is not None
            response.close()
            if reusable:
                self._checkin(conn)
            else:  # an unfinished body: drop the connection so the server stops sending
                _abort(sock)
                conn.close()

        return UpstreamResponse(status, response.reason or "", headers, body_iter(), close)
