"""An in-process object store for tests: a dict behind a lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from shoal.storage.base import (
    Blob,
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    check_conditions,
    check_key,
    content_etag,
)

PAGE = 1000  # list yields from sorted snapshots of this many keys, like an S3 page


class MemoryStore:
    """Objects in a dict; every operation is atomic under one lock."""

    def __init__(self, url: str = "memory://", page_size: int = PAGE,
                 clock: Callable[[], float] = time.time):
        self.url = url
        self.page_size = page_size
        self.clock = clock  # stamps each put: the listing's modification time
        self._objects: dict[str, tuple[bytes, str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Blob:
        check_key(key)
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            raise NotFound(key)
        return Blob(found[0], found[1])

    def head(self, key: str) -> str:
        check_key(key)
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            raise NotFound(key)
        return found[1]

    def put(self, key: str, data: bytes, *, if_none_match: str | None = None,
            if_match: str | None = None) -> str:
        check_key(key)
        check_conditions(if_none_match, if_match)
        data = bytes(data)
        etag = content_etag(data)
        with self._lock:
            current = self._objects.get(key)
            if if_none_match and current is not None:
                raise PreconditionFailed(key, "If-None-Match")
            if if_match is not None and (current is None or current[1] != if_match):
                raise PreconditionFailed(key, "If-Match")
            self._objects[key] = (data, etag, self.clock())
        return etag

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        after = start_after
        while True:
            with self._lock:
                keys = sorted(k for k in self._objects if k.startswith(prefix) and k > after)
                page = [ObjectInfo(k, len(self._objects[k][0]), self._objects[k][2])
                        for k in keys[:self.page_size]]
            yield from page
            if len(page) < self.page_size:
                return
            after = page[-1].key

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._objects.pop(key, None)

    def probe(self) -> None:
        pass  # a dict is always there

    def close(self) -> None:
        pass
