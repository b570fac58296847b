"""Object storage: where every durable byte of Shoal lives.

``open_store(url)`` picks the backend from the URL:

- ``file:///abs/path``: a local folder (the embedded default),
- ``memory://``: a dict in this process (tests); ``memory://NAME``: the same dict for
  every open of that name in this process (a node restarted in a test finds its store),
- ``s3://bucket/prefix``: any S3-compatible service; ``endpoint_url`` (the
  ``s3_endpoint`` setting) points at a non-AWS one,
- ``faulty+<url>?rate=0.1&seed=1``: another store with injected faults (chaos tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from shoal.storage.memory import MemoryStore

from shoal.storage.base import (
    Blob,
    NotFound,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    StorageUnavailable,
    StoreError,
    Unusable,
)

_NAMED_MEMORY: dict[str, MemoryStore] = {}  # memory://NAME -> its store, for this process

__all__ = ["Blob", "NotFound", "ObjectInfo", "ObjectStore", "PreconditionFailed",
           "StorageUnavailable", "StoreError", "Unusable", "open_store"]


def open_store(url: str, *, endpoint_url: str | None = None,
               region: str | None = None) -> ObjectStore:
    """The store a URL names; ValueError for an unknown scheme or a malformed URL."""
    if url.startswith("faulty+"):
        from shoal.storage.faulty import FaultyStore

        inner_url, _, query = url[len("faulty+"):].partition("?")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        seed = params.get("seed")
        return FaultyStore(open_store(inner_url, endpoint_url=endpoint_url, region=region),
                           rate=float(params.get("rate", "0.1")),
                           seed=int(seed) if seed is not None else None)
    parts = urlsplit(url)
    if parts.scheme == "memory":
        from shoal.storage.memory import MemoryStore

        if not parts.netloc:
            return MemoryStore(url)
        return _NAMED_MEMORY.setdefault(parts.netloc, MemoryStore(url))
    if parts.scheme == "file":
        from shoal.storage.file import FileStore

        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError(f"a file store URL is file:///absolute/path, not {url!r}")
        return FileStore(unquote(parts.path))
    if parts.scheme == "s3":
        from shoal.storage.s3 import S3Store

        if not parts.netloc:
            raise ValueError(f"an S3 store URL is s3://bucket/prefix, not {url!r}")
        return S3Store(parts.netloc, unquote(parts.path), endpoint_url=endpoint_url,
                       region=region)
    raise ValueError(f"unknown store URL {url!r}: use file:///path, s3://bucket/prefix "
                     f"or memory://")
