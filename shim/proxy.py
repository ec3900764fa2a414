"""Forwarding to the legacy server, streaming both ways.

:class:`HttpUpstream` talks HTTP through one pooled :class:`requests.Session`
per worker process (keep-alive, no redirects followed: they are the client's).
The request target is sent byte for byte as the client wrote it; bodies are
streamed with their ``Content-Length`` (a chunked request body is first
spooled to a temporary file, because PHP-FPM drops chunked bodies); responses
are streamed back in chunks without being decoded.

Werkzeug's ``ProxyMiddleware`` is not used: it re-quotes ``PATH_INFO``, drops
chunked framing and is meant for development.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
import urllib3

from .translate import HOP_BY_HOP

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
#: Request bodies up to this size are spooled in memory, larger ones on disk.
SPOOL_MEMORY = 1024 * 1024


class UpstreamError(Exception):
    """The legacy server could not be reached (502)."""

    status = 502


class UpstreamTimeout(UpstreamError):
    """The legacy server did not answer in time (504)."""

    status = 504


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
        data = self.stream.read(size)
        if not data:
            raise UpstreamError("client request body ended early")
        self.remaining -= len(data)
        return data

    def __iter__(self):
        while chunk := self.read(CHUNK):
            yield chunk


def request_body(environ) -> tuple[object, int | None]:
    """``(body, length)`` for forwarding: streamed when sized, spooled when chunked."""
    length = environ.get("CONTENT_LENGTH")
    stream = environ["wsgi.input"]
    if length not in (None, ""):
        try:
            size = int(length)
        except ValueError:
            raise BadRequest("invalid Content-Length") from None
        if size < 0:
            raise BadRequest("invalid Content-Length")
        return (BodyReader(stream, size) if size else b""), size
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
        size = 0
        while chunk := stream.read(CHUNK):
            spool.write(chunk)
            size += len(chunk)
        spool.seek(0)
        return (BodyReader(spool, size) if size else b""), size
    return None, None


class BadRequest(Exception):
    """The client's request cannot be forwarded as it is (400)."""


def _ascii_target(uri: str) -> str:
    # http.client writes the request line in ASCII: raw non-ASCII bytes (sent
    # unencoded by some clients) are percent-encoded, everything else is kept.
    if uri.isascii():
        return uri
    return "".join(c if ord(c) < 128 else "%%%02X" % ord(c) for c in uri)


class HttpUpstream:
    """The legacy server over HTTP(S)."""

    def __init__(self, url: str, connect_timeout: float = 5.0, read_timeout: float = 300.0, pool_size: int = 32):
        parts = urlsplit(url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.host_header = parts.netloc
        self.timeout = (connect_timeout, read_timeout)
        self.session = requests.Session()
        self.session.trust_env = False  # never route to the legacy server through an env proxy
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def send(self, method: str, uri: str, headers: list[tuple[str, str]], body=None) -> UpstreamResponse:
        """Send one request; *uri* is the exact request target (path and query)."""
        request = requests.Request(method, self.origin + "/")
        prepared = self.session.prepare_request(request)
        prepared.url = self.origin + _ascii_target(uri)  # bypass requests' re-quoting
        prepared.headers.clear()
        for name, value in headers:
            prepared.headers[name] = value if name not in prepared.headers else prepared.headers[name] + ", " + value
        prepared.headers["Host"] = self.host_header
        if body is not None:
            prepared.body = body
            if isinstance(body, BodyReader):
                prepared.headers["Content-Length"] = str(len(body))
            else:
                prepared.headers["Content-Length"] = str(len(body))
        try:
            response = self.session.send(prepared, stream=True, allow_redirects=False, timeout=self.timeout)
        except (requests.exceptions.ConnectTimeout,) as exc:
            raise UpstreamError(f"cannot connect to the legacy server: {exc.__class__.__name__}") from exc
        except requests.exceptions.ReadTimeout as exc:
            raise UpstreamTimeout("the legacy server did not answer in time") from exc
        except requests.exceptions.RequestException as exc:
            raise UpstreamError(f"cannot reach the legacy server: {exc.__class__.__name__}") from exc
        raw = response.raw
        header_items = list(raw.headers.iteritems()) if hasattr(raw.headers, "iteritems") else list(raw.headers.items())

        def body_iter():
            try:
                for chunk in raw.stream(CHUNK, decode_content=False):
                    if chunk:
                        yield chunk
            except (urllib3.exceptions.ReadTimeoutError, requests.exceptions.ReadTimeout) as exc:
                raise UpstreamTimeout("the legacy server stopped sending") from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise UpstreamError(f"the legacy server broke the connection: {exc.__class__.__name__}") from exc

        return UpstreamResponse(response.status_code, response.reason or "", header_items, body_iter(), response.close)


def forwarded_headers(environ, public_prefix: str, trusted: bool) -> list[tuple[str, str]]:
    """The client's end-to-end headers plus ``X-Forwarded-*``, hop-by-hop ones dropped."""
    connection_tokens = {t.strip().lower() for t in environ.get("HTTP_CONNECTION", "").split(",") if t.strip()}
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").title()
        elif key in ("CONTENT_TYPE",):
            name = "Content-Type"
        else:
            continue
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in connection_tokens or lname in ("host", "content-length") \
                or lname.startswith("x-forwarded-"):
            continue
        if value == "" and name == "Content-Type":
            continue
        headers.append((name, value))
    remote = environ.get("REMOTE_ADDR", "")
    incoming_for = environ.get("HTTP_X_FORWARDED_FOR")
    headers.append(("X-Forwarded-For", f"{incoming_for}, {remote}" if trusted and incoming_for else remote))
    proto = environ.get("HTTP_X_FORWARDED_PROTO") if trusted else None
    headers.append(("X-Forwarded-Proto", proto or environ.get("wsgi.url_scheme", "http")))
    host = environ.get("HTTP_X_FORWARDED_HOST") if trusted else None
    headers.append(("X-Forwarded-Host", host or environ.get("HTTP_HOST", "")))
    headers.append(("X-Forwarded-Prefix", public_prefix or "/"))
    return headers


#: Upstream headers the serving web server sets itself (nginx hides them likewise).
SERVER_OWNED = frozenset({"date", "server"})


def response_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream response headers minus hop-by-hop ones, those ``Connection`` names, Date and Server."""
    named = set(SERVER_OWNED)
    for name, value in headers:
        if name.lower() == "connection":
            named |= {t.strip().lower() for t in value.split(",")}
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in named]


class ResponseBody:
    """The WSGI iterable of a forwarded response; closing it closes the upstream."""

    def __init__(self, upstream: UpstreamResponse, on_close=None, send_body: bool = True):
        self.upstream = upstream
        self.on_close = on_close
        self.send_body = send_body

    def __iter__(self):
        if not self.send_body:
            return
        for chunk in self.upstream.body:
            self.upstream.bytes_sent += len(chunk)
            yield chunk

    def close(self):
        self.upstream.close()
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback(self.upstream)
