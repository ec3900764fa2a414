"""The legacy server reached through php-fpm directly (``upstream.url = fcgi://...``).

The shim then plays the web server's part exactly as a correctly configured
Pydio install would: every request goes to ``index.php`` with ``REQUEST_URI``
kept as sent, ``SCRIPT_NAME`` = upstream prefix + ``/index.php``, the
``Authorization`` header always passed on and ``CONTENT_LENGTH`` always set.
No rewrite rule and no ``SetEnvIf Authorization`` is needed any more.

Static files of the install (scripts, styles, images) are best served by nginx
(see ``conf/nginx.example.conf``); when a request reaches the shim anyway, an
existing non-PHP file under the document root is served read-only here (the
deny list has already refused protected paths).
"""

from __future__ import annotations

import mimetypes
import os
import posixpath
import re
from email.utils import formatdate
from urllib.parse import unquote

from . import fastcgi
from .request import Trust
from .translate import join_prefix, strip_prefix, valid_host
from .upstream import CHUNK, UpstreamError, UpstreamResponse, UpstreamTimeout, check_framing, check_status

#: What may be served from the document root without PHP: the web UI's assets.
STATIC_EXTENSIONS = frozenset(
    {
        ".js",
        ".css",
        ".map",
        ".png",
        ".jpg",
        ".jpeg",
        ".gif",
        ".svg",
        ".ico",
        ".webp",
        ".woff",
        ".woff2",
        ".ttf",
        ".eot",
        ".otf",
    }
)
_HOST_PORT = re.compile(r"^[^:]*:[0-9]{1,5}$|^\[[^\]]*\]:[0-9]{1,5}$")
_NOT_PASSED = frozenset({"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-prefix"})


class FastCGIUpstream:
    """An upstream transport talking FastCGI to php-fpm."""

    #: PHP builds its URLs from the client's Host header: they already name the
    #: public host, so the URL mapping uses the public origin for both sides.
    origin = None

    def __init__(self, config):
        self.client = fastcgi.FastCGIClient(
            config.upstream_url, config.upstream_connect_timeout, config.upstream_read_timeout
        )
        self.document_root = os.path.realpath(config.upstream_document_root)
        self.prefix = config.upstream_prefix
        self.trust = Trust(config.proxy_trusted_proxies)
        self.script_name = join_prefix(self.prefix, "/index.php")

    def send(self, method: str, uri: str, headers: list[tuple[str, str]], body=None) -> UpstreamResponse:
        """Run one request through ``index.php`` (or serve a static file)."""
        values = {n.lower(): v for n, v in headers}
        static = self._static_file(method, uri)
        if static is not None:
            return static
        # PHP writes this host into the URLs of its pages: a value that is not a host name never reaches it.
        host = values.get("x-forwarded-host", "").split(",")[0].strip()
        if not valid_host(host):
            host = "localhost"
        https = values.get("x-forwarded-proto", "").lower() == "https"
        server_name, port = host, ""
        if _HOST_PORT.match(host):
            server_name, _, port = host.rpartition(":")
        remote = self._client_address(values.get("x-forwarded-for", ""))
        length = 0 if body is None else len(body)
        passed = [(n, v) for n, v in headers if n.lower() not in _NOT_PASSED] + [("Host", host)]
        params = fastcgi.build_params(
            document_root=self.document_root,
            script_name=self.script_name,
            request_uri=uri.encode("latin-1", "replace"),
            method=method,
            content_type=values.get("content-type"),
            content_length=length,
            remote_addr=remote,
            server_name=server_name or host,
            server_port=int(port) if port else None,
            https=https,
            headers=passed,
        )
        try:
            response = self.client.request(params, body if body is not None else b"", length)
        except fastcgi.FastCGITimeout as exc:
            raise UpstreamTimeout(f"php-fpm did not answer in time ({exc})") from exc
        except fastcgi.FastCGIError as exc:
            raise UpstreamError(f"cannot reach php-fpm: {exc}") from exc
        try:
            check_status(response.status, response.reason)
            check_framing(list(response.headers))
        except UpstreamError:
            response.close()
            raise

        def body_iter():
            try:
                yield from response.iter_content(CHUNK)
            except fastcgi.FastCGITimeout as exc:
                raise UpstreamTimeout("php-fpm stopped sending") from exc
            except fastcgi.FastCGIError as exc:
                raise UpstreamError(f"php-fpm broke the exchange: {exc}") from exc

        return UpstreamResponse(response.status, response.reason, list(response.headers), body_iter(), response.close)

    def _client_address(self, forwarded_for: str) -> str:
        """``REMOTE_ADDR`` for PHP: the client, as nginx's real_ip finds it behind the trusted proxies.

        *forwarded_for* is the ``X-Forwarded-For`` the shim built, its peer last.
        PHP counts failed logins per ``REMOTE_ADDR`` and records it with each
        device's token: the address of a proxy there would be one address for all.
        """
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        if not hops:
            return "127.0.0.1"
        return self.trust.client_address(hops[-1], ", ".join(hops[:-1]))

    def _static_file(self, method: str, uri: str) -> UpstreamResponse | None:
        if method not in ("GET", "HEAD"):
            return None
        path = uri.split("?", 1)[0]
        rel = strip_prefix(path, self.prefix)
        if rel is None or rel == "/":
            return None
        try:
            decoded = unquote(rel, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            return None
        candidate = os.path.realpath(os.path.join(self.document_root, posixpath.normpath(decoded).lstrip("/")))
        # Decide on the final file name: an allowlist of asset types, never PHP
        # sources or anything else that merely exists there.
        if os.path.splitext(candidate)[1].lower() not in STATIC_EXTENSIONS:
            return None
        if not candidate.startswith(self.document_root + os.sep) or not os.path.isfile(candidate):
            return None
        try:
            handle = open(candidate, "rb")
            stat = os.fstat(handle.fileno())
        except OSError:
            return None  # unreadable: PHP's front controller answers instead
        ctype = mimetypes.guess_type(candidate)[0] or "application/octet-stream"
        headers = [
            ("Content-Type", ctype),
            ("Content-Length", str(stat.st_size)),
            ("Last-Modified", formatdate(stat.st_mtime, usegmt=True)),
        ]

        def chunks():
            with handle:
                while data := handle.read(CHUNK):
                    yield data

        return UpstreamResponse(200, "OK", headers, chunks(), handle.close)

    def close(self) -> None:
        """Nothing to release: each request has a connection of its own."""
