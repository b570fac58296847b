"""Per-database quotas on a real node (issue 12, case 18).

A write token once added 771 MB with no limit. Now the node's admin sets each database's
limits (size, rows read and written per period, queries per second, open transactions);
past one, that database alone gets a stable 429 or 507 saying the limit, what was used and
when it resets, while a second tenant's query is timed (its p99 printed). Usage shows the
work at once, in GET .../usage and in /metrics.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.api_support import error_of, make_token, ok, query
from tests.support.server import ServerProcess
from tests.support.tenants import Tenant, client, tenant, timed

Start = Callable[..., ServerProcess]
BLOBS = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
         "INSERT INTO t(v) SELECT randomblob(?) FROM c")


def put_limits(node: ServerProcess, db: str, **limits: Any) -> dict[str, Any]:
    with node.client() as admin:
        out: dict[str, Any] = ok(admin.put(f"/v1/databases/{db}/limits", json=limits))
        return out


def insert_blobs(http: httpx.Client, db: str, count: int, size: int) -> httpx.Response:
    return query(http, db, {"sql": BLOBS, "args": [count, size]})


def store_bytes(store: Path, db: str) -> int:
    return sum(p.stat().st_size for p in (store / "dbs" / db).rglob("*") if p.is_file())


def test_a_size_limit_stops_growth_and_deletes_make_room(start_server: Start,
                                                         tmp_path: Path) -> None:
    store = tmp_path / "store"
    node = start_server(store=store.as_uri())
    attacker, other = tenant(node, "attacker"), tenant(node, "other")
    assert put_limits(node, "attacker", size_bytes=2 << 20)["effective"]["size_bytes"] == 2 << 20
    with timed(node, other, "18. size limit"), client(node, attacker, "127.0.0.2") as http:
        ok(query(http, "attacker", "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"))
        # one statement asking for 100 MB stops at the limit, and nothing of it stays
        err = error_of(insert_blobs(http, "attacker", 1000, 100_000), 507, "DATABASE_FULL")
        assert err["limit"] == "size_bytes" and err["value"] == 2 << 20
        assert err["statement"] == 0
        # rows added one request at a time stop there too; a smaller request still fits
        statuses = [insert_blobs(http, "attacker", 1, 200_000).status_code for _ in range(20)]
        assert 200 in statuses and statuses[-1] == 507, statuses
        full = ok(http.get("/v1/databases/attacker/usage"))
        assert full["size_bytes"] <= 2 << 20
        # reads and deletes keep working; freed pages are reused
        ok(query(http, "attacker", "SELECT count(*) FROM t"))
        ok(query(http, "attacker", "DELETE FROM t"))
        ok(insert_blobs(http, "attacker", 5, 200_000))
    assert store_bytes(store, "attacker") < 8 << 20  # the store holds what the file did
    with node.client() as admin:  # the operator lifts the limit: growth resumes
        ok(admin.put("/v1/databases/attacker/limits", json={}))
    with client(node, attacker) as http:
        ok(insert_blobs(http, "attacker", 30, 100_000))
        assert ok(http.get("/v1/databases/attacker/usage"))["size_bytes"] > 2 << 20


def test_a_write_past_the_limit_fails_alone_in_its_group_commit(start_server: Start) -> None:
    """SQLite may roll back the whole transaction on SQLITE_FULL: the writes batched with
    the one that passed the limit still commit."""
    node = start_server()
    who = tenant(node, "acme")
    put_limits(node, "acme", size_bytes=1 << 20)
    with client(node, who) as http:
        ok(query(http, "acme", "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"))

        def small(i: int) -> int:
            return query(http, "acme", {"sql": "INSERT INTO t(v) VALUES (?)",
                                        "args": [i]}).status_code

        for _ in range(3):
            with ThreadPoolExecutor(12) as pool:
                big = pool.submit(insert_blobs, http, "acme", 100, 100_000)
                smalls = list(pool.map(small, range(40)))
            assert big.result().status_code == 507
            assert smalls == [200] * 40
        assert ok(query(http, "acme", "SELECT count(*) FROM t"))["results"][0]["rows"] == \
            [[120]]


def test_the_node_default_size_limit_and_a_database_of_its_own(start_server: Start) -> None:
    node = start_server(database_size_limit=1 << 20)
    small, big = tenant(node, "small"), tenant(node, "big")
    put_limits(node, "big", size_bytes=0)  # 0: no limit for this one
    for who, want in ((small, 507), (big, 200)):
        with client(node, who) as http:
            ok(query(http, who.db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"))
            r = insert_blobs(http, who.db, 20, 100_000)
            assert r.status_code == want, r.text


def test_rows_per_period_and_queries_per_second(start_server: Start) -> None:
    node = start_server()
    attacker, other = tenant(node, "attacker"), tenant(node, "other")
    put_limits(node, "attacker", rows_written=100, rows_read=500, period=3600)
    with timed(node, other, "18. row and rate limits"), \
            client(node, attacker, "127.0.0.2") as http:
        ok(query(http, "attacker", "CREATE TABLE t(v)"))
        ok(query(http, "attacker", {"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
                                           "SELECT x + 1 FROM c WHERE x < 100) "
                                           "INSERT INTO t SELECT x FROM c"}))
        r = query(http, "attacker", "INSERT INTO t VALUES (1)")
        err = error_of(r, 429, "QUOTA_EXCEEDED")
        assert err["limit"] == "rows_written" and err["value"] == 100 and err["used"] == 100
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:00:00Z", err["resets_at"]), err
        assert 0 < int(r.headers["retry-after"]) <= 3600
        # reads go on until the read limit: the request that passes it finishes
        for _ in range(5):
            ok(query(http, "attacker", "SELECT v FROM t"))
        err = error_of(query(http, "attacker", "SELECT 1"), 429, "QUOTA_EXCEEDED")
        assert err["limit"] == "rows_read" and err["used"] == 500
        # the same through Hrana: the statement's own error
        r = http.post("/db/attacker/v2/pipeline", json={"requests": [
            {"type": "execute", "stmt": {"sql": "SELECT 1"}}, {"type": "close"}]})
        assert r.json()["results"][0]["error"]["code"] == "QUOTA_EXCEEDED", r.text
        usage = ok(http.get("/v1/databases/attacker/usage"))
        assert usage["period"]["rows_written"] == 100 and usage["period"]["rows_read"] == 500
        assert usage["limits"]["rows_written"] == 100

        put_limits(node, "attacker", queries_per_second=5)  # new limits, new counts
        answers = [query(http, "attacker", "SELECT 1") for _ in range(30)]
        passed = [r for r in answers if r.status_code == 200]
        limited = [r for r in answers if r.status_code == 429]
        assert 5 <= len(passed) <= 10 and len(passed) + len(limited) == 30
        err = error_of(limited[0], 429, "RATE_LIMITED")
        assert err["limit"] == "queries_per_second" and 0 < err["retry_after"] <= 1
        assert limited[0].headers["retry-after"] == "1"
        refilled = time.monotonic() + 2  # the bucket refills within a second
        while query(http, "attacker", "SELECT 1").status_code != 200:
            assert time.monotonic() < refilled
            time.sleep(0.05)


def test_open_transactions_limit(start_server: Start) -> None:
    node = start_server()
    attacker = tenant(node, "attacker", "read")
    put_limits(node, "attacker", transactions=2)
    with client(node, attacker) as http:
        for _ in range(2):
            ok(http.post("/v1/databases/attacker/transactions", json={"mode": "read"}), 201)
        r = http.post("/v1/databases/attacker/transactions", json={"mode": "read"})
        assert "transactions limit" in error_of(r, 429, "TOO_MANY_TRANSACTIONS")["message"]


def test_only_an_admin_of_every_database_sets_limits(start_server: Start) -> None:
    node = start_server()
    tenant(node, "acme")
    with node.client() as admin:
        _, db_admin = make_token(admin, ["acme"], "admin")
        _, writer = make_token(admin, ["acme"], "write")
        _, outsider = make_token(admin, ["other"], "admin")
        for bad in ({"size_bytes": -1}, {"rows_read": "many"}, {"bogus": 1}, {"period": 0},
                    {"size_bytes": 1000}, "[1]", '{"queries_per_second": 1e400}'):
            r = admin.put("/v1/databases/acme/limits", content=bad) if isinstance(bad, str) \
                else admin.put("/v1/databases/acme/limits", json=bad)
            error_of(r, 400, "INVALID_REQUEST")
        error_of(admin.put("/v1/databases/nope/limits", json={}), 404, "DATABASE_NOT_FOUND")
    with node.client(db_admin) as http:  # the tenant's own admin may read, not raise, them
        assert ok(http.get("/v1/databases/acme/limits"))["limits"] == {}
        error_of(http.put("/v1/databases/acme/limits", json={"size_bytes": 0}), 403,
                 "FORBIDDEN")
    with node.client(writer) as http:
        error_of(http.put("/v1/databases/acme/limits", json={}), 403, "FORBIDDEN")
        assert ok(http.get("/v1/databases/acme/usage"))["limits"]["size_bytes"] == 0
    with node.client(outsider) as http:
        error_of(http.get("/v1/databases/acme/limits"), 403, "FORBIDDEN")


def test_limits_and_period_counts_outlive_a_restart_and_reach_a_new_node(
        start_server: Start, tmp_path: Path) -> None:
    store = tmp_path / "store"
    node = start_server(tmp_path / "a", store=store.as_uri(), admin_token="quota-admin")
    who = tenant(node, "acme")
    put_limits(node, "acme", rows_written=3, period=86400)
    with client(node, who) as http:
        ok(query(http, "acme", "CREATE TABLE t(v)", "INSERT INTO t VALUES (1), (2), (3)"))
        error_of(query(http, "acme", "INSERT INTO t VALUES (4)"), 429, "QUOTA_EXCEEDED")
    node.restart()  # a clean stop saves the period's counts with the usage
    with client(node, who) as http:
        error_of(query(http, "acme", "INSERT INTO t VALUES (4)"), 429, "QUOTA_EXCEEDED")
    node.stop()
    fresh = start_server(tmp_path / "b", store=store.as_uri(), admin_token="quota-admin")
    with fresh.client() as admin:  # an empty disk: the limits come from the store
        assert ok(admin.get("/v1/databases/acme/limits"))["limits"] == {
            "rows_written": 3, "period": 86400}
        # deleted with the database, back with it on undelete, not on a new one
        assert admin.delete("/v1/databases/acme").status_code == 204
        ok(admin.post("/v1/databases/acme/undelete"))
        assert ok(admin.get("/v1/databases/acme/limits"))["limits"]["rows_written"] == 3
        assert admin.delete("/v1/databases/acme?purge=true").status_code == 204
        ok(admin.post("/v1/databases", json={"name": "acme"}), 201)
        assert ok(admin.get("/v1/databases/acme/limits"))["limits"] == {}


def metric(text: str, name: str, database: str) -> float | None:
    found = re.search(rf'^{name}\{{branch="main",database="{database}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


@pytest.mark.parametrize("via", ["usage", "metrics"])
def test_usage_is_visible_within_five_seconds(start_server: Start, via: str) -> None:
    node = start_server()
    who: Tenant = tenant(node, "acme")
    with client(node, who) as http:
        ok(query(http, "acme", "CREATE TABLE t(v)", "INSERT INTO t VALUES (1), (2), (3)"))
        ok(query(http, "acme", "SELECT * FROM t"))
        done = time.monotonic()
        while True:
            if via == "usage":
                usage = ok(http.get("/v1/databases/acme/usage"))
                seen = (usage["rows_written"], usage["rows_read"], usage["queries"])
            else:
                anonymous = httpx.get(node.url + "/metrics", verify=False).text
                assert "acme" not in anonymous  # the open /metrics names no database
                text = httpx.get(node.url + "/metrics", verify=False, headers={
                    "Authorization": f"Bearer {node.admin_token}"}).text
                seen = tuple(metric(text, f"shoal_database_{n}_total", "acme")
                             for n in ("rows_written", "rows_read", "queries"))
            if seen == (3, 3, 2):
                break
            assert time.monotonic() - done < 5, seen
            time.sleep(0.1)


def test_usage_counts_each_query_once_across_flushes(start_server: Start) -> None:
    """The counters move from memory to the catalog every 2 s: a read of usage (or of
    /metrics) during that move must neither miss them nor count them twice."""
    node = start_server()
    who = tenant(node, "acme")
    with client(node, who) as http, node.client() as admin:
        ok(query(http, "acme", "CREATE TABLE t(v)"))
        deadline = time.monotonic() + 4.5  # two flushes at least
        expected = 1
        while time.monotonic() < deadline:
            ok(query(http, "acme", "INSERT INTO t VALUES (1)"))
            expected += 1
            usage = ok(http.get("/v1/databases/acme/usage"))
            assert (usage["queries"], usage["rows_written"]) == (expected, expected - 1)
            text = admin.get("/metrics").text
            assert metric(text, "shoal_database_queries_total", "acme") == expected
