"""The meta.syncable triggers behave like Pydio's on every engine."""

import pytest
import sqlalchemy as sa

from shim import db, schema


def changes_rows(conn):
    return [
        tuple(r)
        for r in conn.execute(
            sa.text("SELECT repository_identifier, node_id, type, source, target FROM ajxp_changes ORDER BY seq")
        )
    ]


def test_each_trigger_writes_the_expected_change(db_url):
    engine = db.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            db.index.insert().values(node_path="/a.txt", bytesize=3, md5="x" * 32, mtime=10, repository_identifier="0")
        )
        node_id = conn.execute(sa.text("SELECT node_id FROM ajxp_index")).scalar()
        assert changes_rows(conn) == [("0", node_id, "create", "NULL", "/a.txt")]

        conn.execute(db.index.update().where(db.index.c.node_id == node_id).values(bytesize=5, md5="y" * 32))
        assert changes_rows(conn)[-1] == ("0", node_id, "content", "/a.txt", "/a.txt")

        conn.execute(db.index.update().where(db.index.c.node_id == node_id).values(node_path="/b.txt"))
        assert changes_rows(conn)[-1] == ("0", node_id, "path", "/a.txt", "/b.txt")

        # A change of case only is a rename: MySQL compares the paths as bytes.
        conn.execute(db.index.update().where(db.index.c.node_id == node_id).values(node_path="/B.txt"))
        assert changes_rows(conn)[-1] == ("0", node_id, "path", "/b.txt", "/B.txt")

        conn.execute(db.index.delete().where(db.index.c.node_id == node_id))
        assert changes_rows(conn)[-1] == ("0", node_id, "delete", "/B.txt", "NULL")
        assert len(changes_rows(conn)) == 5
    engine.dispose()


def test_install_is_idempotent_and_reports_what_exists(db_url):
    engine = db.create_engine(db_url)
    with engine.begin() as conn:
        assert schema.planned_statements(conn) == []
        assert schema.installed_triggers(conn) == set(db.TRIGGER_NAMES)
        assert {"ajxp_changes", "ajxp_index"} <= db.installed_tables(conn)
        assert schema.install_syncable_schema(conn) == []
    engine.dispose()


@pytest.mark.parametrize("engine_name", ["postgresql"])
def test_postgresql_columns_are_pydio_s_own(db_url):
    """PostgreSQL: bytesize INTEGER, node_id INTEGER in ajxp_changes, as Pydio's create.pgsql makes them."""
    engine = db.create_engine(db_url)
    with engine.connect() as conn:
        types = dict(
            conn.execute(
                sa.text(
                    "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
                    "WHERE table_name IN ('ajxp_index', 'ajxp_changes')"
                )
            ).all()
        )
    engine.dispose()
    assert types["ajxp_index.bytesize"] == "integer"
    assert types["ajxp_index.mtime"] == "integer"
    assert types["ajxp_changes.node_id"] == "integer"
    assert types["ajxp_changes.seq"] == "bigint"
