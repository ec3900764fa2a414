"""Users, roles, rights, workspaces and tokens, stored and read the way Pydio 8.2.5 does, for the stand-in.

The rows and formats are Pydio's (see docs/authorization.md):

- ``ajxp_users``: login, the PBKDF2 password, groupPath;
- ``ajxp_user_rights``: the user's special rows only: ``ajxp.admin`` and
  ``ajxp.roles`` (its assigned roles, ``$phpserial$`` of ``[roleId => true]``);
- ``ajxp_roles``: one serialized ``AJXP_Role`` object per role, ``last_updated``
  set at each save: the personal role ``AJXP_USR_/{login}`` (where a user's
  workspace rights and lock live), group roles ``AJXP_GRP_/a/b`` and the root
  role ``AJXP_GRP_/``, and the other roles an admin creates;
- ``ajxp_repo`` / ``ajxp_repo_options`` for workspaces made in the admin UI;
- ``ajxp_simple_store`` (``keystore``) for device tokens.

A user's rights are the roles merged as Pydio merges them: group roles from
the root down, then assigned and auto-applied roles, the personal role last;
the highest role that names a workspace decides its ACL.  Written apart from
the shim's own readers on purpose, so that tests of one are not tests of the
other.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import os
import time
import uuid as uuid_module
from dataclasses import dataclass

import phpserialize
import sqlalchemy as sa

from .. import db

ROLE_CLASS = "Pydio\\Conf\\Core\\AJXP_Role"
SCOPE_ALL = "AJXP_REPO_SCOPE_ALL"
CLEAR = "AJXP_VALUE_CLEAR"


@dataclass
class StandinWorkspace:
    """A workspace as the stand-in knows it: ``path`` may hold AJXP_DATA_PATH, AJXP_USER, AJXP_GROUP_PATH."""

    id: str
    slug: str
    path: str
    recycle_bin: str = ""
    syncable: bool = True  # meta.syncable among its META_SOURCES: the changes action exists
    options: dict | None = None

    @property
    def scope(self) -> str:
        if "AJXP_USER" in self.path:
            return "USER"
        if "AJXP_GROUP_PATH" in self.path:
            return "GROUP"
        return ""


STOCK = [
    StandinWorkspace("0", "default", "AJXP_DATA_PATH/files", "recycle_bin"),
    StandinWorkspace("1", "my-files", "AJXP_DATA_PATH/personal/AJXP_USER", "recycle_bin"),
]


def hash_password(password: str, salt: str | None = None) -> str:
    """Pydio's stored password format: ``sha256:1000:<salt b64>:<hash b64>`` (PBKDF2)."""
    salt = salt or base64.b64encode(os.urandom(24)).decode()
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), 1000, 24)
    return f"sha256:1000:{salt}:{base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        _algo, _rounds, salt, _ = stored.split(":")
    except ValueError:
        return False
    return hmac.compare_digest(hash_password(password, salt), stored)


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


class PydioStore:
    """Reads and writes the conf and auth tables of one Pydio database."""

    def __init__(self, engine, workspaces=None):
        self.engine = engine
        self.workspaces = list(workspaces or STOCK)

    def _blob(self, data: bytes):
        # bytea on PostgreSQL; text on MySQL (NUL bytes and all); a blob on SQLite.
        return data if self.engine.dialect.name in ("postgresql", "sqlite") else data.decode("utf-8", "surrogateescape")

    # --- users -------------------------------------------------------------------------------

    def add_user(self, login: str, password: str, group_path: str = "/", rights=("0", "1"), admin: bool = False):
        with self.engine.begin() as conn:
            conn.execute(db.users.insert().values(login=login, password=hash_password(password), groupPath=group_path))
            conn.execute(
                db.user_rights.insert().values(login=login, repo_uuid="ajxp.admin", rights="1" if admin else "0")
            )
        self.save_role(f"AJXP_USR_/{login}", acls={ws: "rw" for ws in rights})

    def user(self, login: str):
        """``(password hash, groupPath)`` of *login*, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(db.users.c.password, db.users.c.groupPath).where(db.users.c.login == login)
            ).first()
        return None if row is None else (row[0], row[1] or "/")

    def is_admin(self, login: str) -> bool:
        return self._right(login, "ajxp.admin") == "1"

    def set_password(self, login: str, password: str) -> None:
        """Pydio's updatePassword: the new hash, and every key-store token of the user revoked."""
        with self.engine.begin() as conn:
            conn.execute(db.users.update().where(db.users.c.login == login).values(password=hash_password(password)))
        self.revoke_tokens(login)

    def move_user(self, login: str, group_path: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(db.users.update().where(db.users.c.login == login).values(groupPath=group_path))

    def delete_user(self, login: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(db.users.delete().where(db.users.c.login == login))
            conn.execute(db.user_rights.delete().where(db.user_rights.c.login == login))
            conn.execute(db.user_prefs.delete().where(db.user_prefs.c.login == login))
            conn.execute(db.roles.delete().where(db.roles.c.role_id == f"AJXP_USR_/{login}"))
        self.revoke_tokens(login)

    def lock_user(self, login: str, lock: str = "logout") -> None:
        """Pydio's setLock: the lock as the personal role's core.conf/USER_LOCK_ACTION parameter."""
        self.set_parameter(f"AJXP_USR_/{login}", SCOPE_ALL, "core.conf", "USER_LOCK_ACTION", lock)

    # --- roles and rights --------------------------------------------------------------------

    def role(self, role_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(db.roles.c.serial_role).where(db.roles.c.role_id == role_id)).first()
        return None if row is None else read_role(row[0])

    def save_role(self, role_id: str, acls=None, parameters=None, actions=None, auto_applies=(), owner=None) -> None:
        """RolesService::updateRole: the serialized role, ``last_updated`` set to now."""
        blob = self._blob(role_blob(role_id, acls, parameters, actions, auto_applies, owner))
        with self.engine.begin() as conn:
            conn.execute(db.roles.delete().where(db.roles.c.role_id == role_id))
            conn.execute(
                db.roles.insert().values(
                    role_id=role_id, serial_role=blob, owner_user_id=owner, last_updated=int(time.time())
                )
            )

    def set_parameter(self, role_id: str, scope: str, plugin: str, name: str, value) -> None:
        """A role parameter (``parameters[scope][plugin][name]``), as the role editor saves it."""
        role = self.role(role_id) or {}
        parameters = dict(role.get("parameters") or {})
        parameters.setdefault(_php_key(scope), {}).setdefault(plugin, {})[name] = value
        self.save_role(
            role_id,
            acls=role.get("acls"),
            parameters=parameters,
            actions=role.get("actions"),
            auto_applies=_php_list(role.get("autoApplies")),
            owner=role.get("ownerId"),
        )

    def set_action(self, role_id: str, scope: str, plugin: str, action: str, enabled: bool) -> None:
        """A role's action state (``actions[scope][plugin][action]``): False disables the action."""
        role = self.role(role_id) or {}
        actions = dict(role.get("actions") or {})
        actions.setdefault(_php_key(scope), {}).setdefault(plugin, {})[action] = enabled
        self.save_role(
            role_id,
            acls=role.get("acls"),
            parameters=role.get("parameters"),
            actions=actions,
            auto_applies=_php_list(role.get("autoApplies")),
            owner=role.get("ownerId"),
        )

    def delete_role(self, role_id: str) -> None:
        with self.engine.begin() as conn:
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
        with self.engine.begin() as conn:
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
        assigned, personal) and every role that may apply automatically.
        """
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

    # --- workspaces ----------------------------------------------------------------------------

    def find_workspace(self, ws_key: str, login: str):
        """The workspace *ws_key* names (id, then slug; ``pydio``: the user's first), or None."""
        if ws_key == "pydio":
            allowed = [w for w in self.all_workspaces() if self.has_right(login, w.id)]
            return allowed[0] if allowed else None
        # Pydio's order: the database's ids, the built-in ids, the database's slugs, the built-in slugs.
        for key in ("uuid", "slug"):
            stored = self.all_workspaces(db.repo.c[key] == ws_key, builtin=False)
            if stored:
                return stored[0]
            builtin = [w for w in self.workspaces if getattr(w, "id" if key == "uuid" else "slug") == ws_key]
            if builtin:
                return builtin[0]
        return None

    def all_workspaces(self, where=None, builtin: bool = True):
        """The built-in workspaces and those of ``ajxp_repo`` (only the rows matching *where*, if given)."""
        found = list(self.workspaces) if builtin else []
        with self.engine.connect() as conn:
            query = sa.select(db.repo.c.uuid, db.repo.c.slug, db.repo.c.isTemplate)
            repos = conn.execute(query if where is None else query.where(where)).all()
            options = conn.execute(
                sa.select(db.repo_options.c.uuid, db.repo_options.c.name, db.repo_options.c.val).where(
                    db.repo_options.c.uuid.in_([r[0] for r in repos])
                )
            ).all()
        opts: collections.defaultdict[str, dict[str, str]] = collections.defaultdict(dict)
        for uuid, name, val in options:
            opts[uuid][name] = db.as_bytes(val).decode("utf-8", "replace") if val is not None else ""
        for uuid, slug, is_template in repos:
            if is_template or uuid not in opts:  # Pydio's lookup joins the options: none, no workspace
                continue
            o = opts[uuid]
            found.append(
                StandinWorkspace(
                    uuid,
                    slug or uuid,
                    o.get("PATH", "AJXP_DATA_PATH/" + uuid),
                    o.get("RECYCLE_BIN", ""),
                    "meta.syncable" in o.get("META_SOURCES", ""),
                    o,
                )
            )
        return found

    def add_workspace(self, slug: str, path: str, syncable: bool = True, **options: str) -> str:
        """A workspace as the admin UI creates it (rows in ajxp_repo and ajxp_repo_options); its id."""
        ws_id = uuid_module.uuid4().hex
        values = {"PATH": path, "RECYCLE_BIN": "", **options}
        if syncable:
            values.setdefault(
                "META_SOURCES", "$phpserial$" + phpserialize.dumps({"meta.syncable": {"REPO_SYNCABLE": True}}).decode()
            )
        with self.engine.begin() as conn:
            conn.execute(
                db.repo.insert().values(
                    uuid=ws_id, slug=slug, display=slug, accessType="fs", isTemplate=False, enabled=True, writeable=True
                )
            )
            for name, value in values.items():
                conn.execute(db.repo_options.insert().values(uuid=ws_id, name=name, val=value.encode()))
        return ws_id

    def set_workspace_option(self, ws_id: str, name: str, value: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                db.repo_options.delete().where(db.repo_options.c.uuid == ws_id, db.repo_options.c.name == name)
            )
            if value is not None:
                conn.execute(db.repo_options.insert().values(uuid=ws_id, name=name, val=value.encode()))

    def replace_workspace(self, ws_id: str, changed: dict[str, str]) -> None:
        """SqlConfDriver::saveRepository: the ``ajxp_repo`` row and every option row deleted and written anew."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(db.repo).where(db.repo.c.uuid == ws_id)).first()
            options = conn.execute(
                sa.select(db.repo_options.c.name, db.repo_options.c.val).where(db.repo_options.c.uuid == ws_id)
            ).all()
            if row is None:
                return
            values = {name: db.as_bytes(val) for name, val in options}
            values.update({name: value.encode() for name, value in changed.items()})
            conn.execute(db.repo_options.delete().where(db.repo_options.c.uuid == ws_id))
            conn.execute(db.repo.delete().where(db.repo.c.uuid == ws_id))
            conn.execute(db.repo.insert().values(**row._mapping))
            for name, value in values.items():
                conn.execute(db.repo_options.insert().values(uuid=ws_id, name=name, val=value))

    def set_enabled(self, ws_id: str, enabled: bool) -> None:
        """The ``enabled`` column (Pydio 8.2.5 reads it and never uses it)."""
        with self.engine.begin() as conn:
            conn.execute(db.repo.update().where(db.repo.c.uuid == ws_id).values(enabled=enabled))

    def delete_workspace(self, ws_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(db.repo_options.delete().where(db.repo_options.c.uuid == ws_id))
            conn.execute(db.repo.delete().where(db.repo.c.uuid == ws_id))

    def group_path(self, login: str) -> str:
        account = self.user(login)
        return account[1] if account else "/"

    def identifier(self, ws: StandinWorkspace, login: str) -> str:
        if ws.scope == "USER":
            return f"{ws.id}-{login}"
        if ws.scope == "GROUP":
            return f"{ws.id}-{self.group_path(login)}"
        return ws.id

    # --- key-store tokens: ajxp_simple_store, store_id "keystore" ---------------------------

    def put_token(self, token: str, data: dict) -> None:
        """Store a token's PHP-serialized array as Pydio's key store does (bytea on PostgreSQL)."""
        serialized = phpserialize.dumps(data)
        value = serialized if self.engine.dialect.name == "postgresql" else serialized.decode()
        with self.engine.begin() as conn:
            conn.execute(db.simple_store.insert().values(object_id=token, store_id="keystore", serialized_data=value))

    def token_data(self, token: str) -> dict | None:
        """The array stored for *token*, or None: unknown, or a token no query can look up."""
        if "\0" in token:  # no key holds a NUL (and PostgreSQL refuses one in a query)
            return None
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.select(db.simple_store.c.serialized_data).where(
                        db.simple_store.c.store_id == "keystore", db.simple_store.c.object_id == token
                    )
                ).first()
        except sa.exc.SQLAlchemyError:  # e.g. a character a utf8mb3 column cannot compare: PHP finds nothing
            return None
        if row is None or row[0] is None:
            return None
        return phpserialize.loads(db.as_bytes(row[0]), decode_strings=True)

    def delete_token(self, token: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                db.simple_store.delete().where(
                    db.simple_store.c.store_id == "keystore", db.simple_store.c.object_id == token
                )
            )

    def revoke_tokens(self, login: str, token: str = "") -> None:
        """ApiKeysService::revokeTokens: the key-store rows whose USER_ID is *login* (only *token*, if given)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(db.simple_store.c.object_id, db.simple_store.c.serialized_data).where(
                    db.simple_store.c.store_id == "keystore"
                )
            ).all()
        needle = f's:7:"USER_ID";s:{len(login.encode())}:"{login}"'.encode()
        for object_id, data in rows:
            if data is not None and needle in db.as_bytes(data) and (not token or object_id == token):
                self.delete_token(object_id)
