"""May this principal read this workspace's feed?  The legacy server decides.

The shim asks it with the client's own credentials: a ``changes`` call with a
seq above any table's MAX (:data:`PROBE_SEQ`), cheap for PHP and running the
workspace's side effects.  An allowed answer is remembered for
``auth.cache_ttl`` seconds, a refusal for at most ``auth.deny_cache_ttl``.
Any other answer (an XML error, a redirect, a login page...) is not a "yes":
the request is forwarded and the legacy server answers it itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import quote

import sqlalchemy as sa

from . import db, translate
from .auth import Principal
from .cache import TTLCache
from .resign import resign_query

log = logging.getLogger(__name__)

#: A seq above any real table's MAX: the probe costs the legacy server one MAX query.
PROBE_SEQ = 2**53 - 1
#: Bytes of a probe answer read at most (an allowed one is ``LAST_SEQ:1``).
PROBE_BODY_LIMIT = 64 * 1024
#: Refusals are never remembered longer than this, whatever the setting says.
MAX_DENY_TTL = 5.0


@dataclass(frozen=True)
class Decision:
    """The outcome of an authorization probe.

    ``allowed``: serve the feed; ``response`` (status, headers, body): the
    legacy refusal to pass back; neither: forward the request upstream.
    ``group_path``/``login`` are the stored identity used for the identifier.
    """

    allowed: bool
    response: tuple[int, list, bytes] | None = None
    login: str | None = None
    group_path: str | None = None


FORWARD = Decision(False)


class Prober:
    """Sends authorization probes to the legacy server through an upstream transport."""

    def __init__(self, upstream, upstream_prefix: str):
        self.upstream = upstream
        self.upstream_prefix = upstream_prefix

    def __call__(self, ws_id: str, principal: Principal, client_headers=list) -> tuple[int, list, bytes]:
        """``(status, headers, body)`` of the legacy server's answer for *principal* on *ws_id*.

        *client_headers()* (``X-Forwarded-*``, ``User-Agent``) say who is really
        asking, so PHP's per-address brute-force protection counts the client,
        not the shim.  Never cookies: only the credentials under test count.
        """
        app_path = f"/api/{quote(ws_id, safe='-_.~')}/changes/{PROBE_SEQ}"
        upstream_path = translate.join_prefix(self.upstream_prefix, app_path)
        query = "stream=true"
        headers = client_headers() or [("User-Agent", "pydio-shim auth probe")]
        if principal.authorization is not None:
            headers.append(("Authorization", principal.authorization))
        elif principal.token is not None and principal.private is not None:
            query = resign_query(
                query + "&auth_token=" + principal.token, principal.token, principal.private, upstream_path
            )
        response = self.upstream.send("GET", upstream_path + "?" + query, headers)
        body = response.read_all(PROBE_BODY_LIMIT)
        return response.status, response.headers, body


class Authorizer:
    """Decides feed access by probing the legacy server, caching the answers.

    *send_probe(ws_id, principal, client_headers)* asks the legacy server and
    returns ``(status, headers, body)`` (a :class:`Prober`).
    """

    def __init__(
        self, engine, send_probe, ttl: float = 30.0, deny_ttl: float = 2.0, max_entries: int = 10000, clock=None
    ):
        self.engine = engine
        self.send_probe = send_probe
        self.ttl = ttl
        self.deny_ttl = min(deny_ttl, MAX_DENY_TTL)
        self.cache = TTLCache(max_entries, clock)
        self.probes = 0

    def decide(self, principal: Principal, ws_id: str, client_headers=list) -> tuple[Decision, bool]:
        """``(decision, cache_hit)`` for *principal* reading workspace *ws_id*.

        *client_headers()* gives the headers that go with a probe (who is really
        asking); it is called only when a probe is sent.
        """
        key = (principal.cache_key, ws_id)
        cached = self.cache.get(key)
        if cached is not None:
            return cached, True
        self.probes += 1
        status, headers, body = self.send_probe(ws_id, principal, client_headers)
        if status in (401, 403):
            decision = Decision(False, response=(status, headers, body))
            self.cache.put(key, decision, self.deny_ttl)
            return decision, False
        if status == 200 and body.lstrip(b"\n").startswith(b"LAST_SEQ:"):
            login, group_path = self._identity(principal.login)
            if login is None:
                return FORWARD, False
            decision = Decision(True, login=login, group_path=group_path)
            self.cache.put(key, decision, self.ttl)
            return decision, False
        log.info("auth: probe for workspace %s answered %s; forwarding", ws_id, status)
        return FORWARD, False

    def _identity(self, login: str) -> tuple[str | None, str | None]:
        """The user id, as stored, and its group path; (None, None) when no row holds exactly that id.

        *login* is already Pydio's user id (trimmed, lower-cased).  A stored login
        that differs from it (``Dev1``, found by a case-insensitive collation) is a
        user Pydio half-loads (its personal role is not attached): the shim does
        not guess what the legacy server then allows, it forwards.
        """
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(db.users.c.login, db.users.c.groupPath).where(db.users.c.login == login)
            ).first()
        if row is None or row[0] != login:
            # Unknown here or differing in case: the identifier is not certain.
            return None, None
        return row[0], row[1]
