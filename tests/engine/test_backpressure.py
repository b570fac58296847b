"""Back-pressure: writes stop while the object store is too far behind, and resume after.

A branch opens on a memory store, then its shipper's store fails every call. Writes
are acknowledged (local durability) until the backlog passes max_unshipped_bytes;
then writes and write transactions get STORAGE_UNAVAILABLE while reads go on. Once
the store heals the backlog ships, writes are accepted again and the store holds
every acknowledged row.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from shoal import settings as settings_mod
from shoal.engine.connection import Statement
from shoal.engine.database import Database
from shoal.engine.journal import Stores
from shoal.engine.registry import Registry
from shoal.errors import ShoalError
from shoal.log.restore import restore
from shoal.storage.faulty import FaultyStore
from shoal.storage.memory import MemoryStore
from tests.support.storage import assert_log_contiguous

DB = "pressured"
SELECT = [Statement("SELECT v FROM t ORDER BY rowid")]


@asynccontextmanager
async def failing_store(tmp_path: Path, limit: int) -> AsyncIterator[
        tuple[Database, MemoryStore, FaultyStore]]:
    """An open branch whose shipper uploads through a store that fails every call."""
    settings = settings_mod.Settings(data=str(tmp_path / "data"), sync_interval=0.01,
                                     max_unshipped_bytes=limit)
    store = MemoryStore()
    faulty = FaultyStore(store, rate=1.0, seed=3)
    faulty.enabled = False  # healthy while the database is created and opened
    sql, io = ThreadPoolExecutor(4), ThreadPoolExecutor(4)
    try:
        reg = Registry(Stores(store, faulty, io), settings, sql, tmp_path / "scratch")
        reg.create_database(DB, 1_000_000.0)
        path = tmp_path / "data" / DB / "main.db"
        path.parent.mkdir(parents=True)
        db = await reg.open(DB, "main", path)
        faulty.enabled = True
        try:
            yield db, store, faulty
        finally:
            faulty.enabled = False
            await db.aclose()
    finally:
        sql.shutdown(wait=True)
        io.shutdown(wait=True)


async def insert(db: Database, value: str) -> None:
    await db.write([Statement("CREATE TABLE IF NOT EXISTS t(v TEXT)"),
                    Statement("INSERT INTO t VALUES (?)", (value,))])


async def write_until_refused(db: Database, acked: list[str]) -> ShoalError:
    """Write rows (recording each acknowledged one) until a write is refused."""
    for i in range(50):
        try:
            await insert(db, f"v{i}")
        except ShoalError as exc:
            return exc
        acked.append(f"v{i}")
    raise AssertionError(f"50 writes were acknowledged with the store down; backlog "
                         f"{backlog(db)} bytes")


async def stuck(db: Database) -> None:
    """Wait until the shipper has sealed a segment and failed to upload it: from then on
    every new commit waits behind it (counted in the backlog) until the store heals."""
    assert db.journal is not None and db.journal.shipper is not None
    for _ in range(500):
        if db.journal.shipper.failures:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no upload was attempted")


def backlog(db: Database) -> int:
    assert db.journal is not None and db.journal.shipper is not None
    return db.journal.shipper.backlog_bytes


async def read_rows(db: Database) -> list[str]:
    counters, _ = await db.read(SELECT)
    return [row[0] for row in counters.results[0].rows]


def stored_rows(store: MemoryStore, db: Database, tmp_path: Path) -> list[str]:
    assert db.journal is not None
    path = tmp_path / "restored.db"
    restore(store, DB, db.journal.timeline, path)
    con = sqlite3.connect(path)
    try:
        return [r[0] for r in con.execute("SELECT v FROM t ORDER BY rowid")]
    finally:
        con.close()


def test_writes_stop_while_the_store_is_behind_and_resume_once_it_catches_up(
        tmp_path: Path) -> None:
    limit = 32768  # eight pages: a few small unshipped commits pass it

    async def body() -> None:
        async with failing_store(tmp_path, limit) as (db, store, faulty):
            assert db.journal is not None
            await insert(db, "first")
            acked = ["first"]
            await stuck(db)
            refused = await write_until_refused(db, acked)
            assert refused.code == "STORAGE_UNAVAILABLE" and refused.status == 503
            assert f"{DB}/main" in refused.message and "behind by" in refused.message
            assert "max_unshipped_bytes" in refused.message
            assert len(acked) > 1 and backlog(db) > limit
            assert db.journal.shipper is not None and db.journal.shipper.durable_txid == 0

            assert await read_rows(db) == acked  # reads go on
            with pytest.raises(ShoalError) as begin:
                await db.begin("tx_w", "s", write=True)
            assert begin.value.code == "STORAGE_UNAVAILABLE"
            assert not db.write_lock.locked()
            tx = await db.begin("tx_r", "s", write=False)
            assert (await db.tx_query(tx, SELECT)).results[0].rows == [[v] for v in acked]
            await db.end(tx, commit=False)
            with pytest.raises(ShoalError):
                await insert(db, "still refused")

            faulty.enabled = False  # the store is back
            await db.journal.durable(db.txid)
            assert backlog(db) == 0
            await insert(db, "after")
            acked.append("after")
            await db.journal.durable(db.txid)
            assert faulty.counts.total > 0
            assert await read_rows(db) == acked
            assert stored_rows(store, db, tmp_path) == acked  # nothing acknowledged is lost
            assert assert_log_contiguous(store, DB) == db.txid

    asyncio.run(body())


def test_a_limit_of_zero_never_refuses(tmp_path: Path) -> None:
    async def body() -> None:
        async with failing_store(tmp_path, 0) as (db, _, _):
            await insert(db, "first")
            await stuck(db)
            for i in range(20):
                await insert(db, f"v{i}")
            assert backlog(db) > 20 * 4096
            assert len(await read_rows(db)) == 21

    asyncio.run(body())
