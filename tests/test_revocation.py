"""An admin's change reaches the next poll: decisions kept while their rows are unchanged, and no longer.

For each action an administrator of Pydio 8.2.5 can take against a user's
access, done by the stand-in the way Pydio does it (same tables, same rows):
before it, polls are answered from the shim's memory (the legacy server sees
none of them); the first poll that starts more than the check interval (1 s)
after it gets exactly what the legacy server answers, and no change row where
the legacy server sends none.  On MariaDB, PostgreSQL and SQLite.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import phpserialize
import pytest
import requests
import sqlalchemy as sa
from helpers import FakeClock, shim_environ
from test_auth import STREAM, answer, has_change_row, signed, stream_rows

from shim import authz, db
from shim.changewatch import ChangeWatch
from shim.demo.pydio_store import PydioStore
from shim.fingerprint import Fingerprints, _digest

LOGIN, PASSWORD = "erin", "erin-secret"
ADMIN = ("admin", "admin-secret")
ROLE = "team-members"


def meta_sources(**syncable) -> str:
    return "$phpserial$" + phpserialize.dumps({"meta.syncable": {"REPO_SYNCABLE": True, **syncable}}).decode()


# --- how the user gets the right -----------------------------------------------------------------


def personal(standin, ws):
    standin.add_user(LOGIN, PASSWORD, rights=(ws,))


def through_role(standin, ws):
    standin.store.save_role(ROLE, acls={ws: "rw"})
    standin.add_user(LOGIN, PASSWORD, rights=())
    standin.store.assign_role(LOGIN, ROLE)


def through_group(standin, ws):
    standin.store.save_role("AJXP_GRP_/team", acls={ws: "rw"})
    standin.add_user(LOGIN, PASSWORD, group_path="/team", rights=())


# --- the admin actions ---------------------------------------------------------------------------


def admin_api(standin, path, **form):
    response = requests.post(f"{standin.url}/api/ajxp_conf/{path}", data=form, auth=ADMIN)
    assert response.status_code == 200 and b'type="SUCCESS"' in response.content, response.content


def change_password(standin, ws, pair):
    admin_api(standin, "edit/update_user_pwd", user_id=LOGIN, user_pwd="a-new-secret")


def remove_right(standin, ws, pair):
    admin_api(standin, f"user_update_right/{ws}/{LOGIN}/n")


def delete_role(standin, ws, pair):
    standin.store.delete_role(ROLE)


def edit_role(standin, ws, pair):
    standin.store.save_role(ROLE, acls={"0": "rw"})


def move_group(standin, ws, pair):
    standin.store.move_user(LOGIN, "/elsewhere")


def delete_user(standin, ws, pair):
    standin.store.delete_user(LOGIN)


def lock_user(standin, ws, pair):
    standin.store.lock_user(LOGIN)


def disable_workspace(standin, ws, pair):
    standin.store.set_enabled(ws, False)


def delete_workspace(standin, ws, pair):
    standin.store.delete_workspace(ws)


def unsync_workspace(standin, ws, pair):
    standin.store.set_workspace_option(ws, "META_SOURCES", meta_sources(REPO_SYNCABLE=False))


def unsync_through_role(standin, ws, pair):
    standin.store.set_parameter(f"AJXP_USR_/{LOGIN}", ws, "meta.syncable", "REPO_SYNCABLE", False)


def disable_plugin_through_role(standin, ws, pair):
    standin.store.set_parameter("AJXP_GRP_/", ws, "meta.syncable", "AJXP_PLUGIN_ENABLED", False)


def disable_action_through_role(standin, ws, pair):
    standin.store.set_action(f"AJXP_USR_/{LOGIN}", "AJXP_REPO_SCOPE_ALL", "meta.syncable", "changes", False)


def revoke_token(standin, ws, pair):
    response = requests.post(
        f"{standin.url}/api/pydio/keystore_revoke_tokens", data={"key_id": pair["t"]}, auth=(LOGIN, PASSWORD)
    )
    assert response.json()["result"] == "SUCCESS"


@dataclass(frozen=True)
class Case:
    grant: Callable
    act: Callable
    refused: frozenset = frozenset({"basic", "token"})  # clients the legacy server stops serving
    forwarded: bool = False  # the legacy server ignores the change: the shim forwards, PHP answers


CASES = {
    "password changed": Case(personal, change_password),
    "right removed": Case(personal, remove_right),
    "role removed": Case(through_role, delete_role),
    "role edited": Case(through_role, edit_role),
    "user moved to another group": Case(through_group, move_group),
    "user deleted": Case(personal, delete_user),
    "user locked": Case(personal, lock_user),
    "workspace deleted": Case(personal, delete_workspace),
    # Pydio 8.2.5 reads ajxp_repo.enabled and REPO_SYNCABLE and acts on neither:
    # the shim does not serve such a workspace itself, the legacy server answers.
    "workspace disabled": Case(personal, disable_workspace, frozenset(), forwarded=True),
    "REPO_SYNCABLE off": Case(personal, unsync_workspace, frozenset(), forwarded=True),
    "REPO_SYNCABLE off through a role": Case(personal, unsync_through_role, frozenset(), forwarded=True),
    "sync plugin disabled through a role": Case(personal, disable_plugin_through_role),
    "changes action disabled through a role": Case(personal, disable_action_through_role),
    "key-store token revoked": Case(personal, revoke_token, frozenset({"token"})),
}


@pytest.fixture
def team(standin):
    """A workspace made in the admin UI, an administrator, and nothing else yet."""
    ws = standin.store.add_workspace("team", "AJXP_DATA_PATH/team")
    standin.add_user(*ADMIN, rights=(), admin=True)
    return ws


def token_pair(base: str) -> dict:
    """A key-store token for the user, asked through *base* as the desktop client asks for one."""
    response = requests.get(f"{base}/api/pydio/keystore_generate_auth_token/laptop", auth=(LOGIN, PASSWORD))
    assert response.status_code == 200, response.content
    return response.json()


def polls(shim_url, ws, pair):
    path = f"/api/{ws}/changes/0"
    return {
        "basic": lambda base: requests.get(base + path, params=STREAM, auth=(LOGIN, PASSWORD)),
        "token": lambda base: requests.get(base + path, params=signed(path, pair)),
    }


@pytest.mark.parametrize("name", list(CASES))
def test_an_admin_action_reaches_the_first_poll_after_the_check_interval(standin, team, make_shim, name):
    case = CASES[name]
    case.grant(standin, team)
    assert requests.post(f"{standin.url}/api/{team}/mkfile/plan.txt", auth=(LOGIN, PASSWORD)).ok
    clock = FakeClock()
    shim = make_shim(clock=clock)
    pair = token_pair(shim.url)
    clients = polls(shim.url, team, pair)
    for poll in clients.values():
        assert [r["target"] for r in stream_rows(poll(shim.url).content)] == ["/plan.txt"]
    before = len(standin.log)
    for _ in range(3):
        clock.advance(10)  # polls as the desktop client makes them; the tables are checked before each
        for poll in clients.values():
            assert stream_rows(poll(shim.url).content)
    assert len(standin.log) == before, "polls before the action were not answered from the cache"

    case.act(standin, team, pair)
    clock.advance(1.001)
    for kind, poll in clients.items():
        seen = len(standin.log)
        from_shim = poll(shim.url)
        reached = [uri for _m, uri in list(standin.log)[seen:]]
        from_legacy = poll(standin.url)
        assert answer(from_shim) == answer(from_legacy), f"{name}, {kind}: not the legacy answer"
        if kind in case.refused:
            assert not has_change_row(from_shim.content), f"{name}, {kind}: a row after the action"
        else:
            assert stream_rows(from_shim.content), f"{name}, {kind}: rows the legacy server still sends"
        if case.forwarded:
            assert any(f"/changes/{authz.PROBE_SEQ}" not in uri for uri in reached), "not forwarded"


def test_nothing_changed_means_nothing_asked(standin, team, make_shim):
    """Changes elsewhere (another user's password, another workspace) leave a decision as it is."""
    personal(standin, team)
    standin.add_user("other", "other-secret")
    clock = FakeClock()
    shim = make_shim(clock=clock)
    poll = polls(shim.url, team, token_pair(shim.url))["basic"]
    poll(shim.url)
    probes = shim.authorizer.probes
    standin.store.set_password("other", "changed")
    standin.store.add_workspace("elsewhere", "AJXP_DATA_PATH/elsewhere")
    clock.advance(1.001)
    assert poll(shim.url).status_code == 200
    assert shim.authorizer.probes == probes
    assert shim.metrics.auth_cache.labels(result="revalidated")._value.get() >= 1


def test_a_decision_dropped_says_why(standin, team, make_shim, caplog):
    personal(standin, team)
    clock = FakeClock()
    shim = make_shim(clock=clock)
    poll = polls(shim.url, team, token_pair(shim.url))["basic"]
    poll(shim.url)
    standin.store.lock_user(LOGIN)
    clock.advance(1.001)
    with caplog.at_level("INFO", logger="shim.authz"):
        assert poll(shim.url).status_code == 401
    assert any("dropped: roles" in r.getMessage() for r in caplog.records)
    assert shim.metrics.auth_dropped.labels(reason="roles")._value.get() == 1
    assert shim.metrics.auth_tables_changed.labels(table="ajxp_roles")._value.get() == 1
    # The backstop: even unchanged rows are asked again after auth.max_age.
    standin.store.save_role(f"AJXP_USR_/{LOGIN}", acls={team: "rw"})  # unlocked again
    clock.advance(1.001)
    assert poll(shim.url).status_code == 200
    probes = shim.authorizer.probes
    clock.advance(3600)
    assert poll(shim.url).status_code == 200
    assert shim.authorizer.probes == probes + 1
    assert shim.metrics.auth_dropped.labels(reason="max_age")._value.get() == 1


@pytest.mark.parametrize("engine_name", ["sqlite", "mysql"])
def test_with_the_real_clock_a_changed_password_stops_the_next_poll(standin, team, db_url, start_shim):
    """No fake clock: the default interval, a real second."""
    personal(standin, team)
    assert requests.post(f"{standin.url}/api/{team}/mkfile/plan.txt", auth=(LOGIN, PASSWORD)).ok
    shim = start_shim(shim_environ(standin.url, db_url))
    poll = polls(shim.url, team, token_pair(shim.url))["basic"]
    assert stream_rows(poll(shim.url).content)
    change_password(standin, team, None)
    time.sleep(1.05)
    response = poll(shim.url)
    assert answer(response) == answer(poll(standin.url)) and response.status_code == 401


# --- rows Pydio reads that are easy to miss ------------------------------------------------------


def test_a_group_named_0_is_skipped_as_pydio_skips_it(standin, team, make_shim):
    """PHP's empty("0") is true: for /0/team Pydio loads AJXP_GRP_/ and AJXP_GRP_/team."""
    standin.store.save_role("AJXP_GRP_/team", acls={team: "rw"})
    standin.add_user(LOGIN, PASSWORD, group_path="/0/team", rights=())
    assert requests.post(f"{standin.url}/api/{team}/mkfile/plan.txt", auth=(LOGIN, PASSWORD)).ok
    clock = FakeClock()
    shim = make_shim(clock=clock)
    poll = polls(shim.url, team, token_pair(shim.url))["basic"]
    assert stream_rows(poll(shim.url).content)
    standin.store.save_role("AJXP_GRP_/team", acls={})
    clock.advance(1.001)
    assert not has_change_row(poll(standin.url).content)
    assert answer(poll(shim.url)) == answer(poll(standin.url))


@pytest.mark.parametrize("stored", ["raw", "prefix twice", "json"])
def test_assigned_roles_are_read_in_every_form_pydio_reads(standin, team, make_shim, stored):
    standin.store.save_role(ROLE, acls={team: "rw"}, owner="someone")  # owned: applies only when assigned
    standin.add_user(LOGIN, PASSWORD, rights=())
    value = {
        "raw": phpserialize.dumps({ROLE: True}).decode(),
        "prefix twice": "$phpserial$" + phpserialize.dumps({ROLE: True}).decode().replace(":", ":$phpserial$", 1),
        "json": '$json${"' + ROLE + '": true}',
    }[stored]
    with standin.engine.begin() as conn:
        conn.execute(db.user_rights.insert().values(login=LOGIN, repo_uuid="ajxp.roles", rights=value))
    assert standin.store.assigned_roles(LOGIN) == [ROLE]
    assert requests.post(f"{standin.url}/api/{team}/mkfile/plan.txt", auth=(LOGIN, PASSWORD)).ok
    clock = FakeClock()
    shim = make_shim(clock=clock)
    poll = polls(shim.url, team, token_pair(shim.url))["basic"]
    assert stream_rows(poll(shim.url).content)
    standin.store.save_role(ROLE, acls={}, owner="someone")
    clock.advance(1.001)
    assert not has_change_row(poll(shim.url).content)
    assert answer(poll(shim.url)) == answer(poll(standin.url))


def test_every_parent_of_a_workspace_counts(db_url):
    """A share of a share inherits through each parent: a grandparent's change is a change."""
    engine = db.create_engine(db_url)
    store = PydioStore(engine)
    ws = store.add_workspace("team", "AJXP_DATA_PATH/team")
    share = store.add_workspace("s1", "AJXP_PARENT_OPTION:PATH:/a")
    reshare = store.add_workspace("s2", "AJXP_PARENT_OPTION:PATH:/b")
    with engine.begin() as conn:
        conn.execute(db.repo.update().where(db.repo.c.uuid == share).values(parent_uuid=ws))
        conn.execute(db.repo.update().where(db.repo.c.uuid == reshare).values(parent_uuid=share))
    before = Fingerprints(engine).of(LOGIN, reshare)
    store.delete_workspace(ws)
    assert before.changed(Fingerprints(engine).of(LOGIN, reshare)) == ["workspace"]
    with engine.begin() as conn:  # a loop of parents: not for the shim to follow
        conn.execute(db.repo.update().where(db.repo.c.uuid == share).values(parent_uuid=reshare))
    assert Fingerprints(engine).of(LOGIN, reshare).facts.forward_reason
    engine.dispose()


@pytest.mark.parametrize("engine_name", ["mysql"])
def test_a_change_in_a_very_large_row_is_seen(db_url):
    """A value over half of max_allowed_packet (HEX() would give NULL there) still changes the signature."""
    engine = db.create_engine(db_url)
    watch = ChangeWatch(engine, interval=0.0)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO ajxp_plugin_configs VALUES ('authfront.keystore', REPEAT('A', 9437184))"))
    first = watch.generation()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE ajxp_plugin_configs SET configs = CONCAT('B', SUBSTRING(configs, 2))"))
    assert watch.generation() != first
    engine.dispose()


def test_row_digests_are_unambiguous():
    two = [("erin", "ajxp.roles", "x"), ("erin", "ws", "rw")]
    one = [("erin", "ajxp.roles", "x\x1f\x1eVerin\x1fVws\x1fVrw")]
    assert _digest(two) != _digest(one)
    assert _digest([("a", None)]) != _digest([("a", "")]) != _digest([("a", "N")])


def test_watched_files_count_like_tables(db_url, tmp_path):
    """Settings Pydio keeps in files: a new size or time is a change, so is a file that goes or comes."""
    bootstrap = tmp_path / "bootstrap.json"
    bootstrap.write_text('{"core.auth": {"ENABLE_USERS": true}}')
    engine = db.create_engine(db_url)
    watch = ChangeWatch(engine, interval=0.0, files=[str(bootstrap)])
    first = watch.generation()
    assert watch.generation() == first
    bootstrap.write_text('{"core.auth": {"ENABLE_USERS": false}}')
    os.utime(bootstrap, ns=(1, 10**18))
    second = watch.generation()
    assert second == first + 1
    bootstrap.unlink()
    assert watch.generation() == second + 1
    engine.dispose()
