"""The feed read exactly as the desktop sync client reads it.

PydioSync's SDK (``PydioSdk.changes_stream``) requests
``changes/{seq}/?stream=true[&filter=...]&flatten=...``, iterates the body's
lines, skips empty ones, stops at the first line starting with ``LAST_SEQ``
(``int(line.split(':')[1])``), and parses every other line with ``json.loads``
-- on macOS after ``line.decode('unicode_escape')`` -- then merges ``node``
into the change.  The older JSON path does
``json.loads(resp.content.decode('unicode_escape'))``.

``unicode_escape`` reads bytes as Latin-1 and expands ``\\uXXXX``: a body with
raw UTF-8 would come out as mojibake, which is why PHP's ``\\u`` escapes matter.
The client ran on Python 2, whose macOS build held text as UTF-16: there the
two halves of a surrogate pair *are* the astral character.  Python 3 keeps
them as two code points, so :func:`as_python2_saw_it` joins them, and nothing
else, to compare with the original names.

The files are made through the stand-in's real file actions, which keep
``ajxp_index`` current as the legacy server does.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
import requests
from conftest import USERS
from helpers import shim_environ

# unicode_escape warns about PHP's "\/": it keeps the backslash, and json.loads reads "\/" as "/".
pytestmark = pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")

ALICE = ("alice", USERS["alice"][0])
NAMES = ["/café.txt", "/日本", "/日本/😀 smile.txt", "/ü-umlaut", "/ü-umlaut/naïve 日本語.md"]


@pytest.fixture
def shim(standin, db_url, start_shim):
    # The files are written straight to the legacy server and read back at once:
    # the shim reads the table for every poll (no watermark interval) to see them.
    return start_shim(shim_environ(standin.url, db_url, feed_refresh_interval=0)).url


def make_files(standin):
    api = standin.url + "/api/my-files"
    for name in NAMES:
        action = "mkdir" if "." not in name.rsplit("/", 1)[1] else "mkfile"
        response = requests.post(api + "/" + action + quote(name), auth=ALICE, timeout=30)
        assert response.ok, response.text
    # A rename to a name with an astral character, so a path row carries one too.
    response = requests.post(
        api + "/rename", data={"file": "/café.txt", "filename_new": "café 😀.txt"}, auth=ALICE, timeout=30
    )
    assert response.ok, response.text


def as_python2_saw_it(text: str) -> str:
    """Join surrogate pairs into one character, as a UTF-16 Python 2 build held them."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")


def read_stream_like_the_client(body: bytes, mac: bool):
    """``PydioSdk.changes_stream``: (changes with node merged in, last_seq)."""
    changes = []
    for line in body.splitlines():
        if not line:
            continue
        if line.startswith(b"LAST_SEQ"):
            return changes, int(line.split(b":")[1])
        text = line.decode("unicode_escape") if mac else line
        change = json.loads(text)
        node = change.pop("node")
        merged = dict(list(node.items()) + list(change.items()))
        changes.append(merged)
    raise AssertionError("the feed ended without a LAST_SEQ line")


def paths_of(changes) -> list:
    return [as_python2_saw_it(c["target"]) for c in changes if c["target"] != "NULL"]


def test_stream_decoded_with_unicode_escape_gives_back_the_names(standin, shim):
    make_files(standin)
    url = shim + "/api/my-files/changes/0/?stream=true&flatten=true"
    body = requests.get(url, auth=ALICE, timeout=30).content
    assert body.isascii(), "raw UTF-8 in the body: unicode_escape would turn it into mojibake"
    final = ["/café 😀.txt", "/日本", "/日本/😀 smile.txt", "/ü-umlaut", "/ü-umlaut/naïve 日本語.md"]
    for mac in (True, False):
        changes, last_seq = read_stream_like_the_client(body, mac)
        assert sorted(paths_of(changes)) == sorted(final)
        assert sorted(as_python2_saw_it(c["node_path"]) for c in changes) == sorted(final)
        assert {c["repository_identifier"] for c in changes} == {"1-alice"}
        assert last_seq == max(c["seq"] for c in changes)
    # The same bytes as the legacy server's own answer.
    assert (
        body
        == requests.get(
            standin.url + "/api/my-files/changes/0/?stream=true&flatten=true", auth=ALICE, timeout=30
        ).content
    )


def test_raw_stream_from_a_later_seq_and_a_filter(standin, shim):
    """The client's incremental call: flatten=false from its last seq, with its remote folder as filter.

    The SDK appends ``&filter=`` + the folder unencoded; requests percent-encodes
    the non-ASCII characters of that URL, as it did for the client.
    """
    make_files(standin)
    first = requests.get(shim + "/api/my-files/changes/0/?stream=true&flatten=true", auth=ALICE, timeout=30)
    _, since = read_stream_like_the_client(first.content, mac=True)
    api = standin.url + "/api/my-files"
    assert requests.post(api + "/mkfile" + quote("/日本/新しい.txt"), auth=ALICE, timeout=30).ok
    assert requests.post(
        api + "/rename", data={"file": "/日本/😀 smile.txt", "filename_new": "😀😀.txt"}, auth=ALICE, timeout=30
    ).ok
    url = shim + f"/api/my-files/changes/{since}/?stream=true&filter=/日本&flatten=false"
    body = requests.get(url, auth=ALICE, timeout=30).content
    changes, last_seq = read_stream_like_the_client(body, mac=True)
    # Raw rows come by node: the renamed file's node is older than the new file's.
    assert [(c["type"], as_python2_saw_it(c["source"]), as_python2_saw_it(c["target"])) for c in changes] == [
        ("path", "/😀 smile.txt", "/😀😀.txt"),
        ("create", "NULL", "/新しい.txt"),
    ]
    assert last_seq == since + 2  # raw mode: the table's MAX
    assert (
        body
        == requests.get(
            standin.url + f"/api/my-files/changes/{since}/?stream=true&filter=/日本&flatten=false",
            auth=ALICE,
            timeout=30,
        ).content
    )


def test_json_answer_decoded_like_the_older_client(standin, shim):
    make_files(standin)
    response = requests.get(shim + "/api/my-files/changes/0", auth=ALICE, timeout=30)
    data = json.loads(response.content.decode("unicode_escape"))
    assert data["last_seq"] == max(c["seq"] for c in data["changes"])
    created = [as_python2_saw_it(c["target"]) for c in data["changes"] if c["type"] == "create"]
    assert sorted(created) == sorted(NAMES)
