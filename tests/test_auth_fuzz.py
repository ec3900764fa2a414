"""Malformed credentials thrown at the feed over real HTTP.

Whatever ``auth_token``, ``auth_hash`` or ``Authorization`` a caller sends, the
shim answers with a clean refusal or with the legacy server's own answer to the
same request (forwarded or probed), never a 500, and never a change row.
Requests are written byte for byte with :mod:`http.client` so that what
hypothesis draws (NUL, bytes that are not UTF-8, huge values...) reaches the
servers unchanged; each one is sent to the shim and to the stand-in, and the two
answers must be identical.
"""

from __future__ import annotations

import base64
import http.client
from urllib.parse import quote_from_bytes, urlsplit

import pytest
import requests
from conftest import USERS
from helpers import client_sign, shim_environ
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PATHS = ["/api/0/changes/0", "/api/1/changes/0/", "/api/my-files/changes/2", "/api/default/changes/0"]
HEX = "0123456789abcdefABCDEF"
EXAMPLES = 40


@pytest.fixture
def servers(standin, db_url, start_shim):
    """``(shim_url, standin_url, token, private)`` with rows in workspaces 0 and 1 and a real token of alice's."""
    for login in ("alice", "bob"):
        auth = (login, USERS[login][0])
        assert requests.post(f"{standin.url}/api/my-files/mkfile/{login}.txt", auth=auth).ok
        assert requests.post(f"{standin.url}/api/0/mkfile/{login}-shared.txt", auth=auth).ok
    server = start_shim(shim_environ(standin.url, db_url))
    pair = requests.get(
        f"{standin.url}/api/pydio/keystore_generate_auth_token/fuzz", auth=("alice", USERS["alice"][0])
    ).json()
    return server.url, standin.url, pair["t"], pair["p"]


def raw_request(base: str, method: str, path: str, pairs: list[tuple[bytes, bytes]], authorization: bytes | None):
    """Send one request exactly as written; ``(status, headers, body)``."""
    encoded = "&".join(f"{quote_from_bytes(k, safe='')}={quote_from_bytes(v, safe='')}" for k, v in pairs)
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    body = None
    target = path
    if method == "GET":
        target = path + ("&" if "?" in path else "?") + encoded
    else:
        body = encoded.encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        return (
            response.status,
            response.getheader("Content-Type"),
            response.getheader("WWW-Authenticate"),
            response.read(),
        )
    finally:
        connection.close()


def assert_clean(shim_url, standin_url, method, path, pairs, authorization):
    from_shim = raw_request(shim_url, method, path, pairs, authorization)
    status, _ctype, _www, body = from_shim
    assert status < 500, (status, body[:200])
    assert b'"seq"' not in body and b'"node_id"' not in body, "a change row reached a caller without valid credentials"
    assert from_shim == raw_request(standin_url, method, path, pairs, authorization), "not the legacy answer"


# --- what hypothesis throws ----------------------------------------------------------------

NASTY = [
    b"",
    b":",
    b"::",
    b"\x00",
    b"nonce\x00:" + b"a" * 64,
    b"nonce:" + b"g" * 64,
    b"nonce:" + b"A" * 64,
    b"nonce",
    b"a" * 64,
    b":" + b"a" * 64,
    b"n:" + b"a" * 63,
    b"n:" + b"a" * 65,
    b"n:" + b"a" * 64 + b":x",
    b"\xff\xfe:\xff",
    "n\u00e9:\u00e9".encode(),
    "\u2603:\u2603".encode(),
    "\U0001f600".encode(),
    b"%00",
    b"%zz",
    b"+:+",
    b"n:" + "\u0660".encode() * 64,
    b"\xc3\xa9" * 40,
    b"x" * 20000,
]


def credential_value(real: bytes):
    """A value for auth_token or auth_hash: hand-picked nasties, the real one mangled, or random bytes."""
    return st.one_of(
        st.sampled_from(NASTY),
        st.binary(max_size=96),
        st.text(max_size=48).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.integers(min_value=200, max_value=12000).map(lambda n: b"f" * n),
        st.builds(
            lambda nonce, digest: nonce + b":" + digest.encode(),
            st.binary(max_size=24),
            st.text(alphabet=HEX, min_size=62, max_size=66),
        ),
        st.builds(lambda cut, extra: real[:cut] + extra, st.integers(0, len(real)), st.binary(max_size=4)).filter(
            lambda value: value != real
        ),  # the real value itself is a valid credential
    )


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


NASTY_AUTHORIZATION = [
    b"",
    b"Basic",
    b"Basic ",
    b"Basic  ",
    b"basic",
    b"BASIC " + b64(b"alice:wrong"),
    b"Basic !!!!",
    b"Basic ====",
    b"Basic " + b64(b"alice:wrong")[:-1],
    b"Basic " + b64(b"alice"),
    b"Basic " + b64(b":"),
    b"Basic " + b64(b":pw"),
    b"Basic " + b64(b"alice\x00:x"),
    b"Basic " + b64(b"\xff\xfe:\xff"),
    b"Basic " + b64("\u00e5lice:p\u00e9".encode()),
    b"Basic " + b64(b" alice :wrong"),
    b"Basic \xe9\xe9\xe9",
    b"Basic " + b"A" * 6000,
    b"Bearer abc.def.ghi",
    b'Digest username="alice", realm="Pydio API"',
    b"Negotiate YII=",
    b"\x00",
    b"Basic\x00" + b64(b"alice:x"),
    b"Basic " + b64(b"alice:" + USERS["alice"][0].encode() + b"x"),
    b"Basic " + b64(b"bob:" + USERS["alice"][0].encode()),
]


def authorization_value():
    header_bytes = st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
    return st.one_of(
        st.none(),
        st.sampled_from(NASTY_AUTHORIZATION),
        st.builds(
            lambda scheme, rest: scheme + rest,
            st.sampled_from([b"Basic ", b"basic ", b"Bearer ", b"", b"Basic\t"]),
            header_bytes,
        ),
        st.builds(
            lambda login, password: b"Basic " + b64(login + b":" + password),
            st.sampled_from([b"alice", b"bob", b"carol", b"", b"ALICE", b"alice "]),
            st.binary(max_size=40),
        ),
    )


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_malformed_token_parameters_get_a_clean_answer_and_no_row(servers):
    shim_url, standin_url, token, private = servers

    @FUZZ
    @given(
        method=st.sampled_from(["GET", "POST"]),
        path=st.sampled_from(PATHS),
        token_value=st.one_of(st.just(token.encode()), credential_value(token.encode())),
        hash_value=credential_value(client_sign("/api/0/changes/0", token, private).encode()),
        which=st.sampled_from(["both", "token", "hash"]),
    )
    def check(method, path, token_value, hash_value, which):
        pairs = [(b"stream", b"true")]
        if which in ("both", "token"):
            pairs.append((b"auth_token", token_value))
        if which in ("both", "hash"):
            pairs.append((b"auth_hash", hash_value))
        assert_clean(shim_url, standin_url, method, path, pairs, None)

    check()


def test_malformed_authorization_headers_get_a_clean_answer_and_no_row(servers):
    shim_url, standin_url, token, private = servers

    @FUZZ
    @given(
        method=st.sampled_from(["GET", "POST"]),
        path=st.sampled_from(PATHS),
        authorization=authorization_value(),
        with_token=st.booleans(),
        hash_value=credential_value(b"n:" + b"0" * 64),
    )
    def check(method, path, authorization, with_token, hash_value):
        pairs = [(b"stream", b"true")]
        if with_token:  # a real token with a bad hash, beside the header
            pairs += [(b"auth_token", token.encode()), (b"auth_hash", hash_value)]
        assert_clean(shim_url, standin_url, method, path, pairs, authorization)

    check()
