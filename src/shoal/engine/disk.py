"""A full data directory: refuse writes fast, keep room for recovery, resume by itself.

When the disk under the data directory fills, a commit fails (SQLite's
``SQLITE_FULL``, or a ``-shm`` it cannot grow) and so would everything that has
to write to get the node back in shape: a checkpoint, a catalog row, a marker,
the lease in a folder store on the same disk. So the node keeps a *reserve*,
``DATA/reserve``: ``disk_reserve_bytes`` of allocated space. On the first
disk-full error (:meth:`Disk.hit`) the reserve is deleted, which gives that
space back to recovery, and the node goes read-only (the ``disk_full``
readiness condition): writes get ``DISK_FULL`` at once instead of each reaching
the disk to fail there, reads go on. The engine's sweeper calls :meth:`Disk.check`;
once the disk has the reserve plus as much again free, the reserve is made
again and writes resume, with no restart.

A start is the same story: a node killed on a full disk starts read-only and
resumes when space returns (:meth:`Disk.start` deletes a reserve it finds on a
disk without room, since the start itself writes).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from shoal.engine.health import READ_ONLY, Health
from shoal.errors import Code, ShoalError, disk_errors, disk_full

log = logging.getLogger("shoal.disk")

RESERVE = "reserve"
CONDITION = "disk_full"  # the readiness condition
MIN_MARGIN = 1 << 20  # free bytes beside the reserve that count as room, at the least
MIB = 1 << 20


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


class Disk:
    """The data directory's disk as the engine sees it: full or not, and its reserve.

    ``hit`` may be called from any thread; ``full`` is a plain attribute, read on
    every write (a refused write costs one attribute read).
    """

    def __init__(self, root: Path, reserve_bytes: int, health: Health):
        self.root = root
        self.path = root / RESERVE
        self.reserve_bytes = reserve_bytes
        self.health = health
        self.full = False
        self._lock = threading.Lock()

    @property
    def resume_at(self) -> int:
        """Free bytes that end the full state: room to make the reserve again, and as much
        again beside it (so one more write cannot fill the disk at once)."""
        return self.reserve_bytes + max(self.reserve_bytes, MIN_MARGIN)

    def free(self) -> int:
        """Bytes this process may still write to the data directory's disk (root may
        use the blocks a file system keeps for it)."""
        st = os.statvfs(self.root)
        return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize

    # -- the reserve ----------------------------------------------------------------------------
    def _reserved(self) -> int:
        try:
            return os.stat(self.path).st_blocks * 512
        except FileNotFoundError:
            return 0

    def _release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _reserve(self) -> bool:
        """Allocate the reserve (no sparse file: its blocks must be taken); False if the
        disk has no room for it, leaving none behind."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                _allocate(fd, self.reserve_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        except OSError as exc:
            self._release()
            if disk_full(exc) is None:
                raise
            # mutate: harmless return (its two callers test its truth only: None is false too)
            return False  # mutate: harmless delete (falling off the end returns None: false)

    # -- the node's view --------------------------------------------------------------------------
    def start(self) -> None:
        """At start, before anything else writes (with the data directory locked): keep the
        reserve if the disk has a little room beside it, else delete it (the start itself
        writes: the lease, the catalog, markers) and start read-only; make a missing
        reserve if there is room for it."""
        if self.reserve_bytes == 0:
            self._release()
            return
        if self._reserved() >= self.reserve_bytes and self.free() >= MIN_MARGIN:
            return
        self._release()
        if self.free() >= self.resume_at and self._reserve():
            return
        with self._lock:
            self._enter(f"{_mib(self.free())} free at start")

    def check(self) -> None:
        """While full (the sweeper calls this): once the disk has room, make the reserve
        again and resume writes."""
        if not self.full or self.free() < self.resume_at:
            return
        if self.reserve_bytes and not self._reserve():
            return  # filled again meanwhile: the next check tries again
        with self._lock:
            self.full = False
            self.health.clear(CONDITION)

    def hit(self, exc: BaseException) -> None:
        """A write failed for want of space: release the reserve and refuse writes until
        :meth:`check` sees room. A failure while the data directory's disk has room was
        some other disk's (SQLite's temp files, a folder store elsewhere) and is ignored."""
        with self._lock:
            if self.full or self.free() >= self.resume_at:
                return
            self._release()
            self._enter(f"a write failed: {exc}")

    def _enter(self, why: str) -> None:
        """Refuse writes from here on (call with the lock held)."""
        self.full = True
        self.health.set(CONDITION, READ_ONLY,
                        f"the disk of {self.root} is full ({why}); writes get DISK_FULL "
                        f"until {_mib(self.resume_at)} are free (reads are served)")

    def refuse(self) -> None:
        """DISK_FULL at once while the disk is full: a write would only fail there."""
        if self.full:
            raise ShoalError(Code.DISK_FULL, f"the disk of the data directory is full: writes "
                                             f"resume by themselves once {_mib(self.resume_at)} "
                                             f"are free ({_mib(self.free())} now)")

    def failure(self, exc: Exception) -> Exception:
        """What a failed write raises: DISK_FULL for a full disk (which puts the node in its
        full state), else the error itself. ``writes`` without the context manager, for
        the write path of every request."""
        full = disk_full(exc)
        if full is None:
            return exc
        self.hit(full)
        return full

    @contextlib.contextmanager
    def writes(self, refuse: bool = True) -> Iterator[None]:
        """Around an engine call that writes locally: refused at once while full (unless
        ``refuse`` is False: a transaction already holding the write lock finishes); a
        full disk inside becomes DISK_FULL, never an internal error, and puts the node
        in its full state."""
        if refuse:
            self.refuse()
        try:
            with disk_errors():
                yield
        except ShoalError as exc:
            if exc.code == Code.DISK_FULL:
                self.hit(exc)
            raise


def _allocate(fd: int, size: int) -> None:
    """Take ``size`` bytes of blocks for fd: fallocate, or writing data where the file
    system has no fallocate (random bytes: a compressing file system keeps no zeros)."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    chunk = os.urandom(min(size, MIB))
    done = 0
    while done < size:
        done += os.pwrite(fd, chunk[:size - done], done)


@contextlib.contextmanager
def optional(what: str) -> Iterator[None]:
    """Around a write the node can do without (a cache of the store, an informational
    file): on a full disk, log it and go on."""
    try:
        yield
    except OSError as exc:
        if disk_full(exc) is None:
            raise
        log.warning("%s skipped: the disk is full (%s)", what, exc)
