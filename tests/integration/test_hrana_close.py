"""Closing a Hrana stream, or losing its client, rolls its transaction back at once.

A write transaction holds the database's write lock: until it ends, every other writer
waits (up to busy_timeout, then DATABASE_BUSY). These tests leave one open in each way a
client can (a close_stream, a dropped TCP connection, an HTTP client that gives up) and
time the next writer's transaction, on a node with the usual timeouts (busy_timeout
5 s, transaction_timeout 10 s): it must commit well under a second, not after them.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.integration.api_support import make_token
from tests.integration.api_support import rows as native_rows
from tests.integration.hrana_support import execute, ok, pipeline
from tests.support.hrana_ws import Hrana, ws_url
from tests.support.server import ServerProcess

ENDLESS = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r"
AT_ONCE = 1.0  # seconds: generous; the lock used to be held for busy_timeout (5 s) or more


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("close") / "data",
                           {"busy_timeout": 5.0, "transaction_timeout": 10.0})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def admin(node: ServerProcess) -> Iterator[httpx.Client]:
    with node.client() as c:
        yield c


_names = iter(range(1, 1 << 30))


@pytest.fixture
def db(admin: httpx.Client) -> str:
    name = f"close{next(_names)}"
    assert admin.post("/v1/databases", json={"name": name}).status_code == 201
    r = admin.post(f"/v1/databases/{name}/query", json={"statements": ["CREATE TABLE t (x)"]})
    assert r.status_code == 200, r.text
    return name


@pytest.fixture
def open_ws(node: ServerProcess) -> Iterator[Callable[..., Hrana]]:
    with contextlib.ExitStack() as stack:

        def make(db: str, token: str | None = None) -> Hrana:
            h = Hrana(stack.enter_context(connect(
                ws_url(node, f"/db/{db}"), subprotocols=["hrana3"],  # type: ignore[list-item]
                open_timeout=10)))
            assert h.hello(token or node.admin_token) == {"type": "hello_ok"}
            return h

        yield make


def in_transaction(h: Hrana, stream_id: int, value: str) -> None:
    """Open a write transaction on the stream and write in it, as @libsql/client does."""
    h.ok({"type": "open_stream", "stream_id": stream_id})
    h.ok({"type": "batch", "stream_id": stream_id, "batch": {"steps": [
        {"stmt": {"sql": "BEGIN IMMEDIATE"}},
        {"stmt": {"sql": "INSERT INTO t VALUES (?)", "args": [{"type": "text", "value": value}]},
         "condition": {"type": "ok", "step": 0}}]}})


def drop(h: Hrana) -> None:
    """Cut the TCP connection (RST, no close frame), as a killed client does."""
    h.conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    h.conn.socket.close()


def next_writer(admin: httpx.Client, db: str) -> float:
    """Seconds another client's write transaction takes to commit."""
    started = time.perf_counter()
    results, _ = pipeline(admin, db, [execute("BEGIN IMMEDIATE"),
                                      execute("INSERT INTO t VALUES ('next')"),
                                      execute("COMMIT"), {"type": "close"}])
    for result in results:
        ok(result)
    return time.perf_counter() - started


def only_the_next_writer(admin: httpx.Client, db: str) -> None:
    assert native_rows(admin, db, "SELECT x FROM t") == [["next"]]


def test_close_stream_rolls_back_at_once(open_ws: Callable[..., Hrana], admin: httpx.Client,
                                         db: str) -> None:
    h = open_ws(db)
    in_transaction(h, 1, "closed")
    assert h.ok({"type": "close_stream", "stream_id": 1}) == {"type": "close_stream"}
    assert next_writer(admin, db) < AT_ONCE
    only_the_next_writer(admin, db)


def test_close_stream_rolls_back_with_a_revoked_token(open_ws: Callable[..., Hrana],
                                                      admin: httpx.Client, db: str) -> None:
    """Closing only frees: it is taken even once the token is revoked (other requests are
    refused at once), so the transaction does not wait for transaction_timeout."""
    token_id, token = make_token(admin, [db], "write")
    h = open_ws(db, token)
    in_transaction(h, 1, "revoked")
    assert admin.delete(f"/v1/tokens/{token_id}").status_code == 204
    h.error({"type": "execute", "stream_id": 1, "stmt": {"sql": "SELECT 1"}}, "TOKEN_REVOKED")
    assert h.ok({"type": "close_stream", "stream_id": 1}) == {"type": "close_stream"}
    assert next_writer(admin, db) < AT_ONCE
    only_the_next_writer(admin, db)


@pytest.mark.parametrize("busy", ["idle", "running a statement", "another stream waits"])
def test_a_dropped_connection_rolls_back_at_once(open_ws: Callable[..., Hrana],
                                                 admin: httpx.Client, db: str,
                                                 busy: str) -> None:
    """The client goes away without a word. Its streams' work is for nobody: a running
    statement is interrupted, a wait for the write lock (here, behind the connection's
    own transaction: it waited busy_timeout before) is given up, the transaction rolled
    back."""
    h = open_ws(db)
    in_transaction(h, 1, "dropped")
    if busy == "running a statement":
        h.request({"type": "execute", "stream_id": 1, "stmt": {"sql": ENDLESS}})
    elif busy == "another stream waits":
        h.ok({"type": "open_stream", "stream_id": 2})
        h.request({"type": "execute", "stream_id": 2, "stmt": {"sql": "BEGIN IMMEDIATE"}})
    time.sleep(0.2)  # let it start (if it has not, the drop is only easier)
    drop(h)
    assert next_writer(admin, db) < AT_ONCE
    only_the_next_writer(admin, db)


def test_an_http_pipeline_whose_client_left_rolls_back_at_once(node: ServerProcess,
                                                               admin: httpx.Client,
                                                               db: str) -> None:
    """Nobody will send the baton back: the stream is dropped (and its transaction rolled
    back) when the pipeline ends, not when it would have expired."""
    body: dict[str, Any] = {"requests": [execute("BEGIN IMMEDIATE"),
                                         execute("INSERT INTO t VALUES ('left')"),
                                         execute(ENDLESS)]}
    with node.client() as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post(f"/db/{db}/v2/pipeline", json=body, timeout=0.5)
    assert next_writer(admin, db) < AT_ONCE
    only_the_next_writer(admin, db)
