"""A branch-bound token and another token on one keep-alive connection to a node that
does not lead the database: read-your-writes per connection (server/app.py, Connections)
keeps each bookmark under the branch it names, so the bound token's write on its branch is
never carried to the other token's read of main (which would answer 400), and the bound
token still reads its own write."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.cluster.test_feed import leader_and_other
from tests.cluster.test_nodes import ADMIN, Cluster, admin, settle
from tests.integration.api_support import ok


def test_a_bookmark_is_carried_to_its_own_branch_only(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        nodes = [cluster.add() for _ in range(2)]
        settle(cluster, 2)
        with admin(nodes[0]) as http:
            ok(http.post("/v1/databases", json={"name": "p"}), 201)
            ok(http.post("/v1/databases/p/query", json={"statements": [
                "CREATE TABLE t(v TEXT)", "INSERT INTO t VALUES ('main')"]}))
            ok(http.post("/v1/databases/p/branches", json={"name": "preview"}), 201)
            bound = ok(http.post("/v1/tokens", json={
                "databases": ["p"], "access": "write", "branch": "preview"}), 201)["token"]
        _, other = leader_and_other(nodes, "p")
        as_bound = {"Authorization": f"Bearer {bound}"}
        as_admin = {"Authorization": f"Bearer {ADMIN}"}
        select = {"statements": ["SELECT v FROM t ORDER BY rowid"]}
        with httpx.Client(base_url=other.url, timeout=30) as conn:  # one connection
            ok(conn.post("/v1/databases/p/query", headers=as_bound, json={
                "statements": ["INSERT INTO t VALUES ('preview')"]}))
            main = conn.post("/v1/databases/p/query", headers=as_admin, json=select)
            assert main.status_code == 200, main.text
            assert main.json()["results"][0]["rows"] == [["main"]]
            mine = ok(conn.post("/v1/databases/p/query", headers=as_bound, json=select))
            assert mine["results"][0]["rows"] == [["main"], ["preview"]]
    finally:
        cluster.stop()
