"""Forwarding a request to the node that leads its database, over pooled keep-alive HTTP.

Any node accepts any request; one for a database another node leads is sent on to that
leader and its answer passed back as it came: the client never sees a redirect. A
forwarded request carries ``FORWARDED`` (the forwarding node's id), and a node never
forwards a request that carries it again, so a stale view of who leads costs one hop,
never a loop.

What reaches the leader is the client's request minus hop-by-hop headers; what comes
back is the leader's status, headers (minus hop-by-hop ones and the length, which the
app sets) and body, raw: not decoded, not decompressed. A failure is
``LEADER_UNAVAILABLE``, whose message says whether the request may have run there: a
connection that failed before the request was sent ran nothing; a timeout or a
connection lost after it leaves the outcome unknown (the hint: retry with the same
Idempotency-Key). No message, log line or exception cause carries a header's value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.frames import EXTERNAL_CLOSE_CODES
from websockets.typing import Subprotocol
from yarl import URL

from shoal.errors import Code, ShoalError

# ASGI's types (as server/http.py has them: the cluster package sits below the server)
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

FORWARDED = b"shoal-forwarded-by"  # the hop header: its value is the forwarding node's id

# RFC 9110 7.6.1: meaningful for one connection only; host and the length are the new
# request's own, set by the HTTP client
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate",
                        b"proxy-authorization", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"host", b"content-length"})
# ... and, for a WebSocket, the handshake's own: the upstream connection negotiates afresh
_NOT_UPGRADED = HOP_BY_HOP | {b"sec-websocket-key", b"sec-websocket-version",
                              b"sec-websocket-extensions", b"sec-websocket-protocol",
                              b"sec-websocket-accept"}
# ... and, on an answer, what this node's server sends of its own (else twice)
_ANSWER = HOP_BY_HOP | {b"date", b"server"}

MAX_MESSAGE = 16 * 1024 * 1024  # bytes of one WebSocket message from the leader
# Idle pooled connections are dropped before the leader's keep-alive (30 s) drops them:
# a request sent on a connection the leader is closing would fail with an unknown outcome.
KEEPALIVE_EXPIRY = 25.0
TRY_AGAIN_LATER = 1013  # the WebSocket close code of a leader that cannot be reached
UNAVAILABLE = str(Code.LEADER_UNAVAILABLE)  # the close reason that goes with it

# Failures before any byte of the request left: it did not run on the leader (a connect
# timeout includes the wait for a pooled connection).
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.InvalidURL)


class Unreachable(ShoalError):
    """LEADER_UNAVAILABLE, and whether the request had been sent: one that was not ran
    nothing there, so the app may send it to whichever node leads the database next."""

    def __init__(self, message: str, sent: bool):
        super().__init__(Code.LEADER_UNAVAILABLE, message)
        self.sent = sent


class _NoDebug(logging.LoggerAdapter[logging.Logger]):
    """websockets' logger without its debug lines: they hold every header (Authorization)
    and every frame (a Hrana hello carries a JWT)."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


_WS_LOG = _NoDebug(logging.getLogger("websockets.client"))


def end_to_end(headers: Iterable[tuple[bytes, bytes]],
               drop: frozenset[bytes] = HOP_BY_HOP) -> list[tuple[bytes, bytes]]:
    """The headers without ``drop``, FORWARDED and those the Connection header names (they
    are for this hop only too); names lowercased, as ASGI gives and wants them."""
    pairs = [(name.lower(), value) for name, value in headers]
    named = {token.strip().lower() for name, value in pairs if name == b"connection"
             for token in value.split(b",")}
    return [(name, value) for name, value in pairs
            if name not in drop and name not in named and name != FORWARDED]


class Forwarder:
    """One node's pool of keep-alive connections to the others, shared by every request
    it forwards. ``timeout`` bounds each wait for the leader (a read, a write) and
    ``connect_timeout`` getting a connection (a pooled one or a new one)."""

    def __init__(self, node: str, timeout: float = 30.0, connect_timeout: float = 2.0,
                 max_connections: int = 256):
        self.node = node
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self._hop = (FORWARDED, node.encode("latin-1"))
        self._session: aiohttp.ClientSession | None = None
        # requests on their way, by leader: a leader that leaves the view is given up on
        self._inflight: dict[str, set[asyncio.Task[Any]]] = {}
        self._abandoned: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        """Build the session (on the event loop that will use it)."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_connections,
                                           keepalive_timeout=KEEPALIVE_EXPIRY),
            # connect: a pooled connection or a new one; sock_read: each wait for the leader
            timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout,
                                          sock_read=self.timeout),
            # one session serves every client of the node: no cookie may pass between them
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, trust_env=False,
            # only what the client sent: none of the session's own defaults
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def request(self, base_url: str, method: str, path_qs: str,
                      headers: list[tuple[bytes, bytes]],
                      body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Send the request to the leader at ``base_url``; its (status, headers, body)."""
        if self._session is None:
            raise RuntimeError("Forwarder.start() was not called")
        sent = [(k.decode("latin-1"), v.decode("latin-1"))
                for k, v in [*end_to_end(headers), self._hop]]
        task = asyncio.current_task()
        assert task is not None
        inflight = self._inflight.setdefault(base_url, set())
        inflight.add(task)
        try:
            async with self._session.request(
                    method, URL(base_url + path_qs, encoded=True), headers=sent,
                    data=body or None, allow_redirects=False) as response:
                content = await response.read()
                return response.status, end_to_end(response.raw_headers, _ANSWER), content
        except _NOT_SENT as exc:  # from None: the cause holds the request, headers and all
            raise Unreachable(f"the leader at {base_url} could not be reached "
                              f"({type(exc).__name__}); the request was not sent",
                              sent=False) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            what = f"did not answer within {self.timeout:g} s" if isinstance(
                exc, TimeoutError) else "lost the connection"
            raise Unreachable(f"the leader at {base_url} {what} ({type(exc).__name__}) after "
                              f"the request was sent: whether it ran there is unknown",
                              sent=True) from None
        except asyncio.CancelledError:
            if task not in self._abandoned:
                raise
            self._abandoned.discard(task)
            task.uncancel()
            raise Unreachable(f"the node at {base_url} left the cluster (or stopped renewing "
                              f"its membership) while the request was on its way: whether "
                              f"it ran there is unknown", sent=True) from None
        finally:
            inflight.discard(task)

    def abandon(self, keep: set[str]) -> None:
        """Give up on the requests on their way to any node but those at ``keep``: a node
        out of the view (paused, partitioned, gone) would hold them for ``timeout``. Each
        is answered LEADER_UNAVAILABLE with an unknown outcome."""
        for url in [u for u in self._inflight if u not in keep]:
            for task in self._inflight.pop(url):
                self._abandoned.add(task)
                task.cancel()

    async def websocket(self, base_url: str, scope: Scope, receive: Receive, send: Send,
                        max_size: int = MAX_MESSAGE) -> None:
        """Proxy an ASGI WebSocket connection to the leader at ``base_url``: the same path,
        query, subprotocols and end-to-end headers (Authorization, x-namespace), messages
        both ways until one side closes, and its close code to the other."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        offered = [Subprotocol(p) for p in scope.get("subprotocols") or ()]
        try:
            upstream = await connect(
                _ws_url(base_url, scope), subprotocols=offered or None,
                additional_headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in
                                    [*end_to_end(scope.get("headers") or (),
                                                 _NOT_UPGRADED), self._hop]],
                user_agent_header=None, proxy=None, compression=None, logger=_WS_LOG,
                open_timeout=self.connect_timeout, max_size=max_size)
        except InvalidStatus as exc:
            if exc.response.status_code < 500:  # the leader refused it (a bad path, no
                await send({"type": "websocket.close", "code": 1008})  # subprotocol): as do we
                return
            await _unavailable(send, offered)
            return
        except (OSError, TimeoutError, WebSocketException):  # unreachable, or no handshake
            await _unavailable(send, offered)
            return
        async with upstream:
            await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
            await _pump(upstream, receive, send)


def _ws_url(base_url: str, scope: Scope) -> str:
    """ws:// (wss:// for https) to the leader, with the client's path as it was sent."""
    base = urlsplit(base_url)
    path = scope.get("raw_path") or quote(scope.get("path", "/")).encode()
    query = scope.get("query_string") or b""
    url = f"{'wss' if base.scheme == 'https' else 'ws'}://{base.netloc}{path.decode('latin-1')}"
    return f"{url}?{query.decode('latin-1')}" if query else url


async def _unavailable(send: Send, offered: list[Subprotocol]) -> None:
    """Accept, then close with 1013: a close before accept is an HTTP 403 to the client,
    and the code (try again later) would be lost. The first offered subprotocol is
    accepted so that a client that insists on one reads the close."""
    await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
    await send({"type": "websocket.close", "code": TRY_AGAIN_LATER, "reason": UNAVAILABLE})


async def _pump(upstream: ClientConnection, receive: Receive, send: Send) -> None:
    """Messages both ways until one side closes; then close the other with its code."""
    to_leader = asyncio.ensure_future(_to_leader(upstream, receive))
    to_client = asyncio.ensure_future(_to_client(upstream, send))
    try:
        done, _ = await asyncio.wait({to_leader, to_client}, return_when=asyncio.FIRST_COMPLETED)
        left = to_leader.result() if to_leader in done else None
        if left is not None:  # the client closed or went away
            await upstream.close(*_sendable(*left, fallback=(1001, "")))
        elif to_client in done and to_client.exception() is not None:  # gone mid-send
            await upstream.close(1001)
        else:  # the leader closed (or the connection to it was lost)
            await upstream.wait_closed()
            code, reason = _sendable(upstream.close_code, upstream.close_reason or "",
                                     fallback=(TRY_AGAIN_LATER, UNAVAILABLE))  # lost
            with contextlib.suppress(Exception):  # the client may be gone as well
                await send({"type": "websocket.close", "code": code, "reason": reason})
    finally:
        for task in (to_leader, to_client):
            task.cancel()
        await asyncio.gather(to_leader, to_client, return_exceptions=True)


async def _to_leader(upstream: ClientConnection, receive: Receive) -> tuple[int, str] | None:
    """The client's messages to the leader; the client's close (code, reason), or None
    when the leader's side closed first."""
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return int(message.get("code") or 1005), str(message.get("reason") or "")
        text = message.get("text")
        try:
            await upstream.send(text if text is not None else message.get("bytes") or b"")
        except ConnectionClosed:
            return None


async def _to_client(upstream: ClientConnection, send: Send) -> None:
    """The leader's messages to the client until the leader's side closes."""
    with contextlib.suppress(ConnectionClosed):
        async for data in upstream:
            if isinstance(data, str):
                await send({"type": "websocket.send", "text": data})
            else:
                await send({"type": "websocket.send", "bytes": data})


def _sendable(code: int | None, reason: str,
              fallback: tuple[int, str]) -> tuple[int, str]:
    """A close one may send: 1005 (the peer gave no code) is 1000; a code that is only
    ever reported (1006, the connection lost) or none at all is ``fallback``."""
    if code == 1005:
        return 1000, ""
    if code is not None and (code in EXTERNAL_CLOSE_CODES or 3000 <= code < 5000):
        return code, reason
    return fallback


__all__ = ["FORWARDED", "HOP_BY_HOP", "Forwarder", "end_to_end"]

