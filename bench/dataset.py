"""The benchmark database: Pydio's schema holding 1,000,000 change rows in 50 workspaces.

Layout (``LAYOUT`` below names it; a database with another layout is rebuilt):

- 50 shared workspaces ``benchws00`` .. ``benchws49`` in ``ajxp_repo`` with
  ``META_SOURCES`` marking them syncable and the stock ``RECYCLE_BIN``;
  user ``bench`` has read-write rights on all of them.
- 700,000 nodes; node *n* belongs to ``benchws{n % 1000:02d}`` when
  ``1 <= n % 1000 <= 49`` (49 small workspaces of 700 nodes), else to
  ``benchws00`` (the big one).  Every seventh file name is non-ASCII, every
  500th node is a folder.
- seq 1..700,000: the ``create`` of node *seq*; seq 700,001..1,000,000: one
  later change of a pseudo-random node (``content`` 60 %, ``path`` 30 %,
  ``delete`` 10 %; deleted nodes are gone from ``ajxp_index``).  So
  ``benchws00`` holds about 951,000 rows and each small workspace about 1,000.

The rows are generated inside MariaDB from its ``seq_1_to_N`` sequence tables
(a few seconds), with the triggers dropped during the load and re-created by
:func:`shim.schema.install_syncable_schema` afterwards.  A database that already
holds this layout and row count is reused as it is.
"""

from __future__ import annotations

import time

import phpserialize
import sqlalchemy as sa

from shim import db, schema
from shim.demo.standin import LegacyStandin

DATABASE = "shimbench"
N_CHANGES = 1_000_000
N_NODES = 700_000
N_WORKSPACES = 50
BIG_WORKSPACE = "benchws00"
USER, PASSWORD = "bench", "bench-secret"
LAYOUT = f"v2 changes={N_CHANGES} nodes={N_NODES} workspaces={N_WORKSPACES}"
META_SOURCES = "$phpserial$" + phpserialize.dumps({"meta.syncable": {"REPO_SYNCABLE": True}}).decode()


def workspace_ids() -> list[str]:
    return [f"benchws{i:02d}" for i in range(N_WORKSPACES)]


def admin_url(server_url: str) -> str:
    return server_url.rstrip("/") + "/"


def database_url(server_url: str) -> str:
    return admin_url(server_url) + DATABASE + "?charset=utf8mb4"


# SQL expressions of node n (a column or expression named in {n}).
_WS = "CONCAT('benchws', LPAD(IF({n} % 1000 BETWEEN 1 AND 49, {n} % 1000, 0), 2, '0'))"
_PATH = (
    "CONCAT('/folder-', LPAD({n} DIV 500, 4, '0'), "
    "IF({n} % 500 = 0, '', CONCAT(IF({n} % 7 = 0, '/r\u00e9sum\u00e9-', '/document-'), {n}, '.txt')))"
)
# The node a late change (seq s > N_NODES) touches: 7919 is prime to N_NODES, so each node at most once.
_LATE_NODE = f"((({{s}} * 7919) % {N_NODES}) + 1)"


def _expr(template: str, **names) -> str:
    return template.format(**names)


def _late_type(s: str) -> str:
    return f"CASE WHEN {s} % 10 < 6 THEN 'content' WHEN {s} % 10 < 9 THEN 'path' ELSE 'delete' END"


def ready(server_url: str) -> bool:
    """True when the database exists with this layout and row count."""
    engine = sa.create_engine(admin_url(server_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if (
                conn.execute(
                    sa.text(
                        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = :d "
                        "AND table_name = 'shimbench_layout'"
                    ),
                    {"d": DATABASE},
                ).scalar()
                != 1
            ):
                return False
            layout = conn.execute(sa.text(f"SELECT layout FROM {DATABASE}.shimbench_layout")).scalar()
            if layout != LAYOUT:
                return False
            count = conn.execute(sa.text(f"SELECT COUNT(*) FROM {DATABASE}.ajxp_changes")).scalar()
            return count == N_CHANGES
    finally:
        engine.dispose()


def build(server_url: str, log=print) -> None:
    """(Re)create the database with :data:`LAYOUT`."""
    started = time.monotonic()
    admin = sa.create_engine(admin_url(server_url), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DATABASE}"))
        conn.execute(sa.text(f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
    admin.dispose()
    url = database_url(server_url)
    engine = db.create_engine(url)
    with engine.begin() as conn:
        db.create_conf_tables(conn)
        schema.install_syncable_schema(conn)
        for name in db.TRIGGER_NAMES:  # bulk rows are written directly, as they stand after the fact
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name}"))
    n, s = "seq", "seq"
    ws, path = _expr(_WS, n=n), _expr(_PATH, n=n)
    late = _expr(_LATE_NODE, s=s)
    late_ws, late_path = _expr(_WS, n=late), _expr(_PATH, n=late)
    statements = [
        f"""INSERT INTO ajxp_index (node_id, node_path, bytesize, md5, mtime, repository_identifier)
            SELECT seq, {path}, IF(seq % 500 = 0, 0, (seq * 37) % 10000000),
                   IF(seq % 500 = 0, 'directory', MD5(seq)), 1600000000 + seq, {ws}
            FROM seq_1_to_{N_NODES}""",
        f"""INSERT INTO ajxp_changes (seq, repository_identifier, node_id, type, source, target)
            SELECT seq, {ws}, seq, 'create', 'NULL', {path} FROM seq_1_to_{N_NODES}""",
        f"""INSERT INTO ajxp_changes (seq, repository_identifier, node_id, type, source, target)
            SELECT seq, {late_ws}, {late}, {_late_type(s)},
                   CASE {_late_type(s)} WHEN 'path' THEN CONCAT('/old', {late_path}) ELSE {late_path} END,
                   CASE {_late_type(s)} WHEN 'delete' THEN 'NULL' ELSE {late_path} END
            FROM seq_{N_NODES + 1}_to_{N_CHANGES}""",
        "DELETE i FROM ajxp_index i JOIN ajxp_changes c ON c.node_id = i.node_id AND c.type = 'delete'",
    ]
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
        schema.install_syncable_schema(conn)  # re-creates the triggers
    with engine.begin() as conn:
        for ws_id in workspace_ids():
            conn.execute(
                db.repo.insert().values(
                    uuid=ws_id,
                    slug=ws_id.replace("benchws", "bench-"),
                    display=ws_id,
                    accessType="fs",
                    isTemplate=False,
                    inferOptionsFromParent=False,
                    enabled=True,
                    writeable=True,
                    bcreate=False,
                    path="",
                    recycle="",
                    groupPath="/",
                )
            )
            for name, value in (
                ("PATH", f"AJXP_DATA_PATH/{ws_id}"),
                ("RECYCLE_BIN", "recycle_bin"),
                ("META_SOURCES", META_SOURCES),
            ):
                conn.execute(db.repo_options.insert().values(uuid=ws_id, name=name, val=value.encode()))
    standin = LegacyStandin(url, "/nonexistent-bench-data")
    standin.add_user(USER, PASSWORD, "/", rights=workspace_ids())
    standin.engine.dispose()
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE TABLE ajxp_changes, ajxp_index"))
        conn.execute(sa.text("CREATE TABLE shimbench_layout (layout VARCHAR(255) NOT NULL)"))
        conn.execute(sa.text("INSERT INTO shimbench_layout VALUES (:l)"), {"l": LAYOUT})
    engine.dispose()
    log(f"dataset: built {DATABASE} ({N_CHANGES:,} changes) in {time.monotonic() - started:.1f}s")


def ensure(server_url: str, log=print) -> str:
    """The URL of the benchmark database, built first when needed."""
    if ready(server_url):
        log(f"dataset: reusing {DATABASE} ({N_CHANGES:,} changes, layout {LAYOUT!r})")
    else:
        build(server_url, log)
    return database_url(server_url)


def stats(url: str) -> dict:
    """Row counts the report quotes."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        big = conn.execute(
            sa.text("SELECT COUNT(*) FROM ajxp_changes WHERE repository_identifier = :w"), {"w": BIG_WORKSPACE}
        ).scalar()
        small = conn.execute(
            sa.text("SELECT COUNT(*) FROM ajxp_changes WHERE repository_identifier = 'benchws01'")
        ).scalar()
        max_seq = conn.execute(sa.text("SELECT MAX(seq) FROM ajxp_changes")).scalar()
        nodes = conn.execute(sa.text("SELECT COUNT(*) FROM ajxp_index")).scalar()
        version = conn.execute(sa.text("SELECT VERSION()")).scalar()
    engine.dispose()
    return {"big_rows": big, "small_rows": small, "max_seq": max_seq, "index_rows": nodes, "server": version}
