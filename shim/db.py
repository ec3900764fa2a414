"""The Pydio tables the shim reads, and the DDL that creates them.

Reads go through SQLAlchemy Core on pooled engines (``pool_pre_ping`` so that a
database restart costs one failed ping, not a failed request).  The DDL of the
meta.syncable tables and triggers is kept per engine because triggers cannot be
expressed portably; it behaves exactly like Pydio's own (insert -> ``create``,
delete -> ``delete``, update -> ``content`` when the path is unchanged, compared
byte for byte, else ``path``).

One deliberate difference on MySQL/MariaDB: tables created here use ``utf8mb4``
(Pydio shipped ``utf8``, i.e. three-byte UTF-8, which cannot store astral
characters such as emoji).  Collation stays case-insensitive like Pydio's, so
``LIKE`` behaves the same.  Existing tables are never altered.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

metadata = sa.MetaData()

# The meta.syncable tables.  Column types here only serve reads; creation uses
# the per-engine DDL below so that triggers and enum types match Pydio's.
changes = sa.Table(
    "ajxp_changes", metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("repository_identifier", sa.Text),
    sa.Column("node_id", sa.BigInteger),
    sa.Column("type", sa.String(16)),
    sa.Column("source", sa.Text),
    sa.Column("target", sa.Text),
)

index = sa.Table(
    "ajxp_index", metadata,
    sa.Column("node_id", sa.BigInteger, primary_key=True),
    sa.Column("node_path", sa.Text),
    sa.Column("bytesize", sa.BigInteger),
    sa.Column("md5", sa.String(32)),
    sa.Column("mtime", sa.BigInteger),
    sa.Column("repository_identifier", sa.Text),
)

# The conf.sql tables the shim reads.  Pydio creates them; tests and the demo
# create them with create_all() from these definitions.
conf_metadata = sa.MetaData()

users = sa.Table(
    "ajxp_users", conf_metadata,
    sa.Column("login", sa.String(255), primary_key=True),
    sa.Column("password", sa.String(255), nullable=False),
    sa.Column("groupPath", sa.String(255), nullable=True),
)

user_rights = sa.Table(
    "ajxp_user_rights", conf_metadata,
    sa.Column("rid", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("login", sa.String(255), nullable=False, index=True),
    sa.Column("repo_uuid", sa.String(33), nullable=False, index=True),
    sa.Column("rights", sa.Text, nullable=False),
)

repo = sa.Table(
    "ajxp_repo", conf_metadata,
    sa.Column("uuid", sa.String(33), primary_key=True),
    sa.Column("parent_uuid", sa.String(33), nullable=True),
    sa.Column("owner_user_id", sa.String(255), nullable=True),
    sa.Column("child_user_id", sa.String(255), nullable=True),
    sa.Column("path", sa.String(255)),
    sa.Column("display", sa.String(255)),
    sa.Column("accessType", sa.String(20)),
    sa.Column("recycle", sa.String(255)),
    sa.Column("bcreate", sa.Boolean),
    sa.Column("writeable", sa.Boolean),
    sa.Column("enabled", sa.Boolean),
    sa.Column("isTemplate", sa.Boolean),
    sa.Column("inferOptionsFromParent", sa.Boolean),
    sa.Column("slug", sa.String(255)),
    sa.Column("groupPath", sa.String(255)),
)

repo_options = sa.Table(
    "ajxp_repo_options", conf_metadata,
    sa.Column("oid", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("uuid", sa.String(33), nullable=False, index=True),
    sa.Column("name", sa.String(50), nullable=False),
    sa.Column("val", sa.LargeBinary),
)

simple_store = sa.Table(
    "ajxp_simple_store", conf_metadata,
    sa.Column("object_id", sa.String(255), primary_key=True),
    sa.Column("store_id", sa.String(50), primary_key=True),
    sa.Column("serialized_data", sa.Text, nullable=True),
    sa.Column("binary_data", sa.LargeBinary, nullable=True),
    sa.Column("related_object_id", sa.String(255), nullable=True),
)

roles = sa.Table(
    "ajxp_roles", conf_metadata,
    sa.Column("role_id", sa.String(255), primary_key=True),
    sa.Column("serial_role", sa.Text, nullable=False),
    sa.Column("owner_user_id", sa.String(255), nullable=True),
    sa.Column("last_updated", sa.Integer, nullable=False, default=0),
)

SYNCABLE_TABLES = ("ajxp_changes", "ajxp_index")
TRIGGER_NAMES = ("LOG_INSERT", "LOG_UPDATE", "LOG_DELETE")


def create_engine(url: str, pool_size: int = 5, read_only: bool = False) -> Engine:
    """A pooled engine for *url*, configured the way the shim needs it.

    MySQL connections use ``utf8mb4`` so that any stored name round-trips.
    *read_only* engines (the feed's) run MySQL in autocommit mode with no
    rollback when a connection returns to the pool: each feed poll then costs
    the statements it runs and nothing else, as the legacy server's do.
    """
    kwargs: dict = {"pool_pre_ping": True, "future": True}
    parsed = sa.engine.make_url(url)
    if read_only and parsed.get_backend_name() == "mysql":
        kwargs.update(isolation_level="AUTOCOMMIT", pool_reset_on_return=None)
    if parsed.get_backend_name() == "sqlite":
        # SQLite file databases are shared between threads with a small pool;
        # each connection waits for writers instead of failing at once.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_recycle=3600)
        if parsed.get_backend_name() == "mysql" and "charset" not in parsed.query:
            parsed = parsed.update_query_dict({"charset": "utf8mb4"})
        if parsed.get_backend_name() == "mysql" and _is_local(parsed) and not any(k.startswith("ssl") for k in parsed.query):
            # PyMySQL builds a TLS context for every new connection (~50 ms of
            # CPU loading CA certificates) even when TLS is not used; on the
            # loopback or a Unix socket TLS protects nothing.
            kwargs["connect_args"] = {"ssl_disabled": True}
    engine = sa.create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def _is_local(url) -> bool:
    return url.host in (None, "", "localhost", "127.0.0.1", "::1") or "unix_socket" in url.query


def _sqlite_on_connect(dbapi_connection, _record):
    # Pydio's PHP writes and the shim reads the same file: WAL lets a long feed
    # read run beside writers.  Bytes that are not UTF-8 must not crash a read
    # (the feed skips such rows), so decode leniently and let the feed check.
    dbapi_connection.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
    try:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
    except Exception:  # read-only or in-memory databases keep their mode
        pass


# --- DDL -------------------------------------------------------------------

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
  bytesize BIGINT NOT NULL,
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
    "LOG_DELETE": "CREATE TRIGGER LOG_DELETE AFTER DELETE ON ajxp_index FOR EACH ROW EXECUTE PROCEDURE ajxp_index_delete()",
    "LOG_INSERT": "CREATE TRIGGER LOG_INSERT AFTER INSERT ON ajxp_index FOR EACH ROW EXECUTE PROCEDURE ajxp_index_insert()",
    "LOG_UPDATE": "CREATE TRIGGER LOG_UPDATE AFTER UPDATE ON ajxp_index FOR EACH ROW EXECUTE PROCEDURE ajxp_index_update()",
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
    "LOG_DELETE": ["""CREATE TRIGGER LOG_DELETE AFTER DELETE ON ajxp_index
BEGIN
  INSERT INTO ajxp_changes (repository_identifier, node_id, source, target, type)
    VALUES (old.repository_identifier, old.node_id, old.node_path, 'NULL', 'delete');
END"""],
    "LOG_INSERT": ["""CREATE TRIGGER LOG_INSERT AFTER INSERT ON ajxp_index
BEGIN
  INSERT INTO ajxp_changes (repository_identifier, node_id, source, target, type)
    VALUES (new.repository_identifier, new.node_id, 'NULL', new.node_path, 'create');
END"""],
    "LOG_UPDATE": ["""CREATE TRIGGER LOG_UPDATE_CONTENT AFTER UPDATE ON ajxp_index FOR EACH ROW
WHEN old.node_path = new.node_path
BEGIN
  INSERT INTO ajxp_changes (repository_identifier, node_id, source, target, type)
    VALUES (new.repository_identifier, new.node_id, old.node_path, new.node_path, 'content');
END""", """CREATE TRIGGER LOG_UPDATE_PATH AFTER UPDATE ON ajxp_index FOR EACH ROW
WHEN old.node_path != new.node_path
BEGIN
  INSERT INTO ajxp_changes (repository_identifier, node_id, source, target, type)
    VALUES (new.repository_identifier, new.node_id, old.node_path, new.node_path, 'path');
END"""],
}


def dialect_of(engine_or_conn) -> str:
    """``mysql``, ``postgresql`` or ``sqlite``; anything else is refused."""
    name = engine_or_conn.dialect.name
    if name not in ("mysql", "postgresql", "sqlite"):
        raise ValueError(f"unsupported database engine {name!r}: Pydio supports MySQL/MariaDB, PostgreSQL and SQLite")
    return name


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


def installed_tables(conn) -> set[str]:
    """Which of the Pydio tables the shim needs exist, by name."""
    names = set(sa.inspect(conn).get_table_names())
    return {n for n in names if n.startswith("ajxp_")}


def installed_triggers(conn) -> set[str]:
    """Names (upper case, as in :data:`TRIGGER_NAMES`) of the triggers on ajxp_index."""
    dialect = dialect_of(conn)
    if dialect == "mysql":
        rows = conn.execute(sa.text(
            "SELECT trigger_name FROM information_schema.triggers "
            "WHERE event_object_schema = DATABASE() AND event_object_table = 'ajxp_index'"))
    elif dialect == "postgresql":
        rows = conn.execute(sa.text(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgrelid = 'ajxp_index'::regclass"))
    else:
        rows = conn.execute(sa.text(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'ajxp_index'"))
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


_PG_FUNCTIONS = {"LOG_DELETE": "ajxp_index_delete", "LOG_INSERT": "ajxp_index_insert",
                 "LOG_UPDATE": "ajxp_index_update"}


def _pg_missing_function(conn, trigger: str) -> list[str]:
    """The statement creating *trigger*'s function when it does not exist, else nothing."""
    function = _PG_FUNCTIONS[trigger]
    if conn.execute(sa.text("SELECT to_regprocedure(:f)"), {"f": function + "()"}).scalar() is not None:
        return []
    return [s for s in _PG_SYNCABLE if s.startswith(f"CREATE OR REPLACE FUNCTION {function}()")]


def _sqlite_trigger_names(conn) -> set[str]:
    rows = conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger'"))
    return {r[0].upper() for r in rows}


def create_conf_tables(conn) -> None:
    """Create the conf.sql tables the shim reads (tests, demo and stand-in only)."""
    conf_metadata.create_all(conn)
