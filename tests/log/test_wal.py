"""WAL parsing against real -wal files written by SQLite (apsw, auto-checkpoint off)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import apsw
import pytest

from shoal.log.capture import Capture
from shoal.log.errors import WalError
from shoal.log.wal import (
    FRAME_HEADER_SIZE,
    HEADER_SIZE,
    MAGIC_BE,
    WalReader,
    parse_header,
    read_commits,
    wal_checksum,
)
from tests.support.logged import LoggedDatabase


def reference_checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """The checksum loop as printed in SQLite's file format document."""
    fmt = ">" if big_endian else "<"
    words = struct.unpack(f"{fmt}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


@pytest.fixture
def logged(tmp_path: Path) -> LoggedDatabase:
    db = LoggedDatabase(tmp_path / "t.db")
    db.write("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    return db


def test_checksum_matches_the_reference_loop() -> None:
    data = bytes(range(256)) * 17 + b"\x01" * 8
    for big in (False, True):
        assert wal_checksum(data, 7, 9, big) == reference_checksum(data, 7, 9, big)


def test_header_of_a_real_wal(logged: LoggedDatabase) -> None:
    header = parse_header(Path(f"{logged.path}-wal").read_bytes()[:HEADER_SIZE])
    assert header.page_size == 4096
    assert not header.big_endian  # SQLite writes native order; this machine is little-endian


def test_each_commit_is_read_once_with_its_pages(logged: LoggedDatabase) -> None:
    c1 = logged.write("INSERT INTO t(v) VALUES ('a')")
    c2 = logged.write("INSERT INTO t(v) VALUES ('b')", "INSERT INTO t(v) VALUES ('c')")
    for c in (c1, c2):
        assert c.page_size == 4096
        assert c.db_pages >= 3
        pgnos = [p for p, _ in c.frames]
        assert pgnos == sorted(set(pgnos))
        assert all(len(page) == 4096 for _, page in c.frames)
    assert (c1.txid, c2.txid) == (2, 3)
    # A fresh reader from the start of the WAL sees every commit, in order.
    commits, position = read_commits(f"{logged.path}-wal")
    assert [c.frames for c in commits] == [c.frames for c in logged.commits]
    assert position is not None and position.frames == logged.frames


def test_reading_stops_at_the_last_commit_and_resumes(logged: LoggedDatabase) -> None:
    reader = WalReader(f"{logged.path}-wal")
    assert len(reader.read()) == 1
    assert reader.read() == []
    logged.write("INSERT INTO t(v) VALUES ('x')")
    logged.write("INSERT INTO t(v) VALUES ('y')")
    got = reader.read()
    assert [c.frames for c in got] == [c.frames for c in logged.commits[1:]]


def test_reader_keeps_its_file_open_until_closed(logged: LoggedDatabase,
                                                  tmp_path: Path) -> None:
    """Between reads the file stays open; after close() a read opens the path afresh."""
    copy = tmp_path / "copy-wal"
    reader = WalReader(copy)
    assert reader.read() == []  # no file yet: nothing, and nothing held open
    logged.write("INSERT INTO t(v) VALUES ('a')")
    shutil.copyfile(f"{logged.path}-wal", copy)
    assert len(reader.read()) == 2
    logged.write("INSERT INTO t(v) VALUES ('b')")
    shutil.copyfile(f"{logged.path}-wal", tmp_path / "next-wal")
    (tmp_path / "next-wal").replace(copy)  # a new file under the old name
    assert reader.read() == []  # still reading the file it opened
    reader.close()
    assert [c.frames for c in reader.read()] == [c.frames for c in logged.commits[2:]]
    reader.close()
    reader.close()  # idempotent


def test_wal_restart_after_checkpoint_is_followed(logged: LoggedDatabase) -> None:
    logged.write("INSERT INTO t(v) VALUES ('a')")
    first_salts = parse_header(Path(f"{logged.path}-wal").read_bytes()[:32]).salt1
    logged.checkpoint()  # truncates the WAL; the next commit writes a new header
    logged.write("INSERT INTO t(v) VALUES ('b')")
    assert parse_header(Path(f"{logged.path}-wal").read_bytes()[:32]).salt1 != first_salts
    # a PASSIVE checkpoint leaves the file; the next writer restarts it from frame 0
    logged.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    logged.write("INSERT INTO t(v) VALUES ('c')")
    assert logged.capture.reader.position is not None
    assert logged.capture.reader.position.frames == logged.frames


def test_rolled_back_spill_frames_are_not_commits(tmp_path: Path) -> None:
    logged = LoggedDatabase(tmp_path / "spill.db")
    logged.write("CREATE TABLE big(b BLOB)")
    logged.conn.execute("PRAGMA cache_size=10")  # a large transaction spills pages to the WAL
    logged.conn.execute("BEGIN")
    for _ in range(200):
        logged.conn.execute("INSERT INTO big VALUES (zeroblob(3000))")
    logged.conn.execute("ROLLBACK")
    wal = Path(f"{logged.path}-wal")
    assert wal.stat().st_size > HEADER_SIZE + 20 * (FRAME_HEADER_SIZE + 4096)  # frames spilled
    assert logged.capture.reader.read() == []  # nothing new was committed
    commit = logged.write("INSERT INTO big VALUES (x'00')")
    assert commit.txid == 2


def test_corrupt_frame_ends_the_log_or_fails_when_expected(logged: LoggedDatabase) -> None:
    logged.write("INSERT INTO t(v) VALUES ('a')")
    wal = Path(f"{logged.path}-wal")
    broken = wal.with_name("broken-wal")
    shutil.copyfile(wal, broken)
    frames_before = logged.commits[0].frames
    data = bytearray(broken.read_bytes())
    offset = HEADER_SIZE + len(frames_before) * (FRAME_HEADER_SIZE + 4096) + FRAME_HEADER_SIZE + 100
    data[offset] ^= 0xFF  # a byte of the second commit's first page
    broken.write_bytes(bytes(data))
    commits, _ = read_commits(broken)
    assert len(commits) == 1  # as SQLite's recovery: the log ends before the bad frame
    with pytest.raises(WalError, match="not a valid committed transaction"):
        read_commits(broken, max_frame=logged.frames)
    # without checksum verification the same bytes are accepted (structure still checked)
    assert len(read_commits(broken, verify=False)[0]) == 2


def test_bad_header_is_refused(logged: LoggedDatabase) -> None:
    data = bytearray(Path(f"{logged.path}-wal").read_bytes()[:32])
    data[20] ^= 1
    with pytest.raises(WalError, match="checksum"):
        parse_header(bytes(data))
    with pytest.raises(WalError, match="magic"):
        parse_header(b"\0" * 32)


def to_big_endian(wal: bytes) -> bytes:
    """Rewrite a little-endian-checksummed WAL as a big-endian host would have written it."""
    page_size = struct.unpack_from(">I", wal, 8)[0]
    out = bytearray(wal)
    struct.pack_into(">I", out, 0, MAGIC_BE)
    s = wal_checksum(bytes(out[:24]), big_endian=True)
    struct.pack_into(">II", out, 24, *s)
    frame = FRAME_HEADER_SIZE + page_size
    for off in range(HEADER_SIZE, len(out) - frame + 1, frame):
        s = wal_checksum(bytes(out[off:off + 8]), *s, big_endian=True)
        s = wal_checksum(bytes(out[off + 24:off + frame]), *s, big_endian=True)
        struct.pack_into(">II", out, off + 16, *s)
    return bytes(out)


def test_big_endian_wal(logged: LoggedDatabase, tmp_path: Path) -> None:
    logged.write("INSERT INTO t(v) VALUES ('a')")
    be = tmp_path / "be-wal"
    be.write_bytes(to_big_endian(Path(f"{logged.path}-wal").read_bytes()))
    commits, _ = read_commits(be)
    assert [c.frames for c in commits] == [c.frames for c in logged.commits]


def test_missing_or_empty_wal(tmp_path: Path) -> None:
    assert read_commits(tmp_path / "none-wal") == ([], None)
    (tmp_path / "empty-wal").write_bytes(b"")
    assert read_commits(tmp_path / "empty-wal") == ([], None)
    with pytest.raises(WalError):
        read_commits(tmp_path / "empty-wal", max_frame=3)


def test_capture_refuses_a_commit_without_txid(logged: LoggedDatabase) -> None:
    logged.conn.execute("INSERT INTO t(v) VALUES ('untracked')")  # committed behind its back
    logged.conn.execute("INSERT INTO t(v) VALUES ('again')")
    with pytest.raises(WalError, match="expected one new commit"):
        logged.capture.commit(99)


def test_hot_path_without_checksums_reads_the_same_commits(tmp_path: Path) -> None:
    fast = LoggedDatabase(tmp_path / "fast.db", verify=False)
    fast.write("CREATE TABLE t(v)")
    for i in range(20):
        fast.write(("INSERT INTO t VALUES (?)", (str(i) * 500,)))
    commits, _ = read_commits(f"{fast.path}-wal", verify=True)
    assert [c.frames for c in commits] == [c.frames for c in fast.commits]


def test_recover_verifies_checksums_of_a_torn_tail(logged: LoggedDatabase) -> None:
    logged.write("INSERT INTO t(v) VALUES ('a')")
    wal = Path(f"{logged.path}-wal")
    data = bytearray(wal.read_bytes())
    data[-10] ^= 0xFF  # the last commit's last page: torn by a crash
    wal.write_bytes(bytes(data))
    recovered = Capture(wal, verify=False).recover(head_txid=1)
    assert [c.frames for c in recovered] == [logged.commits[0].frames]


def test_recover_numbers_commits_back_from_the_head(logged: LoggedDatabase) -> None:
    logged.write("INSERT INTO t(v) VALUES ('a')")
    logged.write("INSERT INTO t(v) VALUES ('b')")
    recovered = Capture(f"{logged.path}-wal", clock=lambda: 5.0).recover(head_txid=3)
    assert [c.txid for c in recovered] == [1, 2, 3]
    assert [c.frames for c in recovered] == [c.frames for c in logged.commits]
    assert all(c.time == 5.0 for c in recovered)


def test_apsw_is_in_wal_mode_with_autocheckpoint_off(logged: LoggedDatabase) -> None:
    for i in range(50):
        logged.write(("INSERT INTO t(v) VALUES (?)", ("x" * 3000 + str(i),)))
    assert logged.conn.execute("PRAGMA journal_mode").get == "wal"
    assert logged.frames > 50  # nothing was checkpointed behind our back
    assert apsw.sqlite_lib_version()


def test_marks_are_read_per_segment_and_checked(logged: LoggedDatabase) -> None:
    """Commits are marked (no I/O) and their pages read later, in one go, exactly."""
    capture = Capture(f"{logged.path}-wal")
    capture.recover(logged.txid)  # reading resumes after the commit already there
    written, marks = [], []
    for v in "abc":
        written.append(logged.write(f"INSERT INTO t(v) VALUES ('{v}')"))
        marks.append(capture.mark(logged.txid, logged.frames))
    assert [m.time for m in marks] == sorted(m.time for m in marks)
    assert all(m.size == c.size for m, c in zip(marks, written, strict=True))
    got = capture.read(marks)
    assert [(c.txid, c.frames, c.db_pages) for c in got] == \
        [(c.txid, c.frames, c.db_pages) for c in written]
    # an entry that is already a Commit passes through, in order
    assert capture.read([written[0]]) == [written[0]]

    # a commit nobody marked (what a commit that bumps no txid looks like) is caught
    logged.write("INSERT INTO t(v) VALUES ('unmarked')")
    logged.write("INSERT INTO t(v) VALUES ('marked')")
    with pytest.raises(WalError, match="expected commits ending at frames"):
        capture.read([capture.mark(logged.txid, logged.frames)])
