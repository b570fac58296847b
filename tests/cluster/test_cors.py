"""CORS on a cluster of real nodes: the node the browser reached names the origin back once,
whether it served the request or forwarded it to the database's leader (who adds nothing),
and a database's own origins set through one node hold on every node at once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cluster.test_nodes import ADMIN, Cluster, make, settle
from tests.integration.api_support import wait_until
from tests.support.server import ServerProcess
from tests.support.storage import ok

APP = "https://app.example.com"
TENANT = "https://tenant.example"


def forwarded(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("shoal_cluster_forwarded_total{"))


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Two nodes on one file store, allowing APP."""
    cluster = Cluster(tmp_path, durability="remote", cors_origins=APP)
    try:
        started = [cluster.add() for _ in range(2)]
        settle(cluster, 2)
        yield started
    finally:
        cluster.stop()


def test_the_edge_names_the_origin_once_served_or_forwarded(nodes: list[ServerProcess]) -> None:
    dbs = [f"c{i}" for i in range(6)]  # led by one node or the other
    make(nodes[0], dbs)
    before = sum(forwarded(n.url) for n in nodes)
    for node in nodes:
        with httpx.Client(base_url=node.url, timeout=30,
                          headers={"Authorization": f"Bearer {ADMIN}", "Origin": APP}) as http:
            for db in dbs:
                for path, body in (
                        (f"/v1/databases/{db}/query",
                         {"statements": [{"sql": "INSERT INTO w VALUES (?)",
                                          "args": [node.url]}]}),
                        (f"/db/{db}/v3/pipeline",
                         {"requests": [{"type": "execute", "stmt": {"sql": "SELECT 1"}},
                                       {"type": "close"}]})):
                    r = http.post(path, content=json.dumps(body))
                    assert r.status_code == 200, r.text
                    assert r.headers.get_list("access-control-allow-origin") == [APP], (
                        node.url, path, r.headers)
                    assert r.headers.get_list("vary") == ["Origin"], r.headers
                    assert r.headers.get_list("access-control-expose-headers") == [
                        "Shoal-Bookmark, Retry-After"]
                r = http.post(f"/v1/databases/{db}/query",
                              json={"statements": ["SELECT 1"]},
                              headers={"Origin": "https://evil.example"})
                assert r.status_code == 200
                assert "access-control-allow-origin" not in r.headers
                assert r.headers.get_list("vary") == ["Origin"]
    assert sum(forwarded(n.url) for n in nodes) > before  # some went to the other node

    # a database's own origins, set through one node: the other knows at once (a notice)
    with httpx.Client(base_url=nodes[1].url, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        ok(http.put(f"/v1/databases/{dbs[0]}/cors", json={"origins": [TENANT]}))
    for node in nodes:
        def allowed(url: str = node.url) -> bool:
            r = httpx.options(f"{url}/v1/databases/{dbs[0]}/query", headers={
                "Origin": TENANT, "Access-Control-Request-Method": "POST"})
            return r.status_code == 204
        wait_until(allowed, 5, f"{node.url} allows the database's origin")


def test_a_node_that_missed_the_change_learns_it_before_refusing(
        nodes: list[ServerProcess]) -> None:
    make(nodes[0], ["late"])
    nodes[1].stop()  # down while the database's origins change: no notice reaches it
    with httpx.Client(base_url=nodes[0].url, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        ok(http.put("/v1/databases/late/cors", json={"origins": [TENANT]}))
    nodes[1].start(timeout=30)  # its catalog (a cache) still has none for the database
    r = httpx.options(f"{nodes[1].url}/v1/databases/late/query", headers={
        "Origin": TENANT, "Access-Control-Request-Method": "POST"})
    assert r.status_code == 204, r.text  # read from the store before refusing
    assert r.headers["access-control-allow-origin"] == TENANT
    r = httpx.options(f"{nodes[1].url}/v1/databases/late/query", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403
