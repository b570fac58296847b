"""Embedded replicas: a branch's history served to libSQL clients that keep a local copy
(a part of the Engine's one door; the protocol's routes are ``server/sync.py``).

A client (``libsql.connect("local.db", sync_url=...)``, ``createClient({url: "file:...",
syncUrl})``) downloads the database file at the start of a generation, then the WAL frames
of the commits since, which it writes into its own WAL (``log/generations.py`` says how the
history is numbered). The frames are made from Shoal's own commit log, under its fencing:

- only durable commits are served (a failover never takes back what a replica holds); a
  pull first waits, up to ``storage_timeout``, for the commits made before it to ship, so a
  client that wrote through the server reads its write back at once;
- the leader's recent segments come from its memory (``log/feed.py``), older ones from the
  store; decoded segments are kept in a bounded cache, so a client pulling a generation in
  many small requests downloads each segment once;
- a txid the store holds only as a snapshot (a re-based log: compaction's VACUUM) is served
  as one commit writing every page of that state, which is what the VACUUM wrote;
- whole states (an export, a bridge, such a commit) are restored from the store into files
  under ``sync/`` in the data directory, a few kept for the next client.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import secrets
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from shoal.engine.registry import storage_errors
from shoal.errors import Code, ShoalError
from shoal.log import generations as gens
from shoal.log import layout
from shoal.log.errors import CorruptObject, LogError, MissingObject
from shoal.log.restore import download, restore
from shoal.log.segment import Commit, decode_segment, read_header
from shoal.log.timeline import listing, load_timeline
from shoal.names import check as check_name
from shoal.tokens import Principal

if TYPE_CHECKING:
    from shoal.engine.database import Database
    from shoal.engine.lifecycle import Lifecycle
    from shoal.engine.registry import Registry
    from shoal.settings import Settings
    from shoal.storage.base import ObjectStore

T = TypeVar("T")

PAGE = 4096  # the page size libSQL's sync protocol uses
FRAME_HEADER = struct.Struct(">II16x")  # page number, database size after a commit (else 0)
FRAME = FRAME_HEADER.size + PAGE
MAX_FRAMES = 1024  # frames one pull answers at most (clients ask for 128)
STATES = 6  # whole states kept on disk for the next client (exports, bridges)
DECODED_BYTES = 64 << 20  # decoded segments kept in memory, in page bytes
INDEXES = 512  # generations whose frame numbering is kept
LIST_BYTES = 16 << 20  # segment bytes one pull downloads at most (the first whole)
SYNC_THREADS = 2  # I/O threads replicas' work may hold at once (the node has at least 4)


@dataclass(frozen=True, slots=True)
class SyncInfo:
    """What ``GET /info`` tells a client: the generation to start from."""

    generation: int


@dataclass(frozen=True, slots=True)
class Pulled:
    """A pull's answer: whole frames, or (``frames`` empty) the generation's end: the
    client moves on if ``generation`` is past its own, else stops (nothing more yet)."""

    frames: bytes
    generation: int


@dataclass(slots=True)
class State:
    """A whole database state restored into a file (``pages`` of PAGE bytes)."""

    path: Path
    pages: int


@dataclass(slots=True)
class _Unit:
    """One commit as frames: ``count`` of them, the last carrying ``db_pages``."""

    txid: int
    count: int
    db_pages: int
    frame: Callable[[int], tuple[int, bytes | memoryview]]  # k -> (page number, page)
    bridge: bool = False  # the bridge after a line's last commit (not numbered by txid)


@dataclass(slots=True)
class _Index:
    """Where each commit of a generation starts among its frames (1-based), as far as
    clients have pulled: so a pull starts at its commit without counting from the base."""

    txids: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, txid: int, start: int) -> None:
        with self.lock:
            if (start == 1 and not self.txids) or (self.txids and txid == self.txids[-1] + 1):
                self.txids.append(txid)
                self.starts.append(start)

    def seek(self, frame: int, base: int) -> tuple[int, int]:
        """The commit holding ``frame`` (or the last one known before it) and its start."""
        with self.lock:
            at = bisect.bisect_right(self.starts, frame) - 1
            if at < 0:
                return base + 1, 1
            return self.txids[at], self.starts[at]


class _Expired(Exception):
    """The store no longer holds what a client needs."""


class Syncs:
    """The node's caches for embedded replicas: whole states on disk, decoded segments and
    generations' frame numbering in memory. Threads use them (each has its lock)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._lock = threading.Lock()
        self.states: OrderedDict[tuple[str, str, int], State] = OrderedDict()
        self.decoded: OrderedDict[str, tuple[list[Commit], int]] = OrderedDict()
        self.decoded_bytes = 0
        self.indexes: OrderedDict[tuple[str, str, int], _Index] = OrderedDict()
        # (db, timeline) -> its line (fixed once a branch is on it)
        self.lines: OrderedDict[tuple[str, str], gens.Line] = OrderedDict()
        self._making: dict[tuple[str, str, int], threading.Lock] = {}
        self.gate = asyncio.Semaphore(SYNC_THREADS)

    def start(self) -> None:
        """Clear what a previous run left (the files are a cache)."""
        if self.folder.exists():
            for leftover in self.folder.iterdir():
                leftover.unlink(missing_ok=True)

    # -- whole states --
    def state(self, store: ObjectStore, scratch: Path, db: str, timeline: str,
              txid: int) -> State:
        """Worker thread: the state of ``timeline`` at ``txid`` in a file (restored from the
        store unless kept). _Expired if the store no longer holds it."""
        key = (db, timeline, txid)
        with self._lock:
            making = self._making.setdefault(key, threading.Lock())
        with making:  # one restore per state, however many clients ask at once
            try:
                return self._state(store, scratch, db, timeline, txid)
            finally:
                with self._lock:
                    self._making.pop(key, None)

    def _state(self, store: ObjectStore, scratch: Path, db: str, timeline: str,
               txid: int) -> State:
        key = (db, timeline, txid)
        with self._lock:
            found = self.states.get(key)
            if found is not None:
                self.states.move_to_end(key)
                return found
        self.folder.mkdir(parents=True, exist_ok=True)
        scratch.mkdir(parents=True, exist_ok=True)
        path = scratch / f"sync-{secrets.token_hex(6)}.db"
        try:
            restored = restore(store, db, timeline, path, txid=txid)
        except MissingObject as exc:
            path.unlink(missing_ok=True)
            raise _Expired(str(exc)) from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if restored.page_size != PAGE:
            path.unlink(missing_ok=True)
            raise ShoalError(Code.PAGE_SIZE_UNSUPPORTED, f"{db} has {restored.page_size}-"
                             "byte pages; embedded replicas need 4,096-byte pages")
        final = self.folder / f"{db}-{timeline}-{txid}.db"
        os.replace(path, final)
        state = State(final, restored.db_pages)
        with self._lock:
            self.states[key] = state
            while len(self.states) > STATES:  # an open export keeps reading its fd
                _, gone = self.states.popitem(last=False)
                gone.path.unlink(missing_ok=True)
        return state

    # -- decoded segments --
    def segment(self, key: str, data: bytes) -> list[Commit]:
        with self._lock:
            found = self.decoded.get(key)
            if found is not None:
                self.decoded.move_to_end(key)
                return found[0]
        _, commits = decode_segment(data, key)
        size = sum(c.size for c in commits)
        with self._lock:
            self.decoded[key] = (commits, size)
            self.decoded_bytes += size
            while self.decoded_bytes > DECODED_BYTES and len(self.decoded) > 1:
                _, (_, gone) = self.decoded.popitem(last=False)
                self.decoded_bytes -= gone
        return commits

    def cached(self, key: str) -> list[Commit] | None:
        with self._lock:
            found = self.decoded.get(key)
            return found[0] if found is not None else None

    def line(self, db: str, timeline: str, line: gens.Line) -> None:
        self.lines[(db, timeline)] = line
        while len(self.lines) > INDEXES:
            self.lines.popitem(last=False)

    def index(self, db: str, timeline: str, base: int) -> _Index:
        key = (db, timeline, base)
        with self._lock:
            found = self.indexes.get(key)
            if found is None:
                found = self.indexes[key] = _Index()
                while len(self.indexes) > INDEXES:
                    self.indexes.popitem(last=False)
            else:
                self.indexes.move_to_end(key)
            return found



def _header(pgno: int, db_pages: int) -> bytes:
    return FRAME_HEADER.pack(pgno, db_pages)


def _state_unit(state: State, txid: int, fd: int) -> _Unit:
    """A commit writing every page of ``state`` (read from ``fd`` as frames are asked)."""
    def frame(k: int) -> tuple[int, bytes]:
        return k + 1, os.pread(fd, PAGE, k * PAGE)
    return _Unit(txid, state.pages, state.pages, frame)


def _commit_unit(commit: Commit) -> _Unit:
    if commit.page_size != PAGE:
        raise ShoalError(Code.PAGE_SIZE_UNSUPPORTED, f"txid {commit.txid} has "
                         f"{commit.page_size}-byte pages; embedded replicas need 4,096-byte "
                         "pages")
    frames = commit.frames
    return _Unit(commit.txid, len(frames), commit.db_pages, lambda k: frames[k])


class _Walk:
    """Worker thread: a generation's frames from ``start`` on, commit by commit."""

    def __init__(self, syncs: Syncs, store: ObjectStore, scratch: Path, db: str,
                 gen: gens.Generation, upto: int, kept: list[bytes] | None):
        self.syncs, self.store, self.scratch, self.db = syncs, store, scratch, db
        self.gen, self.upto, self.kept = gen, upto, kept
        self.fds: list[int] = []

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)

    def _state(self, timeline: str, txid: int) -> _Unit:
        state = self.syncs.state(self.store, self.scratch, self.db, timeline, txid)
        fd = os.open(state.path, os.O_RDONLY)
        self.fds.append(fd)
        return _state_unit(state, txid, fd)

    def units(self, first: int) -> Iterator[_Unit]:
        """The generation's commits from txid ``first`` on (then its bridge, if any)."""
        if first <= self.upto:
            yield from self._commits(first)
        bridge = self.gen.bridge
        if bridge is not None:
            unit = self._state(*bridge)
            unit.bridge = True
            yield unit

    def _commits(self, first: int) -> Iterator[_Unit]:
        timeline = self.gen.timeline
        need = first
        if self.kept is not None:  # the leader's memory: every durable commit after some txid
            for data in self.kept:
                head = read_header(data)
                key = f"{timeline}/{head.first_txid}-{head.last_txid}"
                for commit in self.syncs.cached(key) or self.syncs.segment(key, data):
                    if commit.txid == need and need <= self.upto:
                        yield _commit_unit(commit)
                        need += 1
            if need > self.upto:
                return
        record = load_timeline(self.store, self.db, timeline)
        while need <= self.upto:
            segs, snaps = listing(self.store, self.db, record)
            useful = sorted((s for s in segs if s.last >= need and s.first <= self.upto),
                            key=lambda s: (s.first, -s.last))
            plan: list[layout.SegmentInfo] = []
            total, reach = 0, need
            for seg in useful:  # the furthest-reaching segment from each txid on
                if seg.last < reach or seg.first > reach:
                    if seg.first > reach:
                        break
                    continue
                if plan and total + seg.size > LIST_BYTES:
                    break
                plan.append(seg)
                total += seg.size
                reach = seg.last + 1
            if not plan:  # the txid is in no segment: a re-based log keeps it as a snapshot
                if any(snap.txid == need for snap in snaps):
                    yield self._state(timeline, need)
                    need += 1
                    continue
                raise _Expired(f"txid {need} of timeline {timeline} is no longer kept")
            before = need
            cached = [(seg, self.syncs.cached(seg.key)) for seg in plan]
            missing = [seg for seg, found in cached if found is None]
            fetched = dict(download(self.store, missing)) if missing else {}
            for seg, found in cached:
                commits = found if found is not None else \
                    self.syncs.segment(seg.key, fetched[seg])
                for commit in commits:
                    if commit.txid == need and need <= self.upto:
                        yield _commit_unit(commit)
                        need += 1
            if need == before:  # its key said it holds txid ``need``; its body did not
                raise CorruptObject(f"segment {plan[0].key} lacks txid {need}", plan[0].key)

    def frames(self, start: int, end: int) -> tuple[bytes, bool]:
        """Frames ``start`` .. ``end - 1`` (at most MAX_FRAMES), and whether the generation
        has no frame at ``start`` (the client has all of it that exists now)."""
        index = self.syncs.index(self.db, self.gen.timeline, self.gen.base)
        txid, at = index.seek(start, self.gen.base)
        want = min(end - start, MAX_FRAMES)
        out: list[bytes | memoryview] = []
        for unit in self.units(txid):
            if not unit.bridge:
                index.note(unit.txid, at)
            for k in range(max(0, start - at), unit.count):
                if len(out) >= 2 * want:
                    break
                pgno, page = unit.frame(k)
                out += (_header(pgno, unit.db_pages if k == unit.count - 1 else 0), page)
            at += unit.count
            if len(out) >= 2 * want:
                break
        return b"".join(out), not out


def _mapped(fn: Callable[..., T], *args: Any) -> T:
    """Worker thread: ``fn`` with the store's and the log's failures as the API's codes."""
    with storage_errors():
        return fn(*args)


class SyncAPI:
    """The Engine's methods for embedded replicas (mixed into Engine)."""

    if TYPE_CHECKING:
        lifecycle: Lifecycle
        settings: Settings
        syncs: Syncs

        @property
        def registry(self) -> Registry: ...
        async def _io(self, fn: Callable[..., T], *args: Any) -> T: ...
        def _known(self, name: str, *branches: str) -> None: ...

    async def _synced(self, principal: Principal, name: str,
                      branch: str) -> tuple[gens.Line, int, list[bytes] | None, Database]:
        """The branch's line, its durable head once what was committed before this request
        has shipped (up to storage_timeout), and the leader's recent segments after the
        head's generation's base (None: not all in memory)."""
        check_name(name)
        principal.require("read", name)
        branch = principal.on(branch)
        if principal.bound:
            raise ShoalError(Code.RULES_BOUND, "this token is bound by row rules: a replica "
                             "would hold every row; use the data API")
        registry = self.registry  # HISTORY_DISABLED without a store
        self._known(name, branch)
        db = await self.lifecycle.acquire(name, branch)
        try:
            journal = db.journal
            shipper = journal.shipper if journal is not None else None
            timeline = db.timeline
            if shipper is None or timeline is None:
                raise ShoalError(Code.HISTORY_DISABLED, "this node keeps no commit log")
            # serve what is durable if the store is slow or the log stopped (writes say why)
            with contextlib.suppress(TimeoutError, LogError):
                await asyncio.wait_for(shipper.wait_durable(shipper.head_txid),
                                       float(self.settings.storage_timeout))
            durable = shipper.durable_txid
        finally:
            self.lifecycle.release(db)
        line = self.syncs.lines.get((name, timeline))
        if line is None:
            found = await self._io(registry.branch, name, branch)
            line = gens.line_of({**found.entry()})
            if line.timeline != timeline:  # moved just now: the client asks again
                raise ShoalError(Code.STORAGE_UNAVAILABLE, f"{name}/{branch} moved to another "
                                 "timeline during the request: retry")
            self.syncs.line(name, timeline, line)
        kept = shipper.feed.since(line.fork_txid + (line.last(durable) - line.first)
                                  * gens.SPAN, inside=True)
        return line, durable, kept, db

    async def _sync_io(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` on the I/O threads, at most SYNC_THREADS of them at once: replicas
        catching up (a restore of a whole state, segments downloaded) never take the threads
        that ship every other database's commits."""
        async with self.syncs.gate:
            return await self._io(_mapped, fn, *args)

    async def sync_info(self, principal: Principal, name: str, branch: str) -> SyncInfo:
        """The generation a new replica starts from (``GET /info``)."""
        line, durable, _, _ = await self._synced(principal, name, branch)
        return SyncInfo(line.last(durable))

    async def sync_export(self, principal: Principal, name: str, branch: str,
                          generation: int) -> State:
        """The database at the start of ``generation`` (``GET /export/{g}``): a file, kept
        until a few newer states replace it (open it before awaiting anything)."""
        line, durable, _, _ = await self._synced(principal, name, branch)
        gen = gens.locate(line, generation, durable)
        if gen is None:
            raise self._expired(name, branch, generation, line, durable)
        try:
            return await self._sync_io(self.syncs.state, self.registry.store,
                                       self.registry.scratch, name, gen.timeline, gen.base)
        except _Expired:
            raise self._expired(name, branch, generation, line, durable) from None

    async def sync_pull(self, principal: Principal, name: str, branch: str, generation: int,
                        start: int, end: int) -> Pulled:
        """Frames ``start`` .. ``end - 1`` of ``generation`` (``GET /sync/{g}/{s}/{e}``)."""
        if start < 1 or end <= start:
            raise ShoalError(Code.INVALID_REQUEST, "frames are numbered from 1, and the end "
                             "(exclusive) comes after the start")
        line, durable, kept, _ = await self._synced(principal, name, branch)
        current = line.last(durable)
        gen = gens.locate(line, generation, durable)
        if gen is None:  # expired, or ahead: a replica of another history (see generations)
            raise self._expired(name, branch, generation, line, durable)
        upto = gen.upto(durable)
        own = gen.timeline == line.timeline and gen.number == current
        walk = _Walk(self.syncs, self.registry.store, self.registry.scratch, name, gen,
                     upto, kept if own else None)
        try:
            frames, done = await self._sync_io(walk.frames, start, end)
        except _Expired:
            raise self._expired(name, branch, generation, line, durable) from None
        finally:
            walk.close()
        if not done:
            return Pulled(frames, generation)
        return Pulled(b"", current if gen.closed(durable) else generation)

    def sync_push(self, principal: Principal, name: str, branch: str) -> NoReturn:
        """Offline writes pushed as WAL frames (``POST /sync/...``): refused for now (they
        need exact conflict detection against the branch's head)."""
        check_name(name)
        principal.require("write", name)
        principal.on(branch)
        raise ShoalError(Code.SYNC_PUSH_UNSUPPORTED, "Shoal takes no offline writes from "
                         "embedded replicas yet: open the replica without offline mode, so "
                         "that its writes go to the server")

    @staticmethod
    def _expired(name: str, branch: str, generation: int, line: gens.Line,
                 durable: int) -> ShoalError:
        now = line.last(durable)
        why = "never had" if generation > now else "no longer keeps"
        return ShoalError(Code.REPLICA_EXPIRED, f"{name}/{branch} {why} generation "
                          f"{generation} (it is at generation {now}): this replica was made "
                          "from another history, or is behind what the store keeps")
