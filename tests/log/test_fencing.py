"""The commit point: a timeline's record, written conditionally, decides who committed.

Unit tests of ``log/timeline.py``'s protocol on an in-memory store: fences, commits
(``advance``), seals, which listed objects are history (``committed``), forks
(``check_chain``), and a randomised model of several writers interleaving their steps,
in which no txid may ever be acknowledged by two writers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from shoal.log import layout
from shoal.log.errors import CorruptObject, FencedOut, LogConflict, Sealed
from shoal.log.timeline import (
    Timeline,
    Writer,
    check_chain,
    committed,
    create_timeline,
    fence,
    listing,
    load_timeline,
    seal,
    segments,
)
from shoal.storage.base import ObjectInfo, ObjectStore
from shoal.storage.memory import MemoryStore
from tests.support.soak import SOAK

DB = "fenced"


def new_timeline(store: ObjectStore) -> Timeline:
    return create_timeline(store, DB, None, 0, 100.0)


def put_segment(store: ObjectStore, writer: Writer, first: int, last: int,
                when: float) -> layout.SegmentInfo:
    key = writer.segment_key(first, last, when)
    store.put(key, f"{first}-{last}@{when}".encode(), if_none_match="*")
    info = layout.parse_segment(ObjectInfo(key, 1))
    assert info is not None
    return info


def seg(first: int, last: int, ms: int, epoch: int = 0, start: int = 0) -> layout.SegmentInfo:
    key = layout.segment_key(DB, "t", first, last, ms / 1000, epoch, start)
    info = layout.parse_segment(ObjectInfo(key, 1))
    assert info is not None
    return info


def test_keys_name_the_writer_and_old_keys_still_parse() -> None:
    info = seg(3, 5, 1234, epoch=7, start=3)
    assert (info.first, info.last, info.epoch, info.start) == (3, 5, 7, 3)
    assert info.key.endswith("-7-3.seg")
    legacy = layout.parse_segment(ObjectInfo(layout.segment_key(DB, "t", 3, 5, 1.234), 1))
    assert legacy is not None and (legacy.epoch, legacy.start) == (0, 0)
    snap = layout.parse_snapshot(ObjectInfo(layout.snapshot_key(DB, "t", 9, 2.0, 4, 8), 1))
    assert snap is not None and (snap.txid, snap.epoch, snap.start) == (9, 4, 8)


def test_a_fence_takes_a_new_epoch_at_the_head_and_names_the_node() -> None:
    store = MemoryStore()
    t = new_timeline(store)
    assert t.head is None  # never fenced
    a = fence(store, t, "node-a")
    assert a.head is not None and (a.head.txid, a.head.epoch, a.head.start) == (0, 1, 1)
    assert a.head.node == "node-a"
    b = fence(store, load_timeline(store, DB, t.id), "node-b")
    assert b.head is not None and (b.head.epoch, b.head.start, b.head.node) == (2, 1, "node-b")


def test_a_stale_copy_cannot_take_the_timeline() -> None:
    store = MemoryStore()
    t = new_timeline(store)
    w = Writer(store, fence(store, t, "a"))
    w.commit(put_segment(store, w, 1, 4, 101.0), 101.0)
    with pytest.raises(LogConflict, match="at txid 4, this copy at 2"):
        fence(store, t, "b", expect=2)
    assert fence(store, t, "b", expect=4).head is not None  # a current copy may


def test_the_fenced_writer_commits_nothing_and_its_object_is_not_history() -> None:
    store = MemoryStore()
    t = new_timeline(store)
    a = Writer(store, fence(store, t, "a"))
    a.commit(put_segment(store, a, 1, 2, 101.0), 101.0)
    # b takes over while a's next segment is on its way
    b = Writer(store, fence(store, load_timeline(store, DB, t.id), "b", expect=2))
    late = put_segment(store, a, 3, 3, 102.0)  # lands after the fence: an orphan
    with pytest.raises(FencedOut, match="node b took it at txid 2"):
        a.commit(late, 102.0)
    mine = put_segment(store, b, 3, 4, 103.0)
    b.commit(mine, 103.0)
    record = load_timeline(store, DB, t.id)
    segs, _ = listing(store, DB, record)
    assert [s.key for s in segs] == [s.key for s in segments(store, DB, t.id)
                                     if s.key != late.key]
    assert record.head is not None and record.head.txid == 4
    with pytest.raises(FencedOut):  # and a stays out for good
        a.commit(put_segment(store, a, 4, 9, 104.0), 104.0)


def test_a_commit_whose_answer_was_lost_is_recognised() -> None:
    store = MemoryStore()
    t = new_timeline(store)
    w = Writer(store, fence(store, t, "a"))
    info = put_segment(store, w, 1, 3, 101.0)
    stale = w.timeline
    w.commit(info, 101.0)  # landed...
    w.timeline = stale  # ...but this writer never heard: it tries again
    w.commit(info, 101.0)
    assert w.txid == 3
    w.commit(put_segment(store, w, 4, 4, 102.0), 102.0)  # and goes on
    assert load_timeline(store, DB, t.id).head.txid == 4  # type: ignore[union-attr]


def test_a_commit_that_landed_before_a_fence_is_history() -> None:
    store = MemoryStore()
    t = new_timeline(store)
    w = Writer(store, fence(store, t, "a"))
    info = put_segment(store, w, 1, 3, 101.0)
    stale = w.timeline
    w.commit(info, 101.0)
    fence(store, load_timeline(store, DB, t.id), "b", expect=3)  # b saw it
    w.timeline = stale
    w.commit(info, 101.0)  # not an error: it is history (b started after it)
    with pytest.raises(FencedOut):
        w.commit(put_segment(store, w, 4, 4, 102.0), 102.0)


class TornOnce(MemoryStore):
    """A crash-prone store: the first write of ``key`` leaves half of it and fails."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.torn_key = key
        self.torn = False

    def put(self, key: str, data: bytes, *, if_none_match: str | None = None,
            if_match: str | None = None) -> str:
        if key == self.torn_key and self.armed and not self.torn:
            self.torn = True
            super().put(key, data[:len(data) // 2])
            raise OSError("connection reset")
        return super().put(key, data, if_none_match=if_none_match, if_match=if_match)

    armed = False


def test_a_torn_record_write_of_our_own_is_finished() -> None:
    store = TornOnce("")
    t = new_timeline(store)
    store.torn_key = layout.timeline_key(DB, t.id)
    w = Writer(store, fence(store, t, "a"))
    info = put_segment(store, w, 1, 1, 101.0)
    store.armed = True
    with pytest.raises(OSError):
        w.commit(info, 101.0)
    w.commit(info, 101.0)  # the retry finds its own write cut short and completes it
    assert load_timeline(store, DB, t.id).head.txid == 1  # type: ignore[union-attr]


def test_seal_retires_the_timeline() -> None:
    store = MemoryStore()
    t = new_timeline(store)
    w = Writer(store, fence(store, t, "a"))
    w.commit(put_segment(store, w, 1, 2, 101.0), 101.0)
    sealed = seal(store, load_timeline(store, DB, t.id), "ops",
                  lambda head: {"op": "delete", "branch": "x", "at": head})
    assert sealed.sealed == {"op": "delete", "branch": "x", "at": 2}
    with pytest.raises(FencedOut, match="retired"):
        w.commit(put_segment(store, w, 3, 3, 102.0), 102.0)
    with pytest.raises(Sealed):
        fence(store, load_timeline(store, DB, t.id), "b")
    with pytest.raises(LogConflict):
        seal(store, load_timeline(store, DB, t.id), "ops", lambda head: {"op": "again"})


@pytest.mark.parametrize(("objects", "head", "kept"), [
    # epoch 1 wrote 1..4; epoch 2 started at 5; epoch 1's 5..6 landed after the fence
    ([(1, 4, 1, 1), (5, 6, 1, 1), (5, 5, 2, 5)], (5, 2, 5), [(1, 4, 1, 1), (5, 5, 2, 5)]),
    # an epoch that wrote nothing still invalidates what lands beyond its start
    ([(1, 2, 1, 1), (3, 4, 1, 1)], (2, 3, 3), [(1, 2, 1, 1)]),
    # beyond the head: not yet committed (the current writer's next one, say)
    ([(1, 2, 3, 1), (3, 3, 3, 1)], (2, 3, 1), [(1, 2, 3, 1)]),
    # objects from before fencing (epoch 0) below the first epoch's start count
    ([(1, 9, 0, 0), (10, 12, 1, 10)], (12, 1, 10), [(1, 9, 0, 0), (10, 12, 1, 10)]),
    # ... and above it they do not
    ([(1, 9, 0, 0), (10, 12, 0, 0)], (9, 1, 10), [(1, 9, 0, 0)]),
    # a later epoch known only from its objects (the record moved on again)
    ([(1, 2, 1, 1), (3, 8, 1, 1), (3, 3, 2, 3)], (3, 4, 4), [(1, 2, 1, 1), (3, 3, 2, 3)]),
])
def test_which_objects_are_history(objects: list[tuple[int, int, int, int]],
                                   head: tuple[int, int, int],
                                   kept: list[tuple[int, int, int, int]]) -> None:
    from shoal.log.timeline import Head
    segs = [seg(f, la, 1000 * la, e, s) for f, la, e, s in objects]
    txid, epoch, start = head
    t = Timeline(DB, "t", None, 0, 0.0, Head(txid, 0.0, epoch, start, "n"))
    # the 6th case: epoch 4's start (4) is in the record, epoch 2's (3) only in a key
    got, _ = committed(t, segs, [])
    assert [(s.first, s.last, s.epoch, s.start) for s in got] == kept
    # a timeline never fenced takes every object
    assert committed(Timeline(DB, "t", None, 0, 0.0), segs, [])[0] == segs


def test_forks_are_refused_naming_both_objects() -> None:
    same_end = [seg(1, 2, 10), seg(3, 3, 30), seg(3, 3, 31)]
    with pytest.raises(CorruptObject, match="forks at txid 3") as err:
        check_chain("t", same_end)
    assert "-000000000000030.seg" in str(err.value) and "-000000000000031.seg" in str(err.value)
    with pytest.raises(CorruptObject, match="overlap"):
        check_chain("t", [seg(1, 4, 40), seg(3, 6, 60)])
    # a merged segment over the ones it merged is no fork; nor is a range outside the check
    check_chain("t", [seg(1, 2, 20), seg(3, 4, 40), seg(1, 4, 40), seg(5, 5, 50)])
    check_chain("t", same_end, lo=-1, hi=2)


@dataclass
class Node:
    """One writer in the model: what it believes and what it acknowledged."""

    name: str
    writer: Writer | None = None
    pending: layout.SegmentInfo | None = None
    next_txid: int = 0
    acked: set[int] = field(default_factory=set)
    out: bool = False


def test_no_txid_is_ever_acknowledged_by_two_writers() -> None:
    """Random interleavings of three writers taking over one another on one timeline:
    fence, store a segment, commit it; steps interleave arbitrarily (a writer is paused
    between storing and committing while others take over) and a quarter of the commits
    land without their answer (the writer tries the same commit again). Every
    acknowledged txid is history exactly once, by the writer that acknowledged it."""
    for seed in range(300 * SOAK):
        rng = random.Random(seed)
        store = MemoryStore()
        t = new_timeline(store)
        nodes = [Node(f"n{i}") for i in range(3)]
        clock = 100.0
        for _ in range(60):
            node = rng.choice([n for n in nodes])
            clock += 1
            if node.writer is None or node.out or rng.random() < 0.08:
                try:  # (re)start: take the timeline at the head as it is now
                    taken = fence(store, load_timeline(store, DB, t.id), node.name)
                except LogConflict:
                    continue
                node.writer, node.pending, node.out = Writer(store, taken), None, False
                assert taken.head is not None
                node.next_txid = taken.head.txid + 1
            elif node.pending is None:
                size = rng.randint(1, 3)
                node.pending = put_segment(store, node.writer, node.next_txid,
                                           node.next_txid + size - 1, clock)
            else:
                lost = rng.random() < 0.25  # the write lands, its answer does not
                before = (node.writer.timeline, node.writer.out)
                try:
                    node.writer.commit(node.pending, clock)
                except FencedOut:
                    node.out = not lost
                    continue
                finally:
                    if lost:
                        node.writer.timeline, node.writer.out = before
                if lost:
                    continue  # it will commit the same segment again
                node.acked.update(range(node.pending.first, node.pending.last + 1))
                node.next_txid = node.pending.last + 1
                node.pending = None
        record = load_timeline(store, DB, t.id)
        history, _ = listing(store, DB, record)
        check_chain(t.id, history)
        owner: dict[int, str] = {}
        for s in history:
            for txid in range(s.first, s.last + 1):
                assert txid not in owner, f"seed {seed}: txid {txid} twice"
                owner[txid] = s.key
        for node in nodes:
            for txid in node.acked:
                assert txid in owner, f"seed {seed}: {node.name} acked {txid}, not history"
        acked_by = [txid for n in nodes for txid in n.acked]
        assert len(acked_by) == len(set(acked_by)), f"seed {seed}: a txid acked twice"
        assert record.head is not None and set(owner) == set(range(1, record.head.txid + 1))


def test_retention_deletes_what_fenced_writers_left_and_keeps_a_commit_on_its_way() -> None:
    from shoal.log.branch import add_database
    from shoal.log.retention import apply_retention

    store = MemoryStore()
    t = new_timeline(store)
    add_database(store, DB, 100.0, t)
    a = Writer(store, fence(store, t, "a"))
    a.commit(put_segment(store, a, 1, 2, 101.0), 101.0)
    b = Writer(store, fence(store, load_timeline(store, DB, t.id), "b", expect=2))
    orphan = put_segment(store, a, 3, 3, 102.0)  # a's, after b's fence: never history
    b.commit(put_segment(store, b, 3, 4, 103.0), 103.0)
    on_its_way = put_segment(store, b, 5, 5, 104.0)  # b's, not committed yet
    report = apply_retention(store, DB, now=200.0, window=3600.0)
    assert report.deleted == [orphan.key]
    assert {s.key for s in segments(store, DB, t.id)} == {*report.kept, on_its_way.key}


def test_a_store_from_before_database_records_is_read_and_migrated(tmp_path: object) -> None:
    """Branch records in dbs/{db}/branches/ and a catalog record without branches (the
    layout before database records held them): read as they are, and the first change
    writes them into the record and removes them."""
    import json

    from shoal.log.branch import create_branch, get_branch, list_branches, load_record

    store = MemoryStore()
    t = new_timeline(store)
    store.put(layout.database_key(DB), json.dumps({"name": DB, "created_at": 100.0}).encode())
    store.put(layout.branch_key(DB, "main"), json.dumps({
        "database": DB, "name": "main", "timeline": t.id, "parent": None, "fork_txid": 0,
        "created_at": 100.0}).encode())
    record = load_record(store, DB)
    assert record is not None and record.legacy and record.live is not None
    main = get_branch(store, DB, "main")
    assert main.timeline == t.id and [b.name for b in list_branches(store, DB)] == ["main"]
    create_branch(store, DB, "dev", main, 0, 101.0)
    assert not list(store.list(layout.branches_prefix(DB)))  # migrated: no legacy records
    migrated = load_record(store, DB)
    assert migrated is not None and not migrated.legacy and migrated.live is not None
    assert sorted(migrated.live.branches) == ["dev", "main"]
    assert migrated.live.branches["main"]["timeline"] == t.id


def test_branches_left_sharing_a_timeline_are_separated() -> None:
    """The state an older version's restore left when killed between its two records:
    main and the kept branch on one timeline. The younger branch gets its own."""
    import json

    from shoal.log.branch import get_branch, load_record, separate, sharing
    from shoal.log.timeline import head

    store = MemoryStore()
    t = new_timeline(store)
    w = Writer(store, fence(store, t, "a"))
    w.commit(put_segment(store, w, 1, 5, 101.0), 101.0)
    store.put(layout.database_key(DB), json.dumps({"name": DB, "created_at": 100.0}).encode())
    for name, created in (("main", 100.0), ("main-before-restore", 150.0)):
        store.put(layout.branch_key(DB, name), json.dumps({
            "database": DB, "name": name, "timeline": t.id, "parent": None, "fork_txid": 0,
            "created_at": created}).encode())
    record = load_record(store, DB)
    assert record is not None and sharing(record) == {"main-before-restore": t.id}
    assert separate(store, DB, 200.0) == ["main-before-restore"]
    kept = get_branch(store, DB, "main-before-restore")
    assert get_branch(store, DB, "main").timeline == t.id and kept.timeline != t.id
    own = load_timeline(store, DB, kept.timeline)
    assert (own.parent, own.fork_txid) == (t.id, head(store, DB, load_timeline(store, DB, t.id)))
    record = load_record(store, DB)
    assert record is not None and not sharing(record)


def test_a_purge_removes_only_what_is_still_deleted_when_it_writes() -> None:
    """An undelete that lands before the purge's write keeps its database whole: the purge
    removes the incarnations its own write dropped, not the ones it first read."""
    from shoal.log.branch import (
        create_database,
        delete_database,
        forget_incarnations,
        load_record,
        undelete_database,
    )

    store = MemoryStore()
    create_database(store, DB, 100.0)
    gone = delete_database(store, DB, 200.0).deleted[0]
    undelete_database(store, DB)  # lands first
    assert forget_incarnations(store, DB, {gone.id}) == []
    record = load_record(store, DB)
    assert record is not None and record.live is not None and record.live.id == gone.id
    delete_database(store, DB, 300.0)
    dropped = forget_incarnations(store, DB)
    assert [d.id for d in dropped] == [gone.id]
    record = load_record(store, DB)
    assert record is not None and record.live is None and not record.deleted
