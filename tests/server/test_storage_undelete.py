"""Deleting a database keeps it restorable: undelete, list, purge, restore of a deleted name.

The most common mistake a restore window must cover is deleting the wrong database.
A delete moves the database's incarnation to the deleted ones in its record (one write);
its branches and history stay in the store for history_retention, and the name is free
for a new database at once. A purge removes it for good.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx

from tests.support.server import ServerProcess
from tests.support.storage import iso, ok, rows, run

ADMIN = "undelete-admin"


def values(http: httpx.Client, db: str, branch: str = "main") -> list[int]:
    return [r[0] for r in rows(http, db, "SELECT v FROM t ORDER BY v", branch)]


def error(r: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert r.status_code == status, r.text
    err: dict[str, str] = r.json()["error"]
    assert err["code"] == code, err
    return err


def deleted(http: httpx.Client) -> list[dict[str, object]]:
    out: list[dict[str, object]] = ok(http.get("/v1/databases?deleted=true"))["databases"]
    return out


def make(http: httpx.Client, db: str, n: int = 3) -> None:
    ok(http.post("/v1/databases", json={"name": db}), 201)
    run(http, db, "CREATE TABLE t(v INTEGER)")
    for i in range(n):
        run(http, db, {"sql": "INSERT INTO t VALUES (?)", "args": [i]})


def test_a_deleted_database_comes_back_whole(start_server: Callable[..., ServerProcess],
                                             tmp_path: Path) -> None:
    root = tmp_path / "store"
    settings = {"store": root.as_uri(), "admin_token": ADMIN, "history_retention": 3600}
    node = start_server(tmp_path / "node", **settings)
    with node.client() as http:
        make(http, "oops")
        ok(http.post("/v1/databases/oops/branches", json={"name": "feature"}), 201)
        run(http, "oops", "INSERT INTO t VALUES (100)", branch="feature")
        run(http, "oops", "INSERT INTO t VALUES (3)")  # acknowledged just before the delete
        before = time.time()
        assert http.delete("/v1/databases/oops").status_code == 204
        error(http.get("/v1/databases/oops"), 404, "DATABASE_NOT_FOUND")
        error(http.post("/v1/databases/oops/query", json={"statements": ["SELECT 1"]}), 404,
              "DATABASE_NOT_FOUND")
        assert "oops" not in {d["name"] for d in ok(http.get("/v1/databases"))["databases"]}
        assert not (tmp_path / "node" / "dbs" / "oops").exists()  # local files go at once
        [listed] = [d for d in deleted(http) if d["name"] == "oops"]
        assert listed["branches"] == ["feature", "main"]
        gone_at = datetime.fromisoformat(str(listed["deleted_at"])).timestamp()
        until = datetime.fromisoformat(str(listed["restorable_until"])).timestamp()
        assert before - 1 <= gone_at <= time.time() + 1 and until - gone_at == 3600
        back = ok(http.post("/v1/databases/oops/undelete"))
        assert back["name"] == "oops" and {b["name"] for b in back["branches"]} == \
            {"main", "feature"}
        assert values(http, "oops") == [0, 1, 2, 3]
        assert values(http, "oops", "feature") == [0, 1, 2, 100]
        run(http, "oops", "INSERT INTO t VALUES (4)")  # writable again
        assert not [d for d in deleted(http) if d["name"] == "oops"]
        error(http.post("/v1/databases/oops/undelete"), 409, "DATABASE_EXISTS")
    node.stop()
    # the store is the truth: a node on an empty disk has it, and knows what was deleted
    with start_server(tmp_path / "fresh", **settings).client() as http:
        assert values(http, "oops") == [0, 1, 2, 3, 4]
        assert http.delete("/v1/databases/oops").status_code == 204
        assert [d["name"] for d in deleted(http)] == ["oops"]


def test_a_name_is_free_at_once_and_each_incarnation_stays_restorable(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    settings = {"store": (tmp_path / "store").as_uri(), "admin_token": ADMIN}
    node = start_server(tmp_path / "node", **settings)
    with node.client() as http:
        make(http, "app", 2)
        assert http.delete("/v1/databases/app").status_code == 204
        make(http, "app", 5)  # the name is free: a new, empty database
        assert values(http, "app") == [0, 1, 2, 3, 4]
        error(http.post("/v1/databases/app/undelete"), 409, "DATABASE_EXISTS")
        assert http.delete("/v1/databases/app").status_code == 204
        gone = [d for d in deleted(http) if d["name"] == "app"]
        assert len(gone) == 2 and gone[0]["incarnation"] != gone[1]["incarnation"]
        old = str(gone[0]["incarnation"])
        ok(http.post("/v1/databases/app/undelete", json={"incarnation": old}))
        assert values(http, "app") == [0, 1]  # the one asked for, not the newest
        error(http.post("/v1/databases/app/undelete", json={"incarnation": "nope"}), 409,
              "DATABASE_EXISTS")
        error(http.post("/v1/databases/app/undelete", json={"incarnation": 7}), 400,
              "INVALID_REQUEST")


def test_restoring_a_deleted_name_brings_it_back_at_that_time(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    settings = {"store": (tmp_path / "store").as_uri(), "admin_token": ADMIN,
                "durability": "remote"}
    node = start_server(tmp_path / "node", **settings)
    with node.client() as http:
        make(http, "timely", 2)
        time.sleep(0.05)
        point = time.time()
        time.sleep(0.05)
        run(http, "timely", "INSERT INTO t VALUES (9)")
        assert http.delete("/v1/databases/timely").status_code == 204
        out = ok(http.post("/v1/databases/timely/restore", json={"timestamp": iso(point)}))
        assert values(http, "timely") == [0, 1]
        assert values(http, "timely", out["kept_as"]) == [0, 1, 9]


def test_purge_removes_it_and_its_history_at_once(start_server: Callable[..., ServerProcess],
                                                  tmp_path: Path) -> None:
    root = tmp_path / "store"
    settings = {"store": root.as_uri(), "admin_token": ADMIN}
    node = start_server(tmp_path / "node", **settings)
    with node.client() as http:
        make(http, "temp")
        make(http, "other")
        assert http.delete("/v1/databases/temp").status_code == 204
        assert any((root / "dbs" / "temp").rglob("*.seg"))
        assert http.delete("/v1/databases/temp?purge=true").status_code == 204  # a deleted one
        assert not list((root / "dbs" / "temp").rglob("*.*"))
        left = json.loads((root / "catalog" / "databases" / "temp.json").read_text())
        assert left["incarnation"] is None and left["deleted"] == []  # an empty record
        assert "temp" not in {d["name"] for d in deleted(http)}
        error(http.post("/v1/databases/temp/undelete"), 404, "DATABASE_NOT_FOUND")
        error(http.delete("/v1/databases/temp?purge=true"), 404, "DATABASE_NOT_FOUND")
        # a live one, purged in one call: gone, and a new one of the name starts empty
        assert http.delete("/v1/databases/other?purge=yes").status_code == 400
        assert http.delete("/v1/databases/other?purge=true").status_code == 204
        assert not deleted(http)
        make(http, "other", 1)
        assert values(http, "other") == [0]
        # purging a live database removes that one, not an older deleted one of the name
        assert http.delete("/v1/databases/other").status_code == 204
        make(http, "other", 2)
        assert http.delete("/v1/databases/other?purge=true").status_code == 204
        [kept] = deleted(http)
        ok(http.post("/v1/databases/other/undelete", json={"incarnation": kept["incarnation"]}))
        assert values(http, "other") == [0]


def test_deleted_databases_follow_token_scopes(start_server: Callable[..., ServerProcess],
                                               tmp_path: Path) -> None:
    settings = {"store": (tmp_path / "store").as_uri(), "admin_token": ADMIN}
    node = start_server(tmp_path / "node", **settings)
    with node.client() as http:
        make(http, "mine", 1)
        make(http, "theirs", 1)
        scoped = ok(http.post("/v1/tokens", json={"databases": ["mine"], "access": "admin"}),
                    201)["token"]
        writer = ok(http.post("/v1/tokens", json={"databases": ["mine"], "access": "write"}),
                    201)["token"]
        for db in ("mine", "theirs"):
            assert http.delete(f"/v1/databases/{db}").status_code == 204
    with node.client(scoped) as http:
        assert [d["name"] for d in deleted(http)] == ["mine"]
        error(http.post("/v1/databases/theirs/undelete"), 403, "FORBIDDEN")
        ok(http.post("/v1/databases/mine/undelete"))
    with node.client(writer) as http:
        error(http.delete("/v1/databases/mine"), 403, "FORBIDDEN")
        error(http.get("/v1/databases?deleted=true"), 403, "FORBIDDEN")
