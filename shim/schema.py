"""``pydio-shim install-schema``: the meta.syncable tables, triggers and feed index.

What is missing is created, nothing existing is altered or dropped, so running
it twice is harmless (the second run does nothing).  The statements come from
:mod:`shim.db` (one variant per engine, matching Pydio's own).

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

INDEX_NAME = "ajxp_changes_repo_seq"
INDEX_COLUMNS = ("repository_identifier", "seq")
#: How many characters of repository_identifier MySQL indexes (a TEXT column needs a prefix).
MYSQL_PREFIX_LENGTH = 191


def index_statement(dialect: str) -> str:
    """The ``CREATE INDEX`` for the feed index on *dialect*."""
    if dialect == "mysql":
        return (f"CREATE INDEX {INDEX_NAME} ON ajxp_changes "
                f"(repository_identifier({MYSQL_PREFIX_LENGTH}), seq)")
    if dialect == "postgresql":
        return f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX_NAME} ON ajxp_changes (repository_identifier, seq)"
    return f"CREATE INDEX IF NOT EXISTS {INDEX_NAME} ON ajxp_changes (repository_identifier, seq)"


def feed_index(conn) -> str | None:
    """The name of an index on ajxp_changes leading with (repository_identifier, seq), if any.

    Any name counts: an operator may have created an equivalent one by hand.
    """
    if "ajxp_changes" not in db.installed_tables(conn):
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
    if db.dialect_of(conn) != "postgresql":
        return False
    row = conn.execute(sa.text(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = :name AND pg_table_is_visible(c.oid)"), {"name": INDEX_NAME}).first()
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
    dialect = db.dialect_of(conn)
    result = Plan(dialect, schema=db.planned_statements(conn))
    if with_index:
        result.index_present = feed_index(conn)
        result.index_invalid = invalid_pg_index(conn)
        if result.index_present is None and not result.index_invalid:
            result.index = index_statement(dialect)
    return result


def sample_poll(conn) -> tuple[str, int]:
    """A typical poll to explain: the most recently changed identifier, the last 100 changes."""
    if "ajxp_changes" not in db.installed_tables(conn):
        return "0", 0
    row = conn.execute(sa.select(db.changes.c.repository_identifier, db.changes.c.seq)
                       .order_by(db.changes.c.seq.desc()).limit(1)).first()
    if row is None:
        return "0", 0
    return row[0], max(0, int(row[1]) - 100)


def explain_feed_query(conn, identifier: str, seq: int) -> list[str]:
    """The engine's plan for :func:`shim.feed.feed_query`, one line per plan row."""
    dialect = db.dialect_of(conn)
    sql = str(feed.feed_query(identifier, seq, None).compile(
        dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    if dialect == "sqlite":
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all()
        return [str(r[-1]) for r in rows]
    rows = conn.exec_driver_sql("EXPLAIN " + sql)
    if dialect == "postgresql":
        return [str(r[0]) for r in rows]
    keys = list(rows.keys())
    lines = []
    for r in rows.all():
        values = dict(zip(keys, r))
        lines.append(" ".join(f"{k}={values[k]}" for k in ("table", "type", "possible_keys", "key", "key_len",
                                                            "rows", "Extra") if k in values))
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
        before = explain_feed_query(conn, *sample) if with_index and "ajxp_changes" in db.installed_tables(conn) \
            else None
    terminator = ";"
    if dry_run:
        out(f"-- pydio-shim install-schema --dry-run ({todo.dialect}): nothing is changed")
    if with_index and before is not None:
        out(f"-- feed query plan before, for repository_identifier {sample[0]!r} after seq {sample[1]}:")
        for line in before:
            out(f"--   {line}")
    elif with_index:
        out("-- feed query plan before: none, there is no ajxp_changes table yet")
    if todo.index_invalid:
        out(f"-- index {INDEX_NAME} exists but is INVALID (an interrupted build): drop it with "
            f"DROP INDEX CONCURRENTLY {INDEX_NAME}; then run this again")
    if not todo.statements:
        out("-- nothing to do: the tables and triggers are installed"
            + (f", and the feed index ({todo.index_present})" if with_index and todo.index_present else ""))
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
            after = explain_feed_query(conn, *sample)
        out(f"-- feed query plan after, for repository_identifier {sample[0]!r} after seq {sample[1]}:")
        for line in after:
            out(f"--   {line}")
    if dry_run:
        out(f"-- {len(todo.statements)} statement(s) would run")
    else:
        out(f"-- done: {len(todo.statements)} statement(s) ran")
    return todo
