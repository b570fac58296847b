"""One open branch of a database: a writer with group commit, a reader pool, transactions.

Reads run on reader connections (``query_only``). A read is first tried inline on
the event loop with a small time budget (no thread hop: most point reads take
microseconds); if the budget runs out it is rerun on a worker thread with the full
statement budget. A statement SQLite reports as not read-only moves the whole
request to the writer.

Writes queue for the writer task. It holds the write lock, takes every queued
job, runs each in its own SAVEPOINT of one transaction (a failing job rolls back
alone), bumps the branch txid once, commits once (one fsync), then answers all.
An interactive write transaction holds the same lock, so queued writers wait for
it at most ``busy_timeout`` and then get DATABASE_BUSY.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from shoal.engine.connection import (
    SCHEMA,
    TAG,
    Connection,
    Counters,
    Description,
    Limits,
    NeedsWriter,
    SoftDeadline,
    Statement,
)
from shoal.errors import ShoalError
from shoal.metrics import METRICS

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
SET_TXID = f"UPDATE _shoal_state SET txid = ? /*{_NONCE}*/"
GET_TXID = f"SELECT txid FROM _shoal_state /*{_NONCE}*/"
# OR REPLACE: a record past idempotency_ttl may still be in the file (purged at open only)
PUT_IDEM = (f"INSERT OR REPLACE INTO _shoal_idempotency(subject, key, body_hash, status,"
            f" response, created_at) VALUES (?, ?, ?, ?, ?, ?) /*{_NONCE}*/")
GET_IDEM = (f"SELECT body_hash, status, response, created_at FROM _shoal_idempotency"
            f" WHERE subject = ? AND key = ? /*{_NONCE}*/")
PURGE_IDEM = f"DELETE FROM _shoal_idempotency WHERE created_at < ? /*{_NONCE}*/"

INLINE_BUDGET = 0.002  # seconds a read may hold the event loop before moving to a thread


def make_bookmark(database: str, branch: str, txid: int) -> str:
    raw = f"{database}/{branch}/{txid}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_bookmark(bookmark: str) -> tuple[str, str, int]:
    try:
        raw = base64.urlsafe_b64decode(bookmark + "=" * (-len(bookmark) % 4)).decode()
        database, branch, txid = raw.split("/")
        return database, branch, int(txid)
    except (ValueError, UnicodeDecodeError):
        raise ShoalError("INVALID_REQUEST", "malformed bookmark") from None


@dataclass
class Committed:
    """What a write produced: its statement results and the commit it landed in."""

    counters: Counters
    txid: int
    bookmark: str
    response: tuple[int, bytes] | None = None  # rendered body, when an idempotency key asked


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


class Database:
    """One open branch. Create with :meth:`open`; all methods run on the event loop."""

    def __init__(self, name: str, branch: str, path: str, settings: Any, executor: Executor):
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
        self.active = 0
        self.transactions: dict[str, Transaction] = {}
        self.last_used = time.monotonic()
        self.closed = False
        self._task: asyncio.Task[None] | None = None

    # -- open / close -----------------------------------------------------------------------
    def open(self) -> None:
        """Open the writer (creating the file and Shoal's tables) and start the writer task."""
        writer = Connection(self.path, reader=False, synchronous=self.settings.synchronous)
        try:
            writer.internal(BEGIN_IMMEDIATE)
            writer.internal(SCHEMA)
            self.txid = writer.internal(GET_TXID)[0][0]
            writer.internal(PURGE_IDEM, (time.time() - self.settings.idempotency_ttl,))
            writer.internal(COMMIT)
        except BaseException:
            writer.close()
            raise
        self.writer = writer
        self._task = asyncio.get_running_loop().create_task(self._writer_loop())

    @property
    def idle(self) -> bool:
        return self.active == 0 and not self.transactions and not self.queue \
            and not self.write_lock.locked()

    def close(self) -> None:
        """Release every connection and the writer task. Call only when idle."""
        self.closed = True
        if self._task:
            self._task.cancel()
        for job in self.queue:
            if not job.future.done():
                job.future.set_exception(ShoalError("DATABASE_NOT_FOUND", "database was closed"))
        self.queue.clear()
        for conn in self.readers:
            conn.close()
        self.readers.clear()
        if self.writer:
            self.writer.close()
            self.writer = None

    def bookmark(self, txid: int) -> str:
        return make_bookmark(self.name, self.branch, txid)

    # -- reads ------------------------------------------------------------------------------
    async def _take_reader(self) -> Connection:
        """A reader connection from the pool (opened on demand); pair with _give_reader."""
        await self.reader_slots.acquire()
        try:
            return self.readers.pop() if self.readers else \
                Connection(self.path, reader=True, synchronous=self.settings.synchronous)
        except BaseException:
            self.reader_slots.release()
            raise

    def _give_reader(self, conn: Connection) -> None:
        if self.closed:
            conn.close()
        else:
            self.readers.append(conn)
        self.reader_slots.release()

    async def read(self, statements: list[Statement]) -> tuple[Counters, int]:
        """Run read-only statements on a reader; raise NeedsWriter if one would write."""
        conn = await self._take_reader()
        try:
            txid = self.txid  # the snapshot holds at least this commit
            try:
                return self._read_on(conn, statements, self.inline_limits), txid
            except SoftDeadline:
                loop = asyncio.get_running_loop()
                out = await loop.run_in_executor(
                    self.executor, self._read_on, conn, statements, self.limits)
                return out, txid
        finally:
            self._give_reader(conn)

    @staticmethod
    def _read_on(conn: Connection, statements: list[Statement], limits: Limits) -> Counters:
        # Open the snapshot before preparing: a reader's cached schema may predate the
        # writer's last commit, and statements prepared against it report stale columns
        # or fail ("no such column") where SQLite does not re-check the schema itself.
        conn.internal(BEGIN)
        try:
            conn.internal(GET_TXID)
            return conn.run(statements, limits)
        finally:
            conn.internal(ROLLBACK)

    # -- writes (group commit) --------------------------------------------------------------
    async def write(self, statements: list[Statement],
                    idempotency: IdempotencyRecord | None = None) -> Committed:
        loop = asyncio.get_running_loop()
        job = WriteJob(statements, loop.create_future(),
                       time.monotonic() + self.settings.busy_timeout, idempotency)
        self.queue.append(job)
        METRICS.queue_depth.observe(len(self.queue))
        self.wake.set()
        return await job.future

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
                except BaseException as exc:  # cancelled while committing: fail the batch
                    outcomes = [exc] * len(batch)
                    if isinstance(exc, asyncio.CancelledError):
                        self._answer(batch, outcomes)
                        raise
                finally:
                    self.write_lock.release()
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
                    "DATABASE_BUSY",
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
        txid = self.txid + 1
        bookmark = self.bookmark(txid)
        outcomes: list[Committed | BaseException] = []
        conn.internal(BEGIN_IMMEDIATE)
        try:
            for i, job in enumerate(batch):
                if i in failed:
                    outcomes.append(failed[i])
                    continue
                conn.internal(SAVEPOINT)
                try:
                    counters = conn.run(job.statements, self.limits)
                    done = Committed(counters, txid, bookmark)
                    if job.idempotency:
                        self._record(conn, job.idempotency, done)
                    conn.internal(RELEASE)
                    outcomes.append(done)
                except (ShoalError, NeedsWriter) as exc:
                    if conn.raw.get_autocommit():  # SQLite dropped the whole transaction
                        failed[i] = exc
                        return None
                    conn.internal(ROLLBACK_TO)
                    conn.internal(RELEASE)
                    outcomes.append(exc)
            if any(isinstance(o, Committed) for o in outcomes):
                conn.internal(SET_TXID, (txid,))
                conn.internal(COMMIT)
                self.txid = txid
            else:
                conn.internal(ROLLBACK)
        except BaseException as exc:
            if not conn.raw.get_autocommit():
                conn.internal(ROLLBACK)
            return [exc] * len(batch)
        return outcomes

    @staticmethod
    def _record(conn: Connection, idem: IdempotencyRecord, done: Committed) -> None:
        status, body = idem.render(done)
        conn.internal(PUT_IDEM, (idem.subject, idem.key, idem.body_hash, status, body,
                                 time.time()))
        done.response = (status, body)

    # -- idempotency lookups ------------------------------------------------------------------
    async def find_idempotent(self, subject: str, key: str) -> tuple[bytes, int, bytes] | None:
        """(body_hash, status, response) recorded for this key within the TTL, if any."""
        conn = await self._take_reader()
        try:
            rows = conn.internal(GET_IDEM, (subject, key))
        finally:
            self._give_reader(conn)
        if not rows or rows[0][3] < time.time() - self.settings.idempotency_ttl:
            return None
        body_hash, status, response, _ = rows[0]
        return body_hash, status, response

    async def describe(self, sql: str) -> Description:
        """Prepare sql on a reader (authorizer on) and describe it without running it."""
        conn = await self._take_reader()
        try:
            return conn.describe(sql)
        finally:
            self._give_reader(conn)

    # -- interactive transactions -----------------------------------------------------------
    async def begin(self, tx_id: str, subject: str, write: bool) -> Transaction:
        loop = asyncio.get_running_loop()
        if write:
            try:
                await asyncio.wait_for(self.write_lock.acquire(), self.settings.busy_timeout)
            except TimeoutError:
                raise ShoalError("DATABASE_BUSY", "another transaction holds the write lock") \
                    from None
            conn = self.writer
            assert conn is not None
            try:
                await loop.run_in_executor(self.executor, conn.internal, BEGIN_IMMEDIATE)
            except BaseException:
                self.write_lock.release()
                raise
            start = self.txid  # no commit can land while the write lock is held
        else:
            conn = Connection(self.path, reader=True, synchronous=self.settings.synchronous)
            conn.internal(BEGIN)
            start = conn.internal(GET_TXID)[0][0]  # pin the snapshot now, not at the first query
        tx = Transaction(tx_id, subject, write, conn,
                         time.monotonic() + self.settings.transaction_timeout, start_txid=start)
        self.transactions[tx_id] = tx
        return tx

    async def tx_query(self, tx: Transaction, statements: list[Statement]) -> Counters:
        """Run statements inside the transaction; a failure undoes only this request."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._tx_query, tx, statements)

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
                raise ShoalError("READ_ONLY", "this transaction is read-only") from None
            raise
        conn.internal(RELEASE)
        return out

    async def end(self, tx: Transaction, commit: bool,
                  idempotency: IdempotencyRecord | None = None) -> Committed | None:
        """Commit or roll back; the write lock is released either way."""
        self.transactions.pop(tx.id, None)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, self._end, tx, commit, idempotency)
        finally:
            if tx.write:
                self.write_lock.release()
                self.wake.set()
            else:
                tx.conn.close()

    def _end(self, tx: Transaction, commit: bool,
             idempotency: IdempotencyRecord | None) -> Committed | None:
        conn = tx.conn
        if not (commit and tx.write):
            if not conn.raw.get_autocommit():
                conn.internal(ROLLBACK)
            return None
        txid = self.txid + 1
        done = Committed(Counters(), txid, self.bookmark(txid))
        try:
            if idempotency:
                self._record(conn, idempotency, done)
            conn.internal(SET_TXID, (txid,))
            conn.internal(COMMIT)
        except BaseException:
            with contextlib.suppress(Exception):
                if not conn.raw.get_autocommit():
                    conn.internal(ROLLBACK)
            raise
        self.txid = txid
        return done
