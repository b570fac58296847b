"""200 concurrent clients mixing reads and writes on 20 databases against a real node.

Every acknowledged write must be present afterwards, read-your-writes must hold,
and the only failures allowed are the ones the workload provokes on purpose
(a duplicate key, answered 400 SQLITE_CONSTRAINT).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.integration.api_support import wait_until
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

CLIENTS = 200
OPS = 10
DATABASES = 20
ADMIN = "concurrency-admin-token"


@dataclass
class Tally:
    acked: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    txids: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)


def names() -> list[str]:
    return [f"conc{i:02d}" for i in range(DATABASES)]


async def client_run(url: str, client: int, start: asyncio.Barrier, tally: Tally) -> None:
    # Each client is its own keep-alive connection, like one serverless function instance.
    # (verify=False: plain HTTP needs no TLS context, which costs ~20 ms per client.)
    async with httpx.AsyncClient(base_url=url, timeout=30, verify=False,
                                 headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        await client_ops(http, client, start, tally)


async def client_ops(http: httpx.AsyncClient, client: int, start: asyncio.Barrier,
                     tally: Tally) -> None:
    rng = random.Random(client)
    mine: list[tuple[str, str]] = []  # (database, id) this client has had acknowledged
    await http.get("/health")  # connect before the start line
    await start.wait()
    for op in range(OPS):
        db = rng.choice(names())
        roll = rng.random()
        if roll < 0.5 or not mine:  # a write: one row, or three rows in one request
            uid = f"c{client}-o{op}"
            many = rng.random() < 0.3
            rows = [f"{uid}-{k}" for k in range(3)] if many else [uid]
            body = {"statements": [
                {"sql": "INSERT INTO w(id, client, payload) VALUES (?, ?, ?)",
                 "args": [r, client, {"base64": "AAEC"}]} for r in rows]}
            r = await http.post(f"/v1/databases/{db}/query", json=body)
            if r.status_code == 200:
                meta = r.json()["meta"]
                tally.statuses["write 200"] += 1
                tally.acked[db].update(rows)
                tally.txids[db].append(meta["txid"])
                if meta["rows_written"] != len(rows):
                    tally.unexpected.append(f"rows_written {meta} for {rows}")
                mine.append((db, rows[0]))
            else:
                tally.unexpected.append(f"write {db} {r.status_code} {r.text[:200]}")
        elif roll < 0.85:  # read-your-writes: an acknowledged row is visible at once
            pdb, pid = rng.choice(mine)
            r = await http.post(f"/v1/databases/{pdb}/query", json={"statements": [
                {"sql": "SELECT id, client FROM w WHERE id = ?", "args": [pid]},
                "SELECT count(*) FROM w"]})
            if r.status_code != 200:
                tally.unexpected.append(f"read {pdb} {r.status_code} {r.text[:200]}")
                continue
            tally.statuses["read 200"] += 1
            results = r.json()["results"]
            if results[0]["rows"] != [[pid, client]] or results[1]["rows"][0][0] < 1:
                tally.unexpected.append(f"read {pdb} {pid}: {results}")
        else:  # by design: a duplicate key fails alone with a clear 400
            pdb, pid = rng.choice(mine)
            r = await http.post(f"/v1/databases/{pdb}/query", json={"statements": [
                {"sql": "INSERT INTO w(id, client) VALUES (?, ?)", "args": [pid, client]}]})
            err = r.json().get("error", {}) if r.status_code == 400 else {}
            if err.get("code") == "SQLITE_CONSTRAINT" and err.get("statement") == 0:
                tally.statuses["duplicate 400"] += 1
            else:
                tally.unexpected.append(f"duplicate {pdb} {r.status_code} {r.text[:200]}")


async def workload(url: str) -> Tally:
    tally = Tally()
    start = asyncio.Barrier(CLIENTS)  # all 200 connected, then all start at once
    await asyncio.wait_for(
        asyncio.gather(*(client_run(url, c, start, tally) for c in range(CLIENTS))),
        timeout=60)
    return tally


def check_after(node: ServerProcess, tally: Tally) -> None:
    with node.client() as http:
        for db in names():
            r = http.post(f"/v1/databases/{db}/query", json={"statements": [
                "SELECT id FROM w", "PRAGMA integrity_check"]})
            assert r.status_code == 200, r.text
            results = r.json()["results"]
            present = {row[0] for row in results[0]["rows"]}
            missing = tally.acked[db] - present
            assert not missing, f"{db}: acknowledged writes lost: {sorted(missing)[:10]}"
            # nothing else wrote, and every write was acknowledged
            assert present == tally.acked[db]
            assert results[1]["rows"] == [["ok"]]
            info = http.get(f"/v1/databases/{db}").json()
            assert info["txid"] >= max(tally.txids[db])
            # txids of acknowledged writes never exceed the branch's count of commits
            assert all(1 < t <= info["txid"] for t in tally.txids[db])


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="all-open"),
        # scale to zero under load: databases close and reopen while clients hammer them
        pytest.param({"max_open": 5, "idle_timeout": 0.2}, id="max_open-5"),
    ],
)
def test_200_clients_on_20_databases(start_server: Callable[..., ServerProcess],
                                     settings: dict[str, Any]) -> None:
    node = start_server(admin_token=ADMIN, **settings)
    with node.client() as http:
        for db in names():
            assert http.post("/v1/databases", json={"name": db}).status_code == 201
            r = http.post(f"/v1/databases/{db}/query", json={"statements": [
                "CREATE TABLE w(id TEXT PRIMARY KEY, client INTEGER NOT NULL, payload BLOB)"]})
            assert r.status_code == 200, r.text

    tally = asyncio.run(workload(node.url))

    assert tally.unexpected == []
    assert sum(tally.statuses.values()) == CLIENTS * OPS
    assert tally.statuses["write 200"] > CLIENTS * OPS // 3
    assert tally.statuses["read 200"] > 0 and tally.statuses["duplicate 400"] > 0
    check_after(node, tally)
    # group commit shared fsyncs between concurrent writers somewhere
    assert any(len(set(t)) < len(t) for t in tally.txids.values())
    if "idle_timeout" in settings:  # and once the load stops, every database scales to zero
        with node.client() as http:
            wait_until(lambda: not any(http.get(f"/v1/databases/{db}").json()["open"]
                                       for db in names()), what="idle databases to close")
    assert node.proc is not None and node.proc.poll() is None
    assert "Traceback" not in (node.log_path.read_text() if node.log_path else "")
