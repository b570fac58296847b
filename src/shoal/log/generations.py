"""Generations: how libSQL's HTTP sync protocol (embedded replicas) numbers a branch's history.

A client of that protocol keeps its copy as (generation, frame): the database file at the
start of a generation (``GET /export/{g}``), then the generation's WAL frames, numbered from
1, which it writes into its own WAL at those positions (``GET /sync/{g}/{start}/{end}``). At
a generation's end it checkpoints its WAL and moves to ``g + 1``, frame 1. So generation
numbers must be dense along a branch, a (generation, frame) must always name the same frame,
and both must hold across a restore, which starts the branch again from another state.

- **Cuts.** Along the timeline a branch is on, generations are separated by *cuts*: txids
  c1 < c2 < ..., kept in the store (a thousand to an object, below: a cut, once made, never
  changes). Generation ``first + j`` for ``j`` below the number of cuts
  is *closed*: from the state at c_j (c_0: the timeline's fork) to the state at c_(j+1), as
  ONE commit holding the newest version of every page its commits changed. So a replica
  behind by a thousand commits downloads each changed page once, not once per commit.
  Generation ``first + cuts`` is *open*: none of its frames was ever served. A replica that
  asks for it when commits came after the last cut makes the leader cut it at the durable
  head (the next cut object), and reads it closed.
- ``first`` is kept in the branch's entry of the database record: random up to 2**30 for a
  new branch (1 for a branch made before replicas), so that a replica of another history
  (a database deleted and made again under its name, another branch's URL) almost surely asks
  for a generation this branch never had, and is told so rather than fed another database.
- A restore or reset moves the branch to a new timeline. Its record change sets the new
  ``first`` to the old line's open generation + 1 (the old line's cuts are counted while the
  branch is out of service, so none is made meanwhile) and keeps the old ``first``. The old
  open generation becomes the **bridge**: one commit writing every page of the new line's
  first state, which leaves a replica exactly at the restored state whatever it held. A
  replica in an older generation of the old line holds whole commits only: it is passed on
  (the generation's end) until it reaches the bridge. Two restores back: too far.
- A replica behind what the store still holds (retention) gets a snapshot: see
  ``engine/sync.py`` (``SyncAPI._behind``).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any

from shoal.log import layout
from shoal.log.errors import CorruptObject, LogConflict
from shoal.storage.base import NotFound, ObjectStore, PreconditionFailed

FIRST_MAX = 2**30  # a new branch's first generation is at most this: 3 billion stay above
ENTRY = ("generation", "previous")  # the keys a branch's record entry keeps of its line


@dataclass(frozen=True, slots=True)
class Line:
    """A timeline as one branch's generations see it: its fork, its first generation, and
    (after a restore or reset) the first generation of the line the branch was on before."""

    timeline: str
    fork_txid: int
    first: int
    previous: int | None = None

    def entry(self) -> dict[str, Any]:
        """What a branch's record entry keeps of it (``generation``, ``previous``)."""
        out: dict[str, Any] = {"generation": self.first}
        if self.previous is not None:
            out["previous"] = self.previous
        return out


def fresh() -> dict[str, Any]:
    """A new branch's entry fields: its first generation, drawn at random (see above)."""
    # mutate: harmless constant (any small offset keeps the first above 0, far below 2**32)
    return {"generation": secrets.randbelow(FIRST_MAX) + 1}


def line_of(entry: dict[str, Any]) -> Line:
    """A branch's current line from its record entry."""
    prev = entry.get("previous")
    return Line(str(entry["timeline"]), int(entry["fork_txid"]),
                int(entry.get("generation", 1)), None if prev is None else int(prev))


def moved(entry: dict[str, Any], cuts: int, timeline: str, fork_txid: int) -> Line:
    """The line of a branch moved off the line ``entry`` describes (which had ``cuts``
    cuts, so its open generation is ``first + cuts``) onto ``timeline`` at ``fork_txid``."""
    old = line_of(entry)
    return Line(timeline, fork_txid, old.first + cuts + 1, old.first)


class Kind(Enum):
    CLOSED = auto()  # one commit: the state at its base to the state at its end
    OPEN = auto()  # after the last cut: cut it first
    BRIDGE = auto()  # the old line's open generation: every page of the new line's start
    PASSED = auto()  # an older generation of the old line: a replica there moves on


@dataclass(frozen=True, slots=True)
class Place:
    kind: Kind
    index: int  # j, the generation's place on the line (CLOSED, OPEN); -1 otherwise


def place(line: Line, number: int, cuts: int) -> Place | None:
    """Where generation ``number`` is on a branch whose line is ``line`` with ``cuts``
    cuts; None if the branch never had it, or it is two restores back."""
    if number >= line.first:
        j = number - line.first
        if j < cuts:
            return Place(Kind.CLOSED, j)
        return Place(Kind.OPEN, j) if j == cuts else None
    if line.previous is None or number < line.previous:
        return None
    return Place(Kind.BRIDGE if number == line.first - 1 else Kind.PASSED, -1)


# -- cuts in the store ---------------------------------------------------------------------
# Cuts are kept CHUNK to an object (``{prefix}{chunk:08d}``: ``{"cuts": [txid, ...]}``), so a
# branch synced every second makes a few objects a day, not 86,400; a cut is added to the
# newest chunk with If-Match (a new chunk with If-None-Match), so two nodes cannot both make
# cut ``i``. Chunks are found by probing (``head``), not listing: counting costs O(log n).
CHUNK = 1000  # cuts an object holds


def cut_key(db: str, timeline: str, chunk: int) -> str:
    """The object holding cuts ``chunk * CHUNK`` .. ``(chunk + 1) * CHUNK - 1``."""
    return f"{layout.sync_prefix(db, timeline)}{chunk:08d}"


def _exists(store: ObjectStore, key: str) -> bool:
    try:
        store.head(key)
        return True
    except NotFound:
        return False  # mutate: harmless return (None is as false)


def _chunk(store: ObjectStore, db: str, timeline: str, chunk: int) -> tuple[list[int], str]:
    key = cut_key(db, timeline, chunk)
    blob = store.get(key)
    try:
        cuts = json.loads(blob.data)["cuts"]
        if not isinstance(cuts, list) or not all(
                isinstance(c, int) and not isinstance(c, bool) for c in cuts):
            raise TypeError(cuts)
    except (ValueError, KeyError, TypeError):
        raise CorruptObject(f"sync cuts {key} are not cuts", key) from None
    return cuts, blob.etag


def count_cuts(store: ObjectStore, db: str, timeline: str) -> int:
    """How many cuts the timeline has: the open generation's index."""
    if not _exists(store, cut_key(db, timeline, 0)):
        return 0
    # mutate: harmless constant (any first probe above 0 finds the same chunk)
    low, high = 0, 1  # chunk ``low`` exists; find the first that does not
    while _exists(store, cut_key(db, timeline, high)):
        # mutate: harmless constant (any growth factor above 1 finds the same chunk)
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        if _exists(store, cut_key(db, timeline, mid)):
            low = mid
        else:
            high = mid
    return low * CHUNK + len(_chunk(store, db, timeline, low)[0])


def read_cut(store: ObjectStore, db: str, timeline: str, index: int) -> int:
    """Cut ``index`` (0-based): the txid generation ``first + index`` ends at."""
    cuts, _ = _chunk(store, db, timeline, index // CHUNK)
    if index % CHUNK >= len(cuts):
        key = cut_key(db, timeline, index // CHUNK)
        raise CorruptObject(f"sync cuts {key} lack cut {index}", key)
    return cuts[index % CHUNK]


def make_cut(store: ObjectStore, db: str, timeline: str, index: int, txid: int) -> int:
    """Make cut ``index`` at ``txid`` unless it exists; the txid it holds (another node's,
    if it made it first). LogConflict if cut ``index - 1`` does not exist (the caller's
    count is stale: it counts again)."""
    chunk, at = divmod(index, CHUNK)
    key = cut_key(db, timeline, chunk)
    while True:
        if at == 0:
            try:
                store.put(key, json.dumps({"cuts": [txid]}).encode(), if_none_match="*")
                return txid  # mutate: harmless delete (the read below finds it)
            except PreconditionFailed:
                pass
        try:
            cuts, etag = _chunk(store, db, timeline, chunk)
        except NotFound:
            raise LogConflict(f"sync cuts {key} do not reach cut {index}", key) from None
        if len(cuts) > at:
            return cuts[at]
        if len(cuts) < at:
            raise LogConflict(f"sync cuts {key} do not reach cut {index}", key)
        try:
            store.put(key, json.dumps({"cuts": [*cuts, txid]}).encode(), if_match=etag)
        except PreconditionFailed:  # another node added one: read again
            continue
        return txid
