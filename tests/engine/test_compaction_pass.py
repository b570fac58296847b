"""The engine's periodic pass compacts every database's log before retention, and a node on
an empty disk opens the branch from the merged segment."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from shoal.engine import engine as engine_mod
from shoal.engine.connection import Statement
from shoal.engine.engine import Engine
from shoal.log.timeline import covered, segments
from shoal.storage import open_store
from tests.support.engine import make_settings


def answer(done: object) -> tuple[int, bytes]:
    return 200, b""


def test_the_periodic_pass_compacts_then_a_fresh_node_restores(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    url = (tmp_path / "store").as_uri()

    async def first_node() -> None:
        engine = Engine(make_settings(tmp_path / "a", store=url, durability="remote"))
        await engine.start()
        try:
            admin = engine.auth.admin
            await engine.create_database(admin, "orders", None, lambda rec: (201, b""))
            await engine.query(admin, "orders", [Statement("CREATE TABLE t(x)")], None, answer)
            for i in range(20):  # remote durability: a segment per write
                await engine.query(admin, "orders", [Statement("INSERT INTO t VALUES (?)", (i,))],
                                   None, answer)
            later = time.time() + 120  # the segments are past compaction's min_age
            monkeypatch.setattr(engine_mod, "time",
                                SimpleNamespace(time=lambda: later, monotonic=time.monotonic))
            with caplog.at_level(logging.INFO, logger="shoal"):
                await engine._retain()
            monkeypatch.undo()
        finally:
            await engine.stop()

    asyncio.run(first_node())
    assert any("compaction of orders merged 21 segments into 1" in r.getMessage()
               for r in caplog.records)
    store = open_store(url)
    timeline = next(iter(store.list("dbs/orders/log/"))).key.split("/")[3]
    segs = segments(store, "orders", timeline)
    small = covered(segs)
    assert len(small) == 21 and len(segs) == 22  # retention keeps them for an hour
    for key in small:  # as retention will, later
        store.delete(key)

    async def fresh_node() -> None:
        engine = Engine(make_settings(tmp_path / "b", store=url))
        await engine.start()
        try:
            out = await engine.query(engine.auth.admin, "orders",
                                     [Statement("SELECT count(*), sum(x) FROM t")], None, answer)
            assert out.results[0].rows == [[20, sum(range(20))]]
        finally:
            await engine.stop()

    asyncio.run(fresh_node())
