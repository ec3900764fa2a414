"""The transparent proxy, through a real gunicorn (gthread) in front of the legacy stand-in.

What the legacy server receives is read from the stand-in's ``/_standin/echo``
(method, raw request target, headers, body md5 and length) and its request log.
Answers the stand-in cannot give (hop-by-hop response headers, a body cut
short, a slow endless stream, a kept-alive connection closed under the shim)
come from :class:`RawUpstream`, a hand-written HTTP/1.1 server.

Clients are raw sockets or :mod:`http.client`, never ``requests``: requests
re-encodes the URL it is given, which would hide what the shim does with it.
The proxy does not depend on the database engine: SQLite only.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from conftest import USERS
from gunicorn_helpers import CONF, ROOT, GunicornServer

from shim import config as config_module
from shim import headers as header_policy
from shim import proxy
from shim.spool import Spool
from shim.upstream import RequestRefused, UpstreamError, check_framing
from shim.wsgi import create_app

ALICE = "Basic " + base64.b64encode(f"alice:{USERS['alice'][0]}".encode()).decode()


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin(sqlite_standin):
    return sqlite_standin


def start_shim(standin, upstream_url=None, **env) -> GunicornServer:
    settings = {
        "PYDIO_SHIM_UPSTREAM_URL": upstream_url or standin.url,
        "PYDIO_SHIM_DATABASE_URL": standin.db_url,
        "PYDIO_SHIM_LOG_LEVEL": "DEBUG",
    }
    settings.update(env)
    return GunicornServer(settings, standin.base).start()


@pytest.fixture(scope="module")
def shim(standin):
    """The shim with its default settings: loopback is a trusted proxy."""
    server = start_shim(standin)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def untrusted_shim(standin):
    """The shim under the public prefix /pydio, trusting only a proxy that is not the test."""
    server = start_shim(standin, PYDIO_SHIM_PROXY_TRUSTED_PROXIES="192.0.2.1", PYDIO_SHIM_PUBLIC_PREFIX="/pydio")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def raw_upstream():
    server = RawUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def raw_shim(standin, raw_upstream):
    """The shim in front of :class:`RawUpstream`, with a 2 s read timeout."""
    server = start_shim(standin, raw_upstream.url, PYDIO_SHIM_UPSTREAM_READ_TIMEOUT="2")
    yield server
    server.stop()


# --- a client that sends exactly the given bytes -------------------------------------------


class Answer:
    def __init__(self, response: http.client.HTTPResponse, body: bytes):
        self.status = response.status
        self.headers = response.getheaders()
        self.body = body

    def header(self, name: str):
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return values[0] if values else None

    def json(self):
        return json.loads(self.body)


def raw_request(
    port: int,
    method: str,
    target: bytes | str,
    headers=(),
    body: bytes = b"",
    timeout: float = 20,
    read_body: bool = True,
) -> Answer:
    """Send one request byte for byte (no header is added but Host) and read the answer."""
    if isinstance(target, str):
        target = target.encode("ascii")
    head = method.encode() + b" " + target + b" HTTP/1.1\r\n"
    names = {n.lower() for n, _ in headers}
    if "host" not in names:
        head += f"Host: 127.0.0.1:{port}\r\n".encode()
    for name, value in headers:
        head += f"{name}: {value}\r\n".encode("latin-1")
    if body and "content-length" not in names and "transfer-encoding" not in names:
        head += f"Content-Length: {len(body)}\r\n".encode()
    head += b"Connection: close\r\n\r\n" if "connection" not in names else b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return Answer(response, response.read() if read_body else b"")


def echo(shim, method="GET", target="/_standin/echo", headers=(), body=b"") -> dict:
    answer = raw_request(shim.port, method, target, headers, body)
    assert answer.status == 200, (answer.status, answer.body[:300])
    return answer.json()


def upstream_headers(info: dict) -> dict[str, str]:
    """The headers the stand-in received, by lower-case name."""
    return {name.lower(): value for name, value in info["headers"]}


# --- a hand-written upstream ---------------------------------------------------------------


class RawUpstream:
    """An HTTP/1.1 server answering by path with exactly the bytes a test needs.

    Connections are kept alive and numbered; ``events`` records what happened
    (``(connection, what, detail)``) for the tests to check.
    """

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.events: list[tuple[int, str, object]] = []
        self.stream_ended = threading.Event()
        self._count = 0
        self._lock = threading.Lock()
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self._closing = True
        self.listener.close()

    def record(self, number, what, detail=None):
        with self._lock:
            self.events.append((number, what, detail))

    def _accept(self):
        while not self._closing:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._count += 1
                number = self._count
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn, number):
        reader = conn.makefile("rb")
        served = 0
        try:
            while True:
                line = reader.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while (header := reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = reader.read(int(headers.get("content-length", "0")))
                self.record(number, "request", (method, target, len(body)))
                self.last_target = target
                keep = getattr(
                    self, "answer_" + target.strip("/").split("?")[0].replace("-", "_"), self.answer_default
                )(conn, number, served)
                served += 1
                if not keep:
                    return
        except OSError:
            return
        finally:
            reader.close()
            conn.close()

    # Each answer_* writes a response and returns True to keep the connection open.

    def answer_default(self, conn, number, served):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
        return True

    def answer_conn(self, conn, number, served):
        body = str(number).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        return True

    def answer_drop_if_reused(self, conn, number, served):
        if served:  # as if the server had closed this idle connection as the request arrived
            self.record(number, "dropped")
            return False
        return self.answer_conn(conn, number, served)

    HOP_RESPONSE = (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/plain\r\n"
        b"Set-Cookie: a=1; Path=/\r\n"
        b"X-CamelCase-Header: v1\r\n"
        b"Set-Cookie: b=2; Path=/; HttpOnly\r\n"
        b'ETag: "abc"\r\n'
        b'WWW-Authenticate: Basic realm="Pydio API"\r\n'
        b"Set-Cookie: c=3\r\n"
        b"Cache-Control: no-cache\r\n"
        b"Cache-Control: private\r\n"
        b"Connection: keep-alive, X-Hop-Resp\r\n"
        b"X-Hop-Resp: secret\r\n"
        b"Keep-Alive: timeout=5, max=100\r\n"
        b'Proxy-Authenticate: Basic realm="proxy"\r\n'
        b"Proxy-Foo: x\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Upgrade: example/1\r\n"
        b"Server: raw-upstream\r\n"
        b"Date: Mon, 01 Jan 2001 00:00:00 GMT\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"\r\n"
        b"6\r\nhello \r\n5\r\nworld\r\n0\r\nX-Checksum: 1\r\n\r\n"
    )

    def answer_hop(self, conn, number, served):
        conn.sendall(self.HOP_RESPONSE)
        return True

    def answer_headers_only(self, conn, number, served):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n")
        return False  # and closes: not one byte of the announced body

    FRAMINGS = {
        "te_and_length": b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "two_lengths": b"Content-Length: 2\r\nContent-Length: 7\r\n\r\nsmuggle",
        "bare_cr": b"X-Note: a\rSet-Cookie: injected=1\r\nContent-Length: 2\r\n\r\nok",
        "name_space": b"Bad Name: x\r\nContent-Length: 2\r\n\r\nok",
    }

    def answer_framing(self, conn, number, served):
        kind = self.last_target.split("kind=", 1)[1]
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + self.FRAMINGS[kind])
        return False

    def answer_truncate_length(self, conn, number, served):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 30000)
        return False

    def answer_truncate_chunked(self, conn, number, served):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n")
        return False

    def answer_stall(self, conn, number, served):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"s" * 10)
        time.sleep(5)  # beyond the shim's 2 s read timeout
        return False

    def answer_stream_slow(self, conn, number, served):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
        block, sent = b"z" * 16384, 0
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                conn.sendall(block)
                sent += len(block)
                time.sleep(0.005)
            self.record(number, "stream never interrupted", sent)
        except OSError as exc:
            self.record(number, "stream write failed", (sent, time.monotonic(), exc.__class__.__name__))
        self.stream_ended.set()
        return False


# --- methods -------------------------------------------------------------------------------

WEBDAV_XML = b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
METHODS = [
    # method, body, extra headers that must arrive too
    ("GET", b"", {}),
    ("HEAD", b"", {}),
    ("POST", b"a=1&b=%C3%A9", {"Content-Type": "application/x-www-form-urlencoded"}),
    ("PUT", os.urandom(70000), {"Content-Type": "application/octet-stream"}),
    ("DELETE", b"", {}),
    ("OPTIONS", b"", {}),
    ("PATCH", b'{"x": 1}', {"Content-Type": "application/json"}),
    ("PROPFIND", WEBDAV_XML, {"Depth": "1", "Content-Type": "application/xml"}),
    ("PROPPATCH", WEBDAV_XML.replace(b"propfind", b"propertyupdate"), {"Content-Type": "application/xml"}),
    ("MKCOL", b"", {}),
    ("COPY", b"", {"Destination": "http://files.example/shares/b", "Overwrite": "F", "Depth": "infinity"}),
    ("MOVE", b"", {"Destination": "http://files.example/shares/c", "Overwrite": "T"}),
    (
        "LOCK",
        b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope></D:lockinfo>',
        {"Timeout": "Second-60", "Content-Type": "application/xml"},
    ),
    ("UNLOCK", b"", {"Lock-Token": "<opaquelocktoken:e71d4fae-5dec-22d6-fea5-00a0c91e6be4>"}),
]


@pytest.mark.parametrize("method,body,extra", METHODS, ids=[m[0] for m in METHODS])
def test_each_method_reaches_the_upstream_with_its_body(shim, standin, method, body, extra):
    target = f"/_standin/echo/{method.lower()}?m={method}"
    standin.log.clear()
    answer = raw_request(shim.port, method, target, list(extra.items()), body)
    assert answer.status == 200
    assert list(standin.log) == [(method, target)]
    if method == "HEAD":
        assert answer.body == b""
        assert answer.header("Content-Type") == "application/json"  # the headers of the GET answer, no body
        return
    info = answer.json()
    assert info["method"] == method
    assert info["request_uri"] == target
    assert info["body_length"] == len(body)
    assert info["body_md5"] == hashlib.md5(body).hexdigest()
    received = upstream_headers(info)
    for name, value in extra.items():
        assert received[name.lower()] == value
    if body:
        assert received["content-length"] == str(len(body))
    assert "transfer-encoding" not in received


# --- the request target ---------------------------------------------------------------------

TARGETS = [
    "/_standin/echo/a%2Fb",
    "/_standin/echo/a%2fb",  # lower-case escapes are not normalised
    "/_standin/echo/100%25/%2525",
    "/_standin/echo/a+b%20c+",
    "/_standin/echo/%7E~user/%7e",
    "/_standin/echo/caf%C3%A9/%c3%a9",
    "/_standin/echo/50%/x%2Fy",  # a stray % must not make %2F into %252F
    "/_standin/echo//double//slash/",
    "/_standin/echo/a;p=1/b",
    "/_standin/echo/[1]{2}|3^4`5\"6<7>8\\9!$&'()*,:@",
    "/_standin/echo/x?q=a+b&r=%2F&s=%zz&t[]=1&u=caf%C3%A9&v=%7e&w=a%2bb&=&&x",
    "/_standin/echo/x?path=/a/b?c=d",
    "/_standin/echo/empty-query?",  # "/x?" and "/x" are different targets
]


@pytest.mark.parametrize("target", TARGETS)
def test_request_target_arrives_byte_for_byte(shim, target):
    assert echo(shim, "GET", target)["request_uri"] == target


def test_absolute_form_target_arrives_as_its_path(shim):
    info = echo(shim, "GET", f"http://127.0.0.1:{shim.port}/_standin/echo/abs%2F?x=%7e")
    assert info["request_uri"] == "/_standin/echo/abs%2F?x=%7e"


def test_raw_non_ascii_target_is_refused_by_gunicorn(shim, standin):
    # RFC 9112: a request target is printable ASCII.  gunicorn answers 400
    # itself; nothing reaches the shim or the legacy server.
    standin.log.clear()
    answer = raw_request(shim.port, "GET", b"/_standin/echo/caf\xc3\xa9")
    assert answer.status == 400
    assert list(standin.log) == []


def test_raw_non_ascii_target_is_percent_encoded_under_other_servers(standin):
    # A WSGI server that accepts raw bytes >= 0x80 in the target hands them over
    # as latin-1 characters of RAW_URI (or REQUEST_URI).  http.client can only
    # write ASCII, so the shim sends each such byte as %XX, upper case: UTF-8
    # "é" (C3 A9) arrives as %C3%A9, a lone latin-1 byte E9 as %E9.  Everything
    # else, lower-case escapes included, is untouched.  (Werkzeug's development
    # server is no witness here: it re-encodes such targets to UTF-8 itself.)
    settings = config_module.load(
        environ={"PYDIO_SHIM_UPSTREAM_URL": standin.url, "PYDIO_SHIM_DATABASE_URL": standin.db_url}
    )
    app = create_app(settings)
    raw_uri = b"/_standin/echo/caf\xc3\xa9%2F?n=\xe9&m=%e9".decode("latin-1")
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": raw_uri,
        "SCRIPT_NAME": "",
        "PATH_INFO": "/_standin/echo/caf\xc3\xa9/",
        "QUERY_STRING": raw_uri.partition("?")[2],
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "localhost",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
    }
    statuses = []
    result = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    try:
        body = b"".join(result)
    finally:
        result.close()
    assert statuses == ["200 OK"]
    assert json.loads(body)["request_uri"] == "/_standin/echo/caf%C3%A9%2F?n=%E9&m=%e9"


# --- headers -------------------------------------------------------------------------------

CLIENT_HEADERS = [
    ("User-Agent", "PydioSync/1.6"),
    ("Accept", "*/*"),
    ("Cookie", "AjaXplorer=abc123; other=1"),
    ("Authorization", ALICE),
    ("X-Custom-Thing", "a, b"),
    ("If-None-Match", '"x"'),
    ("Content-Type", "text/plain"),
    ("Pydio-Auth-Token", "tok"),
]
HOP_BY_HOP_REQUEST = [
    ("Connection", "keep-alive, X-Hop-Req"),
    ("X-Hop-Req", "secret"),
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Upgrade", "example/1"),
    ("Proxy-Authorization", "Basic cHJveHk6cHJveHk="),
    ("Proxy-Connection", "keep-alive"),
    ("Proxy", "http://evil.example:3128"),  # httpoxy: would become HTTP_PROXY in PHP
]


def test_end_to_end_headers_pass_and_hop_by_hop_ones_do_not(shim, standin):
    info = echo(shim, "POST", "/_standin/echo/h", CLIENT_HEADERS + HOP_BY_HOP_REQUEST, b"hello")
    received = upstream_headers(info)
    expected = {name.lower(): value for name, value in CLIENT_HEADERS}
    expected.update(
        {
            "host": standin.url.split("//", 1)[1],
            "content-length": "5",
            "x-forwarded-for": "127.0.0.1",
            "x-forwarded-proto": "http",
            "x-forwarded-host": f"127.0.0.1:{shim.port}",
            "x-forwarded-prefix": "/",
        }
    )
    # Exactly these: nothing dropped, nothing added (no User-Agent or
    # Accept-Encoding of the shim's own, no Connection, no Proxy).
    assert received == expected


def test_no_header_is_added_for_the_client(shim, standin):
    info = echo(shim, "GET", "/_standin/echo/bare", [])
    assert set(upstream_headers(info)) == {
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-prefix",
    }


def test_forwarding_headers_from_a_trusted_proxy_are_extended(shim):
    info = echo(
        shim,
        "GET",
        "/_standin/echo/fwd",
        [
            ("X-Forwarded-For", "203.0.113.7, 198.51.100.2"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "files.example.org"),
            ("X-Forwarded-Port", "443"),
            ("Forwarded", "for=203.0.113.7"),
            ("X-Real-IP", "203.0.113.7"),
        ],
    )
    received = upstream_headers(info)
    assert received["x-forwarded-for"] == "203.0.113.7, 198.51.100.2, 127.0.0.1"
    assert received["x-forwarded-proto"] == "https"
    assert received["x-forwarded-host"] == "files.example.org"
    assert received["x-forwarded-prefix"] == "/"
    assert received["x-forwarded-port"] == "443"
    assert received["forwarded"] == "for=203.0.113.7"
    assert received["x-real-ip"] == "203.0.113.7"


def test_forwarding_headers_from_an_untrusted_client_are_replaced(untrusted_shim):
    info = echo(
        untrusted_shim,
        "GET",
        "/pydio/_standin/echo/fwd",
        [
            ("Host", "shim.example:8080"),
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Prefix", "/evil"),
            ("X-Forwarded-Port", "443"),
            ("Forwarded", "for=203.0.113.7;proto=https"),
            ("X-Real-IP", "203.0.113.7"),
        ],
    )
    assert info["request_uri"] == "/_standin/echo/fwd"
    received = upstream_headers(info)
    assert received["x-forwarded-for"] == "127.0.0.1"
    # "http": gunicorn too ignores X-Forwarded-Proto from this client, because
    # conf/gunicorn.conf.py trusts the same proxies as the shim.
    assert received["x-forwarded-proto"] == "http"
    assert received["x-forwarded-host"] == "shim.example:8080"
    assert received["x-forwarded-prefix"] == "/pydio"
    assert not {"x-forwarded-port", "forwarded", "x-real-ip"} & set(received)


def test_response_headers_pass_in_order_and_hop_by_hop_ones_do_not(raw_shim):
    answer = raw_request(raw_shim.port, "GET", "/hop")
    assert answer.status == 200
    assert answer.body == b"hello world"
    names = [name for name, _ in answer.headers]
    assert [v for n, v in answer.headers if n == "Set-Cookie"] == ["a=1; Path=/", "b=2; Path=/; HttpOnly", "c=3"]
    assert [v for n, v in answer.headers if n == "Cache-Control"] == ["no-cache", "private"]
    # Names keep their case.
    assert answer.header("X-CamelCase-Header") == "v1" and "X-CamelCase-Header" in names
    assert "ETag" in names and "WWW-Authenticate" in names
    lowered = {name.lower() for name in names}
    assert not {"x-hop-resp", "keep-alive", "proxy-authenticate", "proxy-foo", "trailer", "upgrade"} & lowered
    assert "raw-upstream" not in (answer.header("Server") or "")
    assert "2001" not in (answer.header("Date") or "")
    assert "x-hop-resp" not in (answer.header("Connection") or "").lower()


def test_response_headers_filter():
    # The same filtering without gunicorn, which also drops some hop-by-hop
    # headers itself and would hide a gap in the shim's own list.
    parsed = http.client.parse_headers(io.BytesIO(RawUpstream.HOP_RESPONSE.split(b"\r\n", 1)[1]))
    kept = header_policy.response_headers(parsed.items())
    assert kept == [
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "a=1; Path=/"),
        ("X-CamelCase-Header", "v1"),
        ("Set-Cookie", "b=2; Path=/; HttpOnly"),
        ("ETag", '"abc"'),
        ("WWW-Authenticate", 'Basic realm="Pydio API"'),
        ("Set-Cookie", "c=3"),
        ("Cache-Control", "no-cache"),
        ("Cache-Control", "private"),
    ]
    for bad in (
        [("Bad Name", "x")],
        [("X-Ok", "a\x00b")],
        [("X-Cr", "a\rb")],
        [("Content-Length", "2, 3")],
        [("Transfer-Encoding", "chunked"), ("Content-Length", "2")],
    ):
        with pytest.raises(UpstreamError):
            check_framing(bad)
    check_framing([("X-Fine", "é"), ("Content-Length", "2")])


def test_set_cookie_and_cookie_round_trip_through_the_login(shim, standin):
    answer = raw_request(
        shim.port,
        "POST",
        "/?get_action=login",
        [("Content-Type", "application/x-www-form-urlencoded")],
        f"userid=alice&password={USERS['alice'][0]}".encode(),
    )
    assert answer.status == 302
    cookie = answer.header("Set-Cookie")
    assert cookie.startswith("AjaXplorer=") and "HttpOnly" in cookie
    page = raw_request(shim.port, "GET", "/", [("Cookie", cookie.split(";")[0])])
    assert b'data-user="alice"' in page.body


# --- bodies ----------------------------------------------------------------------------------


def test_sized_body_arrives_with_its_content_length(shim):
    body = os.urandom(300_000)
    info = echo(shim, "PUT", "/_standin/echo/sized", [], body)
    received = upstream_headers(info)
    assert received["content-length"] == str(len(body))
    assert "transfer-encoding" not in received
    assert (info["body_length"], info["body_md5"]) == (len(body), hashlib.md5(body).hexdigest())


def chunked(data: bytes, sizes=(1, 10, 4093, 65536, 100_000)) -> bytes:
    out, position, turn = [], 0, 0
    while position < len(data):
        size = sizes[turn % len(sizes)]
        piece = data[position : position + size]
        out.append(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
        position += size
        turn += 1
    return b"".join(out) + b"0\r\n\r\n"


@pytest.mark.parametrize("size", [0, 5, 3 * 1024 * 1024 + 7])
def test_chunked_upload_arrives_with_a_content_length(shim, size):
    data = os.urandom(size)
    info = echo(shim, "POST", "/_standin/echo/chunked", [("Transfer-Encoding", "chunked")], chunked(data))
    received = upstream_headers(info)
    assert received["content-length"] == str(size)
    assert "transfer-encoding" not in received
    assert (info["body_length"], info["body_md5"]) == (size, hashlib.md5(data).hexdigest())


def test_body_shorter_than_its_content_length_is_a_400(shim):
    with socket.create_connection(("127.0.0.1", shim.port), timeout=10) as sock:
        sock.sendall(b"PUT /_standin/echo/short HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"q" * 1000)
        sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock, method="PUT")
        response.begin()
        assert response.status == 400
        assert b"request body" in response.read()


# --- downloads: ranges, HEAD, conditional requests ----------------------------------------------


@pytest.fixture(scope="module")
def blob(standin):
    data = os.urandom(300_000)
    directory = os.path.join(str(standin.base), "data", "files")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "blob.bin"), "wb") as fh:
        fh.write(data)
    return data


DOWNLOAD = "/api/0/download/blob.bin"


def test_download_whole_file(shim, blob):
    answer = raw_request(shim.port, "GET", DOWNLOAD, [("Authorization", ALICE)])
    assert answer.status == 200
    assert answer.body == blob
    assert answer.header("Content-Length") == str(len(blob))
    assert answer.header("ETag") and answer.header("Last-Modified")


def test_range_download(shim, blob):
    answer = raw_request(shim.port, "GET", DOWNLOAD, [("Authorization", ALICE), ("Range", "bytes=1000-1999")])
    assert answer.status == 206
    assert answer.header("Content-Range") == f"bytes 1000-1999/{len(blob)}"
    assert answer.body == blob[1000:2000]
    tail = raw_request(shim.port, "GET", DOWNLOAD, [("Authorization", ALICE), ("Range", "bytes=-100")])
    assert (tail.status, tail.body) == (206, blob[-100:])


def test_head_has_the_headers_and_no_body_and_keeps_the_connection_usable(shim, blob):
    conn = http.client.HTTPConnection("127.0.0.1", shim.port, timeout=5)
    conn.request("HEAD", DOWNLOAD, headers={"Authorization": ALICE})
    head = conn.getresponse()
    assert head.status == 200
    assert head.getheader("Content-Length") == str(len(blob))
    assert head.read() == b""
    sock = conn.sock
    started = time.monotonic()
    conn.request("GET", DOWNLOAD, headers={"Authorization": ALICE})
    get = conn.getresponse()
    assert get.read() == blob
    assert conn.sock is sock  # the same client connection: the HEAD answer was framed right
    assert time.monotonic() - started < 3
    conn.close()


def test_conditional_requests_give_304(shim, blob):
    full = raw_request(shim.port, "GET", DOWNLOAD, [("Authorization", ALICE)])
    etag, modified = full.header("ETag"), full.header("Last-Modified")
    by_etag = raw_request(shim.port, "GET", DOWNLOAD, [("Authorization", ALICE), ("If-None-Match", etag)])
    assert (by_etag.status, by_etag.body) == (304, b"")
    assert by_etag.header("ETag") == etag
    by_date = raw_request(shim.port, "GET", DOWNLOAD, [("Authorization", ALICE), ("If-Modified-Since", modified)])
    assert (by_date.status, by_date.body) == (304, b"")
    changed = raw_request(shim.port, "GET", DOWNLOAD, [("Authorization", ALICE), ("If-None-Match", '"other"')])
    assert (changed.status, changed.body) == (200, blob)


# --- upstream failures --------------------------------------------------------------------------


def test_dead_upstream_gives_502(standin):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    server = start_shim(standin, f"http://127.0.0.1:{closed_port}", PYDIO_SHIM_LOG_LEVEL="WARNING")
    try:
        answer = raw_request(server.port, "GET", "/api/0/ls/")
        assert answer.status == 502
        assert answer.header("Content-Type").startswith("text/plain")
        assert b"cannot connect to the legacy server" in answer.body
        assert len(answer.body) < 300
        # At level WARNING the error is logged, the access line is not.
        assert wait_for_log(server, "ERROR shim.proxy: upstream unreachable for GET /api/0/ls/")
        assert "shim.access" not in server.log()
    finally:
        server.stop()


def test_slow_upstream_gives_504(standin):
    server = start_shim(standin, PYDIO_SHIM_UPSTREAM_READ_TIMEOUT="0.5")
    try:
        started = time.monotonic()
        answer = raw_request(server.port, "GET", "/_standin/slow?s=3")
        elapsed = time.monotonic() - started
        assert answer.status == 504
        assert answer.header("Content-Type").startswith("text/plain")
        assert b"did not answer in time" in answer.body
        assert elapsed < 2.5
    finally:
        server.stop()


def read_until_closed(sock, limit=10_000_000) -> bytes:
    data = bytearray()
    while len(data) < limit:
        chunk = sock.recv(65536)  # a timeout here fails the test: the connection must close
        if not chunk:
            break
        data += chunk
    return bytes(data)


def test_upstream_closing_mid_body_truncates_the_client_response(raw_shim):
    with socket.create_connection(("127.0.0.1", raw_shim.port), timeout=10) as sock:
        sock.sendall(b"GET /truncate-length HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: only a close ends it
        raw = read_until_closed(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Content-Length: 100000" in head
    assert body == b"a" * 30000  # what the upstream sent, then the connection closed


def test_upstream_closing_mid_chunked_body_truncates_the_client_response(raw_shim):
    conn = http.client.HTTPConnection("127.0.0.1", raw_shim.port, timeout=10)
    conn.request("GET", "/truncate-chunked")
    response = conn.getresponse()
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead) as info:
        response.read()
    assert info.value.partial == b"hello world"
    conn.close()


def test_upstream_stalling_mid_body_truncates_the_client_response(raw_shim):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", raw_shim.port), timeout=10) as sock:
        sock.sendall(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = read_until_closed(sock)
    assert raw.partition(b"\r\n\r\n")[2] == b"s" * 10
    assert 1.5 < time.monotonic() - started < 4.5  # the 2 s read timeout, not the upstream's 5 s


def test_client_leaving_mid_download_closes_the_upstream_connection(raw_shim, raw_upstream):
    raw_upstream.stream_ended.clear()
    with socket.create_connection(("127.0.0.1", raw_shim.port), timeout=10) as sock:
        sock.sendall(b"GET /stream-slow HTTP/1.1\r\nHost: x\r\n\r\n")
        received = 0
        while received < 256 * 1024:
            received += len(sock.recv(65536))
    left_at = time.monotonic()
    assert raw_upstream.stream_ended.wait(15), "the upstream kept streaming to a client that left"
    [(what, detail)] = [(w, d) for _, w, d in raw_upstream.events if w.startswith("stream")]
    assert what == "stream write failed"
    sent, failed_at, _error = detail
    assert failed_at - left_at < 5
    assert sent < 64 * 1024 * 1024


# --- connection reuse ---------------------------------------------------------------------------


def proxied_lines(server) -> int:
    return server.log().count(" kind=proxy ")


def settled(server, before: int, requests_made: int = 1) -> None:
    """Wait until the shim has closed *requests_made* more forwarded requests since *before* log lines.

    The worker returns the upstream connection to its pool when it closes the
    response, just after the client has the answer, and writes the access line
    right after that: so a line logged means the connection is back.
    """
    deadline = time.monotonic() + 10
    while proxied_lines(server) < before + requests_made:
        assert time.monotonic() < deadline, "the shim did not finish the request"
        time.sleep(0.02)


def test_upstream_connections_are_reused(raw_shim):
    before = proxied_lines(raw_shim)
    first = raw_request(raw_shim.port, "GET", "/conn").body
    settled(raw_shim, before)
    second = raw_request(raw_shim.port, "GET", "/conn").body
    assert first == second


def test_closed_kept_alive_connection_is_retried_for_a_get_only(raw_shim, raw_upstream):
    before = proxied_lines(raw_shim)
    raw_request(raw_shim.port, "GET", "/conn")  # leaves an idle connection in the pool
    settled(raw_shim, before)
    raw_upstream.events.clear()
    answer = raw_request(raw_shim.port, "GET", "/drop-if-reused")
    assert answer.status == 200
    dropped = [n for n, what, _ in raw_upstream.events if what == "dropped"]
    assert dropped and answer.body != str(dropped[0]).encode()  # answered on a new connection

    before = proxied_lines(raw_shim)
    raw_request(raw_shim.port, "GET", "/conn")
    settled(raw_shim, before)
    raw_upstream.events.clear()
    answer = raw_request(raw_shim.port, "POST", "/drop-if-reused", [], b"payload")
    posts = [d for _, what, d in raw_upstream.events if what == "request" and d[0] == "POST"]
    assert posts == [("POST", "/drop-if-reused", 7)]  # a POST is never sent twice
    dropped = [n for n, what, _ in raw_upstream.events if what == "dropped"]
    # Sent on the kept-alive connection, which the upstream drops: the client
    # gets the error.  (On a loaded machine the pool may have retired that
    # connection first; the POST then went once, on a new one, and succeeded.)
    assert answer.status == (502 if dropped else 200)


# --- the production gunicorn configuration --------------------------------------------------


def wait_for_log(server, text: str, seconds: float = 5) -> bool:
    # The access line is written when the server closes the response, just
    # after the client has it.
    deadline = time.monotonic() + seconds
    while text not in server.log():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_shim_logs_go_to_stderr_at_the_configured_level(shim):
    raw_request(shim.port, "GET", "/_standin/echo/logged?auth_hash=secret")
    assert wait_for_log(shim, "INFO shim.access: 127.0.0.1 GET /_standin/echo/logged?auth_hash=*** status=200")
    assert "secret" not in shim.log()
    # gunicorn's own access log is off (the shim writes one), nothing goes to stdout.
    assert shim.stdout() == ""


def test_a_bad_setting_stops_gunicorn_at_once_with_one_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYDIO_SHIM_")}
    env["PYDIO_SHIM_DATABASE_URL"] = "sqlite:///unused.db"
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", CONF, "--check-config", "shim.wsgi:application"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "upstream.url" in lines[0]


# --- units ---------------------------------------------------------------------------------------


def test_request_body_rejects_a_bad_content_length():
    spool = Spool()
    for bad in ("-1", "1e3", "²", " 5", str(2**63), "9" * 40):
        with pytest.raises(RequestRefused):
            proxy.request_body({"CONTENT_LENGTH": bad, "wsgi.input": io.BytesIO(b"")}, spool)
    assert proxy.request_body({"wsgi.input": io.BytesIO(b"")}, spool) is None
    assert proxy.request_body({"CONTENT_LENGTH": "0", "wsgi.input": io.BytesIO(b"")}, spool) == b""


@pytest.mark.parametrize("length", [str(2**63), str(2**64 + 5), "9" * 30])
def test_a_content_length_beyond_any_body_is_a_400(shim, standin, length):
    standin.log.clear()
    answer = raw_request(shim.port, "POST", "/_standin/echo/huge", [("Content-Length", length)])
    assert (answer.status, answer.body) == (400, b"Content-Length too large\n")
    assert list(standin.log) == []
    assert "Traceback" not in shim.log()


# --- failures of the upstream's answer stay inside the shim -----------------------------------------


def wait_for_access_line(server, text: str, seconds: float = 10) -> str:
    deadline = time.monotonic() + seconds
    while True:
        line = next((ln for ln in server.log().splitlines() if "shim.access" in ln and text in ln), None)
        if line is not None:
            return line
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.02)


def test_an_upstream_closing_after_its_headers_is_a_clean_502_with_no_secret_logged(raw_shim):
    """Before the first body byte nothing is sent yet: the shim answers 502 itself and logs what the client got."""
    target = "/headers-only?auth_token=TOKSECRET&auth_hash=0123:HASHSECRET"
    answer = raw_request(raw_shim.port, "GET", target)
    assert answer.status == 502 and answer.body.startswith(b"pydio-shim: ")
    line = wait_for_access_line(raw_shim, "GET /headers-only?auth_token=***&auth_hash=***")
    assert "status=502" in line
    log = raw_shim.log()
    assert "TOKSECRET" not in log and "HASHSECRET" not in log
    assert "Error handling request" not in log


# gunicorn quotes the whole request line when the target is not origin-form
# ("Invalid HTTP request line: 'GET x?...'"), a header line it cannot split
# whole, and what follows a request line's second blank as its version (a
# secret's tail, when the secret holds a blank).
@pytest.mark.parametrize(
    "head, logged",
    [
        (
            b"GET x?auth_token=TOKSECRET3&auth_hash=1:HASHSECRET3 HTTP/1.1\r\nHost: x",
            "'GET x?auth_token=***&auth_hash=*** HTTP/1.1'",
        ),
        (b"GET *?a=1&token=TOKSECRET4 HTTP/1.1\r\nHost: x", "'GET *?a=1&token=*** HTTP/1.1'"),
        (b"GET /x HTTP/1.1\r\nHost: x\r\nAuthorization Basic SECRET5", "Invalid HTTP Header: '***'"),
        # a credential wrapped onto a line of its own (base64 encoders wrap at 76)
        (b"GET /x HTTP/1.1\r\nHost: x\r\nAuthorization: Basic\r\nU0VDUkVUMThTRUNSRVQxOA", "Invalid HTTP Header: '***'"),
        (b"GET /x?auth_token=TOKSECRET6&auth_hash=1:HASHSECRET6 HTTP/1.1 junk\r\nHost: x", "Version: '***'"),
        # a blank inside a secret (a broken client): its tail lands in the version gunicorn names
        (b"GET /x?auth_token=TOK SECRET7 HTTP/1.1\r\nHost: x", "Invalid HTTP Version: '***'"),
        (b"GET x?auth_token=TOK SECRET8 HTTP/1.1\r\nHost: x", "'GET x?*** HTTP/1.1'"),
        (b"GET /x?auth_token=TOK SECRET9\r\nHost: x", "Invalid HTTP Version: '***'"),
        (b"GET /x?auth_token=TOK SECRET10\tHTTP/1.1\r\nHost: x", "Invalid HTTP Version: '***'"),
        (b"GET /x?auth token=SECRET11 HTTP/1.1\r\nHost: x", "Invalid HTTP Version: '***'"),
        (b"GET x?a=1 /y?token=SECRET12 HTTP/1.1\r\nHost: x", "'GET x?*** HTTP/1.1'"),
        (b"GET /x HTTP/1.1\r\nHost: x\r\n:Authorization: Basic SECRET13", "Invalid HTTP Header: '***'"),
    ],
)
def test_gunicorn_s_own_messages_never_show_a_secret(raw_shim, head, logged):
    """A request gunicorn itself refuses is logged by gunicorn: masked too."""
    with socket.create_connection(("127.0.0.1", raw_shim.port), timeout=10) as sock:
        sock.sendall(head + b"\r\n\r\n")
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 400")
    assert wait_for_log(raw_shim, logged), raw_shim.log()[-2000:]
    assert "SECRET" not in raw_shim.log() and "U0VDUkVU" not in raw_shim.log()


@pytest.mark.parametrize(
    "leftover, logged",
    [
        (b"get_action=login&userid=admin&password=SECRET14\r\n\r\n", "Invalid HTTP request line: '***'"),
        (b"userid=admin&password=SECRET 15 x\r\n\r\n", "Invalid HTTP method: '***'"),
        (b"SECRET16 HORSE\r\n\r\n", "Invalid HTTP request line: '***'"),
    ],
)
def test_a_body_left_on_the_connection_never_shows_its_secrets(raw_shim, leftover, logged):
    """Bytes after a request without a body are read as the next request line, which gunicorn logs."""
    with socket.create_connection(("127.0.0.1", raw_shim.port), timeout=10) as sock:
        sock.sendall(b"GET /_shim/health HTTP/1.1\r\nHost: x\r\n\r\n" + leftover)
        reply = b""
        while b"HTTP/1.1 400" not in reply and (chunk := sock.recv(65536)):
            reply += chunk
    assert b"HTTP/1.1 400" in reply
    assert wait_for_log(raw_shim, logged), raw_shim.log()[-2000:]
    assert "SECRET" not in raw_shim.log()


def test_a_chunked_body_the_shim_does_not_read_never_shows_its_secrets(raw_shim):
    """gunicorn reads an unread body to keep the connection: body bytes where a chunk size belongs are logged."""
    with socket.create_connection(("127.0.0.1", raw_shim.port), timeout=10) as sock:
        sock.sendall(
            b"POST /_shim/health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"userid=admin&password=SECRET17\r\n\r\n"
        )
        while sock.recv(65536):
            pass
    assert wait_for_log(raw_shim, "Invalid chunk size: b'***'"), raw_shim.log()[-2000:]
    assert "SECRET" not in raw_shim.log()


def test_the_tail_of_a_body_glued_to_the_next_request_line_is_not_logged(raw_shim):
    """A Content-Length counted in characters leaves a body's last byte before the next request's method."""
    body = "userid=jörg&password=hunterS".encode()
    with socket.create_connection(("127.0.0.1", raw_shim.port), timeout=10) as sock:
        sock.sendall(
            b"POST /_shim/health HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {len(body) - 1}\r\n\r\n".encode()
            + body
            + b"GET /_shim/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        while sock.recv(65536):
            pass
    wait_for_access_line(raw_shim, "*** /_shim/health")
    assert "SGET" not in raw_shim.log()


@pytest.mark.parametrize("kind", sorted(RawUpstream.FRAMINGS))
def test_an_answer_whose_framing_reads_two_ways_is_refused(raw_shim, kind):
    answer = raw_request(raw_shim.port, "GET", f"/framing?kind={kind}")
    assert answer.status == 502, (kind, answer.headers, answer.body)
    assert answer.body.startswith(b"pydio-shim: the legacy server sent ")
    assert not any(name.lower() == "set-cookie" for name, _ in answer.headers)


@pytest.mark.parametrize("host", ['evil.example"><script>alert(1)</script>', "a b", "x/y", "h:1:2", "", "é.example"])
def test_a_host_header_that_is_not_a_host_name_never_reaches_a_rewritten_url(untrusted_shim, host):
    """Under /pydio the login redirect and the boot page are rewritten: with a forged Host they become paths."""
    answer = raw_request(
        untrusted_shim.port,
        "POST",
        "/pydio/?get_action=login",
        [("Host", host), ("Content-Type", "application/x-www-form-urlencoded")],
        b"userid=alice&password=alice-secret",
    )
    assert answer.status == 302
    assert answer.header("Location") == "/pydio/"
    page = raw_request(untrusted_shim.port, "GET", "/pydio/", [("Host", host)])
    assert page.status == 200 and b"<script>alert" not in page.body and b"127.0.0.1" not in page.body
    assert b'<base href="/pydio/"' in page.body


def test_a_valid_host_is_kept_in_rewritten_urls(untrusted_shim):
    answer = raw_request(untrusted_shim.port, "GET", "/pydio/", [("Host", "files.example.org:8443")])
    assert b'"http://files.example.org:8443/pydio/index.php"' in answer.body


# --- chunked bodies within limits; forwarded requests within bounds ---------------------------------


@pytest.fixture(scope="module")
def capped_shim(standin, tmp_path_factory):
    spool_dir = tmp_path_factory.mktemp("spool")
    server = start_shim(
        standin, PYDIO_SHIM_PROXY_MAX_SPOOLED_BODY=str(2 * 1024 * 1024), PYDIO_SHIM_PROXY_SPOOL_DIR=str(spool_dir)
    )
    server.spool_dir = spool_dir
    yield server
    server.stop()


def test_a_chunked_body_over_the_cap_is_a_413_and_leaves_nothing_behind(capped_shim, standin):
    standin.log.clear()
    data = os.urandom(3 * 1024 * 1024)
    answer = raw_request(
        capped_shim.port, "POST", "/_standin/echo/big", [("Transfer-Encoding", "chunked")], chunked(data)
    )
    assert answer.status == 413 and b"may not exceed 2097152 bytes" in answer.body
    assert list(standin.log) == []
    assert list(capped_shim.spool_dir.iterdir()) == []
    small = os.urandom(1024 * 1024 + 5)  # below the cap: spooled (partly on disk), forwarded with its length
    info = echo(capped_shim, "POST", "/_standin/echo/ok", [("Transfer-Encoding", "chunked")], chunked(small))
    assert (info["body_length"], info["body_md5"]) == (len(small), hashlib.md5(small).hexdigest())
    assert list(capped_shim.spool_dir.iterdir()) == []


def test_spooled_bodies_together_stay_within_the_spool_space(standin, tmp_path):
    server = start_shim(standin, PYDIO_SHIM_PROXY_SPOOL_SPACE=str(1024 * 1024))
    try:
        answer = raw_request(
            server.port,
            "POST",
            "/_standin/echo/x",
            [("Transfer-Encoding", "chunked")],
            chunked(os.urandom(1024 * 1024 + 1)),
        )
        assert answer.status == 503 and b"too many chunked uploads at once" in answer.body
        assert (
            echo(server, "POST", "/_standin/echo/y", [("Transfer-Encoding", "chunked")], chunked(b"fits"))[
                "body_length"
            ]
            == 4
        )  # the space was given back
    finally:
        server.stop()


def test_an_upload_that_would_fill_the_disk_is_refused(standin):
    server = start_shim(standin, PYDIO_SHIM_PROXY_SPOOL_MIN_FREE=str(2**62))  # more than any disk has
    try:
        answer = raw_request(
            server.port,
            "POST",
            "/_standin/echo/x",
            [("Transfer-Encoding", "chunked")],
            chunked(os.urandom(2 * 1024 * 1024)),
        )
        assert answer.status == 503 and b"not enough free disk space" in answer.body
        small = echo(server, "POST", "/_standin/echo/y", [("Transfer-Encoding", "chunked")], chunked(b"in memory"))
        assert small["body_length"] == 9  # a body that stays in memory takes no disk
    finally:
        server.stop()


def test_requests_waiting_on_a_silent_upstream_are_bounded_and_cached_feed_polls_keep_answering(standin):
    """A legacy server that stops answering: at most proxy.max_upstream_requests wait on it, the rest get
    503 at once, and a feed poll whose authorization is cached is answered by the shim meanwhile."""
    server = start_shim(standin, PYDIO_SHIM_PROXY_MAX_UPSTREAM_REQUESTS="3", PYDIO_SHIM_LOG_LEVEL="WARNING")
    alice = ("alice", "alice-secret")
    try:
        assert requests.get(server.url + "/api/0/changes/0?stream=true", auth=alice).status_code == 200  # cached
        waiting = [
            threading.Thread(target=lambda: requests.get(server.url + "/_standin/slow?s=4", timeout=30))
            for _ in range(3)
        ]
        for thread in waiting:
            thread.start()
        time.sleep(1)  # the three are now waiting on the legacy server
        started = time.monotonic()
        refused = requests.get(server.url + "/api/0/ls/", auth=alice, timeout=30)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
        assert b"too many requests are waiting on the legacy server" in refused.content
        poll = requests.get(server.url + "/api/0/changes/0?stream=true", auth=alice, timeout=30)
        assert poll.status_code == 200 and b"LAST_SEQ" in poll.content
        assert time.monotonic() - started < 2
        for thread in waiting:
            thread.join(30)
        assert requests.get(server.url + "/api/0/ls/", auth=alice, timeout=30).status_code == 200  # slots back
    finally:
        server.stop()


def test_a_path_php_would_not_route_is_forwarded_as_sent(untrusted_shim, standin):
    """Under /pydio, //api/... is not PHP's API: it gets the legacy server's answer, not the feed."""
    standin.log.clear()
    answer = raw_request(
        untrusted_shim.port,
        "GET",
        "/pydio//api/default/changes/0?stream=true",
        [("Authorization", "Basic " + base64.b64encode(b"alice:alice-secret").decode())],
    )
    assert answer.status == 404 and b"LAST_SEQ" not in answer.body, (
        answer.status,
        answer.body[:200],
        list(standin.log),
    )
    assert list(standin.log) == [("GET", "//api/default/changes/0?stream=true")]
