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
from helpers import plain_engine, serve_app, shim_environ

from shim import db, schema
from shim.demo.stack import ServerThread
from shim.demo.standin import LegacyStandin

#: Fixtures of their own modules: php_fpm (a real php-fpm).
pytest_plugins = ["phpfpm"]

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
        admin = plain_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            if engine_name == "mysql":
                conn.execute(sa.text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
            else:
                conn.execute(sa.text(f"CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0"))
    except sa.exc.OperationalError as exc:
        service_missing({"mysql": "MariaDB", "postgresql": "PostgreSQL"}[engine_name], exc)
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)

    def drop():
        # Connections a test left open (a server thread's pool) would hold locks
        # DROP DATABASE waits for: end them first.
        with admin.connect() as conn:
            if engine_name == "postgresql":
                conn.execute(
                    sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
                )
            else:
                ids = (
                    conn.execute(
                        sa.text(
                            "SELECT id FROM information_schema.processlist"
                            f" WHERE db = '{name}' AND id <> CONNECTION_ID()"
                        )
                    )
                    .scalars()
                    .all()
                )
                for connection_id in ids:
                    try:
                        conn.execute(sa.text(f"KILL {int(connection_id)}"))
                    except sa.exc.OperationalError:  # already gone
                        pass
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()

    return url, drop


#: What a test may have changed in a database's schema (tables, columns, indexes, triggers and
#: trigger functions), one catalog query per engine: the inspector's per-table queries cost
#: more than emptying the tables.
_SCHEMA_QUERIES = {
    "mysql": (
        "SELECT table_name, column_name, column_type FROM information_schema.columns"
        " WHERE table_schema = DATABASE()"
        " UNION ALL SELECT table_name, index_name, column_name FROM information_schema.statistics"
        " WHERE table_schema = DATABASE()"
        " UNION ALL SELECT event_object_table, trigger_name, action_statement FROM information_schema.triggers"
        " WHERE trigger_schema = DATABASE()"
    ),
    "postgresql": (
        "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns"
        " WHERE table_schema = 'public'"
        " UNION ALL SELECT tablename::text, indexname::text, indexdef FROM pg_indexes WHERE schemaname = 'public'"
        " UNION ALL SELECT tgrelid::regclass::text, tgname::text, pg_get_triggerdef(oid) FROM pg_trigger"
        " WHERE NOT tgisinternal"
        " UNION ALL SELECT 'function', proname::text, prosrc FROM pg_proc"
        " WHERE pronamespace = 'public'::regnamespace"
    ),
}

#: The tables holding rows, and the counters that moved, in one query (filled in per table).
_DIRTY_QUERIES = {
    "mysql": (
        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND auto_increment > 1",
        "SELECT '{table}' FROM {table} HAVING count(*) > 0",
    ),
    "postgresql": (
        "SELECT sequencename::text FROM pg_sequences WHERE schemaname = 'public' AND last_value IS NOT NULL",
        "SELECT '{table}' FROM {table} HAVING count(*) > 0",
    ),
}


def _schema_signature(conn) -> tuple:
    return tuple(sorted(tuple(row) for row in conn.execute(sa.text(_SCHEMA_QUERIES[conn.dialect.name]))))


class _SchemaChanged(Exception):
    pass


class SharedDatabase:
    """One database per engine and test process, holding Pydio's schema, emptied between tests.

    Creating a MariaDB or PostgreSQL database costs most of a second; emptying
    its tables costs milliseconds.  ``TRUNCATE`` also restarts the sequences,
    so each test sees ``seq`` start at 1.  A test that changed the schema
    (dropped a trigger, added an index) gets the database re-created after it.
    """

    def __init__(self, engine_name: str, tmp_path_factory):
        self.engine_name = engine_name
        self.tmp = tmp_path_factory.mktemp(f"shared-{engine_name}")
        self._create()

    def _create(self):
        self.url, self._drop = _create_database(self.engine_name, self.tmp)
        engine = db.create_engine(self.url)
        with engine.begin() as conn:
            db.create_conf_tables(conn)
            schema.install_syncable_schema(conn)
            self.tables = sorted(sa.inspect(conn).get_table_names())
            self.signature = _schema_signature(conn)
        engine.dispose()
        # Kept between tests: a new engine's first connection costs tens of milliseconds.
        self.engine = plain_engine(self.url, poolclass=sa.pool.QueuePool, pool_size=1, pool_pre_ping=True)

    def reset(self):
        """Empty the tables a test wrote to (or re-create the database when its schema was changed)."""
        try:
            with self.engine.begin() as conn:
                if _schema_signature(conn) != self.signature:
                    raise _SchemaChanged
                self._empty(conn)
        except (sa.exc.OperationalError, _SchemaChanged):
            # A changed schema, or a connection a test left busy holds a lock: start afresh.
            self.drop()
            self._create()

    def _empty(self, conn) -> None:
        counters, rows = _DIRTY_QUERIES[self.engine_name]
        moved = set(conn.execute(sa.text(counters)).scalars())
        filled = set(conn.execute(sa.text(" UNION ALL ".join(rows.format(table=t) for t in self.tables))).scalars())
        if self.engine_name == "postgresql":
            conn.execute(sa.text("SET LOCAL lock_timeout = '5s'"))
            if filled:
                conn.execute(sa.text(f"TRUNCATE {', '.join(sorted(filled))}"))
            for sequence in sorted(moved):
                conn.execute(sa.text(f"ALTER SEQUENCE {sequence} RESTART"))
        else:
            conn.execute(sa.text("SET SESSION lock_wait_timeout = 5"))
            for table in sorted(filled | moved):  # TRUNCATE also restarts AUTO_INCREMENT
                conn.execute(sa.text(f"TRUNCATE TABLE {table}"))

    def drop(self):
        self.engine.dispose()
        self._drop()


@pytest.fixture(scope="session")
def shared_databases(tmp_path_factory):
    """The per-process shared databases, by engine, created on first use."""
    made: dict[str, SharedDatabase] = {}
    yield made
    for database in made.values():
        database.drop()


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
def db_url(engine_name, tmp_path, tmp_path_factory, shared_databases):
    """A database holding Pydio's conf tables and the meta.syncable schema, all tables empty.

    SQLite gets a new file each time (that costs nothing); MariaDB and PostgreSQL
    a shared database emptied after each test (see :class:`SharedDatabase`).
    """
    if engine_name == "sqlite":
        url, _drop = _create_database("sqlite", tmp_path)
        engine = db.create_engine(url)
        with engine.begin() as conn:
            db.create_conf_tables(conn)
            schema.install_syncable_schema(conn)
        engine.dispose()
        yield url
        return
    if engine_name not in shared_databases:
        shared_databases[engine_name] = SharedDatabase(engine_name, tmp_path_factory)
    database = shared_databases[engine_name]
    yield database.url
    database.reset()


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
def start_shim():
    """Serve shims in threads for one test: ``start_shim(environ)`` or ``start_shim(config=...)``.

    Each returns a :class:`helpers.RunningShim`; all are stopped after the test.
    """
    running = []

    def start(environ=None, config=None, **create_args):
        shim = serve_app(environ, config, **create_args)
        running.append(shim)
        return shim

    yield start
    for shim in running:
        shim.stop()


@pytest.fixture
def make_shim(standin, db_url, start_shim):
    """Build and serve shims in front of the stand-in: ``make_shim(max_age=..., deny_ttl=..., clock=...)``.

    Returns the application, with the URL it is served at as ``.url``.
    """

    def make(max_age: float | None = None, deny_ttl: float | None = None, cache_size: int | None = None, clock=None):
        settings = {}
        for name, value in (("auth_max_age", max_age), ("auth_deny_cache_ttl", deny_ttl),
                            ("auth_cache_size", cache_size)):  # fmt: skip
            if value is not None:
                settings[name] = value
        running = start_shim(shim_environ(standin.url, db_url, **settings), clock=clock)
        running.app.url = running.url
        return running.app

    return make


@pytest.fixture(scope="session")
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


DB_FIXTURES = {"db_url", "empty_db_url", "engine_name", "standin", "sqlite_standin"}
NGINX_FIXTURES = {"nginx_binary", "nginx_in_front"}
#: Modules whose tests start real servers (gunicorn, nginx, php-fpm) or move large bodies.
SLOW_MODULES = {
    "test_proxy",
    "test_proxy_bulk",
    "test_e2e_nginx",
    "test_fastcgi_upstream",
    "test_demo",
    "test_denylist",
    "test_feed_property",
}


def pytest_collection_modifyitems(config, items):
    """Mark each test by what it talks to: ``db``, ``nginx``, ``slow`` (see pytest.ini)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & DB_FIXTURES:
            item.add_marker(pytest.mark.db)
        if fixtures & NGINX_FIXTURES:
            item.add_marker(pytest.mark.nginx)
        if (
            item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES
            or "php_fpm" in fixtures
            or fixtures & NGINX_FIXTURES
        ):
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session, exitstatus):
    """In CI a skipped test is a failure: every engine and service must have run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped and session.exitstatus == 0:
        print(f"\nCI: {skipped} test(s) skipped; in CI every test must run")
        session.exitstatus = 1
