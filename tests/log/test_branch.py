"""Branches (metadata only, isolated histories) and retention over the store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.log import generations, layout
from shoal.log.branch import (
    create_branch,
    delete_branch,
    get_branch,
    list_branches,
    move_branch,
    reset_branch,
    restore_in_place,
)
from shoal.log.errors import BranchExists, BranchNotFound, LogConflict, MissingObject
from shoal.log.restore import restore
from shoal.log.retention import apply_retention
from shoal.log.timeline import ancestry, head, load_timeline, spans
from shoal.storage.base import Blob, ObjectInfo
from shoal.storage.memory import MemoryStore
from tests.support.branches import DB, World
from tests.support.logged import put_snapshot


class Counting(MemoryStore):
    """Counts operations, to show what branch creation touches."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def get(self, key: str) -> Blob:
        self.ops.append(f"get {key}")
        return super().get(key)

    def put(self, key: str, data: bytes, **kw: str | None) -> str:
        self.ops.append(f"put {key}")
        return super().put(key, data, **kw)

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        self.ops.append(f"list {prefix}")
        return super().list(prefix, start_after=start_after)


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.write("main", 9)  # main at txid 10
    return w


def test_branch_creation_writes_two_small_records_and_reads_no_data(tmp_path: Path) -> None:
    store = Counting()
    w = World(tmp_path, store)
    w.write("main", 30)
    main = get_branch(store, DB, "main")
    store.ops.clear()
    child = create_branch(store, DB, "preview", main, 20, created_at=300.0)
    record = layout.database_key(DB)
    assert store.ops == [f"put {layout.timeline_key(DB, child.timeline)}",
                         f"get {record}", f"put {record}"]
    assert all(len(store.get(k.split(" ", 1)[1]).data) < 600 for k in list(store.ops))


def test_child_sees_parent_up_to_fork_and_they_never_see_each_other(world: World) -> None:
    world.branch("feature", "main", 6)
    assert world.rows("feature") == world.rows("main", 6)
    world.write("feature", 3)  # feature txids 7..9 on its own timeline
    world.write("main", 2)  # main txids 11..12
    main_rows = world.rows("main")
    feature_rows = world.rows("feature")
    assert ("feature", 6) in feature_rows and all(w != "feature" for w, _ in main_rows)
    assert all(n <= 5 for w, n in feature_rows if w == "main")
    assert (tmp := world.tmp / "check-feature.db").exists() and tmp.stat().st_size
    feature = get_branch(world.store, DB, "feature")
    for txid in range(6, 10):
        restore(world.store, DB, feature.timeline, world.tmp / "f.db", txid=txid)
        assert (world.tmp / "f.db").read_bytes() == world.images[feature.timeline][txid]
    main = get_branch(world.store, DB, "main")
    restore(world.store, DB, main.timeline, world.tmp / "m.db", txid=9)
    assert (world.tmp / "m.db").read_bytes() == world.images[main.timeline][9]


def test_grandchild_forked_below_its_parents_fork(world: World) -> None:
    world.branch("a", "main", 8)
    world.write("a", 2)
    world.branch("b", "a", 5)  # below a's fork point: main's state at 5
    assert world.rows("b") == world.rows("main", 5)
    b = get_branch(world.store, DB, "b")
    chain = ancestry(world.store, DB, b.timeline)
    assert [(s.lo, s.hi) for s in spans(chain, 5)] == [(0, 5), (8, 5), (5, 5)]


def test_names_exist_once_and_can_be_listed_and_deleted(world: World) -> None:
    world.branch("x", "main", 3)
    with pytest.raises(BranchExists):
        create_branch(world.store, DB, "x", get_branch(world.store, DB, "main"), 4, 1.0)
    assert [b.name for b in list_branches(world.store, DB)] == ["main", "x"]
    delete_branch(world.store, DB, "x")
    with pytest.raises(BranchNotFound):
        get_branch(world.store, DB, "x")
    with pytest.raises(BranchNotFound):
        delete_branch(world.store, DB, "x")
    again = world.branch("x", "main", 9)  # a new timeline: old history cannot leak in
    assert again.fork_txid == 9 and world.rows("x") == world.rows("main", 9)


def test_reset_moves_a_branch_to_the_parents_latest_state(world: World) -> None:
    world.branch("preview", "main", 4)
    world.write("preview", 2)
    world.write("main", 3)
    preview = get_branch(world.store, DB, "preview")
    main = get_branch(world.store, DB, "main")
    top = head(world.store, DB, load_timeline(world.store, DB, main.timeline))
    moved = reset_branch(world.store, preview, main, top, created_at=400.0)
    assert moved.timeline != preview.timeline and moved.fork_txid == 13
    assert world.rows("preview") == world.rows("main")
    with pytest.raises(LogConflict):  # the stale record lost the race
        move_branch(world.store, preview, main.timeline, 2, 500.0)


def test_a_moved_branch_numbers_replicas_generations_on(world: World) -> None:
    """Embedded replicas' numbering (log/generations.py): the line a move leaves had its
    cuts counted; the new line's first generation follows its open one."""
    main = get_branch(world.store, DB, "main")
    first = main.entry()["generation"]
    for index, txid in enumerate((2, 5, 7)):
        generations.make_cut(world.store, DB, main.timeline, index, txid)
    moved = move_branch(world.store, main, main.timeline, 4, 500.0)
    line = generations.line_of(moved.entry())
    assert (line.first, line.previous) == (first + 4, first)
    kept = get_branch(world.store, DB, "main").entry()
    assert generations.line_of(kept) == line  # what the record now says


def test_restore_in_place_keeps_the_old_state_as_a_branch(world: World) -> None:
    before = world.rows("main")
    main = get_branch(world.store, DB, "main")
    moved, kept = restore_in_place(world.store, main, 4, "main-before-restore", 600.0)
    assert world.rows("main") == world.rows("main-before-restore", 4)
    assert world.rows("main-before-restore") == before
    assert moved.fork_txid == 4
    # the kept state has a timeline of its own, forked at the old head: never shared
    kept_line = load_timeline(world.store, DB, kept.timeline)
    assert kept.timeline != main.timeline and kept_line.parent == main.timeline
    assert kept_line.fork_txid == head(world.store, DB, load_timeline(world.store, DB,
                                                                         main.timeline))


def test_retention_keeps_the_window_and_what_children_need(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.write("main", 29)  # txids 1..30, times 1e6 + 0.5 * k
    main = get_branch(w.store, DB, "main")
    log = w.dbs["main"]
    put_snapshot(w.store, DB, main.timeline, w.images[main.timeline][10], 10,
                 log.commits[9].time)
    put_snapshot(w.store, DB, main.timeline, w.images[main.timeline][20], 20,
                 log.commits[19].time)
    w.branch("old-fork", "main", 3)  # forked long before the window; no snapshot of its own
    w.write("old-fork", 2)
    now = log.commits[-1].time + 1
    window = now - log.commits[24].time  # the window starts at commit 25's time
    report = apply_retention(w.store, DB, now=now, window=window, grace=0)
    deleted = set(report.deleted)
    snaps = [i.key for i in w.store.list(layout.snapshot_prefix(DB, main.timeline))]
    parsed = [layout.parse_snapshot(ObjectInfo(k, 0)) for k in snaps]
    assert [p.txid for p in parsed if p] == [0, 20]
    assert any("00000000000000000010-" in k for k in deleted)
    # everything from the window start restores exactly
    for txid in range(24, 31):
        restore(w.store, DB, main.timeline, tmp_path / "r.db", txid=txid)
        assert (tmp_path / "r.db").read_bytes() == w.images[main.timeline][txid]
    with pytest.raises(MissingObject):
        restore(w.store, DB, main.timeline, tmp_path / "r.db", txid=12)
    # the old fork still materialises: main's snapshot 0 and segments up to 3 were kept
    fork = get_branch(w.store, DB, "old-fork")
    restore(w.store, DB, fork.timeline, tmp_path / "f.db")
    assert (tmp_path / "f.db").read_bytes() == w.images[fork.timeline][5]
    assert apply_retention(w.store, DB, now=now, window=window, grace=0).deleted == []


def test_retention_drops_deleted_branches_unless_needed(world: World) -> None:
    a = world.branch("a", "main", 5)
    world.write("a", 2)
    b = world.branch("b", "a", 6)
    world.write("b", 1)
    delete_branch(world.store, DB, "a")
    kept_report = apply_retention(world.store, DB, now=3e6, window=1e9, grace=0)
    assert layout.timeline_key(DB, a.timeline) not in kept_report.deleted  # b needs a up to 6
    world.rows("b")
    delete_branch(world.store, DB, "b")
    dry = apply_retention(world.store, DB, now=3e6, window=1e9, grace=0, dry_run=True)
    assert layout.timeline_key(DB, b.timeline) in dry.deleted
    assert world.store.get(layout.timeline_key(DB, b.timeline))  # dry run deleted nothing
    generations.make_cut(world.store, DB, b.timeline, 0, 7)  # a replica synced b once
    report = apply_retention(world.store, DB, now=3e6, window=1e9, grace=0)
    gone = set(report.deleted)
    assert generations.cut_key(DB, b.timeline, 0) in gone  # its cuts went with it
    assert {layout.timeline_key(DB, a.timeline), layout.timeline_key(DB, b.timeline)} <= gone
    assert not list(world.store.list(layout.log_prefix(DB, a.timeline)))
    assert not list(world.store.list(layout.log_prefix(DB, b.timeline)))
    assert world.rows("main")  # main untouched


def test_retention_spares_young_timelines(world: World) -> None:
    now = 5e6
    fresh = world.branch("fresh", "main", 5, created_at=now - 10)
    world.write("fresh", 1)
    delete_branch(world.store, DB, "fresh")  # as if its create were still in progress
    mine = (layout.log_prefix(DB, fresh.timeline), layout.timeline_key(DB, fresh.timeline))
    report = apply_retention(world.store, DB, now=now, window=1.0, grace=3600)
    assert not [k for k in report.deleted if k.startswith(mine)]
    report = apply_retention(world.store, DB, now=now, window=1.0, grace=0)
    assert mine[1] in report.deleted
    assert not list(world.store.list(mine[0]))
