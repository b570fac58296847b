"""The reserve and the full state line by line: where the reserve lives and how big it is,
the free space a statvfs reports, each threshold at its exact bound, the readiness condition
and the messages, and file systems that cannot fallocate or fail otherwise.

Every number is written out (not taken from shoal.engine.disk), so a changed constant fails.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import apsw
import pytest

from shoal.engine.disk import Disk, _allocate, optional
from shoal.engine.health import OK, READ_ONLY, Health
from shoal.errors import ShoalError

MIB = 1048576


class Played(Disk):
    """A Disk whose free space is ``room``."""

    room = 100 * MIB

    def free(self) -> int:
        return self.room


def played(tmp_path: Path, size: int, room: int) -> Played:
    disk = Played(tmp_path, size, Health())
    disk.room = room
    return disk


def reserve_of(tmp_path: Path) -> Path:
    return tmp_path / "reserve"


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512 if path.exists() else 0


def preallocate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def conditions(disk: Disk) -> list[tuple[str, str, str]]:
    return [(c.name, c.level, c.message) for c in disk.health.conditions()]


# -- where the reserve is and how much it takes ---------------------------------------------------


def test_the_reserve_is_data_reserve_of_exactly_its_size_allocated_and_private(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    disk = played(tmp_path, 3 * MIB, 100 * MIB)
    assert disk.path == tmp_path / "reserve"
    fds = open_fds()
    disk.start()
    assert open_fds() == fds  # its descriptor is closed
    path = tmp_path / "reserve"
    st = path.stat()
    assert st.st_size == 3145728  # from offset 0: not a byte more
    assert st.st_blocks * 512 >= 3145728  # blocks taken, not a sparse file
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert path.read_bytes() == bytes(3145728)  # fallocate's zeros: nothing written
    assert len(synced) == 1  # its allocation is made durable
    assert os.listdir(tmp_path) == ["reserve"]
    assert not disk.full and disk.health.status == OK and conditions(disk) == []


def test_resume_at_is_the_reserve_and_as_much_again_or_a_mebibyte(tmp_path: Path) -> None:
    health = Health()
    assert Disk(tmp_path, 0, health).resume_at == 1048576
    assert Disk(tmp_path, 1, health).resume_at == 1048577
    assert Disk(tmp_path, 524288, health).resume_at == 1572864
    assert Disk(tmp_path, 1048576, health).resume_at == 2097152
    assert Disk(tmp_path, 1048577, health).resume_at == 2097154
    assert Disk(tmp_path, 64 * MIB, health).resume_at == 134217728


# -- free space: what statvfs says -----------------------------------------------------------------


@pytest.mark.parametrize(("euid", "expected"), [(0, 100 * 4096), (1000, 60 * 4096),
                                                (1, 60 * 4096)])
def test_free_counts_the_blocks_root_may_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             euid: int, expected: int) -> None:
    asked: list[Any] = []

    def statvfs(path: Any) -> SimpleNamespace:
        asked.append(path)
        return SimpleNamespace(f_bfree=100, f_bavail=60, f_frsize=4096, f_bsize=65536)

    monkeypatch.setattr(os, "statvfs", statvfs)
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    assert Disk(tmp_path, MIB, Health()).free() == expected
    assert asked == [tmp_path]  # the data directory's disk


def test_free_is_the_real_disk(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    free = Disk(tmp_path, MIB, Health()).free()
    assert abs(free - blocks * st.f_frsize) < 64 * MIB  # others write beside us


# -- start: keep, make or give up the reserve ------------------------------------------------------


def test_start_makes_a_missing_reserve_at_exactly_resume_at(tmp_path: Path) -> None:
    disk = played(tmp_path, 2 * MIB, 4 * MIB)  # 2 MiB and as much again
    disk.start()
    assert not disk.full and allocated(reserve_of(tmp_path)) >= 2 * MIB
    reserve_of(tmp_path).unlink()
    short = played(tmp_path, 2 * MIB, 4 * MIB - 1)
    short.start()
    assert short.full and not reserve_of(tmp_path).exists()


def test_start_keeps_a_whole_reserve_beside_exactly_a_mebibyte(tmp_path: Path) -> None:
    preallocate(reserve_of(tmp_path), 2 * MIB)
    inode = reserve_of(tmp_path).stat().st_ino
    kept = played(tmp_path, 2 * MIB, 1048576)
    kept.start()
    assert not kept.full and reserve_of(tmp_path).stat().st_ino == inode
    short = played(tmp_path, 2 * MIB, 1048575)
    short.start()
    assert short.full and not reserve_of(tmp_path).exists()
    assert conditions(short) == [(
        "disk_full", READ_ONLY,
        f"the disk of {tmp_path} is full (1.0 MiB free at start); writes get DISK_FULL "
        "until 4.0 MiB are free (reads are served)")]


def test_start_replaces_a_reserve_a_little_short_of_its_size(tmp_path: Path) -> None:
    """A reserve left by a node with a smaller disk_reserve_bytes: one block short is short."""
    preallocate(reserve_of(tmp_path), 4 * MIB - 4096)
    disk = played(tmp_path, 4 * MIB, 100 * MIB)
    disk.start()
    assert not disk.full
    assert reserve_of(tmp_path).stat().st_size == 4 * MIB


def test_start_makes_a_one_byte_reserve(tmp_path: Path) -> None:
    disk = played(tmp_path, 1, 100 * MIB)
    disk.start()
    assert reserve_of(tmp_path).stat().st_size == 1 and not disk.full


def test_start_without_a_reserve_deletes_an_old_one_and_never_goes_read_only(
        tmp_path: Path) -> None:
    preallocate(reserve_of(tmp_path), MIB)
    disk = played(tmp_path, 0, 0)
    disk.start()
    assert not reserve_of(tmp_path).exists() and not disk.full
    disk.start()  # nothing to delete: fine
    assert not disk.full


# -- hit and check at their bounds -----------------------------------------------------------------


def test_a_hit_counts_as_full_only_below_resume_at(tmp_path: Path) -> None:
    disk = played(tmp_path, 2 * MIB, 100 * MIB)
    disk.start()
    disk.room = 4 * MIB  # exactly resume_at: the data directory's disk has room
    disk.hit(apsw.FullError("database or disk is full"))
    assert not disk.full and allocated(reserve_of(tmp_path)) >= 2 * MIB
    assert conditions(disk) == []
    disk.room = 4 * MIB - 1
    disk.hit(apsw.FullError("database or disk is full"))
    assert disk.full and not reserve_of(tmp_path).exists()
    assert conditions(disk) == [(
        "disk_full", READ_ONLY,
        f"the disk of {tmp_path} is full (a write failed: database or disk is full); "
        "writes get DISK_FULL until 4.0 MiB are free (reads are served)")]
    with pytest.raises(ShoalError) as info:
        disk.refuse()
    assert info.value.code == "DISK_FULL"
    assert str(info.value.message) == (
        "the disk of the data directory is full: writes resume by themselves once 4.0 MiB "
        "are free (4.0 MiB now)")
    before = disk.health.conditions()[0]
    disk.room = 0
    disk.hit(OSError(errno.ENOSPC, "No space left on device"))  # already full: unchanged
    assert disk.health.conditions() == [before]


def test_check_resumes_at_exactly_resume_at_and_clears_the_condition(tmp_path: Path) -> None:
    disk = played(tmp_path, 2 * MIB, 0)
    disk.start()
    assert disk.full and disk.health.status == READ_ONLY
    disk.room = 4 * MIB - 1
    disk.check()
    assert disk.full and not reserve_of(tmp_path).exists()
    assert [c[0] for c in conditions(disk)] == ["disk_full"]
    disk.room = 4 * MIB
    disk.check()
    assert not disk.full and disk.health.status == OK and conditions(disk) == []
    assert reserve_of(tmp_path).stat().st_size == 2 * MIB
    disk.check()  # not full: nothing to do
    assert not disk.full
    disk.refuse()


def test_check_while_not_full_touches_nothing(tmp_path: Path) -> None:
    disk = played(tmp_path, 2 * MIB, 100 * MIB)
    assert not disk.full
    disk.check()
    assert not reserve_of(tmp_path).exists()  # only a start or a resume makes it


def test_check_that_cannot_make_the_reserve_stays_full(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk filled again between statvfs and fallocate: still full, tried again later."""
    disk = played(tmp_path, 2 * MIB, 0)
    disk.start()
    assert disk.full
    monkeypatch.setattr(os, "posix_fallocate", fallocate_fails(errno.ENOSPC))
    disk.room = 100 * MIB
    disk.check()
    assert disk.full and disk.health.status == READ_ONLY
    assert not reserve_of(tmp_path).exists()  # nothing half-made is left
    monkeypatch.undo()
    disk.check()
    assert not disk.full and reserve_of(tmp_path).stat().st_size == 2 * MIB


def test_a_node_without_a_reserve_resumes_at_a_mebibyte(tmp_path: Path) -> None:
    disk = played(tmp_path, 0, 0)
    disk.hit(apsw.FullError("full"))
    assert disk.full
    disk.room = 1048575
    disk.check()
    assert disk.full
    disk.room = 1048576
    disk.check()
    assert not disk.full and not reserve_of(tmp_path).exists()


# -- failure(): what the write path raises ---------------------------------------------------------


def test_failure_maps_a_full_disk_and_passes_anything_else(tmp_path: Path) -> None:
    disk = played(tmp_path, 2 * MIB, 100 * MIB)
    disk.start()
    other = ValueError("not about space")
    assert disk.failure(other) is other
    assert not disk.full
    disk.room = 0
    full = disk.failure(OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(full, ShoalError) and full.code == "DISK_FULL"
    assert disk.full and not reserve_of(tmp_path).exists()
    already = ShoalError("DISK_FULL", "no room")
    assert disk.failure(already) is already
    sqlite = disk.failure(apsw.FullError("database or disk is full"))
    assert isinstance(sqlite, ShoalError) and sqlite.code == "DISK_FULL"


def test_failure_of_another_disk_leaves_this_one_writable(tmp_path: Path) -> None:
    disk = played(tmp_path, 2 * MIB, 100 * MIB)
    disk.start()
    full = disk.failure(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert isinstance(full, ShoalError) and full.code == "DISK_FULL"
    assert not disk.full and allocated(reserve_of(tmp_path)) >= 2 * MIB


# -- file systems without fallocate, and other failures --------------------------------------------


def fallocate_fails(code: int) -> Callable[[int, int, int], None]:
    def fallocate(fd: int, offset: int, size: int) -> None:
        raise OSError(code, os.strerror(code))
    return fallocate


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EINVAL])
def test_without_fallocate_the_reserve_is_written_in_mebibyte_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    asked: list[int] = []

    def urandom(n: int) -> bytes:
        asked.append(n)
        return bytes(range(1, 256)) * (n // 255) + b"\x07" * (n % 255)

    monkeypatch.setattr(os, "posix_fallocate", fallocate_fails(code))
    monkeypatch.setattr(os, "urandom", urandom)
    size = 2 * MIB + MIB // 2  # two whole chunks and a half one
    disk = played(tmp_path, size, 100 * MIB)
    disk.start()
    assert not disk.full
    assert asked == [1048576]  # one chunk of random bytes, written again and again
    chunk = urandom(1048576)
    data = reserve_of(tmp_path).read_bytes()
    assert len(data) == size
    assert data == chunk + chunk + chunk[:524288]
    assert allocated(reserve_of(tmp_path)) >= size


def test_without_fallocate_a_small_reserve_is_one_short_chunk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []

    def urandom(n: int) -> bytes:
        asked.append(n)
        return b"\x05" * n

    monkeypatch.setattr(os, "posix_fallocate", fallocate_fails(errno.EOPNOTSUPP))
    monkeypatch.setattr(os, "urandom", urandom)
    played(tmp_path, 1000, 100 * MIB).start()
    assert asked == [1000]
    assert reserve_of(tmp_path).read_bytes() == b"\x05" * 1000


def test_allocate_writes_what_pwrite_leaves_short(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """pwrite may write less than asked: the loop goes on from where it stopped."""
    real_pwrite = os.pwrite
    monkeypatch.setattr(os, "posix_fallocate", fallocate_fails(errno.EOPNOTSUPP))
    monkeypatch.setattr(os, "urandom", lambda n: b"\x09" * n)
    monkeypatch.setattr(os, "pwrite", lambda fd, data, at: real_pwrite(fd, data[:1000], at))
    path = tmp_path / "file"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        _allocate(fd, 4500)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\x09" * 4500


def test_a_disk_that_fills_while_the_reserve_is_written_leaves_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite
    writes = []

    def pwrite(fd: int, data: bytes, at: int) -> int:
        writes.append(at)
        if at >= MIB:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, at)

    monkeypatch.setattr(os, "posix_fallocate", fallocate_fails(errno.EOPNOTSUPP))
    monkeypatch.setattr(os, "pwrite", pwrite)
    fds = open_fds()
    disk = played(tmp_path, 2 * MIB, 100 * MIB)
    disk.start()
    assert writes == [0, MIB]
    assert disk.full and not reserve_of(tmp_path).exists()
    assert open_fds() == fds


@pytest.mark.parametrize("code", [errno.EIO, errno.EACCES, errno.EBADF])
def test_other_errors_making_the_reserve_are_raised(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    code: int) -> None:
    """Not a full disk: a start does not go read-only for it, it fails (and leaves no file)."""
    monkeypatch.setattr(os, "posix_fallocate", fallocate_fails(code))
    disk = played(tmp_path, 2 * MIB, 100 * MIB)
    with pytest.raises(OSError) as info:
        disk.start()
    assert info.value.errno == code
    assert not disk.full and not reserve_of(tmp_path).exists()


def test_no_room_for_the_reserve_at_start_is_read_only(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "posix_fallocate", fallocate_fails(errno.ENOSPC))
    disk = played(tmp_path, 2 * MIB, 100 * MIB)
    disk.start()
    assert disk.full and not reserve_of(tmp_path).exists()
    assert [c[:2] for c in conditions(disk)] == [("disk_full", READ_ONLY)]


def test_optional_logs_as_shoal_disk(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shoal.disk"), optional("the cache"):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    assert [(r.name, r.levelno) for r in caplog.records] == [("shoal.disk", logging.WARNING)]
    assert caplog.records[0].getMessage() == (
        "the cache skipped: the disk is full ([Errno 122] Disk quota exceeded)")
