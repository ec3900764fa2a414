"""The workspaces check: each built-in and database workspace, syncable? indexed?"""

from __future__ import annotations

import sqlalchemy as sa

from .. import db
from ..workspaces import OptionError, Workspace, WorkspaceResolver, from_builtin
from .base import FAILED, OK, WARNING, Context, Finding, Stop, check
from .database import need_tables

#: Workspaces of ajxp_repo reported one per line; the rest are summed up in one line.
MAX_WORKSPACE_LINES = 50


def _like_escape(text: str) -> str:
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


@check("workspaces", "workspaces", needs={"database": "the database is not reachable (see above)"})
def workspaces(ctx: Context):
    need_tables(ctx, *db.SYNCABLE_TABLES, "ajxp_repo", "ajxp_repo_options")
    found = _all_workspaces(ctx)
    if ctx.workspace_arg:
        found = _chosen_workspace(found, ctx.workspace_arg)
    if not found:
        raise Stop(
            WARNING,
            "none: no built-in workspace in the configuration and no row in ajxp_repo",
            "list Pydio's built-in workspaces in [[builtin_workspaces]] (conf/shim.example.toml)",
        )
    counts, last_seqs = _index_stats(ctx, [f[1] for f in found if f[1] is not None])
    findings = []
    from_db = 0
    hidden = {"total": 0, "syncable": 0}
    for origin, ws, raw_id in found:
        if origin == "ajxp_repo":
            from_db += 1
            if from_db > MAX_WORKSPACE_LINES and not ctx.workspace_arg:
                hidden["total"] += 1
                hidden["syncable"] += bool(ws and ws.syncable)
                continue
        findings.append(_finding(ctx, origin, ws, raw_id, counts, last_seqs))
    if hidden["total"]:
        findings.append(
            Finding(
                "workspaces",
                "more workspaces",
                OK,
                f"{hidden['total']} more in ajxp_repo, {hidden['syncable']} of them syncable "
                "(check one with --workspace)",
            )
        )
    return findings


def _all_workspaces(ctx: Context) -> list[tuple[str, Workspace | None, str]]:
    """``(origin, workspace or None when it cannot be read, id)``: the built-in ones, then ajxp_repo's."""
    resolver = WorkspaceResolver(ctx.db, ctx.config.workspaces)
    builtin = [from_builtin(w) for w in ctx.config.workspaces]
    found: list[tuple[str, Workspace | None, str]] = [("built-in", w, "") for w in builtin]
    with ctx.db.connect() as conn:
        uuids = [
            r[0]
            for r in conn.execute(
                sa.select(db.repo.c.uuid)
                .where(sa.or_(db.repo.c.isTemplate.is_(None), db.repo.c.isTemplate == sa.false()))
                .order_by(db.repo.c.uuid)
            )
        ]
    for uuid in uuids:
        if any(w.id == uuid for w in builtin):
            continue
        try:
            found.append(("ajxp_repo", resolver.resolve(uuid), uuid))
        except OptionError:
            found.append(("ajxp_repo", None, uuid))
    return found


def _chosen_workspace(found, key: str):
    """The one workspace ``--workspace`` names (by id, then slug), as a list of one."""
    chosen = (
        [f for f in found if f[1] is not None and f[1].id == key]
        or [f for f in found if f[1] is not None and f[1].slug == key]
        or [f for f in found if f[1] is None and f[2] == key]
    )
    if not chosen:
        raise Stop(
            FAILED,
            f"no workspace {key!r}: neither a built-in one of the configuration nor a row of ajxp_repo",
            "give an existing workspace id or slug to --workspace",
        )
    return chosen[:1]


def _index_stats(ctx: Context, chosen):
    """Per identifier: ajxp_index rows, and MAX(seq) in ajxp_changes (one pass over each table)."""
    i, c = db.index, db.changes
    count_query = sa.select(i.c.repository_identifier, sa.func.count()).group_by(i.c.repository_identifier)
    seq_query = sa.select(c.c.repository_identifier, sa.func.max(c.c.seq)).group_by(c.c.repository_identifier)
    if ctx.workspace_arg and chosen:
        ws = chosen[0]

        def mine(column):
            return sa.or_(column == ws.id, column.like(_like_escape(ws.id) + "-%", escape="!"))

        count_query = count_query.where(mine(i.c.repository_identifier))
        seq_query = seq_query.where(mine(c.c.repository_identifier))
    with ctx.db.connect() as conn:
        counts = {k: int(n) for k, n in conn.execute(count_query)}
        last_seqs = {k: int(n) for k, n in conn.execute(seq_query)}
    return counts, last_seqs


def _finding(ctx: Context, origin, ws, raw_id, counts, last_seqs) -> Finding:
    chosen = bool(ctx.workspace_arg)
    if ws is None:
        return Finding(
            f"workspace:{raw_id}",
            f"workspace {raw_id}",
            FAILED if chosen else WARNING,
            "its options in ajxp_repo_options cannot be read: the shim forwards its feed requests",
            "open and save the workspace in Pydio's settings to rewrite its options",
        )
    check_id, title = f"workspace:{ws.id}", f"workspace {ws.slug} ({ws.id}, {origin})"
    scope = {"USER": "user-scoped", "GROUP": "group-scoped", "": "shared"}[ws.scope]

    def mine(identifier: str) -> bool:
        return identifier == ws.id if not ws.scope else identifier.startswith(ws.id + "-")

    identifiers = sorted({k for k in counts if mine(k)} | {k for k in last_seqs if mine(k)})
    nodes = sum(counts.get(k, 0) for k in identifiers)
    last = max((last_seqs[k] for k in identifiers if k in last_seqs), default=None)
    if not ws.syncable:
        fix = (
            "if conf/bootstrap_repositories.php enables meta.syncable for it, set syncable = true in its "
            "[[builtin_workspaces]] entry"
            if origin == "built-in"
            else "enable the Synchronization feature (meta.syncable) in the workspace's settings in Pydio"
        )
        return Finding(
            check_id,
            title,
            FAILED if chosen else WARNING,
            f"not syncable ({scope}): the desktop client cannot sync it; the shim forwards its feed requests to PHP",
            fix,
        )
    where = f" under {len(identifiers)} identifiers" if ws.scope and identifiers else ""
    seen = f"syncable, {scope}, {nodes} node(s) indexed{where}, " + (
        f"last change seq {last}" if last is not None else "no change recorded yet"
    )
    if nodes == 0 and last is None:
        return Finding(
            check_id,
            title,
            WARNING if chosen else OK,
            seen + " (fine for an unused workspace)",
            "files put on disk behind Pydio's back appear only after an indexation in Pydio",
        )
    return Finding(check_id, title, OK, seen)
