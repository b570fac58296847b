"""Webhooks against real ``shoal serve`` processes: at least once and in order through an
endpoint that fails 30% of requests and lets 5% time out, across ``kill -9`` of the node;
and on a cluster, the next leader of the database resumes the deliveries from the store.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.cluster.test_nodes import ADMIN as CLUSTER_ADMIN
from tests.cluster.test_nodes import Cluster, admin, settle
from tests.server.test_webhooks import in_order
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess

ADMIN = "webhook-admin-token"
FAST = {"webhook_retry_base": 0.05, "webhook_retry_max": 0.5, "webhook_timeout": 0.5}


class Writer(threading.Thread):
    """Inserts rows 1, 2, 3 ... one commit each, through whichever node answers; keeps
    the ids acknowledged (a request that failed may have committed: the feed says)."""

    def __init__(self, urls: list[str], db: str, token: str):
        super().__init__(daemon=True)
        self.urls, self.db, self.token = urls, db, token
        self.acked: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n, turn = 0, 0
        while not self.stop.is_set():
            n += 1
            while not self.stop.is_set():
                url = self.urls[turn % len(self.urls)]
                turn += 1
                try:
                    r = httpx.post(f"{url}/v1/databases/{self.db}/query", timeout=10,
                                   headers={"Authorization": f"Bearer {self.token}"},
                                   json={"statements": [{"sql": "INSERT OR IGNORE INTO t "
                                                         "VALUES (?, ?)", "args": [n, "x"]}]})
                except httpx.HTTPError:
                    time.sleep(0.1)
                    continue
                if r.status_code == 200:
                    self.acked.append(n)
                    break
                time.sleep(0.1)
            time.sleep(0.01)


def make(http: httpx.Client, receiver: Receiver, **spec: Any) -> str:
    assert http.post("/v1/databases", json={"name": "shop"}).status_code == 201
    r = http.post("/v1/databases/shop/query",
                  json={"statements": ["CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"]})
    assert r.status_code == 200, r.text
    made = http.post("/v1/databases/shop/webhooks",
                     json={"url": receiver.url, "batch_size": 20, "max_attempts": 100, **spec})
    assert made.status_code == 201, made.text
    receiver.secret = made.json()["secret"]
    return str(made.json()["id"])


def test_at_least_once_in_order_through_a_flaky_endpoint_and_kill_9(tmp_path: Path) -> None:
    node = ServerProcess(tmp_path / "data", {"admin_token": ADMIN, **FAST})
    node.start()
    with Receiver(fail=0.3, hang=0.05, hang_for=1.0, seed=3) as receiver:
        try:
            with node.client() as http:
                make(http, receiver)
            writer = Writer([node.url], "shop", ADMIN)
            writer.start()
            for _ in range(2):
                time.sleep(1.5)
                node.kill()  # kill -9: deliveries and writes in flight
                time.sleep(0.3)
                node.start()
            time.sleep(1.0)
            writer.stop.set()
            writer.join(30)
            assert len(writer.acked) > 20
            receiver.wait_for(len(writer.acked), timeout=60)
        finally:
            node.stop()
    delivered = in_order(receiver.accepted)
    assert set(writer.acked) <= set(delivered)
    assert receiver.bad_signatures == 0
    assert {0, 500, 204} <= {r.status for r in receiver.received}


def test_the_next_leader_resumes_the_deliveries(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, durability="remote", **FAST)
    try:
        nodes = [cluster.add() for _ in range(2)]
        settle(cluster, 2)
        with Receiver() as receiver:
            with admin(nodes[0]) as http:
                make(http, receiver)
            writer = Writer([n.url for n in nodes], "shop", CLUSTER_ADMIN)
            writer.start()
            receiver.wait_for(10)
            leader = next(n for n in nodes if "shop" in
                          admin(n).get("/v1/cluster").json()["open_databases_led"])
            other = nodes[1 - nodes.index(leader)]
            leader.kill()
            writer.urls = [other.url]
            acked = len(writer.acked)
            deadline = time.monotonic() + 30  # the lease lapses; the survivor leads
            while len(writer.acked) < acked + 5 and time.monotonic() < deadline:
                time.sleep(0.1)
            writer.stop.set()
            writer.join(30)
            assert len(writer.acked) >= acked + 5, "the survivor did not take the writes"
            receiver.wait_for(len(writer.acked), timeout=60)
        assert set(writer.acked) <= set(in_order(receiver.accepted))
    finally:
        cluster.stop()
