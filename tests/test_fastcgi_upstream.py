"""Through gunicorn and the shim's FastCGI upstream to a real php-fpm.

PHP must see exactly what a correctly configured Pydio web server would give
it: every request on ``index.php`` with ``REQUEST_URI`` as the client sent it,
``SCRIPT_NAME`` under the upstream prefix, credentials in ``PHP_AUTH_*`` and a
``CONTENT_LENGTH`` for every body, chunked ones included.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os

import pytest
import requests
from gunicorn_helpers import GunicornServer

from shim import db, schema


@pytest.fixture(scope="module", params=["unix", "tcp"])
def shim_on_fpm(request, php_fpm, tmp_path_factory):
    """A gunicorn shim in front of php-fpm, shared by the module's tests (they only send requests)."""
    tmp_path = tmp_path_factory.mktemp("fpm-shim")
    database = f"sqlite:///{tmp_path}/pydio.db"
    engine = db.create_engine(database)
    with engine.begin() as conn:
        db.create_conf_tables(conn)
        schema.install_syncable_schema(conn)
    engine.dispose()
    (php_fpm.docroot / "plugins").mkdir(exist_ok=True)
    (php_fpm.docroot / "plugins" / "app.js").write_text("console.log('static');\n")
    env = {
        "PYDIO_SHIM_UPSTREAM_URL": php_fpm.unix_url if request.param == "unix" else php_fpm.tcp_url,
        "PYDIO_SHIM_UPSTREAM_DOCUMENT_ROOT": str(php_fpm.docroot),
        "PYDIO_SHIM_UPSTREAM_PREFIX": "/pydio",
        "PYDIO_SHIM_DATABASE_URL": database,
    }
    with GunicornServer(env, tmp_path) as server:
        server.docroot = os.path.realpath(php_fpm.docroot)
        yield server


def info(response) -> dict:
    assert response.status_code == 200, response.text
    return json.loads(response.content)


def test_get_reaches_index_php_with_the_raw_uri(shim_on_fpm):
    seen = info(requests.get(shim_on_fpm.url + "/api/default/ls/a%2Fb+c%C3%A9?x=1+2&y=%2F"))
    assert seen["REQUEST_URI"] == "/pydio/api/default/ls/a%2Fb+c%C3%A9?x=1+2&y=%2F"
    assert seen["SCRIPT_NAME"] == "/pydio/index.php"
    assert seen["SCRIPT_FILENAME"] == os.path.join(shim_on_fpm.docroot, "index.php")
    assert seen["QUERY_STRING"] == "x=1+2&y=%2F"
    assert seen["REQUEST_METHOD"] == "GET" and seen["CONTENT_LENGTH"] == "0"
    assert seen["HTTP_HOST"].startswith("127.0.0.1:")


def test_basic_credentials_always_reach_php(shim_on_fpm):
    seen = info(requests.get(shim_on_fpm.url + "/api/default/ls/", auth=("alice", "s3cr:et")))
    assert seen["PHP_AUTH_USER"] == "alice" and seen["PHP_AUTH_PW"] == "s3cr:et"
    assert seen["HTTP_AUTHORIZATION"].startswith("Basic ")


def test_large_post_streams_with_its_length(shim_on_fpm):
    size = 24 * 1024 * 1024
    block = bytes(range(256)) * 256
    digest = hashlib.md5()
    for _offset in range(0, size, len(block)):
        digest.update(block)

    def body():
        for _ in range(0, size, len(block)):
            yield block

    # A generator without a length goes out chunked: the shim spools it and sends a length.
    seen = info(
        requests.post(
            shim_on_fpm.url + "/api/default/upload/put/docs",
            data=body(),
            headers={"Content-Type": "application/octet-stream"},
        )
    )
    assert seen["CONTENT_LENGTH"] == str(size) and seen["INPUT_LENGTH"] == size
    assert seen["INPUT_MD5"] == digest.hexdigest()
    # With a Content-Length, the same length arrives.
    conn = http.client.HTTPConnection("127.0.0.1", shim_on_fpm.port, timeout=60)
    conn.putrequest("POST", "/api/default/upload/put/docs")
    conn.putheader("Content-Length", str(size))
    conn.putheader("Content-Type", "application/octet-stream")
    conn.endheaders()
    for chunk in body():
        conn.send(chunk)
    response = conn.getresponse()
    seen = json.loads(response.read())
    assert seen["CONTENT_LENGTH"] == str(size) and seen["INPUT_MD5"] == digest.hexdigest()


def test_status_cookies_and_static_files(shim_on_fpm):
    response = requests.get(shim_on_fpm.url + "/?mode=status")
    assert response.status_code == 418
    assert response.raw.headers.getlist("Set-Cookie") == ["first=1; Path=/", "second=2; Path=/"]
    static = requests.get(shim_on_fpm.url + "/plugins/app.js")
    assert static.status_code == 200 and static.text == "console.log('static');\n"
    assert requests.get(shim_on_fpm.url + "/conf/bootstrap.php").status_code == 403


@pytest.mark.parametrize("code", [100, 101, 102, 103, 199])
def test_a_script_s_interim_status_is_no_final_answer(shim_on_fpm, code):
    """Relayed, a 1xx would leave the client waiting for the answer after it (and 101 switch protocols)."""
    response = requests.get(shim_on_fpm.url + f"/?mode=code&code={code}")
    assert response.status_code == 502
    assert "injected" not in response.headers.get("Set-Cookie", "") and b"evil" not in response.content


def test_a_control_character_in_a_script_s_reason_phrase_is_a_502(shim_on_fpm):
    response = requests.get(shim_on_fpm.url + "/?mode=reason")
    assert response.status_code == 502 and response.content.startswith(b"pydio-shim: ")


def test_php_fpm_down_is_a_502(php_fpm, tmp_path):  # noqa: F811
    env = {
        "PYDIO_SHIM_UPSTREAM_URL": f"fcgi://{tmp_path}/nothing.sock",
        "PYDIO_SHIM_UPSTREAM_DOCUMENT_ROOT": str(php_fpm.docroot),
        "PYDIO_SHIM_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
    }
    with GunicornServer(env, tmp_path) as server:
        response = requests.get(server.url + "/api/default/ls/")
        assert response.status_code == 502
        assert "php-fpm" in response.text


def test_php_sources_and_odd_paths_are_never_served_as_files(shim_on_fpm):
    secret = shim_on_fpm.docroot + "/plugins/secret.php"
    with open(secret, "w") as fh:
        fh.write("<?php echo 'ran';\n")
    for path in (
        "/plugins/secret.php",
        "/plugins/secret.php/",
        "/plugins/secret.php/.",
        "/plugins/secret.php%2F",
        "/plugins/./secret.php",
    ):
        response = requests.get(shim_on_fpm.url + path)
        assert b"<?php" not in response.content, path
        assert response.status_code != 500, path
    # Bytes that are not UTF-8, and a Host header whose port is not a number.
    assert requests.get(shim_on_fpm.url + "/plugins/a%ff.js").status_code != 500
    odd_host = requests.get(shim_on_fpm.url + "/api/default/ls/", headers={"Host": "files.example.org:x1"})
    assert odd_host.status_code == 200 and info(odd_host)["HTTP_HOST"] == "localhost"  # not a host name


def test_php_sees_the_client_address_behind_the_trusted_proxy(shim_on_fpm):
    """REMOTE_ADDR is the client's, as nginx's real_ip would set it: never the proxy's (one counter for all)."""
    # The test is a trusted proxy (loopback) forwarding for 203.0.113.7 through another trusted hop.
    seen = info(requests.get(shim_on_fpm.url + "/api/default/ls/", headers={"X-Forwarded-For": "203.0.113.7, ::1"}))
    assert seen["REMOTE_ADDR"] == "203.0.113.7"
    # Forged hops left of an untrusted one do not count: the first untrusted address from the right is the client.
    seen = info(
        requests.get(shim_on_fpm.url + "/api/default/ls/", headers={"X-Forwarded-For": "10.9.9.9, 198.51.100.4"})
    )
    assert seen["REMOTE_ADDR"] == "198.51.100.4"
    seen = info(requests.get(shim_on_fpm.url + "/api/default/ls/"))  # no forwarding: the peer itself
    assert seen["REMOTE_ADDR"] == "127.0.0.1"


def test_php_never_gets_a_host_that_is_not_a_host_name(shim_on_fpm):
    """PHP builds its page URLs from the Host it is given: a forged one is replaced, a valid one kept."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", int(shim_on_fpm.url.rsplit(":", 1)[1]), timeout=10)
    conn.putrequest("GET", "/api/default/ls/", skip_host=True)
    conn.putheader("Host", 'x"><b>')
    conn.endheaders()
    body = json.loads(conn.getresponse().read())
    conn.close()
    assert body["HTTP_HOST"] == "localhost"
    seen = info(requests.get(shim_on_fpm.url + "/api/default/ls/", headers={"Host": "files.example.org"}))
    assert seen["HTTP_HOST"] == "files.example.org"
