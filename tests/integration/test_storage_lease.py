"""One writing node per store: real `shoal serve` processes sharing one file store.

Two nodes writing one store would fork its branches' histories. The lease keeps a
second node out while the first lives, lets the next one in at once after a clean stop
and after ``lease_ttl`` when the holder was killed, and stops a node whose lease was
taken from it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.engine.engine import EXIT_LEASE_LOST
from tests.support.server import ServerProcess
from tests.support.storage import ids, ok, run

ADMIN = "lease-admin-token"
TTL = 2.0


@pytest.fixture
def settings(tmp_path: Path) -> dict[str, object]:
    return {"store": (tmp_path / "store").as_uri(), "admin_token": ADMIN, "lease_ttl": TTL,
            "durability": "remote"}


def refused(node: ServerProcess) -> str:
    """Start a node expected not to start; its log."""
    with pytest.raises(RuntimeError, match="shoal serve exited"):
        node.start(timeout=30)
    assert node.proc is not None and node.proc.returncode == 1
    return node.log()


def insert(node: ServerProcess, *values: str) -> None:
    with node.client() as http:
        for v in values:
            run(http, "shared", {"sql": "INSERT INTO w(id) VALUES (?)", "args": [v]})


def holder(node: ServerProcess) -> ServerProcess:
    """The first node on the store, with a database and one acknowledged row."""
    with node.client() as http:
        ok(http.post("/v1/databases", json={"name": "shared"}), 201)
        run(http, "shared", "CREATE TABLE w(id TEXT PRIMARY KEY)")
    insert(node, "a1")
    return node


def test_a_second_node_waits_for_the_first_and_gives_up_while_it_lives(
        start_server: Callable[..., ServerProcess], tmp_path: Path,
        settings: dict[str, object]) -> None:
    first = holder(start_server(tmp_path / "first", **settings))
    second = ServerProcess(tmp_path / "second", settings | {"lease_wait": 2 * TTL})
    log = refused(second)
    assert "STORE_IN_USE" in log and "renewed its lease" in log
    # the same data directory is refused to a second process at once
    log = refused(ServerProcess(tmp_path / "first", settings))
    assert "DATA_DIR_CONFLICT" in log and "in use by another process" in log
    insert(first, "a2")  # the holder never noticed
    # a clean stop releases the lease: the next node starts without waiting
    first.stop()
    third = start_server(tmp_path / "third", **settings, lease_wait=0)
    with third.client() as http:
        assert ids(http, "shared") == {"a1", "a2"}


def test_a_killed_holder_is_replaced_after_ttl_and_its_disk_is_not_trusted_again(
        start_server: Callable[..., ServerProcess], tmp_path: Path,
        settings: dict[str, object]) -> None:
    first = holder(start_server(tmp_path / "first", **settings))
    first.kill()
    assert "STORE_IN_USE" in refused(ServerProcess(tmp_path / "eager", settings |
                                                   {"lease_wait": 0}))
    second = start_server(tmp_path / "second", **settings, lease_wait=5 * TTL)
    assert "took over the object store's lease" in second.log()
    insert(second, "b1")
    second.stop()
    # the first node's disk comes back: another node wrote since, so its copies are dropped
    again = start_server(tmp_path / "first", **settings, lease_wait=0)
    assert "local copies of branches were dropped" in again.log()
    with again.client() as http:
        assert ids(http, "shared") == {"a1", "b1"}


def test_a_node_whose_lease_is_taken_stops_at_once(
        start_server: Callable[..., ServerProcess], tmp_path: Path,
        settings: dict[str, object]) -> None:
    node = start_server(tmp_path / "node", **settings)
    with node.client() as http:
        ok(http.post("/v1/databases", json={"name": "shared"}), 201)
    lease = tmp_path / "store" / "node" / "lease.json"
    taken = json.loads(lease.read_text()) | {"node": "intruder", "pid": 1}
    lease.write_text(json.dumps(taken))  # what another node's takeover leaves
    assert node.proc is not None
    try:
        assert node.proc.wait(timeout=10 * TTL) == EXIT_LEASE_LOST
    except subprocess.TimeoutExpired:
        pytest.fail(f"the node kept running without its lease: {node.log()}")
    assert "held by node intruder" in node.log()
