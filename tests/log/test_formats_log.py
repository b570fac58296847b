"""Golden bytes: the log's formats, pinned as literals.

Segments and snapshots outlive the code that wrote them (restore reads objects written
years ago), and a bookmark outlives the node that issued it. These tests build each
from fixed input and compare with bytes written out here, never with the modules'
own constants: a changed magic, version, field order or digest size must fail here
and be made on purpose (with a new version number and a reader for the old one).
The compressed bodies depend on the pinned zstandard (0.25.0, libzstd 1.5.7); the
decoding tests and the uncompressed layouts do not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import struct
from pathlib import Path

import apsw
import zstandard

from shoal.engine.database import make_bookmark, read_bookmark
from shoal.log.branch import Incarnation, Record, decode_record
from shoal.log.layout import database_key, timeline_key
from shoal.log.segment import Commit, decode_segment, encode_segment, read_changes
from shoal.log.segment import read_header as read_segment_header
from shoal.log.snapshot import encode_snapshot, write_image
from shoal.log.snapshot import read_header as read_snapshot_header
from shoal.log.wal import parse_header, wal_checksum
from shoal.storage.memory import MemoryStore

# -- segments ---------------------------------------------------------------------------------

COMMITS = [
    Commit(7, 1700000000.5, 512, 3, ((1, bytes(range(256)) * 2), (3, b"\xab" * 512))),
    Commit(8, 1700000001.25, 512, 3, ((2, b"xy" * 256),)),
]
SEGMENT_HEADER = bytes.fromhex(
    "53484f414c534547"  # "SHOALSEG"
    "0100"  # version 1 (u16 little-endian)
    "0000"  # flags
    "02000000"  # 2 commits
    "0700000000000000"  # first txid 7
    "0800000000000000"  # last txid 8
    "00002040fc54d941"  # first time 1700000000.5 (f64)
    "00005040fc54d941"  # last time 1700000001.25
)
SEGMENT = bytes.fromhex(
    "53484f414c53454701000000020000000700000000000000080000000000000000002040fc54d941000050"
    "40fc54d94128b52ffd604405ed0900341207002040fc54d9410002000003000000020000000100000000010203"
    "0405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f30"
    "3132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d"
    "5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f80818283848586878889"
    "8a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6"
    "b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3"
    "e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff03000000ab0800500178790700fb39852b"
    "64979d908f0004e6c755cda23fb0e8240016931e82fe30e2fc02be50c15bada4fcb4"
)
SEGMENT_SHA256 = "2f6094fe33f21f733ddfcc0eafa668ca233e9f8ac19f2c494da4838be9f5e4f9"


def segment_body() -> bytes:
    """The uncompressed body, field by field: per commit txid u64, time f64, page_size u32,
    db_pages u32, frames u32; per frame pgno u32 and the page."""
    return (
        struct.pack("<QdIII", 7, 1700000000.5, 512, 3, 2)
        + struct.pack("<I", 1) + bytes(range(256)) * 2
        + struct.pack("<I", 3) + b"\xab" * 512
        + struct.pack("<QdIII", 8, 1700000001.25, 512, 3, 1)
        + struct.pack("<I", 2) + b"xy" * 256
    )


def test_segment_bytes_are_pinned() -> None:
    data = encode_segment(COMMITS)
    assert data[:48] == SEGMENT_HEADER
    assert data == SEGMENT
    assert hashlib.sha256(data).hexdigest() == SEGMENT_SHA256
    assert len(data) == 391


def test_segment_layout() -> None:
    assert SEGMENT[:48] == SEGMENT_HEADER
    # trailer: blake2b with a 16-byte digest of everything before it
    assert SEGMENT[-16:] == hashlib.blake2b(SEGMENT[:-16], digest_size=16).digest()
    # body: one zstd frame that records its size, holding the commits as laid out above
    body = SEGMENT[48:-16]
    assert body[:4] == b"\x28\xb5\x2f\xfd"  # zstd frame magic
    assert zstandard.ZstdDecompressor().decompress(body) == segment_body()
    assert zstandard.frame_content_size(body) == len(segment_body()) == 1604


def test_the_pinned_segment_decodes() -> None:
    header, commits = decode_segment(SEGMENT, "k")
    assert (header.commits, header.first_txid, header.last_txid) == (2, 7, 8)
    assert (header.first_time, header.last_time) == (1700000000.5, 1700000001.25)
    assert read_segment_header(SEGMENT, "k") == header
    assert commits == COMMITS


def test_a_segment_written_by_hand_decodes() -> None:
    """Any zstd encoder, any level: the format is the layout, not this encoder's output."""
    for level in (1, 19):
        data = SEGMENT_HEADER + zstandard.ZstdCompressor(level=level).compress(segment_body())
        data += hashlib.blake2b(data, digest_size=16).digest()
        assert decode_segment(data)[1] == COMMITS


# Version 2: the same commits, the first with captured changes b"seven", the second none
COMMITS_V2 = [dataclasses.replace(COMMITS[0], changes=b"seven"), COMMITS[1]]
SEGMENT_V2 = bytes.fromhex(
    "53484f414c53454702000000020000000700000000000000080000000000000000002040fc54d94100005040"
    "fc54d941470100000000000028b52ffd604405ed0900341207002040fc54d941000200000300000002000000"
    "01000000000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2021222324252627"
    "28292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f50515253"
    "5455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaab"
    "acadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7"
    "d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff03000000"
    "ab0800500178790700fb39852b64979d908f0004e6c755cda23fb0e824001628b52ffd202d2d0100e8070020"
    "40fc54d94105000000736576656e08005040fc54d941ffffffff0200015904c0029f890525f35069b057a783"
    "afc404c743"
)
SEGMENT_V2_SHA256 = "2e1bff89be9936e3ff007db17155cb3f8c9c66c44bf997678279c1e334a7d660"


def changes_body() -> bytes:
    """Per commit: txid u64, time f64, length u32 (0xFFFFFFFF: not captured), the bytes."""
    return (struct.pack("<QdI", 7, 1700000000.5, 5) + b"seven"
            + struct.pack("<QdI", 8, 1700000001.25, 0xFFFFFFFF))


def test_version_2_segment_bytes_are_pinned() -> None:
    data = encode_segment(COMMITS_V2)
    assert data == SEGMENT_V2
    assert hashlib.sha256(data).hexdigest() == SEGMENT_V2_SHA256


def test_version_2_segment_layout() -> None:
    # the header as version 1's with version 2, then changes_at: the pages frame's length
    assert SEGMENT_V2[:48] == SEGMENT_HEADER[:8] + b"\x02\x00" + SEGMENT_HEADER[10:]
    (changes_at,) = struct.unpack_from("<Q", SEGMENT_V2, 48)
    pages, rest = SEGMENT_V2[56:56 + changes_at], SEGMENT_V2[56 + changes_at:-16]
    assert zstandard.ZstdDecompressor().decompress(pages) == segment_body()
    assert zstandard.ZstdDecompressor().decompress(rest) == changes_body()
    assert SEGMENT_V2[-16:] == hashlib.blake2b(SEGMENT_V2[:-16], digest_size=16).digest()


def test_the_pinned_version_2_segment_decodes_and_a_hand_built_one_too() -> None:
    assert decode_segment(SEGMENT_V2)[1] == COMMITS_V2
    assert [(c.txid, c.changes) for c in read_changes(SEGMENT_V2)[1]] == [(7, b"seven"),
                                                                         (8, None)]
    pages = zstandard.ZstdCompressor(level=19).compress(segment_body())
    data = (SEGMENT_HEADER[:8] + b"\x02\x00" + SEGMENT_HEADER[10:]
            + struct.pack("<Q", len(pages)) + pages
            + zstandard.ZstdCompressor(level=3).compress(changes_body()))
    data += hashlib.blake2b(data, digest_size=16).digest()
    assert decode_segment(data)[1] == COMMITS_V2


# -- snapshots --------------------------------------------------------------------------------

IMAGE = b"SQLite format 3\x00" + bytes([2, 0]) + bytes(494) + bytes(range(256)) * 6
SNAPSHOT_HEADER = bytes.fromhex(
    "53484f414c534e50"  # "SHOALSNP"
    "0100"  # version 1
    "0000"  # flags
    "00020000"  # page size 512
    "2a00000000000000"  # txid 42
    "0000b040fc54d941"  # time 1700000002.75
    "0400000000000000"  # 4 pages
)
SNAPSHOT_SHA256 = "305f94ccdc83b3e416219a9a6aabb2d8ec7cd51efd51cb24fc157dc6d291b202"


def test_snapshot_bytes_are_pinned() -> None:
    data = encode_snapshot(io.BytesIO(IMAGE), 42, 1700000002.75)
    assert data[:40] == SNAPSHOT_HEADER
    assert hashlib.sha256(data).hexdigest() == SNAPSHOT_SHA256
    assert data[-16:] == hashlib.blake2b(data[:-16], digest_size=16).digest()
    assert zstandard.ZstdDecompressor().stream_reader(data[40:-16]).read() == IMAGE


def test_a_snapshot_written_by_hand_is_read() -> None:
    data = SNAPSHOT_HEADER + zstandard.ZstdCompressor(level=3).compress(IMAGE)
    data += hashlib.blake2b(data, digest_size=16).digest()
    header = read_snapshot_header(data)
    assert (header.page_size, header.txid, header.time, header.db_pages) == \
        (512, 42, 1700000002.75, 4)
    out = io.BytesIO()
    assert write_image(data, out) == header
    assert out.getvalue() == IMAGE


# -- bookmarks --------------------------------------------------------------------------------


def test_bookmarks_are_pinned() -> None:
    # unpadded urlsafe base64 of "database/branch/txid[/timeline]"
    assert make_bookmark("orders", "main", 42) == "b3JkZXJzL21haW4vNDI"
    assert make_bookmark("orders", "feature-x", 0, "t1a2b") == \
        "b3JkZXJzL2ZlYXR1cmUteC8wL3QxYTJi"
    assert make_bookmark("a", "b", 1, None) == "YS9iLzE"
    found = read_bookmark("b3JkZXJzL2ZlYXR1cmUteC8wL3QxYTJi")
    assert (found.database, found.branch, found.txid, found.timeline) == \
        ("orders", "feature-x", 0, "t1a2b")
    found = read_bookmark("b3JkZXJzL21haW4vNDI")
    assert (found.database, found.branch, found.txid, found.timeline) == \
        ("orders", "main", 42, None)


# -- the database record: the catalog every node reads ------------------------------------------

DATABASE_RECORD = (
    b'{"branches": {"main": {"created_at": 1700000000.5, "fork_txid": 0, "parent": null, '
    b'"timeline": "0011223344556677"}}, "created_at": 1700000000.5, "deleted": '
    b'[{"branches": {"main": {"created_at": 1600000000.0, "fork_txid": 0, "parent": null, '
    b'"timeline": "8899aabbccddeeff"}}, "created_at": 1600000000.0, "deleted_at": '
    b'1650000000.0, "incarnation": "0a0b0c0d0e0f"}], "incarnation": "a1a2a3a4a5a6", '
    b'"limits": {"rows_read": 1000}, "name": "orders"}')


def test_the_database_record_is_pinned() -> None:
    main = {"created_at": 1700000000.5, "fork_txid": 0, "parent": None,
            "timeline": "0011223344556677"}
    old = {"created_at": 1600000000.0, "fork_txid": 0, "parent": None,
           "timeline": "8899aabbccddeeff"}
    record = Record("orders", Incarnation("a1a2a3a4a5a6", 1700000000.5, {"main": main},
                                          limits={"rows_read": 1000}),
                    (Incarnation("0a0b0c0d0e0f", 1600000000.0, {"main": old}, 1650000000.0),))
    assert record.encode() == DATABASE_RECORD
    back = decode_record(MemoryStore(), "orders", DATABASE_RECORD, "e1")
    assert back == record and back.branch("main").timeline == "0011223344556677"
    assert database_key("orders") == "catalog/databases/orders.json"
    assert timeline_key("orders", "0011223344556677") == \
        "dbs/orders/timelines/0011223344556677.json"


# -- SQLite's WAL: the numbers come from SQLite's file format, not from us ------------------------


def test_wal_magic_numbers(tmp_path: Path) -> None:
    path = tmp_path / "db"
    conn = apsw.Connection(str(path))
    for sql in ("PRAGMA journal_mode=WAL", "PRAGMA wal_autocheckpoint=0", "CREATE TABLE t(a)"):
        conn.execute(sql).fetchall()
    head = Path(f"{path}-wal").read_bytes()[:32]
    conn.close()
    magic, version = struct.unpack(">2I", head[:8])
    assert magic in (0x377F0682, 0x377F0683)
    assert version == 3007000
    assert parse_header(head).big_endian == (magic == 0x377F0683)
    for magic in (0x377F0682, 0x377F0683):
        fields = struct.pack(">6I", magic, 3007000, 4096, 0, 1, 2)
        sums = wal_checksum(fields, big_endian=magic == 0x377F0683)
        parsed = parse_header(fields + struct.pack(">2I", *sums))
        assert parsed.big_endian == (magic == 0x377F0683)


def test_wal_checksum_is_pinned() -> None:
    data = bytes(range(32))
    assert wal_checksum(data) == (0x1BFAD9B8, 0xDFA9733C)
    assert wal_checksum(data, big_endian=True) == (0xB8D9FB1B, 0x3D73A9DE)
    assert wal_checksum(data, 1, 2) == (0x1BFAD9EF, 0xDFA97395)
    assert wal_checksum(b"", 5, 6) == (5, 6)
