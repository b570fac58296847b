"""The spool beside a branch's file: what a crash finds there, a torn tail, trimming."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from shoal.feed.spool import SUFFIX, Spool

TL = "5be0c6d4a1f2e390"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "main.db", max_bytes=1000)
    s.open()
    return s


def test_records_are_read_back_by_txid_and_timeline(spool: Spool) -> None:
    spool.append(5, TL, b"five", durable=-1)
    spool.append(6, TL, None, durable=-1)  # not captured
    spool.append(7, "othertimeline00", b"seven", durable=-1)
    assert spool.read(TL, 1, 10) == {5: b"five", 6: None}
    assert spool.read(TL, 6, 6) == {6: None}
    assert spool.read("othertimeline00", 1, 10) == {7: b"seven"}
    assert spool.path == Path(f"{spool.path.parent / 'main.db'}{SUFFIX}")


def test_the_last_record_of_a_txid_wins_and_a_reopen_finds_them(tmp_path: Path,
                                                               spool: Spool) -> None:
    spool.append(5, TL, b"failed commit", durable=-1)  # its COMMIT failed; txid 5 again:
    spool.append(5, TL, b"the one", durable=-1)
    spool.close()
    again = Spool(tmp_path / "main.db")
    again.open()
    assert again.read(TL, 5, 5) == {5: b"the one"}


def test_a_torn_or_damaged_tail_ends_the_reading(spool: Spool) -> None:
    spool.append(1, TL, b"one", durable=-1)
    spool.append(2, TL, b"two", durable=-1)
    data = spool.path.read_bytes()
    spool.path.write_bytes(data[:-3])  # the last append cut short
    assert spool.read(TL, 0, 9) == {1: b"one"}
    damaged = bytearray(data)
    damaged[-6] ^= 1  # a flipped bit in the last record
    spool.path.write_bytes(bytes(damaged))
    assert spool.read(TL, 0, 9) == {1: b"one"}


def test_a_record_as_laid_out() -> None:
    head = struct.pack("<Q16sI", 9, TL.encode(), 3) + b"abc"
    record = head + struct.pack("<I", zlib.crc32(head))
    assert len(record) == 8 + 16 + 4 + 3 + 4


def test_emptied_once_every_record_is_durable(spool: Spool) -> None:
    spool.append(1, TL, b"x" * 50, durable=-1)
    spool.append(2, TL, b"y" * 50, durable=0)
    size = spool.path.stat().st_size
    spool.append(3, TL, b"z", durable=2)  # 1 and 2 are in the store: the file starts over
    assert spool.path.stat().st_size < size
    assert spool.read(TL, 0, 9) == {3: b"z"}


def test_past_max_bytes_only_records_the_store_lacks_are_kept(spool: Spool) -> None:
    for txid in range(1, 12):
        spool.append(txid, TL, bytes(100), durable=-1)
    assert spool.path.stat().st_size > 1000
    spool.append(12, TL, b"last", durable=9)
    assert set(spool.read(TL, 0, 99)) == {10, 11, 12}
    assert spool.read(TL, 12, 12) == {12: b"last"}
    assert not spool.path.with_name(spool.path.name + ".tmp").exists()


def test_a_failed_append_leaves_nothing_behind(spool: Spool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from shoal.feed import spool as spool_mod
    spool.append(1, TL, b"one", durable=-1)
    real = os.write
    monkeypatch.setattr(spool_mod.os, "write", lambda fd, data: real(fd, data[:10]))
    with pytest.raises(OSError):  # a full disk mid-record
        spool.append(2, TL, b"two", durable=-1)
    monkeypatch.setattr(spool_mod.os, "write", real)
    spool.append(2, TL, b"two again", durable=-1)
    assert spool.read(TL, 0, 9) == {1: b"one", 2: b"two again"}


def test_a_truncate_that_failed_is_done_before_the_next_append(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from shoal.feed import spool as spool_mod
    spool.append(1, TL, b"one", durable=-1)
    real_write, real_truncate = os.write, os.ftruncate

    def refuse(fd: int, size: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(spool_mod.os, "write", lambda fd, data: real_write(fd, data[:10]))
    monkeypatch.setattr(spool_mod.os, "ftruncate", refuse)
    with pytest.raises(OSError):
        spool.append(2, TL, b"two", durable=-1)
    monkeypatch.setattr(spool_mod.os, "write", real_write)
    with pytest.raises(OSError):  # still cannot cut the torn bytes: no record after them
        spool.append(2, TL, b"two", durable=-1)
    monkeypatch.setattr(spool_mod.os, "ftruncate", real_truncate)
    spool.append(2, TL, b"two", durable=-1)
    assert spool.read(TL, 0, 9) == {1: b"one", 2: b"two"}


def test_a_reopened_spool_knows_its_size_and_last_txid(tmp_path: Path) -> None:
    first = Spool(tmp_path / "main.db")
    first.open()
    first.append(4, TL, b"four", durable=-1)
    first.append(5, TL, b"five", durable=-1)
    first.close()
    first.close()  # twice is fine
    again = Spool(tmp_path / "main.db", max_bytes=10_000)
    again.open()
    again.append(6, TL, b"six", durable=4)  # 5 is not in the store yet: kept
    assert set(again.read(TL, 0, 9)) == {4, 5, 6}
    again.append(7, TL, b"seven", durable=6)  # everything up to the last is: emptied first
    assert again.read(TL, 0, 9) == {7: b"seven"}
    again.close()


def test_a_rewrite_leaves_a_spool_that_goes_on(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "main.db", max_bytes=300)
    spool.open()
    for txid in range(1, 6):
        spool.append(txid, TL, bytes(100), durable=-1)
    spool.append(6, TL, b"six", durable=4)  # past max_bytes: rewritten with 5 alone, then 6
    size = spool.path.stat().st_size
    spool.append(7, TL, b"seven", durable=4)
    assert spool.path.stat().st_size > size  # appended to the new file
    assert set(spool.read(TL, 0, 9)) == {5, 6, 7}
    spool.append(8, TL, b"eight", durable=7)  # all but 8 durable: emptied, then 8
    assert spool.read(TL, 0, 9) == {8: b"eight"}
    spool.close()
    assert Spool(tmp_path / "main.db").read(TL, 0, 9) == {8: b"eight"}


def test_a_record_exactly_at_the_end_is_read(spool: Spool) -> None:
    spool.append(1, TL, b"", durable=-1)  # a header and a crc, nothing between
    assert spool.read(TL, 0, 9) == {1: b""}
    assert spool.read_all() == {1: b""}


def test_nothing_to_read_before_the_first_append(tmp_path: Path) -> None:
    assert Spool(tmp_path / "none.db").read(TL, 0, 9) == {}
