"""A store wrapper that retries transport failures, for everything but the shipper.

The shipper retries its uploads itself, forever and in order. Every other caller
(catalog records, branch records, restore's reads, snapshots, retention) makes
one-off calls that should ride out a blip of the store rather than fail a
request: this wrapper retries them a bounded number of times with backoff.

Only the store's failures are retried (StorageUnavailable: connection errors,
timeouts, 5xx): its answers (NotFound, PreconditionFailed, an invalid key) are
results, a refused write (Fenced) is final, and anything else is a bug, raised at
once.
A conditional put that failed in transport may still have landed, or (a crash-
prone backend, or the fault injector) left a cut-short object behind; so when
its retry loses the condition, the object is read back: the same bytes mean
the earlier attempt landed, a strict prefix of them means it was cut short and
is replaced, anything else is a genuine lost condition.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from shoal.storage.base import (
    Blob,
    NotFound,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    StorageUnavailable,
)

log = logging.getLogger("shoal.storage")
T = TypeVar("T")


class RetryingStore:
    """Wraps a store; each call is tried ``attempts`` times in all while it raises
    StorageUnavailable (the last one is raised)."""

    def __init__(self, inner: ObjectStore, attempts: int = 8, initial: float = 0.02,
                 maximum: float = 1.0):
        self.inner = inner
        self.url = inner.url
        self.attempts = attempts
        self.initial = initial
        self.maximum = maximum

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except StorageUnavailable as exc:
                attempt += 1
                if attempt >= self.attempts:
                    raise
                log.warning("store %s failed (attempt %d), retrying: %s", what, attempt, exc)
                time.sleep(min(self.maximum, self.initial * 2 ** attempt)
                           * random.uniform(0.5, 1.0))

    def get(self, key: str) -> Blob:
        return self._call(f"get {key}", lambda: self.inner.get(key))

    def head(self, key: str) -> str:
        return self._call(f"head {key}", lambda: self.inner.head(key))

    def put(self, key: str, data: bytes, *, if_none_match: str | None = None,
            if_match: str | None = None) -> str:
        if if_none_match is None and if_match is None:
            return self._call(f"put {key}", lambda: self.inner.put(key, data))
        failed_once = False

        def attempt() -> str:
            nonlocal failed_once
            try:
                return self.inner.put(key, data, if_none_match=if_none_match,
                                      if_match=if_match)
            except PreconditionFailed:
                if not failed_once:
                    raise
                return self._settle(key, data)
            except StorageUnavailable:
                failed_once = True
                raise

        return self._call(f"put {key}", attempt)

    def _settle(self, key: str, data: bytes) -> str:
        """After a failed conditional put lost its condition on retry: did ours land?"""
        try:
            existing = self.inner.get(key)
        except NotFound:
            raise PreconditionFailed(key, "vanished") from None
        if existing.data == data:
            return existing.etag
        if len(existing.data) < len(data) and data.startswith(existing.data):
            return self.inner.put(key, data, if_match=existing.etag)  # our cut-short write
        raise PreconditionFailed(key, "changed")

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        return iter(self._call(f"list {prefix}",
                               lambda: list(self.inner.list(prefix, start_after=start_after))))

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self.inner.delete(key))

    def probe(self) -> None:
        self.inner.probe()  # not retried: the probe exists to fail fast

    def close(self) -> None:
        self.inner.close()
