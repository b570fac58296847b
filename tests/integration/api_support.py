"""Helpers shared by the native HTTP API integration tests (tests/integration/test_api_*.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.server import ServerProcess

# An httpx.Client builds an SSL context when made (~40 ms); share one across the tests.


def connect(node: ServerProcess, token: str | None = None) -> httpx.Client:
    """A client of node: with the admin token by default, none when token is ""."""
    return node.client(token)


def error_of(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert r is the error envelope with this status and code; return the error object."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"], err
    return err


def query(client: httpx.Client, db: str, *statements: Any,
          headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post(f"/v1/databases/{db}/query", json={"statements": list(statements)},
                       headers=headers)


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, (r.status_code, r.text)
    return r.json()


def rows(client: httpx.Client, db: str, sql: str, args: list[Any] | None = None) -> list[Any]:
    stmt: Any = sql if args is None else {"sql": sql, "args": args}
    out: list[Any] = ok(query(client, db, stmt))["results"][0]["rows"]
    return out


def scalar(client: httpx.Client, db: str, sql: str) -> Any:
    return rows(client, db, sql)[0][0]


def make_token(admin: httpx.Client, databases: list[str] | str, access: str,
               expires_in: int = 3600) -> tuple[str, str]:
    """(id, token) of a new token."""
    body = ok(admin.post("/v1/tokens", json={"databases": databases, "access": access,
                                              "expires_in": expires_in}), 201)
    return str(body["id"]), str(body["token"])


def assert_serving(client: httpx.Client, db: str | None = None) -> None:
    """The node still answers /health and, given a database, a normal query."""
    assert ok(client.get("/health")) == {"status": "ok"}
    if db is not None:
        assert rows(client, db, "SELECT 40 + 2") == [[42]]


def wait_until(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll check() until it holds; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def metric_value(text: str, name: str) -> float | None:
    """The value of an unlabelled sample in Prometheus text, or None."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None
