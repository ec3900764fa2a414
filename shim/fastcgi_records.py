"""The FastCGI 1.0 records and the CGI environment of a request (the wire format, no I/O).

See :mod:`shim.fastcgi` for the client that sends them.

The params (:func:`build_params`) are those of a correctly configured nginx +
php-fpm Pydio:

- ``SCRIPT_FILENAME``: the file php-fpm runs, the script's file name in
  *document_root* (``<document_root>/index.php``).
- ``SCRIPT_NAME``: the script's URL path (``/pydio/index.php``); Pydio
  derives its base URL from it. ``DOCUMENT_URI`` and ``PHP_SELF`` match it.
- ``DOCUMENT_ROOT``: *document_root*, slashes normalised.
- ``REQUEST_URI``: the raw path and query as the client sent them, passed
  byte-exact (give ``bytes`` to keep a non-ASCII or %-encoded path intact).
- ``QUERY_STRING``: the part of *request_uri* after ``?`` unless given.
- ``REQUEST_METHOD``, ``CONTENT_TYPE``, ``CONTENT_LENGTH`` (always set,
  ``"0"`` without a body): what PHP needs to read the body.
- ``REMOTE_ADDR``/``REMOTE_PORT``, ``SERVER_NAME``/``SERVER_PORT``,
  ``SERVER_PROTOCOL``, ``REQUEST_SCHEME``: the two ends of the connection.
- ``HTTPS=on``: only for TLS requests; PHP apps test ``!empty($_SERVER['HTTPS'])``.
- ``GATEWAY_INTERFACE=CGI/1.1``, ``SERVER_SOFTWARE=pydio-shim``: CGI identity.
- ``REDIRECT_STATUS=200``: php-cgi's ``cgi.force_redirect`` check wants it.
- ``HTTP_*``: one per request header, named upper-case with ``-`` as
  ``_`` (``Authorization`` becomes ``HTTP_AUTHORIZATION``, from which PHP
  sets ``PHP_AUTH_USER``/``PHP_AUTH_PW``); repeated headers are joined with
  ``", "`` (``"; "`` for Cookie). Content-Type/Content-Length are skipped
  (see above), as is Proxy (httpoxy), and, as nginx does, names with
  characters other than letters, digits and ``-``, so that ``X_Foo`` cannot
  pose as ``X-Foo``.
"""

from __future__ import annotations

import posixpath
import re
import socket
import struct
from collections.abc import Iterable, Mapping
from typing import IO

# Record types and constants from the FastCGI 1.0 specification.
FCGI_VERSION_1 = 1
FCGI_BEGIN_REQUEST = 1
FCGI_ABORT_REQUEST = 2
FCGI_END_REQUEST = 3
FCGI_PARAMS = 4
FCGI_STDIN = 5
FCGI_STDOUT = 6
FCGI_STDERR = 7
FCGI_RESPONDER = 1
FCGI_REQUEST_COMPLETE = 0
PROTOCOL_STATUS = {1: "CANT_MPX_CONN", 2: "OVERLOADED", 3: "UNKNOWN_ROLE"}

#: version, type, request id, content length, padding length, reserved.
RECORD_HEADER = struct.Struct("!BBHHBx")
MAX_RECORD_CONTENT = 0xFFFF
#: Request body bytes per FCGI_STDIN record (a multiple of 8: no padding needed).
STDIN_CHUNK = 32 * 1024
#: Response header blocks larger than this are refused (nginx stops at 4-8 KiB).
MAX_HEADER_BYTES = 1024 * 1024
#: How much of FCGI_STDERR is kept; the rest is dropped.
MAX_STDERR_BYTES = 64 * 1024
#: Response bytes that arrive while the body is still being sent are spooled;
#: past this size the spool moves from memory to a temporary file.
SPOOL_MEMORY_BYTES = 1024 * 1024

REQUEST_ID = 1  # one request per connection, so the id never matters

ParamValue = str | bytes


Body = bytes | IO[bytes] | Iterable[bytes] | None


class FastCGIError(Exception):
    """The FastCGI peer broke the protocol, refused the request or went away."""


class FastCGIConnectionError(FastCGIError):
    """The connection could not be made (refused, missing socket, DNS failure).

    The request never reached the application, so it is safe to retry.
    """


class FastCGITimeout(FastCGIError):
    """Connecting or waiting for the peer took longer than the timeout."""


# -- addresses -------------------------------------------------------------


def parse_address(url: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    """Turn a FastCGI address URL into ``(family, address)`` for :mod:`socket`.

    Accepted forms::

        fcgi://127.0.0.1:9000     -> (AF_INET, ("127.0.0.1", 9000))
        fcgi://[::1]:9000         -> (AF_INET6, ("::1", 9000))
        fcgi:///run/php/fpm.sock  -> (AF_UNIX, "/run/php/fpm.sock")
        unix:/run/php/fpm.sock    -> (AF_UNIX, "/run/php/fpm.sock")

    :raises ValueError: for anything else, naming the accepted forms.
    """
    hint = "expected fcgi://HOST:PORT, fcgi:///path/to/socket or unix:/path/to/socket"
    if not isinstance(url, str):
        raise ValueError(f"FastCGI address must be a string, not {type(url).__name__}")
    if url.startswith("unix:") or url.startswith("fcgi:///"):
        path = url[len("unix:") :] if url.startswith("unix:") else url[len("fcgi://") :]
        if path.startswith("//"):  # unix:///path
            path = path[2:]
        if not path.startswith("/") or path.rstrip("/") == "":
            raise ValueError(f"invalid FastCGI socket path in {url!r}: {hint}")
        return socket.AF_UNIX, path
    if url.startswith("fcgi://"):
        netloc = url[len("fcgi://") :].rstrip("/")
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:/\[\]]+):(\d+)", netloc)
        if match is None:
            raise ValueError(f"invalid FastCGI address {url!r}: {hint}")
        host = match.group(1) or match.group(3)
        port = int(match.group(2) or match.group(4))
        if not 0 < port < 65536:
            raise ValueError(f"invalid port {port} in FastCGI address {url!r}")
        family = socket.AF_INET6 if match.group(1) else socket.AF_INET
        return family, (host, port)
    raise ValueError(f"unsupported FastCGI address {url!r}: {hint}")


# -- encoding --------------------------------------------------------------


Content = bytes | bytearray | memoryview


def encode_record(record_type: int, content: Content = b"", *, request_id: int = REQUEST_ID, padding: int = 0) -> bytes:
    """Encode one record: the 8-byte header, *content* and *padding* zero bytes.

    Padding is optional in the protocol and the client sends none: php-fpm
    rejects a PARAMS record whose content plus padding exceeds 65535 bytes.
    """
    if len(content) > MAX_RECORD_CONTENT:
        raise ValueError(f"record content is {len(content)} bytes, at most 65535 fit")
    header = RECORD_HEADER.pack(FCGI_VERSION_1, record_type, request_id, len(content), padding)
    return header + bytes(content) + b"\0" * padding


def _to_bytes(value: ParamValue) -> bytes:
    # Latin-1 first: WSGI (PEP 3333) hands out raw header/URI bytes decoded as
    # latin-1, so encoding back with it restores them exactly.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, str):
        raise TypeError(f"FastCGI names and values must be str or bytes, not {type(value).__name__}")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _encode_length(n: int) -> bytes:
    # Lengths up to 127 take one byte; longer ones four, with the high bit set.
    if n < 0x80:
        return bytes((n,))
    if n > 0x7FFFFFFF:
        raise ValueError(f"name or value of {n} bytes is too long for FastCGI")
    return struct.pack("!I", n | 0x80000000)


def encode_name_value(name: ParamValue, value: ParamValue) -> bytes:
    """Encode one FCGI_PARAMS name-value pair (str as latin-1, else utf-8; bytes as is)."""
    name_b, value_b = _to_bytes(name), _to_bytes(value)
    return _encode_length(len(name_b)) + _encode_length(len(value_b)) + name_b + value_b


def encode_params(params: Mapping[str, ParamValue]) -> list[bytes]:
    """Encode *params* as FCGI_PARAMS records, ending with the empty record.

    Params whose value is ``None`` are left out.

    Pairs are packed whole into records of at most 65535 bytes: the protocol
    would allow a pair to straddle two records, but php-fpm parses every record
    on its own and drops the request if one does.

    :raises ValueError: if a single pair is larger than one record.
    """
    records: list[bytes] = []
    pending = bytearray()
    for name, value in params.items():
        if value is None:
            continue
        pair = encode_name_value(name, value)
        if len(pair) > MAX_RECORD_CONTENT:
            raise ValueError(
                f"FastCGI parameter {name!r} is {len(pair)} bytes encoded; "
                "php-fpm accepts at most 65535 per name-value pair"
            )
        if len(pending) + len(pair) > MAX_RECORD_CONTENT:
            records.append(encode_record(FCGI_PARAMS, pending))
            pending = bytearray()
        pending += pair
    if pending:
        records.append(encode_record(FCGI_PARAMS, pending))
    records.append(encode_record(FCGI_PARAMS))
    return records


# -- the CGI environment ---------------------------------------------------

#: Request headers that must not become HTTP_* params. Content-Type and
#: Content-Length have their own CGI variables; Proxy would become HTTP_PROXY,
#: which many HTTP libraries take as their proxy setting ("httpoxy").
_SKIPPED_HEADERS = frozenset({"content-type", "content-length", "proxy"})
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")


def build_params(
    *,
    document_root: str,
    script_name: str,
    request_uri: ParamValue,
    query_string: ParamValue | None = None,
    method: str = "GET",
    content_type: str | None = None,
    content_length: int = 0,
    remote_addr: str = "127.0.0.1",
    remote_port: int = 0,
    server_name: str = "localhost",
    server_port: int | None = None,
    https: bool = False,
    server_protocol: str = "HTTP/1.1",
    headers: Iterable[tuple[str, ParamValue]] = (),
) -> dict[str, ParamValue]:
    """Build the FastCGI params of a correctly configured nginx + php-fpm Pydio (listed in the module's docstring).

    Every request is handed to the front controller, as nginx's
    ``try_files ... /pydio/index.php`` does, and Pydio routes on REQUEST_URI.
    """
    root = posixpath.normpath(document_root)
    if root.startswith("//"):  # normpath keeps a leading double slash (POSIX)
        root = "/" + root.lstrip("/")
    if query_string is None:
        raw = _to_bytes(request_uri)
        query_string = raw.partition(b"?")[2] if b"?" in raw else b""
    if server_port is None:
        server_port = 443 if https else 80
    params: dict[str, ParamValue] = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "pydio-shim",
        "SERVER_PROTOCOL": server_protocol,
        "REQUEST_SCHEME": "https" if https else "http",
        "SERVER_NAME": server_name,
        "SERVER_PORT": str(server_port),
        "REMOTE_ADDR": remote_addr,
        "REMOTE_PORT": str(remote_port),
        "REQUEST_METHOD": method,
        "REQUEST_URI": request_uri,
        "QUERY_STRING": query_string,
        "DOCUMENT_ROOT": root,
        "SCRIPT_FILENAME": posixpath.join(root, posixpath.basename(script_name) or "index.php"),
        "SCRIPT_NAME": script_name,
        "DOCUMENT_URI": script_name,
        "PHP_SELF": script_name,
        "CONTENT_TYPE": content_type or "",
        "CONTENT_LENGTH": str(int(content_length)),
        "REDIRECT_STATUS": "200",
    }
    if https:
        params["HTTPS"] = "on"
    _add_header_params(params, headers)
    return params


def _add_header_params(params: dict[str, ParamValue], headers: Iterable[tuple[str, ParamValue]]) -> None:
    """One ``HTTP_*`` param per request header, repeated ones joined (see :func:`build_params`)."""
    for name, value in headers:
        if name.lower() in _SKIPPED_HEADERS or not _HEADER_NAME.fullmatch(name):
            continue
        key = "HTTP_" + name.upper().replace("-", "_")
        if key in params:
            separator = b"; " if key == "HTTP_COOKIE" else b", "
            params[key] = _to_bytes(params[key]) + separator + _to_bytes(value)
        else:
            params[key] = value
