"""Read committed frames out of a SQLite ``-wal`` file, validated as SQLite itself does.

Format (https://sqlite.org/fileformat2.html#walformat): a 32-byte header (magic,
version, page size, checkpoint sequence, two salts, a checksum of the header),
then frames of a 24-byte header (page number, database size in pages for a
commit frame else 0, the two salts, a cumulative checksum) and one page. A frame
counts only if its salts match the header's and its checksum, chained from the
previous frame, matches; a transaction counts only once its commit frame does.
That is exactly the rule SQLite's recovery uses, so what we read is what SQLite
considers committed.

After a checkpoint SQLite restarts the WAL from the top with new salts; a
reader that remembers the salts notices and starts over at frame 0. The caller
must read after every commit (the engine does, from its commit path) so that no
commit is overwritten before it is seen.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from shoal.log.errors import WalError
from shoal.log.segment import Page

MAGIC_LE = 0x377F0682  # checksums over little-endian words
MAGIC_BE = 0x377F0683  # checksums over big-endian words
VERSION = 3007000
HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
_MASK = 0xFFFFFFFF
_FRAME_HEADER = struct.Struct(">6I")


@lru_cache(maxsize=32)
def _words(count: int, big_endian: bool) -> struct.Struct:
    return struct.Struct(f"{'>' if big_endian else '<'}{count}I")


def wal_checksum(data: bytes | memoryview, s0: int = 0, s1: int = 0,
                 big_endian: bool = False) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes), continuing from (s0, s1)."""
    it = iter(_words(len(data) // 4, big_endian).unpack(data))
    for a, b in zip(it, it, strict=True):
        s0 = (s0 + a + s1) & _MASK
        s1 = (s1 + b + s0) & _MASK
    return s0, s1


@dataclass(frozen=True, slots=True)
class WalHeader:
    big_endian: bool
    page_size: int
    checkpoint_seq: int
    salt1: int
    salt2: int
    checksum: tuple[int, int]


def parse_header(data: bytes, name: str = "-wal") -> WalHeader:
    """Parse and check the 32-byte WAL header; WalError if it is not a valid one."""
    if len(data) < HEADER_SIZE:
        raise WalError(f"{name}: WAL header is {len(data)} bytes, not {HEADER_SIZE}", name)
    magic, version, page_size, seq, salt1, salt2, c1, c2 = struct.unpack(">8I", data[:32])
    if magic not in (MAGIC_LE, MAGIC_BE):
        raise WalError(f"{name}: bad WAL magic {magic:#x}", name)
    if version != VERSION:
        raise WalError(f"{name}: unsupported WAL version {version}", name)
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise WalError(f"{name}: bad page size {page_size}", name)
    big_endian = magic == MAGIC_BE
    if wal_checksum(data[:24], big_endian=big_endian) != (c1, c2):
        raise WalError(f"{name}: WAL header checksum mismatch", name)
    return WalHeader(big_endian, page_size, seq, salt1, salt2, (c1, c2))


@dataclass(frozen=True, slots=True)
class WalCommit:
    """One committed SQLite transaction as found in the WAL."""

    page_size: int
    db_pages: int  # database size in pages after this commit
    frames: tuple[tuple[int, Page], ...]  # (pgno, page), one per page, sorted by pgno
    end_frame: int  # frames in this WAL generation up to and including the commit frame


@dataclass(frozen=True, slots=True)
class WalPosition:
    """Where a reader stopped: the WAL generation (salts), frames read, running checksum."""

    salt1: int
    salt2: int
    frames: int
    checksum: tuple[int, int]
    page_size: int


def read_commits(path: str | Path, since: WalPosition | None = None, *,
                 max_frame: int | None = None,
                 verify: bool = True) -> tuple[list[WalCommit], WalPosition | None]:
    """Commits in the WAL after ``since``, and the position after the last one.

    ``max_frame`` (the frame count SQLite's WAL hook reports) says where the
    log must end: every frame up to it must be valid and the last one a commit
    frame, else WalError. Without it, reading stops at the first invalid frame,
    as SQLite's recovery does. ``verify=False`` skips checksum arithmetic
    (salts and structure are still checked).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if max_frame:
            raise WalError(f"{path}: WAL file missing, expected {max_frame} frames",
                           str(path)) from None
        return [], since
    try:
        return _read(fd, str(path), since, max_frame, verify)
    finally:
        os.close(fd)


def _read(fd: int, name: str, since: WalPosition | None, max_frame: int | None,
          verify: bool) -> tuple[list[WalCommit], WalPosition | None]:
    """read_commits on an open file: two preads, the header and the frames after ``since``."""
    head = os.pread(fd, HEADER_SIZE, 0)
    if len(head) < HEADER_SIZE:  # empty (truncated by a checkpoint) or not yet written
        if max_frame:
            raise WalError(f"{name}: WAL is empty, expected {max_frame} frames", name)
        return [], since
    header = _parse_header(head, name)
    if since is None or (since.salt1, since.salt2) != (header.salt1, header.salt2):
        since = WalPosition(header.salt1, header.salt2, 0, header.checksum, header.page_size)
    frame_size = FRAME_HEADER_SIZE + header.page_size
    offset = HEADER_SIZE + since.frames * frame_size
    if max_frame is None:
        # mutate: harmless constant (a read of 1 byte past the end returns nothing too)
        data = os.pread(fd, max(0, os.fstat(fd).st_size - offset), offset)
    else:
        if max_frame < since.frames:
            raise WalError(f"{name}: asked to read to frame {max_frame} but already read "
                           f"{since.frames}", name)
        want = (max_frame - since.frames) * frame_size
        data = os.pread(fd, want, offset)
        if len(data) < want:
            raise WalError(f"{name}: WAL holds fewer than {max_frame} frames", name)
    commits, position = _scan(data, since, header, verify)
    if max_frame is not None and position.frames != max_frame:
        raise WalError(f"{name}: frames {position.frames + 1}..{max_frame} are not a valid "
                       f"committed transaction", name)
    return commits, position


@lru_cache(maxsize=16)
def _parse_header(data: bytes, name: str) -> WalHeader:
    """parse_header, once per WAL generation: the header only changes when the WAL restarts."""
    return parse_header(data, name)


def _scan(data: bytes, start: WalPosition, header: WalHeader,
          verify: bool) -> tuple[list[WalCommit], WalPosition]:
    page_size = header.page_size
    frame_size = FRAME_HEADER_SIZE + page_size
    view = memoryview(data)
    salts = (start.salt1, start.salt2)
    s0, s1 = start.checksum
    frames = start.frames
    pending: dict[int, Page] = {}  # views into data: a segment's pages are not copied
    commits: list[WalCommit] = []
    position = start
    for off in range(0, len(data) - frame_size + 1, frame_size):
        pgno, db_size, salt1, salt2, c1, c2 = _FRAME_HEADER.unpack_from(data, off)
        if (salt1, salt2) != salts or pgno == 0:
            break
        if verify:
            t0, t1 = wal_checksum(view[off:off + 8], s0, s1, header.big_endian)
            t0, t1 = wal_checksum(view[off + FRAME_HEADER_SIZE:off + frame_size], t0, t1,
                                  header.big_endian)
            if (t0, t1) != (c1, c2):
                break
        s0, s1 = c1, c2
        frames += 1
        pending[pgno] = view[off + FRAME_HEADER_SIZE:off + frame_size]
        if db_size:
            commits.append(WalCommit(page_size, db_size, tuple(sorted(pending.items())), frames))
            pending = {}
            position = WalPosition(start.salt1, start.salt2, frames, (s0, s1), page_size)
    return commits, position


class WalReader:
    """Remembers its place in one ``-wal`` file and returns each new commit once.

    The file stays open between reads (a commit's capture is then two preads) and is
    closed by :meth:`close`; the owner closes it whenever the file may be replaced
    (the engine does when the branch closes: nothing replaces the WAL of an open branch).
    """

    def __init__(self, path: str | Path, *, verify: bool = True):
        self.path = Path(path)
        self.verify = verify
        self.position: WalPosition | None = None
        self._fd: int | None = None

    def read(self, max_frame: int | None = None) -> list[WalCommit]:
        """Commits added since the last call (or since the start of the current WAL)."""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                commits, self.position = read_commits(self.path, self.position,
                                                      max_frame=max_frame, verify=self.verify)
                return commits
        commits, self.position = _read(self._fd, str(self.path), self.position, max_frame,
                                       self.verify)
        return commits

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
