"""The commit log of an open branch, in process on a memory store: capture, recovery, repair.

Each test opens a branch through the Registry (as the engine does), writes through
the Database and checks what the store holds by restoring it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, TypeVar

import pytest

from shoal.engine.connection import Statement
from shoal.engine.database import BEGIN_IMMEDIATE, COMMIT, Database
from shoal.errors import Code, ShoalError
from shoal.log.restore import restore
from shoal.storage import StorageUnavailable
from shoal.storage.fenced import Fenced
from shoal.storage.memory import MemoryStore
from tests.support.engine import DB, registry, run
from tests.support.storage import assert_log_contiguous

T = TypeVar("T")
async def insert(db: Database, *values: str) -> int:
    done = await db.write([Statement("CREATE TABLE IF NOT EXISTS t(v TEXT)")] +
                          [Statement("INSERT INTO t VALUES (?)", (v,)) for v in values])
    return done.txid


def stored_rows(store: MemoryStore, timeline: str, tmp_path: Path, name: str) -> list[str]:
    path = tmp_path / f"{name}.db"
    restore(store, DB, timeline, path)
    con = sqlite3.connect(path)
    try:
        return [r[0] for r in con.execute("SELECT v FROM t ORDER BY rowid")]
    finally:
        con.close()


def test_every_commit_is_shipped_and_a_reopen_hydrates(tmp_path: Path) -> None:
    async def body() -> None:
        async with registry(tmp_path) as (reg, store):
            path = tmp_path / "data" / "dbs" / DB / "main.db"
            path.parent.mkdir(parents=True)
            db = await reg.open(DB, "main", path)
            for i in range(20):
                assert await insert(db, f"v{i}") == i + 1
            assert db.journal is not None
            await db.journal.durable(db.txid)
            await db.aclose()
            assert path.with_suffix(".timeline").exists()
            timeline = db.journal.timeline
            assert stored_rows(store, timeline, tmp_path, "a") == [f"v{i}" for i in range(20)]
            assert assert_log_contiguous(store, DB) == 20
            reg.discard_local(path)  # a node on an empty disk
            again = await reg.open(DB, "main", path)
            assert again.txid == 20
            assert await insert(again, "more") == 21
            await again.aclose()
            assert assert_log_contiguous(store, DB) == 21

    run(body())


def test_unshipped_commits_in_the_wal_ship_at_the_next_open(tmp_path: Path) -> None:
    async def body() -> None:
        async with registry(tmp_path, sync_interval=3600) as (reg, store):
            path = tmp_path / "data" / "dbs" / DB / "main.db"
            path.parent.mkdir(parents=True)
            db = await reg.open(DB, "main", path)
            n = 60  # enough commits for the WAL to pass headroom.START
            for i in range(n):
                await insert(db, f"v{i}")
            assert db.journal is not None and db.journal.shipper is not None
            assert db.journal.shipper.durable_txid == 0  # nothing shipped yet: a crash now
            # Zeros past the last frame (log/headroom.py), which the reopen must skip.
            end = 32 + db.journal.frames * (24 + db.journal.capture.page_size)
            wal = Path(f"{path}-wal").read_bytes()
            assert len(wal) > end and not any(wal[end:])
            await db.journal.shipper.close(flush=False)
            db.close()  # (no checkpoint on close: the WAL keeps every commit)
            again = await reg.open(DB, "main", path)
            assert again.journal is not None
            await again.journal.durable(n)
            assert stored_rows(store, again.journal.timeline, tmp_path, "b") == \
                [f"v{i}" for i in range(n)]
            assert assert_log_contiguous(store, DB) == n
            await again.aclose()

    run(body())


def test_a_commit_that_bumps_no_txid_rebases_the_log_on_a_snapshot(tmp_path: Path) -> None:
    async def body() -> None:
        async with registry(tmp_path) as (reg, store):
            path = tmp_path / "data" / "dbs" / DB / "main.db"
            path.parent.mkdir(parents=True)
            db = await reg.open(DB, "main", path)
            await insert(db, "a", "b")
            assert db.writer is not None and db.journal is not None
            # a commit behind the log's back (what a bug would do): no txid bump
            db.writer.internal(BEGIN_IMMEDIATE)
            db.writer.internal("INSERT INTO t VALUES ('sneaky')")
            db.writer.internal(COMMIT)
            txid = await insert(db, "c")  # reading the marks finds three commits for two
            assert txid == 2
            await db.journal.durable(txid)  # waits out the re-base: the snapshot holds txid 2
            assert not db.journal.broken
            assert await insert(db, "d") == 3
            await db.journal.durable(3)
            timeline = db.journal.timeline
            assert stored_rows(store, timeline, tmp_path, "c") == ["a", "b", "sneaky", "c", "d"]
            snaps = [k for k in store._objects if k.startswith(f"dbs/{DB}/snap/")]
            assert any(k.endswith(".snap") and "/00000000000000000002-" in k for k in snaps)
            await db.aclose()

    run(body())


def test_checkpoints_and_snapshots_follow_durability(tmp_path: Path) -> None:
    async def body() -> None:
        async with registry(tmp_path, checkpoint_frames=4, snapshot_log_bytes=1,
                            snapshot_log_ratio=0.0) as (reg, store):
            path = tmp_path / "data" / "dbs" / DB / "main.db"
            path.parent.mkdir(parents=True)
            db = await reg.open(DB, "main", path)
            assert db.journal is not None
            for i in range(30):
                await insert(db, f"v{i}" * 200)
                await db.journal.durable(db.txid)
            while db.journal._checkpoint_task is not None:  # let the last one finish
                await asyncio.shield(db.journal._checkpoint_task)
            snaps = sorted(k for k in store._objects if k.startswith(f"dbs/{DB}/snap/"))
            assert len(snaps) > 2  # txid 0, then snapshots after complete checkpoints
            assert stored_rows(store, db.journal.timeline, tmp_path, "d") == \
                [f"v{i}" * 200 for i in range(30)]
            await db.aclose()

    run(body())


def test_a_node_without_the_stores_lease_refuses_writes_and_serves_reads(
        tmp_path: Path) -> None:
    held = [True]

    def fence() -> None:
        if not held[0]:
            raise Fenced("this node does not hold the object store's lease: test")

    async def body() -> None:
        async with registry(tmp_path, fence) as (reg, _):
            path = tmp_path / "data" / "dbs" / DB / "main.db"
            path.parent.mkdir(parents=True)
            db = await reg.open(DB, "main", path)
            await insert(db, "before")
            held[0] = False
            for attempt in (insert(db, "refused"), db.begin("tx1", "test", write=True)):
                try:
                    await attempt
                    raise AssertionError("a write passed the fence")
                except ShoalError as exc:
                    assert exc.code == "STORAGE_UNAVAILABLE" and "lease" in exc.message
            counters, _ = await db.read([Statement("SELECT v FROM t")])
            assert counters.results[0].rows == [["before"]]
            held[0] = True
            assert await insert(db, "after") == 2  # the refused write took no txid
            await db.aclose()

    run(body())


@pytest.mark.parametrize(("failure", "raised"), [
    (StorageUnavailable("t", "put t failed: timed out"), ShoalError),
    (TypeError("a bug"), TypeError),
])
def test_taking_the_branch_maps_the_store_failing_and_lets_a_bug_through(
        tmp_path: Path, failure: Exception, raised: type[Exception]) -> None:
    """The first write takes the timeline (a conditional put of its record): the store
    failing there is 503 STORAGE_UNAVAILABLE; anything else is a bug, raised as it is."""
    async def body() -> None:
        async with registry(tmp_path) as (reg, store):
            path = tmp_path / "data" / "dbs" / DB / "main.db"
            path.parent.mkdir(parents=True)
            db = await reg.open(DB, "main", path)
            put = store.put

            def failing(key: str, data: bytes, **conditions: Any) -> str:
                if "/timelines/" in key:
                    raise failure
                return put(key, data, **conditions)

            store.put = failing  # type: ignore[method-assign]
            with pytest.raises(raised) as info:
                await insert(db, "refused")
            if isinstance(info.value, ShoalError):
                assert info.value.code == Code.STORAGE_UNAVAILABLE
                assert "put t failed: timed out" in info.value.message
            else:
                assert info.value is failure
            store.put = put  # type: ignore[method-assign]
            assert await insert(db, "after") == 1
            await db.aclose()

    run(body())
