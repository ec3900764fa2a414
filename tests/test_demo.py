"""What a newcomer copies works as printed: the demo's commands and the example files of conf/."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from gunicorn_helpers import GunicornServer
from helpers import free_port

from shim.demo.stack import ServerThread
from shim.demo.standin import LegacyStandin

ROOT = Path(__file__).resolve().parents[1]


# --- the demo -------------------------------------------------------------------------------


def _lines(stream, sink):
    for line in stream:
        sink.put(line)
    sink.put(None)


def _json_body(out):
    return json.loads(out)


def _stream_rows(out):
    lines = out.split("\n")
    assert lines[-1].startswith("LAST_SEQ:") and int(lines[-1].split(":")[1]) > 0
    return [json.loads(line) for line in lines[:-1] if line]


def _success(out):
    assert 'type="SUCCESS"' in out


def _health(out):
    assert _json_body(out) == {"status": "ok", "checks": {"database": "ok", "upstream": "ok"}}


def _feed(out):
    rows = _stream_rows(out)
    assert {(r["type"], r["target"]) for r in rows} == {("create", "/docs"), ("create", "/docs/résumé.txt")}
    assert "r\\u00e9sum\\u00e9.txt" in out  # escaped as PHP prints it


def _filtered(out):
    body = _json_body(out)
    assert [(r["type"], r["target"]) for r in body["changes"]] == [("create", "/résumé.txt")]


def _since(out):
    rows = _stream_rows(out)
    assert [(r["type"], r["source"], r["target"]) for r in rows] == [("path", "/docs/résumé.txt", "/docs/cv.txt")]


def _token(out):
    body = _json_body(out)
    assert set(body) == {"t", "p"} and all(re.fullmatch(r"[0-9a-f]{32}", v) for v in body.values())


def _refused(out):
    assert out.startswith("HTTP/1.1 401")
    assert 'WWW-Authenticate: Basic realm="Pydio API"' in out


def _not_authorized(out):
    assert out.startswith("HTTP/1.1 401")
    assert out.endswith("You are not authorized to access this API.")
    assert '"seq"' not in out


def _metrics(out):
    values = dict(line.rsplit(" ", 1) for line in out.strip().split("\n"))
    assert float(values['shim_feed_requests_total{status="200"}']) >= 3


# What each printed command must do, by its comment.  A command without an entry fails
# the test: a new example needs an expectation.
EXPECTATIONS = {
    "health of the shim": _health,
    "create a folder": _success,
    "create a file": _success,
    "the change feed, as the desktop client reads it": _feed,
    "the same feed as JSON, filtered to /docs": _filtered,
    "rename the file": _success,
    "changes since seq 2": _since,
    "a key-store token for a device": _token,
    "as the admin, remove the demo user's right": _success,
    "the feed a second later: the legacy refusal": _not_authorized,
    "give the right back": _success,
    "a wrong password: the legacy 401": _refused,
    "metrics": _metrics,
}


@pytest.mark.parametrize("prefix", ["", "/pydio"])
def test_every_printed_demo_command_works(tmp_path, prefix):
    workdir = tmp_path / "demo"
    workdir.mkdir()
    command = [sys.executable, "-m", "shim.cli", "demo", "--workdir", str(workdir)]
    if prefix:
        command += ["--prefix", prefix]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYDIO_SHIM_")}
    with open(tmp_path / "demo-stderr.log", "wb") as errors:
        demo = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
        lines = queue.Queue()
        threading.Thread(target=_lines, args=(demo.stdout, lines), daemon=True).start()
        try:
            printed = []
            deadline = time.monotonic() + 60
            while not printed or printed[-1].strip() != "Ctrl-C stops the demo.":
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                assert line is not None, "the demo exited:\n" + "".join(printed)
                printed.append(line)
            commands = []
            for comment, line in zip(printed, printed[1:], strict=False):
                if comment.startswith("  # ") and line.startswith(("  curl ", "  sleep ")):
                    commands.append((comment[4:].strip(), line.strip()))
            assert len(commands) == len(EXPECTATIONS)
            for what, shell_command in commands:
                check = next((f for key, f in EXPECTATIONS.items() if what.startswith(key)), None)
                assert check is not None, f"no expectation for the demo command {what!r}"
                result = subprocess.run(shell_command, shell=True, capture_output=True, text=True, timeout=30)
                assert result.returncode == 0, (what, shell_command, result.stderr)
                check(result.stdout.replace("\r\n", "\n"))
        finally:
            demo.send_signal(signal.SIGINT)
            try:
                status = demo.wait(20)
            except subprocess.TimeoutExpired:
                demo.kill()
                raise
    assert status == 0


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            children = [int(c) for c in fh.read().split()]
    except FileNotFoundError:
        return found
    for child in children:
        found |= {child} | _descendants(child)
    return found


@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGHUP])
def test_a_demo_stopped_by_a_signal_stops_its_children(tmp_path, stop_with):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYDIO_SHIM_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "shim.cli", "demo", "--port", str(port), "--workdir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/_shim/health", timeout=2)
                break
            except requests.RequestException:
                assert demo.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        children = _descendants(demo.pid)
        assert children, "the demo runs gunicorn as its child"
        demo.send_signal(stop_with)
        assert demo.wait(30) == 0
        deadline = time.monotonic() + 15
        while any(
            os.path.exists(f"/proc/{pid}") and "zombie" not in open(f"/proc/{pid}/status").read().lower()
            for pid in children
        ):
            assert time.monotonic() < deadline, f"left running after {stop_with.name}: {children}"
            time.sleep(0.1)
    finally:
        if demo.poll() is None:
            demo.kill()


# --- conf/shim.example.toml, Procfile, the systemd unit ------------------------------------------


def test_procfile_serves_on_the_platform_port():
    assert (ROOT / "Procfile").read_text() == "web: pydio-shim serve --bind 0.0.0.0:$PORT\n"


def test_systemd_unit_is_valid(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = (ROOT / "conf" / "pydio-shim.service").read_text()
    assert "ExecStart=/opt/pydio-shim/venv/bin/pydio-shim serve --bind 127.0.0.1:8080" in text
    assert "Environment=PYDIO_SHIM_CONFIG=" in text
    # Verified with this checkout's executable and an existing user in place of the install's.
    local = (
        text.replace("/opt/pydio-shim/venv/bin/pydio-shim", str(ROOT / ".venv" / "bin" / "pydio-shim"))
        .replace("User=pydio-shim", "User=root")
        .replace("Group=pydio-shim", "Group=root")
    )
    unit = tmp_path / "pydio-shim.service"
    unit.write_text(local)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- conf/nginx.example.conf -------------------------------------------------------------------------


def nginx_main_config(tmp_path, include: Path) -> Path:
    """A complete nginx.conf, all paths in *tmp_path*, including *include* in its http block."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    main = tmp_path / "nginx.conf"
    main.write_text(f"""{user}daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/client_body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    include {include};
}}
""")
    return main


def test_nginx_example_passes_nginx_t(tmp_path, nginx_binary):
    main = nginx_main_config(tmp_path, ROOT / "conf" / "nginx.example.conf")
    result = subprocess.run([nginx_binary, "-t", "-c", str(main), "-p", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def _substitute(text, old, new):
    assert old in text, f"the example no longer contains {old!r}: update this test"
    return text.replace(old, new)


@pytest.fixture
def nginx_in_front(tmp_path, nginx_binary):
    """The example nginx config, ports and roots made local, before gunicorn + the shim + the stand-in."""
    database_url = f"sqlite:///{tmp_path}/pydio.db"
    legacy = LegacyStandin(database_url, str(tmp_path / "data"))
    legacy.install()
    legacy.add_user("alice", "alice-secret")
    legacy_server = ServerThread(legacy).start()
    shim = GunicornServer(
        {"PYDIO_SHIM_UPSTREAM_URL": legacy_server.url, "PYDIO_SHIM_DATABASE_URL": database_url}, tmp_path
    ).start()
    www = tmp_path / "www"
    (www / "pydio" / "plugins" / "gui.ajax" / "res").mkdir(parents=True)
    (www / "pydio" / "plugins" / "gui.ajax" / "res" / "app.css").write_text("body{}")
    (www / "pydio" / "conf").mkdir()
    (www / "pydio" / "conf" / "bootstrap.css").write_text("secret")
    (www / "pydio" / ".htaccess").write_text("secret")
    port = free_port()
    text = (ROOT / "conf" / "nginx.example.conf").read_text()
    text = _substitute(text, "listen 80;", f"listen 127.0.0.1:{port};")
    text = _substitute(text, "server 127.0.0.1:8080;", f"server 127.0.0.1:{shim.port};")
    text = _substitute(text, "root /var/www/pydio;", f"root {www}/pydio;")
    text = _substitute(text, "root /var/www;", f"root {www};")
    site = tmp_path / "site.conf"
    site.write_text(text)
    main = nginx_main_config(tmp_path, site)
    nginx = subprocess.Popen([nginx_binary, "-c", str(main), "-p", str(tmp_path)], stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(url + "/_shim/health", headers={"Host": "pydio.example.com"}, timeout=1)
                break
            except requests.RequestException:
                assert nginx.poll() is None and time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield url, legacy
    finally:
        nginx.send_signal(signal.SIGTERM)
        nginx.wait(10)
        shim.stop()
        legacy_server.stop()
        legacy.engine.dispose()


@pytest.mark.parametrize(
    "host,base", [("pydio.example.com", ""), ("www.example.com", "/pydio")], ids=["at-root", "under-subpath"]
)
def test_nginx_example_in_front_of_the_shim(nginx_in_front, host, base):
    url, legacy = nginx_in_front
    headers = {"Host": host}
    auth = ("alice", "alice-secret")

    def get(path, **kwargs):
        return requests.get(url + base + path, headers=headers, allow_redirects=False, **kwargs)

    health = get("/_shim/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"

    # The sync client's round trip: a file op forwarded, the feed answered, a download streamed.
    created = requests.post(
        f"{url}{base}/api/default/mkfile/photo.png", data={"content": "png bytes"}, headers=headers, auth=auth
    )
    assert created.status_code == 200 and 'type="SUCCESS"' in created.text
    feed = get("/api/default/changes/0", params={"stream": "true"}, auth=auth)
    assert feed.status_code == 200 and feed.text.endswith("\nLAST_SEQ:1")
    assert '"target":"\\/photo.png"' in feed.text
    # A name that looks static but is no file on disk goes to the shim (try_files).
    download = get("/api/default/download/photo.png", auth=auth)
    assert download.status_code == 200 and download.content == b"png bytes"

    # Static files come from disk, without the shim or PHP seeing them.
    seen = len(legacy.log)
    static = get("/plugins/gui.ajax/res/app.css")
    assert static.status_code == 200 and static.text == "body{}"
    assert "expires" in {k.lower() for k in static.headers}
    assert len(legacy.log) == seen

    # The deny list, also for names the static rule would otherwise serve.
    for path in (
        "/conf/bootstrap.css",
        "/conf/bootstrap.json",
        "/CONF/x",
        "/core/src/x.php",
        "/data/files/a.txt",
        "/data/personal/alice/a.txt",
        "/.htaccess",
        "/plugins/editor.zoho/agent/files/x",
        "/plugins/x/../../conf/bootstrap.css",
    ):
        response = requests.get(url + base + path, headers=headers)
        assert response.status_code == 403, (path, response.status_code)
    assert len(legacy.log) == seen

    if base:
        redirect = requests.get(url + base, headers=headers, allow_redirects=False)
        assert redirect.status_code == 301 and redirect.headers["Location"] == f"http://{host}{base}/"
        # Outside the subpath nginx serves the rest of the site, not the shim.
        assert requests.get(url + "/api/default/changes/0", headers=headers, auth=auth).status_code == 404
