"""A small stand-in for the legacy Pydio 8 PHP server, shared by tests and the demo.

It is *not* part of the shim's serving path.  It exists because a real Pydio
cannot be installed on every test machine, and it is kept honest: it
authenticates like Pydio (Basic, key-store tokens with the exact HMAC rule,
the same 401 answers), stores files on disk, keeps ``ajxp_index`` up to date on
every file operation so that the database triggers fill ``ajxp_changes`` as in
a real install, and answers ``changes`` with a literal, unoptimised rendition
of the legacy loop (so tests can compare the shim's feed with it).

Its workspace handling is deliberately written apart from the shim's
(``shim.workspaces``) so that tests of one are not tests of the other.

Run it at a subpath (``prefix="/pydio"``), with its rewrite rules "broken"
(``rewrite_broken=True``: only ``index.php`` answers, ``/api`` gets the web
server's 404) or with the ``Authorization`` header dropped on the way to PHP
(``drop_authorization=True``), to reproduce the install failures the shim repairs.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from urllib.parse import parse_qsl, unquote

import sqlalchemy as sa
from werkzeug.wrappers import Request, Response

from .. import db, schema
from . import legacy_feed
from .legacy_admin import AdminActions, ChangesSideEffects
from .legacy_files import XML, FileActions, xml_text
from .pydio_store import PydioStore, StandinWorkspace, check_password

_ASCII_LOWER = {ord(c): ord(c) + 32 for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
REALM_HEADER = 'Basic realm="Pydio API"'
NOT_AUTHORIZED = b"You are not authorized to access this API."
HTML = "text/html; charset=UTF-8"


def php_signed_uri(path: str) -> str:
    """The legacy rule, written out independently of :mod:`shim.phpcompat`."""
    parts = []
    for part in path.rstrip("/").split("/"):
        raw = bytes(unquote(part.replace("+", " "), encoding="latin-1"), "latin-1")
        parts.append(
            "".join(
                chr(b) if (chr(b).isascii() and (chr(b).isalnum() or chr(b) in "-_.~")) else f"%{b:02X}" for b in raw
            )
        )
    return "/".join(parts).replace("~", "%7E")


class LegacyStandin(FileActions):
    """A WSGI application behaving like a Pydio 8 install for the sync client."""

    def __init__(
        self,
        database_url: str,
        data_dir: str,
        workspaces=None,
        prefix: str = "/",
        rewrite_broken: bool = False,
        drop_authorization: bool = False,
        force_session_credentials: bool = False,
    ):
        self.engine = db.create_engine(database_url, pool_size=16)  # a threaded server: one per request
        self.data_dir = data_dir
        self.store = PydioStore(self.engine, workspaces)
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.rewrite_broken = rewrite_broken
        self.drop_authorization = drop_authorization
        self.force_session_credentials = force_session_credentials
        self.sessions: dict[str, str] = {}
        self.log: collections.deque[tuple[str, str]] = collections.deque(maxlen=2000)  # (method, raw target)
        self.calls: collections.Counter[str] = collections.Counter()  # action name -> count
        self._lock = threading.Lock()
        self.admin = AdminActions(self.store, _success, _error)
        self.side_effects = ChangesSideEffects(self.store, self.rescan, self.calls, self._lock)
        os.makedirs(data_dir, exist_ok=True)

    # --- setup helpers (tests and demo) ---------------------------------------

    def install(self):
        """Create the conf tables and the meta.syncable schema (empty database)."""
        with self.engine.begin() as conn:
            db.create_conf_tables(conn)
            schema.install_syncable_schema(conn)

    def add_user(self, login: str, password: str, group_path: str = "/", rights=("0", "1"), admin: bool = False):
        self.store.add_user(login, password, group_path, rights, admin)

    def set_right(self, login: str, ws_id: str, rights: str | None):
        self.store.set_right(login, ws_id, rights)

    # --- WSGI -----------------------------------------------------------------

    def __call__(self, environ, start_response):
        request = Request(environ)
        raw_uri = environ.get("REQUEST_URI") or environ.get("RAW_URI") or request.full_path
        path = raw_uri.split("?", 1)[0]  # as PHP's router reads REQUEST_URI (urlsplit would take //x for a host)
        self.log.append((request.method, raw_uri))
        if self.drop_authorization:
            environ.pop("HTTP_AUTHORIZATION", None)
            request = Request(environ)
        try:
            with self.store.request_scope():
                response = self.route(request, path, raw_uri)
        except FileNotFoundError:
            response = Response(b"", 404)
        return response(environ, start_response)

    def route(self, request: Request, path: str, raw_uri: str) -> Response:
        base = self.prefix
        if path.startswith(base + "/_standin/"):
            return self.diagnostics(request, path[len(base) + len("/_standin/") :], raw_uri)
        if self.rewrite_broken and not path.startswith(base + "/index.php"):
            # What Apache says when the rewrite to index.php is missing.
            body = (
                '<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n<html><head>\n<title>404 Not Found</title>\n'
                "</head><body>\n<h1>Not Found</h1>\n"
                "<p>The requested URL was not found on this server.</p>\n</body></html>\n"
            )
            return Response(body, 404, content_type="text/html; charset=iso-8859-1")
        if path.startswith(base + "/index.php"):
            path = base + path[len(base) + len("/index.php") :]
        if path.startswith(base + "/api/"):
            return self.api(request, path[len(base) + len("/api/") :])
        if path in (base, base + "/") and request.args.get("get_action") == "login":
            return self.login(request)
        if path in (base, base + "/"):
            return self.boot_page(request)
        return Response("Not found", 404, content_type=HTML)

    # --- web UI, just enough for redirects and cookies ------------------------

    def own_base_url(self, request: Request) -> str:
        return f"{request.scheme}://{request.host}{self.prefix}/"

    def boot_page(self, request: Request) -> Response:
        base = self.own_base_url(request)
        user = self.sessions.get(request.cookies.get("AjaXplorer", ""))
        # Pydio 8.2.5 writes its base as a path, self-closing: <base href="/pydio/"/>.
        html = (
            f'<!DOCTYPE html><html><head><base href="{self.prefix}/"/><title>Pydio</title>'
            f'<script>window.ajxpServerAccess = "{base}index.php";</script></head>'
            f'<body data-user="{user or ""}"><a href="{base}login">login</a></body></html>'
        )
        return Response(html, 200, content_type=HTML)

    def login(self, request: Request) -> Response:
        login = (request.form.get("userid") or "").strip()
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(db.users.c.password).where(db.users.c.login == login)).first()
        if not row or not check_password(request.form.get("password", ""), row[0]):
            return Response(
                '<?xml version="1.0" encoding="UTF-8"?><tree><logging_result value="-1"/></tree>', 200, content_type=XML
            )
        session = secrets.token_hex(16)
        self.sessions[session] = login
        response = Response("", 302, headers={"Location": self.own_base_url(request)})
        response.headers.add("Set-Cookie", f"AjaXplorer={session}; path={self.prefix or '/'}; HttpOnly")
        return response

    # --- REST API ---------------------------------------------------------------

    def params(self, request: Request) -> dict:
        # PHP's $_GET holds the percent-decoded bytes: decode each escape to one
        # latin-1 character first, then read the bytes as UTF-8.
        params = dict(parse_qsl(request.query_string.decode("latin-1"), keep_blank_values=True, encoding="latin-1"))
        params = {
            k.encode("latin-1").decode("utf-8", "replace"): v.encode("latin-1").decode("utf-8", "replace")
            for k, v in params.items()
        }
        if request.method == "POST":
            params.update(request.form.to_dict())
        return params

    def authenticate(self, request: Request, params: dict, path: str) -> str | None:
        """The user id the request logs in as, or None: Pydio's key-store frontend, then Basic.

        A token that fails (unknown, bad hash, user deleted or locked) leaves the
        request to the Basic frontend, as in Pydio; every login, token or typed,
        ends with the same checks: the user exists and is not locked out.
        """
        token = params.get("auth_token")
        auth_hash = params.get("auth_hash")
        if token and auth_hash and ":" in auth_hash:
            data = self.store.token_data(token)
            if data and isinstance(data.get("USER_ID"), str) and isinstance(data.get("PRIVATE"), str):
                nonce, given = auth_hash.split(":", 1)
                message = f"{php_signed_uri(path)}:{nonce}:{data['PRIVATE']}"
                expected = hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()
                if hmac.compare_digest(expected.encode(), given.encode()):
                    login = self.logged_in(data["USER_ID"])
                    if login is not None:
                        return login
        try:
            auth = request.authorization
        except ValueError:  # non-ASCII "base64": PHP's lenient decoding yields no valid user either
            auth = None
        if auth and auth.type == "basic" and auth.username is not None:
            if "\0" in auth.username:  # no user is called that (and PostgreSQL refuses a NUL in a query)
                return None
            account = self.store.user(self.user_id(auth.username))
            if account is None or not check_password(auth.password or "", account[0]):
                return None
            return self.logged_in(auth.username)
        if token or auth_hash:
            return None
        session = request.cookies.get("AjaXplorer")
        return self.sessions.get(session) if session else None

    @staticmethod
    def user_id(login: str) -> str:
        # auth.sql: CASE_SENSITIVE is off, the login is trimmed and lower-cased (ASCII) before any query.
        return login.strip(" \t\n\r\0\x0b").translate(_ASCII_LOWER)

    def logged_in(self, login: str) -> str | None:
        """AuthService::logUser's last checks: the user exists and holds no ``logout`` lock."""
        user_id = self.user_id(login)
        if "\0" in user_id or self.store.user(user_id) is None:  # (PostgreSQL refuses a NUL in a query)
            return None
        return None if self.store.locked_out(user_id) else user_id

    def root_dir(self, ws: StandinWorkspace, login: str) -> str:
        path = (
            ws.path.replace("AJXP_DATA_PATH", self.data_dir)
            .replace("AJXP_USER", login)
            .replace("AJXP_GROUP_PATH", self.store.group_path(login).strip("/"))
        )
        os.makedirs(path, exist_ok=True)
        return path

    def api(self, request: Request, rest: str) -> Response:
        parts = rest.split("/", 2)
        if len(parts) < 2:
            return Response("", 404)
        ws_key, action = unquote(parts[0]), parts[1]
        node_path = "/" + unquote(parts[2], errors="surrogateescape") if len(parts) > 2 else ""
        params = self.params(request)
        login = self.authenticate(
            request, params, (request.environ.get("REQUEST_URI") or request.full_path).split("?", 1)[0]
        )
        with self._lock:
            self.calls[action] += 1
        if login is None:
            return Response(b"", 401, headers={"WWW-Authenticate": REALM_HEADER}, content_type=HTML)
        if ws_key == "ajxp_conf":  # the settings workspace: administrators only
            if not self.store.is_admin(login):
                return Response(NOT_AUTHORIZED, 401, content_type=HTML)
            handler = getattr(self.admin, action, None)
            return handler(node_path, params) if handler else _error(f"Could not find action {action}")
        ws = self.store.find_workspace(ws_key, login)
        if ws is None:
            return _error(f"Could not find workspace with id/alias {ws_key}")
        if not self.store.has_right(login, ws.id):
            return Response(NOT_AUTHORIZED, 401, content_type=HTML)
        handler = getattr(self, "do_" + action, None)
        if action == "changes" and not self.store.changes_enabled(login, ws):
            handler = None  # meta.syncable not active there, or the action disabled by a role
        if handler is None:
            return _error(f"Could not find action {action}")
        return handler(request, ws, login, node_path, params)

    def do_keystore_generate_auth_token(self, request, ws, login, path, params):
        if self.force_session_credentials:
            return Response(b"", 200, content_type=HTML)
        token, private = secrets.token_hex(16), secrets.token_hex(16)
        data = {
            "USER_ID": login,
            "PRIVATE": private,
            "DEVICE_ID": path.strip("/"),
            "DEVICE_UA": request.headers.get("User-Agent", ""),
            "DEVICE_IP": request.remote_addr or "",
        }
        self.store.put_token(token, data)
        return Response(json.dumps({"t": token, "p": private}), 200, content_type="application/json")

    def do_keystore_revoke_tokens(self, request, ws, login, path, params):
        """Revoke the user's token ``key_id``, or all of the user's tokens without one."""
        self.store.revoke_tokens(login, params.get("key_id", ""))
        return Response(
            json.dumps({"result": "SUCCESS", "message": "Key(s) removed successfully!"}),
            200,
            content_type="application/json",
        )

    def do_changes(self, request, ws, login, path, params):
        """The legacy ``changes`` action (:func:`shim.demo.legacy_feed.changes_body`), side effects first."""
        with self._lock:
            self.calls["changes_side_effects"] += 1
        self.side_effects.before_changes(ws, login)
        body = legacy_feed.changes_body(
            self.engine, self.store.identifier(ws, login), ws.recycle_bin, params, path.strip("/")
        )
        return Response(body, 200, content_type="application/json; charset=UTF-8")

    def _ok(self, text):
        return _success(text)

    # --- diagnostics for proxy tests (not a Pydio feature) ------------------------

    def diagnostics(self, request: Request, what: str, raw_uri: str) -> Response:
        if what.startswith("echo"):
            digest, size = hashlib.md5(), 0
            while chunk := request.stream.read(65536):
                digest.update(chunk)
                size += len(chunk)
            info = {
                "method": request.method,
                "request_uri": raw_uri,
                "headers": list(request.headers.items()),
                "body_md5": digest.hexdigest(),
                "body_length": size,
                "remote_addr": request.remote_addr,
                "remote_port": request.environ.get("REMOTE_PORT"),
            }
            return Response(json.dumps(info), 200, content_type="application/json")
        if what.startswith("bytes"):
            n = int(request.args.get("n", "0"))
            chunk = b"x" * 65536

            def generate():
                left = n
                while left > 0:
                    yield chunk[: min(left, 65536)]
                    left -= min(left, 65536)

            return Response(
                generate(), 200, content_type="application/octet-stream", headers={"Content-Length": str(n)}
            )
        if what.startswith("slow"):
            time.sleep(float(request.args.get("s", "1")))
            return Response("slow", 200, content_type="text/plain")
        return Response("unknown diagnostic", 404, content_type="text/plain")


def _success(text: str, extra: str = "") -> Response:
    return Response(
        f'<?xml version="1.0" encoding="UTF-8"?><tree><message type="SUCCESS">{xml_text(text)}</message>{extra}</tree>',
        200,
        content_type=XML,
    )


def _error(text: str) -> Response:
    return Response(
        f'<?xml version="1.0" encoding="UTF-8"?><tree ><message type="ERROR">{xml_text(text)}</message></tree>',
        200,
        content_type=XML,
    )
