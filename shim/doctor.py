"""``pydio-shim doctor``: check an install from end to end and say how to fix what is wrong.

Each check yields one :class:`Finding`, printed as one line: ``ok``,
``warning``, ``failed`` or ``skipped`` (not run, because a check it needs failed
or an option is missing), what was seen, and for anything not ok how to fix it.  The checks,
in order:

- the database answers (a wrong password, an unknown database or a closed port
  is named as such), and the feed replica when one is configured;
- the tables the shim reads exist; the three meta.syncable triggers exist and
  fire (tested on a row inserted, updated and deleted inside a transaction that
  is rolled back, so nothing is kept);
- the feed index, and each workspace: syncable? indexed?
- the legacy server answers at ``upstream.url`` + ``upstream.prefix``;
- its REST API answers at ``{prefix}/api/`` (Pydio's own 401 challenge, not the
  web server's 404 of a missing rewrite rule);
- with a test account (``--user``): Basic credentials reach PHP (a 401 with
  Pydio's challenge although the password matches ``ajxp_users`` means the web
  server drops the ``Authorization`` header);
- the shim answers at its public URL, and with ``--user``, end to end: a test
  file created through the shim shows up in the shim's feed, then is deleted.

The doctor never prints a password, and never changes the database except for
what the rolled-back trigger test and the end-to-end file (created, then
deleted through Pydio) imply.  Exit status of the command: 0 when no check
failed (warnings and skipped checks allowed), 1 otherwise.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import time
from dataclasses import asdict, dataclass
from urllib.parse import quote, urlsplit

import requests
import sqlalchemy as sa

from . import config as config_module, db, proxy, schema, translate
from .auth import PROBE_SEQ
from .workspaces import Workspace, WorkspaceResolver, from_builtin

OK, WARNING, FAILED, SKIPPED = "ok", "warning", "failed", "skipped"
USER_AGENT = "pydio-shim doctor"
DEFAULT_SHIM_URL = "http://127.0.0.1:8080"
#: Above this many changes, polls without the feed index read noticeably more rows than they return.
LARGE_CHANGES_TABLE = 100_000
#: Workspaces of ajxp_repo reported one per line; the rest are summed up in one line.
MAX_WORKSPACE_LINES = 50
#: Tables of Pydio's SQL configuration and authentication that the shim reads.
CONF_TABLES = ("ajxp_users", "ajxp_repo", "ajxp_repo_options", "ajxp_simple_store")
NOT_AUTHORIZED = b"You are not authorized to access this API."
TRIGGER_ROLES = {"LOG_INSERT": "new files and folders", "LOG_UPDATE": "edits and renames",
                 "LOG_DELETE": "deletions"}
REWRITE_FIX = ("add the rewrite of every non-file request to index.php: Apache: mod_rewrite on, AllowOverride All "
               "for Pydio's directory and, under a subpath, RewriteBase {prefix}/ in its .htaccess; nginx: "
               "try_files $uri $uri/ {prefix}/index.php?$args; or let the shim talk to PHP-FPM itself "
               "(upstream.url = fcgi://host:port with upstream.document_root), which needs no rewrite")
AUTHORIZATION_FIX = ("make the web server pass the header to PHP: Apache with PHP-FPM/CGI: CGIPassAuth On "
                     "(Apache 2.4.13+) or SetEnvIf Authorization \"(.*)\" HTTP_AUTHORIZATION=$1; nginx with "
                     "PHP-FPM: fastcgi_param HTTP_AUTHORIZATION $http_authorization; or let the shim talk to "
                     "PHP-FPM itself (upstream.url = fcgi://host:port), which always passes it")


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


class _Stop(Exception):
    """Raised inside a check to end it with a finding."""

    def __init__(self, status: str, seen: str, fix: str = ""):
        super().__init__(seen)
        self.status, self.seen, self.fix = status, seen, fix


# --- small helpers --------------------------------------------------------------


def masked_url(url: str) -> str:
    """*url* with its password replaced by ``***``."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: hide anything between ':' and '@'
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


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
            derived = hashlib.pbkdf2_hmac(algorithm.lower(), password.encode(), salt.encode(), iterations,
                                          len(expected))
        except (ValueError, binascii.Error):
            return None
        return hmac.compare_digest(derived, expected)
    if len(stored) == 32 and re.fullmatch(r"[0-9a-fA-F]{32}", stored):
        return hmac.compare_digest(hashlib.md5(password.encode()).hexdigest(), stored.lower())
    return None


def _first_line(text: str, limit: int = 200) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line[:limit]


def _os_reason(exc: BaseException) -> str:
    """The operating system's words for a connection failure buried in *exc*, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
        if match:
            return match.group(1).strip()
        exc = exc.__cause__ or exc.__context__
    return ""


def _body_hint(body: bytes) -> str:
    """A short description of an answer body: its HTML title, XML message or first characters."""
    text = body.decode("utf-8", "replace")
    for pattern in (r"<title>(.*?)</title>", r"<message[^>]*>(.*?)</message>", r"<h1>(.*?)</h1>"):
        match = re.search(pattern, text, re.I | re.S)
        if match:
            return " ".join(match.group(1).split())[:120]
    return " ".join(text.split())[:120]


def _header(headers, name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name.lower():
            return value
    return None


def _pydio_challenge(headers) -> bool:
    return any(k.lower() == "www-authenticate" and 'realm="pydio api"' in v.lower() for k, v in headers)


def _xml_message(body: bytes) -> str | None:
    match = re.search(rb"<message[^>]*>(.*?)</message>", body, re.S)
    return match.group(1).decode("utf-8", "replace") if match else None


def describe_db_error(exc: Exception, url: str) -> tuple[str, str]:
    """``(what was seen, how to fix it)`` for a failed database connection, in plain words."""
    parsed = sa.engine.make_url(url)
    orig = getattr(exc, "orig", None) or exc
    text = str(orig)
    code = orig.args[0] if getattr(orig, "args", None) and isinstance(orig.args[0], int) else None
    lower = text.lower()
    where = f"{parsed.host or 'localhost'}:{parsed.port or {'mysql': 3306, 'postgresql': 5432}.get(parsed.get_backend_name(), '')}"
    user = parsed.username or "(no user)"
    name = parsed.database or "(none)"
    if code == 1045 or "password authentication failed" in lower:
        return (f"the server at {where} refused the password of user {user!r} ({_first_line(text)})",
                "give the right password in database.url (characters such as @ : / % in it must be "
                "percent-encoded, e.g. @ as %40)")
    if code == 1698 or "no pg_hba.conf entry" in lower or "peer authentication failed" in lower:
        return (f"the server at {where} does not let user {user!r} log in from here ({_first_line(text)})",
                "MariaDB/MySQL: give the user a password login for this host; PostgreSQL: add a host line for "
                "this client and database in pg_hba.conf")
    if code in (1044, 1142) or "permission denied" in lower:
        return (f"user {user!r} may not use database {name!r} ({_first_line(text)})",
                f"grant the user access to {name} (SELECT, and INSERT/UPDATE/DELETE for the trigger test)")
    if code == 1049 or (parsed.get_backend_name() == "postgresql" and "database" in lower and "does not exist" in lower):
        return (f"there is no database {name!r} on {where}", "correct the database name in database.url")
    if parsed.get_backend_name() == "postgresql" and "role" in lower and "does not exist" in lower:
        return (f"there is no user {user!r} on {where}", "correct the user name in database.url")
    if code == 2005 or "could not translate host name" in lower or "name or service not known" in lower \
            or "unknown host" in lower:
        return (f"the host {parsed.host!r} cannot be resolved", "correct the host in database.url")
    if "timeout" in lower or "timed out" in lower:
        return (f"no answer from {where} in time (a firewall dropping packets, or the server is overloaded)",
                "check that the database server is up and that this machine may reach it")
    if code == 2003 or "connection refused" in lower or "could not connect" in lower:
        return (f"nothing accepts connections at {where} (server down, closed port or wrong port)",
                "start the database server, or correct the host and port in database.url")
    if "unable to open database file" in lower:
        return (f"SQLite cannot open {parsed.database!r} (a missing directory or no permission)",
                "correct the path in database.url, and let the shim's user read and write the file and its directory")
    return _first_line(text) or exc.__class__.__name__, "correct database.url, or start the database server"


def sqlite_file_problem(url: str) -> str | None:
    """Why an SQLite *url* cannot be Pydio's database (in memory, or no such file), else None."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    path = parsed.database
    if not path or path == ":memory:":
        return "database.url names an in-memory SQLite database: it holds no Pydio data"
    if not parsed.query.get("uri") and not os.path.exists(path):
        return f"the SQLite file {path} does not exist (SQLite would silently create an empty one)"
    return None


def connect_engine(url: str, timeout: float):
    """An engine for a short diagnostic session: no pool, short connection timeouts.

    Unlike :func:`shim.db.create_engine` it never creates an SQLite file that
    does not exist (SQLite would silently make an empty database).
    """
    parsed = sa.engine.make_url(url)
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    connect_args: dict = {}
    if backend == "sqlite":
        problem = sqlite_file_problem(url)
        if problem:
            raise _Stop(FAILED, problem, "set database.url to the SQLite file Pydio uses (an absolute path needs "
                                         "four slashes: sqlite:////var/lib/pydio/pydio.db)")
        connect_args = {"timeout": timeout}
    elif backend == "mysql":
        if driver in ("pymysql", "mysqldb"):
            connect_args = {"connect_timeout": max(1, int(timeout))}
        if "charset" not in parsed.query:
            parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    elif backend == "postgresql" and driver in ("psycopg2", "psycopg"):
        connect_args = {"connect_timeout": max(1, int(timeout))}
    return sa.create_engine(parsed, poolclass=sa.pool.NullPool, connect_args=connect_args)


def _server_version(conn) -> str:
    dialect = db.dialect_of(conn)
    if dialect == "sqlite":
        return "SQLite " + str(conn.execute(sa.text("SELECT sqlite_version()")).scalar())
    if dialect == "postgresql":
        return "PostgreSQL " + str(conn.execute(sa.text("SHOW server_version")).scalar())
    version = str(conn.execute(sa.text("SELECT VERSION()")).scalar())
    return ("MariaDB " if "mariadb" in version.lower() else "MySQL ") + version.split("-")[0]


# --- the doctor -------------------------------------------------------------------


class Doctor:
    """Runs the checks against one configuration; :meth:`run` returns the findings.

    *progress* is called with each check's title before it runs (the command
    line shows it on stderr), *report* with each finding as soon as it is known.
    """

    def __init__(self, config: config_module.Config, config_path: str | None = None, login: str | None = None,
                 password: str | None = None, workspace: str | None = None, shim_url: str | None = None,
                 timeout: float = 10.0, progress=None, report=None):
        self.config = config
        self.config_path = config_path
        self.login = login
        self.password = password
        self.workspace_arg = workspace
        self.shim_url = (shim_url or DEFAULT_SHIM_URL + config.public_prefix).rstrip("/")
        self.timeout = timeout
        self.progress = progress or (lambda title: None)
        self.report = report or (lambda finding: None)
        self.uprefix = translate.normalise_prefix(config.upstream_prefix)
        self.findings: list[Finding] = []
        self.status: dict[str, str] = {}
        self.engine = None
        self.tables: set[str] = set()
        self.upstream = None
        self.target: Workspace | None = None  # the workspace of the authorization and end-to-end checks
        self.target_key: str | None = None
        self.target_usable = False
        self.http = requests.Session()
        self.http.trust_env = False  # talk to the shim directly, never through an environment proxy
        self.http.headers["User-Agent"] = USER_AGENT
        self._secrets = [s for s in (password, sa.engine.make_url(config.database_url).password,
                                     sa.engine.make_url(config.feed_database_url).password
                                     if config.feed_database_url else None) if s]

    @property
    def _config_option(self) -> str:
        return f" --config {self.config_path}" if self.config_path else ""

    # --- running ------------------------------------------------------------------

    def run(self) -> list[Finding]:
        steps = [
            ("configuration", "configuration", self.check_configuration),
            ("database", "database reachable", self.check_database),
        ]
        if self.config.feed_database_url:
            steps.append(("feed_database", "feed database (database.feed_url) reachable", self.check_feed_database))
        steps += [
            ("tables", "tables present", self.check_tables),
            ("triggers", "triggers on ajxp_index", self.check_triggers),
            ("trigger_firing", "triggers firing (test rolled back)", self.check_trigger_firing),
            ("feed_index", "feed index on ajxp_changes", self.check_feed_index),
            ("workspaces", "workspaces", self.check_workspaces),
            ("upstream", "upstream reachable", self.check_upstream),
            ("api", f"REST API at {self.uprefix}/api/", self.check_api),
            ("authorization", "Authorization header reaching PHP", self.check_authorization),
            ("shim", f"shim answering at {self.shim_url}", self.check_shim),
            ("end_to_end", "end to end through the shim", self.check_end_to_end),
        ]
        try:
            for check, title, method in steps:
                self.progress(title)
                try:
                    outcome = method()
                except _Stop as stop:
                    outcome = Finding(check, title, stop.status, stop.seen, stop.fix)
                except sa.exc.SQLAlchemyError as exc:
                    outcome = Finding(check, title, FAILED, "database error: " + _first_line(str(exc)),
                                      "see the database check above")
                except Exception as exc:  # a check must never end the run with a traceback
                    outcome = Finding(check, title, FAILED,
                                      f"unexpected error: {exc.__class__.__name__}: {_first_line(str(exc))}")
                for finding in outcome if isinstance(outcome, list) else [outcome]:
                    finding.seen, finding.fix = self._scrub(finding.seen), self._scrub(finding.fix)
                    self.findings.append(finding)
                    self.report(finding)
                self.status[check] = _worst(outcome if isinstance(outcome, list) else [outcome])
        finally:
            if self.engine is not None:
                self.engine.dispose()
            self.http.close()
        return self.findings

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
            if quote(secret, safe="") != secret:
                text = text.replace(quote(secret, safe=""), "***")
        return text

    def _ok(self, check: str) -> bool:
        return self.status.get(check) in (OK, WARNING)

    # --- configuration and upstream -------------------------------------------------

    def check_configuration(self):
        c = self.config
        where = self.config_path or "environment variables only"
        return Finding("configuration", "configuration", OK,
                       f"{where}: upstream {c.upstream_url} prefix {c.upstream_prefix}, database "
                       f"{masked_url(c.database_url)}, public prefix {c.public_prefix or '(from X-Forwarded-Prefix)'}, "
                       f"{len(c.workspaces)} built-in workspace(s)")

    def _upstream_get(self, path: str, headers=()) -> tuple[int, list, bytes, float]:
        started = time.perf_counter()
        response = self.upstream.send("GET", path, [("User-Agent", USER_AGENT), *headers])
        body = response.read_all(16 * 1024)
        return response.status, response.headers, body, time.perf_counter() - started

    def check_upstream(self):
        title = "upstream reachable"
        from .wsgi import make_upstream
        short = config_module.replace(self.config,
                                      upstream_connect_timeout=min(self.config.upstream_connect_timeout, self.timeout),
                                      upstream_read_timeout=min(self.config.upstream_read_timeout, self.timeout * 3))
        try:
            self.upstream = make_upstream(short)
        except Exception as exc:
            raise _Stop(FAILED, f"cannot set up the upstream {self.config.upstream_url}: {_first_line(str(exc))}",
                        "correct upstream.url")
        where = self.config.upstream_url.rstrip("/") + translate.join_prefix(self.uprefix, "/")
        try:
            status, _headers, body, elapsed = self._upstream_get(translate.join_prefix(self.uprefix, "/"))
        except proxy.UpstreamTimeout as exc:
            raise _Stop(FAILED, f"{where}: {exc} (waited up to {self.timeout * 3:.0f} s)",
                        "check that the server is up and reachable from here; look at the web server's and "
                        "PHP-FPM's logs: PHP may be stuck or out of workers")
        except proxy.UpstreamError as exc:
            reason = _os_reason(exc)
            raise _Stop(FAILED, f"cannot connect to {where}: {reason or exc}",
                        "start the web server (or PHP-FPM) serving Pydio, or correct upstream.url")
        if status >= 500:
            raise _Stop(FAILED, f"{where} answered {status} ({_body_hint(body)})",
                        "the server is up but Pydio fails: look at the web server's and PHP's error logs")
        return Finding("upstream", title, OK, f"{where} answered {status} in {elapsed * 1000:.0f} ms")

    def check_api(self):
        title = f"REST API at {self.uprefix}/api/"
        if not self._ok("upstream"):
            raise _Stop(SKIPPED, "the upstream is not reachable (see above)")
        path = translate.join_prefix(self.uprefix, f"/api/pydio/changes/{PROBE_SEQ}") + "?stream=true"
        status, headers, body, _ = self._upstream_get(path)
        prefix = self.uprefix
        if status == 401 and _pydio_challenge(headers):
            return Finding("api", title, OK, 'Pydio answered a request without credentials with its own 401 '
                                             '(WWW-Authenticate: Basic realm="Pydio API")')
        if status == 401:
            challenge = _header(headers, "WWW-Authenticate") or "no challenge"
            raise _Stop(FAILED, f"a 401 that is not Pydio's ({challenge}): the web server protects {prefix}/api/ "
                                "with its own password",
                        f"exempt {prefix}/api/ from the web server's authentication (auth_basic, AuthType): the sync "
                        "client authenticates to Pydio itself")
        if status == 404:
            index_status, _h, _b, _t = self._upstream_get(translate.join_prefix(prefix, "/index.php"))
            hint = _body_hint(body)
            if index_status < 400:
                raise _Stop(FAILED, f"the web server's own 404 ({hint!r}) for {prefix}/api/, while {prefix}/index.php "
                                    f"answers {index_status}: PHP works, the rewrite rules are missing",
                            REWRITE_FIX.format(prefix=prefix))
            raise _Stop(FAILED, f"404 ({hint!r}) for {prefix}/api/ and {index_status} for {prefix}/index.php: "
                                f"Pydio is not installed at {prefix or '/'} on that server",
                        "set upstream.prefix to the path Pydio is installed at (e.g. /pydio), and check upstream.url")
        if 300 <= status < 400:
            raise _Stop(FAILED, f"{prefix}/api/ redirects ({status}) to {_header(headers, 'Location')}",
                        "point upstream.url (and upstream.prefix) at the address Pydio answers on directly, "
                        "e.g. https:// when the server redirects HTTP to HTTPS")
        if status == 403:
            raise _Stop(FAILED, f"the web server forbids {prefix}/api/ (403: {_body_hint(body)!r})",
                        "allow /api/ in the web server's configuration (Require all granted / allow)")
        if status >= 500:
            raise _Stop(FAILED, f"{prefix}/api/ answered {status} ({_body_hint(body)!r}): Pydio fails",
                        "look at PHP's error log")
        ctype = (_header(headers, "Content-Type") or "").lower()
        if status == 200 and ("xml" in ctype or "json" in ctype or body.lstrip(b"\n").startswith(b"LAST_SEQ")):
            return Finding("api", title, WARNING,
                           f"Pydio answered a request without credentials with 200 ({ctype}): guest access is on?",
                           "turn guest access off unless it is wanted: the sync client always sends credentials")
        raise _Stop(FAILED, f"{prefix}/api/ answered {status} {ctype} ({_body_hint(body)!r}), not Pydio's API",
                    "check upstream.url and upstream.prefix, and the web server's rewrite rules: " +
                    REWRITE_FIX.format(prefix=prefix))

    # --- the test account -------------------------------------------------------------

    def _choose_target(self):
        """The workspace of the account checks: --workspace, else a syncable built-in one."""
        if self.target_key is not None:
            return
        if self.workspace_arg:
            self.target_key = self.workspace_arg
            if self.engine is not None:
                try:
                    resolver = WorkspaceResolver(self.engine, self.config.workspaces, ttl=0)
                    self.target = resolver.resolve(self.workspace_arg)
                except (sa.exc.SQLAlchemyError, ValueError):
                    self.target = None
            if self.target is None:
                builtin = [from_builtin(w) for w in self.config.workspaces]
                self.target = next((w for w in builtin if self.workspace_arg in (w.id, w.slug)), None)
            return
        syncable = [from_builtin(w) for w in self.config.workspaces if w.syncable]
        # A user-scoped workspace (my-files) keeps the test file out of everyone else's view.
        chosen = next((w for w in syncable if w.scope == "USER"), None) or (syncable[0] if syncable else None)
        self.target = chosen
        self.target_key = chosen.slug if chosen else "pydio"

    def _basic(self) -> str:
        token = base64.b64encode(f"{self.login}:{self.password}".encode()).decode()
        return "Basic " + token

    def _password_verdict(self) -> tuple[bool | None, str]:
        """Does the doctor's password match ajxp_users? ``(answer, why unknown)``."""
        engine = self.engine
        own = None
        try:
            if engine is None:
                engine = own = connect_engine(self.config.database_url, self.timeout)
            with engine.connect() as conn:
                row = conn.execute(sa.select(db.users.c.password).where(db.users.c.login == self.login)).first()
        except (_Stop, sa.exc.SQLAlchemyError, ImportError):
            return None, "the database could not be read to tell which"
        finally:
            if own is not None:
                own.dispose()
        if row is None:
            return None, f"there is no user {self.login!r} in ajxp_users"
        verdict = password_matches(self.password, row[0] or "")
        return verdict, "" if verdict is not None else "the stored password's format is not one the doctor knows"

    def check_authorization(self):
        title = "Authorization header reaching PHP"
        if not self.login:
            raise _Stop(SKIPPED, "no test account: give --user LOGIN and its password (--password, or "
                                 "PYDIO_SHIM_DOCTOR_PASSWORD) to check")
        if not self._ok("api"):
            raise _Stop(SKIPPED, "the REST API does not answer (see above)")
        self._choose_target()
        ws = self.target_key
        path = translate.join_prefix(self.uprefix, f"/api/{quote(ws, safe='')}/changes/{PROBE_SEQ}") + "?stream=true"
        status, headers, body, _ = self._upstream_get(path, [("Authorization", self._basic())])
        if status == 200 and body.lstrip(b"\n").startswith(b"LAST_SEQ"):
            self.target_usable = True
            return Finding("authorization", title, OK, f"Basic credentials of {self.login!r} reached PHP: it served "
                                                       f"the feed of workspace {ws!r} to them")
        if status == 200 and _xml_message(body) is not None:
            raise _Stop(WARNING, f"PHP accepted the credentials of {self.login!r} but answered for workspace {ws!r}: "
                                 f"{_xml_message(body)}",
                        "choose a syncable workspace the account can read with --workspace")
        if status == 401 and body.strip() == NOT_AUTHORIZED:
            raise _Stop(WARNING, f"PHP accepted the credentials, but {self.login!r} has no right on workspace {ws!r}",
                        "give the test account read/write access to it, or choose another with --workspace")
        if status == 401 and _pydio_challenge(headers):
            verdict, why = self._password_verdict()
            if verdict is True:
                raise _Stop(FAILED, "PHP answered 401 with its Basic challenge although the password of "
                                    f"{self.login!r} is right (it matches ajxp_users): the Authorization header "
                                    "does not reach PHP", AUTHORIZATION_FIX)
            if verdict is False:
                raise _Stop(FAILED, f"PHP refused the credentials, and the password given for {self.login!r} does not "
                                    "match ajxp_users either: the doctor was given a wrong password",
                            "give the test account's right password (--password or PYDIO_SHIM_DOCTOR_PASSWORD)")
            raise _Stop(FAILED, "PHP answered 401 with its Basic challenge: either the password is wrong or the "
                                f"Authorization header does not reach PHP ({why})",
                        "check the password; if it is right: " + AUTHORIZATION_FIX)
        raise _Stop(FAILED, f"unexpected answer {status} ({_body_hint(body)!r}) to an authenticated feed request",
                    "look at PHP's error log")

    # --- database ---------------------------------------------------------------------

    def _connect(self, url: str):
        try:
            engine = connect_engine(url, self.timeout)
        except (ImportError, sa.exc.NoSuchModuleError, sa.exc.ArgumentError) as exc:
            raise _Stop(FAILED, f"cannot use {masked_url(url)}: {_first_line(str(exc))}",
                        "install the database driver (PyMySQL, psycopg2) or correct the URL's scheme")
        try:
            with engine.connect() as conn:
                version = _server_version(conn)
                tables = db.installed_tables(conn)
        except sa.exc.SQLAlchemyError as exc:
            engine.dispose()
            seen, fix = describe_db_error(exc, url)
            raise _Stop(FAILED, f"{masked_url(url)}: {seen}", fix)
        return engine, version, tables

    def check_database(self):
        self.engine, version, self.tables = self._connect(self.config.database_url)
        return Finding("database", "database reachable", OK, f"{masked_url(self.config.database_url)}: {version}")

    def check_feed_database(self):
        title = "feed database (database.feed_url) reachable"
        engine, version, tables = self._connect(self.config.feed_database_url)
        try:
            missing = [t for t in db.SYNCABLE_TABLES if t not in tables]
            if missing:
                raise _Stop(FAILED, f"{masked_url(self.config.feed_database_url)} ({version}) has no "
                                    f"{', '.join(missing)}", "database.feed_url must name a replica of Pydio's database")
            with engine.connect() as conn:
                replica_max = _max_seq(conn)
        finally:
            engine.dispose()
        primary = ""
        if self.engine is not None and "ajxp_changes" in self.tables:
            with self.engine.connect() as conn:
                primary = f" (primary: {_max_seq(conn)})"
        return Finding("feed_database", title, OK,
                       f"{masked_url(self.config.feed_database_url)}: {version}, ajxp_changes up to seq "
                       f"{replica_max}{primary}")

    def _need_tables(self, *names):
        if self.engine is None:
            raise _Stop(SKIPPED, "the database is not reachable (see above)")
        missing = [n for n in names if n not in self.tables]
        if missing:
            raise _Stop(SKIPPED, f"{', '.join(missing)} missing (see above)")

    def check_tables(self):
        title = "tables present"
        if self.engine is None:
            raise _Stop(SKIPPED, "the database is not reachable (see above)")
        missing_sync = [t for t in db.SYNCABLE_TABLES if t not in self.tables]
        missing_conf = [t for t in CONF_TABLES if t not in self.tables]
        problems, fixes = [], []
        if missing_sync:
            problems.append(f"no {', '.join(missing_sync)} (meta.syncable's tables: no change feed without them)")
            fixes.append(f"run pydio-shim install-schema{self._config_option} to create them with their triggers")
        if missing_conf:
            problems.append(f"no {', '.join(missing_conf)} (the shim reads Pydio's users, workspaces and key-store "
                            "tokens there)")
            fixes.append("Pydio must keep its configuration and users in this database (conf.sql and auth.sql "
                         "drivers): check that database.url names Pydio's database")
        if problems:
            raise _Stop(FAILED, "; ".join(problems), "; ".join(fixes))
        with self.engine.connect() as conn:
            last = _max_seq(conn)
        return Finding("tables", title, OK, f"{', '.join(db.SYNCABLE_TABLES + CONF_TABLES)} present; ajxp_changes "
                                            f"holds changes up to seq {last}")

    def check_triggers(self):
        title = "triggers on ajxp_index"
        self._need_tables("ajxp_index", "ajxp_changes")
        with self.engine.connect() as conn:
            dialect = db.dialect_of(conn)
            present = db.installed_triggers(conn)
        missing = [n for n in db.TRIGGER_NAMES if n not in present]
        if missing:
            lost = ", ".join(f"{n} ({TRIGGER_ROLES[n]})" for n in missing)
            raise _Stop(FAILED, f"missing on {dialect}: {lost}: such changes never reach ajxp_changes, so sync "
                                "clients never see them",
                        f"run pydio-shim install-schema{self._config_option} (it creates only what is missing)")
        note = " (LOG_UPDATE as LOG_UPDATE_CONTENT + LOG_UPDATE_PATH)" if dialect == "sqlite" else ""
        return Finding("triggers", title, OK, f"{', '.join(db.TRIGGER_NAMES)} present on {dialect}{note}")

    def check_trigger_firing(self):
        title = "triggers firing (test rolled back)"
        self._need_tables("ajxp_index", "ajxp_changes")
        if self.status.get("triggers") != OK:
            raise _Stop(SKIPPED, "some triggers are missing (see above)")
        with self.engine.connect() as conn:
            dialect = db.dialect_of(conn)
            if dialect == "mysql":
                engines = dict(conn.execute(sa.text(
                    "SELECT table_name, engine FROM information_schema.tables WHERE table_schema = DATABASE() "
                    "AND table_name IN ('ajxp_index', 'ajxp_changes')")).all())
                odd = {t: e for t, e in engines.items() if (e or "").lower() != "innodb"}
                if odd:
                    raise _Stop(WARNING, "not run: " + ", ".join(f"{t} uses {e}" for t, e in odd.items()) +
                                ", which cannot roll back, so the test would leave rows behind",
                                "convert the tables to InnoDB (ALTER TABLE ... ENGINE=InnoDB) in a quiet moment")
        marker = "pydio-shim-doctor-" + secrets.token_hex(6)
        first, second = f"/{marker}.txt", f"/{marker}-renamed.txt"
        expected = [("create", "NULL", first), ("content", first, first), ("path", first, second),
                    ("delete", second, "NULL")]
        i, c = db.index, db.changes
        try:
            node_id, logged = self._fire_triggers(dialect, marker, first, second)
        except sa.exc.SQLAlchemyError as exc:
            reason = _first_line(str(getattr(exc, "orig", None) or exc))
            if _is_permission_error(exc):
                raise _Stop(WARNING, f"not run: the database user may not write ({reason}); the shim itself only "
                                     "reads, so this is fine for serving",
                            "to test the triggers, run the doctor once with a configuration whose database.url "
                            "may write (e.g. Pydio's own database user)")
            raise _Stop(FAILED, f"the test insert/update/delete on ajxp_index failed ({reason}); ROLLED BACK, "
                                "nothing was kept", "a trigger that fails breaks Pydio's own file operations too: "
                                                    "compare the triggers with Pydio's and run install-schema")
        with self.engine.connect() as conn:
            left = conn.execute(sa.select(sa.func.count()).select_from(i).where(
                i.c.node_id == node_id, i.c.repository_identifier == marker)).scalar()
            left += conn.execute(sa.select(sa.func.count()).select_from(c).where(
                c.c.node_id == node_id, c.c.repository_identifier == marker)).scalar()
        if left:
            raise _Stop(FAILED, f"{left} test row(s) remained after ROLLBACK (node_id {node_id}, identifier {marker}): "
                                "the tables do not support transactions",
                        f"delete them: DELETE FROM ajxp_changes WHERE repository_identifier = '{marker}'; "
                        f"DELETE FROM ajxp_index WHERE repository_identifier = '{marker}'")
        got = [(t, s, d) for t, s, d, _ in logged]
        wrong_identifier = [r for r in logged if r[3] != marker]
        if got != expected or wrong_identifier:
            seen = ", ".join("/".join(str(x) for x in r[:3]) for r in logged) or "nothing"
            raise _Stop(FAILED, f"a test insert, content update, rename and delete on ajxp_index logged: {seen} "
                                "(expected create, content, path, delete); ROLLED BACK, nothing was kept",
                        "the triggers are not Pydio's: drop the faulty one(s) (see the triggers check) and run "
                        f"pydio-shim install-schema{self._config_option}")
        return Finding("trigger_firing", title, OK,
                       "a test insert, content update, rename and delete on ajxp_index logged create, content, path "
                       "and delete in ajxp_changes; the transaction was ROLLED BACK: no row was kept (the "
                       "auto-increment counters may have advanced, which leaves a harmless gap in seq)")

    def _fire_triggers(self, dialect, marker, first, second):
        """Insert, update twice and delete one ajxp_index row, read what the triggers logged, roll back."""
        i, c = db.index, db.changes
        with self.engine.connect() as conn:
            transaction = conn.begin()
            try:
                if dialect == "mysql":
                    conn.execute(sa.text("SET SESSION innodb_lock_wait_timeout = :t"), {"t": max(1, int(self.timeout))})
                elif dialect == "postgresql":
                    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{max(1, int(self.timeout))}s'"))
                result = conn.execute(i.insert().values(node_path=first, bytesize=0, md5="d41d8cd98f00b204e9800998ecf8427e",
                                                        mtime=int(time.time()), repository_identifier=marker))
                node_id = result.inserted_primary_key[0]
                conn.execute(i.update().where(i.c.node_id == node_id).values(bytesize=1))
                conn.execute(i.update().where(i.c.node_id == node_id).values(node_path=second))
                conn.execute(i.delete().where(i.c.node_id == node_id))
                logged = [tuple(r) for r in conn.execute(
                    sa.select(c.c.type, c.c.source, c.c.target, c.c.repository_identifier)
                    .where(c.c.node_id == node_id).order_by(c.c.seq))]
            finally:
                transaction.rollback()
        return node_id, logged

    def check_feed_index(self):
        title = "feed index on ajxp_changes"
        self._need_tables("ajxp_changes")
        with self.engine.connect() as conn:
            name = schema.feed_index(conn)
            invalid = schema.invalid_pg_index(conn)
            last = _max_seq(conn)
        if name:
            return Finding("feed_index", title, OK, f"{name} on (repository_identifier, seq): a poll reads only its "
                                                    "workspace's new rows")
        if invalid:
            raise _Stop(WARNING, f"{schema.INDEX_NAME} exists but is INVALID (an interrupted build): queries ignore it",
                        f"DROP INDEX CONCURRENTLY {schema.INDEX_NAME}; then pydio-shim install-schema --with-index")
        if last > LARGE_CHANGES_TABLE:
            raise _Stop(WARNING, f"no index on (repository_identifier, seq) and ajxp_changes is at seq {last}: each "
                                 "poll reads the rows of every workspace",
                        f"pydio-shim install-schema --with-index{self._config_option}")
        return Finding("feed_index", title, OK, f"no index on (repository_identifier, seq) yet, fine while "
                                                f"ajxp_changes is small (seq {last}); add it with install-schema "
                                                "--with-index when it grows")

    # --- workspaces ---------------------------------------------------------------------

    def check_workspaces(self):
        self._need_tables(*db.SYNCABLE_TABLES, "ajxp_repo", "ajxp_repo_options")
        resolver = WorkspaceResolver(self.engine, self.config.workspaces, ttl=0)
        builtin = [from_builtin(w) for w in self.config.workspaces]
        found: list[tuple[str, Workspace | None, str]] = [("built-in", w, "") for w in builtin]
        with self.engine.connect() as conn:
            uuids = [r[0] for r in conn.execute(sa.select(db.repo.c.uuid).where(
                sa.or_(db.repo.c.isTemplate.is_(None), db.repo.c.isTemplate == sa.false())).order_by(db.repo.c.uuid))]
        for uuid in uuids:
            if any(w.id == uuid for w in builtin):
                continue
            try:
                found.append(("ajxp_repo", resolver.resolve(uuid), uuid))
            except ValueError:
                found.append(("ajxp_repo", None, uuid))
        if self.workspace_arg:
            key = self.workspace_arg
            chosen = [f for f in found if f[1] is not None and f[1].id == key] \
                or [f for f in found if f[1] is not None and f[1].slug == key] \
                or [f for f in found if f[1] is None and f[2] == key]
            if not chosen:
                raise _Stop(FAILED, f"no workspace {key!r}: neither a built-in one of the configuration nor a row of "
                                    "ajxp_repo", "give an existing workspace id or slug to --workspace")
            found = chosen[:1]
        if not found:
            raise _Stop(WARNING, "none: no built-in workspace in the configuration and no row in ajxp_repo",
                        "list Pydio's built-in workspaces in [[builtin_workspaces]] (conf/shim.example.toml)")
        counts, last_seqs = self._index_stats([f[1] for f in found if f[1] is not None])
        findings = []
        from_db = 0
        hidden = {"total": 0, "syncable": 0}
        for origin, ws, raw_id in found:
            if origin == "ajxp_repo":
                from_db += 1
                if from_db > MAX_WORKSPACE_LINES and not self.workspace_arg:
                    hidden["total"] += 1
                    hidden["syncable"] += bool(ws and ws.syncable)
                    continue
            findings.append(self._workspace_finding(origin, ws, raw_id, counts, last_seqs))
        if hidden["total"]:
            findings.append(Finding("workspaces", "more workspaces", OK,
                                    f"{hidden['total']} more in ajxp_repo, {hidden['syncable']} of them syncable "
                                    "(check one with --workspace)"))
        return findings

    def _index_stats(self, workspaces):
        """Per identifier: ajxp_index rows, and MAX(seq) in ajxp_changes (one pass over each table)."""
        i, c = db.index, db.changes
        count_query = sa.select(i.c.repository_identifier, sa.func.count()).group_by(i.c.repository_identifier)
        seq_query = sa.select(c.c.repository_identifier, sa.func.max(c.c.seq)).group_by(c.c.repository_identifier)
        if self.workspace_arg and workspaces:
            ws = workspaces[0]
            for query_table in ("index", "changes"):
                column = (i if query_table == "index" else c).c.repository_identifier
                condition = sa.or_(column == ws.id, column.like(_like_escape(ws.id) + "-%", escape="!"))
                if query_table == "index":
                    count_query = count_query.where(condition)
                else:
                    seq_query = seq_query.where(condition)
        with self.engine.connect() as conn:
            counts = {k: int(n) for k, n in conn.execute(count_query)}
            last_seqs = {k: int(n) for k, n in conn.execute(seq_query)}
        return counts, last_seqs

    def _workspace_finding(self, origin, ws, raw_id, counts, last_seqs) -> Finding:
        chosen = bool(self.workspace_arg)
        if ws is None:
            return Finding(f"workspace:{raw_id}", f"workspace {raw_id}", FAILED if chosen else WARNING,
                           "its options in ajxp_repo_options cannot be read: the shim forwards its feed requests",
                           "open and save the workspace in Pydio's settings to rewrite its options")
        check, title = f"workspace:{ws.id}", f"workspace {ws.slug} ({ws.id}, {origin})"
        scope = {"USER": "user-scoped", "GROUP": "group-scoped", "": "shared"}[ws.scope]

        def mine(identifier: str) -> bool:
            return identifier == ws.id if not ws.scope else identifier.startswith(ws.id + "-")

        identifiers = sorted({k for k in counts if mine(k)} | {k for k in last_seqs if mine(k)})
        nodes = sum(counts.get(k, 0) for k in identifiers)
        last = max((last_seqs[k] for k in identifiers if k in last_seqs), default=None)
        if not ws.syncable:
            fix = ("if conf/bootstrap_repositories.php enables meta.syncable for it, set syncable = true in its "
                   "[[builtin_workspaces]] entry" if origin == "built-in"
                   else "enable the Synchronization feature (meta.syncable) in the workspace's settings in Pydio")
            return Finding(check, title, FAILED if chosen else WARNING,
                           f"not syncable ({scope}): the desktop client cannot sync it; the shim forwards its feed "
                           "requests to PHP", fix)
        where = f" under {len(identifiers)} identifiers" if ws.scope and identifiers else ""
        seen = (f"syncable, {scope}, {nodes} node(s) indexed{where}, "
                + (f"last change seq {last}" if last is not None else "no change recorded yet"))
        if nodes == 0 and last is None:
            status = WARNING if chosen else OK
            return Finding(check, title, status, seen + " (fine for an unused workspace)",
                           "files put on disk behind Pydio's back appear only after an indexation in Pydio")
        return Finding(check, title, OK, seen)

    # --- the shim itself --------------------------------------------------------------

    def check_shim(self):
        title = f"shim answering at {self.shim_url}"
        health = self.config.health_path
        url = self.shim_url + (health or "/")
        try:
            response = self.http.get(url, timeout=self.timeout * 3)
        except requests.RequestException as exc:
            reason = _os_reason(exc) or exc.__class__.__name__
            status = FAILED if self.login else WARNING
            raise _Stop(status, f"nothing answers at {url} ({reason})",
                        "start the shim (pydio-shim serve), or give its public URL, prefix included, with --shim-url")
        if not health:
            return Finding("shim", title, OK, f"{url} answered {response.status_code} (admin.health_path is off)")
        try:
            state = response.json()
        except ValueError:
            state = None
        if response.status_code == 200 and isinstance(state, dict) and state.get("status") == "ok":
            return Finding("shim", title, OK, f"{url}: " + ", ".join(f"{k} {v}" for k, v in state.get("checks", {}).items()))
        if response.status_code == 503 and isinstance(state, dict):
            failing = "; ".join(f"{k} {v}" for k, v in state.get("checks", {}).items() if v != "ok")
            raise _Stop(FAILED, f"{url} answered 503: {failing}",
                        "the shim cannot reach that part with its own configuration: compare it with the checks above")
        raise _Stop(FAILED, f"{url} answered {response.status_code} ({_body_hint(response.content)!r}), not the shim's "
                            "health", "give the shim's public URL with its prefix (e.g. https://host/pydio) to "
                                      "--shim-url, or check what the web server forwards there")

    def check_end_to_end(self):
        title = "end to end through the shim"
        if not self.login:
            raise _Stop(SKIPPED, "no test account: give --user LOGIN to create and delete a test file through the shim")
        for needed, what in (("shim", "the shim"), ("authorization", "the test account's access"),
                             ("database", "the database"), ("trigger_firing", "the triggers")):
            if not self._ok(needed):
                raise _Stop(SKIPPED, f"{what} did not pass (see above)")
        if not self.target_usable:
            raise _Stop(SKIPPED, f"the test account cannot read the feed of workspace {self.target_key!r} (see above)")
        ws_key = self.target_key
        base = f"{self.shim_url}/api/{quote(ws_key, safe='')}"
        auth = (self.login, self.password)
        name = f"pydio-shim-doctor-{secrets.token_hex(4)}.txt"
        with self.engine.connect() as conn:
            before = _max_seq(conn)
        created = self.http.post(f"{base}/mkfile/{quote(name)}", auth=auth, timeout=self.timeout * 3)
        if created.status_code != 200 or b'type="ERROR"' in created.content:
            raise _Stop(FAILED, f"creating /{name} through {base}/mkfile answered {created.status_code} "
                                f"({_body_hint(created.content)!r})",
                        "the shim could not forward a file operation: see its log (one line per request) and the "
                        "web server's")
        problems, seqs = [], []
        try:
            row, waited = self._wait_for_change(base, before, lambda r: r.get("type") == "create"
                                                and r.get("target") == f"/{name}")
            if row is None:
                problems.append(f"its creation did not appear in the feed at {base}/changes/{before} within "
                                f"{waited:.0f} s")
            else:
                seqs.append(row["seq"])
        finally:
            deleted = self.http.post(f"{base}/delete", data={"file": f"/{name}"}, auth=auth, timeout=self.timeout * 3)
            emptied = None
            if deleted.status_code == 200 and self.target is not None and self.target.recycle_bin:
                emptied = self.http.post(f"{base}/delete", data={"file": f"/{self.target.recycle_bin}/{name}"},
                                         auth=auth, timeout=self.timeout * 3)
        if deleted.status_code != 200 or b'type="ERROR"' in deleted.content:
            problems.append(f"deleting it answered {deleted.status_code} ({_body_hint(deleted.content)!r}); remove "
                            f"/{name} by hand")
        elif seqs:
            row, waited = self._wait_for_change(base, seqs[0], lambda r: r.get("type") == "delete"
                                                and r.get("source") in (f"/{name}",))
            if row is None:
                problems.append(f"its deletion did not appear in the feed within {waited:.0f} s")
            else:
                seqs.append(row["seq"])
        if emptied is not None and emptied.status_code != 200:
            problems.append(f"emptying it from the recycle bin answered {emptied.status_code}; remove "
                            f"/{self.target.recycle_bin}/{name} by hand")
        if problems:
            raise _Stop(FAILED, f"created /{name} in workspace {ws_key!r} through {self.shim_url}, but "
                                + "; ".join(problems),
                        "compare the workspace checks above with what Pydio does (identifier, syncable), and read "
                        "the shim's log")
        recycled = " (and from the recycle bin)" if emptied is not None else ""
        return Finding("end_to_end", title, OK,
                       f"created /{name} in workspace {ws_key!r} through {self.shim_url}: the shim's feed showed its "
                       f"creation (seq {seqs[0]}) and, once deleted{recycled}, its deletion (seq {seqs[1]})")

    def _wait_for_change(self, base: str, since: int, wanted):
        """The first feed row after *since* matching *wanted*, polling (a replica may lag)."""
        started = time.monotonic()
        deadline = started + self.timeout
        auth = (self.login, self.password)
        while True:
            response = self.http.get(f"{base}/changes/{since}", params={"stream": "true"}, auth=auth,
                                     timeout=self.timeout * 3)
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


def _is_permission_error(exc) -> bool:
    orig = getattr(exc, "orig", None) or exc
    code = orig.args[0] if getattr(orig, "args", None) and isinstance(orig.args[0], int) else None
    text = str(orig).lower()
    return code in (1142, 1044, 1227) or "permission denied" in text or "readonly database" in text \
        or "read-only" in text or "read only" in text


def _like_escape(text: str) -> str:
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _max_seq(conn) -> int:
    return int(conn.execute(sa.select(sa.func.max(db.changes.c.seq))).scalar() or 0)


def _worst(findings) -> str:
    order = [FAILED, SKIPPED, WARNING, OK]
    statuses = {f.status for f in findings}
    return next((s for s in order if s in statuses), OK)


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
