"""The node's durable state in the object store: catalog records, secrets, branches.

Beside the commit log's keys (``dbs/...``, see ``log/layout.py``) the store holds::

    catalog/signing-key              the key that signs tokens (the first node creates it)
    catalog/admin-token              the generated admin token (unless set by the environment)
    catalog/databases/{name}.json    {"name", "created_at"}: the database exists
    catalog/tokens/{id}.json         a token's record (never the token itself)
    catalog/revoked/{id}             a revocation: the object's existence is the fact

So a node started on an empty disk with the same store serves every database and
accepts every token: ``catalog.db``, ``signing-key`` and ``admin-token`` in the
data directory are caches, rebuilt from the store at start, and each branch's
file is restored from its snapshot and log when it is first opened.

A database's record is written last when it is created and deleted first when it
is deleted: objects under ``dbs/{name}/`` without a record are leftovers of an
interrupted create or delete, and the next create of that name clears them.

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
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from shoal.engine.catalog import Catalog, TokenRecord
from shoal.engine.connection import SCHEMA, Connection
from shoal.engine.database import BEGIN_IMMEDIATE, COMMIT, Database
from shoal.engine.journal import Journal, LogState, Stores
from shoal.errors import ShoalError
from shoal.log import branch as branch_log
from shoal.log import compaction, layout
from shoal.log.errors import (
    BranchExists,
    BranchNotFound,
    CorruptObject,
    LogConflict,
    LogError,
    MissingObject,
)
from shoal.log.restore import History, history, resolve_time, restore
from shoal.log.retention import RetentionReport, apply_retention
from shoal.log.snapshot import take_snapshot
from shoal.log.timeline import Timeline, ancestry, covered, load_timeline, segments, snapshots
from shoal.storage.base import NotFound, PreconditionFailed

log = logging.getLogger("shoal.registry")
P = ParamSpec("P")
T = TypeVar("T")

CATALOG = "catalog/"
DATABASES = "catalog/databases/"
TOKENS = "catalog/tokens/"
REVOKED = "catalog/revoked/"
LOCAL_FILES = ("", "-wal", "-shm", "-journal")


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """Turn the log's and the store's failures into the API's error codes."""
    try:
        yield
    except ShoalError:
        raise
    except BranchNotFound as exc:
        raise ShoalError("BRANCH_NOT_FOUND", str(exc)) from None
    except BranchExists as exc:
        raise ShoalError("BRANCH_EXISTS", str(exc)) from None
    except (MissingObject, CorruptObject) as exc:
        extra = {"object": exc.key} if exc.key else {}
        raise ShoalError("STORAGE_CORRUPT", str(exc), **extra) from None
    except LogConflict as exc:
        raise ShoalError("STORAGE_UNAVAILABLE", str(exc)) from None
    except LogError as exc:
        raise ShoalError("STORAGE_CORRUPT", str(exc)) from None
    except Exception as exc:  # the store failed (transport, credentials, a lost condition)
        log.warning("object store call failed: %r", exc)
        raise ShoalError("STORAGE_UNAVAILABLE", f"object store: {type(exc).__name__}: {exc}") \
            from None


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
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def marker_path(path: Path) -> Path:
    """The file beside a branch's database naming the timeline it holds."""
    return path.with_suffix(".timeline")


FUTURE_SLACK = 60.0  # seconds a point may lie ahead of the node's clock (skew between hosts)
KEEP_TRIES = 1000  # restores of one branch within one second, each kept under its own name


def keep_names(branch: str, now: float) -> Iterator[str]:
    """Names for the state before a restore: '<branch>-before-restore-<UTC second>', then
    '-2', '-3'... for later restores in the same second; every one is a valid branch name."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d-%H%M%S")
    base = f"{branch[:28]}-before-restore-{stamp}"
    yield base
    for n in range(2, KEEP_TRIES):
        yield f"{base}-{n}"


@dataclass(frozen=True)
class BranchView:
    """A branch as listed: its record, its head in the store and its own bytes there."""

    branch: branch_log.Branch
    head_txid: int
    store_bytes: int


class Registry:
    def __init__(self, stores: Stores, settings: Any, executor: Executor, scratch: Path):
        self.stores = stores
        self.store = stores.store
        self.settings = settings
        self.executor = executor  # SQL threads (databases are opened with them)
        self.scratch = scratch  # where new database images are built

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
            _write_private(local, value + "\n")
        return value

    # -- catalog -------------------------------------------------------------------------------
    @mapped
    def sync_catalog(self, catalog: Catalog) -> tuple[set[str], set[str]]:
        """Make the local catalog list exactly the store's databases; return (names,
        revoked token ids)."""
        stored = {info.key[len(DATABASES):-len(".json")] for info in self.store.list(DATABASES)
                  if info.key.endswith(".json")}
        local = catalog.names()
        for name in sorted(stored - local):
            try:
                record = json.loads(self.store.get(f"{DATABASES}{name}.json").data)
            except NotFound:
                continue
            catalog.adopt_database(name, float(record["created_at"]))
        for name in sorted(local - stored):
            log.warning("database %r is in the local catalog but not in the store %s: "
                        "dropped from the catalog (its local files are left alone)",
                        name, self.store.url)
            catalog.delete_database(name)
        revoked = {info.key[len(REVOKED):] for info in self.store.list(REVOKED)}
        return stored, revoked

    def _wipe(self, prefix: str) -> None:
        for info in self.store.list(prefix):
            self.store.delete(info.key)

    @mapped
    def create_database(self, name: str, created_at: float) -> None:
        """A new database in the store: main on a root timeline, a snapshot at txid 0 of a
        file holding Shoal's tables, then (last: it makes the database exist) its record."""
        key = f"{DATABASES}{name}.json"
        try:
            self.store.head(key)
            raise ShoalError("DATABASE_EXISTS", f"database {name!r} already exists")
        except NotFound:
            pass
        self._wipe(layout.database_prefix(name))
        main = branch_log.create_database(self.store, name, created_at)
        self.scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.scratch) as tmp:
            path = Path(tmp) / "new.db"
            conn = Connection(str(path), reader=False, manual_checkpoints=True)
            try:
                conn.internal(BEGIN_IMMEDIATE)
                conn.internal(SCHEMA)
                conn.internal(COMMIT)
                conn.internal("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
            take_snapshot(self.store, name, main.timeline, path, 0, created_at)
        record = json.dumps({"name": name, "created_at": created_at}).encode()
        try:
            self.store.put(key, record, if_none_match="*")
        except PreconditionFailed:
            raise ShoalError("DATABASE_EXISTS", f"database {name!r} already exists") from None

    @mapped
    def forget_database(self, name: str) -> None:
        """Delete the record: from here on the database does not exist."""
        self.store.delete(f"{DATABASES}{name}.json")

    @mapped
    def wipe_database(self, name: str) -> None:
        """Delete its branches and history (after its branches closed: nothing ships)."""
        self._wipe(layout.database_prefix(name))

    @mapped
    def put_token(self, rec: TokenRecord) -> None:
        data = json.dumps({"id": rec.id, "databases": rec.databases, "access": rec.access,
                           "created_by": rec.created_by, "created_at": rec.created_at,
                           "expires_at": rec.expires_at}).encode()
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

    # -- opening a branch ----------------------------------------------------------------------
    @mapped
    def prepare(self, name: str, branch: str, path: Path, force: bool = False) -> LogState:
        """Make ``path`` hold the branch's timeline, restoring it from the store when it is
        missing, holds another timeline, or ``force``; then read the store's view of it."""
        record = branch_log.get_branch(self.store, name, branch)
        marker = marker_path(path)
        try:
            held = marker.read_text().strip()
        except FileNotFoundError:
            held = None
        if force or held != record.timeline or not path.exists():
            self.discard_local(path)
            restore(self.store, name, record.timeline, path)
            _write_private(marker, record.timeline + "\n")
        return self._state(name, record)

    def _state(self, name: str, record: branch_log.Branch) -> LogState:
        segs = segments(self.store, name, record.timeline)
        snaps = snapshots(self.store, name, record.timeline)
        head = max([record.fork_txid] + [s.last for s in segs] + [s.txid for s in snaps])
        head_time = max([record.created_at] + [s.last_time for s in segs] +
                        [s.time for s in snaps])
        last = snaps[-1] if snaps else None
        floor = last.txid if last else record.fork_txid
        merged = covered(segs)  # bytes compaction merged count once
        return LogState(record, head, head_time, last.time if last else record.created_at,
                        sum(s.size for s in segs if s.last > floor and s.key not in merged))

    @staticmethod
    def discard_local(path: Path) -> None:
        """Delete a branch's local files (marker first: a half-deleted copy is never used)."""
        with contextlib.suppress(FileNotFoundError):
            marker_path(path).unlink()
        for suffix in LOCAL_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}{suffix}")

    async def open(self, name: str, branch: str, path: Path) -> Database:
        """Open a branch with its commit log: hydrate from the store where the local copy is
        missing or behind, ship what the local copy has beyond the store."""
        loop = asyncio.get_running_loop()
        force = False
        for _ in range(2):
            state = await loop.run_in_executor(self.stores.io, self.prepare, name, branch, path,
                                               force)
            db = Database(name, branch, str(path), self.settings, self.executor)
            db.journal = Journal(self.stores, name, state, str(path), self.settings,
                                 self.executor)
            db.timeline = state.branch.timeline
            db.open()
            if db.txid >= state.head_txid:
                try:
                    with storage_errors():
                        await db.journal.start(db)
                except BaseException:
                    await db.aclose(flush=False)
                    raise
                return db
            log.warning("local copy of %s/%s is at txid %d, the store at %d: restoring it",
                        name, branch, db.txid, state.head_txid)
            db.close()
            force = True
        raise ShoalError("STORAGE_CORRUPT", f"{name}/{branch}: the restored file is at txid "
                                            f"{db.txid}, the store's log reaches "
                                            f"{state.head_txid}")

    # -- branches ------------------------------------------------------------------------------
    @mapped
    def branch(self, name: str, branch: str) -> branch_log.Branch:
        return branch_log.get_branch(self.store, name, branch)

    @mapped
    def branches(self, name: str) -> list[BranchView]:
        out = []
        for record in branch_log.list_branches(self.store, name):
            segs = segments(self.store, name, record.timeline)
            snaps = snapshots(self.store, name, record.timeline)
            head = max([record.fork_txid] + [s.last for s in segs] + [s.txid for s in snaps])
            out.append(BranchView(record, head,
                                  sum(s.size for s in segs) + sum(s.size for s in snaps)))
        return out

    @mapped
    def head(self, name: str, branch: str) -> int:
        return self._state(name, branch_log.get_branch(self.store, name, branch)).head_txid

    @mapped
    def history(self, name: str, timeline: str) -> History:
        return history(self.store, name, timeline)

    @mapped
    def resolve(self, name: str, timeline: str, when: float, now: float) -> int:
        """The txid a branch on ``timeline`` had at ``when``; OUTSIDE_HISTORY before its
        window or in the future (a local time read as UTC, most likely: never quietly
        the latest state); between its head and now, its head."""
        if when > now + FUTURE_SLACK:
            raise ShoalError("OUTSIDE_HISTORY", f"{_iso(when)} is in the future (the node's "
                                                f"time is {_iso(now)}); give UTC or a zone")
        window = history(self.store, name, timeline)
        if when < window.earliest.time:
            raise ShoalError("OUTSIDE_HISTORY", f"{_iso(when)} is before the earliest "
                                                f"restorable point ({_iso(window.earliest.time)})")
        return resolve_time(self.store, name, ancestry(self.store, name, timeline), when)

    @mapped
    def check_point(self, name: str, timeline: str, txid: int) -> None:
        """OUTSIDE_HISTORY unless txid of ``timeline`` is restorable."""
        try:
            window = history(self.store, name, timeline)
        except MissingObject:
            raise ShoalError("OUTSIDE_HISTORY", f"the history of timeline {timeline} is no "
                                                f"longer in the store") from None
        if not window.earliest.txid <= txid <= window.latest.txid:
            raise ShoalError("OUTSIDE_HISTORY",
                             f"txid {txid} is outside the restorable window "
                             f"{window.earliest.txid}..{window.latest.txid}")

    @mapped
    def create_branch(self, name: str, new: str, source: branch_log.Branch, timeline: str,
                      fork_txid: int, now: float) -> branch_log.Branch:
        """A branch whose state is ``timeline``'s at fork_txid (which must be durable)."""
        return branch_log.create_branch(self.store, name, new, replace(source, timeline=timeline),
                                      fork_txid, now)

    @mapped
    def delete_branch(self, name: str, branch: str) -> None:
        branch_log.delete_branch(self.store, name, branch)

    @mapped
    def reset_branch(self, name: str, branch: str, parent: branch_log.Branch, parent_txid: int,
                     now: float) -> branch_log.Branch:
        record = branch_log.get_branch(self.store, name, branch)
        return branch_log.reset_branch(self.store, record, parent, parent_txid, now)

    @mapped
    def restore_branch(self, name: str, branch: str, timeline: str, txid: int,
                       keep_as: str | None, now: float) -> tuple[branch_log.Branch,
                                                                 branch_log.Branch]:
        """Move the branch to ``timeline`` at txid; its state before stays reachable as
        another branch (``keep_as``, or a name made from the branch and the time)."""
        record = branch_log.get_branch(self.store, name, branch)
        current = load_timeline(self.store, name, record.timeline)
        kept = self._keep(name, branch, current, keep_as, now)
        try:
            moved = branch_log.move_branch(self.store, record, timeline, txid, now)
        except BaseException:
            with contextlib.suppress(Exception):  # never leave two names on one timeline
                self.store.delete(layout.branch_key(name, kept.name))
            raise
        return moved, kept

    def _keep(self, name: str, branch: str, current: Timeline, keep_as: str | None,
              now: float) -> branch_log.Branch:
        """A new branch name on the timeline a restore leaves: ``keep_as``, or the first free
        name from `keep_names` (the store's conditional put decides, even across nodes)."""
        if keep_as:
            return branch_log.adopt_timeline(self.store, name, keep_as, current, branch, now)
        for want in keep_names(branch, now):
            try:
                return branch_log.adopt_timeline(self.store, name, want, current, branch, now)
            except BranchExists:
                continue
        raise ShoalError("BRANCH_EXISTS", f"every name for the state of {name}/{branch} "
                                          f"before this restore is taken",
                         hint="Give one with 'keep_as'.")

    @mapped
    def compact(self, name: str, now: float,
                keep_going: Callable[[], bool] = lambda: True) -> compaction.CompactionReport:
        return compaction.compact(self.store, name, now=now,
                                  min_segments=self.settings.compact_min_segments,
                                  keep_going=keep_going)

    @mapped
    def retention(self, name: str, now: float, window: float) -> RetentionReport:
        return apply_retention(self.store, name, now=now, window=window)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
