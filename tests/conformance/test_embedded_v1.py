"""Embedded replicas over libSQL's older sync protocol (V1, gRPC-web: server/sync_v1.py),
with the published clients that speak it: Node ``@libsql/client`` 0.18.0 (libsql-js 0.5.29)
and ``libsql-experimental`` 0.0.55. They choose V1 when ``GET {syncUrl}/info`` is not 2xx,
which ``/grpc/db/NAME`` arranges (PyPI ``libsql`` 0.1.11 only speaks the HTTP protocol).

The drivers and checks are those of test_embedded_replicas.py (tests/support/replicas.py):
each client runs in a process of its own per phase, and every test ends with the replica's
rows equal to the server's and ``PRAGMA integrity_check`` on a copy of the local file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.api_support import make_token
from tests.support.replicas import (
    ROWS,
    compact_between,
    intact,
    make,
    run_replica,
    server_rows,
    write,
)
from tests.support.server import ServerProcess

CLIENTS = ["libsql_experimental", "node"]


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest, node_modules: Path) -> str:
    return str(request.param)


def url(node: ServerProcess, db: str | None = None, branch: str | None = None) -> str:
    """The V1 sync URL: /grpc, then the HTTP protocol's form."""
    return f"{node.url}/grpc" + (f"/db/{db}" if db else "") + \
        (f"/branches/{branch}" if branch else "")


def sync(client: str, node: ServerProcess, file: Path, db: str | None,
         steps: list[dict[str, Any]] | None = None, branch: str | None = None,
         token: str | None = None) -> list[Any]:
    """``steps`` (default: sync, then read the rows) on the replica in ``file``."""
    return run_replica(client, file, url(node, db, branch),
                       node.admin_token if token is None else token,
                       steps or [{"sync": True}, {"query": ROWS}])


def name(stem: str, client: str) -> str:
    return f"v1-{stem}-{client.replace('_', '-')}"


def test_sync_and_write_through_the_replica(client: str, node: ServerProcess,
                                            tmp_path: Path) -> None:
    """Initial sync; a write through the replica seen at once locally and on the server; a
    BEGIN/INSERT/COMMIT through the replica; a write on the server, then sync."""
    db = name("rw", client)
    make(node, db)
    file = tmp_path / "local.db"
    first = sync(client, node, file, db, [
        {"sync": True}, {"query": ROWS},
        {"exec": "INSERT INTO t(v) VALUES ('via replica')"}, {"query": ROWS},
        {"tx": ["INSERT INTO t(v) VALUES ('tx1')", "INSERT INTO t(v) VALUES ('tx2')"]},
        {"query": ROWS}])
    assert first[1] == [[1, "a"], [2, "b"]]
    assert first[3] == [[1, "a"], [2, "b"], [3, "via replica"]]  # read-your-writes
    assert first[5] == server_rows(node, db)
    assert [row[1] for row in first[5]] == ["a", "b", "via replica", "tx1", "tx2"]
    write(node, db, "INSERT INTO t(v) VALUES ('server')", "UPDATE t SET v = 'A' WHERE id = 1")
    second = sync(client, node, file, db)
    assert second[1] == server_rows(node, db)
    assert intact(file, tmp_path) == server_rows(node, db)


def test_a_restore_then_compaction(client: str, node: ServerProcess, tmp_path: Path) -> None:
    """A restore (the branch moves to a new timeline: the replica crosses the bridge, with
    the same log id), then compaction (VACUUM, kept as a snapshot: a stale replica gets
    every page as one commit, a fresh one starts after it)."""
    db = name("restore", client)
    make(node, db)
    mark = write(node, db, "INSERT INTO t(v) VALUES ('kept')")
    write(node, db, "INSERT INTO t(v) VALUES ('taken back')", "DELETE FROM t WHERE id = 1")
    file = tmp_path / "local.db"
    before = sync(client, node, file, db)
    assert [row[1] for row in before[1]] == ["b", "kept", "taken back"]
    with node.client() as c:
        r = c.post(f"/v1/databases/{db}/restore", json={"branch": "main", "bookmark": mark})
        assert r.status_code == 200, r.text
    write(node, db, "INSERT INTO t(v) VALUES ('after restore')")
    after = sync(client, node, file, db, [{"sync": True}, {"query": ROWS},
                                          {"exec": "INSERT INTO t(v) VALUES ('then')"},
                                          {"query": ROWS}])
    assert [row[1] for row in after[1]] == ["a", "b", "kept", "after restore"]
    assert after[3] == server_rows(node, db)
    assert intact(file, tmp_path) == server_rows(node, db)
    compact_between(node, db)
    fresh = tmp_path / "fresh.db"
    for replica_file in (file, fresh):
        got = sync(client, node, replica_file, db)
        assert got[1] == server_rows(node, db)
        assert intact(replica_file, tmp_path) == got[1]


def test_tokens_branches_and_a_database_made_again(client: str, node: ServerProcess,
                                                   tmp_path: Path) -> None:
    """A bad token is refused at once ("Unauthorized"); a read token syncs but may not
    write through the replica; a token for one database needs no database in the URL; a
    branch syncs by its URL; a database deleted and made again is another log: the replica
    starts again."""
    db = name("auth", client)
    make(node, db)
    bad = sync(client, node, tmp_path / "bad.db", db, [{"sync": True}], token="not-a-token")
    assert "error" in bad[-1] and "nauthorized" in bad[-1]["error"], bad
    with node.client() as c:
        _, reader = make_token(c, [db], "read")
        r = c.post(f"/v1/databases/{db}/branches", json={"name": "preview"})
        assert r.status_code in (200, 201), r.text
    got = sync(client, node, tmp_path / "read.db", None, [
        {"sync": True}, {"query": ROWS}, {"exec": "INSERT INTO t(v) VALUES ('no')"}],
        token=reader)  # the token names the database
    assert got[1] == server_rows(node, db)
    assert "error" in got[2] and "read access" in got[2]["error"], got
    write(node, db, "INSERT INTO t(v) VALUES ('on preview')", branch="preview")
    branch_file = tmp_path / "preview.db"
    on_branch = sync(client, node, branch_file, db, branch="preview")
    assert on_branch[1] == server_rows(node, db, "preview") != server_rows(node, db)
    assert intact(branch_file, tmp_path) == on_branch[1]
    file = tmp_path / "local.db"
    sync(client, node, file, db)
    with node.client() as c:
        assert c.delete(f"/v1/databases/{db}").status_code == 204
    make(node, db)
    write(node, db, "INSERT INTO t(v) VALUES ('again')")
    again = sync(client, node, file, db)
    assert [row[1] for row in again[1]] == ["a", "b", "again"] == \
        [row[1] for row in server_rows(node, db)]
    assert intact(file, tmp_path) == server_rows(node, db)


def test_a_sync_across_generations(node: ServerProcess, tmp_path: Path) -> None:
    """Generations closed while the replica was away (each /info cuts one: another
    replica's sync would), one of them larger than a batch (1,024 frames): the replica goes
    through each, its offset after a generation's last frame being the next one's start."""
    db = name("generations", "libsql_experimental")
    make(node, db)
    file = tmp_path / "local.db"
    sync("libsql_experimental", node, file, db, [{"sync": True}])
    with node.client() as c:
        for i in range(3):
            write(node, db, f"INSERT INTO t(v) VALUES ('g{i}')")
            if i == 1:  # some 1,500 pages in one generation
                write(node, db, "INSERT INTO t(v) SELECT hex(randomblob(2000)) FROM (WITH "
                                "RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                                "WHERE i < 1500) SELECT i FROM n)")
            assert c.get(f"/db/{db}/info").status_code == 200  # cuts a generation
    got = sync("libsql_experimental", node, file, db)
    assert got[1] == server_rows(node, db) and len(got[1]) == 1505
    write(node, db, "UPDATE t SET v = 'next' WHERE id = 1")
    got = sync("libsql_experimental", node, file, db)
    assert got[1] == server_rows(node, db)
    assert intact(file, tmp_path) == got[1]
