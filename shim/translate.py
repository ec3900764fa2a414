"""Public <-> upstream: paths, URLs, redirects, cookies and web UI bodies.

The shim is mounted at a *public prefix* (from configuration, a trusted
``X-Forwarded-Prefix``, or gunicorn's ``SCRIPT_NAME``) and the legacy server
lives at an *upstream prefix*; either may be ``/``.  Everything that crosses
between the two spaces goes through this module (and :mod:`shim.resign` for
signed key-store tokens), so that a broken subpath install becomes usable
without touching PHP.

Paths are handled as the raw strings the client sent (``RAW_URI``), never
decoded and re-encoded, so ``%2F``, ``+`` and non-ASCII bytes reach the legacy
server exactly as sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

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


def split_uri(uri: str) -> tuple[str, str | None]:
    """``(path, query)``, the query without its ``?``; ``None`` when there is no ``?``.

    ``/x?`` and ``/x`` are different request targets and stay so upstream.
    """
    path, sep, query = uri.partition("?")
    return path, (query if sep else None)


def normalise_prefix(prefix: str | None) -> str:
    """The canonical prefix form: ``""`` for the root, else ``/a/b`` (one leading slash, none trailing).

    The configuration is put in this form once, by :func:`shim.config.load`;
    prefixes learnt from a request (``X-Forwarded-Prefix``, ``SCRIPT_NAME``)
    are put in it here.
    """
    if not prefix:
        return ""
    stripped = _SLASHES.sub("/", prefix).strip("/")
    return "/" + stripped if stripped else ""


def public_prefix(environ, configured: str | None, trusted: bool) -> str:
    """Where the shim is mounted, as clients see it.

    Configuration wins (``None``: not configured); then ``X-Forwarded-Prefix``
    from a trusted proxy; then ``SCRIPT_NAME`` (gunicorn sets it from its own
    ``SCRIPT_NAME`` setting).
    """
    if configured is not None:
        return configured
    forwarded = environ.get("HTTP_X_FORWARDED_PREFIX")
    if forwarded and trusted:
        return normalise_prefix(forwarded.split(",")[0].strip())
    return normalise_prefix(environ.get("SCRIPT_NAME", ""))


def strip_prefix(path: str, prefix: str) -> str | None:
    """*path* relative to *prefix* (always starting with ``/``), or None when outside it.

    Duplicate slashes are tolerated inside the prefix part only; the rest is
    kept exactly as sent: ``/pydio//api/x`` under ``/pydio`` is ``//api/x``,
    a path PHP does not route, so the shim must not read it as ``/api/x``.
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
    return path[position:] or "/"


# A host as a URL may name it (RFC 9110 uri-host [":" port]), kept to what cannot
# break out of an HTML attribute, a JSON string or a header: a DNS name or IPv4
# address, or an IPv6 literal in brackets.
_VALID_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*\.?"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)


def valid_host(value: str | None) -> bool:
    """Whether a ``Host`` (or ``X-Forwarded-Host``) value is a host name fit to be written into URLs."""
    return value is not None and 0 < len(value) <= 255 and _VALID_HOST.fullmatch(value) is not None


def join_prefix(prefix: str, app_path: str) -> str:
    """*app_path* (starting with ``/``) placed under *prefix*."""
    return (prefix + app_path) if prefix else app_path


def upstream_uri(app_path: str, query: str | None, upstream_prefix: str) -> str:
    """The request target to send upstream for a request to *app_path* (``query`` None: no ``?``)."""
    path = join_prefix(upstream_prefix, app_path)
    return path if query is None else path + "?" + query


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
            return self.public_base + value[len(self.upstream_base) :]
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
                    if rel == "/":  # the prefix itself: keep the client's trailing-slash choice
                        new_path = (
                            (self.public_prefix + "/") if val.strip().endswith("/") else (self.public_prefix or "/")
                        )
                    else:
                        new_path = join_prefix(self.public_prefix, rel)
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


# --- absolute URLs inside web UI bodies ---------------------------------------------

REWRITABLE_TYPES = (
    "text/html",
    "text/xml",
    "application/xml",
    "application/json",
    "application/javascript",
    "text/javascript",
)


def should_rewrite_body(app_path: str, headers: list[tuple[str, str]], mapping: Mapping) -> bool:
    """Whether a response body may carry upstream URLs that must become public ones.

    Only web UI answers (boot page, registry, state): never the REST API under
    ``/api/`` (byte-exact by principle), never downloads, never compressed bodies.
    """
    if mapping.upstream_base == mapping.public_base or app_path.startswith(("/api/", "/shares/", "/public/")):
        return False
    values = {n.lower(): v for n, v in headers}
    if "content-encoding" in values or "attachment" in values.get("content-disposition", "").lower():
        return False
    ctype = values.get("content-type", "").split(";")[0].strip().lower()
    return ctype in REWRITABLE_TYPES


def rewrite_body_urls(chunks, mapping: Mapping):
    """Stream *chunks* replacing the upstream origin+prefix by the public one.

    Both the plain form and the JSON form with escaped slashes are replaced, and
    the boot page's ``<base href="/prefix/"/>`` (Pydio writes it as a path, not
    a URL).  A tail as long as the longest pattern is held back between chunks
    so a URL split across chunks is still found; memory stays constant.
    """
    plain_old, plain_new = mapping.upstream_base.encode(), mapping.public_base.encode()
    replacements = {
        plain_old: plain_new,
        plain_old.replace(b"/", b"\\/"): plain_new.replace(b"/", b"\\/"),
        b'<base href="%s/' % mapping.upstream_prefix.encode(): b'<base href="%s/' % mapping.public_prefix.encode(),
    }
    # Without an origin on either side a URL has no fixed start to look for: paths only then.
    replacements = {old: new for old, new in replacements.items() if old not in (b"", b"\\/") and old != new}
    if not replacements:
        yield from chunks
        return
    # Not followed by a host or port character: http://h:80 must not match http://h:8080.
    pattern = re.compile(b"(?:" + b"|".join(re.escape(old) for old in replacements) + b")(?![A-Za-z0-9.:-])")
    keep = max(len(old) for old in replacements)  # one more byte for the look-ahead
    pending = b""
    for chunk in chunks:
        buffer = pending + chunk
        # A match starting before `limit` is complete in the buffer; later ones
        # may continue in the next chunk.  Replaced text is never scanned again.
        limit = len(buffer) - keep
        out, position = [], 0
        for match in pattern.finditer(buffer):
            if match.start() >= limit:
                break
            out.append(buffer[position : match.start()])
            out.append(replacements[match.group()])
            position = match.end()
        safe = max(position, limit)
        out.append(buffer[position:safe])
        pending = buffer[safe:]
        if any(out):
            yield b"".join(out)
    if pending:
        yield pattern.sub(lambda m: replacements[m.group()], pending)
