"""Native API, what needs a real `shoal serve`: databases and their usage survive a
restart. The rest of the databases API runs in process: tests/server/test_api_databases.py."""

from __future__ import annotations

from collections.abc import Callable

from tests.integration.api_support import (
    connect,
    ok,
    query,
    rows,
)
from tests.support.server import ServerProcess


def test_state_survives_restart(start_server: Callable[..., ServerProcess]) -> None:
    node = start_server()
    with connect(node) as c:
        ok(c.post("/v1/databases", json={"name": "keep"}), 201)
        ok(query(c, "keep", "CREATE TABLE t(a)", "INSERT INTO t VALUES (1)"))
        ok(query(c, "keep", "SELECT * FROM t"))
        before = ok(c.get("/v1/databases/keep"))
        usage = ok(c.get("/v1/databases/keep/usage"))
    node.restart()
    with connect(node) as c:
        after = ok(c.get("/v1/databases/keep"))
        assert (after["name"], after["created_at"], after["txid"]) == \
            (before["name"], before["created_at"], before["txid"])
        usage_after = ok(c.get("/v1/databases/keep/usage"))
        counters = ("rows_read", "rows_written", "queries")
        assert [usage_after[k] for k in counters] == [usage[k] for k in counters]
        assert usage_after["storage_bytes"] > 0  # the WAL may be checkpointed: sizes differ
        assert rows(c, "keep", "SELECT a FROM t") == [[1]]
        assert ok(query(c, "keep", "INSERT INTO t VALUES (2)"))["meta"]["txid"] == 2
