"""Idle polls answered from memory: the same bytes as PHP, no query, and never a row missed.

The process's watermark (:mod:`shim.watermark`) knows the table's MAX and, for
every row added since it first read the table, its identifier.  A poll for a
workspace with nothing new is answered from that, as PHP would have answered
at an instant of the refresh interval; anything else goes to the database.
"""

from __future__ import annotations

import threading

import pytest
import requests
import sqlalchemy as sa
from helpers import FakeClock
from test_auth import STREAM, credentials, stream_rows

from shim import db, watermark

FEED = "/api/0/changes/{seq}"


class Statements:
    """Counts the statements an engine runs."""

    def __init__(self, *engines):
        self.count = 0
        for engine in engines:
            sa.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *args):
        self.count += 1


def poll(base, seq, **params):
    return requests.get(base + FEED.format(seq=seq), params={**STREAM, **params}, auth=credentials("alice"))


def create(standin, name, ws="0", login="alice"):
    assert requests.post(f"{standin.url}/api/{ws}/mkfile/{name}", auth=credentials(login)).ok


def table_max(standin) -> int:
    with standin.engine.connect() as conn:
        return db.max_seq(conn)


@pytest.fixture
def shim(standin, make_shim):
    create(standin, "first.txt")
    clock = FakeClock()
    app = make_shim(clock=clock)
    app.clock = clock
    app.statements = Statements(app.engine, app.feed_engine)
    return app


def test_a_quiet_poll_is_answered_from_memory_with_the_legacy_bytes(standin, shim):
    top = table_max(standin)
    assert poll(shim.url, top).content == poll(standin.url, top).content  # learns the table
    for params in ({}, {"flatten": "true"}, {"filter": "/docs"}):
        for stream in (True, False):
            before = shim.statements.count
            if stream:
                ours, legacy = poll(shim.url, top, **params), poll(standin.url, top, **params)
            else:
                path = FEED.format(seq=top)
                ours = requests.get(shim.url + path, params=params, auth=credentials("alice"))
                legacy = requests.get(standin.url + path, params=params, auth=credentials("alice"))
            assert shim.statements.count == before, f"{params} stream={stream}: the database was asked"
            assert (ours.status_code, ours.content, ours.headers["Content-Type"]) == (
                legacy.status_code,
                legacy.content,
                legacy.headers["Content-Type"],
            )
    assert shim.metrics.feed_from_memory._value.get() >= 6


def test_a_new_row_reaches_its_workspace_and_moves_everyone_s_last_seq(standin, shim):
    top = table_max(standin)
    poll(shim.url, top)
    create(standin, "new.txt")  # a row for workspace 0
    create(standin, "mine.txt", ws="my-files")  # and one for alice's My Files
    # Within the refresh interval the memory is as PHP was at an instant of it: nothing new yet.
    assert poll(shim.url, top).content == f"\nLAST_SEQ:{top}".encode()
    shim.clock.advance(0.151)
    fresh = poll(shim.url, top)
    assert [r["target"] for r in stream_rows(fresh.content)] == ["/new.txt"]
    assert fresh.content == poll(standin.url, top).content
    mine = requests.get(f"{shim.url}/api/my-files/changes/{top + 1}", params=STREAM, auth=credentials("alice"))
    assert [r["target"] for r in stream_rows(mine.content)] == ["/mine.txt"]
    before = shim.statements.count
    assert poll(shim.url, top + 2).content == f"\nLAST_SEQ:{top + 2}".encode()  # quiet for 0 after its row
    assert shim.statements.count == before


def test_a_client_ahead_of_this_process_is_never_sent_back_to_zero(standin, shim):
    top = table_max(standin)
    poll(shim.url, top)
    create(standin, "elsewhere.txt", ws="my-files")
    # The client polled another worker that already knew seq top+1; this one reads at once.
    answer = poll(shim.url, top + 1)
    assert answer.content == f"\nLAST_SEQ:{top + 1}".encode() == poll(standin.url, top + 1).content
    assert poll(shim.url, top + 5).content == b"LAST_SEQ:1" == poll(standin.url, top + 5).content


def test_below_the_floor_the_database_answers(standin, shim, monkeypatch):
    monkeypatch.setattr(watermark, "INITIAL_TAIL", 1)
    create(standin, "second.txt", ws="my-files")
    top = table_max(standin)
    poll(shim.url, top)
    assert shim.watermark.floor == top - 1
    before = shim.statements.count
    old = poll(shim.url, 0)  # what the process knew nothing of when it started
    assert shim.statements.count > before
    assert old.content == poll(standin.url, 0).content and stream_rows(old.content)
    before = shim.statements.count
    assert poll(shim.url, top - 1).content == poll(standin.url, top - 1).content  # at the floor: memory
    assert shim.statements.count == before


def test_the_latest_rows_are_known_from_the_first_read(standin, shim):
    """A client a little behind when the process starts is answered from memory too."""
    create(standin, "mine.txt", ws="my-files")
    top = table_max(standin)
    first = poll(shim.url, top)  # the first read learns the table's latest rows
    assert first.content == poll(standin.url, top).content
    assert shim.watermark.floor == 0  # the whole (small) table is within the tail
    before = shim.statements.count
    behind = poll(shim.url, top - 1)  # workspace 0 has nothing after top - 1 (its row is first.txt, older)
    assert behind.content == poll(standin.url, top - 1).content == f"\nLAST_SEQ:{top}".encode()
    assert shim.statements.count == before


@pytest.mark.parametrize("engine_name", ["mysql", "postgresql"])
def test_a_row_committed_out_of_order_is_found(standin, shim):
    """Seq 101 in a transaction still open, 102 committed: 101 is a gap until it commits, then it is served."""
    top = table_max(standin)
    poll(shim.url, top)
    holder = db.create_engine(standin.engine.url.render_as_string(hide_password=False))
    conn = holder.connect()
    tx = conn.begin()
    conn.execute(db.index.insert().values(node_path="/late.txt", bytesize=1, md5="x", mtime=1,
                                          repository_identifier="0"))  # fmt: skip
    create(standin, "early.txt", ws="my-files")  # commits seq top+2 while top+1 is pending
    shim.clock.advance(0.151)
    # As PHP at this instant: the pending row is invisible, MAX is top+2.
    assert poll(shim.url, top).content == poll(standin.url, top).content == f"\nLAST_SEQ:{top + 2}".encode()
    assert top + 1 in shim.watermark._gaps
    tx.commit()
    conn.close()
    holder.dispose()
    # Within the same interval (no read since the commit): a poll below the gap is not quiet.
    before = shim.statements.count
    late = poll(shim.url, top)
    assert shim.statements.count > before
    assert [r["target"] for r in stream_rows(late.content)] == ["/late.txt"]
    assert late.content == poll(standin.url, top).content
    shim.clock.advance(0.151)
    assert poll(shim.url, top).content == late.content
    assert top + 1 not in shim.watermark._gaps


def test_a_gap_that_never_fills_raises_the_floor(standin, shim, monkeypatch):
    monkeypatch.setattr(watermark, "IDLE_REREAD", watermark.GAP_LIFETIME * 2)
    top = table_max(standin)
    poll(shim.url, top)
    with standin.engine.begin() as conn:  # seq top+1 taken, then rolled back: a hole for good
        conn.execute(db.changes.insert().values(seq=top + 2, repository_identifier="x", node_id=1, type="create",
                                                source="NULL", target="/x"))  # fmt: skip
    shim.clock.advance(0.151)
    poll(shim.url, top + 2)
    assert top + 1 in shim.watermark._gaps
    shim.clock.advance(watermark.GAP_LIFETIME + 1)
    poll(shim.url, top + 2)
    assert top + 1 not in shim.watermark._gaps and shim.watermark.floor >= top + 1
    before = shim.statements.count
    assert poll(shim.url, top).content == poll(standin.url, top).content
    assert shim.statements.count > before  # below the floor: asked


def test_a_table_whose_max_went_down_is_read_anew(standin, shim):
    top = table_max(standin)
    poll(shim.url, top)
    with standin.engine.begin() as conn:
        conn.execute(db.changes.delete())
    shim.clock.advance(0.151)
    assert poll(shim.url, top).content == poll(standin.url, top).content  # "LAST_SEQ:1"? as PHP says
    assert shim.watermark.max_seq == 0


def test_memory_stays_bounded(standin, shim, monkeypatch):
    monkeypatch.setattr(watermark, "MAX_IDENTIFIERS", 4)
    top = table_max(standin)
    poll(shim.url, top)
    with standin.engine.begin() as conn:
        for i in range(10):
            conn.execute(db.changes.insert().values(seq=top + 1 + i, repository_identifier=f"ws-{i}", node_id=i,
                                                    type="create", source="NULL", target="/x"))  # fmt: skip
    shim.clock.advance(0.151)
    poll(shim.url, top + 10)
    assert len(shim.watermark._last_of) <= 4
    assert shim.watermark.floor >= top + 6  # the forgotten identifiers' rows lie below it
    assert poll(shim.url, top + 10).content == poll(standin.url, top + 10).content


def test_concurrent_polls_share_one_refresh(standin, shim):
    top = table_max(standin)
    poll(shim.url, top)
    shim.clock.advance(1)
    refreshes = shim.watermark.refreshes
    threads = [threading.Thread(target=poll, args=(shim.url, top)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shim.watermark.refreshes - refreshes <= 2


def test_a_write_through_the_shim_is_seen_by_the_next_poll_at_once(standin, shim):
    top = table_max(standin)
    poll(shim.url, top)
    assert requests.post(f"{shim.url}/api/0/mkfile/through-the-shim.txt", auth=credentials("alice")).ok
    # No time passed: the forwarded write alone makes the process read the table again.
    answer = poll(shim.url, top)
    assert [r["target"] for r in stream_rows(answer.content)] == ["/through-the-shim.txt"]


@pytest.mark.parametrize("engine_name", ["mysql"])
def test_feed_connections_closed_by_the_server_are_replaced_without_a_forward(standin, shim):
    """The feed's MySQL connections are not pinged before use: one the server killed is retried once, not forwarded."""
    top = table_max(standin)
    poll(shim.url, top)
    create(standin, "after-kill.txt")
    feed_ids = []
    with shim.feed_engine.connect() as conn:  # the pooled connection the feed and the watermark use
        feed_ids.append(conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar())
    with standin.engine.connect() as admin:
        for connection_id in feed_ids:
            admin.exec_driver_sql(f"KILL {int(connection_id)}")
    forwarded = standin.calls["changes"]
    shim.clock.advance(0.151)  # the watermark reads first (on the killed connection), then the feed
    fresh = poll(shim.url, top)
    assert fresh.status_code == 200
    assert [r["target"] for r in stream_rows(fresh.content)] == ["/after-kill.txt"]
    assert fresh.content == poll(standin.url, top).content
    assert standin.calls["changes"] == forwarded + 1  # only the comparison poll above reached the stand-in
    # Now the feed's own query meets a killed connection (the watermark is fresh: it reads nothing).
    with shim.feed_engine.connect() as conn:
        killed = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
    with standin.engine.connect() as admin:
        admin.exec_driver_sql(f"KILL {int(killed)}")
    forwarded = standin.calls["changes"]
    everything = poll(shim.url, 0)  # below the floor: the database answers
    assert everything.status_code == 200 and standin.calls["changes"] == forwarded
    assert everything.content == poll(standin.url, 0).content


def test_a_jump_in_the_sequence_costs_no_memory(standin, shim):
    """A seq far beyond the MAX (AUTO_INCREMENT or setval moved): the floor rises, no gap per missing seq."""
    top = table_max(standin)
    poll(shim.url, top)
    far = top + 10 * watermark.MAX_GAPS
    insert_change(standin, far, "0", "/far.txt")
    shim.clock.advance(0.151)
    answer = poll(shim.url, far)
    assert answer.content == poll(standin.url, far).content == f"\nLAST_SEQ:{far}".encode()
    assert len(shim.watermark._gaps) == 0 and shim.watermark.floor == far - 1
    assert poll(shim.url, top).content == poll(standin.url, top).content  # below the floor: the database


@pytest.mark.parametrize("engine_name", ["mysql"])
@pytest.mark.parametrize("pause", ["busy", "idle"])
def test_the_table_rewritten_between_two_reads_is_read_anew(standin, shim, pause):
    """Rows replaced under known seqs (a restore, a failover) before MAX passes the old one again.

    Busy, the row at the newest seq known changed (its identifier); idle, no read
    for ``IDLE_REREAD`` seconds: either way the memory is read anew.
    """
    create(standin, "a.txt", ws="my-files")
    create(standin, "b.txt", ws="my-files")
    top = table_max(standin)
    poll(shim.url, top)  # this process learns: top-1 and top are alice's My Files
    with standin.engine.begin() as conn:
        conn.execute(db.changes.delete().where(db.changes.c.seq > top - 2))
        conn.execute(sa.text(f"ALTER TABLE ajxp_changes AUTO_INCREMENT = {top - 1}"))
    create(standin, "new-in-0.txt", ws="0")  # seq top-1, now workspace 0
    create(standin, "c.txt", ws="0" if pause == "busy" else "my-files")  # seq top: changed identifier when busy
    create(standin, "d.txt", ws="my-files")  # MAX above the old one again
    shim.clock.advance(0.151 if pause == "busy" else watermark.IDLE_REREAD + 1)
    answer = poll(shim.url, top - 2)
    assert answer.content == poll(standin.url, top - 2).content
    assert "/new-in-0.txt" in [r["target"] for r in stream_rows(answer.content)]


@pytest.mark.parametrize("engine_name", ["mysql"])
@pytest.mark.parametrize("stored", ["0 ", "0\u00a0", "\u00d8"])
def test_identifiers_match_as_the_mysql_collation_matches_them(standin, shim, stored):
    """``0 `` is ``0`` to utf8mb4_unicode_ci; a non-ASCII identifier is not compared from memory at all."""
    top = table_max(standin)
    poll(shim.url, top)
    insert_change(standin, top + 1, stored, "/odd.txt")
    shim.clock.advance(0.151)
    assert poll(shim.url, top).content == poll(standin.url, top).content
    with standin.engine.begin() as conn:
        conn.execute(db.changes.insert().values(seq=top + 2, repository_identifier="1-ALICE", node_id=1,
                                                type="create", source="NULL", target="/upper.txt"))  # fmt: skip
    shim.clock.advance(0.151)
    mine = "/api/my-files/changes/{seq}"
    ours = requests.get(shim.url + mine.format(seq=top + 1), params=STREAM, auth=credentials("alice"))
    legacy = requests.get(standin.url + mine.format(seq=top + 1), params=STREAM, auth=credentials("alice"))
    assert ours.content == legacy.content and [r["target"] for r in stream_rows(ours.content)] == ["/upper.txt"]


def test_a_view_stays_whole_while_another_request_resets_the_memory(standin, shim):
    """A view taken before a reset answers from what it saw, never from the emptied memory."""
    top = table_max(standin)
    poll(shim.url, top)
    create(standin, "mine.txt")
    shim.clock.advance(0.151)
    before_reset = shim.watermark.view()
    assert not before_reset.quiet("0", top)  # the new row is workspace 0's
    with standin.engine.begin() as conn:
        conn.execute(db.changes.delete().where(db.changes.c.seq > top))  # MAX goes down: reset
    shim.clock.advance(0.151)
    assert shim.watermark.view().max_seq == top
    assert not before_reset.quiet("0", top)


def test_a_failed_read_and_a_long_pause_start_the_memory_afresh(standin, shim, monkeypatch):
    top = table_max(standin)
    poll(shim.url, top)
    first = shim.watermark.refreshes
    shim.clock.advance(watermark.IDLE_REREAD + 1)
    assert poll(shim.url, top).content == poll(standin.url, top).content
    assert shim.watermark._read_at is not None and shim.watermark.refreshes == first + 1

    def failing(*args, **kwargs):
        raise sa.exc.OperationalError("SELECT", {}, Exception("server has gone away"))

    monkeypatch.setattr(shim.watermark, "_read", failing)
    shim.clock.advance(0.151)
    with pytest.raises(sa.exc.OperationalError):
        shim.watermark.view()
    assert shim.watermark._read_at is None  # the next read is a first read
    monkeypatch.undo()
    assert poll(shim.url, top).content == poll(standin.url, top).content


def test_a_failed_read_by_another_request_is_no_fresh_read(standin, shim, monkeypatch):
    """A client ahead of this process waits for a read that succeeded, never gets "start again" from an old MAX."""
    top = table_max(standin)
    poll(shim.url, top)
    create(standin, "elsewhere.txt", ws="my-files")  # MAX is top + 1; this process knows top
    wm, real_read, real_fresh = shim.watermark, shim.watermark._read, shim.watermark._fresh
    others = []

    def failing(started):
        raise sa.exc.OperationalError("SELECT", {}, Exception("lost connection"))

    def another_request_fails_first(now):
        if not others:  # after this request noted the reads begun, another one's read begins and fails
            others.append(1)
            monkeypatch.setattr(wm, "_read", failing)
            with pytest.raises(sa.exc.OperationalError):
                wm._refresh()
            monkeypatch.setattr(wm, "_read", real_read)
        return real_fresh(now)

    monkeypatch.setattr(wm, "_fresh", another_request_fails_first)
    assert wm.view(top + 1).max_seq == top + 1  # this request read the table itself
    others.clear()
    assert poll(shim.url, top + 1).content == f"\nLAST_SEQ:{top + 1}".encode() == poll(standin.url, top + 1).content


def test_many_small_holes_stay_within_the_gap_bound(standin, shim, monkeypatch):
    """Rows spaced by 3 (Galera's auto_increment_increment): the gaps stay bounded, the floor rises."""
    monkeypatch.setattr(watermark, "MAX_GAPS", 100)
    top = table_max(standin)
    poll(shim.url, top)
    wm, expire, most = shim.watermark, shim.watermark._expire, []

    def noting_the_gaps(now):
        most.append(len(wm._gaps))  # before any trimming: what a refresh allocated
        expire(now)

    monkeypatch.setattr(wm, "_expire", noting_the_gaps)
    with standin.engine.begin() as conn:
        for i in range(1, 301):
            conn.execute(db.changes.insert().values(seq=top + 3 * i, repository_identifier="0", node_id=i,
                                                    type="create", source="NULL", target=f"/f{i}"))  # fmt: skip
    shim.clock.advance(0.151)
    last = top + 900
    assert poll(shim.url, last).content == poll(standin.url, last).content == f"\nLAST_SEQ:{last}".encode()
    assert max(most) <= 100 and len(shim.watermark._gaps) <= 100 and shim.watermark.floor > top
    assert poll(shim.url, last - 3).content == poll(standin.url, last - 3).content


def insert_change(standin, seq, identifier, target):
    with standin.engine.begin() as conn:
        conn.execute(db.changes.insert().values(seq=seq, repository_identifier=identifier, node_id=1,
                                                type="create", source="NULL", target=target))  # fmt: skip
