"""Checks of the database: reachable, tables, triggers (present and firing), feed index."""

from __future__ import annotations

import secrets
import time

import sqlalchemy as sa

from .. import changewatch, db, dbcheck, fingerprint, schema
from .base import FAILED, OK, SKIPPED, WARNING, Context, Stop, check

#: Tables of Pydio's SQL configuration and authentication that the shim reads.
CONF_TABLES = ("ajxp_users", "ajxp_repo", "ajxp_repo_options", "ajxp_simple_store")
#: Above this many changes, polls without the feed index read noticeably more rows than they return.
LARGE_CHANGES_TABLE = 100_000
TRIGGER_ROLES = {"LOG_INSERT": "new files and folders", "LOG_UPDATE": "edits and renames", "LOG_DELETE": "deletions"}
_NO_DATABASE = {"database": "the database is not reachable (see above)"}


def connect(url: str, timeout: float):
    """``(engine, server version, tables)`` of *url*, or :class:`Stop` saying what is wrong."""
    try:
        engine = dbcheck.connect_engine(url, timeout)
    except dbcheck.DiagnosticError as exc:
        raise Stop(FAILED, exc.seen, exc.fix) from None
    except (ImportError, sa.exc.NoSuchModuleError, sa.exc.ArgumentError) as exc:
        raise Stop(
            FAILED,
            f"cannot use {dbcheck.masked_url(url)}: {db.first_line(exc)}",
            "install the database driver (PyMySQL, psycopg2) or correct the URL's scheme",
        ) from None
    try:
        with engine.connect() as conn:
            version = dbcheck.server_version(conn)
            tables = db.installed_tables(conn)
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        seen, fix = dbcheck.describe_db_error(exc, url)
        raise Stop(FAILED, f"{dbcheck.masked_url(url)}: {seen}", fix) from None
    return engine, version, tables


def need_tables(ctx: Context, *names: str) -> None:
    missing = [n for n in names if n not in ctx.tables]
    if missing:
        raise Stop(SKIPPED, f"{', '.join(missing)} missing (see above)")


@check("database", "database reachable")
def database(ctx: Context):
    ctx.engine, version, ctx.tables = connect(ctx.config.database_url, ctx.timeout)
    return OK, f"{dbcheck.masked_url(ctx.config.database_url)}: {version}"


@check("feed_database", "feed database (database.feed_url) reachable", when=lambda ctx: ctx.config.feed_is_replica)
def feed_database(ctx: Context):
    url = ctx.config.database_feed_url
    engine, version, tables = connect(url, ctx.timeout)
    try:
        missing = [t for t in db.SYNCABLE_TABLES if t not in tables]
        if missing:
            raise Stop(
                FAILED,
                f"{dbcheck.masked_url(url)} ({version}) has no {', '.join(missing)}",
                "database.feed_url must name a replica of Pydio's database",
            )
        with engine.connect() as conn:
            replica_max = db.max_seq(conn)
    finally:
        engine.dispose()
    primary = ""
    if ctx.engine is not None and "ajxp_changes" in ctx.tables:
        with ctx.db.connect() as conn:
            primary = f" (primary: {db.max_seq(conn)})"
    return OK, f"{dbcheck.masked_url(url)}: {version}, ajxp_changes up to seq {replica_max}{primary}"


@check("tables", "tables present", needs=_NO_DATABASE)
def tables(ctx: Context):
    missing_sync = [t for t in db.SYNCABLE_TABLES if t not in ctx.tables]
    missing_conf = [t for t in CONF_TABLES if t not in ctx.tables]
    problems, fixes = [], []
    if missing_sync:
        problems.append(f"no {', '.join(missing_sync)} (meta.syncable's tables: no change feed without them)")
        fixes.append(f"run pydio-shim install-schema{ctx.config_option} to create them with their triggers")
    if missing_conf:
        problems.append(
            f"no {', '.join(missing_conf)} (the shim reads Pydio's users, workspaces and key-store tokens there)"
        )
        fixes.append(
            "Pydio must keep its configuration and users in this database (conf.sql and auth.sql "
            "drivers): check that database.url names Pydio's database"
        )
    if problems:
        raise Stop(FAILED, "; ".join(problems), "; ".join(fixes))
    with ctx.db.connect() as conn:
        last = db.max_seq(conn)
    return OK, f"{', '.join(db.SYNCABLE_TABLES + CONF_TABLES)} present; ajxp_changes holds changes up to seq {last}"


@check("decision_tables", "tables the authorization decisions depend on", needs=_NO_DATABASE)
def decision_tables(ctx: Context):
    """Every table :mod:`shim.changewatch` signs must be there and readable, or no decision is kept."""
    missing = [t for t in changewatch.WATCHED if t not in ctx.tables]
    consequence = "the shim cannot see a right change, so it forwards every feed request to PHP"
    if missing:
        raise Stop(
            FAILED,
            f"no {', '.join(missing)}: {consequence}",
            "database.url must name Pydio's own database, with its conf.sql and auth.sql tables",
        )
    watch = changewatch.ChangeWatch(ctx.db, interval=0)
    started = time.perf_counter()
    try:
        signatures = watch.read_signatures()
        fingerprint.Fingerprints(ctx.db).of("pydio-shim-doctor", "0")
    except sa.exc.SQLAlchemyError as exc:
        raise Stop(
            FAILED,
            f"reading them fails ({db.first_line(exc)}): {consequence}",
            "give database.url's user SELECT on Pydio's tables",
        ) from None
    ms = (time.perf_counter() - started) * 1000
    rows = ", ".join(f"{t} {count}" for t, (count, _digest) in signatures.items())
    note = f" (one check every {ctx.config.auth_check_interval:g} s per worker)"
    return OK, f"readable in {ms:.0f} ms{note}: {rows} rows"


@check("triggers", "triggers on ajxp_index", needs=_NO_DATABASE)
def triggers(ctx: Context):
    need_tables(ctx, "ajxp_index", "ajxp_changes")
    with ctx.db.connect() as conn:
        dialect = db.dialect_of(conn)
        present = schema.installed_triggers(conn)
    missing = [n for n in db.TRIGGER_NAMES if n not in present]
    if missing:
        lost = ", ".join(f"{n} ({TRIGGER_ROLES[n]})" for n in missing)
        raise Stop(
            FAILED,
            f"missing on {dialect}: {lost}: such changes never reach ajxp_changes, so sync clients never see them",
            f"run pydio-shim install-schema{ctx.config_option} (it creates only what is missing)",
        )
    note = " (LOG_UPDATE as LOG_UPDATE_CONTENT + LOG_UPDATE_PATH)" if dialect == "sqlite" else ""
    return OK, f"{', '.join(db.TRIGGER_NAMES)} present on {dialect}{note}"


def _not_innodb(conn) -> dict[str, str]:
    engines = dict(
        conn.execute(
            sa.text(
                "SELECT table_name, engine FROM information_schema.tables WHERE table_schema = DATABASE() "
                "AND table_name IN ('ajxp_index', 'ajxp_changes')"
            )
        ).all()
    )
    return {t: e for t, e in engines.items() if (e or "").lower() != "innodb"}


@check("trigger_firing", "triggers firing (test rolled back)", needs=_NO_DATABASE)
def trigger_firing(ctx: Context):
    need_tables(ctx, "ajxp_index", "ajxp_changes")
    if ctx.status.get("triggers") != OK:
        raise Stop(SKIPPED, "some triggers are missing (see above)")
    dialect = _transactional_dialect(ctx)
    marker = "pydio-shim-doctor-" + secrets.token_hex(6)
    first, second = f"/{marker}.txt", f"/{marker}-renamed.txt"
    expected = [
        ("create", "NULL", first),
        ("content", first, first),
        ("path", first, second),
        ("delete", second, "NULL"),
    ]
    try:
        node_id, logged = _fire_triggers(ctx, dialect, marker, first, second)
    except sa.exc.SQLAlchemyError as exc:
        raise _failed_test_write(exc) from None
    left = _rows_left(ctx, node_id, marker)
    if left:
        raise Stop(
            FAILED,
            f"{left} test row(s) remained after ROLLBACK (node_id {node_id}, identifier {marker}): "
            "the tables do not support transactions",
            f"delete them: DELETE FROM ajxp_changes WHERE repository_identifier = '{marker}'; "
            f"DELETE FROM ajxp_index WHERE repository_identifier = '{marker}'",
        )
    got = [(t, s, d) for t, s, d, _ in logged]
    if got != expected or any(r[3] != marker for r in logged):
        seen = ", ".join("/".join(str(x) for x in r[:3]) for r in logged) or "nothing"
        raise Stop(
            FAILED,
            f"a test insert, content update, rename and delete on ajxp_index logged: {seen} "
            "(expected create, content, path, delete); ROLLED BACK, nothing was kept",
            "the triggers are not Pydio's: drop the faulty one(s) (see the triggers check) and run "
            f"pydio-shim install-schema{ctx.config_option}",
        )
    return OK, (
        "a test insert, content update, rename and delete on ajxp_index logged create, content, path and "
        "delete in ajxp_changes; the transaction was ROLLED BACK: no row was kept (the auto-increment "
        "counters may have advanced, which leaves a harmless gap in seq)"
    )


def _transactional_dialect(ctx: Context) -> str:
    """The database's dialect; :class:`Stop` when a table cannot roll back (the test would leave rows)."""
    with ctx.db.connect() as conn:
        dialect = db.dialect_of(conn)
        odd = _not_innodb(conn) if dialect == "mysql" else {}
    if odd:
        raise Stop(
            WARNING,
            "not run: "
            + ", ".join(f"{t} uses {e}" for t, e in odd.items())
            + ", which cannot roll back, so the test would leave rows behind",
            "convert the tables to InnoDB (ALTER TABLE ... ENGINE=InnoDB) in a quiet moment",
        )
    return dialect


def _failed_test_write(exc: sa.exc.SQLAlchemyError) -> Stop:
    reason = db.first_line(exc)
    if dbcheck.is_permission_error(exc):
        return Stop(
            WARNING,
            f"not run: the database user may not write ({reason}); the shim itself only "
            "reads, so this is fine for serving",
            "to test the triggers, run the doctor once with a configuration whose database.url may "
            "write (e.g. Pydio's own database user)",
        )
    return Stop(
        FAILED,
        f"the test insert/update/delete on ajxp_index failed ({reason}); ROLLED BACK, nothing was kept",
        "a trigger that fails breaks Pydio's own file operations too: compare the "
        "triggers with Pydio's and run install-schema",
    )


def _fire_triggers(ctx: Context, dialect: str, marker: str, first: str, second: str):
    """Insert, update twice and delete one ajxp_index row, read what the triggers logged, roll back."""
    i, c = db.index, db.changes
    wait = max(1, int(ctx.timeout))
    with ctx.db.connect() as conn:
        transaction = conn.begin()
        try:
            if dialect == "mysql":
                conn.execute(sa.text("SET SESSION innodb_lock_wait_timeout = :t"), {"t": wait})
            elif dialect == "postgresql":
                conn.execute(sa.text(f"SET LOCAL lock_timeout = '{wait}s'"))
            result = conn.execute(
                i.insert().values(
                    node_path=first,
                    bytesize=0,
                    md5="d41d8cd98f00b204e9800998ecf8427e",
                    mtime=int(time.time()),
                    repository_identifier=marker,
                )
            )
            node_id = result.inserted_primary_key[0]  # type: ignore[index]
            conn.execute(i.update().where(i.c.node_id == node_id).values(bytesize=1))
            conn.execute(i.update().where(i.c.node_id == node_id).values(node_path=second))
            conn.execute(i.delete().where(i.c.node_id == node_id))
            logged = [
                tuple(r)
                for r in conn.execute(
                    sa.select(c.c.type, c.c.source, c.c.target, c.c.repository_identifier)
                    .where(c.c.node_id == node_id)
                    .order_by(c.c.seq)
                )
            ]
        finally:
            transaction.rollback()
    return node_id, logged


def _rows_left(ctx: Context, node_id, marker: str) -> int:
    i, c = db.index, db.changes
    with ctx.db.connect() as conn:
        left = conn.execute(
            sa.select(sa.func.count()).select_from(i).where(i.c.node_id == node_id, i.c.repository_identifier == marker)
        ).scalar_one()
        left += conn.execute(
            sa.select(sa.func.count()).select_from(c).where(c.c.node_id == node_id, c.c.repository_identifier == marker)
        ).scalar_one()
    return left


@check("feed_index", "feed index on ajxp_changes", needs=_NO_DATABASE)
def feed_index(ctx: Context):
    need_tables(ctx, "ajxp_changes")
    with ctx.db.connect() as conn:
        name = schema.feed_index(conn)
        invalid = schema.invalid_pg_index(conn)
        last = db.max_seq(conn)
    if name:
        return OK, f"{name} on (repository_identifier, seq): a poll reads only its workspace's new rows"
    if invalid:
        raise Stop(
            WARNING,
            f"{schema.INDEX_NAME} exists but is INVALID (an interrupted build): queries ignore it",
            f"DROP INDEX CONCURRENTLY {schema.INDEX_NAME}; then pydio-shim install-schema --with-index",
        )
    if last > LARGE_CHANGES_TABLE:
        raise Stop(
            WARNING,
            f"no index on (repository_identifier, seq) and ajxp_changes is at seq {last}: each "
            "poll reads the rows of every workspace",
            f"pydio-shim install-schema --with-index{ctx.config_option}",
        )
    return OK, (
        f"no index on (repository_identifier, seq) yet, fine while ajxp_changes is small (seq {last}); add "
        "it with install-schema --with-index when it grows"
    )
