"""The node's durable state in the object store: catalog records, secrets, branches.

Beside the commit log's keys (``dbs/...``, see ``log/layout.py``) the store holds::

    catalog/signing-key              the key that signs tokens (the first node creates it)
    catalog/admin-token              the generated admin token (unless set by the environment)
    catalog/databases/{name}.json    the database's record: its live incarnation's branches
                                     and its deleted incarnations (log/branch.py)
    catalog/tokens/{id}.json         a token's record (never the token itself)
    catalog/revoked/{id}             a revocation: the object's existence is the fact
    catalog/narrowed/{id}/{name}     the token no longer reaches database {name}

So a node started on an empty disk with the same store serves every database and
accepts every token: ``catalog.db``, ``signing-key`` and ``admin-token`` in the
data directory are caches, rebuilt from the store at start, and each branch's
file is restored from its snapshot and log when it is first opened.

A database is created by one write of its record (after its root timeline and
txid-0 snapshot are stored), and deleted by one write too: the incarnation moves to
the record's deleted ones and stays restorable (``undelete``) until retention expires
it or a purge removes it. Timelines no record reaches (an interrupted create) are
retention's to remove.

Every method but :meth:`Registry.open` blocks (store calls): run it on the I/O
executor. Failures become ShoalErrors: BRANCH_NOT_FOUND, BRANCH_EXISTS,
OUTSIDE_HISTORY, STORAGE_CORRUPT (naming the object) or STORAGE_UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import apsw

from shoal.engine import tables
from shoal.engine.catalog import Catalog, TokenInfo, TokenRecord, token_page
from shoal.engine.connection import Connection
from shoal.engine.database import BEGIN_IMMEDIATE, COMMIT, Database
from shoal.engine.disk import optional
from shoal.engine.journal import (
    Journal,
    LogState,
    Stores,
    discard_local,
    marker_path,
    quarantine,
)
from shoal.engine.pool import lane_of
from shoal.errors import Code, ShoalError, disk_full
from shoal.log import branch as branch_log
from shoal.log import compaction, layout
from shoal.log.branch import Incarnation
from shoal.log.errors import (
    BranchExists,
    BranchNotFound,
    CorruptObject,
    DatabaseExists,
    DatabaseNotFound,
    LogConflict,
    LogError,
    MissingObject,
)
from shoal.log.restore import History, check_plan, history, resolve_time, restore
from shoal.log.retention import RetentionReport, apply_retention
from shoal.log.snapshot import take_snapshot
from shoal.log.timeline import (
    Timeline,
    ancestry,
    covered,
    create_timeline,
    list_timelines,
    listed_head,
    listing,
    load_timeline,
)
from shoal.metrics import METRICS
from shoal.settings import Settings
from shoal.storage.base import NotFound, PreconditionFailed, StoreError
from shoal.storage.fenced import Fenced

log = logging.getLogger("shoal.registry")
P = ParamSpec("P")
T = TypeVar("T")

CATALOG = "catalog/"
DATABASES = "catalog/databases/"
TOKENS = "catalog/tokens/"
REVOKED = "catalog/revoked/"
NARROWED = "catalog/narrowed/"  # {token id}/{database}: the token no longer reaches it


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """Turn the log's and the store's failures into the API's error codes, by name. A full
    local disk is DISK_FULL wherever it surfaced; anything else (a TypeError, a KeyError:
    a bug) goes up as it is, to the server's one handler of the unexpected, which logs its
    traceback and answers 500 INTERNAL: never blamed on the store."""
    try:
        yield
    except ShoalError:
        raise
    except BranchNotFound as exc:
        raise ShoalError(Code.BRANCH_NOT_FOUND, str(exc)) from None
    except BranchExists as exc:
        raise ShoalError(Code.BRANCH_EXISTS, str(exc)) from None
    except DatabaseExists as exc:
        raise ShoalError(Code.DATABASE_EXISTS, str(exc)) from None
    except DatabaseNotFound as exc:
        raise ShoalError(Code.DATABASE_NOT_FOUND, str(exc)) from None
    except (MissingObject, CorruptObject) as exc:
        extra = {"object": exc.key} if exc.key else {}
        raise ShoalError(Code.STORAGE_CORRUPT, str(exc), **extra) from None
    except LogConflict as exc:
        raise ShoalError(Code.STORAGE_UNAVAILABLE, str(exc)) from None
    except LogError as exc:
        raise ShoalError(Code.STORAGE_CORRUPT, str(exc)) from None
    except (StoreError, Fenced) as exc:  # the store failed, a lost condition, or no lease
        if (full := disk_full(exc)) is not None:  # a folder store on a full disk
            raise full from None
        log.warning("object store call failed: %s", exc)
        raise ShoalError(Code.STORAGE_UNAVAILABLE, f"object store: {exc}") from None
    except (OSError, apsw.Error) as exc:  # the node's own files: a full disk, or as it is
        if (full := disk_full(exc)) is not None:
            raise full from None
        raise


def mapped(fn: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with storage_errors():
            return fn(*args, **kwargs)
    return wrapper


def _write_private(path: Path, text: str) -> None:
    """Replace path with text, mode 0600, atomically."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:  # a full disk, say: no empty temp file left behind
        tmp.unlink(missing_ok=True)


FUTURE_SLACK = 60.0  # seconds a point may lie ahead of the node's clock (skew between hosts)
KEEP_TRIES = branch_log.KEEP_TRIES  # restores of one branch within one second, each kept


def keep_base(branch: str, now: float) -> str:
    """'<branch>-before-restore-<UTC second>': the state before a restore, named; later
    restores in the same second take '-2', '-3'... (``branch_log.keep_names``)."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d-%H%M%S")
    return f"{branch[:28]}-before-restore-{stamp}"


def keep_names(branch: str, now: float) -> Iterator[str]:
    """Every name a restore at ``now`` may keep the state before under; each one valid."""
    return branch_log.keep_names(keep_base(branch, now))


@dataclass(frozen=True)
class Deleted:
    """A deleted incarnation of a database, restorable until it expires."""

    name: str
    incarnation: str
    created_at: float
    deleted_at: float
    branches: list[str]


@dataclass(frozen=True)
class BranchView:
    """A branch as listed: its record, its head in the store and its own bytes there."""

    branch: branch_log.Branch
    head_txid: int
    store_bytes: int


class Registry:
    def __init__(self, stores: Stores, settings: Settings, executor: Executor, scratch: Path,
                 node: str = ""):
        self.stores = stores
        self.store = stores.store
        self.settings = settings
        self.executor = executor  # SQL threads (databases are opened with them)
        self.scratch = scratch  # where new database images are built
        self.node = node  # this node's id: the writer it names on the timelines it takes

    # -- secrets -------------------------------------------------------------------------------
    @mapped
    def secret(self, name: str, local: Path, make: Callable[[], str]) -> str:
        """The node-wide secret ``name``: the store's, or (first start) the local file's or a
        new one, stored with If-None-Match so that concurrent first starts agree."""
        key = CATALOG + name
        try:
            value = self.store.get(key).data.decode().strip()
        except NotFound:
            try:
                value = local.read_text().strip() or make()
            except FileNotFoundError:
                value = make()
            try:
                self.store.put(key, (value + "\n").encode(), if_none_match="*")
            except PreconditionFailed:
                value = self.store.get(key).data.decode().strip()
        try:
            cached = local.read_text().strip()
        except FileNotFoundError:
            cached = None
        if cached != value:
            with optional(f"caching {name} in {local}"):  # the store has it
                _write_private(local, value + "\n")
        return value

    # -- catalog -------------------------------------------------------------------------------
    def _live(self, name: str) -> Incarnation | None:
        """The live incarnation of database ``name`` (None if it is not live)."""
        record = branch_log.load_record(self.store, name)
        return record.live if record is not None else None

    @mapped
    def live(self, name: str) -> Incarnation | None:
        """The live incarnation of ``name`` as the store has it now (another node of a
        cluster may have created or deleted it)."""
        return self._live(name)

    @mapped
    def revoked(self) -> set[str]:
        """Every revoked token id (one listing)."""
        return {info.key[len(REVOKED):] for info in self.store.list(REVOKED)}

    @mapped
    def limits(self, name: str) -> dict[str, Any]:
        """The live database's own limits, as its record holds them."""
        live = self._live(name)
        return live.limits if live is not None else {}

    @mapped
    def set_limits(self, name: str, limits: dict[str, Any]) -> None:
        branch_log.set_live(self.store, name, limits=dict(limits))

    @mapped
    def cors(self, name: str) -> tuple[str, ...]:
        """The live database's own allowed origins, as its record holds them."""
        live = self._live(name)
        return live.cors_origins if live is not None else ()

    @mapped
    def set_cors(self, name: str, origins: tuple[str, ...]) -> None:
        branch_log.set_live(self.store, name, cors_origins=tuple(origins))

    @mapped
    def issuers(self, name: str) -> tuple[dict[str, Any], ...]:
        """The live database's own trusted issuers, as its record holds them."""
        live = self._live(name)
        return live.issuers if live is not None else ()

    @mapped
    def set_issuers(self, name: str, issuers: tuple[dict[str, Any], ...]) -> None:
        branch_log.set_live(self.store, name, issuers=tuple(issuers))

    @mapped
    def set_without_old(self, name: str, tables: tuple[str, ...]) -> None:
        branch_log.set_live(self.store, name, without_old=tuple(tables))

    @mapped
    def sync_catalog(self, catalog: Catalog, full: bool = False) -> tuple[set[str], set[str]]:
        """Make the local catalog list exactly the store's live databases; return (names,
        revoked token ids). The local catalog is this node's cache: databases this node
        created or deleted are in it already, so only names new to it are read, unless
        ``full`` (another node has written the store since this one: read every record)."""
        stored = {info.key[len(layout.DATABASES_PREFIX):-len(".json")]
                  for info in self.store.list(layout.DATABASES_PREFIX)
                  if info.key.endswith(".json")}
        local = catalog.names()
        live = {name for name in stored if name in local and not full}
        unknown = sorted(stored - live)
        with ThreadPoolExecutor(min(16, len(unknown) or 1)) as pool:  # many reads at once
            found = list(pool.map(self._live, unknown))
        for name, incarnation in zip(unknown, found, strict=True):
            if incarnation is None:
                continue
            live.add(name)
            if name not in local:
                catalog.adopt_database(name, incarnation.created_at)
            catalog.set_limits(name, json.dumps(incarnation.limits)
                               if incarnation.limits else None)
            catalog.set_cors(name, incarnation.cors_origins)
            catalog.set_issuers(name, incarnation.issuers)
        for name in sorted(local - live):
            log.warning("database %r is in the local catalog but not live in the store %s: "
                        "dropped from the catalog (its local files are left alone)",
                        name, self.store.url)
            catalog.delete_database(name)
        return live, self.revoked()

    def _image(self, path: Path) -> None:
        """A new database file holding Shoal's tables, checkpointed: the txid-0 state."""
        conn = Connection(str(path), reader=False, manual_checkpoints=True)
        try:
            conn.internal(BEGIN_IMMEDIATE)
            tables.create(conn)
            conn.internal(COMMIT)
            conn.internal("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    @mapped
    def create_database(self, name: str, created_at: float) -> None:
        """A new database in the store: a root timeline, a snapshot at txid 0 of a file
        holding Shoal's tables, then (the one write that makes it exist) its record."""
        if self._live(name) is not None:
            raise ShoalError(Code.DATABASE_EXISTS, f"database {name!r} already exists")
        root = create_timeline(self.store, name, None, 0, created_at)
        self.scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.scratch) as tmp:
            path = Path(tmp) / "new.db"
            self._image(path)
            take_snapshot(self.store, name, root.id, path, 0, created_at)
        branch_log.add_database(self.store, name, created_at, root)

    @mapped
    def used_before(self, name: str) -> bool:
        """Whether the name has a record: a database of it exists or existed."""
        return branch_log.load_record(self.store, name) is not None

    @mapped
    def delete_database(self, name: str, now: float) -> str:
        """Soft delete: restorable (undelete) until history_retention has passed. Returns
        the id of the incarnation deleted."""
        return branch_log.delete_database(self.store, name, now).deleted[-1].id

    @mapped
    def undelete_database(self, name: str, incarnation: str | None = None) -> float:
        """Bring a deleted incarnation back; its creation time."""
        record = branch_log.undelete_database(self.store, name, incarnation)
        assert record.live is not None
        return record.live.created_at

    @mapped
    def deleted(self, names: Collection[str] | Callable[[str], bool] | None = None
                ) -> list[Deleted]:
        """Deleted incarnations in the store (of ``names`` only, or those it accepts, if
        given), oldest first."""
        out = []
        wanted = names if callable(names) else None if names is None else names.__contains__
        for info in self.store.list(layout.DATABASES_PREFIX):
            name = info.key[len(layout.DATABASES_PREFIX):-len(".json")]
            if not info.key.endswith(".json") or (wanted is not None and not wanted(name)):
                continue
            record = branch_log.load_record(self.store, name)
            for inc in record.deleted if record is not None else ():
                assert inc.deleted_at is not None
                out.append(Deleted(name, inc.id, inc.created_at, inc.deleted_at,
                                   sorted(inc.branches)))
        return sorted(out, key=lambda d: (d.deleted_at, d.name))

    @mapped
    def purge(self, name: str, incarnations: set[str] | None = None) -> list[str]:
        """Remove deleted incarnations (all, or those named) and their history, at once:
        the record first (they stop being restorable), then every object of every
        timeline that descends from their roots. Returns the incarnations removed."""
        doomed = branch_log.forget_incarnations(self.store, name, incarnations)
        if not doomed:
            return []
        timelines = list_timelines(self.store, name)
        roots = {self._root(timelines, str(e["timeline"]))
                 for inc in doomed for e in inc.branches.values()}
        for tid, timeline in timelines.items():
            if self._root(timelines, tid) in roots - {None}:
                self._wipe(layout.log_prefix(name, tid))
                self._wipe(layout.snapshot_prefix(name, tid))
                self._wipe(layout.sync_prefix(name, tid))
                self.store.delete(layout.timeline_key(name, timeline.id))
        # the record stays, empty (no live incarnation, no deleted one: as good as none):
        # deleting it could not be made conditional, and a create of the name may race
        return [d.id for d in doomed]

    @staticmethod
    def _root(timelines: dict[str, Timeline], tid: str) -> str | None:
        """The root timeline a timeline descends from (None if a record is missing)."""
        seen = 0
        cur: str | None = tid
        while cur is not None and cur in timelines and seen <= len(timelines):
            parent = timelines[cur].parent
            if parent is None:
                return cur
            cur, seen = parent, seen + 1
        return None

    def _wipe(self, prefix: str) -> None:
        for info in self.store.list(prefix):
            self.store.delete(info.key)

    @mapped
    def put_token(self, rec: TokenRecord) -> None:
        data = json.dumps({"id": rec.id, "databases": rec.databases, "access": rec.access,
                           "created_by": rec.created_by, "created_at": rec.created_at,
                           "expires_at": rec.expires_at}
                          | ({"branch": rec.branch} if rec.branch is not None else {})).encode()
        self.store.put(f"{TOKENS}{rec.id}.json", data)

    @mapped
    def token_exists(self, token_id: str) -> bool:
        try:
            self.store.head(f"{TOKENS}{token_id}.json")
            return True
        except (NotFound, ValueError):
            return False

    @mapped
    def revoke_token(self, token_id: str, when: float) -> None:
        self.store.put(f"{REVOKED}{token_id}", json.dumps({"revoked_at": when}).encode())

    @mapped
    def token_scope(self, token_id: str) -> tuple[bool, list[str] | None]:
        """(known, its databases: None for every database), from the token's record."""
        try:
            raw = json.loads(self.store.get(f"{TOKENS}{token_id}.json").data)
        except (NotFound, ValueError):
            return False, None
        dbs = raw.get("databases")
        return True, None if dbs is None else [str(d) for d in dbs]

    @mapped
    def tokens_naming(self, database: str, now: float) -> list[str]:
        """Unexpired scoped tokens that name ``database`` (every token record is read:
        deleting a database is rare, and the store is the truth, whoever made them)."""
        out = []
        for info in self.store.list(TOKENS):
            try:
                raw = json.loads(self.store.get(info.key).data)
            except (NotFound, ValueError):
                continue
            dbs = raw.get("databases")
            if dbs is not None and database in dbs and float(raw.get("expires_at", 0)) > now:
                out.append(str(raw["id"]))
        return out

    @mapped
    def list_tokens(self, after: str | None, accept: Callable[[TokenInfo], bool],
                    limit: int) -> tuple[list[TokenInfo], str | None]:
        """A page of every token record (whoever made them), in key order after the token
        ``after``: see :func:`~shoal.engine.catalog.token_page`. One listing each of the
        revocations and narrowings, a GET per record read and per revoked one shown."""
        revoked = self.revoked()
        narrowed = self.narrowed()

        def infos() -> Iterator[TokenInfo]:
            start = f"{TOKENS}{after}.json" if after else ""
            for info in self.store.list(TOKENS, start_after=start):
                try:
                    raw = json.loads(self.store.get(info.key).data)
                    dbs = raw.get("databases")
                    rec = TokenRecord(
                        str(raw["id"]), None if dbs is None else [str(d) for d in dbs],
                        str(raw["access"]), str(raw.get("created_by", "")),
                        float(raw["created_at"]), float(raw["expires_at"]), None,
                        None if raw.get("branch") is None else str(raw["branch"]))
                except (NotFound, ValueError, KeyError, TypeError):
                    continue  # gone since the listing, or not a record of ours
                yield TokenInfo(rec, tuple(sorted(narrowed.get(rec.id, ()))),
                                rec.id in revoked)

        page, cursor = token_page(infos(), accept, limit)
        return [self._revoked_at(t) if t.revoked else t for t in page], cursor

    def _revoked_at(self, info: TokenInfo) -> TokenInfo:
        try:
            when = json.loads(self.store.get(f"{REVOKED}{info.record.id}").data)["revoked_at"]
            return replace(info, record=replace(info.record, revoked_at=float(when)))
        except (NotFound, ValueError, KeyError, TypeError):
            return info  # revoked, the time not known

    @mapped
    def narrow(self, token_id: str, database: str) -> None:
        """The token no longer reaches ``database`` (one object: its existence is the fact)."""
        self.store.put(f"{NARROWED}{token_id}/{database}", b"")

    @mapped
    def narrowed(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for info in self.store.list(NARROWED):
            tid, _, db = info.key[len(NARROWED):].partition("/")
            if db:
                out.setdefault(tid, set()).add(db)
        return out

    # -- opening a branch ----------------------------------------------------------------------
    def _settled(self, name: str, branch: str
                 ) -> tuple[branch_log.Branch, Timeline, tuple[str, ...]]:
        """The branch and its timeline's record, finishing first an operation that sealed
        the timeline and was cut short before it moved the branch (and separating
        branches that share a timeline, which only an older store can hold)."""
        found = branch_log.load_record(self.store, name)
        if found is not None and branch_log.sharing(found):
            moved = branch_log.separate(self.store, name, time.time())
            log.warning("%s: branches %s shared a timeline with an older branch (left by a "
                        "restore cut short before this version): each now has a timeline of "
                        "its own, forked at the shared head", name, ", ".join(moved))
        for _ in range(4):
            record = branch_log.get_branch(self.store, name, branch)
            timeline = load_timeline(self.store, name, record.timeline)
            if timeline.sealed is None:
                live = found.live if found is not None else None
                return record, timeline, live.without_old if live is not None else ()
            log.warning("%s/%s: finishing a %s cut short before it moved the branch", name,
                        branch, timeline.sealed.get("op", "branch operation"))
            branch_log.complete(self.store, name, timeline)
        raise ShoalError(Code.STORAGE_UNAVAILABLE, f"{name}/{branch} keeps moving; try again")

    @mapped
    def prepare(self, name: str, branch: str, path: Path, force: bool = False) -> LogState:
        """Make ``path`` hold the branch's timeline, restoring it from the store when it is
        missing, holds another timeline, was written by another node since this node's
        copy (which may then hold commits history does not have), or ``force``; then read
        the store's view of it."""
        record, timeline, without_old = self._settled(name, branch)
        marker = marker_path(path)
        try:
            held = marker.read_text().strip()
        except FileNotFoundError:
            held = None
        trusted = not force and held == record.timeline and path.exists()
        head = timeline.head
        if trusted and head is not None and head.node not in ("", self.node):
            local = stored_txid(path)
            if local > head.txid:
                aside = quarantine(path)
                log.error("%s/%s: this node's copy holds txids up to %d, but node %s took "
                          "the branch at txid %d (epoch %d): the commits above %d that this "
                          "node acknowledged (local durability) were never in the store and "
                          "are lost; the copy is set aside as %s", name, branch, local,
                          head.node, head.start - 1, head.epoch, head.txid, aside)
                METRICS.log_fenced_commits.inc(local - head.txid)
            trusted = False
        if not trusted:
            self.discard_local(path)
            restore(self.store, name, record.timeline, path)
            _write_private(marker, record.timeline + "\n")
        return replace(self._state(name, record, timeline), without_old=without_old)

    def _state(self, name: str, record: branch_log.Branch, timeline: Timeline) -> LogState:
        segs, snaps = listing(self.store, name, timeline)
        head, head_time = (listed_head(self.store, name, timeline) if timeline.head is None
                           else (timeline.head.txid, timeline.head.time))
        head_time = max([head_time, record.created_at] + [s.last_time for s in segs] +
                        [s.time for s in snaps])
        last = snaps[-1] if snaps else None
        floor = last.txid if last else record.fork_txid
        merged = covered(segs)  # bytes compaction merged count once
        return LogState(record, head, head_time, last.time if last else record.created_at,
                        sum(s.size for s in segs if s.last > floor and s.key not in merged),
                        timeline)

    discard_local = staticmethod(discard_local)

    async def open(self, name: str, branch: str, path: Path) -> Database:
        """Open a branch with its commit log: hydrate from the store where the local copy is
        missing, behind or not this node's to trust; ship what the local copy has beyond
        the store (after taking the timeline: see Journal.start)."""
        loop = asyncio.get_running_loop()
        force = False
        for _ in range(3):
            state = await loop.run_in_executor(self.stores.io, self.prepare, name, branch, path,
                                               force)
            lane = lane_of(self.executor, name)  # this database's share of the SQL threads
            journal = Journal(self.stores, name, state, str(path), self.settings, lane,
                              self.node)
            db = Database(name, branch, str(path), self.settings, lane, journal)
            db.timeline = state.branch.timeline
            db.without_old = frozenset(state.without_old)
            await db.open()
            if db.txid >= state.head_txid:
                try:
                    await journal.start(db)
                except LogConflict as exc:  # another writer took it: this copy is not history
                    log.error("%s/%s: %s; restoring this node's copy from the store", name,
                              branch, exc)
                    await db.aclose(flush=False)
                    force = True
                    continue
                except BaseException as exc:
                    await db.aclose(flush=False)
                    if isinstance(exc, Exception):
                        with storage_errors():
                            raise
                    raise
                return db
            log.warning("local copy of %s/%s is at txid %d, the store at %d: restoring it",
                        name, branch, db.txid, state.head_txid)
            db.close()
            force = True
        raise ShoalError(Code.STORAGE_CORRUPT, f"{name}/{branch}: the restored file is at txid "
                                               f"{db.txid}, the store's log reaches "
                                               f"{state.head_txid}")

    @mapped
    def hydrate(self, name: str, branch: str, path: Path) -> tuple[str, int]:
        """A follower's copy (engine/replica.py): the branch's committed head, restored
        into ``path``, with its timeline and txid. Reads only: the leader settles the
        branch's records, not a follower."""
        timeline = branch_log.get_branch(self.store, name, branch).timeline
        return timeline, restore(self.store, name, timeline, path).txid

    @mapped
    def materialise(self, name: str, timeline: str, txid: int) -> Path:
        """Restore ``timeline`` at ``txid`` into a new file under the scratch folder (every
        object read and verified on the way): the proof that a point can be restored, and
        the local copy of a branch moved there."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        path = self.scratch / f"restore-{secrets.token_hex(6)}.db"
        try:
            restore(self.store, name, timeline, path, txid=txid)
        except BaseException:
            self.discard_local(path)
            raise
        return path

    def adopt_file(self, source: Path, path: Path, timeline: str) -> None:
        """Make a materialised file the local copy of the branch now on ``timeline``."""
        self.discard_local(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, path)
        _write_private(marker_path(path), timeline + "\n")

    # -- branches ------------------------------------------------------------------------------
    @mapped
    def branch(self, name: str, branch: str) -> branch_log.Branch:
        return self._settled(name, branch)[0]

    @mapped
    def branches(self, name: str) -> list[BranchView]:
        out = []
        listed = branch_log.list_branches(self.store, name)
        timelines = [load_timeline(self.store, name, b.timeline) for b in listed]
        if any(t.sealed is not None for t in timelines):  # finish cut-short operations first
            for t in timelines:
                if t.sealed is not None:
                    branch_log.complete(self.store, name, t)
            listed = branch_log.list_branches(self.store, name)
            timelines = [load_timeline(self.store, name, b.timeline) for b in listed]
        for record, timeline in zip(listed, timelines, strict=True):
            segs, snaps = listing(self.store, name, timeline)
            head = (timeline.head.txid if timeline.head is not None else
                    max([record.fork_txid] + [s.last for s in segs] + [s.txid for s in snaps]))
            out.append(BranchView(record, head,
                                  sum(s.size for s in segs) + sum(s.size for s in snaps)))
        return out

    @mapped
    def head(self, name: str, branch: str) -> int:
        record, timeline, _ = self._settled(name, branch)
        return self._state(name, record, timeline).head_txid

    @mapped
    def history(self, name: str, timeline: str) -> History:
        return history(self.store, name, timeline)

    @mapped
    def resolve(self, name: str, timeline: str, when: float, now: float) -> int:
        """The txid a branch on ``timeline`` had at ``when``; OUTSIDE_HISTORY before its
        window or in the future (a local time read as UTC, most likely: never quietly
        the latest state); between its head and now, its head."""
        if when > now + FUTURE_SLACK:
            raise ShoalError(Code.OUTSIDE_HISTORY, f"{_iso(when)} is in the future (the node's "
                                                   f"time is {_iso(now)}); give UTC or a zone")
        window = history(self.store, name, timeline)
        if when < window.earliest.time:
            raise ShoalError(Code.OUTSIDE_HISTORY,
                             f"{_iso(when)} is before the earliest restorable point "
                             f"({_iso(window.earliest.time)})")
        return resolve_time(self.store, name, ancestry(self.store, name, timeline), when)

    @mapped
    def check_point(self, name: str, timeline: str, txid: int) -> None:
        """OUTSIDE_HISTORY unless txid of ``timeline`` is restorable."""
        try:
            window = history(self.store, name, timeline)
        except MissingObject:
            raise ShoalError(Code.OUTSIDE_HISTORY, f"the history of timeline {timeline} is no "
                                                   f"longer in the store") from None
        if not window.earliest.txid <= txid <= window.latest.txid:
            raise ShoalError(Code.OUTSIDE_HISTORY,
                             f"txid {txid} is outside the restorable window "
                             f"{window.earliest.txid}..{window.latest.txid}")

    @mapped
    def check_plan(self, name: str, timeline: str, txid: int) -> None:
        """STORAGE_CORRUPT naming the object unless every object a restore of ``timeline``
        at ``txid`` needs is listed, committed, contiguous and unforked (listing only:
        constant in the size of the data)."""
        check_plan(self.store, name, timeline, txid)

    @mapped
    def create_branch(self, name: str, new: str, source: branch_log.Branch, timeline: str,
                      fork_txid: int, now: float) -> branch_log.Branch:
        """A branch whose state is ``timeline``'s at fork_txid (which must be durable)."""
        return branch_log.create_branch(self.store, name, new, replace(source, timeline=timeline),
                                      fork_txid, now)

    @mapped
    def delete_branch(self, name: str, branch: str) -> None:
        branch_log.delete_branch(self.store, name, branch, self.node)

    @mapped
    def reset_branch(self, name: str, branch: str, parent: branch_log.Branch, parent_txid: int,
                     now: float) -> branch_log.Branch:
        record = self._settled(name, branch)[0]
        return branch_log.reset_branch(self.store, record, parent, parent_txid, now, self.node)

    @mapped
    def restore_branch(self, name: str, branch: str, timeline: str, txid: int,
                       keep_as: str | None, now: float) -> tuple[branch_log.Branch,
                                                                 branch_log.Branch]:
        """Move the branch to ``timeline`` at txid; its state before stays reachable as
        another branch (``keep_as``, or a name made from the branch and the time)."""
        record = self._settled(name, branch)[0]
        if keep_as is not None:
            with contextlib.suppress(BranchNotFound):
                branch_log.get_branch(self.store, name, keep_as)
                raise ShoalError(Code.BRANCH_EXISTS, f"branch {keep_as!r} of {name!r} already "
                                                     f"exists", hint="Pick another 'keep_as'.")
        base = keep_as or keep_base(branch, now)
        existing = {b.name for b in branch_log.list_branches(self.store, name)}
        if all(n in existing for n in branch_log.keep_names(base)):
            raise ShoalError(Code.BRANCH_EXISTS, f"every name for the state of {name}/{branch} "
                                                 f"before this restore is taken",
                             hint="Give one with 'keep_as'.")
        return branch_log.restore_in_place(self.store, record, txid, base, now, self.node,
                                           timeline=timeline)

    @mapped
    def compact(self, name: str, now: float,
                keep_going: Callable[[], bool] = lambda: True) -> compaction.CompactionReport:
        return compaction.compact(self.store, name, now=now,
                                  min_segments=self.settings.compact_min_segments,
                                  keep_going=keep_going)

    @mapped
    def retention(self, name: str, now: float, window: float) -> RetentionReport:
        return apply_retention(self.store, name, now=now, window=window)


def stored_txid(path: Path) -> int:
    """The txid in a closed branch's local file (0 if none). The connection must not
    checkpoint when it closes: the WAL may hold commits not yet in the store."""
    if not path.exists():
        return 0
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        rows = tables.read(lambda sql, args: list(conn.execute(sql, args)), tables.CURRENT,
                           lambda t: t.get_txid)
        return int(rows[0][0])
    except apsw.Error:
        return 0
    finally:
        conn.close()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
