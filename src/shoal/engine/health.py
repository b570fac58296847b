"""The node's readiness: the conditions under which it refuses writes (or everything).

``/health`` is liveness (the process answers); readiness is what a load balancer
or an operator needs: ``ok``, ``degraded`` (serving, but something needs
attention) or ``read_only`` (reads are served, writes are refused), with the
reasons. Parts of the engine raise and clear named conditions here (the lease,
the object store, a full disk, a branch fenced out by another writer); each
transition into or out of refusing writes is logged once at WARNING, so an
operator's log shows when the node stopped taking writes and when it resumed.

`Watch` raises the engine's own conditions (``lease``, ``store``, ``log_conflict``)
from what the engine's sweeper sees every 0.25 s, so the WARNING line appears at the
transition even when nobody asks ``/ready``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from shoal.settings import Settings
from shoal.storage.fenced import Fenced

if TYPE_CHECKING:
    from shoal.engine.database import Database


class Held(Protocol):
    """What lets this node write to the store: the store's lease, or a cluster member's
    record (``shoal.cluster``). ``check`` raises Fenced unless it is held now."""

    def check(self) -> None: ...


log = logging.getLogger("shoal.health")

OK = "ok"
DEGRADED = "degraded"
READ_ONLY = "read_only"
LEVELS = (OK, DEGRADED, READ_ONLY)  # a status's index is its rank (the shoal_readiness gauge)
_RANK = {level: rank for rank, level in enumerate(LEVELS)}
_SAYS = {OK: "the node is ready", DEGRADED: "the node serves but needs attention",
         READ_ONLY: "the node refuses writes"}

LEASE = "lease"
STORE = "store"
LOG_CONFLICT = "log_conflict"
STORE_GRACE = 2.0  # seconds uploads keep failing before the store counts (a blip is retried)


@dataclass(frozen=True)
class Condition:
    """One reason the node is not fully ready: ``level`` is DEGRADED or READ_ONLY."""

    name: str  # stable identifier, e.g. "disk_full", "lease", "store"
    level: str
    message: str
    since: float  # seconds since the epoch


class Health:
    """Thread-safe set of named conditions (the lease thread and I/O threads report too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conditions: dict[str, Condition] = {}

    def set(self, name: str, level: str, message: str) -> None:
        """Raise (or update) a condition; logs when the node's status changes."""
        if level not in (DEGRADED, READ_ONLY):
            raise ValueError(f"unknown readiness level {level!r}")
        with self._lock:
            before = self._status()
            old = self._conditions.get(name)
            since = old.since if old is not None and old.level == level else time.time()
            self._conditions[name] = Condition(name, level, message, since)
            after = self._status()
            new = old is None or old.level != level
        if new:
            log.warning("readiness %s (was %s): %s; %s %s: %s", after, before, _SAYS[after],
                        name, level, message)

    def clear(self, name: str) -> None:
        """Drop a condition if raised; logs when the node's status changes."""
        with self._lock:
            before = self._status()
            old = self._conditions.pop(name, None)
            after = self._status()
        if old is not None:
            log.warning("readiness %s (was %s): %s; %s cleared (was %s: %s)", after, before,
                        _SAYS[after], name, old.level, old.message)

    def active(self, name: str) -> bool:
        return name in self._conditions

    def _status(self) -> str:
        worst = OK
        for cond in self._conditions.values():
            if _RANK[cond.level] > _RANK[worst]:
                worst = cond.level
        return worst

    @property
    def status(self) -> str:
        with self._lock:
            return self._status()

    def conditions(self) -> list[Condition]:
        return self.report()[1]

    def report(self) -> tuple[str, list[Condition]]:
        """The status and the conditions behind it, read together (for /ready)."""
        with self._lock:
            return self._status(), sorted(self._conditions.values(), key=lambda c: c.name)


def _branches(n: int) -> str:
    return f"{n} open branch" + ("" if n == 1 else "es")


class Watch:
    """The engine's own conditions, polled by its sweeper: the lease (``lease``), the
    object store (``store``) and branches whose shipping stopped for good
    (``log_conflict``). Each poll costs a clock read and a few attribute reads per open
    branch; nothing here touches the store."""

    def __init__(self, health: Health, lease: Held | None, settings: Settings,
                 clock: Callable[[], float] = time.monotonic):
        self.health = health
        self.lease = lease
        self.limit: float = settings.max_unshipped_bytes or math.inf
        self.remote = settings.durability == "remote"
        self.lag_limit = float(settings.storage_timeout)
        self.clock = clock
        self._failing_since: float | None = None

    def poll(self, databases: Iterable[Database]) -> None:
        if self.lease is not None:
            self._lease(self.lease)
        self._store(databases)

    def _lease(self, lease: Held) -> None:
        """Writes are refused (Database._check_log) while the lease is not held."""
        try:
            lease.check()
        except Fenced as exc:
            self.health.set(LEASE, READ_ONLY, f"{exc}; writes get 503 STORAGE_UNAVAILABLE "
                                              f"until a renewal succeeds")
            return
        self.health.clear(LEASE)

    def _store(self, databases: Iterable[Database]) -> None:
        """Failing uploads make the node degraded (commits wait on its disk); writes refused
        for the backlog (max_unshipped_bytes) or timing out for the store (remote
        durability past storage_timeout) make it read-only."""
        failing = behind = stalled = lagging = conflicted = 0
        error: BaseException | None = None
        now = time.time()
        for db in databases:
            journal = db.journal
            shipper = journal.shipper if journal is not None else None
            if journal is None or shipper is None:
                continue
            if journal.failed is not None:
                conflicted += 1
                continue
            if shipper.last_error is not None:
                failing, error = failing + 1, shipper.last_error
            oldest = shipper.oldest_unshipped()
            late = oldest is not None and now - oldest > self.lag_limit
            lagging += late
            if shipper.backlog_bytes > self.limit:
                behind += 1
            elif late and self.remote:
                stalled += 1
        self._conflicts(conflicted)
        if not failing:
            self._failing_since = None
        elif self._failing_since is None:
            self._failing_since = self.clock()
        since = self._failing_since
        why = f" (last error: {type(error).__name__})" if error is not None else ""
        if behind or stalled:
            parts = []
            if behind:
                parts.append(f"{_branches(behind)} hold more unshipped commits than "
                             f"max_unshipped_bytes")
            if stalled:
                parts.append(f"{_branches(stalled)} wait for the object store past "
                             f"storage_timeout (remote durability)")
            self.health.set(STORE, READ_ONLY, f"writes are refused: {'; '.join(parts)}{why}")
            return
        if since is not None and self.clock() - since >= STORE_GRACE:
            self.health.set(STORE, DEGRADED, f"uploads to the object store are failing for "
                                             f"{_branches(failing)} and are retried{why}; "
                                             f"commits wait on this node's disk")
        elif lagging:
            self.health.set(STORE, DEGRADED, f"{_branches(lagging)} have commits older than "
                                             f"storage_timeout not yet in the object store")
        elif not failing:
            self.health.clear(STORE)
        # else: failing for less than STORE_GRACE: a blip so far, the condition stays as is

    def _conflicts(self, conflicted: int) -> None:
        if conflicted:
            self.health.set(LOG_CONFLICT, DEGRADED, f"{_branches(conflicted)} stopped "
                                                    f"shipping: another writer wrote to their "
                                                    f"history in the store; they refuse writes")
        else:
            self.health.clear(LOG_CONFLICT)
