"""Checks through the shim itself: it answers, and end to end a file created through it shows in its feed."""

from __future__ import annotations

import json
import secrets
import time
from urllib.parse import quote

import requests

from .. import db, dbcheck
from .base import FAILED, OK, SKIPPED, WARNING, Context, Stop, body_hint, check


@check("shim", lambda ctx: f"shim answering at {ctx.shim_url}")
def shim(ctx: Context):
    health = ctx.config.admin_health_path
    url = ctx.shim_url + (health or "/")
    try:
        response = ctx.http.get(url, timeout=ctx.timeout * 3)
    except requests.RequestException as exc:
        reason = dbcheck.os_reason(exc) or exc.__class__.__name__
        raise Stop(
            FAILED if ctx.login else WARNING,
            f"nothing answers at {url} ({reason})",
            "start the shim (pydio-shim serve), or give its public URL, prefix included, with --shim-url",
        ) from None
    if not health:
        return OK, f"{url} answered {response.status_code} (admin.health_path is off)"
    try:
        state = response.json()
    except ValueError:
        state = None
    if response.status_code == 200 and isinstance(state, dict) and state.get("status") == "ok":
        return OK, f"{url}: " + ", ".join(f"{k} {v}" for k, v in state.get("checks", {}).items())
    if response.status_code == 503 and isinstance(state, dict):
        failing = "; ".join(f"{k} {v}" for k, v in state.get("checks", {}).items() if v != "ok")
        raise Stop(
            FAILED,
            f"{url} answered 503: {failing}",
            "the shim cannot reach that part with its own configuration: compare it with the checks above",
        )
    raise Stop(
        FAILED,
        f"{url} answered {response.status_code} ({body_hint(response.content)!r}), not the shim's health",
        "give the shim's public URL with its prefix (e.g. https://host/pydio) to --shim-url, "
        "or check what the web server forwards there",
    )


@check("end_to_end", "end to end through the shim")
def end_to_end(ctx: Context):
    _need_end_to_end_prerequisites(ctx)
    ws_key = ctx.target_key or "pydio"
    base = f"{ctx.shim_url}/api/{quote(ws_key, safe='')}"
    auth = ctx.credentials
    name = f"pydio-shim-doctor-{secrets.token_hex(4)}.txt"
    with ctx.db.connect() as conn:
        before = db.max_seq(conn)
    created = ctx.http.post(f"{base}/mkfile/{quote(name)}", auth=auth, timeout=ctx.timeout * 3)
    if created.status_code != 200 or b'type="ERROR"' in created.content:
        raise Stop(
            FAILED,
            f"creating /{name} through {base}/mkfile answered {created.status_code} ({body_hint(created.content)!r})",
            "the shim could not forward a file operation: see its log (one line per request) and the web server's",
        )
    recycle_bin = getattr(ctx.target, "recycle_bin", "")
    problems, seqs = [], []
    try:
        row, waited = _wait_for_change(
            ctx, base, before, lambda r: r.get("type") == "create" and r.get("target") == f"/{name}"
        )
        if row is None:
            problems.append(f"its creation did not appear in the feed at {base}/changes/{before} within {waited:.0f} s")
        else:
            seqs.append(row["seq"])
    finally:
        deleted, emptied = _delete_test_file(ctx, base, name, recycle_bin)
    if deleted.status_code != 200 or b'type="ERROR"' in deleted.content:
        problems.append(
            f"deleting it answered {deleted.status_code} ({body_hint(deleted.content)!r}); remove /{name} by hand"
        )
    elif seqs:
        row, waited = _wait_for_change(
            ctx, base, seqs[0], lambda r: r.get("type") == "delete" and r.get("source") in (f"/{name}",)
        )
        if row is None:
            problems.append(f"its deletion did not appear in the feed within {waited:.0f} s")
        else:
            seqs.append(row["seq"])
    if emptied is not None and emptied.status_code != 200:
        problems.append(
            f"emptying it from the recycle bin answered {emptied.status_code}; remove /{recycle_bin}/{name} by hand"
        )
    if problems:
        raise Stop(
            FAILED,
            f"created /{name} in workspace {ws_key!r} through {ctx.shim_url}, but " + "; ".join(problems),
            "compare the workspace checks above with what Pydio does (identifier, syncable), and read the shim's log",
        )
    recycled = " (and from the recycle bin)" if emptied is not None else ""
    return OK, (
        f"created /{name} in workspace {ws_key!r} through {ctx.shim_url}: the shim's feed showed its creation "
        f"(seq {seqs[0]}) and, once deleted{recycled}, its deletion (seq {seqs[1]})"
    )


def _need_end_to_end_prerequisites(ctx: Context) -> None:
    if not ctx.login:
        raise Stop(SKIPPED, "no test account: give --user LOGIN to create and delete a test file through the shim")
    for needed, what in (
        ("shim", "the shim"),
        ("authorization", "the test account's access"),
        ("database", "the database"),
        ("trigger_firing", "the triggers"),
    ):
        if not ctx.passed(needed):
            raise Stop(SKIPPED, f"{what} did not pass (see above)")
    if not ctx.target_usable:
        raise Stop(SKIPPED, f"the test account cannot read the feed of workspace {ctx.target_key!r} (see above)")


def _delete_test_file(ctx: Context, base: str, name: str, recycle_bin: str):
    """Delete the test file, and empty it from the recycle bin: the two answers (the second may be None)."""
    deleted = ctx.http.post(f"{base}/delete", data={"file": f"/{name}"}, auth=ctx.credentials, timeout=ctx.timeout * 3)
    emptied = None
    if deleted.status_code == 200 and recycle_bin:
        emptied = ctx.http.post(
            f"{base}/delete", data={"file": f"/{recycle_bin}/{name}"}, auth=ctx.credentials, timeout=ctx.timeout * 3
        )
    return deleted, emptied


def _wait_for_change(ctx: Context, base: str, since: int, wanted):
    """The first feed row after *since* matching *wanted*, polling (a replica may lag)."""
    started = time.monotonic()
    deadline = started + ctx.timeout
    while True:
        response = ctx.http.get(
            f"{base}/changes/{since}",
            params={"stream": "true"},
            auth=ctx.credentials,
            timeout=ctx.timeout * 3,
        )
        if response.status_code == 200:
            for line in response.text.split("\n"):
                if not line or line.startswith("LAST_SEQ"):
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if wanted(row):
                    return row, time.monotonic() - started
        if time.monotonic() >= deadline:
            return None, time.monotonic() - started
        time.sleep(0.2)
