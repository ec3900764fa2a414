"""The meta.syncable tables, triggers and feed index, and ``pydio-shim install-schema``.

The DDL is kept per engine because triggers cannot be expressed portably; it
behaves exactly like Pydio's own (insert -> ``create``, delete -> ``delete``,
update -> ``content`` when the path is unchanged, compared byte for byte, else
``path``).  What is missing is created, nothing existing is altered or
dropped, so running it twice is harmless (the second run does nothing).

One deliberate difference on MySQL/MariaDB: tables created here use ``utf8mb4``
(Pydio shipped ``utf8``, i.e. three-byte UTF-8, which cannot store astral
characters such as emoji).  Collation stays case-insensitive like Pydio's, so
``LIKE`` behaves the same.  Existing tables are never altered.

The optional index on ``ajxp_changes (repository_identifier, seq)`` serves the
feed's ``WHERE repository_identifier = ? AND seq > ?``: without it every poll
of one workspace reads the rows of all of them.  Pydio does not create it
(MySQL has no index on ``repository_identifier`` at all), the shim does not
need it to be correct, only to stay fast on large tables.  MySQL cannot index a
``TEXT`` column whole, so it indexes the first 191 characters (191 x 4 bytes of
utf8mb4 fits InnoDB's 767-byte key limit of older row formats); PostgreSQL
builds it ``CONCURRENTLY`` so that Pydio's writes are not blocked meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from . import db, feed
from .db import SYNCABLE_TABLES, TRIGGER_NAMES, dialect_of, installed_tables

# --- the meta.syncable tables and triggers, per engine -----------------------------

_MYSQL_SYNCABLE = [
    """CREATE TABLE IF NOT EXISTS ajxp_changes (
  seq INT(20) NOT NULL AUTO_INCREMENT,
  repository_identifier TEXT NOT NULL,
  node_id BIGINT(20) NOT NULL,
  type ENUM('create','delete','path','content') NOT NULL,
  source TEXT NOT NULL,
  target TEXT NOT NULL,
  PRIMARY KEY (seq),
  KEY node_id (node_id, type)
) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci""",
    """CREATE TABLE IF NOT EXISTS ajxp_index (
  node_id INT(20) NOT NULL AUTO_INCREMENT,
  node_path TEXT NOT NULL,
  bytesize BIGINT(20) NOT NULL,
  md5 VARCHAR(32) NOT NULL,
  mtime INT(11) NOT NULL,
  repository_identifier TEXT NOT NULL,
  PRIMARY KEY (node_id)
) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci""",
]

_MYSQL_TRIGGERS = {
    "LOG_DELETE": """CREATE TRIGGER LOG_DELETE AFTER DELETE ON ajxp_index
FOR EACH ROW INSERT INTO ajxp_changes (repository_identifier, node_id, source, target, type)
  VALUES (OLD.repository_identifier, OLD.node_id, OLD.node_path, 'NULL', 'delete')""",
    "LOG_INSERT": """CREATE TRIGGER LOG_INSERT AFTER INSERT ON ajxp_index
FOR EACH ROW INSERT INTO ajxp_changes (repository_identifier, node_id, source, target, type)
  VALUES (NEW.repository_identifier, NEW.node_id, 'NULL', NEW.node_path, 'create')""",
    "LOG_UPDATE": """CREATE TRIGGER LOG_UPDATE AFTER UPDATE ON ajxp_index
FOR EACH ROW INSERT INTO ajxp_changes (repository_identifier, node_id, source, target, type)
  VALUES (NEW.repository_identifier, NEW.node_id, OLD.node_path, NEW.node_path,
          CASE WHEN BINARY OLD.node_path = BINARY NEW.node_path THEN 'content' ELSE 'path' END)""",
}

_PG_SYNCABLE = [
    """DO $$ BEGIN
  CREATE TYPE ajxp_change_type AS ENUM ('create','delete','path','content');
EXCEPTION WHEN duplicate_object THEN NULL; END $$""",
    """CREATE TABLE IF NOT EXISTS ajxp_changes (
  seq BIGSERIAL PRIMARY KEY,
  repository_identifier TEXT NOT NULL,
  node_id INTEGER NOT NULL,
  type ajxp_change_type NOT NULL,
  source TEXT NOT NULL,
  target TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS ajxp_changes_node_id ON ajxp_changes (node_id)",
    "CREATE INDEX IF NOT EXISTS ajxp_changes_repo_id ON ajxp_changes (repository_identifier)",
    "CREATE INDEX IF NOT EXISTS ajxp_changes_type ON ajxp_changes (type)",
    """CREATE TABLE IF NOT EXISTS ajxp_index (
  node_id BIGSERIAL PRIMARY KEY,
  node_path TEXT NOT NULL,
  bytesize INTEGER NOT NULL,  -- as Pydio creates it: files of 2 GiB and more fail its own inserts
  md5 VARCHAR(32) NOT NULL,
  mtime INTEGER NOT NULL,
  repository_identifier TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS ajxp_index_repo_id ON ajxp_index (repository_identifier)",
    "CREATE INDEX IF NOT EXISTS ajxp_index_md5 ON ajxp_index (md5)",
    """CREATE OR REPLACE FUNCTION ajxp_index_delete() RETURNS trigger AS $body$
BEGIN
  INSERT INTO ajxp_changes (repository_identifier, node_id, source, target, type)
    VALUES (OLD.repository_identifier, OLD.node_id, OLD.node_path, 'NULL', 'delete');
  RETURN NULL;
END; $body$ LANGUAGE plpgsql""",
    """CREATE OR REPLACE FUNCTION ajxp_index_insert() RETURNS trigger AS $body$
BEGIN
  INSERT INTO ajxp_changes (repository_identifier, node_id, source, target, type)
    VALUES (NEW.repository_identifier, NEW.node_id, 'NULL', NEW.node_path, 'create');
  RETURN NEW;
END; $body$ LANGUAGE plpgsql""",
    """CREATE OR REPLACE FUNCTION ajxp_index_update() RETURNS trigger AS $body$
BEGIN
  INSERT INTO ajxp_changes (repository_identifier, node_id, source, target, type)
    VALUES (NEW.repository_identifier, NEW.node_id, OLD.node_path, NEW.node_path,
            CASE WHEN OLD.node_path = NEW.node_path THEN 'content' ELSE 'path' END::ajxp_change_type);
  RETURN NEW;
END; $body$ LANGUAGE plpgsql""",
]

_PG_TRIGGERS = {
    f"LOG_{event}": f"CREATE TRIGGER LOG_{event} AFTER {event} ON ajxp_index FOR EACH ROW "
    f"EXECUTE PROCEDURE ajxp_index_{event.lower()}()"
    for event in ("DELETE", "INSERT", "UPDATE")
}

_SQLITE_SYNCABLE = [
    """CREATE TABLE IF NOT EXISTS ajxp_changes (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  repository_identifier TEXT,
  node_id NUMERIC,
  type TEXT,
  source TEXT,
  target TEXT
)""",
    """CREATE TABLE IF NOT EXISTS ajxp_index (
  node_id INTEGER PRIMARY KEY AUTOINCREMENT,
  repository_identifier TEXT,
  node_path TEXT,
  bytesize NUMERIC,
  md5 TEXT,
  mtime NUMERIC
)""",
]

# SQLite has no CASE in trigger choice, so Pydio uses two update triggers;
# "LOG_UPDATE" stands for the pair when checking what is installed.
_SQLITE_TRIGGERS = {
    "LOG_DELETE": [
        """CREATE TRIGGER LOG_DELETE AFTER DELETE ON ajxp_index
BEGIN
  INSERT INTO ajxp_changes (repository_identifier, node_id, source, target, type)
    VALUES (old.repository_identifier, old.node_id, old.node_path, 'NULL', 'delete');
END"""
    ],
    "LOG_INSERT": [
        """CREATE TRIGGER LOG_INSERT AFTER INSERT ON ajxp_index
BEGIN
  INSERT INTO ajxp_changes (repository_identifier, node_id, source, target, type)
    VALUES (new.repository_identifier, new.node_id, 'NULL', new.node_path, 'create');
END"""
    ],
    "LOG_UPDATE": [
        """CREATE TRIGGER LOG_UPDATE_CONTENT AFTER UPDATE ON ajxp_index FOR EACH ROW
WHEN old.node_path = new.node_path
BEGIN
  INSERT INTO ajxp_changes (repository_identifier, node_id, source, target, type)
    VALUES (new.repository_identifier, new.node_id, old.node_path, new.node_path, 'content');
END""",
        """CREATE TRIGGER LOG_UPDATE_PATH AFTER UPDATE ON ajxp_index FOR EACH ROW
WHEN old.node_path != new.node_path
BEGIN
  INSERT INTO ajxp_changes (repository_identifier, node_id, source, target, type)
    VALUES (new.repository_identifier, new.node_id, old.node_path, new.node_path, 'path');
END""",
    ],
}


def table_statements(dialect: str) -> list[str]:
    """``CREATE ... IF NOT EXISTS`` statements for the two meta.syncable tables."""
    return {"mysql": _MYSQL_SYNCABLE, "postgresql": _PG_SYNCABLE, "sqlite": _SQLITE_SYNCABLE}[dialect]


def trigger_statements(dialect: str, name: str) -> list[str]:
    """The statements creating trigger *name* (one of :data:`TRIGGER_NAMES`)."""
    if dialect == "mysql":
        return [_MYSQL_TRIGGERS[name]]
    if dialect == "postgresql":
        return [_PG_TRIGGERS[name]]
    return list(_SQLITE_TRIGGERS[name])


def installed_triggers(conn) -> set[str]:
    """Names (upper case, as in :data:`TRIGGER_NAMES`) of the triggers on ajxp_index."""
    dialect = dialect_of(conn)
    if dialect == "mysql":
        rows = conn.execute(
            sa.text(
                "SELECT trigger_name FROM information_schema.triggers "
                "WHERE event_object_schema = DATABASE() AND event_object_table = 'ajxp_index'"
            )
        )
    elif dialect == "postgresql":
        rows = conn.execute(
            sa.text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgrelid = 'ajxp_index'::regclass")
        )
    else:
        rows = conn.execute(
            sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'ajxp_index'")
        )
    found = {r[0].upper() for r in rows}
    if dialect == "sqlite" and {"LOG_UPDATE_CONTENT", "LOG_UPDATE_PATH"} <= found:
        found.add("LOG_UPDATE")
    return found & set(TRIGGER_NAMES)


def install_syncable_schema(conn) -> list[str]:
    """Create whatever is missing of the meta.syncable tables and triggers.

    Idempotent and never destructive: existing tables and triggers are kept as
    they are.  Returns the statements it ran (for reports and ``--dry-run``).
    """
    ran = []
    for statement in planned_statements(conn):
        conn.execute(sa.text(statement).execution_options(no_parameters=True))
        ran.append(statement)
    return ran


def planned_statements(conn) -> list[str]:
    """The statements :func:`install_syncable_schema` would run now."""
    dialect = dialect_of(conn)
    tables = installed_tables(conn)
    planned = []
    if not set(SYNCABLE_TABLES) <= tables:
        planned.extend(table_statements(dialect))
    # Triggers live on ajxp_index: whenever it exists, keep the ones it has, even
    # when ajxp_changes is the missing table (re-creating one would fail).
    triggers = installed_triggers(conn) if "ajxp_index" in tables else set()
    for name in TRIGGER_NAMES:
        if name not in triggers:
            statements = trigger_statements(dialect, name)
            if dialect == "postgresql" and set(SYNCABLE_TABLES) <= tables:
                # A PostgreSQL trigger calls a function that a damaged install may
                # lack; an existing one is kept as it is.
                statements = _pg_missing_function(conn, name) + statements
            if dialect == "sqlite" and name == "LOG_UPDATE":
                present = _sqlite_trigger_names(conn)
                statements = [s for s in statements if s.split()[2].upper() not in present]
            planned.extend(statements)
    return planned


_PG_FUNCTIONS = {
    "LOG_DELETE": "ajxp_index_delete",
    "LOG_INSERT": "ajxp_index_insert",
    "LOG_UPDATE": "ajxp_index_update",
}


def _pg_missing_function(conn, trigger: str) -> list[str]:
    """The statement creating *trigger*'s function when it does not exist, else nothing."""
    function = _PG_FUNCTIONS[trigger]
    if conn.execute(sa.text("SELECT to_regprocedure(:f)"), {"f": function + "()"}).scalar() is not None:
        return []
    return [s for s in _PG_SYNCABLE if s.startswith(f"CREATE OR REPLACE FUNCTION {function}()")]


def _sqlite_trigger_names(conn) -> set[str]:
    rows = conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger'"))
    return {r[0].upper() for r in rows}


# --- the feed index --------------------------------------------------------------------

INDEX_NAME = "ajxp_changes_repo_seq"
INDEX_COLUMNS = ("repository_identifier", "seq")
#: How many characters of repository_identifier MySQL indexes (a TEXT column needs a prefix).
MYSQL_PREFIX_LENGTH = 191


def index_statement(dialect: str) -> str:
    """The ``CREATE INDEX`` for the feed index on *dialect*."""
    if dialect == "mysql":
        return f"CREATE INDEX {INDEX_NAME} ON ajxp_changes (repository_identifier({MYSQL_PREFIX_LENGTH}), seq)"
    if dialect == "postgresql":
        return f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX_NAME} ON ajxp_changes (repository_identifier, seq)"
    return f"CREATE INDEX IF NOT EXISTS {INDEX_NAME} ON ajxp_changes (repository_identifier, seq)"


def feed_index(conn) -> str | None:
    """The name of an index on ajxp_changes leading with (repository_identifier, seq), if any.

    Any name counts: an operator may have created an equivalent one by hand.
    """
    if "ajxp_changes" not in installed_tables(conn):
        return None
    # An interrupted CONCURRENTLY build leaves an invalid index that queries do
    # not use: it does not count.
    invalid = INDEX_NAME if invalid_pg_index(conn) else None
    for index in sa.inspect(conn).get_indexes("ajxp_changes"):
        if tuple(index.get("column_names") or ())[:2] == INDEX_COLUMNS and index["name"] != invalid:
            return index["name"]
    return None


def invalid_pg_index(conn) -> bool:
    """True when PostgreSQL holds an invalid (interrupted) build of the feed index."""
    if dialect_of(conn) != "postgresql":
        return False
    row = conn.execute(
        sa.text(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = :name AND pg_table_is_visible(c.oid)"
        ),
        {"name": INDEX_NAME},
    ).first()
    return row is not None and not row[0]


@dataclass
class Plan:
    """What :func:`install` would do now."""

    dialect: str
    schema: list[str] = field(default_factory=list)  # tables and triggers, in order
    index: str | None = None  # the feed index statement, when asked for and missing
    index_present: str | None = None  # name of an existing feed index
    index_invalid: bool = False

    @property
    def statements(self) -> list[str]:
        return self.schema + ([self.index] if self.index else [])


def plan(conn, with_index: bool = False) -> Plan:
    """The statements that would bring the database up to date (nothing is run)."""
    dialect = dialect_of(conn)
    result = Plan(dialect, schema=planned_statements(conn))
    if with_index:
        result.index_present = feed_index(conn)
        result.index_invalid = invalid_pg_index(conn)
        if result.index_present is None and not result.index_invalid:
            result.index = index_statement(dialect)
    return result


def sample_poll(conn) -> tuple[str, int]:
    """A typical poll to explain: the most recently changed identifier, the last 100 changes."""
    if "ajxp_changes" not in installed_tables(conn):
        return "0", 0
    row = conn.execute(
        sa.select(db.changes.c.repository_identifier, db.changes.c.seq).order_by(db.changes.c.seq.desc()).limit(1)
    ).first()
    if row is None:
        return "0", 0
    return row[0], max(0, int(row[1]) - 100)


def explain_feed_query(conn, identifier: str, seq: int) -> list[str]:
    """The engine's plan for :func:`shim.feed.feed_query`, one line per plan row."""
    dialect = dialect_of(conn)
    sql = str(
        feed.feed_query(identifier, seq, None).compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    )
    if dialect == "sqlite":
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all()
        return [str(r[-1]) for r in rows]
    rows = conn.exec_driver_sql("EXPLAIN " + sql)
    if dialect == "postgresql":
        return [str(r[0]) for r in rows]
    keys = list(rows.keys())
    lines = []
    for r in rows.all():
        values = dict(zip(keys, r, strict=True))
        lines.append(
            " ".join(
                f"{k}={values[k]}"
                for k in ("table", "type", "possible_keys", "key", "key_len", "rows", "Extra")
                if k in values
            )
        )
    return lines


def _run(engine, statement: str, autocommit: bool = False) -> None:
    if autocommit:
        # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(statement)
        return
    with engine.begin() as conn:
        conn.execute(sa.text(statement).execution_options(no_parameters=True))


def install(engine, with_index: bool = False, dry_run: bool = False, out=print) -> Plan:
    """Bring the database up to date, reporting through *out* (one string per call).

    With *dry_run* the statements are only printed.  Database errors propagate
    as :class:`sqlalchemy.exc.SQLAlchemyError`; the command line reports them.
    """
    with engine.connect() as conn:
        todo = plan(conn, with_index)
        sample = sample_poll(conn) if with_index else None
        before = None
        if sample is not None and "ajxp_changes" in installed_tables(conn):
            before = explain_feed_query(conn, *sample)
    terminator = ";"
    if dry_run:
        out(f"-- pydio-shim install-schema --dry-run ({todo.dialect}): nothing is changed")
    if with_index and before is not None and sample is not None:
        out(f"-- feed query plan before, for repository_identifier {sample[0]!r} after seq {sample[1]}:")
        for line in before:
            out(f"--   {line}")
    elif with_index:
        out("-- feed query plan before: none, there is no ajxp_changes table yet")
    if todo.index_invalid:
        out(
            f"-- index {INDEX_NAME} exists but is INVALID (an interrupted build): drop it with "
            f"DROP INDEX CONCURRENTLY {INDEX_NAME}; then run this again"
        )
    if not todo.statements:
        out(
            "-- nothing to do: the tables and triggers are installed"
            + (f", and the feed index ({todo.index_present})" if with_index and todo.index_present else "")
        )
        return todo
    for statement in todo.schema:
        out(statement + terminator)
        if not dry_run:
            _run(engine, statement)
    if todo.index:
        out(todo.index + terminator)
        if not dry_run:
            _run(engine, todo.index, autocommit=todo.dialect == "postgresql")
    if with_index and not dry_run:
        with engine.begin() as conn:
            # Fresh statistics, so that the plan shown is the one polls will get.
            if todo.dialect == "mysql":
                conn.exec_driver_sql("ANALYZE TABLE ajxp_changes").all()
            elif todo.dialect == "postgresql":
                conn.exec_driver_sql("ANALYZE ajxp_changes")
            after = explain_feed_query(conn, *(sample or ("0", 0)))
        out(
            f"-- feed query plan after, for repository_identifier {(sample or ('0', 0))[0]!r} after seq "
            f"{(sample or ('0', 0))[1]}:"
        )
        for line in after:
            out(f"--   {line}")
    if dry_run:
        out(f"-- {len(todo.statements)} statement(s) would run")
    else:
        out(f"-- done: {len(todo.statements)} statement(s) ran")
    return todo
