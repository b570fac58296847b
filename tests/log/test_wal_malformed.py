"""-wal files built field by field, with correct checksums, so that each structural check of
log/wal.py is the one that fires (flipped bits only ever reach the checksum).

The builder computes checksums with its own copy of SQLite's loop and writes the format's
numbers as literals: nothing here is imported from the module under test but the readers.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from shoal.log.errors import WalError
from shoal.log.wal import WalReader, parse_header, read_commits, wal_checksum

MAGIC_LE = 0x377F0682  # https://sqlite.org/fileformat2.html#walformat
MAGIC_BE = 0x377F0683
VERSION = 3007000
PAGE = 512
SALTS = (0x11223344, 0x55667788)


def checksum(data: bytes, s0: int, s1: int, big: bool) -> tuple[int, int]:
    """The checksum loop as printed in SQLite's file format document."""
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def header(*, magic: int = MAGIC_LE, version: int = VERSION, page_size: int = PAGE,
           seq: int = 0, salts: tuple[int, int] = SALTS) -> bytes:
    head = struct.pack(">6I", magic, version, page_size, seq, *salts)
    return head + struct.pack(">2I", *checksum(head, 0, 0, magic == MAGIC_BE))


def page(n: int, size: int = PAGE) -> bytes:
    return bytes([n % 256]) * size


class Wal:
    """A -wal file written a frame at a time, each chained to the previous one."""

    def __init__(self, *, big: bool = False, page_size: int = PAGE,
                 salts: tuple[int, int] = SALTS):
        self.big = big
        self.page_size = page_size
        self.salts = salts
        self.data = bytearray(header(magic=MAGIC_BE if big else MAGIC_LE,
                                     page_size=page_size, salts=salts))
        self.sums = checksum(bytes(self.data[:24]), 0, 0, big)
        self.ends: list[int] = []  # file length after each frame

    def frame(self, pgno: int, db_size: int = 0, body: bytes | None = None, *,
              salts: tuple[int, int] | None = None, bad_sum: bool = False) -> Wal:
        body = page(pgno, self.page_size) if body is None else body
        first = struct.pack(">2I", pgno, db_size)
        sums = checksum(body, *checksum(first, *self.sums, self.big), self.big)
        if bad_sum:
            sums = (sums[0] ^ 1, sums[1])
        self.data += first + struct.pack(">4I", *(salts or self.salts), *sums) + body
        self.sums = sums
        self.ends.append(len(self.data))
        return self

    def commit(self, *pgnos: int, db_size: int = 5) -> Wal:
        for p in pgnos[:-1]:
            self.frame(p)
        return self.frame(pgnos[-1], db_size)

    def write(self, path: Path) -> Path:
        path.write_bytes(bytes(self.data))
        return path


@pytest.fixture
def wal_path(tmp_path: Path) -> Path:
    return tmp_path / "db-wal"


BOTH = pytest.mark.parametrize("verify", [True, False])


# -- a well-formed log, as the reference ----------------------------------------------------------


@BOTH
def test_well_formed_log(wal_path: Path, verify: bool) -> None:
    Wal().commit(1, 2, db_size=2).commit(2, 3, 2, db_size=3).write(wal_path)
    commits, pos = read_commits(wal_path, verify=verify)
    assert [(c.db_pages, c.end_frame, c.page_size) for c in commits] == [(2, 2, PAGE), (3, 5, PAGE)]
    # one image per page, the latest, in page order
    assert [(p, bytes(b)) for p, b in commits[1].frames] == [(2, page(2)), (3, page(3))]
    assert pos is not None
    assert (pos.salt1, pos.salt2, pos.frames, pos.page_size) == (*SALTS, 5, PAGE)


@BOTH
def test_later_image_of_a_page_wins(wal_path: Path, verify: bool) -> None:
    Wal().frame(1, body=b"a" * PAGE).frame(2).frame(1, 2, body=b"b" * PAGE).write(wal_path)
    (c,), _ = read_commits(wal_path, verify=verify)
    assert [(p, bytes(b)) for p, b in c.frames] == [(1, b"b" * PAGE), (2, page(2))]


def test_big_endian_checksums(wal_path: Path) -> None:
    wal = Wal(big=True).commit(1, 2, db_size=2).write(wal_path)
    assert wal.read_bytes()[:4] == b"\x37\x7f\x06\x83"
    assert parse_header(wal.read_bytes()[:32]).big_endian
    commits, pos = read_commits(wal_path)
    assert len(commits) == 1 and pos is not None and pos.frames == 2
    # little-endian sums under a big-endian magic do not verify
    data = bytearray(Wal().commit(1, db_size=1).data)
    data[:32] = header(magic=MAGIC_BE)
    wal_path.write_bytes(bytes(data))
    assert read_commits(wal_path)[0] == []


def test_little_endian_magic_bytes(wal_path: Path) -> None:
    Wal().commit(1, db_size=1).write(wal_path)
    head = wal_path.read_bytes()[:32]
    assert head[:8] == bytes.fromhex("377f0682002de218")  # magic, version 3007000
    assert not parse_header(head).big_endian
    assert parse_header(head).page_size == PAGE


def test_header_fields(wal_path: Path) -> None:
    head = header(seq=7, salts=(1, 2), page_size=65536)
    h = parse_header(head + b"\xff" * 40)  # only the first 32 bytes are the header
    assert (h.page_size, h.checkpoint_seq, h.salt1, h.salt2) == (65536, 7, 1, 2)
    assert h.checksum == struct.unpack(">2I", head[24:32])


# -- the header's checks --------------------------------------------------------------------


@pytest.mark.parametrize(("head", "message"), [
    (header(magic=0x377F0684), "bad WAL magic 0x377f0684"),
    (header(magic=0x377F0681), "bad WAL magic 0x377f0681"),
    (header(magic=0x82067F37), "bad WAL magic 0x82067f37"),
    (header(version=3007001), "unsupported WAL version 3007001"),
    (header(version=3006999), "unsupported WAL version 3006999"),
    (header(page_size=0), "bad page size 0"),
    (header(page_size=256), "bad page size 256"),
    (header(page_size=511), "bad page size 511"),
    (header(page_size=513), "bad page size 513"),
    (header(page_size=1000), "bad page size 1000"),
    (header(page_size=4097), "bad page size 4097"),
    (header(page_size=65535), "bad page size 65535"),
    (header(page_size=131072), "bad page size 131072"),
    (header(page_size=1 << 31), f"bad page size {1 << 31}"),
    (header()[:28] + b"\x00\x00\x00\x01", "WAL header checksum mismatch"),
    (header()[:24] + b"\x00\x00\x00\x01" + header()[28:], "WAL header checksum mismatch"),
    (header()[:31], "WAL header is 31 bytes, not 32"),
    (b"", "WAL header is 0 bytes, not 32"),
])
def test_bad_headers(head: bytes, message: str) -> None:
    with pytest.raises(WalError) as info:
        parse_header(head, "x-wal")
    assert str(info.value) == f"x-wal: {message}"
    assert info.value.key == "x-wal"


@pytest.mark.parametrize("size", [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536])
def test_every_page_size_sqlite_allows(size: int) -> None:
    assert parse_header(header(page_size=size)).page_size == size


@BOTH
@pytest.mark.parametrize("head", [header(magic=0x377F0684), header(version=1),
                                  header(page_size=1000), header()[:28] + bytes(4)])
def test_readers_refuse_a_bad_header(wal_path: Path, head: bytes, verify: bool) -> None:
    data = Wal().commit(1, db_size=1).data
    wal_path.write_bytes(head + bytes(data[32:]))
    with pytest.raises(WalError) as info:
        read_commits(wal_path, verify=verify)
    assert str(wal_path) in str(info.value) and info.value.key == str(wal_path)
    with pytest.raises(WalError):
        WalReader(wal_path, verify=verify).read()


# -- frames: each structural check on its own ---------------------------------------------------


@BOTH
def test_a_frame_with_other_salts_ends_the_log(wal_path: Path, verify: bool) -> None:
    """Its checksum is right (salts are not summed): only the salt check stops it."""
    wal = Wal().commit(1, db_size=1)
    wal.frame(2, 2, salts=(SALTS[0], SALTS[1] + 1)).frame(3, 3)
    wal.write(wal_path)
    commits, pos = read_commits(wal_path, verify=verify)
    assert [c.db_pages for c in commits] == [1]
    assert pos is not None and pos.frames == 1
    with pytest.raises(WalError, match=r"frames 2..3 are not a valid committed transaction"):
        read_commits(wal_path, max_frame=3, verify=verify)
    wal = Wal().frame(2, 2, salts=(SALTS[0] + 1, SALTS[1])).write(wal_path)
    assert read_commits(wal, verify=verify)[0] == []


@BOTH
def test_a_frame_for_page_zero_ends_the_log(wal_path: Path, verify: bool) -> None:
    Wal().commit(1, db_size=1).frame(0, 2).frame(3, 3).write(wal_path)
    commits, pos = read_commits(wal_path, verify=verify)
    assert [c.db_pages for c in commits] == [1]
    assert pos is not None and pos.frames == 1
    with pytest.raises(WalError, match=r"frames 2..2 are not"):
        read_commits(wal_path, max_frame=2, verify=verify)


def test_a_bad_checksum_ends_the_log_when_verifying(wal_path: Path) -> None:
    Wal().commit(1, db_size=1).frame(2, 2, bad_sum=True).write(wal_path)
    assert [c.db_pages for c in read_commits(wal_path)[0]] == [1]
    with pytest.raises(WalError, match=r"frames 2..2 are not"):
        read_commits(wal_path, max_frame=2)
    # the hot path trusts SQLite's own arithmetic; structure is still checked
    commits, pos = read_commits(wal_path, max_frame=2, verify=False)
    assert [c.db_pages for c in commits] == [1, 2]
    assert pos is not None and pos.checksum == struct.unpack(">2I", wal_path.read_bytes()[
        32 + 24 + PAGE + 16:32 + 24 + PAGE + 24])


@BOTH
def test_the_chain_runs_from_the_header(wal_path: Path, verify: bool) -> None:
    """Frame 1 is summed from the header's checksum, not from zero."""
    wal = Wal()
    wal.sums = (0, 0)
    wal.commit(1, db_size=1).write(wal_path)
    assert len(read_commits(wal_path, verify=verify)[0]) == (0 if verify else 1)


@BOTH
def test_frames_after_the_last_commit_are_not_read(wal_path: Path, verify: bool) -> None:
    wal = Wal().commit(1, 2, db_size=2).frame(3).frame(4).write(wal_path)
    commits, pos = read_commits(wal, verify=verify)
    assert [c.end_frame for c in commits] == [2]
    assert pos is not None and pos.frames == 2
    with pytest.raises(WalError) as info:
        read_commits(wal, max_frame=4, verify=verify)
    assert str(info.value) == f"{wal}: frames 3..4 are not a valid committed transaction"
    assert info.value.key == str(wal)
    with pytest.raises(WalError, match=r"frames 3..3 are not"):
        read_commits(wal, max_frame=3, verify=verify)
    assert read_commits(wal, max_frame=2, verify=verify)[1] == pos


@BOTH
def test_a_partial_last_frame_is_not_read(wal_path: Path, verify: bool) -> None:
    wal = Wal().commit(1, db_size=1).commit(2, db_size=2)
    wal_path.write_bytes(bytes(wal.data[:-1]))
    commits, _ = read_commits(wal_path, verify=verify)
    assert [c.db_pages for c in commits] == [1]
    with pytest.raises(WalError) as info:
        read_commits(wal_path, max_frame=2, verify=verify)
    assert str(info.value) == f"{wal_path}: WAL holds fewer than 2 frames"
    wal.write(wal_path)  # exactly whole frames: every one is read
    assert len(read_commits(wal_path, verify=verify)[0]) == 2


@BOTH
def test_max_frame_must_not_go_backwards(wal_path: Path, verify: bool) -> None:
    Wal().commit(1, db_size=1).commit(2, db_size=2).write(wal_path)
    _, pos = read_commits(wal_path, verify=verify)
    with pytest.raises(WalError, match="asked to read to frame 1 but already read 2"):
        read_commits(wal_path, pos, max_frame=1, verify=verify)
    assert read_commits(wal_path, pos, max_frame=2, verify=verify) == ([], pos)


# -- missing and empty files: what read_commits promises ----------------------------------------


@BOTH
def test_a_missing_wal(tmp_path: Path, verify: bool) -> None:
    """No -wal file: nothing to read; an error only when frames were promised."""
    path = tmp_path / "absent-wal"
    assert read_commits(path, verify=verify) == ([], None)
    assert read_commits(path, max_frame=0, verify=verify) == ([], None)
    Wal().commit(1, db_size=1).write(tmp_path / "w")
    _, pos = read_commits(tmp_path / "w")
    assert read_commits(path, pos, verify=verify) == ([], pos)  # the position is kept
    with pytest.raises(WalError) as info:
        read_commits(path, max_frame=3, verify=verify)
    assert str(info.value) == f"{path}: WAL file missing, expected 3 frames"
    assert info.value.key == str(path)
    reader = WalReader(path, verify=verify)
    assert reader.read() == []
    with pytest.raises(WalError, match="WAL file missing"):
        reader.read(max_frame=1)


@BOTH
@pytest.mark.parametrize("size", [0, 31])
def test_an_empty_wal(wal_path: Path, verify: bool, size: int) -> None:
    wal_path.write_bytes(header()[:size])
    assert read_commits(wal_path, verify=verify) == ([], None)
    assert read_commits(wal_path, max_frame=0, verify=verify) == ([], None)
    with pytest.raises(WalError) as info:
        read_commits(wal_path, max_frame=2, verify=verify)
    assert str(info.value) == f"{wal_path}: WAL is empty, expected 2 frames"
    assert info.value.key == str(wal_path)


def test_a_header_alone_holds_no_commit(wal_path: Path) -> None:
    wal_path.write_bytes(header())
    commits, pos = read_commits(wal_path)
    assert commits == []
    assert pos is not None and (pos.frames, pos.page_size) == (0, PAGE)
    assert pos.checksum == struct.unpack(">2I", header()[24:])


# -- positions and generations ------------------------------------------------------------


@BOTH
def test_resuming_continues_the_chain(wal_path: Path, verify: bool) -> None:
    wal = Wal().commit(1, db_size=1)
    wal.write(wal_path)
    first, pos = read_commits(wal_path, verify=verify)
    wal.commit(2, 3, db_size=3).write(wal_path)
    more, pos2 = read_commits(wal_path, pos, max_frame=3, verify=verify)
    assert [c.end_frame for c in first + more] == [1, 3]
    assert pos2 is not None and pos2.frames == 3 and pos2.checksum == wal.sums


@BOTH
def test_new_salts_start_over(wal_path: Path, verify: bool) -> None:
    Wal().commit(1, db_size=1).commit(2, db_size=2).write(wal_path)
    reader = WalReader(wal_path, verify=verify)
    assert [c.end_frame for c in reader.read()] == [1, 2]
    # a checkpoint restarted the WAL: new salts, frames from the top
    Wal(salts=(9, 9)).commit(3, db_size=3).write(wal_path)
    reader.close()
    got = reader.read(max_frame=1)
    assert [(c.end_frame, c.db_pages) for c in got] == [(1, 3)]
    assert reader.position is not None
    assert (reader.position.salt1, reader.position.salt2, reader.position.frames) == (9, 9, 1)
    reader.close()
    reader.close()  # closing twice is harmless


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_readers_close_what_they_open(wal_path: Path) -> None:
    Wal().commit(1, db_size=1).write(wal_path)
    before = open_fds()
    read_commits(wal_path)
    assert open_fds() == before
    reader = WalReader(wal_path)
    reader.read()
    assert open_fds() == before + 1  # kept open between reads
    reader.close()
    assert open_fds() == before


def test_defaults_verify_and_name_the_file(wal_path: Path) -> None:
    Wal().commit(1, db_size=1).frame(2, 2, bad_sum=True).write(wal_path)
    assert [c.db_pages for c in WalReader(wal_path).read()] == [1]
    with pytest.raises(WalError, match=r"^-wal: bad WAL magic 0x0$"):
        parse_header(bytes(32))
    with pytest.raises(ValueError):  # the checksum runs over pairs of words
        wal_checksum(bytes(12))
