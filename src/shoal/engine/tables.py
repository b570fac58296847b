"""Shoal's two tables inside every database file, named where schema tools do not look.

A branch's txid and its idempotency records are written inside the user's own commits, so
they are atomic with them: that is why they live in the database file. They are named
``_cf_SHOAL_state`` and ``_cf_SHOAL_idempotency``: the ``_cf_`` prefix is the one schema
tools already leave out as a hosting platform's tables in a user's SQLite file (Cloudflare
D1 keeps ``_cf_KV`` there). Prisma's introspection skips ``_cf_`` + capitals, drizzle-kit
skips ``_cf_%``, Datasette hides every name starting with ``_``: ``prisma db pull`` and
``drizzle-kit push`` see only the user's tables. (SQLAlchemy and Kysely list them: they
skip ``sqlite_*`` only; no name is skipped by every tool.) The authorizer keeps users from
creating, reading or writing them (``policy.HIDDEN_PREFIXES``).

Two older layouts are read as they are, and the first write after a branch opens moves
their tables to the current names (:func:`migrate`) in a commit of its own, with its own
txid, so the log holds the move like any other commit (restoring old history brings such
files back):

- LEGACY, ``_shoal_state`` / ``_shoal_idempotency`` (releases up to 2026-12);
- RESERVED, ``sqlite_shoal_state`` / ``sqlite_shoal_idempotency`` (main for a day, 2026-12-03:
  SQLite's reserved prefix, which drizzle-kit skips but Prisma and Datasette do not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apsw

from shoal.engine.connection import TAG, Connection
from shoal.engine.policy import HIDDEN_PREFIXES

STATE = "_cf_SHOAL_state"
IDEMPOTENCY = "_cf_SHOAL_idempotency"

# The columns of every layout (the tables' shapes never changed, only their names)
_STATE_COLUMNS = """(
    k INTEGER PRIMARY KEY CHECK (k = 0),
    txid INTEGER NOT NULL
)"""
_IDEMPOTENCY_COLUMNS = """(
    subject TEXT NOT NULL,
    key TEXT NOT NULL,
    body_hash BLOB NOT NULL,
    status INTEGER NOT NULL,
    response BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (subject, key)
) WITHOUT ROWID"""


@dataclass(frozen=True, slots=True)
class Layout:
    """Shoal's statements on its tables under one pair of names (tagged: cacheable)."""

    state: str
    idempotency: str
    get_txid: str
    set_txid: str
    put_idem: str
    get_idem: str
    purge_idem: str


def _layout(state: str, idem: str) -> Layout:
    # OR REPLACE: a record past idempotency_ttl may still be in the file (purged by the
    # first write batch after open, inside a numbered commit: every commit carries a txid)
    return Layout(
        state, idem,
        f"SELECT txid FROM {state} /*{TAG}*/",
        f"UPDATE {state} SET txid = ? /*{TAG}*/",
        f"INSERT OR REPLACE INTO {idem}(subject, key, body_hash, status, response, "
        f"created_at) VALUES (?, ?, ?, ?, ?, ?) /*{TAG}*/",
        f"SELECT body_hash, status, response, created_at FROM {idem} "
        f"WHERE subject = ? AND key = ? /*{TAG}*/",
        f"DELETE FROM {idem} WHERE created_at < ? /*{TAG}*/",
    )


CURRENT = _layout(STATE, IDEMPOTENCY)

def hidden(table: str) -> bool:
    """Whether ``table`` is one of Shoal's own (any layout's): never a user's row change."""
    return table.lower().startswith(HIDDEN_PREFIXES)
RESERVED = _layout("sqlite_shoal_state", "sqlite_shoal_idempotency")
LEGACY = _layout("_shoal_state", "_shoal_idempotency")
LAYOUTS = (CURRENT, RESERVED, LEGACY)
_FIND = (f"SELECT name FROM sqlite_schema WHERE type = 'table' AND name IN "
         f"({', '.join('?' * len(LAYOUTS))}) /*{TAG}*/")
_TAKEN = f"SELECT name FROM sqlite_schema WHERE name COLLATE NOCASE IN (?, ?) /*{TAG}*/"
_RENAME = (f"UPDATE sqlite_schema SET name = ?, tbl_name = ?, sql = ? "
           f"WHERE type = 'table' AND name = ? /*{TAG}*/")


def _definitions(layout: Layout) -> tuple[tuple[str, str], tuple[str, str]]:
    """(name, CREATE TABLE statement as sqlite_schema holds it) of each table."""
    return ((layout.state, f"CREATE TABLE {layout.state}{_STATE_COLUMNS}"),
            (layout.idempotency, f"CREATE TABLE {layout.idempotency}{_IDEMPOTENCY_COLUMNS}"))


def layout_of(conn: Connection) -> Layout | None:
    """The layout the file holds; None for a file without Shoal's tables (a new one)."""
    found = {row[0] for row in conn.internal(_FIND, tuple(t.state for t in LAYOUTS))}
    return next((t for t in LAYOUTS if t.state in found), None)


def create(conn: Connection) -> None:
    """Create Shoal's tables at txid 0 (inside the caller's transaction)."""
    for _, definition in _definitions(CURRENT):
        # mutate: harmless constant (1 or 2: the statement holds one CREATE TABLE)
        conn.internal(definition.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
    conn.internal(f"INSERT OR IGNORE INTO {STATE}(k, txid) VALUES (0, 0)")


def migrate(conn: Connection, old: Layout) -> None:
    """Give an older layout's tables the current names (inside the caller's transaction).

    Their rows of ``sqlite_schema`` are rewritten in place, the same tables under new
    names, then the schema version is bumped so that every connection rereads the schema
    (what ALTER TABLE RENAME does inside). Not ALTER TABLE itself: SQLite lets neither
    ALTER nor DROP touch a ``sqlite_*`` table, and ALTER TABLE RENAME rereads the whole
    schema and fails on a user's view that names a dropped table. No copy either: the
    idempotency table may be large."""
    taken = conn.internal(_TAKEN, (STATE, IDEMPOTENCY))
    if taken:  # sqlite_schema would hold two tables of one name: a corrupt schema
        raise apsw.ConstraintError(f"cannot move {old.state}: {taken[0][0]} exists")
    version = conn.internal("PRAGMA schema_version")[0][0]
    conn.internal("PRAGMA writable_schema=ON")
    try:
        renames = zip(_definitions(old), _definitions(CURRENT),
                      # mutate: harmless constant (two tables each)
                      strict=True)
        for (name, _), (new, definition) in renames:
            conn.internal(_RENAME, (new, new, definition, name))
        conn.internal(f"PRAGMA schema_version={version + 1}")
    finally:
        conn.internal("PRAGMA writable_schema=OFF")


def read(run: Callable[[str, Any], list[Any]], first: Layout,
         statement: Callable[[Layout], str], args: Any = None) -> list[Any]:
    """Run one of Shoal's reads under ``first``'s names, or under another layout's if this
    snapshot of the file has those tables: a reader may still see a file from before its
    first write moved them, or see the move when it was told of none."""
    for layout in (first, *(t for t in LAYOUTS if t is not first)):
        try:
            return run(statement(layout), args)
        except apsw.SQLError as exc:
            if "no such table" not in str(exc):
                raise
    raise apsw.SQLError(f"no such table: {first.state} (nor any older layout's)")
