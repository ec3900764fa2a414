"""Many idle sync clients: what reaches the legacy server and the database per poll.

Each simulated client is a user of its own with a keep-alive connection,
polling a quiet workspace (``changes/{MAX}``, nothing new) every few seconds,
as the desktop client does every 10 s.  The same clients then poll the legacy
server directly for comparison.  Counted: the legacy server's ``changes``
calls (probes and forwarded polls, from the stand-in's own counter), the
statements the database server ran (``Questions``, server-wide), the shim's
table checks (its metrics), latencies.  The warm-up (a minute, and until every
client has polled twice) is reported apart from the steady state.
"""

from __future__ import annotations

import multiprocessing
import random
import statistics
import threading
import time

import load
import requests

PASSWORD = "idle-secret"


def users(n: int) -> list[str]:
    return [f"idle-{i:03d}" for i in range(n)]


def ensure_users(standin, workspaces: list[str], n: int) -> None:
    """Users ``idle-000``... each with a right on one workspace (added once, kept in the dataset)."""
    for i, login in enumerate(users(n)):
        if standin.store.user(login) is None:
            standin.add_user(login, PASSWORD, "/", rights=(workspaces[i % len(workspaces)],))


def questions(db: dict) -> int:
    """Statements the database server has run since it started (anyone's)."""
    conn = load._pymysql(db, ssl_disabled=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
            return int(cur.fetchone()[1])
    finally:
        conn.close()


def shim_counter(base: str, name: str) -> float:
    """The sum of a counter's samples in the shim's metrics (every worker's, multiprocess mode)."""
    text = requests.get(base + "/_shim/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name) and not line[0] == "#"
    )


class Clients:
    """*n* client threads polling *base* every *interval* seconds (±20 %) for *seconds*."""

    def __init__(self, base: str, workspaces: list[str], max_seq: int, n: int, interval: float, warm_up: float):
        self.base, self.workspaces, self.max_seq = base, workspaces, max_seq
        self.n, self.interval, self.warm_up = n, interval, warm_up
        self.samples: list[tuple[float, float, int]] = []  # (start, latency s, status)
        self.polls_done = [0] * n
        self.warm_at: float | None = None  # when every client had polled twice
        self.on_warm = lambda: None  # set in the polling process
        self.lock = threading.Lock()

    def run(self, seconds: float, on_warm) -> None:
        """Poll for *seconds* from a process of its own (the stand-in shares this one's GIL).

        *on_warm()* runs here when every client has polled twice.
        """
        context = multiprocessing.get_context("fork")
        events = context.Queue()
        child = context.Process(target=self._child, args=(seconds, events), daemon=True)
        child.start()
        while True:
            kind, value = events.get(timeout=seconds + 120)
            if kind == "warm":
                self.warm_at = value
                on_warm()
            elif kind == "done":
                self.samples = value
                break
        child.join(30)

    def _child(self, seconds: float, events) -> None:
        self.started = time.monotonic()
        stop = self.started + seconds
        self.on_warm = lambda: events.put(("warm", time.monotonic()))
        threads = [threading.Thread(target=self._client, args=(i, stop), daemon=True) for i in range(self.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        events.put(("done", self.samples))

    def _client(self, i: int, stop: float) -> None:
        rng = random.Random(i)
        session = requests.Session()
        session.auth = (users(self.n)[i], PASSWORD)
        url = f"{self.base}/api/{self.workspaces[i % len(self.workspaces)]}/changes/{self.max_seq}?stream=true"
        time.sleep(rng.uniform(0, self.interval))
        while time.monotonic() < stop:
            started = time.monotonic()
            try:
                status = session.get(url, timeout=30).status_code
            except requests.RequestException:
                status = 0
            latency = time.monotonic() - started
            with self.lock:
                self.samples.append((started, latency, status))
                self.polls_done[i] += 1
                if (
                    self.warm_at is None
                    and min(self.polls_done) >= 2
                    and time.monotonic() - self.started >= self.warm_up
                ):
                    self.warm_at = time.monotonic()
                    self.on_warm()
            time.sleep(max(0.0, self.interval * rng.uniform(0.8, 1.2) - latency))
        session.close()

    def figures(self, after: float | None) -> dict:
        kept = [s for s in self.samples if after is None or s[0] >= after]
        latencies = sorted(s[1] * 1000 for s in kept)
        ok = sum(1 for s in kept if s[2] == 200)
        return {
            "polls": len(kept),
            "ok": ok,
            "errors": len(kept) - ok,
            "p50_ms": statistics.median(latencies) if latencies else 0.0,
            "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] if latencies else 0.0,
        }


#: The warm-up lasts at least this long: each client's connection lands on any worker process, and each
#: process asks the legacy server once per client; after a minute every client has met every worker.
WARM_UP_MIN_S = 60.0


def measure(base: str, stack, db: dict, workspaces, max_seq, n, interval, seconds, shim: bool) -> dict:
    """One phase: *n* clients against *base*; legacy calls and statements, warm-up and steady state apart."""
    clients = Clients(base, workspaces, max_seq, n, interval, WARM_UP_MIN_S if shim else 0.0)
    marks: dict[str, float] = {}

    def snapshot(prefix: str) -> None:
        marks[prefix + "legacy"] = stack.standin.calls["changes"]
        marks[prefix + "questions"] = questions(db)
        marks[prefix + "time"] = time.monotonic()
        if shim:
            marks[prefix + "checks"] = shim_counter(base, "shim_auth_table_checks_total")
            marks[prefix + "probes"] = shim_counter(base, "shim_auth_probes_total")

    snapshot("start_")
    clients.run(seconds, lambda: snapshot("warm_"))
    snapshot("end_")
    if "warm_time" not in marks:
        raise RuntimeError(f"{n} clients did not all poll twice in {seconds:.0f}s")
    steady = clients.figures(after=marks["warm_time"])
    warm = clients.figures(after=None)
    polls = max(1, steady["polls"])
    result = {
        "clients": n,
        "interval_s": interval,
        "seconds": seconds,
        "warm_up_s": marks["warm_time"] - marks["start_time"],
        "warm_up_legacy_calls": marks["warm_legacy"] - marks["start_legacy"],
        "steady": steady,
        "all": warm,
        "steady_legacy_calls": marks["end_legacy"] - marks["warm_legacy"],
        "legacy_per_1000_polls": 1000 * (marks["end_legacy"] - marks["warm_legacy"]) / polls,
        # Server-wide: the stand-in's own queries (probes) and the two status queries count too.
        "statements_per_poll": (marks["end_questions"] - marks["warm_questions"] - 2) / polls,
    }
    if shim:
        result["table_checks_per_poll"] = (marks["end_checks"] - marks["warm_checks"]) / polls
        result["steady_probes"] = marks["end_probes"] - marks["warm_probes"]
        result["warm_up_probes"] = marks["warm_probes"] - marks["start_probes"]
    return result
