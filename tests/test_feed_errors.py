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
from helpers import plain_engine, serve_app, shim_environ

from shim import db, feed

ALICE = ("alice", USERS["alice"][0])
#: Long enough paths that a few thousand rows are megabytes of feed.
LONG = "/" + "long-folder-name/" * 40


#: Loopback ports kept bound and never listened on, so that connecting is refused at once:
#: a port released again could be taken by another test process's server, and a
#: database client connecting to an HTTP server waits for a greeting until its timeout.
_CLOSED_PORTS: list[socket.socket] = []


def closed_port() -> int:
    """A loopback port on which every connection is refused, for the rest of this test process."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    _CLOSED_PORTS.append(held)
    return held.getsockname()[1]


def closed_database_url(engine_name: str, tmp_path) -> str:
    """A URL whose database cannot be reached: a closed loopback port, or a missing directory."""
    if engine_name == "sqlite":
        return f"sqlite:///{tmp_path}/no/such/dir/pydio.db"
    port = closed_port()
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
    assert response.content.startswith(b"pydio-shim: neither the database nor the legacy server answers")


def assert_legacy_answer(shim_url, standin, path):
    from_shim = requests.get(shim_url + path, auth=ALICE, timeout=30)
    from_legacy = requests.get(standin.url + path, auth=ALICE, timeout=30)
    assert (from_shim.status_code, from_shim.content) == (from_legacy.status_code, from_legacy.content)
    return from_shim


def health_of(url) -> dict:
    return requests.get(url + "/_shim/health", headers={"X-Forwarded-For": "127.0.0.1"}, timeout=30).json()


# --- the database out of reach: the legacy server answers ------------------------------------------


def test_database_unreachable_forwards_the_feed(standin, engine_name, tmp_path):
    """The shim fails alone: a database it cannot reach makes it forward, not answer 503."""
    fill_changes(standin.engine, 3)
    server = serve_shim(standin, closed_database_url(engine_name, tmp_path))
    try:
        standin.log.clear()
        response = assert_legacy_answer(server.url, standin, "/api/1/changes/0/?stream=true")
        assert response.status_code == 200 and response.content.endswith(b"\nLAST_SEQ:3")
        assert ("GET", "/api/1/changes/0/?stream=true") in list(standin.log)
        state = health_of(server.url)
        assert state["status"] == "degraded" and "forwarded to the legacy server" in state["reason"]
        metrics = requests.get(server.url + "/_shim/metrics").text
        assert "shim_feed_degraded_total 1.0" in metrics
    finally:
        server.stop()


def test_feed_database_unreachable_forwards_the_feed(standin, db_url, engine_name, tmp_path):
    """Conf tables readable, the feed's own database (``database.feed_url``) down."""
    fill_changes(standin.engine, 3)
    server = serve_shim(standin, db_url, closed_database_url(engine_name, tmp_path))
    try:
        assert_legacy_answer(server.url, standin, "/api/1/changes/0/?stream=true&flatten=true")
        assert health_of(server.url)["status"] == "degraded"
    finally:
        server.stop()


def test_503_only_when_the_legacy_server_cannot_answer_either(db_url, engine_name, tmp_path):
    dead_upstream = f"http://127.0.0.1:{closed_port()}"
    server = serve_app(shim_environ(dead_upstream, closed_database_url(engine_name, tmp_path)))
    try:
        assert_unavailable(requests.get(server.url + "/api/1/changes/0/?stream=true", auth=ALICE, timeout=30))
    finally:
        server.stop()


@pytest.mark.parametrize("engine_name", ["mysql"])
def test_the_shim_serves_again_once_the_database_answers(standin, db_url, tmp_path):
    """A wrong password: forwarded meanwhile; the right one back: served by the shim again, no restart."""
    from sqlalchemy.engine import make_url

    from shim import config as shim_config
    from shim import wsgi

    fill_changes(standin.engine, 3)
    admin = plain_engine(make_url(db_url).set(database=""))
    user, password = "shimtest_flaky", "right-password"
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY 'wrong-one'"))
        conn.execute(sa.text(f"GRANT SELECT ON {make_url(db_url).database}.* TO '{user}'@'%'"))
    url = make_url(db_url).set(username=user, password=password).render_as_string(hide_password=False)
    clock = [0.0]
    app = wsgi.create_app(shim_config.load(environ=shim_environ(standin.url, url)), clock=lambda: clock[0])
    from helpers import RunningShim

    server = RunningShim(app)
    try:
        path = "/api/1/changes/0/?stream=true"
        standin.log.clear()
        assert_legacy_answer(server.url, standin, path)
        assert health_of(server.url)["status"] == "degraded"
        with admin.begin() as conn:
            conn.execute(sa.text(f"ALTER USER '{user}'@'%' IDENTIFIED BY '{password}'"))
        forwarded = len([u for _, u in standin.log if "/changes/0/" in u])
        requests.get(server.url + path, auth=ALICE, timeout=30)  # within the retry interval: still forwarded
        assert len([u for _, u in standin.log if "/changes/0/" in u]) == forwarded + 1
        clock[0] += 5.1
        served = requests.get(server.url + path, auth=ALICE, timeout=30)
        assert served.status_code == 200 and served.content.endswith(b"\nLAST_SEQ:3")
        assert not any(u.startswith("/api/1/changes/0/") for _, u in list(standin.log)[-1:])  # the probe only
        assert health_of(server.url)["status"] == "ok"
    finally:
        server.stop()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'%'"))
        admin.dispose()


def test_a_query_failing_on_a_live_database_is_forwarded(standin, shim):
    """The changes table gone while the database answers: not the shim's to decide, the legacy server answers."""
    app, url = shim
    fill_changes(standin.engine, 3)
    feed_url = "/api/1/changes/0/?stream=true"
    first = requests.get(url + feed_url, auth=ALICE, timeout=30)
    assert first.status_code == 200 and first.content.endswith(b"\nLAST_SEQ:3")
    with standin.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE ajxp_changes"))
    assert_legacy_answer(url, standin, feed_url)
    assert app.feed_engine.pool.checkedout() == 0
    assert not app.database.degraded


# --- after the body started: no LAST_SEQ ----------------------------------------------------


class FailingCursor:
    """A real DB-API cursor that raises the driver's own *error* after *after* rows (a server gone mid-query)."""

    def __init__(self, real, error: type[Exception], after: int):
        self.real, self.error, self.after, self.served = real, error, after, 0

    def fetchmany(self, size: int):
        if self.served >= self.after:
            raise self.error("server closed the connection")
        rows = self.real.fetchmany(min(size, self.after - self.served))
        self.served += len(rows)
        return rows


class FailingResult:
    """The real result, failing after *after* rows.

    As the feed reads a result (:attr:`cursor`), the failure is the driver's
    *error*; iterated (rows handed on by the feed), it is SQLAlchemy's.
    """

    def __init__(self, real, after: int, error: type[Exception] | None = None):
        self.real = real
        self.after = after
        self.rows = self._rows()
        if error is not None:
            self.cursor = FailingCursor(real.cursor, error, after)

    def _rows(self):
        for n, row in enumerate(self.real):
            if n == self.after:
                raise sa.exc.OperationalError(
                    "SELECT ... FROM ajxp_changes", {}, ConnectionError("server closed the connection")
                )
            yield row

    def __iter__(self):
        return self.rows

    def __getattr__(self, name):  # what the feed reads of a result (fetchmany, cursor_strategy...)
        return getattr(self.real, name)


def test_rows_after_the_read_ahead_one_come_from_the_driver_itself(db_url):
    """The feed's fast path holds on every engine: SQLAlchemy's one read-ahead row, then the driver's tuples.

    Should SQLAlchemy ever read ahead differently, the feed still sends every
    row (the slow path), and this test names the change.
    """
    engine = db.create_engine(db_url)
    try:
        fill_changes(engine, 2500)
        statement, values = feed.feed_query_and_values("1-alice", 0, None)
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=feed.FETCH_ROWS).execute(statement, values)
            rows = list(feed.driver_rows(result))
            result.close()
        assert [r[0] for r in rows] == list(range(1, 2501))
        assert isinstance(rows[0], sa.Row)
        assert all(type(r) is tuple for r in rows[1:])
    finally:
        engine.dispose()


@pytest.mark.parametrize("stream,flatten", [(True, False), (True, True), (False, False), (False, True)])
def test_failure_mid_stream_never_ends_with_last_seq(db_url, stream, flatten):
    engine = db.create_engine(db_url)
    try:
        fill_changes(engine, 1400)
        params = feed.FeedParams(seq=0, stream=stream, flatten=flatten, filter=None)
        body = feed.FeedStream(engine, "1-alice", params, "recycle_bin")
        # After more rows than one fetch brings (PostgreSQL fetches 1000 at a time).
        body._result = FailingResult(body._result, after=1300, error=engine.dialect.loaded_dbapi.OperationalError)
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
    # MySQL's server finishes a SELECT once its rows fit in the socket buffers: give it more.
    rows = (20 if engine_name == "mysql" else 5) * feed.FETCH_ROWS
    try:
        fill_changes(engine, rows)
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
            # An unbuffered result: the server is still sending the SELECT's rows.  (This
            # query's own text matches the pattern too, hence the CONNECTION_ID() test.)
            with engine.connect() as other:
                assert (
                    other.execute(
                        sa.text(
                            "SELECT count(*) FROM information_schema.processlist WHERE db = DATABASE() "
                            "AND id <> CONNECTION_ID() AND command = 'Query' "
                            "AND info LIKE '%FROM ajxp_changes%'"
                        )
                    ).scalar()
                    == 1
                )
        body.close()
        assert engine.pool.checkedout() == 0
        assert body.rows_sent < rows
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


def test_failure_before_the_first_row_is_the_legacy_server_s_to_answer(standin, shim, monkeypatch, caplog):
    """The first fetch fails: the status line has not gone yet, so the request is still forwarded.

    Nothing escapes the WSGI iterable (the server would print its own page and
    log the request line), and the access line records what the client got.
    """
    _, url = shim
    fill_changes(standin.engine, 5)
    real_feed_rows = feed.feed_rows
    monkeypatch.setattr(feed, "feed_rows", lambda rows, *args: real_feed_rows(FailingResult(rows, after=0), *args))
    caplog.set_level("INFO", logger="shim.access")
    response = assert_legacy_answer(url, standin, "/api/1/changes/0/?stream=true")
    assert response.status_code == 200 and response.content.endswith(b"\nLAST_SEQ:5")
    deadline = time.monotonic() + 5  # the line is written when the server closes the response
    while not any(
        "/api/1/changes/0/?stream=true status=200" in r.getMessage() and "kind=proxy" in r.getMessage()
        for r in caplog.records
    ):
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


@pytest.mark.parametrize("engine_name", ["mysql"])
def test_a_character_the_genuine_utf8mb3_tables_cannot_compare_is_forwarded(empty_db_url, tmp_path):
    """Pydio's MySQL tables are utf8 (utf8mb3): a filter beyond U+FFFF fails the shim's query with
    "Illegal mix of collations" while the database is fine. PHP answers 200 with an empty feed; so must the shim."""
    from shim import schema
    from shim.demo.standin import LegacyStandin

    engine = db.create_engine(empty_db_url)
    with engine.begin() as conn:
        db.create_conf_tables(conn)
        schema.install_syncable_schema(conn)
        for table in ("ajxp_changes", "ajxp_index"):
            conn.execute(sa.text(f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb3 COLLATE utf8mb3_unicode_ci"))
    engine.dispose()
    # The legacy server connects in utf8, as Pydio does.
    standin = LegacyStandin(empty_db_url + "?charset=utf8", str(tmp_path / "data"))
    standin.add_user("alice", ALICE[1])
    from shim.demo.stack import ServerThread

    legacy = ServerThread(standin).start()
    standin.url = legacy.url
    server = serve_app(shim_environ(legacy.url, empty_db_url))
    try:
        assert requests.post(legacy.url + "/api/0/mkfile/plain.txt", auth=ALICE).ok
        path = "/api/0/changes/0?stream=true&filter=/%F0%9F%98%80"
        standin.log.clear()
        response = assert_legacy_answer(server.url, standin, path)
        assert response.status_code == 200 and response.content.startswith(b"\nLAST_SEQ:")
        assert len([u for _, u in standin.log if u == path]) == 2  # the shim forwarded it
        assert not server.app.database.degraded
    finally:
        server.stop()
        legacy.stop()
        standin.engine.dispose()


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_a_skipped_row_is_logged_once_and_counted_every_time(standin, shim, db_url, caplog):
    """One client polling a feed with an unprintable row: one warning in all, a metric that counts each skip."""
    app, url = shim
    insert_raw_paths(db_url, ["/before.txt", ("text", b"/latin1-caf\xe9.txt")])
    feed.SKIPPED.__init__()  # this process has not seen the row yet, whatever ran before
    caplog.set_level("WARNING", logger="shim.feed")
    for _ in range(5):
        assert requests.get(f"{url}/api/1/changes/0/?stream=true", auth=ALICE, timeout=30).status_code == 200
    warnings = [r for r in caplog.records if "skipped change" in r.getMessage()]
    assert len(warnings) == 1
    deadline = time.monotonic() + 5
    while "shim_feed_rows_skipped_total 5.0" not in requests.get(url + "/_shim/metrics").text:
        assert time.monotonic() < deadline, requests.get(url + "/_shim/metrics").text
        time.sleep(0.05)
