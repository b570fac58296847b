"""engine/tables.py: Shoal's tables under _cf_SHOAL_* names, which schema tools leave out,
and files of the two older layouts (``_shoal_state``, ``sqlite_shoal_state``) read as they
are and moved by their first write.

A store-backed database created by an older release is made here by building its txid-0
snapshot with the old tables; its log then holds the move as a commit of its own, so every
point of its history restores, before and after the move.
"""

from __future__ import annotations

import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import apsw
import pytest

from shoal import settings as settings_mod
from shoal.engine import tables
from shoal.engine.connection import Connection, Statement
from shoal.engine.database import Database, IdempotencyRecord
from shoal.engine.journal import Stores
from shoal.engine.registry import Registry
from shoal.log.restore import restore
from tests.support.engine import DB, registry, run
from tests.support.tables import legacy_tables, reserved_tables

# What Prisma's introspection lists (it leaves out SQLite's tables by name, and _cf_ + capitals)
USER_TABLES = ("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN "
               "('sqlite_sequence', 'sqlite_stat1', 'sqlite_stat4') "
               "AND NOT (name GLOB '_cf_[A-Z]*')")
CURRENT = ["_cf_SHOAL_idempotency", "_cf_SHOAL_state"]
# An older layout: how to make it, its names
OLD = {"legacy": (legacy_tables, tables.LEGACY, ["_shoal_idempotency", "_shoal_state"]),
       "reserved": (reserved_tables, tables.RESERVED,
                    ["sqlite_shoal_idempotency", "sqlite_shoal_state"])}


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
        for layout in tables.LAYOUTS:
            try:
                return int(con.execute(f"SELECT txid FROM {layout.state}").fetchone()[0])
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
    assert conn.internal("SELECT txid FROM _cf_SHOAL_state") == [(0,)]
    tables.create(conn)  # again: nothing changes
    assert conn.internal("SELECT count(*) FROM _cf_SHOAL_state") == [(1,)]
    conn.close()


@pytest.mark.parametrize("old", OLD)
def test_each_layout_is_known_by_its_names(tmp_path: Path, old: str) -> None:
    make, layout, _ = OLD[old]
    conn = Connection(str(tmp_path / "a.db"), reader=False)
    assert tables.layout_of(conn) is None
    make(conn)
    assert tables.layout_of(conn) is layout
    conn.close()


@pytest.mark.parametrize("old", OLD)
def test_the_move_gives_the_same_tables_as_a_new_file_under_the_new_names(
        tmp_path: Path, old: str) -> None:
    make, layout, _ = OLD[old]
    fresh = Connection(str(tmp_path / "new.db"), reader=False)
    tables.create(fresh)
    conn = Connection(str(tmp_path / "old.db"), reader=False)
    make(conn)
    conn.internal(f"UPDATE {layout.state} SET txid = 7")
    conn.internal(f"INSERT INTO {layout.idempotency} VALUES ('s', 'k', x'01', 200, x'02', 1.5)")
    conn.internal("CREATE TABLE t(a)")
    conn.internal("CREATE TABLE gone(a); CREATE VIEW v AS SELECT a FROM gone; DROP TABLE gone")
    conn.internal("BEGIN IMMEDIATE")
    tables.migrate(conn, layout)  # (ALTER TABLE RENAME would fail on the broken view)
    conn.internal("COMMIT")
    listing = "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE name LIKE '%shoal%'"
    assert sorted(conn.internal(listing)) == sorted(fresh.internal(listing))
    assert conn.internal("PRAGMA writable_schema") == [(0,)]
    assert tables.layout_of(conn) is tables.CURRENT
    assert conn.internal(tables.CURRENT.get_txid) == [(7,)]
    assert conn.internal(tables.CURRENT.get_idem, ("s", "k")) == [(b"\x01", 200, b"\x02", 1.5)]
    other = Connection(str(tmp_path / "old.db"), reader=True)  # another connection sees it
    assert other.internal(tables.CURRENT.get_txid) == [(7,)]
    for c in (conn, other):
        assert c.internal("PRAGMA integrity_check") == [("ok",)]
    for c in (other, conn, fresh):
        c.close()
    assert names(tmp_path / "old.db") == [*CURRENT, "t", "v"]


def test_the_move_refuses_when_a_new_name_is_taken(tmp_path: Path) -> None:
    conn = Connection(str(tmp_path / "a.db"), reader=False)
    legacy_tables(conn)
    conn.internal("CREATE TABLE _CF_shoal_IDEMPOTENCY(a)")  # in the way (names ignore case)
    conn.internal("BEGIN IMMEDIATE")
    with pytest.raises(Exception, match="exists"):
        tables.migrate(conn, tables.LEGACY)
    conn.internal("ROLLBACK")
    assert conn.internal("PRAGMA writable_schema") == [(0,)]
    assert tables.layout_of(conn) is tables.LEGACY
    assert conn.internal("PRAGMA integrity_check") == [("ok",)]
    conn.close()


def _opened(tmp_path: Path, old: str | None) -> Database:
    path = tmp_path / "main.db"
    if old:
        make, layout, _ = OLD[old]
        conn = Connection(str(path), reader=False)
        make(conn)
        conn.internal(f"UPDATE {layout.state} SET txid = 41")
        conn.internal("CREATE TABLE t(v TEXT)")
        conn.internal(f"INSERT INTO {layout.idempotency} VALUES ('sub', 'key-1', x'01', 200, "
                      "x'7b7d', 1e12)")  # far in the future: not purged
        conn.close()
    settings = settings_mod.Settings(data=str(tmp_path / "data"))
    return Database(DB, "main", str(path), settings, ThreadPoolExecutor(4))


@pytest.mark.parametrize("old", OLD)
def test_an_old_local_file_is_read_then_moved_by_its_first_write(tmp_path: Path,
                                                                  old: str) -> None:
    _, layout, old_names = OLD[old]
    async def body() -> None:
        db = _opened(tmp_path, old)
        await db.open()
        assert db.txid == 41 and db.layout is layout
        assert await db.find_idempotent("sub", "key-1") == (b"\x01", 200, b"{}")
        tx = await db.begin("tx_r", "test", write=False)
        assert tx.start_txid == 41
        await db.end(tx, commit=False)
        assert schema(db) == sorted([*old_names, "t"])
        done = await db.write([Statement("INSERT INTO t VALUES ('x')")])
        assert done.txid == 43  # 42: the move, a commit of its own
        assert db.layout is tables.CURRENT
        assert schema(db) == [*CURRENT, "t"]
        assert await db.find_idempotent("sub", "key-1") == (b"\x01", 200, b"{}")
        idem = IdempotencyRecord("sub", "key-2", b"\x02", lambda done: (201, b"[]"))
        await db.write([Statement("INSERT INTO t VALUES ('y')")], idem)
        assert await db.find_idempotent("sub", "key-2") == (b"\x02", 201, b"[]")
        db.close()
        assert txid_of(tmp_path / "main.db") == 44
        assert names(tmp_path / "main.db") == [*CURRENT, "t"]

    run(body())


@pytest.mark.parametrize("old", OLD)
def test_an_interactive_write_transaction_moves_them_first(tmp_path: Path, old: str) -> None:
    async def body() -> None:
        db = _opened(tmp_path, old)
        await db.open()
        tx = await db.begin("tx_w", "test", write=True)
        assert tx.start_txid == 42 and db.layout is tables.CURRENT
        await db.tx_query(tx, [Statement("INSERT INTO t VALUES ('z')")])
        done = await db.end(tx, commit=True)
        assert done is not None and done.txid == 43
        db.close()

    run(body())


@pytest.mark.parametrize("old", OLD)
def test_a_failed_write_still_moves_them_and_a_new_file_never_needs_to(tmp_path: Path,
                                                                       old: str) -> None:
    async def body() -> None:
        db = _opened(tmp_path, old)
        await db.open()
        with pytest.raises(Exception):  # noqa: B017 - any SQL error
            await db.write([Statement("INSERT INTO nowhere VALUES (1)")])
        assert db.layout is tables.CURRENT and db.txid == 42
        db.close()
        fresh = _opened(tmp_path / "new", None)
        (tmp_path / "new").mkdir()
        await fresh.open()
        assert fresh.layout is tables.CURRENT and fresh.txid == 0
        fresh.close()

    run(body())


@pytest.mark.parametrize("old", OLD)
def test_the_move_is_a_commit_of_the_log_and_history_restores_on_both_sides(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str) -> None:
    make, layout, old_names = OLD[old]
    monkeypatch.setattr(tables, "create", make)  # a database made by an older node
    async def body() -> None:
        async with registry(tmp_path, durability="remote") as (reg, store):
            monkeypatch.undo()
            path = tmp_path / "data" / "dbs" / DB / "main.db"
            path.parent.mkdir(parents=True)
            db = await reg.open(DB, "main", path)
            assert db.layout is layout and db.txid == 0
            done = await db.write([Statement("CREATE TABLE t(v TEXT)"),
                                   Statement("INSERT INTO t VALUES ('after')")])
            assert done.txid == 2 and db.layout is tables.CURRENT
            assert db.journal is not None
            timeline = db.journal.timeline
            await db.aclose()
        for txid, expect in ((0, old_names), (1, CURRENT), (2, [*CURRENT, "t"])):
            out = tmp_path / f"at{txid}.db"
            restore(store, DB, timeline, out, txid=txid)
            assert names(out) == expect and txid_of(out) == txid


@pytest.mark.parametrize("old", OLD)
def test_a_node_killed_after_the_move_recovers_it_from_its_wal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str) -> None:
    """kill -9 right after the move's commit and the write after it, neither shipped yet
    (local durability): the files as the killed process left them (the WAL holds both
    commits) open on another registry on the same store, which numbers the WAL's commits
    from the file's txid, ships them and restores at each txid."""
    make, _, old_names = OLD[old]
    monkeypatch.setattr(tables, "create", make)
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
        for txid, expect in ((0, old_names), (1, CURRENT), (2, [*CURRENT, "t"])):
            out = tmp_path / f"at{txid}.db"
            restore(store, DB, timeline, out, txid=txid)
            assert names(out) == expect and txid_of(out) == txid

    run(body())


@pytest.mark.parametrize("old", OLD)
def test_a_read_falls_back_to_the_layout_the_snapshot_holds(tmp_path: Path, old: str) -> None:
    """A reader told of the current layout whose snapshot is older (or the reverse) runs the
    read under the names its snapshot has."""
    make, layout, _ = OLD[old]
    conn = Connection(str(tmp_path / "a.db"), reader=False)
    make(conn)
    conn.internal(f"UPDATE {layout.state} SET txid = 9")
    ran: list[str] = []

    def run_sql(sql: str, args: object) -> list[object]:
        ran.append(sql)
        return conn.internal(sql, args)

    assert tables.read(run_sql, tables.CURRENT, lambda t: t.get_txid) == [(9,)]
    assert ran[0] == tables.CURRENT.get_txid and ran[-1] == layout.get_txid
    conn.close()


def test_a_read_raises_what_is_not_a_missing_table(tmp_path: Path) -> None:
    conn = Connection(str(tmp_path / "a.db"), reader=False)
    tables.create(conn)
    with pytest.raises(apsw.SQLError, match="no such column"):
        tables.read(lambda sql, args: conn.internal(sql, args), tables.CURRENT,
                    lambda t: f"SELECT no_column FROM {t.state}")
    with pytest.raises(apsw.SQLError, match="no such table"):  # nor under any layout
        tables.read(lambda sql, args: conn.internal(sql, args), tables.CURRENT,
                    lambda t: f"SELECT txid FROM {t.state}_gone")
    conn.close()
