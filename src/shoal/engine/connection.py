"""One pooled SQLite connection and the code that runs a request's statements on it.

Everything about a statement is learned from SQLite itself through apsw's
exec tracer, called after a statement is prepared and before it steps: its
columns and declared types (even when it returns no rows), whether it is
read-only (``sqlite3_stmt_readonly``), and whether the text held a second
statement (refused).

Time is bounded by deadlines that ``sqlite3_interrupt`` enforces: the
:class:`Watchdog` thread interrupts a statement past its deadline, whether it is
being prepared (the progress handler never runs then) or stepped, and an inline
run on the event loop also has a progress handler for its 2 ms budget. What an
interrupt cannot stop, because SQLite checks for it only between loops of a
statement (one function call, a run of code without a loop), is bounded by
SQLite's limits, set on every connection: the longest value (``max_value_bytes``),
the longest SQL text (``max_sql_bytes``), and the depth and width of expressions;
an inline run has much lower ones (see ``INLINE_LIMITS``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apsw
import msgspec

from shoal.engine.policy import Guard
from shoal.errors import Code, ShoalError, from_sqlite
from shoal.metrics import METRICS
from shoal.rules import DENY
from shoal.values import decode_args
from shoal.wire import SQLValue, encode_row

log = logging.getLogger("shoal")

# Tags Shoal's own SQL (in a comment); see Connection.internal.
TAG = secrets.token_hex(8)

# SQLite limits pinned on every connection (a different SQLite build may default otherwise),
# beside max_value_bytes and max_sql_bytes. A LIKE or GLOB call costs up to its pattern's
# length times its subject's, and cannot be interrupted: 1,000 bytes against a 2 MiB value
# is about a second.
LIMITS = {
    apsw.SQLITE_LIMIT_EXPR_DEPTH: 1000,
    apsw.SQLITE_LIMIT_COMPOUND_SELECT: 500,
    apsw.SQLITE_LIMIT_VARIABLE_NUMBER: 32766,
    apsw.SQLITE_LIMIT_FUNCTION_ARG: 1000,
    apsw.SQLITE_LIMIT_COLUMN: 2000,
    apsw.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: 1000,
    apsw.SQLITE_LIMIT_TRIGGER_DEPTH: 100,
}
# An inline run holds the event loop, so what SQLite cannot interrupt must stay tiny there:
# the worst single call at these sizes (ltrim with a 1 KiB character set) takes about 2 ms.
# A statement that needs more is moved to a worker thread, where the limits above apply.
INLINE_VALUE_BYTES = 1024
INLINE_LIMITS = {
    apsw.SQLITE_LIMIT_LENGTH: INLINE_VALUE_BYTES,
    apsw.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: 64,
}
SQLITE_MAX_LENGTH = 1_000_000_000  # SQLite's own ceiling: Shoal's records (a stored response)
DEFER_OFF = f"PRAGMA defer_foreign_keys=OFF /*{TAG}*/"

OPEN_FLAGS = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_NOMUTEX

@dataclass(slots=True)
class Statement:
    sql: str
    args: tuple[SQLValue, ...] | dict[str, SQLValue] | None = None

    @classmethod
    def parse(cls, item: Any) -> Statement:
        """A statement from request JSON: a string, or {"sql", "args"}."""
        if type(item) is str:
            return cls(item)
        if type(item) is dict:
            sql = item.get("sql")
            extra = set(item) - {"sql", "args"}
            if type(sql) is not str or extra:
                raise ShoalError(
                    Code.INVALID_REQUEST,
                    "a statement is a string or an object {\"sql\": string, \"args\": [..]|{..}}",
                )
            return cls(sql, decode_args(item.get("args")))
        raise ShoalError(Code.INVALID_REQUEST, "each statement must be a string or an object")


@dataclass(slots=True)
class Result:
    columns: list[str]
    decltypes: list[str | None]
    rows: list[list[Any]]
    rows_affected: int
    last_insert_rowid: int | None
    rows_read: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "decltypes": self.decltypes,
            "rows": self.rows,
            "rows_affected": self.rows_affected,
            "last_insert_rowid": self.last_insert_rowid,
        }


class NeedsWriter(Exception):
    """A statement run on a reader would write: run the request on the writer."""

    def __init__(self, sql: str):
        super().__init__(sql)
        self.sql = sql  # the statement SQLite found not read-only


class SoftDeadline(Exception):
    """An inline run went past its time budget or its limits: run the request again off
    the event loop. ``index`` is the statement it stopped at (of the request's list), or
    None when no statement did: the request's many cheap statements added up."""

    def __init__(self, index: int | None, held: float):
        super().__init__(index)
        self.index = index
        self.held = held  # seconds the run held the event loop


class TransactionControl(ShoalError):
    """SQLite refused a transaction statement that was the whole entry (BEGIN, COMMIT, ...).

    The native API shows it as SQL_NOT_ALLOWED (every request is a transaction);
    Hrana clients send transactions as SQL, so their streams map it to
    Engine.begin / tx_end. ``verb`` is what SQLite's authorizer reported;
    ``immediate`` says whether a BEGIN takes the write lock at once
    (IMMEDIATE, EXCLUSIVE), as SQLite itself decides on a scratch database.
    """

    def __init__(self, verb: str, immediate: bool, message: str, statement: int):
        super().__init__(Code.SQL_NOT_ALLOWED, message, statement=statement)
        self.verb = verb
        self.immediate = immediate


@dataclass(slots=True)
class Description:
    """A statement as SQLite prepared it, without running it (Hrana's describe)."""

    params: list[str | None]  # with their prefix (":a", "?2"); None for a bare "?"
    columns: list[str]
    decltypes: list[str | None]
    is_explain: bool
    is_readonly: bool


_probes = threading.local()
_BINDINGS_WANTED = re.compile(r"has (\d+) binding")


# A named parameter as SQLite's tokenizer reads one: identifier characters, "::", and
# a Tcl-style "(...)" suffix.
_PARAM = re.compile(r"([:@$])((?:[0-9A-Za-z_$\u0080-\U0010ffff]|::)+(?:\([^)\s]*\))?)")
_RANK = {":": 0, "@": 1, "$": 2}


def _param_names(sql: str, names: tuple[str | None, ...]) -> list[str | None]:
    """apsw drops a parameter's prefix; put back the one the statement uses (":" first,
    then "@", then "$"). One pass over the text, however many parameters it has."""
    named = {name for name in names if name is not None and not name.isdigit()}
    best: dict[str, str] = {}
    if named:
        for match in _PARAM.finditer(sql):
            prefix, name = match.groups()
            if name in named and (name not in best or _RANK[prefix] < _RANK[best[name]]):
                best[name] = prefix
    return [None if name is None else "?" + name if name.isdigit()
            else best.get(name, ":") + name for name in names]


def probe_transaction(sql: str, verb: str, index: int) -> bool:
    """Run a transaction statement on an empty in-memory database, as SQLite would.

    Returns True when a BEGIN takes the write lock at once. Text holding anything
    after the statement is refused (the authorizer only saw the first statement).
    """
    conn: apsw.Connection | None = getattr(_probes, "conn", None)
    if conn is None:
        conn = _probes.conn = apsw.Connection(":memory:")
    seen = 0

    def trace(cursor: apsw.Cursor, _sql: str, _bindings: Any) -> bool:
        nonlocal seen
        if cursor.has_vdbe:
            seen += 1
        return seen <= 1

    def allow(op: int, *_: Any) -> int:
        return apsw.SQLITE_OK if op == apsw.SQLITE_TRANSACTION else apsw.SQLITE_DENY

    if verb != "BEGIN":
        conn.execute("BEGIN")
    try:
        cursor = conn.cursor()
        cursor.exec_trace = trace
        conn.authorizer = allow
        try:
            cursor.execute(sql).fetchall()
        except apsw.Error:
            raise ShoalError(Code.MULTIPLE_STATEMENTS, "one entry held more than one SQL statement",
                             statement=index) from None
        finally:
            conn.authorizer = None
        return bool(conn.txn_state() == apsw.SQLITE_TXN_WRITE)
    finally:
        if not conn.get_autocommit():
            conn.execute("ROLLBACK")


@dataclass
class Limits:
    statement_timeout: float
    max_response_bytes: int
    # inline fast path (on the event loop): give up early and rerun on a worker thread
    soft_budget: float | None = None


@dataclass
class Counters:
    rows_read: int = 0
    rows_written: int = 0
    bytes: int = 0
    results: list[Result] = field(default_factory=list)
    elapsed: float = 0.0  # seconds the statements took, prepare included
    widest: int = 0  # bytes of the largest row returned (as JSON)
    schema: bool = False  # a statement changed the schema (the authorizer saw it: the audit log)


def configure_sqlite(lookaside_slot: int = 128, lookaside_count: int = 32,
                     soft_heap_limit: int = 0, hard_heap_limit: int = 0) -> None:
    """Process-wide SQLite settings; call before the first connection opens.

    SQLite's default lookaside (1,200 x 100 bytes per connection) is most of the
    memory of an idle connection, and a node keeps thousands: a small one keeps
    most of its speed for a fraction of the memory. The heap limits (0: none) keep
    one statement from taking the node's memory: past the soft one SQLite reuses
    cache memory, past the hard one an allocation fails (SQLITE_NOMEM, OUT_OF_MEMORY).
    """
    apsw.shutdown()
    apsw.config(apsw.SQLITE_CONFIG_LOOKASIDE, lookaside_slot, lookaside_count)
    apsw.initialize()
    apsw.soft_heap_limit(soft_heap_limit)
    apsw.hard_heap_limit(hard_heap_limit)


class Watchdog:
    """One thread per process that interrupts SQLite work past its deadline.

    The progress handler runs only every 1,000 VM steps of a statement and never while
    SQLite prepares one (a CASE of 40,000 WHENs took seconds to prepare), so deadlines are
    enforced from here: ``sqlite3_interrupt`` may be called from any thread, and the
    parser and every loop of a running statement look at it. A connection is watched
    while a statement of a request runs on it; every TICK the watchdog interrupts each
    one past its deadline or whose request was abandoned, again at each tick until the
    statement ends (an interrupt that lands before SQLite starts on the statement is
    forgotten by SQLite).
    """

    TICK = 0.005

    def __init__(self) -> None:
        self.busy: set[Connection] = set()
        self._work = threading.Event()  # set while a statement may be busy (not idle ticks)
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    def watch(self, conn: Connection) -> None:
        self.busy.add(conn)  # one set operation under the GIL: safe from any thread
        if not self._work.is_set():
            self._work.set()
        if self._thread is None:
            with self._starting:
                if self._thread is None:
                    thread = threading.Thread(target=self._run, name="shoal-watchdog",
                                              daemon=True)
                    thread.start()
                    self._thread = thread

    def _run(self) -> None:
        while True:
            self._work.wait()
            time.sleep(self.TICK)
            now = time.monotonic()
            busy = self.busy.copy()
            if not busy:  # idle: sleep until a statement starts (a wake-up takes the GIL)
                self._work.clear()
                if self.busy:  # one started meanwhile
                    self._work.set()
                continue
            for conn in busy:
                try:
                    conn.expire(now)
                except Exception:  # the watchdog must outlive anything
                    log.exception("watchdog: interrupting a statement failed")


WATCHDOG = Watchdog()


def _deny(*args: SQLValue) -> SQLValue:
    """SQL's shoal_deny(verb): fails the statement it runs in. The data API's writes call it
    for a row the table's rule refuses (shoal.rules); anyone else calling it only fails
    their own statement."""
    verb = str(args[0])[:20] if args else "row"
    raise ShoalError(Code.RULE_DENIED, f"a row does not pass the table's {verb} rule")


class Connection:
    """An apsw connection with its authorizer, tracer, limits and deadline."""

    def __init__(self, path: str, *, reader: bool, synchronous: str = "full",
                 manual_checkpoints: bool = False, max_value_bytes: int | None = None,
                 max_sql_bytes: int | None = None, busy_timeout: float = 5.0,
                 wal: bool = True):
        self.reader = reader
        self.raw = apsw.Connection(path, flags=OPEN_FLAGS)
        if manual_checkpoints:
            # The commit log decides when WAL frames may be backfilled (once they are in
            # the object store): no automatic checkpoint, and none when the last
            # connection closes, which would also delete the WAL and unshipped commits.
            self.raw.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        self.guard = Guard()
        self.limits: dict[int, int] = dict(LIMITS)
        if max_value_bytes is not None:
            self.limits[apsw.SQLITE_LIMIT_LENGTH] = max_value_bytes
        if max_sql_bytes is not None:
            self.limits[apsw.SQLITE_LIMIT_SQL_LENGTH] = max_sql_bytes
        for limit, value in self.limits.items():
            self.raw.limit(limit, value)
        # between runs a reader rests as an inline run needs it (the hot path switches
        # nothing), a writer as a worker thread's run does
        self._resting = dict(INLINE_LIMITS) if reader else \
            {limit: self.full(limit) for limit in INLINE_LIMITS}
        self.deadline = float("inf")  # of the running statement (under _lock on a worker)
        self._lock = threading.Lock()  # orders the watchdog's interrupt with a statement's end
        self.abandoned = False  # the request awaiting this work went away (reset by its owner)
        self._cancelled: Callable[[], bool] | None = None  # the same, asked of the request
        self.schema_generation = -1  # the writer's schema generation this reader has loaded
        self.size_cap = 0  # bytes the file may hold (max_page_count; 0: SQLite's own maximum)
        self._count = 0
        self._description: tuple[tuple[str, str | None], ...] = ()
        self._would_write = False
        raw = self.raw
        # SQLite's own wait for a lock (a checkpoint waiting out readers, for one): the
        # writers of one process already queue on the write lock, within busy_timeout
        raw.set_busy_timeout(round(busy_timeout * 1000))
        if wal:  # (a follower's copy is not: engine/replica.py)
            self.internal("PRAGMA journal_mode=WAL")
        self.internal(f"PRAGMA synchronous={synchronous}")
        self.internal("PRAGMA foreign_keys=ON")
        if manual_checkpoints:
            self.internal("PRAGMA wal_autocheckpoint=0")
        if reader:
            self.internal("PRAGMA query_only=1")
        raw.create_scalar_function(DENY, _deny)
        raw.authorizer = self.guard
        raw.exec_trace = self._trace
        if reader:
            self._tighten()

    def close(self) -> None:
        self.raw.close()

    def release_cache(self) -> None:
        """Give back the memory of SQLite's page cache (``sqlite3_db_release_memory``).

        At its first read a connection allocates room for 20 pages at once (about 88 KB,
        touched as it is carved up, so resident) and keeps it until it closes, however
        few pages the database has: most of a quiet connection's memory. Releasing frees
        it and every cached page; the schema and the prepared statements stay, and the
        next statement reads its pages from the file again (from the OS's cache). Only
        for a connection at rest: no statement running or in a transaction of its own.
        """
        self.raw.release_memory()

    def full(self, limit: int) -> int:
        """The node's value of a limit (SQLite's own where the node sets none)."""
        return self.limits.get(limit, SQLITE_MAX_LENGTH)

    # -- deadlines ---------------------------------------------------------------------------
    def _arm(self, deadline: float) -> None:
        with self._lock:
            self.deadline = deadline
        WATCHDOG.watch(self)

    def _disarm(self) -> None:
        """After this returns, the watchdog interrupts nothing more on this connection."""
        with self._lock:
            WATCHDOG.busy.discard(self)
            self.deadline = float("inf")

    def expire(self, now: float) -> None:
        """Watchdog thread: interrupt the running statement if it is past its deadline or
        its request is gone."""
        if now < self.deadline and not self.abandoned and \
                (self._cancelled is None or not self._cancelled()):
            return
        with self._lock:
            if self in WATCHDOG.busy:
                self.raw.interrupt()

    def abandon(self) -> None:
        """The request awaiting this connection's work went away (its client left): stop
        its statement now (and at every watchdog tick until it ends)."""
        self.abandoned = True
        self.expire(time.monotonic())

    # -- hooks -----------------------------------------------------------------------------
    def _trace(self, cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        if self.guard.internal or not cursor.has_vdbe:  # no VDBE: only comments, nothing runs
            return True
        self._count += 1
        if self._count > 1:
            return False
        self._description = cursor.get_description()
        if self.reader and not cursor.is_readonly:
            self._would_write = True
            return False
        return True

    def _progress(self) -> bool:
        """An inline run's budget, checked every 1,000 VM steps (only set while one runs:
        a Python callback on a worker thread would take the GIL from the event loop)."""
        return time.monotonic() > self.deadline

    # -- internal statements ----------------------------------------------------------------
    def internal(self, sql: str, args: Any = None, *,
                 large: bool = False) -> list[tuple[Any, ...]]:
        """Run Shoal's own SQL with the authorizer off.

        The authorizer only runs when a statement is prepared, so a cached internal
        statement must never be reachable by user SQL: only statements carrying the
        per-process secret TAG (which no user can know or read back) are cached.
        ``large``: the statement moves a record bigger than a user value may be (a stored
        response is up to max_response_bytes).
        """
        self.guard.internal = True
        if large:
            self.raw.limit(apsw.SQLITE_LIMIT_LENGTH, SQLITE_MAX_LENGTH)
        try:
            return list(self.raw.cursor().execute(sql, args, can_cache=TAG in sql))
        finally:
            self.guard.internal = False
            if large:
                self.raw.limit(apsw.SQLITE_LIMIT_LENGTH, self._resting[apsw.SQLITE_LIMIT_LENGTH])

    @contextlib.contextmanager
    def unguarded(self) -> Iterator[None]:
        """Shoal's own work through apsw's other doors (the change capture's session, which
        prepares SQL of its own) with the authorizer off. Nothing prepared meanwhile may be
        cached under a text a user could send: apsw does not cache the session's SQL."""
        self.guard.internal = True
        try:
            yield
        finally:
            self.guard.internal = False

    def cap_size(self, size: int) -> None:
        """Let the file grow to ``size`` bytes at most (0: no cap): a statement that needs
        more pages fails with SQLITE_FULL, which :meth:`full` tells from a full disk. A cap
        below the file's size holds it where it is: deletes and updates in place still
        work, and free pages are reused."""
        page = self.internal("PRAGMA page_size")[0][0]
        self.internal(f"PRAGMA max_page_count = {size // page if size else MAX_PAGES}")
        self.size_cap = size

    def full_error(self, exc: apsw.Error, index: int | None = None) -> ShoalError:
        """SQLITE_FULL: the database's size limit if it has one and the disk has room (the
        two look the same to SQLite), else the node's full disk."""
        if self.size_cap and _disk_has_room(self.raw.filename):
            METRICS.quota_refusals.labels("size_bytes").inc()
            err = ShoalError(Code.DATABASE_FULL, f"the database reached its size limit "
                                                 f"({self.size_cap} bytes)",
                             limit="size_bytes", value=self.size_cap)
            if index is not None:
                err.extra["statement"] = index
            return err
        return from_sqlite(exc, index)

    def checkpoint(self, truncate: bool = False) -> bool:
        """Checkpoint the WAL into the database file (TRUNCATE: and empty the WAL, waiting
        up to the busy timeout for readers); True if every frame was backfilled."""
        mode = "TRUNCATE" if truncate else "PASSIVE"
        busy, frames, done = self.internal(f"PRAGMA wal_checkpoint({mode})")[0]
        return bool(busy == 0 and frames == done)

    def deferred_violations(self) -> ShoalError | None:
        """The error a COMMIT would fail with now for deferred foreign keys (the
        defer_foreign_keys pragma, or keys declared DEFERRABLE INITIALLY DEFERRED), if any."""
        if not self.raw.status(apsw.SQLITE_DBSTATUS_DEFERRED_FKS)[0]:
            return None
        return ShoalError(Code.SQLITE_CONSTRAINT, "FOREIGN KEY constraint failed: deferred foreign "
                                                  "keys were not satisfied at the end of the "
                                                  "request", hint="",
                          extended_code="SQLITE_CONSTRAINT_FOREIGNKEY")

    # -- user statements --------------------------------------------------------------------
    def run(self, statements: list[Statement], limits: Limits, first_index: int = 0,
            cancelled: Callable[[], bool] | None = None) -> Counters:
        """Run statements in order; any failure raises ShoalError naming the statement index.

        The caller owns the transaction (BEGIN/SAVEPOINT) around this call. Each statement,
        prepare included, runs under a deadline the watchdog enforces; ``cancelled`` says
        whether the request went away (its statement is then interrupted too). An inline
        run (``limits.soft_budget``) is bounded by SQLite limits of its own and raises
        SoftDeadline when it needs more than they allow.
        """
        out = Counters()
        started = time.monotonic()
        if limits.soft_budget is not None:  # inline: on the event loop, a reader at rest
            self.deadline = started + limits.soft_budget  # for the progress handler
            try:
                for i, stmt in enumerate(statements):
                    # the progress handler looks inside a statement (every 1,000 VM steps):
                    # thousands of tiny ones would never meet it
                    if i and time.monotonic() > self.deadline:
                        raise SoftDeadline(None, time.monotonic() - started)
                    self._run_one(stmt, first_index + i, limits, out, started)
            finally:
                self.deadline = float("inf")
        else:
            tight = self.reader
            if tight:
                self._loosen()
            self._cancelled = cancelled
            try:
                for i, stmt in enumerate(statements):
                    self._arm(time.monotonic() + limits.statement_timeout)
                    try:
                        self._run_one(stmt, first_index + i, limits, out, started)
                    finally:
                        self._disarm()
            finally:
                self._cancelled = None
                if tight:
                    self._tighten()
        out.elapsed = time.monotonic() - started
        return out

    def _tighten(self) -> None:
        """As an inline run needs it: the inline limits and the progress handler (the
        watchdog's tick is coarser than the inline budget)."""
        raw = self.raw
        for limit, value in INLINE_LIMITS.items():
            raw.limit(limit, value)
        raw.set_progress_handler(self._progress, 1000)

    def _loosen(self) -> None:
        """As a worker thread's run needs it: the node's limits, no progress handler (its
        Python callback would take the GIL from the event loop every 1,000 VM steps)."""
        raw = self.raw
        for limit in INLINE_LIMITS:
            raw.limit(limit, self.full(limit))
        raw.set_progress_handler(None)

    def describe(self, sql: str, timeout: float) -> Description:
        """Prepare sql under the authorizer and report it without stepping it; the prepare
        is interrupted after ``timeout`` seconds."""
        self._arm(time.monotonic() + timeout)
        try:
            return self._describe(sql)
        except apsw.InterruptError:
            raise _timeout(timeout) from None
        finally:
            self._disarm()

    def _describe(self, sql: str) -> Description:
        found: list[Description] = []

        def trace(cursor: apsw.Cursor, _sql: str, _bindings: Any) -> bool:
            if not cursor.has_vdbe:
                return True
            desc = cursor.get_description()
            found.append(Description(
                _param_names(sql, cursor.bindings_names),
                [d[0] for d in desc], [d[1] for d in desc],
                bool(cursor.is_explain), bool(cursor.is_readonly)))
            return False

        cursor = self.raw.cursor()
        cursor.exec_trace = trace
        self.guard.reason = self.guard.control = None
        bindings: tuple[None, ...] | None = None
        for _ in range(2):
            try:
                cursor.execute(sql, bindings)
            except apsw.BindingsError as exc:  # apsw binds before tracing: bind NULLs
                wanted = _BINDINGS_WANTED.search(str(exc))
                if wanted is None or bindings is not None:
                    raise ShoalError(Code.INVALID_ARGUMENT, str(exc)) from None
                bindings = (None,) * int(wanted.group(1))
                continue
            except apsw.ExecTraceAbort:
                pass
            except apsw.InterruptError:
                raise
            except apsw.TooBigError as exc:
                raise self._too_big(exc, sql) from None
            except (apsw.AuthError, apsw.SQLError) as exc:
                reason, control = self.guard.reason, self.guard.control
                self.guard.reason = self.guard.control = None
                if reason and control:
                    return Description([], [], [], False, True)  # as SQLite describes BEGIN
                if reason:
                    raise ShoalError(reason[0], reason[1]) from None
                raise from_sqlite(exc) from None
            except apsw.Error as exc:
                raise from_sqlite(exc) from None
            break
        return found[0] if found else Description([], [], [], False, True)

    def _run_one(self, stmt: Statement, index: int, limits: Limits, out: Counters,
                 started: float) -> None:
        raw = self.raw
        self._count = 0
        self._description = ()
        self._would_write = False
        self.guard.reason = None
        self.guard.control = None
        self.guard.schema = False
        changes_before = raw.total_changes()
        rows: list[list[Any]] = []
        size = out.bytes
        budget = limits.max_response_bytes
        cursor = raw.cursor()
        try:
            cursor.execute(stmt.sql, stmt.args)
            for row in cursor:
                if not rows:  # SQLite re-prepares a cached statement at its first step after
                    # a schema change; `description` is not cached by apsw (get_description is)
                    self._description = tuple((d[0], d[1]) for d in cursor.description)
                encoded = encode_row(row)
                rows.append(encoded)
                width = len(_json.encode(encoded)) + 1  # the row as the response holds it
                size += width
                if width > out.widest:
                    out.widest = width
                if size > budget:
                    cursor.close(True)  # stop the statement before its savepoint rolls back
                    raise _too_large(budget, index)
        except apsw.ExecTraceAbort:
            if self._would_write:
                raise NeedsWriter(stmt.sql) from None
            raise ShoalError(
                Code.MULTIPLE_STATEMENTS, "one entry held more than one SQL statement",
                statement=index,
            ) from None
        except apsw.InterruptError:
            if limits.soft_budget is not None:
                raise SoftDeadline(index, time.monotonic() - started) from None
            if self.abandoned or (self._cancelled is not None and self._cancelled()):
                raise stopped(index) from None
            raise _timeout(limits.statement_timeout, index) from None
        except apsw.TooBigError as exc:
            if limits.soft_budget is not None:  # the inline limits, not the node's
                raise SoftDeadline(index, time.monotonic() - started) from None
            raise self._too_big(exc, stmt.sql, index) from None
        except (apsw.AuthError, apsw.SQLError) as exc:  # a denied function is an SQLError
            reason, control = self.guard.reason, self.guard.control
            self.guard.reason = self.guard.control = None
            if reason and control and self._count == 0:  # the entry's first statement
                immediate = control in ("BEGIN", "COMMIT", "ROLLBACK") and \
                    probe_transaction(stmt.sql, control, index)
                raise TransactionControl(control, immediate, reason[1], index) from None
            if reason:
                raise ShoalError(reason[0], reason[1], statement=index) from None
            raise from_sqlite(exc, index) from None
        except apsw.ReadOnlyError as exc:
            if self.reader:
                raise NeedsWriter(stmt.sql) from None
            raise from_sqlite(exc, index) from None
        except apsw.BindingsError as exc:
            raise ShoalError(Code.INVALID_ARGUMENT, str(exc), statement=index) from None
        except apsw.FullError as exc:
            raise self.full_error(exc, index) from None
        except apsw.Error as exc:
            raise from_sqlite(exc, index) from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise ShoalError(Code.INVALID_ARGUMENT, str(exc), statement=index) from None
        except KeyError as exc:  # apsw: a named parameter missing from the args object
            raise ShoalError(Code.INVALID_ARGUMENT, f"no value for parameter {exc}",
                             statement=index) from None
        written = raw.total_changes() - changes_before
        desc: tuple[tuple[str, str | None], ...] = self._description
        columns = [d[0] for d in desc]
        decltypes = [d[1] for d in desc]
        # the result's names and its fixed fields, as the response holds them (roughly)
        size += 96 + 12 * len(columns) + sum(map(len, columns)) + \
            sum(map(len, filter(None, decltypes)))
        if size > budget:
            raise _too_large(budget, index)
        out.rows_read += len(rows)
        out.rows_written += written
        if self.guard.schema:
            out.schema = True
        out.bytes = size
        out.results.append(Result(
            columns=columns,
            decltypes=decltypes,
            rows=rows,
            rows_affected=raw.changes() if written else 0,
            last_insert_rowid=raw.last_insert_rowid() if written else None,
            rows_read=len(rows),
        ))

    def _too_big(self, exc: apsw.Error, sql: str, index: int | None = None) -> ShoalError:
        """SQLITE_TOOBIG, naming the limit that was passed."""
        err = from_sqlite(exc, index)
        sql_limit = self.limits.get(apsw.SQLITE_LIMIT_SQL_LENGTH)
        if sql_limit is not None and len(sql) >= sql_limit // 4 and \
                len(sql.encode()) > sql_limit:
            err.message = f"the SQL text is longer than max_sql_bytes ({sql_limit})"
        else:
            value_limit = self.limits.get(apsw.SQLITE_LIMIT_LENGTH, SQLITE_MAX_LENGTH)
            err.message = (f"a string, blob or row would be longer than max_value_bytes "
                           f"({value_limit})")
        err.args = (err.message,)
        return err


_json = msgspec.json.Encoder()
MAX_PAGES = 4294967294  # SQLite's largest max_page_count
ROOM = 64 << 20  # free bytes on the disk past which SQLITE_FULL means the size limit


def _disk_has_room(path: str) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize > ROOM


def _timeout(timeout: float, index: int | None = None) -> ShoalError:
    err = ShoalError(Code.STATEMENT_TIMEOUT,
                     f"statement ran longer than statement_timeout ({timeout:g} s)")
    if index is not None:
        err.extra["statement"] = index
    return err


def stopped(index: int | None = None) -> ShoalError:
    """What a request whose client went away gets (nobody reads it): its statement was
    interrupted, or it never ran."""
    err = ShoalError(Code.STATEMENT_TIMEOUT, "statement stopped: its client went away")
    if index is not None:
        err.extra["statement"] = index
    return err


def _too_large(budget: int, index: int) -> ShoalError:
    return ShoalError(Code.RESPONSE_TOO_LARGE, f"result exceeds max_response_bytes ({budget})",
                      statement=index)
