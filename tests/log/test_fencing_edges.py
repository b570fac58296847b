"""The commit point's edges: records that do not decode, torn reads and their retries, lost
races, the ancestry's length limit, which segments cover or fork at their bounds, and a
fenced writer that remembers it is out.

The counts and delays are written out (5 reads of a torn record, 50 ms doubling between
them, 8 tries of a fence, a chain of at most 10,001 timelines), not imported, so that a
changed constant fails here. The timeline record's bytes are pinned too: other nodes and
restores read it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import pytest

from shoal.log import layout, timeline
from shoal.log.errors import CorruptObject, FencedOut, LogConflict, MissingObject
from shoal.log.timeline import (
    Head,
    Timeline,
    Writer,
    ancestry,
    check_chain,
    committed,
    covered,
    create_timeline,
    fence,
    list_timelines,
    listed_head,
    load_timeline,
    seal,
)
from shoal.storage.base import Blob, NotFound, ObjectInfo
from shoal.storage.memory import MemoryStore

DB = "edges"


def seg(first: int, last: int, ms: int = 1000, epoch: int = 0,
        start: int = 0) -> layout.SegmentInfo:
    info = layout.parse_segment(ObjectInfo(
        layout.segment_key(DB, "t", first, last, ms / 1000, epoch, start), 1))
    assert info is not None
    return info


def snap(txid: int, ms: int = 1000, epoch: int = 0, start: int = 0) -> layout.SnapshotInfo:
    info = layout.parse_snapshot(ObjectInfo(
        layout.snapshot_key(DB, "t", txid, ms / 1000, epoch, start), 1))
    assert info is not None
    return info


class Hooked(MemoryStore):
    """A memory store that runs ``before_put`` hooks and serves ``gets`` answers first."""

    def __init__(self) -> None:
        super().__init__()
        self.before_put: list[Callable[[str], None]] = []
        self.gets: dict[str, list[bytes | None]] = {}  # key -> answers (None: NotFound)
        self.get_count = 0
        self.put_count = 0

    def get(self, key: str) -> Blob:
        self.get_count += 1
        answers = self.gets.get(key)
        if answers:
            data = answers.pop(0)
            if data is None:
                raise NotFound(key)
            return Blob(data, "torn")
        return super().get(key)

    def put(self, key: str, data: bytes, *, if_none_match: str | None = None,
            if_match: str | None = None) -> str:
        self.put_count += 1
        if self.before_put:
            self.before_put.pop(0)(key)
        return super().put(key, data, if_none_match=if_none_match, if_match=if_match)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    done: list[float] = []
    monkeypatch.setattr(timeline.time, "sleep", done.append)
    return done


# -- the record's format --------------------------------------------------------------------

def test_a_timeline_record_is_pinned_json_with_sorted_keys() -> None:
    store = MemoryStore()
    t = create_timeline(store, DB, "a1b2c3d4e5f60708", 12, 1700000000.5)
    assert len(t.id) == 16 and set(t.id) <= set("0123456789abcdef")  # 8 random bytes, hex
    key = f"dbs/{DB}/timelines/{t.id}.json"  # written out: a format other nodes read
    assert store.get(key).data == (
        b'{"created_at": 1700000000.5, "database": "edges", "fork_txid": 12, "id": "'
        + t.id.encode() + b'", "parent": "a1b2c3d4e5f60708"}')
    fenced = fence(store, t, "node-1")
    assert json.loads(store.get(key).data)["head"] == {
        "epoch": 1, "node": "node-1", "start": 13, "time": 1700000000.5, "txid": 12}
    assert list(json.loads(store.get(key).data)) == sorted(json.loads(store.get(key).data))
    assert fenced.head == Head(12, 1700000000.5, 1, 13, "node-1")


def test_a_record_is_the_same_timeline_whatever_its_head_seal_or_version() -> None:
    a = Timeline(DB, "t", None, 0, 1.0)
    b = Timeline(DB, "t", None, 0, 1.0, Head(3, 2.0, 1, 1, "n"), {"op": "reset"}, "etag")
    assert a == b and hash(a) == hash(b)


@pytest.mark.parametrize("data", [
    b"not json",  # ValueError
    b'{"database": "edges", "id": "t", "parent": null, "fork_txid": 0}',  # KeyError
    b'{"database": "edges", "id": "t", "parent": null, "fork_txid": [], "created_at": 1}',
    b'{"database": "edges", "id": "t", "parent": null, "fork_txid": 0, "created_at": 1, '
    b'"sealed": "reset"}',  # a seal that is not an intent
    b'{"database": "edges", "id": "t", "parent": null, "fork_txid": 0, "created_at": 1, '
    b'"head": {"txid": 1}}',
])
def test_a_record_that_does_not_decode_is_corrupt_after_five_reads(
        data: bytes, sleeps: list[float]) -> None:
    store = Hooked()
    key = layout.timeline_key(DB, "t")
    store.put(key, data)
    with pytest.raises(CorruptObject) as err:
        load_timeline(store, DB, "t")
    assert err.value.key == key and str(err.value) == f"timeline record {key} is not valid"
    assert store.get_count == 5 and sleeps == [0.05, 0.1, 0.2, 0.4]


def test_a_torn_read_is_read_again_until_it_decodes(sleeps: list[float]) -> None:
    store = Hooked()
    t = create_timeline(store, DB, None, 0, 1.0)
    key = layout.timeline_key(DB, t.id)
    whole = store.get(key).data
    store.gets[key] = [whole[:10], whole[:20]]  # a writer's retry is on its way
    store.get_count = 0
    assert load_timeline(store, DB, t.id) == t
    assert store.get_count == 3 and sleeps == [0.05, 0.1]


def test_a_missing_record_is_a_missing_object() -> None:
    with pytest.raises(MissingObject) as err:
        load_timeline(MemoryStore(), DB, "gone")
    assert err.value.key == layout.timeline_key(DB, "gone")


def test_a_record_removed_between_listing_and_reading_is_skipped() -> None:
    store = Hooked()
    for tid in ("a0", "b0", "c0"):  # listed in this order; the first one goes meanwhile
        store.put(layout.timeline_key(DB, tid), timeline._encode(Timeline(DB, tid, None, 0, 1.0)))
    store.gets[layout.timeline_key(DB, "a0")] = [None]
    assert sorted(list_timelines(store, DB)) == ["b0", "c0"]


# -- the ancestry ---------------------------------------------------------------------------

def chain_of(store: MemoryStore, length: int) -> str:
    """Write ``length`` timeline records, each the child of the one before; the leaf's id."""
    parent = None
    for i in range(length):
        t = Timeline(DB, f"t{i}", parent, i, 1.0)
        store.put(layout.timeline_key(DB, t.id), timeline._encode(t))
        parent = t.id
    assert parent is not None
    return parent


def test_an_ancestry_of_10001_timelines_is_read_and_one_more_is_refused() -> None:
    store = MemoryStore()
    assert len(ancestry(store, DB, chain_of(store, 10_001))) == 10_001
    store = MemoryStore()
    with pytest.raises(CorruptObject, match="has a cycle in its ancestry"):
        ancestry(store, DB, chain_of(store, 10_002))


def test_a_cycle_in_the_ancestry_is_corrupt_not_endless() -> None:
    store = MemoryStore()
    for me, parent in (("x", "y"), ("y", "x")):
        store.put(layout.timeline_key(DB, me), timeline._encode(Timeline(DB, me, parent, 0, 1.0)))
    with pytest.raises(CorruptObject, match="timeline x has a cycle"):
        ancestry(store, DB, "x")


# -- which objects count --------------------------------------------------------------------

def test_of_two_segments_with_one_range_the_larger_key_is_covered() -> None:
    a, b = seg(1, 5, 1000), seg(1, 5, 2000)
    assert covered([b, a]) == {b.key}
    assert covered([seg(1, 3), seg(4, 6)]) == set()  # contiguous: neither covers the other
    wide, inner = seg(1, 9), seg(3, 4)
    assert covered([inner, wide]) == {inner.key}
    assert covered([inner, wide], can_cover=lambda s: s is not wide) == set()
    assert covered([seg(1, 5), seg(3, 5), seg(2, 7)]) == {seg(3, 5).key}


def test_the_head_epochs_start_limits_older_epochs_without_objects_of_its_own() -> None:
    # epoch 1 stored 5..6 and was fenced at head 4 before its commit; epoch 2 committed
    # 5..6 in a snapshot that retention since replaced: no object of epoch 2 is listed
    t = Timeline(DB, "t", None, 0, 1.0, Head(6, 2.0, 2, 5, "b"), None, "e")
    old = seg(5, 6, epoch=1, start=1)
    keep = seg(1, 4, epoch=1, start=1)
    assert committed(t, [keep, old], []) == ([keep], [])


def test_forks_at_the_bounds_of_the_range_checked() -> None:
    fork = [seg(3, 5, 1000), seg(4, 5, 2000)]  # two commits at txid 5
    with pytest.raises(CorruptObject, match="forks at txid 5"):
        check_chain("t", fork)
    check_chain("t", fork, lo=5)  # the range starts after them
    with pytest.raises(CorruptObject):
        check_chain("t", fork, lo=4)
    late = [seg(6, 8, 1000), seg(6, 8, 2000)]
    with pytest.raises(CorruptObject):
        check_chain("t", late, hi=6)  # they start at the range's last txid
    check_chain("t", late, hi=5)


def test_segments_overlapping_by_one_txid_fork() -> None:
    with pytest.raises(CorruptObject) as err:
        check_chain("t", [seg(1, 5), seg(5, 8)])
    assert "forks at txids 5..5" in str(err.value)


def test_an_overlap_after_a_contiguous_run_is_found() -> None:
    with pytest.raises(CorruptObject) as err:
        check_chain("t", [seg(1, 5), seg(6, 9), seg(8, 12)])
    assert "forks at txids 8..9" in str(err.value)


def test_an_overlap_names_the_first_of_the_segments_reaching_furthest() -> None:
    first, inner, late = seg(1, 5), seg(3, 5), seg(4, 7)
    with pytest.raises(CorruptObject) as err:
        check_chain("t", [late, inner, first])
    assert f"{first.key} and {late.key} overlap" in str(err.value)


def test_a_never_fenced_timeline_ends_at_its_furthest_object() -> None:
    store = MemoryStore()
    t = create_timeline(store, DB, None, 0, 1.0)
    assert listed_head(store, DB, t) == (0, 1.0)
    for info in (layout.segment_key(DB, t.id, 1, 5, 3.0), layout.snapshot_key(DB, t.id, 7, 4.0)):
        store.put(info, b"x")
    assert listed_head(store, DB, t) == (7, 4.0)


# -- taking a record against concurrent changes ----------------------------------------------

def test_a_fence_that_loses_a_race_reads_again_and_takes_the_new_version() -> None:
    store = Hooked()
    t = create_timeline(store, DB, None, 0, 1.0)
    key = layout.timeline_key(DB, t.id)
    # another node fences it between this node's read and write (etags follow the content)
    other = replace(t, head=Head(0, 1.0, 1, 1, "b"))
    store.before_put = [lambda k: MemoryStore.put(store, key, timeline._encode(other))]
    taken = fence(store, t, "a")
    assert taken.head == Head(0, 1.0, 2, 1, "a")
    assert load_timeline(store, DB, t.id).head == taken.head


def test_a_record_that_keeps_changing_is_a_conflict_after_eight_tries() -> None:
    store = Hooked()
    t = create_timeline(store, DB, None, 0, 1.0)
    key = layout.timeline_key(DB, t.id)
    epochs = iter(range(2, 100))

    def another_fence(k: str) -> None:
        head = Head(0, 1.0, next(epochs), 1, "b")
        MemoryStore.put(store, key, timeline._encode(replace(t, head=head)))

    store.before_put = [another_fence] * 20
    store.put_count = 0
    with pytest.raises(LogConflict, match="kept changing"):
        seal(store, t, "a", lambda head: {"op": "reset", "txid": head})
    assert store.put_count == 8


# -- the writer -----------------------------------------------------------------------------

def test_a_writers_snapshot_key_names_its_epoch_and_start() -> None:
    store = MemoryStore()
    w = Writer(store, fence(store, create_timeline(store, DB, None, 4, 1.0), "a"))
    info = layout.parse_snapshot(ObjectInfo(w.snapshot_key(9, 5.0), 1))
    assert info is not None and (info.txid, info.epoch, info.start) == (9, 1, 5)


def test_a_writer_out_after_a_landed_commit_refuses_the_next_without_the_store() -> None:
    store = Hooked()
    t = create_timeline(store, DB, None, 0, 1.0)
    w = Writer(store, fence(store, t, "a"))
    key = w.segment_key(1, 3, 101.0)
    store.put(key, b"1-3", if_none_match="*")
    info = layout.parse_segment(ObjectInfo(key, 3))
    assert info is not None
    stale = w.timeline
    w.commit(info, 101.0)
    fence(store, load_timeline(store, DB, t.id), "b", expect=3)
    w.timeline = stale  # the answer was lost: the retry finds it history, under b's epoch
    w.commit(info, 101.0)
    assert w.out is not None and "was taken by node b after txid 3" in str(w.out)
    before = (store.get_count, store.put_count)
    with pytest.raises(FencedOut, match="was taken by node b after txid 3"):
        w.commit(info, 102.0)
    assert (store.get_count, store.put_count) == before
