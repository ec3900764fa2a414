"""A small FastCGI client, so the shim can talk to php-fpm directly.

No maintained FastCGI *client* library exists for Python: most FastCGI
packages on PyPI are servers, the clients are unmaintained (flup's
``fcgi_app``, last released 2018; gevent-fastcgi, 2019) or 0.0.x one-offs.
So this module implements the part of the protocol a web server needs
(https://fastcgi-archives.github.io/FastCGI_Specification.html):
one ``RESPONDER`` request per connection, request body streamed in, response
streamed out, constant memory in both directions.

Usage::

    client = FastCGIClient("fcgi:///run/php/php-fpm.sock")
    params = build_params(document_root="/var/www/pydio",
                          script_name="/pydio/index.php",
                          request_uri=b"/pydio/api/ws/ls/%C3%A9t%C3%A9",
                          method="GET", headers=[("Host", "example.org")])
    with client.request(params) as response:
        print(response.status, response.reason, response.headers)
        for chunk in response.iter_content():
            ...

Only the standard library is used (and the shim's reason phrases).
"""

from __future__ import annotations

import collections
import posixpath
import re
import selectors
import socket
import struct
import tempfile
from typing import IO, Iterable, Iterator, Mapping, Union

from .responses import reason_phrase

__all__ = [
    "FastCGIClient",
    "FastCGIConnectionError",
    "FastCGIError",
    "FastCGIResponse",
    "FastCGITimeout",
    "build_params",
    "encode_name_value",
    "encode_params",
    "encode_record",
    "parse_address",
]

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
_PROTOCOL_STATUS = {1: "CANT_MPX_CONN", 2: "OVERLOADED", 3: "UNKNOWN_ROLE"}

#: version, type, request id, content length, padding length, reserved.
_HEADER = struct.Struct("!BBHHBx")
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

_REQUEST_ID = 1  # one request per connection, so the id never matters

ParamValue = Union[str, bytes]
Body = Union[IO[bytes], Iterable[bytes], None]


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
        path = url[len("unix:"):] if url.startswith("unix:") else url[len("fcgi://"):]
        if path.startswith("//"):  # unix:///path
            path = path[2:]
        if not path.startswith("/") or path.rstrip("/") == "":
            raise ValueError(f"invalid FastCGI socket path in {url!r}: {hint}")
        return socket.AF_UNIX, path
    if url.startswith("fcgi://"):
        netloc = url[len("fcgi://"):].rstrip("/")
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


def encode_record(record_type: int, content: bytes = b"", *, request_id: int = _REQUEST_ID,
                  padding: int = 0) -> bytes:
    """Encode one record: the 8-byte header, *content* and *padding* zero bytes.

    Padding is optional in the protocol and the client sends none: php-fpm
    rejects a PARAMS record whose content plus padding exceeds 65535 bytes.
    """
    if len(content) > MAX_RECORD_CONTENT:
        raise ValueError(f"record content is {len(content)} bytes, at most 65535 fit")
    header = _HEADER.pack(FCGI_VERSION_1, record_type, request_id, len(content), padding)
    return header + bytes(content) + b"\0" * padding


def _to_bytes(value: ParamValue) -> bytes:
    # Latin-1 first: WSGI (PEP 3333) hands out raw header/URI bytes decoded as
    # latin-1, so encoding back with it restores them exactly.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, str):
        raise TypeError(f"FastCGI names and values must be str or bytes, "
                        f"not {type(value).__name__}")
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
            raise ValueError(f"FastCGI parameter {name!r} is {len(pair)} bytes encoded; "
                             "php-fpm accepts at most 65535 per name-value pair")
        if len(pending) + len(pair) > MAX_RECORD_CONTENT:
            records.append(encode_record(FCGI_PARAMS, pending))
            pending = bytearray()
        pending += pair
    if pending:
        records.append(encode_record(FCGI_PARAMS, pending))
    records.append(encode_record(FCGI_PARAMS))
    return records


def _iter_body(body: Body, content_length: int) -> Iterator[bytes]:
    """Yield the request body in pieces of at most :data:`STDIN_CHUNK` bytes."""
    if body is None:
        return
    if isinstance(body, (bytes, bytearray, memoryview)):
        body = [body]
    elif hasattr(body, "read"):
        # A WSGI input stream must not be read past CONTENT_LENGTH: it may
        # block waiting for bytes the client will never send.
        remaining = content_length
        while remaining > 0:
            data = body.read(min(STDIN_CHUNK, remaining))
            if not data:
                raise FastCGIError(f"request body ended {remaining} bytes short "
                                   f"of its length ({content_length})")
            remaining -= len(data)
            yield data
        return
    for chunk in body:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"request body chunks must be bytes, not {type(chunk).__name__}")
        view = memoryview(chunk).cast("B")
        for start in range(0, len(view), STDIN_CHUNK):
            yield view[start:start + STDIN_CHUNK]


# -- the connection --------------------------------------------------------


class _Connection:
    """One FastCGI connection: sends the request and decodes incoming records.

    STDOUT content is queued in :attr:`pending`; while the request body is
    still being sent it goes to a spool instead, so that a script which writes
    before it has read all of its input cannot deadlock both sides.
    """

    def __init__(self, sock: socket.socket, read_timeout: float | None) -> None:
        self.sock = sock
        self.read_timeout = read_timeout
        self.buffer = bytearray()
        self.pending: collections.deque[bytes] = collections.deque()
        self.spool: tempfile.SpooledTemporaryFile | None = None
        self.stderr = bytearray()
        self.ended = False
        self.app_status: int | None = None
        self.eof = False
        self.peer_stopped_reading = False
        self.selector = selectors.DefaultSelector()
        self.selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)

    @property
    def done_sending(self) -> bool:
        """True once the peer has answered in full, hung up or stopped reading."""
        return self.ended or self.eof or self.peer_stopped_reading

    def close(self) -> None:
        self.selector.close()
        self.sock.close()
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    # sending

    def send(self, data: bytes | memoryview) -> None:
        """Send *data*, reading whatever the peer answers meanwhile.

        Returns early, dropping the rest, once the peer has ended the request
        or stopped reading: its answer is what matters then.
        """
        view = memoryview(data).cast("B")
        while view and not self.done_sending:
            events = self.selector.select(self.read_timeout)
            if not events:
                raise FastCGITimeout(f"FastCGI peer neither read nor answered "
                                     f"for {self.read_timeout} s")
            mask = events[0][1]
            if mask & selectors.EVENT_READ:
                self.receive()
                self._spool_pending()
            elif mask & selectors.EVENT_WRITE:
                try:
                    sent = self.sock.send(view)
                except (BrokenPipeError, ConnectionResetError):
                    self.peer_stopped_reading = True
                else:
                    view = view[sent:]

    def _spool_pending(self) -> None:
        if not self.pending:
            return
        if self.spool is None:
            self.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
        while self.pending:
            self.spool.write(self.pending.popleft())

    # receiving

    def receive(self) -> None:
        """Read once from the socket and decode every complete record."""
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise FastCGITimeout(f"no answer from the FastCGI peer "
                                 f"for {self.read_timeout} s") from None
        except OSError as exc:
            raise FastCGIError(f"FastCGI connection failed: {exc}") from exc
        if not data:
            self.eof = True
            return
        self.buffer += data
        self._decode()

    def _decode(self) -> None:
        buffer, pos = self.buffer, 0
        while len(buffer) - pos >= _HEADER.size:
            version, rtype, request_id, length, padding = _HEADER.unpack_from(buffer, pos)
            if version != FCGI_VERSION_1:
                raise FastCGIError(f"not a FastCGI peer (record version {version})")
            end = pos + _HEADER.size + length + padding
            if len(buffer) < end:
                break
            content = bytes(buffer[pos + _HEADER.size:pos + _HEADER.size + length])
            pos = end
            # Management records (id 0) and unknown types carry nothing for us.
            if request_id == _REQUEST_ID and not self.ended:
                self._handle(rtype, content)
        del buffer[:pos]

    def _handle(self, rtype: int, content: bytes) -> None:
        if rtype == FCGI_STDOUT:
            if content:
                self.pending.append(content)
        elif rtype == FCGI_STDERR:
            # A script stuck in a warning loop must not fill the memory.
            self.stderr += content[:MAX_STDERR_BYTES - len(self.stderr)]
        elif rtype == FCGI_END_REQUEST:
            if len(content) < 8:
                raise FastCGIError("truncated FCGI_END_REQUEST record")
            self.app_status, protocol_status = struct.unpack_from("!IB", content)
            self.ended = True
            if protocol_status != FCGI_REQUEST_COMPLETE:
                name = _PROTOCOL_STATUS.get(protocol_status, str(protocol_status))
                raise FastCGIError(f"FastCGI peer refused the request: {name}")

    def stdout(self, chunk_size: int = 65536) -> Iterator[bytes]:
        """Yield STDOUT content in order (spooled part first) until END_REQUEST."""
        if self.spool is not None:
            self.spool.seek(0)
            while data := self.spool.read(chunk_size):
                yield data
            self.spool.close()
            self.spool = None
        while True:
            while self.pending:
                yield self.pending.popleft()
            if self.ended:
                return
            if self.eof:
                raise FastCGIError("FastCGI peer closed the connection before "
                                   "FCGI_END_REQUEST (response truncated)")
            self.receive()


# -- the response ----------------------------------------------------------


class FastCGIResponse:
    """The answer to one request: CGI status and headers, then a streamed body.

    ``status`` and ``reason`` come from the ``Status`` header (which is not
    repeated in ``headers``); without one they are ``200 OK``, or ``302 Found``
    when a ``Location`` header holds an absolute URL (RFC 3875, 6.2.4).
    ``headers`` keeps the order, repetitions and spelling the script sent.
    """

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self._chunks = connection.stdout()
        self._body_start = b""
        self._consumed = False
        self._closed = False
        self.status = 200
        self.reason = "OK"
        self.headers: list[tuple[str, str]] = []
        self._read_head()

    @property
    def stderr(self) -> str:
        """What the application wrote to FCGI_STDERR (the first 64 KiB of it)."""
        return self._connection.stderr.decode("utf-8", "replace")

    @property
    def app_status(self) -> int | None:
        """The application's exit status from FCGI_END_REQUEST, once it arrived."""
        return self._connection.app_status

    def _read_head(self) -> None:
        head, start = bytearray(), 0
        lines: list[bytes] = []
        for chunk in self._chunks:
            head += chunk
            while (newline := head.find(b"\n", start)) >= 0:
                line = bytes(head[start:newline])
                start = newline + 1
                if line.endswith(b"\r"):
                    line = line[:-1]
                if not line:
                    self._body_start = bytes(head[start:])
                    self._parse_head(lines)
                    return
                lines.append(line)
            if len(head) > MAX_HEADER_BYTES:
                raise FastCGIError(f"response headers exceed {MAX_HEADER_BYTES} bytes")
        stderr = self.stderr.strip()
        raise FastCGIError("FastCGI response ended before the end of its headers"
                           + (f"; stderr: {stderr[:500]}" if stderr else ""))

    def _parse_head(self, lines: list[bytes]) -> None:
        status = None
        for line in lines:
            if line[:1] in (b" ", b"\t") and self.headers:  # obsolete line folding
                name, value = self.headers[-1]
                self.headers[-1] = (name, value + " " + line.strip().decode("latin-1"))
                continue
            name_b, colon, value_b = line.partition(b":")
            if not colon or not name_b.strip():
                raise FastCGIError(f"malformed response header line {line[:200]!r}")
            name, value = name_b.decode("latin-1").strip(), value_b.decode("latin-1").strip()
            if name.lower() == "status" and status is None:
                status = value
            else:
                self.headers.append((name, value))
        if status is not None:
            code, _, reason = status.partition(" ")
            if not (code.isdigit() and len(code) == 3):
                raise FastCGIError(f"invalid Status header {status!r}")
            self.status = int(code)
            self.reason = reason.strip() or reason_phrase(self.status)
        elif any(n.lower() == "location" and re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", v)
                 for n, v in self.headers):
            self.status, self.reason = 302, "Found"

    def iter_content(self, chunk_size: int = 65536) -> Iterator[bytes]:
        """Yield the body as it arrives, in pieces of at most *chunk_size* bytes.

        Pieces are not merged to fill *chunk_size*: a script that flushes gets
        its output forwarded at once. The connection is closed when the body
        ends, fails or the generator is discarded.

        :raises FastCGIError: if the peer goes away before FCGI_END_REQUEST.
        """
        if self._consumed or self._closed:
            raise RuntimeError("the response body was already consumed or closed")
        self._consumed = True
        try:
            if self._body_start:
                yield from _split(self._body_start, chunk_size)
                self._body_start = b""
            for chunk in self._chunks:
                yield from _split(chunk, chunk_size)
        finally:
            self.close()

    def read(self) -> bytes:
        """Return the whole body at once; only for responses known to be small."""
        return b"".join(self.iter_content())

    def close(self) -> None:
        """Close the connection; safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._chunks.close()
            self._connection.close()

    def __enter__(self) -> FastCGIResponse:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FastCGIResponse [{self.status} {self.reason}]>"


def _split(data: bytes, size: int) -> Iterator[bytes]:
    if len(data) <= size:
        yield data
    else:
        for start in range(0, len(data), size):
            yield data[start:start + size]


# -- the client ------------------------------------------------------------


class FastCGIClient:
    """Sends requests to one FastCGI server (php-fpm), one connection each.

    :param address: a URL for :func:`parse_address`, or its ``(family, address)``.
    :param connect_timeout: seconds to wait for the connection.
    :param read_timeout: seconds to wait for each read or write of the
        exchange (not for the whole response).
    """

    def __init__(self, address: str | tuple[socket.AddressFamily, str | tuple[str, int]],
                 connect_timeout: float = 5.0, read_timeout: float = 300.0) -> None:
        if isinstance(address, str):
            address = parse_address(address)
        self.family, self.address = address
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    def __repr__(self) -> str:
        return f"<FastCGIClient {self.address!r}>"

    def _connect(self) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.settimeout(self.connect_timeout)
        try:
            sock.connect(self.address)
        except TimeoutError:
            sock.close()
            raise FastCGITimeout(f"connecting to FastCGI server {self.address!r} "
                                 f"timed out after {self.connect_timeout} s") from None
        except OSError as exc:
            sock.close()
            raise FastCGIConnectionError(f"cannot connect to FastCGI server "
                                         f"{self.address!r}: {exc}") from exc
        sock.settimeout(self.read_timeout)
        return sock

    def request(self, params: Mapping[str, ParamValue], body: Body = None,
                content_length: int = 0) -> FastCGIResponse:
        """Run one request and return once the response headers have arrived.

        :param params: the CGI environment, see :func:`build_params`. Values
            may be ``bytes`` to send them byte-exact.
        :param body: the request body: a file-like object with ``read(n)``, of
            which exactly *content_length* bytes are read, or ``bytes`` or an
            iterable of bytes chunks, sent whole (*content_length* unused).
            It is streamed in 32 KiB records, never held in memory whole.
        :param content_length: the body length for a file-like *body*.
        :raises FastCGIConnectionError: if the server cannot be reached.
        :raises FastCGITimeout: if the server is silent for *read_timeout*.
        :raises FastCGIError: if the server refuses or breaks the exchange.
        """
        begin = struct.pack("!HB5x", FCGI_RESPONDER, 0)  # flags 0: close when done
        head = encode_record(FCGI_BEGIN_REQUEST, begin) + b"".join(encode_params(params))
        connection = _Connection(self._connect(), self.read_timeout)
        try:
            connection.send(head)
            for piece in _iter_body(body, content_length):
                if connection.done_sending:
                    break  # the rest of the body would only be thrown away
                connection.send(encode_record(FCGI_STDIN, piece))
            connection.send(encode_record(FCGI_STDIN))
            return FastCGIResponse(connection)
        except BaseException:
            connection.close()
            raise


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
    """Build the FastCGI params of a correctly configured nginx + php-fpm Pydio.

    Every request is handed to the front controller, as nginx's
    ``try_files ... /pydio/index.php`` does, and Pydio routes on REQUEST_URI:

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
    for name, value in headers:
        if name.lower() in _SKIPPED_HEADERS or not _HEADER_NAME.fullmatch(name):
            continue
        key = "HTTP_" + name.upper().replace("-", "_")
        if key in params:
            separator = b"; " if key == "HTTP_COOKIE" else b", "
            params[key] = _to_bytes(params[key]) + separator + _to_bytes(value)
        else:
            params[key] = value
    return params
