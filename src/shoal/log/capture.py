"""Capture: each SQLite commit of a branch becomes a stamped Commit, read from its -wal.

Right after every COMMIT of the branch (under its write lock, so commits are
seen one at a time and in order) the engine calls :meth:`Capture.mark` with the
txid that commit wrote into ``_cf_SHOAL_state`` and the frame count SQLite's WAL
hook reported: a :class:`Mark` (txid, time, last frame) costs no I/O, so the
commit path does not wait for it. The pages are read later, off the commit path,
by :meth:`Capture.read`, once per segment: one ``pread`` of every marked frame,
checked so that each mark ends exactly at a commit frame and no other commit
lies between (a commit that did not bump the txid would otherwise go unnoticed).
The frames are still there: SQLite only overwrites WAL frames after a complete
checkpoint, and the engine checkpoints only frames already shipped, hence read.

On open, :meth:`Capture.recover` returns the commits still in the WAL (those
not yet checkpointed, which includes every one not yet durable).
:meth:`Capture.commit` reads the next commit at once, without a mark (tests, tools).

Checksums: ``recover`` always verifies SQLite's WAL checksums, because after a
crash the tail of the WAL may be torn. Marks are read checking salts,
structure, the commit frames and the exact frame counts SQLite reported, but not
the checksum arithmetic: the frames were written by SQLite a moment ago in this
process, the pure-Python checksum costs about 120 us per 4 KiB page, and from
here on every segment carries its own blake2b checksum end to end.
``verify=True`` turns it on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shoal.log.errors import WalError
from shoal.log.segment import COMMIT_OVERHEAD, Commit
from shoal.log.wal import WalCommit, WalReader, read_commits

DEFAULT_PAGE_SIZE = 4096  # for size estimates until the WAL header has been read


@dataclass(frozen=True, slots=True)
class Mark:
    """A commit known by its txid, time and last WAL frame; its pages are read later."""

    txid: int
    time: float
    end_frame: int  # frames in this WAL generation up to and including the commit frame
    size: int  # estimated page bytes (for segment sizing and back-pressure)
    changes: bytes | None = None  # its row changes (shoal.feed); None: not captured


class Capture:
    """Reads one branch's -wal file and stamps each commit with its txid and time."""

    def __init__(self, wal_path: str | Path, *, clock: Callable[[], float] = time.time,
                 verify: bool = False, last_time: float = 0.0):
        self.reader = WalReader(wal_path, verify=verify)
        self.clock = clock
        self.last_time = last_time  # commit times never go backwards along a timeline
        self._marked = 0  # the WAL hook's frame count at the last mark

    def _stamp(self, found: WalCommit, txid: int, when: float) -> Commit:
        self.last_time = max(self.last_time, when)
        return Commit(txid, self.last_time, found.page_size, found.db_pages, found.frames)

    @property
    def page_size(self) -> int:
        """The WAL's page size, once read (an estimate until then)."""
        position = self.reader.position
        return position.page_size if position is not None else DEFAULT_PAGE_SIZE

    def mark(self, txid: int, max_frame: int, changes: bytes | None = None) -> Mark:
        """Stamp the commit just made (no I/O): ``max_frame`` is the WAL hook's count,
        ``changes`` the commit's captured row changes."""
        frames = max_frame - self._marked if max_frame > self._marked else max_frame
        self._marked = max_frame
        self.last_time = max(self.last_time, self.clock())
        return Mark(txid, self.last_time, max_frame,
                    frames * (self.page_size + 4) + COMMIT_OVERHEAD + len(changes or b""),
                    changes)

    def read(self, entries: Sequence[object]) -> list[Commit]:
        """The commits of ``entries`` (Marks and Commits) in order, marks read from the WAL
        (WalError if the WAL does not hold exactly those commits)."""
        out: list[Commit] = []
        run: list[Mark] = []
        for entry in entries:
            if isinstance(entry, Mark):
                run.append(entry)
                continue
            if not isinstance(entry, Commit):
                raise TypeError(f"cannot capture {entry!r}")
            out += self._read_marks(run)
            run = []
            out.append(entry)
        return out + self._read_marks(run)

    def _read_marks(self, marks: list[Mark]) -> list[Commit]:
        if not marks:
            return []
        found = self.reader.read(marks[-1].end_frame)
        if [c.end_frame for c in found] != [m.end_frame for m in marks]:
            raise WalError(f"{self.reader.path}: expected commits ending at frames "
                           f"{[m.end_frame for m in marks]} for txids {marks[0].txid}.."
                           f"{marks[-1].txid}, found {[c.end_frame for c in found]}",
                           str(self.reader.path))
        return [Commit(m.txid, m.time, c.page_size, c.db_pages, c.frames, m.changes)
                for m, c in zip(marks, found, strict=True)]

    def restarted(self) -> None:
        """The WAL was truncated: reading and marking start again at frame 0."""
        self.reader.position = None
        self._marked = 0

    def commit(self, txid: int, max_frame: int | None = None) -> Commit:
        """The commit just made, as txid. WalError unless the WAL holds exactly one new commit
        (a commit that did not bump the txid would otherwise go unnoticed)."""
        found = self.reader.read(max_frame)
        if len(found) != 1:
            raise WalError(f"{self.reader.path}: expected one new commit for txid {txid}, "
                           f"found {len(found)}", str(self.reader.path))
        return self._stamp(found[0], txid, self.clock())

    def close(self) -> None:
        """Close the -wal file (the branch is closing); a later read reopens it."""
        self.reader.close()

    def recover(self, head_txid: int) -> list[Commit]:
        """Every commit in the current WAL, numbered so that the last is ``head_txid``
        (each commit bumps the txid by one). Their original times are lost with the
        process: they are stamped now."""
        found, self.reader.position = read_commits(self.reader.path, None, verify=True)
        self._marked = self.reader.position.frames if self.reader.position else 0
        now = self.clock()
        first = head_txid - len(found) + 1
        return [self._stamp(c, first + i, now) for i, c in enumerate(found)]
