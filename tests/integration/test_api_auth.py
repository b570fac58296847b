"""Native API, what needs a real `shoal serve`: a revocation survives a restart. The rest of
the token tests run in process: tests/server/test_api_auth.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.integration.api_support import (
    connect,
    error_of,
    make_token,
    ok,
)
from tests.support.server import ServerProcess

# -- 401 -------------------------------------------------------------------------------------

def test_revocation_survives_a_restart(start_server: Callable[..., ServerProcess]) -> None:
    node = start_server()
    with connect(node) as a:
        ok(a.post("/v1/databases", json={"name": "kept"}), 201)
        revoked_id, revoked = make_token(a, ["kept"], "read")
        _, kept = make_token(a, ["kept"], "read")
        assert a.delete(f"/v1/tokens/{revoked_id}").status_code == 204
    node.restart()
    with connect(node, revoked) as c:
        error_of(c.get("/v1/databases/kept"), 401, "TOKEN_REVOKED")
    with connect(node, kept) as c:  # the signing key is kept too
        assert ok(c.get("/v1/databases/kept"))["name"] == "kept"


# -- token creation --------------------------------------------------------------------------

# -- 403 FORBIDDEN ---------------------------------------------------------------------------

# -- 403 READ_ONLY ---------------------------------------------------------------------------
WRITES: list[list[Any]] = [
    ["INSERT INTO t VALUES (2, 'two')"],
    ["INSERT INTO t VALUES (2, 'two') RETURNING id"],
    ["REPLACE INTO t VALUES (1, 'uno')"],
    ["UPDATE t SET v = 'uno'"],
    ["DELETE FROM t"],
    ["CREATE TABLE u(a)"],
    ["CREATE INDEX iv ON t(v)"],
    ["CREATE VIEW vv AS SELECT 1"],
    ["CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END"],
    ["DROP TABLE t"],
    ["ALTER TABLE t ADD COLUMN w"],
    ["ALTER TABLE t RENAME TO t2"],
    ["PRAGMA user_version=1"],
    ["PRAGMA application_id=7"],
    ["ANALYZE"],
    ["WITH x(a) AS (SELECT 5) INSERT INTO t(v) SELECT a FROM x"],
    [{"sql": "INSERT INTO t VALUES (?, ?)", "args": [3, "three"]}],
    ["SELECT 1", "SELECT * FROM t", "INSERT INTO t VALUES (4, 'four')"],
    ["INSERT INTO t VALUES (5, 'five')", "SELECT 1"],
]


