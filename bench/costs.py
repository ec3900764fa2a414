"""Where an incremental poll's time goes: the database calls the shim makes, one by one.

Each step is timed alone in this process (one thread, a loop), wall clock and
CPU, on the feed engine the application itself builds (``ShimApp.feed_engine``
from the same ``PYDIO_SHIM_*`` settings as the benchmarked shim) and with the
feed module's own statements, so the figures follow the code.  Also the price
of one new PyMySQL connection with and without its default TLS context, which
a pool smaller than the worker's thread count would pay again and again.
"""

from __future__ import annotations

import time

import pymysql

from shim import config as config_module
from shim import db, feed, wsgi


def _timed(fn, seconds: float, at_most: int = 100_000) -> dict:
    fn()  # warm: connection made, statement compiled and cached
    calls = 0
    wall, cpu = time.perf_counter(), time.process_time()
    deadline = wall + seconds
    while calls < at_most and time.perf_counter() < deadline:
        fn()
        calls += 1
    return {
        "wall_ms": (time.perf_counter() - wall) * 1000 / calls,
        "cpu_ms": (time.process_time() - cpu) * 1000 / calls,
        "calls": calls,
    }


def _statement(identifier: str, seq: int):
    """``(statement, values)`` as FeedStream runs it (older code: a statement with values bound)."""
    if hasattr(feed, "feed_query_and_values"):
        return feed.feed_query_and_values(identifier, seq, None)
    return feed.feed_query(identifier, seq, None), None


def poll_costs(shim_environ: dict, db_settings: dict, identifier: str, seq: int, seconds: float = 0.6) -> list:
    """``[(step, figures)]`` for the steps of one poll, and for opening a connection."""
    app = wsgi.create_app(config_module.load(environ=shim_environ))
    engine = app.feed_engine
    steps = []
    try:

        def checkout():
            with engine.connect():
                pass

        steps.append(("feed engine: pool checkout + return", _timed(checkout, seconds)))
        with engine.connect() as conn:
            steps.append(("MAX(seq) through SQLAlchemy (db.max_seq)", _timed(lambda: db.max_seq(conn), seconds)))

            def empty_select():
                statement, values = _statement(identifier, seq)
                streaming = conn.execution_options(stream_results=True, yield_per=feed.FETCH_ROWS)
                result = streaming.execute(statement, values) if values is not None else streaming.execute(statement)
                result.fetchall()
                result.close()

            steps.append(("feed SELECT, streamed, no row back", _timed(empty_select, seconds)))
            raw = conn.connection.dbapi_connection
            with raw.cursor() as cur:

                def raw_max():
                    cur.execute("SELECT MAX(seq) FROM ajxp_changes")
                    cur.fetchall()

                steps.append(("MAX(seq), PyMySQL cursor alone", _timed(raw_max, seconds)))
    finally:
        for each in {id(app.engine): app.engine, id(app.feed_engine): app.feed_engine}.values():
            each.dispose()

    def connect(**extra):
        def once():
            pymysql.connect(
                host=db_settings["host"],
                port=int(db_settings["port"]),
                user=db_settings["user"],
                password=db_settings["password"],
                database=db_settings["database"],
                **extra,
            ).close()

        return once

    steps.append(("new PyMySQL connection, default options (TLS context)", _timed(connect(), seconds * 2, at_most=40)))
    steps.append(
        ("new PyMySQL connection, ssl_disabled=True", _timed(connect(ssl_disabled=True), seconds, at_most=400))
    )
    return steps
