"""A real gunicorn serving ``shim.wsgi:application``, for tests.

The production configuration shipped in the package (``shim/gunicorn_conf.py``)
is used as is, with the command line narrowing it to one worker of 8 threads
(or as many as the test asks for) on a loopback port chosen by the test; the shim
itself is configured through ``PYDIO_SHIM_*``
environment variables.  Usage::

    with GunicornServer({"PYDIO_SHIM_UPSTREAM_URL": url, "PYDIO_SHIM_DATABASE_URL": db}, log_dir) as shim:
        requests.get(shim.url + "/_shim/health")
        shim.worker_pid()  # the worker process, child of the master
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = "python:shim.gunicorn_conf"


class GunicornServer:
    """One gunicorn master with its workers (one by default), started and stopped by the test."""

    def __init__(
        self, env: dict[str, str], log_dir, threads: int = 8, health_path: str = "/_shim/health", workers: int = 1
    ):
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PYDIO_SHIM_")}
        self.env.update(env)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.threads = threads
        self.workers = workers
        self.health_path = health_path
        self.log_path = os.path.join(str(log_dir), f"gunicorn-{os.getpid()}-{time.monotonic_ns()}.log")
        self.process = None
        self.port = None
        self.url = None

    # --- life cycle ------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> GunicornServer:
        # The listening socket is made here and handed over (fd://): its port is
        # known at once and no other process can take it in between.
        listener = socket.create_server(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            CONF,
            "--bind",
            f"fd://{listener.fileno()}",
            "--workers",
            str(self.workers),
            "--threads",
            str(self.threads),
            "shim.wsgi:application",
        ]
        self._log = open(self.log_path, "wb")
        self._out = open(self.log_path + ".stdout", "wb")
        try:
            self.process = subprocess.Popen(
                command, env=self.env, cwd=ROOT, stdout=self._out, stderr=self._log, pass_fds=[listener.fileno()]
            )
        finally:
            listener.close()
        deadline = time.monotonic() + timeout
        # The first request builds the application in the worker: wait until it answers.
        while True:
            self._check_alive()
            try:
                requests.get(self.url + self.health_path, timeout=5)
                return self
            except requests.RequestException:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"gunicorn did not answer {self.health_path}:\n{self.log()}") from None
                time.sleep(0.05)

    def stop(self):
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        self._log.close()
        self._out.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _check_alive(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with status {self.process.returncode}:\n{self.log()}")

    # --- inspection ------------------------------------------------------------------

    def log(self) -> str:
        """What gunicorn and the shim wrote to stderr so far (their logs)."""
        with open(self.log_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")

    def stdout(self) -> str:
        """What they wrote to stdout so far (nothing is expected there)."""
        with open(self.log_path + ".stdout", "rb") as fh:
            return fh.read().decode("utf-8", "replace")

    def worker_pids(self) -> list[int]:
        """The PIDs of the workers: the child processes of the gunicorn master."""
        with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as fh:
            return [int(pid) for pid in fh.read().split()]

    def worker_pid(self) -> int:
        """The PID of the (single) worker."""
        children = self.worker_pids()
        if len(children) != 1:
            raise RuntimeError(f"expected one gunicorn worker, found {children}")
        return children[0]


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of process *pid*, in KiB, from ``/proc``."""
    values = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values
