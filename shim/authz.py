"""May this principal read this workspace's feed?  The legacy server decides, once per change.

The shim asks it with the client's own credentials: a ``changes`` call with a
seq above any table's MAX (:data:`PROBE_SEQ`), cheap for PHP and running the
workspace's side effects.  The answer is kept with the fingerprint of the rows
it depends on (:mod:`shim.fingerprint`) and the generation of the tables
(:mod:`shim.changewatch`):

- same generation: the answer is reused as is;
- a newer generation: the fingerprint is read again; unchanged, the answer
  carries on; changed, it is dropped (the parts that changed are the reason,
  logged and counted) and the legacy server is asked again;
- ``auth.max_age`` bounds every answer (settings kept in files change no
  row); a refusal lives at most ``auth.deny_cache_ttl`` (PHP's brute-force
  counter is a file), an answer that is neither "yes" nor a refusal a minute.

At most one probe per key is in flight (the others wait for its answer) and
at most ``auth.max_probes`` per process; beyond that a request is forwarded,
and the legacy server answers it as it would without the shim.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field
from urllib.parse import quote

from . import translate
from .auth import Principal
from .fingerprint import Fingerprint
from .resign import resign_query

log = logging.getLogger(__name__)

#: A seq above any real table's MAX: the probe costs the legacy server one MAX query.
PROBE_SEQ = 2**53 - 1
#: Bytes of a probe answer read at most (an allowed one is ``LAST_SEQ:1``).
PROBE_BODY_LIMIT = 64 * 1024
#: Refusals are never remembered longer than this, whatever the setting says.
MAX_DENY_TTL = 5.0
#: An answer that is neither "yes" nor a refusal (an XML error, a login page) is asked again after this.
OTHER_ANSWER_TTL = 60.0


@dataclass(frozen=True)
class Decision:
    """The outcome of an authorization probe.

    ``allowed``: serve the feed; ``response`` (status, headers, body): the
    legacy refusal to pass back; neither: forward the request upstream
    (``reason`` says why).  ``login``/``group_path`` are the stored identity
    used for the identifier; ``observe_every`` a role's storage observation.
    """

    allowed: bool
    response: tuple[int, list, bytes] | None = None
    login: str | None = None
    group_path: str | None = None
    reason: str | None = None
    observe_every: float | None = None


FORWARD = Decision(False)


@dataclass
class _Entry:
    decision: Decision
    fingerprint: Fingerprint
    generation: int
    expires: float
    expiry_reason: str
    principal: Principal  # in memory only: storage observations are made with it


@dataclass
class _Flight:
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    decision: Decision | None = None


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


def is_allowed(status: int, body: bytes) -> bool:
    return status == 200 and body.lstrip(b"\n").startswith(b"LAST_SEQ:")


class Authorizer:
    """Feed access decisions of the legacy server, kept while the rows they depend on are unchanged.

    *fingerprints* reads :class:`~shim.fingerprint.Fingerprint` s, *watch* is
    the process's :class:`~shim.changewatch.ChangeWatch`, *send_probe(ws_id,
    principal, client_headers)* asks the legacy server (a :class:`Prober`).
    """

    def __init__(
        self,
        fingerprints,
        watch,
        send_probe,
        *,
        max_age: float = 3600.0,
        deny_ttl: float = 2.0,
        max_entries: int = 10000,
        max_probes: int = 8,
        probe_wait: float = 30.0,
        metrics=None,
    ):
        self.fingerprints = fingerprints
        self.watch = watch
        self.send_probe = send_probe
        self.max_age = max_age
        self.deny_ttl = min(deny_ttl, MAX_DENY_TTL)
        self.max_entries = max(1, max_entries)
        self.max_probes = max(1, max_probes)
        self.probe_wait = probe_wait
        self.metrics = metrics
        self.clock = watch.clock
        self.probes = 0  # probes sent, for tests and the benchmark
        self._entries: collections.OrderedDict[tuple, _Entry] = collections.OrderedDict()
        self._flights: dict[tuple, _Flight] = {}
        self._lock = threading.Lock()

    def decide(self, principal: Principal, ws_id: str, client_headers=list) -> tuple[Decision, str]:
        """``(decision, how)`` for *principal* reading workspace *ws_id*.

        *how* is ``hit``, ``revalidated`` (the rows were checked again and had
        not changed), ``miss`` (the legacy server was asked), ``shared``
        (another request's probe answered) or ``busy`` (forwarded: too many
        probes in flight).  *client_headers()* gives the headers that go with a
        probe; it is called only when one is sent.  Raises database and
        upstream errors.
        """
        generation = self.watch.generation()
        now = self.clock()
        key = (principal.cache_key, ws_id)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        fingerprint = None
        if entry is not None:
            if now >= entry.expires:
                self.drop(key, [entry.expiry_reason], principal.login)
            elif entry.generation == generation:
                return entry.decision, "hit"
            else:
                fingerprint = self.fingerprints.of(principal.login, ws_id, principal.token)
                changed = entry.fingerprint.changed(fingerprint)
                if not changed:
                    entry.generation = max(entry.generation, generation)
                    return entry.decision, "revalidated"
                self.drop(key, changed, principal.login)
        return self._ask_once(key, principal, client_headers, generation, fingerprint, now)

    def drop(self, key: tuple, reasons: list[str], login: str = "") -> None:
        """Forget the decision under *key*; *reasons* (what changed) are logged and counted."""
        with self._lock:
            found = self._entries.pop(key, None)
        if found is None:
            return
        log.info("auth: decision for %r on workspace %r dropped: %s", login, key[1], ", ".join(reasons))
        if self.metrics is not None:
            for reason in reasons:
                self.metrics.auth_dropped.labels(reason=reason).inc()

    def _ask_once(self, key, principal, client_headers, generation, fingerprint, now) -> tuple[Decision, str]:
        """One probe per key at a time, *max_probes* at most; the others share its answer or are forwarded."""
        with self._lock:
            existing = self._flights.get(key)
            if existing is None:
                if len(self._flights) >= self.max_probes:
                    return FORWARD, "busy"
                flight = self._flights[key] = _Flight(now)
            else:
                flight = existing
        if existing is not None:
            # Only an answer asked for within the check interval is fresh enough for this request.
            fresh = now - flight.started < self.watch.interval
            if fresh and flight.done.wait(self.probe_wait) and flight.decision is not None:
                return flight.decision, "shared"
            return FORWARD, "busy"
        try:
            flight.decision = self._ask(key, principal, client_headers, generation, fingerprint, now)
            return flight.decision, "miss"
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def _ask(self, key, principal, client_headers, generation, fingerprint, now) -> Decision:
        ws_id = key[1]
        # The rows are read before the legacy server is asked: a change in between
        # makes the next check see a different fingerprint, never the reverse.
        if fingerprint is None:
            fingerprint = self.fingerprints.of(principal.login, ws_id, principal.token)
        facts = fingerprint.facts
        if facts.forward_reason is not None:
            log.info(
                "auth: %r on workspace %r is left to the legacy server: %s",
                principal.login,
                ws_id,
                facts.forward_reason,
            )
            decision, ttl, expiry = Decision(False, reason=facts.forward_reason), self.max_age, "max_age"
        else:
            self.probes += 1
            status, headers, body = self.send_probe(ws_id, principal, client_headers)
            answer = "allowed" if is_allowed(status, body) else "refused" if status in (401, 403) else "other"
            if self.metrics is not None:
                self.metrics.auth_probes.labels(answer=answer).inc()
            if answer == "refused":
                decision, ttl, expiry = Decision(False, response=(status, headers, body)), self.deny_ttl, "refusal"
            elif answer == "allowed" and facts.login is not None:
                decision = Decision(
                    True, login=facts.login, group_path=facts.group_path, observe_every=facts.observe_every
                )
                ttl, expiry = self.max_age, "max_age"
            elif status == 200:
                reason = "no user is stored under that id" if answer == "allowed" else "the probe was not answered yes"
                log.info("auth: probe for workspace %r answered 200 but not yes; forwarding", ws_id)
                decision, ttl, expiry = Decision(False, reason=reason), min(self.max_age, OTHER_ANSWER_TTL), "other"
            else:
                log.info("auth: probe for workspace %r answered %s; forwarding", ws_id, status)
                return FORWARD  # an error of the moment: asked again next time
        self._put(key, _Entry(decision, fingerprint, generation, now + ttl, expiry, principal))
        return decision

    def _put(self, key: tuple, entry: _Entry) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> list[tuple]:
        """The keys of the decisions kept: ``(keyed hash of the credentials, workspace id)``."""
        with self._lock:
            return list(self._entries)
