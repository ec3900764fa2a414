"""The processes a benchmark run starts, and how it stops them.

Everything listens on free loopback ports and lives in one temporary
directory: nginx (the legacy server's front: static files and the stand-in;
the PHP baseline's front), php-fpm (the baseline), the legacy stand-in (a
thread of this process, answering the shim's authorization probes) and the
shim under gunicorn.  Each child gets a session of its own so that stopping it
(SIGTERM to its id, SIGKILL to its process group after a grace period) also
stops its workers, and nothing else.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENV_BIN = os.path.dirname(sys.executable)
GUNICORN_CONF = os.path.join(ROOT, "conf", "gunicorn.conf.py")
SMALL_FILE = "/static/1k.bin"
LARGE_FILE = "/static/1g.bin"
LARGE_SIZE = 1 << 30


class ServiceError(RuntimeError):
    """A service did not start; the message says which and why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill(template_path: str, target: str, **values) -> str:
    """Write *template_path* to *target* with each ``@NAME@`` replaced."""
    with open(template_path) as fh:
        text = fh.read()
    for name, value in values.items():
        text = text.replace(f"@{name}@", str(value))
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(("#", ";")))
    leftover = re.search(r"@[A-Z_]+@", code)
    if leftover:
        raise ServiceError(f"{template_path}: placeholder {leftover.group(0)} not filled in")
    with open(target, "w") as fh:
        fh.write(text)
    return target


def wait_http(url: str, proc: subprocess.Popen | None, what: str, timeout: float = 30.0, log_file: str | None = None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{what} exited with status {proc.returncode}{_tail(log_file)}")
        try:
            return requests.get(url, timeout=2)
        except requests.RequestException as exc:
            last = exc
            time.sleep(0.1)
    raise ServiceError(f"{what} did not answer on {url} within {timeout:.0f}s ({last}){_tail(log_file)}")


def _tail(path: str | None, lines: int = 15) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as fh:
        return "\n--- " + path + " ---\n" + "".join(fh.readlines()[-lines:])


def children(pid: int) -> list[int]:
    """Ids of the direct children of *pid* (a gunicorn master's workers)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.split("/")[2]))
    return sorted(found)


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmHWM = peak RSS, VmRSS = current)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds a process has used so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids_named(name: str) -> list[int]:
    """Ids of the processes whose command name is *name* (e.g. the database server)."""
    found = []
    for comm in glob.glob("/proc/[0-9]*/comm"):
        try:
            with open(comm) as fh:
                if fh.read().strip() == name:
                    found.append(int(comm.split("/")[2]))
        except OSError:
            continue
    return found


class CpuMeter:
    """CPU seconds used by groups of processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, **groups: list[int]):
        self.groups = groups
        self.used: dict[str, float] = {}

    def start(self):
        self._before = {name: {pid: cpu_seconds(pid) for pid in pids} for name, pids in self.groups.items()}
        return self

    def stop(self) -> dict[str, float]:
        self.per_pid = {
            name: {pid: max(0.0, cpu_seconds(pid) - before[pid]) for pid in before}
            for name, before in self._before.items()
        }
        self.used = {name: sum(used.values()) for name, used in self.per_pid.items()}
        return self.used


def reset_peak_rss(pids) -> bool:
    """Reset VmHWM of *pids* to their current RSS (``clear_refs`` 5); False if not allowed."""
    ok = True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            ok = False
    return ok


class Stack:
    """All the services of one run; a context manager that always stops them."""

    def __init__(self, database_url: str, db_settings: dict, log=print):
        self.database_url = database_url
        self.db = db_settings
        self.log = log
        self.dir = tempfile.mkdtemp(prefix="shimbench-")
        os.chmod(self.dir, 0o755)  # nginx's workers (an unprivileged user) read the static files
        self.procs: list[subprocess.Popen] = []
        self.standin = None
        self.standin_server = None
        self.shim = None
        self.hello = None
        self.hello_port = 0
        self.shim_settings: dict = {}
        self.legacy_port = free_port()
        self.php_port = free_port()
        self.shim_port = free_port()
        self.php_children = 0

    # --- lifecycle ----------------------------------------------------------------

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.stop_shim()
        self.stop_hello()
        for proc in reversed(self.procs):
            stop(proc)
        self.procs.clear()
        if self.standin_server is not None:
            self.standin_server.stop()
            self.standin_server = None
        if self.standin is not None:
            self.standin.engine.dispose()
            self.standin = None
        if os.environ.get("SHIM_BENCH_KEEP"):
            self.log(f"kept {self.dir} (SHIM_BENCH_KEEP is set)")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _spawn(self, argv, log_name: str, env=None) -> subprocess.Popen:
        log_path = os.path.join(self.dir, log_name)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        proc.log_path = log_path
        return proc

    # --- the pieces ---------------------------------------------------------------

    def start_legacy(self, php_children: int = 8):
        """The stand-in (a thread here), nginx in front of it and of php-fpm, the static files."""
        from shim.demo.stack import ServerThread
        from shim.demo.standin import LegacyStandin

        self.standin = LegacyStandin(self.database_url, os.path.join(self.dir, "data"))
        self.standin_server = ServerThread(self.standin).start()
        www = os.path.join(self.dir, "www", "static")
        os.makedirs(www)
        os.makedirs(os.path.join(self.dir, "nginx-tmp"))
        with open(os.path.join(www, "1k.bin"), "wb") as fh:
            fh.write(os.urandom(1024))
        with open(os.path.join(www, "1g.bin"), "wb") as fh:
            fh.truncate(LARGE_SIZE)  # sparse: no disk used, read from the page cache
        self.php_children = php_children
        fpm_conf = fill(
            os.path.join(HERE, "baseline", "php-fpm.conf"),
            os.path.join(self.dir, "php-fpm.conf"),
            DIR=self.dir,
            CHILDREN=php_children,
        )
        fpm = self._spawn([php_fpm_binary(), "-F", "-R", "-y", fpm_conf], "php-fpm.out")
        self.procs.append(fpm)
        nginx_conf = fill(
            os.path.join(HERE, "nginx", "bench.conf"),
            os.path.join(self.dir, "nginx.conf"),
            DIR=self.dir,
            WORKERS=2,
            STANDIN_PORT=self.standin_server.port,
            LEGACY_PORT=self.legacy_port,
            PHP_PORT=self.php_port,
            SCRIPT=os.path.join(HERE, "baseline", "changes.php"),
            DB_HOST=self.db["host"],
            DB_PORT=self.db["port"],
            DB_USER=self.db["user"],
            DB_PASSWORD=self.db["password"],
            DB_NAME=self.db["database"],
        )
        nginx = self._spawn([nginx_binary(), "-c", nginx_conf, "-p", self.dir, "-g", "daemon off;"], "nginx.out")
        self.procs.append(nginx)
        self.nginx = nginx
        wait_http(f"http://127.0.0.1:{self.legacy_port}{SMALL_FILE}", nginx, "nginx", log_file=nginx.log_path)
        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(self.dir, "php-fpm.sock")):
            if fpm.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(
                    "php-fpm did not start" + _tail(fpm.log_path) + _tail(os.path.join(self.dir, "php-fpm.log"))
                )
            time.sleep(0.1)
        self.fpm = fpm

    @property
    def legacy_url(self) -> str:
        return f"http://127.0.0.1:{self.legacy_port}"

    @property
    def php_url(self) -> str:
        return f"http://127.0.0.1:{self.php_port}"

    @property
    def shim_url(self) -> str:
        return f"http://127.0.0.1:{self.shim_port}"

    def php_workers(self) -> list[int]:
        return children(self.fpm.pid)

    def nginx_workers(self) -> list[int]:
        return children(self.nginx.pid)

    def database_server(self) -> list[int]:
        """The MariaDB server process when it runs on this machine (shared with anyone else's load)."""
        return pids_named("mariadbd") or pids_named("mysqld")

    def shim_env(self, gunicorn_args: str | None = None, settings: dict | None = None) -> dict:
        """The environment of the shim: this run's services with the default settings, *gunicorn_args*.

        *settings* are further ``PYDIO_SHIM_*`` variables (e.g. a pool size to compare).
        """
        env = dict(os.environ)
        for name in list(env):
            if name.startswith("PYDIO_SHIM_") or name in ("GUNICORN_CMD_ARGS", "WEB_CONCURRENCY"):
                del env[name]
        env.update(
            PYDIO_SHIM_UPSTREAM_URL=self.legacy_url,
            PYDIO_SHIM_DATABASE_URL=self.database_url,
        )
        env.update(settings or {})
        if gunicorn_args:
            env["GUNICORN_CMD_ARGS"] = gunicorn_args
        return env

    def start_shim(self, gunicorn_args: str | None = None, settings: dict | None = None) -> dict:
        """The shim as ``pydio-shim serve`` runs it (conf/gunicorn.conf.py when present).

        *gunicorn_args* (``GUNICORN_CMD_ARGS``) override the configuration file,
        e.g. ``"--worker-class gevent --workers 2"``.  Returns the effective
        worker settings.
        """
        self.stop_shim()
        env = self.shim_env(gunicorn_args, settings)
        settings = gunicorn_settings(env)
        self.shim_port = free_port()
        argv = [os.path.join(VENV_BIN, "pydio-shim"), "serve", "--bind", f"127.0.0.1:{self.shim_port}"]
        self.shim = self._spawn(argv, "gunicorn.out", env)
        self.shim_settings = settings
        wait_http(self.shim_url + "/_shim/health", self.shim, "the shim (gunicorn)", log_file=self.shim.log_path)
        # Workers boot on their own schedule: wait until every one of them is up.
        deadline = time.monotonic() + 20
        while len(self.shim_workers()) < settings["workers"] and time.monotonic() < deadline:
            time.sleep(0.1)
        return settings

    def start_hello(self, body: bytes) -> None:
        """bench/hello.py under the shim's gunicorn configuration and environment (same workers, threads, logs)."""
        self.stop_hello()
        env = self.shim_env()
        env["BENCH_HELLO_BODY"] = body.decode()
        env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
        self.hello_port = free_port()
        argv = [os.path.join(VENV_BIN, "python"), "-m", "gunicorn", "-c", "python:shim.gunicorn_conf",
                "--bind", f"127.0.0.1:{self.hello_port}", "hello:app"]  # fmt: skip
        self.hello = self._spawn(argv, "hello.out", env)
        wait_http(self.hello_url + "/", self.hello, "the hello-world app (gunicorn)", log_file=self.hello.log_path)
        deadline = time.monotonic() + 20
        while len(children(self.hello.pid)) < self.shim_settings.get("workers", 2) and time.monotonic() < deadline:
            time.sleep(0.1)

    @property
    def hello_url(self) -> str:
        return f"http://127.0.0.1:{self.hello_port}"

    def hello_workers(self) -> list[int]:
        return children(self.hello.pid) if self.hello is not None else []

    def stop_hello(self):
        if self.hello is not None:
            stop(self.hello)
            self.hello = None

    def shim_workers(self) -> list[int]:
        return children(self.shim.pid) if self.shim is not None else []

    def stop_shim(self):
        if self.shim is not None:
            stop(self.shim)
            self.shim = None


_SETTINGS_PROBE = """
import json, os, runpy, shlex
from gunicorn.config import Config
cfg = Config()
path = os.environ["BENCH_GUNICORN_CONF"]
if os.path.exists(path):
    for name, value in runpy.run_path(path).items():
        if name in cfg.settings:
            try:
                cfg.set(name, value)
            except Exception:
                pass
args = os.environ.get("GUNICORN_CMD_ARGS")
if args:
    known, _ = cfg.parser().parse_known_args(shlex.split(args))
    for name, value in vars(known).items():
        if name in cfg.settings and value is not None:
            cfg.set(name, value)
print(json.dumps({"worker_class": cfg.worker_class_str, "workers": cfg.workers, "threads": cfg.threads,
                  "loglevel": cfg.loglevel}))
"""


def gunicorn_settings(env: dict) -> dict:
    """Worker class, workers and threads gunicorn will use: conf/gunicorn.conf.py, then GUNICORN_CMD_ARGS."""
    done = subprocess.run(
        [sys.executable, "-c", _SETTINGS_PROBE],
        env=dict(env, BENCH_GUNICORN_CONF=GUNICORN_CONF),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise ServiceError(f"cannot read the gunicorn settings: {done.stderr.strip()[-500:]}")
    import json

    settings = json.loads(done.stdout.strip().splitlines()[-1])
    settings["conf_file"] = os.path.relpath(GUNICORN_CONF, ROOT) if os.path.exists(GUNICORN_CONF) else None
    return settings


def stop(proc: subprocess.Popen, grace: float = 10.0):
    """Stop a child started by this module: SIGTERM, then SIGKILL to its own process group."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers left behind, if any (the group is ours)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def php_fpm_binary() -> str:
    found = sorted(glob.glob("/usr/sbin/php-fpm*")) or [shutil.which("php-fpm")]
    if not found or not found[0]:
        raise ServiceError("php-fpm is not installed: apt-get install -y php-fpm php-mysql")
    return found[-1]


def nginx_binary() -> str:
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(path):
        raise ServiceError("nginx is not installed: apt-get install -y nginx-light")
    return path
