"""Golden tests of the change feed: exact bytes for a fixed database, on every engine.

The database is built by writing ``ajxp_index`` directly, as the legacy server
does on each file operation; the triggers fill ``ajxp_changes``.  In a fresh
database both auto-increment counters start at 1 on MariaDB, PostgreSQL and
SQLite (checked by :func:`test_triggers_number_the_changes_from_one`), so
every ``seq`` and ``node_id`` below is written literally.

The expected answers are written out by hand from ``docs/feed.md``
(and the legacy ``ChangesTracker::switchActions`` loop), row by row, with the
reasoning in comments.  Nothing here calls :mod:`shim.feed`: the only code
shared with the expectations is :func:`php_json`, a small PHP ``json_encode``
written from its encoding rules, and :func:`framed`, the framing rules.
Every answer is requested over HTTP from the real application
(:func:`shim.wsgi.create_app`) in front of the legacy stand-in, and the same
request sent to the stand-in's own ``changes`` action must give the same bytes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import phpserialize
import pytest
import requests
import sqlalchemy as sa
from conftest import ENGINES, USERS, _create_database
from helpers import serve_app, shim_environ

from shim import db
from shim.demo.stack import ServerThread
from shim.demo.standin import LegacyStandin

M = 1_500_000_000  # mtime base
ALICE = ("alice", USERS["alice"][0])
BOB = ("bob", USERS["bob"][0])
CAROL = ("carol", USERS["carol"][0])
GROUP_WS = "5"  # group-scoped, created in ajxp_repo, no recycle bin


def md5(letter: str) -> str:
    """A recognisable 32-character md5 value."""
    return letter * 32


# --- the fixed database ----------------------------------------------------------

# One index write per entry, in this order.  ("ins", path, identifier, bytesize, md5, mtime),
# ("content", node_id, bytesize, md5, mtime), ("move", node_id, new path), ("del", node_id).
# A comment gives the seq the write produces and, for inserts, the node_id.
OPERATIONS = [
    ("ins", "/docs", "1-alice", 0, "directory", M + 1),  # 1   n1
    ("ins", "/docs/a.txt", "1-alice", 10, md5("a"), M + 2),  # 2   n2
    ("ins", "/shared.txt", "0", 5, md5("s"), M + 3),  # 3   n3
    ("ins", "/docs/café.txt", "1-alice", 4, md5("c"), M + 4),  # 4   n4
    ("ins", "/docs/日本.txt", "1-alice", 6, md5("j"), M + 5),  # 5   n5
    ("ins", "/docs/😀.txt", "1-alice", 7, md5("e"), M + 6),  # 6   n6  (U+1F600)
    ("ins", "/docs/bob-secret.txt", "1-bob", 8, md5("b"), M + 7),  # 7   n7
    ("content", 2, 11, md5("A"), M + 8),  # 8
    ("ins", "/50%_off", "1-alice", 0, "directory", M + 9),  # 9   n8
    ("ins", "/50%_off/deal.txt", "1-alice", 12, md5("d"), M + 10),  # 10  n9
    ("ins", "/docs/notes.txt", "1-alice", 13, md5("n"), M + 11),  # 11  n10
    ("move", 10, "/docs/NOTES.txt"),  # 12  case only
    ("ins", "/docs/sub", "1-alice", 0, "directory", M + 13),  # 13  n11
    ("ins", "/docs/sub/x.txt", "1-alice", 14, md5("x"), M + 14),  # 14  n12
    ("move", 11, "/docs/moved"),  # 15  folder rename:
    ("move", 12, "/docs/moved/x.txt"),  # 16  ...and its child
    ("ins", "/tmp.txt", "1-alice", 15, md5("t"), M + 17),  # 17  n13
    ("move", 13, "/docs/tmp.txt"),  # 18  into /docs
    ("ins", "/recycle_bin", "1-alice", 0, "directory", M + 19),  # 19  n14
    ("move", 4, "/recycle_bin/café.txt"),  # 20  into the bin
    ("ins", "/docs/old.txt", "1-alice", 16, md5("o"), M + 21),  # 21  n15
    ("move", 15, "/recycle_bin/old.txt"),  # 22  into the bin
    ("move", 15, "/docs/old.txt"),  # 23  restored
    ("del", 2),  # 24  real delete
    ("ins", "/docs/ephemeral.txt", "1-alice", 1, md5("p"), M + 25),  # 25  n16
    ("del", 16),  # 26
    ("content", 9, 17, md5("D"), M + 27),  # 27
    ("move", 5, "/é/abcdef"),  # 28  out of /docs
    ("move", 13, "/zz/ab"),  # 29  out of /docs
    ("ins", "/sales-q1.xlsx", "5-/sales", 18, md5("q"), M + 30),  # 30  n17
    ("ins", "/recycle_bin", "5-/sales", 0, "directory", M + 31),  # 31  n18
    ("move", 17, "/recycle_bin/sales-q1.xlsx"),  # 32  no bin in ws 5
    ("content", 3, 6, md5("S"), M + 33),  # 33
    ("ins", "/recycle_bin", "0", 0, "directory", M + 34),  # 34  n19
    ("move", 3, "/recycle_bin/shared.txt"),  # 35
    ("ins", "/50ab_off/x.txt", "1-alice", 19, md5("y"), M + 36),  # 36  n20  LIKE decoy for '%'
    ("ins", "/50%Xoff/y.txt", "1-alice", 20, md5("z"), M + 37),  # 37  n21  LIKE decoy for '_'
]
TABLE_MAX = 37

# What the triggers must have written: (seq, repository_identifier, node_id, type, source, target).
CHANGES = [
    (1, "1-alice", 1, "create", "NULL", "/docs"),
    (2, "1-alice", 2, "create", "NULL", "/docs/a.txt"),
    (3, "0", 3, "create", "NULL", "/shared.txt"),
    (4, "1-alice", 4, "create", "NULL", "/docs/café.txt"),
    (5, "1-alice", 5, "create", "NULL", "/docs/日本.txt"),
    (6, "1-alice", 6, "create", "NULL", "/docs/😀.txt"),
    (7, "1-bob", 7, "create", "NULL", "/docs/bob-secret.txt"),
    (8, "1-alice", 2, "content", "/docs/a.txt", "/docs/a.txt"),
    (9, "1-alice", 8, "create", "NULL", "/50%_off"),
    (10, "1-alice", 9, "create", "NULL", "/50%_off/deal.txt"),
    (11, "1-alice", 10, "create", "NULL", "/docs/notes.txt"),
    (12, "1-alice", 10, "path", "/docs/notes.txt", "/docs/NOTES.txt"),
    (13, "1-alice", 11, "create", "NULL", "/docs/sub"),
    (14, "1-alice", 12, "create", "NULL", "/docs/sub/x.txt"),
    (15, "1-alice", 11, "path", "/docs/sub", "/docs/moved"),
    (16, "1-alice", 12, "path", "/docs/sub/x.txt", "/docs/moved/x.txt"),
    (17, "1-alice", 13, "create", "NULL", "/tmp.txt"),
    (18, "1-alice", 13, "path", "/tmp.txt", "/docs/tmp.txt"),
    (19, "1-alice", 14, "create", "NULL", "/recycle_bin"),
    (20, "1-alice", 4, "path", "/docs/café.txt", "/recycle_bin/café.txt"),
    (21, "1-alice", 15, "create", "NULL", "/docs/old.txt"),
    (22, "1-alice", 15, "path", "/docs/old.txt", "/recycle_bin/old.txt"),
    (23, "1-alice", 15, "path", "/recycle_bin/old.txt", "/docs/old.txt"),
    (24, "1-alice", 2, "delete", "/docs/a.txt", "NULL"),
    (25, "1-alice", 16, "create", "NULL", "/docs/ephemeral.txt"),
    (26, "1-alice", 16, "delete", "/docs/ephemeral.txt", "NULL"),
    (27, "1-alice", 9, "content", "/50%_off/deal.txt", "/50%_off/deal.txt"),
    (28, "1-alice", 5, "path", "/docs/日本.txt", "/é/abcdef"),
    (29, "1-alice", 13, "path", "/docs/tmp.txt", "/zz/ab"),
    (30, "5-/sales", 17, "create", "NULL", "/sales-q1.xlsx"),
    (31, "5-/sales", 18, "create", "NULL", "/recycle_bin"),
    (32, "5-/sales", 17, "path", "/sales-q1.xlsx", "/recycle_bin/sales-q1.xlsx"),
    (33, "0", 3, "content", "/shared.txt", "/shared.txt"),
    (34, "0", 19, "create", "NULL", "/recycle_bin"),
    (35, "0", 3, "path", "/shared.txt", "/recycle_bin/shared.txt"),
    (36, "1-alice", 20, "create", "NULL", "/50ab_off/x.txt"),
    (37, "1-alice", 21, "create", "NULL", "/50%Xoff/y.txt"),
]


def apply_operations(engine, operations=OPERATIONS):
    """Write the index as the legacy server does, one statement (and transaction) per write."""
    ix = db.index
    for op in operations:
        with engine.begin() as conn:
            if op[0] == "ins":
                _, path, ident, size, digest, mtime = op
                conn.execute(
                    ix.insert().values(
                        node_path=path, repository_identifier=ident, bytesize=size, md5=digest, mtime=mtime
                    )
                )
            elif op[0] == "content":
                _, node_id, size, digest, mtime = op
                conn.execute(ix.update().where(ix.c.node_id == node_id).values(bytesize=size, md5=digest, mtime=mtime))
            elif op[0] == "move":
                conn.execute(ix.update().where(ix.c.node_id == op[1]).values(node_path=op[2]))
            else:
                conn.execute(ix.delete().where(ix.c.node_id == op[1]))


def add_group_workspace(engine):
    """Workspace 5: group-scoped (PATH holds AJXP_GROUP_PATH), syncable, no RECYCLE_BIN."""
    meta = "$phpserial$" + phpserialize.dumps({"meta.syncable": {"REPO_SYNCABLE": True}}).decode()
    with engine.begin() as conn:
        conn.execute(
            db.repo.insert().values(
                uuid=GROUP_WS,
                slug="sales-share",
                display="Sales",
                accessType="fs",
                isTemplate=False,
                enabled=True,
                writeable=True,
            )
        )
        conn.execute(
            db.repo_options.insert(),
            [
                {"uuid": GROUP_WS, "name": "PATH", "val": b"AJXP_DATA_PATH/groups/AJXP_GROUP_PATH"},
                {"uuid": GROUP_WS, "name": "META_SOURCES", "val": meta.encode()},
            ],
        )


# --- expected output, from the spec --------------------------------------------------


def php_json(value) -> str:
    """PHP ``json_encode`` with default flags, as the spec describes it.

    No spaces; ``/`` written ``\\/``; every non-ASCII character written ``\\uXXXX``,
    characters above U+FFFF as a UTF-16 surrogate pair.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(php_json(k) + ":" + php_json(v) for k, v in value.items()) + "}"
    out = ['"']
    for ch in value:
        if ch in '"\\/':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20 or ord(ch) > 0x7E:
            units = ch.encode("utf-16-be")
            out.extend("\\u" + units[i : i + 2].hex() for i in range(0, len(units), 2))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def framed(rows, last_seq: int, stream: bool) -> bytes:
    """Stream: rows joined by newlines, then ``\\nLAST_SEQ:N``.  JSON: ``{"changes":[...], "last_seq":N}``."""
    texts = [php_json(r) for r in rows]
    if stream:
        return ("\n".join(texts) + f"\nLAST_SEQ:{last_seq}").encode("ascii")
    return ('{"changes":[' + ",".join(texts) + f'], "last_seq":{last_seq}}}').encode("ascii")


RESET = {True: b"LAST_SEQ:1", False: b'{"changes":[],"last_seq":1}'}

KEEP = object()


def node(bytesize, digest, mtime, node_path, ident="1-alice"):
    return {"bytesize": bytesize, "md5": digest, "mtime": mtime, "node_path": node_path, "repository_identifier": ident}


GONE = node(None, None, None, None)  # the LEFT JOIN found no index row

# The index rows as the operations leave them (the LEFT JOIN side of every change row).
N = {
    1: node(0, "directory", M + 1, "/docs"),
    2: GONE,
    3: node(6, md5("S"), M + 33, "/recycle_bin/shared.txt", "0"),
    4: node(4, md5("c"), M + 4, "/recycle_bin/café.txt"),
    5: node(6, md5("j"), M + 5, "/é/abcdef"),
    6: node(7, md5("e"), M + 6, "/docs/😀.txt"),
    7: node(8, md5("b"), M + 7, "/docs/bob-secret.txt", "1-bob"),
    8: node(0, "directory", M + 9, "/50%_off"),
    9: node(17, md5("D"), M + 27, "/50%_off/deal.txt"),
    10: node(13, md5("n"), M + 11, "/docs/NOTES.txt"),
    11: node(0, "directory", M + 13, "/docs/moved"),
    12: node(14, md5("x"), M + 14, "/docs/moved/x.txt"),
    13: node(15, md5("t"), M + 17, "/zz/ab"),
    14: node(0, "directory", M + 19, "/recycle_bin"),
    15: node(16, md5("o"), M + 21, "/docs/old.txt"),
    16: GONE,
    17: node(18, md5("q"), M + 30, "/recycle_bin/sales-q1.xlsx", "5-/sales"),
    18: node(0, "directory", M + 31, "/recycle_bin", "5-/sales"),
    19: node(0, "directory", M + 34, "/recycle_bin", "0"),
    20: node(19, md5("y"), M + 36, "/50ab_off/x.txt"),
    21: node(20, md5("z"), M + 37, "/50%Xoff/y.txt"),
}


def row(seq, node_id, type_, source, target, node_path=KEEP):
    """A change row in the spec's key order; *node_path* overrides the joined one (filter rewrite)."""
    nd = dict(N[node_id])
    if node_path is not KEEP:
        nd["node_path"] = node_path
    return {"seq": seq, "node_id": node_id, "type": type_, "source": source, "target": target, "node": nd}


# Workspace 1 for alice ("1-alice", RECYCLE_BIN recycle_bin), raw rows from seq 0,
# ordered by node_id then seq.  The recycle-bin rule turns seq 20 and 22 (moves
# into /recycle_bin) into deletes and seq 23 (a move out of it) into a create.
RAW_ALICE = [
    row(1, 1, "create", "NULL", "/docs"),
    row(2, 2, "create", "NULL", "/docs/a.txt"),
    row(8, 2, "content", "/docs/a.txt", "/docs/a.txt"),
    row(24, 2, "delete", "/docs/a.txt", "NULL"),
    row(4, 4, "create", "NULL", "/docs/café.txt"),
    row(20, 4, "delete", "/docs/café.txt", "NULL"),
    row(5, 5, "create", "NULL", "/docs/日本.txt"),
    row(28, 5, "path", "/docs/日本.txt", "/é/abcdef"),
    row(6, 6, "create", "NULL", "/docs/😀.txt"),
    row(9, 8, "create", "NULL", "/50%_off"),
    row(10, 9, "create", "NULL", "/50%_off/deal.txt"),
    row(27, 9, "content", "/50%_off/deal.txt", "/50%_off/deal.txt"),
    row(11, 10, "create", "NULL", "/docs/notes.txt"),
    row(12, 10, "path", "/docs/notes.txt", "/docs/NOTES.txt"),
    row(13, 11, "create", "NULL", "/docs/sub"),
    row(15, 11, "path", "/docs/sub", "/docs/moved"),
    row(14, 12, "create", "NULL", "/docs/sub/x.txt"),
    row(16, 12, "path", "/docs/sub/x.txt", "/docs/moved/x.txt"),
    row(17, 13, "create", "NULL", "/tmp.txt"),
    row(18, 13, "path", "/tmp.txt", "/docs/tmp.txt"),
    row(29, 13, "path", "/docs/tmp.txt", "/zz/ab"),
    row(19, 14, "create", "NULL", "/recycle_bin"),
    row(21, 15, "create", "NULL", "/docs/old.txt"),
    row(22, 15, "delete", "/docs/old.txt", "NULL"),
    row(23, 15, "create", "NULL", "/docs/old.txt"),
    row(25, 16, "create", "NULL", "/docs/ephemeral.txt"),
    row(26, 16, "delete", "/docs/ephemeral.txt", "NULL"),
    row(36, 20, "create", "NULL", "/50ab_off/x.txt"),
    row(37, 21, "create", "NULL", "/50%Xoff/y.txt"),
]

# filter=/docs, raw.  Selected: rows whose source or target starts with "/docs/"
# (not seq 1, whose target is "/docs" itself).  F = "/docs" (5 bytes) is cut from
# source/target where they start with "/docs/"; a non-delete row's node_path loses
# its first 5 BYTES whatever it is (PHP substr: false when shorter, null counts as
# ""); a delete row keeps its node_path only when it starts with "/docs".
RAW_ALICE_DOCS = [
    row(2, 2, "create", "NULL", "/a.txt", False),  # node gone: substr(null, 5) is false
    row(8, 2, "content", "/a.txt", "/a.txt", False),
    row(24, 2, "delete", "/a.txt", "NULL", False),
    row(4, 4, "create", "NULL", "/café.txt", "cle_bin/café.txt"),  # "/recycle_bin/café.txt" minus 5 bytes
    row(20, 4, "delete", "/café.txt", "NULL", False),  # node_path is in the bin, not under /docs
    row(5, 5, "create", "NULL", "/日本.txt", "bcdef"),  # "/é/abcdef": 5 bytes = "/", "é" (2), "/", "a"
    row(28, 5, "delete", "/日本.txt", "NULL", False),  # path out of /docs: a delete
    row(6, 6, "create", "NULL", "/😀.txt", "/😀.txt"),
    row(11, 10, "create", "NULL", "/notes.txt", "/NOTES.txt"),
    row(12, 10, "path", "/notes.txt", "/NOTES.txt", "/NOTES.txt"),
    row(13, 11, "create", "NULL", "/sub", "/moved"),
    row(15, 11, "path", "/sub", "/moved", "/moved"),
    row(14, 12, "create", "NULL", "/sub/x.txt", "/moved/x.txt"),
    row(16, 12, "path", "/sub/x.txt", "/moved/x.txt", "/moved/x.txt"),
    row(18, 13, "create", "NULL", "/tmp.txt", "b"),  # path into /docs: a create; "/zz/ab" minus 5
    row(29, 13, "delete", "/tmp.txt", "NULL", False),
    row(21, 15, "create", "NULL", "/old.txt", "/old.txt"),
    row(22, 15, "delete", "/old.txt", "NULL", "/docs/old.txt"),  # delete: node_path starts with /docs, kept whole
    row(23, 15, "create", "NULL", "/old.txt", "/old.txt"),
    row(25, 16, "create", "NULL", "/ephemeral.txt", False),
    row(26, 16, "delete", "/ephemeral.txt", "NULL", False),
]

# filter=/50%_off (8 characters): only node 9 matches "/50%_off/"; the decoys
# /50ab_off/x.txt and /50%Xoff/y.txt would match an unescaped LIKE.
RAW_ALICE_SALE = [
    row(10, 9, "create", "NULL", "/deal.txt", "/deal.txt"),
    row(27, 9, "content", "/deal.txt", "/deal.txt", "/deal.txt"),
]

RAW = {None: RAW_ALICE, "/docs": RAW_ALICE_DOCS, "/50%_off": RAW_ALICE_SALE}

# Flattened: (filter, seq) -> (rows, last_seq), merged by hand node by node.
FLAT = {
    # n2: create+content+delete -> delete NULL->NULL, not sent.  n4: create then into the
    # bin -> delete NULL->NULL, not sent.  n15: create, delete (bin), create (restore) -> a
    # create after a delete stays a create.  n16: created and deleted: not sent.  last_seq
    # is the highest seq read: 37.
    (None, 0): (
        [
            row(1, 1, "create", "NULL", "/docs"),
            row(28, 5, "create", "NULL", "/é/abcdef"),
            row(6, 6, "create", "NULL", "/docs/😀.txt"),
            row(9, 8, "create", "NULL", "/50%_off"),
            row(27, 9, "create", "NULL", "/50%_off/deal.txt"),
            row(12, 10, "create", "NULL", "/docs/NOTES.txt"),
            row(15, 11, "create", "NULL", "/docs/moved"),
            row(16, 12, "create", "NULL", "/docs/moved/x.txt"),
            row(29, 13, "create", "NULL", "/zz/ab"),
            row(19, 14, "create", "NULL", "/recycle_bin"),
            row(23, 15, "create", "NULL", "/docs/old.txt"),
            row(36, 20, "create", "NULL", "/50ab_off/x.txt"),
            row(37, 21, "create", "NULL", "/50%Xoff/y.txt"),
        ],
        37,
    ),
    # Rows with seq > 20 only: single rows keep their own type; n15 = 21 create,
    # 22 delete (bin), 23 create (restore) -> create.
    (None, 20): (
        [
            row(24, 2, "delete", "/docs/a.txt", "NULL"),
            row(28, 5, "path", "/docs/日本.txt", "/é/abcdef"),
            row(27, 9, "content", "/50%_off/deal.txt", "/50%_off/deal.txt"),
            row(29, 13, "path", "/docs/tmp.txt", "/zz/ab"),
            row(23, 15, "create", "NULL", "/docs/old.txt"),
            row(36, 20, "create", "NULL", "/50ab_off/x.txt"),
            row(37, 21, "create", "NULL", "/50%Xoff/y.txt"),
        ],
        37,
    ),
    # filter=/docs.  Walk: n2 -> delete NULL->NULL (not sent), last 24; n4 -> not sent;
    # n5 -> create NULL->/é/abcdef, last 28, then dropped by the filter when n6 starts:
    # last_seq := 6 (it goes down); n6 sent, last 11, 12; n10 sent; n11 sent (15); n12 sent
    # (16); n13 = path /tmp.txt -> /zz/ab (18, 29), last 29, dropped when n15 starts:
    # last_seq := 21, then 22, 23; n15 = create NULL->/docs/old.txt sent; n16 created and
    # deleted, last 25, 26, not sent.  last_seq 26.
    ("/docs", 0): (
        [
            row(6, 6, "create", "NULL", "/😀.txt", "/😀.txt"),
            row(12, 10, "create", "NULL", "/NOTES.txt", "/NOTES.txt"),
            row(15, 11, "create", "NULL", "/moved", "/moved"),
            row(16, 12, "create", "NULL", "/moved/x.txt", "/moved/x.txt"),
            row(23, 15, "create", "NULL", "/old.txt", "/old.txt"),
        ],
        26,
    ),
    # filter=/docs, seq > 20: n2 (24 delete) sent as a delete; n5 (28 path out of /docs)
    # and n13 (29 path out of /docs) become deletes; n15 as above; n16 not sent.  No
    # node is dropped, so last_seq is the highest seq read: 29.
    ("/docs", 20): (
        [
            row(24, 2, "delete", "/a.txt", "NULL", False),
            row(28, 5, "delete", "/日本.txt", "NULL", False),
            row(29, 13, "delete", "/tmp.txt", "NULL", False),
            row(23, 15, "create", "NULL", "/old.txt", "/old.txt"),
        ],
        29,
    ),
    # filter=/50%_off: node 9 only (10 create + 27 content -> create).  An unescaped
    # LIKE would also read the decoys (seq 36, 37) and end with last_seq 36 or 37.
    ("/50%_off", 0): ([row(27, 9, "create", "NULL", "/deal.txt", "/deal.txt")], 27),
    ("/50%_off", 20): ([row(27, 9, "content", "/deal.txt", "/deal.txt", "/deal.txt")], 27),
}

FILTERS = [None, "/docs", "/50%_off"]
SEQS = [0, 20, TABLE_MAX, TABLE_MAX + 1]


def expected_alice(stream: bool, flatten: bool, filter_value, seq: int) -> bytes:
    if seq > TABLE_MAX:
        return RESET[stream]  # rule 2: a seq above the table's MAX
    if not flatten:
        # Raw rows are independent of each other: the answer from seq s is the answer
        # from 0 without the rows at or below s; last_seq is the table's MAX.
        return framed([r for r in RAW[filter_value] if r["seq"] > seq], TABLE_MAX, stream)
    if seq >= TABLE_MAX:
        return framed([], TABLE_MAX, stream)  # no row read: last_seq is the table's MAX
    rows, last_seq = FLAT[(filter_value, seq)]
    return framed(rows, last_seq, stream)


# --- the servers --------------------------------------------------------------------


@dataclass
class Golden:
    engine_name: str
    url: str
    standin: LegacyStandin
    shim_url: str
    app: object


@pytest.fixture(scope="module", params=ENGINES)
def engine_name(request):
    """Module-scoped here: one fixed database per engine serves every combination."""
    return request.param


@pytest.fixture(scope="module")
def golden(engine_name, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"golden-{engine_name}")
    url, drop = _create_database(engine_name, tmp)
    standin = LegacyStandin(url, str(tmp / "data"))
    standin.install()
    for login, (password, group) in USERS.items():
        standin.add_user(login, password, group)
    add_group_workspace(standin.engine)
    standin.set_right("carol", GROUP_WS, "rw")
    apply_operations(standin.engine)
    upstream = ServerThread(standin).start()
    standin.url = upstream.url
    shim = serve_app(shim_environ(upstream.url, url))
    yield Golden(engine_name, url, standin, shim.url, shim.app)
    shim.stop()
    upstream.stop()
    standin.engine.dispose()
    drop()


def feed_params(stream: bool, flatten: bool, filter_value) -> dict:
    params = {}
    if stream:
        params["stream"] = "true"
    params["flatten"] = "true" if flatten else "false"
    if filter_value is not None:
        params["filter"] = filter_value
    return params


def fetch(base: str, ws: str, seq, params: dict, auth) -> requests.Response:
    return requests.get(f"{base}/api/{ws}/changes/{seq}/", params=params, auth=auth, timeout=30)


def own_requests(standin, ws: str, seq) -> list:
    """Requests the stand-in received for this feed path (the shim's probes use another seq)."""
    return [uri for _, uri in standin.log if uri.startswith(f"/api/{ws}/changes/{seq}/")]


def assert_served(golden, ws, seq, params, auth, expected: bytes):
    """The shim answers *expected* itself (nothing forwarded), and so does the stand-in."""
    before = len(own_requests(golden.standin, ws, seq))
    response = fetch(golden.shim_url, ws, seq, params, auth)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert response.content == expected
    assert len(own_requests(golden.standin, ws, seq)) == before, "the shim forwarded a request it should answer"
    legacy = fetch(golden.standin.url, ws, seq, params, auth)
    assert legacy.status_code == 200
    assert legacy.content == expected, "the stand-in's changes action disagrees"


# --- the tests ----------------------------------------------------------------------------


def test_triggers_number_the_changes_from_one(golden):
    with golden.standin.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT seq, repository_identifier, node_id, type, source, target FROM ajxp_changes ORDER BY seq")
        ).all()
    assert [(int(r[0]), r[1], int(r[2]), r[3], r[4], r[5]) for r in rows] == CHANGES


@pytest.mark.parametrize(
    "stream,flatten,filter_value,seq", list(itertools.product([True, False], [False, True], FILTERS, SEQS))
)
def test_alice_my_files(golden, stream, flatten, filter_value, seq):
    assert_served(
        golden,
        "1",
        seq,
        feed_params(stream, flatten, filter_value),
        ALICE,
        expected_alice(stream, flatten, filter_value, seq),
    )


def test_literal_bytes_of_a_non_ascii_answer(golden):
    """One answer spelled out byte for byte: escaped slashes, \\u escapes, a surrogate pair."""
    expected = (
        b'{"seq":6,"node_id":6,"type":"create","source":"NULL","target":"\\/\\ud83d\\ude00.txt",'
        b'"node":{"bytesize":7,"md5":"eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee","mtime":1500000006,'
        b'"node_path":"\\/\\ud83d\\ude00.txt","repository_identifier":"1-alice"}}\n'
        b'{"seq":12,"node_id":10,"type":"create","source":"NULL","target":"\\/NOTES.txt",'
        b'"node":{"bytesize":13,"md5":"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn","mtime":1500000011,'
        b'"node_path":"\\/NOTES.txt","repository_identifier":"1-alice"}}\n'
    )
    response = fetch(golden.shim_url, "1", 0, {"stream": "true", "flatten": "true", "filter": "/docs"}, ALICE)
    assert response.content.startswith(expected)
    assert response.content.endswith(b"\nLAST_SEQ:26")
    raw = fetch(golden.shim_url, "1", 4, {"stream": "true", "filter": "/docs"}, ALICE).content
    # The byte-wise substr of "/é/abcdef" and the name 日本 as \u escapes.
    assert (
        b'{"seq":5,"node_id":5,"type":"create","source":"NULL","target":"\\/\\u65e5\\u672c.txt",'
        b'"node":{"bytesize":6,"md5":"jjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjj","mtime":1500000005,'
        b'"node_path":"bcdef","repository_identifier":"1-alice"}}\n'
    ) in raw


# Other workspaces and users: each sees its own identifier's rows only.
OTHERS = {
    # ws 0, shared ("0"), with a recycle bin: n3 created, edited, moved into the bin.
    ("0", ALICE, False): (
        [
            row(3, 3, "create", "NULL", "/shared.txt"),
            row(33, 3, "content", "/shared.txt", "/shared.txt"),
            row(35, 3, "delete", "/shared.txt", "NULL"),
            row(34, 19, "create", "NULL", "/recycle_bin"),
        ],
        TABLE_MAX,
    ),
    # n3 merges to delete NULL->NULL (not sent); last_seq = highest read = 35.
    ("0", ALICE, True): ([row(34, 19, "create", "NULL", "/recycle_bin")], 35),
    ("1", BOB, False): ([row(7, 7, "create", "NULL", "/docs/bob-secret.txt")], TABLE_MAX),
    ("1", BOB, True): ([row(7, 7, "create", "NULL", "/docs/bob-secret.txt")], 7),
    # ws 5, group-scoped ("5-/sales" for carol), no recycle bin: the move into a folder
    # named recycle_bin stays a path row.
    (GROUP_WS, CAROL, False): (
        [
            row(30, 17, "create", "NULL", "/sales-q1.xlsx"),
            row(32, 17, "path", "/sales-q1.xlsx", "/recycle_bin/sales-q1.xlsx"),
            row(31, 18, "create", "NULL", "/recycle_bin"),
        ],
        TABLE_MAX,
    ),
    (GROUP_WS, CAROL, True): (
        [
            row(32, 17, "create", "NULL", "/recycle_bin/sales-q1.xlsx"),
            row(31, 18, "create", "NULL", "/recycle_bin"),
        ],
        32,
    ),
    # carol has no rows in ws 1 ("1-carol"): no row read, last_seq = table MAX.
    ("1", CAROL, False): ([], TABLE_MAX),
    ("1", CAROL, True): ([], TABLE_MAX),
}


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("ws,auth,flatten", list(OTHERS), ids=lambda v: v[0] if isinstance(v, tuple) else str(v))
def test_other_identifiers(golden, ws, auth, flatten, stream):
    rows, last_seq = OTHERS[(ws, auth, flatten)]
    assert_served(golden, ws, 0, feed_params(stream, flatten, None), auth, framed(rows, last_seq, stream))


@pytest.mark.parametrize("flatten,last_seq", [(False, TABLE_MAX), (True, 7)])
def test_filter_does_not_cross_users(golden, flatten, last_seq):
    expected = framed([row(7, 7, "create", "NULL", "/bob-secret.txt", "/bob-secret.txt")], last_seq, True)
    assert_served(golden, "1", 0, feed_params(True, flatten, "/docs"), BOB, expected)


@pytest.mark.parametrize(
    "params,stream,flatten",
    [
        ({"stream": "false", "flatten": "false"}, True, False),  # stream: any value counts
        ({"stream": ""}, True, False),  # flatten absent: raw
        ({"flatten": "0"}, False, True),  # flatten: anything but "false"
        ({"flatten": "FALSE", "stream": "1"}, True, True),
    ],
)
def test_parameter_spellings(golden, params, stream, flatten):
    assert_served(golden, "1", 0, params, ALICE, expected_alice(stream, flatten, None, 0))


@pytest.mark.parametrize(
    "ws,seq,parsed_seq",
    [
        ("my-files", "20", 20),  # the slug names the same workspace
        ("1", "20abc", 20),  # PHP intval: the leading integer
        ("1", "%32%30", 20),  # the router matches the decoded path
        ("1", "2%2C0", 20),  # "2,0": the sanitiser keeps [A-Za-z0-9_.-] only
        ("1", "1%2D5", 0),  # "1-5": intval stops at the "-", so 1; seq 1 is not under /docs,
        ("1", "-5", 0),  # so from 1, from -5 and from 0 the answer is the same
        ("1", "abc", 0),
    ],
)
def test_seq_spellings(golden, ws, seq, parsed_seq):
    rows, last_seq = FLAT[("/docs", parsed_seq)]
    assert_served(
        golden, ws, seq, {"stream": "true", "flatten": "true", "filter": "/docs"}, ALICE, framed(rows, last_seq, True)
    )


@pytest.mark.parametrize(
    "seq,params",
    [
        ("20", {"seq_id": "0", "stream": "true"}),  # the legacy router ignores a seq_id parameter
        ("2%25", {"stream": "true"}),  # "%" after decoding: decoded twice by some versions
    ],
)
def test_seq_forms_left_to_the_legacy_server(golden, seq, params):
    before = len(own_requests(golden.standin, "1", seq))
    response = fetch(golden.shim_url, "1", seq, params, ALICE)
    assert len(own_requests(golden.standin, "1", seq)) == before + 1, "not forwarded"
    assert response.content == fetch(golden.standin.url, "1", seq, params, ALICE).content


@pytest.mark.parametrize(
    "filter_value",
    [
        "/docs/",  # trailing slash: PHP filters on "/docs/" + "/" and drops every row
        "docs",  # relative
        "/docs//moved",  # collapsed by the legacy sanitiser
        "/docs/./moved",
        "/docs/../docs",
        "/a>b",  # the legacy HTML sanitiser rewrites > and strips <...>
        "/a<b>c",
        "",
        "/",
        '/a"b',  # refused by the legacy server with an XML error
    ],
)
def test_unusual_filters_are_forwarded(golden, filter_value):
    """The shim cannot be sure how the legacy sanitiser rewrites these: the legacy server answers."""
    params = {"stream": "true", "flatten": "true", "filter": filter_value}
    before = len(own_requests(golden.standin, "1", 0))
    response = fetch(golden.shim_url, "1", 0, params, ALICE)
    seen = own_requests(golden.standin, "1", 0)
    assert len(seen) == before + 1, "the request was not forwarded"
    legacy = fetch(golden.standin.url, "1", 0, params, ALICE)
    assert (response.status_code, response.content) == (legacy.status_code, legacy.content)


def test_unknown_parameter_is_forwarded(golden):
    before = len(own_requests(golden.standin, "1", 0))
    response = fetch(golden.shim_url, "1", 0, {"stream": "true", "tree": "1"}, ALICE)
    assert response.status_code == 200
    assert len(own_requests(golden.standin, "1", 0)) == before + 1
