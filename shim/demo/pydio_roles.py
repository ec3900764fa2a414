"""Roles and rights as Pydio 8.2.5 stores and merges them, for the stand-in.

- ``ajxp_roles``: one serialized ``AJXP_Role`` object per role, ``last_updated``
  set at each save: the personal role ``AJXP_USR_/{login}`` (where a user's
  workspace rights and lock live), group roles ``AJXP_GRP_/a/b`` and the root
  role ``AJXP_GRP_/``, and the other roles an admin creates;
- ``ajxp_user_rights``: ``ajxp.admin`` and ``ajxp.roles`` (the user's assigned
  roles, ``$phpserial$`` of ``[roleId => true]``).

A user's rights are the roles merged as Pydio merges them: group roles from
the root down, then assigned and auto-applied roles, the personal role last;
the highest role that names a workspace decides its ACL.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import phpserialize
import sqlalchemy as sa

from .. import db

if TYPE_CHECKING:
    from .pydio_store import StandinWorkspace

ROLE_CLASS = "Pydio\\Conf\\Core\\AJXP_Role"
SCOPE_ALL = "AJXP_REPO_SCOPE_ALL"
CLEAR = "AJXP_VALUE_CLEAR"


def _php_key(key):
    """PHP stores a numeric string key ("0") as an integer key."""
    return int(key) if isinstance(key, str) and key.isdigit() and str(int(key)) == key else key


def role_blob(role_id: str, acls=None, parameters=None, actions=None, auto_applies=(), owner=None) -> bytes:
    """A serialized ``AJXP_Role``, protected properties and all, as PHP's serialize() writes it."""
    protected = {
        "groupPath": None,
        "roleId": role_id,
        "acls": {_php_key(k): v for k, v in (acls or {}).items()},
        "parameters": {_php_key(k): v for k, v in (parameters or {}).items()},
        "actions": {_php_key(k): v for k, v in (actions or {}).items()},
        "autoApplies": list(auto_applies),
        "masks": {},
        "lastUpdated": 0,
        "ownerId": owner,
    }
    return phpserialize.dumps(phpserialize.phpobject(ROLE_CLASS, {f"\0*\0{k}": v for k, v in protected.items()}))


def read_role(blob) -> dict:
    """The properties of a serialized role, without PHP's visibility prefixes."""
    obj = phpserialize.loads(db.as_bytes(blob), decode_strings=True, object_hook=phpserialize.phpobject)
    values = obj.__php_vars__ if isinstance(obj, phpserialize.phpobject) else obj
    return {str(k).rsplit("\0", 1)[-1]: v for k, v in values.items()}


def _php_list(value) -> list:
    return list(value.values()) if isinstance(value, dict) else list(value or [])


class RoleRows:
    """The role and right rows of one Pydio database (the base of :class:`~.pydio_store.PydioStore`).

    Within :meth:`request_scope` a user's account and merged roles are read
    once; any write through the store forgets them.
    """

    def __init__(self, engine: sa.engine.Engine):
        self.engine = engine
        self._request = threading.local()

    def user(self, login: str) -> tuple[str, str] | None:  # the users' table: PydioStore
        raise NotImplementedError

    @contextlib.contextmanager
    def request_scope(self):
        self._request.memo = {}
        try:
            yield
        finally:
            self._request.memo = None

    def _memoised(self, key: tuple, read: Callable[[], Any]) -> Any:
        memo = getattr(self._request, "memo", None)
        if memo is None:
            return read()
        if key not in memo:
            memo[key] = read()
        return memo[key]

    def _begin(self):
        """``engine.begin()``, forgetting what this request has read."""
        memo = getattr(self._request, "memo", None)
        if memo:
            memo.clear()
        return self.engine.begin()

    def _write(self, *statements) -> None:
        """Run *statements* in one transaction (all or none), forgetting what this request has read."""
        with self._begin() as conn:
            for statement in statements:
                conn.execute(statement)

    def _blob(self, data: bytes):
        # bytea on PostgreSQL; text on MySQL (NUL bytes and all); a blob on SQLite.
        return data if self.engine.dialect.name in ("postgresql", "sqlite") else data.decode("utf-8", "surrogateescape")

    def role(self, role_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(db.roles.c.serial_role).where(db.roles.c.role_id == role_id)).first()
        return None if row is None else read_role(row[0])

    def save_role(self, role_id: str, acls=None, parameters=None, actions=None, auto_applies=(), owner=None) -> None:
        """RolesService::updateRole: the serialized role, ``last_updated`` set to now."""
        blob = self._blob(role_blob(role_id, acls, parameters, actions, auto_applies, owner))
        with self._begin() as conn:
            conn.execute(db.roles.delete().where(db.roles.c.role_id == role_id))
            conn.execute(
                db.roles.insert().values(
                    role_id=role_id, serial_role=blob, owner_user_id=owner, last_updated=int(time.time())
                )
            )

    def set_parameter(self, role_id: str, scope: str, plugin: str, name: str, value) -> None:
        """A role parameter (``parameters[scope][plugin][name]``), as the role editor saves it."""
        self._edit_role(role_id, "parameters", scope, plugin, name, value)

    def set_action(self, role_id: str, scope: str, plugin: str, action: str, enabled: bool) -> None:
        """A role's action state (``actions[scope][plugin][action]``): False disables the action."""
        self._edit_role(role_id, "actions", scope, plugin, action, enabled)

    def _edit_role(self, role_id: str, part: str, scope: str, plugin: str, name: str, value) -> None:
        role = self.role(role_id) or {}
        edited = {key: role.get(key) for key in ("acls", "parameters", "actions")}
        tree = edited[part] = dict(edited[part] or {})
        tree.setdefault(_php_key(scope), {}).setdefault(plugin, {})[name] = value
        self.save_role(role_id, **edited, auto_applies=_php_list(role.get("autoApplies")), owner=role.get("ownerId"))

    def delete_role(self, role_id: str) -> None:
        with self._begin() as conn:
            conn.execute(db.roles.delete().where(db.roles.c.role_id == role_id))

    def set_right(self, login: str, ws_id: str, rights: str | None) -> None:
        """user_update_right: the personal role's ACL for *ws_id*.

        As AJXP_Role::setAcl: an empty value removes the entry, any other is
        stored as given, so ``n`` stays and, being the personal role's, denies
        the workspace whatever a group role grants.
        """
        role_id = f"AJXP_USR_/{login}"
        role = self.role(role_id) or {}
        acls = {str(k): v for k, v in (role.get("acls") or {}).items()}
        if rights:
            acls[ws_id] = rights
        else:
            acls.pop(ws_id, None)
        self.save_role(role_id, acls=acls, parameters=role.get("parameters"), actions=role.get("actions"))

    def assign_role(self, login: str, role_id: str) -> None:
        """The role among the user's ``ajxp.roles`` (its assigned roles)."""
        roles = dict.fromkeys(self.assigned_roles(login), True)
        roles[role_id] = True
        value = "$phpserial$" + phpserialize.dumps(roles).decode()
        with self._begin() as conn:
            conn.execute(
                db.user_rights.delete().where(
                    db.user_rights.c.login == login, db.user_rights.c.repo_uuid == "ajxp.roles"
                )
            )
            conn.execute(db.user_rights.insert().values(login=login, repo_uuid="ajxp.roles", rights=value))

    def assigned_roles(self, login: str) -> list[str]:
        """The keys of ``ajxp.roles``: every ``$phpserial$`` (``$json$``) removed, else a plain serialize()."""
        value = self._right(login, "ajxp.roles")
        if not value:
            return []
        try:
            if value.startswith("$json$"):
                decoded = json.loads(value.replace("$json$", ""))
            elif value.startswith("$phpserial$"):
                decoded = phpserialize.loads(value.replace("$phpserial$", "").encode(), decode_strings=True)
            else:
                decoded = phpserialize.loads(value.encode(), decode_strings=True)
        except ValueError:
            return []  # PHP's safeUnserialize gives false: no assigned role
        return [str(k) for k in decoded] if isinstance(decoded, dict) else []

    def _right(self, login: str, key: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(db.user_rights.c.rights).where(
                    db.user_rights.c.login == login, db.user_rights.c.repo_uuid == key
                )
            ).first()
        return None if row is None else row[0]

    def merged_roles(self, login: str) -> list[dict]:
        """The user's roles from the lowest priority to the highest, as Pydio orders them.

        Read as SqlUser::load reads them: the ids the user names (groups,
        assigned, personal) and every role that may apply automatically; once
        per request, as PHP loads the user once.
        """
        return self._memoised(("roles", login), lambda: self._read_merged_roles(login))

    def _read_merged_roles(self, login: str) -> list[dict]:
        account = self.user(login)
        group_path = account[1] if account else "/"
        parts = [p for p in group_path.split("/") if p not in ("", "0")]  # PHP's empty(): "0" is empty
        group_ids = ["AJXP_GRP_/"] + ["AJXP_GRP_/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        assigned = self.assigned_roles(login)
        wanted = [*group_ids, *assigned, f"AJXP_USR_/{login}"]
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(db.roles.c.role_id, db.roles.c.serial_role).where(
                    sa.or_(
                        db.roles.c.role_id.in_(wanted),
                        sa.and_(
                            db.roles.c.owner_user_id.is_(None),
                            sa.not_(db.roles.c.role_id.startswith("AJXP_", autoescape=True)),
                        ),
                    )
                )
            ).all()
        rows = {r[0]: read_role(r[1]) for r in found}
        auto = [
            rid
            for rid, role in rows.items()
            if not rid.startswith("AJXP_")
            and not role.get("ownerId")
            and {"standard", "all"} & set(_php_list(role.get("autoApplies")))
        ]
        order = (
            sorted(g for g in group_ids if g in rows)
            + [r for r in assigned if r in rows]
            + [r for r in auto if r not in assigned]
            + [f"AJXP_USR_/{login}"]
        )
        return [rows[r] for r in order if r in rows]

    def acl(self, login: str, ws_id: str, roles=None) -> str:
        """The merged ACL of *login* on *ws_id*: the highest role naming the workspace decides."""
        right = ""
        for role in self.merged_roles(login) if roles is None else roles:
            acls = {str(k): v for k, v in (role.get("acls") or {}).items()}
            if acls.get(ws_id):
                right = acls[ws_id]
        return right

    def has_right(self, login: str, ws_id: str) -> bool:
        return self.acl(login, ws_id) in ("rw", "r", "w")

    def parameter(self, login: str, scope: str, plugin: str, name: str, roles=None):
        """A merged role parameter: higher roles win, AJXP_VALUE_CLEAR removes it."""
        value = None
        for role in self.merged_roles(login) if roles is None else roles:
            found = ((role.get("parameters") or {}).get(_php_key(scope)) or {}).get(plugin, {})
            if name in found:
                value = None if found[name] == CLEAR else found[name]
        return value

    def locked_out(self, login: str) -> bool:
        lock = self.parameter(login, SCOPE_ALL, "core.conf", "USER_LOCK_ACTION") or ""
        return "logout" in str(lock).split(",")

    def changes_enabled(self, login: str, ws: StandinWorkspace) -> bool:
        """Whether the workspace offers the ``changes`` action to *login*: meta.syncable active, not disabled."""
        if not ws.syncable:
            return False
        roles = self.merged_roles(login)
        for scope in (SCOPE_ALL, ws.id):
            if self.parameter(login, scope, "meta.syncable", "AJXP_PLUGIN_ENABLED", roles) in (False, "false"):
                return False
        for role in roles:
            for scope in (SCOPE_ALL, ws.id):
                if ((role.get("actions") or {}).get(_php_key(scope)) or {}).get("meta.syncable", {}).get(
                    "changes"
                ) is False:
                    return False
        return True
