"""Hrana batons: single use, unforgeable, expiring, and honest about a server restart."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import httpx
import pytest

from tests.integration.api_support import make_token
from tests.integration.api_support import rows as native_rows
from tests.integration.hrana_support import err, execute, http_error, ok, pipeline, post, rows
from tests.support.server import ServerProcess


@pytest.fixture
def db(new_db: Callable[[], str], admin: httpx.Client) -> str:
    name = new_db()
    results, _ = pipeline(admin, name, [execute("CREATE TABLE t (x TEXT)")])
    ok(results[0])
    return name


def send(client: httpx.Client, db: str, baton: str | None, *sqls: str) -> httpx.Response:
    return post(client, db, {"baton": baton, "requests": [execute(s) for s in sqls]})


def test_a_baton_is_good_for_one_request(admin: httpx.Client, db: str) -> None:
    _, first = pipeline(admin, db, [execute("BEGIN"), execute("INSERT INTO t VALUES ('a')")])
    assert first
    results, second = pipeline(admin, db, [execute("SELECT count(*) FROM t")], first)
    assert rows(results[0]) == [[1]]
    assert second and second != first
    http_error(send(admin, db, first, "INSERT INTO t VALUES ('replayed')"), 400, "BATON_REUSED")
    results, third = pipeline(admin, db, [execute("SELECT count(*) FROM t")], second)
    assert rows(results[0]) == [[1]]  # the reused baton ran nothing and the stream is intact
    results, last = pipeline(admin, db, [execute("COMMIT"), {"type": "close"}], third)
    ok(results[0])
    assert last is None
    http_error(send(admin, db, third, "SELECT 1"), 400, "STREAM_CLOSED")
    assert native_rows(admin, db, "SELECT x FROM t") == [["a"]]


def test_forged_and_foreign_batons_are_refused(server: ServerProcess, admin: httpx.Client,
                                                db: str) -> None:
    _, baton = pipeline(admin, db, [execute("SELECT 1")])
    assert baton
    raw = bytearray(base64.urlsafe_b64decode(baton + "=" * (-len(baton) % 4)))
    for i in (0, 9, 17, 30, len(raw) - 1):  # boot id, stream id, sequence, expiry, MAC
        forged = bytearray(raw)
        forged[i] ^= 1
        token = base64.urlsafe_b64encode(bytes(forged)).decode().rstrip("=")
        http_error(send(admin, db, token, "SELECT 1"), 400, "BATON_INVALID")
    for junk in ("", "x", "not base64 !!", "A" * 200, baton[:-4]):
        http_error(send(admin, db, junk, "SELECT 1"), 400, "BATON_INVALID")
    # another token, or another database, cannot take over the stream
    _, token = make_token(admin, [db], "write")
    with server.client(token) as other:
        http_error(send(other, db, baton, "SELECT 1"), 400, "BATON_INVALID")
    other_db = admin.post("/v1/databases", json={"name": db + "-b"}).json()["name"]
    http_error(send(admin, other_db, baton, "SELECT 1"), 400, "BATON_INVALID")
    results, _ = pipeline(admin, db, [execute("SELECT 2")], baton)  # still the owner's
    assert rows(results[0]) == [[2]]


def test_an_idle_stream_expires_and_its_transaction_is_rolled_back(
        admin: httpx.Client, db: str) -> None:
    _, baton = pipeline(admin, db, [execute("BEGIN IMMEDIATE"),
                                    execute("INSERT INTO t VALUES ('lost')")])
    time.sleep(1.6)  # transaction_timeout is 1 s on this node
    body = http_error(send(admin, db, baton, "COMMIT"), 400, "STREAM_EXPIRED")
    assert "expired" in body["message"]
    assert native_rows(admin, db, "SELECT count(*) FROM t") == [[0]]
    results, _ = pipeline(admin, db, [execute("INSERT INTO t VALUES ('next')")])  # lock is free
    ok(results[0])


def test_an_idle_stream_that_held_nothing_goes_on_as_a_new_one(
        admin: httpx.Client, db: str) -> None:
    """libSQL's clients (Python's libsql, an embedded replica's writes) keep a stream between
    statements: after it expired holding no transaction and no stored SQL, its baton opens a
    new stream rather than failing every later statement."""
    _, baton = pipeline(admin, db, [execute("INSERT INTO t VALUES ('first')")])
    _, stored = pipeline(admin, db, [{"type": "store_sql", "sql_id": 1, "sql": "SELECT 1"}])
    time.sleep(1.6)  # transaction_timeout is 1 s on this node
    results, fresh = pipeline(admin, db, [execute("INSERT INTO t VALUES ('after')")], baton)
    ok(results[0])
    assert fresh and fresh != baton
    results, _ = pipeline(admin, db, [execute("SELECT count(*) FROM t")], fresh)
    assert rows(results[0]) == [[2]]
    body = http_error(send(admin, db, stored, "SELECT 1"), 400, "STREAM_EXPIRED")
    assert "expired" in body["message"]  # it held stored SQL: the client must know


def test_a_stream_kept_busy_does_not_expire(admin: httpx.Client, db: str) -> None:
    _, baton = pipeline(admin, db, [execute("BEGIN"), execute("INSERT INTO t VALUES ('kept')")])
    for _ in range(4):  # 4 x 0.4 s > transaction_timeout, but never idle that long
        time.sleep(0.4)
        results, baton = pipeline(admin, db, [execute("SELECT count(*) FROM t")], baton)
        assert rows(results[0]) == [[1]]
    results, _ = pipeline(admin, db, [execute("COMMIT"), {"type": "close"}], baton)
    ok(results[0])
    assert native_rows(admin, db, "SELECT x FROM t") == [["kept"]]


def test_the_engine_timing_out_a_transaction_is_reported_on_the_stream(
        admin: httpx.Client, db: str) -> None:
    _, baton = pipeline(admin, db, [execute("BEGIN"), execute("INSERT INTO t VALUES ('slow')")])
    time.sleep(0.7)
    results, baton = pipeline(admin, db, [{"type": "get_autocommit"}], baton)
    assert ok(results[0])["is_autocommit"] is False
    time.sleep(0.7)  # the engine saw 1.4 s without a statement in the transaction (> 1 s
    # plus its 0.25 s sweep), the stream only 0.7 s without a request
    results, baton = pipeline(admin, db, [execute("INSERT INTO t VALUES ('late')"),
                                          {"type": "get_autocommit"}], baton)
    err(results[0], "TRANSACTION_TIMEOUT")
    assert ok(results[1])["is_autocommit"] is True
    assert native_rows(admin, db, "SELECT count(*) FROM t") == [[0]]


def test_batons_after_a_restart_say_the_stream_is_gone(
        start_server: Callable[..., ServerProcess]) -> None:
    node = start_server(transaction_timeout=30)
    with node.client() as admin:
        assert admin.post("/v1/databases", json={"name": "r"}).status_code == 201
        pipeline(admin, "r", [execute("CREATE TABLE t (x TEXT)")])
        _, baton = pipeline(admin, "r", [execute("BEGIN"),
                                         execute("INSERT INTO t VALUES ('uncommitted')")])
    node.restart()
    with node.client() as admin:
        body = http_error(send(admin, "r", baton, "COMMIT"), 400, "STREAM_EXPIRED")
        assert "restarted" in body["message"]
        assert native_rows(admin, "r", "SELECT count(*) FROM t") == [[0]]
        # the baton key survives restarts: a new stream works and old batons stay unforgeable
        _, fresh = pipeline(admin, "r", [execute("SELECT 1")])
        results, _ = pipeline(admin, "r", [execute("SELECT 2")], fresh)
        assert rows(results[0]) == [[2]]
        assert (node.data_dir / "baton-key").stat().st_mode & 0o777 == 0o600
