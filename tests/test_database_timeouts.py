"""A silent database costs a request a bounded wait, never the shim: health, metrics and forwarding go on.

The shim reads the database through a relay that can stall (a hung network or
server); the legacy stand-in reads it directly, as PHP on another path would.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests
import sqlalchemy as sa
from conftest import USERS
from helpers import StallingRelay, plain_engine, serve_app, shim_environ

pytestmark = pytest.mark.slow
ALICE = ("alice", USERS["alice"][0])
FEED = "/api/0/changes/0/?stream=true"
READ_TIMEOUT = 1.0


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


@pytest.fixture
def relayed(standin, db_url, engine_name):
    if engine_name == "sqlite":
        pytest.skip("SQLite is a local file: nothing between the shim and it can stall")
    url = sa.engine.make_url(db_url)
    relay = StallingRelay(url.host or "127.0.0.1", url.port or {"mysql": 3306, "postgresql": 5432}[engine_name])
    relayed_url = url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    environ = shim_environ(
        standin.url,
        relayed_url,
        database_read_timeout=READ_TIMEOUT,
        database_connect_timeout=READ_TIMEOUT,
        database_retry_interval=1,
    )
    server = serve_app(environ)
    assert requests.post(standin.url + "/api/0/mkfile/a.txt", auth=ALICE).ok
    yield server, relay
    relay.resume()
    server.stop()
    relay.close()


@pytest.mark.parametrize("engine_name", ["mysql", "postgresql"])
def test_a_stalled_database_costs_one_bounded_wait_and_the_shim_recovers(relayed, standin):
    server, relay = relayed
    served = requests.get(server.url + FEED, auth=ALICE, timeout=30)
    assert served.status_code == 200 and b"a.txt" in served.content
    relay.stall()
    # The feed: one read timeout, then the legacy server answers (it reaches the database its own way).
    response, waited = timed(lambda: requests.get(server.url + FEED, auth=ALICE, timeout=60))
    assert response.status_code == 200 and b"a.txt" in response.content
    assert waited < READ_TIMEOUT * 3 + 2, waited
    # While it stays silent: polls go straight to the legacy server, health and metrics answer.
    response, waited = timed(lambda: requests.get(server.url + FEED, auth=ALICE, timeout=60))
    assert response.status_code == 200 and waited < 1.5, waited
    health, waited = timed(lambda: requests.get(server.url + "/_shim/health", timeout=60))
    assert health.json()["status"] == "degraded" and waited < READ_TIMEOUT * 2 + 2, waited
    metrics, waited = timed(lambda: requests.get(server.url + "/_shim/metrics", timeout=60))
    assert metrics.status_code == 200 and waited < 1, waited
    forwarded, waited = timed(lambda: requests.get(server.url + "/api/0/ls/", auth=ALICE, timeout=60))
    assert forwarded.status_code == 200 and waited < 1, waited
    # Back again: served by the shim, no restart, no connection left hanging in the pool.
    relay.resume()
    deadline = time.monotonic() + 30
    while server.app.database.degraded or server.app.database.reason is not None:
        requests.get(server.url + FEED, auth=ALICE, timeout=60)
        assert time.monotonic() < deadline, "the shim did not come back"
        time.sleep(0.3)
    standin.log.clear()
    again = requests.get(server.url + FEED, auth=ALICE, timeout=30)
    assert again.status_code == 200 and b"a.txt" in again.content
    assert ("GET", FEED) not in list(standin.log), "still forwarded"


@pytest.mark.parametrize("engine_name", ["mysql"])
def test_a_locked_changes_table_never_takes_health_metrics_or_forwarding_down(standin, db_url):
    """LOCK TABLES ajxp_changes WRITE for a while: the polls wait for it, nothing else does."""
    server = serve_app(shim_environ(standin.url, db_url, database_read_timeout=READ_TIMEOUT))
    locker = plain_engine(db_url)
    lock = locker.connect()
    try:
        lock.exec_driver_sql("LOCK TABLES ajxp_changes WRITE, ajxp_index WRITE")
        results = []
        polls = [
            threading.Thread(
                target=lambda: results.append(requests.get(server.url + FEED, auth=ALICE, timeout=120).status_code)
            )
            for _ in range(4)
        ]
        for poll in polls:
            poll.start()
        time.sleep(READ_TIMEOUT + 1)
        for path in ("/_shim/health", "/_shim/metrics"):
            response, waited = timed(lambda path=path: requests.get(server.url + path, timeout=30))
            assert response.status_code == 200 and waited < 1.5, (path, waited)
        response, waited = timed(lambda: requests.get(server.url + "/api/0/stat/", auth=ALICE, timeout=30))
        assert response.status_code == 200 and waited < 1.5, waited
    finally:
        lock.exec_driver_sql("UNLOCK TABLES")
        lock.close()
        locker.dispose()
    for poll in polls:
        poll.join(60)
    assert results == [200] * 4
    server.stop()
