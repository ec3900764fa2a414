#!/usr/bin/env python3
"""pydio-shim benchmarks: the single entry point (``make bench``).

Parts (``--only`` takes a comma-separated list; default: all, in this order):

feed-poll      quiet polls ``/api/{ws}/changes/{MAX}?stream=true`` rotating over 50
               workspaces, wrk at 1, 8 and 64 connections: the shim under gunicorn vs a
               hello-world app under the same gunicorn settings (bench/hello.py) vs the
               PHP baseline (bench/baseline/changes.php on php-fpm + nginx); polls with
               one new row each; the same SQL alone with PyMySQL.
feed-snapshot  ``changes/0?stream=true&flatten=true`` of the big workspace (951,000
               rows): shim vs PHP baseline vs a raw PyMySQL unbuffered cursor; peak RSS.
proxy          1 KiB requests (8 and 16 connections) straight from nginx, through the
               shim and from the hello-world app; a 1 GiB download from nginx
               (sendfile) and through the shim; the worker's peak RSS meanwhile.
workers        gunicorn worker class and count (gthread vs gevent).
idle-clients   200 clients, each a user of its own, polling a quiet workspace every 3 s
               for 4 minutes through the shim (default settings), then the legacy
               server directly: legacy requests and database statements per poll.

Every comparison runs within one invocation, alternating its sides run by run (the
two sides of a ratio swap places every round); the figures are medians over
``--runs`` runs.  The run prints a PASS/FAIL line per target and exits with
status 1 when one is missed (2 when it could not run).
A missed target is explained by a py-spy profile of a worker under the same
load (top functions printed, the raw profile saved under var/bench/).
See bench/README and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import base64
import collections
import importlib.util
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

import costs  # noqa: E402
import dataset  # noqa: E402
import idle  # noqa: E402
import load  # noqa: E402
import services  # noqa: E402

PARTS = ("feed-poll", "feed-snapshot", "proxy", "workers", "idle-clients")
OUT_DIR = os.path.join(ROOT, "var", "bench")
MIB = 1 << 20

# The targets (docs/benchmarks.md explains each).
POLL_HELLO_SHARE_MIN = 0.50  # quiet poll req/s at 8 clients / hello-world req/s (same gunicorn settings)
POLL_P50_MAX_MS = 1.0  # quiet poll p50 at 1 client
POLL_STATEMENTS_MAX = 0.05  # database statements per quiet poll at 8 clients (server-wide)
NEW_ROW_P50_MAX_MS = 2.0  # p50 at 1 client of a poll whose workspace has one new row
SNAPSHOT_RAW_RATIO_MAX = 1.5  # shim time / raw PyMySQL SSCursor time
SNAPSHOT_RSS_MAX_MIB = 64  # gunicorn worker peak RSS during the snapshot
RSS_MAX_MIB = 100  # gunicorn worker peak RSS during the 1 GiB transfer
PROXY_SMALL_MIN = 0.35  # shim requests/s / hello-world requests/s, 1 KiB at 8 clients
PROXY_BULK_MIN = 0.50  # shim MiB/s / nginx sendfile MiB/s, 1 GiB
IDLE_LEGACY_PER_1000_MAX = 1.0  # legacy requests per 1,000 idle polls, steady state

# gunicorn settings compared in the "workers" part, beside the configuration file's.
# (gunicorn arguments over the configuration file, further PYDIO_SHIM_* settings).
WORKER_CONFIGS = [
    (None, None),
    ("--worker-class gthread --workers 4 --threads 8", None),
    ("--worker-class gevent --workers 2 --worker-connections 1000", None),
    ("--worker-class gevent --workers 4 --worker-connections 1000", None),
]


@dataclass
class Target:
    name: str
    value: float
    limit: float
    higher_is_better: bool
    unit: str = ""
    part: str = ""

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.higher_is_better else self.value < self.limit

    def line(self) -> str:
        op = ">=" if self.higher_is_better else "<"
        return (
            f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {fmt(self.value)}{self.unit} "
            f"(target {op} {fmt(self.limit)}{self.unit})"
        )


@dataclass
class Run:
    """What one benchmark run found: tables, targets, notes, raw figures."""

    tables: list = field(default_factory=list)
    targets: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    failed_parts: list = field(default_factory=list)

    def table(self, title: str, header: list[str], rows: list[list]):
        self.tables.append((title, header, rows))
        say("\n" + render_table(title, header, rows))

    def target(self, target: Target, part: str):
        target.part = part
        self.targets.append(target)
        say(target.line())

    def note(self, text: str):
        self.notes.append(text)
        say("note: " + text)


def say(text: str = ""):
    print(text, flush=True)


def fmt(value) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render_table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def in_turn(round_no: int, sides: tuple[str, str]) -> tuple[str, str]:
    """The two compared sides in the order of round *round_no*: swapped every round."""
    return sides if round_no % 2 == 0 else sides[::-1]


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


# --- prerequisites -------------------------------------------------------------------------


def ensure_tools():
    """wrk, PHP's MySQL driver, nginx and php-fpm from Debian; py-spy and gevent into the venv."""
    missing = []
    if not shutil.which("wrk"):
        missing.append("wrk")
    if not shutil.which("curl"):
        missing.append("curl")
    php_modules = subprocess.run(["php", "-m"], capture_output=True, text=True).stdout if shutil.which("php") else ""
    if "mysqli" not in php_modules:
        missing.append("php-mysql")
    try:
        services.php_fpm_binary()
    except services.ServiceError:
        missing.append("php-fpm")
    try:
        services.nginx_binary()
    except services.ServiceError:
        missing.append("nginx-light")
    if missing:
        say(f"setup: apt-get install -y {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
        if subprocess.run(command, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
            subprocess.run(command, env=env, check=True, capture_output=True)
    wanted = [
        name
        for name, module in (("py-spy", None), ("gevent", "gevent"))
        if (module and importlib.util.find_spec(module) is None)
        or (module is None and not os.path.exists(os.path.join(services.VENV_BIN, name)))
    ]
    if wanted:
        say(f"setup: pip install {' '.join(wanted)} (benchmark tools, not dependencies of the shim)")
        subprocess.run([os.path.join(services.VENV_BIN, "pip"), "install", "-q", *wanted], check=True)


def code_identity() -> dict:
    """The commit measured, and a digest of the shim's sources as they are on disk."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(os.listdir(os.path.join(ROOT, "shim"))):
        if name.endswith(".py"):
            with open(os.path.join(ROOT, "shim", name), "rb") as fh:
                digest.update(name.encode() + b"\0" + fh.read())
    for extra in ("conf/gunicorn.conf.py",):
        if os.path.exists(os.path.join(ROOT, extra)):
            with open(os.path.join(ROOT, extra), "rb") as fh:
                digest.update(extra.encode() + b"\0" + fh.read())
    try:
        commit = (
            subprocess.run(
                ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "?"
        )
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--", "shim", "conf"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit, dirty = "?", ""
    return {"commit": commit + (" + uncommitted changes" if dirty else ""), "sources": digest.hexdigest()[:12]}


def versions() -> dict:
    def first_line(argv):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            return (done.stdout or done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    from importlib.metadata import version

    import gunicorn
    import sqlalchemy

    cpu = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
        "python": platform.python_version(),
        "gunicorn": gunicorn.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "pymysql": version("PyMySQL"),
        "gevent": (__import__("gevent").__version__ if importlib.util.find_spec("gevent") else "-"),
        "php": first_line(["php", "-r", "echo PHP_VERSION;"]),
        "nginx": first_line([services.nginx_binary(), "-v"]).split("/")[-1],
        "wrk": first_line(["wrk", "--version"]).split(" [")[0].removeprefix("wrk "),
    }


# --- shared context ----------------------------------------------------------------------------


class Context:
    """What every part needs: the options, the running services, credentials and request paths."""

    def __init__(self, args, stack: services.Stack, db_settings: dict, run: Run):
        self.args = args
        self.stack = stack
        self.db = db_settings
        self.run = run
        self.auth = [
            ("Authorization", "Basic " + base64.b64encode(f"{dataset.USER}:{dataset.PASSWORD}".encode()).decode())
        ]
        self.max_seq = dataset.N_CHANGES
        self.poll_paths = [f"/api/{ws}/changes/{self.max_seq}?stream=true" for ws in dataset.workspace_ids()]
        self.snapshot_path = f"/api/{dataset.BIG_WORKSPACE}/changes/0?stream=true&flatten=true"

    @property
    def seconds(self) -> float:
        return self.args.seconds

    def probes(self) -> int:
        return self.stack.standin.calls["changes"]

    def start_shim(self, gunicorn_args=None, settings=None) -> dict:
        config = self.stack.start_shim(gunicorn_args, settings)
        self.warm()
        return config

    def metered(self, side: str, run_load):
        """Run *run_load()* (a wrk run) and add CPU milliseconds per request to its figures.

        *side* "shim" meters the gunicorn workers, "php" the php-fpm workers,
        "nginx" nginx's workers (``cpu_ms``).  ``db_cpu_ms`` and
        ``db_connects_per_s`` are the database server's CPU per request and
        connections opened per second, server-wide (anyone else's load counts).
        """
        serving = {
            "shim": self.stack.shim_workers,
            "hello": self.stack.hello_workers,
            "php": self.stack.php_workers,
            "nginx": self.stack.nginx_workers,
        }[side]()
        opened = load.connections_opened(self.db)
        questions = idle.questions(self.db)
        meter = services.CpuMeter(serving=serving, db=self.stack.database_server()).start()
        result = run_load()
        used = meter.stop()
        # Connections the database server accepted meanwhile (less the one
        # counting them; anything else connecting to the server counts too).
        result["db_connects_per_s"] = (load.connections_opened(self.db) - opened - 1) / (result["duration_s"])
        requests = max(1, result["requests"])
        # Statements the database server ran meanwhile, less the three status reads around the run.
        result["db_statements"] = max(0, idle.questions(self.db) - questions - 3) / requests
        result["cpu_ms"] = used["serving"] * 1000 / requests
        result["db_cpu_ms"] = used["db"] * 1000 / requests
        # Kept-alive connections stay with the worker that accepted them: how
        # evenly the load spread shows in the busiest worker's share of the CPU.
        result["busiest_share"] = max(meter.per_pid["serving"].values(), default=0) / max(used["serving"], 1e-9)
        return result

    def shim_poll_run(self, connections: int, seconds: float | None = None, paths=None) -> tuple[dict, int]:
        """One wrk run of polls against the shim, answered by the shim alone.

        A run during which requests reached the legacy server (a probe after a
        cache entry expired, a forwarded request) measures the stand-in too:
        the caches are warmed again and the run repeated, twice at most.
        Returns the figures and how many legacy calls the kept run saw.
        """
        for attempt in range(3):
            before = self.probes()
            result = self.metered(
                "shim",
                lambda: load.wrk(
                    self.stack.shim_url, connections, seconds or self.seconds, paths or self.poll_paths, self.auth
                ),
            )
            calls = self.probes() - before
            if calls == 0 or attempt == 2:
                return result, calls
            self.warm()

    def shim_log_errors(self, lines: int = 3) -> str:
        """The shim log's last error lines and its last traceback, to say why a run failed."""
        path = getattr(self.stack.shim, "log_path", None) or os.path.join(self.stack.dir, "gunicorn.out")
        try:
            with open(path, errors="replace") as fh:
                text = fh.read().splitlines()
        except OSError:
            return ""
        errors = [line.strip() for line in text if " ERROR " in line or "status=5" in line]
        starts = [i for i, line in enumerate(text) if line.startswith("Traceback")]
        trace = []
        if starts:
            for line in text[starts[-1] :]:
                if trace and line[:4].isdigit():  # the next log record
                    break
                trace.append(line)
        found = errors[-lines:] + trace[-12:]
        return ("\n  shim log:\n    " + "\n    ".join(found)) if found else ""

    def warm(self):
        """Warm every worker's authorization and workspace caches, and check that they are.

        Polls every workspace on enough connections that each worker gets
        some, until a whole pass of polls causes no authorization probe.
        """
        for _ in range(15):
            before = self.probes()
            load.wrk(self.stack.shim_url, 16, 2, self.poll_paths, self.auth)
            if self.probes() == before:
                return
        self.run.note("the authorization cache could not be warmed: probes still happen during the runs")

    def profile(self, name: str, drive, seconds: float = 6.0):
        """Explain a missed target: py-spy (GIL holder, all workers) while *drive(seconds)* loads the shim.

        Prints, and keeps in the results, each worker's CPU use and GIL share
        and the functions that hold the GIL most (own and inclusive samples);
        the raw stacks (flamegraph/speedscope "collapsed" format) are saved
        under var/bench/.
        """
        if not self.args.profile or self.stack.shim is None:
            return
        os.makedirs(OUT_DIR, exist_ok=True)
        out = os.path.join(OUT_DIR, f"profile-{name}.txt")
        if os.path.exists(out):
            os.unlink(out)
        rate = 200
        argv = [
            os.path.join(services.VENV_BIN, "py-spy"),
            "record",
            "--pid",
            str(self.stack.shim.pid),
            "--subprocesses",
            "--gil",
            "--nonblocking",
            "--rate",
            str(rate),
            "--duration",
            f"{seconds:g}",
            "--format",
            "raw",
            "--output",
            out,
        ]
        workers = self.stack.shim_workers()
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        cpu_before = {pid: services.cpu_seconds(pid) for pid in workers}
        started = time.monotonic()
        drive_result = drive(seconds + 0.5)
        elapsed = time.monotonic() - started
        cpu = {pid: (services.cpu_seconds(pid) - cpu_before[pid]) / elapsed for pid in workers}
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            err = "timeout"
        if not os.path.exists(out):
            self.run.note(f"profile {name}: py-spy produced nothing ({(err or '').strip()[-200:]})")
            return
        summary = summarize_profile(out, rate * seconds)
        summary["cpu"] = {str(pid): round(share, 3) for pid, share in cpu.items()}
        summary["load"] = drive_result
        self.run.figures.setdefault("profiles", {})[name] = summary
        say(
            f"\nprofile {name}: py-spy --gil on every worker for {seconds:g}s; raw stacks in "
            f"{os.path.relpath(out, ROOT)}"
        )
        say("  load while profiled: " + (json.dumps(drive_result) if drive_result else "-"))
        say(
            "  worker CPU (user+sys, share of one core): "
            + ", ".join(f"{pid}: {share:.0%}" for pid, share in cpu.items())
        )
        say(summary["text"])


def _frame_name(frame: str) -> str:
    """``func (file:line)`` -> ``func (file)``: samples add up per function, not per line."""
    name, _, where = frame.rpartition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rstrip(')')})" if name else frame


_COMPONENTS = (
    ("(shim/", "shim"),
    ("sqlalchemy/", "SQLAlchemy"),
    ("pymysql/", "PyMySQL"),
    ("gunicorn/", "gunicorn"),
    ("http/client", "http.client"),
    ("email/", "http.client"),
    ("logging/", "logging"),
    ("prometheus_client/", "prometheus_client"),
    ("json/", "json"),
    ("socket.py", "socket"),
    ("selectors.py", "gunicorn"),
    ("concurrent/futures", "gunicorn"),
    ("threading.py", "gunicorn"),
)
_SCAFFOLDING = ("threading.py", "concurrent/futures", "gunicorn/", "runpy", "<module>", "selectors.py")


def summarize_profile(path: str, possible_samples: float, top: int = 12) -> dict:
    """GIL share per process and the top functions of the busiest one, from py-spy raw output."""
    per_process = collections.Counter()
    own, inclusive = collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter)
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            # --subprocesses roots each stack in its process chain: master;worker;...
            chain = [f.split(":")[0] for f in frames if f.startswith("process ")]
            process = chain[-1] if chain else "process ?"
            frames = [_frame_name(f) for f in frames if f and not f.startswith("process ")]
            if not frames:
                continue
            per_process[process] += n
            own[process][frames[-1]] += n
            for frame in set(frames):
                inclusive[process][frame] += n
    if not per_process:
        return {"text": "  no samples", "gil_share": {}}
    busiest, total = per_process.most_common(1)[0]
    components = collections.Counter()
    for frame, count in own[busiest].items():
        components[next((name for key, name in _COMPONENTS if key in frame), "other")] += count
    app_frames = [(f, c) for f, c in inclusive[busiest].most_common() if not any(s in f for s in _SCAFFOLDING)]
    lines = [
        "  GIL held (share of the profiled time): "
        + ", ".join(f"{p.split()[-1]}: {c / possible_samples:.0%}" for p, c in per_process.most_common()),
        f"  {busiest}, GIL time by where it is spent (own samples): "
        + ", ".join(f"{name} {100 * c / total:.0f}%" for name, c in components.most_common()),
        f"  {busiest}, functions holding the GIL, own samples:",
    ]
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in own[busiest].most_common(top)]
    lines += ["  inclusive (application and library frames):"]
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in app_frames[:top]]
    return {
        "gil_share": {p.split()[-1]: round(c / possible_samples, 3) for p, c in per_process.items()},
        "components": {name: round(c / total, 3) for name, c in components.items()},
        "own": own[busiest].most_common(top),
        "inclusive": app_frames[:top],
        "text": "\n".join(lines),
    }


# --- parts ------------------------------------------------------------------------------------


def new_row_paths(ctx: Context) -> list[str]:
    """One poll path per workspace at the seq just below its last row: each answer holds one row."""
    conn = load._pymysql(ctx.db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT repository_identifier, MAX(seq) FROM ajxp_changes GROUP BY repository_identifier")
            last = dict(cur.fetchall())
    finally:
        conn.close()
    return [f"/api/{ws}/changes/{last[ws] - 1}?stream=true" for ws in dataset.workspace_ids() if ws in last]


def part_feed_poll(ctx: Context):
    run, stack = ctx.run, ctx.stack
    config = ctx.start_shim()
    run.figures["gunicorn"] = config
    expected = f"\nLAST_SEQ:{ctx.max_seq}".encode()
    stack.start_hello(expected)
    for side, base in (("shim", stack.shim_url), ("PHP baseline", stack.php_url), ("hello-world", stack.hello_url)):
        body = load.fetch(base + ctx.poll_paths[7], ctx.auth)
        if body["status"] != 200 or body["sha256"] != _sha(expected):
            raise RuntimeError(f"{side}: unexpected poll answer (status {body['status']}, {body['bytes']} bytes)")
    new_rows = new_row_paths(ctx)
    for path in new_rows[:10]:
        shim_body, php_body = load.fetch(stack.shim_url + path, ctx.auth), load.fetch(stack.php_url + path, ctx.auth)
        if shim_body["sha256"] != php_body["sha256"] or shim_body["lines"] != 1:  # one row, then "\nLAST_SEQ:N"
            raise RuntimeError(f"{path}: the shim's answer is not PHP's one row ({shim_body} / {php_body})")
    rows, cpu_rows, figures = [], [], {}
    for connections in (1, 8, 64):
        shim_runs, hello_runs, php_runs, probes = [], [], [], 0
        for round_no in range(ctx.args.runs):
            # PHP first, then the two compared sides in an order swapped every round:
            # whatever a run leaves behind (MariaDB purge after PHP's connections,
            # sockets in TIME_WAIT) must not always fall on the same side.
            php_runs.append(
                ctx.metered(
                    "php", lambda c=connections: load.wrk(stack.php_url, c, ctx.seconds, ctx.poll_paths, ctx.auth)
                )
            )
            for side in in_turn(round_no, ("shim", "hello")):
                if side == "shim":
                    result, upstream_calls = ctx.shim_poll_run(connections)
                    shim_runs.append(result)
                    probes += upstream_calls
                else:
                    hello_runs.append(
                        ctx.metered(
                            "hello", lambda c=connections: load.wrk(stack.hello_url, c, ctx.seconds, ctx.poll_paths)
                        )
                    )
        keys = ("rps", "p50_ms", "p99_ms", "cpu_ms", "db_cpu_ms", "busiest_share", "db_connects_per_s", "db_statements")
        s = {k: median(shim_runs, k) for k in keys}
        h = {k: median(hello_runs, k) for k in keys}
        p = {k: median(php_runs, k) for k in keys}
        figures[connections] = {"shim": s, "hello": h, "php": p, "shim_runs": shim_runs, "hello_runs": hello_runs,
                                "php_runs": php_runs, "probes": probes}  # fmt: skip
        rows.append([connections, s["rps"], h["rps"], f"{s['rps'] / h['rps']:.0%}", s["p50_ms"], h["p50_ms"],
                     s["p99_ms"], s["db_statements"], p["rps"], p["p50_ms"]])  # fmt: skip
        cpu_rows.append([connections, s["cpu_ms"], h["cpu_ms"], f"{s['busiest_share']:.0%}", s["db_connects_per_s"],
                         p["cpu_ms"], p["db_connects_per_s"], s["db_cpu_ms"], p["db_cpu_ms"]])  # fmt: skip
        if probes:
            run.note(
                f"feed-poll: {probes} request(s) reached the legacy server during the kept runs at "
                f"{connections} connections (authorization cache not warm everywhere)"
            )
    run.table(
        f"Feed, quiet poll (nothing new; 50 workspaces in turn, {config['worker_class']} "
        f"{config['workers']}x{config['threads']}, medians of {ctx.args.runs} x {ctx.seconds:g}s, alternating)",
        ["clients", "shim req/s", "hello-world req/s", "shim / hello-world", "shim p50 ms", "hello-world p50 ms",
         "shim p99 ms", "DB statements per poll (server-wide)", "PHP baseline req/s", "PHP p50 ms"],
        rows,
    )  # fmt: skip
    run.table(
        "Feed, quiet poll: CPU per request and database connections (medians; the database "
        "server's figures are server-wide, so other load on it counts too)",
        ["clients", "shim workers CPU ms", "hello-world workers CPU ms", "busiest shim worker's share",
         "shim: new DB connections/s", "PHP (php-fpm) CPU ms", "PHP: new DB connections/s",
         "MariaDB CPU ms, shim", "MariaDB CPU ms, PHP"],
        cpu_rows,
    )  # fmt: skip
    new_row_rows = []
    for connections in (1, 8):
        shim_runs, php_runs = [], []
        for _ in range(ctx.args.runs):
            shim_runs.append(ctx.shim_poll_run(connections, paths=new_rows)[0])
            php_runs.append(
                ctx.metered("php", lambda c=connections: load.wrk(stack.php_url, c, ctx.seconds, new_rows, ctx.auth))
            )
        s = {k: median(shim_runs, k) for k in ("rps", "p50_ms", "p99_ms", "cpu_ms", "db_statements")}
        p = {k: median(php_runs, k) for k in ("rps", "p50_ms", "p99_ms")}
        figures[f"new-row-{connections}"] = {"shim": s, "php": p}
        new_row_rows.append([connections, s["rps"], s["p50_ms"], s["p99_ms"], s["cpu_ms"], s["db_statements"],
                             p["rps"], p["p50_ms"]])  # fmt: skip
    run.table(
        "Feed, poll with one new row (each workspace polled at the seq just below its last row; "
        "bodies checked identical to PHP's)",
        ["clients", "shim req/s", "shim p50 ms", "shim p99 ms", "shim CPU ms", "DB statements per poll",
         "PHP baseline req/s", "PHP p50 ms"],
        new_row_rows,
    )  # fmt: skip
    stack.stop_hello()
    # The same SQL alone: what the legacy algorithm runs per poll (MAX, the SELECT, MAX again).
    from sqlalchemy.dialects import mysql

    from shim import feed

    select = str(
        feed.feed_query(dataset.BIG_WORKSPACE, ctx.max_seq, None).compile(
            dialect=mysql.dialect(), compile_kwargs={"literal_binds": True}
        )
    )
    table_max = "SELECT MAX(seq) FROM ajxp_changes"
    sql_round = load.poll_queries(ctx.db, [table_max, select, table_max], 3.0)
    sql_select = load.poll_queries(ctx.db, [select], 2.0)
    shim1 = figures[1]["shim"]
    run.table(
        "Feed, incremental poll: the database alone (PyMySQL, one connection, in a loop)",
        ["what", "ms per poll", "shim p50 at 1 client / this"],
        [
            ["SELECT only", sql_select["round_ms"], f"{shim1['p50_ms'] / sql_select['round_ms']:.1f}x"],
            [
                "MAX + SELECT + MAX (the legacy sequence)",
                sql_round["round_ms"],
                f"{shim1['p50_ms'] / sql_round['round_ms']:.1f}x",
            ],
        ],
    )
    figures["sql"] = {"select_ms": sql_select["round_ms"], "round_ms": sql_round["round_ms"]}
    steps = costs.poll_costs(stack.shim_env(), ctx.db, dataset.BIG_WORKSPACE, ctx.max_seq)
    run.table(
        "Feed, incremental poll: the shim's database steps one by one (this process, one thread)",
        ["step", "wall ms", "CPU ms"],
        [[name, f["wall_ms"], f["cpu_ms"]] for name, f in steps],
    )
    figures["steps"] = {name: f for name, f in steps}
    run.figures["feed-poll"] = figures
    quiet8 = figures[8]
    run.target(
        Target("quiet poll req/s at 8 clients, share of hello-world",
               100 * quiet8["shim"]["rps"] / quiet8["hello"]["rps"], 100 * POLL_HELLO_SHARE_MIN, True, " %"),
        "feed-poll",
    )  # fmt: skip
    run.target(
        Target("quiet poll p50 at 1 client", figures[1]["shim"]["p50_ms"], POLL_P50_MAX_MS, False, " ms"), "feed-poll"
    )
    run.target(
        Target(
            "DB statements per quiet poll at 8 clients", quiet8["shim"]["db_statements"], POLL_STATEMENTS_MAX, False
        ),  # fmt: skip
        "feed-poll",
    )
    run.target(
        Target("one-new-row poll p50 at 1 client", figures["new-row-1"]["shim"]["p50_ms"], NEW_ROW_P50_MAX_MS, False,
               " ms"),
        "feed-poll",
    )  # fmt: skip
    if not all(t.passed for t in run.targets if t.part == "feed-poll"):
        for connections in (8, 1, 64):
            ctx.profile(
                f"feed-poll-{connections}",
                lambda t, c=connections: load.wrk(stack.shim_url, c, t, ctx.poll_paths, ctx.auth),
            )


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def part_feed_snapshot(ctx: Context):
    run, stack = ctx.run, ctx.stack
    if stack.shim is None:
        ctx.start_shim()
    from sqlalchemy.dialects import mysql

    from shim import feed

    select = str(
        feed.feed_query(dataset.BIG_WORKSPACE, 0, None).compile(
            dialect=mysql.dialect(), compile_kwargs={"literal_binds": True}
        )
    )
    raw_runs, shim_runs, php_runs = [], [], []
    for _ in range(ctx.args.runs):
        raw_runs.append(load.raw_query(ctx.db, select))
        shim_runs.append(_snapshot(ctx, stack.shim_url, stack.shim_workers()))
        php_runs.append(_snapshot(ctx, stack.php_url, stack.php_workers()))
    rows_read = raw_runs[0]["rows"]
    shim_bodies = {(r["sha256"], r["bytes"]) for r in shim_runs}
    php_bodies = {(r["sha256"], r["bytes"]) for r in php_runs}
    identical = shim_bodies == php_bodies and len(shim_bodies) == 1
    emitted = shim_runs[0]["lines"]  # one "\n" per row: rows are "\n"-separated, then "\nLAST_SEQ:N"
    raw_s, shim_s, php_s = (median(x, "total_s") for x in (raw_runs, shim_runs, php_runs))
    rows = [
        ["raw PyMySQL SSCursor (fetch only)", raw_s, median(raw_runs, "ttfb_s"), rows_read / raw_s, "-", "-"],
        [
            "shim",
            shim_s,
            median(shim_runs, "ttfb_s"),
            rows_read / shim_s,
            shim_runs[0]["bytes"] / MIB,
            f"{median(shim_runs, 'rss_before_mib'):.0f} -> {max(r['peak_rss_mib'] for r in shim_runs):.1f}",
        ],
        [
            "PHP baseline",
            php_s,
            median(php_runs, "ttfb_s"),
            rows_read / php_s,
            php_runs[0]["bytes"] / MIB,
            f"{median(php_runs, 'rss_before_mib'):.0f} -> {max(r['peak_rss_mib'] for r in php_runs):.1f}",
        ],
    ]
    run.table(
        f"Feed, full snapshot of {dataset.BIG_WORKSPACE} ({rows_read:,} rows read, {emitted:,} rows sent "
        f"after flattening; medians of {ctx.args.runs})",
        ["client", "total s", "first byte s", "rows read/s", "body MiB", "server RSS MiB before -> peak"],
        rows,
    )
    say(
        f"ratios: shim/raw time {shim_s / raw_s:.2f}x, shim/PHP time {shim_s / php_s:.2f}x "
        f"(PHP/shim speed {php_s / shim_s:.2f}x); bodies identical: {identical}"
    )
    run.figures["feed-snapshot"] = {
        "raw": raw_runs,
        "shim": shim_runs,
        "php": php_runs,
        "rows_read": rows_read,
        "rows_sent": emitted,
        "identical": identical,
    }
    run.target(
        Target("snapshot time shim / raw PyMySQL", shim_s / raw_s, SNAPSHOT_RAW_RATIO_MAX, False, "x"), "feed-snapshot"
    )
    run.target(
        Target(
            "snapshot worker peak RSS", max(r["peak_rss_mib"] for r in shim_runs), SNAPSHOT_RSS_MAX_MIB, False, " MiB"
        ),
        "feed-snapshot",
    )
    run.target(
        Target("snapshot body identical to the PHP baseline", 1.0 if identical else 0.0, 1.0, True), "feed-snapshot"
    )
    if not all(t.passed for t in run.targets if t.part == "feed-snapshot"):
        ctx.profile("feed-snapshot", lambda t: _fetch_for(stack.shim_url + ctx.snapshot_path, ctx.auth, t), 8.0)


def _peak_sampler(pids: list[int]):
    """``(sample, peaks)``: reset the processes' peak RSS, then *sample()* records VmHWM per pid (KiB)."""
    services.reset_peak_rss(pids)
    peaks = {pid: 0 for pid in pids}

    def sample():
        for pid in pids:
            try:
                peaks[pid] = max(peaks[pid], services.status_kib(pid, "VmHWM"))
            except (OSError, KeyError):
                pass

    return sample, peaks


def _snapshot(ctx: Context, base: str, pids: list[int]) -> dict:
    """One snapshot request; the serving processes' peak RSS during it (VmHWM reset first)."""
    rss_before = max(services.status_kib(pid, "VmRSS") for pid in pids) / 1024 if pids else float("nan")
    sample, peaks = _peak_sampler(pids)

    result = load.fetch(base + ctx.snapshot_path, ctx.auth, sample=sample)
    sample()
    if result["status"] != 200:
        raise RuntimeError(f"snapshot from {base}: status {result['status']}")
    result["peak_rss_mib"] = max(peaks.values()) / 1024 if peaks else float("nan")
    result["rss_before_mib"] = rss_before
    return result


def part_proxy(ctx: Context):
    run, stack = ctx.run, ctx.stack
    if stack.shim is None:
        ctx.start_shim()
    direct, shim = stack.legacy_url, stack.shim_url
    stack.start_hello(f"\nLAST_SEQ:{ctx.max_seq}".encode())
    rows, figures = [], {}
    # 16 at most: by default a worker lets 16 forwarded requests wait on the legacy
    # server at once (proxy.max_upstream_requests) and answers 503 beyond, on purpose.
    for connections in (8, 16):
        d_runs, s_runs, h_runs = [], [], []
        for round_no in range(ctx.args.runs):
            d_runs.append(
                ctx.metered("nginx", lambda c=connections: load.wrk(direct + services.SMALL_FILE, c, ctx.seconds))
            )
            for side in in_turn(round_no, ("shim", "hello")):
                if side == "shim":
                    s_runs.append(
                        ctx.metered("shim", lambda c=connections: load.wrk(shim + services.SMALL_FILE, c, ctx.seconds))
                    )
                else:
                    h_runs.append(
                        ctx.metered("hello", lambda c=connections: load.wrk(stack.hello_url + "/", c, ctx.seconds))
                    )
        keys = ("rps", "p50_ms", "p99_ms", "cpu_ms")
        d = {k: median(d_runs, k) for k in keys}
        s = {k: median(s_runs, k) for k in keys}
        h = {k: median(h_runs, k) for k in keys}
        figures[connections] = {"direct": d, "shim": s, "hello": h}
        rows.append([f"1 KiB, {connections} clients", d["rps"], s["rps"], h["rps"], f"{s['rps'] / h['rps']:.1%}",
                     f"{s['rps'] / d['rps']:.1%}", f"{d['p50_ms']:.2f} / {s['p50_ms']:.2f}",
                     f"+{s['p50_ms'] - d['p50_ms']:.2f}", f"{d['cpu_ms']:.3f} / {s['cpu_ms']:.2f}"])  # fmt: skip
    stack.stop_hello()
    run.table(
        f"Proxy, small requests (nginx static file; hello-world under the shim's gunicorn settings; "
        f"medians of {ctx.args.runs} x {ctx.seconds:g}s, alternating)",
        ["request", "direct req/s", "via shim req/s", "hello-world req/s", "shim/hello-world", "shim/direct",
         "p50 ms direct / shim", "added p50 ms", "CPU ms/req nginx / shim workers"],
        rows,
    )  # fmt: skip
    # The first read of the sparse file fills the page cache (1 GiB of zero
    # pages): done once, untimed, so that "direct" measures nginx, not that.
    load.download(direct + services.LARGE_FILE)
    d_runs, s_runs = [], []
    for _ in range(ctx.args.runs):
        d_runs.append(load.download(direct + services.LARGE_FILE))
        s_runs.append(_download_with_rss(ctx, shim + services.LARGE_FILE))
    d_bw, s_bw = median(d_runs, "mib_s"), median(s_runs, "mib_s")
    peak = max(r["peak_rss_mib"] for r in s_runs)
    run.table(
        f"Proxy, 1 GiB download (medians of {ctx.args.runs})",
        ["path", "MiB/s", "seconds", "worker peak RSS MiB"],
        [["direct (nginx)", d_bw, median(d_runs, "seconds"), "-"], ["via shim", s_bw, median(s_runs, "seconds"), peak]],
    )
    say(
        f"ratios: small requests shim/hello-world {figures[8]['shim']['rps'] / figures[8]['hello']['rps']:.1%} "
        f"(8 clients), bulk shim/nginx sendfile {s_bw / d_bw:.1%}"
    )
    figures["bulk"] = {"direct": d_runs, "shim": s_runs}
    run.figures["proxy"] = figures
    run.target(
        Target(
            "proxy 1 KiB req/s at 8 clients, share of hello-world",
            100 * figures[8]["shim"]["rps"] / figures[8]["hello"]["rps"],
            100 * PROXY_SMALL_MIN,
            True,
            " %",
        ),
        "proxy",
    )
    run.target(
        Target("proxy 1 GiB bandwidth shim / nginx sendfile", 100 * s_bw / d_bw, 100 * PROXY_BULK_MIN, True, " %"),
        "proxy",
    )
    run.target(Target("proxy worker peak RSS during 1 GiB", peak, RSS_MAX_MIB, False, " MiB"), "proxy")
    failed = {t.name for t in run.targets if t.part == "proxy" and not t.passed}
    if any("1 KiB" in name for name in failed):
        ctx.profile("proxy-small", lambda t: load.wrk(shim + services.SMALL_FILE, 8, t))
    if any("bandwidth" in name for name in failed):
        ctx.profile("proxy-bulk", lambda t: _download_for(shim + services.LARGE_FILE, t), 4.0)


def _download_for(url: str, seconds: float) -> dict:
    """Download *url* again and again for about *seconds* (load for a profile)."""
    deadline = time.monotonic() + seconds
    runs = []
    while time.monotonic() < deadline:
        runs.append(load.download(url))
    return {"downloads": len(runs), "mib_s": round(statistics.median(r["mib_s"] for r in runs), 1)}


def _fetch_for(url: str, headers, seconds: float) -> dict:
    """Read *url* (a long feed) for *seconds*, then hang up (load for a profile)."""
    result = load.fetch(url, headers, max_seconds=seconds)
    return {"bytes_read": result["bytes"], "seconds": round(result["total_s"], 2)}


def _download_with_rss(ctx: Context, url: str) -> dict:
    pids = ctx.stack.shim_workers()
    sample, peaks = _peak_sampler(pids)

    result = load.download(url, sample=sample)
    sample()
    result["peak_rss_mib"] = max(peaks.values()) / 1024
    return result


def measure_workers(ctx: Context, measured: dict):
    for _ in range(ctx.args.workers_runs):
        measured["poll8"].append(ctx.shim_poll_run(8)[0])
        measured["poll64"].append(ctx.shim_poll_run(64)[0])
        measured["proxy16"].append(
            ctx.metered("shim", lambda: load.wrk(ctx.stack.shim_url + services.SMALL_FILE, 16, ctx.seconds))
        )


def part_workers(ctx: Context):
    run, stack = ctx.run, ctx.stack
    rows, figures = [], {}
    gevent_ok = importlib.util.find_spec("gevent") is not None
    for args, settings in WORKER_CONFIGS:
        if "gevent" in (args or "") and not gevent_ok:
            run.note(f"workers: {args} skipped, gevent is not installed in the venv")
            continue
        try:
            config = ctx.start_shim(args, settings)
        except (load.LoadError, services.ServiceError) as exc:
            run.note(
                f"workers: {args or 'configuration file'} {settings or ''} did not start cleanly: {exc}"
                f"{ctx.shim_log_errors()}"
            )
            rows.append([args or "configuration file", *["failed"] * 11])
            continue
        label = f"{config['worker_class']} {config['workers']}" + (
            f"x{config['threads']}" if config["worker_class"] == "gthread" else ""
        )
        if args is None:
            label += " (configuration file)"
        if settings:
            label += ", " + ", ".join(f"{k[len('PYDIO_SHIM_') :].lower()}={v}" for k, v in settings.items())
        measured = collections.defaultdict(list)
        try:
            measure_workers(ctx, measured)
        except load.LoadError as exc:
            run.note(f"workers: {label} failed under load: {exc}{ctx.shim_log_errors()}")
            rows.append([label, *["failed"] * 11])
            continue
        rss = max(services.status_kib(pid, "VmRSS") for pid in stack.shim_workers()) / 1024
        m = {
            k: {key: median(v, key) for key in ("rps", "p50_ms", "p99_ms", "cpu_ms", "db_connects_per_s")}
            for k, v in measured.items()
        }
        figures[label] = {"config": config, "settings": settings, **m, "rss_mib": rss}
        rows.append(
            [
                label,
                m["poll8"]["rps"],
                m["poll8"]["p50_ms"],
                m["poll8"]["cpu_ms"],
                m["poll8"]["db_connects_per_s"],
                m["poll64"]["rps"],
                m["poll64"]["p99_ms"],
                m["poll64"]["cpu_ms"],
                m["poll64"]["db_connects_per_s"],
                m["proxy16"]["rps"],
                m["proxy16"]["cpu_ms"],
                rss,
            ]
        )
    stack.stop_shim()
    run.table(
        f"gunicorn workers (medians of {ctx.args.workers_runs} x {ctx.seconds:g}s)",
        [
            "configuration",
            "poll 8c req/s",
            "poll 8c p50 ms",
            "poll 8c CPU ms/req",
            "poll 8c DB connects/s",
            "poll 64c req/s",
            "poll 64c p99 ms",
            "poll 64c CPU ms/req",
            "poll 64c DB connects/s",
            "proxy 1 KiB 16c req/s",
            "proxy CPU ms/req",
            "worker RSS MiB",
        ],
        rows,
    )
    measured_configs = dict(figures)
    if measured_configs:

        def score(f):
            # Geometric mean of the three rates and of 1 / p99 at 64 clients: a
            # configuration that serves more but lets some clients wait seconds
            # does not fit a sync service.  Units cancel between configurations.
            return (f["poll8"]["rps"] * f["poll64"]["rps"] * f["proxy16"]["rps"] / f["poll64"]["p99_ms"]) ** (1 / 4)

        best = max(measured_configs, key=lambda k: score(measured_configs[k]))
        base = next((k for k in measured_configs if "(configuration file)" in k), None)
        versus = (
            f", {score(measured_configs[best]) / score(measured_configs[base]):.2f}x the configuration file's"
            if base
            else ""
        )
        say(
            f"workers: best configuration {best!r} (highest geometric mean of the three rates and of "
            f"1/p99 at 64 clients{versus})"
        )
        run.figures["workers_scores"] = {k: score(v) for k, v in measured_configs.items()}
        run.figures["workers_best"] = best
    run.figures["workers"] = figures


def part_idle_clients(ctx: Context):
    run, stack, args = ctx.run, ctx.stack, ctx.args
    workspaces = dataset.workspace_ids()
    idle.ensure_users(stack.standin, workspaces, args.idle_clients)
    config = stack.start_shim()  # the default settings; no warming: the warm-up is measured
    seconds = args.idle_minutes * 60
    say(f"{args.idle_clients} clients every {args.idle_interval:g} s for {seconds:.0f} s through the shim...")
    shim = idle.measure(stack.shim_url, stack, ctx.db, workspaces, ctx.max_seq, args.idle_clients,
                        args.idle_interval, seconds, shim=True)  # fmt: skip
    legacy_seconds = max(60.0, seconds / 4)
    say(f"...then {legacy_seconds:.0f} s straight to the legacy server")
    direct = idle.measure(stack.legacy_url, stack, ctx.db, workspaces, ctx.max_seq, args.idle_clients,
                          args.idle_interval, legacy_seconds, shim=False)  # fmt: skip
    rows = []
    for side, f in (("through the shim", shim), ("legacy server directly", direct)):
        rows.append([
            side, f["steady"]["polls"], f["steady"]["errors"], f["steady"]["p50_ms"], f["steady"]["p99_ms"],
            f"{f['warm_up_legacy_calls']} in {f['warm_up_s']:.0f} s", f["steady_legacy_calls"],
            f["legacy_per_1000_polls"], f["statements_per_poll"], f.get("table_checks_per_poll", "-"),
        ])  # fmt: skip
    run.table(
        f"Idle clients: {args.idle_clients} users polling a quiet workspace every {args.idle_interval:g} s "
        f"(±20 %), {config['worker_class']} {config['workers']}x{config['threads']}, default settings; "
        "steady state = after a minute's warm-up (every client met by every worker)",
        ["", "polls (steady)", "errors", "p50 ms", "p99 ms", "legacy calls, warm-up", "legacy calls, steady",
         "legacy calls per 1,000 polls", "DB statements per poll (server-wide)", "table checks per poll"],
        rows,
    )  # fmt: skip
    run.figures["idle-clients"] = {"shim": shim, "legacy": direct, "gunicorn": config}
    if shim["steady"]["errors"]:
        run.note(f"idle-clients: {shim['steady']['errors']} polls through the shim did not get 200")
    run.target(
        Target("legacy requests per 1,000 idle polls", shim["legacy_per_1000_polls"], IDLE_LEGACY_PER_1000_MAX, False),
        "idle-clients",
    )


PART_FUNCTIONS = {
    "feed-poll": part_feed_poll,
    "feed-snapshot": part_feed_snapshot,
    "proxy": part_proxy,
    "workers": part_workers,
    "idle-clients": part_idle_clients,
}


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts to run: {', '.join(PARTS)} (default: all)"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per comparison, medians reported (default 3)")
    parser.add_argument("--workers-runs", type=int, default=2, help="runs per load in the workers part (default 2)")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each wrk run (default 5)")
    parser.add_argument("--idle-clients", type=int, default=200, help="clients in the idle-clients part (200)")
    parser.add_argument("--idle-interval", type=float, default=3.0, help="seconds between their polls (3)")
    parser.add_argument("--idle-minutes", type=float, default=4.0, help="minutes they poll the shim (4)")
    parser.add_argument(
        "--mysql",
        default=os.environ.get("SHIM_BENCH_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306"),
        help="MariaDB server URL, no database (default: root@127.0.0.1:3306)",
    )
    parser.add_argument(
        "--no-profile", dest="profile", action="store_false", help="do not profile a worker when a target is missed"
    )
    parser.add_argument(
        "--json",
        default=os.path.join(OUT_DIR, "results.json"),
        help="where to write every figure (default var/bench/results.json)",
    )
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part {unknown[0]!r}; parts: {', '.join(PARTS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # A SIGTERM (make interrupted, CI timeout) unwinds like Ctrl-C: every service is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the stand-in's request log
    started = time.monotonic()
    ensure_tools()
    import sqlalchemy as sa

    server = sa.engine.make_url(args.mysql)
    db_settings = {
        "host": server.host or "127.0.0.1",
        "port": server.port or 3306,
        "user": server.username or "root",
        "password": server.password or "",
        "database": dataset.DATABASE,
    }
    run = Run()
    database_url = dataset.ensure(args.mysql, say)
    run.figures["dataset"] = dataset.stats(database_url)
    run.figures["versions"] = dict(versions(), mariadb=run.figures["dataset"]["server"])
    say("benchmark: " + ", ".join(f"{k} {v}" for k, v in run.figures["versions"].items()))
    run.figures["code"] = code_identity()
    say(f"shim measured: commit {run.figures['code']['commit']}, sources {run.figures['code']['sources']}")
    run.figures["load_before"] = os.getloadavg()
    say(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    status = 0
    with services.Stack(database_url, db_settings, say) as stack:
        stack.start_legacy()
        ctx = Context(args, stack, db_settings, run)
        for part in args.parts:
            part_started = time.monotonic()
            load_before = os.getloadavg()[0]
            say(f"\n== {part} ==")
            try:
                PART_FUNCTIONS[part](ctx)
            except (load.LoadError, services.ServiceError, RuntimeError) as exc:
                run.failed_parts.append(part)
                say(f"FAIL  {part}: could not run: {exc}")
                status = 2
            elapsed, load_after = time.monotonic() - part_started, os.getloadavg()[0]
            run.figures.setdefault("parts", {})[part] = {
                "seconds": round(elapsed),
                "load_before": load_before,
                "load_after": load_after,
            }
            say(f"({part}: {elapsed:.0f}s; 1-minute load average {load_before:.2f} before, {load_after:.2f} after)")
    run.figures["load_after"] = os.getloadavg()
    if code_identity() != run.figures["code"]:
        run.note("the shim's sources changed while the benchmark ran: the parts measured different code")
    run.figures["elapsed_s"] = time.monotonic() - started
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(
            {
                "figures": run.figures,
                "targets": [
                    {"name": t.name, "value": t.value, "limit": t.limit, "passed": t.passed} for t in run.targets
                ],
                "notes": run.notes,
                "failed_parts": run.failed_parts,
            },
            fh,
            indent=1,
            default=str,
        )
    markdown = os.path.splitext(os.path.abspath(args.json))[0] + ".md"
    with open(markdown, "w") as fh:
        fh.write("Versions: " + ", ".join(f"{k} {v}" for k, v in run.figures["versions"].items()) + "\n")
        fh.write(f"Shim: commit {run.figures['code']['commit']}, sources {run.figures['code']['sources']}\n\n")
        for title, header, rows in run.tables:
            fh.write(render_table(title, header, rows) + "\n\n")
        fh.write("\n".join(t.line() for t in run.targets) + "\n")
    say("\n== summary ==")
    for note in run.notes:
        say("note: " + note)
    for target in run.targets:
        say(target.line())
    for part in run.failed_parts:
        say(f"FAIL  {part}: could not run")
    if "workers_best" in run.figures:
        say(f"best gunicorn configuration: {run.figures['workers_best']}")
    say(
        f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"total {run.figures['elapsed_s']:.0f}s; figures in {os.path.relpath(os.path.abspath(args.json), ROOT)}, "
        f"tables in {os.path.relpath(markdown, ROOT)}"
    )
    if status == 0 and not all(t.passed for t in run.targets):
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
