"""A store holding one database whose branches' commits come from real SQLite databases,
with the oracle image of every commit (tests/log/test_branch.py, test_compaction.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from shoal.log import layout
from shoal.log.branch import Branch, create_branch, create_database, get_branch
from shoal.log.restore import restore
from shoal.log.timeline import load_timeline
from shoal.storage.memory import MemoryStore
from tests.support.logged import LoggedDatabase, put_segments, put_snapshot

DB = "app"


class World:
    """A store with a main branch whose commits come from a real SQLite database."""

    def __init__(self, tmp: Path, store: MemoryStore | None = None):
        self.tmp = tmp
        self.store = store or MemoryStore()
        self.main = create_database(self.store, DB, created_at=100.0)
        logged = LoggedDatabase(tmp / "main.db")
        put_snapshot(self.store, DB, self.main.timeline, logged.image(), 0, logged.time)
        self.dbs: dict[str, LoggedDatabase] = {"main": logged}
        self.images: dict[str, dict[int, bytes]] = {self.main.timeline: {0: logged.image()}}
        logged.write("CREATE TABLE t(who TEXT, n INTEGER)")
        self.images[self.main.timeline][1] = logged.image()
        self.ship("main")

    def write(self, name: str, count: int) -> None:
        logged = self.dbs[name]
        timeline = get_branch(self.store, DB, name).timeline
        for _ in range(count):
            logged.write(("INSERT INTO t VALUES (?, ?)", (name, logged.txid)))
            self.images.setdefault(timeline, {})[logged.txid] = logged.image()
        self.ship(name)

    def ship(self, name: str) -> None:
        logged = self.dbs[name]
        timeline = get_branch(self.store, DB, name).timeline
        start = max((s.last for s in _segs(self.store, timeline)),
                    default=load_timeline(self.store, DB, timeline).fork_txid)
        unshipped = [c for c in logged.commits if c.txid > start]
        if unshipped:
            put_segments(self.store, DB, timeline, unshipped, [2] * len(unshipped))

    def branch(self, name: str, source: str, fork_txid: int,
               created_at: float = 200.0) -> Branch:
        branch = create_branch(self.store, DB, name, get_branch(self.store, DB, source),
                               fork_txid, created_at=created_at)
        path = self.tmp / f"{name}.db"
        restore(self.store, DB, branch.timeline, path)  # materialise: the parent at the fork
        logged = LoggedDatabase(path, txid=fork_txid, start_time=2_000_000.0)
        self.dbs[name] = logged
        self.images[branch.timeline] = {fork_txid: logged.image()}
        return branch

    def rows(self, name: str, txid: int | None = None) -> list[tuple[str, int]]:
        path = self.tmp / f"check-{name}.db"
        timeline = get_branch(self.store, DB, name).timeline
        restore(self.store, DB, timeline, path, txid=txid)
        con = sqlite3.connect(path)
        try:
            return con.execute("SELECT who, n FROM t ORDER BY rowid").fetchall()
        finally:
            con.close()


def _segs(store: MemoryStore, timeline: str) -> list[layout.SegmentInfo]:
    found = (layout.parse_segment(i) for i in store.list(layout.log_prefix(DB, timeline)))
    return [s for s in found if s is not None]
