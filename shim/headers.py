"""Which headers cross the shim, in both directions.

Requests: the client's end-to-end headers go upstream, hop-by-hop ones do not,
and ``X-Forwarded-For/-Proto/-Host/-Prefix`` are rebuilt from what the shim
knows (kept and appended to only when they come from a trusted proxy).
Responses: the legacy server's end-to-end headers come back, except those the
serving web server owns and any a WSGI server would refuse.
"""

from __future__ import annotations

import logging

from werkzeug.http import is_hop_by_hop_header

from .cache import remembered_for_short_paths

log = logging.getLogger(__name__)

#: Beyond Werkzeug's RFC 9110 list: the obsolete spellings some servers still send.
EXTRA_HOP_BY_HOP = frozenset({"trailers", "proxy-connection"})
#: Request headers rebuilt by :func:`forwarded_headers` from what the shim knows.
REBUILT = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-prefix"})
#: Upstream headers the serving web server sets itself (nginx hides them likewise).
SERVER_OWNED = frozenset({"date", "server"})


def is_hop_by_hop(lname: str) -> bool:
    """Whether the (lower-case) header name is hop-by-hop: it never crosses a proxy."""
    return is_hop_by_hop_header(lname) or lname in EXTRA_HOP_BY_HOP


def connection_tokens(value: str) -> set[str]:
    """The header names a ``Connection`` header declares hop-by-hop."""
    return {t.strip().lower() for t in value.split(",") if t.strip()}


#: Header names whose spelling and verdict each worker remembers, of at most
#: LONGEST_REMEMBERED_NAME characters (a client sends the same few short ones on
#: every request; any other name is still answered, only not kept).
REMEMBERED_NAMES = 512
LONGEST_REMEMBERED_NAME = 64


@remembered_for_short_paths(REMEMBERED_NAMES, LONGEST_REMEMBERED_NAME)
def _request_header(key: str) -> tuple[str, str]:
    """``(Name, name)`` of a WSGI ``HTTP_*`` key: ``HTTP_USER_AGENT`` gives ``User-Agent``."""
    name = key[5:].replace("_", "-").title()
    return name, name.lower()


@remembered_for_short_paths(REMEMBERED_NAMES * 2, LONGEST_REMEMBERED_NAME)
def _dropped_request_header(lname: str, trusted: bool) -> bool:
    """Whether a request header never goes upstream (those its Connection names aside)."""
    if is_hop_by_hop(lname) or lname in REBUILT:
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
    named = connection_tokens(environ.get("HTTP_CONNECTION", ""))
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "HTTP_HOST"):
                continue  # the CGI variables are the authority
            name, lname = _request_header(key)
        elif key == "CONTENT_TYPE" and value:
            name, lname = "Content-Type", "content-type"
        else:
            continue
        if not _dropped_request_header(lname, trusted) and lname not in named:
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


def client_identity_headers(environ, public_prefix: str, trusted: bool) -> list[tuple[str, str]]:
    """The headers saying who really asks: ``X-Forwarded-*`` and ``User-Agent`` (for probes)."""
    return [
        (n, v)
        for n, v in forwarded_headers(environ, public_prefix, trusted)
        if n.lower().startswith("x-forwarded-") or n.lower() == "user-agent"
    ]


def response_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream response headers fit to pass on, in their order.

    Dropped: hop-by-hop ones and those ``Connection`` names, ``Proxy-*``, Date
    and Server.  (An answer with a header a WSGI server would refuse never gets
    here: the transports refuse it, see :func:`shim.upstream.check_framing`.)
    """
    named = {token for name, value in headers if name.lower() == "connection" for token in connection_tokens(value)}
    return [
        (name, value) for name, value in headers if not _dropped_response_header(name) and name.lower() not in named
    ]


@remembered_for_short_paths(REMEMBERED_NAMES, LONGEST_REMEMBERED_NAME)
def _dropped_response_header(name: str) -> bool:
    """Whether a response header never goes to the client (those its Connection names aside)."""
    lname = name.lower()
    return is_hop_by_hop(lname) or lname in SERVER_OWNED or lname.startswith("proxy-")


def without(headers: list[tuple[str, str]], *names: str) -> list[tuple[str, str]]:
    """*headers* without the given (lower-case) names."""
    return [(n, v) for n, v in headers if n.lower() not in names]
