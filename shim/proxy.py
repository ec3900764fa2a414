"""Forwarding to the legacy server, streaming both ways.

:class:`HttpUpstream` speaks HTTP/1.1 to the legacy server with :mod:`http.client`
over a small pool of kept-alive connections per worker process.  ``requests``
and ``urllib3`` are not used on this path: urllib3 rewrites the request target
(``%2f`` becomes ``%2F``, ``[`` becomes ``%5B``, and one stray ``%`` turns every
``%2F`` of the target into ``%252F``), adds ``User-Agent`` and
``Accept-Encoding`` headers the client never sent, and regroups repeated
response headers.

What the legacy server receives:

- the request target byte for byte as the client sent it, except bytes >= 0x80
  sent unencoded, which are percent-encoded (``é`` as UTF-8 becomes ``%C3%A9``,
  the form RFC 3986 requires and PHP decodes identically).  gunicorn refuses
  such targets itself with 400; other WSGI servers pass them on;
- the client's end-to-end headers, hop-by-hop ones dropped, plus
  ``X-Forwarded-For/-Proto/-Host/-Prefix`` (see :func:`forwarded_headers`);
- the body with its ``Content-Length``, streamed as it arrives; a chunked body
  is first spooled to a temporary file and sent with its length, because
  PHP-FPM drops chunked bodies.

Responses are streamed back as they arrive, undecoded; an upstream that stops
before the end of its body makes the client's connection close early too.
"""

from __future__ import annotations

import http.client
import logging
import re
import select
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .translate import HOP_BY_HOP

log = logging.getLogger(__name__)

# Bytes relayed per read: 256 KiB moved 1 GiB half again as fast as 64 KiB for
# half the CPU (docs/benchmarks.md), and stays small next to a worker's memory.
CHUNK = 256 * 1024
#: Request bodies up to this size are spooled in memory, larger ones on disk.
SPOOL_MEMORY = 1024 * 1024
#: An idle upstream connection older than this is closed instead of reused.
#: Apache closes idle connections after 5 s (KeepAliveTimeout); reusing one it
#: is closing at that very moment would fail the request.
IDLE_TIMEOUT = 4.0
#: Requests that may be sent again on a new connection when a kept-alive one
#: turns out to be closed (only when their body can be sent again, too).
RETRYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "PROPFIND"})

# RFC 9110 token: what a header name may be.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# What a header value may hold once obsolete line folding is undone.
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_OBS_FOLD = re.compile(r"\r?\n[ \t]*")


class UpstreamError(Exception):
    """The legacy server could not be reached or broke the exchange (502)."""

    status = 502


class UpstreamTimeout(UpstreamError):
    """The legacy server did not answer in time (504)."""

    status = 504


class BadRequest(Exception):
    """The client's request cannot be forwarded as it is (400)."""


class ClientBodyError(BadRequest):
    """The client's request body broke off before its announced end (400)."""


@dataclass
class UpstreamResponse:
    """A response from the legacy server, body not yet read."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: object  # iterator of bytes
    _close: object = None
    bytes_sent: int = field(default=0)

    def close(self):
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


class BodyReader:
    """A request body of known length, read from the WSGI input as it is sent."""

    def __init__(self, stream, length: int):
        self.stream = stream
        self.remaining = length
        self.length = length

    def __len__(self):
        return self.length

    def read(self, size: int = CHUNK) -> bytes:
        if self.remaining <= 0:
            return b""
        if size is None or size < 0 or size > self.remaining:
            size = self.remaining
        try:
            data = self.stream.read(size)
        except Exception as exc:  # each server has its own "client went away" error
            raise ClientBodyError(f"the request body broke off ({exc.__class__.__name__})") from exc
        if not data:
            raise ClientBodyError("the request body ended before its Content-Length")
        self.remaining -= len(data)
        return data

    def __iter__(self):
        while chunk := self.read(CHUNK):
            yield chunk


def content_length(environ) -> int | None:
    """The request's declared body length: ``None`` for a chunked body, 0 without a body.

    Raises :class:`BadRequest` for a malformed ``Content-Length``.
    """
    length = environ.get("CONTENT_LENGTH")
    if length not in (None, ""):
        if not (length.isascii() and length.isdigit()):
            raise BadRequest("invalid Content-Length")
        return int(length)
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return None
    return 0


def request_body(environ) -> tuple[object, int | None]:
    """``(body, length)`` for forwarding: streamed when sized, spooled when chunked.

    ``body`` is None when the request has none, ``b""`` when it is empty, else
    a :class:`BodyReader`.
    """
    size = content_length(environ)
    stream = environ["wsgi.input"]
    if size is None:  # chunked: PHP-FPM drops such bodies, so spool it and send a length
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
        size = 0
        try:
            while chunk := stream.read(CHUNK):
                spool.write(chunk)
                size += len(chunk)
        except Exception as exc:  # a malformed or interrupted chunked body
            spool.close()
            raise ClientBodyError(f"the chunked request body broke off ({exc.__class__.__name__})") from exc
        spool.seek(0)
        return (BodyReader(spool, size) if size else b""), size
    if environ.get("CONTENT_LENGTH") in (None, ""):
        return None, None
    return (BodyReader(stream, size) if size else b""), size


def _ascii_target(uri: str) -> str:
    # http.client writes the request line in ASCII: raw non-ASCII bytes (sent
    # unencoded by some clients) are percent-encoded, everything else is kept.
    if uri.isascii():
        return uri
    return "".join(c if ord(c) < 128 else "%%%02X" % ord(c) for c in uri)


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
        if self.https:
            conn = http.client.HTTPSConnection(self.hostname, self.port, timeout=self.connect_timeout,
                                               context=self._tls)
        else:
            conn = http.client.HTTPConnection(self.hostname, self.port, timeout=self.connect_timeout)
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
            if len(self._idle) < self.pool_size:
                self._idle.append((conn, time.monotonic()))
                conn = None
        for old in expired:
            old.close()
        if conn is not None:
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
        conn.putheader("Host", self.host_header)
        for name, value in headers:
            if name.lower() not in ("host", "content-length", "transfer-encoding"):
                conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
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

        *body* is None, bytes, or a sized reader (:class:`BodyReader`).  Raises
        :class:`UpstreamError` (502), :class:`UpstreamTimeout` (504) or
        :class:`BadRequest` (400: a header or target http.client refuses, or a
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
            except BadRequest:
                _abort(sock)
                conn.close()
                raise
            except ValueError as exc:  # http.client refuses a header or the target
                conn.close()
                raise BadRequest(f"cannot forward this request: {exc}") from None
            except TimeoutError as exc:
                conn.close()
                raise UpstreamTimeout("the legacy server did not answer in time") from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and replayable and method in RETRYABLE_METHODS \
                        and isinstance(exc, (ConnectionError, http.client.BadStatusLine)):
                    fresh = True  # the kept-alive connection had been closed by the server
                    continue
                raise UpstreamError(f"the legacy server broke the connection ({_describe(exc)})") from exc
            break
        return self._response(conn, sock, method, response, sent_whole)

    def _response(self, conn, sock, method: str, response, sent_whole: bool) -> UpstreamResponse:
        headers = [(name, _OBS_FOLD.sub(" ", value)) for name, value in response.getheaders()]
        status = response.status
        # No body follows, whatever the headers say (RFC 9112 section 6.3).
        bodyless = method == "HEAD" or status in (204, 304) or 100 <= status < 200
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
                raise UpstreamError(f"the legacy server closed the connection {response.length} bytes "
                                    "before the end of the body")
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


#: Request headers rebuilt by :func:`forwarded_headers` from what the shim knows.
_REBUILT = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-prefix"})


def _dropped_request_header(lname: str, connection_tokens: set[str], trusted: bool) -> bool:
    if lname in HOP_BY_HOP or lname in connection_tokens or lname in _REBUILT:
        return True
    # "Proxy" would become HTTP_PROXY in PHP's environment (httpoxy).
    if lname == "proxy" or lname.startswith("proxy-"):
        return True
    # Other forwarding claims are passed on only from a trusted proxy.
    return not trusted and (lname.startswith("x-forwarded-") or lname in ("forwarded", "x-real-ip"))


def forwarded_headers(environ, public_prefix: str, trusted: bool) -> list[tuple[str, str]]:
    """The client's end-to-end headers plus ``X-Forwarded-*``, hop-by-hop ones dropped.

    Header names are rebuilt from the WSGI environ (``HTTP_USER_AGENT`` becomes
    ``User-Agent``): the original case is lost, which HTTP allows.  Incoming
    ``X-Forwarded-For/-Proto/-Host`` are kept (appended to) only when the peer
    is a *trusted* proxy; from anyone else they are replaced, and its other
    forwarding claims (``X-Forwarded-Port``, ``Forwarded``, ``X-Real-IP``...)
    are dropped.  ``Proxy`` and ``Proxy-*`` headers never pass.
    """
    connection_tokens = {t.strip().lower() for t in environ.get("HTTP_CONNECTION", "").split(",") if t.strip()}
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "HTTP_HOST"):
                continue  # the CGI variables are the authority
            name = key[5:].replace("_", "-").title()
        elif key == "CONTENT_TYPE":
            if not value:
                continue
            name = "Content-Type"
        else:
            continue
        if _dropped_request_header(name.lower(), connection_tokens, trusted):
            continue
        headers.append((name, value))
    remote = environ.get("REMOTE_ADDR", "")
    incoming_for = environ.get("HTTP_X_FORWARDED_FOR") if trusted else None
    headers.append(("X-Forwarded-For", f"{incoming_for}, {remote}" if incoming_for else remote))
    proto = environ.get("HTTP_X_FORWARDED_PROTO") if trusted else None
    headers.append(("X-Forwarded-Proto", proto or environ.get("wsgi.url_scheme", "http")))
    host = environ.get("HTTP_X_FORWARDED_HOST") if trusted else None
    headers.append(("X-Forwarded-Host", host or environ.get("HTTP_HOST", "")))
    headers.append(("X-Forwarded-Prefix", public_prefix or "/"))
    return headers


#: Upstream headers the serving web server sets itself (nginx hides them likewise).
SERVER_OWNED = frozenset({"date", "server"})


def response_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream response headers fit to pass on, in their order.

    Dropped: hop-by-hop ones and those ``Connection`` names, ``Proxy-*``, Date
    and Server, and any header a WSGI server would refuse (a name that is not a
    token, a value with control characters).
    """
    named = set(SERVER_OWNED)
    for name, value in headers:
        if name.lower() == "connection":
            named |= {t.strip().lower() for t in value.split(",")}
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in named or lname.startswith("proxy-"):
            continue
        if not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            log.warning("dropped an invalid response header from the legacy server: %r", name)
            continue
        out.append((name, value))
    return out


class ResponseBody:
    """The WSGI iterable of a forwarded response; closing it closes the upstream."""

    def __init__(self, upstream: UpstreamResponse, on_close=None, send_body: bool = True):
        self.upstream = upstream
        self.on_close = on_close
        self.send_body = send_body

    def __iter__(self):
        if not self.send_body:
            return
        try:
            for chunk in self.upstream.body:
                self.upstream.bytes_sent += len(chunk)
                yield chunk
        except UpstreamError as exc:
            # The status line is gone already: the server can only cut the
            # client's connection, so that the client sees a truncated body.
            log.error("forwarded response cut after %d bytes: %s", self.upstream.bytes_sent, exc)
            raise

    def close(self):
        self.upstream.close()
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback(self.upstream)
