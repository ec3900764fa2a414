"""New connections spread over the workers by their open connections (shim.balance)."""

from __future__ import annotations

import os
import re
import socket
import time

import pytest
import requests

from shim.balance import ConnectionCounts


def test_a_slot_is_claimed_once_and_free_again_when_released():
    counts = ConnectionCounts(slots=3)
    first, second = counts.claim(), counts.claim()
    assert (first, second) == (0, 1)
    counts.release(first)
    assert counts.claim() == 0
    assert counts.claim() == 2 and counts.claim() is None  # full


def test_the_fewest_connections_are_those_of_started_workers_other_than_oneself():
    counts = ConnectionCounts(slots=4)
    a, b, c = counts.claim(), counts.claim(), counts.claim()
    assert counts.fewest_elsewhere(a) is None  # claimed but not started yet
    counts.publish(a, 101, 5)
    counts.publish(b, 102, 7)
    assert counts.fewest_elsewhere(a) == 7 and counts.fewest_elsewhere(b) == 5
    counts.publish(c, 103, 2)
    assert counts.fewest_elsewhere(a) == 2 and counts.fewest_elsewhere(c) == 5
    counts.release(c)
    assert counts.fewest_elsewhere(a) == 7


def test_the_table_is_shared_across_fork():
    counts = ConnectionCounts(slots=2)
    mine, child_slot = counts.claim(), counts.claim()
    counts.publish(mine, os.getpid(), 1)
    pid = os.fork()
    if pid == 0:  # the child writes its count; the parent must see it
        counts.publish(child_slot, os.getpid(), 9)
        os._exit(0)
    os.waitpid(pid, 0)
    assert counts.fewest_elsewhere(mine) == 9


@pytest.mark.slow
def test_a_burst_of_kept_alive_connections_is_split_between_the_workers(sqlite_standin, tmp_path):
    """8 connections opened at once: each worker gets 4 (not all 8 to the first one awake)."""
    from gunicorn_helpers import GunicornServer

    env = {"PYDIO_SHIM_UPSTREAM_URL": sqlite_standin.url, "PYDIO_SHIM_DATABASE_URL": sqlite_standin.db_url}
    with GunicornServer(env, tmp_path, workers=2, threads=4) as server:
        assert len(server.worker_pids()) == 2
        # Both workers up and in their loop (the second may still be importing the app):
        # until then only the first one takes connections.
        deadline = time.monotonic() + 20
        while len(set(re.findall(r"\[(\d+)\] INFO shim\.access: ", server.log()))) < 2:
            assert time.monotonic() < deadline, server.log()[-2000:]
            requests.get(server.url + "/_shim/health", headers={"Connection": "close"}, timeout=10)
        socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(8)]
        try:
            time.sleep(0.3)  # every connection accepted before any request
            for n, sock in enumerate(socks):
                sock.sendall(f"GET /_standin/echo/conn{n} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            for sock in socks:
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            deadline = time.monotonic() + 5
            while server.log().count("/_standin/echo/conn") < 8:
                assert time.monotonic() < deadline, server.log()[-2000:]
                time.sleep(0.02)
        finally:
            for sock in socks:
                sock.close()
        served = re.findall(r"\[(\d+)\] INFO shim\.access: \S+ GET /_standin/echo/conn", server.log())
        per_worker = sorted(served.count(pid) for pid in set(served))
        assert per_worker == [4, 4], per_worker
