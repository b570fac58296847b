"""The feed's reading: events after a position, pages that resume exactly, filters that
still move the cursor on, and runs of commits whose changes are unknown."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.feed import Change, encode_changes
from shoal.feed.reader import Event, Expired, Filter, Position, events, stored
from shoal.log import layout
from shoal.log.errors import CorruptObject
from shoal.log.segment import Captured, Commit, encode_segment
from shoal.log.timeline import create_timeline
from shoal.storage.memory import MemoryStore


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


# -- from the store ------------------------------------------------------------------------------


def stored_commits(first: int, last: int) -> list[Commit]:
    return [Commit(t, 1000.0 + t, 512, 1, ((1, bytes([t % 256]) * 512),),
                   encode_changes([row("t", "insert", t)]))
            for t in range(first, last + 1)]


def put(store: MemoryStore, timeline: str, commits: list[Commit]) -> None:
    key = layout.segment_key("db", timeline, commits[0].txid, commits[-1].txid,
                             commits[-1].time)
    store.put(key, encode_segment(commits))


def test_the_store_gives_commits_after_a_position_preferring_compacted_segments() -> None:
    store = MemoryStore()
    timeline = create_timeline(store, "db", None, 0, 0.0)
    commits = stored_commits(1, 9)
    put(store, timeline.id, commits[:3])
    put(store, timeline.id, commits[3:6])
    put(store, timeline.id, commits[:6])  # compaction's merge of the two
    put(store, timeline.id, commits[6:])
    found = stored(store, "db", timeline, 2, 8)
    assert [c.txid for c in found] == [3, 4, 5, 6, 7, 8]
    assert all(c.changes for c in found)
    assert stored(store, "db", timeline, 8, 8) == []
    few = stored(store, "db", timeline, 0, 9, max_bytes=1)  # one segment at least
    assert [c.txid for c in few] == [1, 2, 3, 4, 5, 6]


def test_txids_no_segment_holds_are_uncaptured_and_deleted_history_expires() -> None:
    store = MemoryStore()
    timeline = create_timeline(store, "db", None, 0, 0.0)
    commits = stored_commits(1, 9)
    put(store, timeline.id, commits[:2])
    put(store, timeline.id, commits[5:])  # 3..5 only in a snapshot (a re-based log)
    found = stored(store, "db", timeline, 1, 9)
    assert [(c.txid, c.changes is None) for c in found] == [
        (2, False), (3, True), (4, True), (5, True), (6, False), (7, False), (8, False),
        (9, False)]
    assert [e.op for e in events(found, Position(1), 100)[0]] == [
        "insert", "uncaptured", "insert", "insert", "insert", "insert"]
    store.delete(layout.segment_key("db", timeline.id, 1, 2, commits[1].time))
    with pytest.raises(Expired) as info:  # retention took 1..2: the first kept is 6
        stored(store, "db", timeline, 0, 9)
    assert info.value.earliest == 5
    assert [c.txid for c in stored(store, "db", timeline, 5, 9)] == [6, 7, 8, 9]


def test_the_store_path_edges() -> None:
    store = MemoryStore()
    timeline = create_timeline(store, "db", None, 0, 0.0)
    commits = stored_commits(1, 6)
    put(store, timeline.id, commits[:2])
    put(store, timeline.id, commits[2:4])
    put(store, timeline.id, commits[4:])
    assert stored(store, "db", timeline, 3, 3) == []
    assert stored(store, "db", timeline, 4, 2) == []
    # only as far as asked, though the segment holds more
    assert [c.txid for c in stored(store, "db", timeline, 0, 3)] == [1, 2, 3]
    # a budget of exactly two segments' bytes takes two, not three
    sizes = [len(store.get(k).data) for k in sorted(
        i.key for i in store.list(layout.log_prefix("db", timeline.id)))]
    two = stored(store, "db", timeline, 0, 6, max_bytes=sizes[0] + sizes[1])
    assert [c.txid for c in two] == [1, 2, 3, 4]
    # a segment whose bytes do not match its key is refused, naming it
    bad = layout.segment_key("db", timeline.id, 7, 8, 2000.0)
    store.put(bad, encode_segment(stored_commits(7, 7)))  # holds 7 alone
    with pytest.raises(CorruptObject, match=r"its key says 7\.\.8"):
        stored(store, "db", timeline, 6, 8)


def test_expired_before_any_segment_and_with_none_at_all() -> None:
    store = MemoryStore()
    timeline = create_timeline(store, "db", None, 0, 0.0)
    with pytest.raises(Expired) as info:  # nothing kept at all: from the head on
        stored(store, "db", timeline, 0, 5)
    assert info.value.earliest == 5 and "txid 6" in str(info.value)
    put(store, timeline.id, stored_commits(3, 4))
    with pytest.raises(Expired) as info:
        stored(store, "db", timeline, 0, 4)
    assert info.value.earliest == 2
    assert [c.txid for c in stored(store, "db", timeline, 2, 4)] == [3, 4]


def test_a_page_reads_no_further_commit_past_its_byte_budget() -> None:
    big = [commit(t, *(row("t", "insert", t * 10 + k) for k in range(5))) for t in (1, 2, 3)]
    size = len(big[0].changes or b"")
    found, reached = events(big, Position(0), 100, budget=size + 1)
    assert {e.txid for e in found} == {1} and reached == Position(1)
    found, _ = events(big, Position(0), 100, budget=1)  # one commit at least
    assert {e.txid for e in found} == {1}
    assert len(events(big, Position(0), 100)[0]) == 15
