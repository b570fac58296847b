"""One open branch of a database: a writer with group commit, a reader pool, transactions.

Reads run on reader connections (``query_only``). A read whose SQL texts the database
has run quickly before is tried inline on the event loop, with a small time budget and
small SQLite limits (no thread hop: most point reads take microseconds); if it needs
more it is rerun on a worker thread with the full statement budget and the node's
limits. Any other read runs on a worker thread first: preparing SQL cannot be
interrupted everywhere, and its cost depends on the schema as much as on the text (a
view over views, chained generated columns), so SQL is prepared on the loop only once
known cheap, and known again after each schema change. A statement SQLite reports as
not read-only moves the whole request to the writer. Work on a worker thread whose
client went away is interrupted (``REQUEST_GONE``).

Writes queue for the writer task. It holds the write lock, takes every queued
job, runs each in its own SAVEPOINT of one transaction (a failing job rolls back
alone, and so does one that leaves deferred foreign keys unsatisfied, which would
otherwise fail the shared COMMIT), bumps the branch txid once, commits once (one
fsync), then answers all.
An interactive write transaction holds the same lock, so queued writers wait for
it at most ``busy_timeout`` and then get DATABASE_BUSY.

With a commit log (``journal``), every commit is marked right after COMMIT,
still under the write lock, and handed to the shipper (which reads its pages
from the WAL off the commit path); with
``remote`` durability the answers wait (in a task of their own, so the writer
keeps committing) until the commit is in the object store. While more than
``max_unshipped_bytes`` of commits wait for the store, new writes are refused.

Compaction (:meth:`Database.compact`) is the one commit made outside group commit and
transactions: a VACUUM under the write lock, after which the log is re-based on a
snapshot of the compacted file rather than shipping it as a segment.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import apsw

from shoal.engine import tables
from shoal.engine.connection import (
    DEFER_OFF,
    INLINE_VALUE_BYTES,
    TAG,
    Connection,
    Counters,
    Description,
    Limits,
    NeedsWriter,
    SoftDeadline,
    Statement,
    stopped,
)
from shoal.engine.journal import STORE_FAILURES, CheckpointBlocked
from shoal.errors import Code, ShoalError, from_sqlite
from shoal.feed import ChangeCapture, encode_changes
from shoal.feed.spool import Spool
from shoal.log.errors import LogConflict, LogError
from shoal.log.shipper import Shipper
from shoal.log.timeline import Writer
from shoal.metrics import METRICS
from shoal.settings import Settings
from shoal.storage.fenced import Fenced

log = logging.getLogger("shoal")


class Log(Protocol):
    """What a branch needs of its commit log (engine/journal.py's Journal): the WAL hook
    and the capture of each commit, the timeline's claim, durability, and the re-base and
    close steps, which take the branch itself (as journal.Logged)."""

    remote: bool  # durability remote: a commit is answered once in the store
    broken: bool  # set when a commit could not be captured: the log re-bases on a snapshot
    writer: Writer | None  # this node's epoch on the timeline, once claimed
    shipper: Shipper | None
    fenced: LogConflict | None  # another writer took the timeline

    @property
    def failed(self) -> LogError | None: ...
    def fence(self) -> None: ...
    def hook(self, conn: apsw.Connection, name: str, frames: int) -> int: ...
    def captured(self, txid: int, changes: bytes | None = None) -> None: ...
    def beside(self, fn: Callable[[], None]) -> Future[None]: ...
    async def claim(self) -> None: ...
    async def durable(self, txid: int) -> None: ...
    async def mend(self, db: Database) -> None: ...
    async def settle(self, db: Database) -> bool: ...
    async def rebase(self, db: Database) -> None: ...
    async def close(self, db: Database, flush: bool = True, keep: bool = True) -> None: ...
    def release(self) -> None: ...
    def closed(self) -> None: ...
T = TypeVar("T")



class Gone(Protocol):
    """Signals that a request's client went away (an asyncio.Future[None] is one): the
    callbacks added run, on the event loop, when it does."""

    def add_done_callback(self, fn: Callable[[Any], object], /) -> None: ...

    def remove_done_callback(self, fn: Callable[[Any], object], /) -> int: ...

    def done(self) -> bool: ...


# Set by the HTTP layer for each request (and a WebSocket's for its streams' work): the SQL
# work the request waits for is interrupted (reads, transaction statements) or given up (a
# write still queued, a wait for the write lock) when its client goes away, instead of
# running on, or holding the lock, for nobody.
REQUEST_GONE: contextvars.ContextVar[Gone | None] = \
    contextvars.ContextVar("shoal_request_gone", default=None)

async def _acquire(lock: asyncio.Lock, timeout: float, gone: Gone | None) -> bool:
    """Take ``lock`` within ``timeout`` seconds (False past it). If the request's client goes
    away meanwhile, stop waiting (``stopped()``): a transaction begun for nobody would hold
    the lock until it expired, and the others would wait for it."""
    if gone is None:
        try:
            await asyncio.wait_for(lock.acquire(), timeout)
            return True
        except TimeoutError:
            return False
    if gone.done():
        raise stopped()
    waiter = asyncio.ensure_future(lock.acquire())
    left = asyncio.get_running_loop().create_future()

    def leave(_: object) -> None:
        if not left.done():
            left.set_result(None)

    gone.add_done_callback(leave)
    try:
        await asyncio.wait((waiter, left), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        _give_up(lock, waiter)
        raise
    finally:
        gone.remove_done_callback(leave)
    if waiter.done() and not left.done():
        return True
    _give_up(lock, waiter)
    if left.done():
        raise stopped()
    return False


def _give_up(lock: asyncio.Lock, waiter: asyncio.Future[Any]) -> None:
    """Stop waiting for ``lock``; if the waiter already has it, give it back. (A waiter
    cancelled after the lock was handed to it passes it on: asyncio.Lock sees to that.)"""
    if not waiter.done():
        waiter.cancel()
    elif not waiter.cancelled() and waiter.exception() is None:
        lock.release()


# Internal SQL carries the per-process TAG so that no user statement can ever share
# its apsw statement-cache entry (the authorizer runs only at prepare time).
_NONCE = TAG
BEGIN = f"BEGIN /*{_NONCE}*/"
BEGIN_IMMEDIATE = f"BEGIN IMMEDIATE /*{_NONCE}*/"
COMMIT = f"COMMIT /*{_NONCE}*/"
ROLLBACK = f"ROLLBACK /*{_NONCE}*/"
SAVEPOINT = f"SAVEPOINT s{_NONCE}"
RELEASE = f"RELEASE s{_NONCE}"
ROLLBACK_TO = f"ROLLBACK TO s{_NONCE}"
SCHEMA_VERSION = f"PRAGMA schema_version /*{_NONCE}*/"
VACUUM = f"VACUUM /*{_NONCE}*/"
PAGE_BYTES = (f"SELECT c.page_count * s.page_size FROM pragma_page_count() c, "
              f"pragma_page_size() s /*{_NONCE}*/")
KNOWN_TEXTS = 1024  # SQL texts remembered per database as writing, or as cheap to run inline

INLINE_BUDGET = 0.002  # seconds a read may hold the event loop before moving to a thread
INLINE_SQL_CHARS = 1024  # longer SQL never runs inline
INLINE_OVERRUN = 0.01  # an inline attempt that held the event loop this long (seconds) ...
INLINE_PENALTY = 10.0  # ... sends every read of its database to worker threads for this long
MIB = 1 << 20


class RecentTexts(OrderedDict[int, None]):
    """The most recent SQL texts SQLite taught a database something about (they write; they
    run inline within its limits): a routing hint, never a decision about what SQL may do.
    Kept by hash (randomised per process), so a text costs the same whatever its length:
    ask ``hash(sql) in texts``."""

    def __init__(self, size: int = KNOWN_TEXTS):
        super().__init__()
        self._size = size

    def add(self, sql: str) -> None:
        key = hash(sql)
        self[key] = None
        self.move_to_end(key)
        if len(self) > self._size:
            self.popitem(last=False)

    def discard(self, sql: str) -> None:
        self.pop(hash(sql), None)


def branch_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of a branch's files on this node: the database file, its WAL and its -shm (the
    one measure usage, branch listings and compaction report)."""
    return sum(os.stat(f"{path}{suffix}").st_size for suffix in ("", "-wal", "-shm")
               if os.path.exists(f"{path}{suffix}"))


def make_bookmark(database: str, branch: str, txid: int, timeline: str | None = None,
                  index: int | None = None) -> str:
    """An opaque (database, branch, txid[, timeline[, index]]) string. The timeline pins the
    history: after a reset or restore the same branch name continues on another one. With
    an index it is a change feed's cursor (``feed/reader.py``): after that change of the
    commit; as a bookmark it means the whole commit."""
    raw = f"{database}/{branch}/{txid}" + (f"/{timeline}" if timeline else "")
    if index is not None and timeline:
        raw += f"/{index}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@dataclass(frozen=True)
class Bookmark:
    database: str
    branch: str
    txid: int
    timeline: str | None  # None in bookmarks of a node without a commit log
    index: int | None = None  # a feed cursor's change within the commit


def read_bookmark(bookmark: str) -> Bookmark:
    try:
        raw = base64.urlsafe_b64decode(bookmark + "=" * (-len(bookmark) % 4)).decode()
        parts = raw.split("/")
        if len(parts) not in (3, 4, 5) or int(parts[2]) < 0 or (
                len(parts) == 5 and int(parts[4]) < 0):
            raise ValueError(raw)
        return Bookmark(parts[0], parts[1], int(parts[2]),
                        parts[3] if len(parts) >= 4 else None,
                        int(parts[4]) if len(parts) == 5 else None)
    except (ValueError, UnicodeDecodeError):
        raise ShoalError(Code.INVALID_REQUEST, "malformed bookmark") from None


def parse_bookmark(bookmark: str) -> tuple[str, str, int]:
    found = read_bookmark(bookmark)
    return found.database, found.branch, found.txid


class Own:
    """A commit of Shoal's own (no user's row changes): see Database._committed."""


OWN = Own()


@dataclass
class Committed:
    """What a write produced: its statement results and the commit it landed in."""

    counters: Counters
    txid: int
    bookmark: str
    response: tuple[int, bytes] | None = None  # rendered body, when an idempotency key asked


@dataclass(frozen=True)
class Compacted:
    """What a compaction did: the commit it made and the file's logical size around it."""

    txid: int
    bytes_before: int  # page_count x page_size
    bytes_after: int
    storage_bytes: int  # the branch's files on this node afterwards (database, WAL, -shm)
    seconds: float


@dataclass
class IdempotencyRecord:
    subject: str
    key: str
    body_hash: bytes
    render: Callable[[Committed], tuple[int, bytes]]


@dataclass
class WriteJob:
    statements: list[Statement]
    future: asyncio.Future[Committed]
    deadline: float  # when waiting for the write lock gives DATABASE_BUSY
    idempotency: IdempotencyRecord | None = None
    abandoned: bool = False  # its client went away: not run, or interrupted if running
    # Shoal's own writes after the statements, in the job's savepoint (a table's rules)
    own: Callable[[Connection], None] | None = None

    def gone(self) -> bool:
        """Whether nobody waits for this job any more (read from the writer's thread and the
        watchdog's: a stale answer only delays the interrupt by a tick)."""
        return self.abandoned or self.future.cancelled()

    def abandon(self, _: object = None) -> None:
        self.abandoned = True


@dataclass
class Transaction:
    id: str
    subject: str
    write: bool
    conn: Connection
    idle_deadline: float
    busy: bool = False
    aborted: bool = False  # SQLite rolled it back after an error; only rollback remains
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    start_txid: int = 0  # the commit its snapshot (read) or write lock (write) starts from
    age_deadline: float = math.inf  # monotonic time it ends whatever it does


class Database:
    """One open branch. Create with :meth:`open`; all methods run on the event loop."""

    def __init__(self, name: str, branch: str, path: str, settings: Settings, executor: Executor,
                 journal: Log | None = None, follower: bool = False):
        self.name = name
        self.branch = branch
        self.path = path
        self.settings = settings
        self.executor = executor
        self.limits = Limits(settings.statement_timeout, settings.max_response_bytes)
        self.inline_limits = Limits(settings.statement_timeout, settings.max_response_bytes,
                                    soft_budget=INLINE_BUDGET)
        self.writer: Connection | None = None
        self.readers: list[Connection] = []
        self.reader_slots = asyncio.Semaphore(settings.readers)
        self.write_lock = asyncio.Lock()
        self.queue: list[WriteJob] = []
        self.wake = asyncio.Event()
        self.txid = 0
        # the newest txid a reader's snapshot may hold: set just before each COMMIT (a
        # reader may see the commit before ``txid`` says it), so that a read's bookmark,
        # taken after it, is at least what it saw (monotonic reads through replicas)
        self.visible = 0
        self.layout = tables.CURRENT  # the names of Shoal's tables in the file (tables.py)
        self.schema_generation = 0  # bumped when a commit changed the schema
        self._schema_version = 0
        self.known_writes = RecentTexts()  # SQL SQLite said writes
        self.known_cheap = RecentTexts()  # SQL that ran within the inline limits, this schema
        self._cheap_generation = 0  # the schema generation known_cheap was learned under
        self.inline_after = 0.0  # monotonic time before which no read is tried inline
        self.last_read = 0.0  # monotonic time a reader was last returned to the pool
        self._released_use = -1.0  # last_used when the page caches were last given back
        self.active = 0
        self.generation = 0  # a cluster's node: the membership it was opened under (lifecycle)
        self.transactions: dict[str, Transaction] = {}
        self.last_used = time.monotonic()
        self.closed = False
        self._task: asyncio.Task[None] | None = None
        self.journal = journal  # the commit log (engine/journal.py); None: local-only
        self.timeline: str | None = None  # the timeline this branch writes to (bookmarks)
        self._bookmark: tuple[int, str | None, str] = (-1, None, "")  # the last made
        self._purge_due = True  # expired idempotency records go with the first write batch
        self._acks: set[asyncio.Task[None]] = set()  # answers waiting for remote durability
        # unshipped page bytes past which writes are refused (max_unshipped_bytes; 0: never)
        self._backlog_limit: float = settings.max_unshipped_bytes or math.inf
        self.size_limit = 0  # bytes the file may hold (the database's size_bytes; 0: none)
        self._without_old: frozenset[str] = frozenset()  # see without_old
        self.follower = follower  # a replica's copy: readers only, no WAL (engine/replica.py)
        # the change feed's capture of each write transaction (shoal.feed), with a log
        # only, and the spool that keeps the changes of commits the store may lack
        self.changes: ChangeCapture | None = None
        self.spool: Spool | None = None
        self._spool_synced: Future[None] | None = None  # the sync of the last append
        # the data API's view of tables (shape and row rules), by table: the engine's
        # (engine/rowrules.py), valid while ``access_generation`` and the schema hold
        self.access: dict[str, Any] = {}
        self.access_generation = 0

    # -- open / close -----------------------------------------------------------------------
    def _connect(self, reader: bool) -> Connection:
        return Connection(self.path, reader=reader, synchronous=self.settings.synchronous,
                          manual_checkpoints=self.journal is not None,
                          max_value_bytes=self.settings.max_value_bytes,
                          max_sql_bytes=self.settings.max_sql_bytes,
                          busy_timeout=self.settings.busy_timeout, wal=not self.follower)

    async def open(self) -> None:
        """Open the writer (on a worker thread: SQLite reads the whole schema, which may be
        large, when a connection opens) and start the writer task."""
        self.writer = await self._off_loop(None, self._open_writer)
        # a task of the branch, not of the request that opened it: none of its context
        self._task = asyncio.get_running_loop().create_task(self._writer_loop(),
                                                            context=contextvars.Context())

    def _open_writer(self) -> Connection:
        """Without a commit log a new file gets Shoal's tables here. With one, the file
        comes from the store (its snapshot at txid 0 already holds the tables) and nothing
        is written here: a commit that bumps no txid would be a hole in the log."""
        writer = self._connect(reader=False)
        try:
            if self.journal is not None:
                writer.raw.set_wal_hook(self.journal.hook)
            layout = tables.layout_of(writer)
            if layout is None and self.journal is None:
                writer.internal(BEGIN_IMMEDIATE)
                tables.create(writer)
                writer.internal(COMMIT)
            self.layout = layout or tables.CURRENT
            if self.journal is not None and self.settings.capture_changes:
                self.changes = ChangeCapture(writer.raw, tables.hidden)
                self.changes.without_old = self._without_old
                spool = Spool(self.path)
                spool.open()
                self.spool = spool
            self.txid = self.visible = writer.internal(self.layout.get_txid)[0][0]
            self._schema_version = writer.internal(SCHEMA_VERSION)[0][0]
        except BaseException:
            writer.close()
            if self.spool is not None:
                self.spool.close()
            raise
        return writer

    async def open_follower(self, txid: int, timeline: str) -> None:
        """A replica's copy (engine/replica.py) at ``txid``: readers only, no writer task."""
        def first() -> Connection:
            conn = self._connect(reader=True)
            self.layout = tables.layout_of(conn) or tables.CURRENT
            return conn

        self.readers.append(await self._off_loop(None, first))
        self.txid = self.visible = txid
        self.timeline = timeline

    @property
    def idle(self) -> bool:
        return self.active == 0 and not self.transactions and not self.queue \
            and not self.write_lock.locked()

    async def aclose(self, flush: bool = True, keep: bool = True) -> None:
        """Close; with a commit log, first ship what is pending (bounded by storage_timeout)
        and (unless the files are about to go: ``keep=False``) checkpoint what is durable.
        Call only when idle."""
        if self.journal is not None and not self.closed:
            self.closed = True
            if self._task:
                self._task.cancel()
            try:
                await self.journal.close(self, flush, keep)
            except Exception:
                log.exception("closing the commit log of %s/%s failed", self.name, self.branch)
        self.close()

    def close(self) -> None:
        """Release every connection and the writer task. Call only when idle."""
        self.closed = True
        if self.journal is not None:
            self.journal.release()
        if self._task:
            self._task.cancel()
        for job in self.queue:
            if not job.future.done():
                job.future.set_exception(ShoalError(Code.DATABASE_NOT_FOUND, "database was closed"))
        self.queue.clear()
        for conn in self.readers:
            conn.close()
        self.readers.clear()
        if self.changes is not None:  # its session and cursor go before their connection
            self.changes.close()
        try:
            if self.writer:
                self.writer.close()
                self.writer = None
        finally:
            if self.spool is not None:
                self.spool.close()
        if self.journal is not None:
            self.journal.closed()

    def bookmark(self, txid: int) -> str:
        """The bookmark of txid on this branch; the last one is kept, with every input it
        was made of (name and branch never change), so it cannot be stale."""
        timeline, (seen_txid, seen_timeline, made) = self.timeline, self._bookmark
        if txid == seen_txid and timeline == seen_timeline:
            return made
        made = make_bookmark(self.name, self.branch, txid, timeline)
        self._bookmark = (txid, timeline, made)
        return made

    @property
    def usage_key(self) -> str:
        """Usage is metered per branch: the database name for main, else 'name/branch'."""
        return self.name if self.branch == "main" else f"{self.name}/{self.branch}"

    async def wait_durable(self, txid: int) -> None:
        """Return once txid is as durable as the durability mode promises (remote: in the
        store); STORAGE_UNAVAILABLE after storage_timeout."""
        if self.journal is not None and self.journal.remote:
            await self.journal.durable(txid)

    # -- reads ------------------------------------------------------------------------------
    async def _take_reader(self) -> Connection:
        """A reader connection from the pool (opened on demand, on a worker thread: opening
        reads the schema); pair with _give_reader."""
        await self.reader_slots.acquire()
        try:
            if self.readers:
                return self.readers.pop()
            return await self._off_loop(None, self._connect, True)
        except BaseException:
            self.reader_slots.release()
            raise

    def trim_readers(self, cutoff: float) -> int:
        """Close pooled readers when none was used since cutoff (monotonic seconds).

        Returns how many were closed.
        """
        if not self.readers or self.last_read >= cutoff:
            return 0
        for conn in self.readers:
            conn.close()
        closed = len(self.readers)
        self.readers.clear()
        return closed

    def release_caches(self, cutoff: float) -> int:
        """Give back the page cache of the connections at rest (the writer, the pooled
        readers) when the branch is idle, was last used before cutoff (monotonic seconds),
        and was used since the last time: see :meth:`Connection.release_cache`.

        Runs on the event loop: while the branch is idle no worker thread holds its
        writer (every use of it holds the write lock or a transaction), and a pooled
        reader is in use by nobody. Returns how many connections released memory.
        """
        if self.last_used >= cutoff or self.last_used == self._released_use or not self.idle:
            return 0
        self._released_use = self.last_used
        conns = [*self.readers, *([self.writer] if self.writer is not None else [])]
        for conn in conns:
            conn.release_cache()
        return len(conns)

    def _give_reader(self, conn: Connection) -> None:
        self._rest(conn)
        self.reader_slots.release()

    def _rest(self, conn: Connection) -> None:
        """A reader back in the pool (closed if the branch closed meanwhile)."""
        self.last_read = time.monotonic()
        if self.closed:
            conn.close()
        else:
            self.readers.append(conn)

    def remember_write(self, sql: str) -> None:
        """Note SQL that SQLite reported as writing, so its next run goes to the writer first."""
        self.known_writes.add(sql)

    def writes(self, statements: list[Statement]) -> bool:
        """Whether a statement of the request is known (from SQLite, earlier) to write."""
        known = self.known_writes
        if len(statements) == 1:
            return hash(statements[0].sql) in known
        return any(hash(s.sql) in known for s in statements)

    async def read(self, statements: list[Statement]) -> tuple[Counters, int]:
        """Run read-only statements on a reader; raise NeedsWriter if one would write.

        A read known cheap runs on the event loop on a pooled reader at rest, without a
        reader slot: it holds the connection only until it returns, so no other request
        ever sees it taken. (Through the slots, a queue that formed once, while reads ran
        on threads or readers opened, never drained under load: every later read waited
        its turn behind the others, a future and a loop turn each.) A read that waited for
        a slot still runs inline when it may, so such a queue drains at once."""
        readers = self.readers
        tried = bool(readers) and self._inline(readers[-1], statements)
        if tried:
            conn = readers.pop()
            try:
                txid = self.txid  # the snapshot holds at least this commit
                out = self._read_inline(conn, statements)
                if out is not None:
                    return out, txid
            finally:
                self._rest(conn)
        conn = await self._take_reader()
        try:
            txid = self.txid
            if not tried and self._inline(conn, statements):
                out = self._read_inline(conn, statements)
                if out is not None:
                    return out, txid
            generation = self.schema_generation
            out = await self._off_loop(conn, self._read_on, conn, statements, self.limits)
            if out.elapsed <= INLINE_BUDGET and out.widest <= INLINE_VALUE_BYTES and \
                    generation == self.schema_generation:
                cheap = self._cheap_under(generation)
                for stmt in statements:  # cheap, under this schema: next time inline
                    if len(stmt.sql) <= INLINE_SQL_CHARS:
                        cheap.add(stmt.sql)
            return out, txid
        finally:
            self._give_reader(conn)

    def _read_inline(self, conn: Connection, statements: list[Statement]) -> Counters | None:
        """The read on the event loop, or None when it needs more than the loop may give
        (it then runs on a worker thread)."""
        try:
            return self._read_on(conn, statements, self.inline_limits)
        except SoftDeadline as moved:
            if moved.index is not None:  # else: many statements, each cheap
                self._overran(statements[moved.index].sql, moved.held)
            return None

    def _inline(self, conn: Connection, statements: list[Statement]) -> bool:
        """Whether a read may be tried on the event loop: every statement of it ran within
        the inline limits before under the current schema (a new text, or one after a
        schema change, is prepared on a worker thread: see the module's docstring), and the
        reader need not reload the schema (that too is work in proportion to the schema)."""
        if self.inline_after and time.monotonic() < self.inline_after:
            return False
        generation = self.schema_generation
        if generation != self._cheap_generation:  # nothing is known cheap under it yet
            self._cheap_under(generation)
            return False
        if conn.schema_generation != generation:
            return False
        cheap = self.known_cheap
        if len(statements) == 1:
            return hash(statements[0].sql) in cheap
        return all(hash(stmt.sql) in cheap for stmt in statements)

    def _cheap_under(self, generation: int) -> RecentTexts:
        """The texts known cheap under schema ``generation``: forgotten once it moved."""
        if generation != self._cheap_generation:
            self.known_cheap.clear()
            self._cheap_generation = generation
        return self.known_cheap

    def _overran(self, sql: str, held: float) -> None:
        """A statement known cheap was not, this time (its data grew): it runs on a worker
        thread until it is seen cheap again; if it held the event loop long (what SQLite
        cannot interrupt within the inline limits, a run of ltrim() calls, takes up to a
        few hundred ms), the database's reads skip the loop for INLINE_PENALTY, so that
        growing and shrinking the data again and again cannot hold the loop often."""
        self.known_cheap.discard(sql)
        if held > INLINE_OVERRUN:
            self.inline_after = time.monotonic() + INLINE_PENALTY
            log.info("%s/%s: an inline read held the event loop %.0f ms; reads go to worker "
                     "threads for %g s", self.name, self.branch, held * 1000, INLINE_PENALTY)

    async def _off_loop(self, conn: Connection | None, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on a worker thread. If the awaiting request is cancelled (its client went
        away), conn's statement is interrupted, and the thread is waited for before the
        cancellation goes on: a connection (or the write lock) must never be used by two
        threads at once."""
        work = self.executor.submit(fn, *args)
        gone = REQUEST_GONE.get() if conn is not None else None

        def stop(_: object) -> None:  # may run after the work ended: then it does nothing
            if conn is not None and not work.done():
                conn.abandon()

        if gone is not None:
            gone.add_done_callback(stop)
        try:
            return await asyncio.wrap_future(work)
        except asyncio.CancelledError:
            if not work.cancelled():  # it was running: stop it, and wait for the thread
                stop(None)
                while not work.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait([asyncio.wrap_future(work)])
            raise
        finally:
            if gone is not None:
                gone.remove_done_callback(stop)
            if conn is not None:
                conn.abandoned = False  # the thread is done with it

    def _read_on(self, conn: Connection, statements: list[Statement], limits: Limits) -> Counters:
        """Run a read; one statement is its own snapshot, several share one.

        A reader's cached schema may predate the writer's last schema change, and
        SQLite does not re-check it when preparing (statements fail with "no such
        column" or report stale columns). So when the writer's schema generation has
        moved, the reader first touches a table inside a snapshot, which makes
        SQLite reload the schema.
        """
        generation = self.schema_generation
        stale = conn.schema_generation != generation
        if not stale and len(statements) == 1:
            return conn.run(statements, limits)
        conn.internal(BEGIN)
        try:
            if stale:
                self._own_read(conn, lambda t: t.get_txid)
                conn.schema_generation = generation
            return conn.run(statements, limits)
        finally:
            conn.internal(ROLLBACK)

    # -- writes (group commit) --------------------------------------------------------------
    async def write(self, statements: list[Statement],
                    idempotency: IdempotencyRecord | None = None,
                    own: Callable[[Connection], None] | None = None) -> Committed:
        if self.journal is not None and self.journal.writer is None:
            await self.journal.claim()  # the first write takes the timeline (fences others)
        self._check_log()
        loop = asyncio.get_running_loop()
        job = WriteJob(statements, loop.create_future(),
                       time.monotonic() + self.settings.busy_timeout, idempotency, own=own)
        self.queue.append(job)
        METRICS.queue_depth.observe(len(self.queue))
        self.wake.set()
        gone = REQUEST_GONE.get()
        if gone is None:
            return await job.future

        def abandon(_: object) -> None:
            """Not run, or interrupted; one still queued (the writer skips it) is answered
            now rather than after the write lock frees."""
            job.abandon()
            if not job.future.done() and any(queued is job for queued in self.queue):
                job.future.set_exception(stopped())

        gone.add_done_callback(abandon)
        try:
            return await job.future
        finally:
            gone.remove_done_callback(abandon)

    async def _writer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                if not await self._lock_for_queue():
                    continue
                batch, self.queue = self.queue, []
                try:
                    outcomes = await loop.run_in_executor(self.executor, self._commit, batch)
                    await self._mend_log()
                except BaseException as exc:  # cancelled while committing: fail the batch
                    outcomes = [exc] * len(batch)
                    if isinstance(exc, asyncio.CancelledError):
                        self._answer(batch, outcomes)
                        raise
                finally:
                    self.write_lock.release()
                self._answer_when_durable(batch, outcomes)

    def _check_log(self) -> None:
        """Refuse writes (every write path starts here) once shipping has stopped for good
        (another writer on the timeline) or while the store is too far behind. It runs on
        every write request, so the usual answer costs a clock read and two attribute reads.
        A node that does not hold the store's lease takes no writes: they could not ship."""
        if self.journal is None:
            return
        try:
            self.journal.fence()
        except Fenced as exc:
            raise ShoalError(Code.STORAGE_UNAVAILABLE, f"writes to {self.name}/{self.branch} are "
                                                       f"refused: {exc}") from None
        shipper = self.journal.shipper
        if shipper is None or (shipper.failed is None
                               and shipper.backlog_bytes <= self._backlog_limit):
            return
        assert self.journal is not None
        failed = self.journal.failed
        why = str(failed) if failed is not None else self._behind(shipper.backlog_bytes)
        if why is not None:
            raise ShoalError(Code.STORAGE_UNAVAILABLE, f"writes to {self.name}/{self.branch} are "
                                                       f"refused: {why}")

    def _behind(self, backlog: int) -> str | None:
        """Why the store's backlog stops writes, if it does. Local durability acknowledges
        before shipping, so without a bound a store that is down would let unshipped commits
        fill the disk (WAL) and memory (shipper). A stale read of the count is fine."""
        if backlog <= self._backlog_limit:
            return None
        return (f"the object store is behind by {backlog / MIB:.2f} MiB of commits for "
                f"{self.name}/{self.branch}; writes resume once it catches up "
                f"(max_unshipped_bytes = {self.settings.max_unshipped_bytes})")

    async def _mend_log(self) -> None:
        """Under the write lock, after a commit: if capturing it failed, re-base the log on
        a fresh snapshot (a failure is logged; the journal tries again after the next)."""
        if self.journal is not None:
            await self.journal.mend(self)

    def _answer_when_durable(self, batch: list[WriteJob], outcomes: list[Any]) -> None:
        """Answer now, or (remote durability) once the batch's commit is in the store."""
        txid = next((o.txid for o in outcomes if isinstance(o, Committed)), None)
        if txid is None or self.journal is None or not self.journal.remote:
            self._answer(batch, outcomes)
            return
        task = asyncio.get_running_loop().create_task(self._ack(batch, outcomes, txid))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _ack(self, batch: list[WriteJob], outcomes: list[Any], txid: int) -> None:
        try:
            await self.wait_durable(txid)
        except ShoalError as exc:
            outcomes = [exc if isinstance(o, Committed) else o for o in outcomes]
        self._answer(batch, outcomes)

    @staticmethod
    def _answer(batch: list[WriteJob], outcomes: list[Any]) -> None:
        for job, outcome in zip(batch, outcomes, strict=True):
            if job.future.done():
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    async def _lock_for_queue(self) -> bool:
        """Take the write lock before the oldest job's busy deadline; fail jobs past it."""
        wait = min(job.deadline for job in self.queue) - time.monotonic()
        if wait > 0:
            try:
                await asyncio.wait_for(self.write_lock.acquire(), wait)
                return True
            except TimeoutError:
                pass
        now = time.monotonic()
        expired = [job for job in self.queue if job.deadline <= now]
        self.queue = [job for job in self.queue if job.deadline > now]
        for job in expired:
            if not job.future.done():
                job.future.set_exception(ShoalError(
                    Code.DATABASE_BUSY,
                    f"write lock held by a transaction for over busy_timeout "
                    f"({self.settings.busy_timeout:g} s)"))
        return False

    def _commit(self, batch: list[WriteJob]) -> list[Committed | BaseException]:
        """Worker thread: one transaction, a SAVEPOINT per job, one commit.

        Some errors (an interrupted write statement, SQLITE_FULL, I/O errors) make
        SQLite roll back the whole transaction, not just the job's savepoint. The
        job that caused it fails alone and the batch runs again without it.
        """
        METRICS.batch_size.observe(len(batch))
        failed: dict[int, BaseException] = {}
        while True:
            outcomes = self._commit_once(batch, failed)
            if outcomes is not None:
                return outcomes

    def _commit_once(self, batch: list[WriteJob],
                     failed: dict[int, BaseException]) -> list[Committed | BaseException] | None:
        conn = self.writer
        assert conn is not None
        if conn.size_cap != self.size_limit:  # set, or changed since the last batch
            conn.cap_size(self.size_limit)
        try:
            self._upgrade(conn)
        except BaseException as exc:  # every job of the batch fails with it (as with COMMIT)
            return [from_sqlite(exc) if isinstance(exc, apsw.Error) else exc] * len(batch)
        txid = self.txid + 1
        bookmark = self.bookmark(txid)
        outcomes: list[Committed | BaseException] = []
        conn.internal(BEGIN_IMMEDIATE)
        try:
            self._capture_start()
            for i, job in enumerate(batch):
                if i in failed:
                    outcomes.append(failed[i])
                    continue
                if job.gone():  # its request went away before it ran
                    outcomes.append(stopped())
                    continue
                conn.internal(SAVEPOINT)
                try:
                    counters = conn.run(job.statements, self.limits, cancelled=job.gone)
                    if job.own is not None:
                        job.own(conn)
                    # a deferred foreign key still violated would fail the COMMIT of every
                    # job of the batch: it fails this job, here
                    if (violated := conn.deferred_violations()) is not None:
                        raise violated
                    done = Committed(counters, txid, bookmark)
                    if job.idempotency:
                        self._record(conn, job.idempotency, done)
                    conn.internal(RELEASE)
                    outcomes.append(done)
                except (ShoalError, NeedsWriter) as exc:
                    if conn.raw.get_autocommit():  # SQLite dropped the whole transaction
                        failed[i] = exc
                        self._capture_abort()
                        return None
                    conn.internal(ROLLBACK_TO)
                    conn.internal(RELEASE)
                    outcomes.append(exc)
                if conn.guard.defers:  # the pragma lasts until COMMIT: not into the next job
                    conn.internal(DEFER_OFF)
            if any(isinstance(o, Committed) for o in outcomes):
                if self._purge_due:
                    conn.internal(self.layout.purge_idem,
                                  (time.time() - self.settings.idempotency_ttl,))
                changes = self._capture_end(conn, txid)
                conn.internal(self.layout.set_txid, (txid,))
                self._commit_txid(conn, txid)
                self._purge_due = False
                self._committed(conn, txid, changes)
            else:
                conn.internal(ROLLBACK)
                self._capture_abort()
        except BaseException as exc:
            self._capture_abort()
            if not conn.raw.get_autocommit():
                conn.internal(ROLLBACK)
            if isinstance(exc, apsw.Error):  # COMMIT itself failed: every job with it
                log.warning("%s/%s: a group commit failed: %r", self.name, self.branch, exc)
                exc = from_sqlite(exc)
            return [exc] * len(batch)
        return outcomes

    def _record(self, conn: Connection, idem: IdempotencyRecord, done: Committed) -> None:
        status, body = idem.render(done)
        try:
            conn.internal(self.layout.put_idem, (idem.subject, idem.key, idem.body_hash,
                                                 status, body, time.time()), large=True)
        except apsw.FullError as exc:  # the request's own record passed the size limit
            raise conn.full_error(exc) from None
        done.response = (status, body)

    async def size(self) -> int:
        """Bytes of the branch's pages (page_count x page_size as of the last commit): what
        its size limit counts, free pages included (compaction gives those back)."""
        conn = await self._take_reader()
        try:
            rows = await self._off_loop(conn, conn.internal, PAGE_BYTES)
            return int(rows[0][0])
        finally:
            self._give_reader(conn)

    # -- idempotency lookups ------------------------------------------------------------------
    async def find_idempotent(self, subject: str, key: str) -> tuple[bytes, int, bytes] | None:
        """(body_hash, status, response) recorded for this key within the TTL, if any."""
        conn = await self._take_reader()
        try:
            rows = self._own_read(conn, lambda t: t.get_idem, (subject, key), large=True)
        finally:
            self._give_reader(conn)
        if not rows or rows[0][3] < time.time() - self.settings.idempotency_ttl:
            return None
        body_hash, status, response, _ = rows[0]
        return body_hash, status, response

    async def describe(self, sql: str) -> Description:
        """Prepare sql on a reader (authorizer on) and describe it without running it: on a
        worker thread, since preparing can take long (a huge CASE) and is not interruptible
        everywhere."""
        conn = await self._take_reader()
        try:
            return await self._off_loop(conn, conn.describe, sql,
                                        self.settings.statement_timeout)
        finally:
            self._give_reader(conn)

    # -- interactive transactions -----------------------------------------------------------
    async def _take_write_lock(self, busy: str) -> None:
        """What a write transaction or a compaction starts with: the timeline (fencing
        others), the log's state, then the write lock within busy_timeout (DATABASE_BUSY,
        with ``busy``, past it)."""
        if self.journal is not None and self.journal.writer is None:
            await self.journal.claim()
        self._check_log()
        if not await _acquire(self.write_lock, self.settings.busy_timeout, REQUEST_GONE.get()):
            raise ShoalError(Code.DATABASE_BUSY, busy)

    async def begin(self, tx_id: str, subject: str, write: bool) -> Transaction:
        if write:
            await self._take_write_lock("another transaction holds the write lock")
            conn = self.writer
            assert conn is not None
            try:
                await self._off_loop(None, self._begin_write, conn)
            except BaseException:
                self.write_lock.release()
                raise
            start = self.txid  # no commit can land while the write lock is held
        else:
            conn = await self._off_loop(None, self._connect, True)
            conn.internal(BEGIN)
            # pin the snapshot now, not at the first query
            start = self._own_read(conn, lambda t: t.get_txid)[0][0]
        tx = Transaction(tx_id, subject, write, conn,
                         time.monotonic() + self.settings.transaction_timeout, start_txid=start)
        self.transactions[tx_id] = tx
        return tx

    def _begin_write(self, conn: Connection) -> None:
        if conn.size_cap != self.size_limit:
            conn.cap_size(self.size_limit)
        self._upgrade(conn)
        conn.internal(BEGIN_IMMEDIATE)
        try:
            self._capture_start()
        except BaseException:
            conn.internal(ROLLBACK)
            raise

    def _upgrade(self, conn: Connection) -> None:
        """Writer, under the write lock, before a write: an older layout's tables move to
        their current names (tables.migrate) in a commit of their own, the next txid, like
        any other commit in the log."""
        if self.layout is tables.CURRENT:
            return
        txid = self.txid + 1
        conn.internal(BEGIN_IMMEDIATE)
        try:
            tables.migrate(conn, self.layout)
            conn.internal(tables.CURRENT.set_txid, (txid,))
            self._commit_txid(conn, txid)
        except BaseException:
            if not conn.raw.get_autocommit():
                conn.internal(ROLLBACK)
            raise
        old, self.layout = self.layout, tables.CURRENT
        self._committed(conn, txid)
        log.info("%s/%s: Shoal's tables moved from %s to %s at txid %d", self.name,
                 self.branch, old.state, tables.STATE, txid)

    async def read_own(self, fn: Callable[[Connection], T]) -> T:
        """``fn(conn)``, Shoal's own reads (``conn.internal``), in one snapshot of a reader
        on a worker thread (its schema reloaded if the writer's moved)."""
        conn = await self._take_reader()
        try:
            return await self._off_loop(conn, self._in_snapshot, conn, fn)
        finally:
            self._give_reader(conn)

    def _in_snapshot(self, conn: Connection, fn: Callable[[Connection], T]) -> T:
        generation = self.schema_generation
        conn.internal(BEGIN)
        try:
            if conn.schema_generation != generation:
                self._own_read(conn, lambda t: t.get_txid)
                conn.schema_generation = generation
            return fn(conn)
        finally:
            conn.internal(ROLLBACK)

    def _own_read(self, conn: Connection, statement: Callable[[tables.Layout], str],
                  args: Any = None, *, large: bool = False) -> list[Any]:
        """One of Shoal's reads on a reader, under the names this snapshot holds."""
        return tables.read(lambda sql, a: conn.internal(sql, a, large=large), self.layout,
                           statement, args)

    async def tx_query(self, tx: Transaction, statements: list[Statement]) -> Counters:
        """Run statements inside the transaction; a failure undoes only this request."""
        return await self._off_loop(tx.conn, self._tx_query, tx, statements)

    def _tx_query(self, tx: Transaction, statements: list[Statement]) -> Counters:
        conn = tx.conn
        conn.internal(SAVEPOINT)
        try:
            out = conn.run(statements, self.limits)
        except BaseException as exc:
            if conn.raw.get_autocommit():  # SQLite rolled back the whole transaction
                tx.aborted = True
                if isinstance(exc, ShoalError):
                    exc.message += "; the transaction was rolled back"
                    exc.args = (exc.message,)
                raise
            conn.internal(ROLLBACK_TO)
            conn.internal(RELEASE)
            if isinstance(exc, NeedsWriter):
                raise ShoalError(Code.READ_ONLY, "this transaction is read-only") from None
            raise
        conn.internal(RELEASE)
        return out

    async def end(self, tx: Transaction, commit: bool,
                  idempotency: IdempotencyRecord | None = None) -> Committed | None:
        """Commit or roll back; the write lock is released either way."""
        self.transactions.pop(tx.id, None)
        try:
            done = await self._off_loop(None, self._end, tx, commit, idempotency)
            if done is not None:
                await self._mend_log()
        finally:
            if tx.write:
                self.write_lock.release()
                self.wake.set()
            else:
                tx.conn.close()
        if done is not None:
            await self.wait_durable(done.txid)
        return done

    def _end(self, tx: Transaction, commit: bool,
             idempotency: IdempotencyRecord | None) -> Committed | None:
        conn = tx.conn
        if not (commit and tx.write):
            if tx.write:
                self._capture_abort()
            if not conn.raw.get_autocommit():
                conn.internal(ROLLBACK)
            return None
        txid = self.txid + 1
        done = Committed(Counters(), txid, self.bookmark(txid))
        try:
            if (violated := conn.deferred_violations()) is not None:
                raise violated
            if idempotency:
                self._record(conn, idempotency, done)
            changes = self._capture_end(conn, txid)
            conn.internal(self.layout.set_txid, (txid,))
            self._commit_txid(conn, txid)
        except BaseException as exc:
            self._capture_abort()
            with contextlib.suppress(Exception):
                if not conn.raw.get_autocommit():
                    conn.internal(ROLLBACK)
            if isinstance(exc, apsw.Error):
                exc = from_sqlite(exc)
            if isinstance(exc, ShoalError):  # the transaction is over: say so
                exc.message += "; the transaction was rolled back"
                exc.args = (exc.message,)
                raise exc from None
            raise
        self._committed(conn, txid, changes)
        return done

    def _commit_txid(self, conn: Connection, txid: int) -> None:
        """COMMIT the transaction that wrote ``txid``, ``visible`` first; a COMMIT that
        fails takes it back."""
        self.visible = txid
        try:
            conn.internal(COMMIT)
        except BaseException:
            self.visible = self.txid
            raise
        finally:
            self._spool_settled()

    @property
    def without_old(self) -> frozenset[str]:
        """The tables whose feed changes keep no old row (the database's feed settings):
        from the next commit on."""
        return self._without_old

    @without_old.setter
    def without_old(self, tables: frozenset[str]) -> None:
        self._without_old = tables
        if self.changes is not None:
            self.changes.without_old = tables

    def _capture_start(self) -> None:
        """Right after BEGIN of a user's write: record its row changes from here on."""
        if self.changes is not None:
            self.changes.start()

    def _capture_abort(self) -> None:
        """The transaction rolls back: its changes are dropped."""
        if self.changes is not None:
            self.changes.abort()

    def _capture_end(self, conn: Connection, txid: int) -> bytes | None:
        """Just before the COMMIT of ``txid``: its row changes, encoded (b"": none; None:
        not captured, the capture being off or failing for this commit, which the feed
        then says). They are in the spool (written to the OS) before the COMMIT, so a
        killed node never keeps the commit without them; with ``feed_sync = "commit"``
        the spool is also synced as the commit is, against a power cut."""
        if self.changes is None or self.spool is None:
            return None
        with conn.unguarded():
            found = self.changes.finish()
        blob: bytes | None
        if self.changes.lost:  # a schema change took some tables' rows out of reach
            log.warning("%s/%s: txid %d's row changes of %s could not be captured; the feed "
                        "says so", self.name, self.branch, txid, ", ".join(self.changes.lost))
            blob = None
        elif not found:
            return b""  # nothing to keep: a commit without a record had no row changes
        else:
            blob = encode_changes(found)
        assert self.journal is not None  # (a spool is a logged branch's)
        shipper = self.journal.shipper
        self.spool.append(txid, self.timeline or "", blob,
                          shipper.durable_txid if shipper is not None else -1)
        if self.settings.synchronous == "full" and self.settings.feed_sync == "commit":
            # beside SQLite's fsync of the COMMIT
            self._spool_synced = self.journal.beside(self.spool.sync)
        return blob

    def _spool_settled(self) -> None:
        """After the COMMIT (or its failure): the spool's sync has returned too, so the
        commit is not answered before its changes would survive a power cut."""
        synced, self._spool_synced = self._spool_synced, None
        if synced is None:
            return
        try:
            synced.result()
        except OSError as exc:  # never raised past a COMMIT that happened: said, loudly
            log.error("%s/%s: the change spool could not be synced (%s): a power cut before "
                      "the store has the last commits would leave their changes unknown",
                      self.name, self.branch, exc)

    def recovered_changes(self, first: int, last: int) -> dict[int, bytes | None] | None:
        """Worker thread, at open: the row changes the spool keeps for txids first..last
        (the commits the WAL still holds); None if this branch captures none."""
        if self.spool is None:
            return None
        return self.spool.read(self.timeline or "", first, last)

    def _committed(self, conn: Connection, txid: int, changes: bytes | Own | None = OWN
                   ) -> None:
        """After a commit: publish its txid; note a schema change for the readers; hand the
        commit and its row changes to the log (it never raises: the commit has happened).
        The log has it before anyone can see the txid and wait for its durability."""
        if self.journal is not None:
            if isinstance(changes, Own):  # a move of Shoal's tables, VACUUM's bump: no rows
                changes = b"" if self.changes is not None else None
            self.journal.captured(txid, changes)
        self.txid = txid
        self._note_schema(conn)

    def _note_schema(self, conn: Connection) -> None:
        """Readers reload their schema, and known-cheap texts are relearned, after a change
        (VACUUM bumps the schema cookie too)."""
        version = conn.internal(SCHEMA_VERSION)[0][0]
        if version != self._schema_version:
            self._schema_version = version
            self.schema_generation += 1

    # -- compaction ---------------------------------------------------------------------------
    async def compact(self) -> Compacted:
        """Rewrite the database file without its free pages (VACUUM), as the next txid, under
        the write lock (waited for up to busy_timeout, as a write transaction does); with a
        commit log, the log then continues from a snapshot of the compacted file, which is
        in the store when this returns. Writes wait meanwhile. The work runs in a task of
        its own: a client that goes away does not stop it half way."""
        await self._take_write_lock(f"a transaction held the write lock of {self.name}/"
                                    f"{self.branch} for over busy_timeout "
                                    f"({self.settings.busy_timeout:g} s); compaction needs it")
        task = asyncio.get_running_loop().create_task(self._compact_locked(),
                                                      context=contextvars.Context())
        # its error is the request's; if the request went away, nobody asks: no warning
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        done = await asyncio.shield(task)
        await self.wait_durable(done.txid)
        return done

    async def _compact_locked(self) -> Compacted:
        """compact, holding the write lock (released here)."""
        started = time.monotonic()
        try:
            before = await self._off_loop(None, self._storage, False)
            await self._off_loop(None, self._upgrade, self.writer)  # shipped by the next step
            await self._checkpoint_first()
            if self.journal is not None:
                # Nothing of what follows is captured: the log is re-based after it, even
                # if the VACUUM fails (a snapshot of the state the file then holds).
                self.journal.broken = True
            try:
                txid = await self._off_loop(None, self._vacuum)
            except BaseException:
                with contextlib.suppress(Exception):  # the VACUUM's own error is the answer
                    await self._checkpoint_after()
                raise
            await self._checkpoint_after()
            after, on_disk = await self._off_loop(None, self._storage, True)
        finally:
            self.write_lock.release()
            self.wake.set()
        return Compacted(txid, before[0], after, on_disk, time.monotonic() - started)

    def _storage(self, files: bool) -> tuple[int, int]:
        """Worker thread: (logical bytes of the database, bytes of its files on disk)."""
        conn = self.writer
        assert conn is not None
        logical = conn.internal(PAGE_BYTES)[0][0]
        if not files:
            return logical, 0
        return logical, branch_bytes(self.path)

    async def _checkpoint_first(self) -> None:
        """Before VACUUM: ship every captured commit and checkpoint the whole WAL, or refuse
        with nothing changed. So VACUUM runs only when the checkpoint after it can
        complete (the readers that would keep it from completing are the ones open now),
        and the WAL then holds only compaction's own commits (see _vacuum)."""
        conn = self.writer
        assert conn is not None
        try:
            if self.journal is not None:
                done = await self.journal.settle(self)
            else:
                done = await self._off_loop(None, conn.checkpoint, True)
        except STORE_FAILURES as exc:  # the store is down or slow, or the timeline was taken
            raise ShoalError(Code.STORAGE_UNAVAILABLE, f"{self.name}/{self.branch} was not "
                                                       f"compacted: its commits could not be "
                                                       f"shipped first: {exc}") from None
        if not done:
            raise ShoalError(Code.DATABASE_BUSY, f"open read transactions keep the WAL of "
                                                 f"{self.name}/{self.branch} from being "
                                                 f"checkpointed; compaction needs them to end "
                                                 f"(nothing was changed)")

    def _vacuum(self) -> int:
        """Worker thread: bump the txid in a commit of its own, then VACUUM (which cannot run
        in a transaction and commits by itself). In this order, because a node killed
        before the re-base recovers the WAL's commits by numbering them backwards from the
        file's txid: the VACUUM commit, last, takes the new txid, and it is a whole image
        of the file (it writes every page), so shipped as that txid it restores exactly;
        the bump's commit, numbered as the txid before, is already in the store (the WAL
        held nothing else: _checkpoint_first)."""
        conn = self.writer
        assert conn is not None
        txid = self.txid + 1
        try:
            conn.internal(BEGIN_IMMEDIATE)
            try:
                conn.internal(self.layout.set_txid, (txid,))
                self._commit_txid(conn, txid)
            except BaseException:
                if not conn.raw.get_autocommit():
                    conn.internal(ROLLBACK)
                raise
            self._committed(conn, txid)
            conn.internal(VACUUM, large=True)
            self._note_schema(conn)
        except apsw.Error as exc:
            raise from_sqlite(exc) from None
        return txid

    async def _checkpoint_after(self) -> None:
        """After VACUUM: checkpoint the WAL into the file, so it shrinks (with a commit log:
        and re-base the log on a snapshot of it). Readers that began since
        _checkpoint_first may hold it up: retried up to busy_timeout, then DATABASE_BUSY
        (the compaction stays committed on this node; the next commit re-bases the log)."""
        conn = self.writer
        assert conn is not None
        deadline = time.monotonic() + self.settings.busy_timeout
        while True:
            try:
                if self.journal is not None:
                    await self.journal.rebase(self)
                elif not await self._off_loop(None, conn.checkpoint, True):
                    raise CheckpointBlocked("readers kept the checkpoint from finishing")
                return
            except CheckpointBlocked:
                if time.monotonic() >= deadline:
                    later = " and the log is re-based with the next commit" \
                        if self.journal is not None else ""
                    raise ShoalError(
                        Code.DATABASE_BUSY, f"{self.name}/{self.branch} was compacted at txid "
                                         f"{self.txid}, but open read transactions keep its "
                                         f"WAL from being checkpointed, so the file has not "
                                         f"shrunk yet{later}") from None
                await asyncio.sleep(0.05)
            except STORE_FAILURES as exc:
                raise ShoalError(Code.STORAGE_UNAVAILABLE, f"{self.name}/{self.branch} was "
                                                           f"compacted at txid {self.txid}, but "
                                                           f"its snapshot could not be stored "
                                                           f"yet (the log is re-based with the "
                                                           f"next commit): {exc}") from None
