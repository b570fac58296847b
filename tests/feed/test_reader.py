"""The feed's reading: events after a position, pages that resume exactly, filters that
still move the cursor on, and runs of commits whose changes are unknown."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shoal.feed import Change, encode_changes
from shoal.feed.reader import Event, Filter, Position, events
from shoal.log.segment import Captured


def row(table: str, op: str, key: int) -> Change:
    cols = ("id", "v")
    new = (key, f"{table}{key}") if op != "delete" else None
    old = (key, "before") if op != "insert" else None
    return Change(table, op, cols, (key,), new, old)


def commit(txid: int, *changes: Change) -> Captured:
    return Captured(txid, 1000.0 + txid, encode_changes(list(changes)))


COMMITS = [
    commit(5, row("a", "insert", 1), row("b", "insert", 1)),
    commit(6),  # captured: no row changed (Shoal's own commit)
    commit(7, row("a", "update", 1), row("a", "delete", 2), row("b", "insert", 2)),
]


def keys(found: list[Event]) -> list[tuple[int, int, str, str]]:
    return [(e.txid, e.index, e.change.table, e.op) for e in found if e.change is not None]


def test_every_change_after_the_start_in_commit_order() -> None:
    found, reached = events(COMMITS, Position(4), 100)
    assert keys(found) == [(5, 0, "a", "insert"), (5, 1, "b", "insert"), (7, 0, "a", "update"),
                           (7, 1, "a", "delete"), (7, 2, "b", "insert")]
    assert reached == Position(7)
    assert found[0].time == 1005.0


def test_a_start_after_a_commit_or_inside_one() -> None:
    assert keys(events(COMMITS, Position(5), 100)[0])[0] == (7, 0, "a", "update")
    assert keys(events(COMMITS, Position(7, 0), 100)[0]) == [(7, 1, "a", "delete"),
                                                           (7, 2, "b", "insert")]
    assert events(COMMITS, Position(7, 2), 100) == ([], Position(7))
    assert events(COMMITS, Position(7), 100) == ([], Position(7))


def test_a_page_cut_inside_a_commit_resumes_where_it_stopped() -> None:
    found, reached = events(COMMITS, Position(4), 3)
    assert reached == Position(7, 0)
    rest, end = events(COMMITS, reached, 100)
    assert keys(found + rest) == keys(events(COMMITS, Position(4), 100)[0])
    assert end == Position(7)


def test_a_filter_drops_events_but_the_position_moves_past_them() -> None:
    found, reached = events(COMMITS, Position(4), 100, Filter(tables=frozenset({"b"})))
    assert keys(found) == [(5, 1, "b", "insert"), (7, 2, "b", "insert")]
    found, reached = events(COMMITS, Position(4), 100, Filter(ops=frozenset({"delete"})))
    assert keys(found) == [(7, 1, "a", "delete")]
    assert reached == Position(7)
    assert events(COMMITS, Position(4), 100, Filter(tables=frozenset({"zzz"}))) == \
        ([], Position(7))


def test_uncaptured_commits_are_one_event_per_run() -> None:
    commits = [commit(3, row("a", "insert", 1)), Captured(4, 1004.0, None),
               Captured(5, 1005.0, None), commit(6, row("a", "insert", 2)),
               Captured(7, 1007.0, None)]
    found, reached = events(commits, Position(2), 100, Filter(tables=frozenset({"zzz"})))
    assert [(e.op, e.first, e.txid) for e in found] == [("uncaptured", 4, 5),
                                                       ("uncaptured", 7, 7)]
    assert found[0].position == Position(5)
    assert reached == Position(7)
    found, reached = events(commits, Position(2), 1)
    assert [e.op for e in found] == ["insert"] and reached == Position(3)
    found, reached = events(commits, reached, 1)
    assert [(e.op, e.first, e.txid) for e in found] == [("uncaptured", 4, 5)]
    assert reached == Position(5)


@given(st.lists(st.integers(0, 4), min_size=1, max_size=12), st.integers(1, 5))
def test_paging_with_any_limit_gives_every_event_once(sizes: list[int], limit: int) -> None:
    commits = [commit(10 + i, *(row("t", "insert", k) for k in range(n)))
               for i, n in enumerate(sizes)]
    whole = keys(events(commits, Position(9), 10_000)[0])
    seen: list[tuple[int, int, str, str]] = []
    at = Position(9)
    for _ in range(100):
        found, at = events(commits, at, limit)
        if not found:
            break
        seen += keys(found)
    assert seen == whole
    assert at == Position(9 + len(sizes))
