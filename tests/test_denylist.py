"""Protected paths of a Pydio install are refused with 403 before reaching the legacy server.

Each spelling is sent byte for byte through a real gunicorn; the stand-in's
request log proves nothing was forwarded.  Look-alikes that are not protected
must be forwarded unchanged.  Under a public prefix the same list applies
relative to the prefix, and paths outside the prefix are never forwarded.
"""

from __future__ import annotations

import socket
import string
from urllib.parse import quote

import pytest
from gunicorn_helpers import GunicornServer
from hypothesis import given, settings
from hypothesis import strategies as st

from shim import denylist

FORBIDDEN = [
    "/conf/bootstrap.php",
    "/CONF/",
    "/conf",
    "/%63onf/bootstrap.php",
    "/%2563onf/bootstrap.php",  # encoded twice
    "/%252563onf/bootstrap.php",  # three times
    "//conf/bootstrap.php",
    "/./conf/bootstrap.php",
    "/%2e/conf/bootstrap.php",
    "/x/../conf/bootstrap.php",
    "/x/%2E%2E/conf/bootstrap.php",
    "/index.php/..%2fconf/bootstrap.php",
    "/conf;x/a",
    "/conf%3Bx/a",
    "/\\conf\\bootstrap.php",
    "/%5Cconf/bootstrap.php",
    "/conf%2fbootstrap.php",
    "/conf./bootstrap.php",  # Windows drops trailing dots
    "/conf::$DATA/bootstrap.php",  # and reads NTFS streams
    "/data/files/x",
    "/data/Files/X",
    "/data%2Ffiles%2Fx",
    "/data/personal/u/f",
    "/data/cache/",
    "/data/logs/x",
    "/data/plugins/x",
    "/data/tmp/x",
    "/.git/config",
    "/.env",
    "/.ht%61ccess",
    "/%2Ewell-known/x",
    "/plugins/editor.zoho/agent/files/x",
    "/plugins/editor.zoho/agent/FILES",
    "/core/x",
    "/Core/classes/x.php",
    "/conf/bootstrap.php%00.txt",
    "/x%00",
    "/%2e%2e/x",  # above the root: the server behind would resolve it outside Pydio
    "/x/%252e%252e/%252e%252e/etc/passwd",
    "/%2525252563onf/",  # more layers of encoding than anyone decodes honestly
]

ALLOWED = [
    "/conference",
    "/configuration/x",
    "/cores/x",
    "/data/public/x",
    "/data/filesystem/x",
    "/x/data/files/y",
    "/api/0/ls/core",
    "/api/0/ls/conf/x",
    "/api/0/download/a..b",
    "/a/b/../c",
    "/dashboard",
    "/api/my-files/mkfile/.gitignore",  # a client creating a dot-file: PHP does it
    "/a/.htaccess",  # below the root: the stock nginx forwards it too
    "/x/plugins/editor.zoho/agent/files/y",
]


@pytest.fixture(scope="module")
def standin(sqlite_standin):
    return sqlite_standin


def _shim(standin, **env):
    settings = {"PYDIO_SHIM_UPSTREAM_URL": standin.url, "PYDIO_SHIM_DATABASE_URL": standin.db_url}
    settings.update(env)
    return GunicornServer(settings, standin.base).start()


@pytest.fixture(scope="module")
def shim(standin):
    server = _shim(standin)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prefixed_shim(standin):
    server = _shim(standin, PYDIO_SHIM_PUBLIC_PREFIX="/pydio")
    yield server
    server.stop()


def status_of(port: int, target: str, method: str = "GET") -> tuple[int, bytes]:
    """Send *target* exactly as written; the status and body of the answer."""
    request = f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_at_least_twenty_spellings():
    assert len(FORBIDDEN) >= 20


@pytest.mark.parametrize("target", FORBIDDEN)
@pytest.mark.parametrize("method", ["GET", "PROPFIND"])
def test_forbidden_paths_are_refused_before_the_upstream(shim, standin, target, method):
    standin.log.clear()
    status, body = status_of(shim.port, target, method)
    assert (status, body) == (403, b"forbidden\n")
    assert list(standin.log) == []


@pytest.mark.parametrize("target", FORBIDDEN)
def test_forbidden_paths_are_refused_under_a_public_prefix(prefixed_shim, standin, target):
    standin.log.clear()
    assert status_of(prefixed_shim.port, "/pydio" + target)[0] == 403
    assert list(standin.log) == []


@pytest.mark.parametrize(
    "target", ["/conf/bootstrap.php", "/data/files/x", "/%70ydio/conf/bootstrap.php", "/pydioconf/x", "/x/pydio/conf"]
)
def test_paths_outside_the_public_prefix_are_never_forwarded(prefixed_shim, standin, target):
    standin.log.clear()
    assert status_of(prefixed_shim.port, target)[0] == 404
    assert list(standin.log) == []


@pytest.mark.parametrize("target", ALLOWED)
def test_look_alikes_are_forwarded_unchanged(shim, standin, target):
    standin.log.clear()
    status, _ = status_of(shim.port, target)
    assert status != 403
    assert list(standin.log) == [("GET", target)]


@pytest.mark.parametrize("target", ALLOWED)
def test_look_alikes_are_forwarded_under_a_public_prefix(prefixed_shim, standin, target):
    standin.log.clear()
    assert status_of(prefixed_shim.port, "//pydio" + target)[0] != 403
    assert list(standin.log) == [("GET", target)]


def test_health_stays_reachable_and_query_strings_are_not_paths(shim, standin):
    assert status_of(shim.port, "/_shim/health")[0] == 200
    standin.log.clear()
    # Pydio's own parameters name files in the query: the legacy server checks those.
    target = "/index.php?get_action=download&file=/conf/bootstrap.php"
    status_of(shim.port, target)
    assert list(standin.log) == [("GET", target)]


# --- the function itself, with generated spellings ------------------------------------------

PROTECTED = [
    "/conf/bootstrap.php",
    "/core/x",
    "/data/files/a",
    "/data/personal/u/f",
    "/.git/config",
    "/.htaccess",
    "/plugins/editor.zoho/agent/files/x",
    "/data/cache",
]


@st.composite
def spellings(draw, paths=PROTECTED):
    """One protected path, each character possibly percent-encoded (any case, up to 3 times)."""
    path = draw(st.sampled_from(paths))
    out = []
    for char in path:
        layers = draw(st.integers(0, 3)) if char != "/" or draw(st.booleans()) else 0
        text = char
        for _ in range(layers):
            encoded = f"%{ord(text[0]):02X}" + text[1:]
            text = encoded.lower() if draw(st.booleans()) else encoded
        if char == "/" and draw(st.integers(0, 5)) == 0:
            text = draw(st.sampled_from(["//", "/./", "\\", "/x/../"]))
        out.append(text)
    return "".join(out)


@settings(max_examples=60, deadline=None)
@given(spellings())
def test_every_spelling_of_a_protected_path_is_denied(path):
    assert denylist.is_denied(path)


_NAME = st.text(string.ascii_lowercase + string.digits + "-_é", min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(st.lists(_NAME, min_size=1, max_size=5), st.booleans())
def test_ordinary_paths_are_not_denied(segments, encode):
    if segments[0] in ("conf", "core", "data"):
        segments.insert(0, "api")
    path = "/" + "/".join(segments)
    assert not denylist.is_denied(quote(path) if encode else path)


def test_a_client_creates_a_dot_file_through_the_shim(shim, standin):
    """``POST /api/my-files/mkfile/.gitignore``: PHP answers it, not the deny list."""
    import requests
    from conftest import USERS

    response = requests.post(f"{shim.url}/api/my-files/mkfile/.gitignore", auth=("alice", USERS["alice"][0]))
    assert response.status_code == 200 and b'type="SUCCESS"' in response.content
    assert ("POST", "/api/my-files/mkfile/.gitignore") in list(standin.log)


def test_verdicts_are_remembered_for_short_paths_only():
    """Long distinct paths (a request line may be 8 KiB) must not grow the remembered verdicts."""
    from shim import cache

    denylist.is_denied.cache_clear()
    long_denied = "/conf/" + "a" * cache.LONGEST_REMEMBERED_PATH
    long_allowed = "/api/x/download/" + "b" * cache.LONGEST_REMEMBERED_PATH
    assert denylist.is_denied(long_denied) and not denylist.is_denied(long_allowed)
    assert denylist.is_denied.cache_info().currsize == 0
    assert denylist.is_denied("/conf/x") and denylist.is_denied("/conf/x")
    info = denylist.is_denied.cache_info()
    assert (info.currsize, info.hits) == (1, 1)
