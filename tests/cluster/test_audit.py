"""The audit log on a cluster of two real nodes on one store: each writes its own objects,
a query through either reads both nodes', and a request forwarded to its database's leader
is recorded once (by the leader that ran it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.cluster.test_nodes import ADMIN, Cluster, make, settle
from tests.integration.api_support import wait_until


def records(url: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    with httpx.Client(base_url=url, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        while True:
            page = http.get("/v1/audit", params={"cursor": cursor} if cursor else {}).json()
            out += page["records"]
            cursor = page["next_cursor"]
            if cursor is None:
                return out


def test_every_nodes_records_read_as_one_log_and_a_forward_recorded_once(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        nodes = [cluster.add() for _ in range(2)]
        settle(cluster, 2)
        dbs = [f"a{i}" for i in range(6)]  # led by one node or the other
        make(nodes[0], dbs)
        with httpx.Client(base_url=nodes[0].url, timeout=30,
                          headers={"Authorization": f"Bearer {ADMIN}"}) as http:
            for db in dbs:
                r = http.post(f"/v1/databases/{db}/query", json={"statements": [
                    {"sql": "INSERT INTO w VALUES (?)", "args": [db]}]})
                assert r.status_code == 200, r.text

        def writes(url: str) -> list[dict[str, Any]]:
            return [x for x in records(url) if x["rows_written"] == 1]

        wait_until(lambda: len(writes(nodes[1].url)) >= len(dbs), 10,
                   "both nodes' records through node 1")
        found = writes(nodes[1].url)
        assert sorted(x["database"] for x in found) == dbs  # each once
        assert len({x["node"] for x in found}) == 2  # run where each database is led
        assert writes(nodes[0].url) == found
    finally:
        cluster.stop()
