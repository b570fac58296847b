"""Retention: delete segments and snapshots older than the history window, unless needed.

For every live branch the store must still be able to restore any point from
the start of the window to its head; for every timeline a needed child forked
from, the state at the fork point. Each such requirement is met by the nearest
snapshot at or before it plus the log after that snapshot; a timeline with no
such snapshot passes the requirement on to its parent at its fork point.
Everything else is deleted, including timelines no branch needs any more.
Young timelines (within ``grace``) count as live, so a branch being created
while retention runs cannot lose its parent.

A segment whose txids another segment of its timeline also holds (compaction
merged it into that one) is deleted too, once the covering segment has been in
the store for ``grace`` (by the listing's modification time): a restore that
listed the small segments just before the merge landed still finds them. The
covering segment stays: among segments with the same range, one always does.

Only committed objects are history (``timeline.committed``). An object a fenced-out
writer stored (a later epoch started at or below its last txid) can never become
history and is deleted; an object of the current epoch beyond the head may be about
to be committed and is kept. Branches are those of the database record, its deleted
incarnations included (they are restorable until the engine expires them), and the
timelines a sealed timeline's unfinished operation will point branches at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.log import layout
from shoal.log.branch import intended, load_record, referenced
from shoal.log.timeline import (
    Timeline,
    committed,
    covered,
    list_timelines,
    segments,
    snapshots,
)
from shoal.storage.base import ObjectStore


@dataclass
class RetentionReport:
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _depth(timeline: Timeline, timelines: dict[str, Timeline]) -> int:
    depth = 0
    cur: Timeline | None = timeline
    while cur is not None and cur.parent is not None and depth <= len(timelines):
        cur = timelines.get(cur.parent)
        depth += 1
    return depth


def _superseded(segs: dict[str, list[layout.SegmentInfo]], settled: float) -> set[str]:
    """Segments covered by another of their timeline stored at or before ``settled`` (a
    store that reports no modification times keeps them until the window drops them)."""
    out: set[str] = set()
    for found in segs.values():
        out |= covered(found, lambda s: s.modified is not None and s.modified <= settled)
    return out


def _pending(timeline: Timeline, obj: layout.SegmentInfo | layout.SnapshotInfo) -> bool:
    """Stored by the timeline's current writer beyond the head: its commit may be on the
    way."""
    head = timeline.head
    return (head is not None and timeline.sealed is None and obj.epoch == head.epoch
            and obj.txids[1] > head.txid)


def apply_retention(store: ObjectStore, db: str, *, now: float, window: float,
                    grace: float = 3600.0, dry_run: bool = False) -> RetentionReport:
    """Delete what no restore inside the window (and no branch) needs; report what it did."""
    start = now - window
    timelines = list_timelines(store, db)
    live = referenced(load_record(store, db))
    for tid in list(live):
        if tid in timelines:
            live |= intended(timelines[tid])
    live |= {t.id for t in timelines.values() if t.created_at >= now - grace}
    segs: dict[str, list[layout.SegmentInfo]] = {}
    snaps: dict[str, list[layout.SnapshotInfo]] = {}
    dead: list[str] = []  # stored by fenced-out writers: never history
    for tid, timeline in timelines.items():
        listed_segs, listed_snaps = segments(store, db, tid), snapshots(store, db, tid)
        segs[tid], snaps[tid] = committed(timeline, listed_segs, listed_snaps)
        kept = {o.key for o in segs[tid]} | {o.key for o in snaps[tid]}
        stored: list[layout.SegmentInfo | layout.SnapshotInfo] = [*listed_segs, *listed_snaps]
        dead += [o.key for o in stored if o.key not in kept and not _pending(timeline, o)]

    # requirement (a, b): every txid in [a, b] restorable (b None: up to the head)
    needs: dict[str, list[tuple[int, int | None]]] = {t: [] for t in timelines}
    for tid in live & timelines.keys():
        timeline = timelines[tid]
        recent = [s for s in segs[tid] if s.last_time >= start and s.last > timeline.fork_txid]
        if recent:
            a = max(timeline.fork_txid, recent[0].first - 1)
        else:
            a = max([timeline.fork_txid] + [s.last for s in segs[tid]] +
                    [s.txid for s in snaps[tid]])
        needs[tid].append((a, None))

    keep: set[str] = set()
    for tid in sorted(timelines, key=lambda t: -_depth(timelines[t], timelines)):
        timeline = timelines[tid]
        for a, b in needs[tid]:
            bases = [s for s in snaps[tid] if timeline.fork_txid <= s.txid <= a]
            floor = bases[-1].txid if bases else timeline.fork_txid
            if not bases and timeline.parent is not None and timeline.parent in timelines:
                needs[timeline.parent].append((timeline.fork_txid, timeline.fork_txid))
            keep.update(s.key for s in snaps[tid]
                        if s.txid >= floor and (b is None or s.txid <= b))
            keep.update(s.key for s in segs[tid]
                        if s.last > floor and (b is None or s.first <= b))

    keep -= _superseded(segs, now - grace)

    report = RetentionReport()
    doomed = [t for t in timelines if t not in live and not needs[t]]
    doomed_records = [layout.timeline_key(db, t) for t in doomed]
    for tid in timelines:
        for key in [s.key for s in snaps[tid]] + [s.key for s in segs[tid]]:
            (report.kept if key in keep else report.deleted).append(key)
    for tid in doomed:  # a timeline gone: its replicas' generation cuts go with it
        report.deleted += [info.key for info in store.list(layout.sync_prefix(db, tid))]
    report.deleted += dead + doomed_records
    if not dry_run:
        for key in report.deleted:  # data first, records last: a rerun finishes the job
            store.delete(key)
    return report
