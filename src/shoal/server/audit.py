"""The audit log's HTTP side: the record each request leaves (``Auditor``, called by
``App`` once the answer is sent) and ``GET /v1/audit``, which reads the records back.

Every request that reaches a route is recorded, whatever its answer (a 401 included), but
for the probes (``/health``, ``/ready``, ``/metrics``, ``/openapi.json``) and browsers'
preflights: they change nothing and carry no token worth knowing, and a load balancer
polling them would fill the log. A request forwarded to its database's leader is recorded
by the leader (which ran it), not by the node that forwarded it. A Hrana WebSocket leaves
one record when it closes: its token, database, the strongest statement kind and the rows
of every request it carried.

A record names the route's template (``/v1/databases/{db}/query``), never the path as
sent, its query string, the body, the SQL, its arguments, the token or an idempotency key.
"""

from __future__ import annotations

import re
import time

from shoal import names
from shoal.engine import AUDIT_KINDS, AUDIT_MAX_LIMIT, AuditTally, parse_time
from shoal.errors import Code, ShoalError
from shoal.server.http import ANONYMOUS, Request, Response, Router, encode
from shoal.server.ports import AuditSink, EngineAPI
from shoal.tokens import Principal

PROBES = frozenset({"/health", "/ready", "/metrics", "/openapi.json"})  # never recorded
DEFAULT_LIMIT = 100
_NUMBER = re.compile(r"\d{1,12}(\.\d{1,9})?")
HRANA_WEBSOCKET = "(hrana websocket)"  # the route a Hrana WebSocket's record names


class Auditor:
    """Turns an answered request into the audit log's record (a tuple: the engine's
    AuditLog encodes it off the event loop)."""

    def __init__(self, sink: AuditSink, router: Router, hrana_routes: set[str]):
        self.sink = sink
        self.hrana_routes = hrana_routes
        # the kind a route is recorded with when the engine ran no statement for it
        self.kinds: dict[str, str] = {}
        for _, route in router.routes():
            self.kinds[route] = _route_kind(route, route in hrana_routes)

    def record(self, request: Request, response: Response, elapsed: float,
               tally: AuditTally, code: str) -> None:
        route = request.route
        if route in PROBES or route == "unmatched" or response.relayed:
            return
        db = tally.database
        branch = tally.branch
        if db is None:  # the engine ran nothing: what the route named
            db = request.params.get("db")
            if db is None and route in self.hrana_routes:
                db = request.header(b"x-namespace")
            if db is not None and not names.is_valid(db):
                db = None
            branch = request.params.get("branch", "main") if db is not None else None
            if branch is not None and not names.is_valid(branch):
                branch = None
        kind = AUDIT_KINDS[tally.kind] if tally.kind else self.kinds.get(route, "admin")
        p = request.principal
        if p is ANONYMOUS:
            self.sink.add((time.time(), None, None, None, request.method, route, db, branch,
                           kind, 0, 0, response.status, code or None, elapsed))
        else:
            self.sink.add((time.time(), p.subject, p.user, p.issuer, request.method, route, db,
                           branch, kind, tally.rows_read, tally.rows_written, response.status,
                           code or None, elapsed))

    def websocket(self, principal: Principal | None, db: str | None, branch: str | None,
                  tally: AuditTally, status: int, elapsed: float) -> None:
        """A Hrana WebSocket that closed (its one record)."""
        db = tally.database or db
        branch = tally.branch or (branch if db is not None else None)
        kind = AUDIT_KINDS[tally.kind] if tally.kind else "read"
        p = principal or ANONYMOUS  # (no hello: nobody)
        known = p is not ANONYMOUS
        self.sink.add((time.time(), p.subject if known else None, p.user,
                       p.issuer if known else None, "GET", HRANA_WEBSOCKET, db, branch, kind,
                       tally.rows_read, tally.rows_written, status, None, elapsed))


def _route_kind(route: str, hrana: bool) -> str:
    """What a request of the route is when the engine noted nothing (it failed first)."""
    if hrana or route.endswith("/query") or route.endswith("/changes"):
        return "read"
    if "/transactions" in route:
        return "transaction"
    return "admin"


class AuditAPI:
    """``GET /v1/audit``: the records of every node, by time, a page at a time."""

    def __init__(self, engine: EngineAPI):
        self.engine = engine

    def register(self, router: Router) -> None:
        router.add("GET", "/v1/audit", self.audit)

    async def audit(self, request: Request) -> Response:
        limit_text = request.query("limit")
        if limit_text is None:
            limit = DEFAULT_LIMIT
        elif limit_text.isdigit() and 1 <= int(limit_text) <= AUDIT_MAX_LIMIT:
            limit = int(limit_text)
        else:
            raise ShoalError(Code.INVALID_REQUEST, f"limit: 1 to {AUDIT_MAX_LIMIT}")
        page = await self.engine.audit_page(
            request.principal, request.query("database") or None,
            _time("since", request.query("since")), _time("until", request.query("until")),
            limit, request.query("cursor") or None)
        return Response(200, encode({"records": page.records,
                                     "next_cursor": page.next_cursor}))


def _time(name: str, text: str | None) -> float | None:
    """Unix seconds, or an RFC 3339 time (UTC when it names no zone)."""
    if not text:
        return None
    if _NUMBER.fullmatch(text):
        return float(text)
    try:
        return parse_time(text)
    except ShoalError:
        raise ShoalError(Code.INVALID_REQUEST, f"{name}: unix seconds or an RFC 3339 time, "
                         f"not {text[:80]!r}") from None
