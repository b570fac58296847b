"""A Hrana stream: what a libSQL client thinks of as one SQLite connection, made of Engine calls.

Outside a transaction every statement is its own engine request (``Engine.query``:
reads on a reader, writes through group commit, each with its txid and bookmark).
Transactions arrive as SQL text. SQLite's authorizer refuses transaction
statements on Shoal's pooled connections and says which verb it saw
(``TransactionControl``); the stream turns ``BEGIN`` into ``Engine.begin``,
``COMMIT``/``ROLLBACK`` into ``Engine.tx_end``, and runs statements in between
with ``Engine.tx_query``. SQL text is never inspected to find them.

``BEGIN IMMEDIATE``/``EXCLUSIVE`` open a write transaction at once. A deferred
``BEGIN`` opens a read transaction (a snapshot, no lock) and becomes a write
transaction at its first write, as SQLite does in WAL mode: if another commit
landed since the snapshot was first read, the write fails with ``SQLITE_BUSY``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from shoal.cluster import Moved
from shoal.engine import (
    REQUEST_GONE,
    Committed,
    Idempotency,
    ReadAt,
    Result,
    Statement,
    TransactionControl,
    stopped,
)
from shoal.errors import Code, ShoalError
from shoal.server import hrana_proto as p
from shoal.server.hrana_proto import HranaError
from shoal.server.http import SLICE, paced
from shoal.server.ports import EngineAPI
from shoal.server.quota import Holder, size
from shoal.tokens import Principal

_encode = msgspec.json.encode
EMPTY_DESCRIBE = {"params": [], "cols": [], "is_explain": False, "is_readonly": True}
RESERVE = 256  # response bytes kept back for each entry that may have to be an error
MAX_COND_DEPTH = 100  # batch conditions nest at most this deep
SPLIT_INLINE = 64 * 1024  # longer scripts are split on a worker thread
SQL_ENTRY = 100  # what a stored SQL text costs beyond its own size (its table entry)


class Budget:
    """The bytes a response may still take (max_response_bytes, less what it keeps back),
    shared by everything in it: results, error entries and their wrapping. Once spent
    (something did not fit), no more SQL runs for that response."""

    __slots__ = ("left", "limit", "spent")

    def __init__(self, limit: int, keep: int = RESERVE):
        self.limit = limit
        self.left = limit - keep
        self.spent = self.left < 0

    def take(self, n: int) -> None:
        if n > self.left:
            self.spent = True
            raise self.error()
        self.left -= n

    def check(self) -> None:
        """Refuse to start more work once the budget is spent."""
        if self.spent:
            raise self.error()

    def error(self) -> HranaError:
        return too_large(self.limit)


def too_large(limit: int) -> HranaError:
    return HranaError(Code.RESPONSE_TOO_LARGE, f"the response exceeds max_response_bytes ({limit})")


@dataclass
class TxState:
    """The engine transaction a stream holds after its client ran BEGIN."""

    id: str
    write: bool
    deferred: bool  # may become a write transaction at its first write
    start_txid: int
    owner: Principal  # who began it: closing the stream rolls it back as them, whatever
    used: bool = False  # a statement ran: the snapshot is established


@dataclass
class Ran:
    """One statement's outcome; ``result`` is None for a transaction statement."""

    result: Result | None
    rows_read: int
    rows_written: int
    txid: int | None
    ms: float


class Replay(Exception):
    """The request's Idempotency-Key already has a stored response: send it as it is."""

    def __init__(self, status: int, body: bytes):
        super().__init__("replay")
        self.status = status
        self.body = body


def _unused_render(done: Committed) -> tuple[int, bytes]:
    raise AssertionError("render without an Idempotency-Key")


class Recorder:
    """An Idempotency-Key of one HTTP request, recorded in the same commit as its write.

    The stored response must be the whole response, yet it is rendered inside the
    commit. Each level that is running (pipeline, batch, sequence) pushes a frame
    that knows what it has answered so far and predicts the rest; a rest that would
    run more SQL cannot be predicted, so such a commit is refused (IDEMPOTENCY_SCOPE).
    """

    def __init__(self, idem: Idempotency):
        self.idem = idem
        self.recorded = False
        self.response: tuple[int, bytes] | None = None  # what was recorded: the reply to send
        self.frames: list[Callable[[Any], Any]] = []
        self._attempts = 0

    def for_commit(self, stmt_result: Callable[[Committed], p.StmtResult],
                   ) -> tuple[Idempotency, Callable[[Committed], tuple[int, bytes]]]:
        if self.recorded:  # a later commit: a fresh key that is never found, and refused
            self._attempts += 1
            key = Idempotency(f"{self.idem.key}\x00{self._attempts}", self.idem.body_hash)
            return key, self._refuse
        frames = list(self.frames)

        def render(done: Committed) -> tuple[int, bytes]:
            value: Any = stmt_result(done)
            for frame in reversed(frames):
                value = frame(value)
            return 200, value

        return self.idem, render

    @staticmethod
    def _refuse(done: Committed) -> tuple[int, bytes]:
        raise ShoalError(Code.IDEMPOTENCY_SCOPE, "a request with an Idempotency-Key commits once; "
                                                 "this statement would commit a second time")


def scope_error() -> ShoalError:
    return ShoalError(Code.IDEMPOTENCY_SCOPE,
                      "with an Idempotency-Key, the commit must be the request's last SQL work "
                      "(only close, store_sql, close_sql and get_autocommit may follow it)")


class Stream:
    """One stream; its methods run one at a time (the caller serialises them)."""

    def __init__(self, engine: EngineAPI, principal: Principal, db: str,
                 sqls: dict[int, str] | None = None, *, branch: str = "main",
                 max_statements: int | None = None, max_response_bytes: int | None = None,
                 holder: Holder | None = None):
        self.engine = engine
        self.principal = principal
        self.db = db
        self.branch = branch
        self.sqls: dict[int, str] = {} if sqls is None else sqls  # WebSocket: per connection
        self.tx: TxState | None = None
        self.closed = False
        self.recorder: Recorder | None = None
        settings = engine.settings
        self.max_statements = max_statements or settings.max_statements
        self.max_response = max_response_bytes or settings.max_response_bytes
        self.budget = Budget(self.max_response)  # the current request's response
        self.holder = holder  # what the stream keeps between requests (HTTP: its stored SQL)
        self.read_at: ReadAt | None = None  # what its reads ask (server/http.py's read_at)
        self.bookmark = ""  # of the last statement that read or wrote (Shoal-Bookmark)
        self._turn = time.perf_counter()

    @property
    def autocommit(self) -> bool:
        return self.tx is None

    # -- SQL texts and statements ---------------------------------------------------------------
    def sql_text(self, sql: str | None, sql_id: int | None) -> str:
        if sql is not None and sql_id is not None:
            raise HranaError(Code.SQL_ID_AND_SQL_GIVEN, "send either sql or sql_id, not both")
        if sql is not None:
            return sql
        if sql_id is None:
            raise HranaError(Code.SQL_ID_OR_SQL_NOT_GIVEN,
                             "the statement has neither sql nor sql_id")
        text = self.sqls.get(sql_id)
        if text is None:
            raise HranaError(Code.SQL_NOT_FOUND, f"SQL text {sql_id} not found")
        return text

    def store_sql(self, sql_id: int, sql: str) -> None:
        store_sql(self.sqls, self.holder, sql_id, sql)

    def close_sql(self, sql_id: int) -> None:
        close_sql(self.sqls, self.holder, sql_id)

    def statement(self, stmt: p.Stmt) -> Statement:
        sql = self.sql_text(stmt.sql, stmt.sql_id)
        if stmt.args and stmt.named_args:
            raise HranaError(Code.ARGS_BOTH_POSITIONAL_AND_NAMED,
                             "positional and named arguments together are not supported")
        if stmt.named_args:
            return Statement(sql, {p.strip_prefix(a.name): p.to_sql(a.value)
                                   for a in stmt.named_args})
        if stmt.args:
            return Statement(sql, tuple([p.to_sql(v) for v in stmt.args]))
        return Statement(sql)

    # -- running one statement ------------------------------------------------------------------
    async def _pace(self) -> None:
        """Before a statement: stop if the response is spent or its client went away, and
        let other requests in now and then. A read runs inline on the event loop (the
        engine's fast path), so a pipeline or batch of thousands would otherwise hold it
        for seconds."""
        self.budget.check()
        gone = REQUEST_GONE.get()
        if gone is not None and gone.done():
            raise p.from_shoal(stopped())
        now = time.perf_counter()
        if now - self._turn >= SLICE:
            await asyncio.sleep(0)
            self._turn = time.perf_counter()

    async def run(self, st: Statement, want_rows: bool = True) -> Ran:
        """Run one statement on the stream; errors come out as HranaError."""
        await self._pace()
        started = time.perf_counter()
        try:
            if self.tx is None:
                return await self._autocommit(st, started, want_rows)
            return await self._in_transaction(st, started)
        except TransactionControl as control:
            return await self._control(control, started)
        except Moved:
            raise  # the server sends the whole request to the database's leader
        except ShoalError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: ShoalError) -> HranaError:
        """A statement's error as Hrana shows it. A result too large for a whole response
        spends the response: nothing more runs for it (the work was done, the bytes were
        not sent, and a batch of such statements would repeat it)."""
        if exc.code == Code.RESPONSE_TOO_LARGE:
            self.budget.spent = True
        return p.from_shoal(exc)

    async def _autocommit(self, st: Statement, started: float, want_rows: bool) -> Ran:
        idem: Idempotency | None = None
        render: Callable[[Committed], tuple[int, bytes]] = _unused_render
        rec = self.recorder
        if rec is not None:
            idem, render = rec.for_commit(
                lambda done: self._committed_result(done, started, want_rows))
        out = await self.engine.query(self.principal, self.db, [st], idem, render,
                                       branch=self.branch, at=self.read_at)
        self.bookmark = out.bookmark or self.bookmark
        if out.replay is not None:
            if not out.results:  # a concurrent duplicate recorded it first
                raise Replay(*out.replay)
            if rec is not None and idem is rec.idem:
                rec.recorded, rec.response = True, out.replay
        ms = (time.perf_counter() - started) * 1000
        return Ran(out.results[0], out.rows_read, out.rows_written, out.txid, ms)

    @staticmethod
    def _committed_result(done: Committed, started: float, want_rows: bool) -> p.StmtResult:
        c = done.counters
        return p.stmt_result(c.results[0] if c.results else None, want_rows, c.rows_read,
                             c.rows_written, done.txid, (time.perf_counter() - started) * 1000)

    async def _in_transaction(self, st: Statement, started: float) -> Ran:
        tx = self.tx
        assert tx is not None
        try:
            out = await self.engine.tx_query(self.principal, self.db, tx.id, [st],
                                                 branch=self.branch)
        except TransactionControl:
            raise
        except ShoalError as exc:
            if exc.code == Code.READ_ONLY and tx.deferred and not tx.write \
                    and self.principal.can_write:
                await self._upgrade(tx)
                return await self._in_transaction(st, started)
            if not self.engine.transaction_open(tx.id):  # SQLite or the sweeper ended it
                self.tx = None
            raise
        tx.used = True
        ms = (time.perf_counter() - started) * 1000
        return Ran(out.results[0], out.rows_read, out.rows_written, out.txid, ms)

    async def _upgrade(self, old: TxState) -> None:
        """A deferred transaction's first write: trade the snapshot for the write lock."""
        new = await self.engine.begin(self.principal, self.db, "write", branch=self.branch)
        if old.used and new.start_txid != old.start_txid:
            with contextlib.suppress(ShoalError):
                await self.engine.tx_end(self.principal, self.db, new.id, False,
                                          branch=self.branch)
            raise ShoalError(
                Code.SQLITE_BUSY, "database is locked: another commit landed since this "
                "transaction's snapshot (SQLITE_BUSY_SNAPSHOT); roll back and retry")
        with contextlib.suppress(ShoalError):
            await self.engine.tx_end(self.principal, self.db, old.id, False,
                                      branch=self.branch)
        self.tx = TxState(new.id, True, False, new.start_txid, self.principal, old.used)

    async def _control(self, control: TransactionControl, started: float) -> Ran:
        verb = control.verb
        try:
            if verb == "BEGIN":
                if self.tx is not None:
                    raise HranaError(Code.SQLITE_ERROR,
                                     "cannot start a transaction within a transaction")
                mode = "write" if control.immediate else "read"
                tx = await self.engine.begin(self.principal, self.db, mode, branch=self.branch)
                self.tx = TxState(tx.id, tx.write, not control.immediate, tx.start_txid,
                                  self.principal)
                return Ran(None, 0, 0, tx.start_txid, (time.perf_counter() - started) * 1000)
            if verb in ("COMMIT", "ROLLBACK"):
                return await self._end(verb == "COMMIT", started)
        except ShoalError as exc:
            raise p.from_shoal(exc) from None
        raise HranaError(Code.SQLITE_AUTH, f"{verb} is not supported over Hrana: Shoal runs each "
                                           "statement of a transaction in its own savepoint; use "
                                           "BEGIN, COMMIT and ROLLBACK")

    async def _end(self, commit: bool, started: float) -> Ran:
        tx = self.tx
        if tx is None:
            verb = "commit" if commit else "rollback"
            raise HranaError(Code.SQLITE_ERROR, f"cannot {verb} - no transaction is active")
        self.tx = None
        idem, render = None, None
        rec = self.recorder
        if commit and tx.write and rec is not None:
            idem, render = rec.for_commit(lambda done: p.stmt_result(
                None, True, 0, 0, done.txid, (time.perf_counter() - started) * 1000))
        done = await self.engine.tx_end(self.principal, self.db, tx.id, commit, idem, render,
                                        branch=self.branch)
        if rec is not None and done is not None and done.response is not None \
                and idem is rec.idem:
            rec.recorded, rec.response = True, done.response
        txid = done.txid if done is not None else None
        if done is not None:
            self.bookmark = done.bookmark
        return Ran(None, 0, 0, txid, (time.perf_counter() - started) * 1000)

    # -- rendering --------------------------------------------------------------------------------
    def render(self, ran: Ran, want_rows: bool) -> msgspec.Raw:
        """The StmtResult as JSON bytes, within the request's response budget."""
        body = _encode(p.stmt_result(ran.result, want_rows, ran.rows_read, ran.rows_written,
                                     ran.txid, ran.ms))
        self.budget.take(len(body))
        return msgspec.Raw(body)

    # -- requests ------------------------------------------------------------------------------
    async def execute(self, stmt: p.Stmt) -> msgspec.Raw:
        want = stmt.want_rows is not False
        st = self.statement(stmt)
        if self.tx is None and self.recorder is None:  # the common case, without the layers
            await self._pace()
            started = time.perf_counter()
            try:
                out = await self.engine.query(self.principal, self.db, [st], None,
                                              _unused_render, branch=self.branch,
                                              at=self.read_at)
            except TransactionControl as control:
                ran = await self._control(control, started)
            except Moved:
                raise  # the server sends the whole request to the database's leader
            except ShoalError as exc:
                raise self._failed(exc) from None
            else:
                self.bookmark = out.bookmark
                ran = Ran(out.results[0], out.rows_read, out.rows_written, out.txid,
                          (time.perf_counter() - started) * 1000)
            return self.render(ran, want)
        return self.render(await self.run(st, want), want)

    async def check_batch(self, batch: p.Batch) -> None:
        """Refuse a batch of too many steps, or whose conditions name no earlier step,
        before any step runs: paced, as a batch may have 100,000 steps."""
        if len(batch.steps) > self.max_statements:
            raise HranaError(Code.TOO_MANY_STATEMENTS, f"{len(batch.steps)} steps in one batch; "
                                                    f"at most {self.max_statements}")
        async for i, step in paced(enumerate(batch.steps)):
            if step.condition is not None:
                _check_cond(step.condition, i)

    async def run_batch(self, batch: p.Batch,
                        on_step: Callable[[int, Ran | HranaError, p.Stmt], None],
                        answered: tuple[list[Any], list[Any]] | None = None) -> None:
        """Run the steps whose conditions hold, reporting each outcome as it comes.

        ``answered`` (step results and errors as rendered so far) lets an
        Idempotency-Key record the whole BatchResult with the batch's commit.
        """
        await self.check_batch(batch)
        outcome: list[bool | None] = [None] * len(batch.steps)  # True ok, False error
        for i, step in enumerate(batch.steps):
            if self.budget.spent:  # the response is full: the rest does not run
                break
            if step.condition is not None and not self._holds(step.condition, outcome):
                continue
            rec = self.recorder if answered is not None else None
            if rec is not None and answered is not None:
                rec.frames.append(self._batch_frame(batch, i, outcome, answered))
            try:
                want = step.stmt.want_rows is not False
                ran: Ran | HranaError = await self.run(self.statement(step.stmt), want)
            except HranaError as exc:
                ran = exc
            finally:
                if rec is not None:
                    rec.frames.pop()
            outcome[i] = not isinstance(ran, HranaError)
            on_step(i, ran, step.stmt)

    def _holds(self, cond: p.BatchCond, outcome: list[bool | None]) -> bool:
        if isinstance(cond, p.OkCond):
            return outcome[cond.step] is True
        if isinstance(cond, p.ErrorCond):
            return outcome[cond.step] is False
        if isinstance(cond, p.NotCond):
            return not self._holds(cond.cond, outcome)
        if isinstance(cond, p.AndCond):
            return all(self._holds(c, outcome) for c in cond.conds)
        if isinstance(cond, p.OrCond):
            return any(self._holds(c, outcome) for c in cond.conds)
        return self.tx is None  # is_autocommit

    async def batch(self, batch: p.Batch) -> dict[str, Any]:
        n = len(batch.steps)
        results: list[Any] = [None] * n
        errors: list[Any] = [None] * n
        last: list[int | None] = [None]

        def on_step(i: int, ran: Ran | HranaError, stmt: p.Stmt) -> None:
            if isinstance(ran, HranaError):
                errors[i] = ran.obj()
                return
            try:
                results[i] = self.render(ran, stmt.want_rows is not False)
            except HranaError as exc:
                errors[i] = exc.obj()
            if ran.txid is not None:
                last[0] = ran.txid

        await self.run_batch(batch, on_step, (results, errors))
        return {"step_results": results, "step_errors": errors,
                "replication_index": None if last[0] is None else str(last[0])}

    def _batch_frame(self, batch: p.Batch, at: int, outcome: list[bool | None],
                     answered: tuple[list[Any], list[Any]]) -> Callable[[Any], Any]:
        """Idempotency: the BatchResult as it will be once step ``at`` has committed."""
        results, errors = answered

        def frame(stmt_result: p.StmtResult) -> dict[str, Any]:
            done = list(outcome)
            done[at] = True
            step_results = list(results)
            step_results[at] = stmt_result
            for j in range(at + 1, len(batch.steps)):
                cond = batch.steps[j].condition
                if cond is None or self._holds(cond, done):
                    raise scope_error()
            return {"step_results": step_results, "step_errors": list(errors),
                    "replication_index": stmt_result.replication_index}

        return frame

    async def sequence(self, sql: str | None, sql_id: int | None) -> None:
        text = self.sql_text(sql, sql_id)
        self.budget.check()
        limit = self.max_statements
        if len(text) > SPLIT_INLINE:  # linear, but megabytes of it are not for the loop
            pieces = await asyncio.to_thread(p.split_script, text, limit)
        else:
            pieces = p.split_script(text, limit)
        if len(pieces) > limit:
            raise HranaError(Code.TOO_MANY_STATEMENTS, f"more than {limit} statements in one "
                                                       "sequence (max_statements)")
        rec = self.recorder
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            if rec is not None:
                rec.frames.append(_sequence_frame(last))
            try:
                await self.run(Statement(piece))
            finally:
                if rec is not None:
                    rec.frames.pop()

    async def describe(self, sql: str | None, sql_id: int | None) -> dict[str, Any]:
        text = self.sql_text(sql, sql_id)
        self.budget.check()
        try:
            d = await self.engine.describe(self.principal, self.db, text, branch=self.branch)
        except ShoalError as exc:
            raise p.from_shoal(exc) from None
        return {
            "params": [{"name": n} for n in d.params],
            "cols": [{"name": n, "decltype": t} for n, t in zip(d.columns, d.decltypes,
                                                               strict=True)],
            "is_explain": d.is_explain,
            "is_readonly": d.is_readonly,
        }

    async def close(self) -> None:
        """Close the stream; an open transaction is rolled back at once (its write lock
        freed), as the token that began it, and what the stream held is freed."""
        self.closed = True
        if self.holder is not None:
            self.holder.release()
        if self.tx is not None:
            tx, self.tx = self.tx, None
            with contextlib.suppress(ShoalError):
                await self.engine.tx_end(tx.owner, self.db, tx.id, False, branch=self.branch)


def cursor_entries(step: int, ran: Ran | HranaError, stmt: p.Stmt) -> list[dict[str, Any]]:
    """One batch step as cursor entries: step_begin, rows, step_end (or step_error)."""
    if isinstance(ran, HranaError):
        return [{"type": "step_error", "step": step, "error": ran.obj()}]
    result = p.stmt_result(ran.result, stmt.want_rows is not False, ran.rows_read,
                           ran.rows_written, ran.txid, ran.ms)
    return [
        {"type": "step_begin", "step": step, "cols": result.cols},
        *({"type": "row", "row": row} for row in result.rows),
        {"type": "step_end", "affected_row_count": result.affected_row_count,
         "last_insert_rowid": result.last_insert_rowid},
    ]


def _sequence_frame(last: bool) -> Callable[[Any], Any]:
    """Idempotency: a sequence answers nothing, but may not run SQL after its commit."""

    def frame(_result: Any) -> dict[str, Any]:
        if not last:
            raise scope_error()
        return {"type": "sequence"}

    return frame


def _check_cond(cond: p.BatchCond, at: int) -> None:
    """Steps named must come earlier; nesting is bounded (evaluation recurses), and the
    check itself does not recurse, however deep the JSON was."""
    todo: list[tuple[p.BatchCond, int]] = [(cond, 1)]
    while todo:
        cond, depth = todo.pop()
        if depth > MAX_COND_DEPTH:
            raise HranaError(Code.HRANA_PROTO_ERROR, f"step {at}: conditions nest more than "
                                                     f"{MAX_COND_DEPTH} deep")
        if isinstance(cond, p.OkCond | p.ErrorCond):
            if not 0 <= cond.step < at:
                raise HranaError(Code.BATCH_COND_BAD_STEP, f"step {at}: a condition names step "
                                                           f"{cond.step}, not an earlier one")
        elif isinstance(cond, p.NotCond):
            todo.append((cond.cond, depth + 1))
        elif isinstance(cond, p.AndCond | p.OrCond):
            todo.extend((c, depth + 1) for c in cond.conds)


def store_sql(sqls: dict[int, str], holder: Holder | None, sql_id: int, sql: str) -> None:
    """Keep a SQL text for later requests, charged to its owner's held bytes."""
    if sql_id in sqls:
        raise HranaError(Code.SQL_EXISTS, f"SQL text {sql_id} already exists")
    if holder is not None:
        holder.hold(size(sql) + SQL_ENTRY)
    sqls[sql_id] = sql


def close_sql(sqls: dict[int, str], holder: Holder | None, sql_id: int) -> None:
    sql = sqls.pop(sql_id, None)
    if sql is not None and holder is not None:
        holder.free(size(sql) + SQL_ENTRY)
