"""Workspace resolution: which workspace a request names, and whose rows it reads.

Built-in workspaces come from the configuration (Pydio keeps them in PHP),
the others from ``ajxp_repo`` / ``ajxp_repo_options``.  A workspace is looked up
by id first, then by slug, database before built-in, as the legacy server
does.  A lookup is reused while :class:`~shim.changewatch.ChangeWatch` sees
no change in those tables (and at most ``auth.max_age`` seconds).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import phpserialize
import sqlalchemy as sa

from . import db
from .cache import TTLCache
from .config import BuiltinWorkspace
from .phpcompat import intval

log = logging.getLogger(__name__)

USER_SCOPED_ACCESS_TYPES = ("ajxp_conf", "ajxp_admin", "inbox")


@dataclass(frozen=True)
class Workspace:
    """What the feed needs to know of a workspace."""

    id: str
    slug: str
    scope: str  # "" (shared), "USER" or "GROUP"
    recycle_bin: str
    syncable: bool
    # Why the shim leaves this workspace's feed to the legacy server (None: it may answer).
    forward_reason: str | None = None
    observe_every: float | None = None  # OBSERVE_STORAGE_CHANGES: seconds between storage rescans

    def identifier(self, login: str, group_path: str | None) -> str | None:
        """The ``repository_identifier`` of this workspace for a user, or None if unknown."""
        if self.scope == "USER":
            return f"{self.id}-{login}"
        if self.scope == "GROUP":
            return f"{self.id}-{group_path}" if group_path else None
        return self.id


def scope_of(path: str, container: str, access_type: str) -> str:
    """Security scope from the raw options.

    The admin, settings and inbox drivers are always per user; otherwise
    CONTAINER decides when it names a user or group variable, else PATH.
    """
    if access_type in USER_SCOPED_ACCESS_TYPES:
        return "USER"
    for source in (container or "", path or ""):
        if "AJXP_USER" in source:
            return "USER"
        if "AJXP_GROUP_PATH" in source:  # also AJXP_GROUP_PATH_FLAT
            return "GROUP"
    return ""


class OptionError(ValueError):
    """A workspace option cannot be decoded: the shim does not guess, the legacy server answers."""


def decode_option(raw) -> object:
    """An ``ajxp_repo_options.val``: plain string, or ``$phpserial$``/``$json$`` + encoded value.

    Raises :class:`OptionError` for a value that does not decode.
    """
    if raw is None:
        return ""
    data = db.as_bytes(raw)
    try:
        if data.startswith(b"$phpserial$"):
            return phpserialize.loads(data[len(b"$phpserial$") :], decode_strings=True)
        if data.startswith(b"$json$"):
            return json.loads(data[len(b"$json$") :])
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        # phpserialize raises any of these on a truncated or corrupt value.
        log.warning(
            "workspaces: an option could not be decoded (%s); the legacy server answers for it", exc.__class__.__name__
        )
        raise OptionError(str(exc)) from None
    return data.decode("utf-8", "replace")


def is_syncable(meta_sources) -> bool:
    """META_SOURCES holds meta.syncable, and REPO_SYNCABLE is not false."""
    if not isinstance(meta_sources, dict) or "meta.syncable" not in meta_sources:
        return False
    options = meta_sources["meta.syncable"]
    if isinstance(options, dict):
        value = options.get("REPO_SYNCABLE", True)
        if value in (False, "false", 0, "0"):
            return False
    return True


def observe_interval(options) -> float | None:
    """Seconds between storage rescans asked by meta.syncable *options*, None when not asked.

    As ChangesTracker reads them: only a boolean ``OBSERVE_STORAGE_CHANGES``
    counts, ``OBSERVE_STORAGE_EVERY`` is in minutes (5 when unset, PHP intval).
    """
    if not isinstance(options, dict) or options.get("OBSERVE_STORAGE_CHANGES") is not True:
        return None
    minutes = options.get("OBSERVE_STORAGE_EVERY")
    if minutes is None:
        return 300.0
    return 60.0 * (minutes if isinstance(minutes, int) else intval(str(minutes)))


def sync_options(meta_sources) -> dict:
    options = meta_sources.get("meta.syncable") if isinstance(meta_sources, dict) else None
    return options if isinstance(options, dict) else {}


def from_builtin(ws: BuiltinWorkspace) -> Workspace:
    return Workspace(
        id=ws.id,
        slug=ws.slug,
        scope=scope_of(ws.path, ws.container, ws.access_type),
        recycle_bin=ws.recycle_bin,
        syncable=ws.syncable,
    )


class WorkspaceResolver:
    """Finds workspaces by id or slug; thread-safe.

    With a *watch*, lookups are reused while the watched tables keep their
    generation (and at most *max_age* seconds); without one, every call reads.
    """

    def __init__(self, engine, builtins, watch=None, max_age: float = 3600.0, max_entries: int = 1000, clock=None):
        self.engine = engine
        self.builtins = [from_builtin(w) for w in builtins]
        self.watch = watch
        self.max_age = max_age
        self._cache = TTLCache(max_entries, clock)

    def resolve(self, key: str) -> Workspace | None:
        """The workspace named *key* (id or slug), or None when there is none.

        Raises :class:`sqlalchemy.exc.SQLAlchemyError` when the database fails and
        :class:`OptionError` when its options cannot be read; callers forward then.
        """
        if self.watch is None:
            return self._lookup(key)
        generation = self.watch.generation()
        hit = self._cache.get(key)
        if hit is not None and hit[1] == generation:
            return hit[0]
        found = self._lookup(key)
        self._cache.put(key, (found, generation), self.max_age)
        return found

    def _lookup(self, key: str) -> Workspace | None:
        # The legacy order (RepositoryService::findRepositoryByIdOrAlias): the
        # database's ids, the built-in ids, the database's slugs, the built-in
        # slugs.  A database slug shadows a built-in one, never the reverse.
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(db.repo).where(db.repo.c.uuid == key)).first()
            if row is not None:
                return self._from_row(conn, row._mapping)
            builtin = next((ws for ws in self.builtins if ws.id == key), None)
            if builtin is not None:
                return builtin
            rows = conn.execute(sa.select(db.repo).where(db.repo.c.slug == key)).all()
            if len(rows) > 1 or (rows and rows[0]._mapping["slug"] != key):
                return None  # ambiguous, or matched by a case-insensitive collation: not for the shim to choose
            if rows:
                return self._from_row(conn, rows[0]._mapping)
        return next((ws for ws in self.builtins if ws.slug == key), None)

    def _options(self, conn, uuid: str) -> dict:
        rows = conn.execute(
            sa.select(db.repo_options.c.name, db.repo_options.c.val).where(db.repo_options.c.uuid == uuid)
        ).all()
        return {name: decode_option(val) for name, val in rows}

    def _from_row(self, conn, row) -> Workspace | None:
        if row["isTemplate"]:
            return None
        options = self._options(conn, row["uuid"])
        path, container = str(options.get("PATH", "") or ""), str(options.get("CONTAINER", "") or "")
        scope = scope_of(path, container, row["accessType"] or "")
        parent_is_template, parent_options = False, {}
        if row["parent_uuid"]:
            parent = conn.execute(sa.select(db.repo).where(db.repo.c.uuid == row["parent_uuid"])).first()
            if parent is not None and parent._mapping["isTemplate"]:
                parent_is_template = True
                parent_options = self._options(conn, row["parent_uuid"])
                p_path = str(parent_options.get("PATH", "") or "")
                p_container = str(parent_options.get("CONTAINER", "") or "")
                if p_path or p_container:
                    scope = scope_of(p_path, p_container, parent._mapping["accessType"] or "")
        recycle = options.get("RECYCLE_BIN", "")
        if not recycle and parent_is_template:
            recycle = parent_options.get("RECYCLE_BIN", "")  # options not set are read from the template
        meta_sources = options.get("META_SOURCES")
        sync = sync_options(meta_sources)
        forward_reason = None
        if row["enabled"] is not None and not row["enabled"]:
            # Pydio 8.2.5 reads this column and never uses it: the legacy server says what it means.
            forward_reason = "the workspace is marked disabled"
        elif sync.get("REQUIRES_INDEXATION"):
            # The next changes call indexes it and clears the flag: that call is the legacy server's.
            forward_reason = "the workspace awaits its first indexation"
        return Workspace(
            id=row["uuid"],
            slug=row["slug"] or row["uuid"],
            scope=scope,
            recycle_bin=recycle if isinstance(recycle, str) else "",
            syncable=is_syncable(meta_sources),
            forward_reason=forward_reason,
            observe_every=observe_interval(sync),
        )
