"""Generations: how libSQL's HTTP sync protocol (embedded replicas) numbers a branch's history.

A client of that protocol keeps its copy as (generation, frame): the database file at the
start of a generation (``GET /export/{g}``), then the WAL frames of the generation's commits,
numbered from 1 and written into its own WAL at those positions (``GET /sync/{g}/{s}/{e}``).
At a generation's end it checkpoints its WAL and moves to ``g + 1``, frame 1. So generation
numbers must be dense along a branch, a (generation, frame) must always name the same frame,
and both must hold across a restore, which starts the branch again from another state.

- Along the timeline a branch is on, generation ``j`` (0, 1, ...) holds the commits
  ``(fork + j*SPAN, fork + (j + 1)*SPAN]`` and starts from the state at ``fork + j*SPAN``;
  its number is ``first + j``. ``first`` is kept in the branch's entry of the database record:
  a random number up to 2**30 for a new branch (1 for a branch made before replicas), so that
  a replica of another history (a database deleted and created again under its name, another
  branch's URL) almost surely holds a generation this branch never had, and is told so rather
  than fed frames of another database. SPAN is fixed: clients hold positions numbered by it.
- A restore or reset moves the branch to a new timeline. Its record change (made after the
  old timeline is sealed, so the old head is final) sets the new ``first`` to the old
  timeline's last generation + 1 and keeps the old line as ``previous``. The old last
  generation then ends with a **bridge**: after its own commits, one commit writing every page
  of the new timeline's first state. Whatever state a client had, that commit leaves exactly
  the new state (every page written, the size set), so clients cross a restore by syncing.
- A client behind what the store still holds (retention) cannot be served: the protocol has
  no way to tell it to start again, so it gets a clear error (REPLICA_EXPIRED).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

SPAN = 1000  # commits per generation (fixed: clients' positions are numbered by it)
FIRST_MAX = 2**30  # a new branch's first generation is at most this: 3 billion stay above
ENTRY = ("generation", "previous")  # the keys a branch's record entry keeps of its line


@dataclass(frozen=True, slots=True)
class Line:
    """A timeline as one branch's generations see it: its fork, its first generation, and
    (after a restore or reset) the line the branch was on before, with its final head."""

    timeline: str
    fork_txid: int
    first: int
    previous: Line | None = None
    head: int | None = None  # a previous line's final head (None: the branch's current line)

    def last(self, head: int) -> int:
        """The number of the generation that holds ``head`` (the line's newest)."""
        return self.first + (head - self.fork_txid) // SPAN

    def entry(self) -> dict[str, Any]:
        """What a branch's record entry keeps of it (``generation``, ``previous``)."""
        out: dict[str, Any] = {"generation": self.first}
        if self.previous is not None:
            prev = self.previous
            out["previous"] = {"timeline": prev.timeline, "fork_txid": prev.fork_txid,
                               "generation": prev.first, "head": prev.head}
        return out


def fresh() -> dict[str, Any]:
    """A new branch's entry fields: its first generation, drawn at random (see above)."""
    # mutate: harmless constant (any small offset keeps the first above 0, far below 2**32)
    return {"generation": secrets.randbelow(FIRST_MAX) + 1}


def line_of(entry: dict[str, Any]) -> Line:
    """A branch's current line from its record entry."""
    prev = entry.get("previous")
    previous = None
    if isinstance(prev, dict):
        previous = Line(str(prev["timeline"]), int(prev["fork_txid"]),
                        int(prev["generation"]), head=int(prev["head"]))
    return Line(str(entry["timeline"]), int(entry["fork_txid"]),
                int(entry.get("generation", 1)), previous)


def moved(entry: dict[str, Any], head: int, timeline: str, fork_txid: int) -> Line:
    """The line of a branch moved off the line ``entry`` describes (sealed at ``head``) onto
    ``timeline`` forked at ``fork_txid``: numbered on from the old line's last generation."""
    old = line_of(entry)
    before = Line(old.timeline, old.fork_txid, old.first, head=head)
    return Line(timeline, fork_txid, before.last(head) + 1, before)


@dataclass(frozen=True, slots=True)
class Generation:
    """Generation ``number``: the state at ``base`` of ``timeline``, then its commits
    ``base + 1 .. end`` (``end`` None: open, up to the head, at most ``base + SPAN``), then
    (the last of a line a restore left) the bridge: every page of ``bridge``'s state."""

    number: int
    timeline: str
    base: int
    end: int | None
    bridge: tuple[str, int] | None = None  # (timeline, txid)

    def upto(self, head: int) -> int:
        """The last commit of this generation a client can have now (``head``: the line's
        durable head)."""
        return self.end if self.end is not None else min(head, self.base + SPAN)

    def closed(self, head: int) -> bool:
        """Whether no commit will join this generation any more."""
        return self.end is not None or head >= self.base + SPAN


def locate(line: Line, number: int, head: int) -> Generation | None:
    """Generation ``number`` of a branch whose current line is ``line`` (durable head
    ``head``); None if the branch has no such generation (a future one, or one older than
    the line before its last restore)."""
    if number >= line.first:
        base = line.fork_txid + (number - line.first) * SPAN
        if base > head:
            return None
        return Generation(number, line.timeline, base, None)
    prev = line.previous
    if prev is None or prev.head is None or number < prev.first:
        return None
    base = prev.fork_txid + (number - prev.first) * SPAN
    end = min(base + SPAN, prev.head)
    bridge = (line.timeline, line.fork_txid) if number == line.first - 1 else None
    return Generation(number, prev.timeline, base, end, bridge)
