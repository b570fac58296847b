"""Restore a branch's database file to any txid or timestamp from the object store.

Restore = the nearest snapshot at or before the target in the branch's history
(its own timeline or an ancestor's up to the fork) + every commit after it up
to the target, replayed by writing each page at ``(pgno - 1) * page_size`` and
finally truncating the file to the target commit's database size. That is the
database SQLite itself would read at that commit: byte for byte. Segments may
overlap (compaction merges runs of small ones into one that covers them): the
plan takes, at each txid, the segment reaching furthest, so it reads few objects.

Nothing is taken on trust: only committed objects count (``timeline.committed``:
what a fenced-out writer stored is not history), two committed segments that hold
different histories are a fork that stops the restore naming both, every snapshot
and segment is checksummed, segments must match the txid range their key names,
and the chosen objects must cover every txid from the snapshot to the target. Any
fault stops the restore with a LogError naming the object (or the missing range);
the destination is only replaced once the whole image is written and fsynced.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from shoal.log import layout
from shoal.log.errors import CorruptObject, LogError, MissingObject
from shoal.log.segment import Commit, decode_segment
from shoal.log.snapshot import write_image
from shoal.log.timeline import (
    Timeline,
    ancestry,
    check_chain,
    listing,
    spans,
)
from shoal.storage.base import NotFound, ObjectStore

# Segments downloaded ahead of the one being applied: on S3 a GET takes 20-50 ms whatever
# its size, so many small segments need many requests in flight (the S3 store's pool
# holds 32 connections). Memory stays bounded by bytes, not count: at most PREFETCH_BYTES
# of listed (compressed) segment bytes are downloaded ahead, plus the segment being
# applied, decoded: at most max_segment_bytes (8 MiB) of pages for a shipped segment,
# compaction.MAX_PAGE_BYTES (16 MiB) for a compacted one.
PREFETCH = 16
PREFETCH_BYTES = 32 << 20


@dataclass(frozen=True, slots=True)
class Restored:
    txid: int
    time: float  # commit time of txid (the snapshot's time if no commit was replayed)
    page_size: int
    db_pages: int
    snapshot: str  # key of the snapshot restore started from
    segments: tuple[str, ...]  # keys of the segments replayed, in order


@dataclass(frozen=True, slots=True)
class Point:
    txid: int
    time: float


@dataclass(frozen=True, slots=True)
class History:
    """The restorable window of a branch: earliest and latest points."""

    earliest: Point
    latest: Point


@dataclass
class _Plan:
    target: int
    snapshot: layout.SnapshotInfo
    segments: list[tuple[layout.SegmentInfo, int, int]]  # (segment, first, last) to apply


def fetch(store: ObjectStore, key: str, what: str) -> bytes:
    """The object's bytes; MissingObject naming it (as a ``what``) if it is gone."""
    try:
        return store.get(key).data
    except NotFound:
        raise MissingObject(f"{what} {key} is missing from the store", key) from None


def read_segment(seg: layout.SegmentInfo, data: bytes) -> list[Commit]:
    """The commits of a downloaded segment, checksummed and matching the txids its key
    names (CorruptObject naming it otherwise)."""
    head, commits = decode_segment(data, seg.key)
    if (head.first_txid, head.last_txid) != (seg.first, seg.last):
        raise CorruptObject(f"segment {seg.key} holds txids {head.first_txid}.."
                            f"{head.last_txid}, its key says {seg.first}..{seg.last}", seg.key)
    return commits


def furthest(segs: Sequence[layout.SegmentInfo], after: int, upto: int,
             max_bytes: int) -> list[layout.SegmentInfo]:
    """The segments to read for the commits after ``after`` up to ``upto``: from each txid on
    the one reaching furthest (compaction's merged ones too), in order, about ``max_bytes``
    of them (the first whole). A txid no segment covers is passed over: callers see the gap
    in the txids the plan's commits hold."""
    useful = sorted((s for s in segs if s.last > after and s.first <= upto),
                    key=lambda s: (s.first, -s.last))
    plan: list[layout.SegmentInfo] = []
    need, total = after + 1, 0
    for seg in useful:
        if seg.last < need:
            continue
        if plan and total + seg.size > max_bytes:
            break
        plan.append(seg)
        total += seg.size
        need = seg.last + 1
    return plan


def download(store: ObjectStore, segs: Sequence[layout.SegmentInfo]
             ) -> Generator[tuple[layout.SegmentInfo, bytes], None, None]:
    """Download segments in order, up to PREFETCH at once and PREFETCH_BYTES ahead."""
    pool = ThreadPoolExecutor(max_workers=PREFETCH)
    pending: deque[tuple[layout.SegmentInfo, Future[bytes]]] = deque()
    ahead = 0
    todo = iter(segs)
    nxt = next(todo, None)
    try:
        while pending or nxt is not None:
            while nxt is not None and len(pending) < PREFETCH and (
                    not pending or ahead + nxt.size <= PREFETCH_BYTES):
                pending.append((nxt, pool.submit(fetch, store, nxt.key, "segment")))
                ahead += nxt.size
                nxt = next(todo, None)
            seg, fut = pending.popleft()
            ahead -= seg.size
            yield seg, fut.result()
    finally:  # on a failure or an early stop, start no more downloads
        pool.shutdown(wait=True, cancel_futures=True)


def _listings(store: ObjectStore, db: str, chain: list[Timeline]
              ) -> tuple[dict[str, list[layout.SegmentInfo]],
                         dict[str, list[layout.SnapshotInfo]]]:
    """Each timeline's committed segments and snapshots."""
    segs: dict[str, list[layout.SegmentInfo]] = {}
    snaps: dict[str, list[layout.SnapshotInfo]] = {}
    for t in chain:
        segs[t.id], snaps[t.id] = listing(store, db, t)
    return segs, snaps


def _head(timeline: Timeline, segs: list[layout.SegmentInfo],
          snaps: list[layout.SnapshotInfo]) -> int:
    if timeline.head is not None:
        return timeline.head.txid
    return max([timeline.fork_txid] + [s.last for s in segs] + [s.txid for s in snaps])


def _cover(segs: list[layout.SegmentInfo], timeline: str, db: str, lo: int,
           hi: int) -> list[tuple[layout.SegmentInfo, int, int]]:
    """Segments covering txids lo+1..hi without a gap (greedy: furthest reach first, so a
    compacted segment is read instead of the small ones it covers). One pass over the
    segments in txid order: a timeline may list thousands."""
    out: list[tuple[layout.SegmentInfo, int, int]] = []
    ordered = sorted(segs, key=lambda s: (s.first, s.last))
    i = 0
    best: layout.SegmentInfo | None = None  # the furthest-reaching one starting <= need
    need = lo + 1
    while need <= hi:
        while i < len(ordered) and ordered[i].first <= need:
            if best is None or ordered[i].last > best.last:
                best = ordered[i]
            i += 1
        if best is None or best.last < need:
            after = min((s.first for s in segs if s.first > need), default=None)
            upto = min(hi, after - 1) if after is not None else hi
            raise MissingObject(
                f"txids {need}..{upto} of timeline {timeline} are missing: no segment under "
                f"{layout.log_prefix(db, timeline)} covers txid {need}",
                layout.log_prefix(db, timeline))
        last = min(best.last, hi)
        out.append((best, need, last))
        need = last + 1
    return out


def _plan(store: ObjectStore, db: str, chain: list[Timeline], target: int | None) -> _Plan:
    segs, snaps = _listings(store, db, chain)
    leaf = chain[0]
    if target is None:
        target = _head(leaf, segs[leaf.id], snaps[leaf.id])
    history = spans(chain, target)  # root first
    base: layout.SnapshotInfo | None = None
    base_span = 0
    for i in range(len(history) - 1, -1, -1):
        span = history[i]
        assert span.hi is not None
        usable = [s for s in snaps[span.timeline] if span.lo <= s.txid <= span.hi]
        if usable:
            base, base_span = usable[-1], i
            break
    if base is None:
        raise MissingObject(f"no snapshot at or before txid {target} in the history of "
                            f"timeline {leaf.id} of database {db!r}",
                            layout.snapshot_prefix(db, leaf.id))
    plan = _Plan(target, base, [])
    done = base.txid
    for span in history[base_span:]:
        assert span.hi is not None
        check_chain(span.timeline, segs[span.timeline], max(done, span.lo), span.hi)
        if span.hi > done:
            plan.segments += _cover(segs[span.timeline], span.timeline, db,
                                    max(done, span.lo), span.hi)
            done = span.hi
    return plan


def check_plan(store: ObjectStore, db: str, timeline: str, txid: int | None = None) -> None:
    """Raise what a restore of ``timeline`` at ``txid`` would raise from the listing alone
    (a missing object, a gap, a fork), reading no data: what a branch created at that point
    checks, in time constant in the size of the database."""
    _plan(store, db, ancestry(store, db, timeline), txid)


def restore(store: ObjectStore, db: str, timeline: str, dest: str | Path, *,
            txid: int | None = None, timestamp: float | None = None) -> Restored:
    """Write the database of ``timeline`` as of ``txid`` / ``timestamp`` (default: its head)
    to ``dest``, replacing it atomically. Removes ``dest``'s stale -wal and -shm first,
    so the caller must not have ``dest`` open."""
    if txid is not None and timestamp is not None:
        raise ValueError("give txid or timestamp, not both")
    chain = ancestry(store, db, timeline)
    if timestamp is not None:
        txid = resolve_time(store, db, chain, timestamp)
    plan = _plan(store, db, chain, txid)
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".restoring")
    try:
        result = _write(store, plan, tmp)
        for suffix in ("-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{dest}{suffix}")
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return result


def _write(store: ObjectStore, plan: _Plan, path: Path) -> Restored:
    snap_key = plan.snapshot.key
    data = fetch(store, snap_key, "snapshot")
    with open(path, "wb") as out:
        header = write_image(data, out, snap_key)
    del data
    if header.txid != plan.snapshot.txid:
        raise CorruptObject(f"snapshot {snap_key} holds txid {header.txid}, its key says "
                            f"{plan.snapshot.txid}", snap_key)
    page_size, db_pages, when = header.page_size, header.db_pages, header.time
    expected = header.txid + 1
    applied: list[str] = []
    fd = os.open(path, os.O_RDWR)
    fetched = download(store, [seg for seg, _, _ in plan.segments])
    try:
        for (seg, first, last), (_, raw) in zip(plan.segments, fetched, strict=True):
            key = seg.key
            commits = read_segment(seg, raw)
            del raw
            for commit in commits:
                if commit.txid < first or commit.txid > last:
                    continue
                if commit.txid != expected:
                    raise MissingObject(f"segment {key} starts at txid {commit.txid}, "
                                        f"restore needs {expected} next", key)
                if page_size and commit.page_size != page_size:
                    raise CorruptObject(f"segment {key}: txid {commit.txid} has page size "
                                        f"{commit.page_size}, the database {page_size}", key)
                apply_commit(fd, commit)
                page_size, db_pages, when = commit.page_size, commit.db_pages, commit.time
                expected += 1
            applied.append(key)
        if expected != plan.target + 1:
            raise MissingObject(f"restore reached txid {expected - 1}, not {plan.target}")
        os.ftruncate(fd, db_pages * page_size)
        os.fsync(fd)
    finally:
        fetched.close()  # on a failure: no more downloads
        os.close(fd)
    return Restored(plan.target, when, page_size, db_pages, snap_key, tuple(applied))


def apply_commit(fd: int, commit: Commit) -> None:
    """Write a commit's pages into a database file (not its size: the caller truncates)."""
    size = commit.page_size
    for pgno, page in commit.frames:
        os.pwrite(fd, page, (pgno - 1) * size)


def resolve_time(store: ObjectStore, db: str, chain: list[Timeline], when: float) -> int:
    """The txid of the last commit at or before ``when`` in the history of chain[0].

    MissingObject if ``when`` is before the earliest restorable point.
    """
    segs, snaps = _listings(store, db, chain)
    leaf = chain[0]
    history = spans(chain, _head(leaf, segs[leaf.id], snaps[leaf.id]))
    ordered: list[tuple[layout.SegmentInfo, int, int]] = []  # (segment, first, last) in use
    for span in history:
        assert span.hi is not None
        for seg in segs[span.timeline]:
            lo, hi = max(seg.first, span.lo + 1), min(seg.last, span.hi)
            if lo <= hi:
                ordered.append((seg, lo, hi))
    target = history[-1].hi
    assert target is not None
    for seg, lo, hi in ordered:
        if seg.last_time <= when:  # key time rounds up: every commit in it is <= when
            continue
        commits = read_segment(seg, fetch(store, seg.key, "segment"))
        later = [c.txid for c in commits if lo <= c.txid <= hi and c.time > when]
        if later:
            target = later[0] - 1
            break
    # That state is restorable at `when` if its commit is in the log (so its time is known
    # to be <= when), or a snapshot at exactly that txid is no later than `when`.
    if any(lo <= target <= hi for _, lo, hi in ordered):
        return target
    earlier = False  # a snapshot before target: the window starts before it
    for span in history:
        assert span.hi is not None
        if any(s.txid == target and s.time <= when and span.lo <= s.txid <= span.hi
               for s in snaps[span.timeline]):
            return target
        earlier = earlier or any(s.txid < target and s.time <= when and
                                 span.lo <= s.txid <= span.hi for s in snaps[span.timeline])
    if earlier:  # inside the window, yet no object holds the commit: a hole in the log
        _plan(store, db, chain, target)  # raises MissingObject naming the missing txids
        return target
    raise MissingObject(f"no restorable point at or before {when} in the history of timeline "
                        f"{leaf.id} of database {db!r} (it is before the history window)")


def history(store: ObjectStore, db: str, timeline: str) -> History:
    """The earliest and latest points a branch on ``timeline`` can be restored to."""
    chain = ancestry(store, db, timeline)
    segs, snaps = _listings(store, db, chain)
    leaf = chain[0]
    target = _head(leaf, segs[leaf.id], snaps[leaf.id])
    earliest: Point | None = None
    latest = Point(target, 0.0)
    for span in spans(chain, target):
        assert span.hi is not None
        for snap in snaps[span.timeline]:
            if span.lo <= snap.txid <= span.hi:
                if earliest is None:
                    earliest = Point(snap.txid, snap.time)
                if snap.txid == target:
                    latest = Point(target, snap.time)
        for seg in segs[span.timeline]:
            if seg.first <= target <= seg.last and span.lo < target <= span.hi:
                latest = Point(target, seg.last_time)
    if earliest is None:
        raise MissingObject(f"timeline {leaf.id} of database {db!r} has no snapshot in its "
                            f"history", layout.snapshot_prefix(db, leaf.id))
    return History(earliest, latest)


__all__ = ["History", "LogError", "Point", "Restored", "check_plan", "history", "resolve_time",
           "restore"]
