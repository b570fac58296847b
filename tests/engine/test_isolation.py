"""Isolation inside the engine (issue 12): deadlines, limits, the inline path, deferred
foreign keys at commit, and work stopped when its client goes away.

A real Database or Connection (apsw files in a tmp dir); the end-to-end figures, a second
tenant timed while each attack runs on a real node, are tests/integration/test_isolation_sql.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shoal.engine import database as database_mod
from shoal.engine.connection import Connection, Limits, Statement
from shoal.engine.database import REQUEST_GONE, Database
from shoal.errors import ShoalError
from shoal.server.http import Request
from shoal.values import Args
from tests.support.engine import opened, run, stmts, until

ENDLESS = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r"


def fk_schema() -> list[Statement]:
    return stmts("CREATE TABLE parent(id INTEGER PRIMARY KEY)",
                 "INSERT INTO parent VALUES (1)",
                 "CREATE TABLE child(id INTEGER PRIMARY KEY, pid REFERENCES parent(id))",
                 "CREATE TABLE late(id INTEGER PRIMARY KEY, pid REFERENCES parent(id) "
                 "DEFERRABLE INITIALLY DEFERRED)")


async def count(db: Database, table: str) -> int:
    counters, _ = await db.read(stmts(f"SELECT count(*) FROM {table}"))
    return int(counters.results[0].rows[0][0])


# -- deferred foreign keys: the failing job alone -------------------------------------------
def test_a_deferred_violation_fails_its_own_job_and_the_batch_commits(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as db:
            await db.write(fk_schema())
            jobs = [
                db.write(stmts("INSERT INTO child(pid) VALUES (1)")),
                db.write(stmts("PRAGMA defer_foreign_keys=ON",
                               "INSERT INTO child(pid) VALUES (9)")),
                db.write(stmts("INSERT INTO late(pid) VALUES (8)")),  # deferred by the schema
                db.write(stmts("INSERT INTO late(pid) VALUES (7)",  # satisfied by its end
                               "INSERT INTO parent VALUES (7)")),
            ]
            outcomes = await asyncio.gather(*jobs, return_exceptions=True)
            ok = [o for o in outcomes if not isinstance(o, BaseException)]
            failed = [o for o in outcomes if isinstance(o, BaseException)]
            assert len(ok) == 2 and len({o.txid for o in ok}) == 1  # one commit for both
            assert [type(o) for o in failed] == [ShoalError, ShoalError]
            for err in failed:
                assert isinstance(err, ShoalError)
                assert (err.code, err.status) == ("SQLITE_CONSTRAINT", 400)
                assert err.extra["extended_code"] == "SQLITE_CONSTRAINT_FOREIGNKEY"
            assert await count(db, "child") == 1
            assert await count(db, "late") == 1

    run(body())


@pytest.mark.parametrize("cached", [False, True])
def test_the_defer_pragma_does_not_reach_the_next_job_of_the_batch(
        tmp_path: Path, cached: bool) -> None:
    """``cached``: the pragma ran in an earlier batch, so it now runs from apsw's statement
    cache, without the authorizer: the writer still turns it off after each job."""
    async def body() -> None:
        async with opened(tmp_path) as db:
            await db.write(fk_schema())
            assert not db.writer.guard.defers  # (nothing to turn off: one statement less)
            if cached:
                await db.write(stmts("PRAGMA defer_foreign_keys=ON"))  # prepared, cached
                assert db.writer.guard.defers
                await db.write(stmts("INSERT INTO parent VALUES (77)"))
            first = db.write(stmts("PRAGMA defer_foreign_keys=ON"))
            second = db.write(stmts("INSERT INTO child(pid) VALUES (9)", "SELECT 1"))
            done, err = await asyncio.gather(first, second, return_exceptions=True)
            assert not isinstance(done, BaseException)
            assert isinstance(err, ShoalError) and err.code == "SQLITE_CONSTRAINT"
            assert err.extra["statement"] == 0  # immediate, at the insert: not deferred

    run(body())


def test_a_transaction_commit_with_deferred_violations_fails_and_ends_it(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as db:
            await db.write(fk_schema())
            start = db.txid
            tx = await db.begin("tx_1", "tok", write=True)
            await db.tx_query(tx, stmts("INSERT INTO late(pid) VALUES (5)"))
            with pytest.raises(ShoalError) as info:
                await db.end(tx, commit=True)
            err = info.value
            assert (err.code, err.status) == ("SQLITE_CONSTRAINT", 400)
            assert err.extra["extended_code"] == "SQLITE_CONSTRAINT_FOREIGNKEY"
            assert "rolled back" in err.message
            assert not db.write_lock.locked() and db.txid == start
            assert (await db.write(stmts("INSERT INTO late(pid) VALUES (1)"))).txid == start + 1
            assert await count(db, "late") == 1

    run(body())


# -- deadlines: the watchdog ----------------------------------------------------------------
def views(depth: int) -> list[Statement]:
    """Views over views: a short SELECT of the last one takes long to prepare."""
    return stmts("CREATE VIEW v0 AS SELECT 1 AS x", *[
        f"CREATE VIEW v{i} AS SELECT * FROM v{i - 1} UNION ALL SELECT * FROM v{i - 1}"
        for i in range(1, depth + 1)])


def test_a_statement_being_prepared_is_interrupted_at_its_deadline(tmp_path: Path) -> None:
    """The progress handler never runs while SQLite prepares a statement: the watchdog does
    (preparing SELECT over v15 takes most of a second here)."""
    conn = Connection(str(tmp_path / "v.db"), reader=False)
    try:
        for stmt in views(15):
            conn.internal(stmt.sql)
        with pytest.raises(ShoalError) as info:
            conn.run(stmts("SELECT count(*) FROM v15"), Limits(0.05, 10_000_000))
        assert info.value.code == "STATEMENT_TIMEOUT"
        # the connection is usable at once, and nothing of the interrupt is left on it
        assert conn.run(stmts("SELECT 1"), Limits(5.0, 10_000_000)).results[0].rows == [[1]]
    finally:
        conn.close()


def test_a_worker_read_runs_under_statement_timeout(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path, statement_timeout=0.2) as db:
            with pytest.raises(ShoalError) as info:
                await db.read(stmts(ENDLESS))
            assert info.value.code == "STATEMENT_TIMEOUT"

    run(body())


# -- limits -----------------------------------------------------------------------------------
def test_sql_and_value_limits_name_their_setting(tmp_path: Path) -> None:
    conn = Connection(str(tmp_path / "l.db"), reader=False, max_sql_bytes=2048,
                      max_value_bytes=4096)
    limits = Limits(5.0, 10_000_000)
    try:
        with pytest.raises(ShoalError) as info:
            conn.run(stmts("SELECT 1 -- " + "x" * 3000), limits)
        assert info.value.code == "SQLITE_TOOBIG" and "max_sql_bytes (2048)" in info.value.message
        with pytest.raises(ShoalError) as info:
            conn.run(stmts("SELECT zeroblob(5000)"), limits)
        assert info.value.code == "SQLITE_TOOBIG"
        assert "max_value_bytes (4096)" in info.value.message
        assert info.value.extra["statement"] == 0
        assert "max_value_bytes" in info.value.body()["error"]["hint"]
        assert conn.run(stmts("SELECT length(zeroblob(4000))"), limits).results[0].rows == [[4000]]
    finally:
        conn.close()


def test_the_response_budget_counts_json_bytes_and_column_names(tmp_path: Path) -> None:
    conn = Connection(str(tmp_path / "r.db"), reader=False)
    try:
        text = "x" * 800
        fits = conn.run([Statement("SELECT ?", (text,))], Limits(5.0, 1000))
        assert fits.results[0].rows == [[text]]
        with pytest.raises(ShoalError) as info:  # 800 quote characters: 1,600 JSON bytes
            conn.run([Statement("SELECT ?", ('"' * 800,))], Limits(5.0, 1000))
        assert info.value.code == "RESPONSE_TOO_LARGE"
        alias = "c" * 2000
        with pytest.raises(ShoalError) as info:  # no row at all: the column name alone
            conn.run(stmts(f'SELECT 1 AS "{alias}" WHERE 0'), Limits(5.0, 1000))
        assert info.value.code == "RESPONSE_TOO_LARGE"
    finally:
        conn.close()


# -- the inline path ------------------------------------------------------------------------
def test_new_sql_runs_on_a_worker_first_and_inline_once_known_cheap(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as db:
            point = "SELECT v FROM t WHERE id = ?"
            conn = await db._take_reader()
            try:
                assert not db._inline(conn, [Statement(point, (1,))])
            finally:
                db._give_reader(conn)
            await db.read([Statement(point, (1,))])
            assert hash(point) in db.known_cheap
            conn = await db._take_reader()
            try:
                assert db._inline(conn, [Statement(point, (2,))])  # arguments do not matter
            finally:
                db._give_reader(conn)
            await db.write(stmts("CREATE TABLE other(x)"))  # a schema change: learn again
            conn = await db._take_reader()
            try:
                assert not db._inline(conn, [Statement(point, (1,))])
                assert hash(point) not in db.known_cheap
            finally:
                db._give_reader(conn)

    run(body())


def test_a_value_too_big_for_the_loop_is_read_on_a_worker(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as db:
            await db.write(stmts("INSERT INTO t(id, v) VALUES (1, 'a')"))
            sql = "SELECT length(v), v FROM t WHERE id = 1"
            for _ in range(2):  # learnt cheap on a worker, then inline
                out, _ = await db.read(stmts(sql))
                assert out.results[0].rows == [[1, "a"]]
            assert hash(sql) in db.known_cheap
            await db.write(stmts("UPDATE t SET v = printf('%.*c', 5000, 'b') WHERE id = 1"))
            out, _ = await db.read(stmts(sql))  # past the inline limits: rerun on a worker
            assert out.results[0].rows[0][0] == 5000
            assert hash(sql) not in db.known_cheap

    run(body())


def test_a_cheap_read_takes_no_reader_slot(tmp_path: Path) -> None:
    """An inline read holds its pooled reader only while it runs on the loop: it never
    waits behind requests queued for a slot (a queue that, once formed under load, made
    every later read wait its turn, a future and a loop turn each)."""
    async def body() -> None:
        async with opened(tmp_path, readers=2) as db:
            await db.write(stmts("INSERT INTO t(id, v) VALUES (1, 'a')"))
            sql = "SELECT v FROM t WHERE id = 1"
            await db.read(stmts(sql))  # learnt cheap on a worker
            for _ in range(2):  # every slot taken (as by reads on worker threads)
                await db.reader_slots.acquire()
            queued = asyncio.ensure_future(db._take_reader())  # and a request waiting
            await asyncio.sleep(0)
            assert not queued.done()
            pooled = list(db.readers)
            out, _ = await asyncio.wait_for(db.read(stmts(sql)), 5)
            assert out.results[0].rows == [["a"]]
            assert db.readers == pooled  # the same reader, back in the pool
            assert not queued.done()  # the read took no slot the waiter wanted
            db.reader_slots.release()
            db._give_reader(await queued)
            db.reader_slots.release()

    run(body())


def test_reads_that_waited_for_a_reader_slot_still_run_inline(tmp_path: Path) -> None:
    """Reads queued for a slot while every reader was busy (on worker threads, say) run on
    the loop once they get one, so the queue drains at once instead of every later read
    going to a thread behind it."""
    async def body() -> None:
        async with opened(tmp_path, readers=2) as db:
            await db.write(stmts("INSERT INTO t(id, v) VALUES (1, 'a')"))
            sql = "SELECT v FROM t WHERE id = 1"
            await db.read(stmts(sql))  # learnt cheap on a worker
            busy = [await db._take_reader(), await db._take_reader()]  # (the second opens)
            for conn in busy:  # each has read the schema (a fresh one reads it on a worker)
                db._read_on(conn, stmts(sql), db.limits)
            assert not db.readers  # both readers taken, as by reads on worker threads
            threads: list[object] = []
            real = db._off_loop

            async def off_loop(*args: Any) -> Any:
                threads.append(args[1])
                return await real(*args)

            db._off_loop = off_loop  # type: ignore[method-assign]
            reads = [asyncio.ensure_future(db.read(stmts(sql))) for _ in range(10)]
            await asyncio.sleep(0)
            assert not any(r.done() for r in reads)  # queued for a slot
            for conn in busy:
                db._give_reader(conn)
            outs = await asyncio.wait_for(asyncio.gather(*reads), 5)
            assert [out.results[0].rows for out, _ in outs] == [[["a"]]] * 10
            assert threads == []  # none of them went to a worker thread
            assert len(db.readers) == 2

    run(body())


def test_an_inline_read_that_overran_sends_the_database_to_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(database_mod, "INLINE_OVERRUN", 0.0)  # any overrun counts

    async def body() -> None:
        async with opened(tmp_path) as db:
            await db.write(stmts("INSERT INTO t(id, v) VALUES (1, 'a')"))
            sql = "SELECT v FROM t WHERE id = 1"
            await db.read(stmts(sql))
            await db.write(stmts("UPDATE t SET v = printf('%.*c', 5000, 'b')"))
            await db.read(stmts(sql))
            assert db.inline_after > 0
            await db.read(stmts(sql))  # learnt again on a worker, but not tried inline
            conn = await db._take_reader()
            try:
                assert not db._inline(conn, stmts(sql))
            finally:
                db._give_reader(conn)

    run(body())


# -- work whose client went away ------------------------------------------------------------
def test_a_read_whose_client_went_away_is_interrupted(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path, statement_timeout=60) as db:
            gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            async def request() -> Any:
                REQUEST_GONE.set(gone)
                return await db.read(stmts(ENDLESS))

            task = asyncio.ensure_future(request())
            await asyncio.sleep(0.2)
            assert not task.done()
            gone.set_result(None)
            with pytest.raises(ShoalError) as info:
                await asyncio.wait_for(task, 10)  # not statement_timeout's minute
            assert info.value.code == "STATEMENT_TIMEOUT"
            assert "client went away" in info.value.message
            out, _ = await db.read(stmts("SELECT 1"))  # the reader is clean again
            assert out.results[0].rows == [[1]]

    run(body())


def test_a_queued_write_whose_client_went_away_is_not_run(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as db:
            tx = await db.begin("tx_1", "tok", write=True)  # holds the write lock
            gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            async def request() -> Any:
                REQUEST_GONE.set(gone)
                return await db.write(stmts("INSERT INTO t(id, v) VALUES (1, 'a')"))

            task = asyncio.ensure_future(request())
            await until(lambda: len(db.queue) == 1)
            gone.set_result(None)
            await db.end(tx, commit=False)
            with pytest.raises(ShoalError) as info:
                await asyncio.wait_for(task, 10)
            assert "client went away" in info.value.message
            assert await count(db, "t") == 0
            await db.write(stmts("INSERT INTO t(id, v) VALUES (2, 'b')"))
            assert await count(db, "t") == 1

    run(body())


def test_a_queued_write_whose_client_went_away_is_answered_at_once(tmp_path: Path) -> None:
    """Not only skipped when the writer reaches it: its request ends now, not when the
    lock frees (a WebSocket's streams are waited for before their transactions roll back,
    and one of them may hold that lock)."""
    async def body() -> None:
        async with opened(tmp_path, busy_timeout=60) as db:
            tx = await db.begin("tx_1", "tok", write=True)
            gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            async def request() -> Any:
                REQUEST_GONE.set(gone)
                return await db.write(stmts("INSERT INTO t(id, v) VALUES (1, 'a')"))

            task = asyncio.ensure_future(request())
            await until(lambda: len(db.queue) == 1)
            gone.set_result(None)
            with pytest.raises(ShoalError) as info:
                await asyncio.wait_for(task, 10)  # the lock is still held
            assert "client went away" in info.value.message
            await db.end(tx, commit=False)
            await db.write(stmts("INSERT INTO t(id, v) VALUES (2, 'b')"))
            assert await count(db, "t") == 1

    run(body())


@pytest.mark.parametrize("when", ["waiting", "before"])
def test_a_write_transaction_whose_client_went_away_stops_waiting_for_the_lock(
        tmp_path: Path, when: str) -> None:
    async def body() -> None:
        async with opened(tmp_path, busy_timeout=60) as db:
            tx = await db.begin("tx_1", "tok", write=True)
            gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if when == "before":
                gone.set_result(None)

            async def request() -> Any:
                REQUEST_GONE.set(gone)
                return await db.begin("tx_2", "tok", write=True)

            task = asyncio.ensure_future(request())
            if when == "waiting":
                await until(lambda: bool(db.write_lock._waiters))
                gone.set_result(None)
            with pytest.raises(ShoalError) as info:
                await asyncio.wait_for(task, 10)  # not busy_timeout's minute
            assert "client went away" in info.value.message
            assert "tx_2" not in db.transactions
            await db.end(tx, commit=False)
            assert not db.write_lock.locked()  # the one that gave up took nothing
            await db.write(stmts("INSERT INTO t(id, v) VALUES (1, 'a')"))

    run(body())


def test_a_lock_handed_to_a_waiter_whose_client_left_is_passed_on(tmp_path: Path) -> None:
    """The race: the lock frees as the client goes away. Whoever won, the lock ends free."""
    async def body() -> None:
        async with opened(tmp_path, busy_timeout=60) as db:
            for i in range(20):
                tx = await db.begin("tx_1", "tok", write=True)
                gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

                async def request() -> Any:
                    REQUEST_GONE.set(gone)  # noqa: B023 - awaited in this iteration
                    return await db.begin("tx_2", "tok", write=True)

                task = asyncio.ensure_future(request())
                await until(lambda: bool(db.write_lock._waiters))
                if i % 2:  # the lock is handed over first, then the client leaves
                    await db.end(tx, commit=False)
                    gone.set_result(None)
                else:
                    gone.set_result(None)
                    await db.end(tx, commit=False)
                try:
                    won = await asyncio.wait_for(task, 10)
                except ShoalError:
                    pass
                else:
                    await db.end(won, commit=False)
                await until(lambda: not db.write_lock.locked())

    run(body())


def test_an_inline_read_of_many_statements_stops_at_its_budget(tmp_path: Path) -> None:
    """Each statement is cheap, so the progress handler (inside a statement) never fires:
    the run is checked between statements too, and moved to a worker thread whole."""
    async def body() -> None:
        async with opened(tmp_path) as db:
            sql = "SELECT ?"
            await db.read([Statement(sql, (1,))])  # known cheap from now on
            ran_inline: list[int] = []
            real = Connection.run

            def run_spy(self: Connection, statements: list[Statement], limits: Limits,
                        *args: Any, **kw: Any) -> Any:
                if limits.soft_budget is not None:
                    ran_inline.append(len(statements))
                return real(self, statements, limits, *args, **kw)

            overran: list[str] = []
            real_overran = db._overran
            db._overran = lambda text, held: (overran.append(text),  # type: ignore[method-assign]
                                              real_overran(text, held))[1]
            Connection.run = run_spy  # type: ignore[method-assign]
            try:
                many = [Statement(sql, (i,)) for i in range(20_000)]
                out, _ = await db.read(many)
            finally:
                Connection.run = real  # type: ignore[method-assign]
            assert ran_inline == [20_000]  # tried inline once, then moved
            assert [r.rows for r in out.results] == [[[i]] for i in range(20_000)]
            if not overran:  # (on a loaded machine one statement may overrun by itself)
                assert hash(sql) in db.known_cheap  # still cheap: it was the count

    run(body())


# -- request bodies: nesting is bounded, never a RecursionError ------------------------------
class _Loose(msgspec.Struct):
    anything: Any


def _request(body: bytes) -> Request:
    req = Request({"method": "POST", "path": "/", "headers": []}, receive=None)  # type: ignore[arg-type]
    req.body = body
    return req


@pytest.mark.parametrize("depth", [3000, 100_000])
def test_a_body_nested_past_the_stack_is_invalid_request(depth: int) -> None:
    body = b'{"anything": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(ShoalError) as info:
        _request(body).decode(_Loose)
    assert (info.value.code, info.value.status) == ("INVALID_REQUEST", 400)


def test_arguments_decode_three_containers_deep_and_no_deeper() -> None:
    decode = msgspec.json.Decoder(Args).decode
    assert decode(b'[1, "a", {"base64": "AA=="}, [[[1]]], {"a": {"b": [1]}}]')
    with pytest.raises(msgspec.ValidationError):
        decode(b"[[[[[1]]]]]")  # an argument holding four containers
    with pytest.raises(msgspec.ValidationError):
        decode(b'{"a": ' + b"[" * 3000 + b"]" * 3000 + b"}")
