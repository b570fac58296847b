"""Replica and Replicas (engine/replica.py) against a fake leader: hydrate, follow, wait for
a bookmark, hydrate again on a gap or another timeline, stop when this node leads, open
on demand within max_open, close when idle."""

from __future__ import annotations

import asyncio
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shoal import settings as settings_mod
from shoal.engine import tables
from shoal.engine.connection import NeedsWriter
from shoal.engine.replica import News, Replica, Replicas
from shoal.log.segment import Commit, encode_segment
from tests.support.engine import run, stmts
from tests.support.logged import LoggedDatabase


class Leader:
    """A fake Source: a LoggedDatabase's commits, its file as the store's copy."""

    def __init__(self, root: Path):
        self.root = root
        self.db = LoggedDatabase(root / "leader.db")
        self.db.write("CREATE TABLE t(v TEXT)",  # and Shoal's txid, as every file has
                      f"CREATE TABLE {tables.CURRENT.state}(k INTEGER PRIMARY KEY, txid)",
                      f"INSERT INTO {tables.CURRENT.state} VALUES (0, 1)")
        self.timeline = "t1"
        self.url: str | None = "http://leader"
        self.hydrations = 0
        self.gap = False  # the next news is a gap
        self.changed = asyncio.Event()
        self.fail = 0  # the next news requests that fail

    def write(self, value: str) -> Commit:
        commit = self.db.write(f"INSERT INTO t VALUES ('{value}')")
        self.changed.set()
        return commit

    def leader_url(self, name: str) -> str | None:
        return self.url

    async def news(self, url: str, name: str, branch: str, after: int, timeline: str,
                   wait: float) -> News:
        if self.fail:
            self.fail -= 1
            raise OSError("the leader cannot be reached")
        if self.gap:
            self.gap = False
            return News(self.timeline, None)
        if timeline == self.timeline and after >= self.db.txid:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(wait, 0.2))
            except TimeoutError:
                return News(self.timeline, [])
        return News(self.timeline, [encode_segment([c for c in self.db.commits
                                                     if c.txid > after])]
                    if after < self.db.txid else [])

    async def hydrate(self, name: str, branch: str, path: Path) -> tuple[str, int]:
        self.hydrations += 1
        path.write_bytes(self.db.image())
        return self.timeline, self.db.txid


def settings(tmp_path: Path, **overrides: object) -> settings_mod.Settings:
    return settings_mod.Settings(**{"data": str(tmp_path / "data"), **overrides})


async def values(replica: Replica) -> list[str]:
    assert replica.db is not None
    counters, _ = await replica.db.read(stmts("SELECT v FROM t ORDER BY rowid"))
    return [row[0] for row in counters.results[0].rows]


@pytest.fixture
def leader(tmp_path: Path) -> Leader:
    made = Leader(tmp_path)
    yield made
    made.db.close()


def test_a_replica_follows_its_leader(tmp_path: Path, leader: Leader) -> None:
    async def body() -> None:
        leader.write("a")
        executor = ThreadPoolExecutor(4)
        replica = Replica("db", "main", tmp_path / "replicas" / "db", settings(tmp_path),
                          executor, leader)
        await replica.start()
        try:
            assert (replica.txid, replica.timeline) == (2, "t1")
            assert await values(replica) == ["a"]
            assert replica.db is not None
            assert replica.db.bookmark(2) == replica.db.bookmark(replica.db.txid)
            assert await replica.reached(2, "t1", 0)
            assert not await replica.reached(3, "t1", 0.05)  # nothing yet: waited, no
            waiting = asyncio.ensure_future(replica.reached(4, None, 5))
            leader.write("b")
            leader.write("c")
            assert await waiting
            assert await values(replica) == ["a", "b", "c"]
            assert replica.lag >= 0
            assert not await replica.reached(1, "t0", 5)  # another timeline: never
            with pytest.raises(NeedsWriter):  # a replica only reads
                await replica.db.read(stmts("INSERT INTO t VALUES ('x')"))
        finally:
            await replica.close()
            executor.shutdown()
        assert not list((tmp_path / "replicas" / "db").iterdir())  # its files are gone

    run(body())


def test_a_gap_or_a_new_timeline_hydrates_a_new_copy(tmp_path: Path, leader: Leader) -> None:
    async def body() -> None:
        executor = ThreadPoolExecutor(4)
        folder = tmp_path / "replicas" / "db"
        replica = Replica("db", "main", folder, settings(tmp_path), executor, leader)
        await replica.start()
        try:
            first = replica.copy
            reader = replica.db
            assert first is not None and reader is not None
            reader.active += 1  # a read in flight on the old copy
            leader.gap = True
            leader.write("a")
            assert await replica.reached(2, None, 5)
            assert leader.hydrations == 2 and replica.copy is not first
            assert first.path.exists()  # kept for its read...
            reader.active -= 1
            for _ in range(100):
                if not first.path.exists():
                    break
                await asyncio.sleep(0.02)
            assert not first.path.exists()  # ...then removed
            leader.timeline = "t2"  # a restore: the same txids, another history
            leader.write("b")
            for _ in range(200):
                if replica.timeline == "t2":
                    break
                await asyncio.sleep(0.02)
            assert replica.timeline == "t2" and leader.hydrations == 3
            assert await values(replica) == ["a", "b"]
            leader.fail = 3  # an unreachable leader: tried again
            leader.write("c")
            assert await replica.reached(4, "t2", 10)
        finally:
            await replica.close()
            executor.shutdown()

    run(body())


def test_replicas_open_on_demand_and_close(tmp_path: Path, leader: Leader) -> None:
    async def body() -> None:
        executor = ThreadPoolExecutor(4)
        root = tmp_path / "replicas"
        replicas = Replicas(root, settings(tmp_path, max_open=2), executor, leader)
        root.mkdir()
        (root / "left-by-a-killed-node").touch()
        replicas.start()
        assert not root.exists()
        try:
            assert replicas.get("db", "main") is None  # opening: the leader answers
            assert replicas.get("db", "main") is None
            await asyncio.gather(*replicas.opening.values())
            one = replicas.get("db", "main")
            assert one is not None and not one.closed
            assert [s["database"] for s in replicas.status()] == ["db"]
            replicas.get("db2", "main")
            await asyncio.gather(*replicas.opening.values())
            # a third: the least recently used idle one makes room
            assert replicas.get("db3", "main") is None
            assert "db" not in {k[0] for k in replicas.open}
            await asyncio.gather(*replicas.opening.values())
            assert set(replicas.open) == {("db2", "main"), ("db3", "main")}
            busy = [r for r in replicas.open.values()]
            for r in busy:
                assert r.db is not None
                r.db.active += 1
            assert replicas.get("db4", "main") is None  # all busy: no room, nothing opens
            assert ("db4", "main") not in replicas.opening
            for r in busy:
                assert r.db is not None
                r.db.active -= 1
            replicas.close_database("db2")
            assert set(replicas.open) == {("db3", "main")}
            leader.url = None  # this node leads it now: the replica stops following
            leader.write("x")
            for _ in range(100):
                if replicas.open[("db3", "main")].closed:
                    break
                await asyncio.sleep(0.05)
            assert replicas.open[("db3", "main")].closed
            assert replicas.close_idle(0.0) == 1  # closed ones go whatever their use
            await asyncio.gather(*replicas.opening.values())
            assert not replicas.open
            leader.url = "http://leader"
            replicas.get("db5", "main")
            await asyncio.gather(*replicas.opening.values())
            assert replicas.close_idle(0.0) == 0  # used after the cutoff
            assert replicas.close_idle(float("inf")) == 1
        finally:
            await replicas.close_all()
            executor.shutdown()
        assert not root.exists()

    run(body())


def test_a_replica_that_cannot_hydrate_leaves_no_file(tmp_path: Path, leader: Leader) -> None:
    async def body() -> None:
        async def broken(name: str, branch: str, path: Path) -> tuple[str, int]:
            shutil.copyfile(leader.db.path, path)
            raise OSError("the store failed")

        leader.hydrate = broken  # type: ignore[method-assign]
        executor = ThreadPoolExecutor(2)
        replicas = Replicas(tmp_path / "replicas", settings(tmp_path), executor, leader)
        try:
            assert replicas.get("db", "main") is None
            await asyncio.gather(*replicas.opening.values())
            assert not replicas.open
            assert not list((tmp_path / "replicas" / "db").iterdir())
        finally:
            await replicas.close_all()
            executor.shutdown()

    run(body())
