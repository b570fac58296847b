"""The spool: the row changes of a branch's commits that the store may not hold yet, in a
file beside its database (``<branch>.db-changes``), so that a crash keeps them.

A commit's changes reach the store inside its segment, built from memory by the
shipper. A node killed before that recovers the commit from its WAL when the branch
reopens, but the changes died with the process: they are read back from here.

- **Append** (worker thread, just before the COMMIT): one record per capturing commit,
  written with ``write(2)``: once it returns, the kernel has it, so a ``kill -9``
  cannot lose it. ``sync`` (``fdatasync``) makes it survive a power cut too; the
  engine runs it beside SQLite's own commit fsync and waits for both before the commit
  counts (``engine/database.py``), so an acknowledged commit's changes always survive.
- **Read** (at open): the last record of each txid of the branch's timeline (a COMMIT
  that failed after its append leaves a record the next commit of that txid supersedes;
  a torn tail, from a power cut during an append, ends the reading).
- **Trim**: records of commits the store holds are no longer needed. When the file
  passes ``max_bytes``, it is rewritten with only the others (a new file renamed over
  it); when every record is durable it is emptied. Both happen at an append, under the
  branch's write lock.

Record (integers little-endian)::

    txid u64, timeline 16 bytes (ASCII hex, zero-padded), length u32 (0xFFFFFFFF: the
    commit's changes could not be captured), the encoded changes (shoal.feed.format),
    crc32 u32 of everything before it in the record

The file is the node's own (never in the store, never copied): it changes without notice.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import zlib
from pathlib import Path

SUFFIX = "-changes"
MAX_BYTES = 4 << 20  # past this, an append first rewrites the file without durable records
_HEAD = struct.Struct("<Q16sI")
_CRC = struct.Struct("<I")
_NONE = 0xFFFFFFFF


def _timeline(timeline: str) -> bytes:
    return timeline.encode("ascii", "replace")[:16].ljust(16, b"\0")


class Spool:
    """One branch's spool; ``open`` before use, from the thread that commits."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int = MAX_BYTES):
        self.path = Path(f"{os.fspath(path)}{SUFFIX}")
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self._size = 0
        self._last = -1  # the highest txid appended since the file was last emptied
        self._torn = False  # a failed append left bytes past _size

    def open(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size
        self._last = max(self.read_all(), default=-1)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def append(self, txid: int, timeline: str, changes: bytes | None, durable: int) -> None:
        """The changes of the commit about to be made as ``txid`` (None: not captured);
        ``durable``: the highest txid the store holds, whose records may go."""
        assert self._fd is not None
        if self._torn:  # a failed append's bytes are still there: not one record after them
            os.ftruncate(self._fd, self._size)
            self._torn = False
        if self._size and durable >= self._last:
            os.ftruncate(self._fd, 0)  # every record is in the store
            self._size = 0
        elif self._size > self.max_bytes:
            self._rewrite(durable)
        head = _HEAD.pack(txid, _timeline(timeline), _NONE if changes is None else len(changes))
        body = head + (changes or b"")
        record = body + _CRC.pack(zlib.crc32(body))
        try:
            written = os.write(self._fd, record)
            if written != len(record):  # a full disk mid-record: the commit must not happen
                raise OSError(errno.ENOSPC, f"{self.path}: short write ({written} of "
                                            f"{len(record)} bytes)")
        except OSError:
            # what was written of the record goes, or the records after it would be read
            # as a torn tail and lost (tried again before the next append if it fails)
            self._torn = True
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
                self._torn = False
            raise
        self._size += len(record)
        self._last = max(self._last, txid)

    def sync(self) -> None:
        """What was appended survives a power cut once this returns."""
        assert self._fd is not None
        os.fdatasync(self._fd)

    def read(self, timeline: str, first: int, last: int) -> dict[int, bytes | None]:
        """The changes recorded for txids first..last of ``timeline`` (the last record of
        each wins; a txid without one is not in the result)."""
        want = _timeline(timeline)
        return {txid: changes for txid, tl, changes in self._records()
                if tl == want and first <= txid <= last}

    def read_all(self) -> dict[int, bytes | None]:
        return {txid: changes for txid, _, changes in self._records()}

    def _records(self) -> list[tuple[int, bytes, bytes | None]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        out: list[tuple[int, bytes, bytes | None]] = []
        at = 0
        while at + _HEAD.size + _CRC.size <= len(data):
            txid, timeline, size = _HEAD.unpack_from(data, at)
            length = 0 if size == _NONE else size
            end = at + _HEAD.size + length
            if end + _CRC.size > len(data):
                break  # torn: the append was cut short
            (crc,) = _CRC.unpack_from(data, end)
            if crc != zlib.crc32(data[at:end]):
                break
            out.append((txid, timeline, None if size == _NONE else data[at + _HEAD.size:end]))
            at = end + _CRC.size
        return out

    def _rewrite(self, durable: int) -> None:
        """Keep only the records the store may lack (a new file renamed over this one)."""
        assert self._fd is not None
        kept = [r for r in self._records() if r[0] > durable]
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            for txid, timeline, changes in kept:
                body = _HEAD.pack(txid, timeline, _NONE if changes is None else len(changes))
                body += changes or b""
                os.write(fd, body + _CRC.pack(zlib.crc32(body)))
            os.fdatasync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd = fd
        self._size = os.fstat(fd).st_size
