"""The legacy stand-in authenticates and indexes like Pydio 8."""

import json

import requests
import sqlalchemy as sa
from helpers import client_sign

from shim.demo.standin import php_signed_uri


def change_types(standin):
    with standin.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT type, source, target FROM ajxp_changes ORDER BY seq"))]


def test_mkfile_rename_delete_fill_the_changes_table(standin):
    auth = ("alice", "alice-secret")
    api = standin.url + "/api/my-files"
    assert requests.post(api + "/mkfile/report.txt", auth=auth).status_code == 200
    assert requests.post(api + "/rename", data={"file": "/report.txt", "filename_new": "final.txt"}, auth=auth).ok
    # my-files has a recycle bin: a delete is a move into it, then a real delete inside it.
    assert requests.post(api + "/delete", data={"file": "/final.txt"}, auth=auth).ok
    assert requests.post(api + "/delete", data={"file": "/recycle_bin/final.txt"}, auth=auth).ok
    assert change_types(standin) == [
        ("create", "NULL", "/report.txt"),
        ("path", "/report.txt", "/final.txt"),
        ("create", "NULL", "/recycle_bin"),
        ("path", "/final.txt", "/recycle_bin/final.txt"),
        ("delete", "/recycle_bin/final.txt", "NULL"),
    ]
    with standin.engine.connect() as conn:
        idents = {r[0] for r in conn.execute(sa.text("SELECT repository_identifier FROM ajxp_changes"))}
    assert idents == {"1-alice"}


def test_bad_password_gets_the_pydio_401(standin):
    response = requests.get(standin.url + "/api/0/ls/", auth=("alice", "wrong"))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="Pydio API"'
    assert response.headers["Content-Type"] == "text/html; charset=UTF-8"
    assert response.content == b""


def test_no_right_and_unknown_workspace_answers(standin):
    standin.set_right("bob", "0", None)
    response = requests.get(standin.url + "/api/0/ls/", auth=("bob", "bob-secret"))
    assert response.status_code == 401
    assert response.content == b"You are not authorized to access this API."
    assert "WWW-Authenticate" not in response.headers
    response = requests.get(standin.url + "/api/nope/ls/", auth=("bob", "bob-secret"))
    assert response.status_code == 200
    assert response.text == (
        '<?xml version="1.0" encoding="UTF-8"?><tree ><message type="ERROR">'
        "Could not find workspace with id/alias nope</message></tree>"
    )


def test_token_signed_over_the_right_path_only(standin):
    tokens = requests.get(
        standin.url + "/api/pydio/keystore_generate_auth_token/laptop", auth=("alice", "alice-secret")
    ).json()
    # "sub dir é" as the client sends it
    wire_path = "/api/0/ls/sub%20dir%20%C3%A9"
    good = requests.get(
        standin.url + wire_path,
        params={"auth_token": tokens["t"], "auth_hash": client_sign(wire_path, tokens["t"], tokens["p"])},
    )
    # The folder does not exist: the stand-in answers 404 after authenticating.
    assert good.status_code in (200, 404)
    assert good.status_code != 401
    other = requests.get(
        standin.url + wire_path,
        params={"auth_token": tokens["t"], "auth_hash": client_sign("/api/0/ls/other", tokens["t"], tokens["p"])},
    )
    assert other.status_code == 401
    assert php_signed_uri(wire_path) == "/api/0/ls/sub%20dir%20%C3%A9"
    assert php_signed_uri("/pydio/api/0/ls/a+b~c/") == "/pydio/api/0/ls/a%20b%7Ec"


def test_changes_action_for_comparison(standin):
    auth = ("alice", "alice-secret")
    requests.post(standin.url + "/api/0/mkdir/docs", auth=auth)
    body = requests.get(standin.url + "/api/0/changes/0", params={"stream": "true"}, auth=auth).text
    lines = body.split("\n")
    assert lines[-1] == "LAST_SEQ:1"
    row = json.loads(lines[0])
    assert row["type"] == "create" and row["target"] == "/docs"
    assert '"target":"\\/docs"' in lines[0]
    assert requests.get(standin.url + "/api/0/changes/99", params={"stream": "true"}, auth=auth).text == "LAST_SEQ:1"


ALICE = ("alice", "alice-secret")


def test_rename_with_dest_takes_it_as_the_new_full_path(standin):
    """The desktop client renames within a folder with ``file`` and ``dest`` (the new full path)."""
    api = standin.url + "/api/0"
    assert requests.post(api + "/mkdir/docs", auth=ALICE).ok
    assert requests.post(api + "/mkfile/docs/a.txt", auth=ALICE).ok
    assert requests.post(api + "/rename", data={"file": "/docs/a.txt", "dest": "/docs/b.txt"}, auth=ALICE).ok
    assert change_types(standin)[-1] == ("path", "/docs/a.txt", "/docs/b.txt")
    assert requests.post(api + "/mkdir/archive", auth=ALICE).ok
    assert requests.post(api + "/move", data={"file": "/docs/b.txt", "dest": "/archive"}, auth=ALICE).ok
    assert change_types(standin)[-1] == ("path", "/docs/b.txt", "/archive/b.txt")


def test_a_database_slug_is_found_before_a_builtin_one(standin):
    from shim import db

    with standin.engine.begin() as conn:
        conn.execute(db.repo.insert().values(uuid="shadow", slug="default", accessType="fs", isTemplate=False))
        conn.execute(db.repo_options.insert().values(uuid="shadow", name="PATH", val=b"AJXP_DATA_PATH/shadow"))
    assert standin.store.find_workspace("default", "alice").id == "shadow"
    assert standin.store.find_workspace("0", "alice").id == "0"  # ids first, whoever holds them


def test_tokens_are_stored_as_pydio_stores_them(standin, engine_name):
    pair = requests.get(standin.url + "/api/pydio/keystore_generate_auth_token/dev", auth=ALICE).json()
    with standin.engine.connect() as conn:
        if engine_name == "postgresql":
            kind = conn.execute(
                sa.text(
                    "SELECT data_type FROM information_schema.columns WHERE table_name = "
                    "'ajxp_simple_store' AND column_name = 'serialized_data'"
                )
            ).scalar()
            assert kind == "bytea"
        stored = standin.store.token_data(pair["t"])
    assert stored["USER_ID"] == "alice" and stored["PRIVATE"] == pair["p"]


def test_odd_input_never_breaks_the_standin(standin):
    """An astral character in a token, a NUL in a filter: the legacy answers (401, a feed), never a 500."""
    odd_token = requests.get(
        standin.url + "/api/0/changes/0", params={"auth_token": "t\U0001f600k", "auth_hash": "n:" + "0" * 64}
    )
    assert odd_token.status_code == 401
    nul_filter = requests.get(standin.url + "/api/0/changes/0", params={"filter": "/do\x00cs"}, auth=ALICE)
    assert nul_filter.status_code == 200 and b"last_seq" in nul_filter.content


def test_seq_is_read_as_php_7_1_reads_it(standin):
    """PHP 7.1+: intval("1e1") is 10, intval("12abc") 12, intval("1.9") 1."""
    api = standin.url + "/api/0"
    for i in range(12):
        assert requests.post(api + f"/mkfile/f{i}.txt", auth=ALICE).ok

    def body(seq):
        return requests.get(f"{api}/changes/{seq}", params={"stream": "true"}, auth=ALICE).content

    assert body("1e1") == body("10") != body("1")
    assert body("12abc") == body("12")
    assert body("1.9") == body("1")
