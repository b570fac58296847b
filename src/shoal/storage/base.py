"""The object store protocol: the only durable state Shoal has.

Every backend (folder, memory, S3) offers the same small set of operations with
S3's semantics, so the log layer is written once and tested against all of
them. Calls are blocking; async callers run them on a worker thread.
Conditional puts (``If-None-Match: *`` to create, ``If-Match: etag`` to
compare-and-swap) are what leases and write-once objects are built on.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

# Keys are relative, '/'-separated, with no empty, '.' or '..' part and no part
# starting with '.': the file backend keeps its temp and lock files there.
_PART = r"[A-Za-z0-9_\-=+@,:][A-Za-z0-9_.\-=+@,:]*"
KEY_RE = re.compile(rf"{_PART}(?:/{_PART})*")
MAX_KEY = 900


class StoreError(Exception):
    """Base of the errors a store raises: its answers (NotFound, PreconditionFailed), and
    StorageUnavailable when it could not answer. Anything else a store call raises is a
    bug, not the store's failure."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class StorageUnavailable(StoreError):
    """The store did not answer: a network error, a timeout, a 5xx, throttling, refused
    credentials, a failing disk under a folder store (each backend's own retries spent).
    The one failure a retry may cure: RetryingStore and the shipper retry it, and the API
    answers it with 503 STORAGE_UNAVAILABLE. The message names the operation and the key,
    never a credential; the backend's exception is its ``__cause__`` (a full disk under a
    folder store stays recognisable as one: ``errors.disk_full``)."""


class Unusable(StoreError):
    """The store cannot be used at all (missing bucket, refused credentials, unreachable
    endpoint, a folder this process cannot write): raised by ``probe`` so a node fails at
    start with the cause and what to do, instead of retrying for a minute."""

    def __init__(self, message: str, hint: str):
        super().__init__("", message)
        self.hint = hint


class NotFound(StoreError):
    """The key has no object."""

    def __init__(self, key: str):
        super().__init__(key, f"object not found: {key}")


class PreconditionFailed(StoreError):
    """A conditional put lost: the object exists (If-None-Match) or changed (If-Match)."""

    def __init__(self, key: str, condition: str):
        super().__init__(key, f"precondition failed ({condition}): {key}")
        self.condition = condition


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: its key (relative to the store), size and, where the backend
    reports it, when it was written (seconds since the epoch): retention tells from it
    how long a compacted segment has been in the store."""

    key: str
    size: int
    modified: float | None = field(default=None, compare=False)


class Blob:
    """An object's bytes and its etag (computed lazily where the backend hashes content)."""

    __slots__ = ("_etag", "data")

    def __init__(self, data: bytes, etag: str | None = None):
        self.data = data
        self._etag = etag

    @property
    def etag(self) -> str:
        if self._etag is None:
            self._etag = content_etag(self.data)
        return self._etag


def content_etag(data: bytes) -> str:
    """The etag S3 gives a single-part upload: the quoted MD5 of the content."""
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


def check_key(key: str) -> str:
    """Refuse keys that could escape a folder or collide with a backend's own files."""
    if not isinstance(key, str) or len(key) > MAX_KEY or not KEY_RE.fullmatch(key):
        raise ValueError(f"invalid object key {key!r}")
    return key


def check_conditions(if_none_match: str | None, if_match: str | None) -> None:
    if if_none_match is not None and if_none_match != "*":
        raise ValueError("if_none_match only supports '*'")
    if if_none_match is not None and if_match is not None:
        raise ValueError("give if_none_match or if_match, not both")


class ObjectStore(Protocol):
    """What the log layer needs from object storage (S3 semantics, blocking calls).

    Every operation raises StorageUnavailable when the store does not answer (and
    ValueError for an invalid key); its other errors are named below.
    """

    url: str

    def get(self, key: str) -> Blob:
        """The object's bytes and etag; NotFound if absent."""
        ...

    def head(self, key: str) -> str:
        """The object's etag without its bytes; NotFound if absent."""
        ...

    def put(self, key: str, data: bytes, *, if_none_match: str | None = None,
            if_match: str | None = None) -> str:
        """Store the object atomically and return its etag.

        ``if_none_match="*"`` succeeds only if the key has no object;
        ``if_match=etag`` only if the current object has that etag (a missing
        object fails too). A lost condition raises PreconditionFailed.
        """
        ...

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with prefix, sorted by key, fetched page by page
        (with their modification times: S3's LastModified, a file's mtime)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; removing a missing key is not an error (as in S3)."""
        ...

    def probe(self) -> None:
        """Check, quickly (seconds, no retries), that the store can be used at all;
        Unusable with the cause and a hint if not. Run once at start, before the lease."""
        ...

    def close(self) -> None:
        """Release connections or handles."""
        ...
