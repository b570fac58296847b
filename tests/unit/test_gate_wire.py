"""The gate on the wire, in process: uvicorn's protocol classes as server/main.py binds them
(``protocols(Gate(...))``), served by ``loop.create_server`` on 127.0.0.1:0 inside the test's
own uvloop loop with a trivial ASGI app, and driven by raw sockets. Deadlines are tenths of a
second; every answer is compared whole (status line, headers, envelope).

tests/integration/test_isolation_server.py runs the same attacks against a real node, in
numbers; these tests are the ones the mutation run (server/gate.py) can afford.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
import uvloop
from uvicorn.server import ServerState

from shoal.errors import Code
from shoal.metrics import METRICS
from shoal.server.gate import Gate, GatedHttp, GatedWebSocket, protocols
from shoal.settings import load

REASONS = ("refused", "evicted", "header_timeout", "body_timeout", "headers_too_large")


def run(coro: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


def cuts() -> dict[str, float]:
    return {r: METRICS.registry.get_sample_value("shoal_connections_cut_total",
                                                 {"reason": r}) or 0.0 for r in REASONS}


def cut_since(before: dict[str, float]) -> dict[str, float]:
    now = cuts()
    return {r: now[r] - before[r] for r in REASONS if now[r] != before[r]}


def open_gauge() -> float | None:
    return METRICS.registry.get_sample_value("shoal_connections")


async def until(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


class App:
    """The application behind the gate, by path: ``/`` reads the body and answers ok,
    ``/hold`` answers once released, ``/close`` answers with ``connection: close``,
    ``/stream`` starts a large answer and then only listens, ``/early`` answers without
    reading the body, ``/ignore`` too but 0.1 s later; ``/ws`` echoes, ``/ws-close`` closes
    at once."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.paths: list[str] = []
        self.received: list[str] = []  # what receive() gave, on every path
        self.bodies: list[bytes] = []
        self.holding = 0
        self.release = asyncio.Event()
        self.waiting_after_close: list[int] = []
        self.streamed = asyncio.Event()
        self.ended: list[str] = []

    async def body(self, receive: Any) -> bytes:
        data = b""
        while True:
            message = await receive()
            self.received.append(message["type"])
            if message["type"] != "http.request":
                return data
            data += message["body"]
            if not message["more_body"]:
                return data

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        self.paths.append(path)
        if scope["type"] == "websocket":
            await self.websocket(path, receive, send)
            return
        if path == "/big":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"33554432")]})
            await send({"type": "http.response.body", "body": bytes(32 << 20)})
            return
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"67108864")]})
            await send({"type": "http.response.body", "body": bytes(8 << 20),
                        "more_body": True})
            self.streamed.set()
            self.received.append((await receive())["type"])
            self.ended.append(path)
            return
        if path == "/ignore":  # answered a moment later, its body never read
            await asyncio.sleep(0.1)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        if path == "/early":  # answered before the body is read
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        self.bodies.append(await self.body(receive))
        if path == "/hold":
            self.holding += 1
            await self.release.wait()
        headers = [(b"content-length", b"2")]
        if path == "/close":
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})
        if path == "/close":
            self.waiting_after_close.append(len(self.gate.idle) + len(self.gate.uploading))
        self.ended.append(path)

    async def websocket(self, path: str, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        if path == "/ws-close":
            await send({"type": "websocket.close", "code": 1000})
            self.received.append((await receive())["type"])
            return
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                self.received.append(message["type"])
                return
            await send({"type": "websocket.send", "text": message["text"]})


@dataclass
class Node:
    gate: Gate
    port: int
    app: App
    state: ServerState
    errors: list[str] = field(default_factory=list)
    clients: list[asyncio.StreamWriter] = field(default_factory=list)

    async def connect(self, source: str = "127.0.0.1"
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port,
                                                       local_addr=(source, 0))
        self.clients.append(writer)
        return reader, writer


class _Errors(logging.Handler):
    def __init__(self, errors: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.errors = errors

    def emit(self, record: logging.LogRecord) -> None:
        self.errors.append(record.getMessage())


@contextlib.asynccontextmanager
async def node(keep_alive: float = 60, **settings: float) -> AsyncIterator[Node]:
    """A gated uvicorn on 127.0.0.1:0 in this loop (``keep_alive``: uvicorn's
    timeout_keep_alive); fails the test on any error the loop or uvicorn reports (an
    exception in a protocol callback or a timer)."""
    gate = Gate(load(overrides=settings, environ={}), fd_limit=1 << 20)
    http, ws = protocols(gate)
    assert issubclass(http, GatedHttp) and issubclass(ws, GatedWebSocket)
    assert http.gate is gate and ws.gate is gate
    app = App(gate)
    config = uvicorn.Config(app, http=http, ws=ws, lifespan="off", log_config=None,
                            access_log=False, timeout_keep_alive=keep_alive)
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    loop.set_exception_handler(lambda _, context: errors.append(str(context)))
    handler = _Errors(errors)
    logging.getLogger("uvicorn.error").addHandler(handler)
    server = await loop.create_server(
        lambda: http(config=config, server_state=state, app_state={}, _loop=loop),
        "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    n = Node(gate, port, app, state, errors)
    try:
        yield n
        assert errors == []
    finally:
        app.release.set()
        for writer in n.clients:
            writer.transport.abort()
        server.close()
        for conn in list(state.connections):
            conn.transport.abort()
        await asyncio.sleep(0.01)
        logging.getLogger("uvicorn.error").removeHandler(handler)


async def read_all(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    """Everything until the node closes (or half-closes) the connection."""
    return await asyncio.wait_for(reader.read(), timeout)


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One response with a content-length, on a connection that stays open."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head + await asyncio.wait_for(reader.readexactly(length), 3)


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def envelope(raw: bytes, status: str, code: str, message: str) -> None:
    """raw is exactly one error answer of the gate's, and the connection's last."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines == [status, "content-type: application/json",
                     f"content-length: {len(body)}", "connection: close"], raw
    assert json.loads(body) == {"error": {"code": code, "message": message,
                                          "hint": Code[code].hint}}


def timeout_408(raw: bytes, what: str, setting: str, seconds: str) -> None:
    envelope(raw, "HTTP/1.1 408 Request Timeout", "REQUEST_TIMEOUT",
             f"the request's {what} did not arrive within {setting} ({seconds} s)")


def too_large_431(raw: bytes, limit: int) -> None:
    envelope(raw, "HTTP/1.1 431 Request Header Fields Too Large", "HEADERS_TOO_LARGE",
             f"the request line and headers exceed max_header_bytes ({limit})")


def refused_503(raw: bytes, message: str) -> None:
    envelope(raw, "HTTP/1.1 503 Service Unavailable", "TOO_MANY_CONNECTIONS", message)


def get(path: str = "/", pad: int = 0) -> bytes:
    """A GET whose head is exactly 31 + len(path) + pad bytes."""
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nX: ".encode() + b"a" * pad + b"\r\n\r\n")


def post_head(path: str, length: int) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()


# -- deadlines -------------------------------------------------------------------------------------


def test_a_silent_connection_is_answered_408_at_header_timeout() -> None:
    async def main() -> None:
        async with node(header_timeout=0.2, body_timeout=5) as n:
            before = cuts()
            started = time.monotonic()
            reader, _ = await n.connect()
            await until(lambda: len(n.gate.members) == 1)
            assert open_gauge() == 1
            timeout_408(await read_all(reader), "headers", "header_timeout", "0.2")
            assert 0.15 <= time.monotonic() - started < 1.0
            assert cut_since(before) == {"header_timeout": 1}
            await until(lambda: not n.gate.members)
            assert n.gate.per_client == {} and not n.gate.idle and open_gauge() == 0
            assert n.app.paths == []

    run(main())


def test_the_first_requests_headers_count_from_the_connection() -> None:
    """Its first byte does not restart the deadline (the next request's does)."""
    async def main() -> None:
        async with node(header_timeout=0.5) as n:
            started = time.monotonic()
            reader, writer = await n.connect()
            await asyncio.sleep(0.4)
            writer.write(b"GET / HTTP/1.1\r\nHo")
            first = time.monotonic()
            await asyncio.sleep(0.05)
            writer.write(b"st: x\r\nX-Slow: a")  # dripping does not help either
            timeout_408(await read_all(reader), "headers", "header_timeout", "0.5")
            answered = time.monotonic()
            # not before the deadline (a timer may fire a clock tick early)...
            assert answered - started >= 0.49
            assert answered - first < 0.4  # ...and not 0.5 s after the first byte

    run(main())


def test_a_kept_alive_connection_has_no_deadline_until_its_next_request_begins() -> None:
    async def main() -> None:
        async with node(header_timeout=0.2, body_timeout=0.2) as n:
            reader, writer = await n.connect()
            writer.write(get())
            assert await read_response(reader) == OK
            writer.write(post_head("/", 3) + b"abc")
            assert await read_response(reader) == OK
            await asyncio.sleep(0.35)  # idle: kept alive (uvicorn's keep-alive is 60 s here)
            assert n.gate.members and not reader.at_eof()
            before = cuts()
            writer.write(b"GET / HTTP/1.1\r\nHo")
            sent = time.monotonic()
            timeout_408(await read_all(reader), "headers", "header_timeout", "0.2")
            assert 0.15 <= time.monotonic() - sent < 1.0
            assert cut_since(before) == {"header_timeout": 1}
            assert n.app.bodies == [b"", b"abc"]

    run(main())


def test_a_kept_alive_connection_is_closed_quietly_after_timeout_keep_alive() -> None:
    """The gate keeps uvicorn's keep-alive deadline: no answer, no cut counted; a request
    before it keeps the connection (its deadline starts again after the answer)."""
    async def main() -> None:
        async with node(keep_alive=0.3, header_timeout=5) as n:
            before = cuts()
            reader, writer = await n.connect()
            writer.write(get())
            assert await read_response(reader) == OK
            await asyncio.sleep(0.2)
            writer.write(get())
            assert await read_response(reader) == OK
            answered = time.monotonic()
            await asyncio.sleep(0.2)  # 0.4 s after the first answer: still open
            assert n.gate.members and not reader.at_eof()
            assert await read_all(reader) == b""  # closed, nothing said
            assert 0.25 <= time.monotonic() - answered < 1.0
            await until(lambda: not n.gate.members)
            assert cut_since(before) == {}
            assert n.state.total_requests == 2  # uvicorn's count (limit_max_requests reads it)

    run(main())


def test_a_request_held_past_header_timeout_is_then_kept_alive_for_keep_alive_only() -> None:
    """The connection's timer fires while the application holds the request (no deadline
    then) and must still be there for the keep-alive deadline after the answer."""
    async def main() -> None:
        async with node(keep_alive=0.3, header_timeout=0.15) as n:
            reader, writer = await n.connect()
            writer.write(get("/hold"))
            await until(lambda: n.app.holding == 1)
            await asyncio.sleep(0.3)  # past header_timeout, answered by nobody yet
            n.app.release.set()
            assert await read_response(reader) == OK
            answered = time.monotonic()
            assert await read_all(reader) == b""  # closed, nothing said
            assert 0.25 <= time.monotonic() - answered < 1.0
            await until(lambda: not n.gate.members)

    run(main())


def test_reading_resumes_after_an_answer_that_left_a_large_body_unread() -> None:
    """uvicorn stops reading a connection whose unread body passes 64 KiB; the answer
    lets it read again (the gate's on_response_complete keeps uvicorn's)."""
    async def main() -> None:
        async with node(body_timeout=5) as n:
            reader, writer = await n.connect()
            size = 1 << 20
            writer.write(post_head("/ignore", size) + b"x" * size + get())
            assert await read_response(reader) == OK
            assert await read_response(reader) == OK  # the next request, read at last
            assert n.app.paths == ["/ignore", "/"]

    run(main())


def test_a_closed_connection_leaves_no_timer_holding_it() -> None:
    async def main() -> None:
        async with node(header_timeout=30) as n:
            reader, writer = await n.connect()
            writer.write(get())
            assert await read_response(reader) == OK
            protocol = weakref.ref(next(iter(n.state.connections)))
            writer.transport.abort()
            await until(lambda: not n.gate.members and not n.state.connections)
            await asyncio.sleep(0.05)
            gc.collect()
            assert protocol() is None  # no timer of its deadlines keeps it for 30 s

    run(main())


def test_a_connection_answered_before_its_body_ended_is_kept_alive_from_the_bodys_end() -> None:
    async def main() -> None:
        async with node(keep_alive=0.3, header_timeout=5, body_timeout=5) as n:
            reader, writer = await n.connect()
            writer.write(post_head("/early", 10) + b"abc")
            assert await read_response(reader) == OK
            await asyncio.sleep(0.45)  # past keep_alive: the body is still on its way
            assert n.gate.members and not reader.at_eof()
            writer.write(b"defghij")
            ended = time.monotonic()
            assert await read_all(reader) == b""  # then closed quietly, kept alive no longer
            assert 0.25 <= time.monotonic() - ended < 1.0
            await until(lambda: not n.gate.members)

    run(main())


@pytest.mark.parametrize(("header", "body", "expect"), [(0.6, 0.15, 0.15), (0.1, 0.45, 0.45)])
def test_the_body_deadline_holds_whichever_deadline_came_first(
        header: float, body: float, expect: float) -> None:
    """One timer per connection: a body deadline sooner than the pending header timer
    moves the timer up; a later one is not cut short by it."""
    async def main() -> None:
        async with node(header_timeout=header, body_timeout=body) as n:
            reader, writer = await n.connect()
            writer.write(post_head("/", 10) + b"abc")
            sent = time.monotonic()
            timeout_408(await read_all(reader), "body", "body_timeout", f"{body:g}")
            assert expect - 0.02 <= time.monotonic() - sent < expect + 0.5
            await until(lambda: not n.gate.members)

    run(main())


def test_a_slow_body_is_answered_408_and_the_app_sees_a_disconnect() -> None:
    async def main() -> None:
        async with node(header_timeout=5, body_timeout=0.2) as n:
            before = cuts()
            reader, writer = await n.connect()
            writer.write(post_head("/", 10) + b"abc")
            sent = time.monotonic()
            timeout_408(await read_all(reader), "body", "body_timeout", "0.2")
            assert 0.15 <= time.monotonic() - sent < 1.0
            assert cut_since(before) == {"body_timeout": 1}
            await until(lambda: n.app.bodies != [])
            assert n.app.bodies == [b"abc"]
            assert n.app.received == ["http.request", "http.disconnect"]
            await until(lambda: not n.gate.members)

    run(main())


def test_a_body_in_time_is_held_to_its_own_deadline_not_the_headers() -> None:
    async def main() -> None:
        async with node(header_timeout=0.2, body_timeout=1.0) as n:
            reader, writer = await n.connect()
            writer.write(post_head("/", 6) + b"abc")
            await asyncio.sleep(0.3)  # past header_timeout, within body_timeout
            writer.write(b"def")
            assert await read_response(reader) == OK
            assert n.app.bodies == [b"abcdef"]

    run(main())


def test_a_client_that_goes_mid_body_is_a_disconnect_for_the_app() -> None:
    async def main() -> None:
        async with node(header_timeout=5, body_timeout=5) as n:
            before = cuts()
            _, writer = await n.connect()
            writer.write(post_head("/", 10) + b"abc")
            await until(lambda: n.app.received == ["http.request"])
            assert len(n.state.connections) == 1
            writer.transport.abort()
            await until(lambda: n.app.received == ["http.request", "http.disconnect"])
            await until(lambda: not n.gate.members)
            assert not n.state.connections and cut_since(before) == {}

    run(main())


# -- max_header_bytes ------------------------------------------------------------------------------


def test_a_head_of_exactly_max_header_bytes_passes_and_a_byte_more_is_431() -> None:
    async def main() -> None:
        async with node(max_header_bytes=200, header_timeout=5) as n:
            before = cuts()
            reader, writer = await n.connect()
            writer.write(get(pad=168))  # 200 bytes at once
            assert await read_response(reader) == OK
            writer.write(get(pad=100)[:-4])
            await asyncio.sleep(0.05)
            writer.write(get(pad=100)[-4:])  # 132 bytes in two parts
            assert await read_response(reader) == OK
            part = get(pad=168)[:-1]  # 199 bytes, then 1: a head of 200 bytes in two parts
            writer.write(part)
            await asyncio.sleep(0.05)
            writer.write(b"\n")
            assert await read_response(reader) == OK
            assert cut_since(before) == {}
            writer.write(b"GET /" + b"a" * 195)  # a head that has not ended at 200 bytes...
            await asyncio.sleep(0.1)
            assert not reader.at_eof() and cut_since(before) == {}
            writer.write(b"a")  # ...and goes on
            too_large_431(await read_all(reader), 200)
            assert cut_since(before) == {"headers_too_large": 1}
            assert n.app.paths == ["/", "/", "/"]

    run(main())


@pytest.mark.parametrize("pad", [169, 5000])
def test_an_oversized_head_sent_at_once_is_431(pad: int) -> None:
    """However much of it one read holds (a fast client sends a whole head at once)."""
    async def main() -> None:
        async with node(max_header_bytes=200, header_timeout=5) as n:
            reader, writer = await n.connect()
            writer.write(get(pad=pad))
            too_large_431(await read_all(reader), 200)
            writer.write(get())
            assert n.app.paths == []

    run(main())


def test_a_malformed_oversized_head_is_a_400_not_a_431() -> None:
    async def main() -> None:
        async with node(max_header_bytes=200, header_timeout=5) as n:
            before = cuts()
            reader, writer = await n.connect()
            writer.write(b"GET / HTTP/1.1\r\nBad\x01Header: x\r\n" + b"a" * 300)
            raw = await read_all(reader)
            assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            assert cut_since(before) == {}

    run(main())


def test_an_oversized_head_on_a_kept_alive_connection_is_431() -> None:
    async def main() -> None:
        async with node(max_header_bytes=200, header_timeout=5) as n:
            reader, writer = await n.connect()
            writer.write(post_head("/", 2) + b"ok")
            assert await read_response(reader) == OK
            writer.write(get(pad=169))
            too_large_431(await read_all(reader), 200)
            assert n.app.paths == ["/"]

    run(main())


@pytest.mark.parametrize("writes", [
    [get() + get(pad=5000)],  # behind a request without a body
    [post_head("/", 2), b"ok" + get(pad=5000)],  # in the read that ends a body
])
def test_an_oversized_head_pipelined_behind_a_request_closes_without_an_answer(
        writes: list[bytes]) -> None:
    """An answer now would read as the first request's: the connection is closed, and the
    application's receive() says disconnect."""
    async def main() -> None:
        async with node(max_header_bytes=200, header_timeout=5) as n:
            before = cuts()
            reader, writer = await n.connect()
            for data in writes:
                writer.write(data)
                await asyncio.sleep(0.05)
            assert await read_all(reader) == b""
            assert cut_since(before) == {"headers_too_large": 1}
            await until(lambda: "http.disconnect" in n.app.received)
            assert n.app.paths == ["/"]

    run(main())


def test_bodies_and_earlier_heads_do_not_count_against_the_next_head() -> None:
    async def main() -> None:
        async with node(max_header_bytes=200, header_timeout=5) as n:
            reader, writer = await n.connect()
            body = b"b" * 5000
            writer.write(post_head("/", len(body)))
            await asyncio.sleep(0.05)
            writer.write(body[:2500])
            await asyncio.sleep(0.05)
            writer.write(body[2500:])
            assert await read_response(reader) == OK
            writer.write(post_head("/", 300) + b"c" * 300)  # head and body at once
            assert await read_response(reader) == OK
            for _ in range(3):  # 150-byte heads, one after another on one connection
                writer.write(get(pad=118))
                assert await read_response(reader) == OK
            writer.write(get(pad=118) * 3)  # pipelined in one write
            for _ in range(3):
                assert await read_response(reader) == OK
            assert n.app.bodies[:2] == [body, b"c" * 300]
            writer.write(b"GET /" + b"a" * 145)  # the next head is counted from its start
            await asyncio.sleep(0.05)
            writer.write(b"a" * 51)
            too_large_431(await read_all(reader), 200)

    run(main())


# -- the node's cap and eviction -------------------------------------------------------------------


def test_at_the_cap_a_waiting_then_an_uploading_connection_makes_room() -> None:
    async def main() -> None:
        async with node(max_connections=3, max_connections_per_client=0, header_timeout=5,
                        body_timeout=5) as n:
            before = cuts()
            waiting, _ = await n.connect()  # sends nothing
            uploading, up = await n.connect()
            up.write(post_head("/", 100) + b"x")
            held, h1 = await n.connect()
            h1.write(get("/hold"))
            await until(lambda: n.app.holding == 1)
            assert list(n.gate.idle) != [] and len(n.gate.uploading) == 1
            assert len(n.gate.members) == 3 and open_gauge() == 3

            second, h2 = await n.connect()  # takes the waiting connection's place
            assert await read_all(waiting) == b""  # closed: it had no request to answer
            h2.write(get("/hold"))
            await until(lambda: n.app.holding == 2)
            assert cut_since(before) == {"evicted": 1} and n.gate.evicted == 1

            third, h3 = await n.connect()  # nobody waits for a request: the upload goes
            refused_503(await read_all(uploading),
                        "the node is at max_connections and this request was the slowest "
                        "to arrive")
            h3.write(get("/hold"))
            await until(lambda: n.app.holding == 3)
            assert n.app.received.count("http.disconnect") == 1  # the upload's app saw it
            assert cut_since(before) == {"evicted": 2} and n.gate.evicted == 2

            out, _ = await n.connect()  # everyone is working: refused
            refused_503(await read_all(out), "the node holds 3 connections (max_connections)")
            assert cut_since(before) == {"evicted": 2, "refused": 1}
            assert len(n.gate.members) == 3 and open_gauge() == 3
            assert n.gate.per_client == {"127.0.0.1": 3}
            assert not n.gate.idle and not n.gate.uploading
            n.app.release.set()
            for reader in (held, second, third):
                assert await read_response(reader) == OK
            assert len(n.gate.idle) == 3  # kept alive, waiting for a next request

    run(main())


def test_the_longest_waiting_goes_first() -> None:
    async def main() -> None:
        async with node(max_connections=2, max_connections_per_client=0,
                        header_timeout=5) as n:
            first, _ = await n.connect()
            second, _ = await n.connect()
            await until(lambda: len(n.gate.idle) == 2)
            await n.connect()
            assert await read_all(first) == b""
            assert len(n.gate.members) == 2
            await asyncio.sleep(0.05)
            assert not second.at_eof()

    run(main())


def test_a_kept_alive_connection_makes_room_without_an_answer() -> None:
    async def main() -> None:
        async with node(max_connections=1, max_connections_per_client=0) as n:
            before = cuts()
            reader, writer = await n.connect()
            writer.write(get())
            assert await read_response(reader) == OK
            await until(lambda: len(n.gate.idle) == 1)
            other, w2 = await n.connect()
            assert await read_all(reader) == b""  # no 503 after its answer
            w2.write(get())
            assert await read_response(other) == OK
            assert cut_since(before) == {"evicted": 1}
            assert n.gate.lingering == 0

    run(main())


def test_a_request_the_app_has_is_not_evicted() -> None:
    async def main() -> None:
        async with node(max_connections=1, max_connections_per_client=0) as n:
            reader, writer = await n.connect()
            writer.write(post_head("/hold", 3) + b"abc")  # whole: the app has it
            await until(lambda: n.app.holding == 1)
            out, _ = await n.connect()
            refused_503(await read_all(out), "the node holds 1 connections (max_connections)")
            n.app.release.set()
            assert await read_response(reader) == OK
            assert n.app.bodies == [b"abc"]

    run(main())


def test_a_connection_that_closes_after_its_answer_is_not_offered_for_eviction() -> None:
    async def main() -> None:
        async with node(max_connections=2) as n:
            reader, writer = await n.connect()
            writer.write(get("/close"))
            raw = await read_all(reader)
            assert raw == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            assert n.app.waiting_after_close == [0]
            await until(lambda: not n.gate.members)

    run(main())


def test_an_answer_under_way_is_cut_without_a_second_status_line() -> None:
    """A body that stops arriving while the app streams its answer to a client that does
    not read: no 408 is written into the answer, and the app's receive() says disconnect
    at once (the transport cannot close before its buffer drains)."""
    async def main() -> None:
        async with node(body_timeout=0.2, header_timeout=5) as n:
            before = cuts()
            reader, writer = await n.connect()
            writer.write(b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
            await asyncio.wait_for(n.app.streamed.wait(), 3)
            await until(lambda: n.app.ended == ["/stream"])  # the deadline passed
            assert n.app.received == ["http.disconnect"]
            assert cut_since(before) == {"body_timeout": 1}
            raw = await read_all(reader)  # now read it all: the answer, cut short
            assert raw.startswith(b"HTTP/1.1 200 OK\r\ncontent-length: 67108864\r\n\r\n")
            assert len(raw) == len(b"HTTP/1.1 200 OK\r\ncontent-length: 67108864\r\n\r\n") \
                + (8 << 20)
            assert b"HTTP/1.1 408" not in raw

    run(main())


BIG = b"HTTP/1.1 200 OK\r\ncontent-length: 33554432\r\n\r\n" + bytes(32 << 20)


async def unread(n: Node) -> None:
    """Until the node holds an answer its client has not read."""
    (conn,) = n.state.connections
    await until(lambda: conn.transport.get_write_buffer_size() > 0)


def test_a_connection_closing_behind_an_unread_answer_is_evicted_without_more() -> None:
    """Its late body was answered 408 behind 32 MiB its client has not read yet, so it is
    still counted (and uploading) when a new connection takes its place: no 503 follows."""
    async def main() -> None:
        async with node(max_connections=1, max_connections_per_client=0, body_timeout=0.1,
                        header_timeout=5) as n:
            before = cuts()
            reader, writer = await n.connect()
            writer.write(get("/big") + post_head("/", 10) + b"abc")
            await unread(n)
            await until(lambda: cut_since(before) == {"body_timeout": 1})
            await n.connect()
            await until(lambda: n.gate.evicted == 1)
            raw = await read_all(reader)
            assert raw.startswith(BIG)
            timeout_408(raw[len(BIG):], "body", "body_timeout", "0.1")
            assert cut_since(before) == {"body_timeout": 1, "evicted": 1}

    run(main())


def test_an_evicted_connection_closing_behind_an_unread_answer_keeps_no_deadline() -> None:
    async def main() -> None:
        async with node(max_connections=1, max_connections_per_client=0,
                        header_timeout=0.1) as n:
            before = cuts()
            reader, writer = await n.connect()
            writer.write(get("/big") + b"GET / HT")  # its next head has begun: a deadline
            await unread(n)
            await until(lambda: n.app.paths == ["/big"] and len(n.gate.idle) == 1)
            other, w2 = await n.connect()
            await until(lambda: n.gate.evicted == 1)
            w2.write(get())  # (a request at once: no deadline of its own running)
            assert await read_response(other) == OK
            await asyncio.sleep(0.2)  # past the deadline the evicted one had
            assert cut_since(before) == {"evicted": 1}
            assert await read_all(reader) == BIG

    run(main())


def test_a_431_behind_an_unread_answer_keeps_no_deadline() -> None:
    """The connection stays open until its client reads the answer before: the deadline of
    the head that was refused must not fire meanwhile."""
    async def main() -> None:
        async with node(max_header_bytes=200, header_timeout=0.1) as n:
            before = cuts()
            reader, writer = await n.connect()
            writer.write(get("/big"))
            await unread(n)
            writer.write(get(pad=5000))
            await until(lambda: cut_since(before) == {"headers_too_large": 1})
            await asyncio.sleep(0.2)  # past the refused head's deadline
            assert cut_since(before) == {"headers_too_large": 1}
            raw = await read_all(reader)
            assert raw.startswith(BIG)
            too_large_431(raw[len(BIG):], 200)

    run(main())


# -- refusals --------------------------------------------------------------------------------------


def test_over_an_addresss_cap_a_connection_is_refused_and_lingers_half_a_second() -> None:
    async def main() -> None:
        async with node(max_connections_per_client=1, header_timeout=5) as n:
            before = cuts()
            kept, _ = await n.connect("127.0.0.1")
            await until(lambda: len(n.gate.members) == 1)
            reader, writer = await n.connect("127.0.0.1")
            refused_503(await read_all(reader),
                        "your address holds 1 connections (max_connections_per_client)")
            answered = time.monotonic()
            assert cut_since(before) == {"refused": 1}
            assert n.gate.lingering == 1
            writer.write(get())  # read and dropped: never reaches the app
            await asyncio.sleep(0.2)
            assert n.gate.lingering == 1
            await until(lambda: n.gate.lingering == 0)
            assert 0.4 <= time.monotonic() - answered < 1.0
            other, w3 = await n.connect("127.0.0.2")  # another address is welcome
            w3.write(get())
            assert await read_response(other) == OK
            assert n.app.paths == ["/"]
            assert n.gate.per_client == {"127.0.0.1": 1, "127.0.0.2": 1}
            assert len(n.gate.members) == 2 and not kept.at_eof()
            assert cut_since(before) == {"refused": 1}

    run(main())


def test_at_most_64_refused_connections_linger() -> None:
    async def main() -> None:
        async with node(max_connections_per_client=1, header_timeout=5) as n:
            await n.connect()
            await until(lambda: len(n.gate.members) == 1)
            n.gate.lingering = 63  # as if 63 were lingering already
            reader, _ = await n.connect()
            refused_503(await read_all(reader),
                        "your address holds 1 connections (max_connections_per_client)")
            assert n.gate.lingering == 64
            closed, _ = await n.connect()  # the 65th is closed at once
            refused_503(await read_all(closed),
                        "your address holds 1 connections (max_connections_per_client)")
            await asyncio.sleep(0.05)
            assert n.gate.lingering == 64

    run(main())


def test_a_connection_that_goes_early_leaves_no_count_and_no_deadline() -> None:
    async def main() -> None:
        async with node(header_timeout=0.1) as n:
            before = cuts()
            _, writer = await n.connect()
            await until(lambda: len(n.gate.members) == 1)
            writer.close()
            await until(lambda: not n.gate.members)
            await asyncio.sleep(0.25)  # past its header deadline
            assert cut_since(before) == {}
            assert n.gate.per_client == {} and not n.gate.idle and open_gauge() == 0

    run(main())


# -- WebSockets ------------------------------------------------------------------------------------


def upgrade(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def text_frame(text: str) -> bytes:
    """A masked (client) text frame."""
    data = text.encode()
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(data)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(data))


def test_a_websocket_is_counted_until_it_closes_and_has_no_http_deadlines() -> None:
    async def main() -> None:
        async with node(header_timeout=0.1, body_timeout=0.1, max_connections=2,
                        max_connections_per_client=0) as n:
            reader, writer = await n.connect()
            writer.write(upgrade("/ws"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            assert head.startswith(b"HTTP/1.1 101 ")
            (conn, host), = n.gate.members.items()
            assert isinstance(conn, GatedWebSocket) and host == "127.0.0.1"
            assert n.gate.per_client == {"127.0.0.1": 1} and open_gauge() == 1
            assert not n.gate.idle and not n.gate.uploading  # never evicted
            await asyncio.sleep(0.25)  # past both deadlines
            writer.write(text_frame("hello"))
            assert await asyncio.wait_for(reader.readexactly(7), 3) == b"\x81\x05hello"
            other, _ = await n.connect()  # the second place
            await until(lambda: len(n.gate.members) == 2)
            await n.connect()  # takes the place of the silent one, not the socket
            assert await read_all(other) == b""
            writer.write(text_frame("again"))
            assert await asyncio.wait_for(reader.readexactly(7), 3) == b"\x81\x05again"
            writer.transport.abort()
            await until(lambda: n.app.received == ["websocket.disconnect"])
            await until(lambda: len(n.gate.members) == 1)
            assert conn not in n.gate.members and n.gate.per_client == {"127.0.0.1": 1}
            assert open_gauge() == 1

    run(main())


def test_an_upgrade_read_with_more_than_its_head_is_upgraded_once() -> None:
    """What follows the upgrade request in the same read is not HTTP: it is not parsed."""
    async def main() -> None:
        async with node(max_header_bytes=200) as n:
            reader, writer = await n.connect()
            head = upgrade("/ws")
            assert len(head) < 200
            writer.write(head + text_frame("x" * 100) + text_frame("y" * 100))
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            assert answer.startswith(b"HTTP/1.1 101 ")
            writer.write(text_frame("hello"))
            assert await asyncio.wait_for(reader.readexactly(7), 3) == b"\x81\x05hello"
            (conn, _), = n.gate.members.items()
            assert isinstance(conn, GatedWebSocket)
            assert n.app.paths == ["/ws"]

    run(main())


def test_a_websocket_close_waits_two_seconds_for_the_peers_close() -> None:
    """uvicorn waits 10 s for the peer's close frame; the node 2 s (read off the timer
    uvicorn arms, rather than waited for)."""
    async def main() -> None:
        async with node() as n:
            reader, writer = await n.connect()
            writer.write(upgrade("/ws-close"))
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            frame = await asyncio.wait_for(reader.readexactly(4), 3)
            assert frame == b"\x88\x02\x03\xe8"  # close, 1000; we never answer it
            (conn, _), = n.gate.members.items()
            assert conn.close_timeout == 2.0
            left = conn.close_timer.when() - asyncio.get_running_loop().time()
            assert 1.8 < left < 2.05  # the loop's clock ticks in milliseconds
            writer.transport.abort()
            await until(lambda: not n.gate.members)
            assert n.gate.per_client == {}

    run(main())
