"""The catalog: one SQLite file in the data directory naming every database and token.

With an object store it is a cache: the store's catalog records (engine/registry.py)
are the truth, and the node rebuilds this file's list of databases from them at start.

Calls are short and serialised by a lock; the engine runs them on a worker thread.
Per-database idempotency records live in each database file (same transaction as
the write they guard); the ones kept here guard catalog writes (create database,
create token) the same way.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import apsw
import msgspec

from shoal.errors import Code, ShoalError, disk_errors

SCHEMA = """
PRAGMA journal_mode=WAL;
PRAGMA synchronous=FULL;
CREATE TABLE IF NOT EXISTS databases(
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens(
    id TEXT PRIMARY KEY,
    databases TEXT NOT NULL,
    access TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL,
    branch TEXT
);
CREATE TABLE IF NOT EXISTS narrowed(
    token_id TEXT NOT NULL,
    database TEXT NOT NULL,
    PRIMARY KEY (token_id, database)
);
CREATE TABLE IF NOT EXISTS usage(
    database TEXT PRIMARY KEY,
    rows_read INTEGER NOT NULL DEFAULT 0,
    rows_written INTEGER NOT NULL DEFAULT 0,
    queries INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS limits(
    database TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cors(
    database TEXT PRIMARY KEY,
    origins TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS issuers(
    database TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked_ids(
    id TEXT PRIMARY KEY,
    revoked_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quota_windows(
    database TEXT PRIMARY KEY,
    start REAL NOT NULL,
    rows_read INTEGER NOT NULL,
    rows_written INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency(
    scope TEXT NOT NULL,
    subject TEXT NOT NULL,
    key TEXT NOT NULL,
    body_hash BLOB NOT NULL,
    status INTEGER NOT NULL,
    response BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (scope, subject, key)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class DatabaseRecord:
    name: str
    created_at: float


@dataclass(frozen=True)
class TokenRecord:
    """A token as made: ``databases`` holds names and patterns (``tenant-*``; None for
    every database), ``branch`` the one branch it is bound to (None: any)."""

    id: str
    databases: list[str] | None
    access: str
    created_by: str
    created_at: float
    expires_at: float
    revoked_at: float | None
    branch: str | None = None


@dataclass(frozen=True)
class TokenInfo:
    """A token as ``GET /v1/tokens`` shows it (never the token itself): its record (the
    databases it was given), the ones it no longer reaches (a database of that name was
    deleted or made anew: ``_narrow_tokens``), and whether it is revoked (``revoked_at``
    in the record when known)."""

    record: TokenRecord
    narrowed: tuple[str, ...] = ()
    revoked: bool = False

    @property
    def reach(self) -> list[str] | None:
        """The databases it reaches now (None: every one)."""
        dbs = self.record.databases
        return None if dbs is None else [d for d in dbs if d not in self.narrowed]


TOKEN_SCAN = 1000  # token records read for one page at most (each is a GET with a store)


def token_page(found: Iterator[TokenInfo], accept: Callable[[TokenInfo], bool], limit: int,
               scan: int = TOKEN_SCAN) -> tuple[list[TokenInfo], str | None]:
    """(up to ``limit`` accepted tokens, in id order; the cursor to go on from, None at
    the end). At most ``max(scan, limit)`` are read: a page may hold fewer than ``limit``
    (even none) and still have a cursor."""
    out: list[TokenInfo] = []
    last: str | None = None
    for read, info in enumerate(found):
        if len(out) >= limit or read >= max(scan, limit):
            return out, last  # there is more
        last = info.record.id
        if accept(info):
            out.append(info)
    return out, None


class Catalog:
    def __init__(self, path: str):
        self._db = apsw.Connection(path)
        self._db.set_busy_timeout(5000)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA foreign_keys=ON")
        with disk_errors():
            list(self._db.execute(SCHEMA))
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(tokens)")}
            if "branch" not in columns:  # a catalog of before branch-bound tokens
                self._db.execute("ALTER TABLE tokens ADD COLUMN branch TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One catalog transaction, serialised; a full disk fails it with DISK_FULL."""
        with disk_errors(), self._lock, self._db:
            yield

    def _rows(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args))

    # -- databases ----------------------------------------------------------------------------
    def names(self) -> set[str]:
        return {r[0] for r in self._rows("SELECT name FROM databases")}

    def create_database(self, name: str) -> DatabaseRecord:
        now = time.time()
        try:
            self._db.execute("INSERT INTO databases(name, created_at) VALUES (?, ?)", (name, now))
        except apsw.ConstraintError:
            raise ShoalError(Code.DATABASE_EXISTS, f"database {name!r} already exists") from None
        return DatabaseRecord(name, now)

    def adopt_database(self, name: str, created_at: float) -> None:
        """Record a database that exists in the object store (a cache rebuilt at start)."""
        with self._writing():
            self._db.execute("INSERT OR IGNORE INTO databases(name, created_at) VALUES (?, ?)",
                             (name, created_at))

    def delete_database(self, name: str) -> bool:
        with self._writing():
            self._db.execute("DELETE FROM usage WHERE database = ? OR database LIKE ?",
                             (name, name + "/%"))
            self._db.execute("DELETE FROM idempotency WHERE scope = ?", (name,))
            self._db.execute("DELETE FROM limits WHERE database = ?", (name,))
            self._db.execute("DELETE FROM cors WHERE database = ?", (name,))
            self._db.execute("DELETE FROM issuers WHERE database = ?", (name,))
            self._db.execute("DELETE FROM quota_windows WHERE database = ?", (name,))
            self._db.execute("DELETE FROM databases WHERE name = ?", (name,))
            deleted = bool(self._db.changes())
        return deleted

    def get_database(self, name: str) -> DatabaseRecord | None:
        rows = self._rows("SELECT name, created_at FROM databases WHERE name = ?", (name,))
        return DatabaseRecord(*rows[0]) if rows else None

    def list_databases(self, limit: int, after: str | None,
                       allowed: Callable[[str], bool] | None) -> list[DatabaseRecord]:
        """Up to ``limit`` databases after ``after`` in name order (those ``allowed``)."""
        rows = self._rows(
            "SELECT name, created_at FROM databases WHERE name > ? ORDER BY name",
            (after or "",))
        out = []
        for row in rows:
            if allowed is None or allowed(row[0]):
                out.append(DatabaseRecord(*row))
                if len(out) >= limit:
                    break
        return out

    # -- tokens -------------------------------------------------------------------------------
    def add_token(self, rec: TokenRecord) -> None:
        dbs = "*" if rec.databases is None else msgspec.json.encode(rec.databases).decode()
        self._db.execute(
            "INSERT INTO tokens(id, databases, access, created_by, created_at, expires_at,"
            " branch) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (rec.id, dbs, rec.access, rec.created_by, rec.created_at, rec.expires_at,
             rec.branch))

    def revoke_token(self, token_id: str) -> bool:
        with self._writing():
            self._db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), token_id))
            if self._db.changes():
                return True
            return bool(list(self._db.execute("SELECT 1 FROM tokens WHERE id = ?", (token_id,))))

    def revoked_ids(self) -> set[str]:
        return {r[0] for r in self._rows("SELECT id FROM tokens WHERE revoked_at IS NOT NULL")}

    def token_scope(self, token_id: str) -> tuple[bool, list[str] | None]:
        """(known, its databases: None for every database) of a token made on this node."""
        rows = self._rows("SELECT databases FROM tokens WHERE id = ?", (token_id,))
        if not rows:
            return False, None
        return True, None if rows[0][0] == "*" else list(msgspec.json.decode(rows[0][0]))

    def tokens_naming(self, database: str, now: float) -> list[str]:
        """Unexpired scoped tokens (made on this node) that name ``database``."""
        rows = self._rows("SELECT id, databases FROM tokens WHERE databases != '*' AND "
                          "expires_at > ? AND revoked_at IS NULL", (now,))
        return [tid for tid, dbs in rows if database in msgspec.json.decode(dbs)]

    def list_tokens(self, after: str | None, accept: Callable[[TokenInfo], bool],
                    limit: int) -> tuple[list[TokenInfo], str | None]:
        """A page of the tokens made on this node (the truth on a node without a store),
        ids after ``after`` in order: see :func:`token_page`."""
        narrowed = self.narrowed()
        rows = self._rows(
            "SELECT id, databases, access, created_by, created_at, expires_at, revoked_at,"
            " branch FROM tokens WHERE id > ? ORDER BY id", (after or "",))

        def infos() -> Iterator[TokenInfo]:
            for tid, dbs, access, by, created, expires, revoked_at, branch in rows:
                scope = None if dbs == "*" else [str(d) for d in msgspec.json.decode(dbs)]
                rec = TokenRecord(tid, scope, access, by, created, expires, revoked_at, branch)
                yield TokenInfo(rec, tuple(sorted(narrowed.get(tid, ()))),
                                revoked_at is not None)

        return token_page(infos(), accept, limit, scan=len(rows))

    def narrow(self, token_id: str, database: str) -> None:
        """Record that ``token_id`` no longer reaches ``database`` (it was deleted)."""
        with self._writing():
            self._db.execute("INSERT OR IGNORE INTO narrowed(token_id, database) VALUES (?, ?)",
                             (token_id, database))

    def narrowed(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for tid, db in self._rows("SELECT token_id, database FROM narrowed"):
            out.setdefault(tid, set()).add(db)
        return out

    # -- usage --------------------------------------------------------------------------------
    def add_usage(self, deltas: dict[str, tuple[int, int, int]]) -> None:
        """Add counters; keys are a database name (its main branch) or 'database/branch'."""
        with self._writing():
            for name, (read, written, queries) in deltas.items():
                self._db.execute(
                    "INSERT INTO usage(database, rows_read, rows_written, queries)"
                    " SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM databases WHERE name = ?)"
                    " ON CONFLICT(database) DO UPDATE SET"
                    " rows_read = rows_read + excluded.rows_read,"
                    " rows_written = rows_written + excluded.rows_written,"
                    " queries = queries + excluded.queries",
                    (name, read, written, queries, name.split("/")[0]))

    def delete_usage(self, key: str) -> None:
        with self._writing():
            self._db.execute("DELETE FROM usage WHERE database = ?", (key,))

    def all_usage(self) -> dict[str, tuple[int, int, int]]:
        return {r[0]: (r[1], r[2], r[3]) for r in
                self._rows("SELECT database, rows_read, rows_written, queries FROM usage")}

    def usage(self, database: str) -> tuple[int, int, int]:
        rows = self._rows(
            "SELECT rows_read, rows_written, queries FROM usage WHERE database = ?", (database,))
        return rows[0] if rows else (0, 0, 0)

    # -- limits (engine/quota.py) -------------------------------------------------------------
    def set_limits(self, name: str, body: str | None) -> None:
        """A database's own limits as JSON (None: it has none; the store's record is the
        truth on a node with a store, this a cache of it)."""
        with self._writing():
            if body is None:
                self._db.execute("DELETE FROM limits WHERE database = ?", (name,))
            else:
                self._db.execute("INSERT OR REPLACE INTO limits(database, body) VALUES (?, ?)",
                                 (name, body))

    def limits(self) -> dict[str, str]:
        return dict(self._rows("SELECT database, body FROM limits"))

    # -- allowed origins (shoal/origins.py) ------------------------------------------------------
    def set_cors(self, name: str, origins: tuple[str, ...]) -> None:
        """A database's own allowed origins (none: the row goes; a cache of the store's
        record on a node with a store)."""
        with self._writing():
            if not origins:
                self._db.execute("DELETE FROM cors WHERE database = ?", (name,))
            else:
                self._db.execute("INSERT OR REPLACE INTO cors(database, origins) VALUES (?, ?)",
                                 (name, "\n".join(origins)))

    def cors(self) -> dict[str, tuple[str, ...]]:
        return {name: tuple(text.split("\n")) for name, text in
                self._rows("SELECT database, origins FROM cors")}

    # -- identity providers (shoal/identity) ------------------------------------------------------
    def set_issuers(self, name: str, issuers: tuple[dict[str, Any], ...]) -> None:
        """A database's own trusted issuers, as declared (none: the row goes; a cache of the
        store's record on a node with a store)."""
        with self._writing():
            if not issuers:
                self._db.execute("DELETE FROM issuers WHERE database = ?", (name,))
            else:
                self._db.execute("INSERT OR REPLACE INTO issuers(database, body) VALUES (?, ?)",
                                 (name, json.dumps(list(issuers))))

    def issuers(self) -> dict[str, tuple[dict[str, Any], ...]]:
        return {name: tuple(json.loads(body)) for name, body in
                self._rows("SELECT database, body FROM issuers")}

    def revoke_id(self, rid: str) -> None:
        """A revocation that is no token of this node's (an external token's, an issuer's):
        on a node without a store, where else it would be kept."""
        with self._writing():
            self._db.execute("INSERT OR IGNORE INTO revoked_ids(id, revoked_at) VALUES (?, ?)",
                             (rid, time.time()))

    def other_revoked_ids(self) -> set[str]:
        return {r[0] for r in self._rows("SELECT id FROM revoked_ids")}

    def save_windows(self, windows: dict[str, tuple[float, int, int]]) -> None:
        """The current period's counts of the databases with row limits."""
        with self._writing():
            for name, (start, read, written) in windows.items():
                self._db.execute(
                    "INSERT OR REPLACE INTO quota_windows(database, start, rows_read, "
                    "rows_written) SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM databases "
                    "WHERE name = ?)", (name, start, read, written, name))

    def windows(self) -> dict[str, tuple[float, int, int]]:
        return {r[0]: (r[1], r[2], r[3]) for r in
                self._rows("SELECT database, start, rows_read, rows_written FROM quota_windows")}

    # -- catalog writes, optionally idempotent ----------------------------------------------------
    def write(self, fn: Callable[[], tuple[int, bytes]], scope: str,
              idempotency: tuple[str, str, bytes] | None, ttl: float) -> tuple[int, bytes]:
        """Run fn in one catalog transaction; with (subject, key, body_hash) record its answer.

        Returns fn's (status, body), or the recorded one for a repeated key.
        """
        with self._writing():
            if idempotency:
                subject, key, body_hash = idempotency
                rows = list(self._db.execute(
                    "SELECT body_hash, status, response FROM idempotency WHERE scope = ? AND"
                    " subject = ? AND key = ? AND created_at >= ?",
                    (scope, subject, key, time.time() - ttl)))
                if rows:
                    if rows[0][0] != body_hash:
                        raise ShoalError(Code.IDEMPOTENCY_KEY_REUSED,
                                         "this Idempotency-Key was used with a different body")
                    return int(rows[0][1]), bytes(rows[0][2])
            status, body = fn()
            if idempotency:
                self._db.execute(
                    "INSERT OR REPLACE INTO idempotency(scope, subject, key, body_hash, status,"
                    " response, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (scope, subject, key, body_hash, status, body, time.time()))
        return status, body
