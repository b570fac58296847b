"""The audit log's record layer (engine/audit.py) over a memory store: objects written
create-only and sorted by time, several nodes' objects read as one log, pages and cursors,
retention, and a store that does not answer (bounded, the oldest dropped, nothing lost
that fits)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import pytest
import zstandard

from shoal.engine.audit import (
    PREFIX,
    SPAN_MS,
    AuditLog,
    Entry,
    decode_cursor,
    first_ms,
)
from shoal.errors import ShoalError
from shoal.storage.base import StorageUnavailable
from shoal.storage.memory import MemoryStore


@pytest.fixture
def io() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(2)
    yield pool
    pool.shutdown()


def entry(ts: float, db: str | None = "orders", status: int = 200) -> Entry:
    return (ts, "tok_1", None, "shoal", "POST", "/v1/databases/{db}/query", db, "main",
            "read", 1, 0, status, None, 0.5)


def records(log: AuditLog, **kw: Any) -> tuple[list[dict[str, Any]], str | None]:
    page = log.page(kw.get("since"), kw.get("until"), kw.get("wanted"), kw.get("limit", 1000),
                    kw.get("cursor"))
    return [msgspec.to_builtins(r) for r in page.records], page.next_cursor


def test_records_are_flushed_create_only_into_time_sorted_objects(io: Any) -> None:
    store = MemoryStore("memory://")
    log = AuditLog(100)
    log.attach(store, "nodea", io)
    now = time.time()
    for i in range(5):
        log.add(entry(now + i / 1000))
    assert asyncio.run(log.flush()) == 5
    keys = [o.key for o in store.list(PREFIX)]
    assert len(keys) == 1 and keys[0].startswith(f"{PREFIX}{int(now * 1000):013d}-nodea-")
    lines = zstandard.ZstdDecompressor().decompress(store.get(keys[0]).data).splitlines()
    assert json.loads(lines[0]) == list(entry(now))  # the entry, as it was handed over
    first = records(log)[0][0]
    assert first["node"] == "nodea" and first["token"] == "tok_1" and first["kind"] == "read"
    assert first["time"].endswith("Z") and first["time"][:4].isdigit() and first["ms"] == 500
    assert not log.buffer


def test_an_object_spans_at_most_span_ms_and_several_nodes_read_as_one_log(io: Any) -> None:
    store = MemoryStore("memory://")
    a, b = AuditLog(1000), AuditLog(1000)
    a.attach(store, "nodea", io)
    b.attach(store, "nodeb", io)
    base = time.time() - 3600
    a.add(entry(base))
    a.add(entry(base + SPAN_MS / 1000 + 1))  # too far from the first: a second object
    b.add(entry(base + 0.5, db="other"))
    asyncio.run(a.flush())
    asyncio.run(b.flush())
    keys = [o.key for o in store.list(PREFIX)]
    assert len(keys) == 3
    assert keys == sorted(keys, key=first_ms)
    got, cursor = records(a)
    assert cursor is None
    assert [r["node"] for r in got] == ["nodea", "nodeb", "nodea"]
    only, _ = records(b, wanted="other".__eq__)
    assert [r["database"] for r in only] == ["other"]
    # since skips the first two (by the records' time, not only by object)
    later, _ = records(a, since=int((base + 1) * 1000))
    assert len(later) == 1


def test_pages_follow_a_cursor_through_every_record_once(io: Any) -> None:
    store = MemoryStore("memory://")
    log = AuditLog(1000)
    log.attach(store, "nodea", io)
    now = time.time()
    for batch in range(3):
        for i in range(7):
            log.add(entry(now + batch + i / 100, status=200 + batch * 10 + i))
        asyncio.run(log.flush())
    seen: list[int] = []
    cursor = None
    for _ in range(20):
        page, next_cursor = records(log, limit=4,
                                    cursor=decode_cursor(cursor) if cursor else None)
        seen += [r["status"] for r in page]
        if next_cursor is None:
            break
        cursor = next_cursor
    assert sorted(seen) == seen and len(seen) == 21 and len(set(seen)) == 21
    assert decode_cursor("bm90IGEgY3Vyc29y") is None  # base64 of "not a cursor"


def test_retention_deletes_objects_whose_records_are_all_older(io: Any) -> None:
    store = MemoryStore("memory://")
    log = AuditLog(1000)
    log.attach(store, "nodea", io)
    now = time.time()
    log.add(entry(now - 10 * 86400))
    asyncio.run(log.flush())
    log.add(entry(now - 60))
    asyncio.run(log.flush())
    assert log.retain(now, 7 * 86400) == 1
    left, _ = records(log)
    assert len(left) == 1


class Down(MemoryStore):
    """A store that does not answer puts while ``down``."""

    down = True

    def put(self, key: str, data: bytes, **kw: Any) -> str:
        if self.down:
            raise StorageUnavailable(key, "put failed: connection refused")
        return super().put(key, data, **kw)


def test_a_store_that_does_not_answer_keeps_a_bounded_buffer_oldest_dropped(io: Any) -> None:
    store = Down("memory://")
    log = AuditLog(5)
    log.attach(store, "nodea", io)
    now = time.time()
    for i in range(3):
        log.add(entry(now + i, status=200 + i))
    assert asyncio.run(log.flush()) == 0
    assert len(log.buffer) == 3  # put back, in order
    for i in range(3, 10):
        log.add(entry(now + i, status=200 + i))
    assert len(log.buffer) == 5 and log.dropped == 5
    store.down = False
    assert asyncio.run(log.flush()) == 5
    got, _ = records(log)
    assert [r["status"] for r in got] == [205, 206, 207, 208, 209]  # the newest kept


def test_a_corrupt_object_is_named() -> None:
    store = MemoryStore("memory://")
    log = AuditLog(10)
    log.attach(store, "nodea", ThreadPoolExecutor(1))
    key = f"{PREFIX}{int(time.time() * 1000):013d}-nodea-000001.jsonl.zst"
    store.put(key, b"not zstd")
    with pytest.raises(ShoalError) as caught:
        records(log)
    assert caught.value.code == "STORAGE_CORRUPT" and key in str(caught.value)
