"""``/_shim/health`` and ``/_shim/metrics`` of a served shim in front of the real stand-in."""

from __future__ import annotations

import socket
import time

import pytest
import requests
import sqlalchemy as sa
from conftest import USERS
from helpers import plain_engine
from prometheus_client.parser import text_string_to_metric_families

from shim import config as config_module

ALICE = ("alice", USERS["alice"][0])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve(start_shim):
    """Serve a shim built from settings on a loopback port; returns its base URL."""

    def start(upstream_url, database_url, **settings):
        config = config_module.Config(upstream_url=upstream_url, database_url=database_url, **settings)
        return start_shim(config=config).url + (config.public_prefix or "")

    return start


def health(url, forwarded_for: str | None = "127.0.0.1"):
    """The health answer, asked as an operator on the proxy's machine would (details shown)."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    response = requests.get(url + "/_shim/health", headers=headers, timeout=30)
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    return response.status_code, response.json()


def test_health_ok(standin, db_url, serve):
    status, body = health(serve(standin.url, db_url))
    assert status == 200
    assert body == {"status": "ok", "checks": {"database": "ok", "upstream": "ok"}}


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_health_names_a_database_that_is_down(standin, serve):
    status, body = health(serve(standin.url, f"mysql+pymysql://root@127.0.0.1:{closed_port()}/pydio"))
    # The legacy server answers: the shim still serves (forwarding the feed), degraded.
    assert status == 200
    assert body["status"] == "degraded" and "forwarded to the legacy server" in body["reason"]
    assert body["checks"]["upstream"] == "ok"
    assert body["checks"]["database"].startswith("failed: ")
    assert "Can't connect" in body["checks"]["database"]


@pytest.mark.parametrize("engine_name", ["mysql"])
def test_health_names_an_upstream_that_is_down(db_url, serve):
    port = closed_port()
    status, body = health(serve(f"http://127.0.0.1:{port}", db_url))
    assert status == 503
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["upstream"].startswith("failed: ")
    assert "legacy server" in body["checks"]["upstream"]


@pytest.mark.parametrize("engine_name", ["postgresql"])
def test_health_checks_the_feed_replica(standin, db_url, serve):
    status, body = health(serve(standin.url, db_url, database_feed_url=db_url))
    assert (status, body["checks"]) == (200, {"database": "ok", "feed_database": "ok", "upstream": "ok"})
    replica = f"postgresql+psycopg2://postgres@127.0.0.1:{closed_port()}/pydio"
    status, body = health(serve(standin.url, db_url, database_feed_url=replica))
    assert (status, body["status"]) == (200, "degraded")
    assert body["checks"]["database"] == "ok" and body["checks"]["upstream"] == "ok"
    assert body["checks"]["feed_database"].startswith("failed: ")


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_admin_paths_follow_the_public_prefix_and_settings(standin, db_url, serve):
    url = serve(
        standin.url, db_url, public_prefix="/pydio", admin_metrics_path="/internal/metrics", admin_health_path=""
    )
    assert url.endswith("/pydio")
    metrics = requests.get(url + "/internal/metrics")
    assert metrics.status_code == 200 and "# HELP shim_feed_requests_total" in metrics.text
    before = len(standin.log)
    # The default paths, no longer the shim's, are ordinary requests forwarded to the legacy server.
    for path in ("/_shim/metrics", "/_shim/health"):
        response = requests.get(url + path)
        assert response.status_code == 404 and "# HELP" not in response.text and "checks" not in response.text
    assert [uri for _method, uri in list(standin.log)[before:]] == ["/_shim/metrics", "/_shim/health"]


def samples(url) -> dict:
    response = requests.get(url + "/_shim/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")  # Prometheus text format
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def wait_for(url, expected: dict, timeout=5.0) -> dict:
    """Metrics once every expected sample has its value (counters are updated when a response is closed)."""
    deadline = time.monotonic() + timeout
    while True:
        current = samples(url)
        if all(current.get(key, 0) == value for key, value in expected.items()) or time.monotonic() > deadline:
            return current
        time.sleep(0.05)


def test_metrics_move_with_requests(standin, db_url, serve):
    url = serve(standin.url, db_url)
    before = samples(url)

    def at(name, **labels):
        return before.get((name, tuple(sorted(labels.items()))), 0)

    for name in ("a.txt", "b.txt"):
        assert requests.post(f"{url}/api/default/mkfile/{name}", auth=ALICE).ok
    engine = plain_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT COUNT(*) FROM ajxp_changes WHERE repository_identifier = '0'")).scalar()
    engine.dispose()
    assert rows == 2
    for _ in range(2):
        feed = requests.get(f"{url}/api/default/changes/0", params={"stream": "true"}, auth=ALICE)
        assert feed.status_code == 200 and feed.text.endswith(f"LAST_SEQ:{rows}")

    expected = {
        ("shim_proxy_requests_total", (("status", "200"),)): at("shim_proxy_requests_total", status="200") + 2,
        ("shim_proxy_duration_seconds_count", ()): at("shim_proxy_duration_seconds_count") + 2,
        ("shim_feed_requests_total", (("status", "200"),)): at("shim_feed_requests_total", status="200") + 2,
        ("shim_feed_rows_total", ()): at("shim_feed_rows_total") + 2 * rows,
        ("shim_feed_duration_seconds_count", ()): at("shim_feed_duration_seconds_count") + 2,
        ("shim_auth_cache_total", (("result", "miss"),)): at("shim_auth_cache_total", result="miss") + 1,
        ("shim_auth_cache_total", (("result", "hit"),)): at("shim_auth_cache_total", result="hit") + 1,
    }
    after = wait_for(url, expected)
    assert {key: after.get(key, 0) for key in expected} == expected
    assert after[("shim_proxy_response_bytes_total", ())] > at("shim_proxy_response_bytes_total")


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_metrics_count_upstream_failures(db_url, serve):
    url = serve(f"http://127.0.0.1:{closed_port()}", db_url)
    assert requests.get(f"{url}/api/default/ls/", auth=ALICE).status_code == 502
    key_errors = ("shim_upstream_errors_total", (("kind", "unreachable"),))
    key_502 = ("shim_proxy_requests_total", (("status", "502"),))
    after = wait_for(url, {key_errors: 1, key_502: 1})
    assert (after.get(key_errors), after.get(key_502)) == (1, 1)


@pytest.mark.slow
def test_metrics_add_up_the_workers_of_one_server(sqlite_standin, tmp_path):
    """Two workers: every scrape, whichever worker answers it, counts every request (no jumps back)."""
    from gunicorn_helpers import GunicornServer

    env = {"PYDIO_SHIM_UPSTREAM_URL": sqlite_standin.url, "PYDIO_SHIM_DATABASE_URL": sqlite_standin.db_url}
    with GunicornServer(env, tmp_path, workers=2, threads=2) as server:
        assert len(server.worker_pids()) == 2
        sent = 30
        for _ in range(sent):  # new connections: spread over both workers
            assert requests.get(server.url + "/_standin/echo/m", headers={"Connection": "close"}).status_code == 200

        def scrape() -> float:
            text = requests.get(server.url + "/_shim/metrics", headers={"Connection": "close"}).text
            line = next(
                line for line in text.splitlines() if line.startswith('shim_proxy_requests_total{status="200"}')
            )
            return float(line.split()[-1])

        # A request is counted when its worker closes the response, which can be
        # just after the client has read the last byte: wait for the last ones.
        deadline = time.monotonic() + 5
        while (first := scrape()) < sent:
            assert time.monotonic() < deadline, first
            time.sleep(0.02)
        seen = [first] + [scrape() for _ in range(8)]
        assert seen == [sent] * len(seen), seen


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_health_details_only_for_a_client_a_trusted_proxy_vouches_for(db_url, serve):
    """The peer (127.0.0.1, a trusted proxy) is not enough: the forwarded client must be trusted too."""
    url = serve(f"http://127.0.0.1:{closed_port()}", db_url)
    detail = "failed: cannot connect to the legacy server"
    assert health(url, forwarded_for="127.0.0.1")[1]["checks"]["upstream"].startswith(detail)
    assert health(url, forwarded_for="203.0.113.9, 127.0.0.1")[1]["checks"]["upstream"] == "failed"
    assert health(url, forwarded_for="203.0.113.9")[1]["checks"]["upstream"] == "failed"
    assert health(url, forwarded_for=None)[1]["checks"]["upstream"] == "failed"


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_health_details_never_for_a_peer_that_is_not_a_trusted_proxy(db_url, serve):
    url = serve(f"http://127.0.0.1:{closed_port()}", db_url, proxy_trusted_proxies=("192.0.2.1",))
    assert health(url, forwarded_for="127.0.0.1")[1]["checks"]["upstream"] == "failed"
    assert health(url, forwarded_for="192.0.2.1")[1]["checks"]["upstream"] == "failed"
