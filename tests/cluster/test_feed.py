"""The change feed on a cluster: pages through a node that does not lead the database are
forwarded to its leader; an event stream on such a node asks the leader page by page, and
outlives the leader's `kill -9` (the next leader serves the next page)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from tests.cluster.test_nodes import ADMIN, Cluster, admin, settle
from tests.support.server import ServerProcess


def leader_and_other(nodes: list[ServerProcess], db: str) -> tuple[ServerProcess,
                                                                    ServerProcess]:
    for node in nodes:
        with admin(node) as http:
            if db in http.get("/v1/cluster").json()["open_databases_led"]:
                return node, nodes[1 - nodes.index(node)]
    raise AssertionError(f"nobody leads {db}")


def insert(node: ServerProcess, first: int, count: int) -> None:
    with admin(node) as http:
        for n in range(first, first + count):
            for _ in range(100):  # through a failover: until a node leads it again
                r = http.post("/v1/databases/f/query", json={"statements": [
                    {"sql": "INSERT INTO t VALUES (?)", "args": [n]}]})
                if r.status_code == 200:
                    break
                time.sleep(0.2)
            else:
                raise AssertionError(r.text)


class Stream(threading.Thread):
    """An event stream of the feed through one node: the keys of its events."""

    def __init__(self, node: ServerProcess, since: str):
        super().__init__(daemon=True)
        self.node, self.since = node, since
        self.keys: list[int] = []
        self.errors: list[str] = []

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {ADMIN}", "Accept": "text/event-stream"}
        try:
            with httpx.stream("GET", f"{self.node.url}/v1/databases/f/changes",
                              params={"since": self.since}, headers=headers,
                              timeout=httpx.Timeout(60, read=60)) as r:
                kind = ""
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        event: dict[str, Any] = msgspec.json.decode(line[6:])
                        if kind == "error":
                            self.errors.append(line)
                            return
                        self.keys.append(event["key"][0])
        except httpx.HTTPError as exc:
            self.errors.append(repr(exc))

    def wait_for(self, count: int, timeout: float = 60.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while len(set(self.keys)) < count and time.monotonic() < deadline:
            assert not self.errors, self.errors
            time.sleep(0.05)
        assert len(set(self.keys)) >= count, (self.keys, self.errors)
        return self.keys


def test_the_feed_through_a_node_that_does_not_lead(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, durability="remote")
    try:
        nodes = [cluster.add() for _ in range(2)]
        settle(cluster, 2)
        with admin(nodes[0]) as http:
            assert http.post("/v1/databases", json={"name": "f"}).status_code == 201
            made = http.post("/v1/databases/f/query", json={"statements": [
                "CREATE TABLE t(id INTEGER PRIMARY KEY)"]})
            assert made.status_code == 200, made.text
            start = made.json()["meta"]["bookmark"]
        leader, other = leader_and_other(nodes, "f")
        insert(leader, 1, 3)
        with admin(other) as http:  # a page through the other node: the leader's answer
            page = http.get("/v1/databases/f/changes",
                            params={"since": start, "wait": 5}).json()
        assert [c["key"][0] for c in page["changes"]] == [1, 2, 3]
        stream = Stream(other, start)  # a stream that stays on the other node
        stream.start()
        assert stream.wait_for(3)[:3] == [1, 2, 3]
        insert(other, 4, 2)  # written through the other node (forwarded to the leader)
        stream.wait_for(5)
        leader.kill()  # the stream outlives its leader: the survivor leads next
        insert(other, 6, 3)
        keys = stream.wait_for(8)
        seen: list[int] = []
        for key in keys:  # each once, in order (a page asked again may repeat nothing)
            assert key not in seen, keys
            seen.append(key)
        assert seen == list(range(1, 9))
    finally:
        cluster.stop()
