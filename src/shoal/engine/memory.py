"""A node-wide memory ceiling: refuse new work before the OS kills the process.

SQLite's heap limits bound what SQLite allocates; Python allocates too (result rows,
response bodies, request bodies, WebSocket buffers). The node reads its resident memory
every sweep (``/proc/self/statm``, a few microseconds); past ``max_memory_bytes`` it
hands freed memory back (garbage collection, ``malloc_trim``), raises the ``memory``
readiness condition, and refuses new requests with ``503 OVERLOADED`` (the ones
running finish) until it is back under nine tenths of the ceiling. An out-of-memory
kill would drop every tenant's requests and every unshipped commit's chance to ship
before a restart; a refusal drops only new requests, and clients retry.
"""

from __future__ import annotations

import gc
import logging
import os

from shoal.engine.health import DEGRADED, Health
from shoal.errors import Code, ShoalError

log = logging.getLogger("shoal.memory")  # mutate: harmless (the logger's name)

CONDITION = "memory"
RESUME = 0.9  # of the ceiling: where new work is taken again
AUTO_SHARE = 0.8  # of the machine's (or the cgroup's) memory, when max_memory_bytes is 0
# mutate: harmless constant (the fallback where there is no sysconf: not on Linux)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
STATM = "/proc/self/statm"
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def resident(statm: str = STATM) -> int:
    """This process's resident memory in bytes (0 where /proc is not there)."""
    try:
        with open(statm, "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def available(limits: tuple[str, ...] = CGROUP_LIMITS) -> int:
    """Memory the process may use: the cgroup's limit if one is set, else the machine's."""
    for path in limits:
        try:
            with open(path) as fh:
                raw = fh.read().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:  # "max", or a huge number: no limit
            return int(raw)
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * _PAGE
    except (AttributeError, OSError, ValueError):
        return 0


def ceiling(setting: int) -> int:
    """``max_memory_bytes``, or (0) a share of what the process may use (0: no ceiling)."""
    return setting if setting > 0 else int(available() * AUTO_SHARE)


class Memory:
    """The ceiling's state; ``check`` runs in the engine's sweeper, ``refuse`` per request."""

    def __init__(self, limit: int, health: Health, trim: object = None):
        self.limit = limit  # bytes; 0: no ceiling
        self.health = health
        self.trim = trim  # a callable handing freed heap back to the OS (malloc_trim)
        self.over = False
        self.rss = 0

    def check(self) -> None:
        if not self.limit:
            return
        self.rss = rss = resident()
        if not self.over and rss > self.limit:
            gc.collect()
            if callable(self.trim):
                self.trim()
            self.rss = rss = resident()
            if rss > self.limit:
                self.over = True
                self.health.set(CONDITION, DEGRADED,
                                f"resident memory {rss >> 20} MiB is past max_memory_bytes "
                                f"({self.limit >> 20} MiB): new requests get 503 OVERLOADED "
                                f"until it is under {int(self.limit * RESUME) >> 20} MiB")
        elif self.over and rss < self.limit * RESUME:
            self.over = False
            self.health.clear(CONDITION)

    def refuse(self) -> None:
        """OVERLOADED while past the ceiling (one attribute read otherwise)."""
        if self.over:
            raise ShoalError(Code.OVERLOADED, f"the node's memory is past its ceiling "
                                              f"({self.rss >> 20} MiB of {self.limit >> 20} "
                                              f"MiB); retry shortly")
