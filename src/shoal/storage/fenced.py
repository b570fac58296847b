"""A store wrapper that lets writes through only while a check passes: the node's lease.

Every write this node makes to the object store (segments, snapshots, branch and
catalog records, compaction, retention) goes through it, so a node that does not hold
the store's lease (``engine/lease.py``) cannot write there, wherever the write comes
from. Reads pass through: they cannot fork a history.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from shoal.storage.base import Blob, ObjectInfo, ObjectStore


class Fenced(Exception):
    """A write refused by the check: not a store failure, so it is not retried."""


class FencedStore:
    """Wraps a store; ``put`` and ``delete`` call ``check`` first, which raises Fenced."""

    def __init__(self, inner: ObjectStore, check: Callable[[], None]):
        self.inner = inner
        self.url = inner.url
        self.check = check

    def get(self, key: str) -> Blob:
        return self.inner.get(key)

    def head(self, key: str) -> str:
        return self.inner.head(key)

    def put(self, key: str, data: bytes, *, if_none_match: str | None = None,
            if_match: str | None = None) -> str:
        self.check()
        return self.inner.put(key, data, if_none_match=if_none_match, if_match=if_match)

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix, start_after=start_after)

    def delete(self, key: str) -> None:
        self.check()
        self.inner.delete(key)

    def probe(self) -> None:
        self.inner.probe()  # writes no object, so the fence has nothing to refuse

    def close(self) -> None:
        self.inner.close()
