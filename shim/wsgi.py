"""The WSGI application: routing, and the one place where the pieces meet.

A request, in order (:meth:`ShimApp.wsgi_app`):

1. becomes a :class:`~shim.request.ShimRequest`: its raw target placed in the
   public URL space (:mod:`shim.translate`);
2. is matched against :data:`URL_MAP` on its raw path below the prefix: the
   shim's admin endpoints (:mod:`shim.health`, :mod:`shim.metrics`) and the
   change feed (:mod:`shim.changes`, with :mod:`shim.feed`, :mod:`shim.auth`,
   :mod:`shim.authz`, :mod:`shim.workspaces`);
3. is refused with 403 when it names a protected file (:mod:`shim.denylist`);
4. otherwise is forwarded to the legacy server unchanged (:mod:`shim.proxy`,
   over :mod:`shim.upstream`).

The answer is sent through :class:`~shim.guard.GuardedBody`, which writes the
access line (:mod:`shim.accesslog`) with the status the client really got.

``application`` is built from ``PYDIO_SHIM_CONFIG`` / ``PYDIO_SHIM_*`` on first
use, so ``gunicorn shim.wsgi:application`` works as is; :func:`create_app`
builds one from a :class:`~shim.config.Config` (tests, the demo, other servers).
"""

from __future__ import annotations

import logging
import threading
import time
import types
import typing

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule

from . import auth, authz, db, denylist, health
from . import config as config_module
from .cache import remembered_for_short_paths
from .changes import ChangesEndpoint
from .changewatch import ChangeWatch
from .dbstate import DatabaseState
from .fingerprint import Fingerprints
from .guard import GuardedBody, StatusTracker, error_answer
from .metrics import Metrics
from .observe import StorageObserver
from .proxy import Forwarder
from .request import ShimRequest, Trust
from .responses import plain
from .upstream import RequestRefused, make_upstream
from .watermark import Watermark
from .workspaces import WorkspaceResolver

log = logging.getLogger("shim")

#: The methods of feed requests the shim answers (Werkzeug would add HEAD to GET).
FEED_METHODS = ("GET", "POST")
#: Routing answers remembered per process (a client polls the same path again and again).
MATCHES_REMEMBERED = 4096


def url_map(config: config_module.Config) -> Map:
    """The routes the shim answers itself, matched on the raw path below the public prefix.

    Anything else goes to the forwarder.  Raw paths are matched as sent: no
    slash merging, no redirect to a canonical form (PHP routes only the exact
    form, so the shim does too).
    """
    rules = [
        Rule("/api/<ws>/changes/<seq>", endpoint="changes", methods=FEED_METHODS),
        Rule("/api/<ws>/changes/<seq>/", endpoint="changes", methods=FEED_METHODS),
    ]
    if config.admin_health_path:
        rules.append(Rule(config.admin_health_path, endpoint="health"))
    if config.admin_metrics_path:
        rules.append(Rule(config.admin_metrics_path, endpoint="metrics"))
    return Map(rules, merge_slashes=False, strict_slashes=False, redirect_defaults=False)


class ShimApp:
    """The shim as a WSGI application, built from a :class:`~shim.config.Config`."""

    def __init__(self, config: config_module.Config, upstream=None, clock=None):
        self.config = config
        self.engine = self._engine(config.database_url)
        # The feed reads through an engine of its own (a replica's, or the
        # primary's tuned for reads); everything else uses self.engine.
        self.feed_engine = self._engine(config.database_feed_url or config.database_url, read_only=True)
        self.upstream = upstream or make_upstream(config)
        self.metrics = Metrics()
        self.trust = Trust(config.proxy_trusted_proxies)
        # What the cached decisions, workspaces and tokens depend on, checked once per interval.
        self.watch = ChangeWatch(
            self.engine,
            config.auth_check_interval,
            clock,
            self.metrics,
            wait_limit=(config.database_connect_timeout + config.database_read_timeout) or 60.0,
            files=config.auth_watched_files,
        )
        self.workspaces = WorkspaceResolver(
            self.engine, config.workspaces, self.watch, config.auth_max_age, clock=clock
        )
        self.keystore = auth.KeyStore(self.engine, self.watch, config.auth_max_age, config.auth_cache_size, clock)
        prober = authz.Prober(self.upstream, config.upstream_prefix)
        self.authorizer = authz.Authorizer(
            Fingerprints(self.engine),
            self.watch,
            prober,
            max_age=config.auth_max_age,
            deny_ttl=config.auth_deny_cache_ttl,
            max_entries=config.auth_cache_size,
            max_probes=config.auth_max_probes,
            probe_wait=config.upstream_connect_timeout + config.upstream_read_timeout,
            metrics=self.metrics,
        )
        self.observer = StorageObserver(prober, self.watch.clock, self.metrics)
        self.watermark = Watermark(self.feed_engine, config.feed_refresh_interval, clock, self.metrics)
        self.forward = Forwarder(self.upstream, config, self.keystore, self.metrics)
        self.forward.on_write = self.watermark.invalidate
        checked = [config.database_url] + ([config.database_feed_url] if config.feed_is_replica else [])
        self.database = DatabaseState(
            [self._engine(url, pooled=False) for url in checked],
            config.database_retry_interval,
            clock,
        )
        self.changes = ChangesEndpoint(self)
        self.adapter = url_map(config).bind("shim", url_scheme="http")
        # The map never changes, so a path's route neither: Werkzeug's matcher costs
        # a tenth of a poll answered from memory, a dictionary lookup nothing.
        self._route = remembered_for_short_paths(MATCHES_REMEMBERED)(self._route_uncached)
        self.admin_paths = {p.rstrip("/") for p in (config.admin_health_path, config.admin_metrics_path) if p}
        # urllib3 logs request URLs at DEBUG, and probe URLs carry a token and a
        # valid hash: never let them reach a log, whatever the root level.
        logging.getLogger("urllib3").setLevel(max(logging.INFO, logging.getLogger("urllib3").level))

    def _engine(self, url: str, read_only: bool = False, pooled: bool = True):
        c = self.config
        return db.create_engine(
            url,
            c.database_pool_size,
            read_only=read_only,
            pooled=pooled,
            connect_timeout=c.database_connect_timeout,
            read_timeout=c.database_read_timeout,
        )

    def __call__(self, environ, start_response):
        return self.wsgi_app(environ, start_response)

    def wsgi_app(self, environ, start_response):
        """One request: build the request object, dispatch it, guard and log the answer."""
        started = time.perf_counter()
        request = ShimRequest(environ, self.trust, self.config.public_prefix)
        tracker = StatusTracker(start_response, request.log)
        try:
            body = self.dispatch(request)(environ, tracker)
        except RequestRefused as exc:
            request.unread_body = True  # (part of) the body may still be on its way
            body = plain(exc.status, str(exc))(environ, tracker)
        except Exception as exc:  # nothing was sent yet: the shim's own answer instead
            body = error_answer(request, exc)(environ, tracker)
        return GuardedBody(body, request, started, self.finished)

    def dispatch(self, request):
        """The WSGI application that answers *request*."""
        if request.app_path is None:
            return plain(404, f"not under the shim's prefix {request.prefix or '/'}")
        endpoint, values = self.match(request)
        if endpoint == "health":
            request.log.kind = "admin"
            return health.health(self, detailed=request.trusted_client)
        if endpoint == "metrics":
            request.log.kind = "admin"
            return self.metrics.response()
        if denylist.is_denied(request.app_path):
            log.warning("refused protected path %s", request.loggable_target)
            request.log.kind = "refused"
            return plain(403, "forbidden")
        if endpoint == "changes" and request.method in FEED_METHODS:
            return self.changes(request, **values)
        return self.forward(request)

    def match(self, request) -> tuple[str | None, typing.Mapping[str, str]]:
        """``(endpoint, values)`` of the route *request* names, ``(None, {})`` for the forwarder."""
        path = request.app_path
        # Werkzeug matches "/" + path.lstrip("/"): a path PHP would not route
        # ("//api/...") must not become one that the shim answers.  Paths no rule
        # can match (most forwarded requests) skip the matcher: it costs more
        # than anything else the shim does to decide where a request goes.
        if path.startswith("//") or not (path.startswith("/api/") or path.rstrip("/") in self.admin_paths):
            return None, {}
        return self._route(path, request.method)

    def _route_uncached(self, path: str, method: str) -> tuple[str | None, typing.Mapping[str, str]]:
        try:
            endpoint, values = self.adapter.match(path, method=method)
        except HTTPException:  # no route, or a method the route does not take
            return None, {}
        return endpoint, types.MappingProxyType(values)  # shared by every request with this path: read-only

    def close(self) -> None:
        """Release the database pools and the upstream connections kept for reuse."""
        self.upstream.close()
        self.observer.close()
        for engine in (self.engine, self.feed_engine, *self.database.engines):
            engine.dispose()

    def finished(self, request, seconds: float) -> None:
        """Called once per request when its answer is closed: the feed's metrics."""
        stream = getattr(request, "feed", None)
        if stream is not None:
            request.log.rows = stream.rows_sent
            self.metrics.child(self.metrics.feed_requests, str(request.log.status)).inc()
            if stream.rows_sent:
                self.metrics.feed_rows.inc(stream.rows_sent)
            if stream.rows_skipped:
                self.metrics.feed_rows_skipped.inc(stream.rows_skipped)
            self.metrics.feed_latency.observe(seconds)


def create_app(config: config_module.Config | None = None, upstream=None, clock=None) -> ShimApp:
    """Build the application from *config* (default: file and environment).

    *upstream* replaces the transport to the legacy server (tests); *clock*
    replaces :func:`time.monotonic` for the change checks and lifetimes (tests).
    """
    return ShimApp(config or config_module.load(), upstream, clock)


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
