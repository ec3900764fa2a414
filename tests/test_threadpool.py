"""The request thread pool: the thread that went idle last takes the next item."""

from __future__ import annotations

import threading
import time

from shim.threadpool import LastIdleFirstExecutor


def _wait_idle(pool, count, deadline=5.0):
    end = time.monotonic() + deadline
    while len(pool._work_queue._waiters) < count:
        assert time.monotonic() < end
        time.sleep(0.005)


def test_a_steady_load_keeps_to_the_thread_that_went_idle_last():
    with LastIdleFirstExecutor(max_workers=8) as pool:
        release = threading.Event()
        blockers = [pool.submit(release.wait) for _ in range(8)]  # all eight threads started
        release.set()
        for f in blockers:
            f.result(timeout=5)
        _wait_idle(pool, 8)
        names = set()
        for _ in range(50):  # one item at a time, each after the last went idle again
            names.add(pool.submit(lambda: threading.current_thread().name).result(timeout=5))
            _wait_idle(pool, 8)
        assert len(names) == 1, names


def test_every_item_runs_and_shutdown_ends_every_thread():
    pool = LastIdleFirstExecutor(max_workers=4)
    done = [pool.submit(lambda n=n: n * n) for n in range(500)]
    assert [f.result(timeout=10) for f in done] == [n * n for n in range(500)]
    threads = list(pool._threads)
    pool.shutdown(wait=True)
    assert threads and not any(t.is_alive() for t in threads)


def test_items_queued_while_every_thread_is_busy_run_in_order():
    with LastIdleFirstExecutor(max_workers=1) as pool:
        gate = threading.Event()
        pool.submit(gate.wait)
        ran = []
        later = [pool.submit(ran.append, n) for n in range(5)]
        gate.set()
        for f in later:
            f.result(timeout=5)
        assert ran == [0, 1, 2, 3, 4]
