"""Public <-> upstream: paths, URLs, headers and signed tokens.

The shim is mounted at a *public prefix* (from configuration, a trusted
``X-Forwarded-Prefix``, or gunicorn's ``SCRIPT_NAME``) and the legacy server
lives at an *upstream prefix*; either may be ``/``.  Everything that crosses
between the two spaces goes through this module, so that a broken subpath
install becomes usable without touching PHP.

Paths are handled as the raw strings the client sent (``RAW_URI``), never
decoded and re-encoded, so ``%2F``, ``+`` and non-ASCII bytes reach the legacy
server exactly as sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from . import auth

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
    "proxy-authenticate", "proxy-authorization", "proxy-connection",
})

_SLASHES = re.compile(r"/{2,}")


def raw_request_uri(environ) -> str:
    """The request target as the client sent it: path and query, undecoded.

    gunicorn gives it as ``RAW_URI``, Werkzeug's server as ``REQUEST_URI``.
    Elsewhere it is rebuilt from the decoded WSGI fields (lossy for ``%2F``).
    The string holds the raw bytes as latin-1 characters, like all WSGI strings.
    """
    uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if uri:
        if not uri.startswith("/"):  # absolute-form request target
            parts = urlsplit(uri)
            uri = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        return uri
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    path = quote(path.encode("latin-1").decode("latin-1"), safe="/;:@&=+$,!~*'()%", encoding="latin-1")
    query = environ.get("QUERY_STRING", "")
    return path + ("?" + query if query else "")


def split_uri(uri: str) -> tuple[str, str]:
    """``(path, query)``, the query without its ``?`` (empty when absent)."""
    path, _, query = uri.partition("?")
    return path, query


def normalise_prefix(prefix: str | None) -> str:
    """``""`` for the root, else ``/a/b`` (one leading slash, none trailing)."""
    if not prefix:
        return ""
    stripped = _SLASHES.sub("/", prefix).strip("/")
    return "/" + stripped if stripped else ""


def public_prefix(environ, configured: str, trusted: bool) -> str:
    """Where the shim is mounted, as clients see it.

    Configuration wins; then ``X-Forwarded-Prefix`` from a trusted proxy; then
    ``SCRIPT_NAME`` (gunicorn sets it from its own ``SCRIPT_NAME`` setting).
    """
    if configured:
        return normalise_prefix(configured)
    forwarded = environ.get("HTTP_X_FORWARDED_PREFIX")
    if forwarded and trusted:
        return normalise_prefix(forwarded.split(",")[0].strip())
    return normalise_prefix(environ.get("SCRIPT_NAME", ""))


def strip_prefix(path: str, prefix: str) -> str | None:
    """*path* relative to *prefix* (always starting with ``/``), or None when outside it.

    Duplicate slashes are tolerated, and collapsed, only inside the prefix part:
    ``//pydio//api/x`` under ``/pydio`` is ``/api/x``; the rest is kept as sent.
    """
    if not prefix:
        return path if path.startswith("/") else "/" + path
    position = 0
    for segment in prefix.strip("/").split("/"):
        while path.startswith("/", position):
            position += 1
        if position == 0 or not path.startswith(segment, position):
            return None
        position += len(segment)
        if position < len(path) and path[position] != "/":
            return None
    rest = path[position:]
    if rest.startswith("//"):
        rest = "/" + rest.lstrip("/")
    return rest or "/"


def join_prefix(prefix: str, app_path: str) -> str:
    """*app_path* (starting with ``/``) placed under *prefix*."""
    return (prefix + app_path) if prefix else app_path


def upstream_uri(app_path: str, query: str, upstream_prefix: str) -> str:
    """The request target to send upstream for a request to *app_path*."""
    path = join_prefix(normalise_prefix(upstream_prefix), app_path)
    return path + ("?" + query if query else "")


@dataclass(frozen=True)
class Mapping:
    """The two URL spaces of one request: public (client side) and upstream."""

    public_origin: str  # scheme://host[:port] as the client reached us
    public_prefix: str
    upstream_origin: str  # scheme://host[:port] of the legacy server
    upstream_prefix: str

    @property
    def public_base(self) -> str:
        return self.public_origin + self.public_prefix

    @property
    def upstream_base(self) -> str:
        return self.upstream_origin + self.upstream_prefix

    def to_public_url(self, value: str) -> str:
        """Rewrite an absolute or absolute-path URL naming the upstream into the public space."""
        if value.startswith(self.upstream_base) and _boundary(value, len(self.upstream_base)):
            return self.public_base + value[len(self.upstream_base):]
        if value.startswith("/") and not value.startswith("//"):
            rel = strip_prefix(value, self.upstream_prefix)
            if rel is not None:
                return join_prefix(self.public_prefix, rel)
        return value

    def rewrite_set_cookie(self, value: str) -> str:
        """``Path`` moved from the upstream prefix to the public one; an upstream ``Domain`` dropped."""
        parts = value.split(";")
        out = [parts[0]]
        upstream_host = urlsplit(self.upstream_origin).hostname or ""
        for attribute in parts[1:]:
            name, eq, val = attribute.strip().partition("=")
            lname = name.lower()
            if lname == "path" and eq:
                rel = strip_prefix(val.strip() or "/", self.upstream_prefix)
                if rel is not None:
                    new_path = join_prefix(self.public_prefix, rel)
                    if val.strip().endswith("/") and not new_path.endswith("/"):
                        new_path += "/"
                    attribute = f" {name}={new_path}"
                else:
                    attribute = " " + attribute.strip()
            elif lname == "domain" and eq and val.strip().lstrip(".").lower() == upstream_host.lower():
                continue  # host-only cookie for the public host
            else:
                attribute = " " + attribute.strip()
            out.append(attribute)
        return ";".join(out)


def _boundary(value: str, index: int) -> bool:
    return index == len(value) or value[index] in "/?#"


LOCATION_HEADERS = ("location", "content-location")


def rewrite_response_headers(headers: list[tuple[str, str]], mapping: Mapping) -> list[tuple[str, str]]:
    """Response headers with upstream URLs, cookie paths and domains made public."""
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname in LOCATION_HEADERS:
            value = mapping.to_public_url(value)
        elif lname == "refresh":
            head, sep, url = value.partition("url=")
            if not sep:
                head, sep, url = value.partition("URL=")
            if sep:
                value = head + sep + mapping.to_public_url(url.strip())
        elif lname == "link":
            value = re.sub(r"<([^>]*)>", lambda m: "<" + mapping.to_public_url(m.group(1)) + ">", value)
        elif lname == "set-cookie":
            value = mapping.rewrite_set_cookie(value)
        out.append((name, value))
    return out


def replace_query_param(query: str, name: str, value: str) -> str:
    """*query* with parameter *name* set to *value* (URL-encoded); other bytes untouched."""
    encoded = quote(value, safe="")
    parts = query.split("&") if query else []
    for i, part in enumerate(parts):
        if part.split("=", 1)[0] == name:
            parts[i] = f"{name}={encoded}"
            return "&".join(parts)
    parts.append(f"{name}={encoded}")
    return "&".join(parts)


def resign_query(query: str, token: str, private: str, upstream_path: str) -> str:
    """The query with ``auth_hash`` re-signed (fresh nonce) for *upstream_path*."""
    return replace_query_param(query, "auth_hash", auth.sign(token, private, upstream_path))
