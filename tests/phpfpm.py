"""A real php-fpm for tests: started per test session on a Unix socket and a TCP port.

Its document root holds a small ``index.php`` that reports what PHP sees
(``REQUEST_URI``, ``SCRIPT_NAME``, credentials, the body's md5...) and can echo,
stream or sleep, so tests can compare it with what a correctly configured
web server would hand to Pydio.
"""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port

INDEX_PHP = r"""<?php
$mode = $_GET['mode'] ?? 'info';
if ($mode === 'echo') {
    header('Content-Type: application/octet-stream');
    $in = fopen('php://input', 'rb');
    while (($data = fread($in, 8192)) !== false && $data !== '') {
        echo $data;
        flush();
    }
    exit;
}
if ($mode === 'status') {
    http_response_code(418);
    header('Set-Cookie: first=1; Path=/', false);
    header('Set-Cookie: second=2; Path=/', false);
    echo 'teapot';
    exit;
}
if ($mode === 'big') {
    header('Content-Type: application/octet-stream');
    $n = (int)$_GET['n'];
    $block = str_repeat(implode('', array_map('chr', range(0, 255))), 256);
    while ($n > 0) {
        $piece = $n >= strlen($block) ? $block : substr($block, 0, $n);
        echo $piece;
        flush();
        $n -= strlen($piece);
    }
    exit;
}
if ($mode === 'code') {  // a script setting an interim status, output that looks like an answer
    http_response_code((int)$_GET['code']);
    header('Set-Cookie: sess=ALICE');
    echo "HTTP/1.1 200 OK\r\nSet-Cookie: injected=1\r\nContent-Length: 4\r\n\r\nevil";
    exit;
}
if ($mode === 'reason') {
    header("Status: 200 O\x01K");
    echo 'odd';
    exit;
}
if ($mode === 'sleep') {
    sleep((int)$_GET['s']);
    echo 'late';
    exit;
}
$md5 = hash_init('md5');
$length = 0;
$in = fopen('php://input', 'rb');
while (($data = fread($in, 65536)) !== false && $data !== '') {
    hash_update($md5, $data);
    $length += strlen($data);
}
$out = [];
foreach (['REQUEST_URI', 'SCRIPT_NAME', 'SCRIPT_FILENAME', 'PHP_SELF', 'PHP_AUTH_USER', 'PHP_AUTH_PW',
          'HTTP_AUTHORIZATION', 'REQUEST_METHOD', 'QUERY_STRING', 'CONTENT_LENGTH', 'CONTENT_TYPE',
          'HTTPS', 'HTTP_HOST', 'HTTP_PROXY', 'REMOTE_ADDR', 'HTTP_X_FORWARDED_FOR'] as $key) {
    $out[$key] = $_SERVER[$key] ?? null;
}
$out['REQUEST_URI_HEX'] = bin2hex($_SERVER['REQUEST_URI'] ?? '');
$out['QUERY_STRING_HEX'] = bin2hex($_SERVER['QUERY_STRING'] ?? '');
$out['GET'] = $_GET;
$out['INPUT_MD5'] = hash_final($md5);
$out['INPUT_LENGTH'] = $length;
header('Content-Type: application/json');
echo json_encode($out, JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE);
"""

FPM_POOL = """
[{name}]
{user}
listen = {listen}
pm = static
pm.max_children = 2
clear_env = no
catch_workers_output = yes
decorate_workers_output = no
php_admin_value[post_max_size] = 256M
php_admin_value[memory_limit] = 128M
php_admin_flag[log_errors] = on
"""


class PhpFpm:
    def __init__(self, root: Path, docroot: Path, unix_socket: Path, port: int) -> None:
        self.root, self.docroot = root, docroot
        self.unix_url = f"fcgi://{unix_socket}"
        self.tcp_url = f"fcgi://127.0.0.1:{port}"
        self.log = root / "fpm.log"


def die_with_parent() -> None:
    """In the child: ask Linux to end php-fpm if pytest itself is killed."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def find_php_fpm() -> str | None:
    candidates = sorted(glob.glob("/usr/sbin/php-fpm*")) or [shutil.which("php-fpm") or ""]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="session")
def php_fpm(tmp_path_factory):
    binary = find_php_fpm()
    if binary is None:
        message = "php-fpm is not installed: run tests/services/install-php-fpm.sh"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("php-fpm")
    docroot = root / "pydio"
    docroot.mkdir()
    (docroot / "index.php").write_text(INDEX_PHP)
    unix_socket, port = root / "fpm.sock", free_port()
    as_root = os.geteuid() == 0
    user = "user = root\ngroup = root" if as_root else ""
    conf = root / "php-fpm.conf"
    conf.write_text(
        f"[global]\npid = {root}/fpm.pid\nerror_log = {root}/fpm.log\ndaemonize = no\n"
        + FPM_POOL.format(name="unix", user=user, listen=unix_socket)
        + FPM_POOL.format(name="tcp", user=user, listen=f"127.0.0.1:{port}")
    )
    command = [binary, "-F", "-y", str(conf)] + (["-R"] if as_root else [])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)  # noqa: PLW1509 - only prctl(), safe before exec
    fpm = PhpFpm(root, docroot, unix_socket, port)

    def log() -> str:
        out = process.stdout.read().decode(errors="replace") if process.poll() is not None else ""
        return out + (fpm.log.read_text(errors="replace") if fpm.log.exists() else "")

    deadline = time.monotonic() + 20
    for family, address in ((socket.AF_UNIX, str(unix_socket)), (socket.AF_INET, ("127.0.0.1", port))):
        while True:
            if process.poll() is not None:
                pytest.fail(f"php-fpm exited with {process.returncode}:\n{log()}", pytrace=False)
            try:
                with socket.socket(family) as probe:
                    probe.connect(address)
                break
            except OSError:
                if time.monotonic() > deadline:
                    process.kill()
                    pytest.fail(f"php-fpm did not listen on {address}:\n{log()}", pytrace=False)
                time.sleep(0.05)
    try:
        yield fpm
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
