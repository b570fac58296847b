"""Back-pressure over HTTP: a node whose store stops taking segments refuses writes.

The node runs with ``local`` durability on a file:// store. The branch's log folder
in the store is replaced by a plain file, so every segment upload fails (as a bucket
refusing writes would) while the rest of the store stays readable. Once more than
``max_unshipped_bytes`` of commits wait, writes on every path (native queries,
transactions, Hrana) get ``503 STORAGE_UNAVAILABLE``; reads and /health go on.
Removing the file heals the store: the backlog ships and writes are taken again.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import httpx

from shoal.log.branch import get_branch
from shoal.storage import open_store
from tests.integration.api_support import error_of, metric_value, ok, query, rows, wait_until
from tests.integration.hrana_support import err, execute, pipeline
from tests.integration.hrana_support import rows as hrana_rows
from tests.support.server import ServerProcess
from tests.support.storage import assert_log_contiguous

DB = "behind"
LIMIT = 32768  # eight pages: a few small commits waiting for the store pass it


def metric(http: httpx.Client, name: str) -> float:
    value = metric_value(http.get("/metrics").text, name)
    assert value is not None, name
    return value


def test_writes_get_503_while_the_store_is_behind_and_reads_go_on(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    root = tmp_path / "store"
    node = start_server(tmp_path / "node", store=root.as_uri(), durability="local",
                        sync_interval=0.02, max_unshipped_bytes=LIMIT)
    ids = itertools.count()
    with node.client() as http:
        ok(http.post("/v1/databases", json={"name": DB}), 201)
        timeline = get_branch(open_store(root.as_uri()), DB, "main").timeline
        blocker = root / "dbs" / DB / "log" / timeline  # segments need a folder here
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_bytes(b"")

        def insert() -> httpx.Response:
            return query(http, DB, {"sql": "INSERT INTO t VALUES (?)", "args": [next(ids)]})

        ok(query(http, DB, "CREATE TABLE t(id INTEGER PRIMARY KEY)"))
        # the first upload fails: every later commit waits behind it
        wait_until(lambda: metric(http, "shoal_log_upload_failures_total") > 0,
                   what="a failed upload")
        acked = []
        for _ in range(50):
            r = insert()
            if r.status_code != 200:
                break
            acked.append(r.json()["meta"]["txid"])
        error = error_of(r, 503, "STORAGE_UNAVAILABLE")
        assert acked, "the first write after the outage began was refused"
        assert f"{DB}/main" in error["message"] and "behind by" in error["message"]
        assert "max_unshipped_bytes" in error["message"] and error["hint"]
        assert "file:" not in error["message"]  # nothing about the store's address

        assert len(rows(http, DB, "SELECT id FROM t")) == len(acked)  # reads go on
        assert ok(http.get("/health")) == {"status": "ok"}
        assert metric(http, "shoal_log_unshipped_commits") == len(acked) + 1
        error_of(http.post(f"/v1/databases/{DB}/transactions", json={"mode": "write"}),
                 503, "STORAGE_UNAVAILABLE")
        results, _ = pipeline(http, DB, [execute("INSERT INTO t VALUES (-1)"),
                                         execute("SELECT count(*) FROM t"), {"type": "close"}])
        assert "behind by" in err(results[0], "STORAGE_UNAVAILABLE")["message"]
        assert hrana_rows(results[1]) == [[len(acked)]]

        blocker.unlink()  # the store is back
        wait_until(lambda: metric(http, "shoal_log_unshipped_commits") == 0, timeout=30,
                   what="the backlog to ship")
        head = ok(insert())["meta"]["txid"]
        wait_until(lambda: metric(http, "shoal_log_unshipped_commits") == 0, timeout=30,
                   what="the last write to ship")
    assert assert_log_contiguous(open_store(root.as_uri()), DB) == head == len(acked) + 2
