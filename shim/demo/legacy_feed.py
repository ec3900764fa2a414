"""The stand-in's ``changes`` action: a literal, unoptimised rendition of the legacy PHP loop.

Written apart from :mod:`shim.feed` on purpose: the golden tests compare the
shim's feed with this one, so the two must not share code.  It reads the
table as ``ChangesTracker::switchActions`` does (``MAX(seq)``, the SELECT, and
``MAX(seq)`` again at the end) and prints with PHP's rules.
"""

from __future__ import annotations

import json
import re

import sqlalchemy as sa

# PHP 7.1+ reads the leading numeric part of a string, exponent included ("1e3" is 1000).
_PHP_NUMERIC_PREFIX = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE]-?\d+)?")
_INT64 = (-(2**63), 2**63 - 1)


def php_intval(text: str) -> int:
    """PHP 7.1+ ``intval()`` of a string that holds only ``[A-Za-z0-9_.-]``."""
    match = _PHP_NUMERIC_PREFIX.match(text)
    if not match:
        return 0
    number = match.group(0)
    if re.fullmatch(r"-?\d+", number):
        value = int(number)
    else:
        try:
            value = int(float(number))
        except (OverflowError, ValueError):  # inf: PHP gives an undefined value, saturate instead
            value = _INT64[1] if not number.startswith("-") else _INT64[0]
    return max(_INT64[0], min(_INT64[1], value))


def _read(engine, identifier: str, seq: int, params: dict):
    """``(rows, MAX(seq) at the end)`` as the legacy action reads them; rows None: the seq is beyond MAX."""
    with engine.connect() as conn:
        very_last = conn.execute(sa.text("SELECT MAX(seq) FROM ajxp_changes")).scalar() or 0
        if very_last > 0 and seq > very_last:
            return None, very_last
        sql = (
            "SELECT c.seq, c.repository_identifier, c.node_id, c.type, c.source, c.target, "
            "i.bytesize, i.md5, i.mtime, i.node_path FROM ajxp_changes c LEFT JOIN ajxp_index i "
            "ON c.node_id = i.node_id WHERE c.repository_identifier = :ident AND c.seq > :seq"
        )
        binds = {"ident": identifier, "seq": seq}
        if "filter" in params:
            filt = params["filter"].replace("\0", "")  # PHP's sanitiser drops NUL bytes
            like = filt.rstrip("/").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
            sql += " AND (c.source LIKE :like ESCAPE '\\' OR c.target LIKE :like ESCAPE '\\')"
            if engine.dialect.name == "mysql":
                sql = sql.replace("ESCAPE '\\'", "ESCAPE '\\\\'")
            binds["like"] = like
        sql += " ORDER BY c.node_id, c.seq"
        rows = [dict(r._mapping) for r in conn.execute(sa.text(sql), binds)]
        return rows, conn.execute(sa.text("SELECT MAX(seq) FROM ajxp_changes")).scalar()


def changes_body(engine, identifier: str, recycle_bin: str, params: dict, path_seq: str) -> str:
    """The body the legacy server prints for a ``changes`` request."""
    seq_param = params.get("seq_id", path_seq)
    stream = "stream" in params
    sep = "\n" if stream else ","
    seq = php_intval("".join(c for c in seq_param if c.isascii() and (c.isalnum() or c in "_.-")))
    rows, table_max = _read(engine, identifier, seq, params)
    if rows is None:
        return "LAST_SEQ:1" if stream else '{"changes":[],"last_seq":1}'
    filt = params["filter"].replace("\0", "") if "filter" in params else None
    order = {"path": 0, "content": 1, "create": 2, "delete": 3}
    out: list[str] = []
    sent, last_seq = False, None
    prev: dict = {}
    prev_id = -1

    def emit(row):
        nonlocal sent
        if sent:
            out.append(sep)
        # PHP's json_encode() gives false for text that is not UTF-8: echo prints nothing.
        out.append(json.dumps(row, separators=(",", ":")).replace("/", "\\/") if _php_encodable(row) else "")
        sent = True

    flatten = "flatten" in params and params["flatten"] != "false"
    for r in rows:
        row = _legacy_row(r, recycle_bin)
        if not flatten:
            if not _filter_row(row, filt):
                emit(row)
            continue
        if row["node_id"] == prev_id:
            prev["target"], prev["seq"] = row["target"], row["seq"]
            if row["type"] == "create" and prev["type"] == "delete":
                prev["type"] = "create"
            elif order[row["type"]] > order[prev["type"]]:
                prev["type"] = row["type"]
        else:
            if prev and (prev["source"] != prev["target"] or prev["type"] == "content"):
                if _filter_row(prev, filt):
                    prev, prev_id, last_seq = row, row["node_id"], row["seq"]
                    continue
                emit(prev)
            prev, prev_id = row, row["node_id"]
        if last_seq is None or row["seq"] > last_seq:
            last_seq = row["seq"]
    if prev and (prev["source"] != prev["target"] or prev["type"] == "content") and not _filter_row(prev, filt):
        emit(prev)
        if last_seq is None or prev["seq"] > last_seq:
            last_seq = prev["seq"]
    if last_seq is None:
        last_seq = table_max or 1
    body = "".join(out) + (f"\nLAST_SEQ:{last_seq}" if stream else f'], "last_seq":{last_seq}}}')
    return body if stream else '{"changes":[' + body


def _legacy_row(r, recycle_bin: str) -> dict:
    """One joined row as the PHP loop builds it, a move into or out of the recycle bin rewritten."""
    row = {
        "seq": int(r["seq"]),
        "node_id": int(r["node_id"]),
        "type": r["type"],
        "source": r["source"],
        "target": r["target"],
        "node": {
            "bytesize": None if r["bytesize"] is None else int(r["bytesize"]),
            "md5": r["md5"],
            "mtime": None if r["mtime"] is None else int(r["mtime"]),
            "node_path": r["node_path"],
            "repository_identifier": r["repository_identifier"],
        },
    }
    if recycle_bin and row["type"] == "path":
        if row["source"].startswith("/" + recycle_bin):
            row["source"], row["type"] = "NULL", "create"
        elif row["target"].startswith("/" + recycle_bin):
            row["target"], row["type"] = "NULL", "delete"
    return row


def _strpos_is_zero(haystack, needle: bytes) -> bool:
    """PHP's ``strpos($haystack, $needle) === 0`` on byte strings (null reads as "")."""
    return (haystack or b"").startswith(needle)


def _substr(value, start: int):
    """PHP 7's ``substr($value, $start)`` on bytes: ``false`` when too short."""
    value = value or b""
    return False if len(value) < start else value[start:]


def _filter_row(row, filt):
    """The legacy filterRow(), done on bytes as PHP does: True drops the row, else rewrites it."""
    if not filt:
        return False
    enc = lambda v: v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v  # noqa: E731
    dec = lambda v: v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v  # noqa: E731
    needle, node = enc(filt), row["node"]
    source, target, node_path = enc(row["source"]), enc(row["target"]), enc(node["node_path"])
    in_source, in_target = _strpos_is_zero(source, needle + b"/"), _strpos_is_zero(target, needle + b"/")
    if not (in_source or in_target):
        return True
    if row["type"] == "path" and not in_source:
        row["type"], source = "create", b"NULL"
    elif row["type"] == "path" and not in_target:
        row["type"], target = "delete", b"NULL"
    source = _substr(source, len(needle)) if in_source else source
    target = _substr(target, len(needle)) if in_target else target
    if row["type"] != "delete":
        node_path = _substr(node_path, len(needle))
    elif not _strpos_is_zero(node_path, needle):
        node_path = False
    row["source"], row["target"], node["node_path"] = dec(source), dec(target), dec(node_path)
    return False


def _php_encodable(value) -> bool:
    """False when some string in *value* is not valid UTF-8 (held as surrogate escapes)."""
    if isinstance(value, dict):
        return all(_php_encodable(v) for v in value.values())
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True
