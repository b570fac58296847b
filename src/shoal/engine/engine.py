"""The engine facade: everything the HTTP layer may ask, with access checked on entry.

It owns the catalog, the token authority, the lifecycle of open databases, the
interactive transactions, usage metering and idempotency bookkeeping. The HTTP
layer passes a :class:`~shoal.tokens.Principal` and gets records back.

Durable state lives in the object store (``registry``): the catalog's records,
the token signing key, and every branch's commit log. Every data call takes a
``branch`` (default ``main``); branch operations (create, reset, restore in
place, delete) take the branch out of service while its name moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, ItemsView, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import apsw
from prometheus_client import CollectorRegistry, generate_latest

from shoal import identity, origins, scopes, tokens
from shoal.cluster import MAX_MESSAGE, Cluster, Moved
from shoal.engine import datadir
from shoal.engine.audit import MAX_LIMIT, READ, SCHEMA, TRANSACTION, WRITE, AuditLog, AuditPage
from shoal.engine.audit import decode_cursor as audit_cursor
from shoal.engine.audit import note as audit_note
from shoal.engine.catalog import Catalog, DatabaseRecord, TokenInfo, TokenRecord
from shoal.engine.connection import (
    Counters,
    Description,
    NeedsWriter,
    Result,
    Statement,
    TransactionControl,
)
from shoal.engine.database import (
    Bookmark,
    Committed,
    Compacted,
    Database,
    IdempotencyRecord,
    Transaction,
    branch_bytes,
    make_bookmark,
    read_bookmark,
)
from shoal.engine.disk import Disk
from shoal.engine.health import LEVELS, Condition, Health, Held, Watch
from shoal.engine.journal import Stores
from shoal.engine.lease import Lease
from shoal.engine.lifecycle import Lifecycle, drain, release_memory
from shoal.engine.memory import Memory, ceiling
from shoal.engine.pool import Pool
from shoal.engine.quota import DatabaseLimits, Quotas, decode_limits, encode_limits
from shoal.engine.registry import BranchView, Deleted, Registry, stored_txid
from shoal.engine.replica import News, Replicas
from shoal.engine.rows import RowsAPI, unbound
from shoal.engine.sync import SyncAPI, Syncs
from shoal.engine.sync_v1 import LogIds, SyncV1API
from shoal.engine.webhooks import (
    LETTERS_PAGE,
    DeadLetter,
    Delivery,
    Webhook,
    WebhookRecords,
    WebhookSpec,
)
from shoal.engine.webhooks import new_id as new_webhook_id
from shoal.engine.webhooks import new_secret as new_webhook_secret
from shoal.errors import Code, ShoalError
from shoal.feed.reader import ALL, ChangesPage, Expired, Filter, Position, events, stored
from shoal.log import feed as feeds
from shoal.log.branch import Branch
from shoal.log.errors import MissingObject
from shoal.log.restore import History, resolve_time
from shoal.log.segment import Captured
from shoal.log.shipper import Shipper
from shoal.log.timeline import ancestry, load_timeline
from shoal.metrics import METRICS, UsageCollector
from shoal.names import check as check_name
from shoal.settings import Settings, SettingsError
from shoal.storage import Unusable, open_store
from shoal.storage.base import ObjectStore
from shoal.storage.fenced import FencedStore
from shoal.storage.retry import RetryingStore

log = logging.getLogger("shoal")
T = TypeVar("T")

SWEEP_INTERVAL = 0.25
RELEASE_INTERVAL = 1.0  # at most this often, hand memory freed by closed connections to the OS
USAGE_FLUSH_INTERVAL = 2.0
RETENTION_INTERVAL = 600.0  # seconds between retention passes over every database
REVOKED_SYNC = 60.0  # seconds between a cluster node's listings of the revocations
NEGATIVE_TTL = 5.0  # seconds a name the store did not know is not looked up again
NEGATIVE_NAMES = 10_000  # most such names remembered (forgotten all at once when full)
CORS_REFRESH = 10.0  # seconds between reads of a database's allowed origins before a refusal
EXIT_LEASE_LOST = 75  # the process's exit status when another node took the store's lease
COMPACTION_BUDGET = 60.0  # seconds of compaction a database gets per pass (a backlog waits)


TIMELINE_HEADER = b"shoal-timeline"  # the leader's timeline, on a feed's answer
# what a replica's read fails with when its copy lags (a table the leader created a moment
# ago) or is damaged: the leader answers it instead (a real error, the same, from there)
LAGGING = frozenset({Code.SQLITE_ERROR, Code.SQLITE_SCHEMA, Code.SQLITE_BUSY,
                     Code.SQLITE_CORRUPT, Code.SQLITE_IOERR, Code.SQLITE_CANTOPEN})
# a feed's since that is a time: a cursor never starts with a digit (base64 of a name)
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
FEED_ENDED_PAUSE = 1.0  # seconds a feed page waits when its branch's shipper has ended
_HOOK_ID = re.compile(r"wh_[0-9a-f]{16}")
_LETTER_ID = re.compile(r"\d{15}-[0-9a-f]{6}")
FEED_WAIT_MAX = 25.0  # seconds a feed request may wait (the forwarder's timeout is 30)


class Identities(Protocol):
    """What the engine asks of ``shoal.identity``: tokens of trusted identity providers."""

    active: bool  # any issuer trusted (else tokens that are not Shoal's are not looked at)

    @property
    def server_issuers(self) -> tuple[identity.Issuer, ...]: ...

    def cached(self, token: str) -> tokens.Principal | None: ...
    def verify(self, token: str, otherwise: ShoalError) -> tokens.Principal: ...
    def database_issuers(self, name: str) -> tuple[identity.Issuer, ...]: ...
    def set_database(self, name: str, issuers: Sequence[identity.Issuer]) -> None: ...
    def revoked(self, ids: Iterable[str]) -> None: ...
    def status(self) -> list[dict[str, Any]]: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass
class Outcome:
    """The result of a query request, ready to render."""

    results: list[Result]
    rows_read: int
    rows_written: int
    txid: int
    bookmark: str
    replay: tuple[int, bytes] | None = None  # a stored idempotent response, sent as is


@dataclass(frozen=True, slots=True)
class ReadAt:
    """What a request asks of the state it reads (docs/api.md, 'Consistency'): at least
    ``bookmark`` (Shoal-Bookmark), and whether a cluster's node may answer it from its
    replica (``follow``: the server did not forward it; a strong read is forwarded)."""

    bookmark: str | None = None
    follow: bool = False


@dataclass
class DatabaseInfo:
    record: DatabaseRecord
    size_bytes: int
    branches: list[Branch]
    txid: int
    open: bool


@dataclass
class BranchInfo:
    """A branch as the API shows it."""

    record: Branch
    txid: int  # its latest commit: the open database's, else the store's head
    size_bytes: int  # its files on this node (0 until it is first opened here)
    store_bytes: int  # its own segments and snapshots in the object store


@dataclass
class Restored:
    """A restore in place: the branch's new state and the branch keeping the old one."""

    branch: Branch
    txid: int
    kept: Branch


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key as the HTTP layer hands it in."""

    key: str
    body_hash: bytes

    @classmethod
    def of(cls, key: str | None, body: bytes) -> Idempotency | None:
        if not key:
            return None
        if len(key) > 255:
            raise ShoalError(Code.INVALID_REQUEST, "Idempotency-Key is longer than 255 characters")
        return cls(key, hashlib.sha256(body).digest())


def _pass_failed(what: str, exc: Exception) -> None:
    """A background pass that failed: the store failing (a ShoalError by then) is a warning;
    anything else is a bug, logged with its traceback."""
    if isinstance(exc, ShoalError):
        log.warning("%s failed: %s", what, exc)
    else:
        log.error("%s failed", what, exc_info=exc)


def _checked_store(settings: Settings) -> ObjectStore:
    """The configured store, probed in seconds before the lease (which retries for
    lease_wait): a wrong bucket, endpoint, key or folder stops the start with its cause."""
    try:
        store = open_store(settings.store_url, endpoint_url=settings.s3_endpoint)
        store.probe()
    except Unusable as exc:
        raise ShoalError(Code.STORE_UNUSABLE, str(exc), hint=exc.hint) from None
    except ValueError as exc:  # a malformed store URL or s3_endpoint
        raise ShoalError(Code.STORE_UNUSABLE, str(exc), hint="store is file:///absolute/path, "
                         "s3://bucket/prefix or none; s3_endpoint is a URL "
                         "(https://host:port)") from None
    return store


class Engine(RowsAPI, SyncAPI, SyncV1API):
    """The node: its databases, tokens, commit log and limits. Construction only sets fields;
    :meth:`open` does the blocking work of starting (the data directory's lock, the store's
    lease, the catalog from the store), :meth:`start` the background tasks, :meth:`stop`
    ends both (litestream's NewDB / Open / Close)."""

    # built by open(): what a started node has
    executor: Pool
    io: ThreadPoolExecutor
    memory: Memory
    catalog: Catalog
    names: set[str]
    auth: tokens.TokenAuthority
    identity: Identities  # tokens of identity providers (shoal/identity)
    lifecycle: Lifecycle
    quotas: Quotas
    _lock: Any
    _usage_base: tuple[dict[str, tuple[int, int, int]], dict[str, tuple[int, int, int]]]

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.data_dir
        self.health = Health()  # readiness: conditions under which the node refuses writes
        self.disk = Disk(settings.data_dir, settings.disk_reserve_bytes, self.health)
        self._stale_catalog = False  # catalog.db lags the store: synced once the disk has room
        self._takeover = False  # another node held the store since this one last did
        # store = "none": a local-only node (no commit log; the data directory is the truth)
        self.store: RetryingStore | None = None
        self._registry: Registry | None = None
        self.lease: Lease | None = None
        self.cluster: Cluster | None = None  # advertise_url set: one of a cluster's nodes
        self.replicas: Replicas | None = None  # a cluster's node: reads of what others lead
        self.admin_token_path: Path | None = None  # set when the admin token is generated
        self.transactions = OpenTransactions()
        self.expired: OrderedDict[str, Code] = OrderedDict()  # tx id -> why it ended
        self.inflight: dict[tuple[str, str, str], asyncio.Future[Any]] = {}
        self.usage: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        self._usage_lock = asyncio.Lock()
        self._usage_registry = CollectorRegistry(auto_describe=False)  # for "*" admins
        self._usage_registry.register(UsageCollector(self._usage_now))
        self._sweeper: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._stopping = False  # compaction starts no new run once set
        self._opened = False
        self._unknown: dict[str, float] = {}  # names the store did not know -> until when
        # databases with allowed origins of their own (shoal/origins.py), as stored
        self.cors: dict[str, tuple[str, ...]] = {}
        self._cors_read: dict[str, float] = {}  # name -> when its record was last read for it
        # the audit log (engine/audit.py): the server adds a record per request
        self.audit = AuditLog(settings.audit_buffer, settings.audit_log)
        self.syncs = Syncs(settings.data_dir / "sync")  # embedded replicas (engine/sync.py)
        self.log_ids = LogIds()  # V1 embedded replicas' log ids (engine/sync_v1.py)

    def open(self) -> None:
        """The blocking part of starting, before the node serves: take the data directory
        (its lock) and, with a store, the store's lease (waiting up to lease_wait), then
        read the catalog, the keys and the limits. ShoalError if the node cannot start."""
        if self._opened:
            return
        settings = self.settings
        self.memory = Memory(ceiling(settings.max_memory_bytes), self.health, release_memory)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        datadir.claim(self.root, settings.local_only)
        self._lock = datadir.lock(self.root)
        self.disk.start()  # before anything else writes: a full disk gets its reserve back
        datadir.sweep_leftovers(self.root)
        self.syncs.start()
        self.executor = Pool(settings.threads, settings.threads_per_database)
        self.io = ThreadPoolExecutor(max(4, settings.threads), thread_name_prefix="shoal-io")
        if not settings.local_only:
            raw_store = _checked_store(settings)
            node = datadir.node_id(self.root)
            if settings.advertise_url:  # a member's record, instead of the store's lease
                Lease(raw_store, node, settings.lease_ttl, self._lease_lost).acquire(
                    settings.lease_wait, cluster=True)  # the store is a cluster's, for good
                self.cluster = Cluster(raw_store, node, settings.advertise_url,
                                       settings.lease_ttl, settings.lease_wait,
                                       self._lease_lost, lambda: self._admin)
                self.cluster.join()
                self.replicas = Replicas(self.root / "replicas", settings, self.executor,
                                         _Follow(self))
                held: Held = self.cluster.membership
            else:
                held = self.lease = self._take_lease(raw_store, node)
            fenced = FencedStore(raw_store, held.check)
            self.store = RetryingStore(fenced)
            self._registry = Registry(Stores(self.store, fenced, self.io, held.check),
                                      settings, self.executor, self.root / "tmp", node)
        self.catalog = Catalog(str(self.root / "catalog.db"))
        admin = settings.admin_token or ""  # unset: generated once, kept in the data directory
        if not admin:
            self.admin_token_path = self.root / "admin-token"
        revoked: set[str] = set()
        if self._registry is None:
            self.names = self.catalog.names()
            signing_key, _ = tokens.read_or_create_secret(self.root / "signing-key",
                                                          tokens.new_secret)
            if self.admin_token_path is not None:
                admin, _ = tokens.read_or_create_secret(self.admin_token_path,
                                                        tokens.new_secret)
        else:
            # The store is the truth; the data directory is a cache rebuilt from it here.
            self.names, revoked = self._sync_catalog(self._registry)
            signing_key = self._registry.secret("signing-key", self.root / "signing-key",
                                                tokens.new_secret)
            if self.admin_token_path is not None:
                admin = self._registry.secret("admin-token", self.admin_token_path,
                                              tokens.new_secret)
        narrowed = self.catalog.narrowed()
        if self._registry is not None:
            for tid, dbs in self._registry.narrowed().items():
                narrowed.setdefault(tid, set()).update(dbs)
        self._admin = admin  # what this node shows the others of its cluster
        self.auth = tokens.TokenAuthority(signing_key, admin,
                                          self.catalog.revoked_ids() | revoked, narrowed)
        self.identity = self._identities()
        for name, declared in self.catalog.issuers().items():
            self._trust(name, declared)
        self.identity.revoked(revoked | self.catalog.other_revoked_ids())
        self.lifecycle = Lifecycle(self.root / "dbs", settings, self.executor, self.names,
                                   self._registry)
        self.quotas = Quotas(DatabaseLimits(settings.database_size_limit,
                                    settings.database_rows_read_limit,
                                    settings.database_rows_written_limit,
                                    settings.quota_period,
                                    settings.database_queries_per_second),
                             settings.max_transactions)
        for name, body in self.catalog.limits().items():
            self.quotas.set(name, decode_limits(body))
        self.cors = self.catalog.cors()
        self.quotas.load(self.catalog.windows())
        self.lifecycle.size_limit = lambda name: self.quotas.of(name).size_bytes
        if self.cluster is not None:
            self.lifecycle.claim = self.cluster.claim
            self.lifecycle.generation = self.cluster.generation
        # (saved in the catalog, being saved): replaced whole at each flush, for /metrics
        self._usage_base = (self.catalog.all_usage(), {})
        # the audit log's objects: in the store; without one, in a folder of the data directory
        self.audit.attach(self.store or open_store((self.root / "audit-store").as_uri()),
                          datadir.node_id(self.root), self.io)
        self._opened = True

    def _sync_catalog(self, registry: Registry) -> tuple[set[str], set[str]]:
        """The store's databases and revocations, with catalog.db made to match. On a full
        disk catalog.db (a cache) stays as it is until the sweeper finds room."""
        try:
            return registry.sync_catalog(self.catalog, self._takeover)
        except ShoalError as exc:
            if exc.code != Code.DISK_FULL:
                raise
            self.disk.hit(exc)
        self._stale_catalog = True
        with contextlib.closing(Catalog(":memory:")) as scratch:
            return registry.sync_catalog(scratch)

    def _take_lease(self, store: ObjectStore, node: str) -> Lease:
        """The store's lease, for as long as this node runs; the local copies go if another
        node has held it since this one (they may hold commits history no longer has)."""
        lease = Lease(store, node, self.settings.lease_ttl, self._lease_lost)
        lease.acquire(self.settings.lease_wait)
        lease.start()
        # another node wrote the store since this one did: its catalog cache is read anew
        self._takeover = lease.previous not in (None, lease.node)
        if self._takeover and datadir.forget_cache(self.root):
            log.warning("node %s held the object store since this node last did: the "
                        "local copies of branches were dropped", lease.previous)
        return lease

    def _lease_lost(self, why: str) -> None:
        """Another node holds the store now: stop before anything more of this node's
        reaches it (a clean stop would ship and checkpoint). Commits made here that never
        reached the store are named first: with local durability they were acknowledged,
        and are lost. The next start on this disk drops the local copies."""
        try:  # from the lease's thread: a racy read of the open branches is good enough
            for (name, branch), db in list(self.lifecycle.open.items()):  # may not exist yet
                shipper = db.journal.shipper if db.journal is not None else None
                if shipper is not None and shipper.head_txid > shipper.durable_txid:
                    METRICS.log_fenced_commits.inc(shipper.head_txid - shipper.durable_txid)
                    log.critical("%s/%s: txids %d..%d were committed on this node and never "
                                 "reached the object store: %s", name, branch,
                                 shipper.durable_txid + 1, shipper.head_txid,
                                 "they were acknowledged (durability local) and are lost"
                                 if self.settings.durability == "local" else
                                 "none was acknowledged (durability remote)")
        except Exception:  # never let the report stop the stop
            log.exception("listing the unshipped commits failed")
        log.critical("stopping at once: %s", why)
        logging.shutdown()
        os._exit(EXIT_LEASE_LOST)

    @property
    def registry(self) -> Registry:
        """The commit log's registry; HISTORY_DISABLED on a local-only node (store none)."""
        if self._registry is None:
            raise ShoalError(Code.HISTORY_DISABLED, "this node runs without an object store "
                                                    "(store = \"none\"): it keeps no history, so "
                                                    "restore, history and branches other than "
                                                    "main are not available")
        return self._registry

    def _identities(self) -> Identities:
        """The node's trusted issuers (issuers_file; SettingsError if it is wrong)."""
        path = self.settings.issuers_file
        try:
            issuers = identity.load_issuers_file(path) if path else ()
        except identity.IssuerError as exc:
            raise SettingsError(f"issuers_file: {exc}") from None
        return identity.Identity(issuers, refresh=self.settings.jwks_refresh,
                                 ca_file=self.settings.jwks_ca_file)

    # -- what the server asks of the node, besides its operations -------------------------
    def authenticate(self, header: str | None) -> tokens.Principal:
        """The caller of an Authorization header value (401 UNAUTHORIZED otherwise): a
        Shoal token, or one of a trusted identity provider (KeysNeeded: await its wait()
        and ask again, once)."""
        if not self.identity.active:
            return self.auth.authenticate(header)
        if header is not None and header.startswith("Bearer "):  # the usual spelling
            found = self.identity.cached(header[7:])
            if found is not None:
                return found
        try:
            return self.auth.authenticate(header)
        except ShoalError as exc:
            if exc.code is not Code.TOKEN_INVALID or header is None:
                raise
            return self.identity.verify(header.partition(" ")[2].strip(), exc)

    def verify(self, token: str) -> tokens.Principal:
        """The caller of a bare token (Hrana's hello)."""
        if not self.identity.active:
            return self.auth.verify(token)
        found = self.identity.cached(token)
        if found is not None:
            return found
        try:
            return self.auth.verify(token)
        except ShoalError as exc:
            if exc.code is not Code.TOKEN_INVALID:
                raise
            return self.identity.verify(token, exc)

    def refuse_when_overloaded(self) -> None:
        """503 OVERLOADED while the node is past its memory ceiling: no new work."""
        self.memory.refuse()

    def readiness(self) -> tuple[str, list[Condition]]:
        """The node's status and the conditions behind it (/ready)."""
        return self.health.report()

    def is_open(self, name: str) -> bool:
        """Whether a branch of ``name`` is open on this node (a closed one commits nothing)."""
        return self.lifecycle.is_open(name)

    def has_database(self, name: str) -> bool:
        """Whether this node knows a database of that name (no store call)."""
        return name in self.names

    def require_database(self, name: str) -> None:
        """404 DATABASE_NOT_FOUND unless the database exists (the one place that says so)."""
        if name not in self.names:
            raise ShoalError(Code.DATABASE_NOT_FOUND, f"database {name!r} does not exist")

    def transaction_open(self, tx_id: str) -> bool:
        """Whether an interactive transaction is still open (not ended by SQLite or expiry)."""
        return tx_id in self.transactions

    # -- process lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Open the node if that was not done yet (blocking: before it serves), then start
        its sweeper."""
        self.open()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        await self.identity.start()
        self.audit.start()
        METRICS.log_unshipped.set_function(lambda: self.lifecycle.log_backlog()[0])
        METRICS.log_lag.set_function(lambda: self.lifecycle.log_backlog()[1])
        lease = self.lease
        if lease is not None:
            METRICS.lease_held.set_function(lambda: float(lease.held()))
        if self.cluster is not None:
            if self.replicas is not None:
                await self._io(self.replicas.start)
            await self.cluster.start()
        METRICS.readiness.set_function(lambda: LEVELS.index(self.health.status))

    async def stop(self) -> None:
        if not self._opened:
            return
        self._stopping = True
        await self.identity.stop()
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for tx_id in list(self.transactions):
            entry = self.transactions.pop(tx_id)
            if entry is not None:
                with contextlib.suppress(Exception):
                    await entry[0].end(entry[1], commit=False)
        if self._retention:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
        self._flush_usage()
        await self.audit.stop()  # the last records, before the store and I/O threads go
        if self.replicas is not None:
            await self.replicas.close_all()
        await self.lifecycle.close_all(self.settings.statement_timeout + 1)
        self.catalog.close()
        self.executor.shutdown(wait=True)
        self.io.shutdown(wait=True)
        if self.lease is not None:
            self.lease.release()
        if self.cluster is not None:
            await self.cluster.stop()
        if self.store is not None:
            self.store.close()
        os.close(self._lock)

    async def _sweep(self) -> None:
        last_flush = time.monotonic()
        last_release, released = 0.0, 0
        last_retention = time.monotonic() - RETENTION_INTERVAL + 60  # first pass after a minute
        watch = Watch(self.health, self.lease or (self.cluster.membership if self.cluster
                                                   else None), self.settings)  # before any await
        members = self.cluster.membership.version if self.cluster is not None else 0
        last_revoked = time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                watch.poll(self.lifecycle.open.values())
                self.memory.check()
                if self.disk.full:
                    await self._io(self.disk.check)
                elif self._stale_catalog:
                    self._stale_catalog = False  # tried once the disk has room (and at start)
                    await self._io(self.registry.sync_catalog, self.catalog, True)  # every record
                await self._expire_transactions()
                if self.cluster is not None:
                    members, last_revoked = await self._follow_cluster(members, last_revoked)
                released += self.lifecycle.close_idle()
                if self.replicas is not None:
                    released += self.replicas.close_idle(
                        time.monotonic() - self.settings.idle_timeout)
                self.lifecycle.evict()
                if released and time.monotonic() - last_release >= RELEASE_INTERVAL:
                    released, last_release = 0, time.monotonic()
                    await self._run(release_memory)
                if time.monotonic() - last_flush >= USAGE_FLUSH_INTERVAL:
                    last_flush = time.monotonic()
                    async with self._usage_lock:  # a reader sees counts once, saved or not
                        await self._run(self._save_usage, *self._take_usage())
                if time.monotonic() - last_retention >= RETENTION_INTERVAL and \
                        (self._retention is None or self._retention.done()):
                    last_retention = time.monotonic()
                    self._retention = asyncio.get_running_loop().create_task(self._retain())
            except Exception:  # the sweeper must survive anything
                log.exception("sweeper failed")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call on the I/O threads."""
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    @property
    def kept_history(self) -> float:
        """Seconds of segments retention keeps: the restore window, or the change feed's
        if longer (its changes live in the same segments)."""
        return max(self.settings.history_retention, self.settings.feed_retention)

    async def _retain(self) -> None:
        """Per database: merge runs of small segments (so restore GETs few objects), then
        delete what no restore inside history_retention and no branch needs any more; and
        purge deleted databases past history_retention. The audit log's objects too (a node
        without a store keeps them in its data directory: only they)."""
        try:
            deleted = await self._io(self.audit.retain, time.time(),
                                     self.settings.history_retention)
            if deleted:
                log.info("retention deleted %d objects of the audit log", deleted)
        except Exception as exc:  # background work: the next pass tries again
            _pass_failed("retention of the audit log", exc)
        if self._registry is None:
            return
        try:
            await self._expire_deleted()
        except Exception as exc:  # background work: the next pass tries again
            _pass_failed("expiring deleted databases", exc)
        for name in sorted(self.names):
            if self.cluster is not None and not self.cluster.leads(name):
                continue  # its leader's work: two nodes merging one log would race
            if self.settings.compact_min_segments:
                await self._compact(name)
            try:
                report = await self._io(self.registry.retention, name, time.time(),
                                        self.kept_history)
                if report.deleted:
                    self.syncs.retained(name)  # replicas' view of what the store keeps
                    log.info("retention deleted %d objects of %s", len(report.deleted), name)
            except Exception as exc:  # background work: the next pass tries again
                _pass_failed(f"retention of {name}", exc)

    async def _compact(self, name: str) -> None:
        """Merge the database's runs of small segments, for COMPACTION_BUDGET at most."""
        deadline = time.monotonic() + COMPACTION_BUDGET

        def keep_going() -> bool:
            return not self._stopping and time.monotonic() < deadline

        try:
            report = await self._io(self.registry.compact, name, time.time(), keep_going)
        except Exception as exc:  # background work: the next pass tries again
            _pass_failed(f"compaction of {name}", exc)
            return
        for error in report.errors:
            log.warning("compaction of %s left a run as it was: %s", name, error)
        if any(m.created for m in report.merges):
            log.info("compaction of %s %s", name, report.summary())

    # -- the audit log (engine/audit.py) ------------------------------------------------------
    async def audit_page(self, principal: tokens.Principal, database: str | None,
                         since: float | None, until: float | None, limit: int,
                         cursor: str | None) -> AuditPage:
        """A page of the audit log, every node's records. An admin of every database reads
        them all (or one database's); an admin of some databases reads those of the ones it
        reaches (or the one named, if it reaches it); other tokens are refused. This node's
        buffer is flushed first, so its records are there at once (another node's within
        about a second)."""
        principal.require("admin")
        wanted: Callable[[str | None], bool] | None = None
        if database is not None:
            check_name(database)
            principal.require("admin", database)
            wanted = lambda db: db == database  # noqa: E731
        elif principal.databases is not None:
            wanted = lambda db: db is not None and principal.reaches(db)  # noqa: E731
        if not 1 <= limit <= MAX_LIMIT:
            raise ShoalError(Code.INVALID_REQUEST, f"limit: 1 to {MAX_LIMIT}")
        after = audit_cursor(cursor) if cursor is not None else None
        if cursor is not None and after is None:
            raise ShoalError(Code.INVALID_REQUEST, "cursor: not one this server gave")
        if since is not None and until is not None and until <= since:
            raise ShoalError(Code.INVALID_REQUEST, "until must be after since")
        if not self.audit.failing:  # (a store that refused the last flush: not waited for)
            await self.audit.flush()
        return await self._io(self.audit.page,
                              None if since is None else int(since * 1000),
                              None if until is None else int(until * 1000),
                              wanted, limit, after)

    # -- a cluster ----------------------------------------------------------------------------
    async def _follow_cluster(self, members: int, last_revoked: float) -> tuple[int, float]:
        """What other nodes may have changed in the store: the databases when the members
        change (a database this node now leads may be new to it), the revocations every
        REVOKED_SYNC (their notices are best effort). Neither costs a request per database."""
        assert self.cluster is not None and self._registry is not None
        version = self.cluster.membership.version
        if version != members:
            await self._sync_names()
        if time.monotonic() - last_revoked >= REVOKED_SYNC:
            last_revoked = time.monotonic()
            revoked = await self._io(self._registry.revoked)
            for token_id in revoked:
                self.auth.revoke(token_id)
            self.identity.revoked(revoked)  # identity providers' tokens and issuers
        return version, last_revoked

    async def _sync_names(self) -> None:
        """The catalog made to match the store's databases (one listing, and a read of each
        name new to this node): what other nodes created or deleted is known here after."""
        assert self._registry is not None
        live, _ = await self._io(self._registry.sync_catalog, self.catalog)
        self.names |= live  # in place: the lifecycle holds this set
        self.names -= self.names - live
        for name, allowed in (await self._run(self.catalog.cors)).items():
            self.cors.setdefault(name, allowed)  # those of the names read anew
        for name in [n for n in self.cors if n not in live]:
            del self.cors[name]
        trusted = await self._run(self.catalog.issuers)
        for name in live:
            if not self.identity.database_issuers(name) and name in trusted:
                self._trust(name, trusted[name])  # those of the names read anew
            elif name not in trusted:
                self.identity.set_database(name, ())

    def leader_url(self, name: str) -> str | None:
        """The URL of the node that leads database ``name``, or None if it is this one (or
        this node is not in a cluster): the server forwards the database's requests there."""
        if self.cluster is None:
            return None
        member = self.cluster.leader(name)
        return member.url if member is not None else None

    async def forward(self, url: str, method: str, path_qs: str,
                      headers: list[tuple[bytes, bytes]],
                      body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """A request sent on to another node of the cluster (its database's leader)."""
        return await self._in_cluster().forwarder.request(url, method, path_qs, headers, body)

    async def forward_websocket(self, url: str, scope: dict[str, Any], receive: Any,
                                send: Any) -> None:
        """A WebSocket connection carried through to another node of the cluster. A message
        from the leader may be as large as its answers may (a Hrana result: values typed
        in JSON, up to about 4 bytes for each byte that max_response_bytes counts)."""
        await self._in_cluster().forwarder.websocket(
            url, scope, receive, send,
            max_size=max(MAX_MESSAGE, 4 * self.settings.max_response_bytes + (1 << 20)))

    async def feed(self, principal: tokens.Principal, name: str, branch: str, after: int,
                   timeline: str, wait: float) -> tuple[str, bytes | None]:
        """A follower's request for news (``GET /v1/cluster/feed``): this node's timeline of
        the branch and its durable segments after txid ``after`` (``log/feed.py``'s pack),
        waiting up to ``wait`` for one (b"" if none came; None if they are not all kept:
        the follower hydrates)."""
        principal.require("admin")
        if self.leader_url(name) is not None:
            raise ShoalError(Code.LEADER_UNAVAILABLE, f"{name}: not led by this node")
        db = await self.lifecycle.acquire(name, branch)
        try:
            shipper = db.journal.shipper if db.journal is not None else None
            current = db.timeline or ""
        finally:
            self.lifecycle.release(db)
        if shipper is None or current != timeline:
            return current, None
        found = shipper.feed.since(after)
        if found == []:
            await shipper.feed.wait(after, min(wait, FEED_WAIT_MAX))
            found = shipper.feed.since(after)
        return current, None if found is None else feeds.pack(found)

    async def changes(self, principal: tokens.Principal, name: str, branch: str,
                      since: str | None, limit: int, wait: float,
                      wanted: Filter = ALL, touch: bool = True) -> ChangesPage:
        """A page of the branch's change feed (``feed/reader.py``): up to ``limit`` committed
        row changes after ``since`` (a cursor or bookmark of this branch; None: from now),
        waiting up to ``wait`` seconds for the first. Served by the branch's leader: the
        recent segments are in its memory, older ones in the store. ``touch`` false: the
        page is not a use that keeps the branch open (a webhook's deliverer asks)."""
        self._known(name, branch)
        principal.require("read", name)
        principal.on(branch)
        shipper, timeline = await self._feed_of(name, branch, touch)
        start = await self._feed_start(name, branch, timeline, since, shipper.durable_txid)
        shipper.follow()  # a consumer waits: ship often (replica_sync_interval)
        deadline = time.monotonic() + min(wait, FEED_WAIT_MAX)
        at = start
        while True:
            durable = shipper.durable_txid
            if durable > at.txid or (at.index is not None and durable >= at.txid):
                commits = await self._captured(name, branch, timeline, shipper.feed, at,
                                               durable)
                # decoding a page's changes is the caller's work: off the event loop
                found, at = await self._run(events, commits, at, limit, wanted,
                                            self.settings.max_response_bytes)
                if found and principal.bound:
                    found = await self._visible(principal, name, branch, found)
                if found:
                    return ChangesPage(name, branch, timeline, found, at)
                # past what the filter dropped, or the rest of a commit: wait on from there
            left = deadline - time.monotonic()
            if left <= 0:
                return ChangesPage(name, branch, timeline, [], at)
            if shipper.feed.ended:  # the branch closed, or its log stopped: the next page
                await asyncio.sleep(min(left, FEED_ENDED_PAUSE))  # opens it again
                return ChangesPage(name, branch, timeline, [], at)
            await shipper.feed.wait(durable, left)

    async def _feed_of(self, name: str, branch: str,
                       touch: bool = True) -> tuple[Shipper, str]:
        """The branch's shipper (its feed) and timeline, opening the branch."""
        db = await self.lifecycle.acquire(name, branch)
        used = db.last_used
        try:
            journal = db.journal
            shipper = journal.shipper if journal is not None else None
            timeline = db.timeline
        finally:
            self.lifecycle.release(db)
            if not touch:
                db.last_used = used
        if journal is None or shipper is None or timeline is None:
            raise ShoalError(Code.HISTORY_DISABLED, "this node keeps no commit log: no feed")
        return shipper, timeline

    async def _feed_start(self, name: str, branch: str, timeline: str, since: str | None,
                          durable: int) -> Position:
        """Where a page starts: the durable head (no ``since``), a cursor or bookmark of
        this branch, or the last commit at or before an ISO 8601 time."""
        if since is None:
            return Position(durable)
        if ISO_DATE.match(since):
            return await self._feed_at(name, branch, timeline, parse_time(since), durable)
        mark = read_bookmark(since)
        if (mark.database, mark.branch) != (name, branch):
            raise ShoalError(Code.INVALID_REQUEST, f"the cursor is of {mark.database}/"
                             f"{mark.branch}, not {name}/{branch}")
        if mark.timeline != timeline:
            raise ShoalError(Code.CURSOR_EXPIRED, f"{name}/{branch} was restored or reset "
                             "since this cursor: its feed continues on another timeline",
                             earliest=make_bookmark(name, branch, durable, timeline))
        return Position(mark.txid, mark.index)

    async def _feed_at(self, name: str, branch: str, timeline: str, when: float,
                       durable: int) -> Position:
        """After the last commit at or before ``when`` (from the store's history: the changes
        after it; a time before the branch began starts at its first commit)."""
        chain = await self._io(ancestry, self.store, name, timeline)
        if when <= chain[0].created_at:  # before the branch (or its restore) began
            return Position(chain[0].fork_txid)
        try:
            txid = await self._io(resolve_time, self.store, name, chain, when)
        except MissingObject:  # before the history kept
            raise ShoalError(Code.CURSOR_EXPIRED, f"{name}/{branch} keeps no changes from "
                             f"that time: it is before the history kept",
                             earliest=make_bookmark(name, branch, chain[0].fork_txid,
                                                    timeline)) from None
        return Position(min(max(txid, chain[0].fork_txid), durable))

    async def _captured(self, name: str, branch: str, timeline: str, feed: feeds.Feed,
                        start: Position, durable: int) -> list[Captured]:
        """The commits from ``start`` on up to ``durable``: from the leader's memory if it
        still holds them, else from the store (CURSOR_EXPIRED past retention)."""
        after = start.txid - 1 if start.index is not None else start.txid
        kept = feed.kept(after)
        if kept is not None:  # decoded off the event loop, once for every consumer
            commits = await self._run(feeds.decoded, kept, after)
            feed.remember(kept)
            return [c for c in commits if c.txid <= durable]
        record = await self._io(load_timeline, self.store, name, timeline)
        try:
            return await self._io(stored, self.store, name, record, after, durable)
        except Expired as exc:
            raise ShoalError(Code.CURSOR_EXPIRED, f"the changes of {name}/{branch} after txid "
                             f"{after} are no longer kept",
                             earliest=make_bookmark(name, branch, exc.earliest,
                                                    timeline)) from None

    async def feed_settings(self, principal: tokens.Principal, name: str) -> tuple[str, ...]:
        """The tables of ``name`` whose change feed keeps no old rows (the record's)."""
        check_name(name)
        principal.require("read", name)
        self.require_database(name)
        live = await self._io(self.registry.live, name)
        return live.without_old if live is not None else ()

    async def set_feed_settings(self, principal: tokens.Principal, name: str,
                                without_old: tuple[str, ...]) -> tuple[str, ...]:
        """Keep no old rows in the feed for these tables of ``name`` from the next commit on
        (stored in the database's record; the open branches here take it at once, the
        others when they open: a database's writes are its leader's, where this runs)."""
        check_name(name)
        principal.require("admin", name)
        self.require_database(name)
        await self._io(self.registry.set_without_old, name, without_old)
        for (open_name, _), db in list(self.lifecycle.open.items()):
            if open_name == name:
                db.without_old = frozenset(without_old)
        return without_old

    # -- webhooks (engine/webhooks.py; the server delivers them) ------------------------------
    @property
    def _hooks(self) -> WebhookRecords:
        if self.store is None:
            raise ShoalError(Code.HISTORY_DISABLED, "this node keeps no commit log: no feed, "
                             "no webhooks")
        return WebhookRecords(self.store)

    async def create_webhook(self, principal: tokens.Principal, name: str,
                             spec: WebhookSpec) -> Webhook:
        """A new webhook of ``name``'s branch (admin access: it sees every row change),
        delivering from ``spec.since`` (None: from now). Returned with its secret."""
        check_name(name)
        principal.require("admin", name)
        self._known(name, spec.branch)
        hooks = self._hooks
        if len(await self._io(hooks.keys, name)) >= self.settings.max_webhooks:
            raise ShoalError(Code.TOO_MANY_WEBHOOKS, f"{name} has {self.settings.max_webhooks} "
                             "webhooks (max_webhooks)")
        shipper, timeline = await self._feed_of(name, spec.branch)
        start = await self._feed_start(name, spec.branch, timeline, spec.since,
                                       shipper.durable_txid)
        live = await self._io(self.registry.live, name)
        if live is None:
            raise ShoalError(Code.DATABASE_NOT_FOUND, f"database {name!r} does not exist")
        hook = Webhook(new_webhook_id(), name, spec.branch, spec.url, spec.tables, spec.ops,
                       spec.batch_size, spec.max_attempts, spec.max_age, time.time(), live.id,
                       new_webhook_secret())
        cursor = make_bookmark(name, spec.branch, start.txid, timeline, start.index)
        await self._io(hooks.create, hook, Delivery(cursor))
        return hook

    async def webhooks(self, principal: tokens.Principal,
                       name: str) -> list[tuple[Webhook, Delivery | None]]:
        """The webhooks of ``name`` with their delivery state (one made for an earlier
        life of the name is left out: never delivered, deleted with that life)."""
        principal.require("admin", name)
        self.require_database(name)
        hooks = self._hooks
        found = await self._io(hooks.all, name)
        live = await self._incarnation(name) if found else None
        return [(hook, await self._io(hooks.state, name, hook.id)) for hook in found
                if hook.incarnation == live]

    async def webhook_keys(self, principal: tokens.Principal) -> set[tuple[str, str]]:
        """(database, id) of every webhook in the store: one listing, no object read (each
        node's dispatcher asks every few seconds)."""
        principal.require("admin")
        if principal.databases is not None:
            raise ShoalError(Code.FORBIDDEN, "only an admin of every database lists them all")
        return await self._io(self._hooks.keys)

    async def webhook(self, principal: tokens.Principal, name: str,
                      hook_id: str) -> tuple[Webhook, Delivery]:
        principal.require("admin", name)
        self.require_database(name)
        hooks = self._hooks
        hook = await self._io(hooks.get, name, hook_id) if _HOOK_ID.fullmatch(hook_id) else None
        state = await self._io(hooks.state, name, hook_id) if hook is not None else None
        if hook is None or state is None or hook.incarnation != await self._incarnation(name):
            raise ShoalError(Code.WEBHOOK_NOT_FOUND, f"{name} has no webhook {hook_id!r}")
        return hook, state

    async def _incarnation(self, name: str) -> str | None:
        live = await self._io(self.registry.live, name)
        return live.id if live is not None else None

    async def delete_webhook(self, principal: tokens.Principal, name: str,
                             hook_id: str) -> None:
        await self.webhook(principal, name, hook_id)
        await self._io(self._hooks.delete, name, hook_id)

    async def save_delivery(self, principal: tokens.Principal, hook: Webhook,
                            delivery: Delivery) -> Delivery:
        """Store a webhook's delivery state if it is still the one read (StateMoved if
        not): its deliverer's progress."""
        principal.require("admin", hook.database)
        return await self._io(self._hooks.save, hook.database, hook.id, delivery)

    async def dead_letters(self, principal: tokens.Principal, name: str, hook_id: str,
                           after: str = "", limit: int = LETTERS_PAGE) -> list[DeadLetter]:
        """A page of the webhook's dead letters, oldest first, after the one ``after``
        names (each holds up to a batch: read a page at a time)."""
        await self.webhook(principal, name, hook_id)
        if after and not _LETTER_ID.fullmatch(after):
            raise ShoalError(Code.INVALID_REQUEST, "after: a dead letter's id")
        return await self._io(self._hooks.letters, name, hook_id, after, limit)

    async def put_dead_letter(self, principal: tokens.Principal, hook: Webhook,
                              letter: DeadLetter) -> None:
        """Store (or replace) one of the webhook's dead letters."""
        principal.require("admin", hook.database)
        await self._io(self._hooks.add_letter, hook.database, hook.id, letter)

    async def delete_dead_letter(self, principal: tokens.Principal, name: str, hook_id: str,
                                 letter: str) -> None:
        await self.webhook(principal, name, hook_id)
        if not _LETTER_ID.fullmatch(letter) or \
                not await self._io(self._hooks.delete_letter, name, hook_id, letter):
            raise ShoalError(Code.DEAD_LETTER_NOT_FOUND,
                             f"webhook {hook_id} has no dead letter {letter!r}")

    async def replay_dead_letters(self, principal: tokens.Principal, name: str, hook_id: str,
                                  letter: str | None) -> list[str]:
        """Mark the webhook's dead letters (all, page by page, or the one named) to be
        delivered again; return the ids marked. Its deliverer sends them before its next
        batch."""
        hooks = self._hooks
        if letter is not None:
            await self.webhook(principal, name, hook_id)
            found = await self._io(hooks.letter, name, hook_id, letter) \
                if _LETTER_ID.fullmatch(letter) else None
            if found is None:
                raise ShoalError(Code.DEAD_LETTER_NOT_FOUND,
                                 f"webhook {hook_id} has no dead letter {letter!r}")
            page = [found]
        else:
            page = await self.dead_letters(principal, name, hook_id)
        marked: list[str] = []
        while page:
            for x in page:
                if x.events:
                    await self._io(hooks.add_letter, name, hook_id, replace(x, replay=True))
                    marked.append(x.id)
            page = [] if letter is not None else \
                await self.dead_letters(principal, name, hook_id, page[-1].id)
        return marked

    async def _forget_webhooks(self, name: str) -> None:
        """A deleted database's webhooks go with it (one made again starts without any)."""
        hooks = self._hooks
        for hook in await self._io(hooks.all, name):
            await self._io(hooks.delete, name, hook.id)

    async def learn_database(self, name: str) -> bool:
        """Whether ``name`` exists, as the store says now: another node of the cluster may
        have created it (or deleted it) since this node last read the catalog. A name the
        store does not know is not asked again for NEGATIVE_TTL: unknown names are cheap to
        send, store reads are not."""
        if self.cluster is None or self._registry is None:
            return name in self.names
        now = time.monotonic()
        if self._unknown.get(name, 0.0) > now:
            return False
        live = await self._io(self._registry.live, name)
        if live is None:
            if len(self._unknown) >= NEGATIVE_NAMES:
                self._unknown.clear()
            self._unknown[name] = now + NEGATIVE_TTL
            if self.replicas is not None:
                self.replicas.close_database(name)
            if name in self.names:
                self.names.discard(name)
                with self.disk.writes(refuse=False):
                    await self._run(self.catalog.delete_database, name)
            return False
        self._unknown.pop(name, None)
        if name not in self.names:
            with self.disk.writes(refuse=False):
                await self._run(self.catalog.adopt_database, name, live.created_at)
                await self._adopt_cors(name, live.cors_origins)
                await self._adopt_issuers(name, live.issuers)
            if live.limits:
                self.quotas.set(name, decode_limits(json.dumps(live.limits)))
            self.names.add(name)
        return True

    async def cluster_notice(self, principal: tokens.Principal, notice: dict[str, Any]) -> None:
        """Another node's notice (``Cluster.notify``): a database created or deleted, a token
        revoked, a node leaving."""
        principal.require("admin")
        cluster = self._in_cluster()
        if isinstance(name := notice.get("database"), str):
            check_name(name)
            self._unknown.pop(name, None)
            await self.learn_database(name)
        if isinstance(token_id := notice.get("revoked"), str):
            self.auth.revoke(token_id)
            self.identity.revoked([token_id])
        if isinstance(name := notice.get("issuers"), str) and self._registry is not None:
            check_name(name)  # another node changed the database's trusted issuers
            await self._adopt_issuers(name, await self._io(self._registry.issuers, name))
        if isinstance(name := notice.get("cors"), str) and self._registry is not None:
            check_name(name)  # another node changed its allowed origins
            await self._adopt_cors(name, await self._io(self._registry.cors, name))
        if isinstance(node := notice.get("left"), str):
            cluster.left(node)
        if isinstance(node := notice.get("joined"), str) and \
                isinstance(url := notice.get("url"), str) and url.startswith(("http://",
                                                                              "https://")):
            cluster.joined(node, url)

    async def release_database(self, principal: tokens.Principal, name: str,
                               to: str, url: str | None = None) -> None:
        """Node ``to`` claims database ``name``: forward it there from now, end its
        transactions, ship and close what is open. Answered once nothing of it is left
        open here, so the claimant's first write finds every commit in the store."""
        principal.require("admin")
        cluster = self._in_cluster()
        if not cluster.yields(name, to):
            raise ShoalError(Code.CLAIMED, f"{name}: this node claims it at this moment, and "
                                           f"takes precedence")
        cluster.released_to(name, to, url)
        await self._end_transactions(name)
        databases = await self.lifecycle.close_database(name)
        if databases:
            METRICS.cluster_releases.inc()
        await asyncio.gather(*(drain(db, self.settings.statement_timeout + 1)
                               for db in databases))

    async def hand_over(self) -> None:
        """A clean stop of a cluster's node, while it still serves: say to the others that it
        leaves (they lead its databases from now, and it forwards their requests), then ship
        and close every database it has open, answering their claims as it goes. The clean
        stop that follows finds nothing left to ship."""
        cluster = self._in_cluster()
        await cluster.announce_leaving()
        await self._end_transactions(None)
        await self.lifecycle.close_all(self.settings.statement_timeout + 1)

    async def cluster_status(self, principal: tokens.Principal) -> dict[str, Any]:
        """GET /v1/cluster: the members, and what this node leads and has open."""
        principal.require("admin")
        cluster = self._in_cluster()
        status = cluster.describe()
        status["open_databases_led"] = sorted({n for n, _ in self.lifecycle.open
                                               if cluster.leads(n)})
        status["databases_led"] = sum(1 for n in self.names if cluster.leads(n))
        status["replicas"] = self.replicas.status() if self.replicas is not None else []
        status["databases"] = len(self.names)
        return status

    async def _tell(self, notice: dict[str, Any]) -> None:
        """Tell the cluster's other nodes of a change to the catalog (at once, rather than at
        their next listing)."""
        if self.cluster is not None:
            await self.cluster.notify(notice)

    def _in_cluster(self) -> Cluster:
        if self.cluster is None:
            raise ShoalError(Code.NOT_FOUND, "this node is not in a cluster (advertise_url "
                                             "is unset)")
        return self.cluster

    # -- databases ---------------------------------------------------------------------------
    async def create_database(
        self, principal: tokens.Principal, name: str, idem: Idempotency | None,
        render: Callable[[DatabaseRecord], tuple[int, bytes]],
    ) -> tuple[int, bytes]:
        check_name(name)
        audit_note(name, "main", 0)  # the name is the body's: the audit record says it
        scopes.manage(principal, "admin", name)
        key = (idem.key if idem else "")
        if self._registry is not None and name not in self.names and \
                await self._io(self._registry.used_before, name):
            # a new database of a name used before is not the one older tokens were given
            await self._narrow_tokens(name, keep=principal.subject)

        def make() -> tuple[int, bytes]:
            rec = self.catalog.create_database(name)
            if self._registry is not None:
                self._registry.create_database(name, rec.created_at)
            return render(rec)

        with self.disk.writes():
            status, body = await self._run(
                self.catalog.write,
                make,
                "*",
                (principal.subject, key, idem.body_hash) if idem else None,
                self.settings.idempotency_ttl,
            )
        self.names.add(name)
        await self._tell({"database": name})
        return status, body

    async def list_databases(self, principal: tokens.Principal, limit: int,
                             cursor: str | None) -> list[DatabaseRecord]:
        scopes.manage(principal, "read")
        if self.cluster is not None and cursor is None:
            await self._sync_names()  # another node may have created or deleted some
        return await self._run(self.catalog.list_databases, limit, cursor,
                               None if principal.databases is None else principal.reaches)

    async def database_info(self, principal: tokens.Principal, name: str) -> DatabaseInfo:
        check_name(name)
        scopes.manage(principal, "read", name)
        record = await self._run(self.catalog.get_database, name)
        if record is None:
            raise ShoalError(Code.DATABASE_NOT_FOUND, f"database {name!r} does not exist")
        open_db = self.lifecycle.open.get((name, "main"))
        path = self.lifecycle.path(name)
        if self._registry is None:  # local-only: main is the one branch
            views = [BranchView(Branch(name, "main", "", None, 0, record.created_at), 0, 0)]
        else:
            views = await self._io(self._registry.branches, name)
        if open_db is not None:
            txid = open_db.txid
        else:
            local = await self._run(stored_txid, path)
            txid = max([local] + [v.head_txid for v in views if v.branch.name == "main"])
        # every branch's files on this node (and their markers): the database's footprint
        size = sum(p.stat().st_size for p in path.parent.glob("*") if p.is_file()) \
            if path.parent.exists() else 0
        return DatabaseInfo(record, size, [v.branch for v in views], txid, open_db is not None)

    async def delete_database(self, principal: tokens.Principal, name: str,
                              purge: bool = False) -> None:
        """Delete a database. With an object store it stays restorable (``undelete``) for
        history_retention, unless ``purge``; ``purge`` on a deleted name removes its
        deleted incarnations at once. The local files go in any case, first: on a full
        disk, deleting is how space comes back."""
        check_name(name)
        scopes.manage(principal, "admin", name)
        if name not in self.names:
            if purge and self._registry is not None and \
                    len(await self._io(self._registry.purge, name)) > 0:
                return
            raise ShoalError(Code.DATABASE_NOT_FOUND, f"database {name!r} does not exist")
        if self._registry is None:  # no undelete here: its tokens go with it
            await self._narrow_tokens(name)
        record = await self._run(self.catalog.get_database, name)
        self.names.discard(name)  # no new request can open it from here on
        # The local catalog first: if this node dies before the store's write, the next
        # start finds the database in the store and lists it again (nothing happened).
        uncatalogued = await self._uncatalog(name)
        incarnation = None
        try:
            await self._end_transactions(name)
            for db in await self.lifecycle.close_database(name):  # ships what is pending
                await drain(db, self.settings.statement_timeout + 1,
                            flush=self._registry is not None and not purge, keep=False)
            if self._registry is not None:  # the one write that deletes it
                incarnation = await self._io(self._registry.delete_database, name,
                                             time.time())
        except BaseException:
            self.names.add(name)
            if uncatalogued and record is not None:
                await self._run(self.catalog.adopt_database, name, record.created_at)
            raise
        await self._tell({"database": name})
        if self.store is not None:
            try:
                await self._forget_webhooks(name)
            except ShoalError as exc:  # left for nobody: a name made again is a new life
                log.warning("the webhooks of deleted %s were not deleted: %s", name, exc)
        await self._run(shutil.rmtree, self.lifecycle.root / name, True)  # space comes back
        for key in [k for k in self.usage if k == name or k.startswith(name + "/")]:
            self.usage.pop(key, None)
        self.quotas.forget(name)
        self.cors.pop(name, None)
        self.identity.set_database(name, ())
        if not uncatalogued and not await self._uncatalog(name):  # again, with room now
            if self._registry is None:
                raise ShoalError(Code.DISK_FULL, f"the files of {name!r} are deleted but the "
                                                 f"catalog could not be written")
            self._stale_catalog = True  # a cache: the sweeper resyncs it from the store
        if purge and incarnation is not None and self._registry is not None:
            await self._io(self._registry.purge, name, {incarnation})  # this one, not older

    async def _narrow_tokens(self, name: str, keep: str = "") -> None:
        """Every scoped token naming ``name`` (but ``keep``, the one creating it) stops
        reaching it: a database created under a name used before is not the one those
        tokens were given. With a store that happens when the name is used again (until
        then a deleted database stays in its tokens' reach, to undelete it); on a node
        without one (no undelete), at the delete. Before the change it guards: if it
        fails, nothing is created or deleted."""
        now = time.time()
        ids = set(await self._run(self.catalog.tokens_naming, name, now))
        if self._registry is not None:
            ids |= set(await self._io(self._registry.tokens_naming, name, now))
        for tid in sorted(ids - {keep}):
            if self._registry is not None:
                await self._io(self._registry.narrow, tid, name)
            else:
                await self._run(self.catalog.narrow, tid, name)
            self.auth.narrow(tid, name)

    async def _uncatalog(self, name: str) -> bool:
        """Drop a database from the local catalog; False if the disk refused (logged)."""
        try:
            await self._run(self.catalog.delete_database, name)
            return True
        except (ShoalError, apsw.Error, OSError) as exc:
            log.warning("deleting %r from the local catalog failed: %r", name, exc)
            return False

    async def undelete_database(self, principal: tokens.Principal, name: str,
                                incarnation: str | None = None) -> DatabaseRecord:
        """Bring back a deleted database (its newest deleted incarnation unless named), with
        every branch and its history; DATABASE_EXISTS while the name is taken."""
        check_name(name)
        scopes.manage(principal, "admin", name)
        if name in self.names:
            raise ShoalError(Code.DATABASE_EXISTS, f"database {name!r} exists: delete it before "
                                                   f"bringing back a deleted one")
        created_at = await self._io(self.registry.undelete_database, name, incarnation)
        await self.lifecycle.settle(name)
        await self._run(shutil.rmtree, self.lifecycle.root / name, True)  # stale copies
        await self._run(self.catalog.adopt_database, name, created_at)
        await self._adopt_limits(name, await self._io(self.registry.limits, name))
        await self._adopt_cors(name, await self._io(self.registry.cors, name))
        await self._adopt_issuers(name, await self._io(self.registry.issuers, name))
        self.names.add(name)
        await self._tell({"database": name})
        record = await self._run(self.catalog.get_database, name)
        assert record is not None
        return record

    async def deleted_databases(self, principal: tokens.Principal) -> list[Deleted]:
        """Deleted databases still restorable, with when each expires."""
        scopes.manage(principal, "admin")
        return await self._io(self.registry.deleted,
                              None if principal.databases is None else principal.reaches)

    async def _expire_deleted(self) -> None:
        """Purge deleted incarnations older than history_retention."""
        cutoff = time.time() - self.settings.history_retention
        for gone in await self._io(self.registry.deleted):
            if gone.deleted_at < cutoff:
                try:
                    await self._io(self.registry.purge, gone.name, {gone.incarnation})
                    log.info("retention purged %s (deleted %s)", gone.name,
                             datetime.fromtimestamp(gone.deleted_at, UTC).isoformat())
                except Exception as exc:  # background work: the next pass tries again
                    _pass_failed(f"purging deleted {gone.name}", exc)

    # -- queries -----------------------------------------------------------------------------
    async def _end_transactions(self, name: str | None, branch: str | None = None) -> None:
        """Roll back the open transactions of a database (or of one of its branches; of
        every database if ``name`` is None)."""
        for tx_id, (db, tx) in list(self.transactions.items()):
            if name in (None, db.name) and branch in (None, db.branch):
                self.transactions.pop(tx_id)
                self.expired[tx_id] = Code.TRANSACTION_ABORTED
                with contextlib.suppress(Exception):
                    await db.end(tx, commit=False)
        METRICS.open_transactions.set(len(self.transactions))

    async def query(
        self, principal: tokens.Principal, name: str, statements: list[Statement],
        idem: Idempotency | None, render: Callable[[Committed], tuple[int, bytes]],
        *, branch: str = "main", at: ReadAt | None = None,
    ) -> Outcome:
        principal.require("read", name)
        unbound(principal)
        principal.on(branch)
        wanted = self._wanted(name, branch, at.bookmark) if at is not None else None
        if at is not None and at.follow and self.replicas is not None:
            url = self.leader_url(name)
            if url is not None:  # another node leads it: read here, or Moved (forwarded)
                return await self._follower_query(principal, name, branch, statements,
                                                  idem, wanted, url)
        self.quotas.admit(name)
        db = await self.lifecycle.acquire(name, branch)  # lifecycle.use, without its
        try:  # context manager's cost on the hot path
            if wanted is not None and self.cluster is not None and \
                    wanted.timeline == db.timeline and wanted.txid > db.txid:
                await self._reach(db, wanted.txid)
            if idem is None:
                return await self._query(principal, db, statements, None)
            return await self._idempotent(
                (db.usage_key, principal.subject, idem.key),
                lambda: self._query_once(principal, db, statements, idem, render))
        finally:
            self.lifecycle.release(db)

    async def _reach(self, db: Database, txid: int) -> None:
        """A read's bookmark ahead of this leader's copy: a commit in flight here (a read
        saw it before its txid was published), else another node committed it and this
        node's view of who leads is behind: LEADER_UNAVAILABLE after bookmark_wait."""
        deadline = time.monotonic() + self.settings.bookmark_wait
        while db.txid < txid:
            if time.monotonic() >= deadline:
                raise ShoalError(Code.LEADER_UNAVAILABLE, f"{db.name}: txid {txid} of the "
                                 f"bookmark is not on this node (at {db.txid}): another "
                                 f"node may lead it; try again")
            await asyncio.sleep(0.005)

    def _wanted(self, name: str, branch: str, bookmark: str | None) -> Bookmark | None:
        """The bookmark a read carries, checked to be of this database and branch."""
        if bookmark is None:
            return None
        found = self._bookmark(name, bookmark)
        if found.branch != branch:
            raise ShoalError(Code.INVALID_REQUEST, f"the bookmark names branch "
                                                   f"{found.branch!r}, not {branch!r}")
        return found

    async def _follower_query(self, principal: tokens.Principal, name: str, branch: str,
                              statements: list[Statement], idem: Idempotency | None,
                              wanted: Bookmark | None, url: str) -> Outcome:
        """A read of a database another node leads, from this node's replica once it holds
        the bookmark (waiting up to bookmark_wait). Whatever it cannot answer (a write, an
        Idempotency-Key, a replica not ready or behind) goes to the leader: Moved."""
        assert self.replicas is not None
        self.require_database(name)
        replica = None if idem is not None else self.replicas.get(name, branch)
        if replica is None or (wanted is not None and not await replica.reached(
                wanted.txid, wanted.timeline, self.settings.bookmark_wait)) or replica.closed:
            raise Moved(url, f"{name}: read at the leader")
        db = replica.db
        assert db is not None
        if db.writes(statements):
            raise Moved(url, f"{name}: writes go to the leader")
        self.quotas.admit(name)
        db.active += 1
        try:
            counters, txid = await db.read(statements)
        except NeedsWriter as exc:
            db.remember_write(exc.sql)
            raise Moved(url, f"{name}: writes go to the leader") from None
        except TransactionControl:  # a BEGIN (Hrana sends SQL): transactions are the leader's
            raise Moved(url, f"{name}: transactions go to the leader") from None
        except ShoalError as exc:
            if exc.code in LAGGING:  # the copy may not have the schema yet: the leader says
                raise Moved(url, f"{name}: read at the leader ({exc.code})") from None
            raise
        finally:
            db.active -= 1
            replica.last_used = time.monotonic()
        self._meter(db, counters)
        METRICS.cluster_served_by_replica.inc()
        return Outcome(counters.results, counters.rows_read, counters.rows_written, txid,
                       db.bookmark(max(txid, db.visible)))

    async def _query_once(self, principal: tokens.Principal, db: Database,
                          statements: list[Statement], idem: Idempotency,
                          render: Callable[[Committed], tuple[int, bytes]]) -> Outcome:
        found = await db.find_idempotent(principal.subject, idem.key)
        if found is not None:
            await db.wait_durable(db.txid)  # the first answer may still be waiting for it
            audit_note(db.name, db.branch, WRITE)  # (only a write's answer is kept)
            return self._replay(found, idem)
        record = IdempotencyRecord(principal.subject, idem.key, idem.body_hash, render)
        return await self._query(principal, db, statements, record)

    @staticmethod
    def _replay(found: tuple[bytes, int, bytes], idem: Idempotency) -> Outcome:
        body_hash, status, response = found
        if body_hash != idem.body_hash:
            raise ShoalError(Code.IDEMPOTENCY_KEY_REUSED,
                             "this Idempotency-Key was used with a different body")
        return Outcome([], 0, 0, 0, "", replay=(status, response))

    async def _idempotent(self, key: tuple[str, str, str],
                          run: Callable[[], Awaitable[Outcome]]) -> Outcome:
        """One request per key at a time on this node; a second waits and gets the answer."""
        while (pending := self.inflight.get(key)) is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.inflight[key] = future
        try:
            out = await run()
            future.set_result(None)
            return out
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved
            raise
        finally:
            self.inflight.pop(key, None)

    async def _query(self, principal: tokens.Principal, db: Database,
                     statements: list[Statement], record: IdempotencyRecord | None) -> Outcome:
        # A request known to write skips the reader; this only saves time: a reader
        # still refuses writes itself (query_only), whatever this hint says.
        if not (principal.can_write and db.writes(statements)):
            try:
                counters, txid = await db.read(statements)
                self._meter(db, counters)
                return Outcome(counters.results, counters.rows_read, counters.rows_written,
                               txid, db.bookmark(max(txid, db.visible)))
            except NeedsWriter as exc:
                db.remember_write(exc.sql)
        audit_note(db.name, db.branch, WRITE)  # a write, whatever becomes of it
        if not principal.can_write:
            raise ShoalError(Code.READ_ONLY, "this token has read access only; the request writes")
        self.disk.refuse()  # the hot path: no context manager (Disk.writes, inlined)
        self.quotas.admit_write(db.name)
        try:
            done = await db.write(statements, record)
        except Exception as exc:
            if (mapped := self.disk.failure(exc)) is exc:
                raise
            raise mapped from None
        self._meter(db, done.counters, WRITE)
        out = Outcome(done.counters.results, done.counters.rows_read,
                      done.counters.rows_written, done.txid, done.bookmark)
        if done.response is not None:
            out.replay = done.response
        return out

    def _meter(self, db: Database, counters: Counters, kind: int = READ) -> None:
        audit_note(db.name, db.branch, SCHEMA if counters.schema else kind, counters.rows_read,
                   counters.rows_written)
        u = self.usage[db.usage_key]
        u[0] += counters.rows_read
        u[1] += counters.rows_written
        u[2] += 1
        self.quotas.meter(db.name, counters.rows_read, counters.rows_written)

    def _take_usage(self) -> tuple[dict[str, tuple[int, int, int]],
                                   dict[str, tuple[float, int, int]]]:
        """Event loop: the counts since the last flush, and the periods' counts."""
        if self.disk.full:  # the counts wait in memory for room
            return {}, {}
        deltas = {k: (v[0], v[1], v[2]) for k, v in self.usage.items()}
        self.usage.clear()
        self._usage_base = (self._usage_base[0], deltas)  # one assignment: /metrics reads it
        return deltas, self.quotas.saved()

    def _save_usage(self, deltas: dict[str, tuple[int, int, int]],
                    windows: dict[str, tuple[float, int, int]]) -> None:
        if not (deltas or windows):
            return
        with contextlib.suppress(ShoalError), self.disk.writes(refuse=False):
            self.catalog.add_usage(deltas)  # DISK_FULL: the node is read-only, these are lost
            self.catalog.save_windows(windows)
        self._usage_base = (self.catalog.all_usage(), {})

    def usage_metrics(self) -> bytes:
        """Per-database usage as Prometheus text (database names: only for an admin of
        every database, never on the open /metrics)."""
        return generate_latest(self._usage_registry)

    def _usage_now(self) -> dict[str, tuple[int, int, int]]:
        """Every database's usage: saved, plus what is still in memory (for /metrics)."""
        saved, in_flight = self._usage_base
        out = dict(saved)
        for counts in (in_flight, self.usage):
            for key, (read, written, queries) in list(counts.items()):
                r, w, q = out.get(key, (0, 0, 0))
                out[key] = (r + read, w + written, q + queries)
        return out

    def _flush_usage(self) -> None:
        self._save_usage(*self._take_usage())

    async def usage_of(self, principal: tokens.Principal, name: str,
                       branch: str = "main") -> dict[str, int]:
        check_name(name)
        check_name(branch, "branch")
        principal.require("read", name)
        principal.on(branch)
        self.require_database(name)
        if branch != "main":
            await self._io(self.registry.branch, name, branch)  # BRANCH_NOT_FOUND
        key = name if branch == "main" else f"{name}/{branch}"
        async with self._usage_lock:  # not while a flush moves counts from memory to disk
            read, written, queries = await self._run(self.catalog.usage, key)
            pending = list(self.usage.get(key, [0, 0, 0]))
        path = self.lifecycle.path(name, branch)
        size = branch_bytes(path)
        out: dict[str, Any] = {"rows_read": read + pending[0], "rows_written": written + pending[1],
                               "queries": queries + pending[2], "storage_bytes": size}
        open_db = self.lifecycle.open.get((name, branch))
        if open_db is not None:
            out["size_bytes"] = await open_db.size()
        out["limits"] = self.quotas.of(name).as_dict()
        out["period"] = self.quotas.period_of(name)
        return out

    # -- quotas (engine/quota.py) -----------------------------------------------------------
    async def limits_of(self, principal: tokens.Principal, name: str) -> dict[str, Any]:
        """A database's own limits and those in force: its readers may look."""
        check_name(name)
        principal.require("read", name)
        self.require_database(name)
        own = self.quotas.own.get(name, DatabaseLimits())
        return {"database": name, "limits": encode_limits(own),
                "effective": self.quotas.of(name).as_dict()}

    async def set_limits(self, principal: tokens.Principal, name: str,
                         limits: DatabaseLimits) -> dict[str, Any]:
        """Replace a database's own limits. Only an admin token of every database ('*') may:
        they are the operator's cost control, not the tenant's."""
        check_name(name)
        principal.require("admin", name)
        if principal.databases is not None:
            raise ShoalError(Code.FORBIDDEN, "limits are set by an admin token for every "
                                             "database ('*'); this token may read them")
        self.require_database(name)
        raw = encode_limits(limits)
        with self.disk.writes():
            if self._registry is not None:  # the store's record is the truth
                await self._io(self._registry.set_limits, name, raw)
            await self._adopt_limits(name, raw)
        return await self.limits_of(principal, name)

    async def _adopt_limits(self, name: str, raw: dict[str, Any]) -> None:
        """Limits now in force on this node: the catalog (cache), the meters, the files."""
        limits = decode_limits(raw)
        await self._run(self.catalog.set_limits, name, json.dumps(raw) if raw else None)
        effective = self.quotas.set(name, limits)
        for (db_name, _), db in self.lifecycle.open.items():
            if db_name == name:
                db.size_limit = effective.size_bytes

    # -- allowed origins (shoal/origins.py) ----------------------------------------------------
    def cors_origins(self, name: str) -> tuple[str, ...]:
        """The origins database ``name`` allows of its own (the server adds the node's): a
        look-up in memory, for a browser's request."""
        return self.cors.get(name, ())

    async def cors_of(self, principal: tokens.Principal, name: str) -> dict[str, Any]:
        """A database's own allowed origins: its readers may look."""
        check_name(name)
        principal.require("read", name)
        self.require_database(name)
        return {"database": name, "origins": list(self.cors_origins(name))}

    async def set_cors(self, principal: tokens.Principal, name: str,
                       raw: list[str]) -> dict[str, Any]:
        """Replace a database's own allowed origins (an admin token of the database): the
        store's record, this node's catalog and memory, then the cluster's other nodes."""
        check_name(name)
        principal.require("admin", name)
        try:
            allowed = origins.parse(raw, origins.MAX_ORIGINS)
        except ValueError as exc:
            raise ShoalError(Code.INVALID_REQUEST, f"origins: {exc}") from None
        self.require_database(name)
        with self.disk.writes():
            if self._registry is not None:  # the store's record is the truth
                await self._io(self._registry.set_cors, name, allowed)
            await self._adopt_cors(name, allowed)
        await self._tell({"cors": name})
        return await self.cors_of(principal, name)

    async def refresh_cors(self, name: str) -> bool:
        """Read database ``name``'s allowed origins from the store again, at most every
        CORS_REFRESH seconds, on a cluster's node (the server asks before refusing a browser:
        a node that missed another's notice learns the change then). True if they changed."""
        now = time.monotonic()
        if self._registry is None or self.cluster is None or name not in self.names or \
                now - self._cors_read.get(name, -CORS_REFRESH) < CORS_REFRESH:
            return False
        if len(self._cors_read) >= NEGATIVE_NAMES:
            self._cors_read.clear()
        self._cors_read[name] = now
        try:
            allowed = await self._io(self._registry.cors, name)
        except ShoalError as exc:  # the store: the refusal stands, this time
            log.warning("reading the allowed origins of %s failed: %s", name, exc)
            return False
        if allowed == self.cors_origins(name):
            return False
        self._remember_cors(name, allowed)
        try:
            with self.disk.writes(refuse=False):
                await self._run(self.catalog.set_cors, name, allowed)
        except ShoalError as exc:  # the catalog is a cache: in force here all the same
            log.warning("caching the allowed origins of %s failed: %s", name, exc)
        return True

    async def _adopt_cors(self, name: str, allowed: tuple[str, ...]) -> None:
        """Allowed origins now in force on this node: the catalog (cache), then memory."""
        await self._run(self.catalog.set_cors, name, allowed)
        self._remember_cors(name, allowed)

    def _remember_cors(self, name: str, allowed: tuple[str, ...]) -> None:
        if allowed:
            self.cors[name] = allowed
        else:
            self.cors.pop(name, None)

    # -- trusted identity providers (shoal/identity) -------------------------------------------
    async def issuers_of(self, principal: tokens.Principal, name: str) -> dict[str, Any]:
        """A database's own trusted issuers, as declared: its admins may look."""
        check_name(name)
        principal.require("admin", name)
        self.require_database(name)
        return {"database": name,
                "issuers": [i.raw for i in self.identity.database_issuers(name)]}

    async def set_issuers(self, principal: tokens.Principal, name: str,
                          raw: list[Any]) -> dict[str, Any]:
        """Replace a database's own trusted issuers (an admin token of the database): the
        store's record, this node's catalog and memory, then the cluster's other nodes (as
        its allowed origins)."""
        check_name(name)
        principal.require("admin", name)
        try:
            declared = tuple(i.raw for i in identity.parse_issuers(raw, name))
        except identity.IssuerError as exc:
            raise ShoalError(Code.INVALID_REQUEST, f"issuers: {exc}") from None
        self.require_database(name)
        with self.disk.writes():
            if self._registry is not None:  # the store's record is the truth
                await self._io(self._registry.set_issuers, name, declared)
            await self._adopt_issuers(name, declared)
        await self._tell({"issuers": name})
        return await self.issuers_of(principal, name)

    async def _adopt_issuers(self, name: str, declared: tuple[dict[str, Any], ...]) -> None:
        """Trusted issuers now in force on this node: the catalog (cache), then memory."""
        await self._run(self.catalog.set_issuers, name, declared)
        self._trust(name, declared)

    def _trust(self, name: str, declared: Sequence[dict[str, Any]]) -> None:
        try:
            self.identity.set_database(name, identity.parse_issuers(list(declared), name))
        except identity.IssuerError as exc:  # stored by another version: trusted no more
            log.warning("the trusted issuers of %s are not valid here: %s", name, exc)
            self.identity.set_database(name, ())

    async def node_issuers(self, principal: tokens.Principal) -> dict[str, Any]:
        """The node's trusted issuers and every key source's state (an admin of every
        database: it names every database's sources)."""
        principal.require("admin")
        if principal.databases is not None:
            raise ShoalError(Code.FORBIDDEN, "the node's issuers are shown to a token of "
                                             "every database")
        return {"issuers": [i.raw for i in self.identity.server_issuers],
                "keys": self.identity.status()}

    async def revoke_issuer(self, principal: tokens.Principal, issuer: str, jti: str | None,
                            database: str | None) -> dict[str, Any]:
        """Revoke one token of an identity provider (``jti``) or, without one, every token
        of the issuer issued before now: the node's issuer (``database`` None: an admin of
        every database) or a database's own (an admin of it). Kept and told as Shoal's own
        revocations are: every node of a cluster has it within REVOKED_SYNC."""
        principal.require("admin")
        if database is None:
            if principal.databases is not None:
                raise ShoalError(Code.FORBIDDEN, "the node's issuers are revoked by a token of "
                                                 "every database")
            trusted = self.identity.server_issuers
        else:
            check_name(database)
            principal.require("admin", database)
            self.require_database(database)
            trusted = self.identity.database_issuers(database)
        if not any(i.issuer == issuer for i in trusted):
            raise ShoalError(Code.NOT_FOUND, "no such trusted issuer" + (
                f" of database {database!r}" if database else " of the node"))
        now = time.time()
        rid = identity.token_id(issuer, jti) if jti else \
            identity.issuer_revocation(database or "*", issuer, now)
        await self._revoke_id(rid, now)
        out: dict[str, Any] = {"issuer": issuer, "database": database}
        return out | ({"jti": jti, "id": rid} if jti else {"issued_before": now})

    async def _revoke_id(self, rid: str, when: float) -> None:
        with self.disk.writes(refuse=False):  # tried even on a full disk: it may fit
            await self._run(self.catalog.revoke_id, rid)
        if self._registry is not None:
            await self._io(self._registry.revoke_token, rid, when)
        self.identity.revoked([rid])
        await self._tell({"revoked": rid})

    async def compact(self, principal: tokens.Principal, name: str,
                      branch: str = "main") -> Compacted:
        """Give a branch's free pages back (VACUUM): admin access, as it holds the branch's
        writes for as long as it runs (see Database.compact)."""
        principal.require("admin", name)
        self._known(name, branch)
        with self.disk.writes():
            async with self.lifecycle.use(name, branch) as db:
                done = await db.compact()
        METRICS.compactions.inc()
        log.info("compacted %s/%s at txid %d: %d -> %d bytes in %.0f ms", name, branch,
                 done.txid, done.bytes_before, done.bytes_after, done.seconds * 1000)
        return done

    async def describe(self, principal: tokens.Principal, name: str, sql: str,
                       *, branch: str = "main") -> Description:
        """Prepare one statement without running it (Hrana's describe): read access."""
        principal.require("read", name)
        unbound(principal)
        principal.on(branch)
        async with self.lifecycle.use(name, branch) as db:
            return await db.describe(sql)

    async def find_idempotent(self, principal: tokens.Principal, name: str,
                              idem: Idempotency, *,
                              branch: str = "main") -> tuple[int, bytes] | None:
        """The response stored for this key, if any; a different body is refused.

        For protocols that commit through several engine calls (Hrana), which look
        the key up once before running and record it with their one commit.
        """
        principal.require("read", name)
        unbound(principal)
        principal.on(branch)
        async with self.lifecycle.use(name, branch) as db:
            found = await db.find_idempotent(principal.subject, idem.key)
            if found is not None:
                await db.wait_durable(db.txid)
        return None if found is None else self._replay(found, idem).replay

    # -- interactive transactions ------------------------------------------------------------
    async def begin(self, principal: tokens.Principal, name: str, mode: str | None,
                    *, branch: str = "main") -> Transaction:
        principal.require("read", name)
        unbound(principal)
        principal.on(branch)
        write = principal.can_write if mode is None else mode == "write"
        if write and not principal.can_write:
            raise ShoalError(Code.READ_ONLY, "this token may open read transactions only")
        if write:
            self.disk.refuse()
        self.quotas.admit(name, writes=write)
        self._admit(principal, name)
        db = await self.lifecycle.acquire(name, branch)
        try:
            self._admit(principal, name)  # again: others may have begun while it opened
            tx = await db.begin("tx_" + secrets.token_hex(12), principal.subject, write)
        finally:
            db.active -= 1
            db.last_used = time.monotonic()
        tx.age_deadline = time.monotonic() + self.settings.transaction_max_age
        self.transactions[tx.id] = (db, tx)
        audit_note(name, branch, TRANSACTION)
        METRICS.open_transactions.set(len(self.transactions))
        return tx

    def _admit(self, principal: tokens.Principal, name: str) -> None:
        """TOO_MANY_TRANSACTIONS past a database's or a token's share of open transactions
        (each holds a connection, two file descriptors, and pins a snapshot of the WAL)."""
        s = self.settings
        cap = self.quotas.of(name).transactions
        if self.transactions.of_database(name) >= cap:
            if cap < s.max_transactions:
                METRICS.quota_refusals.labels("transactions").inc()
            raise ShoalError(Code.TOO_MANY_TRANSACTIONS,
                             f"database {name!r} has {cap} open transactions ("
                             + ("max_transactions)" if cap == s.max_transactions
                                else "its transactions limit)"))
        if self.transactions.of_subject(principal.subject) >= s.max_transactions_per_token:
            raise ShoalError(Code.TOO_MANY_TRANSACTIONS,
                             f"this token has {s.max_transactions_per_token} open transactions "
                             f"(max_transactions_per_token)")

    def _tx(self, principal: tokens.Principal, name: str, tx_id: str,
            branch: str = "main") -> tuple[Database, Transaction]:
        principal.require("read", name)
        principal.on(branch)
        entry = self.transactions.get(tx_id)
        if entry is None or entry[0].name != name or entry[0].branch != branch \
                or entry[1].subject != principal.subject:
            if tx_id in self.expired:
                raise self._over(tx_id)
            raise ShoalError(Code.TRANSACTION_NOT_FOUND, f"no open transaction {tx_id!r}")
        return entry

    def _over(self, tx_id: str) -> ShoalError:
        code = self.expired.get(tx_id, Code.TRANSACTION_EXPIRED)
        return ShoalError(code, f"transaction {tx_id} is over ({code.lower()})")

    async def tx_query(self, principal: tokens.Principal, name: str, tx_id: str,
                       statements: list[Statement], *, branch: str = "main") -> Outcome:
        db, tx = self._tx(principal, name, tx_id, branch)
        self.quotas.admit(name, writes=tx.write)
        async with tx.lock:
            if tx_id not in self.transactions:
                raise self._over(tx_id)
            tx.busy = True
            try:
                with self.disk.writes(refuse=False):  # its statements may write
                    counters = await db.tx_query(tx, statements)
            finally:
                tx.busy = False
                tx.idle_deadline = time.monotonic() + self.settings.transaction_timeout
                if tx.aborted:  # release the write lock now, not at expiry
                    self.transactions.pop(tx_id, None)
                    self.expired[tx_id] = Code.TRANSACTION_ABORTED
                    await db.end(tx, commit=False)
        self._meter(db, counters, WRITE if counters.rows_written else READ)
        return Outcome(counters.results, counters.rows_read, counters.rows_written,
                       db.txid, db.bookmark(db.txid))

    async def tx_end(self, principal: tokens.Principal, name: str, tx_id: str, commit: bool,
                     idem: Idempotency | None = None,
                     render: Callable[[Committed], tuple[int, bytes]] | None = None,
                     *, branch: str = "main") -> Committed | None:
        keyed = commit and idem is not None and render is not None
        if keyed and (stored := await self._stored_commit(principal, name, idem, branch)):
            return stored  # a retried commit: the first answer, not TRANSACTION_NOT_FOUND
        db, tx = self._tx(principal, name, tx_id, branch)
        audit_note(name, branch, TRANSACTION)
        async with tx.lock:
            if self.transactions.pop(tx_id, None) is None:
                if keyed and (stored := await self._stored_commit(principal, name, idem, branch)):
                    return stored  # the same commit, in flight, finished meanwhile
                raise self._over(tx_id)
            METRICS.open_transactions.set(len(self.transactions))
            record = IdempotencyRecord(principal.subject, idem.key, idem.body_hash, render) \
                if idem and render else None
            try:
                with self.disk.writes(refuse=False):  # begun before the disk filled, maybe
                    return await db.end(tx, commit, record)
            except BaseException:  # rolled back (a deferred foreign key, a full disk): over
                self.expired[tx_id] = Code.TRANSACTION_ABORTED
                raise

    async def _stored_commit(self, principal: tokens.Principal, name: str,
                             idem: Idempotency | None, branch: str = "main") -> Committed | None:
        """The recorded answer of a commit sent with this Idempotency-Key, if any."""
        assert idem is not None
        principal.require("read", name)
        principal.on(branch)
        async with self.lifecycle.use(name, branch) as db:
            found = await db.find_idempotent(principal.subject, idem.key)
            if found is not None:
                await db.wait_durable(db.txid)
        if found is None:
            return None
        return Committed(Counters(), 0, "", response=self._replay(found, idem).replay)

    async def _expire_transactions(self) -> None:
        now = time.monotonic()
        for tx_id, (db, tx) in list(self.transactions.items()):
            if tx.busy or tx.lock.locked() or (tx.idle_deadline > now and tx.age_deadline > now):
                continue
            self.transactions.pop(tx_id, None)
            self.expired[tx_id] = Code.TRANSACTION_EXPIRED
            await db.end(tx, commit=False)
        METRICS.open_transactions.set(len(self.transactions))
        while len(self.expired) > 10000:
            self.expired.popitem(last=False)

    # -- tokens ------------------------------------------------------------------------------
    async def create_token(
        self, principal: tokens.Principal, databases: list[str] | None, access: str,
        expires_in: float, idem: Idempotency | None,
        render: Callable[[TokenRecord, str], tuple[int, bytes]], *,
        branch: str | None = None,
    ) -> tuple[int, bytes]:
        """A new token for ``databases`` (names and patterns, ``tenant-*``; None: every
        one), which the creating token must cover (``scopes.covers``), optionally bound to
        one ``branch``. An admin or a provisioning token may create tokens; a provisioning
        token only ``read``, ``write`` and ``admin`` ones."""
        scopes.manage(principal, "admin")
        if databases is not None:
            databases = scopes.check(databases)
            for entry in databases:
                if not scopes.covers(principal, entry):
                    raise ShoalError(Code.FORBIDDEN, f"token does not grant database {entry!r}"
                                     if not scopes.is_pattern(entry) else
                                     f"token does not grant every database of {entry!r}")
        elif principal.databases is not None:
            raise ShoalError(Code.FORBIDDEN,
                             "a scoped token cannot create a token for every database")
        if access == tokens.PROVISION:
            if principal.provision:
                raise ShoalError(Code.FORBIDDEN, "a provisioning token cannot create "
                                                 "provisioning tokens")
            if databases is not None and not all(map(scopes.is_pattern, databases)):
                raise ShoalError(Code.INVALID_REQUEST, "a provisioning token needs a prefix "
                                                       "scope: patterns such as 'tenant-*' (or "
                                                       "\"*\", from an admin token of every "
                                                       "database)")
        if branch is not None:
            check_name(branch, "branch")
            if access not in ("read", "write"):
                raise ShoalError(Code.INVALID_REQUEST, "a token bound to a branch has read or "
                                                       "write access")

        def make() -> tuple[int, bytes]:
            now = time.time()
            rec = TokenRecord(tokens.new_token_id(), databases, access, principal.subject,
                              now, now + expires_in, None, branch)
            self.catalog.add_token(rec)
            if self._registry is not None:
                self._registry.put_token(rec)
            return render(rec, self.auth.sign(rec.id, databases, access, rec.expires_at,
                                              branch))

        with self.disk.writes():
            return await self._run(
                self.catalog.write, make, "tokens",
                (principal.subject, idem.key, idem.body_hash) if idem else None,
                self.settings.idempotency_ttl)

    async def _token_scope(self, token_id: str) -> list[str] | None:
        """The databases a token reaches (None: every one); TOKEN_NOT_FOUND if unknown."""
        known, scope = await self._run(self.catalog.token_scope, token_id)
        if not known and self._registry is not None:
            known, scope = await self._io(self._registry.token_scope, token_id)
        if not known:
            raise ShoalError(Code.TOKEN_NOT_FOUND, f"no token {token_id!r}")
        return scope

    async def revoke_token(self, principal: tokens.Principal, token_id: str) -> None:
        """Revoke at once. Revoking needs admin over every database the token reaches: a
        token that is admin on one database cannot revoke another tenant's (or a "*"). A
        provisioning token revokes those it covers too; a ``tenant-*`` entry needs a token
        that covers it (``scopes.covers``)."""
        if token_id.startswith(identity.EXTERNAL):  # an identity provider's, by its id
            principal.require("admin")
            if principal.databases is not None:
                raise ShoalError(Code.FORBIDDEN, "a token of an identity provider is revoked "
                                                 "by its id with a token of every database "
                                                 "(or by issuer and jti: POST "
                                                 "/v1/issuers/revoke)")
            await self._revoke_id(token_id, time.time())
            return
        scopes.manage(principal, "admin")
        scope = await self._token_scope(token_id)
        if scope is None and principal.databases is not None:
            raise ShoalError(Code.FORBIDDEN, "a token that reaches every database can only be "
                                             "revoked by a token that does too")
        for entry in scope or ():
            if not scopes.covers(principal, entry):
                raise ShoalError(Code.FORBIDDEN, f"token does not grant database {entry!r}")
        with self.disk.writes(refuse=False):  # tried even on a full disk: it may fit
            await self._run(self.catalog.revoke_token, token_id)
        if self._registry is not None:
            await self._io(self._registry.revoke_token, token_id, time.time())
        self.auth.revoke(token_id)
        await self._tell({"revoked": token_id})

    async def list_tokens(self, principal: tokens.Principal, *, database: str | None = None,
                          expired: bool = False, revoked: bool = False, limit: int = 100,
                          cursor: str | None = None) -> tuple[list[TokenInfo], str | None]:
        """A page of tokens in id order and the cursor of the next (None at the end); live
        ones only unless ``expired``/``revoked``; those reaching ``database`` if named.

        Who sees what: an admin token of every database sees every token; an admin token
        scoped to some databases sees the tokens it could revoke (``revoke_token``): those
        given only databases it is admin of, so every token it made and those made for its
        databases by others (patterns: those it covers, ``scopes.covers``); a provisioning
        token sees the same. Read and write tokens are refused (FORBIDDEN).

        With a store its token records are the truth (every node's tokens); without one,
        the catalog's. A page reads at most ``TOKEN_SCAN`` records, so a filtered page may
        hold fewer than ``limit`` and still have a cursor."""
        scopes.manage(principal, "admin")
        if database is not None:
            check_name(database)
            scopes.manage(principal, "admin", database)
        now = time.time()

        def accept(info: TokenInfo) -> bool:
            rec = info.record
            if principal.databases is not None and (
                    rec.databases is None
                    or not all(scopes.covers(principal, d) for d in rec.databases)):
                return False
            if info.revoked and not revoked:
                return False
            if rec.expires_at <= now and not expired:
                return False
            reach = info.reach
            return database is None or reach is None or \
                any(scopes.matches(d, database) for d in reach)

        if self._registry is not None:
            return await self._io(self._registry.list_tokens, cursor, accept, limit)
        return await self._run(self.catalog.list_tokens, cursor, accept, limit)

    # -- branches and history ----------------------------------------------------------------
    def _known(self, name: str, *branches: str) -> None:
        check_name(name)
        for branch in branches:
            check_name(branch, "branch")
        self.require_database(name)

    async def _flushed(self, name: str, branch: str) -> int | None:
        """Open the branch and wait until every commit of it is in the store: its txid.
        Branch operations fork from durable history only.

        None when the branch cannot be opened because its log in the store is damaged:
        then no local copy exists (else it would have opened) and the store holds all
        there is; forking or restoring at an earlier point is how to recover.
        """
        try:
            async with self.lifecycle.use(name, branch) as db:
                txid = db.txid
                if db.journal is not None:
                    await db.journal.durable(txid)
                return txid
        except ShoalError as exc:
            if exc.code != Code.STORAGE_CORRUPT:
                raise
            log.warning("%s/%s cannot be opened (%s); using the store's history as it is",
                        name, branch, exc.message)
            return None

    def _local_size(self, name: str, branch: Branch) -> int:
        """Bytes of the branch's files on this node, if they hold its current timeline."""
        path = self.lifecycle.path(name, branch.name)
        try:
            if path.with_suffix(".timeline").read_text().strip() != branch.timeline:
                return 0
        except FileNotFoundError:
            return 0
        return branch_bytes(path)

    def _branch_info(self, name: str, view: BranchView) -> BranchInfo:
        open_db = self.lifecycle.open.get((name, view.branch.name))
        txid = open_db.txid if open_db is not None else view.head_txid
        return BranchInfo(view.branch, txid, self._local_size(name, view.branch),
                          view.store_bytes)

    async def list_branches(self, principal: tokens.Principal, name: str) -> list[BranchInfo]:
        principal.require("read", name)
        self._known(name)
        views = await self._io(self.registry.branches, name)
        return [self._branch_info(name, v) for v in views  # a bound token sees its own
                if principal.branch in (None, v.branch.name)]

    async def branch_info(self, principal: tokens.Principal, name: str,
                          branch: str) -> BranchInfo:
        principal.require("read", name)
        principal.on(branch)
        self._known(name, branch)
        for view in await self._io(self.registry.branches, name):
            if view.branch.name == branch:
                return self._branch_info(name, view)
        raise ShoalError(Code.BRANCH_NOT_FOUND, f"no branch {branch!r} in database {name!r}")

    @staticmethod
    def _bookmark(name: str, bookmark: str) -> Bookmark:
        found = read_bookmark(bookmark)
        if found.database != name:
            raise ShoalError(Code.INVALID_REQUEST, f"the bookmark names database "
                                                   f"{found.database!r}, not {name!r}")
        return found

    async def create_branch(self, principal: tokens.Principal, name: str, new: str,
                            source: str | None, timestamp: float | None = None,
                            bookmark: str | None = None, *,
                            materialise: bool = False) -> BranchInfo:
        """A branch of ``source`` at its latest state, a time or a bookmark. Writes two small
        records: no data is copied, whatever the size of the database. ``materialise``
        then opens it on this node (hydrated from the store, as its first query would)."""
        principal.require("admin", name)
        mark = self._bookmark(name, bookmark) if bookmark else None
        if mark is not None:
            if source is not None and source != mark.branch and mark.timeline is None:
                raise ShoalError(Code.INVALID_REQUEST, f"the bookmark is of branch "
                                                       f"{mark.branch!r}, not {source!r}")
            source = source or mark.branch
        source = source or "main"
        self._known(name, new, source)
        latest = await self._flushed(name, source)
        record = await self._io(self.registry.branch, name, source)
        if latest is None and mark is None and timestamp is None:
            raise ShoalError(Code.STORAGE_CORRUPT, f"the latest state of {name}/{source} cannot "
                                                   f"be restored; branch at an earlier point")
        timeline, fork = record.timeline, latest or 0
        if mark is not None:
            timeline, fork = mark.timeline or record.timeline, mark.txid
            await self._io(self.registry.check_point, name, timeline, fork)
        elif timestamp is not None:
            fork = await self._io(self.registry.resolve, name, timeline, timestamp, time.time())
        # a history that cannot be restored fails here, before the branch exists (listing
        # only: a branch costs the same whatever the size of the database)
        await self._io(self.registry.check_plan, name, timeline, fork)
        created = await self._io(self.registry.create_branch, name, new, record, timeline,
                                 fork, time.time())
        if materialise:
            async with self.lifecycle.use(name, new):
                pass
        return BranchInfo(created, fork, 0, 0)

    async def delete_branch(self, principal: tokens.Principal, name: str, branch: str) -> None:
        principal.require("admin", name)
        self._known(name, branch)
        if branch == "main":
            raise ShoalError(Code.INVALID_REQUEST, "main cannot be deleted: delete the database")
        await self._io(self.registry.branch, name, branch)  # BRANCH_NOT_FOUND before waiting
        async with self.lifecycle.exclusive(name, branch, self._end_transactions,
                                            self.settings.statement_timeout + 1, flush=False):
            await self._io(self.registry.delete_branch, name, branch)
            await self._run(self.registry.discard_local, self.lifecycle.path(name, branch))
        key = f"{name}/{branch}"
        self.usage.pop(key, None)
        await self._run(self.catalog.delete_usage, key)

    async def reset_branch(self, principal: tokens.Principal, name: str,
                           branch: str) -> BranchInfo:
        """Back to the parent's latest state (preview environments); the branch's own
        commits are dropped."""
        principal.require("admin", name)
        self._known(name, branch)
        record = await self._io(self.registry.branch, name, branch)
        if record.parent is None:
            raise ShoalError(Code.INVALID_REQUEST, f"branch {branch!r} has no parent to reset to")
        parent_txid = await self._flushed(name, record.parent)
        if parent_txid is None:
            raise ShoalError(Code.STORAGE_CORRUPT, f"the latest state of {name}/{record.parent} "
                                                   f"cannot be restored")
        parent = await self._io(self.registry.branch, name, record.parent)
        async with self.lifecycle.exclusive(name, branch, self._end_transactions,
                                            self.settings.statement_timeout + 1, flush=False):
            moved = await self._io(self.registry.reset_branch, name, branch, parent,
                                   parent_txid, time.time())
            await self._run(self.registry.discard_local, self.lifecycle.path(name, branch))
        return BranchInfo(moved, parent_txid, 0, 0)

    async def restore_branch(self, principal: tokens.Principal, name: str, branch: str,
                             timestamp: float | None, bookmark: str | None,
                             keep_as: str | None = None) -> Restored:
        """Restore a branch in place to a time or a bookmark; the state before stays
        reachable as another branch, which the result names."""
        principal.require("admin", name)
        if (timestamp is None) == (bookmark is None):
            raise ShoalError(Code.INVALID_REQUEST, "give 'timestamp' or 'bookmark' (one of them)")
        check_name(name)
        if name not in self.names and self._registry is not None and \
                len(await self._io(self._registry.deleted, {name})) > 0:
            await self.undelete_database(principal, name)  # restoring a deleted database
        self._known(name, branch, *([keep_as] if keep_as else []))
        mark = self._bookmark(name, bookmark) if bookmark else None
        if mark is not None and mark.timeline is None and mark.branch != branch:
            raise ShoalError(Code.INVALID_REQUEST, f"the bookmark is of branch {mark.branch!r}, "
                                                   f"not {branch!r}")
        await self._flushed(name, branch)
        record = await self._io(self.registry.branch, name, branch)
        if mark is not None:
            timeline, txid = mark.timeline or record.timeline, mark.txid
            await self._io(self.registry.check_point, name, timeline, txid)
        else:
            assert timestamp is not None
            timeline = record.timeline
            txid = await self._io(self.registry.resolve, name, timeline, timestamp, time.time())
        # Every object the restored state needs is read and verified before anything moves:
        # a damaged log fails here (STORAGE_CORRUPT naming the object), the branch unchanged.
        ready = await self._io(self.registry.materialise, name, timeline, txid)
        try:
            async with self.lifecycle.exclusive(name, branch, self._end_transactions,
                                                self.settings.statement_timeout + 1):
                moved, kept = await self._io(self.registry.restore_branch, name, branch,
                                             timeline, txid, keep_as, time.time())
                await self._run(self.registry.adopt_file, ready,
                                self.lifecycle.path(name, branch), moved.timeline)
        finally:
            await self._run(self.registry.discard_local, ready)  # unless adopted
        return Restored(moved, txid, kept)

    async def history(self, principal: tokens.Principal, name: str,
                      branch: str = "main") -> tuple[Branch, History]:
        """The restorable window of a branch (its pending commits shipped first, if open)."""
        principal.require("read", name)
        principal.on(branch)
        self._known(name, branch)
        open_db = self.lifecycle.open.get((name, branch))
        if open_db is not None and open_db.journal is not None:
            with contextlib.suppress(ShoalError):
                await open_db.journal.durable(open_db.txid)
        record = await self._io(self.registry.branch, name, branch)
        return record, await self._io(self.registry.history, name, record.timeline)


def parse_time(text: str) -> float:
    """An ISO 8601 time (UTC when it names no zone) as seconds since the epoch."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ShoalError(Code.INVALID_REQUEST, f"not an ISO 8601 time: {text[:80]!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class OpenTransactions:
    """The node's open interactive transactions by id, counted per database and per token
    (the caps of ``Engine._admit``) as they come and go."""

    def __init__(self) -> None:
        self._by_id: dict[str, tuple[Database, Transaction]] = {}
        self._databases: Counter[str] = Counter()
        self._subjects: Counter[str] = Counter()

    def __setitem__(self, tx_id: str, entry: tuple[Database, Transaction]) -> None:
        if tx_id in self._by_id:
            self.pop(tx_id)
        self._by_id[tx_id] = entry
        self._databases[entry[0].name] += 1
        self._subjects[entry[1].subject] += 1

    def pop(self, tx_id: str, default: tuple[Database, Transaction] | None = None
            ) -> tuple[Database, Transaction] | None:
        entry = self._by_id.pop(tx_id, None)
        if entry is None:
            return default
        for counter, key in ((self._databases, entry[0].name),
                             (self._subjects, entry[1].subject)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]
        return entry

    def get(self, tx_id: str) -> tuple[Database, Transaction] | None:
        return self._by_id.get(tx_id)

    def __contains__(self, tx_id: object) -> bool:
        return tx_id in self._by_id

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def items(self) -> ItemsView[str, tuple[Database, Transaction]]:
        return self._by_id.items()

    def of_database(self, name: str) -> int:
        return self._databases[name]

    def of_subject(self, subject: str) -> int:
        return self._subjects[subject]


class _Follow:
    """What the node's replicas need of it (engine/replica.py's Source)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def leader_url(self, name: str) -> str | None:
        return self.engine.leader_url(name)

    async def news(self, url: str, name: str, branch: str, after: int, timeline: str,
                   wait: float) -> News:
        status, headers, body = await self.engine._in_cluster().news(
            url, name, branch, after, timeline, wait)
        if status not in (200, 410):
            raise ShoalError(Code.LEADER_UNAVAILABLE, f"{name}: the leader answered {status} "
                                                      f"to a follower: {body[:200]!r}")
        timeline = dict(headers).get(TIMELINE_HEADER, b"").decode()
        return News(timeline, feeds.unpack(body) if status == 200 else None)

    async def hydrate(self, name: str, branch: str, path: Path) -> tuple[str, int]:
        return await self.engine._io(self.engine.registry.hydrate, name, branch, path)
