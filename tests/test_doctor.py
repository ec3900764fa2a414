"""``pydio-shim doctor`` against real databases, the real stand-in and a served shim.

Each broken setup is built for real (a dropped trigger, a refused password, a
closed port, a stand-in whose rewrite rules or Authorization header are
broken) and the test asserts the doctor's specific finding and its exit status.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid

import phpserialize
import pytest
import requests
import sqlalchemy as sa
from conftest import USERS
from helpers import plain_engine

from shim import cli, db, doctor, schema, wsgi
from shim import config as config_module
from shim.demo.pydio_store import hash_password
from shim.demo.stack import ServerThread
from shim.demo.standin import LegacyStandin

DOCTOR_PASSWORD = USERS["alice"][0]


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path, upstream_url, database_url, upstream_prefix="/", public_prefix="", extra=""):
    path.write_text(
        f'[upstream]\nurl = "{upstream_url}"\nprefix = "{upstream_prefix}"\n'
        f'[public]\nprefix = "{public_prefix}"\n'
        f'[database]\nurl = "{database_url}"\n{extra}'
    )
    return str(path)


class Stack:
    """Started parts of one test, stopped in reverse order."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self._stops = []

    def legacy(self, database_url, prefix="/", users=True, **flags):
        app = LegacyStandin(database_url, str(self.tmp_path / "data"), prefix=prefix, **flags)
        if users:
            for login, (password, group) in USERS.items():
                app.add_user(login, password, group)
        server = ServerThread(app).start()
        self._stops.append(lambda: (server.stop(), app.engine.dispose()))
        app.url = server.url
        return app

    def shim(self, config_path):
        app = wsgi.create_app(config_module.load(config_path, environ={}))
        server = ServerThread(app).start()
        self._stops.append(lambda: (server.stop(), app.engine.dispose()))
        return server.url

    def stop(self):
        for stop in reversed(self._stops):
            stop()


@pytest.fixture
def stack(tmp_path):
    parts = Stack(tmp_path)
    yield parts
    parts.stop()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith("PYDIO_SHIM_"):
            monkeypatch.delenv(name)


def run_doctor(capsys, config_path, *args, password=None, monkeypatch=None):
    """Run the CLI in process with --json: (exit status, {check: finding}, findings)."""
    if password is not None:
        monkeypatch.setenv("PYDIO_SHIM_DOCTOR_PASSWORD", password)
    status = cli.main(["doctor", "--config", config_path, "--json", "--timeout", "5", *args])
    out, err = capsys.readouterr()
    for secret in ("alice-secret", "wrong-secret", "bad-db-password"):
        assert secret not in out and secret not in err
    findings = json.loads(out)
    assert all(set(f) == {"check", "title", "status", "seen", "fix"} for f in findings)
    return status, {f["check"]: f for f in findings}, findings


def healthy(stack, tmp_path, database_url, upstream_prefix="/", public_prefix=""):
    legacy = stack.legacy(database_url, prefix=upstream_prefix)
    config_path = write_config(tmp_path / "shim.toml", legacy.url, database_url, upstream_prefix, public_prefix)
    shim_url = stack.shim(config_path) + public_prefix
    return legacy, config_path, shim_url


def table_state(database_url):
    """Row counts, MAX(seq) and every row of the two meta.syncable tables."""
    engine = plain_engine(database_url)
    try:
        with engine.connect() as conn:
            return {
                "index": conn.execute(
                    sa.text(
                        "SELECT node_id, node_path, bytesize, md5, mtime, repository_identifier "
                        "FROM ajxp_index ORDER BY node_id"
                    )
                ).all(),
                "changes": conn.execute(
                    sa.text(
                        "SELECT seq, repository_identifier, node_id, type, source, target "
                        "FROM ajxp_changes ORDER BY seq"
                    )
                ).all(),
                "counts": (
                    conn.execute(sa.text("SELECT COUNT(*) FROM ajxp_index")).scalar(),
                    conn.execute(sa.text("SELECT COUNT(*) FROM ajxp_changes")).scalar(),
                ),
                "max_seq": conn.execute(sa.text("SELECT MAX(seq) FROM ajxp_changes")).scalar(),
            }
    finally:
        engine.dispose()


# --- a healthy install ------------------------------------------------------------------


def test_healthy_install_passes_every_check(stack, tmp_path, db_url, capsys, monkeypatch):
    legacy, config_path, shim_url = healthy(stack, tmp_path, db_url)
    status, by_check, findings = run_doctor(
        capsys,
        config_path,
        "--user",
        "alice",
        "--shim-url",
        shim_url,
        password=DOCTOR_PASSWORD,
        monkeypatch=monkeypatch,
    )
    assert status == 0
    assert [f["status"] for f in findings] == ["ok"] * len(findings)
    assert {
        "configuration",
        "database",
        "tables",
        "decision_tables",
        "triggers",
        "trigger_firing",
        "feed_index",
        "workspace:0",
        "workspace:1",
        "upstream",
        "api",
        "authorization",
        "shim",
        "end_to_end",
    } <= set(by_check)
    assert 'Basic realm="Pydio API"' in by_check["api"]["seen"]
    assert "ROLLED BACK" in by_check["trigger_firing"]["seen"]
    # End to end: the test file went through the shim to the legacy server and is gone again.
    name = re.search(r"/(pydio-shim-doctor-[0-9a-f]+\.txt)", by_check["end_to_end"]["seen"]).group(1)
    feed = requests.get(f"{shim_url}/api/my-files/changes/0", params={"stream": "true"}, auth=("alice", "alice-secret"))
    rows = [json.loads(line) for line in feed.text.split("\n") if line and not line.startswith("LAST_SEQ")]
    assert ("create", f"/{name}") in {(r["type"], r["target"]) for r in rows}
    assert ("delete", f"/{name}") in {(r["type"], r["source"]) for r in rows}
    with legacy.engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT COUNT(*) FROM ajxp_index WHERE node_path LIKE :p"), {"p": f"%{name}"}
        ).scalar()
    assert left == 0
    assert not any(name in files for _root, _dirs, files in os.walk(tmp_path / "data"))
    assert ("POST", "/api/my-files/mkfile/" + name) in set(legacy.log)


@pytest.mark.parametrize("engine_name", ["sqlite"])
@pytest.mark.parametrize("upstream_prefix,public_prefix", [("/pydio", ""), ("/", "/sync"), ("/pydio", "/files/sync")])
def test_text_report_end_to_end_under_prefixes(stack, tmp_path, db_url, upstream_prefix, public_prefix):
    legacy, config_path, shim_url = healthy(stack, tmp_path, db_url, upstream_prefix, public_prefix)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shim.cli",
            "doctor",
            "--config",
            config_path,
            "--user",
            "alice",
            "--shim-url",
            shim_url,
        ],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("PYDIO_SHIM_")},
            "PYDIO_SHIM_DOCTOR_PASSWORD": DOCTOR_PASSWORD,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().split("\n")
    assert lines[-1] == f"doctor: {len(lines) - 1} ok"
    assert all(line.startswith("ok       ") for line in lines[:-1])
    e2e = next(line for line in lines if line.startswith("ok       end to end"))
    assert f"through {shim_url}" in e2e
    assert "checking database reachable... ok" in result.stderr  # progress, on stderr
    assert "alice-secret" not in result.stdout + result.stderr
    # Every file operation reached the legacy server under its own prefix.
    mkfile = [uri for method, uri in legacy.log if "/mkfile/" in uri]
    assert mkfile and all(uri.startswith(upstream_prefix.rstrip("/") + "/api/my-files/mkfile/") for uri in mkfile)


# --- the database -------------------------------------------------------------------------


def test_no_tables(stack, tmp_path, empty_db_url, capsys, monkeypatch):
    empty = plain_engine(empty_db_url)
    with empty.connect():  # an existing database (for SQLite: the file exists), without any table
        pass
    empty.dispose()
    legacy = stack.legacy(f"sqlite:///{tmp_path}/legacy.db", users=False)
    legacy.install()
    config_path = write_config(tmp_path / "shim.toml", legacy.url, empty_db_url)
    status, by_check, _ = run_doctor(capsys, config_path, monkeypatch=monkeypatch)
    assert status == 1
    tables = by_check["tables"]
    assert tables["status"] == "failed"
    assert "no ajxp_changes, ajxp_index" in tables["seen"]
    assert "ajxp_users" in tables["seen"]
    assert f"pydio-shim install-schema --config {config_path}" in tables["fix"]
    assert by_check["triggers"]["status"] == "skipped"
    assert by_check["trigger_firing"]["status"] == "skipped"
    assert by_check["database"]["status"] == "ok"
    decisions = by_check["decision_tables"]
    assert decisions["status"] == "failed" and "ajxp_roles" in decisions["seen"]


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_the_tables_decisions_depend_on_must_be_readable(stack, tmp_path, db_url, capsys, monkeypatch):
    legacy, config_path, _shim_url = healthy(stack, tmp_path, db_url)
    status, by_check, _ = run_doctor(capsys, config_path, monkeypatch=monkeypatch)
    ok = by_check["decision_tables"]
    assert ok["status"] == "ok" and "ajxp_users 3, " in ok["seen"], ok
    with legacy.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE ajxp_plugin_configs RENAME COLUMN configs TO settings"))
    status, by_check, _ = run_doctor(capsys, config_path, monkeypatch=monkeypatch)
    unreadable = by_check["decision_tables"]
    assert status == 1 and unreadable["status"] == "failed"
    assert "reading them fails (no such column: configs)" in unreadable["seen"]
    assert "forwards every feed request" in unreadable["seen"]
    with legacy.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE ajxp_plugin_configs"))
    status, by_check, _ = run_doctor(capsys, config_path, monkeypatch=monkeypatch)
    assert by_check["decision_tables"]["seen"].startswith("no ajxp_plugin_configs: ")


def _drop_trigger(database_url, name):
    engine = db.create_engine(database_url)
    with engine.begin() as conn:
        dialect = db.dialect_of(conn)
        if dialect == "sqlite" and name == "LOG_UPDATE":
            conn.execute(sa.text("DROP TRIGGER LOG_UPDATE_PATH"))  # one of the pair is enough to break renames
        elif dialect == "postgresql":
            conn.execute(sa.text(f"DROP TRIGGER {name} ON ajxp_index"))
        else:
            conn.execute(sa.text(f"DROP TRIGGER {name}"))
        assert name not in schema.installed_triggers(conn)
    engine.dispose()


@pytest.mark.parametrize("trigger", ["LOG_INSERT", "LOG_UPDATE", "LOG_DELETE"])
def test_a_missing_trigger_is_named(stack, tmp_path, db_url, trigger, capsys, monkeypatch):
    legacy = stack.legacy(db_url)
    _drop_trigger(db_url, trigger)
    config_path = write_config(tmp_path / "shim.toml", legacy.url, db_url)
    status, by_check, _ = run_doctor(capsys, config_path, monkeypatch=monkeypatch)
    assert status == 1
    finding = by_check["triggers"]
    assert finding["status"] == "failed"
    missing = re.search(r"missing on \w+: (.*?): such", finding["seen"]).group(1)
    assert missing == f"{trigger} ({doctor.TRIGGER_ROLES[trigger]})"
    assert "install-schema" in finding["fix"]
    assert by_check["trigger_firing"]["status"] == "skipped"
    assert by_check["tables"]["status"] == "ok"


def test_trigger_test_leaves_the_tables_exactly_as_before(stack, tmp_path, db_url, capsys, monkeypatch):
    legacy = stack.legacy(db_url)
    auth = ("alice", "alice-secret")
    for action, data in (
        ("mkfile/a.txt", None),
        ("mkdir/docs", None),
        ("rename", {"file": "/a.txt", "filename_new": "b.txt"}),
    ):
        assert requests.post(f"{legacy.url}/api/default/{action}", data=data, auth=auth).ok
    before = table_state(db_url)
    assert before["counts"][1] == 3
    config_path = write_config(tmp_path / "shim.toml", legacy.url, db_url)
    status, by_check, _ = run_doctor(capsys, config_path, monkeypatch=monkeypatch)
    assert by_check["trigger_firing"]["status"] == "ok"
    assert "ROLLED BACK" in by_check["trigger_firing"]["seen"]
    assert status == 0  # the shim is not running: a warning, not a failure
    assert by_check["shim"]["status"] == "warning"
    assert table_state(db_url) == before
    # Nothing is left locked: the legacy server keeps writing, and its triggers still fire.
    assert requests.post(f"{legacy.url}/api/default/mkfile/c.txt", auth=auth).ok
    assert table_state(db_url)["counts"] == (before["counts"][0] + 1, before["counts"][1] + 1)


@pytest.mark.parametrize(
    "url,expected",
    [
        ("mysql+pymysql://root:bad-db-password@127.0.0.1:3306/mysql", "refused the password of user 'root'"),
        ("mysql+pymysql://root@127.0.0.1:3306/no_such_pydio_db", "there is no database 'no_such_pydio_db'"),
        ("postgresql+psycopg2://postgres@127.0.0.1:5432/no_such_pydio_db", "there is no database 'no_such_pydio_db'"),
        ("mysql+pymysql://root@127.0.0.1:{port}/pydio", "nothing accepts connections at 127.0.0.1:{port}"),
        ("postgresql+psycopg2://postgres:bad-db-password@127.0.0.1:{port}/pydio", "nothing accepts connections"),
    ],
    ids=["mysql-wrong-password", "mysql-unknown-db", "pg-unknown-db", "mysql-closed-port", "pg-closed-port"],
)
def test_database_failures_are_named(stack, tmp_path, url, expected, capsys, monkeypatch):
    port = closed_port()
    url, expected = url.format(port=port), expected.format(port=port)
    legacy = stack.legacy(f"sqlite:///{tmp_path}/legacy.db", users=False)
    legacy.install()
    config_path = write_config(tmp_path / "shim.toml", legacy.url, url)
    status, by_check, findings = run_doctor(capsys, config_path, monkeypatch=monkeypatch)
    assert status == 1
    database = by_check["database"]
    assert database["status"] == "failed"
    assert expected in database["seen"]
    assert "Traceback" not in database["seen"]
    assert "database.url" in database["fix"] or "database server" in database["fix"]
    for later in ("tables", "triggers", "trigger_firing", "workspaces"):
        assert by_check[later]["status"] == "skipped"
    assert by_check["upstream"]["status"] == "ok"  # the rest still runs


def test_a_missing_sqlite_file_is_not_created(stack, tmp_path, capsys, monkeypatch):
    legacy = stack.legacy(f"sqlite:///{tmp_path}/legacy.db", users=False)
    legacy.install()
    missing = tmp_path / "typo" / "pydio.db"
    config_path = write_config(tmp_path / "shim.toml", legacy.url, f"sqlite:///{missing}")
    status, by_check, _ = run_doctor(capsys, config_path, monkeypatch=monkeypatch)
    assert status == 1
    assert by_check["database"]["status"] == "failed"
    assert f"the SQLite file {missing} does not exist" in by_check["database"]["seen"]
    assert not missing.exists()


# --- the upstream ---------------------------------------------------------------------------


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_upstream_down(tmp_path, db_url, capsys, monkeypatch):
    port = closed_port()
    config_path = write_config(tmp_path / "shim.toml", f"http://127.0.0.1:{port}", db_url)
    status, by_check, _ = run_doctor(
        capsys, config_path, "--user", "alice", password=DOCTOR_PASSWORD, monkeypatch=monkeypatch
    )
    assert status == 1
    upstream = by_check["upstream"]
    assert upstream["status"] == "failed"
    assert f"cannot connect to http://127.0.0.1:{port}/" in upstream["seen"]
    assert "refused" in upstream["seen"].lower()
    assert "upstream.url" in upstream["fix"]
    assert by_check["api"]["status"] == "skipped"
    assert by_check["authorization"]["status"] == "skipped"
    assert by_check["end_to_end"]["status"] == "skipped"
    assert by_check["database"]["status"] == "ok"


@pytest.mark.parametrize("engine_name", ["sqlite"])
@pytest.mark.parametrize("prefix", ["/", "/pydio"])
def test_rewrite_broken(stack, tmp_path, db_url, prefix, capsys, monkeypatch):
    legacy = stack.legacy(db_url, prefix=prefix, rewrite_broken=True)
    config_path = write_config(tmp_path / "shim.toml", legacy.url, db_url, upstream_prefix=prefix)
    status, by_check, _ = run_doctor(
        capsys, config_path, "--user", "alice", password=DOCTOR_PASSWORD, monkeypatch=monkeypatch
    )
    assert status == 1
    api = by_check["api"]
    base = prefix.rstrip("/")
    assert api["status"] == "failed"
    assert f"the web server's own 404 ('404 Not Found') for {base}/api/" in api["seen"]
    assert f"{base}/index.php answers 200: PHP works, the rewrite rules are missing" in api["seen"]
    assert f"RewriteBase {base}/" in api["fix"] and "fcgi://" in api["fix"]
    assert by_check["authorization"]["status"] == "skipped"


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_wrong_upstream_prefix(stack, tmp_path, db_url, capsys, monkeypatch):
    legacy = stack.legacy(db_url, prefix="/pydio", rewrite_broken=True)
    config_path = write_config(tmp_path / "shim.toml", legacy.url, db_url, upstream_prefix="/")
    status, by_check, _ = run_doctor(capsys, config_path, monkeypatch=monkeypatch)
    assert status == 1
    assert by_check["api"]["status"] == "failed"
    assert "Pydio is not installed at / on that server" in by_check["api"]["seen"]
    assert "upstream.prefix" in by_check["api"]["fix"]


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_authorization_header_dropped(stack, tmp_path, db_url, capsys, monkeypatch):
    legacy = stack.legacy(db_url, drop_authorization=True)
    config_path = write_config(tmp_path / "shim.toml", legacy.url, db_url)
    shim_url = stack.shim(config_path)
    status, by_check, _ = run_doctor(
        capsys,
        config_path,
        "--user",
        "alice",
        "--shim-url",
        shim_url,
        password=DOCTOR_PASSWORD,
        monkeypatch=monkeypatch,
    )
    assert status == 1
    finding = by_check["authorization"]
    assert finding["status"] == "failed"
    assert "although the password of 'alice' is right" in finding["seen"]
    assert "the Authorization header does not reach PHP" in finding["seen"]
    assert "CGIPassAuth On" in finding["fix"] and "fastcgi_param HTTP_AUTHORIZATION" in finding["fix"]
    assert by_check["api"]["status"] == "ok"
    assert by_check["end_to_end"]["status"] == "skipped"


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_a_wrong_doctor_password_is_not_blamed_on_the_server(stack, tmp_path, db_url, capsys, monkeypatch):
    legacy = stack.legacy(db_url)
    config_path = write_config(tmp_path / "shim.toml", legacy.url, db_url)
    status, by_check, _ = run_doctor(
        capsys, config_path, "--user", "alice", password="wrong-secret", monkeypatch=monkeypatch
    )
    assert status == 1
    finding = by_check["authorization"]
    assert finding["status"] == "failed"
    assert "the doctor was given a wrong password" in finding["seen"]
    assert "Authorization header does not reach" not in finding["seen"]


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_account_without_rights_on_the_workspace(stack, tmp_path, db_url, capsys, monkeypatch):
    legacy = stack.legacy(db_url)
    legacy.set_right("alice", "1", None)
    config_path = write_config(tmp_path / "shim.toml", legacy.url, db_url)
    shim_url = stack.shim(config_path)
    status, by_check, _ = run_doctor(
        capsys,
        config_path,
        "--user",
        "alice",
        "--shim-url",
        shim_url,
        password=DOCTOR_PASSWORD,
        monkeypatch=monkeypatch,
    )
    assert by_check["authorization"]["status"] == "warning"
    assert "'alice' has no right on workspace 'my-files'" in by_check["authorization"]["seen"]
    assert by_check["end_to_end"]["status"] == "skipped"
    assert status == 0


# --- workspaces --------------------------------------------------------------------------------


def _add_db_workspace(database_url, slug, syncable):
    ws_id = uuid.uuid4().hex
    engine = db.create_engine(database_url)
    meta = {"meta.syncable": {"REPO_SYNCABLE": True}} if syncable else {"meta.filehasher": {}}
    with engine.begin() as conn:
        conn.execute(db.repo.insert().values(uuid=ws_id, slug=slug, display=slug, accessType="fs", isTemplate=False))
        conn.execute(
            db.repo_options.insert(),
            [
                {"uuid": ws_id, "name": "PATH", "val": f"AJXP_DATA_PATH/{slug}".encode()},
                {"uuid": ws_id, "name": "META_SOURCES", "val": b"$phpserial$" + phpserialize.dumps(meta)},
            ],
        )
    engine.dispose()
    return ws_id


def test_workspaces_syncable_and_indexed(stack, tmp_path, db_url, capsys, monkeypatch):
    legacy = stack.legacy(db_url)
    plain = _add_db_workspace(db_url, "archive", syncable=False)
    synced = _add_db_workspace(db_url, "projects", syncable=True)
    for login in ("alice", "bob"):
        password = USERS[login][0]
        assert requests.post(f"{legacy.url}/api/my-files/mkfile/{login}.txt", auth=(login, password)).ok
    assert requests.post(f"{legacy.url}/api/default/mkdir/shared", auth=("alice", "alice-secret")).ok
    config_path = write_config(tmp_path / "shim.toml", legacy.url, db_url)
    status, by_check, _ = run_doctor(capsys, config_path, monkeypatch=monkeypatch)
    assert status == 0  # a non-syncable workspace is a warning when not the one asked about
    archive = by_check[f"workspace:{plain}"]
    assert archive["status"] == "warning"
    assert "not syncable" in archive["seen"] and "meta.syncable" in archive["fix"]
    assert by_check[f"workspace:{synced}"]["status"] == "ok"
    with legacy.engine.connect() as conn:
        user_nodes = conn.execute(
            sa.text("SELECT COUNT(*) FROM ajxp_index WHERE repository_identifier LIKE '1-%'")
        ).scalar()
        user_last = conn.execute(
            sa.text("SELECT MAX(seq) FROM ajxp_changes WHERE repository_identifier LIKE '1-%'")
        ).scalar()
        shared_last = conn.execute(
            sa.text("SELECT MAX(seq) FROM ajxp_changes WHERE repository_identifier = '0'")
        ).scalar()
    my_files = by_check["workspace:1"]
    assert my_files["status"] == "ok"
    assert (
        f"user-scoped, {user_nodes} node(s) indexed under 2 identifiers, last change seq {user_last}"
        in my_files["seen"]
    )
    assert f"shared, 1 node(s) indexed, last change seq {shared_last}" in by_check["workspace:0"]["seen"]

    # Asked about by slug, the non-syncable workspace fails the run.
    status, by_check, findings = run_doctor(capsys, config_path, "--workspace", "archive", monkeypatch=monkeypatch)
    assert status == 1
    assert by_check[f"workspace:{plain}"]["status"] == "failed"
    assert [f["check"] for f in findings if f["check"].startswith("workspace")] == [f"workspace:{plain}"]

    status, by_check, _ = run_doctor(capsys, config_path, "--workspace", "nope", monkeypatch=monkeypatch)
    assert status == 1
    assert "no workspace 'nope'" in by_check["workspaces"]["seen"]


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_builtin_workspace_marked_not_syncable(stack, tmp_path, db_url, capsys, monkeypatch):
    legacy = stack.legacy(db_url)
    extra = (
        '[[builtin_workspaces]]\nid = "0"\nslug = "default"\npath = "AJXP_DATA_PATH/files"\n'
        '[[builtin_workspaces]]\nid = "1"\nslug = "my-files"\npath = "AJXP_DATA_PATH/personal/AJXP_USER"\n'
        'syncable = true\nrecycle_bin = "recycle_bin"\n'
    )
    config_path = write_config(tmp_path / "shim.toml", legacy.url, db_url, extra=extra)
    status, by_check, _ = run_doctor(capsys, config_path, monkeypatch=monkeypatch)
    assert by_check["workspace:0"]["status"] == "warning"
    assert "[[builtin_workspaces]]" in by_check["workspace:0"]["fix"]
    assert by_check["workspace:1"]["status"] == "ok"
    assert status == 0
    status, by_check, _ = run_doctor(capsys, config_path, "--workspace", "0", monkeypatch=monkeypatch)
    assert status == 1
    assert by_check["workspace:0"]["status"] == "failed"


# --- options and helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_shim_not_running_fails_only_with_a_test_account(stack, tmp_path, db_url, capsys, monkeypatch):
    legacy = stack.legacy(db_url)
    config_path = write_config(tmp_path / "shim.toml", legacy.url, db_url)
    url = f"http://127.0.0.1:{closed_port()}"
    status, by_check, _ = run_doctor(capsys, config_path, "--shim-url", url, monkeypatch=monkeypatch)
    assert (status, by_check["shim"]["status"]) == (0, "warning")
    assert by_check["end_to_end"]["status"] == "skipped"
    status, by_check, _ = run_doctor(
        capsys, config_path, "--shim-url", url, "--user", "alice", password=DOCTOR_PASSWORD, monkeypatch=monkeypatch
    )
    assert (status, by_check["shim"]["status"]) == (1, "failed")
    assert f"nothing answers at {url}/_shim/health" in by_check["shim"]["seen"]


def test_user_without_password_is_refused_without_a_terminal(tmp_path, capsys, monkeypatch):
    config_path = write_config(tmp_path / "shim.toml", "http://127.0.0.1:1", f"sqlite:///{tmp_path}/x.db")
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    assert cli.main(["doctor", "--config", config_path, "--user", "alice"]) == 2
    assert "PYDIO_SHIM_DOCTOR_PASSWORD" in capsys.readouterr().err


def test_password_check_follows_pydio_storage():
    stored = hash_password("s3cret é")  # the stand-in's own implementation of Pydio's format
    assert doctor.password_matches("s3cret é", stored) is True
    assert doctor.password_matches("s3cret", stored) is False
    assert doctor.password_matches("old", "149603e6c03516362a8da23f624db945") is True  # legacy md5("old")
    assert doctor.password_matches("new", "149603e6c03516362a8da23f624db945") is False
    assert doctor.password_matches("x", "plain-text") is None
    assert doctor.password_matches("x", "sha256:1000:salt:not base64!") is None


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_read_only_database_user_is_a_warning(stack, tmp_path, db_url, capsys, monkeypatch):
    legacy = stack.legacy(db_url)
    read_only = f"sqlite:///file:{sa.engine.make_url(db_url).database}?mode=ro&uri=true"
    config_path = write_config(tmp_path / "shim.toml", legacy.url, read_only)
    status, by_check, _ = run_doctor(capsys, config_path, monkeypatch=monkeypatch)
    firing = by_check["trigger_firing"]
    assert firing["status"] == "warning"
    assert "not run: the database user may not write" in firing["seen"]
    assert by_check["triggers"]["status"] == "ok"
    assert status == 0


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_text_report_has_one_line_per_check(tmp_path, db_url, capsys):
    config_path = write_config(tmp_path / "shim.toml", f"http://127.0.0.1:{closed_port()}", db_url)
    assert cli.main(["doctor", "--config", config_path, "--timeout", "5"]) == 1
    out, err = capsys.readouterr()
    lines = out.rstrip("\n").split("\n")
    statuses = [line.split()[0] for line in lines[:-1]]
    assert set(statuses) <= {"ok", "warning", "failed", "skipped"}
    failed = [line for line in lines if line.startswith("failed ")]
    assert len(failed) == 1 and failed[0].startswith("failed   upstream reachable: cannot connect to")
    assert " -> fix: " in failed[0]
    assert lines[-1] == (
        f"doctor: {statuses.count('ok')} ok, {statuses.count('warning')} warning, "
        f"1 failed, {statuses.count('skipped')} skipped"
    )
    assert "checking upstream reachable... failed\n" in err  # progress on stderr, not a terminal: kept


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_the_default_shim_url_comes_from_server_bind(stack, tmp_path, db_url, capsys, monkeypatch):
    """Without --shim-url the doctor asks the shim where server.bind says it listens (0.0.0.0 read as loopback)."""
    legacy = stack.legacy(db_url)
    first = write_config(tmp_path / "first.toml", legacy.url, db_url)
    shim_url = stack.shim(first)
    port = shim_url.rsplit(":", 1)[1]
    config_path = write_config(tmp_path / "shim.toml", legacy.url, db_url, extra=f'[server]\nbind = "0.0.0.0:{port}"\n')
    status, by_check, _ = run_doctor(capsys, config_path, monkeypatch=monkeypatch)
    assert by_check["shim"]["status"] == "ok", by_check["shim"]
    assert by_check["shim"]["title"] == f"shim answering at http://127.0.0.1:{port}"
