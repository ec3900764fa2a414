"""Users, workspaces and tokens, stored and read the way Pydio 8.2.5 does, for the stand-in.

The rows and formats are Pydio's (see docs/authorization.md):

- ``ajxp_users``: login, the PBKDF2 password, groupPath;
- ``ajxp_repo`` / ``ajxp_repo_options`` for workspaces made in the admin UI;
- ``ajxp_simple_store`` (``keystore``) for device tokens;
- roles and rights: :mod:`.pydio_roles`.

Written apart from the shim's own readers on purpose, so that tests of one are
not tests of the other.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import os
import uuid as uuid_module
from dataclasses import dataclass

import phpserialize
import sqlalchemy as sa

from .. import db
from .pydio_roles import SCOPE_ALL, RoleRows


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


class PydioStore(RoleRows):
    """Reads and writes the conf and auth tables of one Pydio database."""

    def __init__(self, engine, workspaces=None):
        super().__init__(engine)
        self.workspaces = list(workspaces or STOCK)

    # --- users -------------------------------------------------------------------------------

    def add_user(self, login: str, password: str, group_path: str = "/", rights=("0", "1"), admin: bool = False):
        self._write(
            db.users.insert().values(login=login, password=hash_password(password), groupPath=group_path),
            db.user_rights.insert().values(login=login, repo_uuid="ajxp.admin", rights="1" if admin else "0"),
        )
        self.save_role(f"AJXP_USR_/{login}", acls={ws: "rw" for ws in rights})

    def user(self, login: str) -> tuple[str, str] | None:
        """``(password hash, groupPath)`` of *login*, or None."""
        return self._memoised(("user", login), lambda: self._read_user(login))

    def _read_user(self, login: str) -> tuple[str, str] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(db.users.c.password, db.users.c.groupPath).where(db.users.c.login == login)
            ).first()
        return None if row is None else (row[0], row[1] or "/")

    def is_admin(self, login: str) -> bool:
        return self._right(login, "ajxp.admin") == "1"

    def set_password(self, login: str, password: str) -> None:
        """Pydio's updatePassword: the new hash, and every key-store token of the user revoked."""
        self._write(db.users.update().where(db.users.c.login == login).values(password=hash_password(password)))
        self.revoke_tokens(login)

    def move_user(self, login: str, group_path: str) -> None:
        self._write(db.users.update().where(db.users.c.login == login).values(groupPath=group_path))

    def delete_user(self, login: str) -> None:
        """The account, its rights, preferences and personal role in one transaction; then its key-store tokens."""
        self._write(
            db.users.delete().where(db.users.c.login == login),
            db.user_rights.delete().where(db.user_rights.c.login == login),
            db.user_prefs.delete().where(db.user_prefs.c.login == login),
            db.roles.delete().where(db.roles.c.role_id == f"AJXP_USR_/{login}"),
        )
        self.revoke_tokens(login)

    def lock_user(self, login: str, lock: str = "logout") -> None:
        """Pydio's setLock: the lock as the personal role's core.conf/USER_LOCK_ACTION parameter."""
        self.set_parameter(f"AJXP_USR_/{login}", SCOPE_ALL, "core.conf", "USER_LOCK_ACTION", lock)

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
        with self._begin() as conn:
            conn.execute(
                db.repo.insert().values(
                    uuid=ws_id, slug=slug, display=slug, accessType="fs", isTemplate=False, enabled=True, writeable=True
                )
            )
            for name, value in values.items():
                conn.execute(db.repo_options.insert().values(uuid=ws_id, name=name, val=value.encode()))
        return ws_id

    def set_workspace_option(self, ws_id: str, name: str, value: str | None) -> None:
        with self._begin() as conn:
            conn.execute(
                db.repo_options.delete().where(db.repo_options.c.uuid == ws_id, db.repo_options.c.name == name)
            )
            if value is not None:
                conn.execute(db.repo_options.insert().values(uuid=ws_id, name=name, val=value.encode()))

    def replace_workspace(self, ws_id: str, changed: dict[str, str]) -> None:
        """SqlConfDriver::saveRepository: the ``ajxp_repo`` row and every option row deleted and written anew."""
        with self._begin() as conn:
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

    def delete_workspace(self, ws_id: str) -> None:
        self._write(
            db.repo_options.delete().where(db.repo_options.c.uuid == ws_id),
            db.repo.delete().where(db.repo.c.uuid == ws_id),
        )

    def set_enabled(self, ws_id: str, enabled: bool) -> None:
        """The ``enabled`` column (Pydio 8.2.5 reads it and never uses it)."""
        self._write(db.repo.update().where(db.repo.c.uuid == ws_id).values(enabled=enabled))

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
        self._write(db.simple_store.insert().values(object_id=token, store_id="keystore", serialized_data=value))

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
        self._write(
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
