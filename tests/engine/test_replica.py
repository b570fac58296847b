"""Replica and Replicas (engine/replica.py) against a fake leader: hydrate, follow, wait for
a bookmark, hydrate again on a gap or another timeline, stop when this node leads, open
on demand within max_open, close when idle."""

from __future__ import annotations

import asyncio
import math
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shoal import settings as settings_mod
from shoal.engine import tables
from shoal.engine.connection import NeedsWriter
from shoal.engine.replica import Copy, News, Replica, Replicas
from shoal.log.segment import Commit, encode_segment
from shoal.metrics import METRICS
from tests.support.engine import fds_on, run, stmts
from tests.support.logged import LoggedDatabase


class Leader:
    """A fake Source: a LoggedDatabase's commits, its file as the store's copy."""

    def __init__(self, root: Path, clock: Callable[[], float] | None = None):
        self.root = root
        self.db = LoggedDatabase(root / "leader.db", clock=clock)
        self.db.write("CREATE TABLE t(v TEXT)",  # and Shoal's txid, as every file has
                      f"CREATE TABLE {tables.CURRENT.state}(k INTEGER PRIMARY KEY, txid)",
                      f"INSERT INTO {tables.CURRENT.state} VALUES (0, 1)")
        self.timeline = "t1"
        self.url: str | None = "http://leader"
        self.hydrations = 0
        self.gap = False  # the next news is a gap
        self.changed = asyncio.Event()
        self.fail = 0  # the next news requests that fail
        self.poll = 0.2  # seconds a request for news waits for one
        self.asked = 0

    def write(self, value: str) -> Commit:
        commit = self.db.write(f"INSERT INTO t VALUES ('{value}')")
        self.changed.set()
        return commit

    def leader_url(self, name: str) -> str | None:
        return self.url

    async def news(self, url: str, name: str, branch: str, after: int, timeline: str,
                   wait: float) -> News:
        self.asked += 1
        if self.fail:
            self.fail -= 1
            raise OSError("the leader cannot be reached")
        if self.gap:
            self.gap = False
            return News(self.timeline, None)
        if timeline == self.timeline and after >= self.db.txid:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(wait, self.poll))
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


def sample(name: str) -> float:
    return METRICS.registry.get_sample_value(name) or 0.0




async def started(tmp_path: Path, leader: Leader, executor: ThreadPoolExecutor) -> Replica:
    replica = Replica("db", "main", tmp_path / "replicas" / "db", settings(tmp_path),
                      executor, leader)
    await replica.start()
    return replica


def test_applies_are_measured_and_schema_changes_reach_pooled_readers(
        tmp_path: Path) -> None:
    async def body() -> None:
        leader = Leader(tmp_path, clock=time.time)
        executor = ThreadPoolExecutor(4)
        hydrations, applied = (sample("shoal_replica_hydrations_total"),
                               sample("shoal_replica_applied_total"))
        lags = sample("shoal_replica_lag_seconds_count")
        replica = await started(tmp_path, leader, executor)
        try:
            assert replica.lag == 0.0  # nothing applied yet
            assert sample("shoal_replica_hydrations_total") == hydrations + 1
            await values(replica)  # a pooled reader, its schema loaded
            assert replica.db is not None
            generation = replica.db.schema_generation
            leader.db.write("ALTER TABLE t ADD COLUMN w INTEGER DEFAULT 7")
            leader.changed.set()
            assert await replica.reached(2, None, 5)
            assert replica.db.schema_generation == generation + 1
            counters, _ = await replica.db.read(stmts("SELECT w FROM t"))
            assert counters.results[0].columns == ["w"]
            leader.db.write("INSERT INTO t(v) VALUES ('a')")
            leader.changed.set()
            assert await replica.reached(3, None, 5)
            assert 0.0 < replica.lag < 1.0  # this machine's clock on both sides
            assert replica.db.inline_after == 0.0  # reads may run inline again
            assert not replica._reached.is_set()  # the next wait waits
            assert replica.db.schema_generation == generation + 1  # no schema change
            assert sample("shoal_replica_applied_total") == applied + 2
            assert sample("shoal_replica_lag_seconds_count") == lags + 2
            assert leader.hydrations == 1  # news without a gap: followed, not copied again
        finally:
            await replica.close()
            executor.shutdown()
            leader.db.close()

    run(body())


def test_waiting_for_a_bookmark_lets_the_loop_run(tmp_path: Path, leader: Leader) -> None:
    async def body() -> None:
        executor = ThreadPoolExecutor(4)
        replica = await started(tmp_path, leader, executor)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        try:
            leader.write("a")  # a wake: the next wait must wait again
            assert await replica.reached(2, None, 5)
            started_at = time.monotonic()
            assert not await replica.reached(9, None, 0.3)
            assert time.monotonic() - started_at >= 0.3
            assert ticks >= 10  # the wait did not hold the loop
            assert not await replica.reached(9, None, 0)  # no time: at once
        finally:
            ticker.cancel()
            await replica.close()
            executor.shutdown()

    run(body())


def test_a_new_copy_wakes_waiters_and_the_old_one_closes_after_its_reads(
        tmp_path: Path, leader: Leader) -> None:
    async def body() -> None:
        executor = ThreadPoolExecutor(4)
        replica = await started(tmp_path, leader, executor)
        try:
            first, reader = replica.copy, replica.db
            assert first is not None and reader is not None
            reader.active += 1
            waiting = asyncio.ensure_future(replica.reached(2, None, 3))
            leader.gap = True
            leader.db.write("INSERT INTO t VALUES ('a')")  # not announced: only a copy has it
            leader.changed.set()
            begun = time.monotonic()
            assert await waiting
            assert time.monotonic() - begun < 1.0  # woken by the new copy, not by a timeout
            await asyncio.sleep(0.1)
            assert first.path.exists() and not reader.closed  # its read is still running
            reader.active -= 1
            await asyncio.sleep(0.2)
            assert not first.path.exists() and reader.closed
            assert not replica._retired
        finally:
            await replica.close()
            executor.shutdown()
        assert fds_on(tmp_path / "replicas") == 0

    run(body())


def test_closing_waits_for_a_retired_copy(tmp_path: Path, leader: Leader) -> None:
    async def body() -> None:
        executor = ThreadPoolExecutor(4)
        replica = await started(tmp_path, leader, executor)
        first, reader = replica.copy, replica.db
        assert first is not None and reader is not None
        reader.active += 1
        leader.gap = True
        leader.write("a")
        assert await replica.reached(2, None, 5)
        reader.active -= 1
        await replica.close()
        assert not first.path.exists() and reader.closed
        executor.shutdown()

    run(body())


def test_an_unreachable_leader_is_asked_again_after_a_pause(
        tmp_path: Path, leader: Leader, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shoal.engine.replica.RETRY", 0.2)

    async def body() -> None:
        executor = ThreadPoolExecutor(4)
        replica = await started(tmp_path, leader, executor)
        try:
            leader.fail = 3
            asked = leader.asked
            begun = time.monotonic()
            leader.write("a")
            assert await replica.reached(2, None, 5)
            assert time.monotonic() - begun >= 0.6  # three pauses
            assert leader.asked - asked >= 4
        finally:
            await replica.close()
            executor.shutdown()

    run(body())


def test_an_apply_cut_short_drops_the_replica(tmp_path: Path, leader: Leader,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shoal.engine.replica.RETRY", 10.0)  # not after a pause
    def cut_short(self: Copy, segments: list[bytes], after: int) -> tuple[int, bool, float]:
        self.broken = True
        raise OSError(28, "No space left on device")

    async def body() -> None:
        executor = ThreadPoolExecutor(4)
        replica = await started(tmp_path, leader, executor)
        try:
            assert replica.db is not None and replica._task is not None
            monkeypatch.setattr(Copy, "apply", cut_short)
            leader.write("a")
            await asyncio.wait_for(asyncio.shield(replica._task), 2)  # it stops, at once
            assert replica.closed
            assert replica.db.inline_after == math.inf  # no read waits for its lock inline
            assert replica.db.visible == replica.db.txid == 1  # nothing of it visible
            assert leader.asked == 1  # not asked again
        finally:
            await replica.close()
            executor.shutdown()

    run(body())


def test_close_stops_a_long_poll_at_once(tmp_path: Path, leader: Leader) -> None:
    async def body() -> None:
        executor = ThreadPoolExecutor(4)
        leader.poll = 30
        replica = await started(tmp_path, leader, executor)
        await asyncio.sleep(0.05)  # asking, now
        begun = time.monotonic()
        await replica.close()
        assert time.monotonic() - begun < 1.0
        assert replica.closed and replica._task is not None and replica._task.done()
        assert fds_on(tmp_path / "replicas") == 0
        never = Replica("db", "main", tmp_path / "replicas" / "x", settings(tmp_path),
                        executor, leader)
        await never.close()  # one that never started closes too
        executor.shutdown()

    run(body())


def test_replicas_keep_what_is_used_and_reopen_what_stopped(
        tmp_path: Path, leader: Leader, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shoal.engine.replica.RETRY", 0.3)

    async def body() -> None:
        executor = ThreadPoolExecutor(4)
        replicas = Replicas(tmp_path / "nothing-yet", settings(tmp_path), executor, leader)
        replicas.start()  # no folder: nothing to remove
        try:
            replicas.get("db", "main")
            await asyncio.gather(*replicas.opening.values())
            cutoff = time.monotonic()
            await asyncio.sleep(0.01)
            one = replicas.get("db", "main")  # used after the cutoff: kept
            assert one is not None and one.last_used > cutoff
            assert replicas.close_idle(cutoff) == 0
            replicas.close_database("nothing-like-it")  # not open: nothing happens
            one.closed = True  # it stopped following (this node leads it, say)
            assert replicas.get("db", "main") is None  # dropped...
            assert ("db", "main") in replicas.opening  # ...reopened once it is closed
            await asyncio.gather(*replicas.opening.values())  # closed
            assert replicas.get("db", "main") is None  # opening anew
            await asyncio.gather(*replicas.opening.values())
            two = replicas.get("db", "main")
            assert two is not None and two is not one
            replicas.close_database("db")
            assert ("db", "main") in replicas.opening  # closing: not opened meanwhile
            assert replicas.get("db", "main") is None
            await asyncio.gather(*replicas.opening.values())
            tries = 0

            async def broken(name: str, branch: str, path: Path) -> tuple[str, int]:
                nonlocal tries
                tries += 1
                raise OSError("the store failed")

            leader.hydrate = broken  # type: ignore[method-assign]
            assert replicas.get("db9", "main") is None
            await asyncio.sleep(0.1)  # failed, and pausing
            assert replicas.get("db9", "main") is None
            assert list(replicas.opening) == [("db9", "main")]
            await asyncio.sleep(0.05)
            assert tries == 1  # not tried again while the failed open pauses
        finally:
            await replicas.close_all()
            await replicas.close_all()  # twice: nothing left
            executor.shutdown()

    run(body())


def test_close_all_cancels_what_is_opening(tmp_path: Path, leader: Leader) -> None:
    async def body() -> None:
        executor = ThreadPoolExecutor(4)
        gate = asyncio.Event()
        hydrate = leader.hydrate

        async def slow(name: str, branch: str, path: Path) -> tuple[str, int]:
            await gate.wait()
            return await hydrate(name, branch, path)

        leader.hydrate = slow  # type: ignore[method-assign]
        replicas = Replicas(tmp_path / "replicas", settings(tmp_path), executor, leader)
        replicas.get("db", "main")
        replicas.get("db2", "main")
        await asyncio.sleep(0.05)  # both wait in the slow hydrate
        leader.hydrate = hydrate  # type: ignore[method-assign]
        replicas.get("db3", "main")
        await asyncio.sleep(0.3)
        assert set(replicas.open) == {("db3", "main")}
        await asyncio.wait_for(replicas.close_all(), 2)  # the slow ones are cancelled
        assert not replicas.open and all(t.done() for t in replicas.opening.values())
        assert not (tmp_path / "replicas").exists()
        assert fds_on(tmp_path / "replicas") == 0
        executor.shutdown()

    run(body())


def test_reads_during_an_apply_take_a_bookmark_that_covers_it(
        tmp_path: Path, leader: Leader, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that ends while pages are written may have seen them: its bookmark (taken
    from ``visible``) covers the commits being applied (database.py)."""

    async def body() -> None:
        executor = ThreadPoolExecutor(4)
        replica = await started(tmp_path, leader, executor)
        entered, gate = threading.Event(), threading.Event()
        apply = Copy.apply

        def slow(self: Copy, segments: list[bytes], after: int) -> tuple[int, bool, float]:
            entered.set()
            gate.wait(5)
            return apply(self, segments, after)

        monkeypatch.setattr(Copy, "apply", slow)
        try:
            assert replica.db is not None
            leader.write("a")
            leader.write("b")
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, entered.wait, 5)
            assert replica.db.txid == 1 and replica.db.visible >= 2
            gate.set()
            assert await replica.reached(2, None, 5)
            assert replica.db.visible == replica.db.txid >= 2
        finally:
            gate.set()
            await replica.close()
            executor.shutdown()

    run(body())
