"""Shared fixtures: a fresh database on each engine, and the legacy stand-in.

MariaDB and PostgreSQL come from the running services (127.0.0.1:3306 as root,
127.0.0.1:5432 as postgres, override with ``SHIM_TEST_MYSQL_URL`` /
``SHIM_TEST_PG_URL``); SQLite lives in a temporary directory.  Each test that
asks for ``db_url`` gets a database of its own, dropped afterwards.

A service that cannot be reached skips its tests on a developer machine and
*fails* them when ``CI`` is set: CI must never go green on skipped engines.
"""

from __future__ import annotations

import os
import shutil
import uuid

import pytest
import sqlalchemy as sa

from shim import db, schema
from shim.demo.standin import LegacyStandin
from shim.demo.stack import ServerThread

MYSQL_ADMIN_URL = os.environ.get("SHIM_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/")
PG_ADMIN_URL = os.environ.get("SHIM_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
ENGINES = ("sqlite", "mysql", "postgresql")

USERS = {
    # login: (password, groupPath)
    "alice": ("alice-secret", "/"),
    "bob": ("bob-secret", "/"),
    "carol": ("carol-secret", "/sales"),
}


def service_missing(what: str, exc: Exception):
    message = f"{what} is not reachable ({exc.__class__.__name__}: {exc}); run .ci/run or start the service"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _create_database(engine_name: str, tmp_path) -> tuple[str, callable]:
    name = "shimtest_" + uuid.uuid4().hex[:12]
    if engine_name == "sqlite":
        return f"sqlite:///{tmp_path}/{name}.db", lambda: None
    admin_url = MYSQL_ADMIN_URL if engine_name == "mysql" else PG_ADMIN_URL
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with admin.connect() as conn:
            if engine_name == "mysql":
                conn.execute(sa.text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
            else:
                conn.execute(sa.text(f"CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0"))
    except sa.exc.OperationalError as exc:
        service_missing({"mysql": "MariaDB", "postgresql": "PostgreSQL"}[engine_name], exc)
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)

    def drop():
        with admin.connect() as conn:
            if engine_name == "postgresql":
                conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()
    return url, drop


@pytest.fixture(params=ENGINES)
def engine_name(request):
    return request.param


@pytest.fixture
def empty_db_url(engine_name, tmp_path):
    """The URL of a new, empty database on the engine under test."""
    url, drop = _create_database(engine_name, tmp_path)
    yield url
    drop()


@pytest.fixture
def db_url(empty_db_url):
    """A new database holding Pydio's conf tables and the meta.syncable schema."""
    engine = db.create_engine(empty_db_url)
    with engine.begin() as conn:
        db.create_conf_tables(conn)
        schema.install_syncable_schema(conn)
    engine.dispose()
    return empty_db_url


@pytest.fixture(scope="module")
def sqlite_standin(tmp_path_factory):
    """A stand-in on SQLite shared by a whole test module (for tests where the engine does not matter).

    ``.url``, ``.db_url`` and ``.base`` (its directory) are set on it.
    """
    base = tmp_path_factory.mktemp("standin")
    db_url = f"sqlite:///{base}/pydio.db"
    app = LegacyStandin(db_url, str(base / "data"))
    app.install()
    for login, (password, group) in USERS.items():
        app.add_user(login, password, group)
    server = ServerThread(app).start()
    app.url, app.db_url, app.base = server.url, db_url, base
    yield app
    server.stop()
    app.engine.dispose()


@pytest.fixture
def nginx_binary():
    """The path of nginx (installed by tests/services/start.sh)."""
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(path):
        service_missing("nginx", FileNotFoundError(path))
    return path


@pytest.fixture
def standin(db_url, tmp_path):
    """The legacy stand-in served on a free loopback port, with three users."""
    app = LegacyStandin(db_url, str(tmp_path / "data"))
    for login, (password, group) in USERS.items():
        app.add_user(login, password, group)
    server = ServerThread(app).start()
    app.url = server.url
    yield app
    server.stop()
    app.engine.dispose()


def pytest_sessionfinish(session, exitstatus):
    """In CI a skipped test is a failure: every engine and service must have run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped and session.exitstatus == 0:
        print(f"\nCI: {skipped} test(s) skipped; in CI every test must run")
        session.exitstatus = 1
