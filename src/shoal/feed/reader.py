"""Reading the feed: a branch's committed row changes after a position, from segments.

Every commit's row changes travel in its segment (``log/segment.py``, version 2), so the
feed is read from the same objects as the history, under the same fencing: the leader's
recent segments in memory (``log/feed.py``), the object store for anything older, and
never a commit that is not durable (a failover cannot take back what a consumer saw).

A **position** is (txid, index): after change ``index`` of commit ``txid`` (``index`` None:
after the whole commit). A **cursor** is a position as a string that is also a bookmark
(``engine/database.py``): database, branch, txid, timeline and the index, so a consumer
can read the database at its cursor (the state after that whole commit).

Commits whose changes were not captured (capture off when they were made, history from
before the feed, or txids the store holds only in a snapshot: a re-based log, VACUUM)
become one ``uncaptured`` event per run of such txids: the consumer learns that changes
may be missing there, never silently.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shoal.feed.format import OPS, Change, decode_changes
from shoal.log.errors import CorruptObject
from shoal.log.restore import download, furthest
from shoal.log.segment import Captured, read_changes
from shoal.log.timeline import Timeline, listing
from shoal.storage.base import ObjectStore

UNCAPTURED = "uncaptured"
EVENT_OPS = (*OPS, UNCAPTURED)
STORE_BYTES = 8 << 20  # segment bytes one page may download, about (the first is whole)


@dataclass(frozen=True, slots=True)
class Position:
    """After change ``index`` of commit ``txid``; ``index`` None: after the whole commit."""

    txid: int
    index: int | None = None

    def before(self, txid: int, index: int) -> bool:
        """Whether change ``index`` of commit ``txid`` comes after this position."""
        if txid != self.txid:
            return txid > self.txid
        return self.index is not None and index > self.index


@dataclass(frozen=True, slots=True)
class Event:
    """One row change of a commit, or a run of commits with unknown changes (``change``
    None: txids ``first``..``txid``)."""

    txid: int
    index: int
    time: float
    change: Change | None
    first: int = 0  # an uncaptured run's first txid

    @property
    def op(self) -> str:
        return self.change.op if self.change is not None else UNCAPTURED

    @property
    def position(self) -> Position:
        return Position(self.txid, None if self.change is None else self.index)


@dataclass(frozen=True, slots=True)
class Filter:
    """Which events a consumer wants: by table and by op (None: all)."""

    tables: frozenset[str] | None = None
    ops: frozenset[str] | None = None

    def wants(self, change: Change) -> bool:
        """Whether the consumer reads this change (an uncaptured run it always reads: it
        must learn of a possible gap, whatever it filters)."""
        return ((self.tables is None or change.table in self.tables)
                and (self.ops is None or change.op in self.ops))


ALL = Filter()


def events(commits: Iterable[Captured], start: Position, limit: int,
           wanted: Filter = ALL, budget: float = math.inf) -> tuple[list[Event], Position]:
    """The events after ``start`` in ``commits`` (consecutive, in txid order), up to
    ``limit``, and the position they reach: past every commit read whole, even one whose
    changes the filter dropped, so that a filtering consumer moves on. A page that holds
    events reads no further commit once it read ``budget`` bytes of encoded changes (so a
    page of large rows stays about max_response_bytes). ValueError if a commit's changes
    do not decode."""
    out: list[Event] = []
    spent = 0
    reached = start
    run: tuple[int, int, float] | None = None  # an uncaptured run: (first, last, time)
    for commit in commits:
        if commit.txid <= start.txid and not (commit.txid == start.txid
                                              and start.index is not None):
            continue
        if commit.changes is None:
            first = run[0] if run is not None else commit.txid
            run = (first, commit.txid, commit.time)
            continue
        if run is not None:
            if len(out) >= limit:
                return out, reached
            out.append(Event(run[1], 0, run[2], None, run[0]))
            reached, run = Position(run[1]), None
        if out and spent + len(commit.changes) > budget:
            return out, reached
        spent += len(commit.changes)
        for index, change in enumerate(decode_changes(commit.changes)):
            if not start.before(commit.txid, index):
                continue
            if not wanted.wants(change):
                continue
            event = Event(commit.txid, index, commit.time, change)
            if len(out) >= limit:
                return out, reached
            out.append(event)
            reached = event.position
        reached = Position(commit.txid)
    if run is not None and len(out) < limit:
        out.append(Event(run[1], 0, run[2], None, run[0]))
        reached = Position(run[1])
    return out, reached


@dataclass(frozen=True, slots=True)
class ChangesPage:
    """What one read of a branch's feed found: its events, and the position they reach
    (the next read's start), on the branch's current timeline."""

    database: str
    branch: str
    timeline: str
    events: list[Event]
    reached: Position


class Expired(Exception):
    """The store no longer holds the changes after a position (retention deleted them):
    ``earliest`` is the first position it can serve."""

    def __init__(self, earliest: int):
        super().__init__(f"changes are kept from txid {earliest + 1} on")
        self.earliest = earliest


def stored(store: ObjectStore, db: str, timeline: Timeline, after: int, upto: int,
           max_bytes: int = STORE_BYTES) -> list[Captured]:
    """Worker thread: the committed commits after txid ``after`` up to ``upto`` (the
    durable head, at most) from the store, as many as about ``max_bytes`` of segments
    hold; txids no segment covers (a re-based log) as uncaptured commits. Expired if the
    first of them is no longer kept."""
    if upto <= after:
        return []
    segs, _ = listing(store, db, timeline)
    useful = sorted((s for s in segs if s.last > after and s.first <= upto),
                    key=lambda s: (s.first, -s.last))
    if not useful or useful[0].first > after + 1:
        kept = min((s.first for s in segs), default=None)
        if kept is None or kept > after + 1:
            raise Expired((kept or upto + 1) - 1)
    plan = furthest(segs, after, upto, max_bytes)
    out: list[Captured] = []
    expect = after + 1
    for seg, data in download(store, plan):
        header, found = read_changes(data, seg.key)
        if (header.first_txid, header.last_txid) != (seg.first, seg.last):
            raise CorruptObject(f"segment {seg.key} holds txids {header.first_txid}.."
                                f"{header.last_txid}, its key says {seg.first}..{seg.last}",
                                seg.key)
        out += _gap(expect, seg.first - 1, seg.last_time)
        out += [c for c in found if expect <= c.txid <= upto]
        expect = max(expect, seg.last + 1)
    return out


def _gap(first: int, last: int, when: float) -> Sequence[Captured]:
    """Txids first..last, which no segment holds: uncaptured (their time: at most ``when``)."""
    return [Captured(txid, when, None) for txid in range(first, last + 1)]
