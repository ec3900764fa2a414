"""Load generators and clients: wrk for request rates, small Python clients for big bodies.

- :func:`wrk` runs wrk (C, epoll) with ``bench/wrk/report.lua``, which rotates
  over a list of paths and prints exact figures as one JSON line.
- :func:`fetch` streams one response, timing the first body byte and the end,
  hashing the body and counting its lines (rows of a stream-mode feed).
- :func:`download` fetches a large body with curl (bandwidth).
- :func:`raw_query` and :func:`poll_queries` time SQL alone with PyMySQL.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import shutil
import subprocess
import time
from urllib.parse import urlsplit

import pymysql
import pymysql.cursors

HERE = os.path.dirname(os.path.abspath(__file__))
WRK_SCRIPT = os.path.join(HERE, "wrk", "report.lua")


class LoadError(RuntimeError):
    """A load run failed or saw errors; the message says what."""


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if not path:
        raise LoadError("wrk is not installed: apt-get install -y wrk")
    return path


def wrk(url: str, connections: int, seconds: float, paths=(), headers=(), threads: int | None = None) -> dict:
    """Run wrk against *url* and return its figures (rate in requests/s, latencies in ms).

    Any socket error or non-2xx/3xx answer makes it raise :class:`LoadError`:
    a fast failure must never pass for a fast answer.
    """
    threads = threads or min(connections, 2)
    seconds = max(1, math.ceil(seconds))  # wrk takes whole seconds
    argv = [
        wrk_binary(),
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        WRK_SCRIPT,
    ]
    for name, value in headers:
        argv += ["-H", f"{name}: {value}"]
    argv += [url]
    if paths:
        argv += ["--", *paths]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    found = next((line for line in done.stdout.splitlines() if line.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or found is None:
        raise LoadError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    raw = json.loads(found[len("WRK_JSON ") :])
    errors = {k: v for k, v in raw.items() if k.startswith("errors_") and v}
    if errors or raw["requests"] == 0:
        raise LoadError(f"wrk saw errors against {url}: {errors or 'no request completed'}")
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "duration_s": raw["duration_us"] / 1e6,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "requests": raw["requests"],
        "bytes": raw["bytes"],
    }


def _connect(url: str) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return conn, target


def fetch(url: str, headers=(), sample=None, sample_every: float = 0.05, max_seconds: float | None = None) -> dict:
    """GET *url*, streamed: seconds to first body byte and to the end, size, sha256, lines.

    *sample*, when given, is called about every *sample_every* seconds while
    the body arrives (to watch a server's memory).  With *max_seconds* the
    client hangs up after that long (the figures then cover a partial body).
    """
    conn, target = _connect(url)
    digest = hashlib.sha256()
    size = lines = 0
    first = None
    started = time.perf_counter()
    next_sample = started
    try:
        conn.request("GET", target, headers=dict(headers))
        response = conn.getresponse()
        status = response.status
        while True:
            chunk = response.read1(1 << 20)
            if not chunk:
                break
            if first is None:
                first = time.perf_counter()
            size += len(chunk)
            lines += chunk.count(b"\n")
            digest.update(chunk)
            if sample is not None and time.perf_counter() >= next_sample:
                sample()
                next_sample = time.perf_counter() + sample_every
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                break
        finished = time.perf_counter()
    finally:
        conn.close()
    return {
        "status": status,
        "ttfb_s": (first or finished) - started,
        "total_s": finished - started,
        "bytes": size,
        "lines": lines,
        "sha256": digest.hexdigest(),
    }


def download(url: str, headers=(), sample=None, sample_every: float = 0.05) -> dict:
    """GET *url* with curl into /dev/null: seconds, bytes, MiB/s.

    curl (C) rather than Python: a Python reader tops out near 400 MiB/s here,
    below what nginx sends, so it would measure itself.  *sample* is called
    about every *sample_every* seconds during the transfer.
    """
    argv = [
        "curl",
        "--silent",
        "--show-error",
        "--output",
        "/dev/null",
        "--write-out",
        "%{http_code} %{size_download} %{time_total}",
        "--max-time",
        "600",
    ]
    for name, value in headers:
        argv += ["--header", f"{name}: {value}"]
    proc = subprocess.Popen(argv + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if sample is not None:
            sample()
        time.sleep(sample_every)
    out, err = proc.communicate()
    try:
        code, size, seconds = out.split()
    except ValueError:
        raise LoadError(f"curl {url}: {err.strip() or out}") from None
    if code != "200":
        raise LoadError(f"GET {url}: status {code}")
    size, seconds = int(size), float(seconds)
    return {"seconds": seconds, "bytes": size, "mib_s": size / seconds / (1 << 20)}


def _pymysql(db: dict, **kwargs):
    return pymysql.connect(
        host=db["host"],
        port=int(db["port"]),
        user=db["user"],
        password=db["password"],
        database=db["database"],
        charset="utf8mb4",
        **kwargs,
    )


def connections_opened(db: dict) -> int:
    """The database server's count of connections opened since it started (``Connections``)."""
    conn = _pymysql(db, ssl_disabled=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Connections'")
            return int(cur.fetchone()[1])
    finally:
        conn.close()


def raw_query(db: dict, sql: str) -> dict:
    """Fetch every row of *sql* with an unbuffered PyMySQL cursor: seconds to first row and in all, rows."""
    conn = _pymysql(db, cursorclass=pymysql.cursors.SSCursor)
    try:
        started = time.perf_counter()
        first = None
        rows = 0
        with conn.cursor() as cur:
            cur.execute(sql)
            while batch := cur.fetchmany(1000):
                if first is None:
                    first = time.perf_counter()
                rows += len(batch)
        finished = time.perf_counter()
    finally:
        conn.close()
    return {"ttfb_s": (first or finished) - started, "total_s": finished - started, "rows": rows}


def poll_queries(db: dict, statements: list[str], seconds: float) -> dict:
    """Run *statements* in turn on one connection for *seconds*: mean time of one round (ms)."""
    conn = _pymysql(db)
    rounds = 0
    try:
        with conn.cursor() as cur:
            deadline = time.perf_counter() + seconds
            started = time.perf_counter()
            while time.perf_counter() < deadline:
                for statement in statements:
                    cur.execute(statement)
                    cur.fetchall()
                rounds += 1
            elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return {"round_ms": elapsed / rounds * 1000, "rounds": rounds}
