"""The HTTP transport's own reading of an answer's header block and framing.

The header block is parsed by :func:`shim.http_response.parse_header_block`
instead of http.client's email parser.  The property test holds it to what
the stdlib parser (with obsolete folding undone) makes of every block that
parser reads cleanly; the socket tests check the framing http.client reads
the body by, from those fields.
"""

from __future__ import annotations

import http.client
import io
import re
import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim.http_response import parse_header_block
from shim.http_upstream import HttpUpstream, request_head
from shim.responses import RawResponse
from shim.upstream import UpstreamError

# --- the parse alone ---------------------------------------------------------------------------


def lines_of(block: bytes) -> list[bytes]:
    return io.BytesIO(block).readlines()


@pytest.mark.parametrize(
    "block, fields",
    [
        (
            b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n",
            [("Content-Type", "text/plain"), ("Content-Length", "2")],
        ),
        (b"Set-Cookie: a=1\r\nset-cookie: b=2\r\n\r\n", [("Set-Cookie", "a=1"), ("set-cookie", "b=2")]),
        (b"X-Long: one\r\n two\r\n\tthree\r\n\r\n", [("X-Long", "one two three")]),
        (b"X-Pad:   \t value  \r\n\r\n", [("X-Pad", "value  ")]),
        (b"X-Bare: lf\nX-Next: 1\n\n", [("X-Bare", "lf"), ("X-Next", "1")]),
        (b"X-Empty:\r\n\r\n", [("X-Empty", "")]),
        (b"X-Latin: caf\xe9\r\n\r\n", [("X-Latin", "caf\xe9")]),
        (b"X-Colon: a: b\r\n\r\n", [("X-Colon", "a: b")]),
        (b"\r\n", []),
    ],
)
def test_fields_are_read_as_sent(block, fields):
    assert parse_header_block(lines_of(block)) == (fields, None)


@pytest.mark.parametrize(
    "block, problem",
    [
        (b"X-Note: a\rSet-Cookie: injected=1\r\n\r\n", "a bare CR"),
        (b"Bad Name: x\r\n\r\n", "an invalid header name"),
        (b"no colon here\r\n\r\n", "an invalid header name"),
        (b": no name\r\n\r\n", "an invalid header name"),
        (b"X-A : spaced\r\n\r\n", "an invalid header name"),
        (b" folded: first\r\nX-A: 1\r\n\r\n", "line folding before the first header"),
        (b"X-A: 1\r\nFrom nobody\r\n\r\n", "an invalid header name"),
        (b"X-Cut: before EOF\r\n", "the header block broke off"),
        (b"Set-Cookie: s=1; Secure; Http", "the header block broke off"),
        (b"", "the header block broke off"),
    ],
)
def test_a_block_that_could_pass_for_something_else_is_named(block, problem):
    fields, found = parse_header_block(lines_of(block))
    assert found is not None and found.startswith(problem)


_FOLD = re.compile(r"\r?\n[ \t]*")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def stdlib_reading(block: bytes):
    """What http.client's email parser makes of *block*, folding undone; None when it is not clean."""
    message = http.client.parse_headers(io.BytesIO(block))
    if message.defects or message.get_payload():
        return None
    return [(name, _FOLD.sub(" ", value)) for name, value in message.items()]


# Names the stdlib refuses too ("Bad Name", "X-A "): the block is then not clean for either.
names = st.sampled_from(
    ["Content-Type", "set-cookie", "X-A", "ETag", "Location", "x_y", "A1!#$%&'*+.^`|~", "Bad Name", "X-A "]
)
values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=20)
folds = st.lists(st.tuples(st.sampled_from([" ", "\t", "  ", " \t"]), values), max_size=2)
endings = st.sampled_from([b"\r\n", b"\n"])


@st.composite
def header_blocks(draw):
    block = b" folded before any field" + draw(endings) if draw(st.integers(0, 9)) == 0 else b""
    for _ in range(draw(st.integers(0, 6))):
        ending = draw(endings)
        block += draw(names).encode() + b":" + draw(st.sampled_from([b"", b" ", b"\t ", b"  "]))
        block += draw(values).encode("latin-1") + ending
        for blank, more in draw(folds):
            block += (blank + more).encode("latin-1") + draw(endings)
    return block + draw(endings)


@settings(max_examples=400, deadline=None)
@given(header_blocks())
def test_every_clean_block_reads_as_the_stdlib_reads_it(block):
    expected = stdlib_reading(block)
    fields, problem = parse_header_block(lines_of(block))
    if expected is None:
        assert problem is not None
    else:
        assert problem is None
        assert fields == expected


# --- framing, over a socket ----------------------------------------------------------------------


class ScriptedServer:
    """Keeps each connection open and answers each request by its path, in timed parts.

    *answers* maps a path to its parts: ``(seconds to wait first, bytes)``.
    """

    def __init__(self, answers: dict[str, list[tuple[float, bytes]]]):
        self.answers = answers
        self.connections = 0
        self.seen: list[str] = []  # request paths, in the order they arrived
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            self._answer(conn)
        except OSError:  # the client cut the connection (a refused answer is aborted)
            pass

    def _answer(self, conn):
        pending = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in pending:
                    part = conn.recv(65536)
                    if not part:
                        return
                    pending += part
                head, _, pending = pending.partition(b"\r\n\r\n")
                # The body too (as a server reads it): closing on unread bytes would send a reset.
                length = next(
                    (int(line[15:]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
                )
                while len(pending) < length:
                    part = conn.recv(65536)
                    if not part:
                        return
                    pending += part
                pending = pending[length:]
                path = head.split(b" ")[1].decode()
                self.seen.append(path)
                for pause, data in self.answers[path]:
                    time.sleep(pause)
                    if data is None:  # the script says: close here
                        return
                    conn.sendall(data)

    def close(self):
        self.sock.close()


def exchange(answer: bytes, method: str = "GET"):
    """Send one request to a server that answers *answer* and closes."""
    server = ScriptedServer({"/x": [(0, answer), (0, None)]})
    upstream = HttpUpstream(f"http://127.0.0.1:{server.port}", read_timeout=5)
    try:
        response = upstream.send(method, "/x", [])
        try:
            return response.status, response.reason, response.headers, b"".join(response.body)
        finally:
            response.close()
    finally:
        upstream.close()
        server.close()


def test_chunked_body_is_read_to_its_last_chunk():
    status, _, headers, body = exchange(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNOT-BODY"
    )
    assert (status, body) == (200, b"hello world")
    assert headers == [("Transfer-Encoding", "chunked")]


def test_content_length_bounds_the_body():
    assert exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef")[3] == b"abc"


def test_no_length_reads_to_the_close():
    assert exchange(b"HTTP/1.0 200 OK\r\nX-A: 1\r\n\r\nuntil the end")[3] == b"until the end"


def test_an_interim_100_answer_is_skipped():
    status, reason, headers, body = exchange(
        b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    )
    assert (status, reason, headers, body) == (201, "Created", [("Content-Length", "2")], b"ok")


@pytest.mark.parametrize("method, status", [("HEAD", 200), ("GET", 204), ("GET", 304)])
def test_bodyless_answers_read_no_body(method, status):
    answer = f"HTTP/1.1 {status} X\r\nContent-Length: 5\r\n\r\n".encode()
    assert exchange(answer, method)[3] == b""


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % n for n in range(101)) + b"\r\n",
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Note: a\rSet-Cookie: x=1\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n folded first\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
    ],
    ids=["101 headers", "70,000-byte line", "bare CR", "folding first", "length and chunked", "HTTP/2"],
)
def test_an_answer_that_cannot_be_relayed_safely_is_an_upstream_error(answer):
    with pytest.raises(UpstreamError):
        exchange(answer)


# --- answers on kept-alive connections -----------------------------------------------------------


@pytest.fixture
def scripted():
    servers = []

    def start(answers):
        server = ScriptedServer(answers)
        servers.append(server)
        return server, HttpUpstream(f"http://127.0.0.1:{server.port}", read_timeout=5)

    yield start
    for server in servers:
        server.close()


def fetch(upstream, path):
    response = upstream.send("GET", path, [])
    try:
        return response.status, response.headers, b"".join(response.body)
    finally:
        response.close()


@pytest.mark.parametrize(
    "interim", [b"HTTP/1.1 102 Processing\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"]
)
def test_an_interim_answer_is_never_taken_for_the_final_one(scripted, interim):
    """Else the final answer would stay on the kept-alive connection, for the next request to get."""
    server, upstream = scripted(
        {
            "/alice": [(0, interim), (0.3, b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nalice-secret")],
            "/bob": [(0, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbob")],
        }
    )
    assert fetch(upstream, "/alice") == (200, [("Content-Length", "12")], b"alice-secret")
    assert fetch(upstream, "/bob") == (200, [("Content-Length", "3")], b"bob")
    assert server.connections == 1  # the same connection served both, each its own answer


def test_switching_protocols_is_refused_and_its_connection_dropped(scripted):
    server, upstream = scripted(
        {
            "/up": [(0, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nother protocol")],
            "/next": [(0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")],
        }
    )
    with pytest.raises(UpstreamError, match="101"):
        upstream.send("GET", "/up", [])
    assert fetch(upstream, "/next")[2] == b"ok"
    assert server.connections == 2


def test_endless_interim_answers_are_cut_short(scripted):
    _, upstream = scripted({"/x": [(0, b"HTTP/1.1 100 Continue\r\n\r\n" * 11 + b"HTTP/1.1 200 OK\r\n\r\n")]})
    with pytest.raises(UpstreamError, match="interim"):
        upstream.send("GET", "/x", [])


@pytest.mark.parametrize("reason", [b"OK\x01", b"OK\x00", b"O\x7fK", b"OK\rX-Injected: 1"])
def test_a_control_character_in_the_reason_phrase_is_refused(scripted, reason):
    _, upstream = scripted({"/x": [(0, b"HTTP/1.1 200 " + reason + b"\r\nContent-Length: 2\r\n\r\nok")]})
    with pytest.raises(UpstreamError, match="status line"):
        upstream.send("GET", "/x", [])


@pytest.mark.parametrize(
    "coding",
    [b"Transfer-Encoding: chunked \r\n", b"Transfer-Encoding: Chunked\r\n", b"Transfer-Encoding:\r\n chunked\r\n"],
)
def test_chunked_is_read_however_it_is_spelled(scripted, coding):
    _, upstream = scripted({"/x": [(0, b"HTTP/1.1 200 OK\r\n" + coding + b"\r\n5\r\nhello\r\n0\r\n\r\n")]})
    assert fetch(upstream, "/x")[2] == b"hello"


@pytest.mark.parametrize(
    "coding",
    [b"Transfer-Encoding: gzip, chunked\r\n", b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
     b"Transfer-Encoding: gzip\r\n"],
)  # fmt: skip
def test_a_transfer_coding_other_than_chunked_is_refused(scripted, coding):
    """The field is hop-by-hop: the client would get bytes coded in a way nobody tells it."""
    _, upstream = scripted({"/x": [(0, b"HTTP/1.1 200 OK\r\n" + coding + b"\r\n5\r\nhello\r\n0\r\n\r\n")]})
    with pytest.raises(UpstreamError, match="transfer coding"):
        upstream.send("GET", "/x", [])


def test_every_connection_field_counts(scripted):
    server, upstream = scripted(
        {"/x": [(0, b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")]}
    )
    fetch(upstream, "/x")
    fetch(upstream, "/x")
    assert server.connections == 2


@pytest.mark.parametrize("length", [b"\x855", b"5\xa0", b"\x0b5"])
def test_a_content_length_padded_with_anything_but_blanks_is_refused(scripted, length):
    _, upstream = scripted({"/x": [(0, b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\nhello")]})
    with pytest.raises(UpstreamError):
        upstream.send("GET", "/x", [])


def test_a_header_block_cut_by_the_close_is_refused():
    with pytest.raises(UpstreamError, match="broke off"):
        exchange(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nSet-Cookie: s=abc; Path=/; Secure; Http")


@pytest.mark.parametrize("pieces", [[b"body"], []])
def test_a_status_the_server_refuses_still_gives_back_what_the_body_holds(pieces):
    """gunicorn's start_response raises on a status it cannot write: the body (a connection, a slot) is closed."""
    closed = []

    class Body:
        def __iter__(self):
            return iter(pieces)

        def close(self):
            closed.append(True)

    def start_response(status, headers):
        raise ValueError(f"invalid status {status!r}")

    with pytest.raises(ValueError):
        RawResponse(200, [], Body(), reason="OK")({}, start_response)
    assert closed == [True]


def test_an_interim_status_framed_like_a_final_answer_is_refused(scripted):
    """What nginx sends for a script's http_response_code(103): the script's output must never be parsed."""
    _, upstream = scripted(
        {
            "/x": [
                (0, b"HTTP/1.1 103\r\nConnection: close\r\nSet-Cookie: sess=ALICE\r\n\r\n"),
                (0, b"HTTP/1.1 200 OK\r\nSet-Cookie: injected=1\r\nContent-Length: 5\r\n\r\nevil!"),
            ]
        }
    )
    with pytest.raises(UpstreamError, match="interim"):
        upstream.send("GET", "/x", [])


@pytest.mark.parametrize(
    "answer",
    [[(0, b"HTTP/1.1 103 Early Hints\r\n\r\n"), (0, None)], [(0, b"garbage\r\n"), (0, None)]],
    ids=["closed after an interim answer", "a garbled status line"],
)
def test_a_request_whose_answer_began_is_never_sent_again(scripted, answer):
    """Only a kept-alive connection closed before one byte of the answer makes a retry: the request did not arrive."""
    server, upstream = scripted({"/warm": [(0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")], "/put": answer})
    assert fetch(upstream, "/warm")[2] == b"ok"
    with pytest.raises(UpstreamError):
        upstream.send("PUT", "/put", [], b"data")
    assert server.seen == ["/warm", "/put"]


def test_a_204_announcing_a_body_does_not_stay_in_the_pool(scripted):
    server, upstream = scripted(
        {
            "/empty": [(0, b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n"), (0.3, b"evil")],
            "/next": [(0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")],
        }
    )
    assert fetch(upstream, "/empty")[2] == b""
    time.sleep(0.4)
    assert fetch(upstream, "/next") == (200, [("Content-Length", "2")], b"ok")
    assert server.connections == 2


@pytest.mark.parametrize(
    "name, value",
    [("X-A", "plain"), ("X-A", "tab\there"), ("X-A", "nul\x00passes"), ("X-A", "folded\r\n more"), ("X!#$", "v"),
     ("X-A", "caf\xe9"), ("X-A", "\r\n\t"), ("X-A", "")],
)  # fmt: skip
def test_the_request_head_takes_what_http_client_takes(name, value):
    """The same verdicts as http.client's putheader(), which wrote each line before."""
    conn = http.client.HTTPConnection("example.org")
    conn.putrequest("GET", "/", skip_host=True, skip_accept_encoding=True)
    conn.putheader(name, value)  # would raise
    assert request_head("h", [(name, value)], None) == b"Host: h\r\n" + name.encode() + b": " + value.encode("latin-1")


@pytest.mark.parametrize(
    "name, value",
    [("X-A", "split\r\nSet-Cookie: x=1"), ("X-A", "lf\nonly"), ("X-A", "cr\ronly"), ("X:A", "v"), (" X", "v"),
     ("X\nY", "v"), ("X-A", "\u20ac"), ("\xa0Host", "evil"), ("X-\xe9", "v")],
)  # fmt: skip
def test_the_request_head_refuses_what_http_client_refuses(name, value):
    conn = http.client.HTTPConnection("example.org")
    conn.putrequest("GET", "/", skip_host=True, skip_accept_encoding=True)
    with pytest.raises(ValueError):
        conn.putheader(name, value)
    with pytest.raises(ValueError):
        request_head("h", [(name, value)], None)


def test_header_spellings_are_remembered_for_short_names_only():
    """Long distinct header names (8 KiB each are allowed) must not grow a worker's memory."""
    from shim import headers

    headers._request_header.cache_clear()
    environ = {"HTTP_X_" + "A" * 100: "long", "HTTP_USER_AGENT": "ua", "REMOTE_ADDR": "192.0.2.1"}
    out = headers.forwarded_headers(environ, "/", False)
    assert ("User-Agent", "ua") in out and ("X-" + "A" * 100).title() in [name for name, _ in out]
    assert headers._request_header.cache_info().currsize == 1  # User-Agent only
