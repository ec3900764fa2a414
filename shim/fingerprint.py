"""The rows one authorization decision depends on, as a fingerprint.

For a user and a workspace, the legacy server reads (docs/authorization.md):
the user's ``ajxp_users`` row (password hash, group), its ``ajxp_user_rights``
rows (admin flag, assigned roles, parent user, legacy lock), the roles that
make up its rights in ``ajxp_roles`` (personal, each group's from the root
down, assigned, auto-applied, a shared user's parent's), the workspace's
``ajxp_repo``/``ajxp_repo_options`` rows and its template parent's, the plugin
settings of ``ajxp_plugin_configs`` and, for a token, its key-store row.  A
:class:`Fingerprint` holds one digest per part; two fingerprints that differ
say which parts changed, which is the reason a decision is dropped.

It also reads what the shim must know besides the legacy "yes": the user id
as stored (for the change rows' identifier) and what the user's roles say of
the workspace's sync plugin, since a role can turn ``REPO_SYNCABLE`` off or
ask for an indexation on every call.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import phpserialize
import sqlalchemy as sa

from . import db
from .workspaces import observe_interval

log = logging.getLogger(__name__)

SCOPE_ALL = "AJXP_REPO_SCOPE_ALL"
PARTS = ("user", "rights", "roles", "workspace", "plugins", "token")


@dataclass(frozen=True)
class Facts:
    """What the shim reads from the same rows besides the fingerprint."""

    login: str | None  # the user id exactly as stored, None when no row holds exactly it
    group_path: str | None
    forward_reason: str | None  # set: the shim leaves this user and workspace to the legacy server
    observe_every: float | None = None  # a role asks for storage observation every that many seconds


@dataclass(frozen=True)
class Fingerprint:
    digests: tuple[str, ...]  # one per PARTS entry
    facts: Facts

    def changed(self, other: Fingerprint) -> list[str]:
        """The names of the parts that differ between the two."""
        return [name for name, a, b in zip(PARTS, self.digests, other.digests, strict=True) if a != b]


#: Parents followed from a workspace (a share of a share...); a deeper chain is left to the legacy server.
MAX_PARENTS = 8


def _digest(rows) -> str:
    """A digest of rows as the driver returned them (bytes, memoryview and str alike), each value length-prefixed."""
    mac = hashlib.sha256()
    for row in rows:
        mac.update(b"R%d:" % len(row))
        for value in row:
            if value is None:
                mac.update(b"N")
            else:
                data = db.as_bytes(value if isinstance(value, (bytes, str, memoryview)) else str(value))
                mac.update(b"V%d:" % len(data) + data)
    return mac.hexdigest()


def group_role_ids(group_path: str) -> list[str]:
    """``AJXP_GRP_/``, then one role per level of the user's group: ``/a/b`` -> ``AJXP_GRP_/a``, ``AJXP_GRP_/a/b``.

    As SqlUser::load builds them: a level PHP finds ``empty()`` is skipped,
    and PHP finds ``"0"`` empty, so ``/0/team`` gives ``AJXP_GRP_/team``.
    """
    parts = [p for p in group_path.split("/") if p not in ("", "0")]
    return ["AJXP_GRP_/"] + ["AJXP_GRP_/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def assigned_role_ids(value) -> list[str] | None:
    """The role ids of an ``ajxp.roles`` value, decoded as SqlUser::load does; None when it cannot be read.

    PHP removes every ``$phpserial$`` (or ``$json$``) from a value that
    starts with one, and unserializes any other value as it is.
    """
    text = db.as_text(value) or ""
    try:
        if text.startswith("$phpserial$"):
            decoded = phpserialize.loads(text.replace("$phpserial$", "").encode("utf-8", "surrogateescape"),
                                         decode_strings=True)  # fmt: skip
        elif text.startswith("$json$"):
            decoded = json.loads(text.replace("$json$", ""))
        else:
            decoded = phpserialize.loads(text.encode("utf-8", "surrogateescape"), decode_strings=True)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError):
        return None
    if isinstance(decoded, list):
        return [str(i) for i in range(len(decoded))]  # a JSON list: PHP's array keys 0, 1...
    return [str(k) for k in decoded] if isinstance(decoded, dict) else None


def role_properties(blob) -> dict:
    """The properties of a serialized ``AJXP_Role``, without PHP's visibility prefixes.

    Raises ValueError when the row cannot be read.
    """
    try:
        role = phpserialize.loads(db.as_bytes(blob), decode_strings=True, object_hook=phpserialize.phpobject)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise ValueError(f"unreadable role ({exc.__class__.__name__})") from None
    values = role.__php_vars__ if isinstance(role, phpserialize.phpobject) else role
    if not isinstance(values, dict):
        raise ValueError("a role that is not an object")
    return {str(k).rsplit("\0", 1)[-1]: v for k, v in values.items()}


def _sync_parameters(role: dict, ws_id: str) -> list[dict]:
    """The role's meta.syncable parameters for every scope and for the workspace."""
    parameters = role.get("parameters")
    found = []
    if isinstance(parameters, dict):
        for scope, plugins in parameters.items():
            # PHP stores a numeric workspace id ("0") as an integer key.
            if (
                str(scope) in (SCOPE_ALL, ws_id)
                and isinstance(plugins, dict)
                and isinstance(plugins.get("meta.syncable"), dict)
            ):
                found.append(plugins["meta.syncable"])
    return found


def role_facts(roles: list[dict], ws_id: str) -> tuple[str | None, float | None]:
    """``(forward reason, observation interval)`` from the user's roles.

    Read conservatively, whatever the roles' order: any role that turns the
    workspace's ``REPO_SYNCABLE`` off, or asks for an indexation (which Pydio
    then runs on every call, since a role's flag is never cleared), leaves the
    feed to the legacy server; any that asks for storage observation makes the
    shim keep it going (an extra call costs a PHP request, a missing one a
    storage change never seen).
    """
    every = None
    for role in roles:
        for options in _sync_parameters(role, ws_id):
            if options.get("REPO_SYNCABLE") in (False, "false", 0, "0"):
                return "a role turns REPO_SYNCABLE off", None
            if options.get("REQUIRES_INDEXATION") not in (None, False, "", 0, "0", "false"):
                return "a role asks for an indexation on every call", None
            interval = observe_interval(options)
            if interval is not None:
                every = interval if every is None else min(every, interval)
    return None, every


class Fingerprints:
    """Reads fingerprints from the database (a handful of indexed queries)."""

    def __init__(self, engine):
        self.engine = engine

    def of(self, login: str, ws_id: str, token: str | None = None) -> Fingerprint:
        """The fingerprint of *login* (Pydio's user id) reading *ws_id*, signed in with *token* if any."""
        with self.engine.connect() as conn:
            user = conn.execute(
                sa.select(db.users.c.login, db.users.c.password, db.users.c.groupPath)
                .where(db.users.c.login == login)
                .order_by(db.users.c.login)
            ).all()
            rights = conn.execute(
                sa.select(db.user_rights.c.login, db.user_rights.c.repo_uuid, db.user_rights.c.rights)
                .where(db.user_rights.c.login == login)
                .order_by(db.user_rights.c.repo_uuid, db.user_rights.c.rights, db.user_rights.c.rid)
            ).all()
            stored = user[0][0] if len(user) == 1 and user[0][0] == login else None
            group_path = (user[0][2] or "/") if user else "/"
            role_ids, unreadable = self._role_ids(login, group_path, rights)
            roles = conn.execute(
                sa.select(db.roles.c.role_id, db.roles.c.serial_role, db.roles.c.owner_user_id)
                .where(
                    sa.or_(
                        db.roles.c.role_id.in_(role_ids),
                        # Auto-applied roles: any that is not reserved and not owned.
                        sa.and_(
                            db.roles.c.owner_user_id.is_(None),
                            sa.not_(db.roles.c.role_id.startswith("AJXP_", autoescape=True)),
                        ),
                    )
                )
                .order_by(db.roles.c.role_id)
            ).all()
            workspace, too_deep = self._workspace_rows(conn, ws_id)
            plugins = conn.execute(
                sa.select(db.plugin_configs.c.id, db.plugin_configs.c.configs).order_by(db.plugin_configs.c.id)
            ).all()
            token_rows = []
            if token is not None:
                token_rows = conn.execute(
                    sa.select(db.simple_store.c.object_id, db.simple_store.c.serialized_data).where(
                        db.simple_store.c.store_id == "keystore", db.simple_store.c.object_id == token
                    )
                ).all()
        digests = tuple(_digest(rows) for rows in (user, rights, roles, workspace, plugins, token_rows))
        facts = self._facts(login, stored, group_path, user, roles, role_ids, ws_id)
        if facts.forward_reason is None and (unreadable or too_deep):
            facts = Facts(facts.login, facts.group_path, unreadable or too_deep)
        return Fingerprint(digests, facts)

    @staticmethod
    def _role_ids(login: str, group_path: str, rights) -> tuple[list[str], str | None]:
        """The ids of the roles Pydio loads for the user, and why the shim forwards (None: it need not)."""
        ids = [f"AJXP_USR_/{login}", *group_role_ids(group_path)]
        reason = None
        for _login, key, value in rights:
            if key == "ajxp.roles":
                assigned = assigned_role_ids(value)
                if assigned is None:
                    reason = "the user's assigned roles cannot be read"
                else:
                    ids += assigned
            elif key == "ajxp.parent_user" and value:
                ids.append(f"AJXP_USR_/{value}")  # a shared user inherits from its parent's personal role
        return ids, reason

    @staticmethod
    def _workspace_rows(conn, ws_id: str) -> tuple[list, str | None]:
        """The workspace's rows and every parent's up the chain (options are inherited from each)."""
        ids, repo_rows, reason = [ws_id], [], None
        while True:
            found = conn.execute(sa.select(db.repo).where(db.repo.c.uuid == ids[-1])).all()
            repo_rows += found
            parent = found[0]._mapping["parent_uuid"] if len(found) == 1 else None
            if not parent:
                break
            if parent in ids or len(ids) > MAX_PARENTS:
                reason = "the workspace's chain of parents is too long or loops"
                break
            ids.append(parent)
        options = conn.execute(
            sa.select(db.repo_options.c.uuid, db.repo_options.c.name, db.repo_options.c.val)
            .where(db.repo_options.c.uuid.in_(ids))
            .order_by(db.repo_options.c.uuid, db.repo_options.c.name, db.repo_options.c.oid)
        ).all()
        return [tuple(r) for r in repo_rows] + [("option", *o) for o in options], reason

    @staticmethod
    def _facts(login, stored, group_path, user, roles, role_ids, ws_id) -> Facts:
        if user and stored is None:
            # Stored as "Dev1" for the id "dev1" (found by a case-insensitive
            # collation): Pydio then leaves the personal role out; not for the shim to guess.
            return Facts(None, None, "the login is stored in another spelling")
        parsed = []
        wanted = set(role_ids)
        for role_id, blob, _owner in roles:
            try:
                role = role_properties(blob)
            except ValueError as exc:
                return Facts(stored, group_path, f"role {role_id!r} cannot be read: {exc}")
            if role_id in wanted or role.get("autoApplies"):
                parsed.append(role)
        reason, every = role_facts(parsed, ws_id)
        return Facts(stored, group_path, reason, every)
