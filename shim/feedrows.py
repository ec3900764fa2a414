"""The legacy per-row rules of the feed, as PHP applies them to each row it reads.

A row as Pydio builds it from the query's columns (:func:`make_row`), the
recycle-bin rewrite, the ``filter`` rewrite, flattening into one row per node
(:func:`feed_rows`), and the row's JSON text (:func:`encode_row`).  Every rule
follows the legacy loop, quirks included; :mod:`shim.feed` streams the result.
"""

from __future__ import annotations

import typing
from json.encoder import encode_basestring_ascii as _ascii_string  # json's C escaper

from . import db
from .phpcompat import equals_null, fix_escaped_del, is_valid_utf8_text, json_scalar

if typing.TYPE_CHECKING:
    from .feed import FeedParams

TYPE_RANK = {"path": 0, "content": 1, "create": 2, "delete": 3}


def _to_int(value):
    return None if value is None else int(value)


_to_text = db.as_text


def make_row(r) -> dict:
    """One change row in the legacy key order.

    Written for speed (it runs for every row of a snapshot): drivers hand text
    back as ``str``, and only anything else goes through :func:`db.as_text`.
    """
    seq, node_id, type_, source, target, bytesize, md5, mtime, node_path, identifier = r
    return {
        "seq": int(seq),
        "node_id": int(node_id),
        "type": type_ if type_.__class__ is str else _to_text(type_),
        "source": source if source.__class__ is str else _to_text(source),
        "target": target if target.__class__ is str else _to_text(target),
        "node": {
            "bytesize": None if bytesize is None else int(bytesize),
            "md5": md5 if md5.__class__ is str else _to_text(md5),
            "mtime": None if mtime is None else int(mtime),
            "node_path": node_path if node_path.__class__ is str else _to_text(node_path),
            "repository_identifier": identifier if identifier.__class__ is str else _to_text(identifier),
        },
    }


def _text(value) -> str:
    """A column as PHP's string functions see it: NULL reads as ``""``."""
    return "" if value is None else value


def _rank_above(new_type, old_type) -> bool:
    """PHP's ``$order[$new] > $order[$old]``; an unknown type ranks as null.

    PHP compares null with an integer as booleans, hence the fallback.
    """
    new_rank, old_rank = TYPE_RANK.get(new_type), TYPE_RANK.get(old_type)
    if new_rank is None or old_rank is None:
        return bool(new_rank) > bool(old_rank)
    return new_rank > old_rank


def cancel_recycle(row: dict, recycle_bin: str) -> None:
    """A move out of the recycle bin is a creation, a move into it a deletion."""
    if row["type"] != "path":
        return
    prefix = "/" + recycle_bin
    if _text(row["source"]).startswith(prefix):
        row["source"], row["type"] = "NULL", "create"
    elif _text(row["target"]).startswith(prefix):
        row["target"], row["type"] = "NULL", "delete"


def _php7_substr(value, start: int):
    """PHP 7 ``substr($value, $start)`` for ``$start >= 0``, counting BYTES of the UTF-8 text.

    ``false`` when the text is shorter than *start* bytes (``null`` counts as
    ``""``).  A cut inside a multi-byte character leaves text that is not valid
    UTF-8 (held as surrogate escapes): PHP cannot print such a row, the feed
    skips it.
    """
    text = "" if value is None or value is False else value
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # not text PHP could have held: left for the printable check
        return text
    if len(raw) < start:
        return False
    return raw[start:].decode("utf-8", "surrogateescape")


def filter_out(row: dict, filter_value: str | None) -> bool:
    """The legacy filterRow(): ``True`` drops the row; otherwise rewrites it in place."""
    if filter_value is None or equals_null(filter_value):
        return False
    prefix = filter_value + "/"
    src_in = _text(row["source"]).startswith(prefix)
    tgt_in = _text(row["target"]).startswith(prefix)
    if not src_in and not tgt_in:
        return True
    if row["type"] == "path":
        if not src_in:
            row["type"], row["source"] = "create", "NULL"
        elif not tgt_in:
            row["type"], row["target"] = "delete", "NULL"
    # PHP cuts strlen($filter) bytes; source and target start with the filter,
    # so cutting its characters is the same there, but not in node_path.
    strip = len(filter_value.encode("utf-8", "surrogateescape"))
    if src_in:
        row["source"] = row["source"][len(filter_value) :]
    if tgt_in:
        row["target"] = row["target"][len(filter_value) :]
    node = row["node"]
    if row["type"] != "delete":
        node["node_path"] = _php7_substr(node["node_path"], strip)
    elif not (isinstance(node["node_path"], str) and node["node_path"].startswith(filter_value)):
        node["node_path"] = False
    return False


def _worth_sending(row: dict) -> bool:
    """PHP's ``source != target || type == "content"`` (loose: NULL equals "")."""
    return _text(row["source"]) != _text(row["target"]) or row["type"] == "content"


def feed_rows(rows, params: FeedParams, recycle_bin: str, last_seq_box: list):
    """Yield the rows to print, in order; ``last_seq_box[0]`` ends as the legacy ``$lastSeq`` (or None).

    Without flattening, ``last_seq_box[1]`` ends as the highest seq read (0 when none).

    *rows* is any iterable of result tuples in :func:`feed_query` column order.
    """
    last_seq = None
    if not params.flatten:
        highest = 0
        for r in rows:
            row = make_row(r)
            if row["seq"] > highest:
                highest = last_seq_box[1] = row["seq"]
            if recycle_bin:
                cancel_recycle(row, recycle_bin)
            if not filter_out(row, params.filter):
                yield row
        return
    previous = None
    for r in rows:
        row = make_row(r)
        if recycle_bin:
            cancel_recycle(row, recycle_bin)
        if previous is not None and row["node_id"] == previous["node_id"]:
            previous["target"], previous["seq"] = row["target"], row["seq"]
            if row["type"] == "create" and previous["type"] == "delete":
                previous["type"] = "create"
            elif _rank_above(row["type"], previous["type"]):
                previous["type"] = row["type"]
        else:
            if previous is not None and _worth_sending(previous):
                if filter_out(previous, params.filter):
                    # Legacy quirk: last_seq jumps to this row's seq, even downwards.
                    previous, last_seq = row, row["seq"]
                    last_seq_box[0] = last_seq
                    continue
                yield previous
            previous = row
        if last_seq is None or row["seq"] > last_seq:
            last_seq = row["seq"]
        last_seq_box[0] = last_seq
    if previous is not None and _worth_sending(previous) and not filter_out(previous, params.filter):
        yield previous
        if last_seq is None or previous["seq"] > last_seq:
            last_seq_box[0] = previous["seq"]


def printable(row: dict) -> bool:
    """False when a string of the row is not valid UTF-8 (PHP could not encode it).

    Undecodable bytes (surrogate escapes) and lone surrogates are never ASCII:
    only strings that are not are put to the UTF-8 codec.
    """
    node = row["node"]
    for value in (row["type"], row["source"], row["target"], node["md5"], node["node_path"],
                  node["repository_identifier"]):  # fmt: skip
        if value.__class__ is str and not value.isascii() and not is_valid_utf8_text(value):
            return False
    return True


#: The four change types as JSON (a type is one of them on every engine: an
#: enumerated column on MySQL and PostgreSQL, the triggers' words on SQLite).
_TYPE_TEXT = {name: f'"{name}"' for name in TYPE_RANK}


def encode_row(row: dict) -> str:
    """One row as PHP's ``json_encode`` prints it, in one pass over its fields.

    The keys are the legacy ones in the legacy order (:func:`make_row`); each
    string is escaped by json's own C escaper, and PHP's differences from it
    (``/`` written ``\\/``, DEL written raw) are applied once to the whole
    text: no key, number, ``null`` or ``false`` holds either.  The same text as
    ``json_encode(row)``, without a generic encoder walking the dicts.
    """
    node = row["node"]
    type_, source, target = row["type"], row["source"], row["target"]
    md5, node_path, identifier = node["md5"], node["node_path"], node["repository_identifier"]
    bytesize, mtime = node["bytesize"], node["mtime"]
    text = (
        f'{{"seq":{row["seq"]},"node_id":{row["node_id"]},"type":{_TYPE_TEXT.get(type_) or _bare(type_)},'
        f'"source":{_ascii_string(source) if source.__class__ is str else _bare(source)},'
        f'"target":{_ascii_string(target) if target.__class__ is str else _bare(target)},'
        f'"node":{{"bytesize":{"null" if bytesize is None else bytesize},'
        f'"md5":{_ascii_string(md5) if md5.__class__ is str else _bare(md5)},'
        f'"mtime":{"null" if mtime is None else mtime},'
        f'"node_path":{_ascii_string(node_path) if node_path.__class__ is str else _bare(node_path)},'
        f'"repository_identifier":{_ascii_string(identifier) if identifier.__class__ is str else _bare(identifier)}'
        "}}"
    )
    if "/" in text:
        text = text.replace("/", "\\/")
    return fix_escaped_del(text)


def _bare(value) -> str:
    """A scalar as ``json_encode`` writes it, before the row's own pass for ``/`` and DEL."""
    return _ascii_string(value) if value.__class__ is str else json_scalar(value)  # None, a bool, an int
