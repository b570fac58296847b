"""Capture: each SQLite commit of a branch becomes a stamped Commit, read from its -wal.

The engine calls :meth:`Capture.commit` right after every COMMIT of the branch
(under its write lock, so commits are seen one at a time and in order) with the
txid that commit wrote into ``_shoal_state`` and the frame count SQLite's WAL
hook reported. On open, :meth:`Capture.recover` returns the commits still in
the WAL (those not yet checkpointed, which includes every one not yet durable,
since checkpoints wait for durability).

Checksums: ``recover`` always verifies SQLite's WAL checksums, because after a
crash the tail of the WAL may be torn. ``commit`` by default checks salts,
structure, the commit frame and the exact frame count SQLite reported, but not
the checksum arithmetic: the frames were written by SQLite a moment ago in this
process, the pure-Python checksum costs about 120 us per 4 KiB page (0.7 ms
for a typical 6-page commit, measured), and from here on every segment carries
its own blake2b checksum end to end. ``verify=True`` turns it on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from shoal.log.errors import WalError
from shoal.log.segment import Commit
from shoal.log.wal import WalCommit, WalReader, read_commits


class Capture:
    """Reads one branch's -wal file and stamps each commit with its txid and time."""

    def __init__(self, wal_path: str | Path, *, clock: Callable[[], float] = time.time,
                 verify: bool = False, last_time: float = 0.0):
        self.reader = WalReader(wal_path, verify=verify)
        self.clock = clock
        self.last_time = last_time  # commit times never go backwards along a timeline

    def _stamp(self, found: WalCommit, txid: int, when: float) -> Commit:
        self.last_time = max(self.last_time, when)
        return Commit(txid, self.last_time, found.page_size, found.db_pages, found.frames)

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
        now = self.clock()
        first = head_txid - len(found) + 1
        return [self._stamp(c, first + i, now) for i, c in enumerate(found)]
