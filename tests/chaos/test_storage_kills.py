"""kill -9 while commits ship and while checkpoints and snapshots run, ten rounds each.

Shipping: ``local`` durability with a tiny ``sync_interval`` keeps uploads in
flight all the time; the node is killed at a random moment and restarted on the
same disk, where the WAL still holds what the store lacks: nothing acknowledged
may be lost, and once a node stops cleanly a node on an empty disk has it all.

Checkpoints: ``remote`` durability with a checkpoint every few WAL frames and a
snapshot after every checkpoint; every round starts on an empty disk, so each
hydrates from snapshots and the log that the killed rounds left behind (the killed
node's lease is released for it: tests/support/lease.py).
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.storage import open_store
from tests.support.lease import release_killed_lease
from tests.support.server import ServerProcess
from tests.support.storage import (
    TABLE,
    Acked,
    Writers,
    assert_log_contiguous,
    ids,
    ok,
    rows,
    run,
)

pytestmark = pytest.mark.slow

ROUNDS = 10
ADMIN = "kills-admin-token"
TARGETS = [("k1", "main"), ("k2", "main")]


def setup(node: ServerProcess) -> None:
    with node.client() as http:
        for db, _ in TARGETS:
            ok(http.post("/v1/databases", json={"name": db}), 201)
            run(http, db, TABLE)


def verify(node: ServerProcess, acked: Acked) -> None:
    with node.client() as http:
        for db, branch in TARGETS:
            missing = acked.ids(db, branch) - ids(http, db, branch)
            assert not missing, f"{db}/{branch} lost {sorted(missing)[:5]}"
            assert rows(http, db, "PRAGMA integrity_check", branch) == [["ok"]]


def test_kill_during_shipping(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    rng = random.Random(11)
    root = tmp_path / "store"
    settings = {"store": root.as_uri(), "admin_token": ADMIN, "durability": "local",
                "sync_interval": 0.005}
    acked = Acked()
    for round_ in range(ROUNDS):
        node = start_server(tmp_path / "node", **settings)
        if round_ == 0:
            setup(node)
        else:
            verify(node, acked)
        with Writers(node, TARGETS, f"s{round_}", acked, warmup=rng.randint(2, 40)) as w:
            w.wait_ready()
            node.kill()
        assert acked.errors == []
    node = start_server(tmp_path / "node", **settings)
    verify(node, acked)
    node.stop()  # a clean stop ships the rest
    shutil.rmtree(tmp_path / "node")
    node = start_server(tmp_path / "fresh", **settings)
    verify(node, acked)
    store = open_store(root.as_uri())
    for db, branch in TARGETS:
        assert_log_contiguous(store, db, branch)


def test_kill_during_checkpoints(start_server: Callable[..., ServerProcess],
                                 tmp_path: Path) -> None:
    rng = random.Random(12)
    root = tmp_path / "store"
    settings = {"store": root.as_uri(), "admin_token": ADMIN, "durability": "remote",
                "checkpoint_frames": 6, "snapshot_log_bytes": 1, "snapshot_log_ratio": 0.0}
    store = open_store(root.as_uri())
    acked = Acked()
    for round_ in range(ROUNDS):
        node = start_server(tmp_path / f"node{round_}", **settings)  # an empty disk each time
        if round_ == 0:
            setup(node)
        else:
            verify(node, acked)
        with Writers(node, TARGETS, f"c{round_}", acked, pad=3000,
                     warmup=rng.randint(5, 40)) as w:
            w.wait_ready()
            node.kill()
        assert acked.errors == []
        release_killed_lease(node, store)  # the next round's empty disk need not wait it out
    snaps = list((root / "dbs").glob("*/snap/*/*.snap"))
    assert len(snaps) > 2 * len(TARGETS), "checkpoints took no snapshots"
    node = start_server(tmp_path / "last", **settings)
    verify(node, acked)
