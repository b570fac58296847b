"""Point in time: restore a branch to 50 random commits, by timestamp and by bookmark.

After every commit the test records a checksum of the table's logical content,
the commit's bookmark and the time it was acknowledged. A commit's time lies
between its request and its answer, and requests are sent one at a time, so
restoring to the answer's time must give exactly that commit's state. Every
restored state must match its checksum and pass ``PRAGMA integrity_check``;
every restore keeps the state before it as a branch, named in the answer.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shoal.engine.database import make_bookmark
from tests.support.server import ServerProcess
from tests.support.storage import checksum, iso, ok, rows, run

COMMITS = 60
RESTORES = 50
DB = "pit"


@dataclass(frozen=True)
class Point:
    txid: int
    bookmark: str
    acked_at: float
    digest: str


def restore(http: httpx.Client, body: dict[str, str]) -> dict[str, object]:
    out: dict[str, object] = ok(http.post(f"/v1/databases/{DB}/restore", json=body))
    return out


def check(http: httpx.Client, point: Point, how: str) -> None:
    assert checksum(http, DB) == point.digest, f"restore by {how} to txid {point.txid}"
    assert rows(http, DB, "PRAGMA integrity_check") == [["ok"]]
    assert run(http, DB, "SELECT 1")["meta"]["txid"] == point.txid


def workload(http: httpx.Client, rng: random.Random) -> list[Point]:
    done = run(http, DB, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    points = [Point(done["meta"]["txid"], done["meta"]["bookmark"], time.time(),
                    checksum(http, DB))]
    for i in range(COMMITS):
        roll = rng.random()
        if roll < 0.6:
            stmts = [{"sql": "INSERT INTO t(v) VALUES (?)",
                      "args": [f"{i}-{k}" * rng.randint(1, 40)]}
                     for k in range(rng.randint(1, 4))]
        elif roll < 0.8:
            stmts = [{"sql": "UPDATE t SET v = v || ? WHERE id % 3 = ?", "args": [str(i), i % 3]}]
        else:
            stmts = [{"sql": "DELETE FROM t WHERE id % 5 = ?", "args": [i % 5]}]
        meta = run(http, DB, *stmts)["meta"]
        acked_at = time.time()
        points.append(Point(meta["txid"], meta["bookmark"], acked_at, checksum(http, DB)))
    return points


def test_restore_to_random_timestamps_and_bookmarks(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    rng = random.Random(1234)
    node = start_server(tmp_path / "node", store=(tmp_path / "store").as_uri())
    with node.client() as http:
        ok(http.post("/v1/databases", json={"name": DB}), 201)
        points = workload(http, rng)
        txids = [p.txid for p in points]
        assert txids == list(range(1, COMMITS + 2))  # one commit per request, no gaps

        window = ok(http.get(f"/v1/databases/{DB}/history"))
        assert window["earliest"]["txid"] == 0 and window["latest"]["txid"] == txids[-1]

        # By timestamp, latest first: each restore forks the branch at its target, so the
        # branch's own history (the one a timestamp resolves in) reaches every earlier point.
        by_time = sorted(rng.sample(points, RESTORES // 2), key=lambda p: -p.txid)
        first = None
        for point in by_time:
            out = restore(http, {"branch": "main", "timestamp": iso(point.acked_at)})
            assert out["restored_to"]["txid"] == point.txid  # type: ignore[index]
            first = first or out["kept_as"]
            check(http, point, "timestamp")

        # By bookmark, in any order: a bookmark names its timeline, so it reaches points the
        # branch's current history no longer holds.
        last = points[-1]
        for last in rng.sample(points, RESTORES - RESTORES // 2):
            out = restore(http, {"branch": "main", "bookmark": last.bookmark})
            assert out["restored_to"]["txid"] == last.txid  # type: ignore[index]
            check(http, last, "bookmark")

        # the state before the first restore is a branch of its own, whole
        assert isinstance(first, str)
        assert checksum(http, DB, first) == points[-1].digest
        names = {b["name"] for b in ok(http.get(f"/v1/databases/{DB}/branches"))["branches"]}
        assert first in names and len(names) == RESTORES + 1

        # and main goes on from the restored point with the next txid
        meta = run(http, DB, "INSERT INTO t(v) VALUES ('next')")["meta"]
        assert meta["txid"] == last.txid + 1


@pytest.mark.parametrize(("body", "code"), [
    ({"timestamp": "2001-01-01T00:00:00Z"}, "OUTSIDE_HISTORY"),
    ({"timestamp": "2999-01-01T00:00:00Z"}, "OUTSIDE_HISTORY"),  # never quietly the latest
    ({}, "INVALID_REQUEST"),
    ({"timestamp": "yesterday"}, "INVALID_REQUEST"),
    ({"branch": "nope", "timestamp": "2001-01-01T00:00:00Z"}, "BRANCH_NOT_FOUND"),
    ({"bookmark": "garbage!"}, "INVALID_REQUEST"),
    ({"bookmark": "future"}, "OUTSIDE_HISTORY"),
])
def test_restore_refuses_points_it_cannot_reach(
        admin: httpx.Client, new_db: Callable[[], str], body: dict[str, str],
        code: str) -> None:
    name = new_db()
    meta = run(admin, name, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")["meta"]
    if body.get("bookmark") == "future":  # a txid this branch has not reached
        body = {"bookmark": make_bookmark(name, "main", meta["txid"] + 5)}
    r = admin.post(f"/v1/databases/{name}/restore", json=body)
    assert r.json()["error"]["code"] == code, r.text
    assert run(admin, name, "SELECT count(*) FROM t")["meta"]["txid"] == meta["txid"]
