"""Segments built field by field, with a correct blake2b trailer, so that each structural
check of log/segment.py is the one that fires (a flipped bit only reaches the checksum).

The builder writes the format from the layout in segment.py's docstring, with its own
literals: nothing is imported from the module under test but the functions tested.
"""

from __future__ import annotations

import hashlib
import struct

import pytest
import zstandard

from shoal.log.errors import CorruptObject
from shoal.log.segment import Commit, decode_segment, encode_segment, read_changes, read_header

KEY = "dbs/orders/main/log/00000001.seg"
PAGE = 512


def header(count: int, first: int, last: int, *, magic: bytes = b"SHOALSEG", version: int = 1,
           flags: int = 0, t0: float = 10.0, t1: float = 20.0) -> bytes:
    return struct.pack("<8sHHIQQdd", magic, version, flags, count, first, last, t0, t1)


def commit(txid: int, pages: list[tuple[int, bytes]], *, when: float = 0.0,
           page_size: int = PAGE, db_pages: int = 9, frames: int | None = None) -> bytes:
    out = struct.pack("<QdIII", txid, when or 100.0 + txid, page_size, db_pages,
                      len(pages) if frames is None else frames)
    for pgno, page in pages:
        out += struct.pack("<I", pgno) + page
    return out


def page(n: int) -> bytes:
    return bytes([n]) * PAGE


def seal(head: bytes, raw: bytes | None = None, *, body: bytes | None = None) -> bytes:
    """header + zstd(raw) (or a body as given) + blake2b-128 of both."""
    if body is None:
        assert raw is not None
        body = zstandard.ZstdCompressor().compress(raw)
    data = head + body
    return data + hashlib.blake2b(data, digest_size=16).digest()


def corrupt(data: bytes, message: str) -> CorruptObject:
    with pytest.raises(CorruptObject) as info:
        decode_segment(data, KEY)
    assert str(info.value) == message
    assert info.value.key == KEY
    return info.value


def good_raw() -> bytes:
    return commit(5, [(1, page(1)), (2, page(2))]) + commit(6, [(2, page(3))]) + \
        commit(7, [])


# -- the reference: a hand-built segment decodes --------------------------------------------


def test_a_hand_built_segment_decodes() -> None:
    head, commits = decode_segment(seal(header(3, 5, 7, flags=0xFFFF), good_raw()), KEY)
    assert (head.commits, head.first_txid, head.last_txid) == (3, 5, 7)
    assert (head.first_time, head.last_time) == (10.0, 20.0)
    assert [(c.txid, c.time, c.page_size, c.db_pages) for c in commits] == [
        (5, 105.0, PAGE, 9), (6, 106.0, PAGE, 9), (7, 107.0, PAGE, 9)]
    assert [[(p, bytes(b)) for p, b in c.frames] for c in commits] == [
        [(1, page(1)), (2, page(2))], [(2, page(3))], []]


# -- the header ------------------------------------------------------------------------------


@pytest.mark.parametrize(("magic", "version", "message"), [
    (b"SHOALSNP", 1, f"segment {KEY} has a bad magic number"),
    (b"shoalseg", 1, f"segment {KEY} has a bad magic number"),
    (b"SHOALSEG", 0, f"segment {KEY} has unknown version 0"),
    (b"SHOALSEG", 3, f"segment {KEY} has unknown version 3"),
])
def test_bad_magic_or_version(magic: bytes, version: int, message: str) -> None:
    data = seal(header(3, 5, 7, magic=magic, version=version), good_raw())
    corrupt(data, message)
    with pytest.raises(CorruptObject, match=message):
        read_header(data, KEY)


@pytest.mark.parametrize("size", [0, 1, 47, 48, 63])
def test_too_short_for_a_header_and_trailer(size: int) -> None:
    data = seal(header(3, 5, 7), good_raw())[:size]
    corrupt(data, f"segment {KEY} is truncated ({size} bytes)")
    with pytest.raises(CorruptObject, match=rf"truncated \({size} bytes\)"):
        read_header(data, KEY)


def test_read_header_needs_only_the_header_and_a_trailer() -> None:
    data = header(1, 2, 3, t0=4.0, t1=5.0) + bytes(16)  # 64 bytes, no body, no checksum
    head = read_header(data, KEY)
    assert (head.commits, head.first_txid, head.last_txid) == (1, 2, 3)
    assert (head.first_time, head.last_time) == (4.0, 5.0)


def test_default_key_is_named() -> None:
    with pytest.raises(CorruptObject, match=r"^segment segment has a bad magic number$"):
        decode_segment(seal(header(1, 1, 1, magic=b"XXXXXXXX"), commit(1, [])))


# -- checksum and compression ----------------------------------------------------------------


def test_the_trailer_covers_header_and_body() -> None:
    data = bytearray(seal(header(3, 5, 7), good_raw()))
    data[-1] ^= 1
    corrupt(bytes(data), f"segment {KEY} fails its checksum")
    data = bytearray(seal(header(3, 5, 7), good_raw()))
    data[20] ^= 1  # a header field, checksum not redone
    corrupt(bytes(data), f"segment {KEY} fails its checksum")


def test_a_body_that_is_not_zstd() -> None:
    err = corrupt_prefix(seal(header(1, 1, 1), body=b"not a zstd frame"))
    with pytest.raises(zstandard.ZstdError) as zstd_error:
        zstandard.ZstdDecompressor().decompress(b"not a zstd frame")
    assert err == f"segment {KEY} does not decompress: {zstd_error.value}"


def corrupt_prefix(data: bytes) -> str:
    with pytest.raises(CorruptObject) as info:
        decode_segment(data, KEY)
    assert info.value.key == KEY
    return str(info.value)


# -- the body against its header -------------------------------------------------------------


@pytest.mark.parametrize(("count", "first", "last"), [
    (2, 5, 7),  # count too small
    (4, 5, 7),  # count too large
    (3, 4, 7),  # first txid differs
    (3, 6, 7),
    (3, 5, 6),  # last txid differs
    (3, 5, 8),
])
def test_header_and_body_disagree(count: int, first: int, last: int) -> None:
    corrupt(seal(header(count, first, last), good_raw()),
            f"segment {KEY}: body does not match its header")


def test_an_empty_body() -> None:
    corrupt(seal(header(0, 0, 0), b""), f"segment {KEY}: body does not match its header")


@pytest.mark.parametrize(("txids", "gap"), [
    ((5, 7, 7), "txid 5 is followed by 7"),
    ((5, 5, 7), "txid 5 is followed by 5"),
    ((5, 8, 7), "txid 5 is followed by 8"),
    ((5, 6, 6, 7), "txid 6 is followed by 6"),
])
def test_txids_must_be_contiguous(txids: tuple[int, ...], gap: str) -> None:
    """Count, first and last all match the header: only the contiguity check can fire."""
    raw = b"".join(commit(t, [(1, page(t))]) for t in txids)
    corrupt(seal(header(len(txids), txids[0], txids[-1]), raw), f"segment {KEY}: {gap}")


@pytest.mark.parametrize("raw", [
    commit(5, [(1, page(1))])[:-1],  # a short page
    commit(5, [(1, page(1))])[:-PAGE],  # a page number with no page
    commit(5, [(1, page(1))])[:30],  # inside the page number
    commit(5, [(1, page(1))])[:20],  # inside the commit's header
    commit(5, [(1, page(1))], frames=2),  # more frames announced than written
    commit(5, [(1, page(1))], page_size=1024),  # wrong page size: the page runs short
    commit(5, [(1, page(1))]) + b"\x00",  # trailing bytes
    commit(5, [(1, page(1))]) + commit(6, [])[:27],
])
def test_a_truncated_body(raw: bytes) -> None:
    corrupt(seal(header(1, 5, 5), raw), f"segment {KEY}: body is truncated")


def test_a_page_of_the_declared_size_is_read_whole() -> None:
    raw = commit(5, [(1, b"ab" * 512)], page_size=1024) + commit(6, [(3, b"c" * 1024)],
                                                                  page_size=1024)
    _, (c5, c6) = decode_segment(seal(header(2, 5, 6), raw), KEY)
    assert [(p, bytes(b)) for p, b in c5.frames] == [(1, b"ab" * 512)]
    assert [(p, bytes(b)) for p, b in c6.frames] == [(3, b"c" * 1024)]
    assert c5.page_size == 1024 and isinstance(c5, Commit)


# -- the writer's own refusals ----------------------------------------------------------------


def test_encode_refusals_say_what_is_wrong() -> None:
    def c(txid: int, body: bytes = page(1)) -> Commit:
        return Commit(txid, 1.0, PAGE, 1, ((4, body),))

    with pytest.raises(ValueError, match=r"^a segment holds at least one commit$"):
        encode_segment([])
    with pytest.raises(ValueError, match=r"^commits are not contiguous: 3 then 5$"):
        encode_segment([c(3), c(5)])
    with pytest.raises(ValueError, match=r"^txid 3: page 4 is 2 bytes, not 512$"):
        encode_segment([c(3, b"ab")])


def test_encode_takes_any_iterable() -> None:
    commits = [Commit(t, 1.0, PAGE, 1, ((1, page(t)),)) for t in (1, 2)]
    assert decode_segment(encode_segment(iter(commits)))[1] == commits


def test_read_header_names_a_default_key() -> None:
    with pytest.raises(CorruptObject, match=r"^segment segment is truncated \(3 bytes\)$"):
        read_header(b"abc")


# -- version 2: a changes frame after the pages -----------------------------------------------


def changes(*entries: tuple[int, bytes | None]) -> bytes:
    """Per commit: txid u64, time f64 (100 + txid), length u32 (0xFFFFFFFF: none), bytes."""
    return b"".join(struct.pack("<QdI", txid, 100.0 + txid,
                                0xFFFFFFFF if blob is None else len(blob)) + (blob or b"")
                    for txid, blob in entries)


def seal2(head: bytes, raw: bytes, captured: bytes, *, at: int | None = None) -> bytes:
    """A version 2 segment: header, changes_at u64, zstd(raw), zstd(captured), trailer."""
    pages = zstandard.ZstdCompressor().compress(raw)
    rest = zstandard.ZstdCompressor().compress(captured)
    data = head + struct.pack("<Q", len(pages) if at is None else at) + pages + rest
    return data + hashlib.blake2b(data, digest_size=16).digest()


GOOD_CHANGES = changes((5, b"five"), (6, None), (7, b""))


def test_a_hand_built_version_2_segment_decodes() -> None:
    data = seal2(header(3, 5, 7, version=2), good_raw(), GOOD_CHANGES)
    _, commits = decode_segment(data, KEY)
    assert [(c.txid, c.changes) for c in commits] == [(5, b"five"), (6, None), (7, b"")]
    _, captured = read_changes(data, KEY)
    assert [(c.txid, c.time, c.changes) for c in captured] == [
        (5, 105.0, b"five"), (6, 106.0, None), (7, 107.0, b"")]


def read_both(data: bytes, message: str) -> None:
    corrupt(data, message)
    with pytest.raises(CorruptObject, match=message):
        read_changes(data, KEY)


def test_changes_that_begin_past_the_end() -> None:
    data = seal2(header(3, 5, 7, version=2), good_raw(), GOOD_CHANGES, at=10**6)
    read_both(data, f"segment {KEY}: its changes begin past its end")


def test_a_version_2_body_too_short_for_changes_at() -> None:
    data = seal(header(3, 5, 7, version=2), body=b"\x01\x02")
    read_both(data, f"segment {KEY}: body is truncated")


@pytest.mark.parametrize("captured", [
    GOOD_CHANGES[:-1],  # the last entry's header cut short
    changes((5, b"five"), (6, None)) + struct.pack("<QdI", 7, 107.0, 9) + b"short",
])
def test_truncated_changes(captured: bytes) -> None:
    read_both(seal2(header(3, 5, 7, version=2), good_raw(), captured),
              f"segment {KEY}: changes are truncated")


def test_changes_and_pages_that_disagree() -> None:
    data = seal2(header(3, 5, 7, version=2), good_raw(),
                 changes((5, b"a"), (6, b"b"), (8, b"c")))
    corrupt(data, f"segment {KEY}: its changes and pages disagree")
    with pytest.raises(CorruptObject, match="body does not match its header"):
        read_changes(data, KEY)


def test_changes_that_do_not_match_the_header() -> None:
    data = seal2(header(3, 5, 7, version=2), good_raw(), changes((5, b"a"), (6, b"b")))
    with pytest.raises(CorruptObject, match="body does not match its header"):
        read_changes(data, KEY)


def test_a_changes_frame_that_is_not_zstd() -> None:
    pages = zstandard.ZstdCompressor().compress(good_raw())
    data = header(3, 5, 7, version=2) + struct.pack("<Q", len(pages)) + pages + b"not zstd"
    data += hashlib.blake2b(data, digest_size=16).digest()
    with pytest.raises(CorruptObject, match="does not decompress"):
        read_changes(data, KEY)
    with pytest.raises(CorruptObject, match="does not decompress"):
        decode_segment(data, KEY)


def test_changes_with_a_gap() -> None:
    data = seal2(header(3, 5, 8, version=2), good_raw(), changes((5, b"a"), (6, b"b"), (8, b"")))
    with pytest.raises(CorruptObject, match="txid 6 is followed by 8"):
        read_changes(data, KEY)
