"""Headroom: zeros kept ahead of a real SQLite WAL never change what SQLite or Shoal read."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from pathlib import Path

import apsw
import pytest

from shoal.log.headroom import MAX_CHUNK, START, Headroom
from shoal.log.wal import FRAME_HEADER_SIZE, HEADER_SIZE, read_commits

PAGE = 4096


class Writer:
    """apsw in WAL mode, auto-checkpoint off (as the engine's writer), keeping headroom
    after every commit as the journal does."""

    def __init__(self, path: Path):
        self.path = path
        self.conn = apsw.Connection(str(path))
        self.conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        for pragma in ("journal_mode=WAL", "wal_autocheckpoint=0", "synchronous=FULL"):
            list(self.conn.execute(f"PRAGMA {pragma}"))
        self.frames = 0
        self.conn.set_wal_hook(self._hook)
        self.headroom = Headroom(f"{path}-wal")
        self.extended = 0

    def _hook(self, conn: apsw.Connection, name: str, frames: int) -> int:
        self.frames = frames
        return apsw.SQLITE_OK

    def write(self, sql: str) -> None:
        self.conn.execute(sql)
        if self.headroom.keep(self.frames, PAGE):
            self.headroom.sync()
            self.extended += 1


def wal_end(frames: int) -> int:
    return HEADER_SIZE + frames * (FRAME_HEADER_SIZE + PAGE)


@pytest.fixture
def writer(tmp_path: Path) -> Writer:
    w = Writer(tmp_path / "t.db")
    w.write("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    return w


def test_zeros_stay_ahead_of_the_frames_and_change_nothing_read(writer: Writer,
                                                                tmp_path: Path) -> None:
    for i in range(400):
        writer.write(f"INSERT INTO t(v) VALUES ('{'x' * (i % 900)}')")
        size, end = os.path.getsize(f"{writer.path}-wal"), wal_end(writer.frames)
        if end < START:
            assert size == end  # a short WAL gets no zeros
        else:
            assert size >= end + min(MAX_CHUNK, end)  # always a chunk ahead
    assert 2 <= writer.extended < 40  # chunks grow with the WAL: a few, not one per commit
    wal = Path(f"{writer.path}-wal").read_bytes()
    assert not any(wal[wal_end(writer.frames):])  # zeros past the last frame
    commits, position = read_commits(f"{writer.path}-wal")
    assert len(commits) == 401 and position is not None and position.frames == writer.frames
    # As after kill -9: the files as they are, opened by another SQLite (recovery).
    for suffix in ("", "-wal"):
        shutil.copy(f"{writer.path}{suffix}", f"{tmp_path / 'copy.db'}{suffix}")
    with sqlite3.connect(tmp_path / "copy.db") as copy:
        assert copy.execute("SELECT count(*) FROM t").fetchone() == (400,)
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_the_wal_restarts_over_the_zeros(writer: Writer) -> None:
    for _ in range(50):
        writer.write("INSERT INTO t(v) VALUES ('a')")
    assert writer.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
    size = os.path.getsize(f"{writer.path}-wal")
    for _ in range(20):
        writer.write("INSERT INTO t(v) VALUES ('b')")  # from the top: overwrites
    assert os.path.getsize(f"{writer.path}-wal") == size
    commits, _ = read_commits(f"{writer.path}-wal")
    assert len(commits) == 20
    assert writer.conn.execute("SELECT count(*) FROM t").fetchone()[0] == 70


def test_never_writes_below_the_end_of_the_file(tmp_path: Path) -> None:
    wal = tmp_path / "x.db-wal"
    wal.write_bytes(b"\x01" * 300_000)  # past the end of the 70 frames claimed below
    headroom = Headroom(wal)
    assert headroom.keep(frames=70, page_size=PAGE)
    data = wal.read_bytes()
    assert data[:300_000] == b"\x01" * 300_000 and not any(data[300_000:])
    assert len(data) == 300_000 + wal_end(70)  # a chunk as large as the WAL, past the file
    assert not headroom.keep(frames=70, page_size=PAGE)  # enough ahead: no I/O
    headroom.close()


def test_chunks_grow_with_the_wal_up_to_a_cap(tmp_path: Path) -> None:
    wal = tmp_path / "x.db-wal"
    wal.write_bytes(b"")
    headroom = Headroom(wal)
    frames = 3000  # ~12 MB of WAL
    assert headroom.keep(frames, PAGE)
    assert wal.stat().st_size == wal_end(frames) + MAX_CHUNK
    headroom.close()


def test_a_short_wal_gets_none(writer: Writer) -> None:
    """A branch opened for a few writes and closed again pays for no zeros."""
    for _ in range(5):
        writer.write("INSERT INTO t(v) VALUES ('a')")
    assert os.path.getsize(f"{writer.path}-wal") == wal_end(writer.frames) < START
    assert writer.extended == 0


def test_a_truncated_wal_is_looked_at_again(writer: Writer) -> None:
    for _ in range(80):
        writer.write("INSERT INTO t(v) VALUES ('a')")
    writer.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert os.path.getsize(f"{writer.path}-wal") == 0
    writer.headroom.truncated()
    writer.frames = 0
    for _ in range(80):
        writer.write("INSERT INTO t(v) VALUES ('b')")
    end = wal_end(writer.frames)
    assert end >= START and os.path.getsize(f"{writer.path}-wal") >= end + min(MAX_CHUNK, end)
    assert len(read_commits(f"{writer.path}-wal")[0]) == 80


def test_a_failure_is_logged_once_and_never_raised(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    headroom = Headroom(tmp_path / "missing.db-wal")
    with caplog.at_level(logging.WARNING, logger="shoal.headroom"):
        assert not headroom.keep(100, PAGE)
        assert not headroom.keep(200, PAGE)
    assert len(caplog.records) == 1 and "missing.db-wal" in caplog.text
    headroom.sync()  # nothing open: nothing to do
    headroom.close()
