"""Three real `shoal serve` nodes sharing one file store: a cluster.

Each database is led by one node; any node serves any request (forwarding what another
node leads); a node stopped with SIGTERM hands its databases over without a failed
request; one killed with ``kill -9`` has its databases led elsewhere after lease_ttl; a
node started without advertise_url on the cluster's store is refused.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.s3 import moto_server
from tests.support.server import ServerProcess, free_port
from tests.support.storage import Running, ok, run

ADMIN = "cluster-admin-token"
TTL = 2.0


class Cluster:
    """Nodes on one store, each advertising its own loopback URL."""

    def __init__(self, root: Path, **settings: Any):
        self.root = root
        self.settings = {"store": (root / "store").as_uri(), "admin_token": ADMIN,
                         "lease_ttl": TTL, "lease_wait": 10} | settings
        self.nodes: list[ServerProcess] = []

    def add(self, **settings: Any) -> ServerProcess:
        port = free_port()
        node = ServerProcess(self.root / f"node{len(self.nodes)}",
                             self.settings | {"advertise_url": f"http://127.0.0.1:{port}"}
                             | settings, port=port)
        self.nodes.append(node)
        return node.start(timeout=30)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, durability="remote")
    yield c
    c.stop()


@pytest.fixture
def s3_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """The same on S3 (moto's server). S3 times objects to the second, so membership
    needs a lease_ttl of a few seconds there (docs/operations.md)."""
    with moto_server() as moto:
        bucket = f"cluster-{time.monotonic_ns()}"
        moto.client.create_bucket(Bucket=bucket)
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)  # the nodes' boto3 reads them
        c = Cluster(tmp_path, durability="remote", lease_ttl=4.0,
                    store=f"s3://{bucket}/shoal", s3_endpoint=moto.endpoint)
        yield c
        c.stop()


def admin(node: ServerProcess, strong: bool = False) -> httpx.Client:
    """A client of ``node``; ``strong``: its reads are the leader's (a replica without a
    bookmark may be a moment behind another node's write)."""
    return httpx.Client(base_url=node.url, timeout=30,
                        headers={"Authorization": f"Bearer {ADMIN}"}
                        | ({"Shoal-Consistency": "strong"} if strong else {}))


def members(node: ServerProcess) -> set[str]:
    with admin(node) as http:
        return {m["url"] for m in ok(http.get("/v1/cluster"))["members"]}


def settle(cluster: Cluster, count: int, timeout: float = 20.0) -> None:
    """Wait until every running node sees ``count`` members."""
    deadline = time.monotonic() + timeout
    running = [n for n in cluster.nodes if n.proc is not None and n.proc.poll() is None]
    while True:
        seen = [len(members(n)) for n in running]
        if all(s == count for s in seen):
            return
        assert time.monotonic() < deadline, f"members seen: {seen}, want {count}"
        time.sleep(0.1)


def three(cluster: Cluster) -> list[ServerProcess]:
    nodes = [cluster.add() for _ in range(3)]
    settle(cluster, 3)
    return nodes


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_any_node_serves_any_database_and_leadership_is_spread(
        backend: str, request: pytest.FixtureRequest) -> None:
    cluster: Cluster = request.getfixturevalue("cluster" if backend == "file" else "s3_cluster")
    nodes = three(cluster)
    names = [f"db{i}" for i in range(24)]
    for i, name in enumerate(names):
        with admin(nodes[i % 3]) as http:
            ok(http.post("/v1/databases", json={"name": name}), 201)
    for i, name in enumerate(names):
        with admin(nodes[(i + 1) % 3]) as http:  # created on another node a moment ago
            run(http, name, "CREATE TABLE w(id TEXT PRIMARY KEY)",
                {"sql": "INSERT INTO w VALUES (?)", "args": [name]})
    for i, name in enumerate(names):
        with admin(nodes[(i + 2) % 3], strong=True) as http:
            got = run(http, name, "SELECT id FROM w")["results"][0]["rows"]
            assert got == [[name]]
    led = []
    for node in nodes:
        with admin(node) as http:
            status = ok(http.get("/v1/cluster"))
        assert len(status["members"]) == 3
        led.append(set(status["open_databases_led"]))
    assert set().union(*led) == set(names)  # each open on its leader
    assert sum(len(s) for s in led) == len(names)  # and on no other node
    assert all(led), led  # each node leads some


def test_an_interactive_transaction_through_a_node_that_does_not_lead(
        cluster: Cluster) -> None:
    nodes = three(cluster)
    with admin(nodes[0]) as http:
        ok(http.post("/v1/databases", json={"name": "tx"}), 201)
        run(http, "tx", "CREATE TABLE w(id TEXT PRIMARY KEY)")
    for node in nodes:  # whichever leads it, two of these are forwarded
        with admin(node) as http:
            tx = ok(http.post("/v1/databases/tx/transactions", json={}), 201)["id"]
            ok(http.post(f"/v1/databases/tx/transactions/{tx}/query",
                         json={"statements": [{"sql": "INSERT INTO w VALUES (?)",
                                               "args": [node.url]}]}))
            ok(http.post(f"/v1/databases/tx/transactions/{tx}/commit"))
    with admin(nodes[1], strong=True) as http:
        got = run(http, "tx", "SELECT count(*) FROM w")["results"][0]["rows"]
    assert got == [[3]]


def test_a_node_without_advertise_url_is_refused_on_a_cluster_store(
        cluster: Cluster) -> None:
    cluster.add()
    loner = ServerProcess(cluster.root / "loner", dict(cluster.settings))
    with pytest.raises(RuntimeError, match="shoal serve exited"):
        loner.start(timeout=30)
    assert "advertise_url" in loner.log()


class Writers(Running):
    """Threads writing rows through the given nodes until stopped; every acknowledged row
    and every failure is kept."""

    def __init__(self, nodes: list[ServerProcess], dbs: list[str], tag: str = ""):
        self.nodes, self.dbs, self.tag = nodes, dbs, tag
        self.acked: dict[str, list[str]] = {db: [] for db in dbs}
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write, args=(i,)) for i in range(4)]

    def _write(self, worker: int) -> None:
        node = self.nodes[worker % len(self.nodes)]
        n = 0
        with admin(node) as http:
            while not self.stop.is_set():
                db = self.dbs[(worker + n) % len(self.dbs)]
                row = f"{self.tag}{worker}-{n}"
                n += 1
                try:
                    r = http.post(f"/v1/databases/{db}/query", json={"statements": [
                        {"sql": "INSERT INTO w VALUES (?)", "args": [row]}]})
                except httpx.HTTPError as exc:
                    self.failures.append(f"{db} {row}: {exc!r}")
                    continue
                if r.status_code == 200:
                    self.acked[db].append(row)
                else:
                    self.failures.append(f"{db} {row}: {r.status_code} {r.text[:300]}")


def make(node: ServerProcess, dbs: list[str]) -> None:
    with admin(node) as http:
        for db in dbs:
            ok(http.post("/v1/databases", json={"name": db}), 201)
            run(http, db, "CREATE TABLE w(id TEXT PRIMARY KEY)")


def stored(node: ServerProcess, db: str) -> set[str]:
    with admin(node, strong=True) as http:
        return {r[0] for r in run(http, db, "SELECT id FROM w")["results"][0]["rows"]}


def test_sigterm_hands_the_databases_over_with_no_failed_request(cluster: Cluster) -> None:
    nodes = three(cluster)
    dbs = [f"h{i}" for i in range(9)]
    make(nodes[0], dbs)
    with Writers(nodes[:2], dbs) as writers:
        time.sleep(1.0)
        nodes[2].proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        nodes[2].proc.wait(30)  # type: ignore[union-attr]
        time.sleep(1.5)
    assert writers.failures == []
    assert sum(len(v) for v in writers.acked.values()) > 0
    fresh = cluster.add()  # an empty disk: what the store holds
    for db in dbs:
        assert set(writers.acked[db]) <= stored(fresh, db)


def test_kill_9_of_a_leader_moves_its_databases_and_loses_no_acknowledged_write(
        cluster: Cluster) -> None:
    nodes = three(cluster)
    dbs = [f"k{i}" for i in range(9)]
    make(nodes[0], dbs)
    with Writers(nodes[:2], dbs) as writers:
        time.sleep(1.0)
        killed_at = time.monotonic()
        nodes[2].kill()
        # requests for the killed node's databases fail until its record lapses
        deadline = killed_at + TTL + 15
        while time.monotonic() < deadline:
            before = sum(len(v) for v in writers.acked.values())
            time.sleep(0.5)
            if len(members(nodes[0])) == 2 and \
                    sum(len(v) for v in writers.acked.values()) > before:
                break
        time.sleep(1.0)
        done = {db: len(rows) for db, rows in writers.acked.items()}
        time.sleep(1.0)
    assert all(len(writers.acked[db]) > done[db] for db in dbs), "a database stayed unled"
    assert all("LEADER_UNAVAILABLE" in f or "STORAGE_UNAVAILABLE" in f
               for f in writers.failures), writers.failures[:5]
    fresh = cluster.add()
    for db in dbs:
        assert set(writers.acked[db]) <= stored(fresh, db)


def test_hrana_through_a_node_that_does_not_lead(cluster: Cluster) -> None:
    nodes = three(cluster)
    make(nodes[0], ["hr"])
    for node in nodes:
        with httpx.Client(base_url=node.url, timeout=30,
                          headers={"Authorization": f"Bearer {ADMIN}"}) as http:
            body = {"requests": [
                {"type": "execute", "stmt": {"sql": "INSERT INTO w VALUES (?)",
                                             "args": [{"type": "text", "value": node.url}]}},
                {"type": "close"}]}
            r = http.post("/db/hr/v2/pipeline", content=json.dumps(body))
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["type"] == "ok", r.text
    assert len(stored(nodes[2], "hr")) == 3


def test_a_paused_leader_acknowledges_nothing_that_is_lost_after_it_resumes(
        cluster: Cluster) -> None:
    """SIGSTOP a leader for two lease ttls while writes go on through the others, then
    SIGCONT it: its databases were led elsewhere meanwhile, and whatever it answers after
    waking (its forwarded requests were waiting in its socket) is refused or is history."""
    nodes = three(cluster)
    dbs = [f"p{i}" for i in range(9)]
    make(nodes[0], dbs)
    paused = nodes[2]
    assert paused.proc is not None
    with Writers(nodes[:2], dbs) as writers:
        time.sleep(1.0)
        paused.proc.send_signal(signal.SIGSTOP)
        time.sleep(2 * TTL + 1.0)
        moved = sum(len(v) for v in writers.acked.values())
        paused.proc.send_signal(signal.SIGCONT)
        time.sleep(3.0)
    assert sum(len(v) for v in writers.acked.values()) > moved  # writes went on
    assert all("_UNAVAILABLE" in f for f in writers.failures), writers.failures[:5]
    fresh = cluster.add()
    for db in dbs:
        assert set(writers.acked[db]) <= stored(fresh, db)


def test_a_rolling_restart_of_every_node_under_load_fails_no_request(
        cluster: Cluster) -> None:
    """Each node in turn: SIGTERM (it hands its databases over), start again on its disk
    and URL, wait until every node sees it. Writers keep going through the other two."""
    nodes = three(cluster)
    dbs = [f"r{i}" for i in range(6)]
    make(nodes[0], dbs)
    for i, node in enumerate(nodes):
        through = [n for n in nodes if n is not node]
        with Writers(through, dbs, tag=f"round{i}-") as writers:
            time.sleep(0.5)
            node.stop()  # SIGTERM, waits for the exit
            node.start(timeout=30)
            settle(cluster, 3)
            time.sleep(0.5)
        assert writers.failures == [], (i, writers.failures[:5])
        assert sum(len(v) for v in writers.acked.values()) > 0
        for db in dbs:
            assert set(writers.acked[db]) <= stored(nodes[(i + 1) % 3], db)


def test_a_token_revoked_on_one_node_is_refused_by_every_node_at_once(
        cluster: Cluster) -> None:
    nodes = three(cluster)
    make(nodes[0], ["tok"])
    with admin(nodes[0]) as http:
        token = ok(http.post("/v1/tokens", json={"databases": ["tok"], "access": "read"}),
                   201)
    for node in nodes:  # every node accepts it (whoever leads the database)
        with httpx.Client(base_url=node.url, timeout=30,
                          headers={"Authorization": f"Bearer {token['token']}"}) as http:
            assert http.post("/v1/databases/tok/query",
                             json={"statements": ["SELECT 1"]}).status_code == 200
    with admin(nodes[1]) as http:
        assert http.delete(f"/v1/tokens/{token['id']}").status_code == 204
    for node in nodes:
        with httpx.Client(base_url=node.url, timeout=30,
                          headers={"Authorization": f"Bearer {token['token']}"}) as http:
            r = http.post("/v1/databases/tok/query", json={"statements": ["SELECT 1"]})
            assert r.status_code == 401, (node.url, r.text)


def test_a_database_deleted_or_created_on_one_node_is_so_on_every_node(
        cluster: Cluster) -> None:
    nodes = three(cluster)
    make(nodes[0], ["gone", "kept"])
    with admin(nodes[2]) as http:
        assert http.delete("/v1/databases/gone").status_code == 204
    for node in nodes:
        with admin(node) as http:
            r = http.post("/v1/databases/gone/query", json={"statements": ["SELECT 1"]})
            assert r.status_code == 404, (node.url, r.text)
            names = {d["name"] for d in ok(http.get("/v1/databases"))["databases"]}
            assert "gone" not in names and "kept" in names, (node.url, names)
    with admin(nodes[1]) as http:
        ok(http.post("/v1/databases/gone/undelete"))
    for node in nodes:
        with admin(node) as http:
            assert http.post("/v1/databases/gone/query",
                             json={"statements": ["SELECT count(*) FROM w"]}).status_code == 200
            names = {d["name"] for d in ok(http.get("/v1/databases"))["databases"]}
            assert "gone" in names, (node.url, names)
