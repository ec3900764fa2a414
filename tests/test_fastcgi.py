"""Tests for shim.fastcgi.

The first part checks the encoding helpers and runs the client against a fake
FastCGI server on a real unix socket; the fake server decodes and encodes
records with its own small implementation below, not with the module's.
The second part runs the client against a real php-fpm that the session
fixture starts (install it with tests/services/install-php-fpm.sh).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import struct
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from helpers import free_port

from shim.fastcgi import (
    FastCGIClient,
    FastCGIConnectionError,
    FastCGIError,
    FastCGITimeout,
    build_params,
    encode_name_value,
    encode_params,
    encode_record,
    parse_address,
)

BEGIN, END, PARAMS, STDIN, STDOUT, STDERR = 1, 3, 4, 5, 6, 7
GET_VALUES_RESULT, UNKNOWN_TYPE = 10, 11


# -- an independent reference implementation, for the fake server -----------


def record(rtype: int, content: bytes = b"", request_id: int = 1, padding: int = 0) -> bytes:
    return struct.pack("!BBHHBx", 1, rtype, request_id, len(content), padding) + content + b"\0" * padding


def end_request(app_status: int = 0, protocol_status: int = 0) -> bytes:
    return record(END, struct.pack("!IB3x", app_status, protocol_status))


def decode_records(data: bytes) -> list[tuple[int, int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        version, rtype, rid, length, padding = struct.unpack_from("!BBHHBx", data, pos)
        assert version == 1
        out.append((rtype, rid, data[pos + 8 : pos + 8 + length]))
        pos += 8 + length + padding
    assert pos == len(data)
    return out


def decode_pairs(data: bytes) -> dict[bytes, bytes]:
    def length(pos: int) -> tuple[int, int]:
        if data[pos] < 128:
            return data[pos], pos + 1
        return struct.unpack_from("!I", data, pos)[0] & 0x7FFFFFFF, pos + 4

    pairs, pos = {}, 0
    while pos < len(data):
        name_len, pos = length(pos)
        value_len, pos = length(pos)
        name = data[pos : pos + name_len]
        pairs[name] = data[pos + name_len : pos + name_len + value_len]
        pos += name_len + value_len
    return pairs


def recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        piece = conn.recv(n - len(data))
        if not piece:
            raise EOFError("client closed early")
        data += piece
    return data


def recv_record(conn: socket.socket) -> tuple[int, int, bytes]:
    version, rtype, rid, length, padding = struct.unpack("!BBHHBx", recv_exact(conn, 8))
    assert version == 1
    content = recv_exact(conn, length + padding)[:length]
    return rtype, rid, content


class FakeRequest:
    """What the fake server received: the records and their decoded meaning."""

    def __init__(self) -> None:
        self.records: list[tuple[int, int, bytes]] = []

    @property
    def params(self) -> dict[bytes, bytes]:
        return decode_pairs(b"".join(c for t, _, c in self.records if t == PARAMS))

    @property
    def stdin(self) -> bytes:
        return b"".join(c for t, _, c in self.records if t == STDIN)


def read_head(conn: socket.socket, request: FakeRequest) -> None:
    """Read BEGIN_REQUEST and the PARAMS stream."""
    while True:
        rec = recv_record(conn)
        request.records.append(rec)
        if rec[0] == PARAMS and not rec[2]:
            return


def read_stdin(conn: socket.socket, request: FakeRequest) -> None:
    while True:
        rec = recv_record(conn)
        request.records.append(rec)
        if rec[0] == STDIN and not rec[2]:
            return


class FakeServer:
    """A FastCGI server on a unix socket running *handler(conn, request)* once.

    By default the whole request is read before the handler runs.
    """

    def __init__(self, path: Path, handler, read_request: bool = True) -> None:
        self.path = str(path)
        self.url = "fcgi://" + self.path
        self.request = FakeRequest()
        self.error: BaseException | None = None
        self.client_closed = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(1)
        self._thread = threading.Thread(target=self._serve, args=(handler, read_request), daemon=True)
        self._thread.start()

    def _serve(self, handler, read_request: bool) -> None:
        conn, _ = self._listener.accept()
        conn.settimeout(20)
        try:
            if read_request:
                read_head(conn, self.request)
                read_stdin(conn, self.request)
            handler(conn, self.request)
            conn.shutdown(socket.SHUT_WR)
            # Tell whether the client closes its end once it is done.
            while conn.recv(65536):
                pass
            self.client_closed.set()
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            conn.close()

    def stop(self) -> None:
        self._thread.join(timeout=20)
        self._listener.close()
        assert not self._thread.is_alive(), "fake server thread hung"
        if self.error is not None:
            raise self.error


@pytest.fixture
def fake_server(tmp_path):
    servers: list[FakeServer] = []

    def start(handler, read_request: bool = True) -> FakeServer:
        server = FakeServer(tmp_path / f"fake{len(servers)}.sock", handler, read_request)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def send_pieces(conn: socket.socket, data: bytes, size: int, pause: float = 0.002) -> None:
    """Send *data* in *size*-byte pieces with pauses, so the client sees split reads."""
    for start in range(0, len(data), size):
        conn.sendall(data[start : start + size])
        time.sleep(pause)


def reply(*records: bytes):
    def handler(conn, request):
        conn.sendall(b"".join(records))

    return handler


SIMPLE_PARAMS = {"REQUEST_METHOD": "GET", "SCRIPT_FILENAME": "/x/index.php"}


# -- encoding --------------------------------------------------------------


def test_encode_record_layout():
    assert encode_record(STDIN, b"abc") == bytes([1, 5, 0, 1, 0, 3, 0, 0]) + b"abc"
    assert encode_record(PARAMS) == bytes([1, 4, 0, 1, 0, 0, 0, 0])
    padded = encode_record(STDOUT, b"hello", request_id=0x0102, padding=3)
    assert padded == bytes([1, 6, 1, 2, 0, 5, 3, 0]) + b"hello\0\0\0"
    assert decode_records(encode_record(STDIN, b"x" * 65535)) == [(STDIN, 1, b"x" * 65535)]
    with pytest.raises(ValueError):
        encode_record(STDIN, b"x" * 65536)


def test_name_value_short_lengths_use_one_byte():
    assert encode_name_value("A", "bc") == b"\x01\x02Abc"
    assert encode_name_value("K", "v" * 127) == b"\x01\x7fK" + b"v" * 127
    assert encode_name_value("EMPTY", "") == b"\x05\x00EMPTY"


def test_name_value_long_lengths_use_four_bytes_with_high_bit():
    assert encode_name_value("K", "v" * 128)[:6] == b"\x01\x80\x00\x00\x80K"
    long_name, long_value = "N" * 300, b"\xff" * 70000
    encoded = encode_name_value(long_name, long_value)
    assert encoded[:8] == b"\x80\x00\x01\x2c" + b"\x80\x01\x11\x70"
    assert decode_pairs(encoded) == {long_name.encode(): long_value}


def test_name_value_text_encoding():
    # latin-1 when possible (WSGI's convention for raw bytes), utf-8 otherwise,
    # bytes untouched.
    assert decode_pairs(encode_name_value("U", "/\xe9t\xe9")) == {b"U": b"/\xe9t\xe9"}
    assert decode_pairs(encode_name_value("U", "/\u20ac")) == {b"U": "/\u20ac".encode()}
    assert decode_pairs(encode_name_value("U", b"/\xc3\xa9")) == {b"U": b"/\xc3\xa9"}
    with pytest.raises(TypeError):
        encode_name_value("U", 5)


def test_encode_params_packs_whole_pairs_into_records():
    params = {f"HTTP_X_{i}": f"{i}-" + "v" * 1000 for i in range(200)}
    params["SKIPPED"] = None
    records = [decode_records(r)[0] for r in encode_params(params)]
    assert len(records) > 3
    assert all(rtype == PARAMS and rid == 1 for rtype, rid, _ in records)
    assert records[-1][2] == b""
    assert all(0 < len(content) <= 65535 for _, _, content in records[:-1])
    merged: dict[bytes, bytes] = {}
    for _, _, content in records[:-1]:
        merged.update(decode_pairs(content))  # each record decodes on its own
    expected = {k.encode(): v.encode() for k, v in params.items() if v is not None}
    assert merged == expected


def test_encode_params_rejects_a_pair_larger_than_a_record():
    with pytest.raises(ValueError, match="HTTP_COOKIE"):
        encode_params({"HTTP_COOKIE": "c" * 65530})


# -- addresses -------------------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        ("fcgi://127.0.0.1:9000", (socket.AF_INET, ("127.0.0.1", 9000))),
        ("fcgi://php:9001/", (socket.AF_INET, ("php", 9001))),
        ("fcgi://[::1]:9000", (socket.AF_INET6, ("::1", 9000))),
        ("fcgi:///run/php/php8.2-fpm.sock", (socket.AF_UNIX, "/run/php/php8.2-fpm.sock")),
        ("unix:/run/php/fpm.sock", (socket.AF_UNIX, "/run/php/fpm.sock")),
        ("unix:///run/php/fpm.sock", (socket.AF_UNIX, "/run/php/fpm.sock")),
    ],
)
def test_parse_address(url, expected):
    assert parse_address(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000",
        "fcgi://127.0.0.1",
        "fcgi://127.0.0.1:port",
        "fcgi://:9000",
        "fcgi://host:0",
        "fcgi://host:70000",
        "fcgi:///",
        "unix:relative.sock",
        "unix:",
        "",
        "127.0.0.1:9000",
    ],
)
def test_parse_address_rejects(url):
    with pytest.raises(ValueError, match="FastCGI"):
        parse_address(url)


# -- build_params ----------------------------------------------------------


def test_build_params_environment():
    params = build_params(
        document_root="/srv//pydio/",
        script_name="/pydio/index.php",
        request_uri=b"/pydio/api/ws/ls/%C3%A9t%C3%A9?a=%2F+b",
        method="PROPFIND",
        content_type="text/xml",
        content_length=12,
        remote_addr="10.0.0.7",
        remote_port=51234,
        server_name="files.example.org",
        server_port=8443,
        https=True,
        headers=[
            ("Host", "files.example.org"),
            ("Authorization", "Basic YTpi"),
            ("Content-Type", "text/xml"),
            ("Content-Length", "12"),
            ("Proxy", "http://evil"),
            ("X_Forwarded_For", "spoof"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("Accept", "a"),
            ("Accept", "b"),
            ("Cookie", "x=1"),
            ("Cookie", "y=2"),
            ("X-Raw", b"\xc3\xa9"),
        ],
    )
    assert params == {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "pydio-shim",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_SCHEME": "https",
        "SERVER_NAME": "files.example.org",
        "SERVER_PORT": "8443",
        "REMOTE_ADDR": "10.0.0.7",
        "REMOTE_PORT": "51234",
        "REQUEST_METHOD": "PROPFIND",
        "REQUEST_URI": b"/pydio/api/ws/ls/%C3%A9t%C3%A9?a=%2F+b",
        "QUERY_STRING": b"a=%2F+b",
        "DOCUMENT_ROOT": "/srv/pydio",
        "SCRIPT_FILENAME": "/srv/pydio/index.php",
        "SCRIPT_NAME": "/pydio/index.php",
        "DOCUMENT_URI": "/pydio/index.php",
        "PHP_SELF": "/pydio/index.php",
        "CONTENT_TYPE": "text/xml",
        "CONTENT_LENGTH": "12",
        "REDIRECT_STATUS": "200",
        "HTTPS": "on",
        "HTTP_HOST": "files.example.org",
        "HTTP_AUTHORIZATION": "Basic YTpi",
        "HTTP_X_FORWARDED_FOR": "1.2.3.4",
        "HTTP_ACCEPT": b"a, b",
        "HTTP_COOKIE": b"x=1; y=2",
        "HTTP_X_RAW": b"\xc3\xa9",
    }


def test_build_params_defaults_without_body_or_tls():
    params = build_params(
        document_root="/var/www/pydio", script_name="/pydio/index.php", request_uri="/pydio/", query_string=""
    )
    assert "HTTPS" not in params
    assert params["CONTENT_LENGTH"] == "0"
    assert params["CONTENT_TYPE"] == ""
    assert params["QUERY_STRING"] == ""
    assert params["SERVER_PORT"] == "80"
    assert params["REQUEST_SCHEME"] == "http"
    assert params["SCRIPT_FILENAME"] == "/var/www/pydio/index.php"
    assert (
        build_params(document_root="/d", script_name="/index.php", request_uri="/?q", https=True)["SERVER_PORT"]
        == "443"
    )


# -- the client against the fake server: what it sends ---------------------


def test_request_records(fake_server):
    server = fake_server(reply(record(STDOUT, b"Content-Type: text/plain\r\n\r\nok"), end_request()))
    body = [b"a" * 100_000, b"", bytearray(b"b" * 10), memoryview(b"c" * 40_000)]
    params = {"REQUEST_URI": b"/p/\xc3\xa9%2F", "CONTENT_LENGTH": "140010", "X": "\xe9"}
    with FastCGIClient(server.url).request(params, body=iter(body)) as response:
        assert response.read() == b"ok"
    server.stop()
    records = server.request.records
    assert records[0] == (BEGIN, 1, b"\x00\x01\x00\x00\x00\x00\x00\x00")  # RESPONDER, no keep-conn
    assert all(rid == 1 for _, rid, _ in records)
    types = [t for t, _, _ in records]
    first_stdin = types.index(STDIN)
    assert set(types[1:first_stdin]) == {PARAMS} and records[first_stdin - 1][2] == b""
    assert set(types[first_stdin:]) == {STDIN} and records[-1][2] == b""
    assert server.request.params == {b"REQUEST_URI": b"/p/\xc3\xa9%2F", b"CONTENT_LENGTH": b"140010", b"X": b"\xe9"}
    stdin_sizes = [len(c) for t, _, c in records if t == STDIN]
    assert max(stdin_sizes) == 32 * 1024
    assert server.request.stdin == b"a" * 100_000 + b"b" * 10 + b"c" * 40_000


def test_request_without_body_sends_empty_stdin_only(fake_server):
    server = fake_server(reply(record(STDOUT, b"Status: 204\r\n\r\n"), end_request()))
    with FastCGIClient(server.url).request(SIMPLE_PARAMS) as response:
        assert (response.status, response.reason, response.read()) == (204, "No Content", b"")
    server.stop()
    assert [r for r in server.request.records if r[0] == STDIN] == [(STDIN, 1, b"")]


class RecordingReader:
    """A file-like body that notes every read and holds more than is sent."""

    def __init__(self, data: bytes) -> None:
        self.stream = io.BytesIO(data)
        self.sizes: list[int] = []

    def read(self, n: int = -1) -> bytes:
        self.sizes.append(n)
        return self.stream.read(n)


def test_file_like_body_is_read_in_chunks_up_to_content_length(fake_server):
    server = fake_server(reply(record(STDOUT, b"\r\n"), end_request()))
    data = os.urandom(100_000)
    reader = RecordingReader(data + b"NEXT REQUEST ON THE SAME STREAM")
    FastCGIClient(server.url).request(SIMPLE_PARAMS, body=reader, content_length=len(data)).close()
    server.stop()
    assert server.request.stdin == data
    assert reader.stream.tell() == len(data)  # not one byte past CONTENT_LENGTH
    assert 0 < max(reader.sizes) <= 32 * 1024


def test_file_like_body_shorter_than_content_length(fake_server):
    # The server keeps the connection open, so the error is the body's, not a closed socket's.
    server = fake_server(lambda conn, request: time.sleep(1), read_request=False)
    with pytest.raises(FastCGIError, match="short"):
        FastCGIClient(server.url).request(SIMPLE_PARAMS, body=io.BytesIO(b"abc"), content_length=10)


def test_body_of_str_chunks_is_refused(fake_server):
    server = fake_server(lambda conn, request: None, read_request=False)
    with pytest.raises(TypeError):
        FastCGIClient(server.url).request(SIMPLE_PARAMS, body=["text"])


# -- the client against the fake server: what it reads ---------------------


def test_response_split_across_reads_records_and_lines(fake_server):
    head = (
        b"Status: 404 Not Found\r\nContent-Type: text/html; charset=UTF-8\r\n"
        b"Set-Cookie: a=1; Path=/\r\nX-Powered-By: PHP/8.2\r\nset-cookie: b=2\r\n\r\n"
    )
    body = b"<h1>gone</h1>" * 50
    stream = (
        record(STDERR, b"PHP Notice: first ", padding=6)
        + record(STDOUT, head[:7], padding=1)  # split inside "Status:"
        + record(STDOUT, head[7 : head.index(b"\r") + 1])  # ends between \r and \n
        + record(STDERR, b"and second")
        + record(STDOUT, head[head.index(b"\r") + 1 : -1], padding=7)
        + record(STDOUT, head[-1:] + body[:100])  # last \n, then body
        + record(STDOUT, body[100:], padding=3)
        + end_request(app_status=3)
    )
    server = fake_server(lambda conn, request: send_pieces(conn, stream, 5))
    response = FastCGIClient(server.url).request(SIMPLE_PARAMS)
    assert response.status == 404
    assert response.reason == "Not Found"
    assert response.headers == [
        ("Content-Type", "text/html; charset=UTF-8"),
        ("Set-Cookie", "a=1; Path=/"),
        ("X-Powered-By", "PHP/8.2"),
        ("set-cookie", "b=2"),
    ]
    assert response.read() == body
    assert response.stderr == "PHP Notice: first and second"
    assert response.app_status == 3
    server.stop()
    assert server.client_closed.is_set()


def test_header_block_with_bare_newlines_and_folding(fake_server):
    server = fake_server(
        reply(record(STDOUT, b"Content-Type: text/plain\nX-Long: one\n two\r\n\nbody\n"), end_request())
    )
    with FastCGIClient(server.url).request(SIMPLE_PARAMS) as response:
        assert (response.status, response.reason) == (200, "OK")
        assert response.headers == [("Content-Type", "text/plain"), ("X-Long", "one two")]
        assert response.read() == b"body\n"


@pytest.mark.parametrize(
    "head, status, reason",
    [
        (b"Status: 302\r\nLocation: /pydio/\r\n", 302, "Found"),
        (b"Location: https://example.org/pydio/\r\n", 302, "Found"),
        (b"Location: /pydio/local\r\n", 200, "OK"),
        (b"Status: 599 Odd Thing\r\n", 599, "Odd Thing"),
        (b"Status: 599\r\n", 599, ""),
        (b"Status:418   I'm a teapot  \r\n", 418, "I'm a teapot"),
    ],
)
def test_status_rules(fake_server, head, status, reason):
    server = fake_server(reply(record(STDOUT, head + b"\r\n"), end_request()))
    with FastCGIClient(server.url).request(SIMPLE_PARAMS) as response:
        assert (response.status, response.reason) == (status, reason)
        assert all(name.lower() != "status" for name, _ in response.headers)


@pytest.mark.parametrize("head", [b"Status: abc\r\n\r\n", b"Status: 20\r\n\r\n", b"no colon here\r\n\r\n"])
def test_malformed_head(fake_server, head):
    server = fake_server(reply(record(STDOUT, head), end_request()))
    with pytest.raises(FastCGIError):
        FastCGIClient(server.url).request(SIMPLE_PARAMS)


def test_protocol_status_not_complete_raises(fake_server):
    server = fake_server(reply(end_request(protocol_status=2)))
    with pytest.raises(FastCGIError, match="OVERLOADED"):
        FastCGIClient(server.url).request(SIMPLE_PARAMS)


def test_end_before_headers_raises_with_stderr(fake_server):
    server = fake_server(reply(record(STDERR, b"Primary script unknown"), record(STDOUT, b"X-A: 1\r\n"), end_request()))
    with pytest.raises(FastCGIError, match="Primary script unknown"):
        FastCGIClient(server.url).request(SIMPLE_PARAMS)


def test_a_script_s_own_stderr_is_left_out_of_the_error(fake_server):
    """A warning or a stack trace may quote request data: the error (logged, sent in a 502) says only its size."""
    stderr = b"PHP Warning: login failed for userid=admin&password=SECRET in /var/www/a.php"
    server = fake_server(reply(record(STDERR, stderr), record(STDOUT, b"X-A: 1\r\n"), end_request()))
    with pytest.raises(FastCGIError) as raised:
        FastCGIClient(server.url).request(SIMPLE_PARAMS)
    assert "SECRET" not in str(raised.value)
    assert f"PHP wrote {len(stderr)} characters to stderr" in str(raised.value)


def test_peer_closing_before_end_request_fails_iter_content(fake_server):
    server = fake_server(reply(record(STDOUT, b"Content-Type: text/plain\r\n\r\npartial")))
    response = FastCGIClient(server.url).request(SIMPLE_PARAMS)
    assert response.status == 200
    chunks = response.iter_content()
    assert next(chunks) == b"partial"
    with pytest.raises(FastCGIError, match="before FCGI_END_REQUEST"):
        next(chunks)
    response.close()  # already closed by the failure: must not raise
    response.close()


def test_peer_closing_before_headers_fails_request(fake_server):
    server = fake_server(reply(record(STDOUT, b"Content-Type: text/pl")))
    with pytest.raises(FastCGIError, match="before"):
        FastCGIClient(server.url).request(SIMPLE_PARAMS)


def test_not_a_fastcgi_peer(fake_server):
    server = fake_server(reply(b"HTTP/1.1 400 Bad Request\r\n\r\n"))
    with pytest.raises(FastCGIError, match="not a FastCGI peer"):
        FastCGIClient(server.url).request(SIMPLE_PARAMS)


def test_other_request_ids_and_record_types_are_ignored(fake_server):
    server = fake_server(
        reply(
            record(GET_VALUES_RESULT, b"\x0f\x01FCGI_MPXS_CONNS0", request_id=0),
            record(UNKNOWN_TYPE, b"\x63" + b"\0" * 7, request_id=0),
            record(STDOUT, b"Status: 500\r\n\r\nwrong request", request_id=2),
            record(STDOUT, b"\r\nright"),
            end_request(),
            record(STDOUT, b" after the end"),
        )
    )
    with FastCGIClient(server.url).request(SIMPLE_PARAMS) as response:
        assert (response.status, response.headers, response.read()) == (200, [], b"right")


def test_stderr_is_bounded(fake_server):
    noise = b"0123456789abcdef" * 4096  # 64 KiB per record
    server = fake_server(reply(*[record(STDERR, noise[:65535])] * 4, record(STDOUT, b"\r\n"), end_request()))
    with FastCGIClient(server.url).request(SIMPLE_PARAMS) as response:
        assert response.read() == b""
        assert len(response.stderr) == 64 * 1024
        assert response.stderr.startswith("0123456789abcdef")


def test_iter_content_chunk_size_and_single_use(fake_server):
    body = os.urandom(65535)
    server = fake_server(reply(record(STDOUT, b"\r\n"), record(STDOUT, body), end_request()))
    response = FastCGIClient(server.url).request(SIMPLE_PARAMS)
    chunks = list(response.iter_content(chunk_size=1000))
    assert b"".join(chunks) == body
    assert max(map(len, chunks)) == 1000
    with pytest.raises(RuntimeError):
        list(response.iter_content())
    closed_early = FastCGIClient(fake_server(reply(record(STDOUT, b"\r\nx"), end_request())).url)
    response = closed_early.request(SIMPLE_PARAMS)
    response.close()
    with pytest.raises(RuntimeError):
        next(response.iter_content())


def test_iter_content_streams_before_the_response_ends(fake_server):
    first_seen = threading.Event()

    def handler(conn, request):
        conn.sendall(record(STDOUT, b"Content-Type: text/plain\r\n\r\nfirst"))
        # The rest is only sent once the client has handed out the first part.
        assert first_seen.wait(10), "client did not stream the first chunk"
        conn.sendall(record(STDOUT, b"second") + end_request())

    server = fake_server(handler)
    with FastCGIClient(server.url, read_timeout=15).request(SIMPLE_PARAMS) as response:
        chunks = response.iter_content()
        assert next(chunks) == b"first"
        first_seen.set()
        assert list(chunks) == [b"second"]


def test_closing_early_closes_the_connection(fake_server):
    def handler(conn, request):
        conn.sendall(record(STDOUT, b"\r\n" + b"x" * 60000))
        # Never sends END_REQUEST; the client closing is what ends this.

    server = fake_server(handler)
    with FastCGIClient(server.url).request(SIMPLE_PARAMS) as response:
        assert next(response.iter_content()) == b"x" * 60000
    server.stop()
    assert server.client_closed.is_set()


def test_output_before_the_body_is_read_does_not_deadlock(fake_server):
    # A script may print a lot before it reads its input (php-fpm's echo of
    # php://input does). If the client only read after sending the whole body,
    # both sides would block on full socket buffers.
    early = os.urandom(4 * 1024 * 1024)
    body = os.urandom(4 * 1024 * 1024)

    def handler(conn, request):
        read_head(conn, request)
        conn.sendall(record(STDOUT, b"Content-Type: application/octet-stream\r\n\r\n"))
        for start in range(0, len(early), 65535):
            conn.sendall(record(STDOUT, early[start : start + 65535]))
        read_stdin(conn, request)
        conn.sendall(record(STDOUT, hashlib.md5(request.stdin).hexdigest().encode()) + end_request())

    server = fake_server(handler, read_request=False)
    client = FastCGIClient(server.url, read_timeout=10)
    with client.request(SIMPLE_PARAMS, body=[body[i : i + 100_000] for i in range(0, len(body), 100_000)]) as r:
        assert r.read() == early + hashlib.md5(body).hexdigest().encode()


def test_answer_without_reading_the_body(fake_server):
    def handler(conn, request):
        read_head(conn, request)
        conn.sendall(record(STDOUT, b"Status: 413 Payload Too Large\r\n\r\nno") + end_request())
        conn.shutdown(socket.SHUT_RD)  # the client's further writes fail (EPIPE)

    server = fake_server(handler, read_request=False)
    produced = []

    def body():  # 10 MiB, far more than the socket buffers hold
        for _ in range(160):
            produced.append(65536)
            yield b"z" * 65536

    with FastCGIClient(server.url, read_timeout=10).request(SIMPLE_PARAMS, body=body()) as response:
        assert (response.status, response.read()) == (413, b"no")
    assert sum(produced) < 160 * 65536  # stopped consuming the body once answered


# -- connection errors and timeouts ----------------------------------------


def test_connection_refused_tcp():
    client = FastCGIClient(f"fcgi://127.0.0.1:{free_port()}", connect_timeout=2)
    with pytest.raises(FastCGIConnectionError, match="cannot connect"):
        client.request(SIMPLE_PARAMS)


def test_missing_and_stale_unix_socket(tmp_path):
    with pytest.raises(FastCGIConnectionError):
        FastCGIClient(f"fcgi://{tmp_path}/missing.sock").request(SIMPLE_PARAMS)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "stale.sock"))  # bound but not listening: refused
    try:
        with pytest.raises(FastCGIConnectionError):
            FastCGIClient(f"unix:{tmp_path}/stale.sock").request(SIMPLE_PARAMS)
    finally:
        stale.close()


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_read_timeout_when_the_listener_never_answers(tmp_path, family):
    if family == "unix":
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(tmp_path / "silent.sock"))
        url = f"fcgi://{tmp_path}/silent.sock"
    else:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        url = f"fcgi://127.0.0.1:{listener.getsockname()[1]}"
    listener.listen(8)  # the kernel completes the connection; nobody accepts it
    try:
        client = FastCGIClient(url, connect_timeout=5, read_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(FastCGITimeout):
            client.request(SIMPLE_PARAMS)
        assert time.monotonic() - started < 3
    finally:
        listener.close()


def test_connect_timeout_when_the_backlog_is_full():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    filler = socket.create_connection(address, timeout=2)  # takes the only backlog slot
    try:
        client = FastCGIClient(f"fcgi://{address[0]}:{address[1]}", connect_timeout=0.3, read_timeout=30)
        started = time.monotonic()
        with pytest.raises(FastCGITimeout, match="connecting"):
            client.request(SIMPLE_PARAMS)
        assert time.monotonic() - started < 3
    finally:
        filler.close()
        listener.close()


def test_error_hierarchy():
    assert issubclass(FastCGITimeout, FastCGIError)
    assert issubclass(FastCGIConnectionError, FastCGIError)
    assert not issubclass(FastCGITimeout, FastCGIConnectionError)


# -- against a real php-fpm ------------------------------------------------

from phpfpm import PhpFpm  # noqa: E402


def php(
    fpm: PhpFpm,
    request_uri: bytes | str,
    *,
    method: str = "GET",
    body=None,
    content_length: int = 0,
    content_type: str = "",
    headers=(),
    https: bool = False,
    tcp: bool = False,
    read_timeout: float = 60,
    script_name: str = "/pydio/index.php",
):
    client = FastCGIClient(fpm.tcp_url if tcp else fpm.unix_url, read_timeout=read_timeout)
    params = build_params(
        document_root=str(fpm.docroot),
        script_name=script_name,
        request_uri=request_uri,
        method=method,
        content_type=content_type,
        content_length=content_length,
        https=https,
        headers=[("Host", "files.example.org"), *headers],
    )
    return client.request(params, body=body, content_length=content_length)


def php_info(fpm: PhpFpm, request_uri: bytes | str = "/pydio/", **kwargs) -> dict:
    with php(fpm, request_uri, **kwargs) as response:
        assert response.status == 200, (response.status, response.stderr)
        assert ("Content-Type", "application/json") in response.headers
        return json.loads(response.read())


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
@pytest.mark.parametrize(
    "uri",
    [
        b"/pydio/api/ws/ls/a%2Fb+c%25d?x=1+2&y=%2F&z=%25",
        b"/pydio/api/ws/ls/%C3%A9t%C3%A9",
        "/pydio/api/ws/ls/\xc3\xa9t\xc3\xa9?q=\xc3\xa9".encode("latin-1"),  # raw UTF-8, not %-encoded
        b"/pydio//double//slash/./dot/../x",
    ],
)
def test_php_request_uri_is_byte_exact(php_fpm, uri, tcp):
    info = php_info(php_fpm, uri, tcp=tcp)
    assert bytes.fromhex(info["REQUEST_URI_HEX"]) == uri
    assert bytes.fromhex(info["QUERY_STRING_HEX"]) == uri.partition(b"?")[2]
    assert info["REQUEST_METHOD"] == "GET"
    assert info["HTTP_HOST"] == "files.example.org"


def test_php_query_string_decoding(php_fpm):
    info = php_info(php_fpm, b"/pydio/?x=1+2&y=%2F&z=%25")
    assert info["GET"] == {"x": "1 2", "y": "/", "z": "%"}


def test_php_script_name_and_filename(php_fpm):
    info = php_info(php_fpm, b"/pydio/api/ws/ls/dir")
    assert info["SCRIPT_NAME"] == "/pydio/index.php"
    assert info["PHP_SELF"] == "/pydio/index.php"
    assert info["SCRIPT_FILENAME"] == f"{php_fpm.docroot}/index.php"
    assert info["HTTPS"] is None
    assert info["CONTENT_LENGTH"] == "0"
    assert info["INPUT_LENGTH"] == 0


def test_php_https_flag(php_fpm):
    assert php_info(php_fpm, https=True)["HTTPS"] == "on"


def test_php_basic_auth(php_fpm):
    credentials = base64.b64encode("alice:p\u00e4ss:w rd".encode()).decode()
    info = php_info(php_fpm, headers=[("Authorization", f"Basic {credentials}"), ("Proxy", "http://evil:1")])
    assert info["PHP_AUTH_USER"] == "alice"
    assert info["PHP_AUTH_PW"] == "p\u00e4ss:w rd"
    assert info["HTTP_AUTHORIZATION"] == f"Basic {credentials}"
    assert info["HTTP_PROXY"] is None


def test_php_missing_script_is_a_404_with_stderr(php_fpm):
    with php(php_fpm, b"/pydio/missing.php", script_name="/pydio/missing.php") as response:
        assert (response.status, response.reason) == (404, "Not Found")
        assert response.read().strip() == b"File not found."
        assert "Primary script unknown" in response.stderr


def test_php_large_post_body_streams(php_fpm):
    # 64 MiB from a generator, never held whole: check what PHP read and that
    # the client's memory stayed far below the body size.
    size, block = 64 * 1024 * 1024, os.urandom(1024 * 1024)
    expected = hashlib.md5()

    def chunks():
        for i in range(size // len(block)):
            chunk = struct.pack("!I", i) + block[4:]
            expected.update(chunk)
            yield chunk

    tracemalloc.start()
    try:
        info = php_info(
            php_fpm,
            b"/pydio/api/ws/upload/put/big.bin",
            method="POST",
            body=chunks(),
            content_length=size,
            content_type="application/octet-stream",
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info["CONTENT_LENGTH"] == str(size)
    assert info["INPUT_LENGTH"] == size
    assert info["INPUT_MD5"] == expected.hexdigest()
    assert peak < 8 * 1024 * 1024, f"peak traced memory {peak} bytes"


def test_php_file_like_body(php_fpm, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "upload.bin"
    path.write_bytes(data + b"trailing bytes that are not part of the body")
    with path.open("rb") as body:
        info = php_info(php_fpm, "/pydio/", method="PUT", body=body, content_length=len(data), tcp=True)
    assert (info["INPUT_LENGTH"], info["INPUT_MD5"]) == (len(data), hashlib.md5(data).hexdigest())


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_php_echo_round_trip(php_fpm, method):
    # With PUT php-fpm reads php://input while it writes (a full-duplex
    # exchange); with POST it reads the whole body before the script runs.
    data = os.urandom(1024 * 1024)
    body = (data[i : i + 50_000] for i in range(0, len(data), 50_000))
    with php(
        php_fpm,
        "/pydio/?mode=echo",
        method=method,
        body=body,
        content_length=len(data),
        content_type="application/octet-stream",
    ) as response:
        assert response.status == 200
        assert response.read() == data


def test_php_status_and_repeated_cookies(php_fpm):
    with php(php_fpm, "/pydio/?mode=status") as response:
        assert response.status == 418
        assert response.reason == "I'm a Teapot"  # PHP's spelling
        cookies = [value for name, value in response.headers if name.lower() == "set-cookie"]
        assert cookies == ["first=1; Path=/", "second=2; Path=/"]
        assert response.read() == b"teapot"


def test_php_big_response_streams_in_bounded_memory(php_fpm):
    size = 50 * 1024 * 1024
    pattern = bytes(range(256)) * 256
    expected = hashlib.md5()
    for start in range(0, size, len(pattern)):
        expected.update(pattern[: size - start])
    received, digest, largest = 0, hashlib.md5(), 0
    tracemalloc.start()
    try:
        with php(php_fpm, f"/pydio/?mode=big&n={size}") as response:
            assert response.status == 200
            for chunk in response.iter_content():
                received += len(chunk)
                largest = max(largest, len(chunk))
                digest.update(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert received == size
    assert digest.hexdigest() == expected.hexdigest()
    assert largest <= 65536
    assert peak < 4 * 1024 * 1024, f"peak traced memory {peak} bytes for a {size}-byte body"


def test_php_read_timeout(php_fpm):
    started = time.monotonic()
    with pytest.raises(FastCGITimeout):
        php(php_fpm, "/pydio/?mode=sleep&s=2", tcp=True, read_timeout=0.5)
    assert time.monotonic() - started < 1.8
