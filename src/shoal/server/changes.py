"""The change feed's routes: a branch's committed row changes, as JSON pages or as
Server-Sent Events (``GET /v1/databases/{db}[/branches/{branch}]/changes``).

A page is a long poll: ``?since=CURSOR&limit=&wait=`` answers the changes after the
cursor (a bookmark works too; none: from now), waiting up to ``wait`` seconds for the
first, and the cursor to ask from next. With ``Accept: text/event-stream`` the same
pages become an endless stream: each change an event whose ``id`` is its cursor (a
client's ``EventSource`` resumes with ``Last-Event-ID``), a comment every
``HEARTBEAT`` seconds so that proxies keep the stream open, and no idle close.

Pages are the leader's to serve (its memory holds the recent segments), so on a
cluster's node a page is forwarded like a write. A stream stays on the node the client
reached: it asks the leader for pages, one long poll at a time, and can thus outlive a
change of leader.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import urlencode

import msgspec

from shoal import names
from shoal.cluster import FORWARDED, Unreachable
from shoal.engine import ChangesPage, FeedEvent, FeedFilter, KeysNeeded, make_bookmark
from shoal.errors import Code, ShoalError
from shoal.server.api import iso
from shoal.server.http import (
    Receive,
    Request,
    Response,
    Router,
    Scope,
    Send,
    json_response,
    until_gone,
)
from shoal.server.ports import EngineAPI
from shoal.wire import encode_row

HEARTBEAT = 15.0  # seconds between a stream's comments when nothing happens
PAUSE = 1.0  # seconds a stream waits after a page that came back empty at once
MAX_LIMIT = 1000  # changes a page holds at most
DEFAULT_LIMIT = 100
MAX_WAIT = 25.0  # seconds a page may wait (the forwarder gives up after 30)
OPS = ("insert", "update", "delete")
EVENT_STREAM = b"text/event-stream"


RENDERED = 20_000  # events kept rendered for the event streams
STREAM_PATH = re.compile(r"/v1/databases/(?P<db>[^/]+)(?:/branches/(?P<branch>[^/]+))?/changes")


class ChangesAPI:
    """The routes; ``streams`` counts the open event streams (``max_feed_streams``);
    ``rendered`` keeps each recent event as its streams send it, so that a thousand
    streams of one branch render an event once (an event never changes: its cursor names
    its place in a history that is never rewritten, only replaced by a new timeline)."""

    def __init__(self, engine: EngineAPI):
        self.engine = engine
        self.streams = 0
        self.rendered: OrderedDict[tuple[str, str, str, int, int, str], tuple[str, bytes]] = \
            OrderedDict()
        self.asked: dict[tuple[Any, ...], asyncio.Future[ChangesPage]] = {}  # see _shared

    def register(self, router: Router) -> set[str]:
        """Add the routes; return them (the app serves their event streams itself)."""
        routes = {"/v1/databases/{db}/changes", "/v1/databases/{db}/branches/{branch}/changes"}
        for path in sorted(routes):
            router.add("GET", path, self.changes)
        router.add("GET", "/v1/databases/{db}/feed", self.settings)
        router.add("PUT", "/v1/databases/{db}/feed", self.set_settings)
        return routes

    async def settings(self, request: Request) -> Response:
        """The database's feed settings: ``{"tables_without_old": [...]}``."""
        name = names.check(request.params["db"])
        found = await self.engine.feed_settings(request.principal, name)
        return json_response(200, {"database": name, "tables_without_old": list(found)})

    async def set_settings(self, request: Request) -> Response:
        """Replace them (admin): the tables whose changes keep no old row from now on."""
        name = names.check(request.params["db"])
        await request.read_body(self.engine.settings.max_request_bytes)
        body = request.decode(FeedSettings)
        tables = tuple(sorted(set(body.tables_without_old)))
        if len(tables) > MAX_LIMIT or not all(tables):
            raise ShoalError(Code.INVALID_REQUEST, f"tables_without_old: up to {MAX_LIMIT} "
                             "table names")
        found = await self.engine.set_feed_settings(request.principal, name, tables)
        return json_response(200, {"database": name, "tables_without_old": list(found)})

    @staticmethod
    def streaming(request: Request) -> bool:
        """Whether the request asks for an event stream rather than a page."""
        return EVENT_STREAM in (request.headers.get(b"accept") or b"")

    async def changes(self, request: Request) -> Response:
        name = names.check(request.params["db"])
        branch = request.params.get("branch")
        branch = request.principal.on(None if branch is None else names.check(branch, "branch"))
        since, limit, wanted = _options(request)
        if self.streaming(request):
            return self._stream(request, name, branch, since, limit, wanted)
        wait = _number(request.query("wait"), 0.0, 0.0, MAX_WAIT, "wait", float)
        page = await self.engine.changes(request.principal, name, branch, since, limit, wait,
                                         wanted)
        return json_response(200, page_json(page))

    def _stream(self, request: Request, name: str, branch: str, since: str | None,
                limit: int, wanted: FeedFilter) -> Response:
        self._admit(request, name)
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"),
                   (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        return Response(200, b"", headers,
                        stream=self._events(request, name, branch, since, limit, wanted))

    async def _events(self, request: Request, name: str, branch: str, since: str | None,
                      limit: int, wanted: FeedFilter) -> AsyncGenerator[bytes, None]:
        """The event stream: ``retry`` first, then each page's events as they come, a
        comment when a heartbeat is due; an error ends it with an ``error`` event."""
        yield b"retry: 1000\n\n"
        async for kind, found in self._follow(request, name, branch, since, limit, wanted):
            if kind == "error":
                yield _sse("error", found[0][1])
                return
            yield b"".join(_sse("change", data, cursor) for cursor, data in found) \
                if found else b": heartbeat\n\n"

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The same stream over a WebSocket (``GET .../changes`` with an upgrade): a JSON
        text message per change (``{"type": "change", ...}``), ``{"type": "heartbeat"}``
        when one is due, ``{"type": "error", "error": {...}}`` and a close on an error.
        A refusal before the upgrade is a close with 1008 (the HTTP answer 403)."""
        request = Request({**scope, "method": "GET"}, receive)  # (an upgrade is a GET)
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            route = STREAM_PATH.fullmatch(scope.get("path", ""))
            if route is None:
                raise ShoalError(Code.NOT_FOUND, "no such WebSocket route")
            name = names.check(route["db"])
            named = route["branch"] and names.check(route["branch"], "branch")
            try:
                request.principal = self.engine.authenticate(request.header(b"authorization"))
            except KeysNeeded as needed:  # an identity provider's key, read once: again
                await needed.wait()
                request.principal = self.engine.authenticate(request.header(b"authorization"))
            branch = request.principal.on(named or None)
            since, limit, wanted = _options(request)
            self._admit(request, name)
        except ShoalError as exc:
            await send({"type": "websocket.close", "code": 1008, "reason": str(exc.code)})
            return
        await send({"type": "websocket.accept"})

        follow = self._follow(request, name, branch, since, limit, wanted)
        async for kind, found in until_gone(follow, request, "websocket.disconnect"):
            if kind == "error":
                error = {"type": "error"} | msgspec.json.decode(found[0][1])
                await send({"type": "websocket.send",
                            "text": msgspec.json.encode(error).decode()})
                await send({"type": "websocket.close", "code": 1011})
                return
            for _, data in found or [("", b"")]:
                text = ('{"type":"change",' + data.decode()[1:] if data
                        else '{"type":"heartbeat"}')
                await send({"type": "websocket.send", "text": text})

    def _admit(self, request: Request, name: str) -> None:
        """A stream may start: the database, the token's access, the node's cap."""
        cap = self.engine.settings.max_feed_streams
        if self.streams >= cap:
            raise ShoalError(Code.TOO_MANY_SUBSCRIPTIONS,
                             f"this node serves {cap} event streams (max_feed_streams)")
        self.engine.require_database(name)
        request.principal.require("read", name)

    async def _follow(self, request: Request, name: str, branch: str, since: str | None,
                      limit: int, wanted: FeedFilter
                      ) -> AsyncGenerator[tuple[str, list[tuple[str, bytes]]], None]:
        """A stream's pages: ("changes", [(cursor, event JSON)...]) as they come, and with
        none when a heartbeat is due; ("error", [("", envelope JSON)]) last on an error (a
        cursor past retention, the database deleted, the token revoked or expired)."""
        self.streams += 1
        try:
            last_beat = time.monotonic()
            while not request.gone:
                asked = time.monotonic()
                try:
                    # the token again at every page: a revoked or expired one ends the stream
                    request.principal = self.engine.authenticate(bearer(request))
                    since, events = await self._page(request, name, branch, since, limit,
                                                     wanted)
                except _Again:  # the leader is moving: the stream outlives it
                    events = []
                except ShoalError as exc:
                    yield "error", [("", msgspec.json.encode(exc.body()))]
                    return
                if not events and time.monotonic() - asked < PAUSE:  # nothing, at once:
                    await asyncio.sleep(PAUSE)  # never a loop that holds the event loop
                if events or time.monotonic() - last_beat >= HEARTBEAT - 1:
                    last_beat = time.monotonic()
                    yield "changes", events
        finally:
            self.streams -= 1

    async def _page(self, request: Request, name: str, branch: str, since: str | None,
                    limit: int, wanted: FeedFilter) -> tuple[str, list[tuple[str, bytes]]]:
        """The next page's cursor and its events (cursor, JSON), long-polled for up to a
        heartbeat: here, or from the leader."""
        url = self.engine.leader_url(name)
        if url is None or FORWARDED in request.headers:
            page = await self._shared(request, name, branch, since, limit, wanted)
            return page_cursor(page), [self._render(page, e) for e in page.events]
        found = await self._from_leader(request, url, name, branch, since, limit, wanted)
        return found["cursor"], [(event["cursor"], msgspec.json.encode(event))
                                 for event in found["changes"]]

    async def _shared(self, request: Request, name: str, branch: str, since: str | None,
                      limit: int, wanted: FeedFilter) -> ChangesPage:
        """The long-polled page after ``since``, asked of the engine once for every stream
        waiting on the same one: a thousand streams at the head of a branch make one
        page's work per commit, not a thousand (each stream's token is checked itself)."""
        principal = request.principal
        principal.require("read", name)
        # a token bound by rules gets the page its rules show it: shared with the same
        # token's other streams only
        key = (name, branch, since, limit, wanted,
               (principal.issuer, principal.subject) if principal.bound else None)
        asked = self.asked.get(key)
        if asked is None:
            asked = self.asked[key] = asyncio.ensure_future(self.engine.changes(
                request.principal, name, branch, since, limit, HEARTBEAT, wanted))
            asked.add_done_callback(lambda done: self._answered(key, done))
        return await asyncio.shield(asked)  # a stream that goes leaves it to the others

    def _answered(self, key: tuple[Any, ...], done: asyncio.Future[ChangesPage]) -> None:
        if self.asked.get(key) is done:
            del self.asked[key]
        if not done.cancelled():
            done.exception()  # retrieved: a failure nobody waits for any more is not logged

    def _render(self, page: ChangesPage, event: FeedEvent) -> tuple[str, bytes]:
        key = (page.database, page.branch, page.timeline, event.txid,
               event.index if event.change is not None else -event.first,
               event.op)  # (rules may show an update as an insert or a delete)
        found = self.rendered.get(key)
        if found is None:
            data = event_json(page, event)
            found = self.rendered[key] = (data["cursor"], msgspec.json.encode(data))
            if len(self.rendered) > RENDERED:
                self.rendered.popitem(last=False)
        return found

    async def _from_leader(self, request: Request, url: str, name: str, branch: str,
                           since: str | None, limit: int, wanted: FeedFilter
                           ) -> dict[str, Any]:
        """A page the database's leader answers (a JSON page, long-polled)."""
        query: dict[str, Any] = {"limit": limit, "wait": HEARTBEAT}
        if since is not None:
            query["since"] = since
        if wanted.tables is not None:
            query["table"] = ",".join(sorted(wanted.tables))
        if wanted.ops is not None:
            query["op"] = ",".join(sorted(wanted.ops))
        path = f"/v1/databases/{name}/branches/{branch}/changes?{urlencode(query)}"
        headers = [(k, v) for k, v in request.scope["headers"]
                   if k in (b"authorization", b"x-request-id")]
        if not any(k == b"authorization" for k, _ in headers) and \
                (header := bearer(request)) is not None:  # an EventSource's token
            headers.append((b"authorization", header.encode("latin-1")))
        try:
            status, _, body = await self.engine.forward(url, "GET", path, headers, b"")
        except Unreachable:
            raise _Again from None
        if status in (502, 503, 504):
            raise _Again
        try:
            found: dict[str, Any] = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise _Again from None
        if status == 200:
            return found
        error = dict(found.get("error") or {})
        code = error.pop("code", "INTERNAL")
        message = error.pop("message", "the leader refused the page")
        error.pop("hint", None)
        if code not in Code.__members__:
            code = "INTERNAL"
        raise ShoalError(Code[code], message, **error)  # earliest, with CURSOR_EXPIRED


class FeedSettings(msgspec.Struct, forbid_unknown_fields=True):
    tables_without_old: list[str]


class _Again(Exception):
    """The leader could not answer a stream's page now (moving, restarting): ask again."""


def page_cursor(page: ChangesPage) -> str:
    """Where the page's reader goes on from."""
    return make_bookmark(page.database, page.branch, page.reached.txid, page.timeline,
                         page.reached.index)


def page_json(page: ChangesPage) -> dict[str, Any]:
    """A page as the API answers it."""
    return {"database": page.database, "branch": page.branch, "timeline": page.timeline,
            "changes": [event_json(page, e) for e in page.events],
            "cursor": page_cursor(page)}


def event_json(page: ChangesPage, event: FeedEvent) -> dict[str, Any]:
    """One event: {"cursor", "txid", "at", "table", "op", "key", "new", "old"} (values in
    the JSON value encoding; ``uncaptured`` instead names the txids it spans)."""
    position = event.position
    out: dict[str, Any] = {
        "cursor": make_bookmark(page.database, page.branch, position.txid, page.timeline,
                                position.index),
        "txid": event.txid, "at": iso(event.time)}
    change = event.change
    if change is None:
        return out | {"op": event.op, "from_txid": event.first}
    return out | {
        "table": change.table, "op": change.op, "key": encode_row(change.key),
        "new": None if change.new is None else dict(zip(change.columns,
                                                        encode_row(change.new), strict=True)),
        "old": None if change.old is None else dict(zip(change.columns,
                                                        encode_row(change.old), strict=True)),
    }


def bearer(request: Request) -> str | None:
    """The request's Authorization header; without one, a GET of the feed may name its token
    in ``access_token``, since a browser's EventSource cannot send headers. (Shoal logs
    routes, never query strings; docs/api.md advises a short-lived token for such pages.)"""
    header = request.header(b"authorization")
    if header is None and request.method == "GET":
        token = request.query("access_token")
        if token:
            return "Bearer " + token
    return header


def _sse(kind: str, data: bytes, event_id: str | None = None) -> bytes:
    """One Server-Sent Event (its data is one line of JSON)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\n".encode() + b"data: " + data + b"\n\n"


def _options(request: Request) -> tuple[str | None, int, FeedFilter]:
    """since (Last-Event-ID first), limit and the filter, as pages and streams take them."""
    since = request.header(b"last-event-id") or request.query("since")
    limit = _number(request.query("limit"), DEFAULT_LIMIT, 1, MAX_LIMIT, "limit", int)
    return (None if since in ("", "now") else since), limit, _filter(request)


def _number(raw: str | None, default: Any, low: float, high: float, what: str,
            kind: type) -> Any:
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ShoalError(Code.INVALID_REQUEST, f"{what}: a number from {low:g} to {high:g}")
    return value


def _filter(request: Request) -> FeedFilter:
    """``table=a,b`` and ``op=insert,delete`` (each may also be repeated)."""
    tables = _listed(request, "table")
    ops = _listed(request, "op")
    if ops is not None and not ops <= set(OPS):
        raise ShoalError(Code.INVALID_REQUEST, f"op: any of {', '.join(OPS)}")
    return FeedFilter(tables, ops)


def _listed(request: Request, name: str) -> frozenset[str] | None:
    values = [v for raw in request.queries(name) for v in raw.split(",") if v]
    return frozenset(values) if values else None
