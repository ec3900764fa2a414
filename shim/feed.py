"""The change feed, computed from ``ajxp_changes`` exactly as Pydio 8 prints it.

:func:`parse_feed_params` decides whether the shim can answer a request at all
(``None`` means "forward it"), :class:`FeedStream` runs the query on a
server-side cursor and yields the body in chunks as rows arrive, so memory does
not grow with the number of rows.

The rules (``docs/feed.md``) follow the legacy ``ChangesTracker::switchActions``
loop, quirks included: rows grouped by node rather than in seq order, the
``last_seq`` that can go down after a filtered node, ``substr()`` returning
``false`` on a too-short path.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import sqlalchemy as sa

from . import db, deadline
from .feedrows import encode_row, feed_rows, printable
from .phpcompat import is_valid_utf8_text, parse_seq, sanitize_alphanum

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json; charset=UTF-8"
#: Parameters the shim understands on a feed request; any other one is forwarded.
KNOWN_PARAMS = frozenset({"seq_id", "stream", "flatten", "filter", "auth_token", "auth_hash"})
#: Bytes of output gathered before a chunk is handed to the server (about 250
#: rows: a few milliseconds of a snapshot, and few enough writes per MiB).
CHUNK_BYTES = 64 * 1024
#: Rows fetched from the cursor at a time.
FETCH_ROWS = 1000

# A filter the shim is sure the legacy sanitiser leaves unchanged: absolute,
# no trailing slash, no empty, "." or ".." segment, none of the characters it
# rejects or strips, no "<" or ">" (stripped or escaped by its HTML filters),
# no "&" (entities are decoded) and no ":" (its XSS check refuses "data:",
# "javascript:"...).  Anything else is forwarded so PHP answers it.
_SIMPLE_FILTER = re.compile(r'^(/[^/\x00-\x1f"|?\\<>&:]+)+$')
_NUMERIC_BEYOND_INT = re.compile(r"^\s*[+-]?(\d+[.eE]|\.\d)")


class _SeenOnce:
    """Which skipped rows this process has logged already (a bounded set: one warning per row, not per poll)."""

    def __init__(self, size: int = 10000):
        self.size = size
        self._seen: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, seq: int) -> bool:
        with self._lock:
            if seq in self._seen:
                return False
            self._seen[seq] = None
            if len(self._seen) > self.size:
                self._seen.popitem(last=False)
            return True


SKIPPED = _SeenOnce()


class FeedError(Exception):
    """The database failed while the feed was being computed."""


def driver_rows(result, fetch=None):
    """The rows of *result*, a streamed SELECT: what SQLAlchemy read ahead, then the driver's own tuples.

    SQLAlchemy's iteration builds a Row for each row and makes a snapshot's
    fetch about 40 % slower than the driver alone (docs/benchmarks.md); the
    feed's columns need none of its result processing (integers and text, as
    the drivers return them; :func:`shim.feedrows.make_row` takes the rest).
    A streamed result holds the one row SQLAlchemy reads ahead (psycopg2 needs
    it for the columns): that row comes from SQLAlchemy, the rest from
    *fetch* (``fetchmany`` of the DB-API cursor by default).  Should it hold
    more, or hold it where this cannot see, every row comes SQLAlchemy's way.
    The driver's errors come as they are: the caller catches them too.
    """
    yield from result.fetchmany(1)
    read_ahead = getattr(result.cursor_strategy, "_rowbuffer", None)
    if read_ahead is None or len(read_ahead):
        yield from result
        return
    fetch = fetch or result.cursor.fetchmany
    while rows := fetch(FETCH_ROWS):
        yield from rows


@dataclass(frozen=True)
class FeedParams:
    """What a feed request asks for, parsed as the legacy server parses it."""

    seq: int
    stream: bool
    flatten: bool
    filter: str | None


def parse_feed_params(path_seq: str | None, params: dict[str, str]) -> FeedParams | None:
    """The feed parameters of a request, or ``None`` when it must be forwarded.

    *path_seq* is the ``{seq}`` path segment as sent, still percent-encoded
    (``None`` when absent); *params* the query string and form body merged,
    form last (Pydio merges ``$_GET`` then ``$_POST``: the body wins).
    """
    if set(params) - KNOWN_PARAMS:
        return None
    # The legacy REST router sets seq_id from the path AFTER merging query and
    # body, to "" when the path has none: a seq_id parameter never counts there.
    # Forwarded, so that no client depends on the shim reading it otherwise.
    if "seq_id" in params or path_seq is None:
        return None
    # The router matches the rawurldecoded path.  Some Pydio versions urldecode
    # the value once more: a "%" left after one decoding is forwarded.
    raw_seq = unquote_to_bytes(path_seq).decode("latin-1")
    # "/" (from %2F) changes how PHP routes the path; PHP cuts its REST path at a "?" (from %3F).
    if "%" in raw_seq or "/" in raw_seq or "?" in raw_seq:
        return None
    # PHP 7.1+ reads "1e3" as 1000 and "1.5" as 1: numeric forms beyond a plain
    # integer are left to the legacy server rather than reimplemented.
    if _NUMERIC_BEYOND_INT.match(sanitize_alphanum(raw_seq)):
        return None
    filter_value = params.get("filter")
    if filter_value is not None:
        if not _SIMPLE_FILTER.match(filter_value) or any(s in (".", "..") for s in filter_value.split("/")):
            return None
        if not is_valid_utf8_text(filter_value):
            return None
    return FeedParams(
        seq=parse_seq(raw_seq),
        stream="stream" in params,
        flatten="flatten" in params and params["flatten"] != "false",
        filter=filter_value,
    )


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern matching *prefix* literally at the start ('!' escapes)."""
    return prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"


def _build_feed_query(filtered: bool, with_max: bool = False):
    c, i = db.changes, db.index
    # With *with_max*, each row also carries the table's MAX(seq) as of the same
    # statement (an uncorrelated subquery, read once): one round trip gives rows
    # and MAX from one instant, where PHP needs a SELECT and a MAX.
    extra = [sa.select(sa.func.max(c.alias("m").c.seq)).scalar_subquery().label("very_last")] if with_max else []
    query = (
        sa.select(
            c.c.seq,
            c.c.node_id,
            c.c.type,
            c.c.source,
            c.c.target,
            i.c.bytesize,
            i.c.md5,
            i.c.mtime,
            i.c.node_path,
            c.c.repository_identifier,
            *extra,
        )
        .select_from(c.outerjoin(i, c.c.node_id == i.c.node_id))
        .where(c.c.repository_identifier == sa.bindparam("identifier"), c.c.seq > sa.bindparam("seq"))
        .order_by(c.c.node_id, c.c.seq)
    )
    if filtered:
        # The engine's own LIKE decides (case-insensitive on MySQL and SQLite,
        # sensitive on PostgreSQL), exactly as it does for the legacy query.
        pattern: sa.BindParameter[str] = sa.bindparam("pattern")
        query = query.where(sa.or_(c.c.source.like(pattern, escape="!"), c.c.target.like(pattern, escape="!")))
    return query


# Built once: a poll only binds its values (building a statement costs as much as running it).
_FEED_QUERIES = {(f, m): _build_feed_query(f, m) for f in (False, True) for m in (False, True)}


def feed_query_and_values(identifier: str, seq: int, filter_value: str | None, with_max: bool = False):
    """``(statement, values)`` of the legacy SELECT: the workspace's rows after *seq*, by node then seq.

    *with_max* adds the table's ``MAX(seq)`` as an eleventh column of each row.
    """
    values = {"identifier": identifier, "seq": seq}
    if filter_value is not None:
        values["pattern"] = _like_prefix(filter_value.rstrip("/") + "/")
    return _FEED_QUERIES[filter_value is not None, with_max], values


def feed_query(identifier: str, seq: int, filter_value: str | None):
    """The legacy SELECT with its values bound (for EXPLAIN and inspection)."""
    statement, values = feed_query_and_values(identifier, seq, filter_value)
    return statement.params(values)


def empty_body(stream: bool, very_last: int) -> bytes:
    """The answer with no row to send: the table's MAX (1 when it is empty) as ``last_seq``."""
    last_seq = very_last or 1
    return b"\nLAST_SEQ:%d" % last_seq if stream else b'{"changes":[], "last_seq":%d}' % last_seq


class QuietAnswer:
    """Stands for the feed of an answer made from memory (nothing sent, nothing to release)."""

    rows_sent = 0
    rows_skipped = 0

    def close(self):
        pass


QUIET = QuietAnswer()


def reset_body(stream: bool) -> bytes:
    """The answer to a seq above the table's MAX: "start again from zero"."""
    return b"LAST_SEQ:1" if stream else b'{"changes":[],"last_seq":1}'


class FeedStream:
    """The body of one feed answer, computed while it is sent.

    Creating it runs the first queries, so that a database failure can still
    become a 503; iterating yields bytes; :meth:`close` (called by the WSGI
    server, also on client disconnect) releases the cursor and connection.
    *very_last* is the table's ``MAX(seq)`` when the caller knows it from a
    read made within the last moments (:mod:`shim.watermark`): the answer is
    then the one PHP gives at that instant, and the feed skips its own MAX.
    """

    def __init__(
        self, engine, identifier: str, params: FeedParams, recycle_bin: str = "", very_last: int | None = None
    ):
        self._deadline = deadline.WATCHED.get(engine)  # PostgreSQL: fetches get a client-side deadline
        self._driver_error = engine.dialect.loaded_dbapi.Error  # what the rows' fetches raise (driver_rows)
        self.params = params
        self.recycle_bin = recycle_bin
        self.rows_sent = 0
        self.rows_skipped = 0
        self._exhausted = False
        self.very_last = 0  # MAX(seq) of the table read, once known
        self._conn = None
        self._result = None
        self._reset = False
        # MAX known from the caller (shim.watermark): the SELECT reads it again, with the rows.
        self._with_max = very_last is not None
        try:
            for attempt in (1, 2):
                try:
                    self._start(engine, identifier, very_last)
                    break
                except sa.exc.DBAPIError as exc:
                    # The feed's MySQL connections are not pinged before use (shim.db):
                    # one the server closed meanwhile fails here, and nothing was read yet.
                    self._release()
                    if attempt == 2 or not exc.connection_invalidated:
                        raise
                    log.info("feed: a pooled connection was closed by the server (%s); retrying", db.first_line(exc))
        except sa.exc.SQLAlchemyError as exc:
            self._release()
            raise FeedError(db.first_line(exc)) from exc

    def _start(self, engine, identifier: str, very_last: int | None) -> None:
        """The table's MAX (unless known) and the legacy SELECT, streamed; nothing when MAX says so."""
        if very_last is None:
            self._conn = engine.connect()
            very_last = db.max_seq(self._conn)
        self.very_last = very_last
        if very_last > 0 and self.params.seq > very_last:
            self._reset = True
            self._release()
            return
        if self.params.seq >= very_last:
            # Nothing can follow the table's MAX: the answer is the empty
            # feed, without the query (the hot path: most polls find nothing).
            self._exhausted = True
            self._release()
            return
        conn = self._conn = self._conn or engine.connect()
        statement, values = feed_query_and_values(identifier, self.params.seq, self.params.filter, self._with_max)
        self._result = conn.execution_options(stream_results=True, yield_per=FETCH_ROWS).execute(statement, values)

    def __iter__(self):
        if self._reset:
            yield reset_body(self.params.stream)
            return
        separator = "\n" if self.params.stream else ","
        lead = "" if self.params.stream else '{"changes":['  # what comes before the next chunk's rows
        texts: list[str] = []
        size = 0
        last_seq_box: list = [None, 0]
        try:
            rows = ()  # no result: nothing after MAX, no query run
            if self._result is not None:
                fetch = (
                    deadline.guarded_fetch(self._result.cursor, self._conn, self._deadline) if self._deadline else None
                )
                rows = driver_rows(self._result, fetch)
            if self._with_max:
                rows = self._rows_and_max(rows)
            for row in feed_rows(rows, self.params, self.recycle_bin, last_seq_box):
                text = encode_row(row)
                # A string PHP cannot encode holds a surrogate, which the encoder
                # writes as "\udXXX": only a row whose text has one is checked.
                if "\\ud" in text and not printable(row):
                    self._skip(row)
                    continue
                texts.append(text)
                size += len(text)
                if size >= CHUNK_BYTES:
                    self.rows_sent += len(texts)
                    yield (lead + separator.join(texts)).encode("ascii")
                    lead, texts, size = separator, [], 0
            self._exhausted = True
            last_seq = last_seq_box[0]
            if last_seq is None:
                # No $lastSeq: the table's MAX, which PHP reads again here.  The
                # value read before the query (or by the watermark a moment ago)
                # is the same on a quiet table and costs no round trip; a row read
                # above it (committed since) raises it, as PHP's second MAX would,
                # and a row that arrived unseen is never skipped.
                last_seq = max(self.very_last, last_seq_box[1]) or 1
        except (sa.exc.SQLAlchemyError, self._driver_error) as exc:
            # The body is already under way: end it without a LAST_SEQ line so the
            # client can never take a partial answer for a complete one.
            log.error("feed: database error after %d rows: %s", self.rows_sent, db.first_line(exc))
            self._release()
            raise FeedError("database error while streaming") from exc
        self.rows_sent += len(texts)
        body = lead + separator.join(texts) if texts else ("" if lead == separator else lead)
        yield (body + (f"\nLAST_SEQ:{last_seq}" if self.params.stream else f'], "last_seq":{last_seq}}}')).encode(
            "ascii"
        )
        self._release()

    def _skip(self, row: dict) -> None:
        """A row PHP's json_encode cannot print (invalid UTF-8): PHP prints nothing for it, nor does the feed."""
        self.rows_skipped += 1
        if SKIPPED.first_time(row["seq"]):
            log.warning(
                "feed: skipped change seq=%s node_id=%s: a path is not valid UTF-8 (logged once; "
                "counted in shim_feed_rows_skipped_total)",
                row["seq"],
                row["node_id"],
            )

    def _rows_and_max(self, rows):
        """The rows without their MAX column; the MAX they carry becomes the feed's (the SELECT's instant)."""
        for r in rows:
            self.very_last = max(self.very_last, r[10])
            yield r[:10]

    def _release(self):
        if self._result is not None and not self._exhausted and self._conn is not None:
            # A client gone mid-feed: closing a server-side cursor would make
            # MySQL drain the rest of the result first; drop the connection.
            dbapi_cursor = getattr(getattr(self._result, "context", None), "cursor", None)
            try:
                self._conn.invalidate()
                # PyMySQL's unbuffered cursor would still try to drain the closed
                # socket when collected; there is nothing left to drain.
                if type(dbapi_cursor).__module__.startswith("pymysql"):
                    pending = getattr(dbapi_cursor, "_result", None)
                    if pending is not None:
                        pending.unbuffered_active = False
                    dbapi_cursor.connection = None
            except Exception:  # already broken: closing below is enough
                pass
        if self._result is not None:
            try:
                self._result.close()
            except Exception:  # the connection may already be gone
                pass
            self._result = None
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def primed(self):
        """This stream with its first chunk already computed (database errors raise here, as FeedError)."""
        chunks = iter(self)
        try:
            first = next(chunks)
        except StopIteration:
            return self
        return _Primed(first, chunks, self)

    def close(self):
        self._release()


class _Primed:
    """A feed stream whose first chunk is computed: the chunk, then the rest; closing closes the stream."""

    def __init__(self, first: bytes, rest, stream: FeedStream):
        self.first, self.rest, self.stream = first, rest, stream

    def __iter__(self):
        yield self.first
        yield from self.rest

    def close(self):
        self.stream.close()
