"""Property test: random file-operation histories, replayed from the feed.

Hypothesis draws a sequence of operations -- create a file or folder, edit a
file, rename, move a folder with everything under it, delete (with
everything under it), move into and out of ``/recycle_bin`` -- for three
identifiers: ``1-alice`` and ``1-bob`` (workspace 1, user-scoped, RECYCLE_BIN
``recycle_bin``) and ``5-/sales`` (workspace 5, group-scoped, no recycle bin).
They are written to ``ajxp_index`` the way the legacy server writes them (a
folder move updates the folder row and then each row under it; a delete deletes
each row), and the triggers fill ``ajxp_changes``.  The tables are emptied
between examples; one database and one pair of servers serve each engine.

What the flattened feed from seq 0 must give, for each identifier:

* Replayed on an empty ``{path: node_id}`` (create: add target; path: move source
  to target; delete: remove source; content: set target), it yields exactly
  the index's ``{node_path: node_id}`` for that identifier -- except, in a
  workspace with a recycle bin, for paths starting with ``/recycle_bin``
  (a plain prefix: ``/recycle_binX`` too).  There the recycle-bin rule turns
  every move into such a path into a delete and every move out of one into a
  create: the bin's content is not reproduced (a move inside the bin even
  becomes a "create" in the bin), but every path outside it is, because every
  node was created inside the window (a create row starts each node's history)
  and a node's last move out of the bin re-creates it at its final place.  In
  a workspace without a recycle bin nothing is excluded.
* A node created and deleted inside the window has no row (its merged row goes
  from ``NULL`` to ``NULL``); every row's node still exists in the index.
* Each node appears at most once; no row carries another identifier, or a
  node of another identifier.
* ``last_seq`` is the highest seq of the identifier's rows (no filter: no row is
  dropped), or the table's MAX when it has none.

And for the raw feed: replayed per node (``{node_id: path}``, rows applied in
order) it reproduces the same paths; from a seq ``s`` it is the feed from 0
without the rows at or below ``s``; ``last_seq`` is the table's MAX.  Both
feeds are also compared byte for byte with the stand-in's ``changes`` action.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import phpserialize
import pytest
import requests
import sqlalchemy as sa
from conftest import ENGINES, USERS, _create_database
from helpers import serve_app, shim_environ
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shim import db
from shim.demo.stack import ServerThread
from shim.demo.standin import LegacyStandin

BIN = "/recycle_bin"
NAMES = ["a", "b.txt", "é", "日本.md", "😀", "50%_x", "recycle_binX"]
#: identifier -> (workspace id, login, whether the workspace has a recycle bin)
IDENTIFIERS = {
    "1-alice": ("1", "alice", True),
    "1-bob": ("1", "bob", True),
    "5-/sales": ("5", "carol", False),
}
IDENTS = list(IDENTIFIERS)


@dataclass
class Node:
    ident: str
    path: str
    is_dir: bool


@dataclass
class Index:
    """The example's ajxp_index, mirrored in memory; each write goes to the database as the legacy server's."""

    engine: object
    nodes: dict = field(default_factory=dict)  # node_id -> Node (live nodes only)
    created: dict = field(default_factory=dict)  # node_id -> identifier (every node ever created)
    tick: int = 0

    def live(self, ident):
        return sorted((nid, n) for nid, n in self.nodes.items() if n.ident == ident)

    def path_taken(self, ident, path):
        return any(n.path == path for _, n in self.live(ident))

    def subtree(self, node_id):
        """The node and every node under it, the node first."""
        top = self.nodes[node_id]
        under = [nid for nid, n in self.live(top.ident) if n.path.startswith(top.path + "/")]
        return [node_id] + under

    def insert(self, ident, path, is_dir):
        self.tick += 1
        with self.engine.begin() as conn:
            result = conn.execute(
                db.index.insert().values(
                    node_path=path,
                    repository_identifier=ident,
                    bytesize=0 if is_dir else self.tick,
                    md5="directory" if is_dir else f"{self.tick:032x}",
                    mtime=1_500_000_000 + self.tick,
                )
            )
            node_id = int(result.inserted_primary_key[0])
        self.nodes[node_id] = Node(ident, path, is_dir)
        self.created[node_id] = ident
        return node_id

    def edit(self, node_id):
        self.tick += 1
        with self.engine.begin() as conn:
            conn.execute(
                db.index.update()
                .where(db.index.c.node_id == node_id)
                .values(bytesize=self.tick, md5=f"{self.tick:032x}", mtime=1_500_000_000 + self.tick)
            )

    def move(self, node_id, new_path):
        """The folder row, then each row under it (as PHP's single UPDATE does, row by row)."""
        old_path = self.nodes[node_id].path
        with self.engine.begin() as conn:
            for nid in self.subtree(node_id):
                moved = new_path + self.nodes[nid].path[len(old_path) :]
                conn.execute(db.index.update().where(db.index.c.node_id == nid).values(node_path=moved))
                self.nodes[nid].path = moved

    def delete(self, node_id):
        doomed = self.subtree(node_id)
        with self.engine.begin() as conn:
            conn.execute(db.index.delete().where(db.index.c.node_id.in_(doomed)))
        for nid in doomed:
            del self.nodes[nid]


def parent_of(path):
    return path.rsplit("/", 1)[0]


def name_of(path):
    return path.rsplit("/", 1)[1]


def pick(candidates, index):
    return candidates[index % len(candidates)] if candidates else None


def apply(ix: Index, ident: str, op):
    """Run one drawn operation for *ident*; those that make no sense in the current state are skipped."""
    kind, a, b, is_dir = op
    live = ix.live(ident)
    movable = [nid for nid, n in live if n.path != BIN]
    dirs = [""] + [n.path for _, n in live if n.is_dir]
    if kind == "create":
        parent = pick([d for d in dirs if not d.startswith(BIN)], a)
        path = parent + "/" + NAMES[b % len(NAMES)]
        if not ix.path_taken(ident, path):
            ix.insert(ident, path, is_dir)
    elif kind == "edit":
        node_id = pick([nid for nid, n in live if not n.is_dir], a)
        if node_id is not None:
            ix.edit(node_id)
    elif kind in ("rename", "move"):
        node_id = pick(movable, a)
        if node_id is None:
            return
        path = ix.nodes[node_id].path
        if kind == "rename":
            target = parent_of(path) + "/" + NAMES[b % len(NAMES)]
        else:
            dest = pick([d for d in dirs if d != path and not d.startswith(path + "/")], b)
            target = dest + "/" + name_of(path)
        if target != path and not ix.path_taken(ident, target):
            ix.move(node_id, target)
    elif kind == "to_bin":
        node_id = pick([nid for nid in movable if not ix.nodes[nid].path.startswith(BIN)], a)
        if node_id is None:
            return
        target = BIN + "/" + name_of(ix.nodes[node_id].path)
        if ix.path_taken(ident, target):
            return
        if not ix.path_taken(ident, BIN):
            ix.insert(ident, BIN, True)
        ix.move(node_id, target)
    elif kind == "restore":
        node_id = pick([nid for nid in movable if parent_of(ix.nodes[nid].path) == BIN], a)
        if node_id is not None:
            target = "/" + name_of(ix.nodes[node_id].path)
            if not ix.path_taken(ident, target):
                ix.move(node_id, target)
    elif kind == "delete":
        node_id = pick([nid for nid, _ in live], a)
        if node_id is not None:
            ix.delete(node_id)


# "switch" moves on to the next identifier: runs of operations on one identifier make
# histories of one node (create, to the bin, back, ...) likely.
operations = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "create",
                "create",
                "create",
                "edit",
                "rename",
                "move",
                "to_bin",
                "to_bin",
                "restore",
                "restore",
                "delete",
                "switch",
            ]
        ),
        st.integers(0, 50),
        st.integers(0, 50),
        st.booleans(),
    ),
    min_size=12,
    max_size=40,
)


def run(ix: Index, ops):
    ident = 0
    for op in ops:
        if op[0] == "switch":
            ident = (ident + 1 + op[1] % 2) % len(IDENTS)
        else:
            apply(ix, IDENTS[ident], op)


# --- servers, one database per engine ---------------------------------------------------------


@pytest.fixture(scope="module", params=ENGINES)
def engine_name(request):
    """Module-scoped here: one database per engine, emptied between examples."""
    return request.param


@dataclass
class World:
    engine: object
    standin: LegacyStandin
    shim_url: str


@pytest.fixture(scope="module")
def world(engine_name, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"property-{engine_name}")
    url, drop = _create_database(engine_name, tmp)
    standin = LegacyStandin(url, str(tmp / "data"))
    standin.install()
    for login, (password, group) in USERS.items():
        standin.add_user(login, password, group)
    meta = "$phpserial$" + phpserialize.dumps({"meta.syncable": {"REPO_SYNCABLE": True}}).decode()
    with standin.engine.begin() as conn:
        conn.execute(db.repo.insert().values(uuid="5", slug="sales-share", accessType="fs", isTemplate=False))
        conn.execute(
            db.repo_options.insert(),
            [
                {"uuid": "5", "name": "PATH", "val": b"AJXP_DATA_PATH/groups/AJXP_GROUP_PATH"},
                {"uuid": "5", "name": "META_SOURCES", "val": meta.encode()},
            ],
        )
    standin.set_right("carol", "5", "rw")
    upstream = ServerThread(standin).start()
    standin.url = upstream.url
    # Rows are written behind the shim's back and compared at once: the watermark reads
    # the table for every poll (its refresh window is tests/test_watermark.py's subject).
    shim = serve_app(shim_environ(upstream.url, url, feed_refresh_interval=0))
    writer = db.create_engine(url)
    if engine_name == "postgresql":
        # Thousands of one-row commits: no need to wait for the disk in a test database.
        sa.event.listen(writer, "connect", lambda dbapi, _: dbapi.cursor().execute("SET synchronous_commit TO off"))
    yield World(writer, standin, shim.url)
    shim.stop()
    upstream.stop()
    writer.dispose()
    standin.engine.dispose()
    drop()


def empty_tables(engine):
    with engine.begin() as conn:
        conn.execute(db.index.delete())  # fires the delete trigger: empty ajxp_changes after it
        conn.execute(db.changes.delete())


def get_feed(base, ident, seq, flatten):
    ws, login, _ = IDENTIFIERS[ident]
    response = requests.get(
        f"{base}/api/{ws}/changes/{seq}/",
        params={"stream": "true", "flatten": "true" if flatten else "false"},
        auth=(login, USERS[login][0]),
        timeout=30,
    )
    assert response.status_code == 200
    return response.content


def parse(body: bytes):
    """Stream framing: rows joined by newlines, then a newline and LAST_SEQ (after no row too)."""
    text, _, last = body.rpartition(b"\nLAST_SEQ:")
    return ([json.loads(line) for line in text.split(b"\n")] if text else []), int(last)


def table_state(engine, ident):
    with engine.connect() as conn:
        paths = {
            r[0]: int(r[1])
            for r in conn.execute(
                sa.select(db.index.c.node_path, db.index.c.node_id).where(db.index.c.repository_identifier == ident)
            )
        }
        seqs = [
            int(r[0])
            for r in conn.execute(sa.select(db.changes.c.seq).where(db.changes.c.repository_identifier == ident))
        ]
        table_max = conn.execute(sa.select(sa.func.max(db.changes.c.seq))).scalar()
    return paths, seqs, int(table_max or 0)


def outside_bin(mapping, has_bin):
    return {p: n for p, n in mapping.items() if not (has_bin and p.startswith(BIN))}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, cut=st.integers(0, 1000))
# Histories that must always be tried: into the bin and back; a folder moved with its
# child, then to the bin, restored, renamed; created and deleted.
@example(ops=[("create", 0, 0, False), ("to_bin", 0, 0, False), ("restore", 0, 0, False)], cut=0)
@example(
    ops=[
        ("create", 0, 0, True),
        ("create", 1, 1, False),
        ("create", 0, 2, True),
        ("move", 1, 2, False),
        ("to_bin", 0, 0, False),
        ("edit", 0, 0, False),
        ("restore", 0, 0, False),
        ("rename", 0, 3, False),
        ("create", 0, 4, False),
        ("delete", 3, 0, False),
        ("switch", 0, 0, False),
        ("create", 0, 6, False),
        ("rename", 0, 2, False),
    ],
    cut=3,
)
def test_feed_replays_to_the_index(world, ops, cut):
    empty_tables(world.engine)
    ix = Index(world.engine)
    run(ix, ops)
    for ident, (_, _, has_bin) in IDENTIFIERS.items():
        index_paths, ident_seqs, table_max = table_state(world.engine, ident)

        body = get_feed(world.shim_url, ident, 0, flatten=True)
        assert body == get_feed(world.standin.url, ident, 0, flatten=True)
        rows, last_seq = parse(body)
        assert last_seq == (max(ident_seqs) if ident_seqs else (table_max or 1))
        node_ids = [r["node_id"] for r in rows]
        assert len(node_ids) == len(set(node_ids)), "a node appears twice in a flattened feed from 0"
        for r in rows:
            assert r["node"]["repository_identifier"] == ident
            assert ix.created[r["node_id"]] == ident, "a row about another identifier's node"
            assert r["node_id"] in ix.nodes, "a row for a node created and deleted in the window"
        replay = {}
        for r in rows:
            if r["type"] in ("path", "delete"):
                replay.pop(r["source"], None)
            if r["type"] != "delete":
                replay[r["target"]] = r["node_id"]
        assert outside_bin(replay, has_bin) == outside_bin(index_paths, has_bin)

        raw_body = get_feed(world.shim_url, ident, 0, flatten=False)
        assert raw_body == get_feed(world.standin.url, ident, 0, flatten=False)
        raw_rows, raw_last = parse(raw_body)
        assert raw_last == (table_max or 1)
        positions = {}
        for r in raw_rows:
            assert r["node"]["repository_identifier"] == ident
            if r["type"] == "delete":
                positions.pop(r["node_id"], None)
            else:
                positions[r["node_id"]] = r["target"]
        assert outside_bin({p: n for n, p in positions.items()}, has_bin) == outside_bin(index_paths, has_bin)

        if ident_seqs:
            since = sorted(ident_seqs)[cut % len(ident_seqs)]
            later, _ = parse(get_feed(world.shim_url, ident, since, flatten=False))
            assert later == [r for r in raw_rows if r["seq"] > since]
