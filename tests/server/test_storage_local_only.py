"""A local-only node (`store = "none"`): no object store, no commit log, no history.

Data endpoints work on main and survive a restart (the data directory is the
only copy); everything that needs history answers 409 HISTORY_DISABLED. In process; a
data directory that refuses the other kind of node (a start that fails, its log):
tests/integration/test_storage_local_only.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.server import ServerProcess
from tests.support.storage import ok, rows, run


def refused(r: httpx.Response) -> None:
    assert r.status_code == 409, (r.status_code, r.text)
    assert r.json()["error"]["code"] == "HISTORY_DISABLED"


def test_main_works_and_survives_a_restart_without_a_store(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    node = start_server(tmp_path / "data", store="none")
    with node.client() as http:
        ok(http.post("/v1/databases", json={"name": "plain"}), 201)
        run(http, "plain", "CREATE TABLE t(v TEXT)", "INSERT INTO t VALUES ('a')")
        meta = run(http, "plain", "INSERT INTO t VALUES ('b')")["meta"]
        assert meta["txid"] == 2
        info = ok(http.get("/v1/databases/plain"))
        assert [b["name"] for b in info["branches"]] == ["main"]
        token = ok(http.post("/v1/tokens", json={"databases": ["plain"], "access": "read"}),
                   201)
        with node.client(token["token"]) as reader:
            assert rows(reader, "plain", "SELECT count(*) FROM t") == [[2]]
        assert http.delete(f"/v1/tokens/{token['id']}").status_code in (200, 204)
        with node.client(token["token"]) as reader:
            assert reader.post("/v1/databases/plain/query",
                               json={"statements": ["SELECT 1"]}).status_code == 401
    assert not (tmp_path / "data" / "store").exists()
    node.restart()
    with node.client() as http:
        assert rows(http, "plain", "SELECT v FROM t ORDER BY v") == [["a"], ["b"]]
        assert run(http, "plain", "INSERT INTO t VALUES ('c')")["meta"]["txid"] == 3
        assert http.delete("/v1/databases/plain").status_code == 204
        assert http.get("/v1/databases/plain").status_code == 404
    assert not (tmp_path / "data" / "store").exists()


def test_history_endpoints_answer_history_disabled(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    node = start_server(tmp_path / "data", store="none")
    with node.client() as http:
        ok(http.post("/v1/databases", json={"name": "nohist"}), 201)
        bookmark = run(http, "nohist", "CREATE TABLE t(v)")["meta"]["bookmark"]
        refused(http.post("/v1/databases/nohist/branches", json={"name": "b1"}))
        refused(http.get("/v1/databases/nohist/branches"))
        refused(http.get("/v1/databases/nohist/branches/b1"))
        refused(http.delete("/v1/databases/nohist/branches/b1"))
        refused(http.post("/v1/databases/nohist/branches/b1/reset"))
        refused(http.post("/v1/databases/nohist/branches/b1/query",
                          json={"statements": ["SELECT 1"]}))
        refused(http.post("/v1/databases/nohist/restore",
                          json={"branch": "main", "bookmark": bookmark}))
        refused(http.post("/v1/databases/nohist/restore",
                          json={"timestamp": "2026-01-01T00:00:00Z"}))
        refused(http.get("/v1/databases/nohist/history"))
        # an unknown database is still DATABASE_NOT_FOUND, not HISTORY_DISABLED
        missing = http.get("/v1/databases/nope/history")
        assert missing.status_code == 404, missing.text
        # main is untouched by the refusals
        assert rows(http, "nohist", "SELECT count(*) FROM t") == [[0]]
