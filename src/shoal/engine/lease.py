"""One writing node per object store: a lease kept in the store itself.

Two nodes writing to one store would fork a branch's history without noticing: their
segments' keys differ as soon as their commits do, and a restore would quietly keep one
node's commits and drop the other's. So a node holds the store's lease, ``node/lease.json``,
while it runs. It takes and renews the lease with conditional puts (If-None-Match,
If-Match), so it needs no coordination service.

- **Taking it.** A missing or released lease is taken at once. So is one that this node
  wrote last from this host; its id is in the data directory, which one process holds.
  Any other lease is taken only after its etag has stayed the same for ``ttl`` of this
  node's own clock: the holder has stopped renewing. No two hosts' clocks are compared.
- **Holding it.** A thread renews the lease every ``ttl / 4``. The lease counts as held for
  ``ttl * 3/4`` after the start of the last renewal that succeeded. A waiting node starts
  its ``ttl`` only after it has seen that renewal, so by the time it takes over, the old
  holder has stopped counting the lease as held. Writes to the store pass `check` (see
  ``storage/fenced.py``); the engine refuses new writes while the lease is not held.
- **Losing it.** If a renewal finds another node's lease, the node stops at once: its
  unshipped commits must not reach the store. A renewal whose answer was lost but which
  landed is recognised by its sequence number, and the lease is kept.
- **Giving it back.** A clean stop writes the lease as released, so the next node starts
  without waiting.
- **A cluster.** Nodes that share a store (``advertise_url`` set: ``shoal.cluster``) each
  lead some databases instead of one node holding the store. The first of them takes the
  lease as above and writes it as ``cluster`` for good: a node started later without
  ``advertise_url`` is refused at once, since it would write every database of the store.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from shoal.errors import Code, ShoalError
from shoal.metrics import METRICS
from shoal.storage.base import NotFound, ObjectStore, PreconditionFailed
from shoal.storage.fenced import Fenced

log = logging.getLogger("shoal.lease")

KEY = "node/lease.json"
HELD_FRACTION = 0.75  # of ttl after a renewal's start: the holder's view of the lease
RENEW_FRACTION = 0.25  # of ttl between renewals: three chances before the lease lapses
RETRY_FRACTION = 0.05  # of ttl before a failed renewal is tried again


@dataclass(frozen=True)
class Record:
    """The lease object: who holds it, and the sequence number of its last write."""

    node: str
    seq: int
    ttl: float
    host: str = ""
    pid: int = 0
    released: bool = False
    cluster: bool = False  # the store is shared by a cluster's nodes, for good

    def encode(self) -> bytes:
        return json.dumps({"node": self.node, "seq": self.seq, "ttl": self.ttl,
                           "host": self.host, "pid": self.pid, "released": self.released,
                           "cluster": self.cluster, "written_at": time.time()}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Record | None:
        """The record, or None if it is not one (a write cut short, say)."""
        try:
            raw = json.loads(data)
            return cls(str(raw["node"]), int(raw["seq"]), float(raw["ttl"]),
                       str(raw.get("host", "")), int(raw.get("pid", 0)),
                       bool(raw.get("released", False)), bool(raw.get("cluster", False)))
        except (ValueError, KeyError, TypeError):
            return None

    def holder(self) -> str:
        return f"node {self.node} (host {self.host or '?'}, pid {self.pid or '?'})"


class Lease:
    """This node's lease on ``store``: `acquire` at startup, `start` the renewals, `check`
    before writing to the store, `release` at a clean stop."""

    def __init__(self, store: ObjectStore, node: str, ttl: float,
                 on_lost: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[threading.Event, float], bool] = threading.Event.wait):
        self.store = store
        self.node = node
        self.ttl = ttl
        self.on_lost = on_lost
        self.clock = clock
        # wait(event, seconds): True if the event was set, False after the seconds passed
        # (tests pass one that keeps time with their own clock)
        self.wait = wait
        self.previous: str | None = None  # who wrote the lease before this node took it
        self.lost = False
        self._etag: str | None = None
        self._seq = 0  # mutate: harmless (acquire sets it before anything reads it)
        self._held_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the holder's view ------------------------------------------------------------------
    def held(self) -> bool:
        return not self.lost and self.clock() < self._held_until

    def check(self) -> None:
        """Fenced unless the lease is held now (every store write passes here)."""
        if not self.held():
            why = ("another node took it" if self.lost else
                   f"it has not been renewed for {self.ttl * HELD_FRACTION:g} s")
            raise Fenced(f"this node does not hold the object store's lease: {why}")

    # -- taking it ---------------------------------------------------------------------------
    def acquire(self, wait: float, poll: float = 1.0, cluster: bool = False) -> None:
        """Take the lease, waiting up to ``wait`` seconds for another node's to end.

        STORE_IN_USE if it is still held then, or at once if a cluster shares the store
        and this node is not one of its nodes; STORAGE_UNAVAILABLE if the store kept
        failing. Sets `previous` to the last holder's id (None if there was no lease).
        ``cluster``: take it for a cluster's node, which writes it as the cluster's for good
        and does not renew it (membership does that job per node).
        """
        deadline = self.clock() + wait
        seen: tuple[str, float] | None = None  # (etag, when this node first saw it)
        announced: str | None = None  # the holder the log has named
        record: Record | None = None
        error: Exception | None = None
        while True:
            try:
                try:
                    blob = self.store.get(KEY)
                except NotFound:
                    if self._write(self._record(1, cluster=cluster), if_none_match="*"):
                        return
                    continue
                record = Record.decode(blob.data)
                if record is not None and record.cluster:
                    if cluster:
                        return
                    raise ShoalError(Code.STORE_IN_USE, (
                        "the object store is shared by a cluster of nodes (each leads some "
                        "databases): start this node as one of them, with advertise_url "
                        "(--advertise-url, SHOAL_ADVERTISE_URL) set to the URL the other "
                        "nodes reach it at"))
                now = self.clock()
                if seen is None or seen[0] != blob.etag:
                    seen = (blob.etag, now)
                    if record is not None and not record.released and \
                            not self._mine(record) and record.node != announced:
                        announced = record.node
                        log.warning("the object store's lease is held by %s; waiting for it "
                                    "to be released or to lapse (%g s without renewal)",
                                    record.holder(), max(self.ttl, record.ttl))
                free = record is not None and (record.released or self._mine(record))
                lapsed = now - seen[1] >= max(self.ttl, record.ttl if record else 0.0)
                if free or lapsed:
                    self.previous = record.node if record is not None else "?"
                    seq = record.seq + 1 if record is not None else 1
                    if self._write(self._record(seq, cluster=cluster), if_match=blob.etag):
                        if lapsed and not free:
                            log.warning("took over the object store's lease from %s, which "
                                        "had not renewed it for %g s",
                                        record.holder() if record else "an unreadable lease",
                                        now - seen[1])
                        return
                    continue
                error = None
            except NotFound:  # a write's If-Match on a key the store lost (S3): read again
                continue
            except ShoalError:  # the store is a cluster's: no wait can change that
                raise
            except Exception as exc:  # the store failed: keep trying until the deadline
                error = exc
            if self.clock() >= deadline or self.wait(self._stop, poll):  # release() ends the wait
                break
        if error is not None:
            raise ShoalError(Code.STORAGE_UNAVAILABLE,
                             f"the object store's lease could not be read or written: {error!r}")
        holder = record.holder() if record is not None else "an unreadable lease"
        raise ShoalError(Code.STORE_IN_USE, f"the object store is in use by {holder}, which "
                                            f"renewed its lease within the last "
                                            f"{max(self.ttl, record.ttl if record else 0):g} s; "
                                            f"waited {wait:g} s")

    def _mine(self, record: Record) -> bool:
        """Written by this node on this host: its process is gone, since this one holds the
        data directory. A copy of the directory on another host (a cloned disk) has the
        same id, but not the same host, so it waits like any other node."""
        return record.node == self.node and record.host == socket.gethostname()

    def _record(self, seq: int, released: bool = False, cluster: bool = False) -> Record:
        return Record(self.node, seq, self.ttl, socket.gethostname(), os.getpid(), released,
                      cluster)

    def _write(self, record: Record, *, if_none_match: str | None = None,
               if_match: str | None = None) -> bool:
        """One conditional write of this node's record; False if its condition failed."""
        started = self.clock()
        try:
            etag = self.store.put(KEY, record.encode(), if_none_match=if_none_match,
                                  if_match=if_match)
        except PreconditionFailed:
            return False
        self._etag, self._seq = etag, record.seq
        self._held_until = started + self.ttl * HELD_FRACTION
        return True

    # -- holding it --------------------------------------------------------------------------
    def start(self) -> None:
        """Renew the lease from a thread of its own (an event loop's stall cannot stop it)."""
        self._thread = threading.Thread(target=self._renewals, name="shoal-lease", daemon=True)
        self._thread.start()

    def _renewals(self) -> None:
        pause = self.ttl * RENEW_FRACTION
        while not self.wait(self._stop, pause):
            try:
                self.renew()
                pause = self.ttl * RENEW_FRACTION
            except Exception as exc:  # the store failed: try again soon, well before it lapses
                METRICS.lease_renewal_failures.inc()
                log.warning("renewing the object store's lease failed: %r", exc)
                pause = self.ttl * RETRY_FRACTION
            if self.lost:
                return

    def renew(self) -> None:
        """One renewal. A failed condition is a loss unless our own write had landed."""
        record = self._record(self._seq + 1)
        if self._write(record, if_match=self._etag):
            return
        try:
            blob = self.store.get(KEY)
        except NotFound:
            blob = None
        current = Record.decode(blob.data) if blob is not None else None
        if blob is not None and current is not None and current.node == self.node \
                and current.seq == record.seq and not current.released:
            # an earlier attempt landed and its answer was lost: renew on from it, now
            self._etag, self._seq = blob.etag, record.seq
            if self._write(self._record(self._seq + 1), if_match=self._etag):
                return
        if blob is not None and current is None and self._write(record, if_match=blob.etag):
            return  # our own write had been cut short: it is whole now
        self.lost = True
        self._stop.set()
        holder = (current.holder() if current is not None else
                  "nobody (it is unreadable)" if blob is not None else "nobody (it is gone)")
        self.on_lost(f"the object store's lease is now held by {holder}")

    def release(self) -> None:
        """Stop renewing and mark the lease released, so the next node need not wait."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost or self._etag is None:
            return
        record = self._record(self._seq + 1, released=True)
        try:
            self.store.put(KEY, record.encode(), if_match=self._etag)
        except Exception as exc:  # it lapses by itself after ttl
            log.warning("releasing the object store's lease failed: %r", exc)
        self._held_until = 0.0
