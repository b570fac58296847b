"""A randomized session-consistency checker on three real nodes under chaos.

Sessions write and read through random nodes while a chaos thread kills (``kill -9``)
and restarts nodes and pauses them (SIGSTOP for two lease ttls, then SIGCONT). Each
session carries the bookmark of its last answer from each database (Shoal-Bookmark),
as the Python client does. Every session writes increasing values to its own key and
checks, on every read through any node (a replica's or the leader's): its own last
acknowledged value or a later one (read-your-writes), and never a value of any key lower
than one it saw before (monotonic reads). At the end a fresh node on an empty disk must
hold every session's last acknowledged value (remote durability: nothing acknowledged is
lost).

``make test`` runs 3,000 operations; ``SHOAL_SOAK=1`` runs 100,000.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cluster.test_nodes import ADMIN, TTL, Cluster, make, settle
from tests.support.server import ServerProcess
from tests.support.storage import run

OPERATIONS = 100_000 if os.environ.get("SHOAL_SOAK") else 3_000
SESSIONS = 6
DBS = ["c0", "c1", "c2"]
FAILED = (httpx.TransportError,)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, durability="remote")
    yield c
    c.stop()


class Session(threading.Thread):
    """One client: its key in one database, through a random node per request."""

    def __init__(self, index: int, nodes: list[ServerProcess], budget: int,
                 violations: list[str], acked: dict[str, int]):
        super().__init__(name=f"session-{index}", daemon=True)  # a failed test ends them
        self.key, self.db = f"s{index}", DBS[index % len(DBS)]
        self.nodes, self.budget, self.violations = nodes, budget, violations
        self.acked = 0  # the last value acknowledged
        self.everyone = acked  # every session's last acknowledged value, by key
        self.next = 1
        self.seen: dict[tuple[str, str], int] = {}  # (db, key) -> highest value read
        self.bookmarks: dict[str, str] = {}  # db -> the bookmark of its last answer
        self.ops = self.unavailable = 0
        self.clients = [httpx.Client(base_url=n.url, timeout=60,
                                     headers={"Authorization": f"Bearer {ADMIN}"})
                        for n in nodes]

    def run(self) -> None:
        rng = random.Random(self.key)
        try:
            while self.ops < self.budget:
                self.ops += 1
                http = rng.choice(self.clients)
                try:
                    if rng.random() < 0.4:
                        self._write(http)
                    else:
                        self._read(http, rng.choice(DBS))
                except FAILED:
                    self.unavailable += 1  # a killed or paused node: another next time
        finally:
            for http in self.clients:
                http.close()

    def _write(self, http: httpx.Client) -> None:
        value, self.next = self.next, self.next + 1
        r = http.post(f"/v1/databases/{self.db}/query", json={"statements": [{
            "sql": "INSERT INTO kv(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = "
                   "excluded.v", "args": [self.key, value]}]})
        if r.status_code == 200:
            self.acked = self.everyone[self.key] = value
            self.bookmarks[self.db] = r.headers["shoal-bookmark"]
        elif r.status_code == 503:
            self.unavailable += 1  # not acknowledged (it may or may not have landed)
        else:
            self.violations.append(f"{self.key}: write {value}: {r.status_code} {r.text}")

    def _read(self, http: httpx.Client, db: str) -> None:
        bookmark = self.bookmarks.get(db)
        r = http.post(f"/v1/databases/{db}/query",
                      json={"statements": ["SELECT k, v FROM kv"]},
                      headers={"Shoal-Bookmark": bookmark} if bookmark else {})
        if r.status_code == 503:
            self.unavailable += 1
            return
        if r.status_code != 200:
            self.violations.append(f"{self.key}: read {db}: {r.status_code} {r.text}")
            return
        self.bookmarks[db] = r.headers["shoal-bookmark"]
        values = {k: v for k, v in r.json()["results"][0]["rows"]}
        if db == self.db and values.get(self.key, 0) < self.acked:
            self.violations.append(f"{time.strftime('%H:%M:%S')} {self.key}: read "
                                   f"{values.get(self.key)} through {http.base_url} after "
                                   f"{self.acked} was acknowledged")
        for k, v in values.items():
            if v < self.seen.get((db, k), 0):
                self.violations.append(f"{self.key}: {db}/{k} went back from "
                                       f"{self.seen[(db, k)]} to {v} through {http.base_url}")
            # A read may see a commit before it is acknowledged (before it is in the store,
            # with remote durability); if its leader is fenced out first, it never becomes
            # history (docs/architecture.md). What was acknowledged is the floor.
            floor = min(v, self.everyone.get(k, 0))
            self.seen[(db, k)] = max(floor, self.seen.get((db, k), 0))


class Chaos(threading.Thread):
    """Every few seconds: kill -9 and restart a node, or pause one for two ttls."""

    def __init__(self, cluster: Cluster, nodes: list[ServerProcess]):
        super().__init__(name="chaos", daemon=True)
        self.cluster, self.nodes = cluster, nodes
        self.stop = threading.Event()
        self.done: list[str] = []

    def run(self) -> None:
        rng = random.Random(7)
        while not self.stop.wait(1.5):
            victim = rng.choice(self.nodes)
            assert victim.proc is not None
            if rng.random() < 0.5:
                victim.kill()
                self.stop.wait(TTL)
                victim.start(timeout=30)
                self.done.append(f"killed and restarted {victim.url}")
            else:
                victim.proc.send_signal(signal.SIGSTOP)
                self.stop.wait(2 * TTL)
                victim.proc.send_signal(signal.SIGCONT)
                self.done.append(f"paused {victim.url}")


@pytest.mark.timeout(3600 if os.environ.get("SHOAL_SOAK") else 300)
def test_sessions_read_their_writes_monotonically_through_any_node_under_chaos(
        cluster: Cluster) -> None:
    nodes = [cluster.add() for _ in range(3)]
    settle(cluster, 3)
    make_kv(nodes[0])
    violations: list[str] = []
    acked: dict[str, int] = {}
    sessions = [Session(i, nodes, OPERATIONS // SESSIONS, violations, acked)
                for i in range(SESSIONS)]
    chaos = Chaos(cluster, nodes)
    chaos.start()
    try:
        for s in sessions:
            s.start()
        for s in sessions:
            s.join()
    finally:  # no restart after the test (the fixture stops the nodes)
        chaos.stop.set()
        chaos.join()
    assert violations == [], violations[:10]
    assert chaos.done, "no chaos happened"
    assert sum(s.ops - s.unavailable for s in sessions) > OPERATIONS // 4
    fresh = cluster.add()
    with httpx.Client(base_url=fresh.url, timeout=60,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        for s in sessions:
            rows = run(http, s.db, {"sql": "SELECT v FROM kv WHERE k = ?",
                                    "args": [s.key]})["results"][0]["rows"]
            assert (rows[0][0] if rows else 0) >= s.acked, (s.key, rows, s.acked)


def make_kv(node: ServerProcess) -> None:
    make(node, DBS)
    with httpx.Client(base_url=node.url, timeout=60,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        for db in DBS:
            run(http, db, "CREATE TABLE kv(k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
