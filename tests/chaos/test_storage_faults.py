"""Shipping through a store that fails: errors, timeouts and partial writes at 10%.

The node runs on ``faulty+file://...?rate=0.1``: every store call may fail, time
out (applied or not) or leave a truncated object. Writers keep going; then the
faults stop (the next node uses the same folder without the wrapper). Nothing
acknowledged may be lost and the log must be complete: contiguous segments,
every one valid, from txid 1 to the head. The killed node's lease is released for the
node on an empty disk (tests/support/lease.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.storage import open_store
from tests.support.lease import release_killed_lease
from tests.support.server import ServerProcess
from tests.support.storage import TABLE, Acked, Writers, assert_log_contiguous, ids, ok, run

pytestmark = pytest.mark.slow

ADMIN = "faults-admin-token"
TARGETS = [("one", "main"), ("two", "main"), ("one", "side")]


def faulty(root: Path, seed: int) -> str:
    return f"faulty+{root.as_uri()}?rate=0.1&seed={seed}"


def setup(node: ServerProcess) -> None:
    with node.client() as http:
        for db in ("one", "two"):
            ok(http.post("/v1/databases", json={"name": db}), 201)
            run(http, db, TABLE)
        ok(http.post("/v1/databases/one/branches", json={"name": "side"}), 201)


def verify(node: ServerProcess, acked: Acked) -> None:
    with node.client() as http:
        for db, branch in TARGETS:
            missing = acked.ids(db, branch) - ids(http, db, branch)
            assert not missing, f"{db}/{branch} lost {sorted(missing)[:5]}"


@pytest.mark.parametrize("durability", ["local", "remote"])
def test_shipping_catches_up_with_no_gap_once_faults_stop(
        durability: str, start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    root = tmp_path / "store"
    common = {"admin_token": ADMIN, "durability": durability, "sync_interval": 0.02,
              "storage_timeout": 60}
    node = start_server(tmp_path / "node", store=faulty(root, 7), **common)
    setup(node)
    acked = Acked()
    with Writers(node, TARGETS, "f", acked, warmup=40) as writers:
        writers.wait_ready(60)
    assert acked.errors == []
    node.kill()
    assert "failed (attempt" in node.log(), "no fault was injected"

    if durability == "local":  # what the store missed is in the local WAL: same disk, healed
        node = start_server(tmp_path / "node", store=root.as_uri(), **common)
        verify(node, acked)
        with node.client() as http:
            for db, branch in TARGETS:  # history waits until every commit is in the store
                base = f"/v1/databases/{db}" + ("" if branch == "main" else f"/branches/{branch}")
                ok(http.get(base + "/history"))
        node.kill()
    release_killed_lease(node, open_store(root.as_uri()))
    shutil.rmtree(tmp_path / "node")

    fresh = start_server(tmp_path / "fresh", store=root.as_uri(), **common)
    verify(fresh, acked)
    store = open_store(root.as_uri())
    for db, branch in TARGETS:
        head = assert_log_contiguous(store, db, branch)
        with fresh.client() as http:
            base = f"/v1/databases/{db}" + ("" if branch == "main" else f"/branches/{branch}")
            assert ok(http.get(base + "/history"))["latest"]["txid"] == head
