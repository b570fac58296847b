"""Native API: creating, listing, describing and deleting databases; usage counters."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.integration.api_support import (
    assert_serving,
    connect,
    error_of,
    make_token,
    ok,
    query,
    rows,
    wait_until,
)
from tests.support.server import ServerProcess

_seq = itertools.count()



def _utc(text: str) -> datetime:
    """Parse an API time: ISO 8601 in UTC, written with a Z."""
    assert text.endswith("Z"), text
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert when.utcoffset() == timedelta(0)
    return when


def test_create_returns_the_database(admin: httpx.Client) -> None:
    name = f"create{next(_seq)}"
    before = datetime.now(UTC)
    body = ok(admin.post("/v1/databases", json={"name": name}), 201)
    assert body["name"] == name
    assert body["txid"] == 0
    assert [b["name"] for b in body["branches"]] == ["main"]
    created = _utc(body["created_at"])
    assert before - timedelta(seconds=5) <= created <= datetime.now(UTC) + timedelta(seconds=5)


def test_create_existing_is_409(admin: httpx.Client, new_db: Callable[[], str]) -> None:
    name = new_db()
    ok(query(admin, name, "CREATE TABLE t(a)", "INSERT INTO t VALUES (1)"))
    error_of(admin.post("/v1/databases", json={"name": name}), 409, "DATABASE_EXISTS")
    assert rows(admin, name, "SELECT a FROM t") == [[1]]  # the existing one is untouched


@pytest.mark.parametrize("name", [
    "../x", "", "Orders", "a" * 64, "-x", "_x", "a b", "a/b", "a.b", "é", "x\n", "..",
])
def test_invalid_names_are_refused(server: ServerProcess, admin: httpx.Client, name: str) -> None:
    error_of(admin.post("/v1/databases", json={"name": name}), 400, "INVALID_NAME")
    listed = {d["name"] for d in ok(admin.get("/v1/databases?limit=1000"))["databases"]}
    assert name not in listed
    assert not (server.data_dir / "x").exists()


def test_longest_valid_name(admin: httpx.Client) -> None:
    name = (f"n{next(_seq)}-" + "z" * 63)[:63]
    assert len(name) == 63
    assert ok(admin.post("/v1/databases", json={"name": name}), 201)["name"] == name
    assert ok(admin.get(f"/v1/databases/{name}"))["name"] == name
    assert admin.delete(f"/v1/databases/{name}").status_code == 204


@pytest.mark.parametrize("path", [
    "/v1/databases/Orders", "/v1/databases/%2E%2E", "/v1/databases/" + "a" * 64,
    "/v1/databases/_x/usage", "/v1/databases/A/query",
])
def test_invalid_names_in_paths(admin: httpx.Client, path: str) -> None:
    method = "POST" if path.endswith("/query") else "GET"
    r = admin.request(method, path, json={"statements": ["SELECT 1"]} if method == "POST" else None)
    error_of(r, 400, "INVALID_NAME")


@pytest.mark.parametrize(("body", "code"), [
    (b'{"name": 12}', "INVALID_REQUEST"),
    (b'{"name": null}', "INVALID_REQUEST"),
    (b'{}', "INVALID_REQUEST"),
    (b'{"name": "fine", "size": 3}', "INVALID_REQUEST"),
    (b'["fine"]', "INVALID_REQUEST"),
    (b'{"name": "fine"', "INVALID_JSON"),
    (b"name=fine", "INVALID_JSON"),
    (b"", "INVALID_JSON"),
])
def test_create_with_bad_bodies(admin: httpx.Client, body: bytes, code: str) -> None:
    r = admin.post("/v1/databases", content=body, headers={"content-type": "application/json"})
    error_of(r, 400, code)
    error_of(admin.get("/v1/databases/fine"), 404, "DATABASE_NOT_FOUND")
    assert_serving(admin)


def test_list_holds_objects(admin: httpx.Client, new_db: Callable[[], str]) -> None:
    name = new_db()
    page = ok(admin.get("/v1/databases"))
    assert set(page) >= {"databases"}
    found = [d for d in page["databases"] if d["name"] == name]
    assert len(found) == 1
    _utc(found[0]["created_at"])


def test_list_pagination(admin: httpx.Client) -> None:
    prefix = f"page{next(_seq)}-"
    mine = [f"{prefix}{i}" for i in range(5)]
    for name in reversed(mine):
        ok(admin.post("/v1/databases", json={"name": name}), 201)

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = ok(admin.get("/v1/databases", params=params))
        pages += 1
        assert len(page["databases"]) <= 2
        for d in page["databases"]:
            _utc(d["created_at"])
        seen += [d["name"] for d in page["databases"]]
        cursor = page.get("next_cursor")
        if cursor is None:
            break
        assert pages < 1000
    assert len(seen) == len(set(seen)), "a database was listed twice"
    assert seen == sorted(seen)
    assert [n for n in seen if n.startswith(prefix)] == mine

    after = ok(admin.get("/v1/databases", params={"limit": 2, "cursor": mine[1]}))
    assert [d["name"] for d in after["databases"]] == mine[2:4]
    tail = ok(admin.get("/v1/databases", params={"limit": 1000, "cursor": mine[-1]}))
    assert all(d["name"] > mine[-1] for d in tail["databases"])


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "abc", "1.5"])
def test_list_bad_limit(admin: httpx.Client, limit: str) -> None:
    error_of(admin.get("/v1/databases", params={"limit": limit}), 400, "INVALID_REQUEST")


def test_list_with_scoped_token_shows_granted_databases(
        server: ServerProcess, admin: httpx.Client, new_db: Callable[[], str]) -> None:
    granted, other = new_db(), new_db()
    _, token = make_token(admin, [granted], "read")
    with connect(server, token) as c:
        listed = [d["name"] for d in ok(c.get("/v1/databases?limit=1000"))["databases"]]
    assert granted in listed
    assert other not in listed


def test_info_fields(admin: httpx.Client) -> None:
    name = f"info{next(_seq)}"
    created = ok(admin.post("/v1/databases", json={"name": name}), 201)
    info = ok(admin.get(f"/v1/databases/{name}"))
    assert info["name"] == name
    assert info["created_at"] == created["created_at"]
    _utc(info["created_at"])
    assert isinstance(info["size_bytes"], int) and info["size_bytes"] >= 0
    branches = info["branches"]
    assert [b["name"] for b in branches] == ["main"]
    _utc(branches[0]["created_at"])
    assert info["txid"] == 0
    assert info["open"] is False  # created, never used: not open

    ok(query(admin, name, "CREATE TABLE t(a)"))
    ok(query(admin, name, {"sql": "INSERT INTO t VALUES (?)", "args": ["x" * 10000]}))
    info = ok(admin.get(f"/v1/databases/{name}"))
    assert info["txid"] == 2
    assert info["open"] is True
    assert info["size_bytes"] > 10000


def test_closed_database_reports_closed_and_reopens(
        start_server: Callable[..., ServerProcess]) -> None:
    node = start_server(idle_timeout=0.3)
    with connect(node) as c:
        ok(c.post("/v1/databases", json={"name": "idle"}), 201)
        ok(query(c, "idle", "CREATE TABLE t(a)", "INSERT INTO t VALUES (7)"))
        assert ok(c.get("/v1/databases/idle"))["open"] is True
        wait_until(lambda: ok(c.get("/v1/databases/idle"))["open"] is False,
                   what="the idle database to close")
        info = ok(c.get("/v1/databases/idle"))
        assert info["txid"] == 1  # read from the closed file
        assert info["size_bytes"] > 0
        assert rows(c, "idle", "SELECT a FROM t") == [[7]]
        assert ok(c.get("/v1/databases/idle"))["open"] is True


def test_delete_then_get_is_404_and_recreate_is_empty(
        server: ServerProcess, admin: httpx.Client, new_db: Callable[[], str]) -> None:
    name = new_db()
    ok(query(admin, name, "CREATE TABLE t(a)", "INSERT INTO t VALUES (1), (2)"))
    r = admin.delete(f"/v1/databases/{name}")
    assert r.status_code == 204
    assert r.content == b""
    error_of(admin.get(f"/v1/databases/{name}"), 404, "DATABASE_NOT_FOUND")
    error_of(query(admin, name, "SELECT 1"), 404, "DATABASE_NOT_FOUND")
    error_of(admin.get(f"/v1/databases/{name}/usage"), 404, "DATABASE_NOT_FOUND")
    error_of(admin.post(f"/v1/databases/{name}/transactions"), 404, "DATABASE_NOT_FOUND")
    error_of(admin.delete(f"/v1/databases/{name}"), 404, "DATABASE_NOT_FOUND")
    listed = {d["name"] for d in ok(admin.get("/v1/databases?limit=1000"))["databases"]}
    assert name not in listed

    ok(admin.post("/v1/databases", json={"name": name}), 201)
    info = ok(admin.get(f"/v1/databases/{name}"))
    assert info["txid"] == 0
    err = error_of(query(admin, name, "SELECT * FROM t"), 400, "SQLITE_ERROR")
    assert "no such table" in err["message"]
    usage = ok(admin.get(f"/v1/databases/{name}/usage"))
    assert (usage["rows_read"], usage["rows_written"]) == (0, 0)
    assert_serving(admin, name)


def test_delete_with_an_open_transaction(admin: httpx.Client, new_db: Callable[[], str]) -> None:
    name = new_db()
    ok(query(admin, name, "CREATE TABLE t(a)"))
    tx = ok(admin.post(f"/v1/databases/{name}/transactions"), 201)["id"]
    ok(admin.post(f"/v1/databases/{name}/transactions/{tx}/query",
                  json={"statements": ["INSERT INTO t VALUES (1)"]}))
    assert admin.delete(f"/v1/databases/{name}").status_code == 204
    r = admin.post(f"/v1/databases/{name}/transactions/{tx}/commit")
    assert r.status_code in (404, 410), r.text
    ok(admin.post("/v1/databases", json={"name": name}), 201)
    assert ok(admin.get(f"/v1/databases/{name}"))["txid"] == 0
    error_of(query(admin, name, "SELECT * FROM t"), 400, "SQLITE_ERROR")


def test_missing_database(admin: httpx.Client) -> None:
    name = f"missing{next(_seq)}"
    error_of(admin.get(f"/v1/databases/{name}"), 404, "DATABASE_NOT_FOUND")
    error_of(query(admin, name, "SELECT 1"), 404, "DATABASE_NOT_FOUND")
    error_of(admin.get(f"/v1/databases/{name}/usage"), 404, "DATABASE_NOT_FOUND")
    error_of(admin.post(f"/v1/databases/{name}/transactions"), 404, "DATABASE_NOT_FOUND")
    error_of(admin.delete(f"/v1/databases/{name}"), 404, "DATABASE_NOT_FOUND")


def test_databases_are_isolated(admin: httpx.Client, new_db: Callable[[], str]) -> None:
    a, b = new_db(), new_db()
    ok(query(admin, a, "CREATE TABLE t(a)", "INSERT INTO t VALUES (1)"))
    error_of(query(admin, b, "SELECT * FROM t"), 400, "SQLITE_ERROR")


def test_usage_counters(admin: httpx.Client, new_db: Callable[[], str]) -> None:
    name = new_db()
    empty = ok(admin.get(f"/v1/databases/{name}/usage"))
    assert {k: empty[k] for k in ("database", "rows_read", "rows_written", "queries",
                                  "storage_bytes")} == {
        "database": name, "rows_read": 0, "rows_written": 0, "queries": 0, "storage_bytes": 0}
    assert empty["limits"]["size_bytes"] == 0 and empty["period"]["rows_read"] == 0
    ok(query(admin, name, "CREATE TABLE t(a)"))
    ok(query(admin, name, "INSERT INTO t VALUES (1), (2), (3)"))
    ok(query(admin, name, "SELECT * FROM t"))
    error_of(query(admin, name, "SELECT * FROM nowhere"), 400, "SQLITE_ERROR")
    usage = ok(admin.get(f"/v1/databases/{name}/usage"))
    assert usage["rows_written"] == 3
    assert usage["rows_read"] == 3
    assert usage["queries"] == 3
    assert usage["storage_bytes"] > 0
    ok(query(admin, name, "SELECT * FROM t WHERE a > 1", "UPDATE t SET a = a + 10"))
    usage = ok(admin.get(f"/v1/databases/{name}/usage"))
    assert (usage["rows_read"], usage["rows_written"], usage["queries"]) == (5, 6, 4)


def test_state_survives_restart(start_server: Callable[..., ServerProcess]) -> None:
    node = start_server()
    with connect(node) as c:
        ok(c.post("/v1/databases", json={"name": "keep"}), 201)
        ok(query(c, "keep", "CREATE TABLE t(a)", "INSERT INTO t VALUES (1)"))
        ok(query(c, "keep", "SELECT * FROM t"))
        before = ok(c.get("/v1/databases/keep"))
        usage = ok(c.get("/v1/databases/keep/usage"))
    node.restart()
    with connect(node) as c:
        after = ok(c.get("/v1/databases/keep"))
        assert (after["name"], after["created_at"], after["txid"]) == \
            (before["name"], before["created_at"], before["txid"])
        usage_after = ok(c.get("/v1/databases/keep/usage"))
        counters = ("rows_read", "rows_written", "queries")
        assert [usage_after[k] for k in counters] == [usage[k] for k in counters]
        assert usage_after["storage_bytes"] > 0  # the WAL may be checkpointed: sizes differ
        assert rows(c, "keep", "SELECT a FROM t") == [[1]]
        assert ok(query(c, "keep", "INSERT INTO t VALUES (2)"))["meta"]["txid"] == 2
