"""Helpers for the Hrana protocol tests (tests/integration/test_hrana_*.py)."""

from __future__ import annotations

import base64
from typing import Any

import httpx


def value(v: Any) -> dict[str, Any]:
    """A Python value as a Hrana value."""
    if v is None:
        return {"type": "null"}
    if isinstance(v, bool | int):
        return {"type": "integer", "value": str(int(v))}
    if isinstance(v, float):
        return {"type": "float", "value": v}
    if isinstance(v, str):
        return {"type": "text", "value": v}
    return {"type": "blob", "base64": base64.b64encode(v).decode()}


def plain(v: dict[str, Any]) -> Any:
    """A Hrana value as a Python value, checking its exact JSON shape."""
    kind = v["type"]
    if kind == "null":
        assert set(v) == {"type"}, v
        return None
    if kind == "integer":
        assert isinstance(v["value"], str), v
        return int(v["value"])
    if kind == "float":
        assert isinstance(v["value"], float | int), v
        return float(v["value"])
    if kind == "text":
        assert isinstance(v["value"], str), v
        return v["value"]
    assert kind == "blob" and set(v) == {"type", "base64"}, v
    return base64.b64decode(v["base64"] + "=" * (-len(v["base64"]) % 4))


def stmt(sql: str, *args: Any, named: dict[str, Any] | None = None,
         want_rows: bool | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"sql": sql}
    if args:
        out["args"] = [value(a) for a in args]
    if named:
        out["named_args"] = [{"name": k, "value": value(v)} for k, v in named.items()]
    if want_rows is not None:
        out["want_rows"] = want_rows
    return out


def execute(sql: str, *args: Any, **kw: Any) -> dict[str, Any]:
    return {"type": "execute", "stmt": stmt(sql, *args, **kw)}


def post(client: httpx.Client, db: str | None, body: Any, path: str = "v2/pipeline",
         headers: dict[str, str] | None = None) -> httpx.Response:
    url = f"/db/{db}/{path}" if db else f"/{path}"
    return client.post(url, json=body, headers=headers)


def pipeline(client: httpx.Client, db: str, requests: list[dict[str, Any]],
             baton: str | None = None, path: str = "v2/pipeline",
             headers: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Run a pipeline that must succeed at the HTTP level: (results, next baton)."""
    r = post(client, db, {"baton": baton, "requests": requests}, path, headers)
    assert r.status_code == 200, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"baton", "base_url", "results"}, body
    assert len(body["results"]) == len(requests)
    return body["results"], body["baton"]


def ok(result: dict[str, Any]) -> dict[str, Any]:
    assert result["type"] == "ok", result
    response: dict[str, Any] = result["response"]
    return response


def err(result: dict[str, Any], code: str) -> dict[str, Any]:
    assert result["type"] == "error", result
    error: dict[str, Any] = result["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def rows(result: dict[str, Any]) -> list[list[Any]]:
    """The rows of an execute result as Python values."""
    res = ok(result)["result"]
    return [[plain(v) for v in row] for row in res["rows"]]


def http_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An HTTP-level Hrana error: {"message", "code"} at the top (and Shoal's envelope)."""
    assert r.status_code == status, (r.status_code, r.text)
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert body["error"]["code"] == code
    return body
