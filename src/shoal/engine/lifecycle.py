"""Scale to zero: open a branch on its first request, close it when idle or least recently used.

A closed database holds no connection, task or file handle: only its files on
disk and its catalog rows remain. Opening is a few hundred microseconds, done
inline so that a request never waits on a thread to find its database.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from shoal.engine.database import Database
from shoal.errors import ShoalError
from shoal.metrics import METRICS


async def drain(db: Database, timeout: float) -> None:
    """Wait until db has no request, queued write or lock holder (bounded), then close it.

    Closing while a batch runs on a worker thread would pull the connection out
    from under SQLite, so the wait comes first.
    """
    deadline = time.monotonic() + timeout
    while not db.idle and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    db.close()


class Lifecycle:
    def __init__(self, root: Path, settings: Any, executor: Executor, names: set[str]):
        self.root = root
        self.settings = settings
        self.executor = executor
        self.names = names  # databases in the catalog; kept current by the engine
        self.open: OrderedDict[tuple[str, str], Database] = OrderedDict()

    def path(self, name: str, branch: str = "main") -> Path:
        return self.root / name / f"{branch}.db"

    @asynccontextmanager
    async def use(self, name: str, branch: str = "main") -> AsyncIterator[Database]:
        """The open database for a request; it cannot close while the request runs."""
        db = self.acquire(name, branch)
        try:
            yield db
        finally:
            db.active -= 1
            db.last_used = time.monotonic()

    def acquire(self, name: str, branch: str = "main") -> Database:
        key = (name, branch)
        db = self.open.get(key)
        if db is None:
            if name not in self.names:
                raise ShoalError("DATABASE_NOT_FOUND", f"database {name!r} does not exist")
            path = self.path(name, branch)
            path.parent.mkdir(parents=True, exist_ok=True)
            db = Database(name, branch, str(path), self.settings, self.executor)
            db.open()
            self.open[key] = db
            METRICS.open_databases.set(len(self.open))
            db.active += 1  # before evicting, so the new database cannot be the one closed
            self.evict()
            return db
        self.open.move_to_end(key)
        db.active += 1
        return db

    def evict(self) -> None:
        """Close least recently used idle databases while more than max_open are open."""
        excess = len(self.open) - self.settings.max_open
        if excess <= 0:
            return
        for key, db in list(self.open.items()):
            if excess <= 0:
                break
            if db.idle:
                self._close(key)
                excess -= 1

    def close_idle(self) -> None:
        cutoff = time.monotonic() - self.settings.idle_timeout
        for key, db in list(self.open.items()):
            if db.idle and db.last_used < cutoff:
                self._close(key)

    def _close(self, key: tuple[str, str]) -> None:
        db = self.open.pop(key)
        db.close()
        METRICS.open_databases.set(len(self.open))

    def close_database(self, name: str) -> list[Database]:
        """Take every open branch of name out of service; the caller drains and closes them."""
        out = []
        for key in [k for k in self.open if k[0] == name]:
            out.append(self.open.pop(key))
        METRICS.open_databases.set(len(self.open))
        return out

    async def close_all(self, timeout: float) -> None:
        """Shutdown: let running work finish (bounded), then close everything."""
        databases = list(self.open.values())
        self.open.clear()
        METRICS.open_databases.set(0)
        for db in databases:
            await drain(db, timeout)

    def is_open(self, name: str) -> bool:
        return any(k[0] == name for k in self.open)
