"""The Pydio tables the shim reads, its database engines, and small database helpers.

Reads go through SQLAlchemy Core on pooled engines (``pool_pre_ping`` so that a
database restart costs one failed ping, not a failed request).  The DDL that
creates the meta.syncable tables and triggers is in :mod:`shim.schema`.

The helpers at the end serve the command line and the doctor: a short-lived
diagnostic engine, database errors said in plain words, URLs with their
password masked.
"""

from __future__ import annotations

import hashlib
import logging

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

metadata = sa.MetaData()


# The meta.syncable tables.  Column types here only serve reads; creation uses
# the per-engine DDL of shim.schema, so that triggers and enum types match Pydio's.
def _syncable_table(name: str, key: str, **columns: sa.types.TypeEngine | type) -> sa.Table:
    """A meta.syncable table: its BIGINT key, the workspace (repository) each row
    belongs to, then its own columns, named with their types in table order."""
    own = [sa.Column(column, type_) for column, type_ in columns.items()]
    key_column = sa.Column(key, sa.BigInteger, primary_key=True)
    return sa.Table(name, metadata, key_column, sa.Column("repository_identifier", sa.Text), *own)


# A change row: the node it is about, what happened to it ("create", "delete",
# "content" or "path", a move or a rename; an ENUM on MySQL, an enum type on
# PostgreSQL, TEXT on SQLite: read as text), and the node's path before and after
# ("NULL" on the side that has none).
changes = _syncable_table("ajxp_changes", "seq", node_id=sa.BigInteger, type=sa.Text, source=sa.Text, target=sa.Text)
# An indexed node, as the feed reports it for creations and edits.
index = _syncable_table(
    "ajxp_index", "node_id", node_path=sa.Text, bytesize=sa.BigInteger, md5=sa.String(32), mtime=sa.BigInteger
)

# The conf.sql and auth.sql tables the shim reads, with the column types of
# Pydio 8.2.5's own DDL on each engine (PostgreSQL keeps serialized values in
# bytea, SQLite roles in a blob) and the index names of its PostgreSQL DDL.
# Pydio creates them; tests and the demo create them with create_all() from
# these definitions.
conf_metadata = sa.MetaData()
# A text column Pydio declares binary on PostgreSQL (bytea) and, for roles, on SQLite (blob).
_SERIALIZED = sa.Text().with_variant(postgresql.BYTEA(), "postgresql")
_SERIAL_ROLE = sa.Text().with_variant(postgresql.BYTEA(), "postgresql").with_variant(sa.LargeBinary(), "sqlite")


def _option_rows(
    name: str, key: str, owner: str, owner_length: int, name_length: int, *constraints: sa.Index | sa.Constraint
) -> sa.Table:
    """A table of named options of an owner, as Pydio keeps a user's preferences
    and a workspace's options: a serial key, the owner's id and the option's name
    (both NOT NULL), and its value, bytes that hold a plain or an encoded string."""
    return sa.Table(
        name,
        conf_metadata,
        sa.Column(key, sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(owner, sa.String(owner_length), nullable=False),
        sa.Column("name", sa.String(name_length), nullable=False),
        sa.Column("val", sa.LargeBinary),
        *constraints,
    )


users = sa.Table(
    "ajxp_users",
    conf_metadata,
    sa.Column("login", sa.String(255), primary_key=True),
    sa.Column("password", sa.String(255), nullable=False),
    sa.Column("groupPath", sa.String(255)),
)

user_rights = sa.Table(
    "ajxp_user_rights",
    conf_metadata,
    sa.Column("rid", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("login", sa.String(255), nullable=False),
    sa.Column("repo_uuid", sa.String(33), nullable=False),
    sa.Column("rights", sa.Text, nullable=False),
    sa.Index("ajxp_user_rights_i", "repo_uuid"),
    sa.Index("ajxp_user_rights_k", "login"),
)

user_prefs = _option_rows(
    "ajxp_user_prefs", "rid", "login", 255, 255, sa.UniqueConstraint("login", "name", name="prefs_login_name")
)

repo = sa.Table(
    "ajxp_repo",
    conf_metadata,
    sa.Column("uuid", sa.String(33), primary_key=True),
    sa.Column("parent_uuid", sa.String(33)),
    sa.Column("owner_user_id", sa.String(255)),
    sa.Column("child_user_id", sa.String(255)),
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

repo_options = _option_rows("ajxp_repo_options", "oid", "uuid", 33, 50, sa.Index("ajxp_repo_options_uuid_idx", "uuid"))

roles = sa.Table(
    "ajxp_roles",
    conf_metadata,
    sa.Column("role_id", sa.String(255), primary_key=True),
    sa.Column("serial_role", _SERIAL_ROLE, nullable=False),
    sa.Column("searchable_repositories", sa.Text),
    sa.Column("owner_user_id", sa.String(255), index=True),
    sa.Column("last_updated", sa.Integer, nullable=False, default=0, index=True),
)

groups = sa.Table(
    "ajxp_groups",
    conf_metadata,
    sa.Column("groupPath", sa.String(255), primary_key=True),
    sa.Column("groupLabel", sa.String(255), nullable=False),
)

plugin_configs = sa.Table(
    "ajxp_plugin_configs",
    conf_metadata,
    sa.Column("id", sa.String(50), primary_key=True),
    sa.Column("configs", sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql"), nullable=False),
)

simple_store = sa.Table(
    "ajxp_simple_store",
    conf_metadata,
    sa.Column("object_id", sa.String(255), primary_key=True),
    sa.Column("store_id", sa.String(50), primary_key=True),
    sa.Column("serialized_data", _SERIALIZED.with_variant(mysql.LONGTEXT(), "mysql")),
    sa.Column("binary_data", sa.LargeBinary),
    sa.Column("related_object_id", sa.String(255)),
    sa.Column("insertion_date", sa.DateTime, server_default=sa.func.current_timestamp()),
)

SYNCABLE_TABLES = ("ajxp_changes", "ajxp_index")
TRIGGER_NAMES = ("LOG_INSERT", "LOG_UPDATE", "LOG_DELETE")


def create_engine(
    url: str,
    pool_size: int = 5,
    *,
    read_only: bool = False,
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
    pooled: bool = True,
) -> Engine:
    """A pooled engine for *url*, configured the way the shim needs it.

    MySQL connections use ``utf8mb4`` so that any stored name round-trips.
    *read_only* engines (the feed's) run MySQL in autocommit mode with no
    rollback when a connection returns to the pool: each feed poll then costs
    the statements it runs and nothing else, as the legacy server's do.

    No wait is unbounded: *connect_timeout* bounds a new connection (the
    handshake included), *read_timeout* any wait for the server: a socket read
    on MySQL, a statement (each fetch of a server-side cursor is one) or a lock
    on PostgreSQL, a locked file on SQLite.  A silent server, a stalled network
    or a table locked for minutes then costs a request that many seconds, and
    the thread and its connection come back (a broken connection is dropped
    from the pool, the next one is new).  0 means no limit.  Without *pooled*,
    each use opens a connection of its own (a check that must not wait on a
    pooled connection that has gone bad).
    """
    parsed = sa.engine.make_url(url)
    backend = parsed.get_backend_name()
    kwargs = _pool_options(backend, pool_size, read_only, read_timeout, pooled)
    connect_args: dict = {}
    if backend == "sqlite":
        # SQLite file databases are shared between threads with a small pool;
        # each connection waits for writers instead of failing at once.
        connect_args = {"check_same_thread": False, "timeout": read_timeout or 3600}
    if backend == "mysql":
        parsed = _mysql_options(parsed, connect_args, connect_timeout, read_timeout)
    elif backend == "postgresql":
        _postgresql_options(connect_args, connect_timeout, read_timeout)
    kwargs["connect_args"] = connect_args
    engine = sa.create_engine(parsed, **kwargs)
    if backend == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_on_connect)
    if backend == "postgresql" and read_timeout:
        from .deadline import watch_postgresql

        watch_postgresql(engine, read_timeout + 1)  # just past the server's own statement_timeout
    return engine


def _pool_options(backend: str, pool_size: int, read_only: bool, read_timeout: float, pooled: bool) -> dict:
    """The engine's pool arguments: pinged, bounded connections (see :func:`create_engine`)."""
    if not pooled:
        return {"poolclass": sa.pool.NullPool}
    kwargs: dict = {"pool_pre_ping": True, "future": True}
    if backend == "postgresql" and read_timeout:
        kwargs["pool_pre_ping"] = False  # shim.deadline pings under a deadline instead
    if read_only and backend == "mysql":
        # Autocommit: no transaction to end, so no ROLLBACK round trip when a
        # connection is closed or returned (SQLAlchemy would send one by default).
        kwargs.update(isolation_level="AUTOCOMMIT", pool_reset_on_return=None, skip_autocommit_rollback=True)
        # No ping before each use either (a round trip per poll): a connection the
        # server has closed fails its first statement, and the feed and the
        # watermark retry once on a new one (shim.feed.FeedStream, shim.watermark).
        kwargs["pool_pre_ping"] = False
    if backend != "sqlite":
        kwargs.update(
            pool_size=pool_size, max_overflow=pool_size, pool_recycle=3600, pool_timeout=max(1.0, read_timeout or 30.0)
        )
    return kwargs


def _mysql_options(parsed, connect_args: dict, connect_timeout: float, read_timeout: float):
    """The URL and PyMySQL arguments of a MySQL engine: utf8mb4, no TLS on the loopback, timeouts."""
    if "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    if _is_local(parsed) and not any(k.startswith("ssl") for k in parsed.query):
        # PyMySQL builds a TLS context for every new connection (~50 ms of
        # CPU loading CA certificates) even when TLS is not used; on the
        # loopback or a Unix socket TLS protects nothing.
        connect_args["ssl_disabled"] = True
    if connect_timeout:
        connect_args["connect_timeout"] = max(1, int(connect_timeout))
    if read_timeout:
        connect_args.update(
            read_timeout=read_timeout,
            write_timeout=read_timeout,
            # The server gives up a lock wait too, rather than keep a thread for a day.
            init_command=f"SET SESSION lock_wait_timeout = {max(1, int(read_timeout))}",
        )
    return parsed


def _postgresql_options(connect_args: dict, connect_timeout: float, read_timeout: float) -> None:
    """The libpq arguments of a PostgreSQL engine: timeouts on the server and keepalives on the wire."""
    if connect_timeout:
        connect_args["connect_timeout"] = max(1, int(connect_timeout))
    if read_timeout:
        ms = int(read_timeout * 1000)
        connect_args.update(options=f"-c statement_timeout={ms} -c lock_timeout={ms}", tcp_user_timeout=ms)
    # A peer gone silent (a stalled relay, a dead host) is found by TCP keepalives.
    connect_args.update(keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)


def _is_local(url) -> bool:
    return url.host in (None, "", "localhost", "127.0.0.1", "::1") or "unix_socket" in url.query


class _RowDigest:
    """``shim_digest(col, ...)``: an order-independent digest of rows, the sum of a 60-bit hash per row.

    What MySQL and PostgreSQL compute with MD5 for :mod:`shim.changewatch`;
    SQLite has no hash function, so the shim registers this one.
    """

    def __init__(self):
        self.total = 0

    def step(self, *values):
        digest = hashlib.blake2b(repr(values).encode("utf-8", "surrogatepass"), digest_size=8).digest()
        self.total = (self.total + (int.from_bytes(digest, "big") >> 4)) % (1 << 62)

    def finalize(self):
        return self.total


def sqlite_functions(dbapi_connection, _record):
    dbapi_connection.create_aggregate("shim_digest", -1, _RowDigest)


def _sqlite_on_connect(dbapi_connection, _record):
    # Pydio's PHP writes and the shim reads the same file: WAL lets a long feed
    # read run beside writers.  Bytes that are not UTF-8 must not crash a read
    # (the feed skips such rows), so decode leniently and let the feed check.
    dbapi_connection.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
    sqlite_functions(dbapi_connection, _record)
    try:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
    except Exception:  # read-only or in-memory databases keep their mode
        pass


def dialect_of(engine_or_conn) -> str:
    """``mysql``, ``postgresql`` or ``sqlite``; anything else is refused."""
    name = engine_or_conn.dialect.name
    if name not in ("mysql", "postgresql", "sqlite"):
        raise ValueError(f"unsupported database engine {name!r}: Pydio supports MySQL/MariaDB, PostgreSQL and SQLite")
    return name


def installed_tables(conn) -> set[str]:
    """Which of the Pydio tables the shim needs exist, by name."""
    names = set(sa.inspect(conn).get_table_names())
    return {n for n in names if n.startswith("ajxp_")}


def create_conf_tables(conn) -> None:
    """Create the conf.sql tables the shim reads (tests, demo and stand-in only)."""
    conf_metadata.create_all(conn)


# --- values as the drivers hand them back -------------------------------------------------


def as_bytes(value) -> bytes:
    """A text or binary column as bytes (drivers give str, bytes or memoryview)."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return value


def as_text(value):
    """A text column as str; bytes (an SQLite BLOB, a binary column) read as UTF-8, invalid bytes escaped."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "surrogateescape")
    return value


def first_line(exc_or_text, limit: int = 200) -> str:
    """The first line of an error message (the class name when it has none), at most *limit* characters."""
    if isinstance(exc_or_text, BaseException):
        orig = getattr(exc_or_text, "orig", None) or exc_or_text
        text = str(orig).strip()
        return (text.splitlines()[0] if text else orig.__class__.__name__)[:limit]
    text = (exc_or_text or "").strip()
    return (text.splitlines()[0] if text else "")[:limit]


_MAX_SEQ = sa.select(sa.func.max(changes.c.seq))


def max_seq(conn) -> int:
    """``MAX(seq)`` over the whole ``ajxp_changes`` table, 0 when it is empty."""
    return int(conn.execute(_MAX_SEQ).scalar() or 0)
