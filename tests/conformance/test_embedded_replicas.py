"""Embedded replicas: the published libSQL clients keep a local copy of a Shoal database and
sync it over libSQL's HTTP sync protocol (server/sync.py, engine/sync.py).

Each client (PyPI ``libsql`` 0.1.11 and ``libsql-experimental`` 0.0.55, Node
``@libsql/client`` 0.18.0) runs in a process of its own per phase (tests/support/
replicas.py), reopening its replica from its files as an app that
restarts would. Every test ends with the replica's rows equal to the server's and
``PRAGMA integrity_check`` on a copy of the local file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shoal.log.retention import apply_retention
from shoal.storage import open_store
from tests.support.replicas import (
    ROWS,
    compact_between,
    intact,
    make,
    run_replica,
    server_rows,
    write,
)
from tests.support.server import ServerProcess

CLIENTS = ["libsql", "libsql_experimental", "node"]


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest, node_modules: Path) -> str:
    return str(request.param)


def replica(client: str, node: ServerProcess, file: Path, steps: list[dict[str, Any]], *,
            url: str | None = None, token: str | None = None, offline: bool = False
            ) -> list[Any]:
    """Run ``steps`` on the replica in ``file`` with ``client`` in a process of its own."""
    return run_replica(client, file, url or node.url,
                       node.admin_token if token is None else token, steps, offline)


def url(node: ServerProcess, db: str, branch: str | None = None) -> str:
    return f"{node.url}/db/{db}" + (f"/branches/{branch}" if branch else "")


def test_sync_and_write_through_the_replica(client: str, node: ServerProcess,
                                            tmp_path: Path) -> None:
    """Initial sync; a write through the replica seen at once locally and on the server; a
    transaction through the replica; a write on the server, then sync."""
    db = f"rw-{client.replace('_', '-')}"
    make(node, db)
    file = tmp_path / "local.db"
    first = replica(client, node, file, [
        {"sync": True}, {"query": ROWS},
        {"exec": "INSERT INTO t(v) VALUES ('via replica')"}, {"query": ROWS},
        {"tx": ["INSERT INTO t(v) VALUES ('tx1')", "INSERT INTO t(v) VALUES ('tx2')"]},
        {"query": ROWS}], url=url(node, db))
    assert first[1] == [[1, "a"], [2, "b"]]
    assert first[3] == [[1, "a"], [2, "b"], [3, "via replica"]]  # read-your-writes
    assert first[5] == server_rows(node, db)
    assert [row[1] for row in first[5]] == ["a", "b", "via replica", "tx1", "tx2"]
    write(node, db, "INSERT INTO t(v) VALUES ('server')", "UPDATE t SET v = 'A' WHERE id = 1")
    second = replica(client, node, file, [{"sync": True}, {"query": ROWS}], url=url(node, db))
    assert second[1] == server_rows(node, db)
    assert intact(file, tmp_path) == server_rows(node, db)


def test_compaction_then_a_fresh_and_a_stale_replica(client: str, node: ServerProcess,
                                                     tmp_path: Path) -> None:
    """Compaction (VACUUM: the log keeps that txid only as a snapshot) between syncs: the
    stale replica gets it as one commit of every page, a fresh one starts after it."""
    db = f"compact-{client.replace('_', '-')}"
    make(node, db)
    stale = tmp_path / "stale.db"
    replica(client, node, stale, [{"sync": True}], url=url(node, db))
    compact_between(node, db)
    fresh = tmp_path / "fresh.db"
    for file in (stale, fresh):
        got = replica(client, node, file, [{"sync": True}, {"query": ROWS}], url=url(node, db))
        assert got[1] == server_rows(node, db)
        assert intact(file, tmp_path) == got[1]


def test_a_restore_on_the_server_then_sync(client: str, node: ServerProcess,
                                           tmp_path: Path) -> None:
    """A restore moves the branch to a new timeline: a replica that synced the commits the
    restore took back lands on the restored state (the bridge), then follows on."""
    db = f"restore-{client.replace('_', '-')}"
    make(node, db)
    mark = write(node, db, "INSERT INTO t(v) VALUES ('kept')")
    write(node, db, "INSERT INTO t(v) VALUES ('taken back')", "DELETE FROM t WHERE id = 1")
    file = tmp_path / "local.db"
    before = replica(client, node, file, [{"sync": True}, {"query": ROWS}], url=url(node, db))
    assert [row[1] for row in before[1]] == ["b", "kept", "taken back"]
    with node.client() as c:
        r = c.post(f"/v1/databases/{db}/restore", json={"branch": "main", "bookmark": mark})
        assert r.status_code == 200, r.text
    write(node, db, "INSERT INTO t(v) VALUES ('after restore')")
    after = replica(client, node, file, [{"sync": True}, {"query": ROWS},
                                         {"exec": "INSERT INTO t(v) VALUES ('then')"},
                                         {"query": ROWS}], url=url(node, db))
    assert [row[1] for row in after[1]] == ["a", "b", "kept", "after restore"]
    assert after[3] == server_rows(node, db)
    assert intact(file, tmp_path) == server_rows(node, db)


def test_tokens_and_branches(client: str, node: ServerProcess, tmp_path: Path) -> None:
    """A bad token is a clear error; a read token syncs but may not write through the
    replica; a token for one database needs no path; a branch syncs by its URL."""
    db = f"auth-{client.replace('_', '-')}"
    make(node, db)
    bad = replica(client, node, tmp_path / "bad.db", [{"sync": True}], url=url(node, db),
                  token="not-a-token")
    assert "error" in bad[-1] and "nauthorized" in bad[-1]["error"], bad
    with node.client() as c:
        r = c.post("/v1/tokens", json={"databases": [db], "access": "read"})
        assert r.status_code == 201, r.text
        reader = r.json()["token"]
        r = c.post(f"/v1/databases/{db}/branches", json={"name": "preview"})
        assert r.status_code in (200, 201), r.text
    got = replica(client, node, tmp_path / "read.db",
                  [{"sync": True}, {"query": ROWS}, {"exec": "INSERT INTO t(v) VALUES ('no')"}],
                  url=node.url, token=reader)  # the token names the database
    assert got[1] == server_rows(node, db)
    assert "error" in got[2] and "read" in got[2]["error"].lower(), got
    write(node, db, "INSERT INTO t(v) VALUES ('on preview')", branch="preview")
    branch_file = tmp_path / "preview.db"
    on_branch = replica(client, node, branch_file, [{"sync": True}, {"query": ROWS}],
                        url=url(node, db, "preview"))
    assert on_branch[1] == server_rows(node, db, "preview") != server_rows(node, db)
    assert intact(branch_file, tmp_path) == on_branch[1]


COMMITS = 1000


def test_generations_and_offline_writes(node: ServerProcess, tmp_path: Path) -> None:
    """libsql 0.1.11: a sync after 1,000 commits (one generation: the client applies it,
    checkpoints and moves on to the one /info named); offline writes pushed on sync are
    refused, and said so."""
    db = "generations"
    make(node, db)
    file = tmp_path / "local.db"
    replica("libsql", node, file, [{"sync": True}], url=url(node, db))
    with node.client() as c:
        for i in range(COMMITS):
            r = c.post(f"/v1/databases/{db}/query", json={"statements": [
                {"sql": "INSERT INTO t(v) VALUES (?)", "args": [f"n{i}"]}]})
            assert r.status_code == 200, r.text
        start = c.get(f"/db/{db}/info").json()["current_generation"]
    got = replica("libsql", node, file, [{"sync": True}, {"query": ROWS}], url=url(node, db))
    assert got[1] == server_rows(node, db) and len(got[1]) == COMMITS + 2
    info = json.loads((tmp_path / "local.db-info").read_text())
    assert info["generation"] == start  # it moved to the generation the server is in
    assert intact(file, tmp_path) == got[1]
    offline = replica("libsql", node, tmp_path / "offline.db", [
        {"sync": True}, {"exec": "INSERT INTO t(v) VALUES ('offline')"}, {"sync": True}],
        url=url(node, db), offline=True)
    assert "SYNC_PUSH_UNSUPPORTED" in offline[-1]["error"], offline
    assert len(server_rows(node, db)) == COMMITS + 2


def test_writes_through_a_replica_go_on_after_its_stream_expired(tmp_path: Path) -> None:
    """libsql 0.1.11 keeps its Hrana stream between writes: one idle past
    transaction_timeout, holding nothing, goes on as a new stream (server/hrana.py)."""
    node = ServerProcess(tmp_path / "data", {"transaction_timeout": 1.0}).start()
    try:
        make(node, "idle")
        script = ("import libsql, sys, time\n"
                  "c = libsql.connect(sys.argv[1], sync_url=sys.argv[2], auth_token=sys.argv[3])\n"
                  "c.sync()\n"
                  "c.execute(\"INSERT INTO t(v) VALUES ('before')\"); c.commit()\n"
                  "time.sleep(1.6)\n"
                  "c.execute(\"INSERT INTO t(v) VALUES ('after')\"); c.commit()\n")
        file = tmp_path / "replica.db"
        proc = subprocess.run([sys.executable, "-c", script, str(file), url(node, "idle"),
                               node.admin_token], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert [row[1] for row in server_rows(node, "idle")] == ["a", "b", "before", "after"]
        assert intact(file, tmp_path) == server_rows(node, "idle")
    finally:
        node.stop()


def test_a_replica_behind_retention_gets_a_snapshot(client: str, tmp_path: Path) -> None:
    """The commits a replica's generation holds were deleted by retention (the node
    restarted since, so nothing of them is left on it): the replica's next sync brings every
    page of the first state the store can restore, then what followed."""
    node = ServerProcess(tmp_path / "data").start()
    try:
        make(node, "behind")
        write(node, "behind", "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 "
                              "FROM n WHERE i < 60) INSERT INTO t(v) "
                              "SELECT printf('%.1000c', 'a') FROM n")  # 15 pages or so
        file = tmp_path / "stale.db"
        replica(client, node, file, [{"sync": True}], url=url(node, "behind"))
        other = tmp_path / "other.db"
        for round_ in range(3):  # they change the first pages: nothing later writes them
            write(node, "behind", f"UPDATE t SET v = 'round {round_}' WHERE id <= 8")
            replica(client, node, other, [{"sync": True}], url=url(node, "behind"))
        with node.client() as c:  # a snapshot the history restarts from
            assert c.post("/v1/databases/behind/compact").status_code == 200
        write(node, "behind", "INSERT INTO t(v) VALUES ('after the snapshot')")
        node.stop()
        store = open_store(f"file://{node.data_dir}/store")
        apply_retention(store, "behind", now=time.time() + 3600, window=60, grace=0)
        node.start()
        write(node, "behind", "INSERT INTO t(v) VALUES ('newest')")
        got = replica(client, node, file, [{"sync": True}, {"query": ROWS}],
                      url=url(node, "behind"))
        assert len(got) == 2, got
        assert got[1] == server_rows(node, "behind")
        assert intact(file, tmp_path) == got[1]
    finally:
        node.stop()
