"""Where the log keeps things in the object store: every key of the log is built and parsed
here (the catalog's other keys are engine/registry.py's, the lease's engine/lease.py's).

::

    catalog/databases/{db}.json              the database's record: its branches (name ->
                                             timeline) and deleted incarnations (CAS)
    dbs/{db}/timelines/{id}.json             timeline: parent, fork txid, created, and its
                                             head: txid, writer epoch (CAS: the commit point)
    dbs/{db}/log/{id}/{first}-{last}-{ms}-{epoch}-{start}.seg
                                             segment: txids first..last, last commit time,
                                             the writer's epoch and the txid it started at
    dbs/{db}/snap/{id}/{txid}-{ms}-{epoch}-{start}.snap
                                             snapshot: full image at txid, its commit time
    dbs/{db}/branches/{name}.json            (legacy) branch records before the database record
                                             held them; read until the first change migrates them

Data lives under a *timeline* id, not a branch name: deleting and re-creating a
branch, resetting it or restoring it in place gives the name a new timeline,
so old and new history never share keys. Txids and times are zero-padded, so
listing a prefix returns segments and snapshots in txid order; the last commit
time in a segment's key (rounded up to the millisecond) lets restore-by-time
and retention pick objects from a listing without downloading them. The shipper's
segments tile a timeline's txids; a compacted segment spans a run of them, and
overlaps them until retention deletes them (see compaction.py).

The ``-{epoch}-{start}`` suffix names the writer that stored an object (see
``timeline.py``: every writer of a timeline first takes a new epoch on its record,
starting at the head it found): an object of an epoch that a later epoch started at
or before its last txid was never committed (its writer was fenced out), and
restore ignores it. Keys without the suffix are epoch 0 (written before fencing, or
before the timeline's first fence).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from shoal.storage.base import ObjectInfo

_SEGMENT = re.compile(r"(\d{20})-(\d{20})-(\d{15})(?:-(\d{1,19})-(\d{1,19}))?\.seg")
_SNAPSHOT = re.compile(r"(\d{20})-(\d{15})(?:-(\d{1,19})-(\d{1,19}))?\.snap")


def _ms(t: float) -> int:
    """Milliseconds, rounded up: a key's time is never earlier than the commit's."""
    return max(0, math.ceil(round(t * 1000, 3)))


def database_prefix(db: str) -> str:
    return f"dbs/{db}/"


def database_key(db: str) -> str:
    return f"catalog/databases/{db}.json"


DATABASES_PREFIX = "catalog/databases/"


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


def sync_prefix(db: str, timeline: str) -> str:
    """Where embedded replicas' generation cuts of a timeline live (log/generations.py)."""
    return f"dbs/{db}/sync/{timeline}/"


def _writer(epoch: int, start: int) -> str:
    return f"-{epoch}-{start}" if epoch else ""


def segment_key(db: str, timeline: str, first: int, last: int, last_time: float,
                epoch: int = 0, start: int = 0) -> str:
    return (f"{log_prefix(db, timeline)}{first:020d}-{last:020d}-{_ms(last_time):015d}"
            f"{_writer(epoch, start)}.seg")


def snapshot_key(db: str, timeline: str, txid: int, time: float, epoch: int = 0,
                 start: int = 0) -> str:
    return (f"{snapshot_prefix(db, timeline)}{txid:020d}-{_ms(time):015d}"
            f"{_writer(epoch, start)}.snap")


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """A segment as seen in a listing."""

    key: str
    first: int
    last: int
    last_time: float  # upper bound of the last commit's time (ms precision)
    size: int
    modified: float | None = field(default=None, compare=False)  # when written, if known
    epoch: int = 0  # the writer's epoch (0: written before fencing)
    start: int = 0  # the first txid that epoch could write

    @property
    def txids(self) -> tuple[int, int]:
        return self.first, self.last


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A snapshot as seen in a listing."""

    key: str
    txid: int
    time: float  # upper bound of the commit time of txid (ms precision)
    size: int
    epoch: int = 0
    start: int = 0

    @property
    def txids(self) -> tuple[int, int]:
        return self.txid, self.txid


def parse_segment(info: ObjectInfo) -> SegmentInfo | None:
    """The segment a listed key names, or None for a key that is not a segment."""
    m = _SEGMENT.fullmatch(info.key.rsplit("/", 1)[-1])
    if not m:
        return None
    return SegmentInfo(info.key, int(m[1]), int(m[2]), int(m[3]) / 1000, info.size,
                       info.modified, int(m[4] or 0), int(m[5] or 0))


def parse_snapshot(info: ObjectInfo) -> SnapshotInfo | None:
    """The snapshot a listed key names, or None for a key that is not a snapshot."""
    m = _SNAPSHOT.fullmatch(info.key.rsplit("/", 1)[-1])
    if not m:
        return None
    return SnapshotInfo(info.key, int(m[1]), int(m[2]) / 1000, info.size, int(m[3] or 0),
                        int(m[4] or 0))
