"""Two nodes meet on one store (moto's S3): the store, not a node's belief, decides who
committed, so no acknowledged write is ever lost.

Each node reaches the store through its own proxy (tests/support/proxy.py), which holds
chosen requests in flight. Node A writes W1 while one of its store writes is held; node
B takes the store over (the lease lapses), writes W2 at the same txid and acknowledges
it; then A's held write reaches the store late. A must never acknowledge W1, and a node
on an empty disk must find W2 (and not W1).
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.log.branch import get_branch
from shoal.log.timeline import listing, load_timeline, segments
from shoal.storage.s3 import S3Store
from tests.support.proxy import AWS_ENV, StoreProxy, s3_settings
from tests.support.s3 import MotoS3, moto_server
from tests.support.server import SSL_CONTEXT, ServerProcess
from tests.support.soak import SOAK
from tests.support.storage import ids, ok, run

pytestmark = pytest.mark.slow

ADMIN = "fencing-admin"
TTL = 3.0
BUCKET = "fencing"
INSERT = "INSERT INTO w(id) VALUES (?)"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with moto_server() as server:
        yield server


class Cluster:
    """Nodes on one bucket, each behind a proxy of its own."""

    def __init__(self, moto: MotoS3, tmp: Path, bucket: str):
        self.moto = moto
        self.tmp = tmp
        self.bucket = bucket
        moto.client.create_bucket(Bucket=bucket)
        self.proxies: list[StoreProxy] = []
        self.nodes: list[ServerProcess] = []

    def node(self, name: str, **settings: Any) -> tuple[ServerProcess, StoreProxy]:
        proxy = StoreProxy(self.moto.endpoint).start()
        self.proxies.append(proxy)
        node = ServerProcess(self.tmp / name, {**s3_settings(proxy, self.bucket),
                                               "admin_token": ADMIN, "lease_ttl": TTL,
                                               "lease_wait": 10 * TTL, **settings},
                             env=AWS_ENV)
        self.nodes.append(node)
        return node, proxy

    def store(self) -> S3Store:
        return S3Store(self.bucket, "shoal", client=self.moto.client)

    def close(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                with _suppress():
                    os.kill(node.proc.pid, signal.SIGCONT)
            node.kill()
        for proxy in self.proxies:
            proxy.stop()


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


@pytest.fixture(params=range(SOAK))
def cluster(moto: MotoS3, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.replace("_", "-"))[:40]
    c = Cluster(moto, tmp_path, f"{BUCKET}-{name}-{request.param}")
    yield c
    c.close()


class Pending:
    """A write sent from a thread: its HTTP answer (or transport error) when it comes."""

    def __init__(self, node: ServerProcess, value: str):
        self.status: int | None = None
        self.error: str | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._send, args=(node, value), daemon=True)
        self.thread.start()

    def _send(self, node: ServerProcess, value: str) -> None:
        try:
            with httpx.Client(base_url=node.url, timeout=120, verify=SSL_CONTEXT,
                              headers={"Authorization": f"Bearer {ADMIN}"}) as http:
                r = http.post("/v1/databases/shared/query",
                              json={"statements": [{"sql": INSERT, "args": [value]}]})
                self.status = r.status_code
                self.error = r.text
        except httpx.TransportError as exc:
            self.error = repr(exc)
        finally:
            self.done.set()


def setup(node: ServerProcess) -> None:
    with node.client() as http:
        ok(http.post("/v1/databases", json={"name": "shared"}), 201)
        run(http, "shared", "CREATE TABLE w(id TEXT PRIMARY KEY)")
        run(http, "shared", {"sql": INSERT, "args": ["w0"]})  # txid 2
        ok(http.get("/v1/databases/shared/history"))  # ships what is pending first


def take_over(cluster: Cluster) -> ServerProcess:
    """Node B on an empty disk: waits out A's lease, then writes W2 and gets it acked."""
    b, _ = cluster.node("b", durability="remote")
    b.start(timeout=10 * TTL)
    with b.client() as http:
        body = run(http, "shared", {"sql": INSERT, "args": ["W2"]})
    assert body["meta"]["txid"] == 3  # the txid W1 was committed as on A
    return b


def verify(cluster: Cluster, node_b: ServerProcess) -> None:
    """A node on an empty disk, after B stopped, has W2 and not W1; the store's history
    has one object for txid 3 (A's late one is not history)."""
    node_b.stop()
    fresh, _ = cluster.node("fresh")
    fresh.start(timeout=10 * TTL)
    with fresh.client() as http:
        assert ids(http, "shared") == {"w0", "W2"}
    store = cluster.store()
    branch = get_branch(store, "shared", "main")
    record = load_timeline(store, "shared", branch.timeline)
    history, _ = listing(store, "shared", record)
    listed = segments(store, "shared", branch.timeline)
    holding3 = [s.key for s in listed if s.first <= 3 <= s.last]
    assert len([s for s in history if s.first <= 3 <= s.last]) == 1, holding3
    fresh.stop()


def test_a_paused_writer_whose_commit_lands_late_is_refused_by_the_store(
        cluster: Cluster) -> None:
    """The commit point passed A's lease check, then A froze (SIGSTOP, a GC pause, a VM
    migration). Its conditional write of the timeline's record reaches the store after B
    took over: the store refuses it, and A acknowledges nothing."""
    a, proxy_a = cluster.node("a", durability="remote", storage_timeout=120)
    a.start()
    setup(a)
    held = proxy_a.hold("PUT", r"/dbs/shared/timelines/", count=None)
    # A's renewals do not get through either, so that only the store can stop A here
    renewals = proxy_a.hold("PUT", r"/node/lease\.json", count=None)
    w1 = Pending(a, "W1")
    held.wait(timeout=20)  # W1's segment is in the store; its commit is in flight
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGSTOP)  # A freezes with its commit on the wire
    b = take_over(cluster)
    # A's segment for txid 3 and B's are both in the bucket, under their epochs' keys;
    # the timeline's record says which one is history
    store = cluster.store()
    branch = get_branch(store, "shared", "main")
    at3 = [s for s in segments(store, "shared", branch.timeline) if s.first <= 3 <= s.last]
    assert len(at3) == 2 and at3[0].epoch != at3[1].epoch
    record = load_timeline(store, "shared", branch.timeline)
    assert record.head is not None and record.head.txid == 3
    kept = [s.key for s in listing(store, "shared", record)[0] if s.first <= 3 <= s.last]
    assert kept == [s.key for s in at3 if s.epoch == record.head.epoch]
    held.release()  # the late commit reaches the store...
    os.kill(a.proc.pid, signal.SIGCONT)  # ...and A wakes up to its answer
    assert w1.done.wait(60), "A never answered W1"
    assert w1.status == 503, f"A answered W1 with {w1.status}: {w1.error}"
    assert "fenced out" in a.log()
    renewals.release()
    assert a.proc.wait(30) == 75  # and A stops: the lease is B's
    verify(cluster, b)


def test_a_node_whose_upload_and_renewals_are_held_acknowledges_nothing(
        cluster: Cluster) -> None:
    """The issue's case: A's segment upload for W1 and its lease renewals are held in
    flight; B takes the lease after the ttl and acknowledges W2 as txid 3; then A's
    requests go through."""
    a, proxy_a = cluster.node("a", durability="remote", storage_timeout=120)
    a.start()
    setup(a)
    upload = proxy_a.hold("PUT", r"/dbs/shared/log/.*\.seg", count=None)
    renewals = proxy_a.hold("PUT", r"/node/lease\.json", count=None)
    w1 = Pending(a, "W1")
    upload.wait(timeout=20)
    b = take_over(cluster)
    upload.release()
    renewals.release()
    assert w1.done.wait(60), "A never answered W1"
    assert w1.status != 200, f"A acknowledged W1 after B took over: {w1.error}"
    assert a.proc is not None and a.proc.wait(30) == 75
    verify(cluster, b)


def test_local_durability_says_loudly_what_a_fenced_node_loses(cluster: Cluster) -> None:
    """With local durability W1 is acknowledged at the local fsync; when A (frozen with
    its commit in flight) finds the store refused it, the loss is an ERROR line naming
    the txids and shoal_log_fenced_commits_total, never a quiet divergence: W1 is not
    history, and the next node has W2."""
    a, proxy_a = cluster.node("a", durability="local", sync_interval=0.05)
    a.start()
    setup(a)
    held = proxy_a.hold("PUT", r"/dbs/shared/timelines/", count=None)
    renewals: list[Callable[[], None]] = []
    with a.client() as http:
        assert run(http, "shared", {"sql": INSERT, "args": ["W1"]})["meta"]["txid"] == 3
    held.wait(timeout=20)
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGSTOP)
    b = take_over(cluster)
    lease = proxy_a.hold("PUT", r"/node/lease\.json", count=None)  # A learns it late
    renewals.append(lease.release)
    held.release()
    os.kill(a.proc.pid, signal.SIGCONT)
    metrics = ""
    for _ in range(100):
        try:
            metrics = httpx.get(a.url + "/metrics", timeout=5).text
        except httpx.TransportError:
            break
        if "shoal_log_fenced_commits_total 1.0" in metrics:
            break
        threading.Event().wait(0.1)
    assert "shoal_log_fenced_commits_total 1.0" in metrics, metrics[-2000:]
    log = a.log()
    assert "fenced out of timeline" in log and "Txids 3..3" in log
    assert "acknowledged (durability local) and are lost" in log
    for release in renewals:
        release()
    assert a.proc.wait(30) == 75
    verify(cluster, b)
