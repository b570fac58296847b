"""The cluster's routes: what operators and the other nodes of a cluster ask of this node.

``GET /v1/cluster`` shows the members and what this node leads. The other two are the
nodes' own (``shoal.cluster.node``): a claim asks this node to release a database, a
notice tells it of a change to the catalog or of a node leaving. All need an admin token
(the nodes share the store's, or the same ``admin_token``).
"""

from __future__ import annotations

from typing import Any

from shoal import names
from shoal.cluster import FORWARDED
from shoal.engine import TIMELINE_HEADER
from shoal.errors import Code, ShoalError
from shoal.server.http import Request, Response, Router, json_response
from shoal.server.ports import EngineAPI

MAX_NOTICE = 4096  # bytes: a notice names one database, token or node


class ClusterAPI:
    def __init__(self, engine: EngineAPI):
        self.engine = engine

    def register(self, router: Router) -> None:
        router.add("GET", "/v1/cluster", self.status)
        router.add("POST", "/v1/cluster/release/{database}", self.release)
        router.add("POST", "/v1/cluster/notify", self.notify)
        router.add("GET", "/v1/cluster/feed/{database}/{branch}", self.feed)

    async def status(self, request: Request) -> Response:
        return json_response(200, await self.engine.cluster_status(request.principal))

    async def release(self, request: Request) -> Response:
        name = names.check(request.params["database"])
        to = request.header(FORWARDED)
        if not to:
            raise ShoalError(Code.INVALID_REQUEST, "a release comes from the node that claims "
                                                   f"the database: {FORWARDED.decode()} names it")
        url = request.query("from")  # where the claimant is (it may not be listed here yet)
        if url is not None and not url.startswith(("http://", "https://")):
            raise ShoalError(Code.INVALID_REQUEST, "from: the claimant's URL, http(s)://...")
        await self.engine.release_database(request.principal, name, to, url)
        return Response(204, b"", [])

    async def feed(self, request: Request) -> Response:
        """A follower's long poll for a branch's durable segments after its txid: 200 with
        them (none if none came within ``wait``), 410 if it must hydrate from the store; the
        branch's timeline in a header either way."""
        name = names.check(request.params["database"])
        branch = names.check(request.params["branch"])
        after, wait = request.query("after") or "", request.query("wait") or "0"
        timeline = request.query("timeline") or ""
        try:
            waited = float(wait)
        except ValueError:
            waited = -1.0
        if not after.isdigit() or not 0 <= waited <= 60:
            raise ShoalError(Code.INVALID_REQUEST, "after: a txid; wait: seconds, 0 to 60")
        current, body = await self.engine.feed(request.principal, name, branch, int(after),
                                               timeline, waited)
        headers = [(TIMELINE_HEADER, current.encode())]
        if body is None:
            return Response(410, b"", headers)
        return Response(200, body, [(b"content-type", b"application/octet-stream"), *headers])

    async def notify(self, request: Request) -> Response:
        await request.read_body(MAX_NOTICE)
        notice: dict[str, Any] = request.decode(dict[str, str])
        await self.engine.cluster_notice(request.principal, notice)
        return Response(204, b"", [])

