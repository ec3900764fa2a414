"""Unit tests of the public <-> upstream translation (no network)."""

import hashlib
import hmac

import pytest
from helpers import client_sign

from shim import resign, translate
from shim.phpcompat import signed_uri
from shim.translate import Mapping


@pytest.mark.parametrize(
    "path,prefix,expected",
    [
        ("/api/0/ls", "", "/api/0/ls"),
        ("/pydio/api/0/ls", "/pydio", "/api/0/ls"),
        ("//pydio/api/0/ls", "/pydio", "/api/0/ls"),  # extra slashes tolerated inside the prefix part
        ("/pydio//api/0/ls", "/pydio", "//api/0/ls"),  # ...never after it: PHP does not route that path
        ("/pydio", "/pydio", "/"),
        ("/pydio/", "/pydio", "/"),
        ("/pydiox/api", "/pydio", None),
        ("/other/api", "/pydio", None),
        ("/a/b/c%2Fd", "/a/b", "/c%2Fd"),
        ("/pydio/api/0/ls/a//b", "/pydio", "/api/0/ls/a//b"),  # slashes kept outside the prefix
    ],
)
def test_strip_prefix(path, prefix, expected):
    assert translate.strip_prefix(path, prefix) == expected


def test_public_prefix_sources():
    env = {"SCRIPT_NAME": "/mounted", "HTTP_X_FORWARDED_PREFIX": "/fromproxy/"}
    assert translate.public_prefix(env, "/configured", True) == "/configured"
    assert translate.public_prefix(env, "", True) == ""  # configured as the root
    assert translate.public_prefix(env, None, True) == "/fromproxy"
    assert translate.public_prefix(env, None, False) == "/mounted"
    assert translate.public_prefix({}, None, True) == ""


@pytest.mark.parametrize("pub,up", [("", ""), ("/pydio", ""), ("", "/pydio"), ("/pydio", "/legacy/pydio")])
def test_location_and_cookie_rewrites(pub, up):
    m = Mapping("https://files.example.org", pub, "http://127.0.0.1:8081", up)
    assert (
        m.to_public_url(f"http://127.0.0.1:8081{up}/index.php?x=1") == f"https://files.example.org{pub}/index.php?x=1"
    )
    assert m.to_public_url(f"{up}/settings") == f"{pub}/settings"
    assert m.to_public_url("https://elsewhere.example/x") == "https://elsewhere.example/x"
    cookie = m.rewrite_set_cookie(f"AjaXplorer=abc; path={up or ''}/; domain=127.0.0.1; HttpOnly")
    assert cookie == f"AjaXplorer=abc; path={pub}/; HttpOnly"
    headers = translate.rewrite_response_headers(
        [
            ("Location", f"http://127.0.0.1:8081{up}/"),
            ("Refresh", f"0; url=http://127.0.0.1:8081{up}/a"),
            ("Link", f"<http://127.0.0.1:8081{up}/x>; rel=next"),
            ("X-Other", "http://127.0.0.1:8081/"),
        ],
        m,
    )
    assert headers == [
        ("Location", f"https://files.example.org{pub}/"),
        ("Refresh", f"0; url=https://files.example.org{pub}/a"),
        ("Link", f"<https://files.example.org{pub}/x>; rel=next"),
        ("X-Other", "http://127.0.0.1:8081/"),
    ]


def test_body_rewrite_is_chunk_independent():
    m = Mapping("https://pub.example", "/pydio", "http://127.0.0.1:8081", "")
    data = (
        b'<base href="http://127.0.0.1:8081/"> {"u":"http:\\/\\/127.0.0.1:8081\\/a"} '
        b"http://127.0.0.1:80810 http://127.0.0.1:8081"
    )
    expected = (
        b'<base href="https://pub.example/pydio/"> {"u":"https:\\/\\/pub.example\\/pydio\\/a"} '
        b"http://127.0.0.1:80810 https://pub.example/pydio"
    )
    for size in (1, 2, 3, 7, 16, 1000):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert b"".join(translate.rewrite_body_urls(chunks, m)) == expected


class FakeKeyStore:
    def __init__(self, rows):
        self.rows = rows

    def lookup(self, token):
        return self.rows.get(token)


def client_hash(token, private, path, nonce="0123456789abcdef0123"):
    return client_sign(path, token, private, nonce)


def verifies(token, private, path, auth_hash):
    nonce, digest = auth_hash.split(":")
    expected = hmac.new(token.encode(), f"{signed_uri(path)}:{nonce}:{private}".encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, digest)


def test_query_resigned_only_when_valid():
    ks = FakeKeyStore({"tok": ("alice", "priv")})
    good = client_hash("tok", "priv", "/pydio/api/0/ls/a")
    query = f"x=1&auth_token=tok&auth_hash={good}&y=2"
    out = resign.resign_query_if_valid(query, "/pydio/api/0/ls/a", "/api/0/ls/a", ks)
    new_hash = dict(p.split("=") for p in out.split("&"))["auth_hash"].replace("%3A", ":")
    assert out.startswith("x=1&auth_token=tok&auth_hash=") and out.endswith("&y=2")
    assert verifies("tok", "priv", "/api/0/ls/a", new_hash)
    bad = client_hash("tok", "priv", "/pydio/api/0/ls/other")
    query = f"auth_token=tok&auth_hash={bad}"
    assert resign.resign_query_if_valid(query, "/pydio/api/0/ls/a", "/api/0/ls/a", ks) == query


@pytest.mark.parametrize("kind", ["urlencoded", "multipart"])
def test_body_head_resigned_in_place(kind):
    ks = FakeKeyStore({"tok": ("alice", "priv")})
    good = client_hash("tok", "priv", "/pydio/api/0/upload/put/docs")
    if kind == "urlencoded":
        ctype = "application/x-www-form-urlencoded"
        body = f"force_post=true&auth_token=tok&auth_hash={good.replace(':', '%3A')}&xhr_uploader=true".encode()
    else:
        ctype = "multipart/form-data; boundary=XyZ"
        body = (
            f'--XyZ\r\nContent-Disposition: form-data; name="auth_token"\r\n\r\ntok\r\n'
            f'--XyZ\r\nContent-Disposition: form-data; name="auth_hash"\r\n\r\n{good}\r\n'
            f'--XyZ\r\nContent-Disposition: form-data; name="userfile_0"; filename="a"\r\n\r\nDATA\r\n--XyZ--\r\n'
        ).encode()
    out = resign.resign_body_head(body, ctype, "/pydio/api/0/upload/put/docs", "/api/0/upload/put/docs", ks)
    assert len(out) == len(body) and out != body
    start = body.index(good.split(":")[0].encode()) if kind == "multipart" else body.index(b"auth_hash=") + 10
    new = out[start : start + len(good) + (2 if kind == "urlencoded" else 0)].decode().replace("%3A", ":")
    assert verifies("tok", "priv", "/api/0/upload/put/docs", new)
    # A hash signed over another path is left for the legacy server to refuse.
    other = body.replace(good.encode(), client_hash("tok", "priv", "/x").encode()).replace(
        good.replace(":", "%3A").encode(), client_hash("tok", "priv", "/x").replace(":", "%3A").encode()
    )
    assert resign.resign_body_head(other, ctype, "/pydio/api/0/upload/put/docs", "/api/0/upload/put/docs", ks) == other


@pytest.mark.parametrize("pub,up", [("/pydio", ""), ("", "/pydio"), ("/pub", "/legacy")])
def test_the_boot_page_base_moves_with_the_prefix(pub, up):
    """Pydio 8.2.5's boot page carries <base href="{prefix}/"/>, a path: it must name the public prefix."""
    m = Mapping("https://files.example.org", pub, "http://127.0.0.1:8081", up)
    page = (f'<html><head>\n    <base href="{up}/"/>\n<title>Pydio</title><a href="{up}/ws-files/">files</a>').encode()
    for size in (1, 5, 4096):
        chunks = [page[i : i + size] for i in range(0, len(page), size)]
        out = b"".join(translate.rewrite_body_urls(chunks, m))
        assert f'<base href="{pub}/"/>'.encode() in out
        assert f'<a href="{up}/ws-files/">'.encode() in out  # other paths are left alone


def test_no_origin_and_no_prefix_change_leaves_a_body_as_it_is():
    m = Mapping("", "/pydio", "", "")
    body = [b'<base href="/"/> /api/x http://h/y']
    assert b"".join(translate.rewrite_body_urls(body, m)) == b'<base href="/pydio/"/> /api/x http://h/y'
    same = Mapping("", "", "", "")
    assert b"".join(translate.rewrite_body_urls([b"abc"], same)) == b"abc"
