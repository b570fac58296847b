"""Readiness: named conditions, the status they add up to, and the engine's own watch.

`Health` logs a WARNING at each transition; `Watch` turns what the sweeper sees (the
lease, each open branch's shipper) into the ``lease``, ``store`` and ``log_conflict``
conditions. Fakes stand in for the lease and the open branches: only the attributes
the watch reads.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from shoal.engine.health import (
    DEGRADED,
    LEASE,
    LOG_CONFLICT,
    OK,
    READ_ONLY,
    STORE,
    STORE_GRACE,
    Health,
    Watch,
)
from shoal.storage.fenced import Fenced

NOW = 1_000_000.0


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "shoal.health" and r.levelno == logging.WARNING]


def test_the_worst_condition_is_the_status_and_each_transition_is_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "shoal.health")
    health = Health()
    assert health.report() == (OK, [])
    health.set("store", DEGRADED, "uploads fail")
    health.set("store", DEGRADED, "uploads fail (3 branches)")  # same level: no new line
    health.set("disk_full", READ_ONLY, "no space left on /data")  # another engineer's hook
    status, conditions = health.report()
    assert status == READ_ONLY and [c.name for c in conditions] == ["disk_full", "store"]
    assert conditions[1].message == "uploads fail (3 branches)"
    health.clear("disk_full")
    health.clear("disk_full")  # nothing to clear: no line
    assert health.status == DEGRADED
    health.clear("store")
    assert health.status == OK
    assert warnings(caplog) == [
        "readiness degraded (was ok): the node serves but needs attention; "
        "store degraded: uploads fail",
        "readiness read_only (was degraded): the node refuses writes; "
        "disk_full read_only: no space left on /data",
        "readiness degraded (was read_only): the node serves but needs attention; "
        "disk_full cleared (was read_only: no space left on /data)",
        "readiness ok (was degraded): the node is ready; "
        "store cleared (was degraded: uploads fail (3 branches))",
    ]
    with pytest.raises(ValueError):
        health.set("x", OK, "ok is no condition")


def test_since_is_kept_while_the_level_stays() -> None:
    health = Health()
    health.set("store", DEGRADED, "a")
    since = health.conditions()[0].since
    health.set("store", DEGRADED, "b")
    assert health.conditions()[0].since == since


class FakeLease:
    def __init__(self) -> None:
        self.held = True

    def check(self) -> None:
        if not self.held:
            raise Fenced("this node does not hold the object store's lease: it has not "
                         "been renewed for 11.25 s")


def branch(*, error: BaseException | None = None, backlog: int = 0, age: float | None = None,
           failed: Exception | None = None) -> Any:
    """An open branch as the watch sees it: its journal's failure and its shipper."""
    shipper = SimpleNamespace(last_error=error, backlog_bytes=backlog,
                              oldest_unshipped=lambda: None if age is None else NOW - age)
    return SimpleNamespace(journal=SimpleNamespace(failed=failed, shipper=shipper))


def settings(durability: str = "local") -> Any:
    return SimpleNamespace(max_unshipped_bytes=1000, durability=durability,
                           storage_timeout=30.0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The watch's monotonic clock (a list to move it) and a fixed wall clock."""
    monkeypatch.setattr("shoal.engine.health.time.time", lambda: NOW)
    return [0.0]


def watch(health: Health, lease: FakeLease | None, clock: list[float],
          durability: str = "local") -> Watch:
    return Watch(health, lease, settings(durability), clock=lambda: clock[0])  # type: ignore[arg-type]


def test_a_lease_not_held_makes_the_node_read_only_until_it_is_again(
        clock: list[float]) -> None:
    health, lease = Health(), FakeLease()
    w = watch(health, lease, clock)
    w.poll([])
    assert health.status == OK
    lease.held = False
    w.poll([])
    [cond] = health.conditions()
    assert (cond.name, cond.level) == (LEASE, READ_ONLY)
    assert "has not been renewed" in cond.message and "503" in cond.message
    lease.held = True
    w.poll([])
    assert health.report() == (OK, [])


def test_failing_uploads_degrade_the_node_after_a_grace_and_a_backlog_refuses_writes(
        clock: list[float]) -> None:
    health = Health()
    w = watch(health, None, clock)  # a local-only node has no lease: only the store counts
    failing = [branch(error=OSError("down")), branch()]
    w.poll(failing)
    assert health.status == OK  # a blip so far: retried
    clock[0] += STORE_GRACE
    w.poll(failing)
    [cond] = health.conditions()
    assert (cond.name, cond.level) == (STORE, DEGRADED)
    assert "1 open branch " in cond.message and "OSError" in cond.message
    assert "down" not in cond.message  # /ready is open: no error text, which may hold paths
    w.poll([branch(error=OSError("down"), backlog=1001), branch(backlog=5000)])
    [cond] = health.conditions()
    assert cond.level == READ_ONLY and "2 open branches hold more" in cond.message
    w.poll(failing)  # the backlog shipped, uploads still fail: degraded again at once
    assert health.status == DEGRADED
    w.poll([branch(), branch()])
    assert health.report() == (OK, [])


def test_old_unshipped_commits_degrade_a_local_node_and_stop_a_remote_one(
        clock: list[float]) -> None:
    for durability, level in (("local", DEGRADED), ("remote", READ_ONLY)):
        health = Health()
        w = watch(health, None, clock, durability)
        w.poll([branch(age=5.0)])
        assert health.status == OK
        w.poll([branch(age=31.0)])
        [cond] = health.conditions()
        assert (cond.name, cond.level) == (STORE, level), durability
        w.poll([branch(age=1.0)])
        assert health.status == OK


def test_a_branch_whose_shipping_stopped_for_good_degrades_the_node(clock: list[float]) -> None:
    health = Health()
    w = watch(health, None, clock)
    w.poll([branch(failed=Exception("segment held by another writer")), branch(),
            SimpleNamespace(journal=None)])
    [cond] = health.conditions()
    assert (cond.name, cond.level) == (LOG_CONFLICT, DEGRADED)
    assert "refuse writes" in cond.message
    w.poll([branch()])
    assert health.status == OK
