"""Embedded replicas across a node's kill -9: a replica holds only what the store has (the
node's restart recovers its unshipped commits and ships them), and goes on syncing from the
same generation (its cuts are in the store, its frames made again from the log)."""

from __future__ import annotations

from pathlib import Path

from tests.integration.api_support import ok, query
from tests.support.replicas import ROWS, intact, run_replica
from tests.support.server import ServerProcess


def test_a_replica_goes_on_after_kill_9(tmp_path: Path) -> None:
    node = ServerProcess(tmp_path / "data").start()
    try:
        with node.client() as c:
            ok(c.post("/v1/databases", json={"name": "crash"}), 201)
            ok(query(c, "crash", "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
                     "INSERT INTO t(v) VALUES ('first')"))
        url, file = f"{node.url}/db/crash", tmp_path / "replica.db"
        steps = [{"sync": True}, {"query": ROWS}]
        assert run_replica("libsql", file, url, node.admin_token, steps)[1] == [[1, "first"]]
        with node.client() as c:
            for i in range(20):  # acknowledged at the local fsync; shipped within a second
                ok(query(c, "crash", {"sql": "INSERT INTO t(v) VALUES (?)",
                                      "args": [f"before the kill {i}"]}))
        node.kill()
        node.start()
        with node.client() as c:
            ok(query(c, "crash", "INSERT INTO t(v) VALUES ('after the restart')"))
            want = ok(query(c, "crash", ROWS))["results"][0]["rows"]
        assert len(want) == 22
        got = run_replica("libsql", file, node.url + "/db/crash", node.admin_token, steps)
        assert got[1] == want
        assert intact(file, tmp_path) == want
    finally:
        node.stop()
