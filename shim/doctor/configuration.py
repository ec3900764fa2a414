"""The first check: what the configuration amounts to (a bad one never gets this far)."""

from __future__ import annotations

from .. import dbcheck
from .base import OK, Context, check


@check("configuration", "configuration")
def configuration(ctx: Context):
    c = ctx.config
    where = ctx.config_path or "environment variables only"
    public = "(from X-Forwarded-Prefix)" if c.public_prefix is None else (c.public_prefix or "/")
    return OK, (
        f"{where}: upstream {c.upstream_url} prefix {c.upstream_prefix or '/'}, database "
        f"{dbcheck.masked_url(c.database_url)}, public prefix {public}, {len(c.workspaces)} built-in workspace(s)"
    )
