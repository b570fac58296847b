"""Scale to zero: open on demand, close when idle or least recently used, hold nothing closed."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import apsw
import pytest

from shoal.engine.connection import Connection, Statement
from shoal.engine.database import Database
from shoal.engine.engine import Engine
from shoal.engine.lifecycle import Lifecycle
from shoal.errors import ShoalError
from tests.support.engine import make_settings, run

T = TypeVar("T")


@asynccontextmanager
async def lifecycle(tmp_path: Path, names: set[str], **overrides: Any) -> AsyncIterator[Lifecycle]:
    executor = ThreadPoolExecutor(4)
    life = Lifecycle(tmp_path / "dbs", make_settings(tmp_path, **overrides), executor, names)
    try:
        yield life
    finally:
        await life.close_all(1.0)
        executor.shutdown(wait=True)


async def touch(life: Lifecycle, name: str) -> Database:
    """One small request: a write then a read, as the engine would run them."""
    async with life.use(name) as db:
        await db.write([Statement("CREATE TABLE IF NOT EXISTS t(x)"),
                        Statement("INSERT INTO t VALUES (1)")])
        await db.read([Statement("SELECT count(*) FROM t")])
        return db


def open_fds_to(path: Path) -> list[str]:
    """File descriptors of this process pointing at path or its -wal / -shm files."""
    targets = {str(path), f"{path}-wal", f"{path}-shm"}
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") in targets:
                found.append(fd)
        except OSError:
            continue
    return found


def assert_released(db: Database) -> None:
    assert db.closed
    assert db.writer is None
    assert db.readers == []
    assert db._task is not None and (db._task.cancelling() or db._task.done())
    assert open_fds_to(Path(db.path)) == []


# -- open on demand --------------------------------------------------------------------------


def test_opens_on_first_request_only_for_known_databases(tmp_path: Path) -> None:
    async def body() -> None:
        async with lifecycle(tmp_path, {"orders"}) as life:
            assert not life.is_open("orders")
            assert not life.path("orders").exists()
            db = await touch(life, "orders")
            assert life.is_open("orders")
            assert life.path("orders") == tmp_path / "dbs" / "orders" / "main.db"
            assert life.path("orders").exists()
            assert db.active == 0
            assert await touch(life, "orders") is db  # the same open database is reused
            with pytest.raises(ShoalError) as info:
                await life.acquire("billing")
            assert info.value.code == "DATABASE_NOT_FOUND"
            assert not life.is_open("billing")

    run(body())


def test_a_request_holds_its_database_open(tmp_path: Path) -> None:
    async def body() -> None:
        async with lifecycle(tmp_path, {"orders"}) as life:
            async with life.use("orders") as db:
                assert db.active == 1
                assert not db.idle
            assert db.active == 0
            assert db.idle

    run(body())


# -- idle timeout ----------------------------------------------------------------------------


def test_closes_after_idle_timeout_and_releases_everything(tmp_path: Path) -> None:
    async def body() -> None:
        async with lifecycle(tmp_path, {"orders"}, idle_timeout=30) as life:
            db = await touch(life, "orders")
            reader_conns = list(db.readers)
            assert reader_conns and db.writer is not None
            assert open_fds_to(Path(db.path))
            life.close_idle()
            assert life.is_open("orders")  # used just now: stays open
            db.last_used = time.monotonic() - 31
            life.close_idle()
            assert not life.is_open("orders")
            await asyncio.sleep(0)  # let the cancelled writer task finish
            assert_released(db)
            assert db._task is not None and db._task.done()
            for conn in reader_conns:
                with pytest.raises(apsw.ConnectionClosedError):
                    conn.raw.execute("SELECT 1")
            # nothing holds the files: they can be deleted, and the database reopens empty
            for suffix in ("", "-wal", "-shm"):
                Path(db.path + suffix).unlink(missing_ok=True)
            assert not Path(db.path).exists()
            again = await touch(life, "orders")
            assert again is not db
            counters, _ = await again.read([Statement("SELECT count(*) FROM t")])
            assert counters.results[0].rows == [[1]]

    run(body())


def test_the_engine_sweeper_closes_idle_databases(tmp_path: Path) -> None:
    async def body() -> None:
        engine = Engine(make_settings(tmp_path, idle_timeout=0.3))
        await engine.start()
        try:
            admin = engine.auth.admin
            await engine.create_database(admin, "orders", None, lambda rec: (201, b""))
            out = await engine.query(admin, "orders", [Statement("CREATE TABLE t(x)")],
                                     None, lambda done: (200, b""))
            assert out.txid == 1
            assert engine.lifecycle.is_open("orders")
            db = engine.lifecycle.open[("orders", "main")]
            deadline = time.monotonic() + 5
            while engine.lifecycle.is_open("orders"):
                assert time.monotonic() < deadline, "idle database was not closed"
                await asyncio.sleep(0.05)
            assert_released(db)
            info = await engine.database_info(admin, "orders")
            assert (info.open, info.txid) == (False, 1)
            # the next request opens it again, transparently
            out = await engine.query(admin, "orders", [Statement("SELECT count(*) FROM t")],
                                     None, lambda done: (200, b""))
            assert out.results[0].rows == [[0]]
            assert engine.lifecycle.is_open("orders")
        finally:
            await engine.stop()

    run(body())


# -- LRU eviction ----------------------------------------------------------------------------


def test_least_recently_used_close_first_past_max_open(tmp_path: Path) -> None:
    async def body() -> None:
        names = {"a", "b", "c", "d", "e"}
        async with lifecycle(tmp_path, names, max_open=3) as life:
            dbs = {n: await touch(life, n) for n in ("a", "b", "c")}
            await touch(life, "a")  # a is now the most recently used
            dbs["d"] = await touch(life, "d")
            assert sorted(k[0] for k in life.open) == ["a", "c", "d"]
            await asyncio.sleep(0)
            assert_released(dbs["b"])
            dbs["e"] = await touch(life, "e")
            assert sorted(k[0] for k in life.open) == ["a", "d", "e"]
            await asyncio.sleep(0)
            assert_released(dbs["c"])
            assert len(life.open) == 3

    run(body())


def test_many_databases_with_a_small_max_open(tmp_path: Path) -> None:
    async def body() -> None:
        names = {f"db{i}" for i in range(30)}
        async with lifecycle(tmp_path, names, max_open=4) as life:
            for round_ in range(2):
                for i in range(30):
                    async with life.use(f"db{i}") as db:
                        await db.write([Statement("CREATE TABLE IF NOT EXISTS t(x)"),
                                        Statement("INSERT INTO t VALUES (1)")])
                        counters, _ = await db.read([Statement("SELECT count(*) FROM t")])
                        assert counters.results[0].rows == [[round_ + 1]]
                    assert len(life.open) <= 4
            closed = [n for n in names if not life.is_open(n)]
            assert len(closed) == 26
            for n in closed:
                assert open_fds_to(life.path(n)) == []

    run(body())


# -- busy databases are not closed ------------------------------------------------------------


def test_a_busy_database_is_not_closed(tmp_path: Path) -> None:
    async def body() -> None:
        async with lifecycle(tmp_path, {"a", "b", "c"}, idle_timeout=30, max_open=1) as life:
            async with life.use("a") as a:
                a.last_used = time.monotonic() - 60
                life.close_idle()
                life.evict()
                assert life.is_open("a") and not a.closed
            # an open interactive transaction keeps it open too
            tx = await a.begin("tx_1", "tok", write=True)
            a.last_used = time.monotonic() - 60
            life.close_idle()
            assert life.is_open("a") and not a.closed
            await a.end(tx, commit=False)
            life.close_idle()
            assert not life.is_open("a")
            await asyncio.sleep(0)
            assert_released(a)

    run(body())


def test_a_new_database_is_usable_when_every_open_one_is_busy(tmp_path: Path) -> None:
    async def body() -> None:
        async with lifecycle(tmp_path, {"a", "b"}, max_open=1) as life:
            async with life.use("a") as a:
                # a is busy, so it cannot make room; b must still be served, not closed
                async with life.use("b") as b:
                    assert not b.closed
                    done = await asyncio.wait_for(
                        b.write([Statement("CREATE TABLE t(x)")]), 5)
                    assert done.txid == 1
                assert not a.closed
            life.evict()  # once idle, the excess closes
            assert len(life.open) == 1

    run(body())


def test_a_database_closed_by_lru_reads_from_disk_when_reopened(tmp_path: Path) -> None:
    async def body() -> None:
        async with lifecycle(tmp_path, {"a", "b"}, max_open=1) as life:
            first = await touch(life, "a")
            await touch(life, "b")
            assert first.closed
            again = await touch(life, "a")
            counters, txid = await again.read([Statement("SELECT count(*) FROM t")])
            assert counters.results[0].rows == [[2]]
            assert txid == 2

    run(body())


def test_closed_connection_objects_refuse_work(tmp_path: Path) -> None:
    conn = Connection(str(tmp_path / "x.db"), reader=False)
    conn.close()
    with pytest.raises(apsw.ConnectionClosedError):
        conn.raw.execute("SELECT 1")
    assert open_fds_to(tmp_path / "x.db") == []


def test_a_local_only_engine_has_main_and_no_history(tmp_path: Path) -> None:
    """store = "none": no object store, auto-checkpoint on; other branches are refused."""
    async def main() -> None:
        engine = Engine(make_settings(tmp_path, store="none"))
        engine.open()
        assert engine.store is None
        engine.names.add("solo")
        try:
            db = await touch(engine.lifecycle, "solo")
            assert db.journal is None
            assert db.writer is not None
            # SQLite checkpoints by itself
            assert db.writer.internal("PRAGMA wal_autocheckpoint")[0][0] > 0
            with pytest.raises(ShoalError) as found:
                await engine.lifecycle.acquire("solo", "dev")
            assert found.value.code == "HISTORY_DISABLED"
            with pytest.raises(ShoalError) as found:
                engine.registry  # noqa: B018 - the property raises
            assert found.value.code == "HISTORY_DISABLED"
        finally:
            await engine.stop()
    run(main())


def test_unused_readers_are_trimmed_while_the_writer_stays(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with lifecycle(tmp_path, {"a"}, reader_idle_timeout=0.05, idle_timeout=60) as life:
            db = await touch(life, "a")
            reader = db.readers[0]
            life.close_idle()  # just used: kept
            assert db.readers == [reader]
            deadline = time.monotonic() + 5
            while db.readers and time.monotonic() < deadline:
                await asyncio.sleep(0.06)
                life.close_idle()
            assert db.readers == [] and db.writer is not None
            assert ("a", "main") in life.open
            with pytest.raises(apsw.ConnectionClosedError):
                reader.raw.execute("SELECT 1")
            # The next read opens a reader again.
            async with life.use("a") as again:
                counters, _ = await again.read([Statement("SELECT count(*) FROM t")])
            assert counters.results[0].rows == [[1]]

    run(scenario())


def cached_bytes(conn: Connection) -> int:
    """What SQLite counts in a connection's page cache (its pages, not the spare room)."""
    return int(conn.raw.status(apsw.SQLITE_DBSTATUS_CACHE_USED)[0])


def test_page_caches_of_a_quiet_database_are_given_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with lifecycle(tmp_path, {"a"}, cache_idle_timeout=30, reader_idle_timeout=60,
                             idle_timeout=60) as life:
            db = await touch(life, "a")
            assert db.writer is not None and len(db.readers) == 1
            conns = [db.writer, *db.readers]
            warm = [cached_bytes(c) for c in conns]
            life.close_idle()  # just used: kept
            assert [cached_bytes(c) for c in conns] == warm
            async with life.use("a"):  # a request in flight: left alone, however old
                db.last_used = time.monotonic() - 31
                life.close_idle()
                assert [cached_bytes(c) for c in conns] == warm
            db.last_used = time.monotonic() - 31
            heap = apsw.memory_used()
            assert life.close_idle() == len(conns)
            assert all(cached_bytes(c) < w for c, w in zip(conns, warm, strict=True))
            # each connection's spare room for 20 pages went too, not only its pages
            assert heap - apsw.memory_used() > 32 * 1024 * len(conns)
            # once per quiet spell: nothing more until the database is used again
            assert life.close_idle() == 0
            # the same connections serve the next requests, reading the file again
            async with life.use("a") as again:
                counters, _ = await again.read([Statement("SELECT count(*) FROM t")])
                await again.write([Statement("INSERT INTO t VALUES (2)")])
            assert counters.results[0].rows == [[1]]
            assert again is db and db.readers == conns[1:] and db.writer is conns[0]
            db.last_used = time.monotonic() - 31
            assert life.close_idle() == len(conns)

    run(scenario())


def test_release_memory_hands_freed_heap_back() -> None:
    """After connections close, glibc keeps their memory unless asked to give it back."""
    from shoal.engine.lifecycle import release_memory

    def rss_kb() -> int:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))

    blocks = [bytearray(64 * 1024 - 64) for _ in range(2000)]  # below the mmap threshold
    grown = rss_kb()
    del blocks[:-1]  # keep the top one, so the heap cannot shrink by itself
    release_memory()
    assert rss_kb() < grown - 50_000  # most of the ~128 MB is back with the OS


def test_an_engine_is_built_without_touching_disk_or_store(tmp_path: Path) -> None:
    """Construction sets fields; open() takes the data directory and the store's lease."""
    data = tmp_path / "never-made"
    engine = Engine(make_settings(data))
    assert not data.exists() and engine.lease is None and engine.store is None
    run(engine.stop())  # stopping a node never opened does nothing
    engine.open()
    assert (data / "data" / "catalog.db").exists() and engine.lease is not None
    engine.open()  # once
    run(engine.stop())
