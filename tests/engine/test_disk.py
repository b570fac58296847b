"""The full-disk state machine: the reserve, read-only on a hit, resuming once there is room.

The disk's free space is played by a number (tests/integration/test_disk_full.py fills a
real tmpfs); the reserve is a real file in tmp_path.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from pathlib import Path

import apsw
import pytest

from shoal import settings as settings_mod
from shoal.engine import datadir
from shoal.engine.catalog import Catalog
from shoal.engine.disk import Disk, optional
from shoal.engine.engine import Engine
from shoal.engine.health import OK, READ_ONLY, Health
from shoal.errors import ShoalError

MIB = 1 << 20
SIZE = 2 * MIB
MIN_MARGIN = MIB  # written out: a changed constant in disk.py fails
RESERVE = "reserve"
CONDITION = "disk_full"


class Played(Disk):
    """A Disk whose free space is ``room`` (bytes beside the reserve)."""

    room = 100 * MIB

    def free(self) -> int:
        return self.room


def disk_in(tmp_path: Path, size: int = SIZE, room: int = 100 * MIB) -> Played:
    disk = Played(tmp_path, size, Health())
    disk.room = room
    return disk


def reserved(tmp_path: Path) -> int:
    path = tmp_path / RESERVE
    return path.stat().st_blocks * 512 if path.exists() else 0


def test_start_with_room_allocates_the_reserve(tmp_path: Path) -> None:
    disk = disk_in(tmp_path)
    disk.start()
    assert reserved(tmp_path) >= SIZE  # allocated blocks, not a sparse file
    assert not disk.full and disk.health.status == OK
    disk.refuse()  # nothing to refuse


def test_a_hit_releases_the_reserve_and_refuses_writes_until_there_is_room(
        tmp_path: Path) -> None:
    disk = disk_in(tmp_path)
    disk.start()
    disk.room = 0
    disk.hit(apsw.FullError("database or disk is full"))
    assert not (tmp_path / RESERVE).exists()
    assert disk.full
    assert disk.health.status == READ_ONLY and disk.health.active(CONDITION)
    with pytest.raises(ShoalError) as info:
        disk.refuse()
    assert info.value.code == "DISK_FULL" and info.value.status == 507

    disk.room = SIZE + MIN_MARGIN  # the reserve plus a little: not yet
    assert disk.resume_at == 2 * SIZE
    disk.check()
    assert disk.full and not (tmp_path / RESERVE).exists()
    disk.room = 2 * SIZE
    disk.check()
    assert not disk.full and disk.health.status == OK
    assert reserved(tmp_path) >= SIZE


def test_a_hit_while_the_disk_has_room_was_another_disk(tmp_path: Path) -> None:
    """SQLite's temp files, a folder store elsewhere: the data directory is fine."""
    disk = disk_in(tmp_path)
    disk.start()
    disk.hit(OSError(errno.ENOSPC, "No space left on device"))
    assert not disk.full and reserved(tmp_path) >= SIZE


def test_start_on_a_full_disk_releases_the_reserve_and_starts_read_only(
        tmp_path: Path) -> None:
    disk_in(tmp_path).start()
    assert reserved(tmp_path) >= SIZE
    disk = disk_in(tmp_path, room=0)  # killed on a full disk, the reserve still there
    disk.start()
    assert not (tmp_path / RESERVE).exists()
    assert disk.full and disk.health.status == READ_ONLY
    disk.room = disk.resume_at
    disk.check()
    assert not disk.full and reserved(tmp_path) >= SIZE


def test_start_keeps_a_reserve_beside_some_room_and_needs_room_to_make_one(
        tmp_path: Path) -> None:
    disk_in(tmp_path).start()
    inode = (tmp_path / RESERVE).stat().st_ino
    kept = disk_in(tmp_path, room=MIN_MARGIN)
    kept.start()
    assert not kept.full and (tmp_path / RESERVE).stat().st_ino == inode
    (tmp_path / RESERVE).unlink()
    short = disk_in(tmp_path, room=2 * SIZE - 1)  # no reserve, not room for one and more
    short.start()
    assert short.full and not (tmp_path / RESERVE).exists()


def test_no_reserve(tmp_path: Path) -> None:
    (tmp_path / RESERVE).write_bytes(b"from a node with a reserve")
    disk = disk_in(tmp_path, size=0, room=0)
    disk.start()
    assert not disk.full and not (tmp_path / RESERVE).exists()
    disk.hit(apsw.FullError("full"))
    assert disk.full
    disk.room = MIN_MARGIN
    disk.check()
    assert not disk.full and not (tmp_path / RESERVE).exists()


def test_writes_maps_a_full_disk_and_refuses_while_full(tmp_path: Path) -> None:
    disk = disk_in(tmp_path)
    disk.start()
    disk.room = 0
    with pytest.raises(ShoalError) as info, disk.writes():
        raise apsw.FullError("database or disk is full")
    assert info.value.code == "DISK_FULL" and disk.full
    ran = []
    with pytest.raises(ShoalError), disk.writes():
        ran.append("refused")  # never runs: refused before the block
    with disk.writes(refuse=False):
        ran.append("a transaction ends")
    assert ran == ["a transaction ends"]
    with pytest.raises(ValueError), disk.writes(refuse=False):
        raise ValueError("not about space")


def test_optional_writes_are_skipped_on_a_full_disk(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), optional("caching the key"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert "caching the key skipped" in caplog.text
    with pytest.raises(PermissionError), optional("caching the key"):
        raise PermissionError(errno.EACCES, "denied")


# -- the files a start writes ------------------------------------------------------------------


def test_a_start_on_a_full_disk_leaves_no_half_written_kind_or_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty node-kind would read as the other kind of node at the next start."""

    def no_room(path: Path, text: str) -> int:
        path.open("w").close()  # created, then the write fails: what a full disk does
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_room)
    for write in (lambda: datadir.claim(tmp_path, local_only=False),
                  lambda: datadir.node_id(tmp_path)):
        with pytest.raises(ShoalError) as info:
            write()
        assert info.value.code == "DISK_FULL"
    assert not (tmp_path / datadir.KIND_FILE).exists()
    assert not (tmp_path / datadir.NODE_ID_FILE).exists()


def test_the_lock_holds_when_its_pid_cannot_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_room(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", no_room)
    fd = datadir.lock(tmp_path)
    try:
        with pytest.raises(ShoalError) as info:
            datadir.lock(tmp_path)
        assert info.value.code == "DATA_DIR_CONFLICT"
    finally:
        os.close(fd)


def test_a_catalog_the_full_disk_cannot_update_is_served_from_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """catalog.db is a cache: a start that cannot write it serves the store's databases
    and brings catalog.db up to date once the disk has room (here: at once)."""
    env = {"SHOAL_DATA": str(tmp_path / "data"), "SHOAL_ADMIN_TOKEN": "t" * 32,
           "SHOAL_DISK_RESERVE_BYTES": "0"}

    async def first() -> None:
        engine = Engine(settings_mod.load(environ=env))
        engine.open()
        for name in ("a", "b"):
            await engine.create_database(engine.auth.admin, name, None, lambda rec: (201, b""))
        await engine.stop()

    asyncio.run(first())
    (tmp_path / "data" / "catalog.db").unlink()  # the cache is gone: the start adopts a and b
    real_adopt = Catalog.adopt_database
    full = [True]

    def adopt(catalog: Catalog, name: str, created_at: float) -> None:
        if full[0] and catalog._db.filename:  # catalog.db, not the one in memory
            raise ShoalError("DISK_FULL", "no space left on the node's disk")
        real_adopt(catalog, name, created_at)

    monkeypatch.setattr(Catalog, "adopt_database", adopt)

    async def second() -> None:
        engine = Engine(settings_mod.load(environ=env))
        engine.open()
        try:
            assert engine.names == {"a", "b"}
            assert engine.catalog.names() == set()
            full[0] = False
            await engine.start()
            deadline = time.monotonic() + 5
            while engine.catalog.names() != {"a", "b"}:
                assert time.monotonic() < deadline, "catalog.db was not synced"
                await asyncio.sleep(0.05)
        finally:
            await engine.stop()

    asyncio.run(second())
