"""engine/tables.py: Shoal's tables under sqlite_* names, where schema tools do not look, and
files of the old layout (``_shoal_state``) read as they are and moved by their first write.

A store-backed database created by an older release is made here by building its txid-0
snapshot with the old tables; its log then holds the move as a commit of its own, so every
point of its history restores, before and after the move.
"""

from __future__ import annotations

import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shoal import settings as settings_mod
from shoal.engine import tables
from shoal.engine.connection import Connection, Statement
from shoal.engine.database import Database, IdempotencyRecord
from shoal.engine.journal import Stores
from shoal.engine.registry import Registry
from shoal.log.restore import restore
from tests.support.engine import DB, registry, run
from tests.support.tables import legacy_tables

# What schema tools list (drizzle-kit, Prisma and SQLAlchemy all leave out sqlite_*)
USER_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"


def names(path: Path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master"))
    finally:
        con.close()


def schema(db: Database) -> list[str]:
    """The names in the file as its writer sees them (the WAL is the writer's alone)."""
    assert db.writer is not None
    return sorted(r[0] for r in db.writer.internal("SELECT name FROM sqlite_master"))


def txid_of(path: Path) -> int:
    con = sqlite3.connect(path)
    try:
        for table in ("sqlite_shoal_state", "_shoal_state"):
            try:
                return int(con.execute(f"SELECT txid FROM {table}").fetchone()[0])
            except sqlite3.OperationalError:
                continue
        raise AssertionError("no txid")
    finally:
        con.close()


def test_a_new_file_shows_schema_tools_only_the_users_tables(tmp_path: Path) -> None:
    conn = Connection(str(tmp_path / "a.db"), reader=False)
    tables.create(conn)
    conn.internal("CREATE TABLE t(a)")
    assert conn.internal(USER_TABLES) == [("t",)]
    assert tables.layout_of(conn) is tables.CURRENT
    assert conn.internal("SELECT txid FROM sqlite_shoal_state") == [(0,)]
    assert conn.internal("PRAGMA writable_schema") == [(0,)]  # on for the CREATEs only
    tables.create(conn)  # again: nothing changes
    assert conn.internal("SELECT count(*) FROM sqlite_shoal_state") == [(1,)]
    conn.close()


def test_a_file_without_tables_has_no_layout_and_an_old_one_the_legacy_layout(
        tmp_path: Path) -> None:
    conn = Connection(str(tmp_path / "a.db"), reader=False)
    assert tables.layout_of(conn) is None
    legacy_tables(conn)
    assert tables.layout_of(conn) is tables.LEGACY
    conn.close()


def test_a_failed_create_leaves_writable_schema_off(tmp_path: Path) -> None:
    conn = Connection(str(tmp_path / "a.db"), reader=False)
    conn.internal("PRAGMA writable_schema=ON")
    conn.internal("CREATE TABLE sqlite_shoal_state(a)")  # in the way, of another shape
    conn.internal("PRAGMA writable_schema=OFF")
    with pytest.raises(Exception, match="k"):
        tables.create(conn)  # its INSERT names a column the table in the way lacks
    assert conn.internal("PRAGMA writable_schema") == [(0,)]
    conn.close()


def _opened(tmp_path: Path, legacy: bool) -> Database:
    path = tmp_path / "main.db"
    if legacy:
        conn = Connection(str(path), reader=False)
        legacy_tables(conn)
        conn.internal("UPDATE _shoal_state SET txid = 41")
        conn.internal("CREATE TABLE t(v TEXT)")
        conn.internal("INSERT INTO _shoal_idempotency VALUES ('sub', 'key-1', x'01', 200, "
                      "x'7b7d', 1e12)")  # far in the future: not purged
        conn.close()
    settings = settings_mod.Settings(data=str(tmp_path / "data"))
    return Database(DB, "main", str(path), settings, ThreadPoolExecutor(4))


def test_an_old_local_file_is_read_then_moved_by_its_first_write(tmp_path: Path) -> None:
    async def body() -> None:
        db = _opened(tmp_path, legacy=True)
        await db.open()
        assert db.txid == 41 and db.layout is tables.LEGACY
        assert await db.find_idempotent("sub", "key-1") == (b"\x01", 200, b"{}")
        tx = await db.begin("tx_r", "test", write=False)
        assert tx.start_txid == 41
        await db.end(tx, commit=False)
        assert schema(db) == ["_shoal_idempotency", "_shoal_state", "t"]
        done = await db.write([Statement("INSERT INTO t VALUES ('x')")])
        assert done.txid == 43  # 42: the move, a commit of its own
        assert db.layout is tables.CURRENT
        assert schema(db) == ["sqlite_shoal_idempotency", "sqlite_shoal_state", "t"]
        assert await db.find_idempotent("sub", "key-1") == (b"\x01", 200, b"{}")
        idem = IdempotencyRecord("sub", "key-2", b"\x02", lambda done: (201, b"[]"))
        await db.write([Statement("INSERT INTO t VALUES ('y')")], idem)
        assert await db.find_idempotent("sub", "key-2") == (b"\x02", 201, b"[]")
        db.close()
        assert txid_of(tmp_path / "main.db") == 44
        assert names(tmp_path / "main.db") == ["sqlite_shoal_idempotency",
                                               "sqlite_shoal_state", "t"]

    run(body())


def test_an_interactive_write_transaction_moves_them_first(tmp_path: Path) -> None:
    async def body() -> None:
        db = _opened(tmp_path, legacy=True)
        await db.open()
        tx = await db.begin("tx_w", "test", write=True)
        assert tx.start_txid == 42 and db.layout is tables.CURRENT
        await db.tx_query(tx, [Statement("INSERT INTO t VALUES ('z')")])
        done = await db.end(tx, commit=True)
        assert done is not None and done.txid == 43
        db.close()

    run(body())


def test_a_failed_write_still_moves_them_and_a_new_file_never_needs_to(tmp_path: Path) -> None:
    async def body() -> None:
        db = _opened(tmp_path, legacy=True)
        await db.open()
        with pytest.raises(Exception):  # noqa: B017 - any SQL error
            await db.write([Statement("INSERT INTO nowhere VALUES (1)")])
        assert db.layout is tables.CURRENT and db.txid == 42
        db.close()
        fresh = _opened(tmp_path / "new", legacy=False)
        (tmp_path / "new").mkdir()
        await fresh.open()
        assert fresh.layout is tables.CURRENT and fresh.txid == 0
        fresh.close()

    run(body())


def test_the_move_is_a_commit_of_the_log_and_history_restores_on_both_sides(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables, "create", legacy_tables)  # a database made by an older node
    async def body() -> None:
        async with registry(tmp_path, durability="remote") as (reg, store):
            monkeypatch.undo()
            path = tmp_path / "data" / "dbs" / DB / "main.db"
            path.parent.mkdir(parents=True)
            db = await reg.open(DB, "main", path)
            assert db.layout is tables.LEGACY and db.txid == 0
            done = await db.write([Statement("CREATE TABLE t(v TEXT)"),
                                   Statement("INSERT INTO t VALUES ('after')")])
            assert done.txid == 2 and db.layout is tables.CURRENT
            assert db.journal is not None
            timeline = db.journal.timeline
            await db.aclose()
        for txid, expect in ((0, ["_shoal_idempotency", "_shoal_state"]),
                             (1, ["sqlite_shoal_idempotency", "sqlite_shoal_state"]),
                             (2, ["sqlite_shoal_idempotency", "sqlite_shoal_state", "t"])):
            out = tmp_path / f"at{txid}.db"
            restore(store, DB, timeline, out, txid=txid)
            assert names(out) == expect and txid_of(out) == txid


def test_a_node_killed_after_the_move_recovers_it_from_its_wal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 right after the move's commit and the write after it, neither shipped yet
    (local durability): the files as the killed process left them (the WAL holds both
    commits) open on another registry on the same store, which numbers the WAL's commits
    from the file's txid, ships them and restores at each txid."""
    monkeypatch.setattr(tables, "create", legacy_tables)
    async def body() -> None:
        async with registry(tmp_path, sync_interval=60.0) as (reg, store):
            monkeypatch.undo()
            path = tmp_path / "data" / "dbs" / DB / "main.db"
            path.parent.mkdir(parents=True)
            db = await reg.open(DB, "main", path)
            done = await db.write([Statement("CREATE TABLE t(v TEXT)"),
                                   Statement("INSERT INTO t VALUES ('after')")])
            assert done.txid == 2
            assert db.journal is not None and db.journal.shipper is not None
            assert db.journal.shipper.durable_txid == 0  # acknowledged, not shipped
            timeline = db.journal.timeline
            copy = tmp_path / "node2" / "dbs" / DB / "main.db"  # what kill -9 leaves
            copy.parent.mkdir(parents=True)
            for f in path.parent.iterdir():
                if f.name.startswith("main.") and not f.name.endswith("-shm"):
                    shutil.copyfile(f, copy.parent / f.name)
            settings = settings_mod.Settings(data=str(tmp_path / "node2"), sync_interval=0.01)
            sql, io = ThreadPoolExecutor(4), ThreadPoolExecutor(4)
            try:
                reg2 = Registry(Stores(store, store, io), settings, sql, tmp_path / "scratch2")
                db2 = await reg2.open(DB, "main", copy)
                assert db2.txid == 2 and db2.layout is tables.CURRENT
                assert db2.journal is not None
                await db2.journal.durable(2)
                await db2.aclose()
            finally:
                sql.shutdown(wait=True)
                io.shutdown(wait=True)
        for txid, expect in ((0, ["_shoal_idempotency", "_shoal_state"]),
                             (1, ["sqlite_shoal_idempotency", "sqlite_shoal_state"]),
                             (2, ["sqlite_shoal_idempotency", "sqlite_shoal_state", "t"])):
            out = tmp_path / f"at{txid}.db"
            restore(store, DB, timeline, out, txid=txid)
            assert names(out) == expect and txid_of(out) == txid

    run(body())
