"""Embedded replicas: a branch's history served to libSQL clients that keep a local copy
(a part of the Engine's one door; the protocol's routes are ``server/sync.py``).

A client (``libsql.connect("local.db", sync_url=...)``, ``createClient({url: "file:...",
syncUrl})``) downloads the database file at the start of a generation, then each
generation's frames, which it writes into its own WAL (``log/generations.py`` says how the
history is numbered). The frames are made from Shoal's own commit log, under its fencing:

- only durable commits are served (a failover never takes back what a replica holds); a
  request first waits, up to ``storage_timeout``, for the commits made before it to ship,
  so a client that wrote through the server reads its write back at once;
- a closed generation is one commit: the newest version of each page its commits changed,
  written once into a frames file under ``sync/`` in the data directory, which every client
  of that generation then reads (a pull is one ``pread``);
- the commits come from the leader's memory (``log/feed.py``) or the store, decoded once
  into a bounded cache; a txid the store holds only as a snapshot (compaction's VACUUM) is
  every page of that state, which is what the VACUUM wrote;
- whole states (an export, a bridge, a generation too large to merge in memory) are
  restored from the store into files under ``sync/``, a few kept for the next client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import struct
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from shoal.engine.registry import storage_errors
from shoal.errors import Code, ShoalError
from shoal.log import generations as gens
from shoal.log.errors import CorruptObject, LogConflict, LogError, MissingObject
from shoal.log.generations import Kind
from shoal.log.restore import download, furthest, history, restore
from shoal.log.segment import Commit, Page, decode_segment, read_header
from shoal.log.timeline import listing, load_timeline
from shoal.names import check as check_name
from shoal.tokens import Principal

if TYPE_CHECKING:
    from shoal.engine.database import Database
    from shoal.engine.lifecycle import Lifecycle
    from shoal.engine.registry import Registry
    from shoal.log.feed import Feed
    from shoal.settings import Settings
    from shoal.storage.base import ObjectStore

T = TypeVar("T")

PAGE = 4096  # the page size libSQL's sync protocol uses
FRAME_HEADER = struct.Struct(">II16x")  # page number, database size after a commit (else 0)
FRAME = FRAME_HEADER.size + PAGE
# The bounds below: any value keeps the protocol right (the tests set none of them); each
# says what it bounds.
# mutate: harmless constant (a bound)
MAX_FRAMES = 1024  # frames one pull answers at most (clients ask for 128)
# mutate: harmless constant (a bound)
STATES = 6  # whole states kept on disk for the next client (exports, bridges)
# mutate: harmless constant (a bound)
FRAME_FILES = 32  # generations' frames kept on disk
# bytes of both on the data directory's disk, beyond the newest of each: a database of many
# gigabytes keeps one state and one frames file, never six copies filling the disk
CACHE_BYTES = 1 << 30  # mutate: harmless constant (a bound)
# mutate: harmless constant (a bound)
DECODED_BYTES = 64 << 20  # decoded segments kept in memory, in page bytes
# mutate: harmless constant (a bound)
MERGE_BYTES = 32 << 20  # a generation's pages merged in memory; past this, from its end state
# mutate: harmless constant (a bound)
LINES = 512  # branches' lines and cuts kept in memory
# mutate: harmless constant (a bound)
LIST_BYTES = 16 << 20  # segment bytes one download round fetches at most (the first whole)
# mutate: harmless constant (a bound)
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
class Frames:
    """A generation's frames, ready to send, in a file (``count`` of FRAME bytes)."""

    path: Path
    count: int

    def read(self, first: int, count: int) -> bytes:
        """Frames ``first`` (0-based) and on, at most ``count`` (b"" past the last)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return os.pread(fd, count * FRAME, first * FRAME)
        finally:
            os.close(fd)


@dataclass(slots=True)
class _Unit:
    """One commit as frames: ``count`` of them, the last carrying ``db_pages``."""

    count: int
    db_pages: int
    frame: Callable[[int], tuple[int, Page]]  # k -> (page number, page)


@dataclass(slots=True)
class Cuts:
    """A line's cuts as the leader knows them: how many, and the txids read so far. Kept
    for one open branch (``owner``): a branch opened again, perhaps after another node led
    it, counts them again."""

    owner: weakref.ref[Database]
    count: int = -1  # -1: not counted yet (under ``lock``)
    txids: dict[int, int] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _Expired(Exception):
    """The store no longer holds what a client needs."""


class Syncs:
    """The node's caches for embedded replicas: whole states and generations' frames on
    disk, decoded segments, lines and cuts in memory. Threads use them (under ``_lock``)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._lock = threading.Lock()
        self.states: OrderedDict[tuple[str, str, int], State] = OrderedDict()
        self.frames: OrderedDict[tuple[str, str, int, int], Frames] = OrderedDict()
        self.decoded: OrderedDict[str, tuple[list[Commit], int]] = OrderedDict()
        self.decoded_bytes = 0
        # (db, timeline) -> its line (fixed once a branch is on it), its cuts
        self.lines: OrderedDict[tuple[str, str], gens.Line] = OrderedDict()
        self.cuts: OrderedDict[tuple[str, str], Cuts] = OrderedDict()
        self._making: dict[tuple[Any, ...], threading.Lock] = {}
        self.gate = asyncio.Semaphore(SYNC_THREADS)
        # (db, timeline) -> the earliest txid the store can restore: what retention left.
        # Only this node's retention changes it (it runs on a database's leader, which
        # serves its replicas): forgotten then, so that every request decides by one value
        self.earliest: OrderedDict[tuple[str, str], int] = OrderedDict()

    def start(self) -> None:
        """Clear what a previous run left (the files are a cache)."""
        if self.folder.exists():
            for leftover in self.folder.iterdir():
                leftover.unlink(missing_ok=True)

    def _once(self, key: tuple[Any, ...], make: Callable[[], T]) -> T:
        """``make()`` by one thread at a time per ``key`` (it looks in its cache first)."""
        with self._lock:
            making = self._making.setdefault(key, threading.Lock())
        with making:
            try:
                return make()
            finally:
                with self._lock:
                    self._making.pop(key, None)

    def _file(self, name: str) -> tuple[Path, Path]:
        """A scratch path in the folder and the final one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / f".{secrets.token_hex(6)}.tmp", self.folder / name

    # -- whole states --
    def state(self, store: ObjectStore, db: str, timeline: str, txid: int) -> State:
        """Worker thread: the state of ``timeline`` at ``txid`` in a file (restored from the
        store unless kept). _Expired if the store no longer holds it."""
        key = (db, timeline, txid)
        return self._once(("state", *key), lambda: self._state(store, key))

    def _state(self, store: ObjectStore, key: tuple[str, str, int]) -> State:
        with self._lock:
            found = self.states.get(key)
            if found is not None:
                self.states.move_to_end(key)
                return found
        db, timeline, txid = key
        path, final = self._file(f"{db}-{timeline}-{txid}.db")
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
        os.replace(path, final)
        state = State(final, restored.db_pages)
        with self._lock:
            self.states[key] = state
            self._trim()
        return state

    # -- generations' frames --
    def generation(self, store: ObjectStore, db: str, timeline: str, lo: int, hi: int,
                   kept: list[bytes] | None) -> Frames:
        """Worker thread: the frames of the generation from txid ``lo`` to ``hi``: one
        commit of the newest version of every page changed in between."""
        key = (db, timeline, lo, hi)
        return self._once(("frames", *key), lambda: self._frames(
            key, lambda: self._merge(store, db, timeline, lo, hi, kept)))

    def bridge(self, store: ObjectStore, db: str, timeline: str, txid: int) -> Frames:
        """Worker thread: every page of the state at ``txid`` as one commit (a bridge)."""
        return self._whole(store, (db, timeline, -1, txid), txid)

    def stand_in(self, store: ObjectStore, db: str, timeline: str, index: int,
                 txid: int) -> Frames:
        """Worker thread: the frames of generation ``index`` (whose commits are gone): every
        page of the state at ``txid`` as one commit (``SyncAPI._behind``)."""
        return self._whole(store, (db, timeline, -2, index), txid)

    def made(self, key: tuple[str, str, int, int]) -> Frames | None:
        """Frames made before under ``key`` and still kept."""
        with self._lock:
            found = self.frames.get(key)
        return found if found is not None and found.path.exists() else None

    def _whole(self, store: ObjectStore, key: tuple[str, str, int, int], txid: int) -> Frames:
        db, timeline = key[0], key[1]

        def pages() -> tuple[list[int], int, Callable[[int], Page], Callable[[], None]]:
            state = self.state(store, db, timeline, txid)
            fd = os.open(state.path, os.O_RDONLY)
            return (list(range(1, state.pages + 1)), state.pages,
                    lambda pgno: os.pread(fd, PAGE, (pgno - 1) * PAGE), lambda: os.close(fd))
        return self._once(("frames", *key), lambda: self._frames(key, pages))

    def _frames(self, key: tuple[str, str, int, int],
                pages: Callable[[], tuple[list[int], int, Callable[[int], Page],
                                          Callable[[], None]]]) -> Frames:
        with self._lock:
            found = self.frames.get(key)
            if found is not None:
                self.frames.move_to_end(key)
                return found
        order, db_pages, page, done = pages()
        path, final = self._file("{}-{}-{}-{}.frames".format(*key))
        try:
            with open(path, "wb") as out:
                for i, pgno in enumerate(order):
                    out.write(FRAME_HEADER.pack(pgno, db_pages if i == len(order) - 1 else 0))
                    out.write(page(pgno))
            os.replace(path, final)
        finally:
            done()
            path.unlink(missing_ok=True)
        made = Frames(final, len(order))
        with self._lock:
            self.frames[key] = made
            self._trim()
        return made

    def _trim(self) -> None:
        """Under ``_lock``: drop the least recently used files past STATES, FRAME_FILES or
        CACHE_BYTES in all (keeping the newest of each: it is being served). A file being
        sent stays readable (an export holds it open; a pull reads it whole at once)."""
        def size() -> int:
            return (sum(st.pages * PAGE for st in self.states.values()) +
                    sum(fr.count * FRAME for fr in self.frames.values()))
        while len(self.states) > STATES:
            self.states.popitem(last=False)[1].path.unlink(missing_ok=True)
        while len(self.frames) > FRAME_FILES:
            self.frames.popitem(last=False)[1].path.unlink(missing_ok=True)
        while size() > CACHE_BYTES and (len(self.states) > 1 or len(self.frames) > 1):
            cache: OrderedDict[Any, Any] = self.states if len(self.states) > 1 and (
                len(self.frames) <= 1 or next(iter(self.states.values())).pages * PAGE >=
                next(iter(self.frames.values())).count * FRAME) else self.frames
            cache.popitem(last=False)[1].path.unlink(missing_ok=True)

    def _merge(self, store: ObjectStore, db: str, timeline: str, lo: int, hi: int,
               kept: list[bytes] | None
               ) -> tuple[list[int], int, Callable[[int], Page], Callable[[], None]]:
        """The pages commits ``lo + 1 .. hi`` changed, in order, the size after ``hi`` and
        the newest version of each: from memory while they fit in MERGE_BYTES, else from
        the state at ``hi``."""
        walk = _Walk(self, store, db, timeline, hi, kept)
        newest: dict[int, Page] = {}
        changed: set[int] = set()
        db_pages, fits = 0, True
        try:
            for unit in walk.commits(lo + 1):
                for k in range(unit.count):
                    pgno, page = unit.frame(k)
                    changed.add(pgno)
                    if fits:
                        newest[pgno] = page
                        if len(newest) * PAGE > MERGE_BYTES:
                            fits = False
                            newest.clear()
                db_pages = unit.db_pages
        finally:
            walk.close()
        order = sorted(pgno for pgno in changed if pgno <= db_pages)
        if fits and order:
            return order, db_pages, newest.__getitem__, lambda: None
        # too large to merge here, or only pages past the new end changed (the size must
        # still travel, on a frame): the pages of the state at ``hi``
        state = self.state(store, db, timeline, hi)
        fd = os.open(state.path, os.O_RDONLY)
        return (order or [1], db_pages, lambda pgno: os.pread(fd, PAGE, (pgno - 1) * PAGE),
                lambda: os.close(fd))

    def read(self, frames: Frames, first: int, count: int) -> bytes:
        """Worker thread: frames of a file (503 if it was dropped from the cache meanwhile:
        clients retry a 5xx, and it is made again)."""
        try:
            return frames.read(first, count)
        except FileNotFoundError:
            raise ShoalError(Code.STORAGE_UNAVAILABLE, "the generation's frames were being "
                             "replaced: retry") from None

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

    # -- lines and cuts (event loop) --
    def line(self, db: str, timeline: str, line: gens.Line) -> None:
        self.lines[(db, timeline)] = line
        while len(self.lines) > LINES:
            self.lines.popitem(last=False)

    def retained(self, db: str) -> None:
        """Retention deleted objects of ``db``: what the store keeps is read again."""
        for key in [k for k in self.earliest if k[0] == db]:
            del self.earliest[key]

    def cuts_of(self, db: str, timeline: str, owner: Database) -> Cuts:
        """New cuts for an open branch, not counted yet (``count`` -1)."""
        found = Cuts(weakref.ref(owner))
        self.cuts[(db, timeline)] = found
        while len(self.cuts) > LINES:
            self.cuts.popitem(last=False)
        return found


def _commit_unit(commit: Commit) -> _Unit:
    if commit.page_size != PAGE:
        raise ShoalError(Code.PAGE_SIZE_UNSUPPORTED, f"txid {commit.txid} has "
                         f"{commit.page_size}-byte pages; embedded replicas need 4,096-byte "
                         "pages")
    frames = commit.frames
    return _Unit(len(frames), commit.db_pages, lambda k: frames[k])


class _Walk:
    """Worker thread: a timeline's commits from a txid up to ``upto``, from the leader's
    memory (``kept``: every durable commit after some txid) or the store."""

    def __init__(self, syncs: Syncs, store: ObjectStore, db: str, timeline: str, upto: int,
                 kept: list[bytes] | None):
        self.syncs, self.store, self.db = syncs, store, db
        self.timeline, self.upto, self.kept = timeline, upto, kept
        self.fds: list[int] = []

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)

    def _state(self, txid: int) -> _Unit:
        """A txid the store keeps only as a snapshot: every page of that state."""
        state = self.syncs.state(self.store, self.db, self.timeline, txid)
        fd = os.open(state.path, os.O_RDONLY)
        self.fds.append(fd)
        return _Unit(state.pages, state.pages,
                     lambda k: (k + 1, os.pread(fd, PAGE, k * PAGE)))

    def commits(self, first: int) -> Iterator[_Unit]:
        need = first
        for data in self.kept or ():
            head = read_header(data)
            key = f"{self.timeline}/{head.first_txid}-{head.last_txid}"
            for commit in self.syncs.segment(key, data):  # decoded once (its cache)
                if commit.txid == need and need <= self.upto:
                    yield _commit_unit(commit)
                    need += 1
        if need > self.upto:
            return
        record = load_timeline(self.store, self.db, self.timeline)
        while need <= self.upto:
            segs, snaps = listing(self.store, self.db, record)
            plan = furthest(segs, need - 1, self.upto, LIST_BYTES)
            if not plan or plan[0].first > need:  # in no segment: a re-based log keeps it
                if any(snap.txid == need for snap in snaps):  # as a snapshot
                    yield self._state(need)
                    need += 1
                    continue
                raise _Expired(f"txid {need} of timeline {self.timeline} is no longer kept")
            before = need
            cached = [(seg, self.syncs.cached(seg.key)) for seg in plan]
            missing = [seg for seg, found in cached if found is None]
            fetched = dict(download(self.store, missing)) if missing else {}
            for seg, found in cached:
                if seg.first > need:  # a gap: listed again, above
                    break
                for commit in found or self.syncs.segment(seg.key, fetched[seg]):
                    if commit.txid == need and need <= self.upto:
                        yield _commit_unit(commit)
                        need += 1
            if need == before:  # its key said it holds txid ``need``; its body did not
                raise CorruptObject(f"segment {plan[0].key} lacks txid {need}", plan[0].key)


def _cut(store: ObjectStore, db: str, timeline: str, index: int, txid: int) -> int | None:
    """Worker thread: make cut ``index``; None if the cuts do not reach it (count again)."""
    try:
        return gens.make_cut(store, db, timeline, index, txid)
    except LogConflict:
        return None


def _mapped(fn: Callable[..., T], *args: Any) -> T:
    """Worker thread: ``fn`` with the store's and the log's failures as the API's codes."""
    with storage_errors():
        return fn(*args)


@dataclass(slots=True)
class _Synced:
    """A branch as a sync request sees it: its line and cuts, its durable head, the
    leader's recent segments after the last cut (None: not all in memory)."""

    name: str
    branch: str
    line: gens.Line
    cuts: Cuts
    durable: int
    feed: Feed


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

    async def _sync_io(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` on the I/O threads, at most SYNC_THREADS of them at once: replicas
        catching up (a restore of a whole state, segments downloaded) never take the threads
        that ship every other database's commits."""
        async with self.syncs.gate:
            return await self._io(_mapped, fn, *args)

    async def _synced(self, principal: Principal, name: str, branch: str | None,
                      cut: Callable[[_Synced], bool] | None = None) -> _Synced:
        """The branch, with its line and cuts. A request that may cut (``cut`` given) first
        waits (up to storage_timeout) for the commits made before it to ship, then cuts at
        the durable head if ``cut`` says it is for the open generation (a closed
        generation's frames never change: no wait for them). Cuts are made while the branch
        is in use here, so a restore, which takes it out of service to count them, never
        misses one."""
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
            line = self.syncs.lines.get((name, timeline))
            if line is None:
                found = await self._io(_mapped, registry.branch, name, branch)
                line = gens.line_of(found.entry())
                if line.timeline != timeline:  # moved just now: the client asks again
                    raise ShoalError(Code.STORAGE_UNAVAILABLE, f"{name}/{branch} moved to "
                                     "another timeline during the request: retry")
                self.syncs.line(name, timeline, line)
            cuts = self.syncs.cuts.get((name, timeline))
            if cuts is None or cuts.owner() is not db:  # (no await between: one per open)
                cuts = self.syncs.cuts_of(name, timeline, db)
            if cut is not None:  # it may cut: what is durable once the commits before it are
                # (what is durable already if the store is slow or the log stopped: writes
                # say why), waited for outside the lock other requests take
                with contextlib.suppress(TimeoutError, LogError):
                    await asyncio.wait_for(shipper.wait_durable(shipper.head_txid),
                                           float(self.settings.storage_timeout))
            synced = _Synced(name, branch, line, cuts, shipper.durable_txid, shipper.feed)
            async with cuts.lock:
                if cuts.count < 0:  # counted once per open branch
                    cuts.count = await self._sync_io(gens.count_cuts, self.registry.store,
                                                     name, timeline)
                for _ in range(2 if cut is not None else 0):  # a stale count: count again
                    assert cut is not None
                    if not cut(synced) or \
                            synced.durable <= await self._cut_txid(synced, cuts.count):
                        break
                    made = await self._sync_io(_cut, self.registry.store, name, timeline,
                                               cuts.count, synced.durable)
                    if made is not None:
                        cuts.txids[cuts.count] = made
                        cuts.count += 1
                        break
                    cuts.count = await self._sync_io(gens.count_cuts, self.registry.store,
                                                     name, timeline)
            return synced
        finally:
            self.lifecycle.release(db)

    async def _cut_txid(self, synced: _Synced, count: int) -> int:
        """The txid the line's first ``count`` cuts end at: the base of generation
        ``first + count`` (the line's fork for the first)."""
        if count == 0:
            return synced.line.fork_txid
        index = count - 1
        found = synced.cuts.txids.get(index)
        if found is None:
            found = await self._sync_io(gens.read_cut, self.registry.store, synced.name,
                                        synced.line.timeline, index)
            synced.cuts.txids[index] = found
        return found

    def _kept(self, synced: _Synced, after: int) -> list[bytes] | None:
        """The leader's recent segments holding every durable commit after ``after``."""
        return synced.feed.since(after, inside=True)

    async def sync_info(self, principal: Principal, name: str, branch: str | None) -> SyncInfo:
        """The generation a new replica starts from (``GET /info``): the open one, cut at
        the durable head first, so that its export is the newest state."""
        synced = await self._synced(principal, name, branch, cut=lambda s: True)
        return SyncInfo(synced.line.first + synced.cuts.count)

    async def sync_export(self, principal: Principal, name: str, branch: str | None,
                          generation: int) -> State:
        """The database at the start of ``generation`` (``GET /export/{g}``): a file, kept
        until a few newer states replace it (open it before awaiting anything)."""
        synced = await self._synced(principal, name, branch)
        where = gens.place(synced.line, generation, synced.cuts.count)
        if where is None or where.kind not in (Kind.CLOSED, Kind.OPEN):
            raise self._expired(synced, generation)
        base = await self._cut_txid(synced, where.index)
        try:
            return await self._sync_io(self.syncs.state, self.registry.store, name,
                                       synced.line.timeline, base)
        except _Expired:
            raise self._expired(synced, generation) from None

    async def sync_pull(self, principal: Principal, name: str, branch: str | None, generation: int,
                        start: int, end: int) -> Pulled:
        """Frames ``start`` .. ``end - 1`` of ``generation`` (``GET /sync/{g}/{s}/{e}``)."""
        if start < 1 or end <= start:
            raise ShoalError(Code.INVALID_REQUEST, "frames are numbered from 1, and the end "
                             "(exclusive) comes after the start")

        def opened(synced: _Synced) -> bool:  # a replica at the open generation: cut it
            return generation == synced.line.first + synced.cuts.count

        synced = await self._synced(principal, name, branch,
                                    cut=opened if start == 1 else None)
        line = synced.line
        current = line.first + synced.cuts.count
        where = gens.place(line, generation, synced.cuts.count)
        if where is None or (where.kind is Kind.OPEN and start != 1):
            raise self._expired(synced, generation)  # an open generation has no frames yet
        if where.kind is Kind.OPEN:  # nothing after the last cut
            return Pulled(b"", generation)
        if where.kind is Kind.PASSED:  # an older generation of the line a restore left
            return Pulled(b"", current)
        stand_in = None
        if where.kind is Kind.CLOSED:  # one that starts before what the store can restore?
            stand_in = self.syncs.made((name, line.timeline, -2, where.index))
            if stand_in is None and \
                    await self._cut_txid(synced, where.index) < await self._earliest(synced):
                try:
                    if start != 1:  # its stand-in is gone (a restart): from frame 1 again
                        raise _Expired(f"generation {generation}'s stand-in is gone")
                    stand_in = await self._behind(principal, synced, where.index)
                except _Expired:
                    raise self._expired(synced, generation) from None
                if stand_in is None:  # passed on to the one that carries the state
                    return Pulled(b"", current)
        try:
            if stand_in is not None:
                frames = stand_in
            elif where.kind is Kind.BRIDGE:
                frames = await self._sync_io(self.syncs.bridge, self.registry.store, name,
                                             line.timeline, line.fork_txid)
            else:
                lo = await self._cut_txid(synced, where.index)
                hi = await self._cut_txid(synced, where.index + 1)
                frames = await self._sync_io(self.syncs.generation, self.registry.store,
                                             name, line.timeline, lo, hi,
                                             self._kept(synced, lo))
            if start - 1 > frames.count:  # past the end + 1: the replica's place is wrong
                raise _Expired(f"generation {generation} has {frames.count} frames")
            body = await self._sync_io(self.syncs.read, frames, start - 1,
                                       min(end - start, MAX_FRAMES))
        except _Expired:
            raise self._expired(synced, generation) from None
        return Pulled(body, generation) if body else Pulled(b"", current)

    async def _earliest(self, synced: _Synced) -> int:
        """The earliest txid the store can restore on the branch's line (what retention
        left), as this node last read it."""
        key = (synced.name, synced.line.timeline)
        found = self.syncs.earliest.get(key)
        if found is None:
            point = await self._sync_io(history, self.registry.store, synced.name, key[1])
            found = self.syncs.earliest[key] = point.earliest.txid
            while len(self.syncs.earliest) > LINES:
                self.syncs.earliest.popitem(last=False)
        return found

    async def _behind(self, principal: Principal, synced: _Synced,
                      index: int) -> Frames | None:
        """A closed generation that starts before what the store can restore (retention
        took its commits, or will): its replicas get a snapshot. Let ``r`` be the first
        generation that starts at or after the earliest restorable txid (the open one, cut
        at the head first if it starts before). Every generation before ``r - 1`` is passed
        on (no frames: a replica holds whole generations only, each one commit, so it moves
        on holding a consistent state); ``r - 1`` is one commit writing every page of the
        state at ``r``'s start, which leaves a replica exactly there whatever it held. All
        replicas decide by one earliest txid (``_earliest``), so none meets a generation it
        should have passed. The stand-in is made for a replica at frame 1 and kept; one
        further on whose stand-in is gone (a restart: ``r`` may have moved) is told to start
        again (REPLICA_EXPIRED: its next sync asks for frame 1)."""
        earliest = await self._earliest(synced)
        if await self._cut_txid(synced, synced.cuts.count) < earliest:  # cut the open one
            synced = await self._synced(principal, synced.name, synced.branch,
                                        cut=lambda s: True)
        low, high = index + 1, synced.cuts.count  # the first start at or after ``earliest``
        if await self._cut_txid(synced, high) < earliest:
            raise _Expired("nothing after it is restorable")
        while low < high:
            mid = (low + high) // 2
            if await self._cut_txid(synced, mid) >= earliest:
                high = mid
            else:
                low = mid + 1
        if index < low - 1:
            return None
        return await self._sync_io(self.syncs.stand_in, self.registry.store, synced.name,
                                   synced.line.timeline, index,
                                   await self._cut_txid(synced, low))

    def sync_push(self, principal: Principal, name: str, branch: str | None) -> NoReturn:
        """Offline writes pushed as WAL frames (``POST /sync/...``): refused for now (they
        need exact conflict detection against the branch's head)."""
        check_name(name)
        principal.require("write", name)
        principal.on(branch)
        raise ShoalError(Code.SYNC_PUSH_UNSUPPORTED, "Shoal takes no offline writes from "
                         "embedded replicas yet: open the replica without offline mode, so "
                         "that its writes go to the server")

    @staticmethod
    def _expired(synced: _Synced, generation: int) -> ShoalError:
        now = synced.line.first + synced.cuts.count
        why = "never had" if generation > now else "no longer keeps"
        return ShoalError(Code.REPLICA_EXPIRED, f"{synced.name}/{synced.branch} {why} "
                          f"generation {generation} (it is at generation {now}): this replica "
                          "was made from another history, or is behind what the store keeps")
