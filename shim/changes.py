"""The ``/api/{ws}/changes/{seq}`` endpoint: answered from the database when the shim is sure.

A feed request is answered by the shim only when every part of it is
understood: its parameters (:func:`shim.feed.parse_feed_params`), its
credentials (:mod:`shim.auth`), its workspace (:mod:`shim.workspaces`) and the
legacy server's "yes" for those credentials on that workspace
(:mod:`shim.authz`).  Anything else is forwarded, and the legacy server
answers it as it would without the shim.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import unquote

import sqlalchemy as sa

from . import auth, db, feed
from . import headers as header_policy
from .feed import FeedParams
from .phpcompat import parse_query
from .proxy import content_length
from .responses import RawResponse, plain
from .upstream import RequestRefused, UpstreamError
from .workspaces import OptionError

log = logging.getLogger(__name__)

#: A POST feed body larger than this is not a sync client's: it is forwarded unread.
MAX_FEED_FORM = 64 * 1024
#: Headers carrying key-store tokens; the shim leaves them to the legacy server.
TOKEN_HEADERS = ("HTTP_AUTH_TOKEN", "HTTP_AUTH_HASH", "HTTP_PYDIO_AUTH_TOKEN", "HTTP_PYDIO_AUTH_HASH")


def ambiguous_credentials(environ, params) -> bool:
    """True when the request carries header tokens, or more than one kind of credential.

    Which one the legacy server honours first (header tokens, form tokens,
    Basic, the session cookie) is not something to guess: forward.
    """
    if any(h in environ for h in TOKEN_HEADERS):
        return True
    kinds = (
        ("auth_token" in params or "auth_hash" in params)
        + bool(environ.get("HTTP_AUTHORIZATION"))
        + ("AjaXplorer=" in environ.get("HTTP_COOKIE", ""))
    )
    return kinds > 1


def small_form(environ) -> bytes | None:
    """The body of a small POST PHP would parse as a form, or None to forward the request.

    Only ``application/x-www-form-urlencoded`` fills PHP's ``$_POST``; an
    empty body without a type is fine (there is nothing to parse).
    """
    ctype = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    size = content_length(environ)
    if size is None:  # chunked, or no length at all: not a sync client's feed request
        return None
    if size > MAX_FEED_FORM or (ctype != "application/x-www-form-urlencoded" and (size or ctype)):
        return None
    body = environ["wsgi.input"].read(size) if size else b""
    if len(body) != size:
        raise RequestRefused("request body shorter than its Content-Length")
    return body


@dataclass
class Poll:
    """A feed request the shim understands: what it asks for and who asks."""

    params: FeedParams
    principal: auth.Principal
    body: bytes | None  # a POST body already read (forwarded as it was)


class Declined(Exception):
    """The shim does not answer this request itself: the legacy server does."""


class ChangesEndpoint:
    """Serves feed requests from the database, or forwards them."""

    def __init__(self, app):
        self.app = app

    def __call__(self, request, ws: str, seq: str):
        app = self.app
        body = None
        params = dict(request.query_params)
        if request.method == "POST":
            body = small_form(request.environ)
            if body is None:
                return app.forward(request)
            params.update(parse_query(body))
        if not app.database.should_try():
            return self.forward_degraded(request, body)
        try:
            response = self.answer(request, ws, seq, params, body)
        except Declined:
            return app.forward(request, body)
        except (sa.exc.SQLAlchemyError, feed.FeedError) as exc:
            if app.database.failed(exc):
                return self.forward_degraded(request, body)
            # The database answers: the request itself made its query fail (a
            # character a utf8mb3 column cannot compare, say). PHP decides.
            log.info("feed query failed (%s); forwarding", db.first_line(exc))
            return app.forward(request, body)
        app.database.succeeded()
        return response

    def answer(self, request, ws: str, seq: str, params: dict, body: bytes | None):
        """The shim's own answer; raises :class:`Declined` (forward) or a database error."""
        app = self.app
        poll = self.understand(request, seq, params, body)
        try:
            ws_key = unquote(ws, errors="strict")
        except UnicodeDecodeError:
            raise Declined from None
        try:
            workspace = None if ws_key == "pydio" else app.workspaces.resolve(ws_key)
        except OptionError:
            raise Declined from None
        if workspace is None or not workspace.syncable or workspace.forward_reason:
            raise Declined
        request.log.kind = "feed"

        def client_headers():
            return header_policy.client_identity_headers(request.environ, request.prefix, request.trusted)

        try:
            # The probe names the workspace by the id the shim resolved, never as the
            # client spelled it: a slug may have moved to another workspace since the
            # shim last looked it up, and the answer must be about the rows it sends.
            decision, how = app.authorizer.decide(poll.principal, workspace.id, client_headers)
        except UpstreamError as exc:
            app.metrics.upstream_errors.labels(kind="probe").inc()
            log.error("auth probe failed: %s", exc)
            return plain(exc.status, f"pydio-shim: the legacy server could not confirm access ({exc})")
        request.log.cache = how
        app.metrics.child(app.metrics.auth_cache, how).inc()
        if decision.response is not None:
            status, legacy_headers, denial = decision.response
            app.metrics.child(app.metrics.feed_requests, str(status)).inc()
            out = header_policy.without(header_policy.response_headers(legacy_headers), "content-length")
            return RawResponse(status, out + [("Content-Length", str(len(denial)))], [denial])
        identifier = workspace.identifier(decision.login, decision.group_path) if decision.allowed else None
        if identifier is None:
            raise Declined
        self.observe(workspace, decision, poll.principal, how, client_headers)
        return self.rows(request, poll, workspace, identifier)

    def rows(self, request, poll: Poll, workspace, identifier: str):
        """The feed of *identifier* after the poll's seq: from memory when nothing is new, else from the database."""
        app = self.app
        view = app.watermark.view(poll.params.seq)
        if view.quiet(identifier, poll.params.seq):
            # Nothing for this workspace since the client's seq: the answer PHP gives, from memory.
            request.feed = feed.QUIET
            app.metrics.feed_from_memory.inc()
            body = feed.empty_body(poll.params.stream, view.max_seq)
            # A known length: no chunked framing (two more writes per poll under gunicorn).
            headers = [("Content-Type", feed.CONTENT_TYPE), ("Content-Length", str(len(body)))]
            return RawResponse(200, headers, [body])
        # Above the floor (an incremental poll), the watermark's MAX, read within the
        # refresh interval, spares the feed its own MAX statement: the SELECT brings
        # the MAX of its own instant along.  Below it (a snapshot, a client far
        # behind), the feed reads MAX first, then streams the rows.
        # Beyond the MAX (a client ahead of this process), the feed reads MAX itself.
        known_max = view.max_seq if view.floor <= poll.params.seq <= view.max_seq else None
        stream = feed.FeedStream(app.feed_engine, identifier, poll.params, workspace.recycle_bin, known_max)
        if app.config.feed_is_replica and poll.params.seq > stream.very_last:
            # A client ahead of the replica (it lags the primary): answering would
            # send it back to seq 0, a full resync.  The legacy server answers.
            stream.close()
            raise Declined
        request.feed = stream
        # The first piece is read here, so that a database failing at the first
        # fetch is still this request's to forward.
        return RawResponse(200, [("Content-Type", feed.CONTENT_TYPE)], stream.primed())

    def observe(self, workspace, decision, principal, how: str, client_headers) -> None:
        """Keep the workspace's storage observation going (:mod:`shim.observe`), if it has one."""
        intervals = [e for e in (workspace.observe_every, decision.observe_every) if e is not None]
        if not intervals:
            return
        observer, key = self.app.observer, self.app.observer.key(workspace, decision.login)
        if how == "miss":  # the probe was a changes call: the legacy server just ran its own check
            observer.called(key)
            return
        cache_key = (principal.cache_key, workspace.id)

        def refused():
            self.app.authorizer.drop(cache_key, ["observation_refused"], decision.login)

        observer.served(key, min(intervals), workspace.id, principal, client_headers, refused)

    def understand(self, request, seq: str, params: dict, body: bytes | None) -> Poll:
        """The request's parameters and principal, or :class:`Declined`."""
        if ambiguous_credentials(request.environ, params):
            raise Declined
        feed_params = feed.parse_feed_params(seq, params)
        if feed_params is None:
            raise Declined
        principal = auth.authenticate(
            params, request.environ.get("HTTP_AUTHORIZATION"), request.public_path, self.app.keystore
        )
        if principal is None:
            raise Declined
        return Poll(feed_params, principal, body)

    def forward_degraded(self, request, body: bytes | None):
        """Forwarded because the database is out of reach; 503 when the legacy server cannot answer either."""
        app = self.app
        request.log.kind = "feed,degraded"
        app.metrics.feed_degraded.inc()
        return app.forward(request, body, unavailable=True)
