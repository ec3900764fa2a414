"""The feed never leaks: authentication and authorization parity with the legacy server.

Every request here goes over real HTTP to the shim, which serves the feed from a
real database (SQLite, MariaDB, PostgreSQL) behind an authorization probe to the
legacy stand-in.  Where the legacy server refuses, the very same request is also
sent straight to the stand-in and the two answers must be identical (status,
body bytes, ``Content-Type``, ``WWW-Authenticate``); and no refused caller may
ever see a change row.
"""

from __future__ import annotations

import base64
import hmac
import http.client
import json
import logging
import secrets
import sys
import time
import uuid

import phpserialize
import pytest
import requests
import sqlalchemy as sa
from conftest import USERS
from helpers import FakeClock, client_sign, shim_environ

from shim import auth, authz, db, schema
from shim.demo.standin import NOT_AUTHORIZED, REALM_HEADER

FEED = "/api/{ws}/changes/{seq}"
STREAM = {"stream": "true"}
#: Files each user creates in "My Files" (user-scoped, id 1) and in the shared "default" (id 0).
MY_FILES = {login: f"/{login}-notes.txt" for login in USERS}
SHARED = {login: f"/shared-by-{login}.txt" for login in USERS}


# --- fixtures and helpers ---------------------------------------------------------------


def credentials(login: str) -> tuple[str, str]:
    return login, USERS[login][0]


def seed(standin):
    """Each user creates a file in My Files and one in the shared workspace, through the legacy API."""
    for login in USERS:
        api = f"{standin.url}/api"
        assert requests.post(f"{api}/my-files/mkfile{MY_FILES[login]}", auth=credentials(login)).ok
        assert requests.post(f"{api}/0/mkfile{SHARED[login]}", auth=credentials(login)).ok
    assert requests.post(f"{standin.url}/api/0/mkdir/alice-dir", auth=credentials("alice")).ok
    assert requests.post(f"{standin.url}/api/0/mkfile/alice-dir/inside.txt", auth=credentials("alice")).ok


def identifiers_in_table(standin) -> set[str]:
    with standin.engine.connect() as conn:
        return set(conn.execute(sa.select(db.changes.c.repository_identifier).distinct()).scalars())


def stream_rows(body: bytes) -> list[dict]:
    """The change rows of a stream-framed feed body (``LAST_SEQ`` line excluded)."""
    return [json.loads(line) for line in body.split(b"\n") if line.startswith(b"{")]


def has_change_row(body: bytes) -> bool:
    """True when *body* holds anything that looks like a change row, in either framing."""
    return b'"seq"' in body or b'"node_id"' in body


def send(base: str, method: str, path: str, params: dict | None = None, auth_pair=None, headers=None):
    """One request; *params* go in the query for GET and in the form body for POST."""
    if method == "GET":
        return requests.get(base + path, params=params, auth=auth_pair, headers=headers)
    return requests.post(base + path, data=params, auth=auth_pair, headers=headers)


def answer(response) -> tuple:
    """What must be identical between the shim and the legacy server."""
    return (
        response.status_code,
        response.content,
        response.headers.get("Content-Type"),
        response.headers.get("WWW-Authenticate"),
    )


def assert_legacy_answer(shim, standin, method, path, params=None, auth_pair=None, headers=None):
    """Send the same request to the shim and to the stand-in; they must answer alike. Returns the shim's."""
    from_shim = send(shim.url, method, path, params, auth_pair, headers)
    from_legacy = send(standin.url, method, path, params, auth_pair, headers)
    assert answer(from_shim) == answer(from_legacy), f"{method} {path}: the shim differs from the legacy server"
    return from_shim


def signed(wire_path: str, pair: dict, **extra) -> dict:
    return {**STREAM, **extra, "auth_token": pair["t"], "auth_hash": client_sign(wire_path, pair["t"], pair["p"])}


def token_pair(base: str, login: str, device: str = "dev") -> dict:
    response = requests.get(f"{base}/api/pydio/keystore_generate_auth_token/{device}", auth=credentials(login))
    assert response.status_code == 200, response.content
    pair = response.json()
    assert set(pair) == {"t", "p"}
    return pair


def probe_requests(standin) -> list[str]:
    return [uri for _method, uri in standin.log if f"/changes/{authz.PROBE_SEQ}" in uri]


def add_workspace(engine, slug: str, path: str, syncable: bool = True) -> str:
    """A workspace created "in the admin UI": rows in ajxp_repo and ajxp_repo_options."""
    ws_id = uuid.uuid4().hex
    options = {"PATH": path, "RECYCLE_BIN": ""}
    if syncable:
        options["META_SOURCES"] = (
            "$phpserial$" + phpserialize.dumps({"meta.syncable": {"REPO_SYNCABLE": True}}).decode()
        )
    with engine.begin() as conn:
        conn.execute(
            db.repo.insert().values(
                uuid=ws_id, slug=slug, display=slug, accessType="fs", isTemplate=False, enabled=True, writeable=True
            )
        )
        for name, value in options.items():
            conn.execute(db.repo_options.insert().values(uuid=ws_id, name=name, val=value.encode()))
    return ws_id


def wait_until(predicate, limit: float, step: float = 0.05):
    """Poll *predicate* until it returns a true value or *limit* seconds pass; ``(value, elapsed)``."""
    started = time.monotonic()
    while True:
        value = predicate()
        elapsed = time.monotonic() - started
        if value or elapsed > limit:
            return value, elapsed
        time.sleep(step)


# --- refusals: the legacy answer, never a row ----------------------------------------------------


def test_basic_refusals_get_the_legacy_answer_and_no_row(standin, make_shim):
    seed(standin)
    standin.set_right("bob", "0", None)
    shim = make_shim()
    feed0 = FEED.format(ws="0", seq=0)
    # The workspaces do hold rows, and an entitled caller gets them through the shim.
    allowed = assert_legacy_answer(shim, standin, "GET", feed0, STREAM, credentials("alice"))
    assert {r["target"] for r in stream_rows(allowed.content)} >= set(SHARED.values())

    refusals = {
        "no credentials": ("GET", feed0, None),
        "no credentials, POST": ("POST", feed0, None),
        "wrong password": ("GET", feed0, ("alice", "not-" + USERS["alice"][0])),
        "wrong password, POST": ("POST", feed0, ("alice", "not-" + USERS["alice"][0])),
        "empty password": ("GET", feed0, ("alice", "")),
        "unknown user": ("GET", feed0, ("mallory", USERS["alice"][0])),
        "another user's password": ("GET", feed0, ("alice", USERS["bob"][0])),
        "no right on the workspace": ("GET", feed0, credentials("bob")),
        "no right on the workspace, by slug": ("GET", FEED.format(ws="default", seq=0), credentials("bob")),
        "another user's My Files identifier": ("GET", FEED.format(ws="1-bob", seq=0), credentials("alice")),
        "another group's identifier": ("GET", FEED.format(ws="1-%2Fsales", seq=0), credentials("alice")),
    }
    for name, (method, path, pair) in refusals.items():
        for attempt in ("probe", "cached"):  # the second answer may come from the denial cache
            response = assert_legacy_answer(shim, standin, method, path, STREAM, pair)
            assert response.status_code in (200, 401), name
            assert not has_change_row(response.content), f"{name} ({attempt}) received a change row"
    # The precise legacy answers, as observed on a real Pydio 8.
    nobody = requests.get(shim.url + feed0, params=STREAM)
    assert (nobody.status_code, nobody.content, nobody.headers["WWW-Authenticate"]) == (401, b"", REALM_HEADER)
    bob = requests.get(shim.url + feed0, params=STREAM, auth=credentials("bob"))
    assert (bob.status_code, bob.content, bob.headers.get("WWW-Authenticate")) == (401, NOT_AUTHORIZED, None)


def test_token_refusals_get_the_legacy_answer_and_no_row(standin, make_shim):
    seed(standin)
    shim = make_shim()
    alice, bob = token_pair(shim.url, "alice"), token_pair(shim.url, "bob", "bob-laptop")
    standin.set_right("bob", "0", None)
    path = FEED.format(ws="0", seq=0)
    good = assert_legacy_answer(shim, standin, "GET", path, signed(path, alice))
    assert stream_rows(good.content)

    nonce, digest = client_sign(path, alice["t"], alice["p"]).split(":")
    refusals = {
        "unknown token": {
            **STREAM,
            "auth_token": secrets.token_hex(16),
            "auth_hash": client_sign(path, secrets.token_hex(16), alice["p"]),
        },
        "signed over another seq": signed(FEED.format(ws="0", seq=5), alice),
        "signed over another workspace": signed(FEED.format(ws="1", seq=0), alice),
        "signed over the path with a prefix": signed("/pydio" + path, alice),
        "signed with another token's private key": {
            **STREAM,
            "auth_token": alice["t"],
            "auth_hash": client_sign(path, alice["t"], bob["p"]),
        },
        "another token's hash": {
            **STREAM,
            "auth_token": alice["t"],
            "auth_hash": client_sign(path, bob["t"], bob["p"]),
        },
        # PHP compares the hex strings with ==, which is case-sensitive for them.
        "upper-case digest": {**STREAM, "auth_token": alice["t"], "auth_hash": f"{nonce}:{digest.upper()}"},
        "digest without nonce": {**STREAM, "auth_token": alice["t"], "auth_hash": digest},
        "hash without token": {**STREAM, "auth_hash": f"{nonce}:{digest}"},
        "empty token": {**STREAM, "auth_token": "", "auth_hash": f"{nonce}:{digest}"},
        "valid token, no right on the workspace": signed(path, bob),
    }
    for name, params in refusals.items():
        for method in ("GET", "POST"):
            response = assert_legacy_answer(shim, standin, method, path, params)
            assert response.status_code == 401, name
            assert not has_change_row(response.content), f"{name} ({method}) received a change row"


def test_a_captured_hash_replays_on_its_own_path_only(standin, make_shim):
    """The signature covers the path only, never the query, and PHP keeps no nonce list.

    So a captured ``auth_token``/``auth_hash`` replayed on another path (another
    seq or workspace in the path) must be refused, as PHP refuses it; replayed
    on the same path with another query (``seq_id``, ``filter``) it is accepted
    by PHP too: neither server can detect a query change, and the shim answers
    exactly what the legacy server answers.
    """
    seed(standin)
    shim = make_shim()
    pair = token_pair(shim.url, "alice")
    with standin.engine.connect() as conn:
        seq = conn.execute(sa.select(sa.func.max(db.changes.c.seq))).scalar() - 1
    captured_path = FEED.format(ws="0", seq=seq)
    captured = signed(captured_path, pair)
    original = assert_legacy_answer(shim, standin, "GET", captured_path, captured)
    assert original.status_code == 200

    for other_path in (FEED.format(ws="0", seq=0), FEED.format(ws="1", seq=seq), FEED.format(ws="default", seq=seq)):
        replay = assert_legacy_answer(shim, standin, "GET", other_path, captured)
        assert replay.status_code == 401, other_path
        assert not has_change_row(replay.content), other_path

    # Same path, tampered query: not detectable, by PHP either.  seq_id overrides the path's seq...
    older = assert_legacy_answer(shim, standin, "GET", captured_path, {**captured, "seq_id": "0"})
    assert len(stream_rows(older.content)) > len(stream_rows(original.content))
    # ... and a filter narrows the feed; the answers still match the legacy server's byte for byte.
    filtered = assert_legacy_answer(
        shim,
        standin,
        "GET",
        FEED.format(ws="0", seq=0),
        {**signed(FEED.format(ws="0", seq=0), pair), "filter": "/alice-dir"},
    )
    assert [r["target"] for r in stream_rows(filtered.content)] == ["/inside.txt"]


# --- whose rows: user and group scope ------------------------------------------------------


def test_my_files_gives_each_user_only_their_own_rows(standin, make_shim):
    seed(standin)
    shim = make_shim()
    assert {f"1-{login}" for login in USERS} <= identifiers_in_table(standin)
    for login in USERS:
        for ws in ("1", "my-files"):
            response = assert_legacy_answer(shim, standin, "GET", FEED.format(ws=ws, seq=0), STREAM, credentials(login))
            rows = stream_rows(response.content)
            assert {r["node"]["repository_identifier"] for r in rows} == {f"1-{login}"}
            assert [r["target"] for r in rows] == [MY_FILES[login]]
        # The same through a token of that user.
        pair = token_pair(shim.url, login)
        path = FEED.format(ws="my-files", seq=0)
        response = assert_legacy_answer(shim, standin, "GET", path, signed(path, pair))
        assert [r["target"] for r in stream_rows(response.content)] == [MY_FILES[login]]


def test_group_workspace_gives_each_group_only_its_rows(standin, make_shim):
    ws_id = add_workspace(standin.engine, "team-space", "AJXP_DATA_PATH/groups/AJXP_GROUP_PATH")
    standin.add_user("dave", "dave-secret", "/sales", rights=())
    members = {"alice": "/", "carol": "/sales", "dave": "/sales"}
    for login in members:
        standin.set_right(login, ws_id, "rw")
    passwords = {**{k: v[0] for k, v in USERS.items()}, "dave": "dave-secret"}
    for login in members:
        assert requests.post(f"{standin.url}/api/team-space/mkfile/{login}.txt", auth=(login, passwords[login])).ok
    assert {f"{ws_id}-/", f"{ws_id}-/sales"} <= identifiers_in_table(standin)
    shim = make_shim()

    expected = {"/": ["/alice.txt"], "/sales": ["/carol.txt", "/dave.txt"]}
    for login, group in members.items():
        for ws in (ws_id, "team-space"):
            response = assert_legacy_answer(
                shim, standin, "GET", FEED.format(ws=ws, seq=0), STREAM, (login, passwords[login])
            )
            rows = stream_rows(response.content)
            assert {r["node"]["repository_identifier"] for r in rows} == {f"{ws_id}-{group}"}, login
            assert sorted(r["target"] for r in rows) == expected[group], login
    # bob has no right on it: the legacy refusal, no row.
    refused = assert_legacy_answer(shim, standin, "GET", FEED.format(ws=ws_id, seq=0), STREAM, credentials("bob"))
    assert refused.status_code == 401 and not has_change_row(refused.content)
    # Nor can anyone name a group identifier as a workspace.
    other = assert_legacy_answer(
        shim, standin, "GET", FEED.format(ws=f"{ws_id}-%2Fsales", seq=0), STREAM, credentials("alice")
    )
    assert not has_change_row(other.content)


# --- unknown workspaces and the decision rule -----------------------------------------------


def test_unknown_workspaces_get_the_legacy_answer(standin, make_shim):
    seed(standin)
    shim = make_shim()
    probes = shim.authorizer.probes
    unknown = assert_legacy_answer(shim, standin, "GET", FEED.format(ws="nope", seq=0), STREAM, credentials("alice"))
    assert unknown.status_code == 200 and unknown.headers["Content-Type"] == "text/xml; charset=UTF-8"
    assert b"Could not find workspace with id/alias nope" in unknown.content
    assert shim.authorizer.probes == probes  # unknown to the shim: forwarded without a probe

    # Workspace 0 is built into the shim's configuration, but this legacy install
    # does not know it: the probe gets the 200 text/xml "Could not find workspace"
    # answer, which is no "yes", so the request is forwarded; that answer is kept
    # (a minute at most), so the next polls go straight to the legacy server.
    standin.store.workspaces = [w for w in standin.store.workspaces if w.id != "0"]
    path = FEED.format(ws="0", seq=0)
    for attempt in range(3):
        before = len(standin.log)
        response = assert_legacy_answer(shim, standin, "GET", path, STREAM, credentials("alice"))
        assert response.status_code == 200 and b"Could not find workspace with id/alias 0" in response.content
        assert not has_change_row(response.content)
        reached = [uri for _m, uri in list(standin.log)[before:]]
        if attempt == 0:
            assert reached[0].startswith(f"/api/0/changes/{authz.PROBE_SEQ}")  # asked once
            reached = reached[1:]
        assert reached[0].startswith(path)  # and the client's own request went upstream
    assert shim.authorizer.probes == probes + 1


def test_a_login_spelled_differently_is_the_same_user_and_is_cached(standin, make_shim):
    """Pydio's auth.sql trims the login and lower-cases it before any query, on every engine.

    "ALICE" and " alice\t" are user alice: the shim serves them her rows, and
    caches the decision like any other (one probe, then none).
    """
    seed(standin)
    shim = make_shim()
    for spelling in (" alice\t", "ALICE", "Alice"):
        path = FEED.format(ws="my-files", seq=0)
        answer = assert_legacy_answer(shim, standin, "GET", path, STREAM, (spelling, USERS["alice"][0]))
        assert {r["target"] for r in stream_rows(answer.content)} == {MY_FILES["alice"]}
        probes, before = shim.authorizer.probes, len(standin.log)
        for _ in range(3):
            again = requests.get(shim.url + path, params=STREAM, auth=(spelling, USERS["alice"][0]))
            assert again.content == answer.content
        assert shim.authorizer.probes == probes and len(standin.log) == before, f"{spelling!r} not cached"


@pytest.mark.parametrize("engine_name", ["mysql"])
def test_a_stored_login_that_is_not_pydio_s_user_id_is_left_to_the_legacy_server(standin, make_shim):
    """A login stored as "Carl" (written behind Pydio's back): on a case-insensitive collation PHP finds it for
    "carl" but does not attach its personal role. The shim does not guess: the legacy server answers."""
    standin.add_user("Carl", "carl-secret")
    shim = make_shim()
    path = FEED.format(ws="0", seq=0)
    before = len(standin.log)
    assert_legacy_answer(shim, standin, "GET", path, STREAM, ("carl", "carl-secret"))
    assert any(uri.startswith(path) for _m, uri in list(standin.log)[before:]), "answered by the shim"


# --- cache lifetimes and probe counts -----------------------------------------------------


def test_a_revoked_right_is_refused_by_the_first_poll_after_the_check_interval(standin, make_shim):
    seed(standin)
    clock = FakeClock()
    shim = make_shim(clock=clock)
    path = FEED.format(ws="0", seq=0)
    pair = token_pair(shim.url, "bob")
    clients = {"alice": (lambda: STREAM, credentials("alice")), "bob's token": (lambda: signed(path, pair), None)}
    for params, pair_ in clients.values():
        assert stream_rows(requests.get(shim.url + path, params=params(), auth=pair_).content)
    probes = shim.authorizer.probes
    for params, pair_ in clients.values():  # cached: served without asking PHP
        assert stream_rows(requests.get(shim.url + path, params=params(), auth=pair_).content)
    assert shim.authorizer.probes == probes

    standin.set_right("alice", "0", None)
    standin.set_right("bob", "0", None)
    clock.advance(1.001)  # the next check of the tables is due
    for who, (params, pair_) in clients.items():
        response = requests.get(shim.url + path, params=params(), auth=pair_)
        assert response.status_code == 401, f"{who} still served after the check interval"
        assert not has_change_row(response.content)
    assert shim.authorizer.probes == probes + 2  # each decision asked again once
    # And the refusal is the legacy one, byte for byte.
    assert_legacy_answer(shim, standin, "GET", path, STREAM, credentials("alice"))
    assert_legacy_answer(shim, standin, "GET", path, signed(path, pair))


def test_a_refusal_ends_with_a_row_change_or_after_a_few_seconds(standin, make_shim):
    assert make_shim(deny_ttl=3600).authorizer.deny_ttl <= 5
    seed(standin)
    clock = FakeClock()
    shim = make_shim(deny_ttl=2, clock=clock)
    standin.set_right("bob", "0", None)
    path = FEED.format(ws="0", seq=0)

    def bob():
        return requests.get(shim.url + path, params=STREAM, auth=credentials("bob"))

    assert bob().status_code == 401
    probes = shim.authorizer.probes
    assert bob().status_code == 401 and shim.authorizer.probes == probes  # the refusal is reused
    standin.set_right("bob", "0", "rw")
    clock.advance(1.001)
    assert stream_rows(bob().content), "a right granted was not seen after the check interval"

    # With no row changed (PHP's brute-force counter is a file), a refusal is asked again after deny_ttl.
    wrong = ("alice", "not-her-password")
    assert requests.get(shim.url + path, params=STREAM, auth=wrong).status_code == 401
    probes = shim.authorizer.probes
    clock.advance(1.5)
    assert requests.get(shim.url + path, params=STREAM, auth=wrong).status_code == 401
    assert shim.authorizer.probes == probes
    clock.advance(0.6)
    assert requests.get(shim.url + path, params=STREAM, auth=wrong).status_code == 401
    assert shim.authorizer.probes == probes + 1

    # An unknown token is unknown until the key store changes.
    pair = {"t": secrets.token_hex(16), "p": secrets.token_hex(16)}
    assert requests.get(shim.url + path, params=signed(path, pair)).status_code == 401
    standin.store.put_token(pair["t"], {"USER_ID": "bob", "PRIVATE": pair["p"]})
    clock.advance(1.001)
    assert stream_rows(requests.get(shim.url + path, params=signed(path, pair)).content)


@pytest.mark.parametrize("max_age", [3600, 0])
def test_polls_cost_one_probe_while_nothing_changes(standin, make_shim, max_age):
    seed(standin)
    clock = FakeClock()
    shim = make_shim(max_age=max_age, clock=clock)
    polls = 5
    pair = token_pair(shim.url, "alice")
    path = FEED.format(ws="0", seq=0)
    for kind in ("basic", "token"):
        calls, probes, logged = standin.calls["changes"], shim.authorizer.probes, len(probe_requests(standin))
        bodies = []
        for _ in range(polls):
            clock.advance(10)  # the desktop client's interval: a check of the tables before each poll
            if kind == "basic":
                response = requests.get(shim.url + path, params=STREAM, auth=credentials("alice"))
            else:
                response = requests.get(shim.url + path, params=signed(path, pair))
            assert response.status_code == 200
            bodies.append(response.content)
        expected = 1 if max_age else polls
        assert standin.calls["changes"] - calls == expected, kind
        assert shim.authorizer.probes - probes == expected, kind
        assert len(probe_requests(standin)) - logged == expected, kind
        legacy = requests.get(standin.url + path, params=STREAM, auth=credentials("alice")).content
        assert stream_rows(legacy) and all(body == legacy for body in bodies)


# --- the token flow, as the desktop client runs it ------------------------------------------


def test_token_pair_from_the_shim_signs_feed_requests(standin, make_shim):
    seed(standin)
    ws_id = add_workspace(standin.engine, "équipe", "AJXP_DATA_PATH/equipe")
    standin.set_right("alice", ws_id, "rw")
    assert requests.post(f"{standin.url}/api/%C3%A9quipe/mkfile/caf%C3%A9.txt", auth=credentials("alice")).ok
    shim = make_shim()

    pair = token_pair(shim.url, "alice")  # forwarded to the legacy server, which stores it
    assert standin.store.token_data(pair["t"])["USER_ID"] == "alice"

    cases = [
        ("GET", "/api/0/changes/0/", SHARED["alice"]),
        ("POST", "/api/0/changes/0", SHARED["alice"]),
        ("GET", "/api/my-files/changes/0/", MY_FILES["alice"]),
        ("GET", "/api/%C3%A9quipe/changes/0/", "/café.txt"),
        ("POST", "/api/%C3%A9quipe/changes/0", "/café.txt"),
    ]
    for method, wire_path, expected_target in cases:
        params = signed(wire_path, pair)
        before = len(standin.log)
        response = send(shim.url, method, wire_path, params)
        assert response.status_code == 200, (method, wire_path, response.content)
        assert expected_target in [r["target"] for r in stream_rows(response.content)]
        reached = [uri for _m, uri in list(standin.log)[before:]]
        # Served by the shim: the legacy server saw at most the probe, signed afresh for its own path.
        assert all(f"/changes/{authz.PROBE_SEQ}" in uri for uri in reached), reached
        assert all(params["auth_hash"] not in uri for uri in reached)
        legacy = send(standin.url, method, wire_path, params)
        assert answer(response) == answer(legacy)


def test_a_deleted_token_is_refused_by_the_first_poll_after_the_check_interval(standin, make_shim):
    seed(standin)
    clock = FakeClock()
    shim = make_shim(clock=clock)
    pair = token_pair(shim.url, "alice")
    path = FEED.format(ws="0", seq=0)
    assert stream_rows(requests.get(shim.url + path, params=signed(path, pair)).content)
    with standin.engine.begin() as conn:
        conn.execute(db.simple_store.delete().where(db.simple_store.c.object_id == pair["t"]))
    clock.advance(1.001)
    response = requests.get(shim.url + path, params=signed(path, pair))
    assert response.status_code == 401, "a deleted token was still accepted"
    assert not has_change_row(response.content)


def test_a_signature_over_a_path_that_is_not_utf8_is_left_to_the_legacy_server(standin, make_shim):
    """PHP converts a non-UTF-8 path segment before re-encoding it; the shim does not guess: it forwards."""
    seed(standin)
    shim = make_shim()
    pair = token_pair(shim.url, "alice")
    path = "/api/0/changes/0%E9"
    assert auth.authenticate(signed(path, pair), None, path, shim.keystore) is None
    utf8 = "/api/0/changes/0%C3%A9"
    assert auth.authenticate(signed(utf8, pair), None, utf8, shim.keystore).login == "alice"
    before = len(standin.log)
    assert_legacy_answer(shim, standin, "GET", path, signed(path, pair))
    assert any(uri.startswith(path) for _m, uri in list(standin.log)[before:])  # forwarded as sent


# --- secrets: constant-time comparison, nothing in logs, nothing in cache keys ---------------


def test_token_digests_are_compared_in_constant_time(standin, make_shim, monkeypatch):
    seed(standin)
    shim = make_shim()
    pair = token_pair(shim.url, "alice")
    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        if sys._getframe(1).f_globals.get("__name__") == "shim.auth":
            compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    path = FEED.format(ws="0", seq=0)
    good, bad = signed(path, pair), signed(FEED.format(ws="0", seq=1), pair)
    assert requests.get(shim.url + path, params=good).status_code == 200
    assert requests.get(shim.url + path, params=bad).status_code == 401
    given = [b.decode() if isinstance(b, bytes) else b for _a, b in compared]
    assert given == [good["auth_hash"].split(":")[1], bad["auth_hash"].split(":")[1]]


def test_no_secret_reaches_the_logs(standin, make_shim, caplog):
    caplog.set_level(logging.DEBUG, logger="shim")
    caplog.set_level(logging.DEBUG, logger="shim.access")
    seed(standin)
    shim = make_shim()
    path = FEED.format(ws="0", seq=0)
    secrets_used = {USERS[login][0] for login in USERS}
    requests_sent = 0

    for pair in (credentials("alice"), ("alice", "a-wrong-password"), ("bob", USERS["bob"][0])):
        for method in ("GET", "POST"):
            send(shim.url, method, path, STREAM, pair)
            requests_sent += 1
        secrets_used |= {pair[1], base64.b64encode(f"{pair[0]}:{pair[1]}".encode()).decode()}
    pair = token_pair(shim.url, "alice")
    requests_sent += 1
    secrets_used |= {pair["t"], pair["p"]}
    for method, wire_path in (
        ("GET", path),
        ("POST", path),
        ("GET", "/api/0/ls/"),
        ("GET", FEED.format(ws="1", seq=0)),
    ):
        params = signed(wire_path, pair)
        send(shim.url, method, wire_path, params)
        requests_sent += 1
        secrets_used |= set(params["auth_hash"].split(":"))
    bad = signed(FEED.format(ws="0", seq=9), pair)  # refused, forwarded: still nothing logged
    send(shim.url, "GET", path, bad)
    requests_sent += 1
    secrets_used |= set(bad["auth_hash"].split(":"))
    # The probes' own signatures are secrets too.
    for uri in probe_requests(standin):
        if "auth_hash=" in uri:
            secrets_used |= set(uri.split("auth_hash=")[1].split("&")[0].replace("%3A", ":").split(":"))

    def access_lines():
        return [r for r in caplog.records if r.name == "shim.access"]

    wait_until(lambda: len(access_lines()) >= requests_sent, 3)
    assert len(access_lines()) >= requests_sent  # the logs were captured, one line per request
    text = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}"
        for r in caplog.records
        if r.name == "shim" or r.name.startswith("shim.")
    )
    leaked = sorted(s for s in secrets_used if s and s in text)
    assert not leaked, "secrets found in the shim's logs"


def test_cache_keys_hold_no_credential_and_the_cache_stays_bounded(standin, make_shim):
    seed(standin)
    size = 4
    shim = make_shim(deny_ttl=5, cache_size=size)
    path = FEED.format(ws="0", seq=0)
    pair = token_pair(shim.url, "alice")
    assert stream_rows(requests.get(shim.url + path, params=STREAM, auth=credentials("alice")).content)
    assert stream_rows(requests.get(shim.url + path, params=signed(path, pair)).content)
    password = USERS["alice"][0]
    header = base64.b64encode(f"alice:{password}".encode()).decode()
    keys = repr(shim.authorizer.keys()) + repr(shim.keystore._cache.keys())
    assert len(shim.authorizer) == 2
    for secret in (password, header, pair["t"], pair["p"]):
        assert secret not in keys

    # Many callers (wrong passwords, unknown tokens): each is probed, answered as the
    # legacy server answers, and the caches never grow beyond their bound.
    probes = shim.authorizer.probes
    for i in range(3 * size):
        response = assert_legacy_answer(shim, standin, "GET", path, STREAM, ("bob", f"wrong-{i}"))
        assert response.status_code == 401
        stranger = {**STREAM, "auth_token": secrets.token_hex(16), "auth_hash": f"{i}:{'0' * 64}"}
        assert requests.get(shim.url + path, params=stranger).status_code == 401
        assert len(shim.authorizer) <= size and len(shim.keystore._cache) <= size
    assert shim.authorizer.probes - probes == 3 * size
    # Eviction costs a probe, never correctness.
    response = assert_legacy_answer(shim, standin, "GET", path, STREAM, credentials("alice"))
    assert stream_rows(response.content)


def test_no_secret_reaches_the_logs_under_percent_encoded_names(standin, make_shim, caplog):
    caplog.set_level(logging.DEBUG, logger="shim")
    seed(standin)
    shim = make_shim()
    pair = token_pair(shim.url, "alice")
    path = FEED.format(ws="0", seq=0)
    params = signed(path, pair)
    # requests would normalise %74 and %5F back to letters: send the bytes as written.
    connection = http.client.HTTPConnection("127.0.0.1", int(shim.url.rsplit(":", 1)[1]))
    connection.request("GET", f"{path}?stream=true&auth_%74oken={pair['t']}&auth%5Fhash={params['auth_hash']}")
    response = connection.getresponse()
    assert response.status == 200 and stream_rows(response.read())  # PHP decodes the names too
    connection.close()

    def feed_lines():
        return [r for r in caplog.records if r.name == "shim.access" and "/changes/" in r.getMessage()]

    wait_until(feed_lines, 3)
    assert feed_lines()
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("shim"))
    assert pair["t"] not in text and params["auth_hash"].split(":")[1] not in text


# --- requests the shim must leave to the legacy server ---------------------------------------------


def test_a_post_body_php_would_not_parse_is_not_read_as_a_form(standin, make_shim):
    """Without ``application/x-www-form-urlencoded`` PHP leaves ``$_POST`` empty: no token there."""
    seed(standin)
    shim = make_shim()
    pair = token_pair(shim.url, "alice")
    path = "/api/0/changes/0"
    body = "&".join(f"{k}={v}" for k, v in signed(path, pair).items())
    probes = len(probe_requests(standin))
    for content_type in ("", "text/plain", "application/json"):
        headers = {"Content-Type": content_type} if content_type else {}
        request = requests.Request("POST", shim.url + path, data=body.encode(), headers=headers).prepare()
        if not content_type:
            request.headers.pop("Content-Type", None)
        from_shim = requests.Session().send(request)
        assert not has_change_row(from_shim.content)
        assert from_shim.status_code == 401  # the stand-in's answer: no credentials it could read
    assert len(probe_requests(standin)) == probes  # forwarded, never probed


def test_two_kinds_of_credentials_are_left_to_the_legacy_server(standin, make_shim):
    seed(standin)
    shim = make_shim()
    pair = token_pair(shim.url, "alice")
    path = "/api/0/changes/0"
    probes = len(probe_requests(standin))
    # A valid token for alice together with bob's Basic credentials.
    both = requests.get(shim.url + path, params=signed(path, pair), auth=credentials("bob"))
    direct = requests.get(standin.url + path, params=signed(path, pair), auth=credentials("bob"))
    assert answer(both) == answer(direct)
    # Basic credentials together with a web session cookie.
    cookie = requests.get(
        shim.url + path, params=STREAM, auth=credentials("alice"), headers={"Cookie": "AjaXplorer=0123456789abcdef"}
    )
    assert cookie.status_code == 200
    assert len(probe_requests(standin)) == probes


def test_a_database_slug_shadows_a_builtin_one(standin, make_shim):
    """The legacy lookup: database ids, built-in ids, database slugs, built-in slugs."""
    seed(standin)
    shim = make_shim()
    ws_id = add_workspace(standin.engine, "default", "AJXP_DATA_PATH/shadow")
    standin.set_right("alice", ws_id, "rw")
    resolved = shim.workspaces.resolve("default")
    assert resolved is not None and resolved.id == ws_id
    assert shim.workspaces.resolve("0").id == "0"


def test_no_credentials_never_touch_the_workspace_tables(standin, make_shim):
    shim = make_shim()
    lookups = []
    original = shim.workspaces.resolve
    shim.workspaces.resolve = lambda key: lookups.append(key) or original(key)
    response = assert_legacy_answer(shim, standin, "GET", "/api/%F0%9F%98%80/changes/0", STREAM)
    assert response.status_code == 401 and lookups == []


def test_a_lagging_replica_never_sends_the_client_back_to_zero(standin, db_url, tmp_path, start_shim):
    """A seq above the replica's MAX but not the primary's: the legacy server answers, not a reset."""
    seed(standin)
    replica = f"sqlite:///{tmp_path}/replica.db"
    engine = db.create_engine(replica)
    with engine.begin() as conn:
        db.create_conf_tables(conn)
        schema.install_syncable_schema(conn)
    engine.dispose()
    server = start_shim(shim_environ(standin.url, db_url, database_feed_url=replica))
    requests.post(standin.url + "/api/0/mkfile/late.txt", auth=credentials("alice"))
    with standin.engine.connect() as conn:
        primary_max = conn.execute(sa.select(sa.func.max(db.changes.c.seq))).scalar()
    path = f"/api/0/changes/{primary_max - 1}"
    from_shim = requests.get(server.url + path, params=STREAM, auth=credentials("alice"))
    from_legacy = requests.get(standin.url + path, params=STREAM, auth=credentials("alice"))
    assert from_shim.content == from_legacy.content
    assert from_shim.content != b"LAST_SEQ:1" and b"late.txt" in from_shim.content


def test_a_slug_moved_to_another_workspace_never_serves_the_old_one(standin, make_shim):
    """An admin moves slug ``proj`` from A (bob's) to B (alice's): alice never gets A's rows.

    The shim remembers ``proj -> A`` for a while; the legacy server already maps it
    to B.  Whatever the shim asks the legacy server about must be the workspace
    whose rows it then sends.
    """
    engine = standin.engine
    ws_a = add_workspace(engine, "proj", "AJXP_DATA_PATH/proj-a")
    ws_b = add_workspace(engine, "proj-b", "AJXP_DATA_PATH/proj-b")
    standin.set_right("bob", ws_a, "rw")
    standin.set_right("alice", ws_b, "rw")
    for i in range(3):
        assert requests.post(f"{standin.url}/api/{ws_a}/mkfile/secret-{i}.txt", auth=credentials("bob")).ok
    shim = make_shim()
    proj = FEED.format(ws="proj", seq=0)
    before = requests.get(shim.url + proj, params=STREAM, auth=credentials("bob"))
    assert {r["node"]["repository_identifier"] for r in stream_rows(before.content)} == {ws_a}
    with engine.begin() as conn:
        conn.execute(db.repo.update().where(db.repo.c.uuid == ws_a).values(slug="proj-old"))
        conn.execute(db.repo.update().where(db.repo.c.uuid == ws_b).values(slug="proj"))
    for path in (proj, FEED.format(ws=ws_a, seq=0), proj):
        response = requests.get(shim.url + path, params=STREAM, auth=credentials("alice"))
        leaked = [r for r in stream_rows(response.content) if r["node"]["repository_identifier"] == ws_a]
        assert leaked == [], f"{path}: alice received {len(leaked)} of workspace A's rows"
    # A by id is refused to alice exactly as the legacy server refuses it.
    assert_legacy_answer(shim, standin, "GET", FEED.format(ws=ws_a, seq=0), STREAM, credentials("alice"))
