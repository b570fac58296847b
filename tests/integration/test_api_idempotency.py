"""Native API, what needs a real `shoal serve`: Idempotency-Keys survive a restart. The rest
runs in process: tests/server/test_api_idempotency.py."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.api_support import (
    connect,
    error_of,
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


