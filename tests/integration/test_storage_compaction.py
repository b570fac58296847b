"""Compaction on real nodes: VACUUM as one commit, the log re-based on a snapshot.

A database filled with ~20 MB and then emptied gives its pages back: the local file
shrinks, restore reaches both sides of the compaction, a node on an empty disk hydrates
the compacted state, and neither an open read transaction nor a kill -9 right after the
answer loses a row.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.client import AsyncClient, AuthError, Client, NotFound
from shoal.storage import open_store
from tests.integration.api_support import error_of, make_token
from tests.support.lease import release_killed_lease
from tests.support.server import ServerProcess
from tests.support.storage import iso, ok, rows, run

MB = 1 << 20
DB = "big"


def compact(http: httpx.Client, db: str = DB, branch: str = "main") -> httpx.Response:
    base = f"/v1/databases/{db}" + ("" if branch == "main" else f"/branches/{branch}")
    return http.post(base + "/compact")


def local_file(node: ServerProcess, db: str = DB, branch: str = "main") -> Path:
    found = list(node.data_dir.glob(f"**/{db}/{branch}.db"))
    assert len(found) == 1, found
    return found[0]


def fill(http: httpx.Client, db: str = DB, megabytes: int = 20) -> int:
    """~megabytes of 1 KiB rows, in commits of 5 MB; returns the txid of the last."""
    run(http, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT, pad BLOB)")
    per = 5 * MB // 1024
    txid = 0
    for start in range(0, megabytes * 1024, per):
        txid = run(http, db, {
            "sql": "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n "
                   "WHERE i + 1 < ?) INSERT INTO t SELECT i, 'row' || i, randomblob(1000) "
                   "FROM n", "args": [start, start + per]})["meta"]["txid"]
    return int(txid)


def count(http: httpx.Client, db: str = DB) -> int:
    return int(rows(http, db, "SELECT count(*) FROM t")[0][0])


def test_compaction_shrinks_the_file_and_keeps_every_point_of_history(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    store = (tmp_path / "store").as_uri()
    node = start_server(tmp_path / "a", store=store, durability="remote")
    with node.client() as http:
        ok(http.post("/v1/databases", json={"name": DB}), 201)
        filled = fill(http)
        full = count(http)
        before_delete = time.time()
        time.sleep(0.05)
        deleted = run(http, DB, "DELETE FROM t WHERE id >= 100")["meta"]["txid"]
        assert deleted == filled + 1
        size_before = os.path.getsize(local_file(node))
        done = ok(compact(http))
        assert set(done) == {"database", "branch", "txid", "bytes_before", "bytes_after",
                             "storage_bytes", "ms"}
        assert (done["database"], done["branch"], done["txid"]) == (DB, "main", deleted + 1)
        assert done["bytes_before"] > 20 * MB and done["bytes_after"] < done["bytes_before"] / 4
        size_after = os.path.getsize(local_file(node))
        assert size_after == done["bytes_after"] and size_after < size_before / 4
        print(f"compaction: {done['bytes_before']} -> {done['bytes_after']} bytes "
              f"in {done['ms']} ms (file {size_before} -> {size_after})")
        assert count(http) == 100
        assert rows(http, DB, "PRAGMA integrity_check") == [["ok"]]
        after_compaction = time.time()
        time.sleep(0.05)
        # writes go on: the next txid is the compaction's + 1
        written = run(http, DB, "INSERT INTO t VALUES (5000000, 'after', x'00')")["meta"]
        assert written["txid"] == done["txid"] + 1
        head = written["txid"]
        # restore to after the compaction: its snapshot, the compacted state
        out = ok(http.post(f"/v1/databases/{DB}/restore",
                           json={"branch": "main", "timestamp": iso(after_compaction)}))
        assert out["restored_to"]["txid"] == done["txid"]
        assert count(http) == 100
        latest = out["kept_as"]  # the state before the restore: the write after compaction
        assert count_branch(http, latest) == 101
        # restore to before the delete: the snapshots and segments from before it
        out = ok(http.post(f"/v1/databases/{DB}/restore",
                           json={"branch": "main", "timestamp": iso(before_delete)}))
        assert out["restored_to"]["txid"] == filled
        assert count(http) == full
        assert rows(http, DB, "PRAGMA integrity_check") == [["ok"]]
        # and back to the latest state, through the branch that kept it
        kept = out["kept_as"]
        assert count_branch(http, kept) == 100
        bookmark = run(http, DB, "SELECT 1", branch=kept)["meta"]["bookmark"]
        ok(http.post(f"/v1/databases/{DB}/restore", json={"branch": "main",
                                                           "bookmark": bookmark}))
        assert count(http) == 100
    node.stop()
    # a node on an empty disk, same store: the compacted state, same txid
    fresh = start_server(tmp_path / "b", store=store, durability="remote")
    with fresh.client() as http:
        assert count(http) == 100
        meta = run(http, DB, "SELECT max(id) FROM t")["meta"]
        assert meta["txid"] == done["txid"]
        assert os.path.getsize(local_file(fresh)) < size_before / 4
        assert count_branch(http, latest) == 101
        assert run(http, DB, "SELECT 1", branch=latest)["meta"]["txid"] == head


def count_branch(http: httpx.Client, branch: str) -> int:
    return int(rows(http, DB, "SELECT count(*) FROM t", branch=branch)[0][0])


def test_only_an_admin_of_the_database_compacts(server: ServerProcess,
                                                 admin: httpx.Client) -> None:
    name = "compact-access"
    ok(admin.post("/v1/databases", json={"name": name}), 201)
    run(admin, name, "CREATE TABLE t(v)", "INSERT INTO t VALUES (1)")
    for access in ("read", "write"):
        _, token = make_token(admin, [name], access)
        with server.client(token) as http:
            error_of(compact(http, name), 403, "FORBIDDEN")
    _, other = make_token(admin, ["elsewhere"], "admin")
    with server.client(other) as http:
        error_of(compact(http, name), 403, "FORBIDDEN")
    _, token = make_token(admin, [name], "admin")
    with server.client(token) as http:
        txid = run(http, name, "SELECT 1")["meta"]["txid"]
        done = ok(compact(http, name))
        assert done["txid"] == txid + 1 and done["branch"] == "main"
        ok(http.post(f"/v1/databases/{name}/branches", json={"name": "side"}), 201)
        side = ok(compact(http, name, "side"))
        assert (side["branch"], side["txid"]) == ("side", done["txid"] + 1)
        assert rows(http, name, "SELECT v FROM t", branch="side") == [[1]]
        error_of(compact(http, name, "nope"), 404, "BRANCH_NOT_FOUND")
    error_of(compact(admin, "no-such-db"), 404, "DATABASE_NOT_FOUND")
    error_of(compact(admin, "Bad Name"), 400, "INVALID_NAME")


def test_an_open_read_transaction_never_loses_a_row(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    node = start_server(tmp_path / "a", store=(tmp_path / "store").as_uri(),
                        durability="remote", busy_timeout=0.5)
    with node.client() as http:
        ok(http.post("/v1/databases", json={"name": DB}), 201)
        fill(http, megabytes=5)
        run(http, DB, "DELETE FROM t WHERE id >= 10")
        tx = ok(http.post(f"/v1/databases/{DB}/transactions", json={"mode": "read"}), 201)
        txq = f"/v1/databases/{DB}/transactions/{tx['id']}"
        assert ok(http.post(txq + "/query", json={"statements": [
            "SELECT count(*) FROM t"]}))["results"][0]["rows"] == [[10]]
        r = compact(http)
        if r.status_code == 409:  # refused before it changed anything
            assert "read transactions" in error_of(r, 409, "DATABASE_BUSY")["message"]
        else:
            assert r.status_code == 200, r.text
        assert ok(http.post(txq + "/query", json={"statements": [
            "SELECT count(*) FROM t"]}))["results"][0]["rows"] == [[10]]
        ok(http.post(txq + "/rollback"))
        run(http, DB, "INSERT INTO t VALUES (100, 'between', x'00')")
        done = ok(compact(http))
        after = run(http, DB, "INSERT INTO t VALUES (101, 'after', x'00')")["meta"]["txid"]
        assert after == done["txid"] + 1
    node.kill()
    node.start()
    with node.client() as http:
        assert rows(http, DB, "SELECT id FROM t ORDER BY id") == \
            [[i] for i in range(10)] + [[100], [101]]
        assert run(http, DB, "SELECT 1")["meta"]["txid"] == after
        assert rows(http, DB, "PRAGMA integrity_check") == [["ok"]]


def test_kill_9_right_after_the_answer_keeps_the_compacted_state(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    store = (tmp_path / "store").as_uri()
    node = start_server(tmp_path / "a", store=store, durability="remote")
    with node.client() as http:
        ok(http.post("/v1/databases", json={"name": DB}), 201)
        fill(http, megabytes=5)
        run(http, DB, "DELETE FROM t WHERE id >= 10")
        done = ok(compact(http))
        node.kill()
    node.start()
    with node.client() as http:
        assert count(http) == 10
        assert run(http, DB, "SELECT 1")["meta"]["txid"] == done["txid"]
        assert os.path.getsize(local_file(node)) <= done["bytes_after"]
        assert run(http, DB, "INSERT INTO t VALUES (10, 'x', x'00')")["meta"]["txid"] == \
            done["txid"] + 1
    node.kill()  # and the store alone holds it all (remote durability)
    release_killed_lease(node, open_store(store))  # tests/support/lease.py
    fresh = start_server(tmp_path / "b", store=store, durability="remote")
    with fresh.client() as http:
        assert count(http) == 11
        assert rows(http, DB, "PRAGMA integrity_check") == [["ok"]]


def test_a_local_only_node_compacts(start_server: Callable[..., ServerProcess],
                                    tmp_path: Path) -> None:
    node = start_server(tmp_path / "data", store="none")
    with node.client() as http:
        ok(http.post("/v1/databases", json={"name": DB}), 201)
        fill(http, megabytes=5)
        deleted = run(http, DB, "DELETE FROM t WHERE id >= 10")["meta"]["txid"]
        size_before = os.path.getsize(local_file(node))
        done = ok(compact(http))
        assert done["txid"] == deleted + 1
        assert done["bytes_after"] < done["bytes_before"] / 4
        assert os.path.getsize(local_file(node)) < size_before / 4
    node.restart()
    with node.client() as http:
        assert count(http) == 10
        assert run(http, DB, "SELECT 1")["meta"]["txid"] == done["txid"]


def test_client_and_cli(server: ServerProcess, admin: httpx.Client) -> None:
    name = "compact-tools"
    ok(admin.post("/v1/databases", json={"name": name}), 201)
    run(admin, name, "CREATE TABLE t(v)")
    with Client(server.url, server.admin_token) as c:
        done = c.compact(name)
        assert done["database"] == name and done["txid"] == 2
        with pytest.raises(NotFound):
            c.compact("no-such-db")
        _, token = make_token(admin, [name], "write")
        with Client(server.url, token) as writer, pytest.raises(AuthError):
            writer.compact(name)

    async def use_async() -> dict[str, Any]:
        async with AsyncClient(server.url, server.admin_token) as c:
            return await c.compact(name)

    assert asyncio.run(use_async())["txid"] == 3
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env.update(SHOAL_URL=server.url, SHOAL_TOKEN=server.admin_token, COLUMNS="200")

    def shoal(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True,
                              text=True, timeout=60, env=env)

    out = shoal("db", "compact", name, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["txid"] == 4
    out = shoal("db", "compact", name)
    assert out.returncode == 0 and "bytes_after" in out.stdout, out.stderr
    out = shoal("db", "compact", "no-such-db")
    assert out.returncode != 0 and "DATABASE_NOT_FOUND" in out.stderr
