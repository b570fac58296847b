"""engine/catalog.py's token_page: one page of a token listing, read in id order, bounded."""

from __future__ import annotations

from collections.abc import Iterator

from shoal.engine.catalog import TokenInfo, TokenRecord, token_page


def infos(n: int, read: list[str]) -> Iterator[TokenInfo]:
    for i in range(n):
        tid = f"tok_{i:02d}"
        read.append(tid)
        yield TokenInfo(TokenRecord(tid, ["a"] if i % 2 else None, "read", "admin", 0, 1, None))


def test_a_page_stops_at_limit_and_says_whether_more_follow() -> None:
    read: list[str] = []
    page, cursor = token_page(infos(5, read), lambda t: True, 2)
    assert [t.record.id for t in page] == ["tok_00", "tok_01"] and cursor == "tok_01"
    page, cursor = token_page(infos(2, []), lambda t: True, 2)
    assert len(page) == 2 and cursor is None  # nothing after: no cursor
    assert token_page(infos(0, []), lambda t: True, 2) == ([], None)


def test_a_filtered_page_reads_a_bounded_number_and_may_be_short() -> None:
    read: list[str] = []
    page, cursor = token_page(infos(50, read), lambda t: t.record.id == "tok_40", 5, scan=10)
    assert page == [] and cursor == "tok_09" and len(read) == 11  # 10 read, one peeked
    page, cursor = token_page(infos(50, []), lambda t: t.record.databases is None, 3, scan=10)
    assert [t.record.id for t in page] == ["tok_00", "tok_02", "tok_04"] and cursor == "tok_04"


def test_reach_leaves_out_the_narrowed_databases() -> None:
    rec = TokenRecord("tok_1", ["a", "b"], "read", "admin", 0, 1, None)
    assert TokenInfo(rec, ("a",)).reach == ["b"]
    assert TokenInfo(rec).reach == ["a", "b"]
    star = TokenRecord("tok_2", None, "read", "admin", 0, 1, None)
    assert TokenInfo(star, ("a",)).reach is None
