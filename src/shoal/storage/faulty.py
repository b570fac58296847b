"""A store wrapper that injects faults, for chaos tests of everything above the store.

At the given rate an operation fails with an error, times out (before or after
the inner store applied it: the caller cannot tell), or, for puts, leaves a
truncated object behind and then fails: what a crash-prone or eventually
consistent backend can do (never for a conditional put, which every backend applies
whole or not at all). ``enabled = False`` turns the faults off so a test
can check that the system catches up once the store heals.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from shoal.storage.base import Blob, ObjectInfo, ObjectStore, StorageUnavailable


class InjectedFault(StorageUnavailable):
    """An error or a timeout the wrapper made up: a transport failure, as a real backend
    reports one."""

    def __init__(self, kind: str, op: str, key: str):
        super().__init__(key, f"injected {kind} on {op} {key}")


@dataclass
class FaultCounts:
    errors: int = 0
    timeouts: int = 0
    partial_writes: int = 0

    @property
    def total(self) -> int:
        return self.errors + self.timeouts + self.partial_writes


class FaultyStore:
    """Wraps a store; each call fails with probability ``rate`` while ``enabled``."""

    def __init__(self, inner: ObjectStore, rate: float = 0.1, seed: int | None = None):
        self.inner = inner
        self.url = inner.url
        self.rate = rate
        self.enabled = True
        self.counts = FaultCounts()
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def _draw(self, kinds: tuple[str, ...]) -> str | None:
        """Pick a fault for this call (or None), thread-safely and reproducibly per seed."""
        with self._lock:
            if not self.enabled or self._random.random() >= self.rate:
                return None
            kind = self._random.choice(kinds)
            setattr(self.counts, kind, getattr(self.counts, kind) + 1)
            return kind

    def _cut(self, size: int) -> int:
        with self._lock:
            return self._random.randrange(size) if size else 0

    def _timeout_after(self) -> bool:
        with self._lock:
            return self._random.random() < 0.5

    def get(self, key: str) -> Blob:
        fault = self._draw(("errors", "timeouts"))
        if fault == "errors":
            raise InjectedFault("error", "get", key)
        if fault == "timeouts":
            raise InjectedFault("timeout", "get", key)
        return self.inner.get(key)

    def head(self, key: str) -> str:
        if self._draw(("errors",)):
            raise InjectedFault("error", "head", key)
        return self.inner.head(key)

    def put(self, key: str, data: bytes, *, if_none_match: str | None = None,
            if_match: str | None = None) -> str:
        fault = self._draw(("errors", "timeouts", "partial_writes"))
        if fault == "errors":
            raise InjectedFault("error", "put", key)
        if fault == "partial_writes":
            if if_match is None and if_none_match is None:  # a conditional put is atomic in
                self.inner.put(key, data[:self._cut(len(data))])  # every backend (S3, a
            raise InjectedFault("partial write", "put", key)  # folder's rename): no torn one
        if fault == "timeouts":
            if self._timeout_after():
                self.inner.put(key, data, if_none_match=if_none_match, if_match=if_match)
            raise InjectedFault("timeout", "put", key)
        return self.inner.put(key, data, if_none_match=if_none_match, if_match=if_match)

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        if self._draw(("errors",)):
            raise InjectedFault("error", "list", prefix)
        return self.inner.list(prefix, start_after=start_after)

    def delete(self, key: str) -> None:
        fault = self._draw(("errors", "timeouts"))
        if fault == "errors":
            raise InjectedFault("error", "delete", key)
        if fault == "timeouts":
            if self._timeout_after():
                self.inner.delete(key)
            raise InjectedFault("timeout", "delete", key)
        self.inner.delete(key)

    def probe(self) -> None:
        self.inner.probe()  # no injected fault: a start must not fail by chance

    def close(self) -> None:
        self.inner.close()
