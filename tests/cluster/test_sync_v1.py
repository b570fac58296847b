"""libSQL's V1 sync protocol on a cluster: every call reaches the database's leader, whichever
node the replica talks to (App._database names the database of a gRPC call: its path, its
x-namespace-bin or its token's only one)."""

from __future__ import annotations

from pathlib import Path

import httpx

from shoal.server.libsql_pb import proxy_pb2 as px
from tests.cluster.test_nodes import ADMIN, Cluster, make, settle, stored
from tests.integration.api_support import metric_value
from tests.support.sync_v1 import V1Replica, execute


def test_replicas_and_their_writes_through_either_node(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, durability="remote")
    try:
        nodes = [cluster.add() for _ in range(2)]
        settle(cluster, 2)
        make(nodes[0], ["v1"])
        for i, node in enumerate(nodes):
            with httpx.Client(base_url=node.url, timeout=30,
                              headers={"x-authorization": f"Bearer {ADMIN}"}) as http:
                got = execute(http, "/grpc/db/v1", f"client-{i}", "BEGIN",
                              f"INSERT INTO w VALUES ('{node.url}')")
                assert got.one(px.ExecuteResults).state == px.TXN  # held on the leader
                got = execute(http, "/grpc/db/v1", f"client-{i}", "COMMIT")
                assert got.one(px.ExecuteResults).state == px.INIT
                replica = V1Replica(http, "/grpc/db/v1")
                replica.sync()
                assert sorted(r[0] for r in replica.rows(tmp_path, "SELECT id FROM w")) == \
                    sorted(stored(nodes[0], "v1"))
        assert stored(nodes[1], "v1") == {node.url for node in nodes}
        forwarded = []
        for node in nodes:
            with httpx.Client(base_url=node.url, headers={"authorization": f"Bearer {ADMIN}"},
                              timeout=30) as http:
                text = http.get("/metrics").text
            forwarded.append(metric_value(text, 'shoal_cluster_forwarded_total{protocol="grpc"}')
                             or 0)
        assert sorted(forwarded)[0] == 0 and sorted(forwarded)[1] >= 5  # the other node's
    finally:
        cluster.stop()
