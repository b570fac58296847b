"""The engine facade: everything the HTTP layer may ask, with access checked on entry.

It owns the catalog, the token authority, the lifecycle of open databases, the
interactive transactions, usage metering and idempotency bookkeeping. The HTTP
layer passes a :class:`~shoal.tokens.Principal` and gets records back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import time
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import apsw

from shoal import tokens
from shoal.engine.catalog import Catalog, DatabaseRecord, TokenRecord
from shoal.engine.connection import Counters, Description, NeedsWriter, Result, Statement
from shoal.engine.database import GET_TXID, Committed, Database, IdempotencyRecord, Transaction
from shoal.engine.lifecycle import Lifecycle, drain
from shoal.errors import ShoalError
from shoal.metrics import METRICS
from shoal.names import check as check_name
from shoal.settings import Settings

log = logging.getLogger("shoal")
T = TypeVar("T")

SWEEP_INTERVAL = 0.25
USAGE_FLUSH_INTERVAL = 2.0


@dataclass
class Outcome:
    """The result of a query request, ready to render."""

    results: list[Result]
    rows_read: int
    rows_written: int
    txid: int
    bookmark: str
    replay: tuple[int, bytes] | None = None  # a stored idempotent response, sent as is


@dataclass
class DatabaseInfo:
    record: DatabaseRecord
    size_bytes: int
    branches: list[Any]
    txid: int
    open: bool


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
            raise ShoalError("INVALID_REQUEST", "Idempotency-Key is longer than 255 characters")
        return cls(key, hashlib.sha256(body).digest())


class Engine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.data_dir
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.executor = ThreadPoolExecutor(settings.threads, thread_name_prefix="shoal-sql")
        self.catalog = Catalog(str(self.root / "catalog.db"))
        self.names = self.catalog.names()
        signing_key, _ = tokens.read_or_create_secret(self.root / "signing-key", tokens.new_secret)
        self.admin_token_path: Path | None = None
        admin = settings.admin_token
        if not admin:
            self.admin_token_path = self.root / "admin-token"
            admin, _ = tokens.read_or_create_secret(self.admin_token_path, tokens.new_secret)
        self.auth = tokens.TokenAuthority(signing_key, admin, self.catalog.revoked_ids())
        self.lifecycle = Lifecycle(self.root / "dbs", settings, self.executor, self.names)
        self.transactions: dict[str, tuple[Database, Transaction]] = {}
        self.expired: OrderedDict[str, str] = OrderedDict()  # tx id -> why it ended
        self.inflight: dict[tuple[str, str, str], asyncio.Future[Any]] = {}
        self.usage: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        self._sweeper: asyncio.Task[None] | None = None

    # -- process lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for tx_id in list(self.transactions):
            db, tx = self.transactions.pop(tx_id)
            with contextlib.suppress(Exception):
                await db.end(tx, commit=False)
        self._flush_usage()
        await self.lifecycle.close_all(self.settings.statement_timeout + 1)
        self.catalog.close()
        self.executor.shutdown(wait=True)

    async def _sweep(self) -> None:
        last_flush = time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self._expire_transactions()
                self.lifecycle.close_idle()
                self.lifecycle.evict()
                if time.monotonic() - last_flush >= USAGE_FLUSH_INTERVAL:
                    last_flush = time.monotonic()
                    await self._run(self._flush_usage)
            except Exception:  # the sweeper must survive anything
                log.exception("sweeper failed")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- databases ---------------------------------------------------------------------------
    async def create_database(
        self, principal: tokens.Principal, name: str, idem: Idempotency | None,
        render: Callable[[DatabaseRecord], tuple[int, bytes]],
    ) -> tuple[int, bytes]:
        check_name(name)
        principal.require("admin", name)
        key = (idem.key if idem else "")
        status, body = await self._run(
            self.catalog.write,
            lambda: render(self.catalog.create_database(name)),
            "*",
            (principal.subject, key, idem.body_hash) if idem else None,
            self.settings.idempotency_ttl,
        )
        self.names.add(name)
        return status, body

    async def list_databases(self, principal: tokens.Principal, limit: int,
                             cursor: str | None) -> list[DatabaseRecord]:
        principal.require("read")
        return await self._run(self.catalog.list_databases, limit, cursor, principal.databases)

    async def database_info(self, principal: tokens.Principal, name: str) -> DatabaseInfo:
        check_name(name)
        principal.require("read", name)
        record = await self._run(self.catalog.get_database, name)
        if record is None:
            raise ShoalError("DATABASE_NOT_FOUND", f"database {name!r} does not exist")
        open_db = self.lifecycle.open.get((name, "main"))
        path = self.lifecycle.path(name)
        txid = open_db.txid if open_db else await self._run(self._stored_txid, path)
        size = sum(p.stat().st_size for p in path.parent.glob("*") if p.is_file()) \
            if path.parent.exists() else 0
        branches = await self._run(self.catalog.branches, name)
        return DatabaseInfo(record, size, branches, txid, open_db is not None)

    @staticmethod
    def _stored_txid(path: Path) -> int:
        if not path.exists():
            return 0
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            return int(next(iter(conn.execute(GET_TXID)))[0])
        except apsw.Error:
            return 0
        finally:
            conn.close()

    async def delete_database(self, principal: tokens.Principal, name: str) -> None:
        check_name(name)
        principal.require("admin", name)
        if name not in self.names:
            raise ShoalError("DATABASE_NOT_FOUND", f"database {name!r} does not exist")
        self.names.discard(name)  # no new request can open it from here on
        for tx_id, (db, tx) in list(self.transactions.items()):
            if db.name == name:
                self.transactions.pop(tx_id)
                with contextlib.suppress(Exception):
                    await db.end(tx, commit=False)
        for db in self.lifecycle.close_database(name):
            await drain(db, self.settings.statement_timeout + 1)
        self.usage.pop(name, None)
        await self._run(self.catalog.delete_database, name)
        await self._run(shutil.rmtree, self.lifecycle.root / name, True)

    # -- queries -----------------------------------------------------------------------------
    async def query(
        self, principal: tokens.Principal, name: str, statements: list[Statement],
        idem: Idempotency | None, render: Callable[[Committed], tuple[int, bytes]],
    ) -> Outcome:
        principal.require("read", name)
        async with self.lifecycle.use(name) as db:
            if idem is None:
                return await self._query(principal, db, statements, None)
            return await self._idempotent(
                (name, principal.subject, idem.key),
                lambda: self._query_once(principal, db, statements, idem, render))

    async def _query_once(self, principal: tokens.Principal, db: Database,
                          statements: list[Statement], idem: Idempotency,
                          render: Callable[[Committed], tuple[int, bytes]]) -> Outcome:
        found = await db.find_idempotent(principal.subject, idem.key)
        if found is not None:
            return self._replay(found, idem)
        record = IdempotencyRecord(principal.subject, idem.key, idem.body_hash, render)
        return await self._query(principal, db, statements, record)

    @staticmethod
    def _replay(found: tuple[bytes, int, bytes], idem: Idempotency) -> Outcome:
        body_hash, status, response = found
        if body_hash != idem.body_hash:
            raise ShoalError("IDEMPOTENCY_KEY_REUSED",
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
        try:
            counters, txid = await db.read(statements)
            self._meter(db.name, counters)
            return Outcome(counters.results, counters.rows_read, counters.rows_written,
                           txid, db.bookmark(txid))
        except NeedsWriter:
            pass
        if not principal.can_write:
            raise ShoalError("READ_ONLY", "this token has read access only; the request writes")
        done = await db.write(statements, record)
        self._meter(db.name, done.counters)
        out = Outcome(done.counters.results, done.counters.rows_read,
                      done.counters.rows_written, done.txid, done.bookmark)
        if done.response is not None:
            out.replay = done.response
        return out

    def _meter(self, name: str, counters: Counters) -> None:
        u = self.usage[name]
        u[0] += counters.rows_read
        u[1] += counters.rows_written
        u[2] += 1

    def _flush_usage(self) -> None:
        if not self.usage:
            return
        deltas = {k: (v[0], v[1], v[2]) for k, v in self.usage.items()}
        self.usage.clear()
        self.catalog.add_usage(deltas)

    async def usage_of(self, principal: tokens.Principal, name: str) -> dict[str, int]:
        check_name(name)
        principal.require("read", name)
        if name not in self.names:
            raise ShoalError("DATABASE_NOT_FOUND", f"database {name!r} does not exist")
        read, written, queries = await self._run(self.catalog.usage, name)
        pending = self.usage.get(name, [0, 0, 0])
        path = self.lifecycle.path(name).parent
        size = sum(p.stat().st_size for p in path.glob("*") if p.is_file()) \
            if path.exists() else 0
        return {"rows_read": read + pending[0], "rows_written": written + pending[1],
                "queries": queries + pending[2], "storage_bytes": size}

    async def describe(self, principal: tokens.Principal, name: str, sql: str) -> Description:
        """Prepare one statement without running it (Hrana's describe): read access."""
        principal.require("read", name)
        async with self.lifecycle.use(name) as db:
            return await db.describe(sql)

    async def find_idempotent(self, principal: tokens.Principal, name: str,
                              idem: Idempotency) -> tuple[int, bytes] | None:
        """The response stored for this key, if any; a different body is refused.

        For protocols that commit through several engine calls (Hrana), which look
        the key up once before running and record it with their one commit.
        """
        principal.require("read", name)
        async with self.lifecycle.use(name) as db:
            found = await db.find_idempotent(principal.subject, idem.key)
        return None if found is None else self._replay(found, idem).replay

    # -- interactive transactions ------------------------------------------------------------
    async def begin(self, principal: tokens.Principal, name: str, mode: str | None) -> Transaction:
        principal.require("read", name)
        write = principal.can_write if mode is None else mode == "write"
        if write and not principal.can_write:
            raise ShoalError("READ_ONLY", "this token may open read transactions only")
        db = self.lifecycle.acquire(name)
        try:
            tx = await db.begin("tx_" + secrets.token_hex(12), principal.subject, write)
        finally:
            db.active -= 1
            db.last_used = time.monotonic()
        self.transactions[tx.id] = (db, tx)
        METRICS.open_transactions.set(len(self.transactions))
        return tx

    def _tx(self, principal: tokens.Principal, name: str,
            tx_id: str) -> tuple[Database, Transaction]:
        principal.require("read", name)
        entry = self.transactions.get(tx_id)
        if entry is None or entry[0].name != name or entry[1].subject != principal.subject:
            if tx_id in self.expired:
                raise self._over(tx_id)
            raise ShoalError("TRANSACTION_NOT_FOUND", f"no open transaction {tx_id!r}")
        return entry

    def _over(self, tx_id: str) -> ShoalError:
        code = self.expired.get(tx_id, "TRANSACTION_EXPIRED")
        return ShoalError(code, f"transaction {tx_id} is over ({code.lower()})")

    async def tx_query(self, principal: tokens.Principal, name: str, tx_id: str,
                       statements: list[Statement]) -> Outcome:
        db, tx = self._tx(principal, name, tx_id)
        async with tx.lock:
            if tx_id not in self.transactions:
                raise self._over(tx_id)
            tx.busy = True
            try:
                counters = await db.tx_query(tx, statements)
            finally:
                tx.busy = False
                tx.idle_deadline = time.monotonic() + self.settings.transaction_timeout
                if tx.aborted:  # release the write lock now, not at expiry
                    self.transactions.pop(tx_id, None)
                    self.expired[tx_id] = "TRANSACTION_ABORTED"
                    await db.end(tx, commit=False)
        self._meter(name, counters)
        return Outcome(counters.results, counters.rows_read, counters.rows_written,
                       db.txid, db.bookmark(db.txid))

    async def tx_end(self, principal: tokens.Principal, name: str, tx_id: str, commit: bool,
                     idem: Idempotency | None = None,
                     render: Callable[[Committed], tuple[int, bytes]] | None = None,
                     ) -> Committed | None:
        keyed = commit and idem is not None and render is not None
        if keyed and (stored := await self._stored_commit(principal, name, idem)):
            return stored  # a retried commit: the first answer, not TRANSACTION_NOT_FOUND
        db, tx = self._tx(principal, name, tx_id)
        async with tx.lock:
            if self.transactions.pop(tx_id, None) is None:
                if keyed and (stored := await self._stored_commit(principal, name, idem)):
                    return stored  # the same commit, in flight, finished meanwhile
                raise self._over(tx_id)
            METRICS.open_transactions.set(len(self.transactions))
            record = IdempotencyRecord(principal.subject, idem.key, idem.body_hash, render) \
                if idem and render else None
            return await db.end(tx, commit, record)

    async def _stored_commit(self, principal: tokens.Principal, name: str,
                             idem: Idempotency | None) -> Committed | None:
        """The recorded answer of a commit sent with this Idempotency-Key, if any."""
        assert idem is not None
        principal.require("read", name)
        async with self.lifecycle.use(name) as db:
            found = await db.find_idempotent(principal.subject, idem.key)
        if found is None:
            return None
        return Committed(Counters(), 0, "", response=self._replay(found, idem).replay)

    async def _expire_transactions(self) -> None:
        now = time.monotonic()
        for tx_id, (db, tx) in list(self.transactions.items()):
            if tx.busy or tx.idle_deadline > now or tx.lock.locked():
                continue
            self.transactions.pop(tx_id, None)
            self.expired[tx_id] = "TRANSACTION_EXPIRED"
            await db.end(tx, commit=False)
        METRICS.open_transactions.set(len(self.transactions))
        while len(self.expired) > 10000:
            self.expired.popitem(last=False)

    # -- tokens ------------------------------------------------------------------------------
    async def create_token(
        self, principal: tokens.Principal, databases: list[str] | None, access: str,
        expires_in: float, idem: Idempotency | None,
        render: Callable[[TokenRecord, str], tuple[int, bytes]],
    ) -> tuple[int, bytes]:
        principal.require("admin")
        if databases is not None:
            for name in databases:
                check_name(name)
                principal.require("admin", name)
        elif principal.databases is not None:
            raise ShoalError("FORBIDDEN", "a scoped token cannot create a token for every database")

        def make() -> tuple[int, bytes]:
            now = time.time()
            rec = TokenRecord(tokens.new_token_id(), databases, access, principal.subject,
                              now, now + expires_in, None)
            self.catalog.add_token(rec)
            return render(rec, self.auth.sign(rec.id, databases, access, rec.expires_at))

        return await self._run(
            self.catalog.write, make, "tokens",
            (principal.subject, idem.key, idem.body_hash) if idem else None,
            self.settings.idempotency_ttl)

    async def revoke_token(self, principal: tokens.Principal, token_id: str) -> None:
        principal.require("admin")
        if not await self._run(self.catalog.revoke_token, token_id):
            raise ShoalError("TOKEN_NOT_FOUND", f"no token {token_id!r}")
        self.auth.revoke(token_id)
