"""Which nodes are in the cluster: a record per node in the shared object store.

Several ``shoal serve`` nodes share one object store and no coordination service, so
membership goes through the store too. Each node keeps one record,
``cluster/nodes/{node}.json`` (its id, advertised URL, host, pid, a sequence number, its
ttl), written with conditional puts as the store's lease is (``engine/lease.py``).

- **Taking the record.** A missing record is created (If-None-Match). One this node wrote
  from this host (a restart: the id is in the data directory, which one process holds) or
  one marked released is taken at once (If-Match). One written with this id from another
  host (a copy of the data directory) is taken only after its etag has stayed the same for
  ``ttl`` of this node's own clock; `join` gives up with STORE_IN_USE after ``wait``.
- **Holding it.** A thread rewrites the record every ``ttl / 4`` (If-Match on its own
  etag); membership counts as held for ``ttl * 3/4`` after the start of the last rewrite
  that succeeded. A rewrite that finds the record changed by someone else, or gone, loses
  membership for good: `on_lost` is called once and the thread stops. A rewrite whose
  answer was lost but which landed is recognised by its sequence number.
- **Liveness.** The same round lists ``cluster/nodes/`` once. A member's version is its
  listed (size, modification time); it is live while its version has been seen to change
  within ``ttl`` (the larger of this node's and its own) of this node's clock, a first
  sighting counting as a change. Modification times are compared for equality only, never
  with a clock, so no two hosts' clocks are compared; they must be finer than ``ttl / 4``
  (S3's are of a second). A record is read (GET) only when its key is new or its size
  changed: a node's rewrites keep their size except when the sequence number gains a
  digit, and a node that takes a record over pads its own past the old one's size, so a
  restart with another URL is read. (Not if the node left and joined again between two
  of the other's listings, ``ttl / 4`` apart, with a record of exactly the old size:
  nothing in a listing tells.) A record not live for an hour is deleted by whichever node
  sees that; its node, if it comes back, finds its membership lost.
- **Leaving.** `leave` deletes the record: the others drop the node at their next listing
  instead of after its ttl. A released record would need a read to be noticed, and
  listings do not read; the flag stays in the format (never set here): such a record is
  not live and is taken at once.
- **Costs.** Idle, a node makes one PUT per ``ttl / 4`` and one LIST per ``ttl / 8``
  whatever the number of members (up to 1,000 of them: a LIST page): 12 / ttl requests/s,
  0.8 with ttl = 15 s. A member is seen to stop at most ``ttl / 8`` late, and dropped when
  its ttl runs out (the thread wakes for it), so its databases move after ttl * 9/8 at most.
  Add one GET per member that joins or restarts, and a few per member's lifetime (its
  sequence number gaining a digit).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from shoal.errors import Code, ShoalError
from shoal.storage.base import NotFound, ObjectStore, PreconditionFailed, StoreError
from shoal.storage.fenced import Fenced

log = logging.getLogger("shoal.cluster")

PREFIX = "cluster/nodes/"
HELD_FRACTION = 0.75  # of ttl after a rewrite's start: this node's view of its membership
RENEW_FRACTION = 0.25  # of ttl between rounds: three chances before membership lapses
RETRY_FRACTION = 0.05  # of ttl before a failed round is tried again
LIST_FRACTION = 0.125  # of ttl between listings: a change is seen at most this late
STALE_AFTER = 3600.0  # seconds a record stays in the store once it is not live


@dataclass(frozen=True)
class Member:
    """A live node as the others see it: where to reach it and which process it is."""

    node: str
    url: str
    host: str
    pid: int
    released: bool


@dataclass(frozen=True)
class Record:
    """A node's record in the store; ``started`` (wall time) is for people, not compared."""

    node: str
    url: str
    host: str
    pid: int
    seq: int
    ttl: float
    started: float
    released: bool = False

    def encode(self, size: int) -> bytes:
        """The JSON, padded with spaces (still JSON) to at least ``size`` bytes."""
        return json.dumps({"node": self.node, "url": self.url, "host": self.host,
                           "pid": self.pid, "seq": self.seq, "ttl": self.ttl,
                           "released": self.released, "started": self.started}
                          ).encode().ljust(size)

    @classmethod
    def decode(cls, data: bytes) -> Record | None:
        """The record, or None if it is not one."""
        try:
            raw = json.loads(data)
            return cls(str(raw["node"]), str(raw["url"]), str(raw["host"]), int(raw["pid"]),
                       int(raw["seq"]), float(raw["ttl"]), float(raw["started"]),
                       bool(raw["released"]))
        except (ValueError, KeyError, TypeError):
            return None  # mutate: harmless delete (falling off the end returns None too)

    def member(self) -> Member:
        return Member(self.node, self.url, self.host, self.pid, self.released)

    def writer(self) -> str:
        return f"node {self.node} (host {self.host or '?'}, pid {self.pid or '?'})"


@dataclass(frozen=True)
class _Seen:
    """Another node's record as this node last listed it."""

    version: tuple[int, float | None]  # (size, modified): compared for equality only
    changed: float  # this node's clock when the version was first seen
    record: Record | None  # None: unreadable


@dataclass(frozen=True)
class _Sighting:
    """The record `join` waits on: its etag, since when (this node's clock), its content."""

    etag: str
    since: float
    record: Record | None


def _node_of(key: str) -> str | None:
    name = key.removeprefix(PREFIX)
    if "/" in name or not name.endswith(".json"):
        return None
    return name.removesuffix(".json")  # not empty: no part of a key starts with a dot


class Membership:
    """This node's membership: `join` at startup, `start` the rounds, `members` to see the
    cluster, `check` before acting as a member, `leave` at a clean stop."""

    def __init__(self, store: ObjectStore, node: str, url: str, ttl: float,
                 on_lost: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[threading.Event, float], bool] = threading.Event.wait,
                 on_change: Callable[[], None] | None = None):
        self.store = store
        self.node = node
        self.url = url
        self.ttl = ttl
        self.on_lost = on_lost
        self.clock = clock
        # wait(event, seconds): True if the event was set, False after the seconds passed
        # (tests pass one that keeps time with their own clock)
        self.wait = wait
        self.on_change = on_change  # called from the thread after `version` changed
        self.key = f"{PREFIX}{node}.json"
        self.lost = False
        # moves whenever a round's live set changes (this node in it only while held): read
        # it before `members`, which is replaced first
        self.version = 0
        self._started = 0.0  # mutate: harmless (join sets it before the first write)
        # the etag and the record of this node's last write; None before join, after leave
        self._last: tuple[str, Record] | None = None
        self._size = 0  # mutate: harmless constant (padding to 1 byte pads nothing)
        self._held_until = 0.0  # mutate: harmless constant (before any clock's start)
        self.lapses = 0  # holds begun after none (the join's first): +1 after each lapse
        self._seen: dict[str, _Seen] = {}
        # mutate: harmless delete (join's refresh sets it before anything reads it)
        self._others: dict[str, Member] = {}
        self._view: Mapping[str, Member] = MappingProxyType({})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- this node's view --------------------------------------------------------------------
    def held(self) -> bool:
        return not self.lost and self.clock() < self._held_until

    def check(self) -> None:
        """Fenced unless this node's membership is held now."""
        if not self.held():
            why = ("another node took or deleted its record" if self.lost else
                   "it has not joined or has left" if self._last is None else
                   f"its record has not been renewed for {self.ttl * HELD_FRACTION:g} s")
            raise Fenced(f"this node is not a member of the cluster: {why}")

    def members(self) -> dict[str, Member]:
        """The live members as of the last listing; this node only while `held`."""
        found = dict(self._view)  # one read of a mapping the thread replaces, never changes
        if not self.held():
            found.pop(self.node, None)
        return found

    # -- taking the record ---------------------------------------------------------------------
    def join(self, wait: float, poll: float = 1.0) -> None:
        """Write this node's record, waiting up to ``wait`` seconds for a copy of this node
        on another host to stop renewing it; then list the others.

        STORE_IN_USE if the copy still renews it then; STORAGE_UNAVAILABLE if the store
        kept failing.
        """
        self._started = time.time()
        deadline = self.clock() + wait
        sighting: _Sighting | None = None
        # mutate: harmless delete (every path through the loop sets it before a read)
        error: Exception | None = None
        while True:
            try:
                if self._last is None:
                    sighting = self._take(sighting)
                if self._last is not None:
                    self.refresh()
                    return
                error = None
            except Exception as exc:  # the store failed: keep trying until the deadline
                error = exc
            if self.clock() >= deadline or self.wait(self._stop, poll):  # leave() ends it
                break
        if error is not None:
            raise ShoalError(Code.STORAGE_UNAVAILABLE, f"this node's cluster record {self.key} "
                                                       f"could not be written or the others' "
                                                       f"listed: {error!r}")
        record = sighting.record if sighting is not None else None
        writer = record.writer() if record is not None else "an unreadable record"
        raise ShoalError(Code.STORE_IN_USE, f"the cluster record {self.key} of this node's id "
                                            f"is renewed by {writer}: a copy of this node's "
                                            f"data directory? waited {wait:g} s",
                         hint="Stop the other node with this id, or give this one a data "
                              "directory of its own. A node that died frees its record "
                              f"after {self.ttl:g} s.")

    def _take(self, last: _Sighting | None) -> _Sighting | None:
        """One attempt at writing the record; the record being waited on, if any."""
        try:
            blob = self.store.get(self.key)
        except NotFound:
            self._write(self._next(1), if_none_match="*")
            return None
        record = Record.decode(blob.data)
        now = self.clock()
        free = record is not None and (record.released or self._mine(record))
        if last is None or last.etag != blob.etag:
            if last is None and not free:
                log.warning("the cluster record %s is renewed by %s; waiting for it to stop "
                            "(%g s without renewal)", self.key,
                            record.writer() if record else "an unreadable record", self.ttl)
            last = _Sighting(blob.etag, now, record)
        if free or now - last.since >= (max(self.ttl, record.ttl) if record else self.ttl):
            # the others notice the new record (docstring)
            self._size = len(blob.data) + 1  # mutate: harmless constant (any larger size does)
            if self._write(self._next(record.seq + 1 if record else 1), if_match=blob.etag) \
                    and not free:
                log.warning("took over the cluster record %s from %s, which had not renewed "
                            "it for %g s", self.key,
                            record.writer() if record else "an unreadable record",
                            now - last.since)
        return last

    def _mine(self, record: Record) -> bool:
        """Written with this id on this host: by this node before a restart (it holds the
        data directory). A copy of the directory on another host waits like a stranger."""
        return record.node == self.node and record.host == socket.gethostname()

    def _next(self, seq: int) -> Record:
        return Record(self.node, self.url, socket.gethostname(), os.getpid(), seq, self.ttl,
                      self._started)

    def _write(self, record: Record, *, if_none_match: str | None = None,
               if_match: str | None = None) -> bool:
        """One conditional write of this node's record; False if its condition failed."""
        started = self.clock()
        try:
            etag = self.store.put(self.key, record.encode(self._size),
                                  if_none_match=if_none_match, if_match=if_match)
        except (PreconditionFailed, NotFound):  # NotFound: S3's If-Match on a missing key
            return False  # mutate: harmless return (callers test its truth only)
        self._last = (etag, record)
        if started >= self._held_until:
            # not counted a member between the last hold and this one (a pause, a store
            # that failed): what this node has open may be stale (cluster/node.py)
            self.lapses += 1
        self._held_until = started + self.ttl * HELD_FRACTION
        return True

    # -- holding it ----------------------------------------------------------------------------
    def start(self) -> None:
        """Run the rounds from a thread of their own (an event loop's stall cannot stop it)."""
        self._thread = threading.Thread(target=self._rounds, name="shoal-members", daemon=True)
        self._thread.start()

    def _rounds(self) -> None:
        now = self.clock()
        renew = now + self.ttl * RENEW_FRACTION  # when the record is rewritten next
        listing = now + self.ttl * LIST_FRACTION  # and listed between rewrites
        while True:
            # wake for the round or the listing, or sooner when a member's ttl runs out: it
            # drops out of the view then, not up to a listing later (a dead leader's
            # databases move sooner)
            expiry = self._next_expiry()
            wake = min(renew, listing, expiry if expiry is not None else renew)
            if self.wait(self._stop, max(0.0, wake - self.clock())):
                return
            now = self.clock()
            if now >= renew:
                try:
                    self.round()
                    renew = now + self.ttl * RENEW_FRACTION
                except Exception as exc:  # the store failed: try again soon, before a lapse
                    log.warning("a round of this node's cluster membership failed: %r", exc)
                    renew = now + self.ttl * RETRY_FRACTION
                listing = now + self.ttl * LIST_FRACTION
            elif now >= listing:
                self._list_only()
                listing = now + self.ttl * LIST_FRACTION
            else:
                self._expire()
            if self.lost:
                return

    def _list_only(self) -> None:
        """A listing between two rewrites: a member that stopped is seen sooner."""
        before = self.version
        try:
            self.refresh()
        except Exception as exc:  # the next round lists again
            log.warning("listing the cluster's members failed: %r", exc)
        if self.version != before and self.on_change is not None:
            self.on_change()

    def _next_expiry(self) -> float | None:
        """When the first live member's ttl runs out, by this node's clock."""
        times = [entry.changed + self._ttl_of(entry) for node, entry in self._seen.items()
                 if node in self._others]
        return min(times) if times else None

    def _ttl_of(self, entry: _Seen) -> float:
        return max(self.ttl, entry.record.ttl) if entry.record else self.ttl

    def _expire(self) -> None:
        """Drop the members whose ttl ran out since the last listing (no store request)."""
        now = self.clock()
        live = {node: member for node, member in self._others.items()
                if now - self._seen[node].changed < self._ttl_of(self._seen[node])}
        if len(live) != len(self._others):
            before = self.version
            self._others = live
            self._publish()
            if self.version != before and self.on_change is not None:
                self.on_change()

    def round(self) -> None:
        """Renew this node's record, then list the others; `on_change` if `version` moved."""
        before = self.version
        try:
            self.renew()
            if not self.lost:
                self.refresh()
        finally:
            self._publish()  # this node drops out of its own view once it is not held
            if self.version != before and self.on_change is not None:
                self.on_change()

    def renew(self) -> None:
        """One rewrite. A failed condition is a loss unless our own write had landed."""
        if self.lost or self._last is None:  # not joined, or left: nothing to renew
            return
        etag, last = self._last
        record = self._next(last.seq + 1)
        if self._write(record, if_match=etag):
            return
        try:
            blob = self.store.get(self.key)
        except NotFound:
            self._lose("its record was deleted")
            return
        current = Record.decode(blob.data)
        if current == record:  # an earlier attempt landed and its answer was lost
            if not self._write(self._next(record.seq + 1), if_match=blob.etag):
                self._lose("its record was rewritten meanwhile")
            return
        self._lose("its record was rewritten by " +
                   (current.writer() if current is not None else "an unreadable write"))

    def _lose(self, why: str) -> None:
        self.lost = True  # the thread stops after this round
        self.on_lost(f"this node's cluster membership is lost: {why}")

    # -- the others ----------------------------------------------------------------------------
    def refresh(self) -> None:
        """One listing of the records (no GET for a record whose size stayed the same); then
        the live set, and the deletion of records not live for `STALE_AFTER`."""
        now = self.clock()
        seen: dict[str, _Seen] = {}
        for info in self.store.list(PREFIX):
            node = _node_of(info.key)
            if node is None or node == self.node:
                continue
            version = (info.size, info.modified)
            last = self._seen.get(node)
            if last is not None and last.version == version:
                seen[node] = last
            elif last is not None and last.record is not None and last.version[0] == info.size:
                seen[node] = _Seen(version, now, last.record)  # a renewal: same content
            else:
                try:
                    record = Record.decode(self.store.get(info.key).data)
                except NotFound:  # deleted since the listing
                    continue
                seen[node] = _Seen(version, now, record if record and record.node == node
                                   else None)
        live: dict[str, Member] = {}
        stale: list[str] = []
        for node, entry in seen.items():
            quiet = now - entry.changed
            ttl = self._ttl_of(entry)
            if quiet >= ttl + STALE_AFTER:
                stale.append(node)
            elif quiet < ttl and entry.record is not None and not entry.record.released:
                live[node] = entry.record.member()
        for node in stale:
            del seen[node]
        self._seen, self._others = seen, live
        self._publish()
        for node in stale:
            log.info("deleting the cluster record of node %s: not live for %g s", node,
                     STALE_AFTER)
            try:
                self.store.delete(f"{PREFIX}{node}.json")
            except StoreError as exc:  # the next node to see it tries again
                log.warning("deleting the cluster record of node %s failed: %r", node, exc)

    def _publish(self) -> None:
        """Replace the view `members` reads (never change it), then move `version`."""
        view = dict(self._others)
        if self._last is not None and self.held():
            view[self.node] = self._last[1].member()
        if view != self._view:
            self._view = MappingProxyType(view)
            self.version += 1

    # -- leaving -------------------------------------------------------------------------------
    def leave(self) -> None:
        """Stop the rounds and delete this node's record: the others drop it at their next
        listing, without waiting out its ttl."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.held():
            try:
                self.store.delete(self.key)
            except Exception as exc:  # it goes stale by itself
                log.warning("deleting this node's cluster record failed: %r", exc)
        self._held_until = 0.0  # mutate: harmless constant (before any clock's start)
        self._last = None  # `members` leaves this node out: it is not held
