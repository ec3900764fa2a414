"""Connecting to a database to check it, and saying in one line what went wrong.

Used by ``check-config``, ``install-schema`` and the doctor: a connection made
for the occasion (no pool), a server version, and an error turned into the
one-line reason and fix an admin can act on.
"""

from __future__ import annotations

import os
import re

import sqlalchemy as sa

from .db import dialect_of, first_line, sqlite_functions


def masked_url(url: str) -> str:
    """*url* with its password replaced by ``***``."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: hide anything between ':' and '@'
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def os_reason(exc: BaseException) -> str:
    """The operating system's words for a connection failure buried in *exc*, if any."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(current))
        if match:
            return match.group(1).strip()
        current = current.__cause__ or current.__context__
    return ""


def describe_db_error(exc: Exception, url: str) -> tuple[str, str]:
    """``(what was seen, how to fix it)`` for a failed database connection, in plain words."""
    parsed = sa.engine.make_url(url)
    orig = getattr(exc, "orig", None) or exc
    text = str(orig)
    code = orig.args[0] if getattr(orig, "args", None) and isinstance(orig.args[0], int) else None
    lower = text.lower()
    default_port = {"mysql": 3306, "postgresql": 5432}.get(parsed.get_backend_name(), "")
    where = f"{parsed.host or 'localhost'}:{parsed.port or default_port}"
    user = parsed.username or "(no user)"
    name = parsed.database or "(none)"
    if code == 1045 or "password authentication failed" in lower:
        return (
            f"the server at {where} refused the password of user {user!r} ({first_line(text)})",
            "give the right password in database.url (characters such as @ : / % in it must be "
            "percent-encoded, e.g. @ as %40)",
        )
    if code == 1698 or "no pg_hba.conf entry" in lower or "peer authentication failed" in lower:
        return (
            f"the server at {where} does not let user {user!r} log in from here ({first_line(text)})",
            "MariaDB/MySQL: give the user a password login for this host; PostgreSQL: add a host line for "
            "this client and database in pg_hba.conf",
        )
    if code in (1044, 1142) or "permission denied" in lower:
        return (
            f"user {user!r} may not use database {name!r} ({first_line(text)})",
            f"grant the user access to {name} (SELECT, and INSERT/UPDATE/DELETE for the trigger test)",
        )
    if code == 1049 or (
        parsed.get_backend_name() == "postgresql" and "database" in lower and "does not exist" in lower
    ):
        return (f"there is no database {name!r} on {where}", "correct the database name in database.url")
    if parsed.get_backend_name() == "postgresql" and "role" in lower and "does not exist" in lower:
        return (f"there is no user {user!r} on {where}", "correct the user name in database.url")
    if (
        code == 2005
        or "could not translate host name" in lower
        or "name or service not known" in lower
        or "unknown host" in lower
    ):
        return (f"the host {parsed.host!r} cannot be resolved", "correct the host in database.url")
    if "timeout" in lower or "timed out" in lower:
        return (
            f"no answer from {where} in time (a firewall dropping packets, or the server is overloaded)",
            "check that the database server is up and that this machine may reach it",
        )
    if code == 2003 or "connection refused" in lower or "could not connect" in lower:
        return (
            f"nothing accepts connections at {where} (server down, closed port or wrong port)",
            "start the database server, or correct the host and port in database.url",
        )
    if "unable to open database file" in lower:
        return (
            f"SQLite cannot open {parsed.database!r} (a missing directory or no permission)",
            "correct the path in database.url, and let the shim's user read and write the file and its directory",
        )
    return first_line(text) or exc.__class__.__name__, "correct database.url, or start the database server"


def sqlite_file_problem(url: str) -> str | None:
    """Why an SQLite *url* cannot be Pydio's database (in memory, or no such file), else None."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    path = parsed.database
    if not path or path == ":memory:":
        return "database.url names an in-memory SQLite database: it holds no Pydio data"
    if not parsed.query.get("uri") and not os.path.exists(path):
        return f"the SQLite file {path} does not exist (SQLite would silently create an empty one)"
    return None


class DiagnosticError(Exception):
    """A database setting that cannot work, with how to fix it (``.fix``)."""

    def __init__(self, seen: str, fix: str):
        super().__init__(seen)
        self.seen, self.fix = seen, fix


def connect_engine(url: str, timeout: float):
    """An engine for a short diagnostic session: no pool, short connection timeouts.

    Unlike :func:`shim.db.create_engine` it never creates an SQLite file that
    does not exist (SQLite would silently make an empty database).
    """
    parsed = sa.engine.make_url(url)
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    connect_args: dict = {}
    if backend == "sqlite":
        problem = sqlite_file_problem(url)
        if problem:
            raise DiagnosticError(
                problem,
                "set database.url to the SQLite file Pydio uses (an absolute path "
                "needs four slashes: sqlite:////var/lib/pydio/pydio.db)",
            )
        connect_args = {"timeout": timeout}
    elif backend == "mysql":
        if driver in ("pymysql", "mysqldb"):
            connect_args = {"connect_timeout": max(1, int(timeout))}
        if "charset" not in parsed.query:
            parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    elif backend == "postgresql" and driver in ("psycopg2", "psycopg"):
        connect_args = {"connect_timeout": max(1, int(timeout))}
    engine = sa.create_engine(parsed, poolclass=sa.pool.NullPool, connect_args=connect_args)
    if backend == "sqlite":
        sa.event.listen(engine, "connect", sqlite_functions)
    return engine


def server_version(conn) -> str:
    """The database server's name and version, e.g. ``MariaDB 10.11.19``."""
    dialect = dialect_of(conn)
    if dialect == "sqlite":
        return "SQLite " + str(conn.execute(sa.text("SELECT sqlite_version()")).scalar())
    if dialect == "postgresql":
        return "PostgreSQL " + str(conn.execute(sa.text("SHOW server_version")).scalar())
    version = str(conn.execute(sa.text("SELECT VERSION()")).scalar())
    return ("MariaDB " if "mariadb" in version.lower() else "MySQL ") + version.split("-", maxsplit=1)[0]


def is_permission_error(exc) -> bool:
    """Whether a database error says the user may not do what was asked (read-only, no privilege)."""
    orig = getattr(exc, "orig", None) or exc
    code = orig.args[0] if getattr(orig, "args", None) and isinstance(orig.args[0], int) else None
    text = str(orig).lower()
    return (
        code in (1142, 1044, 1227)
        or "permission denied" in text
        or "readonly database" in text
        or "read-only" in text
        or "read only" in text
    )
