"""Compaction merges runs of small segments; restore stays byte-exact at every txid before,
after, and once retention has deleted the covered small segments."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.log import layout
from shoal.log.branch import create_database
from shoal.log.compaction import compact, plan
from shoal.log.errors import CorruptObject, LogConflict
from shoal.log.restore import Restored, restore
from shoal.log.retention import apply_retention
from shoal.log.segment import encode_segment
from shoal.log.timeline import covered, create_timeline, segments
from shoal.storage.base import ObjectInfo, ObjectStore
from shoal.storage.memory import MemoryStore
from tests.support.branches import World
from tests.support.logged import LoggedDatabase, put_segments, put_snapshot, workload
from tests.support.s3 import MotoS3, moto_server

DB = "app"
GRACE = 3600.0


class Clock:
    """The store's clock (modification times) and the caller's `now`, in one time domain."""

    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


class FrozenListing(MemoryStore):
    """Lists what it held when frozen: a compaction that listed before another's merge."""

    def __init__(self, clock: Clock):
        super().__init__(clock=clock)
        self.frozen: list[ObjectInfo] | None = None

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        if self.frozen is None:
            return super().list(prefix, start_after=start_after)
        return iter([i for i in self.frozen if i.key.startswith(prefix) and i.key > start_after])


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoggedDatabase, list[bytes]]:
    """A mixed workload of 40 commits (grows, shrinks, vacuums); oracle image per txid."""
    logged = LoggedDatabase(tmp_path_factory.mktemp("compaction") / "src.db")
    images = workload(logged, random.Random(11), 36)
    return logged, images


def one_commit_segments(store: ObjectStore, logged: LoggedDatabase,
                        images: list[bytes]) -> str:
    """A main branch holding snapshot 0 and a segment per commit (what sync_interval
    leaves); returns its timeline."""
    timeline = create_database(store, DB, created_at=100.0).timeline
    put_snapshot(store, DB, timeline, images[0], 0, logged.commits[0].time - 1)
    put_segments(store, DB, timeline, logged.commits, [1] * len(logged.commits))
    return timeline


def stocked(logged: LoggedDatabase, images: list[bytes],
            make: Callable[[Clock], MemoryStore] = lambda c: MemoryStore(clock=c)
            ) -> tuple[Clock, MemoryStore, str]:
    """A clock just past the workload, a store made on it, and one_commit_segments in it."""
    clock = Clock(logged.time + 100)
    store = make(clock)
    return clock, store, one_commit_segments(store, logged, images)


def restore_every_txid(store: ObjectStore, timeline: str, images: list[bytes],
                       tmp: Path) -> list[Restored]:
    out = []
    for txid, image in enumerate(images):
        done = restore(store, DB, timeline, tmp / "r.db", txid=txid)
        assert (tmp / "r.db").read_bytes() == image, f"txid {txid}"
        out.append(done)
    return out


def keys(store: ObjectStore, timeline: str) -> list[str]:
    return [s.key for s in segments(store, DB, timeline)]


def test_compaction_merges_runs_and_restore_stays_exact(
        recorded: tuple[LoggedDatabase, list[bytes]], tmp_path: Path) -> None:
    logged, images = recorded
    clock, store, timeline = stocked(logged, images)
    small = keys(store, timeline)
    before = restore_every_txid(store, timeline, images, tmp_path)
    assert len(before[-1].segments) == len(small) == len(images) - 1

    report = compact(store, DB, now=clock.t, max_segments=12, min_segments=5)
    assert not report.errors
    assert [len(m.sources) for m in report.merges] == [12, 12, 12]  # 4 left: too few
    assert all(m.created for m in report.merges)
    assert [m.first for m in report.merges] == [1, 13, 25]
    assert set(small) <= set(keys(store, timeline))  # compaction deleted nothing
    assert "merged 36 segments into 3 (timeline" in report.summary()
    for merge in report.merges:  # the merged key names the last commit's time
        info = layout.parse_segment(ObjectInfo(merge.key, 0))
        assert info is not None and info.last_time >= logged.commits[merge.last - 1].time

    after = restore_every_txid(store, timeline, images, tmp_path)
    assert after[-1].segments == tuple(m.key for m in report.merges) + tuple(small[-4:])
    assert after[30].segments == tuple(m.key for m in report.merges)  # 30: inside the third

    clock.t += GRACE + 1
    gone = apply_retention(store, DB, now=clock.t, window=1e12, grace=GRACE)
    assert sorted(gone.deleted) == sorted(k for m in report.merges for k in m.sources)
    assert keys(store, timeline) == [m.key for m in report.merges] + small[-4:]
    restore_every_txid(store, timeline, images, tmp_path)
    # merged segments below half the target merge again with what followed them
    (grown,) = compact(store, DB, now=clock.t, max_segments=12, min_segments=5).merges
    assert (grown.first, grown.last, len(grown.sources)) == (1, 40, 7)
    assert restore_every_txid(store, timeline, images, tmp_path)[-1].segments == (grown.key,)


def test_a_corrupt_small_segment_stops_its_run_and_changes_nothing(
        recorded: tuple[LoggedDatabase, list[bytes]], tmp_path: Path) -> None:
    logged, images = recorded
    clock, store, timeline = stocked(logged, images)
    small = keys(store, timeline)
    bad = small[13]  # txid 14: in the second run of twelve
    data = bytearray(store.get(bad).data)
    data[len(data) // 2] ^= 0x10
    store.put(bad, bytes(data))

    report = compact(store, DB, now=clock.t, max_segments=12, min_segments=5)
    assert len(report.errors) == 1
    error = report.errors[0]
    assert isinstance(error, CorruptObject) and error.key == bad and bad in str(error)
    assert [m.first for m in report.merges] == [1, 25]  # the other runs went ahead
    assert set(keys(store, timeline)) == set(small) | {m.key for m in report.merges}
    assert not covered(segments(store, DB, timeline)) & set(small[12:24])
    assert store.get(bad).data == bytes(data)  # left as it was, for an operator to see


def test_reruns_are_idempotent_and_verify_what_they_find(
        recorded: tuple[LoggedDatabase, list[bytes]], tmp_path: Path) -> None:
    logged, images = recorded
    clock, store, timeline = stocked(logged, images, FrozenListing)
    first = compact(store, DB, now=clock.t, max_segments=20)
    assert [len(m.sources) for m in first.merges] == [20, 20]
    held = {k: store.get(k).data for k in keys(store, timeline)}
    assert compact(store, DB, now=clock.t, max_segments=20).merges == []  # all covered now

    # A run that listed before the merges landed finds them in place: verified, unchanged.
    store.frozen = [i for i in MemoryStore.list(store, "") if i.key not in
                    {m.key for m in first.merges}]
    again = compact(store, DB, now=clock.t, max_segments=20)
    assert [(m.key, m.created) for m in again.merges] == [(m.key, False) for m in first.merges]
    assert {k: store.get(k).data for k in held} == held

    # A cut-short merged segment is replaced (restore would stop on it); another writer's
    # commits under the key are a conflict, named, and left alone.
    cut, foreign = first.merges[0].key, first.merges[1].key
    store.put(cut, held[cut][:100])
    other = encode_segment([replace(c, time=c.time + 1) for c in logged.commits[20:40]])
    store.put(foreign, other)
    third = compact(store, DB, now=clock.t, max_segments=20)
    assert [(m.key, m.created) for m in third.merges] == [(cut, True)]
    assert isinstance(third.errors[0], LogConflict) and third.errors[0].key == foreign
    assert store.get(cut).data == held[cut] and store.get(foreign).data == other
    store.frozen = None
    store.delete(foreign)
    restore_every_txid(store, timeline, images, tmp_path)


class NoTimes(MemoryStore):
    """A store whose listing reports no modification times."""

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        return (ObjectInfo(i.key, i.size) for i in super().list(prefix, start_after=start_after))


def test_retention_deletes_covered_segments_once_their_cover_is_older_than_grace(
        recorded: tuple[LoggedDatabase, list[bytes]], tmp_path: Path) -> None:
    logged, images = recorded
    clock, store, timeline = stocked(logged, images)
    clock.t += 5000  # the small segments are old; the merged ones are written now
    merges = compact(store, DB, now=clock.t, max_segments=20).merges
    sources = sorted(k for m in merges for k in m.sources)
    assert len(sources) == 40

    clock.t += GRACE - 1
    assert apply_retention(store, DB, now=clock.t, window=1e12, grace=GRACE).deleted == []
    stale = NoTimes(clock=clock)
    for info in MemoryStore.list(store, ""):
        stale.put(info.key, store.get(info.key).data)
    clock.t += 2
    assert apply_retention(stale, DB, now=clock.t, window=1e12, grace=GRACE).deleted == []
    dry = apply_retention(store, DB, now=clock.t, window=1e12, grace=GRACE, dry_run=True)
    assert sorted(dry.deleted) == sources
    assert {m.key for m in merges} <= set(dry.kept)
    report = apply_retention(store, DB, now=clock.t, window=1e12, grace=GRACE)
    assert sorted(report.deleted) == sources
    assert apply_retention(store, DB, now=clock.t, window=1e12, grace=GRACE).deleted == []
    restore_every_txid(store, timeline, images, tmp_path)


def test_newest_runs_go_first_and_a_pass_stops_when_told(
        recorded: tuple[LoggedDatabase, list[bytes]]) -> None:
    logged, images = recorded
    store = MemoryStore()
    one_commit_segments(store, logged, images)
    allowed = iter([True, False])
    report = compact(store, DB, now=logged.time + 100, max_segments=12, min_segments=5,
                     keep_going=lambda: next(allowed))
    assert [(m.first, m.last) for m in report.merges] == [(25, 36)]


def test_timelines_no_branch_reads_are_left_to_retention(
        recorded: tuple[LoggedDatabase, list[bytes]]) -> None:
    logged, images = recorded
    store = MemoryStore()
    orphan = create_timeline(store, DB, None, 0, 0.0).id  # its branch was deleted
    put_snapshot(store, DB, orphan, images[0], 0, 1.0)
    put_segments(store, DB, orphan, logged.commits, [1] * len(logged.commits))
    assert compact(store, DB, now=logged.time + 100).merges == []


def test_covered_keeps_one_of_twins_and_the_widest_of_a_chain() -> None:
    def seg(first: int, last: int, ms: int = 5) -> layout.SegmentInfo:
        return layout.SegmentInfo(f"s/{first:03d}-{last:03d}-{ms}", first, last, 0.0, 1)

    twins = [seg(1, 9, 5), seg(1, 9, 6)]
    assert covered(twins) == {twins[1].key}
    chain = [seg(1, 2), seg(3, 4), seg(1, 4), seg(1, 8), seg(5, 8), seg(9, 9)]
    assert covered(chain) == {chain[0].key, chain[1].key, chain[2].key, chain[4].key}
    # only the young cover covers 5..8: it stays covered by nothing old
    old = {chain[2].key}
    assert covered(chain, lambda s: s.key in old) == {chain[0].key, chain[1].key}


def test_branch_forked_inside_a_merged_parent_segment(tmp_path: Path) -> None:
    clock = Clock(3_000_000.0)
    w = World(tmp_path, MemoryStore(clock=clock))
    w.write("main", 29)  # txids 1..30 in segments of two commits
    main = w.main.timeline
    report = compact(w.store, DB, now=clock.t, min_segments=4)
    (merge,) = report.merges
    assert (merge.first, merge.last) == (1, 30)

    child = w.branch("child", "main", 17)  # materialised through the merged segment
    w.write("child", 4)
    clock.t += GRACE + 1
    deleted = apply_retention(w.store, DB, now=clock.t, window=1e12, grace=GRACE).deleted
    assert sorted(deleted) == sorted(merge.sources)
    assert keys(w.store, main) == [merge.key]
    for txid, image in w.images[child.timeline].items():
        done = restore(w.store, DB, child.timeline, tmp_path / "c.db", txid=txid)
        assert (tmp_path / "c.db").read_bytes() == image, f"child txid {txid}"
        assert done.segments[0] == merge.key  # the parent's part: up to 17 of 1..30
    for txid, image in w.images[main].items():
        restore(w.store, DB, main, tmp_path / "m.db", txid=txid)
        assert (tmp_path / "m.db").read_bytes() == image, f"main txid {txid}"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with moto_server() as server:
        yield server


def test_compaction_and_retention_on_s3(recorded: tuple[LoggedDatabase, list[bytes]],
                                        tmp_path: Path, moto: MotoS3) -> None:
    logged, images = recorded
    store = moto.new_store()
    timeline = one_commit_segments(store, logged, images)
    report = compact(store, DB, now=time.time(), max_segments=25)
    assert [len(m.sources) for m in report.merges] == [25, 15]
    listed = segments(store, DB, timeline)
    assert all(s.modified is not None and abs(s.modified - time.time()) < 600 for s in listed)
    assert apply_retention(store, DB, now=time.time(), window=1e12).deleted == []
    later = apply_retention(store, DB, now=time.time() + GRACE + 60, window=1e12)
    assert sorted(later.deleted) == sorted(k for m in report.merges for k in m.sources)
    assert keys(store, timeline) == [m.key for m in report.merges]
    for txid in (0, 1, 24, 25, 26, len(images) - 1):
        restore(store, DB, timeline, tmp_path / "s3.db", txid=txid)
        assert (tmp_path / "s3.db").read_bytes() == images[txid]


# -- the plan, from listings alone ----------------------------------------------------------

@st.composite
def listings(draw: st.DrawFn) -> list[layout.SegmentInfo]:
    """Segments tiling 1..n, with gaps, plus some covering segments of earlier merges."""
    out: list[layout.SegmentInfo] = []
    txid = 0
    for _ in range(draw(st.integers(0, 60))):
        first = txid + 1 + draw(st.sampled_from([0, 0, 0, 0, 3]))  # sometimes a gap
        last = first + draw(st.integers(0, 3))
        size = draw(st.sampled_from([100, 900, 3000, 6000]))
        out.append(layout.SegmentInfo(f"k/{first:05d}-{last:05d}", first, last,
                                      float(last), size))
        txid = last
    for _ in range(draw(st.integers(0, 3))):
        if len(out) > 1:
            i = draw(st.integers(0, len(out) - 2))
            j = draw(st.integers(i + 1, min(len(out) - 1, i + 6)))
            a, b = out[i], out[j]
            out.append(layout.SegmentInfo(f"k/{a.first:05d}-{b.last:05d}", a.first, b.last,
                                          b.last_time, 2000))
    return sorted({s.key: s for s in out}.values(), key=lambda s: s.key)


@settings(max_examples=200, deadline=None)
@given(segs=listings(), min_age=st.sampled_from([0.0, 50.0]), max_segments=st.integers(2, 9),
       min_segments=st.integers(2, 5))
def test_plan_merges_only_contiguous_old_small_uncovered_segments(
        segs: list[layout.SegmentInfo], min_age: float, max_segments: int,
        min_segments: int) -> None:
    target, now = 10_000, 200.0
    runs = plan(segs, now=now, min_age=min_age, target_bytes=target,
                max_segments=max_segments, min_segments=min_segments)
    hidden = covered(segs)
    used = [s.key for run in runs for s in run]
    assert len(used) == len(set(used))
    for run in runs:
        assert min_segments <= len(run) <= max_segments
        assert sum(s.size for s in run) <= target
        for prev, cur in itertools.pairwise(run):
            assert cur.first == prev.last + 1  # never across a gap or an overlap
        for s in run:
            assert s.key not in hidden and s.last_time <= now - min_age
            assert s.size < target // 2
