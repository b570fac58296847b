"""The commit log of one open branch: capture every commit, ship it, checkpoint once durable.

The writer connection runs with auto-checkpoint off and no checkpoint on close,
and a WAL hook that reports the frame count after each commit. Right after
every COMMIT (on the worker thread, under the write lock) :meth:`Journal.captured`
marks the commit (the txid it wrote into ``_cf_SHOAL_state``, its time, its last
WAL frame: no I/O) and hands the mark to the shipper, which reads the pages of
a whole segment's marks from the ``-wal`` file at once, off the commit path.

Frames leave the WAL only through a checkpoint, and Shoal runs every checkpoint
itself, only after the frames it backfills are durable in the store: so the WAL
always holds every commit the store lacks, and a node killed at any moment
recovers them (``Capture.recover``) when the branch next opens. Right after a
complete checkpoint the database file holds exactly the state at the last txid,
which is when a snapshot is taken, if the policy says one is due.

Before its first commit, an open branch takes its timeline (``claim``: a new epoch
on the timeline's record, conditional on the record this node opened; see
``log/timeline.py``), and every segment becomes history only when the record's
head moves over it. If another writer took the timeline in between (a node that
lost the store's lease and did not know yet, say), the claim or the commit fails:
no remote-durability write is acknowledged, and commits that were acknowledged
under local durability are reported lost, loudly (an ERROR line and
``shoal_log_fenced_commits_total``); the branch then refuses writes and its local
copy is discarded when it closes, so the next open hydrates from the store.

If capture ever fails (the WAL does not hold exactly the marked commits: a bug,
or a commit that bumped no txid), the log is re-based: the WAL is checkpointed
and a snapshot at the current txid uploaded; the log then continues from there.
No commit is ever silently left out: the commits between the last shipped one and
the snapshot are only restorable through it (point-in-time restore inside that
range fails with a clear error).

The same re-base is also done on purpose (:meth:`Journal.rebase`): compaction's
VACUUM is a commit that rewrites every page, so rather than ship it as a segment
the log continues from a snapshot of the compacted file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import apsw

from shoal.engine.connection import Connection
from shoal.errors import Code, ShoalError
from shoal.feed.spool import SUFFIX as SPOOL_SUFFIX
from shoal.log.branch import Branch
from shoal.log.capture import Capture
from shoal.log.errors import LogConflict, LogError, WalError
from shoal.log.headroom import Headroom
from shoal.log.shipper import Shipper
from shoal.log.snapshot import SnapshotPolicy, take_snapshot
from shoal.log.timeline import Timeline, Writer, fence
from shoal.metrics import METRICS
from shoal.settings import Settings
from shoal.storage.base import ObjectStore, StoreError
from shoal.storage.fenced import Fenced

log = logging.getLogger("shoal.journal")


class Logged(Protocol):
    """What the journal needs of the branch it logs (engine/database.py's Database): its
    txid, its write lock (no commit lands while held), its writer connection (to
    checkpoint) and whether it closed."""

    txid: int
    write_lock: asyncio.Lock
    writer: Connection | None
    closed: bool

    def recovered_changes(self, first: int, last: int) -> dict[int, bytes | None] | None:
        """Worker thread: the row changes its file keeps for txids first..last (a txid's
        None: not captured; None: the branch captures none)."""

FLUSH_UNDER_LOCK = 2.0  # seconds a checkpoint may hold writers back waiting for an upload
LOCAL_FILES = ("", "-wal", "-shm", "-journal", SPOOL_SUFFIX)  # the change feed's spool too


def marker_path(path: Path) -> Path:
    """The file beside a branch's database naming the timeline it holds."""
    return path.with_suffix(".timeline")


def discard_local(path: Path) -> None:
    """Delete a branch's local files (marker first: a half-deleted copy is never used)."""
    with contextlib.suppress(FileNotFoundError):
        marker_path(path).unlink()
    for suffix in LOCAL_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def quarantine(path: Path) -> Path:
    """Set a branch's local copy aside as ``<branch>.db.fenced-<UTC time>`` (with its WAL):
    it holds commits that are not history, which an operator may still want to read.
    The branch itself then has no local copy (the next open hydrates from the store)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    aside = path.with_name(f"{path.name}.fenced-{stamp}")
    with contextlib.suppress(FileNotFoundError):
        marker_path(path).unlink()
    for suffix in LOCAL_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    return aside


@dataclass(frozen=True)
class LogState:
    """What the store holds of a branch's timeline when the branch opens."""

    branch: Branch
    head_txid: int  # every txid up to this is in the store
    head_time: float  # commit time of the head (a floor: times never go backwards)
    snapshot_time: float  # of the timeline's latest snapshot (its creation if none)
    log_bytes: int  # segment bytes after that snapshot
    timeline: Timeline | None = None  # the timeline's record as read (the claim's condition)
    without_old: tuple[str, ...] = ()  # the database's tables whose feed keeps no old rows


class CheckpointBlocked(TimeoutError):
    """Readers kept a TRUNCATE checkpoint from completing (the log is not re-based yet)."""


# What taking a timeline, shipping and storing a snapshot fail with when the store is at
# fault (its errors; Fenced: no lease; LogError: another writer, a stopped shipper; a wait
# that timed out): 503 STORAGE_UNAVAILABLE. Anything else is a bug and goes up as it is.
STORE_FAILURES = (StoreError, Fenced, LogError, TimeoutError)


def _unfenced() -> None:
    """The fence of a node without a lease (tests that drive a Registry directly)."""


@dataclass(frozen=True)
class Stores:
    """The store twice: retrying one-off calls, and raw for the shipper (it retries itself)."""

    store: ObjectStore
    raw: ObjectStore
    io: Executor  # threads for store calls, apart from the SQL threads
    fence: Callable[[], None] = _unfenced  # raises Fenced while this node may not write


class Journal:
    """One open branch's link to the commit log. Create, then :meth:`start` once open."""

    def __init__(self, stores: Stores, name: str, state: LogState, path: str, settings: Settings,
                 executor: Executor, node: str = ""):
        self.stores = stores
        self.node = node  # named on the timeline's record when this node takes it
        self.record = state.timeline  # the timeline's record as the branch opened on it
        self.writer: Writer | None = None  # this node's epoch on the timeline, once claimed
        self.fenced: LogConflict | None = None  # another writer took the timeline
        self._claim_lock = asyncio.Lock()
        self.name = name
        self.branch = state.branch
        self.timeline = state.branch.timeline
        self.path = path
        self.executor = executor
        self.remote = settings.durability == "remote"
        self.timeout: float = settings.storage_timeout
        self.sync_interval: float = settings.sync_interval
        self.follow_interval: float = settings.replica_sync_interval
        self.checkpoint_frames: int = settings.checkpoint_frames
        self.policy = SnapshotPolicy(settings.snapshot_log_bytes, settings.snapshot_log_ratio,
                                     settings.snapshot_interval)
        self.head_txid = state.head_txid
        self.capture = Capture(f"{path}-wal", last_time=state.head_time)
        self.headroom = Headroom(f"{path}-wal")
        self.frames = 0  # WAL frames after the last commit, as the WAL hook reported
        self.broken = False  # a commit could not be captured: re-base on a snapshot
        self.shipper: Shipper | None = None
        self.snapshot_time = state.snapshot_time
        self.log_bytes = state.log_bytes  # shipped since the last snapshot
        self._shipped_seen = 0
        self.backfilled_txid = -1  # the last complete checkpoint's txid
        self.db: Logged | None = None
        self._closing = False
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._repair_task: asyncio.Task[None] | None = None
        # Held while a checkpoint writes the database file or a snapshot reads it: the
        # file must hold exactly one txid's state for the whole read.
        self._file_lock = asyncio.Lock()

    # -- hooks (worker thread, under the write lock) --------------------------------------------
    def fence(self) -> None:
        """Fenced unless this node may write to the store now (it holds the lease)."""
        self.stores.fence()

    def hook(self, conn: apsw.Connection, name: str, frames: int) -> int:
        self.frames = frames
        return apsw.SQLITE_OK

    def captured(self, txid: int, changes: bytes | None = None) -> None:
        """The commit just made as txid, with its row changes: read its frames and queue
        them for shipping."""
        if self.broken or self.shipper is None:
            return
        if self.writer is None:  # every write path claims first: a bug, never ship unfenced
            log.error("%s/%s: txid %d committed before the timeline was taken; the log will "
                      "be re-based on a snapshot", self.name, self.branch.name, txid)
            self.broken = True
            return
        try:
            self.shipper.append(self.capture.mark(txid, self.frames, changes))
        except Exception as exc:  # a WalError or a bug: either way a snapshot covers it
            log.error("capture of %s/%s txid %d failed, the log will be re-based on a "
                      "snapshot: %s", self.name, self.branch.name, txid, exc)
            self.broken = True
        if self.headroom.keep(self.frames, self.capture.page_size):
            with contextlib.suppress(RuntimeError):  # the I/O threads are shutting down
                self.stores.io.submit(self.headroom.sync)

    # -- opening ---------------------------------------------------------------------------------
    def _new_shipper(self, durable_txid: int) -> Shipper:
        shipper = Shipper(self.stores.raw, self.name, self.timeline, durable_txid=durable_txid,
                          sync_interval=self.sync_interval, executor=self.stores.io,
                          on_durable=self._on_durable, prepare=self.capture.read,
                          on_failure=self._on_failure, writer=self.writer,
                          follow_interval=self.follow_interval)
        shipper.start()
        self._shipped_seen = 0
        return shipper

    # -- taking the timeline ------------------------------------------------------------------
    async def take(self) -> Writer:
        """Fence: a new epoch on the timeline for this node, conditional on the head this
        branch opened at (LogConflict: another writer moved it on or retired it)."""
        async with self._claim_lock:
            if self.writer is not None:
                return self.writer
            if self.fenced is not None:
                raise self.fenced
            record = self.record
            assert record is not None, "a branch opened with its timeline's record"
            loop = asyncio.get_running_loop()
            try:
                taken = await loop.run_in_executor(
                    self.stores.io, fence, self.stores.store, record, self.node,
                    self.head_txid)
            except LogConflict as exc:
                self.fenced = exc
                raise
            self.writer = Writer(self.stores.store, taken)
            if self.shipper is not None:
                self.shipper.writer = self.writer
            return self.writer

    async def claim(self) -> None:
        """Take the timeline before the first write (every write path awaits this; after
        the first, it is an attribute read)."""
        if self.writer is not None:
            return
        try:
            await self.take()
        except LogConflict as exc:
            raise ShoalError(Code.STORAGE_UNAVAILABLE,
                             f"writes to {self.name}/{self.branch.name} are refused: {exc}",
                             hint="Another writer took this branch; retry: the next request "
                                  "reopens it from the object store.") from None
        except STORE_FAILURES as exc:
            raise ShoalError(Code.STORAGE_UNAVAILABLE,
                             f"writes to {self.name}/{self.branch.name} are refused: the "
                             f"object store failed taking the branch: {exc}") from None

    async def start(self, db: Logged) -> None:
        """Ship what the store lacks: the commits still in the WAL above the store's head
        (taking the timeline first; LogConflict if another writer took it)."""
        self.db = db
        loop = asyncio.get_running_loop()
        head = self.head_txid
        if db.txid > head:
            await self.take()
        self.shipper = self._new_shipper(head)
        try:
            commits = await loop.run_in_executor(self.executor, self.capture.recover, db.txid)
        except LogError as exc:
            log.error("recovering the WAL of %s/%s failed: %s", self.name, self.branch.name, exc)
            commits = []
        above = [c for c in commits if c.txid > head]
        if db.txid > head and (not above or above[0].txid != head + 1):
            log.error("%s/%s: the WAL lacks txids %d..%d that the store lacks too; re-basing "
                      "the log on a snapshot", self.name, self.branch.name, head + 1, db.txid)
            self.broken = True
            async with db.write_lock:
                await self.repair(db)
            return
        if above:  # their changes died with the process that made them: the file has them
            try:
                found = await loop.run_in_executor(self.executor, db.recovered_changes,
                                                   above[0].txid, above[-1].txid)
            except apsw.Error as exc:  # the commits ship all the same, their changes unknown
                log.error("%s/%s: the row changes of txids %d..%d could not be read back, "
                          "the change feed lacks them: %s", self.name, self.branch.name,
                          above[0].txid, above[-1].txid, exc)
                found = None
            if found is not None:
                above = [dataclasses.replace(c, changes=found.get(c.txid, b"")) for c in above]
        for commit in above:
            self.shipper.append(commit)

    # -- durability ------------------------------------------------------------------------------
    def _unavailable(self, txid: int, why: str) -> ShoalError:
        return ShoalError(Code.STORAGE_UNAVAILABLE,
                          f"txid {txid} of {self.name}/{self.branch.name} is committed on this "
                          f"node but not yet in the object store: {why}")

    async def durable(self, txid: int) -> None:
        """Wait until txid is in the store; STORAGE_UNAVAILABLE after storage_timeout.
        A capture failure on the way is waited out: the repair's snapshot covers txid."""
        shipper = self.shipper
        assert shipper is not None
        if txid <= shipper.durable_txid:
            return
        try:
            async with asyncio.timeout(self.timeout):
                while txid > shipper.durable_txid:
                    if self.broken or isinstance(shipper.failed, WalError):
                        await self._repaired()
                    else:
                        with contextlib.suppress(WalError):
                            await shipper.wait_durable(txid)
                    assert self.shipper is not None
                    shipper = self.shipper
        except TimeoutError:
            last = f" (last error: {shipper.last_error!r})" if shipper.last_error else ""
            raise self._unavailable(txid, f"no upload succeeded within storage_timeout "
                                          f"({self.timeout:g} s){last}") from None
        except LogError as exc:
            raise self._unavailable(txid, str(exc)) from None

    async def _repaired(self) -> None:
        """Wait for the repair of a capture failure (scheduled by _on_failure)."""
        task = self._repair_task
        if task is None or task.done():
            await asyncio.sleep(0.01)  # a commit's _mend_log is repairing: look again
            return
        with contextlib.suppress(Exception):  # logged by the task itself
            await asyncio.shield(task)

    @property
    def failed(self) -> LogError | None:
        """A fatal shipping error (another writer on this timeline): refuse writes."""
        if self.fenced is not None:
            return self.fenced
        failed = self.shipper.failed if self.shipper is not None else None
        return None if isinstance(failed, WalError) else failed

    def _on_failure(self, exc: LogError) -> None:
        """The shipper stopped. A capture failure is repaired at once (see _repair_now);
        another writer on the timeline fences this branch out for good."""
        if isinstance(exc, LogConflict):
            self._fenced_out(exc)
            return
        if isinstance(exc, WalError):
            log.error("capture of %s/%s failed, the log will be re-based on a snapshot: %s",
                      self.name, self.branch.name, exc)
            self.broken = True
            if self._repair_task is None or self._repair_task.done():
                self._repair_task = asyncio.get_running_loop().create_task(self._repair_now())

    def _fenced_out(self, exc: LogConflict) -> None:
        """Say loudly what is lost: the commits made here that never became history."""
        self.fenced = exc
        shipper = self.shipper
        lost = shipper.head_txid - shipper.durable_txid if shipper is not None else 0
        if lost > 0 and shipper is not None:
            METRICS.log_fenced_commits.inc(lost)
            acked = ("they had been acknowledged (durability local) and are lost" if not
                     self.remote else "none was acknowledged (durability remote)")
            log.error("%s/%s: fenced out of timeline %s: %s. Txids %d..%d were committed on "
                      "this node and are not history: %s", self.name, self.branch.name,
                      self.timeline, exc, shipper.durable_txid + 1, shipper.head_txid, acked)
        else:
            log.error("%s/%s: fenced out of timeline %s: %s", self.name, self.branch.name,
                      self.timeline, exc)

    async def _repair_now(self) -> None:
        """Re-base the log at once, not at the next commit (remote writers are waiting)."""
        db = self.db
        if db is None:
            return
        async with db.write_lock:
            if not self._closing and not db.closed:
                await self.mend(db)

    async def mend(self, db: Logged) -> None:
        """Under the write lock: repair the log if it is broken. A failure is logged; the
        next commit tries again."""
        if not self.broken:
            return
        try:
            await self.repair(db)
        except Exception:
            log.exception("repairing the commit log of %s/%s failed", self.name,
                          self.branch.name)

    # -- checkpoints and snapshots ---------------------------------------------------------------
    def _on_durable(self, txid: int) -> None:
        shipper = self.shipper
        if shipper is not None:
            self.log_bytes += shipper.shipped_bytes - self._shipped_seen
            self._shipped_seen = shipper.shipped_bytes
        db = self.db
        if self._closing or self._checkpoint_task is not None or db is None or db.closed:
            return
        if db.txid <= self.backfilled_txid:
            return
        if self.frames >= self.checkpoint_frames or self._snapshot_due():
            task = asyncio.get_running_loop().create_task(self._checkpoint(db))
            self._checkpoint_task = task
            task.add_done_callback(self._checkpoint_done)

    def _checkpoint_done(self, task: asyncio.Task[None]) -> None:
        self._checkpoint_task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("checkpoint of %s/%s failed: %r", self.name, self.branch.name,
                      task.exception())

    def _snapshot_due(self) -> bool:
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return False
        return self.policy.due(self.log_bytes, size, time.time() - self.snapshot_time)

    def _backfill(self, truncate: bool) -> bool:
        """Worker thread: checkpoint the WAL into the file; True if every frame went."""
        db = self.db
        assert db is not None and db.writer is not None
        complete = METRICS.cpu("checkpoint", db.writer.checkpoint, truncate)
        METRICS.log_checkpoints.inc()
        if complete and truncate:
            self.capture.restarted()
            self.headroom.truncated()
            self.frames = 0
        return complete

    async def _checkpoint(self, db: Logged) -> None:
        """Backfill durable frames; then, if due, snapshot the file while it holds one txid."""
        shipper = self.shipper
        assert shipper is not None
        try:  # wait outside the write lock, so a slow store never blocks writers here
            await asyncio.wait_for(shipper.wait_durable(db.txid), self.timeout)
        except (TimeoutError, LogError):
            return
        loop = asyncio.get_running_loop()
        async with db.write_lock:  # no commit lands from here to the checkpoint
            if self._closing or db.closed or self.broken:
                return
            try:  # one upload of what arrived meanwhile; writers wait for it, so bounded
                await asyncio.wait_for(shipper.flush(), min(self.timeout, FLUSH_UNDER_LOCK))
            except (TimeoutError, LogError):
                return
            await self._file_lock.acquire()
            try:
                complete = await loop.run_in_executor(self.executor, self._backfill, False)
            except BaseException:
                self._file_lock.release()
                raise
            txid, when = db.txid, self.capture.last_time
        try:  # writers go on (into the WAL) while the file is read for a snapshot
            if complete:
                self.backfilled_txid = txid
                if self._snapshot_due():
                    await self._snapshot(txid, when)
        finally:
            self._file_lock.release()

    async def _snapshot(self, txid: int, when: float) -> None:
        loop = asyncio.get_running_loop()
        shipped = self.log_bytes
        await loop.run_in_executor(self.stores.io, METRICS.cpu, "snapshot", take_snapshot,
                                   self.stores.store, self.name, self.timeline, self.path, txid,
                                   when, self.writer)
        METRICS.log_snapshots.inc()
        self.snapshot_time = time.time()
        self.log_bytes -= shipped
        log.info("snapshot of %s/%s at txid %d", self.name, self.branch.name, txid)

    async def _ship_captured(self) -> None:
        """Under the write lock: wait until every captured commit is in the store (after a
        capture failure nothing can ship: the snapshot that follows covers them)."""
        shipper = self.shipper
        assert shipper is not None
        if self.failed is not None:
            raise self.failed  # another writer owns the timeline: nothing to re-base
        await self.take()
        if shipper.failed is None:
            await asyncio.wait_for(shipper.flush(), self.timeout)

    async def _truncate(self) -> bool:
        """Under the write lock and the file lock: checkpoint the whole WAL into the file
        and truncate it; False if readers kept it from completing."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._backfill, True)

    async def settle(self, db: Logged) -> bool:
        """Under the write lock: ship every captured commit, then checkpoint the whole WAL
        into the file (TRUNCATE); a broken log is repaired instead (its commits cannot
        ship: only a snapshot may cover them). False if open read transactions keep the
        checkpoint from completing. Compaction runs this first, so that it VACUUMs only
        when the re-base that must follow can complete, and so that the WAL then holds
        nothing but the compaction's own commits (see Database.compact)."""
        if self.broken:
            try:
                await self.repair(db)
            except CheckpointBlocked:
                return False
            return True
        await self._ship_captured()
        async with self._file_lock:
            return await self._truncate()

    async def _rebase(self, db: Logged) -> None:
        """Under the write lock: ship what was captured, then re-base the log on a snapshot
        of the current state (txid ``db.txid``), taken after a full checkpoint.
        CheckpointBlocked if readers keep the checkpoint from completing."""
        await self._ship_captured()
        shipper, writer = self.shipper, self.writer
        assert shipper is not None and writer is not None
        loop = asyncio.get_running_loop()
        async with self._file_lock:
            if not await self._truncate():
                raise CheckpointBlocked(f"{self.name}/{self.branch.name}: readers kept the "
                                        f"checkpoint from finishing; the log will be repaired "
                                        f"after the next commit")
            when = max(self.capture.last_time, time.time())
            await loop.run_in_executor(self.stores.io, take_snapshot, self.stores.store,
                                       self.name, self.timeline, self.path, db.txid, when,
                                       writer)
        self.capture.last_time = when
        await shipper.close(flush=False)
        self.shipper = self._new_shipper(db.txid)
        self.snapshot_time, self.log_bytes = time.time(), 0
        self.backfilled_txid = db.txid
        self.broken = False
        METRICS.log_snapshots.inc()

    async def repair(self, db: Logged) -> None:
        """Under the write lock: after a capture failure, re-base the log on a snapshot of
        the current state (see _rebase)."""
        await self._rebase(db)
        log.warning("the log of %s/%s was re-based on a snapshot at txid %d", self.name,
                    self.branch.name, db.txid)

    async def rebase(self, db: Logged) -> None:
        """Under the write lock: re-base the log on a snapshot of the current state after
        commits made on purpose outside it (compaction's VACUUM). The caller set
        ``broken`` before making them, so that none was captured; an intended re-base,
        not a failure. CheckpointBlocked if readers keep the checkpoint from completing:
        the log then stays broken, and the next commit's mend re-bases it."""
        await self._rebase(db)
        log.info("the log of %s/%s continues from a snapshot of the compacted file at "
                 "txid %d", self.name, self.branch.name, db.txid)

    # -- closing ---------------------------------------------------------------------------------
    def beside(self, fn: Callable[[], None]) -> Future[None]:
        """Run ``fn`` on an I/O thread (an fsync beside the commit's own)."""
        return self.stores.io.submit(fn)

    def release(self) -> None:
        """The branch's connections are closing: let go of the -wal file."""
        self.capture.close()
        self.headroom.close()

    def closed(self) -> None:
        """The branch's connections are closed: a copy fenced out is not history; set it
        aside (the next open hydrates from the store)."""
        if self.fenced is not None:
            aside = quarantine(Path(self.path))
            log.error("%s/%s: this node's copy, fenced out, is set aside as %s; the branch "
                      "is hydrated from the store at its next open", self.name,
                      self.branch.name, aside)

    async def close(self, db: Logged, flush: bool = True, keep: bool = True) -> None:
        """Stop shipping, after shipping what is pending if ``flush`` (bounded); when all
        is durable and the files stay (``keep``), checkpoint and truncate the WAL so the
        next open starts clean."""
        self._closing = True
        for task in (self._checkpoint_task, self._repair_task):
            if task is not None:
                with contextlib.suppress(Exception):  # reported by the task or its callback
                    await asyncio.shield(task)
        shipper = self.shipper
        if shipper is None:
            return
        durable = not self.broken and shipper.durable_txid >= shipper.head_txid
        if not durable and flush and not self.broken and shipper.failed is None:
            # A store that is failing right now would make every close (and every request
            # waiting to reopen the branch) wait out the timeout: give up at once instead.
            timeout = self.timeout if shipper.last_error is None else 0.0
            try:
                await asyncio.wait_for(shipper.flush(), timeout)
                durable = True
            except (TimeoutError, LogError) as exc:
                log.warning("closing %s/%s with commits not yet in the store (they stay in "
                            "the local WAL and ship at the next open): %r", self.name,
                            self.branch.name, exc)
        await shipper.close(flush=False)
        if durable and keep and db.writer is not None and self.fenced is None:
            loop = asyncio.get_running_loop()
            async with self._file_lock:
                await loop.run_in_executor(self.executor, self._backfill, True)
