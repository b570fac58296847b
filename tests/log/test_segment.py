"""Segment and snapshot formats: round trips, and every kind of damage is caught."""

from __future__ import annotations

import dataclasses
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.log import layout
from shoal.log.errors import CorruptObject
from shoal.log.segment import Commit, decode_segment, encode_segment, read_changes, read_header
from shoal.log.snapshot import SnapshotPolicy, encode_snapshot, write_image
from shoal.storage.base import ObjectInfo


def commit(txid: int, pages: int = 2, page_size: int = 512, time: float = 0.0) -> Commit:
    frames = tuple((p, bytes([txid % 256, p % 256]) * (page_size // 2))
                   for p in range(1, pages + 1))
    return Commit(txid, time or 1000.0 + txid, page_size, pages, frames)


def test_round_trip() -> None:
    commits = [commit(t, pages=t % 4 + 1) for t in range(5, 12)]
    data = encode_segment(commits)
    header, decoded = decode_segment(data)
    assert decoded == commits
    assert (header.first_txid, header.last_txid, header.commits) == (5, 11, 7)
    assert read_header(data) == header
    assert len(data) < sum(c.size for c in commits) / 4  # compressed


def test_encode_refuses_gaps_and_bad_pages() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        encode_segment([commit(1), commit(3)])
    with pytest.raises(ValueError):
        encode_segment([])
    bad = Commit(1, 1.0, 512, 1, ((1, b"short"),))
    with pytest.raises(ValueError, match="not 512"):
        encode_segment([bad])


@given(st.data())
def test_any_flipped_bit_or_truncation_is_caught(data: st.DataObject) -> None:
    blob = bytearray(encode_segment([commit(t) for t in range(1, 4)]))
    if data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= 1 << data.draw(st.integers(0, 7))
    else:
        del blob[data.draw(st.integers(0, len(blob) - 1)):]
    with pytest.raises(CorruptObject) as info:
        decode_segment(bytes(blob), "dbs/x/log/k.seg")
    assert info.value.key == "dbs/x/log/k.seg"


def test_snapshot_round_trip_and_damage() -> None:
    page = b"SQLite format 3\x00" + bytes([2, 0]) + bytes(494)  # page size 512
    image = page + bytes(range(256)) * 6
    assert len(image) == 4 * 512
    data = encode_snapshot(io.BytesIO(image), 42, 1234.5)
    out = io.BytesIO()
    header = write_image(data, out)
    assert out.getvalue() == image
    assert (header.txid, header.time, header.page_size, header.db_pages) == (42, 1234.5, 512, 4)
    broken = bytearray(data)
    broken[50] ^= 4
    with pytest.raises(CorruptObject, match="checksum"):
        write_image(bytes(broken), io.BytesIO(), "k.snap")
    with pytest.raises(CorruptObject, match="truncated"):
        write_image(data[:20], io.BytesIO(), "k.snap")
    empty = encode_snapshot(io.BytesIO(b""), 0, 1.0)
    assert write_image(empty, io.BytesIO()).db_pages == 0


def test_keys_sort_by_txid_and_parse_back() -> None:
    keys = [layout.segment_key("db", "tl", f, f + 4, 1.7e9 + f / 3) for f in (1, 6, 11, 101)]
    assert keys == sorted(keys)
    infos = [layout.parse_segment(ObjectInfo(k, 10)) for k in keys]
    assert [(i.first, i.last) for i in infos if i] == [(1, 5), (6, 10), (11, 15), (101, 105)]
    for info, f in zip(infos, (1, 6, 11, 101), strict=True):
        assert info is not None and info.last_time >= 1.7e9 + f / 3  # never earlier
        assert info.last_time - (1.7e9 + f / 3) < 0.002
    snap = layout.parse_snapshot(ObjectInfo(layout.snapshot_key("db", "tl", 7, 5.0), 3))
    assert snap is not None and (snap.txid, snap.time) == (7, 5.0)
    assert layout.parse_segment(ObjectInfo("dbs/db/log/tl/garbage", 1)) is None


def test_snapshot_policy() -> None:
    policy = SnapshotPolicy(min_log_bytes=100, log_ratio=0.5, interval=60)
    assert not policy.due(0, 10, 1e9)
    assert policy.due(100, 10, 0)
    assert not policy.due(100, 1000, 0)  # log small against the database
    assert policy.due(500, 1000, 0)
    assert policy.due(1, 1000, 60)


# -- version 2: commits with captured changes -----------------------------------------------


def test_captured_changes_round_trip_and_read_alone() -> None:
    commits = [dataclasses.replace(commit(t), changes=b"c" * t if t % 3 else None)
               for t in range(5, 12)]
    data = encode_segment(commits)
    assert data[8:10] == b"\x02\x00"
    assert decode_segment(data)[1] == commits
    header, captured = read_changes(data)
    assert header == read_header(data)
    assert [(c.txid, c.time, c.changes) for c in captured] == \
        [(c.txid, c.time, c.changes) for c in commits]


def test_no_captured_changes_is_version_1_and_reads_as_none() -> None:
    commits = [commit(t) for t in range(1, 4)]
    data = encode_segment(commits)
    assert data[8:10] == b"\x01\x00"
    assert [(c.txid, c.changes) for c in read_changes(data)[1]] == [(1, None), (2, None),
                                                                    (3, None)]
    empty = [dataclasses.replace(c, changes=b"") for c in commits]  # captured: no row changed
    assert decode_segment(encode_segment(empty))[1] == empty


@given(st.data())
def test_any_flipped_bit_or_truncation_of_version_2_is_caught(data: st.DataObject) -> None:
    blob = bytearray(encode_segment([dataclasses.replace(commit(t), changes=b"xyz" * t)
                                     for t in range(1, 4)]))
    if data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= 1 << data.draw(st.integers(0, 7))
    else:
        del blob[data.draw(st.integers(0, len(blob) - 1)):]
    for read in (decode_segment, read_changes):
        with pytest.raises(CorruptObject) as info:
            read(bytes(blob), "dbs/x/log/k.seg")
        assert info.value.key == "dbs/x/log/k.seg"
