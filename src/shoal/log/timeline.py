"""Timelines: immutable lines of history that branches point at.

A timeline is ``(id, parent, fork_txid, created_at)``: its state at creation is
the parent timeline's state at ``fork_txid`` (a root starts empty at 0), and its
own commits are ``fork_txid + 1, fork_txid + 2, ...``. The history of a branch
at txid ``t`` is therefore a chain of spans, root first: each ancestor's own
commits up to where its child forked, then the branch's own commits up to t.
Records are tiny and write-once, which is what makes a branch free to create.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from shoal.log import layout
from shoal.log.errors import CorruptObject, MissingObject
from shoal.storage.base import NotFound, ObjectStore


@dataclass(frozen=True, slots=True)
class Timeline:
    database: str
    id: str
    parent: str | None  # parent timeline id; None for a database's first timeline
    fork_txid: int  # the parent's txid this timeline starts from (0 for a root)
    created_at: float


@dataclass(frozen=True, slots=True)
class Span:
    """The own commits of one timeline that a history uses: txids in (lo, hi]."""

    timeline: str
    lo: int  # the timeline's fork txid: its state before its own first commit
    hi: int | None  # None: up to the timeline's head


def new_timeline_id() -> str:
    return secrets.token_hex(8)


def create_timeline(store: ObjectStore, db: str, parent: str | None, fork_txid: int,
                    created_at: float) -> Timeline:
    """Write a new timeline record (write-once: If-None-Match)."""
    timeline = Timeline(db, new_timeline_id(), parent, fork_txid, created_at)
    store.put(layout.timeline_key(db, timeline.id),
              json.dumps(asdict(timeline), sort_keys=True).encode(), if_none_match="*")
    return timeline


def _decode(data: bytes, key: str) -> Timeline:
    try:
        raw = json.loads(data)
        return Timeline(str(raw["database"]), str(raw["id"]), raw["parent"],
                        int(raw["fork_txid"]), float(raw["created_at"]))
    except (ValueError, KeyError, TypeError):
        raise CorruptObject(f"timeline record {key} is not valid", key) from None


def load_timeline(store: ObjectStore, db: str, timeline: str) -> Timeline:
    key = layout.timeline_key(db, timeline)
    try:
        return _decode(store.get(key).data, key)
    except NotFound:
        raise MissingObject(f"timeline record {key} is missing", key) from None


def list_timelines(store: ObjectStore, db: str) -> dict[str, Timeline]:
    out: dict[str, Timeline] = {}
    for info in store.list(layout.timelines_prefix(db)):
        try:
            timeline = _decode(store.get(info.key).data, info.key)
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
    """The timeline's segments in txid order (keys that are not segments are ignored)."""
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


def head(store: ObjectStore, db: str, timeline: Timeline) -> int:
    """The highest txid of the timeline that is in the store (its fork txid if none)."""
    top = timeline.fork_txid
    for seg in segments(store, db, timeline.id):
        top = max(top, seg.last)
    for snap in snapshots(store, db, timeline.id):
        top = max(top, snap.txid)
    return top

