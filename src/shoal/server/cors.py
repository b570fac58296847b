"""CORS: which web pages a browser lets call the node, and what the node tells the browser.

A page's request to another origin carries ``Origin``; the browser lets the page read the
answer only if it names that origin back (``Access-Control-Allow-Origin``), and before a
request that is not "simple" (one with ``Authorization``, a JSON body, PUT or DELETE: every
authenticated Shoal request) it asks first with a preflight, ``OPTIONS`` with
``Access-Control-Request-Method``. An origin is allowed for a request if the node allows it
(``cors_origins``) or the database the URL names does (``PUT /v1/databases/{db}/cors``;
``shoal/origins.py`` says how origins are written). So:

- a preflight (no token: browsers send none) from an allowed origin is answered ``204``
  with the origin, the route's methods, the headers clients send (and any other the
  preflight asks for), ``Max-Age`` and ``Vary``; from another origin ``403
  ORIGIN_NOT_ALLOWED``, which the browser reports as a CORS error;
- any other answer to a request with an allowed ``Origin`` names it back and exposes the
  headers a client reads (``Shoal-Bookmark``, ``Retry-After``); to another origin it
  carries no CORS header and is otherwise what it would be (the browser keeps it from the
  page). Either way ``Vary: Origin``. An answer to a request without ``Origin`` (every
  client that is not a browser) is unchanged: the request path pays one dictionary look-up.

No answer carries ``Access-Control-Allow-Credentials``: Shoal's credential is a bearer
token the page puts in ``Authorization`` itself, which needs none; without it a browser
sends no cookies and no HTTP authentication of its own, so no page can make a request
with credentials the user's browser holds (cross-site request forgery has nothing to use),
and ``*`` can never mean "any origin, with credentials". The origin is named back, ``*``
included, never sent as ``*``.

On a cluster the node the browser reached (the edge) adds the headers, to answers it
served and to answers it forwarded; the node a request was forwarded to adds none (the
edge's are the only ones, whatever the versions of the two nodes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from shoal import origins
from shoal.cluster import FORWARDED
from shoal.errors import Code, ShoalError
from shoal.metrics import METRICS
from shoal.origins import Origins
from shoal.server.http import Request, Response, error_response
from shoal.server.ports import EngineAPI
from shoal.settings import Settings

ORIGIN = b"origin"
PREFLIGHT = b"access-control-request-method"  # an OPTIONS request with it is a preflight
REQUEST_HEADERS = b"access-control-request-headers"
PRIVATE_NETWORK = b"access-control-request-private-network"
# the headers Shoal reads (x-request-id: passed to the leader of a change feed)
ALLOWED_HEADERS = ("authorization", "content-type", "idempotency-key", "shoal-bookmark",
                   "shoal-consistency", "last-event-id", "x-namespace", "x-request-id")
# the headers a client reads that a browser hides unless named (Content-Type is not hidden)
EXPOSED = (b"access-control-expose-headers", b"Shoal-Bookmark, Retry-After")
VARY = (b"vary", b"Origin")
VARY_PREFLIGHT = (b"vary", b"Origin, Access-Control-Request-Method, "
                           b"Access-Control-Request-Headers")
ALL_METHODS = "GET, POST, PUT, DELETE"  # a path with no route: its answer (404) may be read
COMPILED = 4096  # databases' lists kept compiled (then forgotten at once)
KNOWN = 4096  # Origin values whose node-wide verdict is kept (then forgotten at once)
MAX_ASKED = 64  # headers of a preflight's request named back, at most
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9a-z-]+")  # a header name (RFC 9110 5.1), lowercased


class Cors:
    """The node's allowed origins and a database's, and the headers that say them."""

    def __init__(self, settings: Settings, engine: EngineAPI):
        self.engine = engine
        self.node = Origins(origins.parse(settings.cors_origins))
        self.max_age = str(settings.cors_max_age).encode()
        self._allowed = ", ".join(ALLOWED_HEADERS).encode()
        self._compiled: dict[tuple[str, ...], Origins] = {}  # a database's list, compiled
        self._known: dict[bytes, bool] = {}  # an Origin header's value -> the node allows it

    def allows(self, origin: str, db: str | None) -> bool:
        """Whether a page of ``origin`` may call database ``db`` (None: a route of no
        database, where the node's list alone counts)."""
        return self.node.allows(origin) or self._database_allows(origin, db)

    async def admits(self, origin: str, db: str | None) -> bool:
        """``allows``, but before a refusal a cluster's node reads the database's origins
        from the store again (at most every few seconds): it may have missed the notice of
        a change made through another node."""
        if self.allows(origin, db):
            return True
        return db is not None and await self.engine.refresh_cors(db) and \
            self._database_allows(origin, db)

    def _database_allows(self, origin: str, db: str | None) -> bool:
        own = self.engine.cors_origins(db) if db is not None else ()
        if not own:
            return False
        compiled = self._compiled.get(own)
        if compiled is None:
            if len(self._compiled) >= COMPILED:
                self._compiled.clear()
            compiled = self._compiled[own] = Origins(own)
        return compiled.allows(origin)

    async def preflight(self, request: Request, methods: Iterable[str]) -> Response:
        """The answer to a preflight (``request.params`` resolved: the database it names)."""
        origin = request.headers[ORIGIN]
        text = origin.decode("latin-1")
        db = request.params.get("db")
        if not await self.admits(text, db):
            METRICS.cors_refusals.labels("preflight").inc()
            response = error_response(refusal(text, db))
            response.headers = [*response.headers, VARY_PREFLIGHT]
            return response
        headers = [(b"access-control-allow-origin", origin),
                   (b"access-control-allow-methods", ", ".join(methods).encode() or
                    ALL_METHODS.encode()),
                   (b"access-control-allow-headers", self._allow_headers(request)),
                   (b"access-control-max-age", self.max_age), VARY_PREFLIGHT]
        if request.headers.get(PRIVATE_NETWORK) == b"true":  # Chrome: a public page, a
            headers.append((b"access-control-allow-private-network", b"true"))  # local node
        return Response(204, b"", headers)

    def _allow_headers(self, request: Request) -> bytes:
        """The headers Shoal reads, and those the preflight asks for besides (a page's own,
        a tracing library's): a header grants nothing here, the token does."""
        asked = request.headers.get(REQUEST_HEADERS)
        if not asked:
            return self._allowed
        extra = []
        for raw in asked.lower().split(b",")[:MAX_ASKED]:
            name = raw.strip()
            if _TOKEN.fullmatch(name) and name.decode() not in ALLOWED_HEADERS and \
                    name != FORWARDED and name not in extra:
                extra.append(name)
        return b", ".join([self._allowed, *extra]) if extra else self._allowed

    def decorate(self, request: Request, response: Response) -> None:
        """The CORS headers of an answer to a request that carried ``Origin`` (a forwarded
        answer's own went in ``forwarded``), so that a page of an allowed origin reads it."""
        origin = request.headers[ORIGIN]
        allowed = self._known.get(origin)
        if allowed is None:
            if len(self._known) >= KNOWN:
                self._known.clear()
            allowed = self._known[origin] = self.node.allows(origin.decode("latin-1"))
        if allowed or self._database_allows(origin.decode("latin-1"), request.params.get("db")):
            response.headers = [*response.headers, (b"access-control-allow-origin", origin),
                                EXPOSED, VARY]
        else:
            response.headers = [*response.headers, VARY]


def forwarded(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers of an answer another node sent, without CORS headers of its own (the
    node the browser reached adds them: once, whatever the other node's version)."""
    return [h for h in headers if not h[0].startswith(b"access-control-") and h != VARY]


def refusal(origin: str, db: str | None) -> ShoalError:
    """ORIGIN_NOT_ALLOWED for a page of ``origin`` calling ``db`` (None: the node)."""
    where = f"database {db[:80]!r}" if db is not None else "this node"
    return ShoalError(Code.ORIGIN_NOT_ALLOWED,
                      f"origin {origin[:200]!r} may not call {where} from a browser: add it to "
                      f"the node's cors_origins" + (
                          f" or the database's (PUT /v1/databases/{db[:80]}/cors)"
                          if db is not None else ""))


def websocket_origin(scope: dict[str, Any]) -> tuple[str | None, str | None, bool]:
    """(Origin, Host, forwarded) of a WebSocket upgrade's headers."""
    origin = host = None
    forwarded = False
    for name, value in scope.get("headers") or ():
        if name == ORIGIN:
            origin = value.decode("latin-1")
        elif name == b"host":
            host = value.decode("latin-1")
        elif name == FORWARDED:
            forwarded = True
    return origin, host, forwarded


__all__ = ["ALLOWED_HEADERS", "ORIGIN", "PREFLIGHT", "Cors", "forwarded", "refusal",
           "websocket_origin"]
