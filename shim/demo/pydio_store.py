"""Users, rights and workspaces stored the way the legacy server stores them, for the stand-in.

Written apart from the shim's own readers (:mod:`shim.workspaces`,
:mod:`shim.auth`) on purpose, so that tests of one are not tests of the other.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import os
from dataclasses import dataclass

import phpserialize
import sqlalchemy as sa

from .. import db


@dataclass
class StandinWorkspace:
    """A workspace as the stand-in knows it: ``path`` may hold AJXP_DATA_PATH, AJXP_USER, AJXP_GROUP_PATH."""

    id: str
    slug: str
    path: str
    recycle_bin: str = ""
    syncable: bool = True

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


class PydioStore:
    """Reads and writes the conf and auth tables of one Pydio database."""

    def __init__(self, engine, workspaces=None):
        self.engine = engine
        self.workspaces = list(workspaces or STOCK)

    def add_user(self, login: str, password: str, group_path: str = "/", rights=("0", "1")):
        with self.engine.begin() as conn:
            conn.execute(db.users.insert().values(login=login, password=hash_password(password), groupPath=group_path))
            for ws in rights:
                conn.execute(db.user_rights.insert().values(login=login, repo_uuid=ws, rights="rw"))

    def set_right(self, login: str, ws_id: str, rights: str | None):
        """Grant (``"r"``/``"rw"``) or revoke (``None``) a right."""
        with self.engine.begin() as conn:
            conn.execute(
                db.user_rights.delete().where(db.user_rights.c.login == login, db.user_rights.c.repo_uuid == ws_id)
            )
            if rights:
                conn.execute(db.user_rights.insert().values(login=login, repo_uuid=ws_id, rights=rights))

    def find_workspace(self, ws_key: str, login: str):
        """The workspace *ws_key* names (id, then slug; ``pydio``: the user's first), or None."""
        if ws_key == "pydio":
            allowed = [w for w in self.all_workspaces() if self.has_right(login, w.id)]
            return allowed[0] if allowed else None
        # Pydio's order: the database's ids, the built-in ids, the database's slugs, the built-in slugs.
        builtin = list(self.workspaces)
        stored = [w for w in self.all_workspaces() if w not in builtin]
        for key in ("id", "slug"):
            for ws in stored + builtin:
                if getattr(ws, key) == ws_key:
                    return ws
        return None

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

    def all_workspaces(self):
        found = list(self.workspaces)
        with self.engine.connect() as conn:
            repos = conn.execute(sa.select(db.repo.c.uuid, db.repo.c.slug, db.repo.c.isTemplate)).all()
            options = conn.execute(
                sa.select(db.repo_options.c.uuid, db.repo_options.c.name, db.repo_options.c.val)
            ).all()
        opts: collections.defaultdict[str, dict[str, str]] = collections.defaultdict(dict)
        for uuid, name, val in options:
            opts[uuid][name] = val.decode() if isinstance(val, bytes) else (val or "")
        for uuid, slug, is_template in repos:
            if is_template:
                continue
            o = opts[uuid]
            meta = o.get("META_SOURCES", "")
            syncable = "meta.syncable" in meta and 'REPO_SYNCABLE";b:0' not in meta
            found.append(
                StandinWorkspace(
                    uuid, slug or uuid, o.get("PATH", "AJXP_DATA_PATH/" + uuid), o.get("RECYCLE_BIN", ""), syncable
                )
            )
        return found

    def has_right(self, login: str, ws_id: str) -> bool:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(db.user_rights.c.rights).where(
                    db.user_rights.c.login == login, db.user_rights.c.repo_uuid == ws_id
                )
            ).first()
        return bool(row and "r" in row[0])

    def group_path(self, login: str) -> str:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(db.users.c.groupPath).where(db.users.c.login == login)).first()
        return (row[0] if row else None) or "/"

    def identifier(self, ws: StandinWorkspace, login: str) -> str:
        if ws.scope == "USER":
            return f"{ws.id}-{login}"
        if ws.scope == "GROUP":
            return f"{ws.id}-{self.group_path(login)}"
        return ws.id
