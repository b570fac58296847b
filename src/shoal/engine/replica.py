"""Replicas: a cluster node's read-only copy of a branch another node leads.

A read for a database led elsewhere is served here from a replica, so that reads use
every node (writes, transactions and strong reads are forwarded to the leader). A
replica opens on the first read (that read is forwarded while it does) and closes
when idle, as a leader's branch does; its file is removed then.

- **Hydrate.** The copy starts as the store's committed head (``restore``), in a
  file of its own under ``replicas/``.
- **Follow.** The replica asks the leader for the segments after its txid
  (``GET /v1/cluster/feed/...``, a long poll: the leader answers as soon as one is
  durable, ``log/feed.py``). It sees only durable commits, so it never holds one a
  failover could take back. A gap (the leader no longer holds what follows), another
  timeline (a restore or reset) or a new leader without the segments make it hydrate
  again into a new file; reads move to it, the old one closes once its reads end.
- **Apply.** SQLite has no SQL to write a page, so the copy is kept in rollback-
  journal mode and the pages are written into the file under SQLite's own EXCLUSIVE
  lock, taken by an applier connection (``BEGIN EXCLUSIVE``): readers (other
  connections of this process, each a snapshot under a SHARED lock) never see half a
  commit. The header's change counter is bumped, so every reader drops its cached
  pages, and the schema cookie, as the leader wrote it, makes them reload a changed
  schema. While pages are written, reads of the copy stay off the event loop (an
  inline read would wait for the lock there).

Bookmarks: a read carrying one waits until the copy reaches it (``reached``, up to
``bookmark_wait``); the engine forwards it to the leader otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import shutil
import struct
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import apsw

from shoal.engine.database import Database
from shoal.log.errors import LogError
from shoal.log.restore import apply_commit
from shoal.log.segment import Commit, decode_segment, read_header
from shoal.metrics import METRICS
from shoal.settings import Settings

log = logging.getLogger("shoal.replica")  # mutate: harmless constant (a logger's name)

# mutate: harmless constant (a long poll's length: any does)
FEED_WAIT = 10.0  # seconds a request for news waits at the leader for a durable commit
# mutate: harmless constant (a pause's length: any does; the tests set their own)
RETRY = 0.5  # seconds between tries while the leader cannot be reached or the copy fails
# mutate: harmless constant (how long a retired copy's reads may take: any bound does)
CLOSE_WAIT = 10.0  # seconds a retired copy waits for its reads before it closes anyway

Key = tuple[str, str]
T = TypeVar("T")
HEADER = 100  # mutate: harmless constant (bytes of a file's header: more are written back)


@dataclass(frozen=True, slots=True)
class News:
    """The leader's answer: its branch's timeline and the encoded segments after the txid
    asked for ([] if none came within the wait; None if it does not hold them all)."""

    timeline: str
    segments: list[bytes] | None


class Source(Protocol):
    """What a replica needs of the engine: who leads, the leader's news, the store's copy."""

    def leader_url(self, name: str) -> str | None: ...
    async def news(self, url: str, name: str, branch: str, after: int, timeline: str,
                   wait: float) -> News: ...
    async def hydrate(self, name: str, branch: str, path: Path) -> tuple[str, int]: ...


class Copy:
    """One replica file and the connection whose EXCLUSIVE lock orders page writes with
    readers. Every method runs on a worker thread."""

    def __init__(self, path: Path, busy_timeout: float):
        self.path = path
        self.busy_timeout = busy_timeout
        self.fd = -1  # mutate: harmless constant (any negative: none open)
        self.conn: apsw.Connection | None = None
        # (any start: no reader opens before open() stamps the file)
        self.counter = 0  # mutate: harmless (the header's change counter, as last written)
        self.cookie = b""  # mutate: harmless (open() stamps the file, and sets it)
        self.broken = False  # an apply failed half-way: its lock stays held until closed

    def open(self) -> None:
        """Put the hydrated file in rollback-journal mode, then open the applier."""
        self.fd = os.open(self.path, os.O_RDWR)
        header = bytearray(os.pread(self.fd, HEADER, 0))
        page_size = struct.unpack_from(">H", header, 16)[0]
        page_size = 65536 if page_size == 1 else page_size  # 1 stands for 65536
        self._stamp(header, os.fstat(self.fd).st_size // page_size)  # restored to the byte
        self.conn = apsw.Connection(str(self.path))
        # mutate: harmless constant (milliseconds: one more does not matter)
        self.conn.set_busy_timeout(round(self.busy_timeout * 1000))

    def _stamp(self, header: bytearray, db_pages: int) -> None:
        """Rollback-journal mode (bytes 18-19), a new change counter valid for the size in
        the header (24, 28, 92): readers see a changed file, and its size."""
        # mutate: harmless constant (any change of the counter drops the readers' caches)
        self.counter = (self.counter + 1) & 0xFFFFFFFF
        header[18] = header[19] = 1
        struct.pack_into(">II", header, 24, self.counter, db_pages)
        struct.pack_into(">I", header, 92, self.counter)
        self.cookie = bytes(header[40:44])
        os.pwrite(self.fd, header, 0)

    def apply(self, segments: list[bytes], after: int) -> tuple[int, bool, float]:
        """Write the commits after txid ``after`` (contiguous: LogError otherwise); the
        txid reached, whether the schema changed, and the last commit's time."""
        commits: list[Commit] = []
        for data in segments:
            _, found = decode_segment(data, "feed")
            commits += [c for c in found if c.txid > after + len(commits)]
        for i, commit in enumerate(commits):
            if commit.txid != after + 1 + i:
                raise LogError(f"the feed skips from txid {after + i} to {commit.txid}")
        if not commits:
            return after, False, 0.0
        assert self.conn is not None and not self.broken
        self.conn.execute("BEGIN EXCLUSIVE")  # waits out readers; new ones wait for it
        try:
            for commit in commits:
                apply_commit(self.fd, commit)
            last = commits[-1]
            os.ftruncate(self.fd, last.db_pages * last.page_size)
            header = bytearray(os.pread(self.fd, HEADER, 0))
            cookie = self.cookie
            self._stamp(header, last.db_pages)
        except BaseException:
            # half a commit may be in the file (a full disk): no reader may see it, so the
            # lock stays held until the copy is closed and removed
            self.broken = True
            raise
        self.conn.execute("ROLLBACK")
        return last.txid, self.cookie != cookie, last.time

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()  # mutate: harmless delete (its last reference goes next)
            self.conn = None
        if self.fd >= 0:  # mutate: harmless (never 0: the process's stdin)
            os.close(self.fd)  # after SQLite's connections: closing drops the process's locks
            self.fd = -1  # mutate: harmless constant (any negative: none open)


class Replica:
    """A branch followed from its leader. Create, then :meth:`start` (hydrates)."""

    def __init__(self, name: str, branch: str, folder: Path, settings: Settings,
                 executor: Executor, source: Source):
        self.name = name
        self.branch = branch
        self.folder = folder
        self.settings = settings
        self.executor = executor
        self.source = source
        self.db: Database | None = None  # the current copy's readers
        self.copy: Copy | None = None
        self.txid = 0  # mutate: harmless (hydrate sets it before anything reads it)
        self.timeline = ""  # mutate: harmless (hydrate sets it before anything reads it)
        self.closed = False
        self.last_used = time.monotonic()
        self.lag = 0.0  # seconds from the leader's durable commit to its apply here (last)
        self._reached = asyncio.Event()  # set and replaced at each apply or rebuild
        self._task: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._hydrate()
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _hydrate(self) -> None:
        """A new copy from the store; reads move to it, the old one closes after its reads."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.branch}-{secrets.token_hex(4)}.db"
        copy = Copy(path, self.settings.busy_timeout)
        try:
            timeline, txid = await self.source.hydrate(self.name, self.branch, path)
            await self._run(copy.open)
            db = Database(self.name, self.branch, str(path), self.settings, self.executor,
                          follower=True)
            await db.open_follower(txid, timeline)
        except BaseException:
            await self._run(_remove, copy)
            raise  # mutate: harmless delete (what follows needs what failed: it raises too)
        old_db, old_copy = self.db, self.copy
        self.db, self.copy, self.txid, self.timeline = db, copy, txid, timeline
        self._wake()
        METRICS.replica_hydrations.inc()
        if old_db is not None and old_copy is not None:  # mutate: harmless boolop (set together)
            task = asyncio.get_running_loop().create_task(self._retire(old_db, old_copy))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    async def _retire(self, db: Database, copy: Copy) -> None:
        deadline = time.monotonic() + CLOSE_WAIT
        while db.active and time.monotonic() < deadline:  # mutate: harmless compare (<=)
            await asyncio.sleep(0.01)
        db.close()
        await self._run(_remove, copy)

    def _wake(self) -> None:
        self._reached.set()
        self._reached = asyncio.Event()

    async def _follow(self) -> None:
        """Ask the leader for news until this node leads the database or the replica closes."""
        while not self.closed:
            url = self.source.leader_url(self.name)
            if url is None:  # this node leads it now: the engine serves it from its own copy
                break
            try:
                news = await self.source.news(url, self.name, self.branch, self.txid,
                                              self.timeline, FEED_WAIT)
                if news.timeline != self.timeline or news.segments is None:
                    await self._hydrate()
                elif news.segments:
                    await self._apply(news.segments)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the leader unreachable, a copy failing: again soon
                log.info("%s/%s: following the leader: %r", self.name, self.branch, exc)
                if self.closed:
                    break
                await asyncio.sleep(RETRY)
        self.closed = True

    async def _apply(self, segments: list[bytes]) -> None:
        db, copy = self.db, self.copy
        assert db is not None and copy is not None
        # what a read may see from the instant the lock is released (database.py)
        visible = max(read_header(s, "feed").last_txid for s in segments)
        inline_after, db.inline_after = db.inline_after, math.inf  # reads off the loop
        db.visible = max(db.visible, visible)
        try:
            done = await self._run(copy.apply, segments, self.txid)
        except BaseException:
            db.visible = db.txid  # nothing of it is visible (or the copy is dropped)
            if copy.broken:  # no read of it from now: the engine opens a new replica
                self.closed = True
                log.error("%s/%s: a replica's apply failed half-way; it is dropped",
                          self.name, self.branch)
            raise  # mutate: harmless delete (what follows needs what failed: it raises too)
        finally:
            if not copy.broken:  # else it stays locked: no read may wait for it on the loop
                db.inline_after = inline_after
        txid, schema, when = done
        if when:
            self.lag = max(0.0, time.time() - when)
            METRICS.replica_lag.observe(self.lag)
        if schema:
            db.schema_generation += 1
        db.txid = self.txid = db.visible = txid
        self._wake()
        METRICS.replica_applied.inc()

    async def reached(self, txid: int, timeline: str | None, timeout: float) -> bool:
        """Whether the copy holds ``txid`` of ``timeline`` (None: this one), waiting up to
        ``timeout`` for it."""
        deadline = time.monotonic() + timeout
        while True:
            if timeline is not None and timeline != self.timeline:
                return False  # mutate: harmless return (callers test its truth only)
            if self.txid >= txid:
                return True
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:  # mutate: harmless (a wait of 0 s)
                return False  # mutate: harmless return (callers test its truth only)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reached.wait(), left)

    @property
    def idle(self) -> bool:
        return self.db is None or self.db.active == 0

    async def close(self) -> None:
        """Stop following, wait for the reads (bounded), remove the files."""
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                # mutate: harmless delete (cancelled, it ends before the awaits below do)
                await self._task
        if self.db is not None and self.copy is not None:  # mutate: harmless boolop (set together)
            await self._retire(self.db, self.copy)
        for task in list(self._retired):
            with contextlib.suppress(Exception):
                await task


def _remove(copy: Copy) -> None:
    copy.close()
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{copy.path}{suffix}")


class Replicas:
    """The replicas of one node: opened on a read, closed when idle or led here."""

    def __init__(self, root: Path, settings: Settings, executor: Executor, source: Source):
        self.root = root
        self.settings = settings
        self.executor = executor
        self.source = source
        self.open: dict[Key, Replica] = {}
        self.opening: dict[Key, asyncio.Task[None]] = {}

    def start(self) -> None:
        """Files of replicas a killed process left behind go."""
        shutil.rmtree(self.root, ignore_errors=True)

    def get(self, name: str, branch: str) -> Replica | None:
        """The branch's replica if it is ready; else None, and it starts opening."""
        key = (name, branch)
        replica = self.open.get(key)
        if replica is not None and not replica.closed:
            replica.last_used = time.monotonic()
            return replica
        if replica is not None:
            self._drop(key)
        if key not in self.opening and not self._room():
            return None  # max_open replicas, all busy: the leader answers
        if key not in self.opening:
            task = asyncio.get_running_loop().create_task(self._open(key))
            self.opening[key] = task
        return None  # mutate: harmless delete (falling off the end returns None too)

    def _room(self) -> bool:
        """Whether another replica may open: at most ``max_open`` (as for the branches a node
        leads), closing the least recently used idle one to make room."""
        if len(self.open) + len(self.opening) < self.settings.max_open:
            return True
        idle = [(r.last_used, k) for k, r in self.open.items() if r.idle]
        if not idle:
            return False  # mutate: harmless return (callers test its truth only)
        self._drop(min(idle)[1])
        return True

    async def _open(self, key: Key) -> None:
        name, branch = key
        replica = Replica(name, branch, self.root / name, self.settings, self.executor,
                          self.source)
        try:
            await replica.start()
            self.open[key] = replica
        except Exception as exc:
            log.warning("%s/%s: no replica (%r); reads go to the leader", name, branch, exc)
            await asyncio.sleep(RETRY)  # not tried again at once by the next read
        finally:
            self.opening.pop(key, None)

    def _drop(self, key: Key) -> None:
        replica = self.open.pop(key, None)
        if replica is not None:
            task = asyncio.get_running_loop().create_task(replica.close())
            self.opening.setdefault(key, task)  # reopened once it is gone
            task.add_done_callback(lambda _: self.opening.pop(key, None))

    def close_database(self, name: str) -> None:
        """Close every replica of ``name`` (deleted, or led here from now)."""
        for key in [k for k in self.open if k[0] == name]:
            self._drop(key)

    def close_idle(self, cutoff: float) -> int:
        """Close the replicas unused since ``cutoff`` (monotonic) or no longer following."""
        due = [k for k, r in self.open.items()
               # mutate: harmless compare (at the cutoff itself either way)
               if r.closed or (r.idle and r.last_used < cutoff)]
        for key in due:
            self._drop(key)
        return len(due)

    async def close_all(self) -> None:
        for task in list(self.opening.values()):
            task.cancel()
        replicas = list(self.open.values())
        self.open.clear()
        # mutate: harmless constant (a replica's close raises nothing of its own)
        await asyncio.gather(*(r.close() for r in replicas), return_exceptions=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def status(self) -> list[dict[str, object]]:
        """What ``GET /v1/cluster`` shows of each replica."""
        return [{"database": r.name, "branch": r.branch, "txid": r.txid,
                 # mutate: harmless constant (digits shown)
                 "timeline": r.timeline, "lag_seconds": round(r.lag, 4)}
                for r in self.open.values()]
