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
import re
import selectors
import socket
import struct
import tempfile
from collections.abc import Generator, Iterator, Mapping

from .fastcgi_records import (
    FCGI_BEGIN_REQUEST,
    FCGI_END_REQUEST,
    FCGI_REQUEST_COMPLETE,
    FCGI_RESPONDER,
    FCGI_STDERR,
    FCGI_STDIN,
    FCGI_STDOUT,
    FCGI_VERSION_1,
    MAX_HEADER_BYTES,
    MAX_STDERR_BYTES,
    PROTOCOL_STATUS,
    RECORD_HEADER,
    REQUEST_ID,
    SPOOL_MEMORY_BYTES,
    STDIN_CHUNK,
    Body,
    FastCGIConnectionError,
    FastCGIError,
    FastCGITimeout,
    ParamValue,
    build_params,
    encode_name_value,
    encode_params,
    encode_record,
    parse_address,
)
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


def _iter_body(body: Body, content_length: int) -> Iterator[bytes | memoryview]:
    """Yield the request body in pieces of at most :data:`STDIN_CHUNK` bytes."""
    if body is None:
        return
    if isinstance(body, (bytes, bytearray, memoryview)):
        body = [bytes(body)]
    elif hasattr(body, "read"):
        # A WSGI input stream must not be read past CONTENT_LENGTH: it may
        # block waiting for bytes the client will never send.
        remaining = content_length
        while remaining > 0:
            data = body.read(min(STDIN_CHUNK, remaining))
            if not data:
                raise FastCGIError(f"request body ended {remaining} bytes short of its length ({content_length})")
            remaining -= len(data)
            yield data
        return
    for chunk in body:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"request body chunks must be bytes, not {type(chunk).__name__}")
        view = memoryview(chunk).cast("B")
        for start in range(0, len(view), STDIN_CHUNK):
            yield view[start : start + STDIN_CHUNK]


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
                raise FastCGITimeout(f"FastCGI peer neither read nor answered for {self.read_timeout} s")
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
            raise FastCGITimeout(f"no answer from the FastCGI peer for {self.read_timeout} s") from None
        except OSError as exc:
            raise FastCGIError(f"FastCGI connection failed: {exc}") from exc
        if not data:
            self.eof = True
            return
        self.buffer += data
        self._decode()

    def _decode(self) -> None:
        buffer, pos = self.buffer, 0
        while len(buffer) - pos >= RECORD_HEADER.size:
            version, rtype, request_id, length, padding = RECORD_HEADER.unpack_from(buffer, pos)
            if version != FCGI_VERSION_1:
                raise FastCGIError(f"not a FastCGI peer (record version {version})")
            end = pos + RECORD_HEADER.size + length + padding
            if len(buffer) < end:
                break
            content = bytes(buffer[pos + RECORD_HEADER.size : pos + RECORD_HEADER.size + length])
            pos = end
            # Management records (id 0) and unknown types carry nothing for us.
            if request_id == REQUEST_ID and not self.ended:
                self._handle(rtype, content)
        del buffer[:pos]

    def _handle(self, rtype: int, content: bytes) -> None:
        if rtype == FCGI_STDOUT:
            if content:
                self.pending.append(content)
        elif rtype == FCGI_STDERR:
            # A script stuck in a warning loop must not fill the memory.
            self.stderr += content[: MAX_STDERR_BYTES - len(self.stderr)]
        elif rtype == FCGI_END_REQUEST:
            if len(content) < 8:
                raise FastCGIError("truncated FCGI_END_REQUEST record")
            self.app_status, protocol_status = struct.unpack_from("!IB", content)
            self.ended = True
            if protocol_status != FCGI_REQUEST_COMPLETE:
                name = PROTOCOL_STATUS.get(protocol_status, str(protocol_status))
                raise FastCGIError(f"FastCGI peer refused the request: {name}")

    def stdout(self, chunk_size: int = 65536) -> Generator[bytes, None, None]:
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
                raise FastCGIError("FastCGI peer closed the connection before FCGI_END_REQUEST (response truncated)")
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
        summary = _stderr_summary(self.stderr.strip())
        raise FastCGIError("FastCGI response ended before the end of its headers" + summary)

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
        elif any(n.lower() == "location" and re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", v) for n, v in self.headers):
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
            yield data[start : start + size]


# -- the client ------------------------------------------------------------


class FastCGIClient:
    """Sends requests to one FastCGI server (php-fpm), one connection each.

    :param address: a URL for :func:`parse_address`, or its ``(family, address)``.
    :param connect_timeout: seconds to wait for the connection.
    :param read_timeout: seconds to wait for each read or write of the
        exchange (not for the whole response).
    """

    def __init__(
        self,
        address: str | tuple[socket.AddressFamily, str | tuple[str, int]],
        connect_timeout: float = 5.0,
        read_timeout: float = 300.0,
    ) -> None:
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
            raise FastCGITimeout(
                f"connecting to FastCGI server {self.address!r} timed out after {self.connect_timeout} s"
            ) from None
        except OSError as exc:
            sock.close()
            raise FastCGIConnectionError(f"cannot connect to FastCGI server {self.address!r}: {exc}") from exc
        sock.settimeout(self.read_timeout)
        return sock

    def request(self, params: Mapping[str, ParamValue], body: Body = None, content_length: int = 0) -> FastCGIResponse:
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


#: What php-fpm itself writes to a request's stderr (not the script): shown as it is.
_FPM_OWN_STDERR = re.compile(r"Primary script unknown|Access to the script '[^'\n]*' has been denied \(see [\w.]+\)")


def _stderr_summary(stderr: str) -> str:
    # In an error (logged, sent in a 502) only the size of a script's stderr: it may quote request data.
    if not stderr:
        return ""
    if _FPM_OWN_STDERR.fullmatch(stderr):
        return f"; stderr: {stderr}"
    return f"; PHP wrote {len(stderr)} characters to stderr (left out: they may quote request data)"
