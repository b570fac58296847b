"""Hrana over WebSocket against a real node: hello, streams, cursors, stored SQL, ordering."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.integration.api_support import make_token
from tests.integration.api_support import rows as native_rows
from tests.integration.hrana_support import plain, stmt, value
from tests.support.hrana_ws import Hrana, ws_url
from tests.support.server import ServerProcess


@pytest.fixture
def db(new_db: Callable[[], str], admin: httpx.Client) -> str:
    name = new_db()
    r = admin.post(f"/v1/databases/{name}/query",
                   json={"statements": ["CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT UNIQUE)"]})
    assert r.status_code == 200
    return name


@pytest.fixture
def open_ws(server: ServerProcess) -> Iterator[Callable[..., Hrana]]:
    with contextlib.ExitStack() as stack:

        def make(path: str, protocols: tuple[str, ...] = ("hrana3",),
                 headers: dict[str, str] | None = None) -> Hrana:
            conn = stack.enter_context(connect(
                ws_url(server, path), subprotocols=list(protocols) or None,  # type: ignore[arg-type]
                additional_headers=headers, open_timeout=10))
            return Hrana(conn)

        yield make


@pytest.fixture
def hrana(open_ws: Callable[..., Hrana], server: ServerProcess, db: str) -> Hrana:
    h = open_ws(f"/db/{db}")
    assert h.conn.subprotocol == "hrana3"
    assert h.hello(server.admin_token) == {"type": "hello_ok"}
    return h


def test_streams_execute_batch_sequence_describe(hrana: Hrana, admin: httpx.Client,
                                                 db: str) -> None:
    hrana.ok({"type": "open_stream", "stream_id": 1})
    res = hrana.ok({"type": "execute", "stream_id": 1,
                    "stmt": stmt("INSERT INTO t (x) VALUES (?)", "a")})["result"]
    assert res["affected_row_count"] == 1 and res["last_insert_rowid"] == "1"
    assert res["replication_index"] is not None
    assert hrana.rows(1, "SELECT x, ?, ? FROM t", 2**62, b"\x01") == [["a", 2**62, b"\x01"]]
    batch = hrana.ok({"type": "batch", "stream_id": 1, "batch": {"steps": [
        {"stmt": stmt("INSERT INTO t (x) VALUES ('a')")},
        {"condition": {"type": "error", "step": 0}, "stmt": stmt("SELECT 'handled'")},
        {"condition": {"type": "is_autocommit"}, "stmt": stmt("SELECT 1")},
    ]}})["result"]
    assert batch["step_errors"][0]["code"] == "SQLITE_CONSTRAINT"
    assert batch["step_results"][1]["rows"] == [[value("handled")]]
    assert batch["step_results"][2] is not None
    hrana.ok({"type": "sequence", "stream_id": 1,
              "sql": "INSERT INTO t (x) VALUES ('b'); INSERT INTO t (x) VALUES ('c');"})
    desc = hrana.ok({"type": "describe", "stream_id": 1, "sql": "SELECT x FROM t WHERE id = :id"})
    assert desc["result"]["params"] == [{"name": ":id"}]
    assert desc["result"]["cols"] == [{"name": "x", "decltype": "TEXT"}]
    err = hrana.error({"type": "execute", "stream_id": 1, "stmt": stmt("SELECT * FROM nope")},
                      "SQLITE_ERROR")
    assert "nope" in err["message"]
    hrana.ok({"type": "close_stream", "stream_id": 1})
    hrana.error({"type": "execute", "stream_id": 1, "stmt": stmt("SELECT 1")}, "STREAM_NOT_FOUND")
    assert native_rows(admin, db, "SELECT x FROM t ORDER BY id") == [["a"], ["b"], ["c"]]


def test_stored_sql_belongs_to_the_connection(hrana: Hrana) -> None:
    hrana.ok({"type": "store_sql", "sql_id": 1, "sql": "SELECT ? + 1"})
    hrana.error({"type": "store_sql", "sql_id": 1, "sql": "SELECT 0"}, "SQL_EXISTS")
    for stream_id in (1, 2):  # every stream of the connection sees it
        hrana.ok({"type": "open_stream", "stream_id": stream_id})
        res = hrana.ok({"type": "execute", "stream_id": stream_id,
                        "stmt": {"sql_id": 1, "args": [value(stream_id)]}})
        assert res["result"]["rows"] == [[value(stream_id + 1)]]
    # resolved on arrival: a close_sql right behind an execute does not pull the text away
    rid = hrana.request({"type": "execute", "stream_id": 1, "stmt": {"sql_id": 1,
                                                                     "args": [value(9)]}})
    hrana.request({"type": "close_sql", "sql_id": 1})
    assert hrana.wait(rid)["response"]["result"]["rows"] == [[value(10)]]
    hrana.error({"type": "execute", "stream_id": 2, "stmt": {"sql_id": 1}}, "SQL_NOT_FOUND")
    hrana.ok({"type": "close_sql", "sql_id": 1})  # closing an unknown id is fine


def test_transactions_and_get_autocommit(hrana: Hrana, admin: httpx.Client, db: str) -> None:
    hrana.ok({"type": "open_stream", "stream_id": 1})
    assert hrana.ok({"type": "get_autocommit", "stream_id": 1})["is_autocommit"] is True
    hrana.rows(1, "BEGIN")
    hrana.rows(1, "INSERT INTO t (x) VALUES ('in-tx')")
    assert hrana.ok({"type": "get_autocommit", "stream_id": 1})["is_autocommit"] is False
    assert native_rows(admin, db, "SELECT count(*) FROM t") == [[0]]
    hrana.rows(1, "COMMIT")
    assert native_rows(admin, db, "SELECT x FROM t") == [["in-tx"]]
    hrana.rows(1, "BEGIN IMMEDIATE")
    hrana.rows(1, "INSERT INTO t (x) VALUES ('rolled')")
    hrana.rows(1, "ROLLBACK")
    assert native_rows(admin, db, "SELECT count(*) FROM t") == [[1]]


def test_responses_come_back_out_of_order(hrana: Hrana, admin: httpx.Client, db: str) -> None:
    for stream_id in (1, 2, 3):
        hrana.ok({"type": "open_stream", "stream_id": stream_id})
    hrana.rows(1, "BEGIN IMMEDIATE")  # stream 1 holds the write lock
    blocked = hrana.request({"type": "execute", "stream_id": 2,
                             "stmt": stmt("INSERT INTO t (x) VALUES ('waited')")})
    fast = hrana.request({"type": "execute", "stream_id": 3, "stmt": stmt("SELECT 42")})
    first = hrana.recv()
    assert first["request_id"] == fast  # answered while the earlier request still waits
    commit = hrana.request({"type": "execute", "stream_id": 1, "stmt": stmt("COMMIT")})
    assert hrana.wait(commit)["type"] == "response_ok"
    assert hrana.wait(blocked)["type"] == "response_ok"
    assert native_rows(admin, db, "SELECT x FROM t") == [["waited"]]


def test_requests_on_one_stream_run_in_order(hrana: Hrana) -> None:
    hrana.request({"type": "open_stream", "stream_id": 5})
    ids = [hrana.request({"type": "execute", "stream_id": 5,
                          "stmt": stmt("INSERT INTO t (x) VALUES (?)", str(i))})
           for i in range(20)]
    last = hrana.request({"type": "execute", "stream_id": 5,
                          "stmt": stmt("SELECT group_concat(x, ',') FROM t")})
    for rid in ids:
        assert hrana.wait(rid)["type"] == "response_ok"
    rows = hrana.wait(last)["response"]["result"]["rows"]
    assert plain(rows[0][0]) == ",".join(str(i) for i in range(20))


def test_cursors(hrana: Hrana) -> None:
    hrana.ok({"type": "open_stream", "stream_id": 1})
    hrana.ok({"type": "open_cursor", "stream_id": 1, "cursor_id": 7, "batch": {"steps": [
        {"stmt": stmt("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c "
                      "WHERE i < 5) SELECT i FROM c")},
        {"stmt": stmt("SELECT * FROM nowhere")},
    ]}})
    entries: list[dict[str, Any]] = []
    done = False
    while not done:
        page = hrana.ok({"type": "fetch_cursor", "cursor_id": 7, "max_count": 3})
        assert len(page["entries"]) <= 3
        entries += page["entries"]
        done = page["done"]
    assert [e["type"] for e in entries] == ["step_begin"] + ["row"] * 5 + \
        ["step_end", "step_error"]
    assert [plain(e["row"][0]) for e in entries if e["type"] == "row"] == [1, 2, 3, 4, 5]
    assert hrana.ok({"type": "fetch_cursor", "cursor_id": 7, "max_count": 10}) == \
        {"type": "fetch_cursor", "entries": [], "done": True}
    hrana.ok({"type": "close_cursor", "cursor_id": 7})
    hrana.error({"type": "fetch_cursor", "cursor_id": 7, "max_count": 1}, "CURSOR_NOT_FOUND")
    hrana.error({"type": "open_cursor", "stream_id": 1, "cursor_id": 8, "batch": {"steps": [
        {"condition": {"type": "ok", "step": 3}, "stmt": stmt("SELECT 1")}]}},
        "BATCH_COND_BAD_STEP")
    hrana.error({"type": "fetch_cursor", "cursor_id": 8, "max_count": 1}, "BATCH_COND_BAD_STEP")


@pytest.mark.parametrize(("offered", "chosen"), [
    (("hrana3", "hrana2", "hrana1"), "hrana3"),
    (("hrana2", "hrana1"), "hrana2"),
    (("hrana1",), "hrana1"),
    ((), None),
])
def test_subprotocol_negotiation(open_ws: Callable[..., Hrana], server: ServerProcess, db: str,
                                 offered: tuple[str, ...], chosen: str | None) -> None:
    h = open_ws(f"/db/{db}/", offered)
    assert h.conn.subprotocol == chosen
    assert h.hello(server.admin_token) == {"type": "hello_ok"}
    h.ok({"type": "open_stream", "stream_id": 1})
    assert h.rows(1, "SELECT 1") == [[1]]


def test_unsupported_subprotocols_and_urls_are_refused(server: ServerProcess, db: str) -> None:
    for path, protocol in ((f"/db/{db}", "hrana3-protobuf"), ("/v1/databases", "hrana3")):
        with pytest.raises(InvalidStatus), connect(
                ws_url(server, path), subprotocols=[protocol],  # type: ignore[list-item]
                open_timeout=10):
            pass


def test_hello_errors_and_database_addressing(open_ws: Callable[..., Hrana],
                                              server: ServerProcess, admin: httpx.Client,
                                              db: str) -> None:
    h = open_ws(f"/db/{db}")
    msg = h.hello("forged")
    assert msg["type"] == "hello_error" and msg["error"]["code"] == "TOKEN_INVALID"
    with pytest.raises(ConnectionClosed):
        h.recv()
    h = open_ws("/")
    msg = h.hello(server.admin_token)  # the root names no database
    assert msg["type"] == "hello_error" and msg["error"]["code"] == "DATABASE_REQUIRED"
    h = open_ws("/", headers={"x-namespace": db})
    assert h.hello(server.admin_token) == {"type": "hello_ok"}
    h.ok({"type": "open_stream", "stream_id": 1})
    assert h.rows(1, "SELECT count(*) FROM t") == [[0]]
    _, scoped = make_token(admin, [db], "write")
    h = open_ws("/")
    assert h.hello(scoped) == {"type": "hello_ok"}  # a token for one database picks it
    _, other = make_token(admin, [db + "-x"], "write")
    h = open_ws(f"/db/{db}")
    msg = h.hello(other)
    assert msg["type"] == "hello_error" and msg["error"]["code"] == "FORBIDDEN"
    h = open_ws(f"/db/{db}", headers={"Authorization": f"Bearer {server.admin_token}"})
    assert h.hello(None) == {"type": "hello_ok"}  # the upgrade request carried the token
    h = open_ws(f"/db/{db}")
    assert h.hello(None)["error"]["code"] == "UNAUTHORIZED"


def test_read_tokens_revocation_and_re_hello(open_ws: Callable[..., Hrana], admin: httpx.Client,
                                             server: ServerProcess, db: str) -> None:
    read_id, read_token = make_token(admin, [db], "read")
    h = open_ws(f"/db/{db}")
    assert h.hello(read_token) == {"type": "hello_ok"}
    h.ok({"type": "open_stream", "stream_id": 1})
    assert h.rows(1, "SELECT count(*) FROM t") == [[0]]
    h.error({"type": "execute", "stream_id": 1, "stmt": stmt("INSERT INTO t (x) VALUES ('no')")},
            "SQLITE_READONLY")
    _, write_token = make_token(admin, [db], "write")
    assert h.hello(write_token) == {"type": "hello_ok"}  # re-authenticate on the same connection
    h.rows(1, "INSERT INTO t (x) VALUES ('yes')")
    assert admin.delete(f"/v1/tokens/{read_id}").status_code == 204
    assert h.hello(read_token)["error"]["code"] == "TOKEN_REVOKED"
    assert native_rows(admin, db, "SELECT x FROM t") == [["yes"]]


def test_protocol_violations_close_the_connection(open_ws: Callable[..., Hrana],
                                                  server: ServerProcess, db: str) -> None:
    for payload in ("{not json", '{"type": "frobnicate"}',
                    '{"type": "request", "request_id": 1, "request": {"type": "nope"}}'):
        h = open_ws(f"/db/{db}")
        assert h.hello(server.admin_token) == {"type": "hello_ok"}
        h.conn.send(payload)
        with pytest.raises(ConnectionClosed) as info:
            h.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1002
    h = open_ws(f"/db/{db}")
    h.send({"type": "request", "request_id": 1, "request": {"type": "open_stream",
                                                            "stream_id": 1}})
    with pytest.raises(ConnectionClosed):  # a request before hello
        h.recv()
    h = open_ws(f"/db/{db}")
    assert h.hello(server.admin_token) == {"type": "hello_ok"}
    h.conn.send(b"\x00binary")
    with pytest.raises(ConnectionClosed):
        h.recv()
    h = open_ws(f"/db/{db}")  # the node keeps serving
    assert h.hello(server.admin_token) == {"type": "hello_ok"}


def test_a_dropped_connection_rolls_its_transactions_back(open_ws: Callable[..., Hrana],
                                                          server: ServerProcess,
                                                          admin: httpx.Client, db: str) -> None:
    h = open_ws(f"/db/{db}")
    assert h.hello(server.admin_token) == {"type": "hello_ok"}
    h.ok({"type": "open_stream", "stream_id": 1})
    h.rows(1, "BEGIN IMMEDIATE")
    h.rows(1, "INSERT INTO t (x) VALUES ('dropped')")
    h.conn.close()
    r = admin.post(f"/v1/databases/{db}/query",
                   json={"statements": ["INSERT INTO t (x) VALUES ('after')"]})
    assert r.status_code == 200, r.text  # the write lock came free
    assert native_rows(admin, db, "SELECT x FROM t") == [["after"]]


def test_branch_websocket_url(open_ws: Callable[..., Hrana], server: ServerProcess,
                              admin: httpx.Client, db: str) -> None:
    assert admin.post(f"/v1/databases/{db}/branches", json={"name": "feature"}).status_code == 201
    h = open_ws(f"/db/{db}/branches/feature")
    assert h.hello(server.admin_token) == {"type": "hello_ok"}
    h.ok({"type": "open_stream", "stream_id": 1})
    h.rows(1, "INSERT INTO t (x) VALUES ('branch only')")
    assert h.rows(1, "SELECT x FROM t") == [["branch only"]]
    assert native_rows(admin, db, "SELECT count(*) FROM t") == [[0]]
