"""Segments: consecutive commits of one timeline, compressed and checksummed.

Layout of a segment object (integers little-endian)::

    header   magic "SHOALSEG", version u16, flags u16, commits u32,
             first_txid u64, last_txid u64, first_time f64, last_time f64   (48 bytes)
    body     one zstandard frame holding, per commit:
             txid u64, time f64, page_size u32, db_pages u32, frames u32,
             then per frame: pgno u32 + the page
    trailer  blake2b-128 of header + body                                  (16 bytes)

Version 2 (written when any of its commits carries captured row changes, see
``shoal.feed``) adds, after the header's last field, ``changes_at u64``: the length
of the page body's zstandard frame, which a second frame follows (before the trailer)::

    changes  one zstandard frame holding, per commit:
             txid u64, time f64, length u32 (0xFFFFFFFF: not captured), then the
             commit's encoded changes (shoal.feed.format)

so a feed reads a commit's changes without decompressing its pages. A segment whose
commits carry no captured changes (capture off) is written as version 1, byte for byte
as before; version 1 is read as commits with no captured changes.

The header is readable without decompressing, and the checksum covers it, so a
flipped bit anywhere is caught before a single page is used. Decoding checks
that commits are contiguous and match the header (and the key, see layout.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import zstandard

from shoal.log.errors import CorruptObject

MAGIC = b"SHOALSEG"
VERSION = 1
CHANGES_VERSION = 2  # a segment with captured changes
_HEADER = struct.Struct("<8sHHIQQdd")
_CHANGES_AT = struct.Struct("<Q")  # version 2: after the header
_CHANGES = struct.Struct("<QdI")
NOT_CAPTURED = 0xFFFFFFFF
_COMMIT = struct.Struct("<QdIII")
_PGNO = struct.Struct("<I")
DIGEST_SIZE = 16
LEVEL = 1  # zstd level: 1.5x the speed of level 3 on table pages for 4 % more bytes


COMMIT_OVERHEAD = _COMMIT.size  # bytes a commit adds to a segment besides its frames
# A page: bytes, or a view into the buffer it was read from (the -wal read of a segment,
# a decompressed segment): pages pass from reading to writing without a copy each.
Page = bytes | memoryview


@dataclass(frozen=True, slots=True)
class Commit:
    """One commit of a branch: its txid, when, and the pages it wrote."""

    txid: int
    time: float  # seconds since the epoch, never decreasing along a timeline
    page_size: int
    db_pages: int  # database size in pages after the commit
    frames: tuple[tuple[int, Page], ...]  # (pgno, page)
    # the commit's row changes (shoal.feed.format); None: not captured (capture off, or
    # history written before capture existed)
    changes: bytes | None = None

    @property
    def size(self) -> int:
        """Bytes of page data (what a segment grows by, before compression)."""
        return len(self.frames) * (self.page_size + 4) + COMMIT_OVERHEAD


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    commits: int
    first_txid: int
    last_txid: int
    first_time: float
    last_time: float


def digest(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


def encode_segment(commits: Iterable[Commit], level: int = LEVEL) -> bytes:
    """Serialise contiguous commits (ValueError if they are not) into one segment object."""
    commits = list(commits)
    if not commits:
        raise ValueError("a segment holds at least one commit")
    for prev, cur in itertools.pairwise(commits):
        if cur.txid != prev.txid + 1:
            raise ValueError(f"commits are not contiguous: {prev.txid} then {cur.txid}")
    captured = any(c.changes is not None for c in commits)
    header = _HEADER.pack(MAGIC, CHANGES_VERSION if captured else VERSION, 0, len(commits),
                          commits[0].txid, commits[-1].txid, commits[0].time,
                          commits[-1].time)
    # One zstd frame (its header records the body's size), fed a commit at a time: the
    # pages are joined in commit-sized pieces, not copied into one body-sized buffer.
    compressor = zstandard.ZstdCompressor(level=level)
    stream = compressor.compressobj(size=sum(c.size for c in commits))
    out = [header, b""] if captured else [header]  # [1]: changes_at, once it is known
    for c in commits:
        parts: list[Page] = [_COMMIT.pack(c.txid, c.time, c.page_size, c.db_pages,
                                          len(c.frames))]
        for pgno, page in c.frames:
            if len(page) != c.page_size:
                raise ValueError(f"txid {c.txid}: page {pgno} is {len(page)} bytes, "
                                 f"not {c.page_size}")
            parts += (_PGNO.pack(pgno), page)
        out.append(stream.compress(b"".join(parts)))
    out.append(stream.flush())
    if captured:
        out[1] = _CHANGES_AT.pack(sum(len(part) for part in out[2:]))
        out.append(compressor.compress(b"".join(
            _CHANGES.pack(c.txid, c.time, NOT_CAPTURED if c.changes is None
                          else len(c.changes)) + (c.changes or b"") for c in commits)))
    data = b"".join(out)
    return data + digest(data)


def read_header(data: bytes, key: str = "segment") -> SegmentHeader:
    """The header alone (no checksum check): cheap, for listings and diagnostics."""
    if len(data) < _HEADER.size + DIGEST_SIZE:
        raise CorruptObject(f"segment {key} is truncated ({len(data)} bytes)", key)
    magic, version, _flags, count, first, last, t0, t1 = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptObject(f"segment {key} has a bad magic number", key)
    if version not in (VERSION, CHANGES_VERSION):
        raise CorruptObject(f"segment {key} has unknown version {version}", key)
    return SegmentHeader(count, first, last, t0, t1)


def _frames(data: bytes, key: str) -> tuple[SegmentHeader, memoryview, memoryview | None]:
    """The header, the pages' compressed frame and the changes' (None in version 1), once
    the checksum holds."""
    header = read_header(data, key)
    if digest(memoryview(data)[:-DIGEST_SIZE]) != data[-DIGEST_SIZE:]:
        raise CorruptObject(f"segment {key} fails its checksum", key)
    body = memoryview(data)[_HEADER.size:-DIGEST_SIZE]
    if data[8:10] == VERSION.to_bytes(2, "little"):
        return header, body, None
    if len(body) < _CHANGES_AT.size:
        raise CorruptObject(f"segment {key}: body is truncated", key)
    (at,) = _CHANGES_AT.unpack_from(body)
    body = body[_CHANGES_AT.size:]
    if at > len(body):
        raise CorruptObject(f"segment {key}: its changes begin past its end", key)
    return header, body[:at], body[at:]


def _decompress(frame: memoryview, key: str) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompress(frame)
    except zstandard.ZstdError as exc:
        raise CorruptObject(f"segment {key} does not decompress: {exc}", key) from None


@dataclass(frozen=True, slots=True)
class Captured:
    """One commit as a feed reads it: no pages."""

    txid: int
    time: float
    changes: bytes | None  # None: not captured


def read_changes(data: bytes, key: str = "segment") -> tuple[SegmentHeader, list[Captured]]:
    """Every commit's txid, time and changes, decompressing no page (a version 1 segment
    has no changes frame: its commits are read whole and carry None)."""
    header, _pages, changes = _frames(data, key)
    if changes is None:
        found = [Captured(c.txid, c.time, None) for c in decode_segment(data, key)[1]]
    else:
        found = list(_changes(_decompress(changes, key), key))
    _check(header, found, key)
    return header, found


def _changes(raw: bytes, key: str) -> Iterator[Captured]:
    off = 0
    try:
        while off < len(raw):
            txid, when, size = _CHANGES.unpack_from(raw, off)
            off += _CHANGES.size
            if size == NOT_CAPTURED:
                yield Captured(txid, when, None)
                continue
            if off + size > len(raw):
                raise struct.error("short changes")
            yield Captured(txid, when, raw[off:off + size])
            off += size
    except struct.error:
        raise CorruptObject(f"segment {key}: changes are truncated", key) from None


def _check(header: SegmentHeader, commits: Sequence[Commit | Captured], key: str) -> None:
    """The commits match the header and follow each other."""
    if (not commits or len(commits) != header.commits or commits[0].txid != header.first_txid
            or commits[-1].txid != header.last_txid):
        raise CorruptObject(f"segment {key}: body does not match its header", key)
    for prev, cur in itertools.pairwise(commits):
        if cur.txid != prev.txid + 1:
            raise CorruptObject(f"segment {key}: txid {prev.txid} is followed by {cur.txid}",
                                key)


def decode_segment(data: bytes, key: str = "segment") -> tuple[SegmentHeader, list[Commit]]:
    """Verify the checksum and structure; CorruptObject naming ``key`` on any fault."""
    header, pages, changes = _frames(data, key)
    commits = list(_commits(_decompress(pages, key), key))
    _check(header, commits, key)
    if changes is not None:
        captured = list(_changes(_decompress(changes, key), key))
        if [c.txid for c in captured] != [c.txid for c in commits]:
            raise CorruptObject(f"segment {key}: its changes and pages disagree", key)
        commits = [dataclasses.replace(c, changes=found.changes)
                   for c, found in zip(commits, captured, strict=True)]
    return header, commits


def _commits(raw: bytes, key: str) -> Iterator[Commit]:
    view = memoryview(raw)  # pages are views of the decompressed body, not copies
    off = 0
    try:
        while off < len(raw):
            txid, when, page_size, db_pages, count = _COMMIT.unpack_from(raw, off)
            off += _COMMIT.size
            frames = []
            for _ in range(count):
                (pgno,) = _PGNO.unpack_from(raw, off)
                page = view[off + 4:off + 4 + page_size]
                if len(page) != page_size:
                    raise struct.error("short page")
                frames.append((pgno, page))
                off += 4 + page_size
            yield Commit(txid, when, page_size, db_pages, tuple(frames))
    except struct.error:
        raise CorruptObject(f"segment {key}: body is truncated", key) from None
