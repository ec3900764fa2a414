"""What a legacy ``changes`` call does besides listing rows keeps happening with the shim in front.

``REQUIRES_INDEXATION``: the first call indexes the workspace and clears the
flag.  ``OBSERVE_STORAGE_CHANGES``: a call rescans the storage when the last
rescan is older than ``OBSERVE_STORAGE_EVERY`` minutes, so files put straight
into the storage reach the feed.  The stand-in does both as ChangesTracker
does; the shim must leave the first to the legacy server and make the calls
of the second itself, once per interval, while it answers the polls.
"""

from __future__ import annotations

import os

import phpserialize
import pytest
import requests
from helpers import FakeClock
from test_auth import STREAM, stream_rows, wait_until

LOGIN, PASSWORD = "erin", "erin-secret"


def meta_sources(**options) -> str:
    return "$phpserial$" + phpserialize.dumps({"meta.syncable": {"REPO_SYNCABLE": True, **options}}).decode()


def put_on_disk(standin, folder: str, name: str) -> None:
    """A file written into the storage behind Pydio's back (an rsync, a Samba share)."""
    path = os.path.join(standin.data_dir, folder)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, name), "w") as fh:
        fh.write(name)


def targets(response) -> list[str]:
    return [r["target"] for r in stream_rows(response.content)]


def test_a_workspace_awaiting_indexation_gets_it_from_the_legacy_server(standin, make_shim):
    put_on_disk(standin, "shared-in", "old-report.txt")
    ws = standin.store.add_workspace("imported", "AJXP_DATA_PATH/shared-in",
                                     META_SOURCES=meta_sources(REQUIRES_INDEXATION=True))  # fmt: skip
    standin.add_user(LOGIN, PASSWORD, rights=(ws,))
    clock = FakeClock()
    shim = make_shim(clock=clock)
    path = f"/api/{ws}/changes/0"

    first = requests.get(shim.url + path, params=STREAM, auth=(LOGIN, PASSWORD))
    assert standin.calls["indexations"] == 1
    assert targets(first) == ["/old-report.txt"]  # indexed by that very call, as in Pydio
    assert b"REQUIRES_INDEXATION" not in standin.store.all_workspaces()[-1].options["META_SOURCES"].encode()

    seen = len(standin.log)
    for _ in range(3):
        clock.advance(10)
        assert targets(requests.get(shim.url + path, params=STREAM, auth=(LOGIN, PASSWORD))) == ["/old-report.txt"]
    assert standin.calls["indexations"] == 1
    # Answered by the shim now: at most one probe for the rewritten workspace rows.
    assert len(standin.log) - seen <= 1


@pytest.mark.parametrize("scope", ["shared", "user"])
def test_observed_storage_is_rescanned_once_per_interval(standin, make_shim, scope):
    every = 1  # minute
    folder = "observed" if scope == "shared" else "observed/AJXP_USER"
    ws = standin.store.add_workspace("observed", "AJXP_DATA_PATH/" + folder, META_SOURCES=meta_sources(
        OBSERVE_STORAGE_CHANGES=True, OBSERVE_STORAGE_EVERY=str(every)))  # fmt: skip
    standin.add_user(LOGIN, PASSWORD, rights=(ws,))
    clock = FakeClock()
    standin.side_effects.clock = clock  # PHP's time() and the shim's clock move together
    shim = make_shim(clock=clock)
    path = f"/api/{ws}/changes/0"

    def poll():
        return requests.get(shim.url + path, params=STREAM, auth=(LOGIN, PASSWORD))

    assert targets(poll()) == []
    assert standin.calls["storage_rescans"] == 1  # the first call (the shim's probe) rescanned
    put_on_disk(standin, folder.replace("AJXP_USER", LOGIN), "dropped.txt")
    for _ in range(5):  # within the interval: answered by the shim, no rescan
        clock.advance(10)
        assert targets(poll()) == []
    assert standin.calls["storage_rescans"] == 1

    clock.advance(every * 60)  # the interval is over: the next poll makes the shim call PHP
    calls = standin.calls["changes"]
    poll()
    rescanned, _ = wait_until(lambda: standin.calls["storage_rescans"] == 2, 5)
    assert rescanned and standin.calls["changes"] == calls + 1
    clock.advance(1.001)  # the change rows the rescan wrote, on the next poll
    assert targets(poll()) == ["/dropped.txt"]
    for _ in range(3):
        clock.advance(5)
        poll()
    assert standin.calls["storage_rescans"] == 2, "more than one call per interval"
    assert shim.metrics.storage_observations.labels(answer="allowed")._value.get() == 1


def test_an_observation_refused_drops_the_decision(standin, make_shim):
    ws = standin.store.add_workspace("observed", "AJXP_DATA_PATH/observed",
                                     META_SOURCES=meta_sources(OBSERVE_STORAGE_CHANGES=True))  # fmt: skip
    standin.add_user(LOGIN, PASSWORD, rights=(ws,))
    clock = FakeClock()
    standin.side_effects.clock = clock
    shim = make_shim(clock=clock)
    path = f"/api/{ws}/changes/0"
    assert requests.get(shim.url + path, params=STREAM, auth=(LOGIN, PASSWORD)).status_code == 200
    # The legacy server stops serving the user for a reason no row shows (its files, say).
    original = standin.store.has_right
    standin.store.has_right = lambda login, ws_id: False
    try:
        clock.advance(301 + 1)
        assert requests.get(shim.url + path, params=STREAM, auth=(LOGIN, PASSWORD)).status_code == 200
        dropped, _ = wait_until(lambda: len(shim.authorizer) == 0, 5)
        assert dropped, "the decision outlived a refused observation"
        response = requests.get(shim.url + path, params=STREAM, auth=(LOGIN, PASSWORD))
        assert response.status_code == 401
    finally:
        standin.store.has_right = original
