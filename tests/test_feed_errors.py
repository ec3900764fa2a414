"""The feed when things go wrong: database down, failing mid-stream, client gone, bad bytes.

A failure before the body starts is a short ``503``; a failure after it started
ends the body WITHOUT a ``LAST_SEQ`` line, so the client can never take a
truncated feed for a complete one; a client that goes away releases its
database connection; a stored path that is not UTF-8 is skipped, never a crash.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from base64 import b64encode

import pytest
import requests
import sqlalchemy as sa
from conftest import USERS
from helpers import serve_app, shim_environ

from shim import db, feed

ALICE = ("alice", USERS["alice"][0])
UNAVAILABLE = b"pydio-shim: the database is unavailable\n"
#: Long enough paths that a few thousand rows are megabytes of feed.
LONG = "/" + "long-folder-name/" * 40


def closed_database_url(engine_name: str, tmp_path) -> str:
    """A URL whose database cannot be reached: a closed loopback port, or a missing directory."""
    if engine_name == "sqlite":
        return f"sqlite:///{tmp_path}/no/such/dir/pydio.db"
    with socket.socket() as probe:  # a port nobody listens on: bind, read it, release it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if engine_name == "mysql":
        return f"mysql+pymysql://root@127.0.0.1:{port}/pydio"
    return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/pydio"


def serve_shim(standin, database_url: str, database_feed_url: str = ""):
    extra = {"database_feed_url": database_feed_url} if database_feed_url else {}
    return serve_app(shim_environ(standin.url, database_url, **extra))


@pytest.fixture
def shim(standin, db_url):
    server = serve_shim(standin, db_url)
    yield server.app, server.url
    server.stop()


def fill_changes(engine, count: int, identifier: str = "1-alice", path: str = LONG):
    """*count* create rows straight into ajxp_changes (the feed reads only that table and its join)."""
    rows = [
        {
            "repository_identifier": identifier,
            "node_id": n,
            "type": "create",
            "source": "NULL",
            "target": f"{path}file-{n:06d}.txt",
        }
        for n in range(1, count + 1)
    ]
    with engine.begin() as conn:
        for start in range(0, count, 2000):
            conn.execute(db.changes.insert(), rows[start : start + 2000])


def assert_unavailable(response):
    assert response.status_code == 503
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.headers["Retry-After"] == "5"
    assert response.content == UNAVAILABLE


# --- before the body: 503 -----------------------------------------------------------------


def test_database_unreachable_gives_503(standin, engine_name, tmp_path):
    server = serve_shim(standin, closed_database_url(engine_name, tmp_path))
    try:
        assert_unavailable(requests.get(server.url + "/api/1/changes/0/?stream=true", auth=ALICE, timeout=30))
    finally:
        server.stop()


def test_feed_database_unreachable_gives_503(standin, db_url, engine_name, tmp_path):
    """Conf tables readable, the feed's own database (``database.feed_url``) down."""
    server = serve_shim(standin, db_url, closed_database_url(engine_name, tmp_path))
    try:
        response = requests.get(server.url + "/api/1/changes/0/?stream=true&flatten=true", auth=ALICE, timeout=30)
        assert_unavailable(response)
    finally:
        server.stop()


def test_changes_table_dropped_gives_503(standin, shim):
    app, url = shim
    fill_changes(standin.engine, 3)
    feed_url = url + "/api/1/changes/0/?stream=true"
    first = requests.get(feed_url, auth=ALICE, timeout=30)
    assert first.status_code == 200 and first.content.endswith(b"\nLAST_SEQ:3")
    with standin.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE ajxp_changes"))
    assert_unavailable(requests.get(feed_url, auth=ALICE, timeout=30))
    assert app.feed_engine.pool.checkedout() == 0


# --- after the body started: no LAST_SEQ ----------------------------------------------------


class FailingResult:
    """The real result, raising the driver's error after *after* rows (a server gone mid-query)."""

    def __init__(self, real, after: int):
        self.real = real
        self.after = after

    def __iter__(self):
        for n, row in enumerate(self.real):
            if n == self.after:
                raise sa.exc.OperationalError(
                    "SELECT ... FROM ajxp_changes", {}, ConnectionError("server closed the connection")
                )
            yield row

    def close(self):
        self.real.close()


@pytest.mark.parametrize("stream,flatten", [(True, False), (True, True), (False, False), (False, True)])
def test_failure_mid_stream_never_ends_with_last_seq(db_url, stream, flatten):
    engine = db.create_engine(db_url)
    try:
        fill_changes(engine, 400)
        params = feed.FeedParams(seq=0, stream=stream, flatten=flatten, filter=None)
        body = feed.FeedStream(engine, "1-alice", params, "recycle_bin")
        body._result = FailingResult(body._result, after=300)
        received = []
        with pytest.raises(feed.FeedError):
            for chunk in body:
                received.append(chunk)
        output = b"".join(received)
        assert len(output) > feed.CHUNK_BYTES, "no chunk was sent before the failure: the test proves nothing"
        assert b"LAST_SEQ" not in output and b'"last_seq"' not in output
        body.close()
        assert engine.pool.checkedout() == 0
    finally:
        engine.dispose()


def test_failure_mid_stream_over_http(standin, shim, monkeypatch):
    """Through the server: the client gets part of the feed, an error, and no LAST_SEQ."""
    _, url = shim
    fill_changes(standin.engine, 400)
    real_feed_rows = feed.feed_rows

    def failing_feed_rows(rows, *args):
        return real_feed_rows(FailingResult(rows, after=300), *args)

    monkeypatch.setattr(feed, "feed_rows", failing_feed_rows)
    received = b""
    failed = False
    with requests.get(url + "/api/1/changes/0/?stream=true", auth=ALICE, stream=True, timeout=30) as response:
        assert response.status_code == 200
        try:
            for chunk in response.iter_content(4096):
                received += chunk
        except requests.exceptions.RequestException:
            failed = True
    assert len(received) > 0
    assert b"LAST_SEQ" not in received
    assert failed or not received.endswith(b"}"), "the truncated body looks complete"


# --- the client goes away -------------------------------------------------------------------


def test_close_mid_feed_releases_the_connection(db_url, engine_name):
    """A partly read feed holds one connection (its server-side cursor) until closed."""
    engine = db.create_engine(db_url)
    try:
        fill_changes(engine, 5 * feed.FETCH_ROWS)
        body = feed.FeedStream(engine, "1-alice", feed.FeedParams(0, True, False, None), "recycle_bin")
        chunks = iter(body)
        first = next(chunks)
        assert len(first) >= feed.CHUNK_BYTES
        assert engine.pool.checkedout() == 1
        if engine_name == "postgresql":
            # The rows come from a named (server-side) cursor, still open on the server.
            with engine.connect() as other:
                assert (
                    other.execute(
                        sa.text(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND state = 'idle in transaction' AND query LIKE 'FETCH FORWARD %'"
                        )
                    ).scalar()
                    == 1
                )
        elif engine_name == "mysql":
            # An unbuffered result: the server is still sending the SELECT's rows.
            with engine.connect() as other:
                assert (
                    other.execute(
                        sa.text(
                            "SELECT count(*) FROM information_schema.processlist WHERE db = DATABASE() "
                            "AND command = 'Query' AND info LIKE '%FROM ajxp_changes%'"
                        )
                    ).scalar()
                    == 1
                )
        body.close()
        assert engine.pool.checkedout() == 0
        assert body.rows_sent < 5 * feed.FETCH_ROWS
    finally:
        engine.dispose()


def test_client_disconnect_over_http_releases_the_connection(standin, shim):
    app, url = shim
    fill_changes(standin.engine, 20000)  # some 20 MB: more than the socket buffers hold
    host, port = url.removeprefix("http://").split(":")
    credentials = b64encode(f"{ALICE[0]}:{ALICE[1]}".encode()).decode()
    with socket.create_connection((host, int(port)), timeout=30) as client:
        client.sendall(
            (
                f"GET /api/1/changes/0/?stream=true HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Basic {credentials}\r\n\r\n"
            ).encode()
        )
        received = b""
        while len(received) < 256 * 1024:
            received += client.recv(65536)
        assert b" 200 " in received.split(b"\r\n", 1)[0]
        assert app.feed_engine.pool.checkedout() == 1
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset
    deadline = time.monotonic() + 30
    while app.feed_engine.pool.checkedout() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.feed_engine.pool.checkedout() == 0


# --- bytes that are not UTF-8 (SQLite only stores them) ------------------------------------

INSERT_INDEX = (
    "INSERT INTO ajxp_index (repository_identifier, node_path, bytesize, md5, mtime) "
    "VALUES ('1-alice', {}, 1, 'mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm', 1500000000)"
)


def insert_raw_paths(db_url: str, paths):
    """Index rows written through sqlite3 itself: str as TEXT, ("text", bytes) as TEXT holding
    those bytes, bytes as a BLOB."""
    raw = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    for path in paths:
        if isinstance(path, tuple):
            raw.execute(INSERT_INDEX.format("CAST(? AS TEXT)"), (path[1],))
        else:
            raw.execute(INSERT_INDEX.format("?"), (path,))
    raw.commit()
    raw.close()


def assert_valid_feeds(url: str, expected_targets, last_seq: int):
    for flatten in ("false", "true"):
        stream = requests.get(f"{url}/api/1/changes/0/?stream=true&flatten={flatten}", auth=ALICE, timeout=30)
        assert stream.status_code == 200
        lines = stream.content.split(b"\n")
        assert lines[-1] == f"LAST_SEQ:{last_seq}".encode()
        assert [json.loads(line)["target"] for line in lines[:-1]] == expected_targets
        whole = requests.get(f"{url}/api/1/changes/0/?flatten={flatten}", auth=ALICE, timeout=30)
        assert whole.status_code == 200
        assert [r["target"] for r in json.loads(whole.content)["changes"]] == expected_targets


@pytest.mark.parametrize("engine_name", ["sqlite"])  # MariaDB and PostgreSQL refuse such text
def test_path_not_utf8_is_skipped(standin, shim, db_url):
    _, url = shim
    insert_raw_paths(db_url, ["/before.txt", ("text", b"/latin1-caf\xe9.txt"), "/after-\u00e9.txt"])
    assert_valid_feeds(url, ["/before.txt", "/after-\u00e9.txt"], 3)
    # PHP's json_encode gives false for that row: it prints the separator and nothing
    # else, an empty line.  The shim leaves the row out; otherwise the same bytes.
    legacy = requests.get(f"{standin.url}/api/1/changes/0/?stream=true&flatten=false", auth=ALICE, timeout=30)
    ours = requests.get(f"{url}/api/1/changes/0/?stream=true&flatten=false", auth=ALICE, timeout=30)
    assert legacy.content.count(b"\n\n") == 1
    assert legacy.content.replace(b"\n\n", b"\n") == ours.content


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_path_stored_as_blob_is_read_as_text(shim, db_url):
    """SQLite hands a BLOB back as bytes: valid UTF-8 is printed, anything else skipped."""
    _, url = shim
    insert_raw_paths(db_url, ["/before.txt", b"/blob-\xff.txt", "/blob-\u00e9.txt".encode(), "/after.txt"])
    assert_valid_feeds(url, ["/before.txt", "/blob-\u00e9.txt", "/after.txt"], 4)


def test_filter_cut_inside_a_character_skips_the_row(standin, shim):
    """PHP cuts strlen("/docs") = 5 bytes off a non-delete row's node_path, whatever it is:
    "/日本/a.txt" loses "/", "日" and the first byte of "本", which is not UTF-8 any more.

    PHP prints an empty row there (json_encode gives false); the shim leaves the row out.
    """
    _, url = shim
    with standin.engine.begin() as conn:
        conn.execute(
            db.index.insert().values(
                node_path="/docs/a.txt", repository_identifier="1-alice", bytesize=1, md5="a" * 32, mtime=1_500_000_001
            )
        )
    with standin.engine.begin() as conn:
        conn.execute(db.index.update().where(db.index.c.node_id == 1).values(node_path="/日本/a.txt"))
    with standin.engine.begin() as conn:
        conn.execute(
            db.index.insert().values(
                node_path="/docs/b.txt", repository_identifier="1-alice", bytesize=2, md5="b" * 32, mtime=1_500_000_003
            )
        )
    query = "/api/1/changes/0/?stream=true&flatten=false&filter=/docs"
    ours = requests.get(url + query, auth=ALICE, timeout=30)
    assert ours.status_code == 200
    lines = ours.content.split(b"\n")
    assert lines[-1] == b"LAST_SEQ:3"
    rows = [json.loads(line) for line in lines[:-1]]
    # seq 1 (create of /docs/a.txt, node_path cut mid-character) is left out; seq 2 (moved
    # out of /docs: a delete, node_path false) and seq 3 stay.
    assert [(r["seq"], r["type"], r["source"], r["target"], r["node"]["node_path"]) for r in rows] == [
        (2, "delete", "/a.txt", "NULL", False),
        (3, "create", "NULL", "/b.txt", "/b.txt"),
    ]
    legacy = requests.get(standin.url + query, auth=ALICE, timeout=30)
    assert legacy.content == b"\n" + ours.content  # PHP: an empty first row, then the separator


def test_failure_before_the_first_row_is_a_clean_503(standin, shim, monkeypatch, caplog):
    """The database drops during the first fetch: the status line has not gone yet, so a 503 replaces it.

    Nothing escapes the WSGI iterable (the server would print its own page and
    log the request line), and the access line records what the client got.
    """
    _, url = shim
    fill_changes(standin.engine, 5)
    real_feed_rows = feed.feed_rows
    monkeypatch.setattr(feed, "feed_rows", lambda rows, *args: real_feed_rows(FailingResult(rows, after=0), *args))
    caplog.set_level("INFO", logger="shim.access")
    response = requests.get(url + "/api/1/changes/0/?stream=true", auth=ALICE, timeout=30)
    assert response.status_code == 503
    assert response.content == b"pydio-shim: the database is unavailable\n"
    deadline = time.monotonic() + 5  # the line is written when the server closes the response
    while not any("/api/1/changes/0/?stream=true status=503" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records if r.name == "shim.access"]
        time.sleep(0.02)


def test_a_corrupt_workspace_option_is_left_to_the_legacy_server(standin, shim, db_url):
    """``$phpserial$`` that phpserialize cannot read (an array as a key raises TypeError): forwarded."""
    with standin.engine.begin() as conn:
        conn.execute(db.repo.insert().values(uuid="corrupt", slug="corrupt", accessType="fs", isTemplate=False))
        conn.execute(
            db.repo_options.insert().values(uuid="corrupt", name="META_SOURCES", val=b"$phpserial$a:1:{a:0:{}i:1;}")
        )
        conn.execute(db.repo_options.insert().values(uuid="corrupt", name="PATH", val=b"AJXP_DATA_PATH/corrupt"))
    standin.set_right("alice", "corrupt", "rw")
    _, url = shim
    path = "/api/corrupt/changes/0?stream=true"
    standin.log.clear()
    from_shim = requests.get(url + path, auth=ALICE, timeout=30)
    assert from_shim.status_code != 500
    assert ("GET", path) in list(standin.log), "not forwarded"
    from_legacy = requests.get(standin.url + path, auth=ALICE, timeout=30)
    assert (from_shim.status_code, from_shim.content) == (from_legacy.status_code, from_legacy.content)
