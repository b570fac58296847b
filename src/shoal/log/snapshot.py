"""Snapshots: a full database image at a txid, so restore reads a bounded amount of log.

Layout of a snapshot object (integers little-endian)::

    header   magic "SHOALSNP", version u16, flags u16, page_size u32,
             txid u64, time f64, db_pages u64                          (40 bytes)
    body     one zstandard frame: the database file, db_pages * page_size bytes
    trailer  blake2b-128 of header + body                              (16 bytes)

The image is read from a database file that holds exactly the state at txid:
the engine takes it right after a checkpoint that backfilled every frame (and
runs no other checkpoint until the read ends). Compression streams in chunks,
so only the compressed image is held in memory.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from shoal.log import layout
from shoal.log.errors import CorruptObject, LogError
from shoal.log.segment import DIGEST_SIZE, LEVEL, digest
from shoal.log.timeline import Writer
from shoal.storage.base import ObjectInfo, ObjectStore

MAGIC = b"SHOALSNP"
VERSION = 1
_HEADER = struct.Struct("<8sHHIQdQ")
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class SnapshotHeader:
    page_size: int
    txid: int
    time: float
    db_pages: int


def database_page_size(header: bytes) -> int:
    """The page size a SQLite database header declares (bytes 16-17; 1 means 65536)."""
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        raise LogError("not a SQLite database file")
    (raw,) = struct.unpack_from(">H", header, 16)
    return 65536 if raw == 1 else raw


def encode_snapshot(image: BinaryIO, txid: int, time: float, level: int = LEVEL) -> bytes:
    """Compress a database image (a file positioned at its start) into a snapshot object.

    An empty image (a database with no pages yet) is allowed; page size 0 marks it.
    """
    first = image.read(CHUNK)
    page_size = database_page_size(first) if first else 0
    compressor = zstandard.ZstdCompressor(level=level).compressobj()
    parts: list[bytes] = []
    size = 0
    chunk = first
    while chunk:
        size += len(chunk)
        parts.append(compressor.compress(chunk))
        chunk = image.read(CHUNK)
    parts.append(compressor.flush())
    if page_size and size % page_size:
        raise LogError(f"database image of {size} bytes is not a whole number of "
                       f"{page_size}-byte pages")
    header = _HEADER.pack(MAGIC, VERSION, 0, page_size, txid, time,
                          size // page_size if page_size else 0)
    h = hashlib.blake2b(header, digest_size=DIGEST_SIZE)
    for part in parts:
        h.update(part)
    return header + b"".join(parts) + h.digest()


def read_header(data: bytes, key: str = "snapshot") -> SnapshotHeader:
    if len(data) < _HEADER.size + DIGEST_SIZE:
        raise CorruptObject(f"snapshot {key} is truncated ({len(data)} bytes)", key)
    magic, version, _flags, page_size, txid, time, db_pages = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptObject(f"snapshot {key} has a bad magic number", key)
    if version != VERSION:
        raise CorruptObject(f"snapshot {key} has unknown version {version}", key)
    return SnapshotHeader(page_size, txid, time, db_pages)


def write_image(data: bytes, out: BinaryIO, key: str = "snapshot") -> SnapshotHeader:
    """Verify a snapshot object and write its image to ``out`` (from the current position)."""
    header = read_header(data, key)
    if digest(memoryview(data)[:-DIGEST_SIZE]) != data[-DIGEST_SIZE:]:
        raise CorruptObject(f"snapshot {key} fails its checksum", key)
    expected = header.db_pages * header.page_size
    written = 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            memoryview(data)[_HEADER.size:-DIGEST_SIZE])
        while chunk := reader.read(CHUNK):
            written += len(chunk)
            if written > expected:
                break
            out.write(chunk)
    except zstandard.ZstdError as exc:
        raise CorruptObject(f"snapshot {key} does not decompress: {exc}", key) from None
    if written != expected:
        raise CorruptObject(f"snapshot {key} holds {written} bytes, header says {expected}",
                            key)
    return header


def take_snapshot(store: ObjectStore, db: str, timeline: str, db_path: str | Path, txid: int,
                  time: float, writer: Writer | None = None) -> layout.SnapshotInfo:
    """Upload the database file at ``db_path`` as the snapshot of ``timeline`` at ``txid``.

    The caller guarantees the file holds exactly the state at txid (checkpointed,
    no checkpoint running). Two snapshots at one txid hold the same bytes, so
    a retried upload may simply overwrite. With the timeline's ``writer``, the key
    names its epoch, and a snapshot past the committed head (a log re-based on it)
    is committed by moving the head (FencedOut if another writer took the timeline).
    """
    with open(db_path, "rb") as f:
        data = encode_snapshot(f, txid, time)
    key = (writer.snapshot_key(txid, time) if writer is not None else
           layout.snapshot_key(db, timeline, txid, time))
    store.put(key, data)
    info = layout.parse_snapshot(ObjectInfo(key, len(data)))
    assert info is not None
    if writer is not None and txid > writer.txid:
        writer.commit(info, time)
    return info


@dataclass(frozen=True)
class SnapshotPolicy:
    """When to take the next snapshot: enough log since the last one, or enough time.

    Restore reads the nearest snapshot and then the log after it, so bounding
    the log since the last snapshot (relative to the database size too) bounds
    restore time; the time rule keeps idle-ish databases from replaying days.
    """

    min_log_bytes: int = 16 << 20
    log_ratio: float = 0.5  # snapshot once the log since the last one passes this x db size
    interval: float = 3600.0  # seconds; with any log at all since the last snapshot

    def due(self, log_bytes: int, db_bytes: int, seconds_since: float) -> bool:
        if log_bytes <= 0:
            return False
        if log_bytes >= max(self.min_log_bytes, self.log_ratio * db_bytes):
            return True
        return seconds_since >= self.interval

