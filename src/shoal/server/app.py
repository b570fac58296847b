"""The ASGI application: routing, authentication, the error envelope, metrics and access log.

A request still running DISCONNECT_WATCH after it started, its body read, listens for its
client going away (one task looks for such requests), and then resolves the request's
``REQUEST_GONE`` future: the engine interrupts the SQL work it was waiting for (a worker
thread is not left running it until statement_timeout) and the answer is not sent.
Nothing else is cancelled: a branch being hydrated or a store operation half done
finishes as it would have.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from shoal import names
from shoal.cluster import FORWARDED, Moved, Unreachable
from shoal.engine import (
    AUDIT_TALLY,
    READ_ONLY,
    REQUEST_GONE,
    AuditTally,
    Engine,
    KeysNeeded,
    read_bookmark,
)
from shoal.errors import Code, ShoalError
from shoal.metrics import METRICS
from shoal.origins import same_origin
from shoal.server.api import NativeAPI
from shoal.server.audit import AuditAPI, Auditor
from shoal.server.changes import STREAM_PATH, ChangesAPI, bearer
from shoal.server.cluster import ClusterAPI
from shoal.server.cors import ORIGIN, PREFLIGHT, Cors, forwarded, websocket_origin
from shoal.server.delivery import Dispatcher
from shoal.server.hrana import HranaHTTP
from shoal.server.hrana_ws import HranaWebSocket, address_of
from shoal.server.http import (
    ANONYMOUS,
    BOOKMARK,
    CONSISTENCY,
    Receive,
    Request,
    Response,
    Router,
    Scope,
    Send,
    encode,
    error_code,
    error_response,
    json_response,
    until_gone,
)
from shoal.server.openapi import openapi_document
from shoal.server.ports import EngineAPI
from shoal.server.quota import Quota
from shoal.server.stderr import AccessLines, timestamp
from shoal.server.sync import SyncAPI, named_database
from shoal.server.sync_v1 import SyncV1API
from shoal.server.tables import TablesAPI
from shoal.server.webhooks import WebhooksAPI
from shoal.settings import Settings

log = logging.getLogger("shoal")

# The collector's thresholds while serving: a young collection walks every container
# object that requests in flight hold (64 connections: thousands), so at CPython's
# default (every 700 net allocations: every few requests) it took about 5 % of a point
# read's CPU; objects that die by their reference count never reach it either way.
GC_THRESHOLDS = (20_000, 20, 20)
DISCONNECT_WATCH = 0.05  # seconds; most requests are answered sooner and are never watched
FORWARD_PATIENCE = 5.0  # seconds a request waits for its database's leader to be reachable
FORWARD_PAUSE = 0.2  # seconds between looks at who leads, while the leader is unreachable
SESSIONS = 10_000  # client connections whose last bookmark a cluster's node remembers
CLIENT_GONE = 499  # the status logged (never sent) for a request whose client went away


class App:
    """The ASGI app: routes and their handlers. Construction only builds them; the ASGI
    lifespan (:meth:`start`, :meth:`stop`) starts and stops the engine."""

    def __init__(self, settings: Settings, engine: EngineAPI | None = None):
        self.settings = settings
        self.engine: EngineAPI = engine or Engine(settings)
        self.router = Router()
        self.reads = NativeAPI(self.engine).register(self.router)  # a replica may answer
        self.changes = ChangesAPI(self.engine)
        self.change_routes = self.changes.register(self.router)  # streams stay here
        self.dispatcher = Dispatcher(self.engine)  # webhooks' deliveries
        WebhooksAPI(self.engine, self.dispatcher).register(self.router)
        TablesAPI(self.engine).register(self.router)  # the data API, rules, named queries
        AuditAPI(self.engine).register(self.router)  # GET /v1/audit (server/audit.py)
        self.sync = SyncAPI(self.engine)  # embedded replicas (server/sync.py)
        self.sync_routes = self.sync.register(self.router)
        self.router.add("GET", "/health", self.health)
        self.router.add("GET", "/ready", self.ready)
        self.router.add("GET", "/metrics", self.metrics)
        self.router.add("GET", "/openapi.json", self.openapi)
        self.public = {"/health", "/ready"}
        if settings.metrics:
            self.public.add("/metrics")
        if settings.openapi:
            self.public.add("/openapi.json")
        self._openapi = encode(openapi_document(self.router.routes()))
        # libSQL's Hrana protocol (not in the native OpenAPI document). Its handlers
        # authenticate themselves so that every error keeps Hrana's shape.
        quota = Quota(settings)  # Hrana streams and held bytes, per token, database, node
        self.hrana = HranaHTTP(self.engine, quota)
        self.hrana_routes = self.hrana.register(self.router)  # errors in Hrana's shape
        self.public |= self.hrana_routes
        self.reads |= {r for r in self.hrana_routes if r.endswith("/pipeline")}
        self.websocket = HranaWebSocket(self.engine, quota)
        # libSQL's V1 sync protocol (gRPC-web; server/sync_v1.py): errors in gRPC's shape
        self.sync_v1 = SyncV1API(self.engine, quota)
        self.sync_v1_routes = self.sync_v1.register(self.router)
        self.public |= self.sync_v1_routes
        self.cors = Cors(settings, self.engine)  # browsers' origins (server/cors.py)
        # a cluster's node forwards what another node leads (docs/architecture.md)
        self.clustered = bool(settings.advertise_url)
        if self.clustered:
            ClusterAPI(self.engine).register(self.router)
        self.auditor = Auditor(self.engine.audit, self.router,  # libSQL clients' routes
                               self.hrana_routes | self.sync_routes | self.sync_v1_routes) \
            if settings.audit_log else None
        self._log = AccessLines(sys.stderr.buffer) if settings.access_log else None
        self._leaving = False  # a cluster's node handing its databases over (SIGTERM)
        self._sessions = Connections()  # read-your-writes per client connection
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's, once started
        self._watches: dict[_Watch, None] = {}  # requests in flight (see _Watch)
        self._watcher: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)
        elif kind == "websocket" and not await self._origin_allowed(scope):
            if (await receive())["type"] == "websocket.connect":
                METRICS.cors_refusals.labels("websocket").inc()
                await send({"type": "websocket.close", "code": 1008,  # refused: HTTP 403
                            "reason": str(Code.ORIGIN_NOT_ALLOWED)})
        elif kind == "websocket" and STREAM_PATH.fullmatch(scope.get("path", "")):
            await self.changes.websocket(scope, receive, send)  # asks the leader itself
        elif kind == "websocket":
            url = self._websocket_leader(scope) if self.clustered else None
            if url is not None:
                METRICS.cluster_forwarded.labels("websocket").inc()
                await self.engine.forward_websocket(url, scope, receive, send)
            else:
                await self._hrana_websocket(scope, receive, send)

    async def _hrana_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A Hrana WebSocket served here, and its audit record when it closes."""
        if self.auditor is None:
            await self.websocket(scope, receive, send)
            return
        started = time.perf_counter()
        tally = AuditTally()
        tallying = AUDIT_TALLY.set(tally)  # its streams' tasks inherit it
        try:
            conn = await self.websocket(scope, receive, send)
        finally:
            AUDIT_TALLY.reset(tallying)
        if conn is not None:
            self.auditor.websocket(conn.principal, conn.db or conn.url_db, conn.branch, tally,
                                   101, time.perf_counter() - started)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:  # whatever stops the start is said to the server
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                # What start-up made (modules, settings, the engine) lives as long as the
                # process: out of the collector's way, a full collection (it runs on the
                # event loop, when requests have made many objects) walks only theirs.
                gc.freeze()
                thresholds = gc.get_threshold()
                gc.set_threshold(*GC_THRESHOLDS)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                gc.set_threshold(*thresholds)  # the process's again (an app run in-process)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start(self) -> None:
        """Open and start the engine (blocking until the node may serve), then what the
        handlers keep in the data directory."""
        self.loop = asyncio.get_running_loop()
        await self.engine.start()
        self.hrana.start()
        self.dispatcher.start()

    def _error(self, request: Request, exc: ShoalError) -> Response:
        """The error in the envelope of the request's protocol (a libSQL client reads
        Hrana's, and would show a native one as a bare status)."""
        if request.route in self.hrana_routes:
            return self.hrana.error(exc)
        if request.route in self.sync_v1_routes:
            return self.sync_v1.error(exc)
        return error_response(exc)

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        await self.dispatcher.stop()
        await self.engine.stop()
        if self._log is not None:
            self._log.flush()

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = Request(scope, receive)
        origin = request.headers.get(ORIGIN)  # a browser's page (server/cors.py); else None
        if origin is not None and request.method == "OPTIONS" and PREFLIGHT in request.headers:
            await self._preflight(request, send, started)
            return
        watch = _Watch(request, time.monotonic())
        tally = AuditTally()  # what the engine does for the request (the audit log)
        tallying = AUDIT_TALLY.set(tally)
        self._watches[watch] = None
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_requests())
        db: str | None = None
        try:
            handler = self.router.resolve(request)
            db = self._database(request) if self.clustered else None
            url = self._leader(request, db) if db is not None else None
            if url is not None and request.route in self.change_routes and \
                    self.changes.streaming(request):
                url = None  # the stream asks the leader for each page itself
            if url is not None and request.route in self.reads and \
                    request.headers.get(CONSISTENCY) != b"strong":
                assert db is not None  # (a leader's URL is a database's)
                request.follow, url = True, None  # read here; the engine moves what it cannot
            if url is not None:
                assert db is not None
                response = await self._forward(request, handler, db, url)
            else:
                if db is not None:
                    await self._known(db)
                response = await self._serve(request, handler,
                                             db if request.follow else None)
        except Moved as exc:  # another node claimed the database first: it serves this
            assert db is not None
            try:
                response = await self._forward(request, handler, db, exc.url)
            except ShoalError as again:
                response = self._error(request, again)
        except ShoalError as exc:
            response = self._error(request, exc)
        except Exception:  # a bug: the one place it becomes 500 INTERNAL, traceback logged
            log.exception("unhandled error on %s %s", request.method, request.route)
            response = self._error(request, ShoalError(Code.INTERNAL, "internal error"))
        finally:
            del self._watches[watch]
            watch.stop()
            AUDIT_TALLY.reset(tallying)
        if db is not None and response.status == 200:
            self._sessions.note(request, db, response.headers)
        if origin is not None and FORWARDED not in request.headers:  # the edge's, once
            self.cors.decorate(request, response)
        if request.gone:  # nobody to answer
            response = Response(CLIENT_GONE)
        elif response.stream is not None:
            await self._send_stream(request, response, send)
        else:
            await self._send(response, send)
        self._done(request, response, started, tally)

    @staticmethod
    async def _send(response: Response, send: Send) -> None:
        """A whole response (its length said: without one, the server would send chunks)."""
        headers = response.headers
        if response.status != 204:
            headers = [*headers, (b"content-length", str(len(response.body)).encode())]
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    def _done(self, request: Request, response: Response, started: float,
              tally: AuditTally | None = None) -> None:
        """A request answered: its metrics, its access log line and its audit record."""
        elapsed = time.perf_counter() - started
        METRICS.observe_request(request.route, request.method, response.status, elapsed)
        code = error_code(response.body) if response.status >= 400 else ""
        if self._log is not None:
            self._access_log(request, response, elapsed, code)
        if tally is not None and self.auditor is not None:
            self.auditor.record(request, response, elapsed, tally, code)

    async def _preflight(self, request: Request, send: Send, started: float) -> None:
        """A browser's preflight: answered here, on any node, without a token."""
        try:
            response = await self.cors.preflight(request, self.router.methods(request))
        except Exception:  # a bug: 500 INTERNAL, as App.http answers one
            log.exception("unhandled error on a preflight of %s", request.route)
            response = error_response(ShoalError(Code.INTERNAL, "internal error"))
        await self._send(response, send)
        self._done(request, response, started)

    async def _origin_allowed(self, scope: Scope) -> bool:
        """A WebSocket upgrade's Origin: none (a client that is not a browser), the page's
        own host, or one the node or the database the path names allows. A forwarded
        upgrade was looked at by the node the browser reached."""
        origin, host, relayed = websocket_origin(scope)
        if origin is None or relayed or same_origin(origin, host):
            return True
        path = scope.get("path", "/")
        route = STREAM_PATH.fullmatch(path)
        address = address_of(path) if route is None else None
        db = route["db"] if route is not None else address[0] if address is not None else None
        return await self.cors.admits(origin, db)

    @staticmethod
    async def _send_stream(request: Request, response: Response, send: Send) -> None:
        """A body sent as it comes, until it ends or the client goes away."""
        assert response.stream is not None
        await send({"type": "http.response.start", "status": response.status,
                    "headers": response.headers})
        async for body in until_gone(response.stream, request, "http.disconnect"):
            await send({"type": "http.response.body", "body": body, "more_body": True})
        if not request.gone:
            await send({"type": "http.response.body", "body": b""})

    async def _serve(self, request: Request, handler: Callable[[Request], Any],
                     follow: str | None = None) -> Response:
        """Authenticate, then run the handler; ``follow``: the database of a read served
        from this node's replica, which gets its connection's last bookmark (once the
        token, and so the branch it is served on, is known)."""
        if request.route not in self.public:
            header = self._bearer(request)
            try:
                request.principal = self.engine.authenticate(header)
            except KeysNeeded as needed:  # an identity provider's key, read once: again
                await needed.wait()
                request.principal = self.engine.authenticate(header)
            self.engine.refuse_when_overloaded()  # past the memory ceiling: no new work
        elif request.route in self.hrana_routes and b"authorization" in request.headers:
            await self._keys(request)  # Hrana's handlers authenticate themselves, in sync
        if follow is not None:
            self._sessions.carry(request, follow)
        return await handler(request)  # type: ignore[no-any-return]

    def _bearer(self, request: Request) -> str | None:
        """The Authorization header (the change feed's GET may carry the token in the URL
        instead: server/changes.py, ``bearer``)."""
        if request.route in self.change_routes:
            return bearer(request)
        return request.header(b"authorization")

    async def _keys(self, request: Request) -> None:
        """Read an identity provider's keys the token needs, if any, before a handler that
        authenticates on its own (it answers any other failure in its protocol's shape);
        the principal found is the request's (the handler then need not ask again)."""
        try:
            request.principal = self.engine.authenticate(request.header(b"authorization"))
        except KeysNeeded as needed:
            await needed.wait()
        except ShoalError:
            pass

    # -- a cluster's node --------------------------------------------------------------------
    def _database(self, request: Request) -> str | None:
        """The database a request is for, as far as routing can tell before running it."""
        if request.route in self.sync_v1_routes:
            return self.sync_v1.database(request, lambda: self._sole(self.sync_v1.token(request)))
        if request.route not in self.hrana_routes and request.route not in self.sync_routes:
            return request.params.get("db")
        return named_database(request, lambda: self._sole(request.header(b"authorization")),
                              self.engine.has_database)

    def _sole(self, header: str | None) -> str | None:
        """The only database of the token in ``header`` (None for any other token, or none:
        the handler answers a bad one in its protocol's shape)."""
        try:
            return self.engine.authenticate(header).sole
        except ShoalError:
            return None

    def _leader(self, request: Request, db: str) -> str | None:
        """The URL of the node to forward a request to; None to serve it here. A request
        another node forwarded is served here (never forwarded twice), unless this node is
        leaving."""
        url = self.engine.leader_url(db)
        if url is None or (FORWARDED in request.headers and not self._leaving):
            return None
        return url

    async def _known(self, db: str) -> None:
        """A database this node leads but has not heard of may have been created on
        another node a moment ago: the store says (the handler answers 404 otherwise)."""
        try:
            self.engine.require_database(db)
        except ShoalError:
            if names.is_valid(db):
                await self.engine.learn_database(db)

    async def _forward(self, request: Request, handler: Callable[[Request], Any], db: str,
                       url: str) -> Response:
        """Send the request on to the database's leader and answer what it answers. While
        the leader cannot be reached (the request never left), wait for another to lead
        the database, up to FORWARD_PATIENCE; if that is this node, serve it here."""
        body = await request.read_body(self.settings.max_request_bytes)
        query = request.scope.get("query_string", b"")
        path = request.scope.get("raw_path") or request.path.encode()
        path_qs = (path + b"?" + query if query else path).decode("latin-1")
        protocol = "hrana" if request.route in self.hrana_routes else \
            "grpc" if request.route in self.sync_v1_routes else "native"
        deadline = time.monotonic() + FORWARD_PATIENCE
        while True:
            try:
                status, headers, answer = await self.engine.forward(
                    url, request.method, path_qs, request.scope["headers"], body)
                METRICS.cluster_forwarded.labels(protocol).inc()
                if ORIGIN in request.headers:  # this node names the origin back (cors.py)
                    headers = forwarded(headers)
                return Response(status, answer, headers, relayed=True)
            except Unreachable as exc:
                if exc.sent or time.monotonic() >= deadline:
                    METRICS.cluster_forward_failures.inc()
                    raise
            await asyncio.sleep(FORWARD_PAUSE)
            next_url = self.engine.leader_url(db)
            if next_url is None:
                return await self._serve(request, handler)
            url = next_url

    def _websocket_leader(self, scope: Scope) -> str | None:
        """The leader's URL for a Hrana WebSocket whose URL or headers name its database
        (one named only by the token of its hello is served here)."""
        headers = dict(scope.get("headers") or [])
        if FORWARDED in headers:
            return None
        address = address_of(scope.get("path", "/"))
        db = address[0] if address is not None else None
        if db is None:
            raw = headers.get(b"x-namespace")
            db = raw.decode("latin-1") if raw else None
        return self.engine.leader_url(db) if db else None

    async def hand_over(self) -> None:
        """SIGTERM on a cluster's node (``server/main.py``): hand the databases over while
        still serving, then let the server stop."""
        self._leaving = True
        await self.engine.hand_over()

    async def _watch_requests(self) -> None:
        """Every DISCONNECT_WATCH, start listening for the client of each request running
        longer than that (one task for all: a timer per request would cost the hot path)."""
        while True:
            await asyncio.sleep(DISCONNECT_WATCH)
            due = time.monotonic() - DISCONNECT_WATCH
            for watch in list(self._watches):
                if watch.started < due:
                    watch.listen()

    def _access_log(self, request: Request, response: Response, elapsed: float,
                    code: str) -> None:
        """One JSON line per request: never the token, the body or the SQL arguments. The
        token's id (``admin`` for the admin token) says who; an error's code says what
        went wrong, as the client saw it."""
        line: dict[str, Any] = {
            "ts": timestamp(time.time()),
            "method": request.method,
            "route": request.route,
            "status": response.status,
            "ms": round(elapsed * 1000, 3),
        }
        if "db" in request.params:
            line["database"] = request.params["db"][:80]
        if request.principal is not ANONYMOUS:
            line["token"] = request.principal.subject
        if code:
            line["code"] = code
        assert self._log is not None
        self._log.add(encode(line) + b"\n")

    # -- open endpoints --------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        """Liveness: the process answers. Whether it takes writes is /ready's question."""
        return json_response(200, {"status": "ok"})

    async def ready(self, request: Request) -> Response:
        """Readiness: ok, degraded (200, with reasons) or read_only (503, so that any health
        checker sees the node cannot do all its job; docs/operations.md says when a load
        balancer should act on it: the node is today its store's only writer)."""
        status, conditions = self.engine.readiness()
        if not conditions:
            return json_response(200, {"status": status})
        reasons = [{"condition": c.name, "level": c.level, "message": c.message,
                    "since": timestamp(c.since)} for c in conditions]
        return json_response(503 if status == READ_ONLY else 200,
                             {"status": status, "reasons": reasons})

    async def metrics(self, request: Request) -> Response:
        """The node's metrics; an admin token for every database also gets each database's
        usage (its names are not for anonymous scrapers, and their number is unbounded)."""
        principal = request.principal
        if request.route not in self.public:
            principal.require("admin")
        elif request.header(b"authorization"):
            principal = self.engine.authenticate(request.header(b"authorization"))
        body = METRICS.render()
        if principal.can("admin") and principal.databases is None:
            body += self.engine.usage_metrics()
        return Response(200, body, [(b"content-type", b"text/plain; version=0.0.4")])

    async def openapi(self, request: Request) -> Response:
        if request.route not in self.public:
            request.principal.require("read")
        return Response(200, self._openapi)


class _Watch:
    """A request's REQUEST_GONE signal: its callbacks run when the client goes away.
    Listening starts (App._watch_requests) once the request has run for DISCONNECT_WATCH
    with its body read: only then may another receive() be awaited, since after the body
    the server's next message is the disconnect."""

    __slots__ = ("_callbacks", "_listener", "_token", "request", "started")

    def __init__(self, request: Request, started: float):
        self.request = request
        self.started = started
        self._callbacks: list[Callable[[Any], object]] | None = None  # made on first use
        self._listener: asyncio.Task[None] | None = None
        self._token = REQUEST_GONE.set(self)

    def add_done_callback(self, fn: Callable[[Any], object], /) -> None:
        if self.request.gone:
            fn(self)
        elif self._callbacks is None:
            self._callbacks = [fn]
        else:
            self._callbacks.append(fn)

    def remove_done_callback(self, fn: Callable[[Any], object], /) -> int:
        if self._callbacks is not None and fn in self._callbacks:
            self._callbacks.remove(fn)
            return 1
        return 0

    def done(self) -> bool:
        return self.request.gone

    def listen(self) -> None:
        if self._listener is None and self.request.body_read:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        message = await self.request.receive()
        if message["type"] == "http.disconnect" and not self.request.gone:
            self.request.gone = True
            callbacks, self._callbacks = self._callbacks or [], None
            for fn in callbacks:
                fn(self)

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        REQUEST_GONE.reset(self._token)


class Connections:
    """Read-your-writes per client connection on a cluster's node, for clients that do not
    carry bookmarks (libSQL's, curl): the last bookmark each keep-alive connection got
    for a database and branch is sent with its next read from a replica that names none.
    A connection is known by the client's address and port, remembered for the last
    SESSIONS of them; one that closes and whose port is taken again at most makes a read
    wait for what it would have seen anyway."""

    def __init__(self, size: int = SESSIONS):
        self.size = size
        self.last: OrderedDict[tuple[Any, str, str], bytes] = OrderedDict()

    @staticmethod
    def _key(request: Request, db: str) -> tuple[Any, str, str] | None:
        client = request.scope.get("client")
        if not client:
            return None
        # the branch the request is served on: the path's, else a branch-bound token's
        branch = request.params.get("branch") or request.principal.branch or "main"
        return tuple(client), db, branch

    def note(self, request: Request, db: str, headers: list[tuple[bytes, bytes]]) -> None:
        """Remember the bookmark of an answer (a write forwarded to its leader included),
        under the branch it names (a branch-bound token's request may name none)."""
        client = request.scope.get("client")
        if not client:
            return
        for name, value in headers:
            if name == BOOKMARK:
                try:
                    key = (tuple(client), db, read_bookmark(value.decode("latin-1")).branch)
                except ShoalError:
                    return
                self.last[key] = value
                self.last.move_to_end(key)
                if len(self.last) > self.size:
                    self.last.popitem(last=False)
                return

    def carry(self, request: Request, db: str) -> None:
        """Give a read that names no bookmark its connection's last one."""
        if BOOKMARK in request.headers:
            return
        key = self._key(request, db)
        found = self.last.get(key) if key is not None else None
        if found is not None:
            request.headers[BOOKMARK] = found
