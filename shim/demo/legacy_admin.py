"""The stand-in's administration actions and the side effects of its ``changes`` action.

What an administrator does in Pydio 8.2.5's settings workspace (``ajxp_conf``)
and what a ``changes`` call does before it lists rows, each writing the same
tables as Pydio (through :class:`~shim.demo.pydio_store.PydioStore`):

- ``POST /api/ajxp_conf/user_update_right/{ws}/{login}/{right}``: the ACL of the
  user's personal role (``n`` stays, and denies);
- ``POST /api/ajxp_conf/edit/update_user_pwd`` (form ``user_id``, ``user_pwd``):
  the new password, and every key-store token of the user revoked;
- ``REQUIRES_INDEXATION`` (ChangesTracker): the first ``changes`` call indexes
  the workspace and rewrites its rows without the flag;
- ``OBSERVE_STORAGE_CHANGES``: a ``changes`` call rescans the storage when the
  last rescan of that workspace (of that user, for a scoped one) is older than
  ``OBSERVE_STORAGE_EVERY`` minutes (5 by default).
"""

from __future__ import annotations

import os
import time

import phpserialize

from .pydio_roles import SCOPE_ALL

PHPSERIAL = "$phpserial$"


def meta_sources(options: dict | None) -> dict:
    """The workspace's META_SOURCES option, decoded (``{}`` when absent or unreadable)."""
    raw = (options or {}).get("META_SOURCES", "")
    if raw.startswith(PHPSERIAL):
        raw = raw[len(PHPSERIAL) :]
    try:
        value = phpserialize.loads(raw.encode(), decode_strings=True) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class AdminActions:
    """The ``ajxp_conf`` actions the stand-in offers; each returns a Werkzeug response."""

    def __init__(self, store, success, error):
        self.store = store
        self.success = success
        self.error = error

    def user_update_right(self, node_path: str, params: dict):
        parts = node_path.strip("/").split("/")
        if len(parts) != 3 or self.store.user(parts[1]) is None:
            return self.error("Wrong arguments!")
        ws_id, login, right = parts
        self.store.set_right(login, ws_id, right)
        acl = self.store.acl(login, ws_id)
        checkboxes = (
            f'<update_checkboxes user_id="{login}" repository_id="{ws_id}" read="{int(acl in ("rw", "r"))}" '
            f'write="{int(acl in ("rw", "w"))}"/>'
        )
        return self.success(f"Changed right for user {login}", checkboxes)

    def edit(self, node_path: str, params: dict):
        if node_path.strip("/") != "update_user_pwd":
            return self.error(f"Could not find action {node_path.strip('/') or 'edit'}")
        login, password = params.get("user_id", ""), params.get("user_pwd", "")
        if not login or not password.strip() or self.store.user(login) is None:
            return self.error("Wrong arguments!")
        self.store.set_password(login, password)
        return self.success(f"Password changed successfully for user {login}")


class ChangesSideEffects:
    """What ChangesTracker does before listing: first indexation, storage observation.

    *rescan(ws, login)* brings ``ajxp_index`` in line with the files on disk
    (the triggers then write the change rows); *clock* gives Unix seconds.
    """

    def __init__(self, store, rescan, calls, lock, clock=time.time):
        self.store = store
        self.rescan = rescan
        self.calls = calls
        self.lock = lock
        self.clock = clock
        self.last_observed: dict[str, float] = {}  # Pydio's storage_changes_time-<id> files

    def option(self, ws, login: str, name: str):
        """A meta.syncable option: the workspace's META_SOURCES, overridden by the user's roles."""
        value = (meta_sources(ws.options).get("meta.syncable") or {}).get(name)
        for scope in (SCOPE_ALL, ws.id):
            role_value = self.store.parameter(login, scope, "meta.syncable", name)
            if role_value is not None:
                value = role_value
        return value

    def before_changes(self, ws, login: str) -> None:
        if self.option(ws, login, "REQUIRES_INDEXATION"):
            self._count("indexations")
            self.rescan(ws, login)
            sources = meta_sources(ws.options)
            if (sources.get("meta.syncable") or {}).pop("REQUIRES_INDEXATION", None) is not None:
                # RepositoryService::replaceRepository: every row of the workspace written anew.
                self.store.replace_workspace(ws.id, {"META_SOURCES": PHPSERIAL + phpserialize.dumps(sources).decode()})
        if self.option(ws, login, "OBSERVE_STORAGE_CHANGES") is True:
            minutes = self.option(ws, login, "OBSERVE_STORAGE_EVERY")
            try:
                minutes = int(minutes) if minutes not in (None, "") else 5
            except (TypeError, ValueError):
                minutes = 0
            key = ws.id if not ws.scope else login  # Pydio's file: -<workspace>, or -<user> for a scoped one
            now = self.clock()
            if now - self.last_observed.get(key, 0) > minutes * 60:
                self.last_observed[key] = now
                self.rescan(ws, login)
                self._count("storage_rescans")  # once its rows are written: tests wait for this

    def _count(self, what: str) -> None:
        with self.lock:
            self.calls[what] += 1


def storage_listing(root: str) -> dict[str, bool]:
    """Every path below *root* as a workspace path (``/a/b``), mapped to whether it is a folder."""
    found = {}
    for folder, dirs, files in os.walk(root):
        rel = folder[len(root) :].replace(os.sep, "/")
        for name in dirs:
            found[f"{rel}/{name}"] = True
        for name in files:
            found[f"{rel}/{name}"] = False
    return found
