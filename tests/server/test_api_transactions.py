"""Native API: interactive transactions, their timeout, locking, and txids/bookmarks."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.integration.api_support import (
    assert_serving,
    connect,
    error_of,
    make_token,
    metric_value,
    ok,
    query,
    rows,
    scalar,
    wait_until,
)
from tests.support.server import ServerProcess

_seq = itertools.count()
ENDLESS = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r"



@pytest.fixture
def db(admin: httpx.Client, new_db: Callable[[], str]) -> str:
    name = new_db()
    ok(query(admin, name, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
    return name


class Tx:
    """One interactive transaction over HTTP."""

    def __init__(self, client: httpx.Client, db: str, mode: str | None = None):
        self.client = client
        self.db = db
        r = client.post(f"/v1/databases/{db}/transactions",
                        json={"mode": mode} if mode else None)
        self.body = ok(r, 201)
        self.id: str = self.body["id"]
        self.path = f"/v1/databases/{db}/transactions/{self.id}"

    def query(self, *statements: Any) -> httpx.Response:
        return self.client.post(self.path + "/query", json={"statements": list(statements)})

    def rows(self, sql: str) -> list[Any]:
        out: list[Any] = ok(self.query(sql))["results"][0]["rows"]
        return out

    def commit(self, **kw: Any) -> httpx.Response:
        return self.client.post(self.path + "/commit", **kw)

    def rollback(self) -> httpx.Response:
        return self.client.post(self.path + "/rollback")


def txid_of(admin: httpx.Client, db: str) -> int:
    return int(ok(admin.get(f"/v1/databases/{db}"))["txid"])


def open_transactions(admin: httpx.Client) -> float | None:
    return metric_value(admin.get("/metrics").text, "shoal_open_transactions")


# -- commit and rollback ---------------------------------------------------------------------
def test_begin_query_commit(admin: httpx.Client, db: str) -> None:
    before = txid_of(admin, db)
    tx = Tx(admin, db)
    assert tx.body["mode"] == "write"
    assert tx.id and isinstance(tx.id, str)
    expires = datetime.fromisoformat(tx.body["expires_at"].replace("Z", "+00:00"))
    assert expires.utcoffset() == timedelta(0)
    now = datetime.now(UTC)
    assert now < expires <= now + timedelta(seconds=5)  # transaction_timeout is 1 s here

    first = ok(tx.query("INSERT INTO t VALUES (1, 'a')", "INSERT INTO t VALUES (2, 'b')"))
    assert [r["rows_affected"] for r in first["results"]] == [1, 1]
    assert first["meta"]["rows_written"] == 2
    assert tx.rows("SELECT id, v FROM t ORDER BY id") == [[1, "a"], [2, "b"]]  # own writes
    ok(tx.query({"sql": "UPDATE t SET v = ? WHERE id = ?", "args": ["B", 2]}))

    done = ok(tx.commit())
    assert done["committed"] is True
    assert done["txid"] == before + 1
    assert isinstance(done["bookmark"], str) and done["bookmark"]
    assert rows(admin, db, "SELECT id, v FROM t ORDER BY id") == [[1, "a"], [2, "B"]]
    assert txid_of(admin, db) == before + 1
    # the transaction is over
    error_of(tx.query("SELECT 1"), 404, "TRANSACTION_NOT_FOUND")
    error_of(tx.commit(), 404, "TRANSACTION_NOT_FOUND")
    error_of(tx.rollback(), 404, "TRANSACTION_NOT_FOUND")


def test_rollback(admin: httpx.Client, db: str) -> None:
    before = txid_of(admin, db)
    tx = Tx(admin, db)
    ok(tx.query("INSERT INTO t VALUES (1, 'a')", "CREATE TABLE u(a)"))
    assert ok(tx.rollback()) == {"rolled_back": True}
    assert scalar(admin, db, "SELECT count(*) FROM t") == 0
    error_of(query(admin, db, "SELECT * FROM u"), 400, "SQLITE_ERROR")
    assert txid_of(admin, db) == before
    error_of(tx.commit(), 404, "TRANSACTION_NOT_FOUND")
    ok(query(admin, db, "INSERT INTO t VALUES (1, 'a')"))  # the write lock was released


def test_a_failing_request_undoes_only_itself(admin: httpx.Client, db: str) -> None:
    tx = Tx(admin, db)
    ok(tx.query("INSERT INTO t VALUES (1, 'a')"))
    err = error_of(tx.query("INSERT INTO t VALUES (2, 'b')", "INSERT INTO t VALUES (3, 'a')"),
                   400, "SQLITE_CONSTRAINT")
    assert err["statement"] == 1
    assert err["extended_code"] == "SQLITE_CONSTRAINT_UNIQUE"
    error_of(tx.query("SELECT 1; SELECT 2"), 400, "MULTIPLE_STATEMENTS")
    error_of(tx.query("BEGIN"), 403, "SQL_NOT_ALLOWED")
    error_of(tx.query({"sql": "SELECT ?", "args": [{"integer": "x"}]}), 400, "INVALID_ARGUMENT")
    r = admin.post(tx.path + "/query", content=b"{bad json")
    error_of(r, 400, "INVALID_JSON")
    assert tx.rows("SELECT id FROM t") == [[1]]
    ok(tx.query("INSERT INTO t VALUES (4, 'd')"))
    ok(tx.commit())
    assert rows(admin, db, "SELECT id FROM t ORDER BY id") == [[1], [4]]


def test_bad_begin_bodies(admin: httpx.Client, db: str) -> None:
    path = f"/v1/databases/{db}/transactions"
    error_of(admin.post(path, json={"mode": "exclusive"}), 400, "INVALID_REQUEST")
    error_of(admin.post(path, json={"mode": "read", "timeout": 5}), 400, "INVALID_REQUEST")
    error_of(admin.post(path, content=b"{mode"), 400, "INVALID_JSON")
    error_of(admin.post(f"/v1/databases/{db}/transactions/tx_nope/query",
                        json={"statements": ["SELECT 1"]}), 404, "TRANSACTION_NOT_FOUND")
    assert_serving(admin, db)


# -- isolation and locking -------------------------------------------------------------------
def test_readers_are_not_blocked_by_a_write_transaction(
        server: ServerProcess, admin: httpx.Client, db: str) -> None:
    ok(query(admin, db, "INSERT INTO t VALUES (1, 'committed')"))
    tx = Tx(admin, db)
    try:
        ok(tx.query("INSERT INTO t VALUES (2, 'uncommitted')", "UPDATE t SET v = 'changed'"
                    " WHERE id = 1"))
        _, reader = make_token(admin, [db], "read")
        with connect(server, reader) as c:
            # answered now (not after the transaction), without the uncommitted rows
            assert rows(c, db, "SELECT id, v FROM t ORDER BY id") == [[1, "committed"]]
            snapshot = Tx(c, db)
            assert snapshot.body["mode"] == "read"
            assert snapshot.rows("SELECT count(*) FROM t") == [[1]]
            ok(snapshot.rollback())
        assert rows(admin, db, "SELECT id, v FROM t ORDER BY id") == [[1, "committed"]]
    finally:
        ok(tx.commit())
    assert rows(admin, db, "SELECT id, v FROM t ORDER BY id") == [[1, "changed"],
                                                                  [2, "uncommitted"]]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A node whose transactions outlive busy_timeout, with a short statement_timeout."""
    node = ServerProcess(tmp_path_factory.mktemp("quicktx") / "data",
                         {"statement_timeout": 0.3, "transaction_timeout": 10.0,
                          "busy_timeout": 0.5})
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def quick_admin(quick: ServerProcess) -> Iterator[httpx.Client]:
    with connect(quick) as c:
        yield c


@pytest.fixture
def quick_db(quick_admin: httpx.Client) -> str:
    name = f"q{next(_seq)}"
    ok(quick_admin.post("/v1/databases", json={"name": name}), 201)
    ok(query(quick_admin, name, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
    return name


def test_writers_wait_then_get_database_busy(quick_admin: httpx.Client, quick_db: str) -> None:
    admin, db = quick_admin, quick_db
    tx = Tx(admin, db)
    ok(tx.query("INSERT INTO t VALUES (1, 'tx')"))
    try:
        err = error_of(query(admin, db, "INSERT INTO t VALUES (2, 'blocked')"), 409,
                       "DATABASE_BUSY")
        assert "busy_timeout" in err["message"]
        error_of(admin.post(f"/v1/databases/{db}/transactions"), 409, "DATABASE_BUSY")
        assert rows(admin, db, "SELECT count(*) FROM t") == [[0]]  # reads still fine
        ok(tx.query("INSERT INTO t VALUES (3, 'tx again')"))  # the transaction lives on
    finally:
        ok(tx.commit())
    ok(query(admin, db, "INSERT INTO t VALUES (2, 'after')"))
    assert rows(admin, db, "SELECT id FROM t ORDER BY id") == [[1], [2], [3]]


def test_a_queued_write_runs_when_the_transaction_commits(
        quick: ServerProcess, quick_admin: httpx.Client, quick_db: str) -> None:
    server, admin, db = quick, quick_admin, quick_db
    tx = Tx(admin, db)
    ok(tx.query("INSERT INTO t VALUES (1, 'tx')"))
    queued_before = metric_value(admin.get("/metrics").text, "shoal_write_queue_depth_count")
    result: dict[str, httpx.Response] = {}

    def write() -> None:
        with connect(server) as c:
            result["r"] = query(c, db, "INSERT INTO t VALUES (2, 'queued')")

    writer = threading.Thread(target=write)
    writer.start()
    wait_until(lambda: metric_value(admin.get("/metrics").text,
                                    "shoal_write_queue_depth_count") != queued_before,
               what="the write to queue")
    committed = ok(tx.commit())
    writer.join()
    queued = ok(result["r"])
    assert queued["meta"]["txid"] == committed["txid"] + 1
    assert rows(admin, db, "SELECT id FROM t ORDER BY id") == [[1], [2]]


def test_read_transaction_is_a_snapshot(admin: httpx.Client, db: str) -> None:
    ok(query(admin, db, "INSERT INTO t VALUES (1, 'a')"))
    snap = Tx(admin, db, mode="read")
    assert snap.body["mode"] == "read"
    assert snap.rows("SELECT count(*) FROM t") == [[1]]
    # writers are not blocked by a read transaction, and it does not see them
    ok(query(admin, db, "INSERT INTO t VALUES (2, 'b')"))
    w = Tx(admin, db)
    ok(w.query("INSERT INTO t VALUES (3, 'c')"))
    ok(w.commit())
    assert snap.rows("SELECT count(*) FROM t") == [[1]]
    err = error_of(snap.query("INSERT INTO t VALUES (4, 'd')"), 403, "READ_ONLY")
    assert "read" in err["message"]
    assert snap.rows("SELECT id FROM t") == [[1]]  # still usable after the refusal
    done = ok(snap.commit())
    assert done["committed"] is True
    assert scalar(admin, db, "SELECT count(*) FROM t") == 3


def test_transactions_belong_to_their_token_and_database(
        server: ServerProcess, admin: httpx.Client, db: str, new_db: Callable[[], str]) -> None:
    other = new_db()
    tx = Tx(admin, db)
    try:
        ok(tx.query("INSERT INTO t VALUES (1, 'mine')"))
        _, token = make_token(admin, [db, other], "write")
        with connect(server, token) as c:
            for path in (tx.path + "/query", tx.path + "/commit", tx.path + "/rollback"):
                r = c.post(path, json={"statements": ["DELETE FROM t"]} if "query" in path
                           else None)
                error_of(r, 404, "TRANSACTION_NOT_FOUND")
        wrong_db = tx.path.replace(f"/databases/{db}/", f"/databases/{other}/")
        error_of(admin.post(wrong_db + "/commit"), 404, "TRANSACTION_NOT_FOUND")
        assert tx.rows("SELECT v FROM t") == [["mine"]]
    finally:
        ok(tx.commit())
    assert rows(admin, db, "SELECT v FROM t") == [["mine"]]


# -- timeout ---------------------------------------------------------------------------------
def test_idle_transaction_expires(admin: httpx.Client, db: str) -> None:
    before = txid_of(admin, db)
    tx = Tx(admin, db)
    ok(tx.query("INSERT INTO t VALUES (1, 'lost')"))
    wait_until(lambda: open_transactions(admin) == 0, timeout=10,
               what="the idle transaction to be rolled back")
    error_of(tx.query("SELECT 1"), 410, "TRANSACTION_EXPIRED")
    error_of(tx.commit(), 410, "TRANSACTION_EXPIRED")
    error_of(tx.rollback(), 410, "TRANSACTION_EXPIRED")
    assert scalar(admin, db, "SELECT count(*) FROM t") == 0
    assert txid_of(admin, db) == before
    done = ok(query(admin, db, "INSERT INTO t VALUES (1, 'kept')"))  # the lock is free
    assert done["meta"]["txid"] == before + 1


def test_activity_keeps_a_transaction_alive(admin: httpx.Client, db: str) -> None:
    tx = Tx(admin, db)
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < 1.6:  # longer than transaction_timeout (1 s)
        i += 1
        ok(tx.query({"sql": "INSERT INTO t VALUES (?, ?)", "args": [i, f"v{i}"]}))
        time.sleep(0.2)  # idle, but well under the timeout
    ok(tx.commit())
    assert scalar(admin, db, "SELECT count(*) FROM t") == i


def test_statement_timeout_inside_a_transaction(quick: ServerProcess) -> None:
    with connect(quick) as c:
        ok(c.post("/v1/databases", json={"name": "slow"}), 201)
        ok(query(c, "slow", "CREATE TABLE t(a)"))
        before = txid_of(c, "slow")

        # a read stopped by the timeout leaves the transaction usable
        tx = Tx(c, "slow")
        ok(tx.query("INSERT INTO t VALUES (1)"))
        err = error_of(tx.query("SELECT 1", ENDLESS), 400, "STATEMENT_TIMEOUT")
        assert err["statement"] == 1
        assert tx.rows("SELECT a FROM t") == [[1]]
        ok(tx.commit())
        assert txid_of(c, "slow") == before + 1

        # a write stopped by the timeout makes SQLite roll back the whole transaction
        tx = Tx(c, "slow")
        ok(tx.query("INSERT INTO t VALUES (2)"))
        endless_insert = ENDLESS.replace("SELECT count(*)", "INSERT INTO t SELECT count(*)")
        err = error_of(tx.query(endless_insert), 400, "STATEMENT_TIMEOUT")
        assert err["statement"] == 0
        error_of(tx.query("SELECT 1"), 410, "TRANSACTION_ABORTED")
        error_of(tx.commit(), 410, "TRANSACTION_ABORTED")
        assert rows(c, "slow", "SELECT a FROM t") == [[1]]
        # the write lock is free again and txids stay contiguous
        assert ok(query(c, "slow", "INSERT INTO t VALUES (3)"))["meta"]["txid"] == before + 2
        tx = Tx(c, "slow")
        ok(tx.query("INSERT INTO t VALUES (4)"))
        assert ok(tx.commit())["txid"] == before + 3
        assert rows(c, "slow", "SELECT a FROM t ORDER BY a") == [[1], [3], [4]]
        assert_serving(c, "slow")


# -- txids and bookmarks ---------------------------------------------------------------------
def test_txids_are_contiguous_and_bookmarks_follow(admin: httpx.Client, db: str) -> None:
    start = txid_of(admin, db)
    seen: list[tuple[int, str]] = []

    def wrote(body: dict[str, Any]) -> None:
        meta = body.get("meta", body)
        seen.append((meta["txid"], meta["bookmark"]))

    wrote(ok(query(admin, db, "INSERT INTO t VALUES (1, 'a')")))
    wrote(ok(query(admin, db, "INSERT INTO t VALUES (2, 'b')",
                   "UPDATE t SET v = 'B' WHERE id = 2")))
    error_of(query(admin, db, "INSERT INTO t VALUES (1, 'dup')"), 400, "SQLITE_CONSTRAINT")
    tx = Tx(admin, db)
    ok(tx.query("INSERT INTO t VALUES (3, 'c')"))
    wrote(ok(tx.commit()))
    tx = Tx(admin, db)
    ok(tx.query("INSERT INTO t VALUES (4, 'd')"))
    ok(tx.rollback())
    snap = Tx(admin, db, mode="read")
    assert ok(snap.commit())["txid"] is None  # a read transaction commits nothing
    wrote(ok(query(admin, db, "DELETE FROM t WHERE id = 3")))

    assert [t for t, _ in seen] == list(range(start + 1, start + 5))
    assert len({b for _, b in seen}) == len(seen)
    read = ok(query(admin, db, "SELECT count(*) FROM t"))["meta"]
    assert (read["txid"], read["bookmark"]) == seen[-1]
    assert txid_of(admin, db) == start + 4


def test_txids_under_concurrent_writes_have_no_gaps(server: ServerProcess,
                                                    admin: httpx.Client, db: str) -> None:
    start = txid_of(admin, db)
    got: list[tuple[int, str]] = []
    lock = threading.Lock()

    def write(i: int) -> None:
        with connect(server) as c:
            meta = ok(query(c, db, {"sql": "INSERT INTO t VALUES (?, ?)",
                                    "args": [i, f"v{i}"]}))["meta"]
        with lock:
            got.append((meta["txid"], meta["bookmark"]))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    txids = {txid for txid, _ in got}
    last = txid_of(admin, db)
    assert txids == set(range(start + 1, last + 1))  # every commit acknowledged something
    by_txid: dict[int, set[str]] = {}
    for txid, bookmark in got:
        by_txid.setdefault(txid, set()).add(bookmark)
    assert all(len(b) == 1 for b in by_txid.values())  # one bookmark per commit
    assert len({next(iter(b)) for b in by_txid.values()}) == len(by_txid)
    assert scalar(admin, db, "SELECT count(*) FROM t") == 32
