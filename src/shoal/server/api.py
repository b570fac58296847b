"""The native JSON API, /v1: request types (msgspec), handlers and response shapes."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from shoal import names
from shoal.engine import (
    BranchInfo,
    Committed,
    DatabaseLimits,
    DatabaseRecord,
    Idempotency,
    Outcome,
    Result,
    Statement,
    TokenInfo,
    TokenRecord,
    make_bookmark,
    parse_time,
)
from shoal.errors import Code, ShoalError
from shoal.server.http import (
    BOOKMARK,
    JSON_HEADERS,
    PACED_ITEMS,
    SPLIT_BYTES,
    Request,
    Response,
    Router,
    decode_each,
    decoding,
    encode,
    encode_each,
    json_response,
    paced,
    read_at,
)
from shoal.server.ports import EngineAPI
from shoal.values import Args, decode_args


# -- request bodies (also the OpenAPI schemas) -------------------------------------------------
class StatementObject(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One SQL statement with arguments: positional (array) or named (object). Decoded
    JSON is a tree, never a reference cycle: not tracked by the garbage collector (see
    hrana_proto.Tree), as a request may hold 100,000."""

    sql: str
    args: Args | None = None


class QueryRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Statements run in order in one transaction: all or nothing; read at or after
    ``bookmark`` (as the Shoal-Bookmark header)."""

    statements: list[str | StatementObject]
    bookmark: str | None = None


class _QueryOutline(msgspec.Struct, forbid_unknown_fields=True):
    """A large QueryRequest with its statements still JSON, to be decoded one at a time."""

    statements: list[msgspec.Raw]
    bookmark: str | None = None


_statement_decoder = msgspec.json.Decoder(str | StatementObject)


class _Meta(msgspec.Struct):
    bookmark: str | None = None


class _Stored(msgspec.Struct):
    meta: _Meta | None = None


_stored_decoder = msgspec.json.Decoder(_Stored)


def _stored_bookmark(body: bytes) -> str | None:
    """The bookmark in a stored answer's body (an error's has none)."""
    try:
        meta = _stored_decoder.decode(body).meta
    except msgspec.DecodeError:
        return None
    return meta.bookmark if meta is not None else None


def _statement(index: int, item: str | StatementObject) -> Statement:
    if type(item) is str:
        return Statement(item)
    assert isinstance(item, StatementObject)
    try:
        return Statement(item.sql, decode_args(item.args))
    except ShoalError as exc:
        exc.extra["statement"] = index
        raise


class CreateDatabaseRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class CreateTokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``databases``: names and prefix patterns (``tenant-*``), or "*"; ``provision``:
    creates and deletes the databases of its patterns and mints their tokens, no data;
    ``branch``: the token works on that branch only."""

    databases: list[str] | Literal["*"]
    access: Literal["read", "write", "admin", "provision"]
    expires_in: int = 3600
    branch: str | None = None


class CorsRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The origins (web pages) a browser may let call the database, besides the node's
    cors_origins: "https://app.example.com", "https://*.example.com" or "*"; [] for none."""

    origins: list[str]


class IssuersRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The identity providers whose tokens may reach the database, besides the node's
    (docs/api.md, "Identity providers"): each {"issuer", "audience", "jwks_url", "access",
    "rules", "branch", "leeway"}; [] for none."""

    issuers: list[dict[str, Any]]


class RevokeIssuerRequest(msgspec.Struct, forbid_unknown_fields=True):
    """One token of an identity provider (``jti``), or every token of the issuer issued
    until now (no ``jti``); the node's issuer, or ``database``'s own."""

    issuer: str
    jti: str | None = None
    database: str | None = None


class BeginRequest(msgspec.Struct, forbid_unknown_fields=True):
    mode: Literal["read", "write"] | None = None


class PointRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A point in a branch's history: an ISO 8601 time, or a bookmark a request returned."""

    timestamp: str | None = None
    bookmark: str | None = None


class CreateBranchRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A new branch of ``from`` (default main) at ``at`` (default: its latest state);
    ``materialise``: answer once the branch is hydrated on this node, so that its first
    query does not pay for it."""

    name: str
    source: str | None = msgspec.field(default=None, name="from")
    at: PointRequest | None = None
    materialise: bool = False


class UndeleteRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Which deleted incarnation to bring back (the newest if none is named)."""

    incarnation: str | None = None


class RestoreRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Restore ``branch`` in place to a time or a bookmark; ``keep_as`` names the branch
    that keeps the state before (default: '<branch>-before-restore-<UTC time>')."""

    branch: str = "main"
    timestamp: str | None = None
    bookmark: str | None = None
    keep_as: str | None = None


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def token_json(info: TokenInfo, now: float) -> dict[str, Any]:
    """A token as the list shows it: never the token itself. ``databases`` is what it
    reaches now; ``narrowed`` the ones it was given and reaches no more."""
    rec, reach = info.record, info.reach
    return {"id": rec.id, "databases": "*" if reach is None else reach,
            "narrowed": list(info.narrowed), "access": rec.access,
            "created_by": rec.created_by, "created_at": iso(rec.created_at),
            "expires_at": iso(rec.expires_at), "expired": rec.expires_at <= now,
            "revoked": info.revoked, "branch": rec.branch,
            "revoked_at": iso(rec.revoked_at) if rec.revoked_at is not None else None}


TOKEN_INCLUDES = ("expired", "revoked")
TOKEN_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")  # a cursor is the last token id of a page


def database_json(rec: DatabaseRecord) -> dict[str, Any]:
    return {"name": rec.name, "created_at": iso(rec.created_at)}


def branch_json(name: str, parent: str | None, fork_txid: int | None,
                created_at: float) -> dict[str, Any]:
    return {"name": name, "parent": parent, "fork_txid": fork_txid, "created_at": iso(created_at)}


def full_branch_json(info: BranchInfo) -> dict[str, Any]:
    b = info.record
    return branch_json(b.name, b.parent, b.fork_txid, b.created_at) | {
        "timeline": b.timeline, "txid": info.txid, "size_bytes": info.size_bytes,
        "store_bytes": info.store_bytes}


def point_json(txid: int, ts: float) -> dict[str, Any]:
    return {"txid": txid, "time": iso(ts)}


def info_json(rec: DatabaseRecord, size_bytes: int, branches: list[dict[str, Any]], txid: int,
              is_open: bool) -> dict[str, Any]:
    """One shape for a database, from create and from GET."""
    return database_json(rec) | {"size_bytes": size_bytes, "branches": branches, "txid": txid,
                                 "open": is_open}


class NativeAPI:
    def __init__(self, engine: EngineAPI):
        self.engine = engine
        s = engine.settings
        self.max_statements = s.max_statements
        self.max_body = s.max_request_bytes

    def register(self, router: Router) -> set[str]:
        """Add the routes; return those a cluster's node may answer from a replica."""
        db = "/v1/databases/{db}"
        tx = db + "/transactions/{tx}"
        br = db + "/branches/{branch}"
        btx = br + "/transactions/{tx}"
        for method, path, handler in (
            ("GET", db + "/history", self.history),
            ("POST", db + "/restore", self.restore),
            ("GET", db + "/branches", self.list_branches),
            ("POST", db + "/branches", self.create_branch),
            ("GET", br, self.get_branch),
            ("DELETE", br, self.delete_branch),
            ("POST", br + "/reset", self.reset_branch),
            ("POST", br + "/compact", self.compact),
            ("GET", br + "/history", self.history),
            ("POST", br + "/query", self.query),
            ("GET", br + "/usage", self.usage),
            ("POST", br + "/transactions", self.begin),
            ("POST", btx + "/query", self.tx_query),
            ("POST", btx + "/commit", self.tx_commit),
            ("POST", btx + "/rollback", self.tx_rollback),
            ("GET", "/v1/databases", self.list_databases),
            ("POST", "/v1/databases", self.create_database),
            ("GET", db, self.get_database),
            ("DELETE", db, self.delete_database),
            ("POST", db + "/undelete", self.undelete_database),
            ("POST", db + "/query", self.query),
            ("GET", db + "/usage", self.usage),
            ("GET", db + "/limits", self.get_limits),
            ("PUT", db + "/limits", self.put_limits),
            ("GET", db + "/cors", self.get_cors),
            ("PUT", db + "/cors", self.put_cors),
            ("GET", db + "/issuers", self.get_issuers),
            ("PUT", db + "/issuers", self.put_issuers),
            ("GET", "/v1/issuers", self.node_issuers),
            ("POST", "/v1/issuers/revoke", self.revoke_issuer),
            ("POST", db + "/compact", self.compact),
            ("POST", db + "/transactions", self.begin),
            ("POST", tx + "/query", self.tx_query),
            ("POST", tx + "/commit", self.tx_commit),
            ("POST", tx + "/rollback", self.tx_rollback),
            ("POST", "/v1/tokens", self.create_token),
            ("GET", "/v1/tokens", self.list_tokens),
            ("DELETE", "/v1/tokens/{id}", self.revoke_token),
        ):
            router.add(method, path, handler)
        return {db + "/query", br + "/query"}

    # -- helpers ----------------------------------------------------------------------------
    async def _statements(self, request: Request) -> tuple[list[Statement], str | None]:
        """The body's statements and bookmark. A large body is decoded a statement at a
        time, paced (the count is checked first), so that thousands of statements never
        hold the loop."""
        items: list[str | StatementObject]
        if len(request.body) <= SPLIT_BYTES:
            body = request.decode(QueryRequest)
            items, bookmark = body.statements, body.bookmark
            self._count(len(items))
        else:
            outline = request.decode(_QueryOutline)
            self._count(len(outline.statements))
            bookmark = outline.bookmark
            with decoding():
                items = await decode_each(outline.statements, _statement_decoder,
                                          "$.statements")
        if len(items) <= PACED_ITEMS:
            return [_statement(i, item) for i, item in enumerate(items)], bookmark
        return [_statement(i, item) async for i, item in paced(enumerate(items))], bookmark


    def _count(self, n: int) -> None:
        if not n:
            raise ShoalError(Code.INVALID_REQUEST, "'statements' must hold at least one statement")
        if n > self.max_statements:
            raise ShoalError(Code.TOO_MANY_STATEMENTS,
                             f"{n} statements; at most {self.max_statements}")

    @staticmethod
    def _idem(request: Request) -> Idempotency | None:
        return Idempotency.of(request.header(b"idempotency-key"), request.body)

    @staticmethod
    def _db(request: Request) -> str:
        return names.check(request.params["db"])

    @staticmethod
    def _branch(request: Request) -> str:
        """The branch a data path names: /branches/{branch}/..., else main (the token's
        own for a token bound to a branch: ``Principal.on``)."""
        branch = request.params.get("branch")
        return request.principal.on(None if branch is None else names.check(branch))

    @staticmethod
    def _result_body(results: list[Any] | msgspec.Raw, rows_read: int, rows_written: int,
                     txid: int, bookmark: str, started: float) -> bytes:
        """``results`` as JSON values (``Result.as_json``), or already encoded."""
        return encode({
            "results": results,
            "meta": {
                "rows_read": rows_read,
                "rows_written": rows_written,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "txid": txid,
                "bookmark": bookmark,
            },
        })

    async def _outcome_body(self, out: Outcome, started: float) -> bytes:
        """On the event loop: thousands of results are encoded a piece at a time."""
        results: list[Any] | msgspec.Raw = [r.as_json() for r in out.results] \
            if len(out.results) <= PACED_ITEMS else await encode_each(out.results, Result.as_json)
        return self._result_body(results, out.rows_read, out.rows_written, out.txid,
                                 out.bookmark, started)

    def _committed_body(self, done: Committed, started: float) -> bytes:
        """Inside the commit, on the writer's thread (an Idempotency-Key's stored answer)."""
        c = done.counters
        return self._result_body([r.as_json() for r in c.results], c.rows_read,
                                 c.rows_written, done.txid, done.bookmark, started)

    # -- databases --------------------------------------------------------------------------
    @staticmethod
    def _flag(request: Request, name: str) -> bool:
        raw = (request.query(name) or "false").lower()
        if raw not in ("true", "false", "1", "0"):
            raise ShoalError(Code.INVALID_REQUEST, f"{name} must be true or false")
        return raw in ("true", "1")

    @staticmethod
    def _limit(request: Request) -> int:
        limit_raw = request.query("limit") or "100"
        if not limit_raw.isdigit() or not 1 <= int(limit_raw) <= 1000:
            raise ShoalError(Code.INVALID_REQUEST, "limit must be an integer from 1 to 1000")
        return int(limit_raw)

    async def list_databases(self, request: Request) -> Response:
        if self._flag(request, "deleted"):
            return await self.list_deleted(request)
        limit = self._limit(request)
        cursor = request.query("cursor")
        records = await self.engine.list_databases(request.principal, limit, cursor)
        page: dict[str, Any] = {"databases": [database_json(r) for r in records]}
        page["next_cursor"] = records[-1].name if len(records) == limit else None
        return json_response(200, page)

    async def create_database(self, request: Request) -> Response:
        await request.read_body(self.max_body)
        body = request.decode(CreateDatabaseRequest)

        def render(rec: DatabaseRecord) -> tuple[int, bytes]:
            main = branch_json("main", None, 0, rec.created_at)
            return 201, encode(info_json(rec, 0, [main], 0, False))

        status, out = await self.engine.create_database(
            request.principal, body.name, self._idem(request), render)
        return Response(status, out)

    async def get_database(self, request: Request) -> Response:
        info = await self.engine.database_info(request.principal, self._db(request))
        branches = [branch_json(b.name, b.parent, b.fork_txid, b.created_at)
                    for b in info.branches]
        return json_response(200, info_json(info.record, info.size_bytes, branches, info.txid,
                                            info.open))

    async def delete_database(self, request: Request) -> Response:
        await self.engine.delete_database(request.principal, self._db(request),
                                          purge=self._flag(request, "purge"))
        return Response(204, b"", [])

    async def list_deleted(self, request: Request) -> Response:
        """Deleted databases still restorable (with an object store), oldest first."""
        keep = self.engine.settings.history_retention
        gone = await self.engine.deleted_databases(request.principal)
        return json_response(200, {"databases": [{
            "name": d.name, "incarnation": d.incarnation, "created_at": iso(d.created_at),
            "deleted_at": iso(d.deleted_at), "restorable_until": iso(d.deleted_at + keep),
            "branches": d.branches} for d in gone], "next_cursor": None})

    async def undelete_database(self, request: Request) -> Response:
        await request.read_body(self.max_body)
        body = request.decode(UndeleteRequest) if request.body.strip() else UndeleteRequest()
        name = self._db(request)
        await self.engine.undelete_database(request.principal, name, body.incarnation)
        return await self.get_database(request)

    async def usage(self, request: Request) -> Response:
        name = self._db(request)
        branch = self._branch(request)
        usage = await self.engine.usage_of(request.principal, name, branch)
        where = {"database": name} | ({"branch": branch} if "branch" in request.params else {})
        return json_response(200, where | usage)

    async def get_limits(self, request: Request) -> Response:
        return json_response(200, await self.engine.limits_of(request.principal,
                                                              self._db(request)))

    async def put_limits(self, request: Request) -> Response:
        await request.read_body(self.max_body)
        limits = request.decode(DatabaseLimits)
        limits.check()
        return json_response(200, await self.engine.set_limits(request.principal,
                                                               self._db(request), limits))

    async def get_cors(self, request: Request) -> Response:
        return json_response(200, await self.engine.cors_of(request.principal,
                                                            self._db(request)))

    async def put_cors(self, request: Request) -> Response:
        await request.read_body(self.max_body)
        body = request.decode(CorsRequest)
        return json_response(200, await self.engine.set_cors(request.principal,
                                                             self._db(request), body.origins))

    async def get_issuers(self, request: Request) -> Response:
        return json_response(200, await self.engine.issuers_of(request.principal,
                                                               self._db(request)))

    async def put_issuers(self, request: Request) -> Response:
        await request.read_body(self.max_body)
        body = request.decode(IssuersRequest)
        return json_response(200, await self.engine.set_issuers(request.principal,
                                                                self._db(request), body.issuers))

    async def node_issuers(self, request: Request) -> Response:
        return json_response(200, await self.engine.node_issuers(request.principal))

    async def revoke_issuer(self, request: Request) -> Response:
        await request.read_body(self.max_body)
        body = request.decode(RevokeIssuerRequest)
        if body.jti is not None and not 0 < len(body.jti) <= 1024:
            raise ShoalError(Code.INVALID_REQUEST, "jti must be 1 to 1024 characters")
        done = await self.engine.revoke_issuer(request.principal, body.issuer, body.jti,
                                               body.database)
        if "issued_before" in done:
            done["issued_before"] = iso(done["issued_before"])
        return json_response(200, done)

    async def compact(self, request: Request) -> Response:
        name, branch = self._db(request), self._branch(request)
        done = await self.engine.compact(request.principal, name, branch)
        return json_response(200, {
            "database": name, "branch": branch, "txid": done.txid,
            "bytes_before": done.bytes_before, "bytes_after": done.bytes_after,
            "storage_bytes": done.storage_bytes, "ms": round(done.seconds * 1000, 3)})

    # -- queries ----------------------------------------------------------------------------
    async def query(self, request: Request) -> Response:
        started = time.perf_counter()
        name = self._db(request)
        await request.read_body(self.max_body)
        statements, bookmark = await self._statements(request)

        def render(done: Committed) -> tuple[int, bytes]:
            return 200, self._committed_body(done, started)

        out = await self.engine.query(request.principal, name, statements,
                                      self._idem(request), render,
                                      branch=self._branch(request),
                                      at=read_at(request, bookmark))
        if out.replay is not None:  # an Idempotency-Key's answer, as stored
            status, body = out.replay
            bookmark = out.bookmark or _stored_bookmark(body)
            return Response(status, body, [*JSON_HEADERS, (BOOKMARK, bookmark.encode())]
                            if bookmark else list(JSON_HEADERS))
        return Response(200, await self._outcome_body(out, started),
                        [*JSON_HEADERS, (BOOKMARK, out.bookmark.encode())])

    # -- interactive transactions ------------------------------------------------------------
    async def begin(self, request: Request) -> Response:
        name = self._db(request)
        await request.read_body(self.max_body)
        body = request.decode(BeginRequest) if request.body.strip() else BeginRequest()
        tx = await self.engine.begin(request.principal, name, body.mode,
                                     branch=self._branch(request))
        expires = time.time() + self.engine.settings.transaction_timeout
        return json_response(201, {"id": tx.id, "mode": "write" if tx.write else "read",
                                   "expires_at": iso(expires)})

    async def tx_query(self, request: Request) -> Response:
        started = time.perf_counter()
        name = self._db(request)
        await request.read_body(self.max_body)
        statements, _ = await self._statements(request)
        out = await self.engine.tx_query(request.principal, name, request.params["tx"], statements,
                                         branch=self._branch(request))
        return Response(200, await self._outcome_body(out, started))

    async def tx_commit(self, request: Request) -> Response:
        name = self._db(request)
        await request.read_body(self.max_body)

        def render(done: Committed) -> tuple[int, bytes]:
            return 200, encode({"committed": True, "txid": done.txid, "bookmark": done.bookmark})

        # The key names the commit of this transaction: its id counts as part of the body.
        idem = Idempotency.of(request.header(b"idempotency-key"),
                              request.params["tx"].encode() + b"\n" + request.body)
        done = await self.engine.tx_end(request.principal, name, request.params["tx"], True,
                                        idem, render, branch=self._branch(request))
        if done is None:  # a read transaction: nothing to commit
            return json_response(200, {"committed": True, "txid": None, "bookmark": None})
        if done.response is not None:
            return Response(*done.response)
        return Response(200, render(done)[1], [*JSON_HEADERS,
                                               (BOOKMARK, done.bookmark.encode())])

    async def tx_rollback(self, request: Request) -> Response:
        name = self._db(request)
        await self.engine.tx_end(request.principal, name, request.params["tx"], False,
                                 branch=self._branch(request))
        return json_response(200, {"rolled_back": True})

    # -- branches, history, restore ----------------------------------------------------------
    async def list_branches(self, request: Request) -> Response:
        name = self._db(request)
        found = await self.engine.list_branches(request.principal, name)
        return json_response(200, {"database": name,
                                   "branches": [full_branch_json(b) for b in found]})

    async def get_branch(self, request: Request) -> Response:
        info = await self.engine.branch_info(request.principal, self._db(request),
                                             self._branch(request))
        return json_response(200, full_branch_json(info))

    async def create_branch(self, request: Request) -> Response:
        name = self._db(request)
        await request.read_body(self.max_body)
        body = request.decode(CreateBranchRequest)
        at = body.at or PointRequest()
        if at.timestamp is not None and at.bookmark is not None:
            raise ShoalError(Code.INVALID_REQUEST, "'at' takes 'timestamp' or 'bookmark', not both")
        info = await self.engine.create_branch(
            request.principal, name, body.name, body.source,
            parse_time(at.timestamp) if at.timestamp is not None else None, at.bookmark,
            materialise=body.materialise)
        return json_response(201, full_branch_json(info))

    async def delete_branch(self, request: Request) -> Response:
        await self.engine.delete_branch(request.principal, self._db(request),
                                        self._branch(request))
        return Response(204, b"", [])

    async def reset_branch(self, request: Request) -> Response:
        info = await self.engine.reset_branch(request.principal, self._db(request),
                                              self._branch(request))
        return json_response(200, full_branch_json(info))

    async def restore(self, request: Request) -> Response:
        name = self._db(request)
        await request.read_body(self.max_body)
        body = request.decode(RestoreRequest)
        done = await self.engine.restore_branch(
            request.principal, name, names.check(body.branch),
            parse_time(body.timestamp) if body.timestamp is not None else None,
            body.bookmark, body.keep_as)
        return json_response(200, {
            "database": name,
            "branch": done.branch.name,
            "timeline": done.branch.timeline,
            "restored_to": {"txid": done.txid, "bookmark": make_bookmark(
                name, done.branch.name, done.txid, done.branch.timeline)},
            "kept_as": done.kept.name,
        })

    async def history(self, request: Request) -> Response:
        name = self._db(request)
        record, window = await self.engine.history(request.principal, name,
                                                   self._branch(request))
        return json_response(200, {
            "database": name,
            "branch": record.name,
            "timeline": record.timeline,
            "earliest": point_json(window.earliest.txid, window.earliest.time),
            "latest": point_json(window.latest.txid, window.latest.time),
            "retention_seconds": self.engine.settings.history_retention,
        })

    # -- tokens -------------------------------------------------------------------------------
    async def create_token(self, request: Request) -> Response:
        await request.read_body(self.max_body)
        body = request.decode(CreateTokenRequest)
        if body.expires_in <= 0 or body.expires_in > 10 * 365 * 86400:
            raise ShoalError(Code.INVALID_REQUEST, "expires_in must be 1 second to 10 years")
        databases = None if body.databases == "*" else list(body.databases)
        if databases is not None and not databases:
            raise ShoalError(Code.INVALID_REQUEST, "databases names no database: give their "
                                                   "names, or \"*\" for every database")

        def render(rec: TokenRecord, token: str) -> tuple[int, bytes]:
            return 201, encode({
                "id": rec.id, "token": token,
                "databases": "*" if rec.databases is None else rec.databases,
                "access": rec.access, "expires_at": iso(rec.expires_at)}
                | ({"branch": rec.branch} if rec.branch is not None else {}))

        status, out = await self.engine.create_token(
            request.principal, databases, body.access, float(body.expires_in),
            self._idem(request), render, branch=body.branch)
        return Response(status, out)

    async def list_tokens(self, request: Request) -> Response:
        include = {part.strip() for raw in request.queries("include")
                   for part in raw.split(",") if part.strip()}
        if "all" in include:
            include = set(TOKEN_INCLUDES)
        if include - set(TOKEN_INCLUDES):
            raise ShoalError(Code.INVALID_REQUEST,
                             "include takes expired, revoked or all (comma-separated)")
        cursor = request.query("cursor") or None
        if cursor is not None and not TOKEN_ID.fullmatch(cursor):
            raise ShoalError(Code.INVALID_REQUEST, "cursor must be the next_cursor of a page")
        found, next_cursor = await self.engine.list_tokens(
            request.principal, database=request.query("database") or None,
            expired="expired" in include, revoked="revoked" in include,
            limit=self._limit(request), cursor=cursor)
        now = time.time()
        return json_response(200, {"tokens": [token_json(t, now) for t in found],
                                   "next_cursor": next_cursor})

    async def revoke_token(self, request: Request) -> Response:
        await self.engine.revoke_token(request.principal, request.params["id"])
        return Response(204, b"", [])
