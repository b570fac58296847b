"""Scale to zero: open a branch on its first request, close it when idle or least recently used.

A closed database holds no connection, task or file handle: only its files on
disk and its catalog rows remain. Opening runs on the branch's I/O lane (SQLite
reads the whole schema when a connection opens, and a store-backed node reads the
branch's records first), so the event loop only awaits it.

With a commit log (``registry``), opening may first restore the branch's file
from the object store, and closing first ships what is pending: both are
awaited, and a request for a branch that is opening or closing waits for that
to finish. A branch can also be taken out of service (:meth:`Lifecycle.exclusive`)
while a restore, reset or delete replaces or removes its files.
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from shoal.engine.database import Database
from shoal.engine.pool import lane_of
from shoal.errors import Code, ShoalError, disk_errors
from shoal.metrics import METRICS
from shoal.settings import Settings

if TYPE_CHECKING:
    from shoal.engine.registry import Registry

Key = tuple[str, str]


def _malloc_trim() -> Callable[[int], object] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def release_memory() -> None:
    """Give freed heap back to the OS. glibc keeps what closed connections and released
    page caches freed (~130 KB and ~90 KB a connection) in its arenas, so without this a
    node that scaled down keeps the resident memory of its busiest moment."""
    if _TRIM is not None:
        _TRIM(0)


async def drain(db: Database, timeout: float, flush: bool = True, keep: bool = True) -> None:
    """Wait until db has no request, queued write or lock holder (bounded), then close it
    (``keep=False``: its files are about to be removed, so no checkpoint).

    Closing while a batch runs on a worker thread would pull the connection out
    from under SQLite, so the wait comes first.
    """
    deadline = time.monotonic() + timeout
    while not db.idle and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await db.aclose(flush, keep)


class Lifecycle:
    def __init__(self, root: Path, settings: Settings, executor: Executor, names: set[str],
                 registry: Registry | None = None):
        self.root = root
        self.settings = settings
        self.executor = executor
        self.names = names  # databases in the catalog; kept current by the engine
        self.registry = registry
        self.open: OrderedDict[Key, Database] = OrderedDict()
        self.opening: dict[Key, asyncio.Future[None]] = {}
        self.closing: dict[Key, asyncio.Task[None]] = {}
        self.held: dict[Key, asyncio.Event] = {}  # out of service: requests wait
        self.size_limit: Callable[[str], int] = lambda name: 0  # the engine's quotas say
        # a cluster's node: the other nodes release the database before it opens here, and
        # what was opened before this node last stopped being a member is not used again
        self.claim: Callable[[str], Awaitable[None]] | None = None
        self.generation: Callable[[], int] | None = None

    def path(self, name: str, branch: str = "main") -> Path:
        return self.root / name / f"{branch}.db"

    @asynccontextmanager
    async def use(self, name: str, branch: str = "main") -> AsyncIterator[Database]:
        """The open database for a request; it cannot close while the request runs."""
        db = await self.acquire(name, branch)
        try:
            yield db
        finally:
            self.release(db)

    @staticmethod
    def release(db: Database) -> None:
        """The request that acquired db is done with it."""
        db.active -= 1
        db.last_used = time.monotonic()

    async def acquire(self, name: str, branch: str = "main") -> Database:
        """The open database (counted active: pair with ``release``), opening it if closed."""
        key = (name, branch)
        while True:
            generation = self.generation() if self.generation is not None else 0
            db = self.open.get(key)
            if db is not None and db.generation != generation:
                self._retire(key)  # maybe stale: closed (requests wait), opened anew below
                continue
            if db is not None:
                self.open.move_to_end(key)
                db.active += 1
                return db
            held = self.held.get(key)
            if held is not None:
                await held.wait()
                continue
            pending = self.closing.get(key) or self.opening.get(key)
            if pending is not None:
                with suppress(Exception):
                    await asyncio.shield(pending)
                continue
            if name not in self.names:
                raise ShoalError(Code.DATABASE_NOT_FOUND, f"database {name!r} does not exist")
            db = await self._open(key)
            if name not in self.names:  # deleted while it opened
                await db.aclose(flush=False)
                raise ShoalError(Code.DATABASE_NOT_FOUND, f"database {name!r} does not exist")
            db.size_limit = self.size_limit(name)
            db.generation = generation
            self.open[key] = db
            METRICS.open_databases.set(len(self.open))
            db.active += 1  # before evicting, so the new database cannot be the one closed
            self.evict()
            return db

    async def _open(self, key: Key) -> Database:
        name, branch = key
        if self.registry is None and branch != "main":  # a local-only node has main only
            raise ShoalError(Code.HISTORY_DISABLED, f"branch {branch!r}: this node runs without "
                                                    f"an object store (store = \"none\") and "
                                                    f"has no branches but main")
        done = asyncio.get_running_loop().create_future()
        self.opening[key] = done
        try:  # a -shm to grow or a file to restore needs room: DISK_FULL, never INTERNAL
            with disk_errors():
                path = self.path(name, branch)
                path.parent.mkdir(parents=True, exist_ok=True)
                if self.claim is not None:
                    await self.claim(name)
                if self.registry is not None:
                    return await self.registry.open(name, branch, path)
                db = Database(name, branch, str(path), self.settings,
                              lane_of(self.executor, name))
                await db.open()
                return db
        finally:
            del self.opening[key]
            done.set_result(None)

    async def settle(self, name: str) -> None:
        """Wait until no branch of ``name`` is opening or closing."""
        while pending := [f for k, f in [*self.opening.items(), *self.closing.items()]
                          if k[0] == name]:
            for fut in pending:
                with suppress(Exception):
                    await asyncio.shield(fut)

    @asynccontextmanager
    async def exclusive(self, name: str, branch: str,
                        before: Callable[[str, str], Awaitable[None]] | None = None,
                        timeout: float = 5.0, flush: bool = True) -> AsyncIterator[None]:
        """Take a branch out of service: requests for it wait; ``before`` runs (ending its
        transactions), then it is drained and closed (shipping what is pending if
        ``flush``: not for a branch whose history is about to be dropped)."""
        key = (name, branch)
        while (other := self.held.get(key)) is not None:
            await other.wait()
        event = asyncio.Event()
        self.held[key] = event
        try:
            for pending in (self.opening.get(key), self.closing.get(key)):
                if pending is not None:
                    with suppress(Exception):
                        await asyncio.shield(pending)
            if before is not None:
                await before(name, branch)
            db = self.open.pop(key, None)
            METRICS.open_databases.set(len(self.open))
            if db is not None:
                await drain(db, timeout, flush)
            yield
        finally:
            del self.held[key]
            event.set()

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

    def log_backlog(self) -> tuple[int, float]:
        """Commits of open branches not yet in the object store, and the oldest one's age
        in seconds (0 when every commit is shipped): the replication lag, for /metrics."""
        commits, oldest = 0, None
        for db in self.open.values():
            shipper = db.journal.shipper if db.journal is not None else None
            if shipper is None:
                continue
            commits += shipper.unshipped
            when = shipper.oldest_unshipped()
            if when is not None and (oldest is None or when < oldest):
                oldest = when
        return commits, 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def close_idle(self) -> int:
        """Close databases idle past idle_timeout, or fenced out by another writer (their
        copy is dropped and the next request hydrates from the store); trim readers idle
        past reader_idle_timeout; give back the page caches of databases unused for
        cache_idle_timeout.

        Returns how many databases and readers were closed and connections released
        memory (freed heap, for the caller to hand back to the OS).
        """
        now = time.monotonic()
        cutoff = now - self.settings.idle_timeout
        reader_cutoff = now - self.settings.reader_idle_timeout
        cache_cutoff = now - self.settings.cache_idle_timeout
        freed = 0
        for key, db in list(self.open.items()):
            fenced = db.journal is not None and db.journal.fenced is not None
            if db.idle and (db.last_used < cutoff or fenced):  # a fenced copy reopens fresh
                self._close(key)
                freed += 1
            else:
                freed += db.trim_readers(reader_cutoff)
                freed += db.release_caches(cache_cutoff)
        return freed

    def _close(self, key: Key) -> None:
        """Close an idle database: at once, or (commit log) in a task requests can wait on."""
        db = self.open.pop(key)
        METRICS.open_databases.set(len(self.open))
        if db.journal is None:
            db.close()
            return
        self.closing[key] = asyncio.get_running_loop().create_task(self._finish_close(key, db))

    def _retire(self, key: Key) -> None:
        """Take a database that may be busy out of service: new requests wait until its
        running ones are done (bounded) and it is closed."""
        db = self.open.pop(key)
        METRICS.open_databases.set(len(self.open))
        self.closing[key] = asyncio.get_running_loop().create_task(
            self._finish_close(key, db, self.settings.statement_timeout + 1))

    async def _finish_close(self, key: Key, db: Database, drained: float | None = None) -> None:
        """Close db (after waiting up to ``drained`` seconds for its requests, if given)."""
        try:
            if drained is None:
                await db.aclose()
            else:
                await drain(db, drained)
        finally:  # before the task is done: whoever sees it done must not find it here
            if self.closing.get(key) is asyncio.current_task():
                del self.closing[key]

    async def close_database(self, name: str) -> list[Database]:
        """Take every open branch of name out of service (once none is opening or closing);
        the caller drains and closes them."""
        await self.settle(name)
        out = []
        for key in [k for k in self.open if k[0] == name]:
            out.append(self.open.pop(key))
        METRICS.open_databases.set(len(self.open))
        return out

    async def close_all(self, timeout: float) -> None:
        """Shutdown: let running work finish (bounded), then close everything. Each closes
        as a closing task, so that whoever waits for a database to be closed (a request, a
        cluster's release: `settle`) waits until it is, its commits shipped."""
        databases = list(self.open.items())
        self.open.clear()
        METRICS.open_databases.set(0)
        loop = asyncio.get_running_loop()
        for key, db in databases:
            self.closing[key] = loop.create_task(self._finish_close(key, db, timeout))
        await asyncio.gather(*self.closing.values(), return_exceptions=True)

    def is_open(self, name: str) -> bool:
        """Whether a branch of name holds resources (open, or still closing)."""
        return any(k[0] == name for k in [*self.open, *self.closing])
