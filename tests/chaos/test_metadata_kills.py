"""kill -9 at every store write of a branch operation: it happened whole or not at all.

A real node on moto's S3 through a proxy. For restore in place, branch create, reset,
branch delete and database delete (then undeleted), the proxy holds the operation's Nth
PUT (for every N the operation makes),
the node is killed, and the held write is then dropped or let through late. The node
restarts on the same disk and then a node starts on an empty one. Each time:

- the operation either happened or did not (never half: a restored branch and the state
  it kept, a reset branch, a deleted or created branch);
- no two branches share a timeline;
- every write acknowledged before the operation is where it belongs, writes to every
  branch after the restart are acknowledged and stay in their own branch, and a node on
  an empty disk has all of them.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.log.branch import load_record
from shoal.storage.s3 import S3Store
from tests.support.proxy import AWS_ENV, StoreProxy, s3_settings
from tests.support.s3 import MotoS3, moto_server
from tests.support.server import SSL_CONTEXT, ServerProcess
from tests.support.soak import SOAK
from tests.support.storage import ok, path, rows, run

pytestmark = pytest.mark.slow

ADMIN = "kills-admin"
WRITES = r"/shoal/(?!node/|audit/)"  # store writes but the lease renewals and audit log
_names = itertools.count()


@dataclass
class Setup:
    """A database with main (rows m1..m3) and feat (forked after m2, plus f1)."""

    db: str
    bookmark: str  # main after m1
    rows: dict[str, set[str]] = field(default_factory=dict)


def values(http: httpx.Client, db: str, branch: str) -> set[str]:
    return {r[0] for r in rows(http, db, "SELECT v FROM t", branch)}


def make(http: httpx.Client) -> Setup:
    db = f"k{next(_names)}"
    ok(http.post("/v1/databases", json={"name": db}), 201)
    run(http, db, "CREATE TABLE t(v TEXT PRIMARY KEY)")
    mark = run(http, db, "INSERT INTO t VALUES ('m1')")["meta"]["bookmark"]
    run(http, db, "INSERT INTO t VALUES ('m2')")
    ok(http.post(f"/v1/databases/{db}/branches", json={"name": "feat"}), 201)
    run(http, db, "INSERT INTO t VALUES ('m3')")
    run(http, db, "INSERT INTO t VALUES ('f1')", branch="feat")
    return Setup(db, mark, {"main": {"m1", "m2", "m3"}, "feat": {"m1", "m2", "f1"}})


@dataclass
class Op:
    """A branch operation: the request, and what a completed one leaves."""

    name: str
    request: Callable[[httpx.Client, Setup], httpx.Response]
    done: Callable[[dict[str, set[str]], Setup], bool]  # branch -> rows: did it happen?
    undone: Callable[[dict[str, set[str]], Setup], bool]  # ...or clearly not?


def _kept(state: dict[str, set[str]]) -> list[str]:
    return [b for b in state if "before-restore" in b]


OPS = [
    Op("restore",
       lambda http, s: http.post(f"/v1/databases/{s.db}/restore",
                                 json={"bookmark": s.bookmark}),
       lambda st, s: st["main"] == {"m1"} and len(_kept(st)) == 1
       and st[_kept(st)[0]] == s.rows["main"] and st["feat"] == s.rows["feat"],
       lambda st, s: st["main"] == s.rows["main"] and not _kept(st)
       and st["feat"] == s.rows["feat"]),
    Op("create",
       lambda http, s: http.post(f"/v1/databases/{s.db}/branches", json={"name": "new"}),
       lambda st, s: st.get("new") == s.rows["main"] and st["main"] == s.rows["main"],
       lambda st, s: "new" not in st and st["main"] == s.rows["main"]),
    Op("reset",
       lambda http, s: http.post(f"/v1/databases/{s.db}/branches/feat/reset"),
       lambda st, s: st["feat"] == s.rows["main"] and st["main"] == s.rows["main"],
       lambda st, s: st["feat"] == s.rows["feat"] and st["main"] == s.rows["main"]),
    Op("delete",
       lambda http, s: http.delete(f"/v1/databases/{s.db}/branches/feat"),
       lambda st, s: "feat" not in st and st["main"] == s.rows["main"],
       lambda st, s: st.get("feat") == s.rows["feat"] and st["main"] == s.rows["main"]),
    Op("drop",  # the database itself: one write of its record (undelete brings it back)
       lambda http, s: http.delete(f"/v1/databases/{s.db}"),
       lambda st, s: st == {},
       lambda st, s: st == s.rows),
]


class World:
    def __init__(self, moto: MotoS3, tmp: Path, bucket: str):
        moto.client.create_bucket(Bucket=bucket)
        self.bucket = bucket
        self.moto = moto
        self.tmp = tmp
        self.proxy = StoreProxy(moto.endpoint).start()
        self.node = self._node(tmp / "node")
        self.acked: dict[tuple[str, str], set[str]] = {}  # every acknowledged row
        self.timelines_seen: dict[str, str] = {}

    def _node(self, data: Path) -> ServerProcess:
        return ServerProcess(data, {**s3_settings(self.proxy, self.bucket), "admin_token": ADMIN,
                                    "durability": "remote", "lease_ttl": 2},
                             env=AWS_ENV)

    def http(self, node: ServerProcess | None = None) -> httpx.Client:
        node = node or self.node
        return httpx.Client(base_url=node.url, timeout=60, verify=SSL_CONTEXT,
                            headers={"Authorization": f"Bearer {ADMIN}"})

    def store(self) -> S3Store:
        return S3Store(self.bucket, "shoal", client=self.moto.client)

    def state(self, http: httpx.Client, db: str) -> dict[str, set[str]]:
        """Each branch's rows; {} for a deleted database."""
        r = http.get(f"/v1/databases/{db}/branches")
        if r.status_code == 404 and r.json()["error"]["code"] == "DATABASE_NOT_FOUND":
            return {}
        listed = ok(r)["branches"]
        return {b["name"]: values(http, db, b["name"]) for b in listed}

    def puts(self, op: Op) -> int:
        """How many store writes the operation makes (a run with nothing held)."""
        with self.http() as http:
            s = make(http)
            before = len(self.proxy.requests("PUT", WRITES))
            r = op.request(http, s)
            assert r.status_code in (200, 201, 204), r.text
            assert op.done(self.state(http, s.db), s)
            made = len(self.proxy.requests("PUT", WRITES)) - before
            if not self.state(http, s.db):
                ok(http.post(f"/v1/databases/{s.db}/undelete"))
            self.remember(s, self.state(http, s.db))
            return made

    def remember(self, s: Setup, state: dict[str, set[str]]) -> None:
        for branch, found in state.items():
            self.acked.setdefault((s.db, branch), set()).update(found)

    def round(self, op: Op, nth: int, late: bool) -> None:
        with self.http() as http:
            s = make(http)
        held = self.proxy.hold("PUT", WRITES, nth=nth)
        answer: list[httpx.Response | Exception] = []

        def send() -> None:
            try:
                with self.http() as http:
                    answer.append(op.request(http, s))
            except httpx.TransportError as exc:
                answer.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        seen = held.wait(timeout=30)
        self.node.kill()
        if late:
            held.release()  # the write lands after its writer died
            wait_until(lambda: all(r.status is not None for r in seen))
        else:
            held.drop()  # it never lands
        sender.join(30)
        assert answer and not isinstance(answer[0], httpx.Response), \
            f"{op.name} #{nth} answered before its write: {answer}"
        self.node.start()
        with self.http() as http:
            state = self.state(http, s.db)
            happened, not_happened = op.done(state, s), op.undone(state, s)
            assert happened or not_happened, f"{op.name} #{nth} (late={late}) half done: {state}"
            if not state:  # a dropped database: everything comes back
                ok(http.post(f"/v1/databases/{s.db}/undelete"))
                state = self.state(http, s.db)
                assert state == s.rows, f"{op.name} #{nth}: undelete gave {state}"
            self.check_timelines(s.db)
            for branch in state:  # every branch takes writes, each into itself alone
                value = f"after-{op.name}-{nth}-{branch}"
                run(http, s.db, {"sql": "INSERT INTO t VALUES (?)", "args": [value]},
                    branch=branch)
                state[branch].add(value)
            assert self.state(http, s.db) == state, f"{op.name} #{nth}: branches mixed"
        self.remember(s, state)

    def check_timelines(self, db: str) -> None:
        record = load_record(self.store(), db)
        assert record is not None and record.live is not None
        timelines = [e["timeline"] for e in record.live.branches.values()]
        assert len(timelines) == len(set(timelines)), f"{db}: branches share a timeline"

    def on_an_empty_disk(self) -> None:
        """Every acknowledged row, on a node that has only the store."""
        self.node.stop()
        fresh = self._node(self.tmp / "fresh").start()
        try:
            with self.http(fresh) as http:
                for (db, branch), found in sorted(self.acked.items()):
                    r = http.post(path(db, branch), json={"statements": ["SELECT v FROM t"]})
                    assert r.status_code == 200, (db, branch, r.text)
                    got = {row[0] for row in r.json()["results"][0]["rows"]}
                    assert found <= got, f"{db}/{branch} lost {sorted(found - got)}"
        finally:
            fresh.stop()


def wait_until(check: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        deadline.wait(0.05)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with moto_server() as server:
        yield server


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_kill_at_every_store_write(op: Op, moto: MotoS3, tmp_path: Path) -> None:
    world = World(moto, tmp_path, f"kills-{op.name}")
    world.node.start()
    try:
        count = world.puts(op)
        assert count >= 1, f"{op.name} made {count} store writes"
        for _ in range(SOAK):
            for nth in range(1, count + 1):
                for late in (False, True):  # the write never lands / lands after the kill
                    world.round(op, nth, late)
        world.on_an_empty_disk()
    finally:
        world.node.kill()
        world.proxy.stop()
