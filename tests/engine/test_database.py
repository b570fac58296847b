"""Database: group commit, per-job rollback, txids, readers, routing and transactions.

Each test runs a real Database (apsw files in a tmp dir) in its own asyncio loop.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import TypeVar

import apsw
import pytest

from shoal.engine.connection import Connection, NeedsWriter, Statement
from shoal.engine.database import Committed, Database, IdempotencyRecord, parse_bookmark
from shoal.errors import ShoalError
from shoal.metrics import METRICS
from tests.support.engine import opened, run, stmts, until

T = TypeVar("T")


def insert(i: int) -> list[Statement]:
    return stmts(("INSERT INTO t(id, v) VALUES (?, ?)", (i, f"v{i}")))


async def ids(db: Database) -> list[int]:
    counters, _ = await db.read(stmts("SELECT id FROM t ORDER BY id"))
    return [row[0] for row in counters.results[0].rows]


def stored_txid(path: str) -> int:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return int(next(iter(conn.execute("SELECT txid FROM _cf_SHOAL_state")))[0])
    finally:
        conn.close()


def batch_stats() -> tuple[float, float]:
    """(number of batches, sum of batch sizes) observed so far in this process."""
    count = total = 0.0
    for metric in METRICS.batch_size.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    return count, total


# -- group commit ---------------------------------------------------------------------------


def test_concurrent_writers_share_one_commit(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as db:
            before = db.txid
            batches_before, sizes_before = batch_stats()
            done = await asyncio.gather(*(db.write(insert(i)) for i in range(20)))
            txids = [d.txid for d in done]
            # all 20 were queued before the writer woke: one transaction, one commit
            assert set(txids) == {before + 1}
            assert db.txid == before + 1
            assert {d.bookmark for d in done} == {db.bookmark(before + 1)}
            batches_after, sizes_after = batch_stats()
            assert (batches_after - batches_before, sizes_after - sizes_before) == (1, 20)
            assert await ids(db) == list(range(20))
            assert stored_txid(db.path) == before + 1

    run(body())


def test_writes_queued_behind_a_running_commit_form_the_next_batch(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as db:
            start = db.txid
            await db.write_lock.acquire()  # as if a commit were running
            tasks = [asyncio.ensure_future(db.write(insert(i))) for i in range(10)]
            await until(lambda: len(db.queue) == 10)
            db.write_lock.release()
            done = await asyncio.gather(*tasks)
            assert {d.txid for d in done} == {start + 1}
            # and a steady stream of writers gives batches larger than one
            results: list[Committed] = []

            async def writer(k: int) -> None:
                for j in range(10):
                    results.append(await db.write(insert(1000 + k * 100 + j)))

            await asyncio.gather(*(writer(k) for k in range(8)))
            commits = {d.txid for d in results}
            assert len(commits) < len(results)
            assert sorted(commits) == list(range(start + 2, start + 2 + len(commits)))
            assert len(await ids(db)) == 90

    run(body())


def test_a_failing_job_rolls_back_alone(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as db:
            await db.write(insert(1))
            start = db.txid
            await db.write_lock.acquire()
            jobs = [
                db.write(insert(10)),
                # applies its first statement, then fails: neither may remain
                db.write(stmts(("INSERT INTO t(id, v) VALUES (?, ?)", (20, "x")),
                               ("INSERT INTO t(id, v) VALUES (?, ?)", (1, "duplicate")))),
                db.write(insert(30)),
                db.write(stmts("INSERT INTO missing VALUES (1)")),
                db.write(insert(40)),
            ]
            tasks = [asyncio.ensure_future(j) for j in jobs]
            await until(lambda: len(db.queue) == 5)
            db.write_lock.release()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            ok = [o for o in outcomes if isinstance(o, Committed)]
            assert [o.txid for o in ok] == [start + 1] * 3
            dup, missing = outcomes[1], outcomes[3]
            assert isinstance(dup, ShoalError)
            assert dup.code == "SQLITE_CONSTRAINT"
            assert dup.extra["extended_code"] == "SQLITE_CONSTRAINT_PRIMARYKEY"
            assert dup.extra["statement"] == 1
            assert isinstance(missing, ShoalError)
            assert missing.code == "SQLITE_ERROR"
            assert await ids(db) == [1, 10, 30, 40]
            assert db.txid == start + 1

    run(body())


def test_a_batch_where_every_job_fails_commits_nothing(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as db:
            await db.write(insert(1))
            start = db.txid
            outcomes = await asyncio.gather(db.write(insert(1)), db.write(insert(1)),
                                            return_exceptions=True)
            assert all(isinstance(o, ShoalError) for o in outcomes)
            assert db.txid == start
            assert stored_txid(db.path) == start
            # the next commit takes the next txid: no gap
            assert (await db.write(insert(2))).txid == start + 1

    run(body())


def test_a_timed_out_write_fails_alone_even_though_sqlite_drops_the_transaction(
        tmp_path: Path) -> None:
    slow = ("INSERT INTO t(v) SELECT 'x' FROM (WITH RECURSIVE n(i) AS "
            "(SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n)")

    async def body() -> None:
        async with opened(tmp_path, statement_timeout=0.2) as db:
            start = db.txid
            await db.write_lock.acquire()
            tasks = [asyncio.ensure_future(db.write(insert(1))),
                     asyncio.ensure_future(db.write(stmts(slow))),
                     asyncio.ensure_future(db.write(insert(2)))]
            await until(lambda: len(db.queue) == 3)
            db.write_lock.release()
            first, middle, last = await asyncio.gather(*tasks, return_exceptions=True)
            assert isinstance(middle, ShoalError)
            assert middle.code == "STATEMENT_TIMEOUT"
            assert isinstance(first, Committed) and isinstance(last, Committed)
            assert first.txid == last.txid == start + 1
            assert await ids(db) == [1, 2]

    run(body())


def test_txids_are_contiguous_and_stored(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as db:
            start = db.txid
            seen = [(await db.write(insert(i))).txid for i in range(5)]
            assert seen == list(range(start + 1, start + 6))
            assert stored_txid(db.path) == start + 5
            database, branch, txid = parse_bookmark(db.bookmark(seen[-1]))
            assert (database, branch, txid) == ("orders", "main", start + 5)
        # reopening continues from the stored txid
        async with opened(tmp_path) as again:
            assert again.txid == start + 6  # +1 for the fixture's CREATE TABLE IF NOT EXISTS
            assert (await again.write(insert(99))).txid == start + 7

    run(body())


# -- reads ----------------------------------------------------------------------------------


def test_readers_see_committed_data(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as db:
            done = await db.write(insert(7))
            counters, txid = await db.read(stmts(("SELECT v FROM t WHERE id = ?", (7,))))
            assert counters.results[0].rows == [["v7"]]
            assert txid >= done.txid
            # several statements read one snapshot
            counters, _ = await db.read(stmts("SELECT count(*) FROM t", "SELECT max(id) FROM t"))
            assert [r.rows for r in counters.results] == [[[1]], [[7]]]

    run(body())


def test_many_concurrent_reads(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path, readers=2) as db:
            await asyncio.gather(*(db.write(insert(i)) for i in range(50)))
            reads = await asyncio.gather(*(
                db.read(stmts(("SELECT v FROM t WHERE id = ?", (i,)))) for i in range(50)))
            assert [r[0].results[0].rows for r in reads] == [[[f"v{i}"]] for i in range(50)]
            assert len(db.readers) <= 2

    run(body())


@pytest.mark.parametrize(
    "statements",
    [
        ["INSERT INTO t(id, v) VALUES (5, 'five')"],
        ["SELECT 1", "INSERT INTO t(id, v) VALUES (5, 'five')"],
        ["CREATE TABLE other(a)"],
        ["PRAGMA user_version = 3"],
    ],
)
def test_writes_sent_to_a_reader_raise_needs_writer(tmp_path: Path,
                                                    statements: list[str]) -> None:
    async def body() -> None:
        async with opened(tmp_path) as db:
            with pytest.raises(NeedsWriter):
                await db.read(stmts(*statements))
            assert await ids(db) == []
            start = db.txid
            done = await db.write(stmts(*statements))  # the writer runs the same request
            assert done.txid == start + 1

    run(body())


def test_idempotency_record_is_committed_with_the_write(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as db:
            record = IdempotencyRecord("tok_1", "key-1", b"hash",
                                       lambda done: (200, f"txid={done.txid}".encode()))
            done = await db.write(insert(1), record)
            assert done.response == (200, f"txid={done.txid}".encode())
            assert await db.find_idempotent("tok_1", "key-1") == (
                b"hash", 200, f"txid={done.txid}".encode())
            assert await db.find_idempotent("tok_2", "key-1") is None
            # a failing write leaves no record behind
            failing = IdempotencyRecord("tok_1", "key-2", b"h2", lambda d: (200, b""))
            with pytest.raises(ShoalError):
                await db.write(insert(1), failing)
            assert await db.find_idempotent("tok_1", "key-2") is None

    run(body())


# -- interactive transactions ----------------------------------------------------------------


def test_a_write_transaction_blocks_writers_until_busy_timeout(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path, busy_timeout=0.3) as db:
            tx = await db.begin("tx_1", "tok", write=True)
            await db.tx_query(tx, insert(1))
            with pytest.raises(ShoalError) as info:
                await db.write(insert(2))
            assert info.value.code == "DATABASE_BUSY"
            assert info.value.status == 409
            # another write transaction waits as long, then gives up the same way
            with pytest.raises(ShoalError) as info:
                await db.begin("tx_2", "tok", write=True)
            assert info.value.code == "DATABASE_BUSY"
            # readers are not blocked, and do not see the uncommitted row
            assert await ids(db) == []
            start = db.txid
            done = await db.end(tx, commit=True)
            assert done is not None and done.txid == start + 1
            assert (await db.write(insert(2))).txid == start + 2
            assert await ids(db) == [1, 2]

    run(body())


def test_a_writer_queued_behind_a_short_transaction_gets_through(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path, busy_timeout=5) as db:
            start = db.txid
            tx = await db.begin("tx_1", "tok", write=True)
            await db.tx_query(tx, insert(1))
            queued = asyncio.ensure_future(db.write(insert(2)))
            await until(lambda: len(db.queue) == 1)
            assert not queued.done()
            await db.end(tx, commit=True)
            done = await queued
            assert done.txid == start + 2
            assert await ids(db) == [1, 2]

    run(body())


def test_rolled_back_transaction_leaves_nothing_and_frees_the_lock(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as db:
            start = db.txid
            tx = await db.begin("tx_1", "tok", write=True)
            await db.tx_query(tx, insert(1))
            assert await db.end(tx, commit=False) is None
            assert not db.write_lock.locked()
            assert db.txid == start
            assert await ids(db) == []
            assert (await db.write(insert(2))).txid == start + 1

    run(body())


def test_read_transactions_do_not_block_writers(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path, busy_timeout=0.3) as db:
            await db.write(insert(1))
            tx = await db.begin("tx_r", "tok", write=False)
            done = await db.write(insert(2))  # not DATABASE_BUSY
            assert done.txid == db.txid
            # the read transaction keeps the snapshot it started with
            seen = await db.tx_query(tx, stmts("SELECT id FROM t ORDER BY id"))
            assert seen.results[0].rows == [[1]]
            with pytest.raises(ShoalError) as info:
                await db.tx_query(tx, insert(3))
            assert info.value.code == "READ_ONLY"
            assert await db.end(tx, commit=True) is None
            assert await ids(db) == [1, 2]

    run(body())


def test_a_failing_statement_in_a_transaction_undoes_only_that_request(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as db:
            tx = await db.begin("tx_1", "tok", write=True)
            await db.tx_query(tx, insert(1))
            with pytest.raises(ShoalError) as info:
                await db.tx_query(tx, stmts(("INSERT INTO t(id) VALUES (?)", (2,)),
                                            ("INSERT INTO t(id) VALUES (?)", (1,))))
            assert info.value.code == "SQLITE_CONSTRAINT"
            await db.tx_query(tx, insert(3))
            await db.end(tx, commit=True)
            assert await ids(db) == [1, 3]

    run(body())


def test_close_fails_queued_writes_instead_of_leaving_them_hanging(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as db:
            tx = await db.begin("tx_1", "tok", write=True)
            pending = asyncio.ensure_future(db.write(insert(1)))
            await until(lambda: len(db.queue) == 1)
            await db.end(tx, commit=False)
            db.close()
            with pytest.raises(ShoalError) as info:
                await asyncio.wait_for(pending, 2)
            assert info.value.code == "DATABASE_NOT_FOUND"

    run(body())


def test_visible_covers_a_commit_a_reader_sees_before_its_txid_is_published(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read's bookmark is taken from ``visible`` after it: at least what it saw, even
    when the commit it saw is not yet published as ``txid`` (monotonic reads)."""

    async def body() -> None:
        async with opened(tmp_path) as db:
            before = db.txid
            assert db.visible == before
            entered, gate = threading.Event(), threading.Event()
            publish = Database._committed

            def slow(self: Database, conn: object, txid: int, *changes: object) -> None:
                entered.set()
                gate.wait(5)
                publish(self, conn, txid, *changes)  # type: ignore[arg-type]

            monkeypatch.setattr(Database, "_committed", slow)
            write = asyncio.ensure_future(db.write(insert(1)))
            assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)
            counters, txid = await db.read(stmts("SELECT count(*) FROM t"))
            assert counters.results[0].rows == [[1]]  # committed: a reader sees it
            assert txid == db.txid == before  # not yet published
            assert db.visible == before + 1  # but a bookmark taken now covers it
            gate.set()
            await write
            assert db.txid == db.visible == before + 1

    run(body())


def test_a_commit_that_fails_takes_visible_back(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        async with opened(tmp_path) as db:
            before = db.txid
            assert db.writer is not None
            writer = db.writer

            def failing(sql: str, *args: object, **kw: object) -> object:
                if sql.startswith("COMMIT"):
                    raise apsw.IOError("disk I/O error")
                return Connection.internal(writer, sql, *args, **kw)  # type: ignore[arg-type]

            monkeypatch.setattr(writer, "internal", failing)
            with pytest.raises(ShoalError):
                await db.write(insert(2))
            assert db.visible == db.txid == before

    run(body())
