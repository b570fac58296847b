"""Forwarding to a database's leader (shoal.cluster.forward) against real loopback servers.

The leader is a small ASGI app under uvicorn that echoes what reached it; for WebSockets
a second uvicorn server, the node the client reached, runs ``Forwarder.websocket`` in
front of it, and a websockets client talks to that one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import queue
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import uvicorn
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import ServerConnection, serve

from shoal.cluster.forward import FORWARDED, Forwarder
from shoal.errors import Code, ShoalError
from shoal.server.http import Receive, Scope, Send

T = TypeVar("T")
NODE = "node-a"
TOKEN = "Bearer secret-token-xyz"
GZIPPED = gzip.compress(b"hello")


class Leader:
    """The upstream: ``/sleep`` answers only once its client is gone, ``/gzip`` a gzipped
    body, any other path the request as JSON (with hop-by-hop response headers, and
    chunked: no length). WebSockets: echo, ``headers`` answers what the handshake
    carried, ``close:CODE`` closes with CODE; a client's close lands in ``closes`` as
    (path, code)."""

    def __init__(self) -> None:
        self.closes: queue.Queue[tuple[str, int]] = queue.Queue()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.websocket(scope, receive, send)
        elif scope["type"] == "http":
            await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/sleep":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    while (await receive())["type"] != "http.disconnect":
                        pass
            return
        if scope["path"] == "/gzip":
            await _respond(send, GZIPPED, [(b"content-encoding", b"gzip"),
                                           (b"content-length", str(len(GZIPPED)).encode())])
            return
        echo = {"method": scope["method"], "path": scope["path"],
                "raw_path": scope["raw_path"].decode(), "query": scope["query_string"].decode(),
                "headers": _named(scope["headers"]), "body": body.hex(),
                "client": list(scope["client"])}
        await _respond(send, json.dumps(echo).encode(), [
            (b"content-type", b"application/json"), (b"keep-alive", b"timeout=5"),
            (b"connection", b"x-hop"), (b"x-hop", b"1"), (b"proxy-authenticate", b"Basic"),
            (b"x-kept", b"yes")])

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # websocket.connect
        if scope["path"] == "/refuse":
            await send({"type": "websocket.close", "code": 1008})
            return
        chosen = "hrana3" if "hrana3" in scope.get("subprotocols", []) else None
        await send({"type": "websocket.accept", "subprotocol": chosen})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.closes.put((scope["path"], message.get("code", 0)))
                return
            text = message.get("text")
            if text == "headers":
                seen = {"headers": _named(scope["headers"]), "path": scope["path"],
                        "query": scope["query_string"].decode()}
                await send({"type": "websocket.send", "text": json.dumps(seen)})
            elif text is not None and text.startswith("close:"):
                await send({"type": "websocket.close", "code": int(text[6:]), "reason": "bye"})
                return
            else:
                await send({"type": "websocket.send", "text": text,
                            "bytes": message.get("bytes")})


async def _respond(send: Send, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _named(headers: list[tuple[bytes, bytes]]) -> list[list[str]]:
    return [[k.decode(), v.decode()] for k, v in headers]


class Front:
    """The node the client reached: every WebSocket goes on to ``target``."""

    def __init__(self) -> None:
        self.forwarder = Forwarder(NODE, connect_timeout=1.0)
        self.target = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.forwarder.websocket(self.target, scope, receive, send)


def url_of(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


class Served:
    """An ASGI app under uvicorn on a loopback port of its own, in a background thread (the
    socket is bound here: no other process can take the port in between)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = url_of(self.sock)
        self.netloc = self.url.removeprefix("http://")
        config = uvicorn.Config(app, log_level="warning", lifespan="off",
                                ws="websockets-sansio")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            self.thread.join(0.01)
        assert self.server.started
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def leader() -> Iterator[tuple[Leader, Served]]:
    app = Leader()
    with Served(app) as served:
        yield app, served


@pytest.fixture(scope="module")
def front() -> Iterator[tuple[Front, Served]]:
    app = Front()
    with Served(app) as served:
        yield app, served


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A port bound but not listening: connecting to it is refused while the test runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield url_of(sock)


def forwarding(work: Callable[[Forwarder], Awaitable[T]], **options: Any) -> T:
    """``work`` with a started Forwarder of NODE, on an event loop of its own."""
    async def main() -> T:
        forwarder = Forwarder(NODE, **options)
        forwarder.start()
        try:
            return await work(forwarder)
        finally:
            await forwarder.close()

    return asyncio.run(main())


def echoed(url: str, method: str, path_qs: str, headers: list[tuple[bytes, bytes]],
           body: bytes = b"") -> tuple[int, dict[bytes, bytes], dict[str, Any]]:
    """(status, response headers, what the leader saw) of one forwarded request."""
    status, answer, content = forwarding(
        lambda f: f.request(url, method, path_qs, headers, body))
    assert len(answer) == len(dict(answer))  # no header twice
    return status, dict(answer), json.loads(content)


# -- HTTP --------------------------------------------------------------------------------------


def test_method_path_query_body_and_headers_pass_through(leader: tuple[Leader, Served]) -> None:
    url = leader[1].url
    body = b"\x00\xff binary"
    status, headers, seen = echoed(url, "PUT", "/echo/a%20b?x=1&y=%2F", [
        (b"authorization", TOKEN.encode()), (b"x-custom", b"v"),
        (b"content-type", b"application/octet-stream")], body)
    assert status == 201 and headers[b"content-type"] == b"application/json"
    assert (seen["method"], seen["path"], seen["raw_path"], seen["query"]) == (
        "PUT", "/echo/a b", "/echo/a%20b", "x=1&y=%2F")
    assert bytes.fromhex(seen["body"]) == body
    # exactly the client's end-to-end headers, the hop header and what HTTP needs: none of
    # the HTTP client's defaults (accept-encoding, user-agent)
    assert dict(seen["headers"]) == {
        "host": leader[1].netloc, "content-length": str(len(body)),
        "authorization": TOKEN, "x-custom": "v", "content-type": "application/octet-stream",
        FORWARDED.decode(): NODE}


def test_hop_by_hop_headers_are_stripped_both_ways(leader: tuple[Leader, Served]) -> None:
    hop = [(b"Connection", b"keep-alive, X-Hop"), (b"x-hop", b"1"), (b"keep-alive", b"300"),
           (b"te", b"trailers"), (b"trailer", b"x"), (b"transfer-encoding", b"chunked"),
           (b"upgrade", b"websocket"), (b"host", b"evil.example"), (b"content-length", b"999"),
           (b"proxy-authorization", b"Basic eA=="), (FORWARDED, b"spoofed")]
    _, headers, seen = echoed(leader[1].url, "POST", "/echo", [*hop, (b"x-end", b"1")],
                              b"{}")
    assert sorted(name for name, _ in seen["headers"]) == sorted(
        ["host", "content-length", "x-end", FORWARDED.decode()])
    sent = dict(seen["headers"])
    assert (sent["host"], sent["content-length"]) == (leader[1].netloc, "2")
    assert sent[FORWARDED.decode()] == NODE
    # the leader answered with its own hop-by-hop headers, chunked: none come back, nor a
    # length (the app sets its own)
    assert headers[b"x-kept"] == b"yes"
    assert not {b"connection", b"keep-alive", b"x-hop", b"proxy-authenticate",
                b"transfer-encoding", b"content-length"} & set(headers)


def test_the_body_comes_back_as_sent_not_decoded(leader: tuple[Leader, Served]) -> None:
    status, headers, body = forwarding(lambda f: f.request(
        leader[1].url, "GET", "/gzip", [(b"accept-encoding", b"gzip")], b""))
    assert (status, body) == (201, GZIPPED)
    assert (b"content-encoding", b"gzip") in headers


def test_sequential_requests_reuse_a_kept_alive_connection(
        leader: tuple[Leader, Served]) -> None:
    async def fifty(forwarder: Forwarder) -> set[tuple[str, int]]:
        clients = set()
        for i in range(50):
            _, _, content = await forwarder.request(leader[1].url, "GET", f"/echo?i={i}", [],
                                                    b"")
            clients.add(tuple(json.loads(content)["client"]))
        return clients

    assert len(forwarding(fifty)) == 1


def _unavailable(url: str, path: str, **options: Any) -> ShoalError:
    with pytest.raises(ShoalError) as info:
        forwarding(lambda f: f.request(url, "POST", path, [(b"authorization", TOKEN.encode())],
                                       b"{}"), **options)
    err = info.value
    assert (err.code, err.status) == (Code.LEADER_UNAVAILABLE, 503)
    assert url in err.message and TOKEN not in json.dumps(err.body())
    assert err.__cause__ is None and err.__suppress_context__  # nothing holds the request
    return err


def test_a_leader_nobody_listens_for_is_unavailable_and_nothing_was_sent(
        dead_url: str) -> None:
    err = _unavailable(dead_url, "/v1/databases/d/query", connect_timeout=1.0)
    assert "could not be reached" in err.message and "not sent" in err.message
    assert "unknown" not in err.message


def test_a_leader_that_does_not_answer_in_time_leaves_the_outcome_unknown(
        leader: tuple[Leader, Served]) -> None:
    err = _unavailable(leader[1].url, "/sleep", timeout=0.3)
    assert "did not answer within 0.3 s" in err.message and "unknown" in err.message


def test_requests_to_a_node_that_left_the_view_are_given_up_on_at_once(
        leader: tuple[Leader, Served]) -> None:
    """A paused leader holds what was sent to it: once it is out of the view, abandon
    answers those requests (outcome unknown); requests to a node still in it go on, and
    the task that was waiting is usable afterwards."""
    url = leader[1].url

    async def work(f: Forwarder) -> tuple[BaseException | None, bool, int]:
        waiting = asyncio.ensure_future(f.request(url, "POST", "/sleep", [], b""))
        await asyncio.sleep(0.2)
        f.abandon({url})  # still in the view: nothing given up
        await asyncio.sleep(0.1)
        kept = not waiting.done()
        f.abandon(set())
        try:
            await waiting
        except ShoalError as exc:
            error: BaseException | None = exc
        else:
            error = None
        status, _, _ = await f.request(url, "GET", "/", [], b"")  # the pool still serves
        return error, kept, status

    error, kept, status = forwarding(work, timeout=5.0)
    assert kept
    assert isinstance(error, ShoalError) and error.code == Code.LEADER_UNAVAILABLE
    assert "left the cluster" in error.message and "unknown" in error.message
    assert 200 <= status < 300


def test_a_connection_lost_after_sending_leaves_the_outcome_unknown() -> None:
    """A leader that reads the request, then closes the connection without an answer."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def hang_up() -> None:
            conn, _ = listener.accept()
            with conn:
                data = b""
                while not data.endswith(b"\r\n\r\n{}"):  # all of it: no reset, a clean close
                    data += conn.recv(65536)

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        err = _unavailable(url_of(listener), "/x")
        thread.join(5)
    assert "lost the connection" in err.message and "unknown" in err.message


# -- WebSocket ---------------------------------------------------------------------------------


@contextlib.contextmanager
def through(front: tuple[Front, Served], target: str, path: str = "/db/x",
            **options: Any) -> Iterator[ClientConnection]:
    front[0].target = target
    with ws_connect(f"ws://{front[1].netloc}{path}", proxy=None, open_timeout=5,
                    **options) as conn:
        yield conn


def test_websocket_messages_both_ways_with_the_subprotocol_and_headers(
        leader: tuple[Leader, Served], front: tuple[Front, Served]) -> None:
    with through(front, leader[1].url, "/db/x?q=1", subprotocols=["hrana3", "hrana2"],
                 additional_headers={"Authorization": TOKEN, "x-namespace": "x"}) as conn:
        assert conn.subprotocol == "hrana3"
        conn.send("hello")
        assert conn.recv(timeout=5) == "hello"
        conn.send(b"\x00\x01\xff")
        assert conn.recv(timeout=5) == b"\x00\x01\xff"
        conn.send("headers")
        seen = json.loads(conn.recv(timeout=5))
    assert (seen["path"], seen["query"]) == ("/db/x", "q=1")
    headers = dict(seen["headers"])
    assert headers["authorization"] == TOKEN and headers["x-namespace"] == "x"
    assert headers[FORWARDED.decode()] == NODE
    assert headers["sec-websocket-protocol"] == "hrana3, hrana2"
    assert [name for name, _ in seen["headers"]].count("sec-websocket-key") == 1


def test_websocket_to_a_leader_nobody_listens_for_closes_1013(
        front: tuple[Front, Served], dead_url: str) -> None:
    with through(front, dead_url, subprotocols=["hrana3"]) as conn, \
            pytest.raises(ConnectionClosed) as info:
        conn.recv(timeout=5)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (1013, "LEADER_UNAVAILABLE")


def test_the_leaders_close_code_reaches_the_client(
        leader: tuple[Leader, Served], front: tuple[Front, Served]) -> None:
    with through(front, leader[1].url) as conn, pytest.raises(ConnectionClosed) as info:
        conn.send("close:4000")
        conn.recv(timeout=5)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "bye")


def test_the_clients_close_code_reaches_the_leader(
        leader: tuple[Leader, Served], front: tuple[Front, Served]) -> None:
    with through(front, leader[1].url, "/db/closing") as conn:
        conn.send("ping")
        assert conn.recv(timeout=5) == "ping"  # the connection to the leader is up
        conn.close(4001, "done")
    while (closed := leader[0].closes.get(timeout=5))[0] != "/db/closing":
        pass  # another test's connection
    assert closed == ("/db/closing", 4001)


def test_an_upgrade_the_leader_refuses_is_refused(
        leader: tuple[Leader, Served], front: tuple[Front, Served]) -> None:
    with pytest.raises(InvalidStatus) as info, through(front, leader[1].url, "/refuse"):
        pass
    assert info.value.response.status_code == 403


def test_a_leader_lost_mid_connection_closes_1013(front: tuple[Front, Served]) -> None:
    """The leader's connection drops without a close frame (1006, never sent): the client
    is told to try again later."""
    def drop(conn: ServerConnection) -> None:
        conn.recv(timeout=5)
        conn.socket.shutdown(socket.SHUT_RDWR)

    with serve(drop, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        with through(front, url_of(server.socket)) as conn, \
                pytest.raises(ConnectionClosed) as info:
            conn.send("bye")
            conn.recv(timeout=5)
        server.shutdown()
        thread.join(5)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (1013, "LEADER_UNAVAILABLE")


def test_no_log_line_carries_the_token_even_at_debug(
        leader: tuple[Leader, Served], front: tuple[Front, Served],
        caplog: pytest.LogCaptureFixture) -> None:
    """websockets logs each header and frame at DEBUG, Authorization included: not ours."""
    caplog.set_level(logging.DEBUG)
    quiet = logging.getLogger("test.client")  # the test's own client logs what it sends
    quiet.setLevel(logging.INFO)
    echoed(leader[1].url, "GET", "/echo", [(b"authorization", TOKEN.encode())])
    with through(front, leader[1].url, additional_headers={"Authorization": TOKEN},
                 logger=quiet) as conn:
        conn.send(TOKEN)  # a frame (a Hrana hello carries a JWT)
        assert conn.recv(timeout=5) == TOKEN
    assert caplog.records  # debug logging was on (httpcore's lines, among others)
    assert "secret-token-xyz" not in caplog.text
