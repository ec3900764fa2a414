"""The WSGI application: routing, and the one place where the pieces meet.

A request is, in order:

1. placed in the URL space (:mod:`shim.translate`): public prefix stripped;
2. answered by the shim's admin endpoints (health, metrics) if it names one;
3. refused with 403 when it names a protected file (:mod:`shim.denylist`);
4. answered from the database when it is a change-feed request the shim fully
   understands, from a caller the legacy server accepts (:mod:`shim.feed`,
   :mod:`shim.auth`, :mod:`shim.workspaces`);
5. otherwise forwarded to the legacy server unchanged (:mod:`shim.proxy`).

``application`` is built from ``PYDIO_SHIM_CONFIG`` / ``PYDIO_SHIM_*`` on first
use, so ``gunicorn shim.wsgi:application`` works as is; :func:`create_app` builds
one from a :class:`~shim.config.Config` (tests, the demo, other servers).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
import time
from urllib.parse import quote, unquote, unquote_to_bytes

import sqlalchemy as sa

from . import auth, config as config_module, db, denylist, feed, proxy, translate
from .metrics import Metrics
from .workspaces import WorkspaceResolver

log = logging.getLogger("shim")
access_log = logging.getLogger("shim.access")

# /api/{ws}/changes[/{seq}][/]  (relative to the public prefix)
FEED_ROUTE = re.compile(r"^/api/([^/]+)/changes(?:/([^/]*))?/?$")
#: A POST feed body larger than this is not a sync client's: it is forwarded unread.
MAX_FEED_FORM = 64 * 1024


def _plain(start_response, status: str, text: str, extra=()):
    body = (text + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                            *extra])
    return [body]


def parse_query(query: str) -> list[tuple[str, str]]:
    """Query pairs decoded as PHP fills ``$_GET`` (``+`` is a space, UTF-8)."""
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_php_decode(name), _php_decode(value)))
    return pairs


def _php_decode(text: str) -> str:
    raw = text.encode("latin-1", "replace")
    return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8", "surrogateescape")


class ShimApp:
    """The shim as a WSGI application, built from a :class:`~shim.config.Config`."""

    def __init__(self, config: config_module.Config, upstream=None):
        self.config = config
        self.engine = db.create_engine(config.database_url, config.database_pool_size)
        # The feed reads through an engine of its own (a replica's, or the
        # primary's tuned for reads); everything else uses self.engine.
        self.feed_is_replica = bool(config.feed_database_url)
        self.feed_engine = db.create_engine(config.feed_database_url or config.database_url,
                                            config.database_pool_size, read_only=True)
        self.upstream = upstream or make_upstream(config)
        # "" for the root: the form translate joins paths with.
        self.upstream_prefix = translate.normalise_prefix(config.upstream_prefix)
        self.metrics = Metrics()
        self.workspaces = WorkspaceResolver(self.engine, config.workspaces, config.workspace_cache_ttl)
        self.keystore = auth.KeyStore(self.engine, config.auth_cache_ttl, config.auth_cache_size)
        self.authorizer = auth.Authorizer(self.engine, self._send_probe, config.auth_cache_ttl,
                                          config.auth_deny_cache_ttl, config.auth_cache_size)
        self._trusted = [ipaddress.ip_network(n, strict=False) for n in config.trusted_proxies]
        # urllib3 logs request URLs at DEBUG, and probe URLs carry a token and a
        # valid hash: never let them reach a log, whatever the root level.
        logging.getLogger("urllib3").setLevel(max(logging.INFO, logging.getLogger("urllib3").level))

    # --- entry point --------------------------------------------------------------

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        note = {"status": 0, "bytes": 0, "rows": None, "cache": None, "kind": "proxy"}

        def tracking_start_response(status, headers, exc_info=None):
            note["status"] = int(status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)

        try:
            result = self.dispatch(environ, tracking_start_response, note)
        except proxy.BadRequest as exc:
            result = _plain(tracking_start_response, "400 Bad Request", str(exc))
        except Exception:
            log.exception("unexpected error on %s %s", environ.get("REQUEST_METHOD"), _loggable_path(environ))
            result = _plain(tracking_start_response, "500 Internal Server Error", "internal error in pydio-shim")
        return _Logged(result, environ, note, started, self)

    def dispatch(self, environ, start_response, note):
        uri = translate.raw_request_uri(environ)
        path, query = translate.split_uri(uri)
        trusted = self.is_trusted(environ.get("REMOTE_ADDR", ""))
        prefix = translate.public_prefix(environ, self.config.public_prefix, trusted)
        app_path = translate.strip_prefix(path, prefix)
        if app_path is None:
            return _plain(start_response, "404 Not Found", f"not under the shim's prefix {prefix or '/'}")
        if self.config.health_path and app_path == self.config.health_path:
            note["kind"] = "admin"
            return self.health(start_response, detailed=trusted)
        if self.config.metrics_path and app_path == self.config.metrics_path:
            note["kind"] = "admin"
            body = self.metrics.render()
            start_response("200 OK", [("Content-Type", self.metrics.content_type), ("Content-Length", str(len(body)))])
            return [body]
        if denylist.is_denied(app_path):
            log.warning("refused protected path %s", _loggable_path(environ))
            return _plain(start_response, "403 Forbidden", "forbidden")
        match = FEED_ROUTE.match(app_path)
        if match and environ.get("REQUEST_METHOD") in ("GET", "POST"):
            return self.serve_feed(environ, start_response, note, match, query, app_path, prefix, trusted)
        return self.forward(environ, start_response, note, app_path, query, prefix, trusted)

    def is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    # --- the feed ---------------------------------------------------------------------

    def serve_feed(self, environ, start_response, note, match, query, app_path, prefix, trusted):
        body = None
        params = dict(parse_query(query or ""))
        if environ["REQUEST_METHOD"] == "POST":
            form = self._small_form(environ)
            if form is None:
                return self.forward(environ, start_response, note, app_path, query, prefix, trusted)
            body, pairs = form
            params.update(pairs)
        forward = lambda: self.forward(environ, start_response, note, app_path, query, prefix, trusted, body)  # noqa: E731
        if self._ambiguous_credentials(environ, params):
            return forward()
        ws_segment, seq_segment = match.group(1), match.group(2)
        feed_params = feed.parse_feed_params(seq_segment or None, params)
        if feed_params is None:
            return forward()
        # The path the client signed: the public one, prefix included.
        signed_path = translate.join_prefix(prefix, app_path)
        try:
            principal = auth.authenticate(params, environ.get("HTTP_AUTHORIZATION"), signed_path, self.keystore)
            if principal is None:
                return forward()
            ws_key = unquote(ws_segment, errors="strict")
            workspace = None if ws_key == "pydio" else self.workspaces.resolve(ws_key)
        except sa.exc.SQLAlchemyError as exc:
            if self._database_alive():
                # The database answers: the input made the query fail (e.g. a
                # character a utf8mb3 column cannot compare); PHP decides.
                return forward()
            return self._db_unavailable(start_response, note, exc)
        except ValueError:
            return forward()
        if workspace is None or not workspace.syncable:
            return forward()
        note["kind"] = "feed"
        def probe_headers():  # built only when a probe is really sent, not on cached polls
            return [(n, v) for n, v in proxy.forwarded_headers(environ, prefix, trusted)
                    if n.lower().startswith("x-forwarded-") or n.lower() == "user-agent"]
        try:
            # The probe names the workspace by the id the shim resolved, never as the
            # client spelled it: a slug may have moved to another workspace since the
            # shim last looked it up, and the answer must be about the rows it sends.
            decision, hit = self.authorizer.decide(principal, workspace.id, probe_headers)
        except proxy.UpstreamError as exc:
            self.metrics.upstream_errors.labels(kind="probe").inc()
            log.error("auth probe failed: %s", exc)
            return _plain(start_response, f"{exc.status} {_reason(exc.status)}",
                          f"pydio-shim: the legacy server could not confirm access ({exc})")
        except sa.exc.SQLAlchemyError as exc:
            return self._db_unavailable(start_response, note, exc)
        note["cache"] = "hit" if hit else "miss"
        self.metrics.auth_cache.labels(result=note["cache"]).inc()
        if decision.response is not None:
            status, headers, denial = decision.response
            self.metrics.feed_requests.labels(status=str(status)).inc()
            headers = [(n, v) for n, v in proxy.response_headers(headers) if n.lower() != "content-length"]
            start_response(f"{status} {_reason(status)}", headers + [("Content-Length", str(len(denial)))])
            return [denial]
        if not decision.allowed:
            note["kind"] = "proxy"
            return forward()
        identifier = workspace.identifier(decision.login, decision.group_path)
        if identifier is None:
            return forward()
        try:
            stream = feed.FeedStream(self.feed_engine, identifier, feed_params, workspace.recycle_bin)
        except feed.FeedError as exc:
            return self._db_unavailable(start_response, note, exc)
        if self.feed_is_replica and feed_params.seq > stream.very_last:
            # A client ahead of the replica (it lags the primary): answering would
            # send it back to seq 0, a full resync.  The legacy server answers.
            stream.close()
            note["kind"] = "proxy"
            return forward()
        note["feed"] = stream
        start_response("200 OK", [("Content-Type", feed.CONTENT_TYPE)])
        return stream

    @staticmethod
    def _ambiguous_credentials(environ, params) -> bool:
        """True when the request carries more than one kind of credential.

        Which one the legacy server honours first (header tokens, form tokens,
        Basic, the session cookie) is not something to guess: forward.
        """
        if any(h in environ for h in ("HTTP_AUTH_TOKEN", "HTTP_AUTH_HASH", "HTTP_PYDIO_AUTH_TOKEN",
                                      "HTTP_PYDIO_AUTH_HASH")):
            return True
        kinds = (("auth_token" in params or "auth_hash" in params) + bool(environ.get("HTTP_AUTHORIZATION"))
                 + ("AjaXplorer=" in environ.get("HTTP_COOKIE", "")))
        return kinds > 1

    def _database_alive(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.SQLAlchemyError:
            return False

    def _small_form(self, environ):
        """``(body, pairs)`` of a small POST body PHP would parse as a form, or None to forward.

        Only ``application/x-www-form-urlencoded`` fills PHP's ``$_POST``; an
        empty body without a type is fine (there is nothing to parse).
        """
        ctype = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        size = proxy.content_length(environ)
        if size is None:  # chunked, or no length at all: not a sync client's feed request
            return None
        if size > MAX_FEED_FORM or (ctype != "application/x-www-form-urlencoded" and (size or ctype)):
            return None
        body = environ["wsgi.input"].read(size) if size else b""
        if len(body) != size:
            raise proxy.BadRequest("request body shorter than its Content-Length")
        return body, parse_query(body.decode("latin-1"))

    def _db_unavailable(self, start_response, note, exc):
        self.metrics.feed_requests.labels(status="503").inc()
        log.error("database unavailable for the feed: %s", str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)
        note["kind"] = "feed"
        return _plain(start_response, "503 Service Unavailable", "pydio-shim: the database is unavailable",
                      [("Retry-After", "5")])

    def _send_probe(self, ws_id: str, principal: auth.Principal, client_headers=list):
        """Ask the legacy server whether *principal* may read the workspace's feed.

        *client_headers* (``X-Forwarded-*``, ``User-Agent``) say who is really
        asking, so PHP's per-address brute-force protection counts the client,
        not the shim.  Never cookies: only the credentials under test count.
        """
        app_path = f"/api/{quote(ws_id, safe='-_.~')}/changes/{auth.PROBE_SEQ}"
        upstream_path = translate.join_prefix(self.upstream_prefix, app_path)
        query = "stream=true"
        headers = client_headers() or [("User-Agent", "pydio-shim auth probe")]
        if principal.kind == "basic":
            headers.append(("Authorization", principal.authorization))
        else:
            query += "&auth_token=" + principal.token
            query = translate.resign_query(query, principal.token, principal.private, upstream_path)
        response = self.upstream.send("GET", upstream_path + "?" + query, headers)
        body = response.read_all(64 * 1024)
        return response.status, response.headers, body

    # --- forwarding -------------------------------------------------------------------

    def mapping(self, environ, prefix: str, trusted: bool) -> translate.Mapping:
        scheme = (environ.get("HTTP_X_FORWARDED_PROTO") if trusted else None) or environ.get("wsgi.url_scheme", "http")
        host = (environ.get("HTTP_X_FORWARDED_HOST") if trusted else None) or environ.get("HTTP_HOST") \
            or environ.get("SERVER_NAME", "localhost")
        public_origin = f"{scheme}://{host}"
        # A FastCGI upstream has no origin of its own: PHP names the public host.
        return translate.Mapping(public_origin, prefix, self.upstream.origin or public_origin,
                                 self.upstream_prefix)

    def forward(self, environ, start_response, note, app_path, query, prefix, trusted, body=None):
        started = time.perf_counter()
        mapping = self.mapping(environ, prefix, trusted)
        method = environ["REQUEST_METHOD"]
        headers = proxy.forwarded_headers(environ, prefix, trusted)
        if body is None:
            body, _length = proxy.request_body(environ)
        if mapping.public_prefix != mapping.upstream_prefix:
            query, body = self._resign_tokens(environ, translate.join_prefix(prefix, app_path),
                                              translate.join_prefix(mapping.upstream_prefix, app_path), query, body)
        target = translate.upstream_uri(app_path, query, mapping.upstream_prefix)
        try:
            upstream = self.upstream.send(method, target, headers, body)
        except proxy.UpstreamError as exc:
            kind = "timeout" if exc.status == 504 else "unreachable"
            self.metrics.upstream_errors.labels(kind=kind).inc()
            self.metrics.proxy_requests.labels(status=str(exc.status)).inc()
            log.error("upstream %s for %s %s: %s", kind, method, _loggable_path(environ), exc)
            return _plain(start_response, f"{exc.status} {_reason(exc.status)}", f"pydio-shim: {exc}")
        headers = translate.rewrite_response_headers(proxy.response_headers(upstream.headers), mapping)
        if translate.should_rewrite_body(app_path, headers, mapping):
            # The body changes length: let the server frame it (chunked).
            upstream.body = translate.rewrite_body_urls(upstream.body, mapping)
            headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
        start_response(f"{upstream.status} {upstream.reason or _reason(upstream.status)}", headers)
        send_body = method != "HEAD" and upstream.status not in (204, 304) and not 100 <= upstream.status < 200

        def done(up):
            self.metrics.proxy_requests.labels(status=str(up.status)).inc()
            self.metrics.proxy_bytes.inc(up.bytes_sent)
            self.metrics.proxy_latency.observe(time.perf_counter() - started)
            note["bytes"] = up.bytes_sent

        return proxy.ResponseBody(upstream, done, send_body)

    def _resign_tokens(self, environ, public_path: str, upstream_path: str, query: str, body):
        """Re-sign a valid key-store token hash for the upstream path (query or form body).

        The hash covers the path the client saw; once the prefix changes on the
        way, the legacy server would refuse it.  Invalid hashes stay as they are.
        """
        try:
            if query and "auth_hash" in query:
                query = translate.resign_query_if_valid(query, public_path, upstream_path, self.keystore)
            ctype = environ.get("CONTENT_TYPE", "")
            if body and ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
                if isinstance(body, bytes):
                    body = translate.resign_body_head(body, ctype, public_path, upstream_path, self.keystore)
                else:
                    wanted = min(len(body), translate.TOKEN_SEARCH_BYTES)
                    head = bytearray()
                    while len(head) < wanted and (chunk := body.read(wanted - len(head))):
                        head += chunk
                    head = translate.resign_body_head(bytes(head), ctype, public_path, upstream_path, self.keystore)
                    body = translate.HeadReplacedReader(head, body, len(body))
        except sa.exc.SQLAlchemyError as exc:
            log.warning("key store unreadable, token passed on unchanged: %s", exc.__class__.__name__)
        return query, body

    # --- admin --------------------------------------------------------------------------

    def health(self, start_response, detailed: bool = True):
        """Database(s) and upstream reachable?  JSON, 200 or 503.

        Error details (host names, users) go only to trusted addresses; others
        see which part failed, and the details are logged.
        """
        checks = {}
        engines = [("database", self.engine)]
        if self.feed_is_replica:  # the feed reads a replica: it must answer too
            engines.append(("feed_database", self.feed_engine))
        for name, engine in engines:
            try:
                with engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
                checks[name] = "ok"
            except sa.exc.SQLAlchemyError as exc:
                checks[name] = "failed: " + (str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__)
        try:
            response = self.upstream.send("GET", translate.join_prefix(
                self.upstream_prefix, "/"), [("User-Agent", "pydio-shim health")])
            response.close()
            checks["upstream"] = "ok" if response.status < 500 else f"failed: status {response.status}"
        except proxy.UpstreamError as exc:
            checks["upstream"] = f"failed: {exc}"
        healthy = all(v == "ok" for v in checks.values())
        if not healthy:
            log.warning("health: %s", ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"))
        if not detailed:
            checks = {k: v.split(":", 1)[0] for k, v in checks.items()}
        body = json.dumps({"status": "ok" if healthy else "failed", "checks": checks}).encode()
        start_response("200 OK" if healthy else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                        ("Cache-Control", "no-store")])
        return [body]


def _reason(status: int) -> str:
    from http import HTTPStatus
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


#: Query parameters whose values never reach a log line (matched on the decoded name).
SECRET_PARAMS = frozenset({"auth_hash", "auth_token", "password", "pass", "token", "userid", "secure_token"})


def _loggable_path(environ) -> str:
    """The request path with the values of secret query parameters masked, for logs.

    Names are decoded as PHP decodes them (``auth_%74oken`` is ``auth_token``),
    and so is the PHP rule that turns ``.`` and spaces in names into ``_``.
    """
    path, query = translate.split_uri(translate.raw_request_uri(environ))
    if not query:
        return path
    parts = []
    for part in query.split("&"):
        name, eq, _value = part.partition("=")
        decoded = _php_decode(name).replace(".", "_").replace(" ", "_").lower()
        parts.append(f"{name}=***" if eq and decoded.split("[", 1)[0] in SECRET_PARAMS else part)
    return path + "?" + "&".join(parts)


class _Logged:
    """Wraps a response iterable to write one access-log line when it is closed."""

    def __init__(self, inner, environ, note, started, app):
        self.inner = inner
        self.environ = environ
        self.note = note
        self.started = started
        self.app = app

    def __iter__(self):
        for chunk in self.inner:
            if self.note["kind"] == "feed":
                self.note["bytes"] += len(chunk)
            yield chunk

    def close(self):
        try:
            if hasattr(self.inner, "close"):
                self.inner.close()
        finally:
            elapsed = time.perf_counter() - self.started
            note = self.note
            stream = note.get("feed")
            if stream is not None:
                note["rows"] = stream.rows_sent
                self.app.metrics.feed_requests.labels(status=str(note["status"])).inc()
                self.app.metrics.feed_rows.inc(stream.rows_sent)
                self.app.metrics.feed_latency.observe(elapsed)
            access_log.info(
                '%s %s %s status=%s bytes=%s ms=%.1f kind=%s rows=%s cache=%s',
                self.environ.get("REMOTE_ADDR", "-"), self.environ.get("REQUEST_METHOD", "-"),
                _loggable_path(self.environ), note["status"], note["bytes"], elapsed * 1000, note["kind"],
                "-" if note["rows"] is None else note["rows"], note["cache"] or "-")


def make_upstream(config: config_module.Config):
    """The upstream transport named by ``upstream.url`` (HTTP or FastCGI)."""
    if config.upstream_is_fastcgi:
        from .fcgi_upstream import FastCGIUpstream
        return FastCGIUpstream(config)
    return proxy.HttpUpstream(config.upstream_url, config.upstream_connect_timeout, config.upstream_read_timeout)


def create_app(config: config_module.Config | None = None, upstream=None) -> ShimApp:
    """Build the application from *config* (default: file and environment)."""
    return ShimApp(config or config_module.load(), upstream)


class _LazyApplication:
    """``application`` for WSGI servers: built on the first request of each worker."""

    def __init__(self):
        self._app = None
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = create_app()
        return self._app(environ, start_response)


application = _LazyApplication()
