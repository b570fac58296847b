"""Where the log keeps things in the object store: every key is built and parsed here.

::

    dbs/{db}/branches/{name}.json            branch name -> current timeline (mutable, CAS)
    dbs/{db}/timelines/{id}.json             timeline: parent, fork txid, created (write-once)
    dbs/{db}/log/{id}/{first}-{last}-{ms}.seg   segment: txids first..last, last commit time
    dbs/{db}/snap/{id}/{txid}-{ms}.snap      snapshot: full image at txid, its commit time

Data lives under a *timeline* id, not a branch name: deleting and re-creating a
branch, resetting it or restoring it in place gives the name a new timeline,
so old and new history never share keys. Txids and times are zero-padded, so
listing a prefix returns segments and snapshots in txid order; the last commit
time in a segment's key (rounded up to the millisecond) lets restore-by-time
and retention pick objects from a listing without downloading them. The shipper's
segments tile a timeline's txids; a compacted segment spans a run of them, and
overlaps them until retention deletes them (see compaction.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from shoal.storage.base import ObjectInfo

_SEGMENT = re.compile(r"(\d{20})-(\d{20})-(\d{15})\.seg")
_SNAPSHOT = re.compile(r"(\d{20})-(\d{15})\.snap")


def _ms(t: float) -> int:
    """Milliseconds, rounded up: a key's time is never earlier than the commit's."""
    return max(0, math.ceil(round(t * 1000, 3)))


def database_prefix(db: str) -> str:
    return f"dbs/{db}/"


def branch_key(db: str, name: str) -> str:
    return f"dbs/{db}/branches/{name}.json"


def branches_prefix(db: str) -> str:
    return f"dbs/{db}/branches/"


def timeline_key(db: str, timeline: str) -> str:
    return f"dbs/{db}/timelines/{timeline}.json"


def timelines_prefix(db: str) -> str:
    return f"dbs/{db}/timelines/"


def log_prefix(db: str, timeline: str) -> str:
    return f"dbs/{db}/log/{timeline}/"


def snapshot_prefix(db: str, timeline: str) -> str:
    return f"dbs/{db}/snap/{timeline}/"


def segment_key(db: str, timeline: str, first: int, last: int, last_time: float) -> str:
    return f"{log_prefix(db, timeline)}{first:020d}-{last:020d}-{_ms(last_time):015d}.seg"


def snapshot_key(db: str, timeline: str, txid: int, time: float) -> str:
    return f"{snapshot_prefix(db, timeline)}{txid:020d}-{_ms(time):015d}.snap"


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """A segment as seen in a listing."""

    key: str
    first: int
    last: int
    last_time: float  # upper bound of the last commit's time (ms precision)
    size: int
    modified: float | None = field(default=None, compare=False)  # when written, if known


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A snapshot as seen in a listing."""

    key: str
    txid: int
    time: float  # upper bound of the commit time of txid (ms precision)
    size: int


def parse_segment(info: ObjectInfo) -> SegmentInfo | None:
    """The segment a listed key names, or None for a key that is not a segment."""
    m = _SEGMENT.fullmatch(info.key.rsplit("/", 1)[-1])
    if not m:
        return None
    return SegmentInfo(info.key, int(m[1]), int(m[2]), int(m[3]) / 1000, info.size,
                       info.modified)


def parse_snapshot(info: ObjectInfo) -> SnapshotInfo | None:
    """The snapshot a listed key names, or None for a key that is not a snapshot."""
    m = _SNAPSHOT.fullmatch(info.key.rsplit("/", 1)[-1])
    if not m:
        return None
    return SnapshotInfo(info.key, int(m[1]), int(m[2]) / 1000, info.size)
