"""A replica's copy (engine/replica.py's Copy): the leader's commits written under SQLite's
EXCLUSIVE lock, seen whole by reader connections that stay open across them."""

from __future__ import annotations

import shutil
import struct
import threading
from pathlib import Path

import apsw
import pytest

from shoal.engine.connection import Connection
from shoal.engine.replica import Copy
from shoal.log.errors import LogError
from shoal.log.segment import encode_segment
from tests.support.engine import fds_on
from tests.support.logged import LoggedDatabase, dump, dump_image


@pytest.fixture
def pair(tmp_path: Path) -> tuple[LoggedDatabase, Copy]:
    leader = LoggedDatabase(tmp_path / "leader.db", auto_vacuum=True)
    shutil.copy(leader.path, tmp_path / "copy.db")  # the hydrated copy, at txid 0
    copy = Copy(tmp_path / "copy.db", busy_timeout=5.0)
    copy.open()
    yield leader, copy
    copy.close()
    leader.close()


def reader(copy: Copy) -> Connection:
    return Connection(str(copy.path), reader=True, wal=False)


def rows(conn: Connection, sql: str = "SELECT substr(v, 1, 4) FROM t ORDER BY v") -> list[object]:
    return [r[0] for r in conn.internal(sql)]


def same_content(copy: Copy, leader: LoggedDatabase) -> None:
    """The copy holds what SQLite itself makes of the leader's file (its header aside)."""
    assert dump(copy.path) == dump_image(leader.image())


def test_commits_reach_open_readers_whole(pair: tuple[LoggedDatabase, Copy]) -> None:
    leader, copy = pair
    conn = reader(copy)
    assert copy.apply([encode_segment([leader.write(
        "CREATE TABLE t(v TEXT)")])], 0) [:2] == (1, True)  # a schema change
    assert rows(conn) == []
    first = leader.write("INSERT INTO t VALUES ('a')")
    second = leader.write("INSERT INTO t VALUES ('b'), ('c')")
    txid, schema, when = copy.apply([encode_segment([first, second])], 1)
    assert (txid, schema, when) == (3, False, second.time)
    assert rows(conn) == ["a", "b", "c"]  # the same connection, its cache dropped
    same_content(copy, leader)
    # what the copy already holds is skipped; a segment that skips a txid is refused
    assert copy.apply([encode_segment([second])], 3)[0] == 3
    third = leader.write("INSERT INTO t VALUES ('d')")
    fourth = leader.write("INSERT INTO t VALUES ('e')")
    with pytest.raises(LogError, match="skips"):
        copy.apply([encode_segment([fourth])], 3)
    assert copy.apply([encode_segment([third]), encode_segment([fourth])], 3)[0] == 5
    assert rows(conn) == ["a", "b", "c", "d", "e"]
    conn.close()


def test_a_shrinking_file_and_a_new_schema(pair: tuple[LoggedDatabase, Copy]) -> None:
    leader, copy = pair
    conn = reader(copy)
    commits = [leader.write("CREATE TABLE t(v TEXT)"),
               leader.write(*[f"INSERT INTO t VALUES ('{i:04}' || zeroblob(300))"
                              for i in range(2000)])]
    copy.apply([encode_segment(commits)], 0)
    assert len(rows(conn)) == 2000
    big = copy.path.stat().st_size
    commits = [leader.write("DELETE FROM t WHERE v > '0010'"),  # auto_vacuum: the file shrinks
               leader.write("CREATE TABLE u(w)", "CREATE INDEX tv ON t(v)")]
    assert copy.apply([encode_segment(commits)], 2)[:2] == (4, True)
    assert copy.path.stat().st_size < big / 4
    assert len(rows(conn)) == 10
    assert rows(conn, "SELECT name FROM sqlite_schema WHERE name IN ('u', 'tv') "
                      "ORDER BY name") == ["tv", "u"]
    assert rows(conn, "PRAGMA integrity_check") == ["ok"]
    same_content(copy, leader)
    conn.close()


def test_a_write_waits_out_a_read_and_blocks_new_ones(
        pair: tuple[LoggedDatabase, Copy]) -> None:
    """Readers see a commit whole or not at all: the apply takes SQLite's lock."""
    leader, copy = pair
    copy.apply([encode_segment([leader.write("CREATE TABLE t(v TEXT)")])], 0)
    conn = reader(copy)
    conn.internal("BEGIN")
    assert rows(conn) == []  # a snapshot, holding the SHARED lock
    done = threading.Event()
    commit = leader.write("INSERT INTO t VALUES ('a')")
    worker = threading.Thread(target=lambda: (copy.apply([encode_segment([commit])], 1),
                                              done.set()))
    worker.start()
    assert not done.wait(0.3)  # the apply waits for the read
    assert rows(conn) == []  # which still sees its snapshot
    conn.internal("ROLLBACK")
    assert done.wait(5)
    worker.join()
    assert rows(conn) == ["a"]
    conn.close()


def test_readers_cannot_write_the_copy(pair: tuple[LoggedDatabase, Copy]) -> None:
    leader, copy = pair
    copy.apply([encode_segment([leader.write("CREATE TABLE t(v TEXT)")])], 0)
    conn = reader(copy)
    with pytest.raises(apsw.ReadOnlyError):
        conn.internal("INSERT INTO t VALUES ('x')")
    conn.close()


def test_an_apply_cut_short_keeps_readers_out(pair: tuple[LoggedDatabase, Copy],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Half a commit in the file (a full disk) is never read: the lock stays held."""
    leader, copy = pair
    copy.apply([encode_segment([leader.write("CREATE TABLE t(v TEXT)")])], 0)
    commit = leader.write("INSERT INTO t VALUES ('a')")
    conn = Connection(str(copy.path), reader=True, wal=False, busy_timeout=0.05)

    def full(fd: int, commit: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("shoal.engine.replica.apply_commit", full)
    with pytest.raises(OSError):
        copy.apply([encode_segment([commit])], 1)
    assert copy.broken
    with pytest.raises(apsw.BusyError):
        rows(conn)
    with pytest.raises(AssertionError):
        copy.apply([encode_segment([commit])], 1)
    conn.close()




@pytest.mark.parametrize("page_size", [4096, 65536])
def test_open_stamps_a_rollback_journal_header(tmp_path: Path, page_size: int) -> None:
    leader = LoggedDatabase(tmp_path / "leader.db", page_size=page_size)
    leader.write("CREATE TABLE t(v TEXT)", "INSERT INTO t VALUES ('a')")
    (tmp_path / "copy.db").write_bytes(leader.image())
    before = (tmp_path / "copy.db").read_bytes()[:100]
    assert before[18:20] == b"\x02\x02"  # the leader's: WAL
    copy = Copy(tmp_path / "copy.db", busy_timeout=5.0)
    copy.open()
    try:
        header = (tmp_path / "copy.db").read_bytes()[:100]
        assert header[18:20] == b"\x01\x01"  # rollback journal: readers take file locks
        counter, pages = struct.unpack_from(">II", header, 24)
        assert header[92:96] == header[24:28]  # the size in the header is valid...
        assert pages * page_size == (tmp_path / "copy.db").stat().st_size  # ...and right
        assert copy.cookie == header[40:44] == before[40:44]
        assert header[:18] == before[:18] and header[40:92] == before[40:92]
        assert copy.apply([], 1) == (1, False, 0.0)  # nothing new: nothing written
        commit = leader.write("INSERT INTO t VALUES ('b')")
        assert copy.apply([encode_segment([commit])], 1) == (2, False, commit.time)
        header = (tmp_path / "copy.db").read_bytes()[:100]
        assert struct.unpack_from(">I", header, 24)[0] != counter  # readers drop caches
        assert header[92:96] == header[24:28]
        assert fds_on(copy.path) == 2  # its own descriptor and the applier's
    finally:
        copy.close()
        leader.close()
    assert fds_on(copy.path) == 0 and copy.conn is None and copy.fd < 0
    copy.close()  # twice: nothing more to close
