"""What the engine's tests share: running a coroutine, a branch opened on its own, a
registry on a memory store, settings for an Engine, statements, and waiting on the loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from shoal import settings as settings_mod
from shoal.engine.connection import Statement
from shoal.engine.database import Database
from shoal.engine.journal import Stores
from shoal.engine.registry import Registry
from shoal.storage.memory import MemoryStore

T = TypeVar("T")
DB = "journaled"  # the database registry() creates


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def stmts(*items: str | tuple[str, Any]) -> list[Statement]:
    """Statements from SQL texts, or (SQL, arguments) pairs."""
    return [Statement(item) if isinstance(item, str) else Statement(item[0], item[1])
            for item in items]


@asynccontextmanager
async def opened(tmp_path: Path, **overrides: Any) -> AsyncIterator[Database]:
    """A local-only branch "orders" holding a table t(id, v)."""
    settings = settings_mod.Settings(**{"data": str(tmp_path), "busy_timeout": 0.3,
                                        "statement_timeout": 2.0, **overrides})
    executor = ThreadPoolExecutor(8)
    db = Database("orders", "main", str(tmp_path / "main.db"), settings, executor)
    await db.open()
    try:
        await db.write(stmts("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)"))
        yield db
    finally:
        db.close()
        executor.shutdown(wait=True)


@asynccontextmanager
async def registry(tmp_path: Path, fence: Callable[[], None] = lambda: None,
                   **overrides: Any) -> AsyncIterator[tuple[Registry, MemoryStore]]:
    """A registry on a memory store, with the database DB created."""
    settings = settings_mod.Settings(**{"data": str(tmp_path / "data"), "sync_interval": 0.01,
                                        **overrides})
    store = MemoryStore()
    sql, io = ThreadPoolExecutor(4), ThreadPoolExecutor(4)
    reg = Registry(Stores(store, store, io, fence), settings, sql, tmp_path / "scratch")
    reg.create_database(DB, 1_000_000.0)
    try:
        yield reg, store
    finally:
        sql.shutdown(wait=True)
        io.shutdown(wait=True)


def make_settings(tmp_path: Path, **overrides: Any) -> settings_mod.Settings:
    """An Engine's settings with a fixed admin token."""
    return settings_mod.Settings(**{"data": str(tmp_path / "data"),
                                    "admin_token": "admin-token-for-tests", **overrides})


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to the loop until check() holds (bounded by a deadline)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


def fds_on(path: Path) -> int:
    """File descriptors of this process open on a file under ``path`` (or beside it)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(str(path))
    return count
