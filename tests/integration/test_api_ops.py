"""What needs a real `shoal serve` of the operations endpoints: its access log (stderr)
never holds a token or an argument. The rest runs in process: tests/server/test_api_ops.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.api_support import (
    connect,
    error_of,
    make_token,
    ok,
    query,
    rows,
    wait_until,
)
from tests.support.server import ServerProcess

# -- /health ---------------------------------------------------------------------------------

# -- /metrics --------------------------------------------------------------------------------

# -- routing ---------------------------------------------------------------------------------

# -- access log ------------------------------------------------------------------------------
def test_access_log_never_holds_tokens_or_arguments(
        start_server: Callable[..., ServerProcess], monkeypatch: pytest.MonkeyPatch) -> None:
    # As in production: stderr is a pipe or file, not unbuffered by the environment.
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    node = start_server(access_log=True, admin_token="admin-secret-token-value-0123456789")
    secret_arg = "s3cr3t-argument-value"
    with connect(node) as admin:
        ok(admin.post("/v1/databases", json={"name": "logged"}), 201)
        _, token = make_token(admin, ["logged"], "write")
        ok(query(admin, "logged", "CREATE TABLE secret_table(a)"))
        with connect(node, token) as c:
            ok(query(c, "logged", {"sql": "INSERT INTO secret_table VALUES (?)",
                                   "args": [secret_arg]}))
            ok(query(c, "logged", {"sql": "SELECT * FROM secret_table WHERE a = :a",
                                   "args": {"a": secret_arg}}))
            error_of(query(c, "logged", {"sql": "SELECT * FROM nowhere WHERE a = ?",
                                         "args": [secret_arg]}), 400, "SQLITE_ERROR")
        with connect(node, token + "x") as bad:
            error_of(bad.get("/v1/databases/logged"), 401, "TOKEN_INVALID")
        assert rows(admin, "logged", "SELECT count(*) FROM secret_table") == [[1]]
        ok(admin.get("/v1/databases/logged/usage"))  # the last request

        def access_lines() -> list[dict[str, Any]]:
            assert node.log_path is not None
            out = []
            for line in node.log_path.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"route"' in line:
                    out.append(json.loads(line))
            return out

        # lines are written as requests finish, not when a buffer fills or the node stops
        wait_until(lambda: any(e["route"] == "/v1/databases/{db}/usage"
                               for e in access_lines()), timeout=10,
                   what="the access log line of the last request")
    lines = access_lines()
    assert len(lines) >= 9
    for entry in lines:
        assert {"method", "route", "status", "ms"} <= set(entry)
        assert isinstance(entry["status"], int)
    queries = [e for e in lines if e["route"] == "/v1/databases/{db}/query"]
    assert {e["status"] for e in queries} == {200, 400}
    assert all(e["database"] == "logged" for e in queries)
    assert any(e["status"] == 401 for e in lines)
    assert node.log_path is not None
    node.stop()
    everything = node.log_path.read_text(errors="replace")
    for secret in (node.admin_token, token, token.split(".")[2], secret_arg):
        assert secret not in everything
    for entry in lines:
        assert "secret_table" not in json.dumps(entry)  # no SQL either


