"""Compaction of an open branch, in process on a memory store: VACUUM as one commit, the log
re-based on a snapshot of the compacted file, and what a kill at each step leaves.

The store is checked by restoring from it, as a node on an empty disk would.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shoal import settings as settings_mod
from shoal.engine.connection import Statement
from shoal.engine.database import Database
from shoal.errors import ShoalError
from shoal.log.restore import check_plan, restore
from shoal.log.timeline import load_timeline, segments, snapshots
from shoal.log.wal import read_commits
from tests.support.engine import DB, registry, run

ROWS = 400
PAD = 4000  # bytes a row: ~1.6 MB of rows


async def fill(db: Database) -> int:
    """A table of ROWS padded rows, then most of them deleted: free pages to give back."""
    await db.write([Statement("CREATE TABLE t(id INTEGER PRIMARY KEY, pad BLOB)")])
    for i in range(0, ROWS, 50):
        await db.write([Statement("INSERT INTO t VALUES (?, zeroblob(?))", (i + k, PAD))
                        for k in range(50)])
    done = await db.write([Statement("DELETE FROM t WHERE id >= 10")])
    return done.txid


def restored(store: object, timeline: str, tmp_path: Path, name: str,
             txid: int | None = None) -> tuple[int, int, str]:
    """(rows, file bytes, integrity) of the store's branch at txid (default its head)."""
    path = tmp_path / f"{name}.db"
    restore(store, DB, timeline, path, txid=txid)  # type: ignore[arg-type]
    con = sqlite3.connect(path)
    try:
        count = con.execute("SELECT count(*) FROM t").fetchone()[0]
        check = con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()
    return count, os.path.getsize(path), check


async def opened(reg: object, tmp_path: Path) -> tuple[Database, Path]:
    path = tmp_path / "data" / "dbs" / DB / "main.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return await reg.open(DB, "main", path), path  # type: ignore[attr-defined]


def test_compaction_shrinks_the_file_and_rebases_the_log(tmp_path: Path) -> None:
    async def body() -> None:
        async with registry(tmp_path) as (reg, store):
            db, path = await opened(reg, tmp_path)
            deleted = await fill(db)
            assert db.journal is not None
            await db.journal.durable(deleted)
            done = await db.compact()
            assert done.txid == deleted + 1 == db.txid
            assert done.bytes_after < done.bytes_before / 4
            assert os.path.getsize(path) == done.bytes_after  # checkpointed: the file shrank
            assert not db.journal.broken
            timeline = db.journal.timeline
            snaps = {s.txid for s in snapshots(store, DB, timeline)}
            assert done.txid in snaps
            assert all(s.last <= deleted for s in segments(store, DB, timeline))
            # restore: to the compaction (its snapshot), and to before it (the old log)
            count, size, check = restored(store, timeline, tmp_path, "now")
            assert (count, size, check) == (10, done.bytes_after, "ok")
            count, _, check = restored(store, timeline, tmp_path, "before", deleted - 1)
            assert (count, check) == (ROWS, "ok")
            # writes go on from the next txid; the chain checks accept a snapshot at N+1
            # with no segment N+1
            more = await db.write([Statement("INSERT INTO t VALUES (1000, 'x')")])
            assert more.txid == done.txid + 1
            await db.journal.durable(more.txid)
            check_plan(store, DB, timeline, done.txid)
            check_plan(store, DB, timeline, more.txid)
            assert restored(store, timeline, tmp_path, "after", more.txid)[0] == 11
            # the segments skip only the compaction's txid, which its snapshot holds
            lasts = sorted((s.first, s.last) for s in segments(store, DB, timeline))
            assert lasts[-1] == (more.txid, more.txid)
            assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(lasts[:-1]))
            # twice in a row is fine, and so is a database with nothing to give back
            again = await db.compact()
            assert again.txid == more.txid + 1 and again.bytes_after <= done.bytes_after + 4096
            await db.aclose()

    run(body())


def test_an_empty_database_compacts(tmp_path: Path) -> None:
    async def body() -> None:
        async with registry(tmp_path) as (reg, store):
            db, _ = await opened(reg, tmp_path)
            done = await db.compact()
            assert done.txid == 1 and done.bytes_after <= done.bytes_before
            assert db.journal is not None
            head = load_timeline(store, DB, db.journal.timeline).head
            assert head is not None and head.txid == 1
            await db.aclose()

    run(body())


def test_a_kill_before_the_rebase_recovers_the_vacuum_as_a_whole_image(tmp_path: Path) -> None:
    """Killed after VACUUM, before the snapshot: the reopen numbers the WAL's commits
    backwards from the file's txid, so the VACUUM commit (last) ships as the new txid. It
    writes every page, so applied on the store's state it gives exactly the file."""
    async def body() -> None:
        async with registry(tmp_path) as (reg, store):
            db, path = await opened(reg, tmp_path)
            deleted = await fill(db)
            assert db.journal is not None and db.journal.shipper is not None
            async with db.write_lock:  # compaction's steps, up to the re-base
                assert await db.journal.settle(db)
                db.journal.broken = True
                txid = await asyncio.get_running_loop().run_in_executor(None, db._vacuum)
            assert txid == deleted + 1
            found, _ = read_commits(f"{path}-wal", None, verify=True)
            assert len(found) == 2  # the bump, then the VACUUM: nothing else
            vacuum = found[-1]
            assert sorted(pgno for pgno, _ in vacuum.frames) == \
                list(range(1, vacuum.db_pages + 1))
            await db.journal.shipper.close(flush=False)  # kill -9: no checkpoint, no snapshot
            db.close()
            again, _ = await opened(reg, tmp_path)
            assert again.txid == txid and again.journal is not None
            await again.journal.durable(txid)
            count, size, check = restored(store, again.journal.timeline, tmp_path, "crash")
            assert (count, check) == (10, "ok")
            assert size == vacuum.db_pages * vacuum.page_size
            await again.aclose()

    run(body())


def test_open_read_transactions_refuse_compaction_before_it_changes_anything(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with registry(tmp_path, busy_timeout=0.2) as (reg, _):
            db, _ = await opened(reg, tmp_path)
            deleted = await fill(db)
            reader = await db.begin("tx_r", "test", write=False)
            with pytest.raises(ShoalError) as refused:
                await db.compact()
            assert refused.value.code == "DATABASE_BUSY"
            assert "read transactions" in refused.value.message
            assert db.txid == deleted and db.journal is not None and not db.journal.broken
            await db.end(reader, commit=False)
            assert (await db.compact()).txid == deleted + 1
            await db.aclose()

    run(body())


def test_a_local_only_database_compacts(tmp_path: Path) -> None:
    async def body() -> None:
        settings = settings_mod.Settings(data=str(tmp_path / "data"))
        path = tmp_path / "plain.db"
        db = Database("plain", "main", str(path), settings, ThreadPoolExecutor(2))
        await db.open()
        deleted = await fill(db)
        done = await db.compact()
        assert done.txid == deleted + 1
        assert done.bytes_after < done.bytes_before / 4
        assert os.path.getsize(path) == done.bytes_after
        assert os.path.getsize(f"{path}-wal") == 0
        db.close()
        con = sqlite3.connect(path)
        assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 10
        con.close()

    run(body())



def test_a_reader_after_the_vacuum_leaves_the_log_to_the_next_commit(tmp_path: Path) -> None:
    """A read that began between the first checkpoint and the re-base holds the second
    one up: DATABASE_BUSY once busy_timeout passes, the compaction committed on this node,
    the log broken; the next commit re-bases it (its remote-durability answer waits for
    that), and the store then holds every row."""
    async def body() -> None:
        async with registry(tmp_path, busy_timeout=0.2, durability="remote") as (reg, store):
            db, _ = await opened(reg, tmp_path)
            deleted = await fill(db)
            assert db.journal is not None
            async with db.write_lock:
                assert await db.journal.settle(db)
                db.journal.broken = True
                txid = await asyncio.get_running_loop().run_in_executor(None, db._vacuum)
                reader = await db.begin("tx_r", "test", write=False)
                with pytest.raises(ShoalError) as busy:
                    await db._checkpoint_after()
            assert busy.value.code == "DATABASE_BUSY"
            assert f"compacted at txid {txid}" in busy.value.message
            assert db.journal.broken and txid == deleted + 1
            await db.end(reader, commit=False)
            done = await db.write([Statement("INSERT INTO t VALUES (5000, 'x')")])
            assert done.txid == txid + 1 and not db.journal.broken  # answered once durable
            count, _, check = restored(store, db.journal.timeline, tmp_path, "later")
            assert (count, check) == (11, "ok")
            await db.aclose()

    run(body())
