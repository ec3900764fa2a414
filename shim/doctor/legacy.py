"""Checks of the legacy server: reachable, its REST API, the Authorization header reaching PHP."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from urllib.parse import quote

import sqlalchemy as sa

from .. import config as config_module
from .. import db, dbcheck, translate
from ..authz import PROBE_SEQ
from ..upstream import UpstreamError, UpstreamTimeout, make_upstream
from ..workspaces import OptionError, WorkspaceResolver, from_builtin
from .base import FAILED, OK, SKIPPED, USER_AGENT, WARNING, Context, Stop, body_hint, check

NOT_AUTHORIZED = b"You are not authorized to access this API."
REWRITE_FIX = (
    "add the rewrite of every non-file request to index.php: Apache: mod_rewrite on, AllowOverride All "
    "for Pydio's directory and, under a subpath, RewriteBase {prefix}/ in its .htaccess; nginx: "
    "try_files $uri $uri/ {prefix}/index.php?$args; or let the shim talk to PHP-FPM itself "
    "(upstream.url = fcgi://host:port with upstream.document_root), which needs no rewrite"
)
AUTHORIZATION_FIX = (
    "make the web server pass the header to PHP: Apache with PHP-FPM/CGI: CGIPassAuth On "
    '(Apache 2.4.13+) or SetEnvIf Authorization "(.*)" HTTP_AUTHORIZATION=$1; nginx with '
    "PHP-FPM: fastcgi_param HTTP_AUTHORIZATION $http_authorization; or let the shim talk to "
    "PHP-FPM itself (upstream.url = fcgi://host:port), which always passes it"
)


def password_matches(password: str, stored: str) -> bool | None:
    """Whether *password* matches a password stored by Pydio's auth.sql driver; None when unknown.

    Pydio stores ``algorithm:iterations:salt:hash`` (PBKDF2, hash in base64,
    the salt string used as is), or in old installs a bare hex MD5.
    """
    if not stored:
        return None
    parts = stored.split(":")
    if len(parts) >= 4:
        algorithm, rounds, salt, encoded = parts[:4]
        try:
            expected = base64.b64decode(encoded, validate=True)
            iterations = int(rounds)
            if iterations <= 0 or not expected:
                return None
            derived = hashlib.pbkdf2_hmac(
                algorithm.lower(), password.encode(), salt.encode(), iterations, len(expected)
            )
        except (ValueError, binascii.Error):
            return None
        return hmac.compare_digest(derived, expected)
    if len(stored) == 32 and re.fullmatch(r"[0-9a-fA-F]{32}", stored):
        return hmac.compare_digest(hashlib.md5(password.encode()).hexdigest(), stored.lower())
    return None


def _header(headers, name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name.lower()), None)


def _pydio_challenge(headers) -> bool:
    return any(k.lower() == "www-authenticate" and 'realm="pydio api"' in v.lower() for k, v in headers)


def _xml_message(body: bytes) -> str | None:
    match = re.search(rb"<message[^>]*>(.*?)</message>", body, re.S)
    return match.group(1).decode("utf-8", "replace") if match else None


def upstream_get(ctx: Context, path: str, headers=()) -> tuple[int, list, bytes, float]:
    started = time.perf_counter()
    response = ctx.upstream.send("GET", path, [("User-Agent", USER_AGENT), *headers])
    body = response.read_all(16 * 1024)
    return response.status, response.headers, body, time.perf_counter() - started


@check("upstream", "upstream reachable")
def upstream(ctx: Context):
    c = ctx.config
    short = config_module.replace(
        c,
        upstream_connect_timeout=min(c.upstream_connect_timeout, ctx.timeout),
        upstream_read_timeout=min(c.upstream_read_timeout, ctx.timeout * 3),
    )
    try:
        ctx.upstream = make_upstream(short)
    except Exception as exc:
        raise Stop(
            FAILED, f"cannot set up the upstream {c.upstream_url}: {db.first_line(exc)}", "correct upstream.url"
        ) from None
    root = translate.join_prefix(ctx.uprefix, "/")
    where = c.upstream_url.rstrip("/") + root
    try:
        status, _headers, body, elapsed = upstream_get(ctx, root)
    except UpstreamTimeout as exc:
        raise Stop(
            FAILED,
            f"{where}: {exc} (waited up to {ctx.timeout * 3:.0f} s)",
            "check that the server is up and reachable from here; look at the web server's and PHP-FPM's "
            "logs: PHP may be stuck or out of workers",
        ) from None
    except UpstreamError as exc:
        raise Stop(
            FAILED,
            f"cannot connect to {where}: {dbcheck.os_reason(exc) or exc}",
            "start the web server (or PHP-FPM) serving Pydio, or correct upstream.url",
        ) from None
    if status >= 500:
        raise Stop(
            FAILED,
            f"{where} answered {status} ({body_hint(body)})",
            "the server is up but Pydio fails: look at the web server's and PHP's error logs",
        )
    return OK, f"{where} answered {status} in {elapsed * 1000:.0f} ms"


@check(
    "api",
    lambda ctx: f"REST API at {ctx.uprefix}/api/",
    needs={"upstream": "the upstream is not reachable (see above)"},
)
def api(ctx: Context):
    prefix = ctx.uprefix
    path = translate.join_prefix(prefix, f"/api/pydio/changes/{PROBE_SEQ}") + "?stream=true"
    status, headers, body, _ = upstream_get(ctx, path)
    if status == 401 and _pydio_challenge(headers):
        return (
            OK,
            'Pydio answered a request without credentials with its own 401 (WWW-Authenticate: Basic realm="Pydio API")',
        )
    if status == 401:
        challenge = _header(headers, "WWW-Authenticate") or "no challenge"
        raise Stop(
            FAILED,
            f"a 401 that is not Pydio's ({challenge}): the web server protects {prefix}/api/ with its own password",
            f"exempt {prefix}/api/ from the web server's authentication (auth_basic, AuthType): the sync "
            "client authenticates to Pydio itself",
        )
    if status == 404:
        raise _api_not_found(ctx, prefix, body)
    if 300 <= status < 400:
        raise Stop(
            FAILED,
            f"{prefix}/api/ redirects ({status}) to {_header(headers, 'Location')}",
            "point upstream.url (and upstream.prefix) at the address Pydio answers on directly, e.g. "
            "https:// when the server redirects HTTP to HTTPS",
        )
    if status == 403:
        raise Stop(
            FAILED,
            f"the web server forbids {prefix}/api/ (403: {body_hint(body)!r})",
            "allow /api/ in the web server's configuration (Require all granted / allow)",
        )
    if status >= 500:
        raise Stop(
            FAILED, f"{prefix}/api/ answered {status} ({body_hint(body)!r}): Pydio fails", "look at PHP's error log"
        )
    ctype = (_header(headers, "Content-Type") or "").lower()
    if status == 200 and ("xml" in ctype or "json" in ctype or body.lstrip(b"\n").startswith(b"LAST_SEQ")):
        return (
            WARNING,
            f"Pydio answered a request without credentials with 200 ({ctype}): guest access is on?",
            "turn guest access off unless it is wanted: the sync client always sends credentials",
        )
    raise Stop(
        FAILED,
        f"{prefix}/api/ answered {status} {ctype} ({body_hint(body)!r}), not Pydio's API",
        "check upstream.url and upstream.prefix, and the web server's rewrite rules: "
        + REWRITE_FIX.format(prefix=prefix),
    )


def _api_not_found(ctx: Context, prefix: str, body: bytes) -> Stop:
    """A 404 for the API: missing rewrite rules when index.php answers, else the wrong prefix."""
    index_status, _h, _b, _t = upstream_get(ctx, translate.join_prefix(prefix, "/index.php"))
    hint = body_hint(body)
    if index_status < 400:
        return Stop(
            FAILED,
            f"the web server's own 404 ({hint!r}) for {prefix}/api/, while {prefix}/index.php "
            f"answers {index_status}: PHP works, the rewrite rules are missing",
            REWRITE_FIX.format(prefix=prefix),
        )
    return Stop(
        FAILED,
        f"404 ({hint!r}) for {prefix}/api/ and {index_status} for {prefix}/index.php: Pydio is "
        f"not installed at {prefix or '/'} on that server",
        "set upstream.prefix to the path Pydio is installed at (e.g. /pydio), and check upstream.url",
    )


def choose_target(ctx: Context) -> None:
    """The workspace of the account checks: --workspace, else a syncable built-in one."""
    if ctx.target_key is not None:
        return
    builtin = [from_builtin(w) for w in ctx.config.workspaces]
    if ctx.workspace_arg:
        ctx.target_key = ctx.workspace_arg
        if ctx.engine is not None:
            try:
                ctx.target = WorkspaceResolver(ctx.engine, ctx.config.workspaces).resolve(ctx.workspace_arg)
            except (sa.exc.SQLAlchemyError, OptionError):
                ctx.target = None
        if ctx.target is None:
            ctx.target = next((w for w in builtin if ctx.workspace_arg in (w.id, w.slug)), None)
        return
    syncable = [w for w in builtin if w.syncable]
    # A user-scoped workspace (my-files) keeps the test file out of everyone else's view.
    chosen = next((w for w in syncable if w.scope == "USER"), None) or (syncable[0] if syncable else None)
    ctx.target = chosen
    ctx.target_key = chosen.slug if chosen else "pydio"


def _password_verdict(ctx: Context) -> tuple[bool | None, str]:
    """Does the doctor's password match ajxp_users? ``(answer, why unknown)``."""
    engine, own = ctx.engine, None
    try:
        if engine is None:
            engine = own = dbcheck.connect_engine(ctx.config.database_url, ctx.timeout)
        with engine.connect() as conn:
            row = conn.execute(sa.select(db.users.c.password).where(db.users.c.login == ctx.login)).first()
    except (dbcheck.DiagnosticError, sa.exc.SQLAlchemyError, ImportError):
        return None, "the database could not be read to tell which"
    finally:
        if own is not None:
            own.dispose()
    if row is None:
        return None, f"there is no user {ctx.login!r} in ajxp_users"
    verdict = password_matches(ctx.password or "", row[0] or "")
    return verdict, "" if verdict is not None else "the stored password's format is not one the doctor knows"


@check("authorization", "Authorization header reaching PHP")
def authorization(ctx: Context):
    if not ctx.login:
        raise Stop(
            SKIPPED,
            "no test account: give --user LOGIN and its password (--password, or PYDIO_SHIM_DOCTOR_PASSWORD) to check",
        )
    if not ctx.passed("api"):
        raise Stop(SKIPPED, "the REST API does not answer (see above)")
    choose_target(ctx)
    ws = ctx.target_key or "pydio"
    path = translate.join_prefix(ctx.uprefix, f"/api/{quote(ws, safe='')}/changes/{PROBE_SEQ}") + "?stream=true"
    basic = "Basic " + base64.b64encode(f"{ctx.login}:{ctx.password}".encode()).decode()
    status, headers, body, _ = upstream_get(ctx, path, [("Authorization", basic)])
    if status == 200 and body.lstrip(b"\n").startswith(b"LAST_SEQ"):
        ctx.target_usable = True
        return OK, f"Basic credentials of {ctx.login!r} reached PHP: it served the feed of workspace {ws!r} to them"
    if status == 200 and _xml_message(body) is not None:
        raise Stop(
            WARNING,
            f"PHP accepted the credentials of {ctx.login!r} but answered for workspace {ws!r}: {_xml_message(body)}",
            "choose a syncable workspace the account can read with --workspace",
        )
    if status == 401 and body.strip() == NOT_AUTHORIZED:
        raise Stop(
            WARNING,
            f"PHP accepted the credentials, but {ctx.login!r} has no right on workspace {ws!r}",
            "give the test account read/write access to it, or choose another with --workspace",
        )
    if status == 401 and _pydio_challenge(headers):
        verdict, why = _password_verdict(ctx)
        if verdict is True:
            raise Stop(
                FAILED,
                "PHP answered 401 with its Basic challenge although the password of "
                f"{ctx.login!r} is right (it matches ajxp_users): the Authorization header does not "
                "reach PHP",
                AUTHORIZATION_FIX,
            )
        if verdict is False:
            raise Stop(
                FAILED,
                f"PHP refused the credentials, and the password given for {ctx.login!r} does not "
                "match ajxp_users either: the doctor was given a wrong password",
                "give the test account's right password (--password or PYDIO_SHIM_DOCTOR_PASSWORD)",
            )
        raise Stop(
            FAILED,
            "PHP answered 401 with its Basic challenge: either the password is wrong or the "
            f"Authorization header does not reach PHP ({why})",
            "check the password; if it is right: " + AUTHORIZATION_FIX,
        )
    raise Stop(
        FAILED,
        f"unexpected answer {status} ({body_hint(body)!r}) to an authenticated feed request",
        "look at PHP's error log",
    )
