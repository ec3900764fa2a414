"""What ``pip install`` of the wheel gets, outside any checkout: the shipped gunicorn configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import requests
from helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtualenv in another directory with the shim's wheel installed (its dependencies shared)."""
    base = tmp_path_factory.mktemp("installed")
    wheels = base / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
    )
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # The dependencies come from the test environment's site-packages, added as a
    # plain path: its .pth files (the checkout's editable install) are not read.
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    wheel = next(wheels.glob("pydio_shim-*.whl"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    return venv


def test_the_wheel_runs_serve_with_the_shipped_configuration(installed, tmp_path, sqlite_standin):
    where = subprocess.run(
        [installed / "bin" / "python", "-c", "import shim, sys; print(shim.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    assert str(installed) in where and str(ROOT) not in where, where
    port = free_port()
    env = {
        "PATH": f"{installed / 'bin'}:/usr/bin:/bin",
        "PYDIO_SHIM_UPSTREAM_URL": sqlite_standin.url,
        "PYDIO_SHIM_DATABASE_URL": sqlite_standin.db_url,
        "PYDIO_SHIM_SERVER_THREADS": "4",
    }
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        master = subprocess.Popen(
            [installed / "bin" / "pydio-shim", "serve", "--bind", f"127.0.0.1:{port}"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/_shim/health", timeout=5)
                break
            except requests.RequestException:
                assert master.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert health.status_code == 200
        with open(f"/proc/{master.pid}/task/{master.pid}/children") as fh:
            workers = [int(pid) for pid in fh.read().split()]
        # The shipped configuration: one gthread worker per core, at least two (not gunicorn's one sync worker).
        assert len(workers) == max(2, os.cpu_count() or 1)
        text = log.read_text()
        assert "Using worker: shim.gunicorn_worker.ShimThreadWorker" in text
        requests.get(f"http://127.0.0.1:{port}/_shim/health?auth_token=SECRET", timeout=5)
        deadline = time.monotonic() + 5
        while "INFO shim.access:" not in log.read_text():  # the shim's own access log is on
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert "SECRET" not in log.read_text()
    finally:
        master.send_signal(signal.SIGTERM)
        master.wait(30)
