"""End to end through real nginx -> gunicorn -> shim -> legacy stand-in.

For each combination of public prefix (where nginx mounts the shim) and
upstream prefix (where the legacy server lives), a browser login, its cookie,
token-signed requests, the change feed and a download must all work.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import requests
from gunicorn_helpers import GunicornServer
from helpers import client_sign, free_port

from shim import db
from shim.demo.stack import ServerThread
from shim.demo.standin import LegacyStandin

USER, PASSWORD = "alice", "alice-secret"

NGINX_CONF = """
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location {location} {{
            proxy_pass http://127.0.0.1:{gport};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Prefix {prefix};
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def wait_http(url, proc=None, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            return requests.get(url, timeout=1)
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(
    scope="module",  # one stack per prefix pair, shared by the tests of that pair (each uses its own files)
    params=[("", ""), ("/pydio", ""), ("", "/pydio"), ("/pydio", "/legacy")],
    ids=["pub=/,up=/", "pub=/pydio,up=/", "pub=/,up=/pydio", "pub=/pydio,up=/legacy"],
)
def stack(request, nginx_binary, tmp_path_factory):
    public, upstream = request.param
    tmp_path = tmp_path_factory.mktemp("stack")
    db_url = f"sqlite:///{tmp_path}/pydio.db"
    standin = LegacyStandin(db_url, str(tmp_path / "data"), prefix=upstream or "/")
    standin.install()
    standin.add_user(USER, PASSWORD)
    legacy = ServerThread(standin).start()
    nport = free_port()
    env = {
        "PYDIO_SHIM_UPSTREAM_URL": legacy.url,
        "PYDIO_SHIM_UPSTREAM_PREFIX": upstream or "/",
        "PYDIO_SHIM_DATABASE_URL": db_url,
    }
    shim = GunicornServer(env, tmp_path, threads=4)
    nginx = None
    try:
        shim.start()
        conf = tmp_path / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                tmp=tmp_path,
                port=nport,
                gport=shim.port,
                location=(public + "/") if public else "/",
                prefix=public or "/",
            )
        )
        nginx = subprocess.Popen([nginx_binary, "-c", str(conf), "-p", str(tmp_path)])
        wait_http(f"http://127.0.0.1:{nport}/", nginx)
        yield {
            "public": public,
            "upstream": upstream,
            "url": f"http://127.0.0.1:{nport}{public}",
            "standin": standin,
            "legacy": legacy,
            "origin": f"http://127.0.0.1:{nport}",
        }
    finally:
        if nginx is not None:
            stop(nginx)
        shim.stop()
        legacy.stop()
        standin.engine.dispose()


def test_login_redirect_and_cookie_path(stack):
    session = requests.Session()
    response = session.post(
        stack["url"] + "/?get_action=login", data={"userid": USER, "password": PASSWORD}, allow_redirects=False
    )
    assert response.status_code == 302
    assert response.headers["Location"] == stack["origin"] + stack["public"] + "/"
    cookie = response.headers["Set-Cookie"]
    assert f"path={stack['public'] or '/'};" in cookie or f"path={stack['public']}/;" in cookie
    page = session.get(stack["url"] + "/")
    assert 'data-user="alice"' in page.text  # the cookie came back on the public path
    # The boot page's base (a path, as Pydio 8.2.5 writes it) and its absolute URLs name the public base.
    assert f'<base href="{stack["public"]}/"/>' in page.text
    assert f'window.ajxpServerAccess = "{stack["origin"]}{stack["public"]}/index.php"' in page.text


def test_file_ops_feed_and_download(stack):
    auth = (USER, PASSWORD)
    api = stack["url"] + "/api/default"
    assert requests.post(api + "/mkfile/notes%20%C3%A9t%C3%A9.txt", data={"content": "hello"}, auth=auth).ok
    body = requests.get(api + "/changes/0", params={"stream": "true", "flatten": "true"}, auth=auth).text
    assert body.endswith("\nLAST_SEQ:1")
    assert '"target":"\\/notes \\u00e9t\\u00e9.txt"' in body
    download = requests.get(api + "/download/notes%20%C3%A9t%C3%A9.txt", auth=auth)
    assert download.status_code == 200 and download.content == b"hello"
    # The feed was answered by the shim: the legacy server saw only the probe.
    changes_calls = [uri for method, uri in stack["standin"].log if "/changes/" in uri]
    assert changes_calls and all("/changes/9007199254740991" in uri for uri in changes_calls)


def test_token_signed_requests(stack):
    tokens = requests.get(stack["url"] + "/api/pydio/keystore_generate_auth_token/laptop", auth=(USER, PASSWORD)).json()
    requests.post(stack["url"] + "/api/default/mkdir/docs", auth=(USER, PASSWORD))
    public_path = stack["public"] + "/api/default/ls/docs"
    response = requests.get(
        stack["origin"] + public_path,
        params={"auth_token": tokens["t"], "auth_hash": client_sign(public_path, tokens["t"], tokens["p"])},
    )
    assert response.status_code == 200 and "<tree" in response.text
    feed_path = stack["public"] + "/api/default/changes/0"
    feed = requests.get(
        stack["origin"] + feed_path,
        params={
            "stream": "true",
            "auth_token": tokens["t"],
            "auth_hash": client_sign(feed_path, tokens["t"], tokens["p"]),
        },
    )
    with stack["standin"].engine.connect() as conn:  # the stack is shared: other tests' rows come first
        top = db.max_seq(conn)
    assert feed.status_code == 200 and feed.text.endswith(f"LAST_SEQ:{top}") and '"target":"\\/docs"' in feed.text
    # POST with the token in form fields (how the client uploads).
    post_path = stack["public"] + "/api/default/mkfile/docs/a.txt"
    created = requests.post(
        stack["origin"] + post_path,
        data={"auth_token": tokens["t"], "auth_hash": client_sign(post_path, tokens["t"], tokens["p"])},
    )
    assert created.status_code == 200 and "SUCCESS" in created.text
    if stack["public"] != stack["upstream"]:
        # Sent straight to the legacy server, the same signature is refused:
        # the shim really re-signed it for the upstream path.
        direct = requests.get(
            stack["legacy"].url + stack["upstream"] + "/api/default/ls/docs",
            params={"auth_token": tokens["t"], "auth_hash": client_sign(public_path, tokens["t"], tokens["p"])},
        )
        assert direct.status_code == 401
