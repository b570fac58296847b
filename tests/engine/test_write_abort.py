"""A write that makes SQLite drop the whole transaction fails alone; its batch still commits."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shoal.engine.connection import Statement
from shoal.engine.database import Database
from shoal.errors import ShoalError
from shoal.settings import Settings

ENDLESS_INSERT = ("INSERT INTO t(v) WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1"
                  " FROM r) SELECT x FROM r")


def _db(tmp_path: Path) -> Database:
    settings = Settings(statement_timeout=0.2, data=str(tmp_path))
    return Database("d", "main", str(tmp_path / "d.db"), settings, ThreadPoolExecutor(4))


def test_interrupted_write_fails_alone_in_its_batch(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = _db(tmp_path)
        await db.open()
        await db.write([Statement("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")])
        # Queue both before the writer runs, so they share one batch.
        jobs = [db.write([Statement("INSERT INTO t(v) VALUES (?)", (i,))]) for i in range(3)]
        jobs.insert(1, db.write([Statement(ENDLESS_INSERT)]))
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        timeout = outcomes.pop(1)
        assert isinstance(timeout, ShoalError) and timeout.code == "STATEMENT_TIMEOUT"
        assert all(not isinstance(o, BaseException) for o in outcomes), outcomes
        assert len({o.txid for o in outcomes}) == 1  # type: ignore[union-attr]
        counters, _ = await db.read([Statement("SELECT count(*) FROM t")])
        assert counters.results[0].rows == [[3]]
        db.close()

    asyncio.run(scenario())


def test_interrupted_write_aborts_interactive_transaction(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = _db(tmp_path)
        await db.open()
        await db.write([Statement("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")])
        tx = await db.begin("tx1", "s", write=True)
        await db.tx_query(tx, [Statement("INSERT INTO t(v) VALUES (1)")])
        with pytest.raises(ShoalError) as err:
            await db.tx_query(tx, [Statement(ENDLESS_INSERT)])
        assert err.value.code == "STATEMENT_TIMEOUT"
        assert tx.aborted
        await db.end(tx, commit=False)
        # The lock is free again and the aborted transaction's insert is gone.
        done = await db.write([Statement("INSERT INTO t(v) VALUES (2)")])
        counters, _ = await db.read([Statement("SELECT v FROM t")])
        assert counters.results[0].rows == [[2]]
        assert done.txid == 2
        db.close()

    asyncio.run(scenario())
