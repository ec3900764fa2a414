"""Has anything an authorization decision depends on changed in the database?

The legacy server decides who may read a workspace from a handful of tables
(docs/authorization.md says which and why).  One query per worker process,
run at most every ``auth.check_interval`` seconds and only when a request
needs an answer, reads a signature of each of them: its row count and an
order-independent sum of one hash per row, computed by the database.  When
any signature differs from the last one, the *generation* goes up, and every
cached decision, workspace and token made under an older generation is
checked again before it is used (:mod:`shim.fingerprint`): the ones whose own
rows changed are dropped, the others carry on.

Files named in ``auth.watched_files`` (Pydio's ``bootstrap.json``, its plugin
cache) count like tables: a new size or modification time is a change.

Freshness is exact, not a lifetime: a request uses the last signatures only
when they were read less than ``interval`` seconds before it started, so a
change committed more than ``interval`` seconds before a poll always reaches
that poll.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import sqlalchemy as sa

from .cache import Clock

log = logging.getLogger(__name__)

#: The tables and columns the legacy decision reads (``where``: the rows that count).
WATCHED: dict[str, tuple[tuple[str, ...], str]] = {
    "ajxp_users": (("login", "password", "groupPath"), ""),
    "ajxp_user_rights": (("rid", "login", "repo_uuid", "rights"), ""),
    "ajxp_roles": (("role_id", "serial_role", "owner_user_id"), ""),
    "ajxp_repo": (
        (
            "uuid", "parent_uuid", "owner_user_id", "child_user_id", "path", "display", "accessType", "recycle",
            "bcreate", "writeable", "enabled", "isTemplate", "inferOptionsFromParent", "slug", "groupPath",
        ),
        "",
    ),
    "ajxp_repo_options": (("oid", "uuid", "name", "val"), ""),
    "ajxp_plugin_configs": (("id", "configs"), ""),
    "ajxp_simple_store": (("object_id", "serialized_data"), "store_id = 'keystore'"),
}  # fmt: skip


def _row_hash(dialect: str, columns: list[str]) -> str:
    """SQL for a 60-bit hash of one row's columns (NULL told apart from every value)."""
    # Each column is hashed first (MD5: 32 hex digits, never NULL for a value, whatever its
    # size, charset or binary type), so the concatenation is unambiguous; NULL becomes 'N'.
    if dialect == "mysql":
        parts = ", ".join(f"COALESCE(MD5({c}), 'N')" for c in columns)
        return f"CAST(CONV(LEFT(MD5(CONCAT_WS(',', {parts})), 15), 16, 10) AS UNSIGNED)"
    if dialect == "postgresql":
        parts = ", ".join(f"COALESCE(MD5({c}::text), 'N')" for c in columns)
        return f"('x' || LEFT(MD5(CONCAT_WS(',', {parts})), 15))::bit(60)::bigint"
    raise ValueError(dialect)


def signature_sql(dialect: str, quote) -> str:
    """One statement reading ``(table, row count, digest)`` for every watched table."""
    selects = []
    for table, (names, where) in WATCHED.items():
        columns = [quote(n) for n in names]
        condition = f" WHERE {where}" if where else ""
        if dialect == "sqlite":
            # SQLite has no MD5: shim_digest is an aggregate the shim registers (shim.db).
            digest = f"COALESCE(shim_digest({', '.join(columns)}), 0)"
        else:
            digest = f"COALESCE(SUM({_row_hash(dialect, columns)}), 0)"
        selects.append(f"SELECT '{table}', COUNT(*), {digest} FROM {table}{condition}")
    return " UNION ALL ".join(selects)


class ChangeWatch:
    """The generation of the watched tables, read at most every *interval* seconds, on demand.

    Thread-safe; one per process.  *wait_limit* bounds how long a request
    waits for another one's check (the check itself is bounded by the
    database timeouts).
    """

    def __init__(
        self, engine, interval: float = 1.0, clock: Clock | None = None, metrics=None, wait_limit=30.0, files=()
    ):
        self.engine = engine
        self.files = tuple(files)  # settings Pydio keeps in files, when the shim can see them
        self.interval = interval
        self.clock = clock or time.monotonic
        self.metrics = metrics
        self.wait_limit = wait_limit
        self.generation_value = 0
        self._signatures: dict[str, tuple[int, int]] | None = None
        self._checked_at: float | None = None  # when the last completed check started
        self._lock = threading.Lock()
        self._sql = sa.text(signature_sql(engine.dialect.name, engine.dialect.identifier_preparer.quote))
        self.checks = 0  # queries run, for the benchmark and tests

    def generation(self) -> int:
        """The current generation, as of a check that started less than ``interval`` seconds ago.

        Raises :class:`sqlalchemy.exc.SQLAlchemyError` when the check cannot be
        made (the caller forwards, or degrades).
        """
        now = self.clock()
        checked = self._checked_at
        if checked is not None and now - checked < self.interval:
            return self.generation_value
        if not self._lock.acquire(timeout=self.wait_limit):
            raise sa.exc.TimeoutError("another request's check of the authorization tables did not finish in time")
        try:
            checked = self._checked_at
            if checked is not None and now - checked < self.interval:
                return self.generation_value  # another request checked meanwhile
            started = self.clock()
            signatures = self.read_signatures()
            if self._signatures is not None and signatures != self._signatures:
                changed = sorted(t for t in signatures if signatures[t] != self._signatures.get(t))
                self.generation_value += 1
                log.info("authorization tables changed (%s): decisions are checked again", ", ".join(changed))
                if self.metrics is not None:
                    for table in changed:
                        self.metrics.auth_tables_changed.labels(table=table).inc()
            self._signatures = signatures
            self._checked_at = started
            return self.generation_value
        finally:
            self._lock.release()

    def read_signatures(self) -> dict[str, tuple[int, int]]:
        """``{table: (row count, digest)}`` as the database computes them now."""
        self.checks += 1
        if self.metrics is not None:
            self.metrics.auth_table_checks.inc()
        with self.engine.connect() as conn:
            rows = conn.execute(self._sql).all()
        signatures = {str(table): (int(count), int(digest)) for table, count, digest in rows}
        for path in self.files:
            try:
                st = os.stat(path)
                signatures[path] = (st.st_size, st.st_mtime_ns)
            except OSError:
                signatures[path] = (-1, -1)  # gone or unreadable: a change too, when it comes back
        return signatures
