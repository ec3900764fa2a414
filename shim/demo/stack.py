"""``pydio-shim demo``: the whole stack on this machine, nothing to configure.

SQLite with Pydio's schema and triggers, the stand-in legacy server (in this
process) and the shim under gunicorn (a child process), each on a free loopback
port.  It prints commands to paste; Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import requests

from .standin import LegacyStandin

DEMO_USER, DEMO_PASSWORD = "demo", "demo-password"
ADMIN_USER, ADMIN_PASSWORD = "admin", "admin-password"


def _raw_target_handler():
    from werkzeug.serving import WSGIRequestHandler

    class RawTargetHandler(WSGIRequestHandler):
        """Werkzeug's handler, with ``REQUEST_URI`` the request target exactly as sent.

        Python's http.server turns ``//api/x`` into ``/api/x`` (and Werkzeug would
        read it as a host and a path); a web server in front of PHP gives PHP
        the target untouched, so the stand-in must see it so too.
        """

        def make_environ(self):
            environ = super().make_environ()
            parts = self.requestline.split(" ")
            if len(parts) == 3:
                environ["REQUEST_URI"] = environ["RAW_URI"] = parts[1]
            return environ

    return RawTargetHandler


class ServerThread:
    """Serve a WSGI app on a free loopback port in a daemon thread (tests, demo)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        from werkzeug.serving import make_server

        self.server = make_server(host, port, app, threaded=True, request_handler=_raw_target_handler())
        self.port = self.server.server_port
        self.url = f"http://{host}:{self.port}"
        # A short poll interval: stopping the server waits for one poll (a test stops two per test).
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return True
        except requests.RequestException:
            time.sleep(0.1)
    return False


class DemoStack:
    """The demo's three parts; usable as a context manager (tests use it too)."""

    def __init__(self, port: int = 0, prefix: str = "", workdir: str | None = None):
        self.own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="pydio-shim-demo-")
        self.port = port or free_port()
        self.prefix = prefix
        self.database_url = f"sqlite:///{os.path.join(self.workdir, 'pydio.db')}"
        self.standin: LegacyStandin | None = None
        self.standin_server: ServerThread | None = None
        self.shim: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        fresh = not os.path.exists(os.path.join(self.workdir, "pydio.db"))
        self.standin = LegacyStandin(self.database_url, os.path.join(self.workdir, "data"), prefix=self.prefix)
        if fresh:
            self.standin.install()
            self.standin.add_user(DEMO_USER, DEMO_PASSWORD)
            self.standin.add_user(ADMIN_USER, ADMIN_PASSWORD, rights=(), admin=True)
        self.standin_server = ServerThread(self.standin).start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYDIO_SHIM_")}
        env.update(
            {
                "PYDIO_SHIM_UPSTREAM_URL": self.standin_server.url,
                "PYDIO_SHIM_UPSTREAM_PREFIX": self.prefix or "/",
                "PYDIO_SHIM_DATABASE_URL": self.database_url,
                "PYDIO_SHIM_SERVER_BIND": f"127.0.0.1:{self.port}",
                # The shipped configuration, sized for a laptop and quiet on the terminal.
                "PYDIO_SHIM_SERVER_WORKERS": "1",
                "PYDIO_SHIM_SERVER_THREADS": "8",
                "PYDIO_SHIM_LOG_LEVEL": "WARNING",
            }
        )
        self.shim = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:shim.gunicorn_conf", "shim.wsgi:application"],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        if not wait_for(self.url + "/_shim/health"):
            self.stop()
            raise RuntimeError("the shim did not start; see the messages above")
        return self

    def stop(self):
        if self.shim is not None and self.shim.poll() is None:
            self.shim.send_signal(signal.SIGTERM)
            try:
                self.shim.wait(10)
            except subprocess.TimeoutExpired:
                self.shim.kill()
        if self.standin_server is not None and self.standin is not None:
            self.standin_server.stop()
            self.standin.engine.dispose()
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def example_commands(self) -> list[tuple[str, str]]:
        """``(what, shell command)`` pairs, in the order they make sense."""
        u, a, admin = self.url, f"{DEMO_USER}:{DEMO_PASSWORD}", f"{ADMIN_USER}:{ADMIN_PASSWORD}"
        return [
            ("health of the shim", f"curl -s {u}/_shim/health"),
            ("create a folder (forwarded to the legacy server)", f"curl -s -u {a} -X POST {u}/api/default/mkdir/docs"),
            ("create a file", f"curl -s -u {a} -X POST {u}/api/default/mkfile/docs/r%C3%A9sum%C3%A9.txt"),
            (
                "the change feed, as the desktop client reads it (answered by the shim)",
                f"curl -s -u {a} '{u}/api/default/changes/0?stream=true&flatten=true'",
            ),
            ("the same feed as JSON, filtered to /docs", f"curl -s -u {a} '{u}/api/default/changes/0?filter=/docs'"),
            (
                "rename the file",
                f"curl -s -u {a} -X POST -d file=/docs/r%C3%A9sum%C3%A9.txt -d filename_new=cv.txt "
                f"{u}/api/default/rename",
            ),
            ("changes since seq 2", f"curl -s -u {a} '{u}/api/default/changes/2?stream=true'"),
            (
                "a key-store token for a device (then sign requests with it)",
                f"curl -s -u {a} {u}/api/pydio/keystore_generate_auth_token/my-laptop",
            ),
            (
                "as the admin, remove the demo user's right on the workspace (Pydio's admin API)",
                f"curl -s -u {admin} -X POST {u}/api/ajxp_conf/user_update_right/0/{DEMO_USER}/n",
            ),
            (
                "the feed a second later: the legacy refusal (the shim checks the database every second)",
                f"sleep 1.1; curl -si -u {a} '{u}/api/default/changes/0?stream=true'",
            ),
            (
                "give the right back",
                f"curl -s -u {admin} -X POST {u}/api/ajxp_conf/user_update_right/0/{DEMO_USER}/rw",
            ),
            (
                "a wrong password: the legacy 401, passed back",
                f"curl -si -u {DEMO_USER}:wrong {u}/api/default/changes/0",
            ),
            ("metrics", f"curl -s {u}/_shim/metrics | grep ^shim_feed"),
        ]


def run_demo(port: int = 0, prefix: str = "", workdir: str | None = None) -> int:
    # A demo stopped by a service manager or a closed terminal must not leave
    # its gunicorn behind: SIGTERM and SIGHUP end it like Ctrl-C.  The handler
    # only sets a flag: an exception raised wherever the signal lands (inside
    # a library's cleanup, say) could be swallowed there.
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stopping.set())
    print("pydio-shim demo: starting SQLite + stand-in legacy server + shim (gunicorn)...", flush=True)
    stack = DemoStack(port, prefix, workdir)
    try:
        try:
            stack.start()
        except (RuntimeError, OSError) as exc:
            print(f"pydio-shim demo: {exc}", file=sys.stderr)
            return 1
        assert stack.standin_server is not None and stack.shim is not None  # both set by start()
        if not stopping.is_set():
            print(
                f"\n  shim:                 {stack.url}\n  legacy stand-in:      {stack.standin_server.url}{prefix}\n"
                f"  database:             {stack.database_url}\n  user / password:      {DEMO_USER} / {DEMO_PASSWORD}\n"
                f"  admin / password:     {ADMIN_USER} / {ADMIN_PASSWORD}\n"
            )
            print("Try (in another terminal):\n")
            for what, command in stack.example_commands():
                print(f"  # {what}\n  {command}\n")
            print("Ctrl-C stops the demo.", flush=True)
        while not stopping.wait(0.5):
            if stack.shim.poll() is not None:
                print("pydio-shim demo: the shim exited", file=sys.stderr)
                return 1
        print("\nstopping...", flush=True)
        return 0
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    finally:
        stack.stop()
