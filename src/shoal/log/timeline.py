"""Timelines: lines of history that branches point at, and the one place a commit lands.

A timeline is ``(id, parent, fork_txid, created_at)``: its state at creation is
the parent timeline's state at ``fork_txid`` (a root starts empty at 0), and its
own commits are ``fork_txid + 1, fork_txid + 2, ...``. The history of a branch
at txid ``t`` is therefore a chain of spans, root first: each ancestor's own
commits up to where its child forked, then the branch's own commits up to t.
Creating a timeline writes one small record, which is what makes a branch free.

**The record is the commit point.** Besides those fixed fields, a timeline's record
holds its *head*: the last committed txid, and the *epoch* of the writer allowed to
extend it. Writing is a protocol of conditional writes on that one object, so the
store itself, not a node's belief about a lease, decides who committed:

1. *Fence* (:func:`fence`): before its first write, a writer reads the record and
   writes it back with ``If-Match`` as ``epoch + 1``, ``start = head + 1``. Two
   writers that read the same record cannot both win; each epoch has one writer.
2. *Commit* (:func:`advance`): after uploading a segment (its key names the epoch
   and its start), the writer moves the head to the segment's last txid with
   ``If-Match`` on the etag its own previous write returned. A writer whose record
   was fenced (or sealed) since fails here, and acknowledges nothing.
3. *Seal* (:func:`seal`): a metadata operation that takes a branch off the
   timeline (restore, reset, delete) first writes the record as sealed, naming its
   intent; nothing extends a sealed timeline, and whoever finds the seal can finish
   the intent (``branch.complete``).

Why two writers can never both acknowledge txid N: acknowledging N needs a
successful conditional write of the record from a head below N to a head at or
above N. Conditional writes of one object are totally ordered by the store, and
each succeeds only on the etag the previous one produced, so the record's versions
form one line; the write that first covers N is made by exactly one writer.

Objects a fenced writer stored before learning it lost (a segment uploaded, its
commit refused) stay in the store but are not history: an object of epoch ``e``
counts only if its last txid is at most the head and below the ``start`` of every
later epoch (:func:`committed`). Objects without an epoch (written before fencing
existed, or before a timeline's first fence) count while the record has no head.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from shoal.log import layout
from shoal.log.errors import CorruptObject, FencedOut, LogConflict, MissingObject, Sealed
from shoal.storage.base import NotFound, ObjectStore, PreconditionFailed

FENCE_TRIES = 8  # conditional writes a fence or seal tries against concurrent changes
TORN_RETRIES = 5  # rereads of a record that does not decode (a crash-prone store's torn write)


@dataclass(frozen=True, slots=True)
class Head:
    """A timeline's committed end and the writer allowed to extend it."""

    txid: int  # every commit up to this one is committed (its segment or snapshot stored)
    time: float  # commit time of txid (a floor for the next commit's time)
    epoch: int  # the current writer's epoch; 0 before the first fence
    start: int  # the first txid the current epoch may write: the head at its fence + 1
    node: str  # the node that took the current epoch ("" before the first fence)


@dataclass(frozen=True, slots=True)
class Timeline:
    database: str
    id: str
    parent: str | None  # parent timeline id; None for a database's first timeline
    fork_txid: int  # the parent's txid this timeline starts from (0 for a root)
    created_at: float
    head: Head | None = field(default=None, compare=False)  # None: never fenced
    sealed: dict[str, Any] | None = field(default=None, compare=False)  # the retiring intent
    etag: str | None = field(default=None, compare=False)  # the record's version, for CAS


@dataclass(frozen=True, slots=True)
class Span:
    """The own commits of one timeline that a history uses: txids in (lo, hi]."""

    timeline: str
    lo: int  # the timeline's fork txid: its state before its own first commit
    hi: int | None  # None: up to the timeline's head


def new_timeline_id() -> str:
    return secrets.token_hex(8)


def _encode(timeline: Timeline) -> bytes:
    raw: dict[str, Any] = {"database": timeline.database, "id": timeline.id,
                           "parent": timeline.parent, "fork_txid": timeline.fork_txid,
                           "created_at": timeline.created_at}
    if timeline.head is not None:
        raw["head"] = asdict(timeline.head)
    if timeline.sealed is not None:
        raw["sealed"] = timeline.sealed
    return json.dumps(raw, sort_keys=True).encode()


def create_timeline(store: ObjectStore, db: str, parent: str | None, fork_txid: int,
                    created_at: float) -> Timeline:
    """Write a new timeline record (If-None-Match). It has no head until its first fence."""
    timeline = Timeline(db, new_timeline_id(), parent, fork_txid, created_at)
    etag = store.put(layout.timeline_key(db, timeline.id), _encode(timeline),
                     if_none_match="*")
    return replace(timeline, etag=etag)


def _decode(data: bytes, key: str, etag: str | None = None) -> Timeline:
    try:
        raw = json.loads(data)
        head = raw.get("head")
        sealed = raw.get("sealed")
        if sealed is not None and not isinstance(sealed, dict):
            raise TypeError(sealed)
        return Timeline(str(raw["database"]), str(raw["id"]), raw["parent"],
                        int(raw["fork_txid"]), float(raw["created_at"]),
                        Head(int(head["txid"]), float(head["time"]), int(head["epoch"]),
                             int(head["start"]), str(head["node"])) if head else None,
                        sealed, etag)
    except (ValueError, KeyError, TypeError):
        raise CorruptObject(f"timeline record {key} is not valid", key) from None


T = TypeVar("T")


def _read(store: ObjectStore, key: str, decode: Callable[[bytes, str, str], T]) -> T:
    """Get and decode a mutable record; a record that does not decode is read again a few
    times first (a crash-prone store may show a write cut short until its writer retries)."""
    for attempt in range(TORN_RETRIES):
        blob = store.get(key)
        try:
            return decode(blob.data, key, blob.etag)
        except CorruptObject:
            if attempt == TORN_RETRIES - 1:
                raise
            time.sleep(0.05 * 2 ** attempt)
    raise AssertionError("unreachable")


def load_timeline(store: ObjectStore, db: str, timeline: str) -> Timeline:
    key = layout.timeline_key(db, timeline)
    try:
        return _read(store, key, _decode)
    except NotFound:
        raise MissingObject(f"timeline record {key} is missing", key) from None


def list_timelines(store: ObjectStore, db: str) -> dict[str, Timeline]:
    out: dict[str, Timeline] = {}
    for info in store.list(layout.timelines_prefix(db)):
        try:
            timeline = _read(store, info.key, _decode)
        except NotFound:
            continue  # removed by retention meanwhile
        out[timeline.id] = timeline
    return out


def ancestry(store: ObjectStore, db: str, timeline: str) -> list[Timeline]:
    """The timeline and its ancestors, leaf first; MissingObject if a record is gone."""
    chain = [load_timeline(store, db, timeline)]
    while chain[-1].parent is not None:
        if len(chain) > 10_000:
            raise CorruptObject(f"timeline {timeline} has a cycle in its ancestry")
        chain.append(load_timeline(store, db, chain[-1].parent))
    return chain


def spans(chain: list[Timeline], txid: int | None = None) -> list[Span]:
    """The spans (root first) of the history of chain[0] up to ``txid`` (None: its head)."""
    out: list[Span] = []
    hi = txid
    for timeline in chain:
        out.append(Span(timeline.id, timeline.fork_txid, hi))
        hi = timeline.fork_txid if hi is None else min(hi, timeline.fork_txid)
    out.reverse()
    return out


def segments(store: ObjectStore, db: str, timeline: str) -> list[layout.SegmentInfo]:
    """The timeline's listed segments in txid order (keys that are not segments are
    ignored), committed or not: see :func:`committed`."""
    found = (layout.parse_segment(i) for i in store.list(layout.log_prefix(db, timeline)))
    return [s for s in found if s is not None]


def covered(segs: Iterable[layout.SegmentInfo],
            can_cover: Callable[[layout.SegmentInfo], bool] = lambda seg: True) -> set[str]:
    """Keys of the segments whose every txid another segment (one ``can_cover`` accepts)
    also holds: what compaction left behind. Of two segments with the same range, the
    one with the smaller key counts as the cover, so one of them always stays."""
    out: set[str] = set()
    reach = -1  # furthest txid an eligible segment earlier in this order reaches
    for seg in sorted(segs, key=lambda s: (s.first, -s.last, s.key)):
        if seg.last <= reach:  # an earlier one starts at or before it and ends at or after
            out.add(seg.key)
        if can_cover(seg):
            reach = max(reach, seg.last)
    return out


def snapshots(store: ObjectStore, db: str, timeline: str) -> list[layout.SnapshotInfo]:
    """The timeline's snapshots in txid order."""
    found = (layout.parse_snapshot(i) for i in store.list(layout.snapshot_prefix(db, timeline)))
    return [s for s in found if s is not None]


Listed = TypeVar("Listed", layout.SegmentInfo, layout.SnapshotInfo)


def committed(timeline: Timeline, segs: Sequence[layout.SegmentInfo],
              snaps: Sequence[layout.SnapshotInfo]
              ) -> tuple[list[layout.SegmentInfo], list[layout.SnapshotInfo]]:
    """The listed objects that are the timeline's history: for a fenced timeline, an
    object of epoch ``e`` counts if its last txid is at most the head and below the
    start of every later epoch (the later epoch's writer found the head below it, so
    its writer's commit never landed). Before the first fence every object counts."""
    head = timeline.head
    if head is None:
        return list(segs), list(snaps)
    starts: dict[int, int] = {}
    objects: list[layout.SegmentInfo | layout.SnapshotInfo] = [*segs, *snaps]
    for obj in objects:
        if obj.epoch:
            starts[obj.epoch] = min(obj.start, starts.get(obj.epoch, obj.start))
    if head.epoch:
        starts[head.epoch] = min(head.start, starts.get(head.epoch, head.start))
    limit: dict[int, float] = {}  # epoch -> the lowest start of any later epoch
    lowest = float("inf")
    for epoch in sorted(starts, reverse=True):
        limit[epoch] = lowest
        lowest = min(lowest, starts[epoch])
    floor = lowest  # for objects of epoch 0: every fenced epoch started above them

    def keep(obj: layout.SegmentInfo | layout.SnapshotInfo) -> bool:
        last = obj.txids[1]
        return last <= head.txid and last < (limit.get(obj.epoch, floor) if obj.epoch
                                             else floor)

    return [s for s in segs if keep(s)], [s for s in snaps if keep(s)]


def listing(store: ObjectStore, db: str, timeline: Timeline
            ) -> tuple[list[layout.SegmentInfo], list[layout.SnapshotInfo]]:
    """The timeline's committed segments and snapshots, from one listing of each."""
    return committed(timeline, segments(store, db, timeline.id),
                     snapshots(store, db, timeline.id))


def check_chain(timeline: str, segs: Iterable[layout.SegmentInfo], lo: int = -1,
                hi: float = float("inf")) -> None:
    """CorruptObject naming both objects if two committed segments that touch txids
    ``lo+1..hi`` hold different histories: two ending at the same txid with different
    commit times, or two that overlap without one containing the other (compaction only
    ever merges whole segments). Restore refuses such a fork rather than pick a side."""
    used = sorted((s for s in segs if s.last > lo and s.first <= hi),
                  key=lambda s: (s.first, -s.last, s.key))
    by_last: dict[int, layout.SegmentInfo] = {}
    reach: layout.SegmentInfo | None = None  # the furthest-reaching segment so far
    for seg in used:
        other = by_last.get(seg.last)
        if other is not None and other.last_time != seg.last_time:
            raise CorruptObject(f"timeline {timeline} forks at txid {seg.last}: {other.key} "
                                f"and {seg.key} hold different commits", seg.key)
        by_last.setdefault(seg.last, seg)
        if reach is not None and seg.first <= reach.last < seg.last:
            raise CorruptObject(f"timeline {timeline} forks at txids {seg.first}.."
                                f"{reach.last}: {reach.key} and {seg.key} overlap", seg.key)
        if reach is None or seg.last > reach.last:
            reach = seg


def listed_head(store: ObjectStore, db: str, timeline: Timeline) -> tuple[int, float]:
    """(txid, commit time) of the timeline's committed end: the record's head, or for a
    timeline never fenced, the furthest object listed (its fork point if none)."""
    if timeline.head is not None:
        return timeline.head.txid, timeline.head.time
    txid, when = timeline.fork_txid, timeline.created_at
    for seg in segments(store, db, timeline.id):
        if seg.last > txid:
            txid, when = seg.last, seg.last_time
    for snap in snapshots(store, db, timeline.id):
        if snap.txid > txid:
            txid, when = snap.txid, snap.time
    return txid, when


def head(store: ObjectStore, db: str, timeline: Timeline) -> int:
    """The highest committed txid of the timeline (its fork txid if none)."""
    return listed_head(store, db, timeline)[0]


# -- writing: fence, commit, seal ------------------------------------------------------------
def _swap(store: ObjectStore, timeline: Timeline, new: Timeline) -> Timeline:
    """One conditional write of the record over ``timeline``'s version."""
    assert timeline.etag is not None, "a record read from the store (with its etag)"
    etag = store.put(layout.timeline_key(timeline.database, timeline.id), _encode(new),
                     if_match=timeline.etag)
    return replace(new, etag=etag)


def _take(store: ObjectStore, timeline: Timeline, node: str,
          check: Callable[[Timeline, int], None],
          sealed: Callable[[int], dict[str, Any]] | None = None) -> Timeline:
    """Write the record as a new epoch for ``node`` starting at its head (and sealed with
    ``sealed(head)``, if given), conditional on the version read; read again and retry on
    a lost race. ``check(record, head)`` raises when the record may not be taken."""
    db = timeline.database
    current = timeline
    for _ in range(FENCE_TRIES):
        if current.etag is None:
            current = load_timeline(store, db, timeline.id)
        txid, when = listed_head(store, db, current)
        check(current, txid)
        epoch = current.head.epoch if current.head is not None else 0
        new = replace(current, head=Head(txid, when, epoch + 1, txid + 1, node))
        if sealed is not None:
            new = replace(new, sealed=sealed(txid))
        try:
            return _swap(store, current, new)
        except PreconditionFailed:
            current = replace(current, etag=None)  # changed meanwhile: read it again
    raise LogConflict(f"timeline {timeline.id} of {db!r} kept changing while this node "
                      f"tried to take it", layout.timeline_key(db, timeline.id))


def fence(store: ObjectStore, timeline: Timeline, node: str,
          expect: int | None = None) -> Timeline:
    """Take a new epoch on the timeline for ``node`` (before its first write) and return
    the record as written. ``expect``: the head the writer's copy holds; LogConflict if
    the record's head is elsewhere (another writer moved on: the copy is stale). Sealed
    if a metadata operation retired the timeline."""
    key = layout.timeline_key(timeline.database, timeline.id)

    def check(current: Timeline, txid: int) -> None:
        if current.sealed is not None:
            raise Sealed(f"timeline {timeline.id} of {timeline.database!r} is retired "
                         f"({current.sealed.get('op', '?')}): reopen the branch", key)
        if expect is not None and txid != expect:
            raise LogConflict(f"timeline {timeline.id} of {timeline.database!r} is at txid "
                              f"{txid}, this copy at {expect}: another writer moved it on",
                              key)

    return _take(store, timeline, node, check)


def advance(store: ObjectStore, timeline: Timeline, obj: layout.SegmentInfo |
            layout.SnapshotInfo, when: float) -> Timeline:
    """The commit point of ``obj`` (stored already, under this writer's epoch): move the
    head to its last txid, conditional on this writer's last version of the record.

    If the condition fails, the record is read again: the object is committed if it counts
    as history now (an earlier attempt of this write landed, its answer lost); otherwise
    another writer fenced this one out, and FencedOut says so (nothing was committed).
    Returns the record as it now is: of another epoch if a fence came after the landed
    attempt, and then the caller must write no more (``Writer.commit`` stops)."""
    assert timeline.head is not None, "advance a fenced timeline"
    last = obj.txids[1]
    new = replace(timeline, head=replace(timeline.head, txid=max(last, timeline.head.txid),
                                         time=max(when, timeline.head.time)))
    try:
        return _swap(store, timeline, new)
    except PreconditionFailed:
        pass
    db = timeline.database
    key = layout.timeline_key(db, timeline.id)
    blob = store.get(key)
    mine = _encode(new)
    if len(blob.data) < len(mine) and mine.startswith(blob.data):  # our write, cut short
        etag = store.put(key, mine, if_match=blob.etag)
        return replace(new, etag=etag)
    current = _decode(blob.data, key, blob.etag)
    kept_segs, kept_snaps = committed(current, segments(store, db, timeline.id),
                                      snapshots(store, db, timeline.id))
    if obj.key in {s.key for s in kept_segs} | {s.key for s in kept_snaps}:
        return current
    holder = current.head
    who = ("it was retired by a branch operation" if current.sealed is not None else
           f"node {holder.node or '?'} took it at txid {holder.start - 1} (epoch "
           f"{holder.epoch})" if holder is not None else "its record was replaced")
    raise FencedOut(f"timeline {timeline.id} of {db!r}: txids {obj.txids[0]}..{last} were "
                    f"not committed: {who}", obj.key)


def seal(store: ObjectStore, timeline: Timeline, node: str,
         intent: Callable[[int], dict[str, Any]]) -> Timeline:
    """Retire the timeline: nothing extends it from here on. ``intent(head)`` names what
    the caller does next (built from the head at the moment of sealing, so that a state
    kept from it holds every commit). LogConflict if it is sealed already."""

    def check(current: Timeline, txid: int) -> None:
        if current.sealed is not None:
            raise LogConflict(f"timeline {timeline.id} of {timeline.database!r} was retired "
                              f"concurrently ({current.sealed.get('op', '?')})",
                              layout.timeline_key(timeline.database, timeline.id))

    return _take(store, timeline, node, check, intent)


class Writer:
    """This node's fenced hold on a timeline: the epoch its objects are stored under, and
    the commit point of each (thread-safe: the shipper and snapshots commit from I/O
    threads). Build it from the record :func:`fence` returned."""

    def __init__(self, store: ObjectStore, timeline: Timeline):
        assert timeline.head is not None and timeline.etag is not None
        self.store = store
        self.timeline = timeline
        self.out: FencedOut | None = None  # set once another writer took the timeline
        self._lock = threading.Lock()

    @property
    def epoch(self) -> int:
        assert self.timeline.head is not None
        return self.timeline.head.epoch

    @property
    def start(self) -> int:
        assert self.timeline.head is not None
        return self.timeline.head.start

    @property
    def txid(self) -> int:
        """The committed head as this writer last wrote or read it."""
        assert self.timeline.head is not None
        return self.timeline.head.txid

    def segment_key(self, first: int, last: int, last_time: float) -> str:
        return layout.segment_key(self.timeline.database, self.timeline.id, first, last,
                                  last_time, self.epoch, self.start)

    def snapshot_key(self, txid: int, when: float) -> str:
        return layout.snapshot_key(self.timeline.database, self.timeline.id, txid, when,
                                   self.epoch, self.start)

    def commit(self, obj: layout.SegmentInfo | layout.SnapshotInfo, when: float) -> None:
        """Make a stored object history (FencedOut if this writer was fenced out). A commit
        found to have landed just before another writer's fence is history, but this writer
        is out from then on: it never writes over the record of another epoch."""
        with self._lock:
            if self.out is not None:
                raise self.out
            record = advance(self.store, self.timeline, obj, when)
            head = record.head
            if head is None or head.epoch != self.epoch or record.sealed is not None:
                self.out = FencedOut(f"timeline {record.id} of {record.database!r} was taken "
                                     f"by node {head.node if head else '?'} after txid "
                                     f"{obj.txids[1]}", obj.key)
                return
            self.timeline = record
