"""Exactly once, end to end (issue 16): every committed row change reaches a consumer once,
in commit order, and nothing of rolled-back work does, while the node and the consumer
are killed with ``kill -9`` at random moments and the node once loses its disk; checked
against the database's own history.

**The writers** (threads of the test) make at least ``MIN_COMMITS`` acknowledged commits of
mixed work: single statements and multi-statement requests, interactive transactions;
inserts, updates and deletes of users and posts, where triggers write audit rows and
deleting a user deletes its posts (``ON DELETE CASCADE``). Some work fails on purpose and
is rolled back: a batch whose last statement breaks a constraint, a failing request inside
an interactive transaction that then commits, a transaction rolled back (and the inserts
that meet an existing key or a missing user); three writers at once, so group commit puts
a failing request beside others in one commit. Each request writes a marker
(``m<writer>x<seq>``) into its rows, so its fate can be traced: a request acknowledged with
txid T that wrote a row no one updates or deletes (an audit row, a ledger row) must be in
the feed at T; a failed one nowhere.

**The consumer** is a process of its own (tests/support/feed_consumer.py): it follows the
feed with ``Client.changes`` and appends each change, its cursor inside, to a file, a batch
per write and fsync, and a start resumes from the file's last line, as an application
stores its cursor with what it made of a change. A thread kills it with ``kill -9`` every
few seconds, mid-write or mid-page, and starts it again.

**The node** is killed with ``kill -9`` at a random moment of every round, writers in
flight, and started again on the same disk. It runs with ``local`` durability and a
``sync_interval`` of 30 s, so a kill may find acknowledged commits that are only in the
WAL, their changes only in the spool (the consumer makes the node ship every
``replica_sync_interval`` while it follows, and not while it is down).

**The disk loss.** Once, the killed node's data directory is deleted; the next node hydrates
from the store (a folder outside the data directory, ``store``) and the feed goes on.
That round runs with ``remote`` durability: under ``local``, the acknowledged commits not
yet shipped are lost with the disk by design (its RPO, docs/operations.md, "Durability"),
and the test could not tell that loss from a bug; ``remote`` acknowledges only what the
store holds, so every acknowledged marker must survive the loss. What the earlier, local
rounds acknowledged is made durable first: the round waits until the history (which
ships what is pending) reaches their last txid. The node is still killed at a random
moment, not stopped: a clean stop ships everything and would test nothing. (With that
round under ``local`` durability the test fails as it should: acknowledged markers are
missing from the feed, their txids reused by later commits.)

**The checks.** Every event is replayed onto a shadow of the tables: an insert's key must
be new, an update's or a delete's old row must be the shadow's row, txids never go back,
no cursor comes twice, so a change seen twice, missed or out of order fails. At the end
the shadow is the tables; the shadow as of a few acknowledged txids is a branch made at
that point (from the store's pages, not from the changes); the last change is the
history's latest commit; every acknowledged marker is in the feed at its txid and no
failed one is anywhere.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.storage import open_store
from tests.support.lease import release_killed_lease
from tests.support.server import SSL_CONTEXT, ServerProcess

pytestmark = pytest.mark.slow

ADMIN = "exact-admin-token"
DB = "exact"
MIN_COMMITS = 5000  # acknowledged commits (distinct txids), at least
MIN_ROUNDS = 5  # node lifetimes, each ended by kill -9
MIN_CONSUMER_KILLS = 10
DISK_LOSS_ROUND = 2  # this round runs with remote durability and ends with the disk lost
WRITERS = 3
USERS, POSTS = 40, 200
CONSUMER = Path(__file__).parent.parent / "support" / "feed_consumer.py"
MARKER = re.compile(r"m\d+x\d{6}")

SCHEMA = [
    "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
    "CREATE TABLE posts(id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id) "
    "ON DELETE CASCADE, title TEXT)",
    "CREATE TABLE audit(n INTEGER PRIMARY KEY, what TEXT)",
    "CREATE TABLE ledger(marker TEXT PRIMARY KEY, writer INTEGER)",
    "CREATE TRIGGER users_ins AFTER INSERT ON users BEGIN "
    "INSERT INTO audit(what) VALUES ('ins ' || new.id || ' ' || new.name); END",
    "CREATE TRIGGER users_upd AFTER UPDATE ON users BEGIN "
    "INSERT INTO audit(what) VALUES ('upd ' || new.id || ' ' || new.name); END",
    "CREATE TRIGGER users_del AFTER DELETE ON users BEGIN "
    "INSERT INTO audit(what) VALUES ('del ' || old.id); END",
    "CREATE TRIGGER posts_ins AFTER INSERT ON posts BEGIN "
    "INSERT INTO audit(what) VALUES ('post ' || new.id || ' ' || new.title); END",
]
COLUMNS = {"users": ["id", "name"], "posts": ["id", "user_id", "title"],
           "audit": ["n", "what"], "ledger": ["marker", "writer"]}
MAY_FAIL = {"insert_user", "insert_post", "failing_batch"}  # on an existing key, a missing user
GONE = {"TRANSACTION_NOT_FOUND", "TRANSACTION_EXPIRED"}  # a transaction the node's death ended

Rows = dict[tuple[Any, ...], dict[str, Any]]


class Shadow:
    """The tables as the events say they are."""

    def __init__(self) -> None:
        self.tables: dict[str, Rows] = {name: {} for name in COLUMNS}
        self.cursors: set[str] = set()
        self.txid = 0

    def apply(self, event: dict[str, Any]) -> None:
        assert event["op"] != "uncaptured", event
        assert event["txid"] >= self.txid, f"out of commit order: {event} after {self.txid}"
        assert event["cursor"] not in self.cursors, f"seen twice: {event}"
        table = self.tables[event["table"]]
        key = tuple(event["key"])
        if event["op"] == "insert":
            assert key not in table, f"insert of an existing row: {event}"
            table[key] = event["new"]
        else:
            assert table.get(key) == event["old"], f"old row differs: {event} vs {table.get(key)}"
            if event["op"] == "update":
                table[key] = event["new"]
            else:
                del table[key]
        self.txid = event["txid"]
        self.cursors.add(event["cursor"])

    def copy(self) -> dict[str, Rows]:
        return {name: dict(rows) for name, rows in self.tables.items()}


@dataclass
class Outcomes:
    """What the writers were told: each marker's fate, the commits acknowledged."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    traced: dict[str, int] = field(default_factory=dict)  # marker -> the txid it must be at
    failed: set[str] = field(default_factory=set)  # applied nothing
    unknown: set[str] = field(default_factory=set)  # no answer: committed or not
    bookmarks: dict[int, str] = field(default_factory=dict)  # acknowledged txid -> bookmark
    requests: int = 0  # acknowledged write requests and transaction commits
    kinds: Counter[str] = field(default_factory=Counter)  # (kind, outcome) counts
    errors: list[str] = field(default_factory=list)

    def acked(self, txid: int, bookmark: str, marker: str | None) -> None:
        with self.lock:
            self.requests += 1
            self.bookmarks[txid] = bookmark
            if marker is not None:
                self.traced[marker] = txid

    def last_txid(self) -> int:
        with self.lock:
            return max(self.bookmarks, default=0)


class Writer:
    """One writer thread: mixed requests, until stopped; it rides out the node's deaths."""

    def __init__(self, node: ServerProcess, number: int, outcomes: Outcomes,
                 stop: threading.Event, seed: float):
        self.node, self.number, self.outcomes, self.stop = node, number, outcomes, stop
        self.rnd = random.Random(seed)
        self.seq = itertools.count()
        self.thread = threading.Thread(target=self.run, name=f"writer-{number}")

    def marker(self) -> str:
        return f"m{self.number}x{next(self.seq):06d}"

    def run(self) -> None:
        with httpx.Client(base_url=self.node.url, timeout=15, verify=SSL_CONTEXT,
                          headers={"Authorization": f"Bearer {ADMIN}"}) as http:
            while not self.stop.is_set():
                if self.rnd.random() < 0.05:
                    self.transaction(http)
                else:
                    self.request(http)

    def post(self, http: httpx.Client, path: str, body: Any = None) -> httpx.Response | None:
        """The answer; None if the request may or may not have run (no answer)."""
        try:
            return http.post(f"/v1/databases/{DB}{path}", json=body)
        except httpx.ConnectError:  # never sent: the node is down
            time.sleep(0.1)
            raise
        except httpx.TransportError:
            return None

    def refused(self, r: httpx.Response, expected: set[str]) -> None:
        """A refusal must be one the request could meet: a write lock held too long by a
        transaction (DATABASE_BUSY) or one of ``expected``."""
        code = r.json().get("error", {}).get("code")
        if code not in expected | {"DATABASE_BUSY"}:
            with self.outcomes.lock:
                self.outcomes.errors.append(f"{r.status_code} {r.text[:300]}")

    def request(self, http: httpx.Client) -> None:
        """One request: ``trace`` says whether an acknowledged one leaves its marker in a row
        no one changes afterwards (an audit or a ledger row)."""
        rnd, m, w = self.rnd, self.marker(), self.number
        k, k2 = rnd.randrange(USERS), rnd.randrange(USERS)
        p, p2 = rnd.randrange(POSTS), rnd.randrange(POSTS)
        kind = rnd.choices(["insert_user", "upsert_user", "rename_user", "delete_user",
                            "insert_post", "batch", "failing_batch"],
                           [6, 15, 15, 10, 12, 24, 8])[0]
        statements, trace = {
            "insert_user": ([f"INSERT INTO users(id, name) VALUES ({k}, '{m}')"], "always"),
            "upsert_user": ([f"INSERT INTO users(id, name) VALUES ({k}, '{m}') "
                             "ON CONFLICT(id) DO UPDATE SET name = excluded.name"], "always"),
            "rename_user": ([f"UPDATE users SET name = '{m}' WHERE id = {k}"], "affected"),
            "delete_user": ([f"DELETE FROM users WHERE id = {k}"], "never"),
            "insert_post": ([f"INSERT INTO posts(id, user_id, title) VALUES ({p}, {k}, '{m}')"],
                            "always"),
            "batch": ([f"INSERT INTO ledger VALUES ('{m}', {w})",
                       f"INSERT OR IGNORE INTO users(id, name) VALUES ({k}, '{m}')",
                       f"INSERT OR IGNORE INTO posts(id, user_id, title) VALUES ({p}, {k}, '{m}')",
                       f"UPDATE posts SET title = title || '!' WHERE user_id = {k2}",
                       f"DELETE FROM posts WHERE id = {p2}"], "always"),
            # every statement but the last succeeds: the last one undoes them all
            "failing_batch": ([f"INSERT INTO ledger VALUES ('{m}', {w})",
                               f"INSERT OR IGNORE INTO users(id, name) VALUES ({k}, '{m}')",
                               f"UPDATE users SET name = '{m}' WHERE id = {k}",
                               f"INSERT OR IGNORE INTO posts(id, user_id, title) "
                               f"VALUES ({p}, {k}, '{m}')",
                               f"DELETE FROM users WHERE id = {k2}",
                               rnd.choice([f"INSERT INTO posts(id, user_id, title) "
                                           f"VALUES ({POSTS + p}, -1, '{m}')",
                                           f"INSERT INTO users(id, name) "
                                           f"VALUES ({USERS + k}, NULL)"])], "fails"),
        }[kind]
        try:
            r = self.post(http, "/query", {"statements": statements})
        except httpx.ConnectError:
            self.outcomes.failed.add(m)
            self.outcomes.kinds[f"{kind} down"] += 1
            return
        self.outcomes.kinds[f"{kind} {'-' if r is None else r.status_code}"] += 1
        if r is None or r.status_code >= 500:
            self.outcomes.unknown.add(m)
        elif r.status_code != 200:
            self.outcomes.failed.add(m)
            self.refused(r, {"SQLITE_CONSTRAINT"} if kind in MAY_FAIL else set())
        elif trace == "fails":
            self.outcomes.errors.append(f"a failing batch was acknowledged: {statements}")
        else:
            body = r.json()
            traced = trace == "always" or (
                trace == "affected" and body["results"][0]["rows_affected"] > 0)
            self.outcomes.acked(body["meta"]["txid"], body["meta"]["bookmark"],
                                m if traced else None)

    def transaction(self, http: httpx.Client) -> None:
        """An interactive transaction: a request that succeeds, one that fails (undone alone),
        then a commit or a rollback. Only a commit that was sent can have committed."""
        rnd, kept, undone = self.rnd, self.marker(), self.marker()
        self.outcomes.failed.add(undone)
        try:
            r = self.post(http, "/transactions", {"mode": "write"})
            if r is None or r.status_code != 201:
                self.outcomes.failed.add(kept)
                if r is not None and r.status_code < 500:
                    self.refused(r, set())
                return
            tx = f"/transactions/{r.json()['id']}"
            k, k2 = rnd.randrange(USERS), rnd.randrange(USERS)
            r = self.post(http, f"{tx}/query", {"statements": [
                f"INSERT INTO ledger VALUES ('{kept}', {self.number})",
                f"UPDATE users SET name = '{kept}' WHERE id = {k}",
                f"DELETE FROM posts WHERE user_id = {k2}"]})
            ok = r is not None and r.status_code == 200
            if r is not None and 400 <= r.status_code < 500:
                self.refused(r, GONE)
            r = self.post(http, f"{tx}/query", {"statements": [
                f"INSERT INTO ledger VALUES ('{undone}', {self.number})",
                f"INSERT INTO users(id, name) VALUES ({USERS + k}, NULL)"]})
            if r is not None and r.status_code < 500:
                self.refused(r, GONE | {"SQLITE_CONSTRAINT"})
            if not ok or rnd.random() < 0.5:
                self.outcomes.failed.add(kept)
                self.outcomes.kinds["transaction rolled back"] += 1
                self.post(http, f"{tx}/rollback")
                return
            r = self.post(http, f"{tx}/commit")
        except httpx.ConnectError:
            self.outcomes.failed.add(kept)
            self.outcomes.kinds["transaction down"] += 1
            return
        self.outcomes.kinds[f"transaction commit {'-' if r is None else r.status_code}"] += 1
        if r is None or r.status_code >= 500:
            self.outcomes.unknown.add(kept)
        elif r.status_code != 200:
            self.outcomes.failed.add(kept)
            self.refused(r, GONE)
        else:
            self.outcomes.acked(r.json()["txid"], r.json()["bookmark"], kept)


class Consumer:
    """tests/support/feed_consumer.py as a process, killed and started again at will."""

    def __init__(self, node: ServerProcess, start: str, out: Path):
        self.node, self.start, self.out = node, start, out
        self.log = out.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def run(self) -> None:
        self.check()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(CONSUMER), self.node.url, ADMIN, DB, self.start,
                 str(self.out)], stdout=log, stderr=log)

    def kill(self) -> None:
        self.stop()
        self.kills += 1

    def stop(self) -> None:
        self.check()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def check(self) -> None:
        """It never ends on its own."""
        if self.proc is not None and self.proc.poll() not in (None, -9):
            raise AssertionError(f"the consumer exited: {self.log.read_text()[-3000:]}")

    def killing(self, stop: threading.Event, rnd: random.Random) -> threading.Thread:
        """A thread that kills the consumer at random moments until ``stop``."""

        def run() -> None:
            while not stop.wait(rnd.uniform(0.5, 4)):
                self.kill()
                if stop.wait(rnd.uniform(0, 0.5)):
                    break
                self.run()

        thread = threading.Thread(target=run, name="consumer-killer")
        thread.start()
        return thread

    def events(self) -> list[dict[str, Any]]:
        text = self.out.read_text() if self.out.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    def last_txid(self) -> int:
        """The txid of the last change stored (of its last whole line)."""
        data = self.out.read_bytes() if self.out.exists() else b""
        end = data.rfind(b"\n")
        return json.loads(data[data.rfind(b"\n", 0, end) + 1:end])["txid"] if end > 0 else 0


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def table_rows(http: httpx.Client, table: str, branch: str = "main") -> Rows:
    r = http.post(f"/v1/databases/{DB}/branches/{branch}/query",
                  json={"statements": [f"SELECT * FROM {table}"]})
    return {(row[0],): dict(zip(COLUMNS[table], row, strict=True))
            for row in ok(r)["results"][0]["rows"]}


def latest_txid(http: httpx.Client) -> int:
    return int(ok(http.get(f"/v1/databases/{DB}/history"))["latest"]["txid"])


def replay(events: list[dict[str, Any]], samples: list[int]) -> tuple[
        Shadow, dict[int, dict[str, Rows]], dict[str, set[int]]]:
    """The shadow the events build; its tables as of each sampled txid; the txids of the
    events in which each marker shows."""
    shadow, wanted, as_of = Shadow(), sorted(set(samples)), {}
    found: dict[str, set[int]] = {}
    for event in events:
        while wanted and event["txid"] > wanted[0]:
            as_of[wanted.pop(0)] = shadow.copy()
        shadow.apply(event)
        for marker in MARKER.findall(json.dumps([event["new"], event["old"]])):
            found.setdefault(marker, set()).add(event["txid"])
    assert not wanted, f"samples past the last change: {wanted}"
    return shadow, as_of, found


def test_every_change_exactly_once_across_kill_9_and_a_lost_disk(tmp_path: Path) -> None:
    rnd = random.Random()
    seed = rnd.randrange(1 << 32)
    rnd.seed(seed)
    print(f"seed {seed}")  # of the moments and the writers' work (the timing is the machine's)
    store = (tmp_path / "store").as_uri()
    local = {"admin_token": ADMIN, "store": store, "sync_interval": 30}
    node = ServerProcess(tmp_path / "data", dict(local))
    node.start()
    outcomes, stop, stop_killer = Outcomes(), threading.Event(), threading.Event()
    writers = [Writer(node, i, outcomes, stop, rnd.random()) for i in range(WRITERS)]
    consumer, killer = None, None
    started = time.monotonic()
    try:
        with node.client() as http:
            ok(http.post("/v1/databases", json={"name": DB}), 201)
            ok(http.post(f"/v1/databases/{DB}/query", json={"statements": SCHEMA}))
            start = ok(http.get(f"/v1/databases/{DB}/changes"))["cursor"]
        consumer = Consumer(node, start, tmp_path / "consumer.jsonl")
        consumer.run()
        killer = consumer.killing(stop_killer, random.Random(rnd.random()))
        for w in writers:
            w.thread.start()

        def enough(rounds: int) -> bool:
            return (rounds >= MIN_ROUNDS and len(outcomes.bookmarks) >= MIN_COMMITS
                    and consumer.kills >= MIN_CONSUMER_KILLS)

        samples: list[int] = []  # acknowledged txids at which a branch must be the shadow
        rounds = 0
        while not enough(rounds):
            assert time.monotonic() - started < 200, \
                f"{len(outcomes.bookmarks)} commits after {rounds} rounds"
            kill_at = time.monotonic() + rnd.uniform(2.5, 6)  # or once the last round is enough
            while time.monotonic() < kill_at and not enough(rounds + 1):
                time.sleep(0.05)
            if rounds in (0, DISK_LOSS_ROUND) or rnd.random() < 0.2:
                samples.append(outcomes.last_txid())
            node.kill()
            if rounds == DISK_LOSS_ROUND:
                release_killed_lease(node, open_store(store))
                shutil.rmtree(node.data_dir)
                node.settings = dict(local)
            elif rounds + 1 == DISK_LOSS_ROUND:
                node.settings = local | {"durability": "remote"}
            acknowledged = outcomes.last_txid()  # no answer comes while the node is down
            node.start()
            rounds += 1
            if rounds == DISK_LOSS_ROUND:  # what the local rounds acknowledged is stored
                with node.client() as http:
                    deadline = time.monotonic() + 30
                    while latest_txid(http) < acknowledged:
                        assert time.monotonic() < deadline, "the earlier commits did not ship"
                        time.sleep(0.1)
        stop.set()
        for w in writers:
            w.thread.join(30)
        stop_killer.set()
        killer.join(30)
        consumer.check()
        if consumer.proc is None or consumer.proc.poll() is not None:
            consumer.run()
        writing = time.monotonic() - started
        assert not outcomes.errors, outcomes.errors[:10]

        with node.client() as http:
            end = ok(http.post(f"/v1/databases/{DB}/query", json={"statements": [
                "INSERT INTO ledger VALUES ('end', -1)"]}))["meta"]["txid"]
            deadline = time.monotonic() + 60
            while consumer.last_txid() < end:
                consumer.check()
                assert time.monotonic() < deadline, f"the consumer is at {consumer.last_txid()}"
                time.sleep(0.2)
            consumer.stop()
            events = consumer.events()
            shadow, as_of, found = replay(events, samples)

            # the feed is the history: up to its latest commit, and the tables it makes ...
            assert events[-1]["txid"] == end == latest_txid(http)
            for table in COLUMNS:
                assert shadow.tables[table] == table_rows(http, table), table
            # ... and the tables as they were, against branches made there from the store
            for txid, tables in as_of.items():
                ok(http.post(f"/v1/databases/{DB}/branches", json={
                    "name": f"at-{txid}", "from": "main",
                    "at": {"bookmark": outcomes.bookmarks[txid]}}), 201)
                for table in COLUMNS:
                    assert tables[table] == table_rows(http, table, f"at-{txid}"), (txid, table)

        # every acknowledged marker at its commit, no failed one anywhere
        missing = {m: t for m, t in outcomes.traced.items() if t not in found.get(m, ())}
        assert not missing, f"acknowledged, not in the feed at their txid: {list(missing)[:10]}"
        leaked = outcomes.failed & found.keys()
        assert not leaked, f"failed, yet in the feed: {sorted(leaked)[:10]}"
        # ... and the work was what it says
        commits = len(outcomes.bookmarks)
        assert commits >= MIN_COMMITS
        assert {(e["table"], e["op"]) for e in events} >= {
            ("users", "insert"), ("users", "update"), ("users", "delete"), ("posts", "insert"),
            ("posts", "update"), ("posts", "delete"), ("audit", "insert"), ("ledger", "insert")}
        assert outcomes.kinds["transaction commit 200"] and outcomes.kinds["failing_batch 400"]
        print(f"{commits} commits acknowledged ({outcomes.requests} requests), "
              f"{len(outcomes.failed)} markers failed, {len(outcomes.unknown)} unanswered; "
              f"{len(events)} changes; {rounds} node kills, one with the disk; "
              f"{consumer.kills} consumer kills; {len(as_of)} branches compared; "
              f"{writing:.0f} s writing; {dict(sorted(outcomes.kinds.items()))}")
    finally:
        stop.set()
        stop_killer.set()
        if killer is not None:
            killer.join(30)
        if consumer is not None and consumer.proc is not None:
            consumer.proc.kill()
            consumer.proc.wait()
        node.stop()
