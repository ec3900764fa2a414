"""``pydio-shim install-schema`` on MariaDB, PostgreSQL and SQLite.

Every test looks at the database itself (reflection, the engines' catalogues,
the triggers firing) rather than at what the command says it did.
"""

from __future__ import annotations

import os
import socket

import pytest
import sqlalchemy as sa
from helpers import plain_engine

from shim import cli, db, schema


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith("PYDIO_SHIM_"):
            monkeypatch.delenv(name)


def config_for(tmp_path, database_url):
    path = tmp_path / "shim.toml"
    path.write_text(f'[upstream]\nurl = "http://127.0.0.1:9"\n[database]\nurl = "{database_url}"\n')
    return str(path)


def install(capsys, config_path, *options):
    status = cli.main(["install-schema", "--config", config_path, *options])
    out, err = capsys.readouterr()
    return status, out, err


def touch_database(url):
    """Make sure the database exists (for SQLite: the file), empty."""
    engine = plain_engine(url)
    with engine.connect():
        pass
    engine.dispose()


def state(url):
    """Tables, triggers, indexes of ajxp_changes, and the rows of both meta.syncable tables."""
    engine = plain_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            result = {
                "tables": tables,
                "triggers": schema.installed_triggers(conn) if "ajxp_index" in tables else set(),
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"])) for i in sa.inspect(conn).get_indexes("ajxp_changes")
                )
                if "ajxp_changes" in tables
                else [],
            }
            for table in ("ajxp_index", "ajxp_changes"):
                if table in tables:
                    result[table] = conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1")).all()
            if engine.dialect.name == "sqlite":
                result["journal_mode"] = conn.execute(sa.text("PRAGMA journal_mode")).scalar()
            if engine.dialect.name == "postgresql":
                result["types"] = conn.execute(
                    sa.text("SELECT typname FROM pg_type WHERE typname = 'ajxp_change_type'")
                ).all()
                result["functions"] = sorted(
                    r[0] for r in conn.execute(sa.text("SELECT proname FROM pg_proc WHERE proname LIKE 'ajxp_index_%'"))
                )
            return result
    finally:
        engine.dispose()


def assert_triggers_fire(url):
    """Insert, rename and delete an index row: the three triggers log create, path, delete."""
    engine = db.create_engine(url)
    with engine.begin() as conn:
        before = conn.execute(sa.text("SELECT COALESCE(MAX(seq), 0) FROM ajxp_changes")).scalar()
        conn.execute(
            db.index.insert().values(node_path="/t.txt", bytesize=1, md5="0" * 32, mtime=1, repository_identifier="0")
        )
        node = conn.execute(sa.text("SELECT MAX(node_id) FROM ajxp_index")).scalar()
        conn.execute(db.index.update().where(db.index.c.node_id == node).values(node_path="/u.txt"))
        conn.execute(db.index.delete().where(db.index.c.node_id == node))
        logged = conn.execute(
            sa.text("SELECT type, source, target FROM ajxp_changes WHERE seq > :s ORDER BY seq"), {"s": before}
        ).all()
    engine.dispose()
    assert [tuple(r) for r in logged] == [
        ("create", "NULL", "/t.txt"),
        ("path", "/t.txt", "/u.txt"),
        ("delete", "/u.txt", "NULL"),
    ]


def test_from_empty_then_again(tmp_path, empty_db_url, capsys):
    touch_database(empty_db_url)
    config_path = config_for(tmp_path, empty_db_url)
    status, out, err = install(capsys, config_path)
    assert status == 0, err
    after = state(empty_db_url)
    assert {"ajxp_changes", "ajxp_index"} <= after["tables"]
    assert after["triggers"] == set(db.TRIGGER_NAMES)
    assert out.count("CREATE TABLE IF NOT EXISTS ajxp_changes") == 1
    assert_triggers_fire(empty_db_url)

    settled = state(empty_db_url)
    status, out, err = install(capsys, config_path)
    assert status == 0, err
    assert "nothing to do" in out and "CREATE" not in out
    assert state(empty_db_url) == settled


def test_dry_run_changes_nothing(tmp_path, empty_db_url, capsys):
    touch_database(empty_db_url)
    config_path = config_for(tmp_path, empty_db_url)
    before = state(empty_db_url)
    status, out, err = install(capsys, config_path, "--dry-run", "--with-index")
    assert status == 0, err
    assert "CREATE TABLE IF NOT EXISTS ajxp_index" in out
    assert "CREATE TRIGGER LOG_INSERT" in out and "CREATE INDEX" in out
    assert "statement(s) would run" in out
    assert state(empty_db_url) == before
    assert not {"ajxp_changes", "ajxp_index"} & before["tables"]


def test_installed_database_is_left_alone(tmp_path, db_url, capsys):
    assert_triggers_fire(db_url)  # leaves rows behind, which must survive
    before = state(db_url)
    assert before["ajxp_changes"]
    config_path = config_for(tmp_path, db_url)
    for options in ((), ("--dry-run",)):
        status, out, err = install(capsys, config_path, *options)
        assert status == 0, err
        assert "nothing to do" in out and "CREATE" not in out
    assert state(db_url) == before


def _drop_trigger(url, name, with_function=False):
    engine = db.create_engine(url)
    with engine.begin() as conn:
        dialect = db.dialect_of(conn)
        if dialect == "postgresql":
            conn.execute(sa.text(f"DROP TRIGGER {name} ON ajxp_index"))
            if with_function:
                conn.execute(sa.text(f"DROP FUNCTION ajxp_index_{name.split('_')[1].lower()}()"))
        elif dialect == "sqlite" and name == "LOG_UPDATE":
            conn.execute(sa.text("DROP TRIGGER LOG_UPDATE_CONTENT"))
        else:
            conn.execute(sa.text(f"DROP TRIGGER {name}"))
    engine.dispose()


@pytest.mark.parametrize("trigger", ["LOG_INSERT", "LOG_UPDATE", "LOG_DELETE"])
def test_a_dropped_trigger_is_recreated_alone(tmp_path, db_url, trigger, capsys):
    _drop_trigger(db_url, trigger, with_function=True)
    damaged = state(db_url)
    assert trigger not in damaged["triggers"]
    config_path = config_for(tmp_path, db_url)
    status, out, err = install(capsys, config_path)
    assert status == 0, err
    assert out.count("CREATE TRIGGER") == 1
    assert "CREATE TABLE" not in out
    repaired = state(db_url)
    assert repaired["triggers"] == set(db.TRIGGER_NAMES)
    if "functions" in repaired:
        assert repaired["functions"] == ["ajxp_index_delete", "ajxp_index_insert", "ajxp_index_update"]
    assert_triggers_fire(db_url)


def test_a_missing_changes_table_keeps_the_triggers(tmp_path, db_url, capsys):
    engine = db.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE ajxp_changes"))
    engine.dispose()
    config_path = config_for(tmp_path, db_url)
    status, out, err = install(capsys, config_path)
    assert status == 0, err
    assert "CREATE TRIGGER" not in out
    assert state(db_url)["triggers"] == set(db.TRIGGER_NAMES)
    assert_triggers_fire(db_url)


def _fill_changes(url, rows=5000, workspaces=50):
    engine = db.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            db.changes.insert(),
            [
                {
                    "repository_identifier": f"{n % workspaces}-user{n % 7}",
                    "node_id": n,
                    "type": "create",
                    "source": "NULL",
                    "target": f"/file{n}.txt",
                }
                for n in range(1, rows + 1)
            ],
        )
    engine.dispose()


def _plan(out, which):
    """The plan lines printed under the "feed query plan {which}" header."""
    lines = out.split("\n")
    start = next(n for n, line in enumerate(lines) if line.startswith(f"-- feed query plan {which}"))
    plan = []
    for line in lines[start + 1 :]:
        if not line.startswith("--   "):
            break
        plan.append(line)
    return plan


def test_with_index(tmp_path, db_url, capsys):
    _fill_changes(db_url)
    config_path = config_for(tmp_path, db_url)

    unindexed = state(db_url)
    status, out, err = install(capsys, config_path, "--with-index", "--dry-run")
    assert status == 0, err
    assert "CREATE INDEX" in out and schema.INDEX_NAME in out
    assert state(db_url) == unindexed
    assert schema.INDEX_NAME not in [name for name, _ in unindexed["indexes"]]

    status, out, err = install(capsys, config_path, "--with-index")
    assert status == 0, err
    indexes = dict(state(db_url)["indexes"])
    assert indexes[schema.INDEX_NAME] == ("repository_identifier", "seq")
    before, after = _plan(out, "before"), _plan(out, "after")
    assert before and after
    assert not any(schema.INDEX_NAME in line for line in before)
    assert any(schema.INDEX_NAME in line for line in after)
    engine = plain_engine(db_url)
    if engine.dialect.name == "mysql":
        with engine.connect() as conn:
            parts = conn.execute(sa.text(f"SHOW INDEX FROM ajxp_changes WHERE Key_name = '{schema.INDEX_NAME}'")).all()
        assert [(r._mapping["Column_name"], r._mapping["Sub_part"]) for r in parts] == [
            ("repository_identifier", 191),
            ("seq", None),
        ]
    engine.dispose()

    status, out, err = install(capsys, config_path, "--with-index")
    assert status == 0, err
    assert f"nothing to do: the tables and triggers are installed, and the feed index ({schema.INDEX_NAME})" in out


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "url,expected",
    [
        ("mysql+pymysql://root:bad-db-password@127.0.0.1:3306/mysql", "refused the password of user 'root'"),
        ("postgresql+psycopg2://postgres@127.0.0.1:{port}/pydio", "nothing accepts connections"),
        ("sqlite:///{tmp}/missing/pydio.db", "does not exist"),
    ],
)
def test_connection_problems_are_reported_in_one_line(tmp_path, url, expected, capsys):
    url = url.format(port=_closed_port(), tmp=tmp_path)
    status, out, err = install(capsys, config_for(tmp_path, url))
    assert status == 1
    assert expected in err
    assert "Traceback" not in err and "bad-db-password" not in out + err
    assert not (tmp_path / "missing").exists()
