"""Slow clients cost the shim no thread it needs for the feed (a real gunicorn with the shim's worker).

Tried as an attacker would: connections trickling their headers a byte at a
time, uploads trickling their bodies.  Headers are gathered by the worker's
event loop within ``server.header_timeout``; forwarded requests are bounded by
``proxy.max_upstream_requests``; meanwhile feed polls keep being answered.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests
from gunicorn_helpers import GunicornServer

pytestmark = pytest.mark.slow
ALICE = ("alice", "alice-secret")
THREADS = 8
SLOW_HEADERS = 70
SLOW_BODIES = 40


@pytest.fixture
def shim(sqlite_standin, tmp_path):
    env = {
        "PYDIO_SHIM_UPSTREAM_URL": sqlite_standin.url,
        "PYDIO_SHIM_DATABASE_URL": sqlite_standin.db_url,
        "PYDIO_SHIM_SERVER_HEADER_TIMEOUT": "3",
        "PYDIO_SHIM_PROXY_MAX_UPSTREAM_REQUESTS": str(THREADS // 2),
        "PYDIO_SHIM_LOG_LEVEL": "WARNING",
    }
    with GunicornServer(env, tmp_path, threads=THREADS) as server:
        yield server


class Trickler:
    """*count* connections that each send *at_once*, then *trickle* one byte every *every* seconds."""

    def __init__(self, port: int, count: int, trickle: bytes, at_once: bytes = b"", every: float = 1.0):
        self.sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
        for sock in self.sockets:
            if at_once:
                sock.sendall(at_once)
        self.head, self.every = trickle, every
        self.closed_by_server = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        position = 0
        while not self.stop.is_set() and position < len(self.head):
            for sock in list(self.sockets):
                try:
                    sock.sendall(self.head[position : position + 1])
                except OSError:
                    self.sockets.remove(sock)
                    self.closed_by_server += 1
            position += 1
            self.stop.wait(self.every)

    def close(self):
        self.stop.set()
        self.thread.join(10)
        for sock in self.sockets:
            sock.close()


def poll_latencies(url: str, seconds: float) -> list[tuple[int, float]]:
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        response = requests.get(url + "/api/0/changes/0?stream=true", auth=ALICE, timeout=30)
        out.append((response.status_code, time.monotonic() - started))
        time.sleep(0.1)
    return out


def test_slow_headers_and_slow_bodies_never_stop_the_feed(shim, sqlite_standin):
    assert requests.get(shim.url + "/api/0/changes/0?stream=true", auth=ALICE).status_code == 200  # cached now
    headers = Trickler(shim.port, SLOW_HEADERS, b"GET /api/0/ls/ HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40)
    body = b"x" * 100  # whole headers at once, then a body byte per second
    bodies = Trickler(
        shim.port,
        SLOW_BODIES,
        body,
        b"POST /_standin/echo/slow HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body),
    )
    try:
        time.sleep(1.5)
        latencies = poll_latencies(shim.url, 2.5)
        assert latencies and all(status == 200 for status, _ in latencies), latencies
        assert max(seconds for _, seconds in latencies) < 1.0, latencies
        # Forwarded requests beyond the bound were answered 503 at once, not kept waiting.
        refused = shim.log().count("forwarded requests in flight: refusing POST /_standin/echo/slow")
        assert refused >= SLOW_BODIES - THREADS // 2, shim.log()[-2000:]
        # The header tricklers are disconnected once server.header_timeout has passed.
        deadline = time.monotonic() + 10
        while headers.closed_by_server < SLOW_HEADERS:
            assert time.monotonic() < deadline, f"{headers.closed_by_server} of {SLOW_HEADERS} disconnected"
            time.sleep(0.2)
    finally:
        headers.close()
        bodies.close()
    assert requests.get(shim.url + "/api/0/ls/", auth=ALICE, timeout=30).status_code == 200
