"""libSQL's Hrana protocol over WebSocket (subprotocols hrana3, hrana2, hrana1; JSON).

One connection carries many streams. Requests on one stream run in order on
that stream's own task; different streams run side by side, so responses may
come back out of order, as the spec allows. SQL texts stored with ``store_sql``
belong to the connection and are resolved when a request arrives. A cursor
runs its batch when opened, keeps its entries encoded and hands them out page
by page.

The client authenticates with ``hello`` (a JWT, or null when the upgrade
request carried ``Authorization``); the token is checked again on every request
but the closing ones (closing only frees), so revocation and expiry take effect at
once. The database comes from the URL (``/db/{db}``), the ``x-namespace`` header,
or a token for one database.

Closing a stream rolls back its transaction as soon as the requests sent before the
close have run. When the connection ends (the client disconnects, or a deadline or a
protocol error closes it) nobody is left to answer: the streams' running statements
are interrupted, their queued writes and waits for the write lock given up (the
connection is their ``REQUEST_GONE``), and their transactions rolled back at once.

What a connection holds is bounded: a ``hello`` within ``hello_timeout``, a
message within ``websocket_idle_timeout`` while no request runs, at most
``max_streams_per_connection`` streams and ``max_cursors_per_connection``
cursors, and its streams, stored SQL and unfetched cursor entries count against
its token's and database's quotas (``quota.py``), charged to the token of its
first ``hello``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shoal import names
from shoal.engine import REQUEST_GONE, KeysNeeded
from shoal.errors import Code, ShoalError
from shoal.server import hrana_proto as p
from shoal.server.hrana_proto import HranaError
from shoal.server.hrana_stream import (
    RESERVE,
    Budget,
    Ran,
    Stream,
    close_sql,
    cursor_entries,
    store_sql,
    too_large,
)
from shoal.server.http import PACED_ITEMS, Receive, Scope, Send, paced
from shoal.server.ports import EngineAPI
from shoal.server.quota import Holder, Quota, size
from shoal.tokens import Principal

log = logging.getLogger("shoal")
SUBPROTOCOLS = ("hrana3", "hrana2", "hrana1")  # preferred first
MAX_INFLIGHT = 256  # requests received but not answered; then stop reading (back-pressure)

_encode = msgspec.json.encode


CLOSING = (p.CloseStreamReq, p.CloseSqlReq, p.CloseCursorReq)  # free what the connection holds


class ProtocolViolation(Exception):
    """The peer broke the protocol: close the WebSocket (code 1002) with this reason."""


@dataclass
class WsStream:
    stream: Stream
    queue: asyncio.Queue[Callable[[], Awaitable[None]] | None] = field(
        default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


@dataclass
class Cursor:
    """A cursor's entries, encoded (what they cost is charged to the connection)."""

    stream_id: int
    entries: deque[bytes] = field(default_factory=deque)
    held: int = 0  # bytes charged for the entries still here
    error: HranaError | None = None  # the open failed: fetches answer this


def address_of(path: str) -> tuple[str | None, str | None] | None:
    """(database or None at the root, branch or None: main, or the branch a token is bound
    to) a WebSocket URL names; None for no such URL."""
    parts = [part for part in path.split("/") if part]
    if not parts:
        return None, None
    if len(parts) == 2 and parts[0] == "db":
        return parts[1], None
    if len(parts) == 4 and parts[0] == "db" and parts[2] == "branches":
        return parts[1], parts[3]
    return None


class HranaWebSocket:
    """ASGI entry for ``websocket`` scopes."""

    def __init__(self, engine: EngineAPI, quota: Quota):
        self.engine = engine
        self.quota = quota

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Connection | None:
        """Serve one WebSocket until it closes; the connection served (None if refused)."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return None
        address = address_of(scope.get("path", "/"))
        offered = list(scope.get("subprotocols") or [])
        chosen = next((proto for proto in SUBPROTOCOLS if proto in offered), None)
        if address is None or (offered and chosen is None):
            await send({"type": "websocket.close", "code": 1008})  # refused: HTTP 403
            return None
        await send({"type": "websocket.accept", "subprotocol": chosen})
        headers = dict(scope.get("headers") or [])
        conn = Connection(self.engine, self.quota, send, address[0], address[1], headers,
                          int((chosen or "hrana1")[-1]))
        await conn.serve(receive)
        return conn


class Connection:
    """One WebSocket connection: its token, database, streams, cursors and stored SQL."""

    def __init__(self, engine: EngineAPI, quota: Quota, send: Send, db: str | None,
                 branch: str | None, headers: dict[bytes, bytes], version: int):
        self.engine = engine
        self.quota = quota
        settings = engine.settings
        self.hello_timeout = float(settings.hello_timeout)
        self.idle_timeout = float(settings.websocket_idle_timeout)
        self.max_streams = int(settings.max_streams_per_connection)
        self.max_cursors = int(settings.max_cursors_per_connection)
        self.max_response = int(settings.max_response_bytes)
        self.max_statements = int(settings.max_statements)
        self.holder: Holder | None = None  # set by the first hello
        self._send = send
        self.url_db = db
        self.url_branch = branch
        self.branch = branch or "main"  # set by the first hello (Principal.on)
        self.headers = headers
        self.version = version
        self.jwt: str | None = None
        self.principal: Principal | None = None
        self.db: str | None = None
        self.streams: dict[int, WsStream] = {}
        self.cursors: dict[int, Cursor] = {}
        self.sqls: dict[int, str] = {}
        self.inflight = asyncio.Semaphore(MAX_INFLIGHT)
        self.pending = 0  # requests received and not yet answered
        self.closing = False
        self.tasks: set[asyncio.Task[None]] = set()  # stream workers and quick replies
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- the receive loop ------------------------------------------------------------------------
    async def serve(self, receive: Receive) -> None:
        code, reason = 1000, ""
        try:
            while True:
                try:
                    message = await self._next(receive)
                except TimeoutError:
                    if self.principal is None:
                        code, reason = 1008, "no hello within hello_timeout"
                    else:
                        code, reason = 1001, "idle past websocket_idle_timeout"
                    break
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    raise ProtocolViolation("binary message on a JSON subprotocol")
                try:
                    msg = await p.decode_message(text, p.ClientMsg, self.max_statements)
                except HranaError as exc:
                    raise ProtocolViolation(f"not a Hrana message: {exc.message}"[:120]) from None
                if isinstance(msg, p.HelloMsg):
                    if not await self.hello(msg.jwt):
                        code, reason = 1008, "hello refused"
                        break
                    continue
                if self.principal is None:
                    raise ProtocolViolation("a request came before hello")
                await self.inflight.acquire()
                self.pending += 1
                await self.dispatch(msg.request_id, msg.request)
        except ProtocolViolation as exc:
            code, reason = 1002, str(exc)
        finally:
            await self.shutdown(code, reason)

    async def _next(self, receive: Receive) -> dict[str, Any]:
        """The next message; TimeoutError for a connection without hello past
        hello_timeout, or silent past websocket_idle_timeout with no request running."""
        while True:
            wait = self.hello_timeout if self.principal is None else self.idle_timeout
            try:
                async with asyncio.timeout(wait):
                    return await receive()
            except TimeoutError:
                if self.principal is None or not self.pending:
                    raise

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_raw(_encode(message))

    async def send_raw(self, message: bytes) -> None:
        if self.closing:
            return
        try:
            await self._send({"type": "websocket.send", "text": message.decode()})
        except Exception:  # the peer went away; the receive loop sees the disconnect
            self.closing = True

    async def shutdown(self, code: int, reason: str) -> None:
        """Stop the streams' work (nobody will read its answers), then roll back their
        transactions: a transaction must not keep the write lock for a client that left."""
        self.closing = True
        self.gone.set_result(None)  # running statements interrupted, lock waits given up
        for ws in self.streams.values():
            ws.queue.put_nowait(None)
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        for ws in self.streams.values():
            await ws.stream.close()
        self.streams.clear()
        self.cursors.clear()
        if self.holder is not None:
            self.holder.release()
        with contextlib.suppress(Exception):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    # -- hello -----------------------------------------------------------------------------------
    async def hello(self, jwt: str | None) -> bool:
        """Authenticate (or re-authenticate); on failure answer hello_error and close."""
        try:
            try:
                principal = self._caller(jwt)
            except KeysNeeded as needed:  # an identity provider's key, read once: again
                await needed.wait()
                principal = self._caller(jwt)
            db = self._database(principal)
        except (ShoalError, HranaError) as exc:
            err = exc if isinstance(exc, HranaError) else p.from_shoal(exc)
            await self.send({"type": "hello_error", "error": err.obj()})
            return False
        self.jwt, self.principal, self.db = jwt, principal, db
        if self.holder is None:
            self.holder = self.quota.holder(principal.subject, db)
        for ws in self.streams.values():
            ws.stream.principal = principal
        await self.send({"type": "hello_ok"})
        return True

    def _caller(self, jwt: str | None) -> Principal:
        if jwt is not None:
            return self.engine.verify(jwt)
        header = self.headers.get(b"authorization")
        return self.engine.authenticate(header.decode("latin-1") if header else None)

    def _database(self, principal: Principal) -> str:
        namespace = self.headers.get(b"x-namespace")
        db = self.url_db or (namespace.decode("latin-1") if namespace else None)
        if not db:
            if principal.sole is None:
                raise HranaError(Code.DATABASE_REQUIRED, "no database named: connect to "
                                                         "ws://HOST/db/NAME, send x-namespace, or "
                                                         "use a token for exactly one database")
            db = principal.sole
        if self.db is not None and db != self.db:
            raise HranaError(Code.DATABASE_REQUIRED, "a connection stays on its database")
        names.check(db)
        if self.url_branch is not None:
            names.check(self.url_branch, "branch")
        principal.require("read", db)
        # the first hello picks the branch (the URL's, else the token's); a later one keeps it
        self.branch = principal.on(self.url_branch if self.db is None else self.branch)
        self.engine.require_database(db)
        return db

    def _current(self) -> Principal:
        """The token, verified again: revocation and expiry apply to open connections."""
        assert self.principal is not None
        if self.jwt is not None:
            self.principal = self.engine.verify(self.jwt)
        else:
            header = self.headers.get(b"authorization")
            self.principal = self.engine.authenticate(
                header.decode("latin-1") if header else None)
        return self.principal

    # -- requests ----------------------------------------------------------------------------------
    async def dispatch(self, request_id: int, req: p.WsRequest) -> None:
        """Answer connection-level requests now; queue stream requests on their stream."""
        try:
            if not isinstance(req, CLOSING):  # closes only free: always taken
                self._current()
                self.engine.refuse_when_overloaded()  # past the memory ceiling: nothing new
            if isinstance(req, p.OpenStreamReq):
                self._open_stream(req.stream_id)
                self._reply_soon(request_id, {"type": "open_stream"})
            elif isinstance(req, p.StoreSqlReq):
                store_sql(self.sqls, self.holder, req.sql_id, req.sql)
                self._reply_soon(request_id, {"type": "store_sql"})
            elif isinstance(req, p.CloseSqlReq):
                close_sql(self.sqls, self.holder, req.sql_id)
                self._reply_soon(request_id, {"type": "close_sql"})
            elif isinstance(req, p.CloseStreamReq):
                ws = self.streams.pop(req.stream_id, None)
                if ws is None:
                    self._reply_soon(request_id, {"type": "close_stream"})
                    return
                assert self.holder is not None
                self.holder.drop_stream()
                self._queue_on(ws, req.stream_id, request_id, req)
                ws.queue.put_nowait(None)  # the stream's worker ends after closing it
            elif isinstance(req, p.CloseCursorReq | p.FetchCursorReq):
                cursor = self.cursors.get(req.cursor_id)
                if cursor is None:
                    if isinstance(req, p.CloseCursorReq):
                        self._reply_soon(request_id, {"type": "close_cursor"})
                        return
                    raise HranaError(Code.CURSOR_NOT_FOUND, f"cursor {req.cursor_id} not found")
                self._queue(cursor.stream_id, request_id, req)
            else:
                self._queue(req.stream_id, request_id, await self._resolve(req))
        except (HranaError, ShoalError) as exc:
            self._reply_soon(request_id, exc)

    def _open_stream(self, stream_id: int) -> None:
        if stream_id in self.streams:
            raise HranaError(Code.STREAM_EXISTS, f"stream {stream_id} already exists")
        if self.max_streams and len(self.streams) >= self.max_streams:
            raise HranaError(Code.TOO_MANY_STREAMS, f"the connection is at "
                                                    f"max_streams_per_connection "
                                                    f"({self.max_streams})")
        assert self.principal is not None and self.db is not None and self.holder is not None
        self.holder.add_stream()
        ws = WsStream(Stream(self.engine, self.principal, self.db, self.sqls,
                             branch=self.branch))
        ws.task = self._spawn(self._worker(ws))
        self.streams[stream_id] = ws

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _resolve(self, req: p.WsRequest) -> p.WsRequest:
        """Stored SQL is looked up on arrival: a later close_sql cannot pull it away. The
        request was decoded for this connection alone, so it is resolved in place; a long
        batch paced (the receive loop waits, keeping the connection's order)."""
        if isinstance(req, p.WsExecuteReq):
            self._stmt(req.stmt)
        elif isinstance(req, p.WsBatchReq | p.OpenCursorReq):
            steps = req.batch.steps
            if len(steps) <= PACED_ITEMS:
                for step in steps:
                    self._stmt(step.stmt)
            elif len(steps) <= self.max_statements:  # longer: the stream refuses it as it is
                async for step in paced(steps):
                    self._stmt(step.stmt)
        elif isinstance(req, p.WsSequenceReq | p.WsDescribeReq) and req.sql_id is not None \
                and req.sql is None:
            req.sql, req.sql_id = self._text(req.sql_id), None
        return req

    def _stmt(self, stmt: p.Stmt) -> None:
        if stmt.sql_id is not None and stmt.sql is None:
            stmt.sql, stmt.sql_id = self._text(stmt.sql_id), None

    def _text(self, sql_id: int) -> str:
        text = self.sqls.get(sql_id)
        if text is None:
            raise HranaError(Code.SQL_NOT_FOUND, f"SQL text {sql_id} not found")
        return text

    def _queue(self, stream_id: int, request_id: int, req: p.WsRequest) -> None:
        ws = self.streams.get(stream_id)
        if ws is None:
            raise HranaError(Code.STREAM_NOT_FOUND, f"stream {stream_id} not found")
        self._queue_on(ws, stream_id, request_id, req)

    def _queue_on(self, ws: WsStream, stream_id: int, request_id: int,
                  req: p.WsRequest) -> None:
        if isinstance(req, p.OpenCursorReq):
            if req.cursor_id in self.cursors:
                raise HranaError(Code.CURSOR_EXISTS, f"cursor {req.cursor_id} already exists")
            if self.max_cursors and len(self.cursors) >= self.max_cursors:
                cap = self.max_cursors
                raise HranaError(Code.TOO_MANY_CURSORS,
                                 f"the connection is at max_cursors_per_connection ({cap})")
            self.cursors[req.cursor_id] = Cursor(stream_id)

        async def job() -> None:
            try:
                answer: dict[str, Any] | Exception = await self._handle(stream_id, ws, req)
            except (HranaError, ShoalError) as exc:
                answer = exc
            except Exception as exc:  # a bug: INTERNAL for this request, traceback logged
                log.exception("hrana websocket request failed")
                answer = HranaError(Code.INTERNAL, f"internal error: {type(exc).__name__}", 500)
            await self._reply(request_id, answer)

        ws.queue.put_nowait(job)

    async def _worker(self, ws: WsStream) -> None:
        REQUEST_GONE.set(self.gone)  # this task's own context: its SQL work stops with us
        while True:
            job = await ws.queue.get()
            if job is None:
                return
            if self.closing:  # the peer left: drop what is still queued
                self._answered()
                continue
            await job()

    async def _handle(self, stream_id: int, ws: WsStream, req: p.WsRequest) -> dict[str, Any]:
        stream = ws.stream
        if not isinstance(req, CLOSING):
            stream.principal = self._current()
        stream.budget = Budget(self.max_response)
        if isinstance(req, p.WsExecuteReq):
            return {"type": "execute", "result": await stream.execute(req.stmt)}
        if isinstance(req, p.WsBatchReq):
            return {"type": "batch", "result": await stream.batch(req.batch)}
        if isinstance(req, p.WsSequenceReq):
            await stream.sequence(req.sql, req.sql_id)
            return {"type": "sequence"}
        if isinstance(req, p.WsDescribeReq):
            return {"type": "describe", "result": await stream.describe(req.sql, req.sql_id)}
        if isinstance(req, p.WsGetAutocommitReq):
            return {"type": "get_autocommit", "is_autocommit": stream.autocommit}
        if isinstance(req, p.OpenCursorReq):
            return await self._open_cursor(stream, req)
        if isinstance(req, p.FetchCursorReq):
            return self._fetch(req)
        if isinstance(req, p.CloseCursorReq):
            self._drop_cursor(req.cursor_id)
            return {"type": "close_cursor"}
        assert isinstance(req, p.CloseStreamReq)
        await stream.close()
        for cursor_id in [c for c, cur in self.cursors.items() if cur.stream_id == stream_id]:
            self._drop_cursor(cursor_id)
        return {"type": "close_stream"}

    async def _open_cursor(self, stream: Stream, req: p.OpenCursorReq) -> dict[str, Any]:
        cursor = self.cursors.get(req.cursor_id)
        if cursor is None:  # closed before it ran
            return {"type": "open_cursor"}
        holder = self.holder
        assert holder is not None

        def on_step(i: int, ran: Ran | HranaError, stmt: p.Stmt) -> None:
            entries = [_encode(e) for e in cursor_entries(i, ran, stmt)]
            stream.budget.take(sum(len(e) for e in entries))  # max_response_bytes a cursor
            cost = sum(size(e) for e in entries)
            holder.hold(cost)
            if self.cursors.get(req.cursor_id) is not cursor:  # closed meanwhile
                holder.free(cost)
                return
            cursor.held += cost
            cursor.entries.extend(entries)

        try:
            await stream.run_batch(req.batch, on_step)
        except HranaError as exc:
            if not cursor.entries:
                cursor.error = exc
                raise
            cursor.entries.append(_encode({"type": "error", "error": exc.obj()}))
        return {"type": "open_cursor"}

    def _fetch(self, req: p.FetchCursorReq) -> dict[str, Any]:
        """Up to max_count entries, within what one response may carry."""
        cursor = self.cursors.get(req.cursor_id)
        if cursor is None:
            raise HranaError(Code.CURSOR_NOT_FOUND, f"cursor {req.cursor_id} not found")
        if cursor.error is not None:
            raise cursor.error
        room = self.max_response - RESERVE
        entries: list[msgspec.Raw] = []
        freed = 0
        while cursor.entries and len(entries) < req.max_count:
            entry = cursor.entries[0]
            room -= len(entry) + 1
            if room < 0 and entries:
                break
            cursor.entries.popleft()
            entries.append(msgspec.Raw(entry))
            freed += size(entry)
        self._free(cursor, freed)
        return {"type": "fetch_cursor", "entries": entries, "done": not cursor.entries}

    def _drop_cursor(self, cursor_id: int) -> None:
        cursor = self.cursors.pop(cursor_id, None)
        if cursor is not None:
            cursor.entries.clear()
            self._free(cursor, cursor.held)

    def _free(self, cursor: Cursor, n: int) -> None:
        n = min(n, cursor.held)
        cursor.held -= n
        if self.holder is not None:
            self.holder.free(n)

    def _reply_soon(self, request_id: int, answer: dict[str, Any] | Exception) -> None:
        """Answer a request handled in the receive loop (sends stay ordered per stream)."""
        self._spawn(self._reply(request_id, answer))

    async def _reply(self, request_id: int, answer: dict[str, Any] | Exception) -> None:
        try:
            if not isinstance(answer, Exception):
                message = _encode({"type": "response_ok", "request_id": request_id,
                                   "response": answer})
                if len(message) <= self.max_response:
                    await self.send_raw(message)
                    return
                answer = too_large(self.max_response)  # every byte counts, wrapping too
            err = answer if isinstance(answer, HranaError) else \
                p.from_shoal(answer) if isinstance(answer, ShoalError) else \
                HranaError(Code.INTERNAL, "internal error", 500)
            await self.send({"type": "response_error", "request_id": request_id,
                             "error": err.obj()})
        finally:
            self._answered()

    def _answered(self) -> None:
        self.pending -= 1
        self.inflight.release()
