"""Headroom: zeroed, allocated space kept ahead of a WAL's last frame.

A commit that appends to the end of the ``-wal`` file grows it, and on ext4 (as
on most file systems) the fsync of a grown file also commits its new size and
blocks to the file system journal: about 1.7x the time of an fsync that only
overwrites (measured on the bench machine; bench/RESULTS.md). SQLite reuses the
WAL from the top after a complete checkpoint, so a long-running branch soon
overwrites; but every branch starts from an empty WAL when it opens (the close
truncates it), and its first WAL generation, 4,000 frames by default, appends.

So after a commit, still under the write lock (no frame is being written),
:meth:`Headroom.keep` looks at how far the WAL's end is from the file's end and,
when it comes near, writes a chunk of zeros past the file's end (never below it:
that is where SQLite's frames are). The chunk is as large as the WAL, up to 4 MiB,
and a WAL shorter than 256 KiB gets none: a branch opened for a few writes and
closed again (scale to zero) pays nothing, and a small database's WAL stays
small. An I/O thread then fsyncs the chunk (:meth:`Headroom.sync`), making its
size and blocks durable; a commit whose own fsync comes first flushes it
instead, once per chunk.

Zeros are never mistaken for frames: a frame counts only if its salts match the
WAL header's (``wal.py``), as in SQLite's own recovery.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from shoal.log.wal import FRAME_HEADER_SIZE, HEADER_SIZE

log = logging.getLogger("shoal.headroom")

START = 256 << 10  # WAL bytes before any headroom
MAX_CHUNK = 4 << 20
_ZEROS = memoryview(bytes(MAX_CHUNK))  # sliced without a copy


class Headroom:
    """Keeps zeroed space ahead of one ``-wal`` file's last frame (see the module doc)."""

    def __init__(self, wal_path: str | Path):
        self.path = Path(wal_path)
        self.allocated = 0  # the file's size when last looked at (or extended)
        self._fd: int | None = None
        self._failed = False

    def keep(self, frames: int, page_size: int) -> bool:
        """After a commit, under the write lock: extend the file with zeros if the WAL's
        end (``frames`` of ``page_size``) is within a chunk of the file's end. True if
        it did: call :meth:`sync` then, on another thread."""
        end = HEADER_SIZE + frames * (FRAME_HEADER_SIZE + page_size)
        chunk = min(MAX_CHUNK, end)
        if end < START or end + chunk <= self.allocated:
            return False
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY)
            size = os.fstat(self._fd).st_size  # the truth: a checkpoint may have truncated it
            if end + chunk <= size:
                self.allocated = size
                return False
            written = os.pwrite(self._fd, _ZEROS[:chunk], max(size, end))
            self.allocated = max(size, end) + written
            return True
        except OSError as exc:  # a full disk, say: SQLite's own append will report it
            if not self._failed:
                log.warning("cannot extend %s ahead of its frames: %s", self.path, exc)
                self._failed = True
            return False

    def sync(self) -> None:
        """Make the zeros' size and blocks durable (any thread; no-op once closed)."""
        fd = self._fd
        if fd is None:
            return
        try:
            os.fdatasync(fd)
        except OSError as exc:  # closed meanwhile, or the disk failed: SQLite will fsync
            log.debug("fdatasync of %s: %s", self.path, exc)

    def truncated(self) -> None:
        """The WAL was truncated: the next :meth:`keep` looks at the file again."""
        self.allocated = 0

    def close(self) -> None:
        """The branch is closing (the file may be truncated or replaced from now on)."""
        fd, self._fd = self._fd, None
        self.allocated = 0
        if fd is not None:
            os.close(fd)
