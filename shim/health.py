"""``/_shim/health``: can the shim reach what it needs?  JSON, 200 or 503.

``ok``: everything answers.  ``degraded`` (still 200): the database is out of
reach but the legacy server answers, so feed requests go to it
(:mod:`shim.dbstate`); ``reason`` says why.  ``failed`` (503): the legacy server
does not answer, so neither does the shim for anything but the feed.
Error details (host names, users) go only to trusted callers; others see which
part failed, and the details are logged.
"""

from __future__ import annotations

import json
import logging

import sqlalchemy as sa
from werkzeug.wrappers import Response

from . import db, translate
from .upstream import UpstreamError

log = logging.getLogger(__name__)


def database_check(engine) -> str:
    """``"ok"`` when *engine* answers ``SELECT 1``, else ``"failed: <why>"``."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return "ok"
    except sa.exc.SQLAlchemyError as exc:
        return "failed: " + db.first_line(exc)


def upstream_check(upstream, upstream_prefix: str) -> str:
    """``"ok"`` when the legacy server answers its root below 500."""
    try:
        response = upstream.send(
            "GET", translate.join_prefix(upstream_prefix, "/"), [("User-Agent", "pydio-shim health")]
        )
        response.close()
    except UpstreamError as exc:
        return f"failed: {exc}"
    return "ok" if response.status < 500 else f"failed: status {response.status}"


def health(app, detailed: bool) -> Response:
    """The health answer of *app* (a :class:`shim.wsgi.ShimApp`)."""
    checks = {"database": database_check(app.engine)}
    if app.config.feed_is_replica:  # the feed reads a replica: it must answer too
        checks["feed_database"] = database_check(app.feed_engine)
    checks["upstream"] = upstream_check(app.upstream, app.config.upstream_prefix)
    if checks["upstream"] != "ok":
        status = "failed"
    elif any(v != "ok" for v in checks.values()) or app.database.degraded:
        status = "degraded"
    else:
        status = "ok"
    answer: dict = {"status": status, "checks": checks}
    if status != "ok":
        log.warning("health: %s", ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok") or status)
    if status == "degraded":
        answer["reason"] = "the database is out of reach: feed requests are forwarded to the legacy server"
        if detailed and app.database.reason:
            answer["reason"] += f" (last error: {app.database.reason})"
    if not detailed:
        answer["checks"] = {k: v.split(":", 1)[0] for k, v in checks.items()}
    return Response(
        json.dumps(answer),
        status=503 if status == "failed" else 200,
        content_type="application/json",
        headers=[("Cache-Control", "no-store")],
    )
