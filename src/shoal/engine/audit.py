"""The audit log: one record per API request (who, what, when, how it ended), kept in the
object store as append-only, immutable objects.

::

    audit/{first_ms:013d}-{node}-{seq:06d}.jsonl.zst   zstandard-compressed JSON lines

Each line is one record as a JSON array, in :class:`Stored`'s field order (the cheapest
form to write: the entry as the server made it, encoded as it is); the node is the key's.
``GET /v1/audit`` shows each as an object (:class:`Record`, its time in RFC 3339).
``first_ms`` is the time of the object's earliest record (milliseconds since the epoch),
so keys sort by time; the records of one object span at most SPAN_MS, so a reader that
wants the records from time T lists from ``T - SPAN_MS`` and skips nothing. Each node
writes its own objects (its id is in the key), with ``If-None-Match: *``: an object is
never overwritten, and a node never writes another's. A record holds no argument, SQL
text, token, secret or idempotency key: only the fields of :class:`Record`.

On the hot path a request costs one tuple appended to a deque (:meth:`AuditLog.add`, on
the event loop). A task flushes the deque every FLUSH_INTERVAL, and at stop: the records
are encoded, compressed and put on the engine's I/O threads. While the store does not
take them they wait in memory, up to ``audit_buffer`` records; past it the oldest are
dropped (``shoal_audit_dropped_records_total``, a WARNING at most every DROP_LOG_EVERY
seconds) and requests are never held back.

How the engine says what a request did: the HTTP layer sets :data:`TALLY` (a
:class:`Tally`) for the request; the engine's metering (``Engine._meter``) and its
transaction calls add to it through :func:`note` (a context variable's get when no one
listens). The statement kind is what the engine saw, never read from SQL: ``schema`` when
SQLite's authorizer reported a schema change (CREATE, DROP, ALTER of a table, index, view,
trigger), ``write`` when the request went to the writer or wrote rows, ``transaction``
for an interactive transaction's begin and end, else ``read``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextvars import ContextVar
from dataclasses import dataclass

import msgspec
import zstandard

from shoal.engine.registry import mapped
from shoal.errors import Code, ShoalError
from shoal.metrics import METRICS
from shoal.storage.base import NotFound, ObjectStore, PreconditionFailed, StoreError

log = logging.getLogger("shoal")

PREFIX = "audit/"
FLUSH_INTERVAL = 1.0  # seconds between flushes of the buffer to the store
SPAN_MS = 60_000  # the records of one object lie within this many milliseconds
OBJECT_RECORDS = 20_000  # most records in one object (a reader holds one object at a time)
PAGE_OBJECTS = 200  # most objects one page of a query reads (then it returns a cursor)
MAX_LIMIT = 1000  # most records one page returns
DROP_LOG_EVERY = 60.0  # seconds between two WARNINGs about dropped records
STOP_FLUSH = 10.0  # seconds the last flush at stop may take
_KEY = re.compile(r"audit/(\d{13})-([0-9A-Za-z_-]{1,64})-(\d{6,})\.jsonl\.zst")

# The kinds of statement, ordered: a request is recorded with the strongest it did.
READ, TRANSACTION, WRITE, SCHEMA = 1, 2, 3, 4
KINDS = ("", "read", "transaction", "write", "schema")
ADMIN = "admin"  # a request that ran no SQL (the server's name for it)


class Tally:
    """What the engine did for one request: the database and branch it ran on, the
    strongest kind of statement, and the rows its metering counted. (Class attributes as
    the defaults: one is made per request, and an instance without ``__init__`` costs
    a third of one with.)"""

    database: str | None = None
    branch: str | None = None
    kind = 0
    rows_read = 0
    rows_written = 0


# Set by the HTTP layer for each request (a WebSocket's for its connection): None when
# nobody listens (a background task, a test calling the engine directly).
TALLY: ContextVar[Tally | None] = ContextVar("shoal_audit_tally", default=None)


def note(database: str, branch: str, kind: int, rows_read: int = 0,
         rows_written: int = 0) -> None:
    """Add what the engine did to the current request's tally, if it has one."""
    tally = TALLY.get()
    if tally is None:
        return
    tally.database = database
    tally.branch = branch
    if kind > tally.kind:
        tally.kind = kind
    tally.rows_read += rows_read
    tally.rows_written += rows_written


# One request as the server hands it over (a tuple: the cheapest thing to build on the hot
# path), and as it is stored (a JSON array): time (unix seconds), token id, subject,
# issuer, method, route template, database, branch, kind, rows read, rows written, HTTP
# status, error code, seconds it took.
Entry = tuple[float, str | None, str | None, str | None, str, str, str | None, str | None,
              str, int, int, int, str | None, float]


class Stored(msgspec.Struct, array_like=True, frozen=True):
    """A stored line (an Entry's fields, in order; new fields only ever go at the end)."""

    time: float
    token: str | None
    subject: str | None
    issuer: str | None
    method: str
    route: str
    database: str | None
    branch: str | None
    kind: str
    rows_read: int
    rows_written: int
    status: int
    code: str | None
    seconds: float


class Record(msgspec.Struct, frozen=True):
    """One request, as stored and as ``GET /v1/audit`` returns it."""

    time: str  # RFC 3339, UTC, milliseconds: sorts as it reads
    node: str
    token: str | None  # the token's id (Principal.subject); None: no valid token
    subject: str | None  # an external identity's subject (Principal.user)
    issuer: str | None
    method: str
    route: str  # the route's template, never the raw path or its query string
    database: str | None
    branch: str | None
    kind: str  # read, transaction, write, schema, admin
    rows_read: int
    rows_written: int
    status: int
    code: str | None  # the error's code (errors.Code), as the client saw it
    ms: float


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Stored)


@dataclass(frozen=True)
class AuditPage:
    """A page of records and the cursor after it (None: no more, as of now)."""

    records: list[Record]
    next_cursor: str | None


class _Clock:
    """Milliseconds since the epoch as RFC 3339 (UTC), the formatted second kept: a page
    formats up to a thousand times."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def __call__(self, ms: int) -> str:
        seconds, millis = divmod(ms, 1000)
        if seconds != self.second:
            self.second = seconds
            self.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        return f"{self.text}.{millis:03d}Z"


def encode_cursor(key: str, index: int) -> str:
    return base64.urlsafe_b64encode(f"{key}\n{index}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, int] | None:
    """(object key, index of the last record returned), or None if it is not a cursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError):
        return None
    key, _, index = raw.partition("\n")
    if not _KEY.fullmatch(key) or not index.isdigit() or len(index) > 9:
        return None
    return key, int(index)


def first_ms(key: str) -> int:
    return int(key[len(PREFIX):len(PREFIX) + 13])


class AuditLog:
    """A node's audit log: its buffer, the task that flushes it, and queries and retention
    over every node's objects. Built with the engine; ``attach`` gives it the store (the
    node's, or a folder in the data directory on a node without one) once the engine opens;
    records added before wait in the buffer."""

    def __init__(self, bound: int, enabled: bool = True):
        self.bound = max(1, bound)
        self.enabled = enabled
        self.buffer: deque[Entry] = deque()
        self.store: ObjectStore | None = None
        self.node = ""
        self.io: Executor | None = None
        self.dropped = 0  # records dropped since start (also a metric)
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one flush at a time (the task's, a query's, stop's)
        self.failing = False  # the last flush failed (said once, until one succeeds)
        self._last_drop_log = 0.0
        self._zstd = zstandard.ZstdCompressor(level=1)  # (3: 40 % slower, 9 % smaller)

    def attach(self, store: ObjectStore, node: str, io: Executor) -> None:
        self.store, self.node, self.io = store, node, io

    # -- the hot path (event loop) ---------------------------------------------------------
    def add(self, entry: Entry) -> None:
        """Buffer one request's record: O(1), never waits; past the bound the oldest goes."""
        buffer = self.buffer
        if len(buffer) >= self.bound:
            buffer.popleft()
            self._dropped(1)
        buffer.append(entry)

    def _dropped(self, n: int) -> None:
        self.dropped += n
        METRICS.audit_dropped.inc(n)
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_EVERY:
            self._last_drop_log = now
            log.warning("audit log: %d records dropped so far: the object store has not "
                        "taken them and audit_buffer (%d) is full", self.dropped, self.bound)

    # -- flushing ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flusher())

    async def stop(self) -> None:
        """Stop the flushing task, then flush what is left (bounded: a store that does not
        answer loses the buffer, said in the log)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), STOP_FLUSH)
        if self.buffer:
            log.warning("audit log: %d records were not written at stop (the object store "
                        "did not take them)", len(self.buffer))

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self.flush()
            except Exception:  # the flusher must survive anything
                log.exception("audit log flush failed")

    async def flush(self) -> int:
        """Write the buffered records (on the I/O threads); return how many were written.
        What the store does not take goes back to the front of the buffer."""
        if self.store is None or self.io is None or not self.buffer:
            return 0
        async with self._lock:
            taken, self.buffer = self.buffer, deque()
            if not taken:
                return 0
            loop = asyncio.get_running_loop()
            written, error = await loop.run_in_executor(self.io, self._write, list(taken))
            if written < len(taken):
                self._requeue(taken, written)
            if error is not None and not self.failing:
                self.failing = True
                log.warning("audit log: the object store did not take %d records (%s); they "
                            "wait in memory (up to audit_buffer = %d)", len(taken) - written,
                            error, self.bound)
            elif error is None and self.failing:
                self.failing = False
                log.info("audit log: the object store takes records again")
            if written:
                METRICS.audit_written.inc(written)
            return written

    def _requeue(self, taken: deque[Entry], written: int) -> None:
        """The records not written go back in front of those added meanwhile; the oldest
        go past the bound."""
        for _ in range(written):
            taken.popleft()
        taken.extend(self.buffer)
        over = len(taken) - self.bound
        if over > 0:
            for _ in range(over):
                taken.popleft()
            self._dropped(over)
        self.buffer = taken

    def _write(self, entries: list[Entry]) -> tuple[int, StoreError | None]:
        """I/O thread: the records as objects of at most OBJECT_RECORDS spanning at most
        SPAN_MS; (records written, the store's error that stopped it, if any)."""
        written = 0
        for chunk in _chunks(entries):
            try:
                self._put(chunk)
            except StoreError as exc:
                return written, exc
            written += len(chunk)
        return written, None

    def _put(self, chunk: list[Entry]) -> None:
        node = self.node
        data = self._zstd.compress(_encoder.encode_lines(chunk))
        low = min(int(e[0] * 1000) for e in chunk)
        for _ in range(100):  # a key taken (a restart within the same ms): the next seq
            self._seq += 1
            key = f"{PREFIX}{low:013d}-{node}-{self._seq:06d}.jsonl.zst"
            try:
                assert self.store is not None
                self.store.put(key, data, if_none_match="*")
                return
            except PreconditionFailed:
                continue
        raise PreconditionFailed(key, "If-None-Match")  # (never: 100 keys taken)

    # -- reading -----------------------------------------------------------------------------
    @mapped
    def page(self, since_ms: int | None, until_ms: int | None,
             wanted: Callable[[str | None], bool] | None, limit: int,
             cursor: tuple[str, int] | None) -> AuditPage:
        """Blocking (I/O thread): up to ``limit`` records in key order (then line order) from
        ``since_ms`` (inclusive) to ``until_ms`` (exclusive) whose database ``wanted``
        accepts (None: all), after ``cursor``. At most PAGE_OBJECTS objects are read: a page
        may hold fewer records than asked and still have a cursor."""
        assert self.store is not None
        since = since_ms / 1000 if since_ms is not None else None
        until = until_ms / 1000 if until_ms is not None else None
        clock = _Clock()
        start = f"{PREFIX}{max(0, since_ms - SPAN_MS):013d}" if since_ms is not None else ""
        if cursor is not None:
            start = max(start, cursor[0][:-1])
        out: list[Record] = []
        read = 0
        for info in self.store.list(PREFIX, start_after=start):
            key = info.key
            if not _KEY.fullmatch(key) or (cursor is not None and key < cursor[0]):
                continue
            if until_ms is not None and first_ms(key) >= until_ms:
                return AuditPage(out, None)
            skip = cursor[1] + 1 if cursor is not None and key == cursor[0] else 0
            lines = self._lines(key)
            node = _KEY.fullmatch(key)[2]  # type: ignore[index]
            read += 1
            for index in range(skip, len(lines)):
                raw = lines[index]
                try:
                    record = _decoder.decode(raw)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue  # (never written so; a record of a later version, perhaps)
                if (since is not None and record.time < since) or \
                        (until is not None and record.time >= until) or \
                        (wanted is not None and not wanted(record.database)):
                    continue
                out.append(Record(clock(int(record.time * 1000)), node, record.token,
                                  record.subject, record.issuer, record.method, record.route,
                                  record.database, record.branch, record.kind,
                                  record.rows_read, record.rows_written, record.status,
                                  record.code, round(record.seconds * 1000, 3)))
                if len(out) >= limit:
                    return AuditPage(out, encode_cursor(key, index))
            if read >= PAGE_OBJECTS:
                return AuditPage(out, encode_cursor(key, max(skip, len(lines)) - 1)
                                 if lines else encode_cursor(key, 0))
        return AuditPage(out, None)

    def _lines(self, key: str) -> list[bytes]:
        assert self.store is not None
        try:
            blob = self.store.get(key)
        except NotFound:  # retention took it between the listing and now
            return []
        try:
            data = zstandard.ZstdDecompressor().decompress(blob.data,
                                                           max_output_size=256 << 20)
        except zstandard.ZstdError as exc:
            raise ShoalError(Code.STORAGE_CORRUPT, f"audit log object {key} does not "
                             f"decompress: {exc}", object=key) from None
        return [line for line in data.split(b"\n") if line]

    @mapped
    def retain(self, now: float, keep: float) -> int:
        """Blocking (I/O thread): delete every node's objects whose records are all older
        than ``keep`` seconds; return how many were deleted. Objects sort by time, so the
        listing stops at the first one still kept."""
        assert self.store is not None
        cutoff = int((now - keep) * 1000) - SPAN_MS
        deleted = 0
        for info in self.store.list(PREFIX):
            if not _KEY.fullmatch(info.key):
                continue
            if first_ms(info.key) >= cutoff:
                break
            self.store.delete(info.key)
            deleted += 1
        return deleted


def _chunks(entries: list[Entry]) -> Iterator[list[Entry]]:
    """The entries cut into runs of at most OBJECT_RECORDS within SPAN_MS of each other."""
    chunk: list[Entry] = []
    low = high = 0.0
    for entry in entries:
        ts = entry[0] * 1000
        if chunk and (len(chunk) >= OBJECT_RECORDS or max(high, ts) - min(low, ts) > SPAN_MS):
            yield chunk
            chunk = []
        if not chunk:
            low = high = ts
        else:
            low, high = min(low, ts), max(high, ts)
        chunk.append(entry)
    if chunk:
        yield chunk
