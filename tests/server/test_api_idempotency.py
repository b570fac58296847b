"""Native API: Idempotency-Key on writes — replay, reuse, scope, restarts and concurrency."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.api_support import (
    connect,
    error_of,
    make_token,
    ok,
    query,
    scalar,
)
from tests.support.server import ServerProcess

_keys = itertools.count()


def new_key() -> str:
    return f"key-{next(_keys)}-{time.time_ns()}"



@pytest.fixture
def db(admin: httpx.Client, new_db: Callable[[], str]) -> str:
    name = new_db()
    ok(query(admin, name, "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v)"))
    return name


def insert(client: httpx.Client, db: str, value: Any, key: str | None) -> httpx.Response:
    return query(client, db, {"sql": "INSERT INTO t(v) VALUES (?)", "args": [value]},
                 headers={"Idempotency-Key": key} if key else None)


def count(client: httpx.Client, db: str) -> int:
    return int(scalar(client, db, "SELECT count(*) FROM t"))


def test_same_key_and_body_replays_without_running(admin: httpx.Client, db: str) -> None:
    key = new_key()
    first = insert(admin, db, "a", key)
    ok(first)
    again = insert(admin, db, "a", key)
    assert again.status_code == 200
    assert again.content == first.content  # the stored response, byte for byte
    assert count(admin, db) == 1
    assert ok(query(admin, db, "SELECT 1"))["meta"]["txid"] == first.json()["meta"]["txid"]
    # without a key the same body runs again
    ok(insert(admin, db, "a", None))
    assert count(admin, db) == 2


def test_same_key_with_another_body_is_refused(admin: httpx.Client, db: str) -> None:
    key = new_key()
    ok(insert(admin, db, "a", key))
    error_of(insert(admin, db, "b", key), 422, "IDEMPOTENCY_KEY_REUSED")
    error_of(query(admin, db, "DELETE FROM t", headers={"Idempotency-Key": key}), 422,
             "IDEMPOTENCY_KEY_REUSED")
    # a read with the key is refused too: the key names the first request
    error_of(query(admin, db, "SELECT 1", headers={"Idempotency-Key": key}), 422,
             "IDEMPOTENCY_KEY_REUSED")
    assert count(admin, db) == 1
    assert ok(insert(admin, db, "a", key)).get("meta")  # the original still replays


def test_keys_are_scoped_to_database_and_token(server: ServerProcess, admin: httpx.Client,
                                               db: str, new_db: Callable[[], str]) -> None:
    other = new_db()
    ok(query(admin, other, "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v)"))
    key = new_key()
    ok(insert(admin, db, "a", key))
    ok(insert(admin, other, "a", key))  # another database: runs
    assert (count(admin, db), count(admin, other)) == (1, 1)
    _, token = make_token(admin, [db], "write")
    with connect(server, token) as c:
        ok(insert(c, db, "a", key))  # another token: runs
        ok(insert(c, db, "a", key))  # and is idempotent for that token
    assert count(admin, db) == 2


def test_failed_and_read_only_requests_record_nothing(admin: httpx.Client, db: str) -> None:
    key = new_key()
    body: Any = {"sql": "INSERT INTO u(v) VALUES (?)", "args": ["x"]}
    error_of(query(admin, db, body, headers={"Idempotency-Key": key}), 400, "SQLITE_ERROR")
    ok(query(admin, db, "CREATE TABLE u(v)"))
    ok(query(admin, db, body, headers={"Idempotency-Key": key}))  # the retry runs
    ok(query(admin, db, body, headers={"Idempotency-Key": key}))  # once
    assert scalar(admin, db, "SELECT count(*) FROM u") == 1

    read_key = new_key()
    ok(query(admin, db, "SELECT count(*) FROM t", headers={"Idempotency-Key": read_key}))
    ok(insert(admin, db, "after a read", read_key))
    assert count(admin, db) == 1


def test_overlong_key(admin: httpx.Client, db: str) -> None:
    error_of(insert(admin, db, "a", "k" * 256), 400, "INVALID_REQUEST")
    ok(insert(admin, db, "a", "k" * 255))
    assert count(admin, db) == 1


def test_concurrent_requests_with_one_key_apply_once(server: ServerProcess,
                                                     admin: httpx.Client, db: str) -> None:
    key = new_key()
    barrier = threading.Barrier(12)
    responses: list[httpx.Response] = []
    lock = threading.Lock()

    def send() -> None:
        with connect(server) as c:
            barrier.wait()
            r = insert(c, db, "once", key)
        with lock:
            responses.append(r)

    threads = [threading.Thread(target=send) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in responses] == [200] * 12
    assert len({r.content for r in responses}) == 1
    assert count(admin, db) == 1


def test_create_database_and_token_are_idempotent(admin: httpx.Client) -> None:
    key = new_key()
    name = f"idem-{next(_keys)}"
    first = admin.post("/v1/databases", json={"name": name}, headers={"Idempotency-Key": key})
    assert first.status_code == 201
    again = admin.post("/v1/databases", json={"name": name}, headers={"Idempotency-Key": key})
    assert (again.status_code, again.content) == (201, first.content)  # not 409
    error_of(admin.post("/v1/databases", json={"name": name + "x"},
                        headers={"Idempotency-Key": key}), 422, "IDEMPOTENCY_KEY_REUSED")
    error_of(admin.get(f"/v1/databases/{name}x"), 404, "DATABASE_NOT_FOUND")
    error_of(admin.post("/v1/databases", json={"name": name}), 409, "DATABASE_EXISTS")

    body = {"databases": [name], "access": "read", "expires_in": 60}
    made = admin.post("/v1/tokens", json=body, headers={"Idempotency-Key": key})
    assert made.status_code == 201
    remade = admin.post("/v1/tokens", json=body, headers={"Idempotency-Key": key})
    assert (remade.status_code, remade.content) == (201, made.content)
    error_of(admin.post("/v1/tokens", json=body | {"access": "write"},
                        headers={"Idempotency-Key": key}), 422, "IDEMPOTENCY_KEY_REUSED")


def test_commit_with_a_key_is_idempotent(admin: httpx.Client, db: str) -> None:
    key = new_key()
    tx = ok(admin.post(f"/v1/databases/{db}/transactions"), 201)["id"]
    path = f"/v1/databases/{db}/transactions/{tx}"
    ok(admin.post(path + "/query", json={"statements": ["INSERT INTO t(v) VALUES ('tx')"]}))
    first = admin.post(path + "/commit", headers={"Idempotency-Key": key})
    assert ok(first)["committed"] is True
    again = admin.post(path + "/commit", headers={"Idempotency-Key": key})  # a retry
    assert (again.status_code, again.content) == (200, first.content)
    assert count(admin, db) == 1
    # the same key on another transaction's commit is a different request
    tx2 = ok(admin.post(f"/v1/databases/{db}/transactions"), 201)["id"]
    path2 = f"/v1/databases/{db}/transactions/{tx2}"
    ok(admin.post(path2 + "/query", json={"statements": ["INSERT INTO t(v) VALUES ('tx2')"]}))
    error_of(admin.post(path2 + "/commit", headers={"Idempotency-Key": key}), 422,
             "IDEMPOTENCY_KEY_REUSED")
    ok(admin.post(path2 + "/commit"))
    assert count(admin, db) == 2



def test_keys_expire_after_the_ttl(start_server: Callable[..., ServerProcess]) -> None:
    node = start_server(idempotency_ttl=0.5)
    with connect(node) as c:
        ok(c.post("/v1/databases", json={"name": "ttl"}), 201)
        ok(query(c, "ttl", "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v)"))
        key = new_key()
        ok(insert(c, "ttl", "a", key))
        ok(insert(c, "ttl", "a", key))
        assert count(c, "ttl") == 1
        time.sleep(0.6)  # let the record outlive idempotency_ttl
        ok(insert(c, "ttl", "a", key))  # a new request now: it runs
        assert count(c, "ttl") == 2
        ok(insert(c, "ttl", "a", key))  # and is recorded again
        assert count(c, "ttl") == 2


def test_keys_survive_a_restart(server: ServerProcess, db: str) -> None:
    key, db_key, tx_key = new_key(), new_key(), new_key()
    name = f"idem-restart-{next(_keys)}"
    with connect(server) as c:
        first = insert(c, db, "a", key)
        ok(first)
        created = c.post("/v1/databases", json={"name": name},
                         headers={"Idempotency-Key": db_key})
        assert created.status_code == 201
        tx = ok(c.post(f"/v1/databases/{db}/transactions"), 201)["id"]
        tx_path = f"/v1/databases/{db}/transactions/{tx}"
        ok(c.post(tx_path + "/query", json={"statements": ["INSERT INTO t(v) VALUES ('t')"]}))
        committed = c.post(tx_path + "/commit", headers={"Idempotency-Key": tx_key})
        ok(committed)
    server.restart()
    with connect(server) as c:
        again = insert(c, db, "a", key)
        assert (again.status_code, again.content) == (200, first.content)
        error_of(insert(c, db, "b", key), 422, "IDEMPOTENCY_KEY_REUSED")
        recreated = c.post("/v1/databases", json={"name": name},
                           headers={"Idempotency-Key": db_key})
        assert (recreated.status_code, recreated.content) == (201, created.content)
        recommitted = c.post(tx_path + "/commit", headers={"Idempotency-Key": tx_key})
        assert (recommitted.status_code, recommitted.content) == (200, committed.content)
        assert count(c, db) == 2
