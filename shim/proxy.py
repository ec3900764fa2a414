"""Forwarding a request to the legacy server, and its answer back, streaming both ways.

What the legacy server receives:

- the request target byte for byte as the client sent it (below the upstream
  prefix instead of the public one), a valid key-store hash re-signed when the
  prefixes differ (:mod:`shim.resign`);
- the client's end-to-end headers plus ``X-Forwarded-*`` (:mod:`shim.headers`);
- the body with its ``Content-Length``, streamed as it arrives; a chunked body
  is first spooled to a temporary file and sent with its length, because
  PHP-FPM drops chunked bodies.

What the client receives: the legacy answer, streamed as it arrives, with
upstream URLs, cookie paths and web UI bodies moved into the public URL space
(:mod:`shim.translate`).
"""

from __future__ import annotations

import logging
import threading
import time

from . import headers as header_policy
from . import translate
from .resign import resign_for_upstream
from .responses import RawResponse, plain
from .spool import Spool
from .upstream import CHUNK, ClientBodyError, RequestRefused, SizedBody, UpstreamError, UpstreamResponse

log = logging.getLogger(__name__)

#: The largest body length anything on the way can represent (nginx's off_t, Python's sizes).
MAX_CONTENT_LENGTH = 2**63 - 1


class BodyReader(SizedBody):
    """A request body of known length, read from the WSGI input as it is sent."""

    def __init__(self, stream, length: int):
        super().__init__(length)
        self.stream = stream
        self.remaining = length

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


def content_length(environ) -> int | None:
    """The request's declared body length: ``None`` for a chunked body, 0 without a body.

    Raises :class:`RequestRefused` for a malformed ``Content-Length``.
    """
    length = environ.get("CONTENT_LENGTH")
    if length not in (None, ""):
        if not (length.isascii() and length.isdigit()):
            raise RequestRefused("invalid Content-Length")
        if int(length) > MAX_CONTENT_LENGTH:
            raise RequestRefused("Content-Length too large")
        return int(length)
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return None
    return 0


def request_body(environ, spool: Spool) -> object:
    """The body to forward: None without one, ``b""`` when empty, else a sized reader.

    Sized bodies stream as they arrive; a chunked one is spooled first (:mod:`shim.spool`).
    """
    size = content_length(environ)
    stream = environ["wsgi.input"]
    if size is None:  # chunked: PHP-FPM drops such bodies, so spool it and send a length
        return spool.take(stream)
    if environ.get("CONTENT_LENGTH") in (None, ""):
        return None
    return BodyReader(stream, size) if size else b""


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


def request_origin(request) -> str:
    """``scheme://host`` the client reached the shim at, or "" when its host is not a valid host name."""
    environ = request.environ
    trusted = request.trusted
    scheme = (environ.get("HTTP_X_FORWARDED_PROTO") if trusted else None) or environ.get("wsgi.url_scheme", "http")
    host = (environ.get("HTTP_X_FORWARDED_HOST") if trusted else None) or environ.get("HTTP_HOST") or ""
    host = host.split(",")[0].strip()
    if scheme not in ("http", "https") or not translate.valid_host(host):
        return ""
    return f"{scheme}://{host}"


class Slots:
    """A bound on the forwarded requests in flight in one process; beyond it, 503 at once.

    Forwarded requests wait on clients and on the legacy server: an upstream
    that accepts and never answers, or clients sending a byte every few
    seconds, would otherwise hold every thread of the worker, and the feed,
    which needs neither, with them.  0 means no bound.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.busy = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.limit and self.busy >= self.limit:
                return False
            self.busy += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.busy -= 1


#: Methods that change nothing on the legacy server.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Forwarder:
    """Sends requests on to the legacy server and relays its answers."""

    def __init__(self, upstream, config, keystore, metrics):
        self.upstream = upstream
        self.upstream_prefix = config.upstream_prefix
        self.public_origin = config.public_origin
        self.keystore = keystore
        self.metrics = metrics
        self.slots = Slots(config.proxy_max_upstream_requests)
        self.spool = Spool(
            config.proxy_max_spooled_body, config.proxy_spool_space, config.proxy_spool_min_free, config.proxy_spool_dir
        )
        #: Called when a request that may change files was answered (the feed then reads the table afresh).
        self.on_write = lambda: None

    def mapping(self, request) -> translate.Mapping:
        """The public and upstream URL spaces of *request*.

        The public origin is the configured one, else the request's own when
        its host is a valid host name; else none, and upstream URLs become
        absolute paths (``/pydio/...``) rather than carry a forged host into
        redirects and pages.
        """
        public_origin = self.public_origin or request_origin(request)
        # A FastCGI upstream has no origin of its own: PHP names the public host.
        return translate.Mapping(
            public_origin, request.prefix, self.upstream.origin or public_origin, self.upstream_prefix
        )

    def __call__(self, request, body=None, unavailable: bool = False):
        """Forward *request* (its *body* when already read, as bytes); a WSGI application.

        With *unavailable*, the shim could not have answered either: a legacy
        server out of reach is then a 503 (retry later), not a 502.
        """
        if "degraded" not in request.log.kind:
            request.log.kind = "proxy"
        if not self.slots.take():
            request.unread_body = True
            self.metrics.upstream_errors.labels(kind="busy").inc()
            log.warning(
                "%d forwarded requests in flight: refusing %s %s",
                self.slots.busy,
                request.loggable_method,
                request.loggable_target,
            )
            return plain(
                503,
                "pydio-shim: too many requests are waiting on the legacy server; retry later",
                [("Retry-After", "5")],
            )
        try:
            return self._forward(request, body, unavailable)
        except BaseException:
            self.slots.give_back()
            raise

    def _forward(self, request, body, unavailable: bool):
        """The exchange; the slot is given back when the answer is closed (or here, on a failure)."""
        started = time.perf_counter()
        environ = request.environ
        method = request.method
        mapping = self.mapping(request)
        headers = header_policy.forwarded_headers(environ, request.prefix, request.trusted)
        if body is None:
            body = request_body(environ, self.spool)
        spooled = body
        query = request.raw_query
        if mapping.public_prefix != mapping.upstream_prefix:
            query, body = resign_for_upstream(
                self.keystore,
                environ.get("CONTENT_TYPE", ""),
                request.public_path,
                translate.join_prefix(self.upstream_prefix, request.app_path),
                query,
                body,
            )
        target = translate.upstream_uri(request.app_path, query, self.upstream_prefix)
        try:
            upstream = self.upstream.send(method, target, headers, body)
        except UpstreamError as exc:
            self.slots.give_back()
            return self._upstream_failed(request, exc, unavailable)
        finally:
            close = getattr(spooled, "close", None)
            if close is not None:  # a spooled body: it has been sent, its space is free again
                close()
        out_headers = translate.rewrite_response_headers(header_policy.response_headers(upstream.headers), mapping)
        if translate.should_rewrite_body(request.app_path, out_headers, mapping):
            # The body changes length: let the server frame it (chunked).
            upstream.body = translate.rewrite_body_urls(upstream.body, mapping)
            out_headers = header_policy.without(out_headers, "content-length")
        send_body = method != "HEAD" and upstream.status not in (204, 304) and not 100 <= upstream.status < 200
        writes = method not in SAFE_METHODS
        if writes:
            self.on_write()

        def done(up):
            if writes:
                self.on_write()  # again: PHP may answer before its last write
            self.slots.give_back()
            self.metrics.child(self.metrics.proxy_requests, str(up.status)).inc()
            self.metrics.proxy_bytes.inc(up.bytes_sent)
            self.metrics.proxy_latency.observe(time.perf_counter() - started)

        return RawResponse(upstream.status, out_headers, ResponseBody(upstream, done, send_body), upstream.reason)

    def _upstream_failed(self, request, exc: UpstreamError, unavailable: bool):
        kind = {504: "timeout", 503: "busy"}.get(exc.status, "unreachable")
        self.metrics.upstream_errors.labels(kind=kind).inc()
        self.metrics.proxy_requests.labels(status=str(exc.status)).inc()
        log.error("upstream %s for %s %s: %s", kind, request.loggable_method, request.loggable_target, exc)
        if unavailable:
            return plain(
                503, f"pydio-shim: neither the database nor the legacy server answers ({exc})", [("Retry-After", "5")]
            )
        return plain(exc.status, f"pydio-shim: {exc}")
