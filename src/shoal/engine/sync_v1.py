"""Embedded replicas over libSQL's older sync protocol ("V1", gRPC: ``server/sync_v1.py``):
the generations of ``engine/sync.py`` (``log/generations.py``), numbered the way libSQL's
replication log numbers frames.

A V1 client holds one number, the ``frame_no`` of the last frame it committed, and asks for
the frames after it (``next_offset``: that number + 1; 0 for a client with no copy). It
syncs until its number reaches Hello's ``current_replication_index``, so that number must
be one the client will hold once it has every durable commit, or it asks forever.

Frame ``i`` of generation ``g`` (a closed generation, or a bridge: one commit each) is
numbered ``g << 32 | i``, except the generation's last frame, the one that carries the
database's size and so commits it, which is ``(g + 1) << 32``: the number of the start of
generation ``g + 1``, which is also what the Snapshot of that start is numbered. So:

- an offset is the HTTP protocol's position as it is: generation ``offset >> 32``, frame
  ``offset & 0xffffffff`` (after a generation's last frame, the next generation's frame 1);
- Hello cuts the open generation at the durable head (as ``GET /info`` does) and answers
  its start, ``G << 32``: a client that has every commit holds exactly that, whether it got
  there frame by frame or by a Snapshot;
- a client in a generation a restore passed goes straight to the bridge.

A client with no copy, one the store no longer holds the frames for, or one of another
history is told to start again (REPLICA_EXPIRED here; ``NEED_SNAPSHOT`` on the wire); its
Snapshot is the open generation's start (the durable head: Snapshot cuts too). ``log_id``
is derived from the database's incarnation and the branch's name: the same across restores
(the bridge carries clients over), another for a database deleted and made again, whose
clients then start again (a LogIncompatible client resets itself).
"""

from __future__ import annotations

import os
import struct
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from shoal.engine.sync import FRAME, FRAME_HEADER, PAGE, Frames, _Expired, _Synced
from shoal.errors import Code, ShoalError
from shoal.log import generations as gens
from shoal.log.generations import Kind
from shoal.tokens import Principal

if TYPE_CHECKING:
    from shoal.engine.registry import Registry
    from shoal.engine.sync import Syncs

T = TypeVar("T")

SHIFT = 32  # generations are u32, as in the HTTP protocol; a frame's place in it below
LOW = (1 << SHIFT) - 1
HEADER = struct.Struct("<QQII")  # frame_no, checksum (0: no client reads it), page, size after
MAX_FRAMES = 1024  # frames one BatchLogEntries answers at most (sqld's batch)
LOG_IDS = 4096  # (database, timeline) pairs whose log id is kept
_LOG_NAMESPACE = uuid.UUID("0b6f4c1e-5d0a-4e33-9d3f-3f1c3c0b5f11")  # log ids: uuid5 in it


def log_id(incarnation: str, branch: str) -> str:
    return str(uuid.uuid5(_LOG_NAMESPACE, f"{incarnation}/{branch}"))


def renumber(generation: int, first: int, data: bytes) -> list[bytes]:
    """Frames of ``generation`` as the HTTP protocol serves them (a big-endian page number
    and size, 16 zero bytes, the page), the first being its frame ``first``, as V1 frames."""
    out = []
    for at in range(0, len(data), FRAME):
        pgno, size = FRAME_HEADER.unpack_from(data, at)
        number = (generation + 1) << SHIFT if size else generation << SHIFT | first + at // FRAME
        out.append(HEADER.pack(number, 0, pgno, size) + data[at + FRAME_HEADER.size:at + FRAME])
    return out


@dataclass(frozen=True, slots=True)
class V1Hello:
    """Hello's answer: the log's id, and the frame number a client holds once it has every
    durable commit."""

    log_id: str
    index: int


@dataclass(frozen=True, slots=True)
class V1Frames:
    """BatchLogEntries' answer: whole frames (FRAME bytes each; none: nothing newer yet)."""

    log_id: str
    frames: list[bytes]


class V1Snapshot:
    """A whole state as frames, every one numbered ``frame_no``, the last carrying the
    size. Holds the state's file open (a newer state may replace it meanwhile): close it."""

    def __init__(self, log_id: str, frame_no: int, pages: int, fd: int):
        self.log_id = log_id
        self.frame_no = frame_no
        self.pages = pages
        self._fd = fd

    def read(self, first: int, count: int) -> list[bytes]:
        """Worker thread: the frames of pages ``first`` .. ``first + count - 1``."""
        data = os.pread(self._fd, count * PAGE, (first - 1) * PAGE)
        out = []
        for i in range(len(data) // PAGE):
            page = first + i
            size = self.pages if page == self.pages else 0
            out.append(HEADER.pack(self.frame_no, 0, page, size) + data[i * PAGE:(i + 1) * PAGE])
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # an answer never sent (its client went away first)
        self.close()


class LogIds:
    """Log ids by (database, timeline): a timeline belongs to one incarnation and branch for
    good, so an id found once stays right; the first look reads the database's record."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: OrderedDict[tuple[str, str], str] = OrderedDict()

    def get(self, db: str, timeline: str) -> str | None:
        with self._lock:
            return self._ids.get((db, timeline))

    def put(self, db: str, timeline: str, value: str) -> None:
        with self._lock:
            self._ids[(db, timeline)] = value
            while len(self._ids) > LOG_IDS:
                self._ids.popitem(last=False)


class SyncV1API:
    """The Engine's methods for V1 embedded replicas (mixed into Engine, beside SyncAPI)."""

    if TYPE_CHECKING:
        syncs: Syncs
        log_ids: LogIds

        @property
        def registry(self) -> Registry: ...
        async def _io(self, fn: Callable[..., T], *args: Any) -> T: ...
        async def _sync_io(self, fn: Callable[..., T], *args: Any) -> T: ...
        async def _synced(self, principal: Principal, name: str, branch: str,
                          cut: Callable[[_Synced], bool] | None = None) -> _Synced: ...
        async def _cut_txid(self, synced: _Synced, count: int) -> int: ...
        def _kept(self, synced: _Synced, after: int) -> list[bytes] | None: ...

    async def _v1(self, principal: Principal, name: str, branch: str,
                  cut: Callable[[_Synced], bool] | None = None) -> tuple[_Synced, str]:
        """The branch as ``_synced`` gives it (cut first if ``cut`` says so), and its log id."""
        synced = await self._synced(principal, name, branch, cut)
        timeline = synced.line.timeline
        found = self.log_ids.get(name, timeline)
        if found is None:
            live = await self._io(self.registry.live, name)
            if live is None:
                raise ShoalError(Code.DATABASE_NOT_FOUND, f"database {name!r} does not exist")
            found = log_id(live.id, synced.branch)
            self.log_ids.put(name, timeline, found)
        return synced, found

    async def sync_v1_hello(self, principal: Principal, name: str, branch: str) -> V1Hello:
        """Hello: the log id, and the start of the open generation once cut at the durable
        head (every durable commit is before it)."""
        synced, found = await self._v1(principal, name, branch, cut=lambda s: True)
        return V1Hello(found, (synced.line.first + synced.cuts.count) << SHIFT)

    async def sync_v1_frames(self, principal: Principal, name: str, branch: str,
                             offset: int) -> V1Frames:
        """BatchLogEntries: the frames from ``offset`` on (REPLICA_EXPIRED: start again)."""
        generation, first = offset >> SHIFT, offset & LOW
        if offset == 0:
            raise _again(name, branch, "the replica has no copy yet")

        def opened(synced: _Synced) -> bool:  # a replica at the open generation: cut it
            return first == 1 and generation == synced.line.first + synced.cuts.count

        synced, found = await self._v1(principal, name, branch, cut=opened)
        line = synced.line
        where = gens.place(line, generation, synced.cuts.count)
        if where is not None and where.kind is Kind.PASSED:  # on to the bridge
            generation, first = line.first - 1, 1
            where = gens.place(line, generation, synced.cuts.count)
        if where is None or first == 0 or (where.kind is Kind.OPEN and first != 1):
            raise _again(name, branch, f"offset {offset:#x} is not in this branch's history "
                         f"(it is at generation {line.first + synced.cuts.count})")
        if where.kind is Kind.OPEN:  # nothing after the last cut
            return V1Frames(found, [])
        store = self.registry.store
        try:
            if where.kind is Kind.BRIDGE:
                frames: Frames = await self._sync_io(self.syncs.bridge, store, name,
                                                     line.timeline, line.fork_txid)
            else:
                lo = await self._cut_txid(synced, where.index)
                hi = await self._cut_txid(synced, where.index + 1)
                frames = await self._sync_io(self.syncs.generation, store, name,
                                             line.timeline, lo, hi, self._kept(synced, lo))
            body = await self._sync_io(self.syncs.read, frames, first - 1, MAX_FRAMES)
        except _Expired as exc:
            raise _again(name, branch, str(exc)) from None
        if not body:  # past the generation's last frame: no offset is there
            raise _again(name, branch, f"generation {generation} has no frame {first}")
        return V1Frames(found, renumber(generation, first, body))

    async def sync_v1_snapshot(self, principal: Principal, name: str,
                               branch: str) -> V1Snapshot:
        """Snapshot: the open generation's start, cut at the durable head first, with its
        file open."""
        synced, found = await self._v1(principal, name, branch, cut=lambda s: True)
        count = synced.cuts.count
        base = await self._cut_txid(synced, count)
        try:
            state = await self._sync_io(self.syncs.state, self.registry.store, name,
                                        synced.line.timeline, base)
        except _Expired as exc:  # the durable head is always kept: the store lost it
            raise ShoalError(Code.STORAGE_CORRUPT, f"{name}/{branch}: the state at txid "
                             f"{base}, the durable head, cannot be restored: {exc}") from None
        fd = os.open(state.path, os.O_RDONLY)  # before anything else is awaited
        return V1Snapshot(found, (synced.line.first + count) << SHIFT, state.pages, fd)


def _again(name: str, branch: str, why: str) -> ShoalError:
    return ShoalError(Code.REPLICA_EXPIRED, f"{name}/{branch}: {why}; the replica starts again "
                      "from a snapshot")
