"""Connections: deadlines for a request's headers and body, and caps per node and per
client address, in uvicorn's own protocol classes (httptools and websockets, subclassed).

uvicorn keeps a connection for as long as its client sends something: headers a byte at
a time, a body a byte at a time, nothing at all before the first request, each hold a
connection and a file descriptor for ever, and a node out of descriptors cannot open a
database file either. So:

- a request's line and headers must arrive within ``header_timeout`` of the connection's
  start (or of the request's first byte, on a kept-alive connection) and fit in
  ``max_header_bytes``; its body within ``body_timeout`` of its headers. Otherwise the
  node answers 408 (or 431) itself and closes the connection;
- the node holds at most ``max_connections`` connections (and never more than half its
  file descriptor limit), ``max_connections_per_client`` from one address. At the node's
  cap a new connection takes the place of the connection that has waited longest for a
  request (a kept-alive idle one, or one still sending its headers; then one still
  sending its body): legitimate clients send their request at once, so slow ones are the
  ones that go. With nothing to evict, and over an address's cap, a connection is
  answered 503 TOO_MANY_CONNECTIONS and closed.

A WebSocket is counted from its upgrade request until it closes; its ``hello`` and idle
deadlines are Hrana's (``hrana_ws``).
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from shoal.errors import Code, ShoalError
from shoal.metrics import METRICS
from shoal.server.http import encode
from shoal.settings import Settings

LINGER = 0.5  # seconds a refused connection stays to let its client read the 503
MAX_LINGERING = 64  # beyond this many, refused connections are closed at once
WS_CLOSE_TIMEOUT = 2.0  # seconds to wait for the peer's close frame (uvicorn: 10)


def raw_response(code: Code, message: str) -> bytes:
    """A whole HTTP/1.1 response carrying the error envelope (the code's status); the
    connection closes after."""
    err = ShoalError(code, message)
    body = encode(err.body())
    status = err.status
    reason = {408: "Request Timeout", 431: "Request Header Fields Too Large",
              503: "Service Unavailable"}.get(status, "")
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


@dataclass(frozen=True)
class Phase:
    """What a connection waits for, and the setting that bounds it."""

    what: str
    setting: str

    def seconds(self, gate: Gate) -> float:
        return float(getattr(gate, self.setting))


HEADERS = Phase("headers", "header_timeout")
BODY = Phase("body", "body_timeout")
# kept alive with no request for uvicorn's timeout_keep_alive: closed, nothing answered;
# mutate: harmless constant (closed with no answer and no count: these words are never shown)
IDLE = Phase("next request", "timeout_keep_alive")


class Gate:
    """The node's connections: counts per address, and who may be evicted at the cap."""

    def __init__(self, settings: Settings, fd_limit: int):
        fd_cap = max(fd_limit // 2, 16)
        self.max_total = min(settings.max_connections or fd_cap, fd_cap)
        self.max_per_client = int(settings.max_connections_per_client)
        self.header_timeout = float(settings.header_timeout)
        self.body_timeout = float(settings.body_timeout)
        self.max_header_bytes = int(settings.max_header_bytes)
        self.members: dict[Any, str] = {}  # protocol -> client address
        self.per_client: Counter[str] = Counter()
        # connections that may make room, oldest first: waiting for a request, then
        # waiting for a body
        self.idle: OrderedDict[GatedHttp, None] = OrderedDict()
        self.uploading: OrderedDict[GatedHttp, None] = OrderedDict()
        self.lingering = 0
        self.evicted = 0
        # read when scraped: a gauge set at each connection and each close took its lock
        METRICS.connections.set_function(lambda: len(self.members))

    def admit(self, conn: Any, host: str) -> str | None:
        """Count a new connection in; a refusal says why (the caller answers 503)."""
        if self.max_per_client and self.per_client[host] >= self.max_per_client:
            return (f"your address holds {self.per_client[host]} connections "
                    f"(max_connections_per_client)")
        if len(self.members) >= self.max_total:
            waiting = self.idle or self.uploading
            if not waiting:
                return f"the node holds {len(self.members)} connections (max_connections)"
            oldest, _ = waiting.popitem(last=False)
            self.evicted += 1
            cut("evicted")
            oldest.evict()
        self.members[conn] = host
        self.per_client[host] += 1
        return None  # mutate: harmless delete (falling off the end returns None too)

    def leave(self, conn: Any) -> None:
        host = self.members.pop(conn, None)
        self.idle.pop(conn, None)
        self.uploading.pop(conn, None)
        if host is not None:
            self.per_client[host] -= 1
            if self.per_client[host] <= 0:
                del self.per_client[host]

    def handover(self, old: Any, new: Any) -> None:
        """A connection upgraded to a WebSocket: the new protocol object owns its place."""
        host = self.members.pop(old, None)
        self.idle.pop(old, None)
        self.uploading.pop(old, None)
        if host is not None:
            self.members[new] = host

    def waiting(self, conn: GatedHttp) -> None:
        self.uploading.pop(conn, None)
        self.idle[conn] = None

    def receiving(self, conn: GatedHttp) -> None:
        self.idle.pop(conn, None)
        self.uploading[conn] = None

    def working(self, conn: GatedHttp) -> None:
        self.idle.pop(conn, None)
        self.uploading.pop(conn, None)


class Corked:
    """A transport whose writes of one turn of the event loop leave as one ``write``.

    uvicorn writes a response's head and its body separately, two system calls and two TCP
    segments for the one response a client waits for; the head and body of an answer are
    written in the same turn, so they leave together, at the end of it. Everything else is
    the transport's own; what ends the connection sends what is held first."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._held = [bytes(data)]
            self._loop.call_soon(self.flush)
        else:
            self._held.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's, but no socket and no local address. uvicorn asks each new
        connection for its socket to read both addresses, and uvloop makes a Python socket
        object for each of them (about 12 % of the CPU of a connection-per-request load);
        nothing in Shoal reads the scope's ``server``, and the peer's address (the gate's
        key) is then read through ``peername``."""
        if name == "socket" or name == "sockname":
            return default
        return self._transport.get_extra_info(name, default)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held and not self._transport.is_closing():  # gone: like a write to it, dropped
            # one writev under uvloop: the body is not copied to join it to the head
            self._transport.writelines(held)

    def get_write_buffer_size(self) -> int:
        held = sum(map(len, self._held)) if self._held else 0
        return self._transport.get_write_buffer_size() + held

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with the gate's deadlines and caps."""

    gate: Gate

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(Corked(transport, self.loop))  # type: ignore[arg-type]
        self._timer: asyncio.TimerHandle | None = None
        # mutate: harmless delete (declared: _arm below sets both; a refused one reads neither)
        self._deadline: float | None = None  # loop time the phase below must end by
        # mutate: harmless delete (the same)
        self._phase = HEADERS
        self._in_head = True  # between requests, or inside a request's line and headers
        self._head_bytes = 0
        host = self.client[0] if self.client else ""
        refusal = self.gate.admit(self, host)
        self._admitted = refusal is None
        self._lingering = False
        if refusal is not None:
            self._refuse(refusal)
            # Without this, the deadline armed below would never fire: the linger timer is
            # sooner, is kept, and closes it (and connection_lost cancels any timer).
            # mutate: harmless delete (the linger timer closes it first)
            return
        self._settle()
        self._arm(HEADERS, self.gate.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self._admitted:
            self.gate.leave(self)
        elif self._lingering:
            self.gate.lingering -= 1
            # mutate: harmless (connection_lost runs once: nothing reads the flag again)
            self._lingering = False
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return  # refused: what it sends is read and dropped until it closes
        # A head may take max_header_bytes however it arrives. A read holding more than the
        # head in progress has room for (a whole oversized head sent at once, or one behind
        # the end of the request before it) is fed a part at a time, the head's room
        # checked after each part. A head that begins inside a part is counted from the
        # part's end, so one pipelined behind another request may reach nearly twice it.
        limit = self.gate.max_header_bytes
        view = memoryview(data)  # parts without copies (httptools reads any buffer)
        while len(view) > limit - self._head_bytes:
            room = limit - self._head_bytes
            if self._in_head:
                self._head_bytes = limit
            super().data_received(view[:room])  # type: ignore[arg-type]
            if self._in_head and self._head_bytes == limit and not self.transport.is_closing():
                cut("headers_too_large")  # the same head goes on past its room
                self._answer(Code.HEADERS_TOO_LARGE,
                             f"the request line and headers exceed max_header_bytes ({limit})")
            if not self._admitted or self.transport.is_closing():
                return  # answered (431, or 400 for a malformed request), or upgraded
            view = view[room:]
        if self._in_head:
            self._head_bytes += len(view)
        super().data_received(view)  # type: ignore[arg-type]

    # -- the request's phases ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None or self._phase is IDLE:  # a kept-alive connection's next
            self._arm(HEADERS, self.gate.header_timeout)  # request (or a pipelined one)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()
        self._arm(BODY, self.gate.body_timeout)
        self._settle()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._in_head = True
        if self.cycle is not None and self.cycle.response_complete:  # answered before its
            self._arm(IDLE, self.timeout_keep_alive)  # body ended: kept alive from now
        self._settle()

    def on_response_complete(self) -> None:
        """uvicorn's, with the keep-alive deadline one of the gate's (uvicorn makes a
        timer per request for it, and cancels it at the next request's first byte)."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return  # mutate: harmless delete (its deadline goes at connection_lost, at once)
        self.flow.resume_reading()
        if self.pipeline:  # the next request is here already
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._deadline is None:  # (a pipelined request's head may be on its way)
            self._arm(IDLE, self.timeout_keep_alive)
        self._settle()

    def _settle(self) -> None:
        """Tell the gate whether this connection may make room for a new one."""
        # Defensive: a closed transport feeds the parser nothing more, and
        # on_response_complete returns first on one.
        # mutate: harmless (defensive: see above)
        if not self._admitted or self.transport.is_closing():
            return  # mutate: harmless delete (the same)
        if not self._in_head:
            self.gate.receiving(self)  # its body is on the way
        elif self.cycle is None or self.cycle.response_complete:
            self.gate.waiting(self)  # waiting for a request (kept alive, or new)
        else:
            self.gate.working(self)  # the application has the request

    def handle_websocket_upgrade(self) -> None:
        # llhttp completes the upgrade request's message before it pauses for the upgrade;
        # mutate: harmless delete (the deadline is cleared already: the timer would find none)
        self._cancel()
        super().handle_websocket_upgrade()
        self.gate.handover(self, self.transport.get_protocol())
        self._admitted = False

    # -- deadlines, refusals ------------------------------------------------------------------
    # A connection's phase has a deadline; one timer per connection, made again only when
    # a deadline comes before the timer's: the phases of a request set and clear the
    # deadline, and the timer, when it fires, looks at the deadline then (a timer made
    # and cancelled per phase was 4 of them per request, a few % of a point read's CPU).
    def _arm(self, phase: Phase, seconds: float) -> None:
        deadline = self.loop.time() + seconds
        self._deadline = deadline
        self._phase = phase
        timer = self._timer
        # mutate: harmless compare (a timer for the same moment either way)
        if timer is None or timer.when() > deadline:
            if timer is not None:
                # (left alone, it would fire later, find the deadline handled or not yet
                # due, and do what the new one does)
                # mutate: harmless delete (see above)
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._due)

    def _disarm(self) -> None:
        self._deadline = None  # the timer, if any, finds nothing due

    def _cancel(self) -> None:
        """The connection ends (or leaves the gate): no deadline, no timer holding it."""
        self._deadline = None  # mutate: harmless delete (no timer is left to read it)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None  # mutate: harmless delete (nothing arms the connection again)

    def _due(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        # mutate: harmless compare (at the very deadline, a timer for now or the answer now)
        if self.loop.time() < deadline:  # the phase began after this timer was made
            self._timer = self.loop.call_at(deadline, self._due)
            return
        phase = self._phase
        if phase is IDLE:  # kept alive long enough with no request: closed, as uvicorn does
            if not self.transport.is_closing():
                self.transport.close()
            return
        cut(phase.setting)
        self._answer(Code.REQUEST_TIMEOUT, f"the request's {phase.what} did not arrive within "
                                           f"{phase.setting} ({phase.seconds(self.gate):g} s)")

    def _answer(self, code: Code, message: str) -> None:
        """Answer the request in progress with an error and close the connection."""
        self._cancel()
        if self.transport.is_closing():
            return  # mutate: harmless delete (Corked drops a write to a closing transport)
        cycle = self.cycle  # the last request's, until this one's headers are complete
        if self._in_head:  # a next request: answered once the last one's answer is complete
            answer = cycle is None or cycle.response_complete
        else:  # this request's body: answered unless the application has begun to
            answer = not cycle.response_started
        if answer:
            self.transport.write(raw_response(code, message))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the application's receive() sees a disconnect
            cycle.message_event.set()
        self.transport.close()

    def evict(self) -> None:
        """Make room for a new connection: close this one, which is waiting."""
        # mutate: harmless (it has left the gate here, and a closing transport reads no more)
        self._admitted = False
        self.gate.leave(self)
        if self.cycle is not None and not self.cycle.response_complete:
            self._answer(Code.TOO_MANY_CONNECTIONS, "the node is at max_connections and "
                                                    "this request was the slowest to arrive")
        else:
            self._cancel()
            self.transport.close()

    def _refuse(self, reason: str) -> None:
        cut("refused")
        self.transport.write(raw_response(Code.TOO_MANY_CONNECTIONS, reason))
        if self.gate.lingering < MAX_LINGERING and self.transport.can_write_eof():
            # Half-close so the client reads the answer, and drop what it sends meanwhile:
            # closing with its request unread would reset the connection and lose the 503.
            self.gate.lingering += 1
            self._lingering = True
            self.transport.write_eof()
            self._timer = self.loop.call_later(LINGER, self.transport.close)
        else:
            self.transport.close()


class GatedWebSocket(WebSocketsSansIOProtocol):
    """uvicorn's websockets protocol, counted by the gate until it closes."""

    gate: Gate

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = WS_CLOSE_TIMEOUT

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.gate.leave(self)


def cut(reason: str) -> None:
    METRICS.connections_cut.labels(reason).inc()


def protocols(gate: Gate) -> tuple[type[GatedHttp], type[GatedWebSocket]]:
    """The protocol classes uvicorn instantiates, bound to this node's gate."""
    http = type("ShoalHttp", (GatedHttp,), {"gate": gate})
    ws = type("ShoalWebSocket", (GatedWebSocket,), {"gate": gate})
    return http, ws
