"""One pooled SQLite connection and the code that runs a request's statements on it.

Everything about a statement is learned from SQLite itself through apsw's
exec tracer, called after a statement is prepared and before it steps: its
columns and declared types (even when it returns no rows), whether it is
read-only (``sqlite3_stmt_readonly``), and whether the text held a second
statement (refused). A progress handler enforces the time budget.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import apsw

from shoal.engine.policy import TRANSACTION_CONTROL, Guard
from shoal.errors import ShoalError, from_sqlite
from shoal.values import SQLValue, decode_args, encode_row

# Tags Shoal's own SQL (in a comment); see Connection.internal.
TAG = secrets.token_hex(8)

OPEN_FLAGS = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_NOMUTEX

SCHEMA = """
CREATE TABLE IF NOT EXISTS _shoal_state(
    k INTEGER PRIMARY KEY CHECK (k = 0),
    txid INTEGER NOT NULL
);
INSERT OR IGNORE INTO _shoal_state(k, txid) VALUES (0, 0);
CREATE TABLE IF NOT EXISTS _shoal_idempotency(
    subject TEXT NOT NULL,
    key TEXT NOT NULL,
    body_hash BLOB NOT NULL,
    status INTEGER NOT NULL,
    response BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (subject, key)
) WITHOUT ROWID;
"""


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
                    "INVALID_REQUEST",
                    "a statement is a string or an object {\"sql\": string, \"args\": [..]|{..}}",
                )
            return cls(sql, decode_args(item.get("args")))
        raise ShoalError("INVALID_REQUEST", "each statement must be a string or an object")


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
    """The inline time budget ran out: run the request again off the event loop."""


class TransactionControl(ShoalError):
    """SQLite refused a transaction statement that was the whole entry (BEGIN, COMMIT, ...).

    The native API shows it as SQL_NOT_ALLOWED (every request is a transaction);
    Hrana clients send transactions as SQL, so their streams map it to
    Engine.begin / tx_end. ``verb`` is what SQLite's authorizer reported;
    ``immediate`` says whether a BEGIN takes the write lock at once
    (IMMEDIATE, EXCLUSIVE), as SQLite itself decides on a scratch database.
    """

    def __init__(self, verb: str, immediate: bool, message: str, statement: int):
        super().__init__("SQL_NOT_ALLOWED", message, statement=statement)
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
            raise ShoalError("MULTIPLE_STATEMENTS", "one entry held more than one SQL statement",
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
    soft_budget: float | None = None  # inline fast path: give up early, retry in a thread


@dataclass
class Counters:
    rows_read: int = 0
    rows_written: int = 0
    bytes: int = 0
    results: list[Result] = field(default_factory=list)


def configure_sqlite(lookaside_slot: int = 128, lookaside_count: int = 32) -> None:
    """Process-wide SQLite settings; call before the first connection opens.

    SQLite's default lookaside (1,200 x 100 bytes per connection) is most of the
    memory of an idle connection, and a node keeps thousands: a small one keeps
    most of its speed for a fraction of the memory.
    """
    apsw.shutdown()
    apsw.config(apsw.SQLITE_CONFIG_LOOKASIDE, lookaside_slot, lookaside_count)
    apsw.initialize()


class Connection:
    """An apsw connection with its authorizer, tracer and time budget."""

    def __init__(self, path: str, *, reader: bool, synchronous: str = "full",
                 manual_checkpoints: bool = False):
        self.reader = reader
        self.raw = apsw.Connection(path, flags=OPEN_FLAGS)
        if manual_checkpoints:
            # The commit log decides when WAL frames may be backfilled (once they are in
            # the object store): no automatic checkpoint, and none when the last
            # connection closes, which would also delete the WAL and unshipped commits.
            self.raw.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        self.guard = Guard()
        self.deadline = float("inf")
        self.soft_deadline = float("inf")
        self.soft_fired = False
        self.schema_generation = -1  # the writer's schema generation this reader has loaded
        self._count = 0
        self._description: tuple[tuple[str, str | None], ...] = ()
        self._would_write = False
        raw = self.raw
        raw.set_busy_timeout(5000)
        self.internal("PRAGMA journal_mode=WAL")
        self.internal(f"PRAGMA synchronous={synchronous}")
        self.internal("PRAGMA foreign_keys=ON")
        if manual_checkpoints:
            self.internal("PRAGMA wal_autocheckpoint=0")
        if reader:
            self.internal("PRAGMA query_only=1")
        raw.authorizer = self.guard
        raw.exec_trace = self._trace
        raw.set_progress_handler(self._progress, 1000)

    def close(self) -> None:
        self.raw.close()

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
        now = time.monotonic()
        if now > self.soft_deadline:
            self.soft_fired = True
            return True
        return now > self.deadline

    # -- internal statements ----------------------------------------------------------------
    def internal(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        """Run Shoal's own SQL with the authorizer off.

        The authorizer only runs when a statement is prepared, so a cached internal
        statement must never be reachable by user SQL: only statements carrying the
        per-process secret TAG (which no user can know or read back) are cached.
        """
        self.guard.internal = True
        try:
            return list(self.raw.cursor().execute(sql, args, can_cache=TAG in sql))
        finally:
            self.guard.internal = False

    # -- user statements --------------------------------------------------------------------
    def run(self, statements: list[Statement], limits: Limits, first_index: int = 0) -> Counters:
        """Run statements in order; any failure raises ShoalError naming the statement index.

        The caller owns the transaction (BEGIN/SAVEPOINT) around this call.
        """
        out = Counters()
        now = time.monotonic()
        self.soft_deadline = now + limits.soft_budget if limits.soft_budget else float("inf")
        self.soft_fired = False
        try:
            for i, stmt in enumerate(statements):
                self.deadline = time.monotonic() + limits.statement_timeout
                self._run_one(stmt, first_index + i, limits, out)
        finally:
            self.deadline = self.soft_deadline = float("inf")
        return out

    def describe(self, sql: str) -> Description:
        """Prepare sql under the authorizer and report it without stepping it."""
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
                    raise ShoalError("INVALID_ARGUMENT", str(exc)) from None
                bindings = (None,) * int(wanted.group(1))
                continue
            except apsw.ExecTraceAbort:
                pass
            except (apsw.AuthError, apsw.SQLError) as exc:
                reason, control = self.guard.reason, self.guard.control
                self.guard.reason = self.guard.control = None
                if reason and reason[0] == TRANSACTION_CONTROL and control:
                    return Description([], [], [], False, True)  # as SQLite describes BEGIN
                if reason:
                    raise ShoalError(reason[0], reason[1]) from None
                raise from_sqlite(exc) from None
            except apsw.Error as exc:
                raise from_sqlite(exc) from None
            break
        return found[0] if found else Description([], [], [], False, True)

    def _run_one(self, stmt: Statement, index: int, limits: Limits, out: Counters) -> None:
        raw = self.raw
        self._count = 0
        self._description = ()
        self._would_write = False
        self.guard.reason = None
        self.guard.control = None
        changes_before = raw.total_changes()
        rows: list[list[Any]] = []
        size = out.bytes
        cursor = raw.cursor()
        try:
            cursor.execute(stmt.sql, stmt.args)
            for row in cursor:
                if not rows:  # SQLite re-prepares a cached statement at its first step after
                    # a schema change; `description` is not cached by apsw (get_description is)
                    self._description = tuple((d[0], d[1]) for d in cursor.description)
                rows.append(encode_row(row))
                size += len(repr(row))
                if size > limits.max_response_bytes:
                    cursor.close(True)  # stop the statement before its savepoint rolls back
                    raise ShoalError(
                        "RESPONSE_TOO_LARGE",
                        f"result exceeds max_response_bytes ({limits.max_response_bytes})",
                        statement=index,
                    )
        except apsw.ExecTraceAbort:
            if self._would_write:
                raise NeedsWriter(stmt.sql) from None
            raise ShoalError(
                "MULTIPLE_STATEMENTS", "one entry held more than one SQL statement",
                statement=index,
            ) from None
        except apsw.InterruptError:
            if self.soft_fired:
                raise SoftDeadline() from None
            raise ShoalError(
                "STATEMENT_TIMEOUT",
                f"statement ran longer than statement_timeout ({limits.statement_timeout:g} s)",
                statement=index,
            ) from None
        except (apsw.AuthError, apsw.SQLError) as exc:  # a denied function is an SQLError
            reason, control = self.guard.reason, self.guard.control
            self.guard.reason = self.guard.control = None
            if reason and reason[0] == TRANSACTION_CONTROL:
                if control and self._count == 0:  # the entry's first statement
                    immediate = control in ("BEGIN", "COMMIT", "ROLLBACK") and \
                        probe_transaction(stmt.sql, control, index)
                    raise TransactionControl(control, immediate, reason[1], index) from None
                reason = ("SQL_NOT_ALLOWED", reason[1])
            if reason:
                raise ShoalError(reason[0], reason[1], statement=index) from None
            raise from_sqlite(exc, index) from None
        except apsw.ReadOnlyError as exc:
            if self.reader:
                raise NeedsWriter(stmt.sql) from None
            raise from_sqlite(exc, index) from None
        except apsw.BindingsError as exc:
            raise ShoalError("INVALID_ARGUMENT", str(exc), statement=index) from None
        except apsw.Error as exc:
            raise from_sqlite(exc, index) from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise ShoalError("INVALID_ARGUMENT", str(exc), statement=index) from None
        except KeyError as exc:  # apsw: a named parameter missing from the args object
            raise ShoalError("INVALID_ARGUMENT", f"no value for parameter {exc}",
                             statement=index) from None
        written = raw.total_changes() - changes_before
        desc: tuple[tuple[str, str | None], ...] = self._description
        out.rows_read += len(rows)
        out.rows_written += written
        out.bytes = size
        out.results.append(Result(
            columns=[d[0] for d in desc],
            decltypes=[d[1] for d in desc],
            rows=rows,
            rows_affected=raw.changes() if written else 0,
            last_insert_rowid=raw.last_insert_rowid() if written else None,
            rows_read=len(rows),
        ))
