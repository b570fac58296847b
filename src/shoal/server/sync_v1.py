"""libSQL's older sync protocol for embedded replicas ("V1"): gRPC-web over HTTP/1.1
(``server/grpc_web.py``) on the numbering of ``engine/sync_v1.py``.

Routes: ``POST .../wal_log.ReplicationLog/{Hello,BatchLogEntries,LogEntries,Snapshot}`` (the
replica pulls frames) and ``POST .../proxy.Proxy/{Execute,Describe,Disconnect}`` (its writes,
run here), under every prefix of the HTTP protocol (``server/sync.py``: the root,
``/db/{db}``, ``/db/{db}/branches/{branch}``) and the same under ``/grpc``. A client picks V1
when ``GET {sync URL}/info`` answers neither 2xx nor 401, and no published client has an
option for it (libsql's Rust builder has one): so ``/grpc/db/NAME`` is the sync URL that
makes them speak V1, its ``/info`` answering 404 (401 for a bad token, which the client
reports at once, where a refused Hello only shows as a handshake timeout after 3 tries).

Addressing and tokens are the HTTP protocol's: Shoal's own token (``x-authorization``,
as the client sends it, or ``Authorization``); the database from the path, an explicit
``x-namespace-bin`` (the client always sends one, made from the host's first label or
"default" unless told: that one counts as the host's), ``x-namespace``, the token's only
database, or the host's first label.

Hello's session token is derived from the log id: a database deleted and made again
between a client's Hello and its next call gets ``NO_HELLO``, then a new log id. Execute
runs a program (steps, conditions) on a Hrana stream (``server/hrana_stream.py``) kept per
``client_id`` while it holds a transaction (a Python client's BEGIN, INSERT and COMMIT are
separate calls): such states count against Hrana's stream caps (``server/quota.py``) and
expire as Hrana's streams do, after transaction_timeout (the next call of a client whose
transaction expired gets TRANSACTION_TIMEOUT for each step, never an autocommit).

Protobuf: the ``protobuf`` package (upb, in C) with modules protoc generated from libSQL's
own .proto files (``server/libsql_pb``, ``make protos``): the schemas stay libSQL's, and
parsing what a client sends (nested conditions, lengths) is a maintained parser's job,
not a hand-written one's. Parameter and row values are bincode inside ``bytes`` fields
(libSQL's ``Value`` enum: a u32 variant, then i64, f64 or a u64 length and bytes): that
codec is here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import sqlite3
import struct
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import NAMESPACE_OID, uuid5

from google.protobuf.message import DecodeError, Message

from shoal import names
from shoal.cluster import Moved
from shoal.engine import KeysNeeded, SyncV1Snapshot
from shoal.errors import Code, ShoalError
from shoal.server import grpc_web
from shoal.server import hrana_proto as p
from shoal.server.grpc_web import Status
from shoal.server.hrana_proto import HranaError
from shoal.server.hrana_stream import RESERVE, Budget, Ran, Stream
from shoal.server.http import Request, Response, Router
from shoal.server.libsql_pb import proxy_pb2 as px
from shoal.server.libsql_pb import replication_log_pb2 as rl
from shoal.server.ports import EngineAPI
from shoal.server.quota import Quota
from shoal.server.sync import PREFIXES, named_database
from shoal.tokens import Principal

M = TypeVar("M", bound=Message)

V1_PREFIXES = ("/grpc", "/grpc/db/{db}", "/grpc/db/{db}/branches/{branch}")
NEED_SNAPSHOT = "NEED_SNAPSHOT"  # the messages the client matches (libsql-replication)
NO_HELLO = "NO_HELLO"
NAMESPACE_DOESNT_EXIST = "NAMESPACE_DOESNT_EXIST"
SNAPSHOT_PAGES = 256  # pages read and sent at a time (about 1 MiB)
CLIENT_ID = 64  # characters of a client_id (a UUID) kept
GONE = 10_000  # clients whose transaction expired, remembered to say so once
_SESSION = uuid5(NAMESPACE_OID, "shoal.sync_v1.session")

Key = tuple[str, str, str, str]  # token id, database, branch, client_id


@dataclass
class _Client:
    """A client_id's stream while it holds a transaction."""

    stream: Stream
    lock: asyncio.Lock
    deadline: float = 0.0  # monotonic


def session_token(log_id: str) -> str:
    return str(uuid5(_SESSION, log_id))


class SyncV1API:
    """The V1 routes; they authenticate themselves so that errors keep gRPC's shape."""

    def __init__(self, engine: EngineAPI, quota: Quota):
        self.engine = engine
        self.quota = quota
        settings = engine.settings
        self.timeout = float(settings.transaction_timeout)
        self.max_body = int(settings.max_request_bytes)
        self.max_statements = int(settings.max_statements)
        self.max_response = int(settings.max_response_bytes)
        self.clients: dict[Key, _Client] = {}
        self.gone: OrderedDict[Key, None] = OrderedDict()
        self._last_sweep = time.monotonic()

    def register(self, router: Router) -> set[str]:
        """Add the routes; return their templates (public: they authenticate themselves)."""
        routes: set[str] = set()
        calls: list[tuple[str, Callable[[Request], Awaitable[Response]]]] = [
            ("/wal_log.ReplicationLog/Hello", self.hello),
            ("/wal_log.ReplicationLog/BatchLogEntries", self.batch_log_entries),
            ("/wal_log.ReplicationLog/LogEntries", self.log_entries),
            ("/wal_log.ReplicationLog/Snapshot", self.snapshot),
            ("/proxy.Proxy/Execute", self.execute),
            ("/proxy.Proxy/Describe", self.describe),
            ("/proxy.Proxy/Disconnect", self.disconnect)]
        for prefix in (*PREFIXES, *V1_PREFIXES):
            for path, handler in calls:
                router.add("POST", prefix + path, handler)
                routes.add(prefix + path)
        for prefix in V1_PREFIXES:
            router.add("GET", prefix + "/info", self.info)
            routes.add(prefix + "/info")
        return routes

    # -- addressing and access -----------------------------------------------------------------
    def database(self, request: Request, sole: Callable[[], str | None]) -> str | None:
        """The database a request names: the path's, an explicit x-namespace-bin, else as
        the HTTP protocol's (``named_database``: x-namespace, the token's only one, the
        host's first label)."""
        return request.params.get("db") or _namespace(request) or \
            named_database(request, sole, self.engine.has_database)

    def token(self, request: Request) -> str | None:
        return request.header(b"x-authorization") or request.header(b"authorization")

    async def _principal(self, request: Request) -> Principal:
        header = self.token(request)
        try:
            principal = self.engine.authenticate(header)
        except KeysNeeded as needed:  # an identity provider's keys, read once: again
            await needed.wait()
            principal = self.engine.authenticate(header)
        request.principal = principal  # the access log names the token's id
        return principal

    async def _resolve(self, request: Request) -> tuple[Principal, str, str]:
        """The caller, the database and the branch (the path's, else a branch-bound
        token's, else main); the body read."""
        principal = await self._principal(request)
        self.engine.refuse_when_overloaded()
        db = self.database(request, lambda: principal.sole)
        if not db:
            raise ShoalError(Code.DATABASE_REQUIRED, "no database named: use a sync URL "
                             "http://HOST/grpc/db/NAME, or a token for exactly one database")
        names.check(db)
        named = request.params.get("branch")
        branch = principal.on(None if named is None else names.check(named, "branch"))
        principal.require("read", db)
        self.engine.require_database(db)
        await request.read_body(self.max_body)
        return principal, db, branch

    @staticmethod
    def error(exc: ShoalError | HranaError) -> Response:
        """A refusal as gRPC shows it (a missing database as the message the client knows).
        Moved is raised again: the server sends the whole call to the database's leader."""
        if isinstance(exc, Moved):
            raise exc
        err = exc if isinstance(exc, ShoalError) else ShoalError(exc.code, exc.message)
        if err.code in (Code.DATABASE_NOT_FOUND, Code.BRANCH_NOT_FOUND):
            return grpc_web.failure(err, NAMESPACE_DOESNT_EXIST, Status.FAILED_PRECONDITION)
        if err.code is Code.REPLICA_EXPIRED:  # the protocol's way to say: start again
            return grpc_web.signal(Status.FAILED_PRECONDITION, NEED_SNAPSHOT)
        return grpc_web.failure(err)

    async def info(self, request: Request) -> Response:
        """``GET /grpc/.../info``: 401 for a bad token (the client says "Unauthorized" at
        once), else 404, which makes the client choose V1."""
        try:
            await self._principal(request)
        except ShoalError as exc:
            return grpc_web.failure(exc)
        return grpc_web.failure(ShoalError(
            Code.NOT_FOUND, "this address serves libSQL's V1 sync protocol (gRPC): its /info "
            "is not found on purpose, so that clients choose it"))

    # -- the replication log ------------------------------------------------------------------
    async def hello(self, request: Request) -> Response:
        try:
            principal, db, branch = await self._resolve(request)
            _parse(request, rl.HelloRequest)
            found = await self.engine.sync_v1_hello(principal, db, branch)
        except (ShoalError, HranaError) as exc:
            return self.error(exc)
        return grpc_web.answer(rl.HelloResponse(
            generation_id=found.log_id, generation_start_index=0, log_id=found.log_id,
            session_token=session_token(found.log_id).encode(),
            current_replication_index=found.index).SerializeToString())

    async def _frames(self, request: Request) -> list[bytes] | Response:
        try:
            principal, db, branch = await self._resolve(request)
            offset = _parse(request, rl.LogOffset)
            if offset.wal_flavor == rl.LogOffset.Libsql:
                raise ShoalError(Code.INVALID_REQUEST, "libsql WAL frames are not served: ask "
                                 "for SQLite's (wal_flavor Sqlite)")
            found = await self.engine.sync_v1_frames(principal, db, branch,
                                                     offset.next_offset)
        except (ShoalError, HranaError) as exc:
            return self.error(exc)
        if not _hello_holds(request, found.log_id):
            return grpc_web.signal(Status.FAILED_PRECONDITION, NO_HELLO)
        return found.frames

    async def batch_log_entries(self, request: Request) -> Response:
        frames = await self._frames(request)
        if isinstance(frames, Response):
            return frames
        return grpc_web.answer(rl.Frames(frames=[rl.Frame(data=f) for f in frames])
                               .SerializeToString())

    async def log_entries(self, request: Request) -> Response:
        """The frames there are now, a message each (it does not wait for more)."""
        frames = await self._frames(request)
        if isinstance(frames, Response):
            return frames
        return grpc_web.answer(*(rl.Frame(data=f).SerializeToString() for f in frames))

    async def snapshot(self, request: Request) -> Response:
        try:
            principal, db, branch = await self._resolve(request)
            _parse(request, rl.LogOffset)
            snap = await self.engine.sync_v1_snapshot(principal, db, branch)
        except (ShoalError, HranaError) as exc:
            return self.error(exc)
        if not _hello_holds(request, snap.log_id):
            snap.close()
            return grpc_web.signal(Status.FAILED_PRECONDITION, NO_HELLO)
        return Response(200, b"", list(grpc_web.ANSWER_HEADERS), stream=_snapshot_body(snap))

    # -- the proxy: writes through the replica --------------------------------------------------
    async def execute(self, request: Request) -> Response:
        try:
            principal, db, branch = await self._resolve(request)
            req = _parse(request, px.ProgramReq)
            batch = _program(req.pgm)
            key: Key = (principal.subject, db, branch, req.client_id[:CLIENT_ID])
            await self._sweep_due()
            if key in self.gone or await self._expire(key):  # say so (once), run nothing
                self.gone.pop(key, None)
                return _executed(_expired(len(batch.steps)), px.INIT)
        except (ShoalError, HranaError) as exc:
            return self.error(exc)
        while True:  # (a call that waited for another of its client_id may find it dropped)
            try:
                client = self._client(key, principal, db, branch)
            except HranaError as exc:
                return self.error(exc)
            async with client.lock:
                if client.stream.closed:
                    continue
                client.stream.principal = principal  # the same token, verified just now
                try:
                    results = await self._run(client.stream, batch)
                except HranaError as exc:  # the program itself is wrong (conditions, size)
                    await self._done(key, client)
                    return self.error(exc)
                except BaseException:
                    await self._drop(key, client)
                    raise
                state = px.INIT if client.stream.tx is None else px.TXN
                await self._done(key, client)
            return _executed(results, state)

    async def describe(self, request: Request) -> Response:
        try:
            principal, db, branch = await self._resolve(request)
            req = _parse(request, px.DescribeRequest)
        except (ShoalError, HranaError) as exc:
            return self.error(exc)
        try:
            d = await self.engine.describe(principal, db, req.stmt, branch=branch)
        except Moved:
            raise
        except ShoalError as exc:
            result = px.DescribeResult(error=_error(exc.code, exc.message))
        else:
            result = px.DescribeResult(description=px.Description(
                column_descriptions=[_column(n, t) for n, t in zip(d.columns, d.decltypes,
                                                                   strict=True)],
                param_names=[n for n in d.params if n is not None],
                param_count=len(d.params)))
        return grpc_web.answer(result.SerializeToString())

    async def disconnect(self, request: Request) -> Response:
        """The client's connection is gone: roll back what it held."""
        try:
            principal, db, branch = await self._resolve(request)
            req = _parse(request, px.DisconnectMessage)
        except (ShoalError, HranaError) as exc:
            return self.error(exc)
        key = (principal.subject, db, branch, req.client_id[:CLIENT_ID])
        client = self.clients.get(key)
        if client is not None:
            async with client.lock:
                await self._drop(key, client)
        return grpc_web.answer(px.Ack().SerializeToString())

    def _client(self, key: Key, principal: Principal, db: str, branch: str) -> _Client:
        """The client_id's stream, or a new one (counted against the stream caps while it
        runs, and after if it holds a transaction)."""
        found = self.clients.get(key)
        if found is not None:
            return found
        holder = self.quota.holder(principal.subject, db)
        holder.add_stream()  # TOO_MANY_STREAMS at a cap
        stream = Stream(self.engine, principal, db, branch=branch,
                        max_statements=self.max_statements,
                        max_response_bytes=self.max_response, holder=holder)
        client = self.clients[key] = _Client(stream, asyncio.Lock())
        return client

    async def _done(self, key: Key, client: _Client) -> None:
        """After a program: keep the stream while it holds a transaction."""
        if client.stream.tx is None:
            await self._drop(key, client)
        else:
            client.deadline = time.monotonic() + self.timeout

    async def _drop(self, key: Key, client: _Client) -> None:
        if self.clients.get(key) is client:
            del self.clients[key]
        await client.stream.close()  # rolls back, gives the stream back to the caps

    async def _sweep_due(self) -> None:
        """Expire clients idle past transaction_timeout (at most twice a second)."""
        now = time.monotonic()
        if now - self._last_sweep < 0.5:
            return
        self._last_sweep = now
        for key in list(self.clients):
            if await self._expire(key, now):
                self.gone[key] = None
                while len(self.gone) > GONE:
                    self.gone.popitem(last=False)

    async def _expire(self, key: Key, now: float | None = None) -> bool:
        """Drop the client if it sat idle past transaction_timeout; whether it did."""
        client = self.clients.get(key)
        if client is None or not client.deadline or client.lock.locked() or \
                client.deadline > (time.monotonic() if now is None else now):
            return False
        await self._drop(key, client)
        return True

    async def _run(self, stream: Stream, batch: p.Batch) -> list[px.QueryResult]:
        """Each step's result (skipped ones empty), within max_response_bytes."""
        n = len(batch.steps)
        budget = stream.budget = Budget(self.max_response, RESERVE * (n + 1))
        results: list[px.QueryResult | None] = [None] * n
        reached = [-1]

        def on_step(i: int, ran: Ran | HranaError, stmt: p.Stmt) -> None:
            reached[0] = i
            if isinstance(ran, HranaError):
                words = ran.message
                if ran.code is Code.SQLITE_READONLY and not stream.principal.can_write:
                    words = f"this token has read access only ({words}): writes through " \
                            "the replica need a token with write access"
                results[i] = px.QueryResult(error=_error(ran.code, words))
                return
            result = px.QueryResult(row=_rows(ran, stmt.want_rows is not False))
            try:
                budget.take(result.ByteSize())
            except HranaError as exc:
                result = px.QueryResult(error=_error(exc.code, exc.message))
            results[i] = result

        await stream.run_batch(batch, on_step)
        out = []
        for i, result in enumerate(results):
            if result is None and budget.spent and i > reached[0]:  # not run: no room left
                result = px.QueryResult(error=_error(Code.RESPONSE_TOO_LARGE,
                                                     budget.error().message))
            out.append(result if result is not None else px.QueryResult(row=px.ResultRows()))
        return out


def _parse(request: Request, kind: type[M]) -> M:
    """The call's message, or INVALID_REQUEST."""
    out = kind()
    try:
        out.ParseFromString(grpc_web.request_message(request))
    except DecodeError as exc:
        raise ShoalError(Code.INVALID_REQUEST, f"not a {kind.DESCRIPTOR.full_name} message: "
                         f"{exc}") from None
    return out


def _hello_holds(request: Request, log_id: str) -> bool:
    """Whether the call's session token is the one Hello gave for this log."""
    return request.headers.get(b"x-session-token") == session_token(log_id).encode()


def _namespace(request: Request) -> str | None:
    """x-namespace-bin, when the client was told it: one it made from the host (its first
    label, or "default" for a host without a dot) is the host's to say."""
    raw = request.headers.get(b"x-namespace-bin")
    if not raw:
        return None
    try:
        ns = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True).decode()
    except (binascii.Error, ValueError):
        raise ShoalError(Code.INVALID_REQUEST, "x-namespace-bin is not base64 of a database "
                         "name") from None
    host = request.header(b"host") or ""
    host = host if host.startswith("[") else host.rsplit(":", 1)[0]
    derived = host.split(".", 1)[0] if "." in host else "default"
    return None if ns == derived else ns


async def _snapshot_body(snap: SyncV1Snapshot) -> AsyncGenerator[bytes, None]:
    """The state's frames, a Frame message each, a few hundred pages a write; a failure
    half way is the answer's final status."""
    loop = asyncio.get_running_loop()
    try:
        first = 1
        while first <= snap.pages:
            count = min(SNAPSHOT_PAGES, snap.pages - first + 1)
            frames = await loop.run_in_executor(None, snap.read, first, count)
            if len(frames) != count:
                raise OSError(f"the state file ended at page {first + len(frames) - 1}")
            first += count
            body = b"".join(grpc_web.message(rl.Frame(data=f).SerializeToString())
                            for f in frames)
            yield body + grpc_web.trailers() if first > snap.pages else body
        if snap.pages == 0:
            yield grpc_web.trailers()
    except OSError as exc:
        yield grpc_web.trailers(Status.INTERNAL, f"{Code.INTERNAL}: reading the snapshot: {exc}")
    finally:
        snap.close()


# -- programs in, results out -------------------------------------------------------------------
def _program(pgm: px.Program) -> p.Batch:
    """libSQL's Program as a Hrana batch (the stream checks its size and conditions)."""
    steps = []
    for i, step in enumerate(pgm.steps):
        if not step.HasField("query"):
            raise ShoalError(Code.INVALID_REQUEST, f"step {i} has no query")
        cond = _cond(step.cond, i) if step.HasField("cond") else None
        steps.append(p.BatchStep(_stmt(step.query, i), cond))
    return p.Batch(steps)


def _cond(cond: px.Cond, at: int) -> p.BatchCond:
    kind = cond.WhichOneof("cond")
    if kind == "ok":
        return p.OkCond(cond.ok.step)
    if kind == "err":
        return p.ErrorCond(cond.err.step)
    if kind == "not":
        inner = getattr(cond, "not")
        if not inner.HasField("cond"):
            raise ShoalError(Code.INVALID_REQUEST, f"step {at}: a 'not' condition holds none")
        return p.NotCond(_cond(inner.cond, at))
    if kind in ("and", "or"):
        conds = [_cond(c, at) for c in getattr(cond, kind).conds]
        return p.AndCond(conds) if kind == "and" else p.OrCond(conds)
    if kind == "is_autocommit":
        return p.IsAutocommitCond()
    raise ShoalError(Code.INVALID_REQUEST, f"step {at}: an empty condition")


def _stmt(query: px.Query, at: int) -> p.Stmt:
    kind = query.WhichOneof("Params")
    args = named = None
    if kind == "positional":
        args = [_value(v.data, at) for v in query.positional.values]
    elif kind == "named":
        names_, values = query.named.names, query.named.values
        if len(names_) != len(values):
            raise ShoalError(Code.INVALID_REQUEST, f"step {at}: {len(names_)} parameter names "
                             f"for {len(values)} values")
        named = [p.NamedArg(n, _value(v.data, at)) for n, v in zip(names_, values, strict=True)]
    return p.Stmt(sql=query.stmt, args=args or None, named_args=named or None,
                  want_rows=not query.skip_rows)


_TAG = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_LEN = struct.Struct("<Q")
_NULL = _TAG.pack(0)


def _value(data: bytes, at: int) -> p.Value:
    """A bincode-encoded libSQL value (a parameter) as a Hrana value."""
    if len(data) >= 4:
        tag, rest = _TAG.unpack_from(data)[0], data[4:]
        if tag == 0 and not rest:
            return p.NullValue()
        if tag == 1 and len(rest) == 8:
            return p.IntegerValue(_I64.unpack(rest)[0])
        if tag == 2 and len(rest) == 8:
            return p.FloatValue(_F64.unpack(rest)[0])
        if tag in (3, 4) and len(rest) >= 8 and _LEN.unpack_from(rest)[0] == len(rest) - 8:
            if tag == 4:
                return p.BlobValue(base64.b64encode(rest[8:]).decode("ascii"))
            try:
                return p.TextValue(rest[8:].decode("utf-8"))
            except UnicodeDecodeError:
                pass
    raise ShoalError(Code.INVALID_REQUEST, f"step {at}: a parameter is not a libSQL value "
                     "(bincode: a u32 variant 0-4, then its data)")


def _bincode(v: Any) -> bytes:
    """A row value (the engine's wire form, shoal/wire.py) as bincode."""
    t = type(v)
    if t is str:
        text: bytes = v.encode("utf-8")
        return b"\x03\0\0\0" + _LEN.pack(len(text)) + text
    if t is int:
        return b"\x01\0\0\0" + _I64.pack(v)
    if v is None:
        return _NULL
    if t is float:
        return b"\x02\0\0\0" + _F64.pack(v)
    if "base64" in v:
        data = base64.b64decode(v["base64"])
        return b"\x04\0\0\0" + _LEN.pack(len(data)) + data
    if "integer" in v:
        return b"\x01\0\0\0" + _I64.pack(int(v["integer"]))
    return b"\x02\0\0\0" + _F64.pack(math.inf if v["float"] == "Infinity" else -math.inf)


def _column(name: str, decltype: str | None) -> px.Column:
    return px.Column(name=name) if decltype is None else px.Column(name=name, decltype=decltype)


def _rows(ran: Ran, want_rows: bool) -> px.ResultRows:
    result = ran.result
    if result is None:  # a transaction statement
        return px.ResultRows()
    rows = [px.Row(values=[px.Value(data=_bincode(v)) for v in row]) for row in result.rows] \
        if want_rows else []
    out = px.ResultRows(column_descriptions=[_column(n, t) for n, t in
                                             zip(result.columns, result.decltypes, strict=True)],
                        rows=rows, affected_row_count=result.rows_affected)
    if result.last_insert_rowid is not None:
        out.last_insert_rowid = result.last_insert_rowid
    return out


_ERROR_CODES = {Code.SQLITE_BUSY: px.Error.TX_BUSY, Code.DATABASE_BUSY: px.Error.TX_BUSY,
                Code.TRANSACTION_TIMEOUT: px.Error.TX_TIMEOUT,
                Code.TRANSACTION_EXPIRED: px.Error.TX_TIMEOUT, Code.INTERNAL: px.Error.INTERNAL}


def _error(code: Code, message: str) -> px.Error:
    """A step's error: ``CODE: message`` (what the client shows), SQLite's primary result
    code as ``extended_code`` for SQLite's errors."""
    return px.Error(code=_ERROR_CODES.get(code, px.Error.SQL_ERROR), message=f"{code}: {message}",
                    extended_code=getattr(sqlite3, str(code), 0) if code.startswith("SQLITE_")
                    else 0)


def _expired(n: int) -> list[px.QueryResult]:
    error = _error(Code.TRANSACTION_TIMEOUT, "the transaction sat idle past "
                   "transaction_timeout and was rolled back; nothing of it was committed")
    return [px.QueryResult(error=error) for _ in range(max(n, 1))]


def _executed(results: list[px.QueryResult], state: px.State.ValueType) -> Response:
    return grpc_web.answer(px.ExecuteResults(results=results, state=state).SerializeToString())
