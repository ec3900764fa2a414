"""Small pieces several test modules need: ports, client-side signing, shims served in a thread."""

from __future__ import annotations

import hashlib
import hmac
import secrets

import sqlalchemy as sa

from shim import config as config_module
from shim import wsgi
from shim.demo.stack import ServerThread, free_port

__all__ = ["RunningShim", "client_sign", "free_port", "plain_engine", "serve_app", "shim_environ"]


def plain_engine(url, **kwargs) -> sa.engine.Engine:
    """``sa.create_engine(url, poolclass=NullPool, **kwargs)`` for tests, without TLS to MySQL.

    PyMySQL builds a TLS context (tens of milliseconds of CPU) for every
    connection unless told not to; the test servers are on the loopback.
    """
    kwargs.setdefault("poolclass", sa.pool.NullPool)
    if sa.engine.make_url(url).get_backend_name() == "mysql":
        kwargs.setdefault("connect_args", {})["ssl_disabled"] = True
    return sa.create_engine(url, **kwargs)


def client_sign(wire_path: str, token: str, private: str, nonce: str | None = None) -> str:
    """``auth_hash`` as the desktop client computes it: HMAC-SHA256 over the URL path it sends.

    The client signs ``urlparse(url).path.rstrip('/')`` as it is on the wire
    (percent-encoded), ``:nonce:private``, keyed by the token.
    """
    nonce = nonce or secrets.token_hex(16)
    message = f"{wire_path.rstrip('/')}:{nonce}:{private}".encode()
    return f"{nonce}:{hmac.new(token.encode(), message, hashlib.sha256).hexdigest()}"


def shim_environ(upstream_url: str, database_url: str, **settings: str) -> dict[str, str]:
    """``PYDIO_SHIM_*`` variables for a shim; *settings* as ``auth_max_age="5"`` (section_key)."""
    environ = {"PYDIO_SHIM_UPSTREAM_URL": upstream_url, "PYDIO_SHIM_DATABASE_URL": database_url}
    environ.update({f"PYDIO_SHIM_{name.upper()}": str(value) for name, value in settings.items()})
    return environ


class RunningShim:
    """A shim application served by Werkzeug's server in a thread of the test process."""

    def __init__(self, app: wsgi.ShimApp):
        self.app = app
        self.server = ServerThread(app).start()
        self.url = self.server.url
        self.port = self.server.port

    def stop(self) -> None:
        self.server.stop()
        self.app.close()


def serve_app(
    environ: dict[str, str] | None = None, config: config_module.Config | None = None, **create_args
) -> RunningShim:
    """Build a shim from *environ* (``PYDIO_SHIM_*``) or *config* and serve it; the caller stops it."""
    return RunningShim(wsgi.create_app(config or config_module.load(environ=environ or {}), **create_args))


class StallingRelay:
    """A TCP relay to *target* that can be made to stall: it keeps the connections open and stops
    passing bytes, as a hung middlebox or a silent server does."""

    def __init__(self, target_host: str, target_port: int):
        import socket
        import threading

        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        import threading

        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src, dst):
        try:
            while data := src.recv(65536):
                self.flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def stall(self):
        self.flowing.clear()

    def resume(self):
        self.flowing.set()

    def close(self):
        self._closed = True
        self.flowing.set()
        self.listener.close()


class FakeClock:
    """A monotonic clock the test moves: the shim's change checks and lifetimes follow it."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
