"""Compaction: merge runs of small segments into one, so that restore GETs few objects.

The shipper uploads a segment per ``sync_interval`` (local durability) or per group
commit (remote): a branch with steady small writes leaves thousands of small segments
after its last snapshot, and restore, which is what a stateless node does on the
first open of a branch, GETs every one of them (20-50 ms each on S3). Compaction
downloads a run of consecutive small segments that are at least ``min_age`` old and
uploads their commits, unchanged, as one segment named by the txids they span
(write-once). Every commit is still there, so point-in-time restore keeps its
per-commit precision; restore's plan takes the segment that reaches furthest, so it
reads the merged one instead of the small ones.

Compaction never deletes: the small segments stay until retention finds them covered
by a segment that has been in the store for its ``grace``, so a restore that listed
them a moment before the merge still finds every one. A corrupt or missing small
segment stops its run with a LogError naming it; nothing is written for that run.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from shoal.log import layout
from shoal.log.branch import list_branches
from shoal.log.errors import CorruptObject, LogConflict, LogError
from shoal.log.restore import download, fetch, read_segment
from shoal.log.segment import Commit, decode_segment, encode_segment
from shoal.log.timeline import Timeline, covered, list_timelines, listing
from shoal.storage.base import ObjectStore, PreconditionFailed

log = logging.getLogger("shoal.log.compaction")

MIN_AGE = 60.0  # seconds after its last commit before a segment is merged
TARGET_BYTES = 4 << 20  # listed (compressed) bytes of a merged segment, about
MAX_SEGMENTS = 4096  # segments merged into one, at most
MIN_SEGMENTS = 8  # shorter runs wait for more segments
# Page bytes of a merged segment, at most (twice a shipped segment's max_segment_bytes):
# restore decodes one segment at a time, so this bounds its memory whatever the pages
# compress to.
MAX_PAGE_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class Merge:
    """One merged segment and the segments it covers."""

    timeline: str
    key: str
    first: int
    last: int
    sources: tuple[str, ...]
    created: bool  # False: an earlier run had already stored the same merge


@dataclass
class CompactionReport:
    """What a pass merged, and the runs it left as they were (each error names the object)."""

    merges: list[Merge] = field(default_factory=list)
    errors: list[LogError] = field(default_factory=list)  # one per run that stopped

    def summary(self) -> str:
        """One line for the log: how many segments became how many, per timeline."""
        done = [m for m in self.merges if m.created]
        ranges = ", ".join(
            f"timeline {tid}: txids " + " ".join(f"{m.first}..{m.last}" for m in group)
            for tid, group in itertools.groupby(done, key=lambda m: m.timeline))
        return (f"merged {sum(len(m.sources) for m in done)} segments into {len(done)}"
                + (f" ({ranges})" if ranges else ""))


def compact(store: ObjectStore, db: str, *, now: float, min_age: float = MIN_AGE,
            target_bytes: int = TARGET_BYTES, max_segments: int = MAX_SEGMENTS,
            min_segments: int = MIN_SEGMENTS, max_page_bytes: int = MAX_PAGE_BYTES,
            keep_going: Callable[[], bool] = lambda: True) -> CompactionReport:
    """Merge the runs of small segments of every timeline of ``db``; delete nothing.

    Newest runs first (a restore to the head reads those); no run starts once
    ``keep_going`` says no, so a backlog is worked off over several passes."""
    report = CompactionReport()
    min_segments = max(2, min_segments)
    timelines = list_timelines(store, db)
    todo = ((timeline, run) for timeline in _branch_timelines(store, db, timelines)
            for run in reversed(plan(listing(store, db, timelines[timeline])[0], now=now,
                                     min_age=min_age,
                                     target_bytes=target_bytes, max_segments=max_segments,
                                     min_segments=min_segments)))
    for timeline, run in todo:
        if not keep_going():
            break
        try:
            merge = merge_run(store, db, timeline, run, min_segments=min_segments,
                              max_page_bytes=max_page_bytes)
        except LogError as exc:
            report.errors.append(exc)
            continue
        if merge is not None:
            report.merges.append(merge)
    report.merges.sort(key=lambda m: (m.timeline, m.first))
    return report


def _branch_timelines(store: ObjectStore, db: str, timelines: dict[str, Timeline]) -> list[str]:
    """The timelines some branch reads: its own and its ancestors'. The others (deleted
    branches) are retention's to remove, not worth merging first."""
    out: set[str] = set()
    for branch in list_branches(store, db):
        tid: str | None = branch.timeline
        while tid is not None and tid in timelines and tid not in out:
            out.add(tid)
            tid = timelines[tid].parent
    return sorted(out)


def plan(segs: list[layout.SegmentInfo], *, now: float, min_age: float, target_bytes: int,
         max_segments: int, min_segments: int) -> list[list[layout.SegmentInfo]]:
    """The runs to merge, from a listing alone: consecutive segments (each starting right
    after the previous one ends) that no other segment covers, whose last commit is
    ``min_age`` old and that are below half of ``target_bytes`` (a bigger one is big
    enough already, and is not downloaded again at every pass); each run holds at most
    ``target_bytes`` and ``max_segments``, and shorter runs than ``min_segments`` wait."""
    hidden = covered(segs)
    runs: list[list[layout.SegmentInfo]] = []
    run: list[layout.SegmentInfo] = []
    size = 0
    for seg in sorted(segs, key=lambda s: (s.first, s.last)):
        if seg.key in hidden:
            continue
        small = seg.last_time <= now - min_age and seg.size < target_bytes // 2
        if (small and run and seg.first == run[-1].last + 1 and len(run) < max_segments
                and size + seg.size <= target_bytes):
            run.append(seg)
            size += seg.size
            continue
        if len(run) >= min_segments:
            runs.append(run)
        run, size = ([seg], seg.size) if small else ([], 0)
    if len(run) >= min_segments:
        runs.append(run)
    return runs


def merge_run(store: ObjectStore, db: str, timeline: str, run: list[layout.SegmentInfo], *,
              min_segments: int = MIN_SEGMENTS,
              max_page_bytes: int = MAX_PAGE_BYTES) -> Merge | None:
    """Download and verify the run, then upload its commits as one segment. The run ends
    early where its pages would pass ``max_page_bytes`` (the rest waits for the next
    pass); None if that leaves fewer than ``min_segments``."""
    taken, commits = _read_run(store, run, max_page_bytes)
    if len(taken) < min_segments:
        return None
    key = layout.segment_key(db, timeline, taken[0].first, taken[-1].last, commits[-1].time,
                             taken[-1].epoch, taken[-1].start)
    created = _upload(store, key, encode_segment(commits), commits)
    return Merge(timeline, key, taken[0].first, taken[-1].last,
                 tuple(s.key for s in taken), created)


def _read_run(store: ObjectStore, run: list[layout.SegmentInfo], max_page_bytes: int
              ) -> tuple[list[layout.SegmentInfo], list[Commit]]:
    """The leading segments of the run within max_page_bytes, and their commits."""
    taken: list[layout.SegmentInfo] = []
    commits: list[Commit] = []
    pages = 0
    fetched = download(store, run)
    try:
        for seg, data in fetched:
            got = read_segment(seg, data)
            size = sum(c.size for c in got)
            if taken and pages + size > max_page_bytes:
                break
            taken.append(seg)  # contiguous: plan() checked the keys, read_segment the bytes
            commits += got
            pages += size
    finally:
        fetched.close()
    return taken, commits


def _upload(store: ObjectStore, key: str, data: bytes, commits: list[Commit]) -> bool:
    """Store the merged segment write-once; False if an earlier run already stored it."""
    try:
        store.put(key, data, if_none_match="*")
        return True
    except PreconditionFailed:
        pass
    existing = fetch(store, key, "segment")
    try:
        _, held = decode_segment(existing, key)
    except CorruptObject as exc:  # a cut-short earlier upload: restore would stop on it
        log.warning("replacing %s: %s", key, exc)
        store.put(key, data)
        return True
    if held != commits:
        raise LogConflict(f"segment {key} holds other commits than the segments it would "
                          f"merge: another writer ships this timeline", key)
    return False
