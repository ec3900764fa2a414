"""The request object, built once per request and handed to the handlers.

A Werkzeug :class:`~werkzeug.wrappers.Request` plus what the shim needs and
Werkzeug decodes differently from the legacy server: the request target
exactly as the client sent it, where it sits in the public URL space, whether
its peer is a trusted proxy, and the query decoded the PHP way.
"""

from __future__ import annotations

import ipaddress
from functools import cached_property

from werkzeug.wrappers import Request

from . import translate
from .accesslog import LogFields, loggable_method, mask_target
from .phpcompat import parse_query


class Trust:
    """Which peers are proxies whose forwarding headers the shim believes."""

    #: Peers remembered (a few proxies and clients); beyond, the memory starts again.
    MAX_REMEMBERED = 4096

    def __init__(self, networks):
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        # Parsing an address costs microseconds on every request; the answer never changes.
        self._known: dict[str, bool] = {}

    def __contains__(self, address: str) -> bool:
        known = self._known.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                known = False
            else:
                known = any(ip in network for network in self.networks)
            if len(self._known) >= self.MAX_REMEMBERED:
                self._known = {}
            self._known[address] = known
        return known

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address as nginx's ``real_ip_recursive`` finds it.

        Walking ``X-Forwarded-For`` from the right, trusted proxies are
        skipped; the first address that is not one is the client.  From a peer
        that is not trusted, forwarding claims are ignored: the peer is the client.
        """
        if peer not in self or not forwarded_for:
            return peer
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if hop not in self:
                return hop
        return hops[0] if hops else peer


class ShimRequest(Request):
    """One request to the shim.

    ``raw_uri``, ``raw_path`` and ``raw_query`` are the request target as sent
    (undecoded; ``raw_query`` is None when there is no ``?``).  ``prefix`` is
    the public prefix in its canonical form, ``app_path`` the raw path below it
    (None when the request is outside it).  ``trusted`` says whether the peer
    is a trusted proxy.  ``log`` collects what the access line will say.
    """

    def __init__(self, environ, trust: Trust, configured_prefix: str | None):
        super().__init__(environ, populate_request=False, shallow=True)
        self.raw_uri = translate.raw_request_uri(environ)
        self.raw_path, self.raw_query = translate.split_uri(self.raw_uri)
        self.peer = environ.get("REMOTE_ADDR", "")
        self.trusted = self.peer in trust
        self._trust = trust
        self.prefix = translate.public_prefix(environ, configured_prefix, self.trusted)
        self.app_path = translate.strip_prefix(self.raw_path, self.prefix)
        self.log = LogFields()
        #: Set when the answer went out before the request's body was read: the connection then ends.
        self.unread_body = False

    @cached_property
    def query_params(self) -> list[tuple[str, str]]:
        """The query string's pairs as PHP decodes them into ``$_GET``."""
        return parse_query(self.raw_query or "")

    @cached_property
    def client_address(self) -> str:
        """The client's own address: the peer, or what trusted proxies say it is."""
        return self._trust.client_address(self.peer, self.environ.get("HTTP_X_FORWARDED_FOR"))

    @property
    def trusted_client(self) -> bool:
        """Whether the *client* is trusted, not only the peer: a trusted proxy says it is itself trusted.

        Behind a local nginx every request comes from a trusted peer; only an
        ``X-Forwarded-For`` naming a trusted address (an operator on the proxy's
        own machine, say) makes the client one.
        """
        forwarded = self.environ.get("HTTP_X_FORWARDED_FOR")
        return self.trusted and bool(forwarded) and self.client_address in self._trust

    @property
    def loggable_method(self) -> str:
        """The method if it is a known one, else ``***`` (it may hold the tail of an unread body)."""
        return loggable_method(self.method)

    @cached_property
    def loggable_target(self) -> str:
        """The request target with secret parameter values masked."""
        return mask_target(self.raw_path, self.raw_query)

    @property
    def public_path(self) -> str:
        """The path the client sent, prefix included (what a key-store signature covers)."""
        return translate.join_prefix(self.prefix, self.app_path or "/")
