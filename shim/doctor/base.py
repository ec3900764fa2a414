"""The doctor's machinery: findings, the check registry, the shared context, the runner.

A check is a function registered with :func:`check`: its id (stable, used by
``--json`` and by other checks' dependencies), its title, and the checks it
needs.  It receives the :class:`Context`, returns one finding's ``(status,
seen, fix)`` (or a list of :class:`Finding`), or raises :class:`Stop` to end
with one.  What one check learns for others (the database engine, the tables
present, the upstream transport, the test workspace) is a named attribute of
the context, never hidden state.  A check whose dependency did not pass is
skipped with that dependency's reason, without running.
"""

from __future__ import annotations

import json
import sys
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import sqlalchemy as sa

from .. import config as config_module
from .. import db

OK, WARNING, FAILED, SKIPPED = "ok", "warning", "failed", "skipped"
USER_AGENT = "pydio-shim doctor"


@dataclass
class Finding:
    """The outcome of one check."""

    check: str  # a stable identifier: "upstream", "api", "database", "workspace:0"...
    title: str
    status: str  # ok, warning, failed, skipped
    seen: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<8} {self.title}: {self.seen}"
        return text + (f" -> fix: {self.fix}" if self.fix and self.status != OK else "")


class Stop(Exception):
    """Raised inside a check to end it with a finding."""

    def __init__(self, status: str, seen: str, fix: str = ""):
        super().__init__(seen)
        self.status, self.seen, self.fix = status, seen, fix


@dataclass
class Check:
    id: str
    title: Callable[[Context], str]
    run: Callable[[Context], object]
    needs: dict[str, str]  # check id -> why this one is skipped when that one did not pass
    when: Callable[[Context], bool]


#: Every registered check (:func:`check`).
CHECKS: list[Check] = []
#: The order the checks run in: each one after those it may need.
RUN_ORDER = (
    "configuration",
    "database",
    "feed_database",
    "tables",
    "decision_tables",
    "triggers",
    "trigger_firing",
    "feed_index",
    "workspaces",
    "upstream",
    "api",
    "authorization",
    "shim",
    "end_to_end",
)


def check(
    check_id: str,
    title: str | Callable[[Context], str],
    needs: dict[str, str] | None = None,
    when: Callable[[Context], bool] | None = None,
):
    """Register the decorated function as the check *check_id* (see the module docstring)."""

    def register(fn):
        title_of: Callable[[Context], str] = title if callable(title) else (lambda ctx: str(title))
        CHECKS.append(Check(check_id, title_of, fn, needs or {}, when or (lambda ctx: True)))
        return fn

    return register


@dataclass
class Context:
    """What the checks share: the options, and what earlier checks found."""

    config: config_module.Config
    config_path: str | None = None
    login: str | None = None
    password: str | None = None
    workspace_arg: str | None = None
    shim_url: str = ""
    timeout: float = 10.0
    status: dict[str, str] = field(default_factory=dict)
    engine: sa.engine.Engine | None = None  # set by the "database" check
    tables: set[str] = field(default_factory=set)  # set by the "database" check
    upstream: Any = None  # an Upstream, set by the "upstream" check
    target: object = None  # the workspace of the account checks (a Workspace, or None)
    target_key: str | None = None
    target_usable: bool = False  # set by the "authorization" check
    http: requests.Session = field(default_factory=requests.Session)

    @property
    def config_option(self) -> str:
        return f" --config {self.config_path}" if self.config_path else ""

    @property
    def db(self) -> sa.engine.Engine:
        """The database engine; a check that needs it runs only after the "database" check passed."""
        if self.engine is None:
            raise Stop(SKIPPED, "the database is not reachable (see above)")
        return self.engine

    @property
    def credentials(self) -> tuple[str, str]:
        """The test account's login and password (``--user``)."""
        return self.login or "", self.password or ""

    @property
    def uprefix(self) -> str:
        return self.config.upstream_prefix

    def passed(self, check_id: str) -> bool:
        return self.status.get(check_id) in (OK, WARNING)


def worst(findings) -> str:
    order = [FAILED, SKIPPED, WARNING, OK]
    statuses = {f.status for f in findings}
    return next((s for s in order if s in statuses), OK)


def run(ctx: Context, progress=None, report=None) -> list[Finding]:
    """Run every registered check against *ctx*; *progress(title)* before each, *report(finding)* after."""
    progress = progress or (lambda title: None)
    report = report or (lambda finding: None)
    secrets_ = [
        s
        for s in (
            ctx.password,
            sa.engine.make_url(ctx.config.database_url).password,
            sa.engine.make_url(ctx.config.database_feed_url).password if ctx.config.database_feed_url else None,
        )
        if s
    ]
    ctx.http.trust_env = False  # talk to the shim directly, never through an environment proxy
    ctx.http.headers["User-Agent"] = USER_AGENT
    findings: list[Finding] = []
    try:
        for c in sorted(CHECKS, key=lambda c: RUN_ORDER.index(c.id)):
            if not c.when(ctx):
                continue
            title = c.title(ctx)
            progress(title)
            outcome = _outcome(c, title, ctx)
            for finding in outcome:
                finding.seen, finding.fix = _scrub(finding.seen, secrets_), _scrub(finding.fix, secrets_)
                findings.append(finding)
                report(finding)
            ctx.status[c.id] = worst(outcome)
    finally:
        if ctx.engine is not None:
            ctx.engine.dispose()
        ctx.http.close()
    return findings


def _outcome(c: Check, title: str, ctx: Context) -> list[Finding]:
    for needed, why in c.needs.items():
        if not ctx.passed(needed):
            return [Finding(c.id, title, SKIPPED, why)]
    try:
        result = c.run(ctx)
    except Stop as stop:
        return [Finding(c.id, title, stop.status, stop.seen, stop.fix)]
    except sa.exc.SQLAlchemyError as exc:
        return [Finding(c.id, title, FAILED, "database error: " + db.first_line(exc), "see the database check above")]
    except Exception as exc:  # a check must never end the run with a traceback
        return [Finding(c.id, title, FAILED, f"unexpected error: {exc.__class__.__name__}: {db.first_line(exc)}")]
    if isinstance(result, list):
        return result
    status, seen, *fix = typing.cast(tuple, result)
    return [Finding(c.id, title, status, seen, fix[0] if fix else "")]


def _scrub(text: str, secrets_) -> str:
    for secret in secrets_:
        text = text.replace(secret, "***")
        if quote(secret, safe="") != secret:
            text = text.replace(quote(secret, safe=""), "***")
    return text


def exit_status(findings) -> int:
    """0 when no check failed (warnings and skipped checks allowed), else 1."""
    return 1 if any(f.status == FAILED for f in findings) else 0


def summary(findings) -> str:
    counts = {s: sum(1 for f in findings if f.status == s) for s in (OK, WARNING, FAILED, SKIPPED)}
    return "doctor: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)


class Progress:
    """``checking ...`` lines on a stream (stderr): erased on a terminal, kept in a log."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.pending = False

    def start(self, title: str):
        self.stream.write(f"checking {title}... ")
        self.stream.flush()
        self.pending = True

    def done(self, finding: Finding):
        if self.pending:
            self.stream.write("\r\x1b[K" if self.tty else f"{finding.status}\n")
            self.stream.flush()
            self.pending = False


def as_json(findings) -> str:
    return json.dumps([asdict(f) for f in findings], indent=2)


def check_url(url: str) -> str:
    """Validate ``--shim-url``: an http(s) URL, possibly with a path prefix."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--shim-url: expected http(s)://host[:port][/prefix], got {url!r}")
    return url


def body_hint(body: bytes) -> str:
    """A short description of an answer body: its HTML title, XML message or first characters."""
    import re

    text = body.decode("utf-8", "replace")
    for pattern in (r"<title>(.*?)</title>", r"<message[^>]*>(.*?)</message>", r"<h1>(.*?)</h1>"):
        match = re.search(pattern, text, re.I | re.S)
        if match:
            return " ".join(match.group(1).split())[:120]
    return " ".join(text.split())[:120]
