"""The shipper: one timeline's commits -> segments in the object store, in order, no gaps.

Commits are appended as they happen (from any thread), or marks of them that
``prepare`` turns into commits, pages and all, on a worker thread just before a
segment is encoded (the engine's capture reads the -wal there, off the commit
path). A background task on the event loop seals the open segment and uploads
it when it is due:

- ``local`` durability: ``sync_interval`` after its first commit (or once it
  reaches ``max_segment_bytes``); the commit was acknowledged after the local
  fsync and reaches the store within the interval;
- ``remote`` durability: the engine awaits :meth:`wait_durable` before
  acknowledging; a waiter makes the upload start at once, and the commits that
  arrive while one upload is in flight share the next one (group commit again).

Segments are uploaded one at a time, in txid order, each retried with
exponential backoff until it is in the store, so the log never has a gap and
``durable_txid`` only moves forward over contiguous commits. The engine may
checkpoint the WAL only up to ``durable_txid``.

An upload is ``If-None-Match: *`` (write-once). If the key already exists with
the same bytes, an earlier attempt succeeded after all (a timeout); if with
bytes that fail their checksum, an earlier attempt was cut short and is
overwritten; if with a different valid segment, another writer owns this
timeline: the shipper stops with LogConflict rather than fork the history.

A stored segment is not yet history: with a ``writer`` (the engine always gives
one: ``timeline.Writer``, this node's fenced epoch on the timeline), its commit
point is the conditional write of the timeline's record that moves the head over
it. Only then is it durable. A writer fenced out by another one gets FencedOut
there; the shipper stops, and nothing it had not committed is reported durable.
The commit of one segment overlaps the upload of the next (commits still happen
one at a time, in txid order: each waits for the one before it), so under load a
segment costs about one store round trip, not two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from shoal.log import layout
from shoal.log.errors import CorruptObject, LogConflict, LogError
from shoal.log.feed import Feed
from shoal.log.segment import Commit, decode_segment, encode_segment
from shoal.log.timeline import Writer
from shoal.metrics import METRICS
from shoal.storage.base import NotFound, ObjectInfo, ObjectStore, PreconditionFailed

log = logging.getLogger("shoal.log.shipper")


@dataclass(frozen=True)
class Backoff:
    """Retry delays: initial * factor**attempt, capped, with jitter (0.5x to 1x)."""

    initial: float = 0.05
    maximum: float = 5.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        return min(self.maximum, self.initial * self.factor ** min(attempt, 64)) \
            * random.uniform(0.5, 1.0)


class Entry(Protocol):
    """What the shipper queues: a Commit, or anything ``prepare`` turns into one."""

    @property
    def txid(self) -> int: ...
    @property
    def time(self) -> float: ...
    @property
    def size(self) -> int: ...


Prepare = Callable[[Sequence[Entry]], list[Commit]]


class Shipper:
    """Ships one timeline. Create on the event loop, then :meth:`start`."""

    def __init__(self, store: ObjectStore, db: str, timeline: str, *, durable_txid: int,
                 sync_interval: float = 1.0, max_segment_bytes: int = 8 << 20,
                 backoff: Backoff | None = None, executor: Executor | None = None,
                 on_durable: Callable[[int], None] | None = None,
                 prepare: Prepare | None = None,
                 on_failure: Callable[[LogError], None] | None = None,
                 writer: Writer | None = None, follow_interval: float | None = None):
        self.store = store
        self.writer = writer  # the commit point (None: segments are history once stored)
        self.db = db
        self.timeline = timeline
        self.sync_interval = sync_interval
        # while a follower follows: ship this soon, so that replicas lag little
        self.follow_interval = min(sync_interval, follow_interval or sync_interval)
        self.max_segment_bytes = max_segment_bytes
        self.backoff = backoff or Backoff()
        self.executor = executor
        self.on_durable = on_durable
        self.prepare = prepare  # entries -> commits, on a worker thread, just before encoding
        self.on_failure = on_failure  # called once if shipping stops for good
        self.durable_txid = durable_txid  # every txid <= this is in the store
        self.head_txid = durable_txid  # the last appended
        self.shipped_bytes = 0  # compressed bytes uploaded (for the snapshot policy)
        self.segments_shipped = 0
        self.failures = 0  # failed upload attempts, all retried
        self.last_error: BaseException | None = None
        self.failed: LogError | None = None  # fatal: nothing more will ship
        self._lock = threading.Lock()
        self._pending: list[Entry] = []
        self._sealed: list[Entry] = []  # taken for upload, not yet durable (up to two segments)
        self._sealed_bytes = 0
        self._pending_bytes = 0
        self._first_pending_at = 0.0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.feed = Feed(durable_txid)  # the durable segments, for followers (log/feed.py)

    # -- feeding --------------------------------------------------------------------------
    @property
    def backlog_bytes(self) -> int:
        """Page bytes appended but not yet durable, the segment in flight included (for
        back-pressure and metrics)."""
        return self._pending_bytes + self._sealed_bytes

    @property
    def unshipped(self) -> int:
        """Commits appended but not yet durable."""
        return self.head_txid - self.durable_txid

    def oldest_unshipped(self) -> float | None:
        """Commit time of the oldest commit not yet durable (None if every one is)."""
        with self._lock:
            oldest = self._sealed or self._pending
            return oldest[0].time if oldest and self.head_txid > self.durable_txid else None

    def append(self, commit: Entry) -> None:
        """Add the next commit (txid = head + 1). Thread-safe; never blocks on the store."""
        with self._lock:
            if commit.txid != self.head_txid + 1:
                raise LogError(f"timeline {self.timeline}: commit {commit.txid} appended "
                               f"after {self.head_txid}: txids must be contiguous")
            first = not self._pending
            self._pending.append(commit)
            self._pending_bytes += commit.size
            self.head_txid = commit.txid
            if first:
                self._first_pending_at = self._loop.time()
            wake = first or self._pending_bytes >= self.max_segment_bytes
        if wake:
            self._poke()

    def follow(self) -> None:
        """Someone reads what this branch ships (a change feed's consumer): ship every
        ``follow_interval`` from now on, the segment open now included."""
        if not self.feed.followed:
            self.feed.follow()
            self._poke()
        else:
            self.feed.follow()

    def _poke(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def wait_durable(self, txid: int) -> None:
        """Return once every commit up to ``txid`` is in the store (remote durability)."""
        if txid <= self.durable_txid:
            return
        if self.failed is not None:
            raise self.failed
        if txid > self.head_txid:
            raise ValueError(f"txid {txid} was never appended (head is {self.head_txid})")
        fut: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append((txid, fut))
        self._wake.set()
        await fut

    async def flush(self) -> None:
        """Ship everything appended so far and wait for it."""
        await self.wait_durable(self.head_txid)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._task = self._loop.create_task(self._run(), name=f"shipper-{self.timeline}")

    async def close(self, flush: bool = True) -> None:
        """Stop shipping, after shipping everything appended if ``flush``."""
        try:
            if flush and self.failed is None:
                await self.flush()
        finally:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            for _, fut in self._waiters:
                if not fut.done():
                    fut.set_exception(LogError(f"shipper of timeline {self.timeline} closed"))
            self._waiters.clear()
            self.feed.end()

    # -- the loop -------------------------------------------------------------------------
    def _due_in(self) -> float | None:
        """Seconds until the open segment must ship (0: now), None if nothing is pending."""
        with self._lock:
            if not self._pending:
                return None
            if self._pending_bytes >= self.max_segment_bytes:
                return 0.0
            if any(txid > self.durable_txid for txid, _ in self._waiters):
                return 0.0
            interval = self.follow_interval if self.feed.followed else self.sync_interval
            return max(0.0, self._first_pending_at + interval - self._loop.time())

    def _take(self) -> list[Entry]:
        """Seal the open segment: the pending commits up to max_segment_bytes (at least one)."""
        with self._lock:
            size = 0
            count = 0
            for commit in self._pending:
                if count and size + commit.size > self.max_segment_bytes:
                    break
                size += commit.size
                count += 1
            batch = self._pending[:count]
            self._pending = self._pending[count:]
            self._sealed = self._sealed + batch
            self._sealed_bytes += size
            self._pending_bytes -= size
            if self._pending:
                self._first_pending_at = self._loop.time()
            return batch

    async def _run(self) -> None:
        committing: asyncio.Task[None] | None = None  # the previous segment's commit
        try:
            while self.failed is None:
                due = self._due_in()
                if due is None or due > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), due)
                    continue
                batch = self._take()
                try:
                    info = await self._store(batch)
                    if committing is not None:
                        await committing  # commits land in order (a failure reports itself)
                        committing = None
                    if self.failed is not None:
                        return  # what was just stored is not history: it stays an orphan
                    if info is None:
                        self._durable(batch[-1].txid)
                    else:
                        committing = self._loop.create_task(self._commit(batch, info))
                except LogError as exc:
                    self._fail(exc)
                except Exception as exc:  # a bug (e.g. a malformed commit): stop loudly
                    self._fail(LogError(f"shipping timeline {self.timeline} failed: {exc!r}"),
                               exc)
        finally:
            if committing is not None and not committing.done():
                committing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await committing

    def _durable(self, txid: int) -> None:
        with self._lock:
            self.durable_txid = txid
            self._sealed = [e for e in self._sealed if e.txid > txid]
            self._sealed_bytes = sum(e.size for e in self._sealed)
        keep = []
        for want, fut in self._waiters:
            if want <= txid:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((want, fut))
        self._waiters = keep
        self.feed.durable(txid)
        if self.on_durable is not None:
            try:
                self.on_durable(txid)
            except Exception:  # the commit is durable whatever a listener does
                log.exception("on_durable callback of %s/%s failed", self.db, self.timeline)

    def _fail(self, exc: LogError, bug: BaseException | None = None) -> None:
        """Stop for good; a ``bug`` (not the log's own error) is logged with its traceback."""
        if self.failed is not None:
            return
        log.error("shipping of %s/%s stopped: %s", self.db, self.timeline, exc, exc_info=bug)
        self.failed = exc
        self._wake.set()
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(exc)
        self._waiters.clear()
        self.feed.end()
        if self.on_failure is not None:
            self.on_failure(exc)

    def _encode(self, batch: list[Entry]) -> bytes:
        """Worker thread: the batch's commits (read by ``prepare``) as one segment."""
        commits = batch if self.prepare is None else METRICS.cpu("capture", self.prepare, batch)
        return METRICS.cpu("encode", encode_segment, commits)

    async def _retrying(self, what: str, fn: Callable[[], object]) -> None:
        """Run fn on an I/O thread until it succeeds: a store failure is retried with
        backoff, forever (the log must not have a gap); a LogError is final."""
        attempt = 0
        while True:
            try:
                await self._loop.run_in_executor(self.executor, fn)
                self.last_error = None
                return
            except LogError:
                raise
            except Exception as exc:  # any failure, the store's or not: a gap is worse
                self.failures += 1
                METRICS.log_upload_failures.inc()
                self.last_error = exc
                log.warning("%s failed (attempt %d): %r", what, attempt + 1, exc)
                await asyncio.sleep(self.backoff.delay(attempt))
                attempt += 1

    async def _store(self, batch: list[Entry]) -> layout.SegmentInfo | None:
        """Encode and upload the batch as one segment (write-once); with a writer, the
        segment as listed, for its commit (None: without one, stored is durable)."""
        first, last, when = batch[0].txid, batch[-1].txid, batch[-1].time
        key = (self.writer.segment_key(first, last, when) if self.writer is not None else
               layout.segment_key(self.db, self.timeline, first, last, when))
        data = await self._loop.run_in_executor(self.executor, self._encode, batch)
        await self._retrying(f"upload of {key}",
                             lambda: METRICS.cpu("upload", self._upload, key, data))
        self.shipped_bytes += len(data)
        self.segments_shipped += 1
        self.feed.stored(first, last, data)
        METRICS.log_segments.inc()
        METRICS.log_bytes.inc(len(data))
        return layout.parse_segment(ObjectInfo(key, len(data))) if self.writer else None

    async def _commit(self, batch: list[Entry], info: layout.SegmentInfo) -> None:
        """The commit point of a stored segment (its own task, overlapping the next upload);
        then it is durable. A failure stops the shipper."""
        writer = self.writer
        assert writer is not None
        try:
            await self._retrying(f"commit of {info.key}",
                                 lambda: writer.commit(info, batch[-1].time))
        except LogError as exc:
            self._fail(exc)
            return
        except Exception as exc:  # a bug: stop loudly, as the loop does
            self._fail(LogError(f"committing on timeline {self.timeline} failed: {exc!r}"), exc)
            return
        self._durable(batch[-1].txid)

    def _upload(self, key: str, data: bytes) -> None:
        """One attempt to make ``key`` hold ``data`` (worker thread)."""
        try:
            self.store.put(key, data, if_none_match="*")
            return
        except PreconditionFailed:
            pass
        try:
            existing = self.store.get(key).data
        except NotFound:  # vanished between the two calls: try again from the start
            raise OSError(f"{key} vanished during a conditional upload") from None
        if existing == data:
            return  # an earlier attempt landed after all
        try:
            decode_segment(existing, key)
        except CorruptObject:
            self.store.put(key, data)  # our own cut-short attempt: replace it
            return
        raise LogConflict(f"segment {key} already holds different commits: another writer "
                          f"is shipping timeline {self.timeline}", key)
