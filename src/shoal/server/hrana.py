"""libSQL's Hrana protocol over HTTP: pipelines, cursors, batons, the v1 and legacy endpoints.

Every Hrana path is served at the root and under ``/db/{db}/`` (a database URL).
At the root the database comes from the ``x-namespace`` header (as sqld) or
from a token that names exactly one database. @libsql/client resolves
``v2/pipeline`` relative to its URL, so ``http://HOST/db/orders`` (no trailing
slash) arrives as ``/db/v2/pipeline``: that form works when the header or the
token names the database, and otherwise gets DATABASE_REQUIRED saying to add
the slash.

A stream lives in this process between requests. Its baton is
``base64url(boot, stream id, sequence, expiry) + HMAC-SHA256`` under a key kept
in the data directory: it cannot be forged, is good for one request (the
sequence moves on), names the stream, and after a restart (another boot id)
says so. A stream idle for ``transaction_timeout`` expires; its transaction,
if any, is rolled back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from shoal import __version__, names, tokens
from shoal.cluster import Moved
from shoal.engine import Committed, Idempotency, Statement
from shoal.errors import Code, ShoalError
from shoal.server import hrana_proto as p
from shoal.server.hrana_proto import HranaError
from shoal.server.hrana_stream import (
    RESERVE,
    Budget,
    Ran,
    Recorder,
    Replay,
    Stream,
    cursor_entries,
    scope_error,
)
from shoal.server.http import (
    ANONYMOUS,
    BOOKMARK,
    JSON_HEADERS,
    PACED_ITEMS,
    SPLIT_BYTES,
    Request,
    Response,
    Router,
    encode,
    encode_each,
    paced,
    read_at,
)
from shoal.server.ports import EngineAPI
from shoal.server.quota import Quota
from shoal.server.sync import named_database
from shoal.tokens import Principal
from shoal.values import decode_args

TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
SQL_WORK = (p.ExecuteReq, p.BatchReq, p.SequenceReq, p.DescribeReq)  # what a full response stops
_CLOSED = msgspec.Raw(b'{"type":"ok","response":{"type":"close"}}')


def _with_bookmark(stream: Stream) -> list[tuple[bytes, bytes]]:
    """An answer's headers: with Shoal-Bookmark once a statement of it read or wrote."""
    if not stream.bookmark:
        return list(JSON_HEADERS)
    return [*JSON_HEADERS, (BOOKMARK, stream.bookmark.encode())]
_BATON = struct.Struct(">QQQQ")  # boot id, stream id, sequence, expiry (unix seconds)


@dataclass
class HttpStream:
    """A stream kept between HTTP requests, reachable only through its newest baton."""

    id: int
    stream: Stream
    seq: int
    deadline: float  # monotonic
    busy: bool = False
    reserved: str | None = None  # the baton already promised (Idempotency-Key responses)
    issued: bool = False  # a baton names it: remember why it is gone once it is


class HranaHTTP:
    """The Hrana HTTP endpoints; they authenticate themselves so errors keep Hrana's shape."""

    def __init__(self, engine: EngineAPI, quota: Quota):
        self.engine = engine
        self.quota = quota
        settings = engine.settings
        self.timeout = float(settings.transaction_timeout)
        self.max_body = int(settings.max_request_bytes)
        self.max_statements = int(settings.max_statements)
        self._key = b""  # signs batons: read (or made) by start(), in the data directory
        self.boot = secrets.randbits(63)
        self._ids = itertools.count(1)  # batons are signed and carry the boot id: ids may be plain
        self.max_response = int(settings.max_response_bytes)
        self.streams: dict[int, HttpStream] = {}
        self.gone: OrderedDict[int, str] = OrderedDict()  # stream id -> why it is gone
        self._last_sweep = time.monotonic()

    def start(self) -> None:
        """The batons' key, kept in the data directory (the engine's open() made it)."""
        key, _ = tokens.read_or_create_secret(self.engine.root / "baton-key", tokens.new_secret)
        self._key = key.encode()

    # -- routes --------------------------------------------------------------------------------
    def register(self, router: Router) -> set[str]:
        """Add the routes; returns the route templates that do their own authentication."""
        routes: list[tuple[str, str, Callable[[Request], Any]]] = []
        # "/db": a database URL that lost its name for want of a trailing slash
        for prefix in ("", "/db/{db}", "/db/{db}/branches/{branch}", "/db"):
            routes += [
                ("POST", prefix + "/v2/pipeline", self.pipeline),
                ("POST", prefix + "/v3/pipeline", self.pipeline),
                ("POST", prefix + "/v3/cursor", self.cursor),
                ("POST", prefix + "/v1/execute", self.v1_execute),
                ("POST", prefix + "/v1/batch", self.v1_batch),
                ("GET", prefix + "/v2", self.version_check),
                ("GET", prefix + "/v3", self.version_check),
            ]
        routes += [("POST", "/", self.legacy), ("POST", "/db/{db}", self.legacy),
                   ("POST", "/db/{db}/branches/{branch}", self.legacy),
                   ("GET", "/version", self.version)]
        for method, path, handler in routes:
            router.add(method, path, handler)
        return {path for _, path, _ in routes}

    async def version_check(self, request: Request) -> Response:
        version = request.path.rstrip("/").rsplit("/", 1)[-1]
        return Response(200, f"Hello, this is HTTP API {version} (Hrana over HTTP)".encode(),
                        TEXT)

    async def version(self, request: Request) -> Response:
        return Response(200, f"shoal {__version__}".encode(), TEXT)

    # -- helpers -------------------------------------------------------------------------------
    def resolve(self, request: Request) -> tuple[Principal, str, str]:
        """The caller, the database (path, header, token or host: ``named_database``) and
        the branch (path, else the token's if it is bound to one, else main)."""
        principal = request.principal  # authenticated by the app already (App._keys)
        if principal is ANONYMOUS:  # the access log names the token's id
            principal = request.principal = self.engine.authenticate(
                request.header(b"authorization"))
        self.engine.refuse_when_overloaded()  # past the memory ceiling: no new work (OVERLOADED)
        db = named_database(request, lambda: principal.sole, self.engine.has_database)
        if not db:
            lost = request.route.startswith("/db/")
            raise HranaError(Code.DATABASE_REQUIRED, (
                "the URL lost the database name: libSQL clients resolve paths relative "
                "to the URL, so end it with a slash (http://HOST/db/NAME/)" if lost else
                "no database named: use http://HOST/db/NAME/, the x-namespace header, "
                "or a token for exactly one database"))
        names.check(db)
        branch = request.params.get("branch")
        named = None if branch is None else names.check(branch, "branch")
        principal.require("read", db)
        branch = principal.on(named)
        self.engine.require_database(db)
        return principal, db, branch

    @staticmethod
    def error(exc: Exception) -> Response:
        """A Hrana error response (a Shoal error as Hrana shows it)."""
        err = exc if isinstance(exc, HranaError) else p.from_shoal(exc)  # type: ignore[arg-type]
        return Response(err.status, encode(err.body()))

    async def _stored(self, request: Request, principal: Principal, db: str,
                      branch: str) -> tuple[Idempotency | None, Response | None]:
        """The Idempotency-Key, and the response it already has, if any."""
        idem = Idempotency.of(request.header(b"idempotency-key"), request.body)
        if idem is None:
            return None, None
        stored = await self.engine.find_idempotent(principal, db, idem, branch=branch)
        return idem, (Response(*stored) if stored is not None else None)

    # -- batons and the stream table -----------------------------------------------------------
    def _baton(self, handle: HttpStream) -> str:
        expires = int(time.time() + self.timeout) + 1
        payload = _BATON.pack(self.boot, handle.id, handle.seq, expires)
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(payload + mac).decode().rstrip("=")

    async def _open(self, baton: str | None, principal: Principal, db: str,
                    branch: str, keeps: bool = True) -> HttpStream:
        """The stream a request names, or a new one. A new stream counts against its
        token's, its database's and the node's caps unless ``keeps`` is false (the
        request closes it: it holds nothing between requests)."""
        await self._sweep_due()
        if baton is None:
            holder = self.quota.holder(principal.subject, db)
            if keeps:
                holder.add_stream()
            stream = Stream(self.engine, principal, db, branch=branch,
                            max_statements=self.max_statements,
                            max_response_bytes=self.max_response, holder=holder)
            return HttpStream(next(self._ids), stream, 0, 0.0, busy=True)
        try:
            raw = base64.urlsafe_b64decode(baton + "=" * (-len(baton) % 4))
        except (binascii.Error, ValueError):
            raise HranaError(Code.BATON_INVALID, "the baton is not valid base64") from None
        if len(raw) != _BATON.size + 32:
            raise HranaError(Code.BATON_INVALID, "the baton has the wrong length")
        payload, mac = raw[:_BATON.size], raw[_BATON.size:]
        if not hmac.compare_digest(mac, hmac.new(self._key, payload, hashlib.sha256).digest()):
            raise HranaError(Code.BATON_INVALID, "the baton was not issued by this server")
        boot, stream_id, seq, expires = _BATON.unpack(payload)
        handle = self.streams.get(stream_id)
        if handle is None:
            if boot != self.boot:
                raise HranaError(Code.STREAM_EXPIRED, "the server restarted since this baton was "
                                                      "issued; its stream (and any transaction "
                                                      "on it) is gone")
            why = self.gone.get(stream_id)
            if why is None and expires <= time.time():
                why = "expired"
            if why == "idle":  # it expired holding nothing: the client goes on, on a new one
                return await self._open(None, principal, db, branch, keeps)
            if why == "expired":
                raise HranaError(Code.STREAM_EXPIRED, "the stream expired after "
                                                      f"{self.timeout:g} s without requests")
            if why == "closed":
                raise HranaError(Code.STREAM_CLOSED, "the stream was closed")
            raise HranaError(Code.BATON_INVALID, "no stream has this baton")
        if handle.busy or handle.seq != seq:
            raise HranaError(Code.BATON_REUSED, "this baton was already used; send the baton "
                                                "from the newest response on the stream")
        if handle.deadline <= time.monotonic():
            await self._drop(handle, "expired")
            raise HranaError(Code.STREAM_EXPIRED, f"the stream expired after {self.timeout:g} s "
                                                  "without requests")
        stream = handle.stream
        if stream.principal.subject != principal.subject or stream.db != db \
                or stream.branch != branch:
            raise HranaError(Code.BATON_INVALID, "the baton belongs to another token, database "
                                                 "or branch")
        stream.principal = principal  # the same token, verified again just now
        handle.busy = True
        handle.seq = (handle.seq + 1) & (2**63 - 1)
        return handle

    def _release(self, handle: HttpStream) -> str | None:
        """The stream's next baton (None once closed); the stream waits for it."""
        handle.busy = False
        if handle.stream.closed:
            self._forget(handle, "closed")
            return None
        baton = handle.reserved or self._baton(handle)
        handle.reserved = None
        handle.issued = True
        handle.deadline = time.monotonic() + self.timeout
        self.streams[handle.id] = handle
        return baton

    async def _drop(self, handle: HttpStream, why: str = "closed") -> None:
        handle.busy = False
        self._forget(handle, why)
        await handle.stream.close()

    def _forget(self, handle: HttpStream, why: str) -> None:
        if not handle.issued:  # no baton ever named it (e.g. execute + close in one request)
            return
        self.streams.pop(handle.id, None)
        self.gone[handle.id] = why
        while len(self.gone) > 10000:
            self.gone.popitem(last=False)

    async def _sweep_due(self) -> None:
        if time.monotonic() - self._last_sweep >= 0.5:
            await self._sweep()

    async def _sweep(self) -> None:
        """Expire idle streams (at most twice a second), rolling back their transactions."""
        now = self._last_sweep = time.monotonic()
        for handle in [h for h in self.streams.values() if not h.busy and h.deadline <= now]:
            # one that held nothing (no transaction, no stored SQL) lost nothing: a client
            # that comes back with its baton gets a new stream (libSQL's clients keep one
            # between statements, and would fail for good on every later one)
            held = not handle.stream.autocommit or bool(handle.stream.sqls)
            await self._drop(handle, "expired" if held else "idle")

    # -- pipeline ------------------------------------------------------------------------------
    async def pipeline(self, request: Request) -> Response:
        try:
            principal, db, branch = self.resolve(request)
            body = await self._pipeline_body(request)
            requests = body.requests
            once = body.baton is None and len(requests) == 2 and \
                type(requests[0]) is p.ExecuteReq and type(requests[1]) is p.CloseReq
            if request.follow and (not once or b"idempotency-key" in request.headers):
                self._to_leader(db)  # a replica answers a lone statement, nothing more
            idem = None
            if b"idempotency-key" in request.headers:
                idem, stored = await self._stored(request, principal, db, branch)
                if stored is not None:
                    return stored
            if once and idem is None:
                return await self._execute_once(request, principal, db, branch, requests[0])
            closes = any(type(req) is p.CloseReq for req in requests)
            handle = await self._open(body.baton, principal, db, branch, keeps=not closes)
            handle.stream.read_at = read_at(request)
        except Moved:
            raise  # the server sends it to the database's leader
        except (HranaError, ShoalError) as exc:
            return self.error(exc)
        stream = handle.stream
        # every entry may have to be an error: keep room for that, and for the envelope
        budget = stream.budget = Budget(self.max_response, RESERVE * (len(body.requests) + 1))
        rec = stream.recorder = Recorder(idem) if idem is not None else None
        results: list[Any] = []
        try:
            for i, req in enumerate(body.requests):
                left = budget.left
                if rec is None:
                    entry = await self._request(stream, req)
                else:
                    rec.frames.append(self._pipeline_frame(handle, body.requests, i, results))
                    try:
                        entry = await self._request(stream, req)
                    finally:
                        rec.frames.pop()
                results.append(_fit(budget, left, req, entry))
        except Replay as replay:
            await self._drop(handle)
            return Response(replay.status, replay.body)
        except BaseException:
            await self._drop(handle)
            raise
        finally:
            stream.recorder = None
        if request.gone:  # nobody gets the baton: roll back now, not when the stream expires
            await self._drop(handle)
            return Response(200)
        baton = self._release(handle)
        if rec is not None and rec.response is not None:  # exactly what a retry will get
            return Response(*rec.response)
        return Response(200, encode({"baton": baton, "base_url": None, "results": results}),
                        _with_bookmark(stream))

    async def _execute_once(self, request: Request, principal: Principal, db: str, branch: str,
                            execute: p.StreamRequest) -> Response:
        """execute + close on a new stream, without a baton or an Idempotency-Key: what a
        libSQL client sends for each statement outside a transaction. The pipeline's work
        without the stream table: nothing of this stream outlives the request."""
        await self._sweep_due()
        stream = Stream(self.engine, principal, db, branch=branch,
                        max_statements=self.max_statements, max_response_bytes=self.max_response)
        stream.read_at = read_at(request)
        budget = stream.budget = Budget(self.max_response, RESERVE * 3)
        try:
            left = budget.left
            result = _fit(budget, left, execute, await self._request(stream, execute))
        finally:
            await stream.close()  # rolls back what a BEGIN began
        if request.gone:
            return Response(200)
        return Response(200, encode({"baton": None, "base_url": None,
                                     "results": [result, _CLOSED]}), _with_bookmark(stream))

    def _to_leader(self, db: str) -> None:
        """Moved, to the database's leader (none: this node leads it now, serve it here)."""
        url = self.engine.leader_url(db)
        if url is not None:
            raise Moved(url, f"{db}: Hrana streams are the leader's")

    async def _pipeline_body(self, request: Request) -> p.PipelineBody:
        """The pipeline's requests. A large body is decoded a request at a time, and a
        large batch a step at a time, paced (see p.decode_message)."""
        await request.read_body(self.max_body)
        raw = request.body
        if len(raw) <= SPLIT_BYTES:
            body: p.PipelineBody = p.decode(raw, p.PipelineBody)
            self._check_requests(len(body.requests))
            return body
        split: p.PipelineSplit = p.decode(raw, p.PipelineSplit)
        self._check_requests(len(split.requests))
        requests = [await p.decode_message(item, p.StreamRequest, self.max_statements)
                    async for item in paced(split.requests)]
        return p.PipelineBody(requests, split.baton)

    def _check_requests(self, count: int) -> None:
        if count > self.max_statements:
            raise HranaError(Code.TOO_MANY_STATEMENTS, f"{count} requests in one pipeline; at "
                                                       f"most {self.max_statements}")

    @staticmethod
    async def _request(stream: Stream, req: p.StreamRequest) -> dict[str, Any]:
        """One stream request: {"type": "ok", "response"} or {"type": "error", "error"}."""
        try:
            if stream.closed:
                raise HranaError(Code.STREAM_CLOSED, "the stream was closed by an earlier request")
            if isinstance(req, p.ExecuteReq):
                response: dict[str, Any] = {"type": "execute",
                                            "result": await stream.execute(req.stmt)}
            elif isinstance(req, p.CloseReq):
                await stream.close()
                response = {"type": "close"}
            elif isinstance(req, p.BatchReq):
                response = {"type": "batch", "result": await stream.batch(req.batch)}
            elif isinstance(req, p.SequenceReq):
                await stream.sequence(req.sql, req.sql_id)
                response = {"type": "sequence"}
            elif isinstance(req, p.DescribeReq):
                response = {"type": "describe",
                            "result": await stream.describe(req.sql, req.sql_id)}
            elif isinstance(req, p.StoreSqlReq):
                stream.store_sql(req.sql_id, req.sql)
                response = {"type": "store_sql"}
            elif isinstance(req, p.CloseSqlReq):
                stream.close_sql(req.sql_id)
                response = {"type": "close_sql"}
            else:
                response = {"type": "get_autocommit", "is_autocommit": stream.autocommit}
            return {"type": "ok", "response": response}
        except HranaError as exc:
            return {"type": "error", "error": exc.obj()}
        except Moved:
            raise  # the server sends the whole request to the database's leader
        except ShoalError as exc:
            return {"type": "error", "error": p.from_shoal(exc).obj()}

    def _pipeline_frame(self, handle: HttpStream, requests: list[p.StreamRequest], at: int,
                        results: list[Any]) -> Callable[[Any], bytes]:
        """Idempotency: the whole pipeline response as it will be once request ``at`` commits."""

        def frame(inner: Any) -> bytes:
            stream = handle.stream
            out = [*results, {"type": "ok", "response": _wrap(requests[at], inner)}]
            closed = False
            sqls = set(stream.sqls)
            for req in requests[at + 1:]:
                if closed:
                    out.append({"type": "error", "error": HranaError(
                        Code.STREAM_CLOSED, "the stream was closed by an earlier request").obj()})
                elif isinstance(req, p.CloseReq):
                    closed = True
                    out.append({"type": "ok", "response": {"type": "close"}})
                elif isinstance(req, p.StoreSqlReq) and req.sql_id in sqls:
                    out.append({"type": "error", "error": HranaError(
                        Code.SQL_EXISTS, f"SQL text {req.sql_id} already exists").obj()})
                elif isinstance(req, p.StoreSqlReq):
                    sqls.add(req.sql_id)
                    out.append({"type": "ok", "response": {"type": "store_sql"}})
                elif isinstance(req, p.CloseSqlReq):
                    sqls.discard(req.sql_id)
                    out.append({"type": "ok", "response": {"type": "close_sql"}})
                elif isinstance(req, p.GetAutocommitReq):
                    out.append({"type": "ok", "response": {"type": "get_autocommit",
                                                           "is_autocommit": stream.tx is None}})
                else:
                    raise scope_error()
            baton = None
            if not closed:
                handle.reserved = baton = self._baton(handle)
            return encode({"baton": baton, "base_url": None, "results": out})

        return frame

    # -- cursor --------------------------------------------------------------------------------
    async def cursor(self, request: Request) -> Response:
        try:
            principal, db, branch = self.resolve(request)
            await request.read_body(self.max_body)
            body = await p.decode_message(request.body, p.CursorBody, self.max_statements)
            handle = await self._open(body.baton, principal, db, branch)
        except (HranaError, ShoalError) as exc:
            return self.error(exc)
        stream = handle.stream
        budget = stream.budget = Budget(self.max_response, 2 * RESERVE)  # head, error line
        lines: list[bytes] = []

        def on_step(i: int, ran: Ran | HranaError, stmt: p.Stmt) -> None:
            step = [encode(entry) for entry in cursor_entries(i, ran, stmt)]
            budget.take(sum(len(line) + 1 for line in step))
            lines.extend(step)

        try:
            await stream.run_batch(body.batch, on_step)
        except HranaError as exc:
            lines.append(encode({"type": "error", "error": exc.obj()}))
        except BaseException:
            await self._drop(handle)
            raise
        if request.gone:  # as in pipeline
            await self._drop(handle)
            return Response(200)
        head = encode({"baton": self._release(handle), "base_url": None})
        return Response(200, b"\n".join([head, *lines]) + b"\n", TEXT)

    # -- HTTP API v1: one request on a fresh stream ----------------------------------------------
    async def v1_execute(self, request: Request) -> Response:
        return await self._v1(request, p.ExecuteBody)

    async def v1_batch(self, request: Request) -> Response:
        return await self._v1(request, p.BatchBody)

    async def _v1(self, request: Request, kind: type[p.ExecuteBody] | type[p.BatchBody],
                  ) -> Response:
        try:
            principal, db, branch = self.resolve(request)
            await request.read_body(self.max_body)
            body = await p.decode_message(request.body, kind, self.max_statements)
            idem, stored = await self._stored(request, principal, db, branch)
            if stored is not None:
                return stored
        except (HranaError, ShoalError) as exc:
            return self.error(exc)
        stream = Stream(self.engine, principal, db, branch=branch)
        if idem is not None:
            stream.recorder = Recorder(idem)
            stream.recorder.frames.append(lambda inner: encode({"result": inner}))
        try:
            if isinstance(body, p.ExecuteBody):
                result: Any = await stream.execute(body.stmt)
            else:
                result = await stream.batch(body.batch)
        except (HranaError, ShoalError) as exc:
            return self.error(exc)
        except Replay as replay:
            return Response(replay.status, replay.body)
        finally:
            await stream.close()  # a transaction left open is rolled back
        if stream.recorder is not None and stream.recorder.response is not None:
            return Response(*stream.recorder.response)
        return Response(200, encode({"result": result}))

    # -- sqld's first API: POST / {"statements": [...]}, one transaction --------------------------
    async def legacy(self, request: Request) -> Response:
        try:
            principal, db, branch = self.resolve(request)
            await request.read_body(self.max_body)
            items = await p.decode_statements(request.body, self.max_statements)
            statements = [_legacy_statement(s) for s in items] if len(items) <= PACED_ITEMS \
                else [_legacy_statement(s) async for s in paced(items)]
            idem = Idempotency.of(request.header(b"idempotency-key"), request.body)

            def render(done: Committed) -> tuple[int, bytes]:
                return 200, _legacy_body(done.counters.results)

            out = await self.engine.query(principal, db, statements, idem, render,
                                          branch=branch)
        except (HranaError, ShoalError) as exc:
            return self.error(exc)
        if out.replay is not None:
            return Response(*out.replay)
        if len(out.results) <= PACED_ITEMS:
            return Response(200, _legacy_body(out.results))
        return Response(200, bytes(await encode_each(out.results, _legacy_entry)))


def _fit(budget: Budget, left: int, req: p.StreamRequest, entry: dict[str, Any]) -> msgspec.Raw:
    """A pipeline entry as JSON, every byte of it counted once against the response's
    budget (``left`` is what the budget held before the request ran). SQL work that does
    not fit becomes a RESPONSE_TOO_LARGE error; the budget kept room for one per entry."""
    raw = encode(entry)
    if len(raw) + 1 <= left:
        budget.left = left - len(raw) - 1
    else:
        budget.spent = True
        if isinstance(req, SQL_WORK):
            raw = encode({"type": "error", "error": budget.error().obj()})
    return msgspec.Raw(raw)


def _legacy_statement(s: str | p.LegacyStatement) -> Statement:
    return Statement(s) if isinstance(s, str) else Statement(s.q, decode_args(s.params))


def _legacy_body(results: list[Any]) -> bytes:
    return encode([_legacy_entry(r) for r in results])


def _legacy_entry(r: Any) -> dict[str, Any] | None:
    return {"results": {"columns": r.columns, "rows": r.rows}} if r.columns else None


def _wrap(req: p.StreamRequest, inner: Any) -> dict[str, Any]:
    """A stream response around the result that carried a request's commit."""
    if type(req) is p.ExecuteReq:
        return {"type": "execute", "result": inner}
    if type(req) is p.BatchReq:
        return {"type": "batch", "result": inner}
    return {"type": "sequence"}
