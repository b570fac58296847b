"""Embedded replicas on a cluster of two real nodes on one store: a replica syncs through the
node that does not lead its database (forwarded to the leader, whose memory holds the recent
commits), writes through it, and follows on when the leader stops and the other node takes
the database over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cluster.test_feed import leader_and_other
from tests.cluster.test_nodes import Cluster, admin, settle
from tests.integration.api_support import ok, query
from tests.support.replicas import ROWS, intact, run_replica


def synced(url: str, token: str, file: Path, *steps: dict[str, Any]) -> list[Any]:
    answers = run_replica("libsql", file, url, token,
                          [{"sync": True}, *steps, {"query": ROWS}])
    assert not isinstance(answers[-1], dict), answers
    return answers


def test_a_replica_syncs_through_any_node(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        nodes = [cluster.add() for _ in range(2)]
        settle(cluster, 2)
        with admin(nodes[0]) as http:
            ok(http.post("/v1/databases", json={"name": "shop"}), 201)
            ok(query(http, "shop", "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
                     "INSERT INTO t(v) VALUES ('a')"))
        leader, other = leader_and_other(nodes, "shop")
        token = other.admin_token
        file = tmp_path / "replica.db"
        got = synced(f"{other.url}/db/shop", token, file,
                     {"exec": "INSERT INTO t(v) VALUES ('through the other node')"})
        assert got[-1] == [[1, "a"], [2, "through the other node"]]
        leader.stop()  # the other node takes the database over from the store
        with admin(other) as http:
            ok(query(http, "shop", "INSERT INTO t(v) VALUES ('after the handover')"))
            want = ok(query(http, "shop", ROWS))["results"][0]["rows"]
        got = synced(f"{other.url}/db/shop", token, file)
        assert got[-1] == want
        assert intact(file, tmp_path) == want
    finally:
        cluster.stop()
