"""Shoal's two tables inside every database file, named where schema tools do not look.

A branch's txid and its idempotency records are written inside the user's own commits, so
they are atomic with them: that is why they live in the database file. They are named in
SQLite's reserved namespace, ``sqlite_shoal_state`` and ``sqlite_shoal_idempotency``.
SQLite refuses users every ``sqlite_*`` name (create, rename to, drop), and most schema
tools skip the prefix, since ``sqlite_sequence`` and ``sqlite_stat1`` live in ordinary
files: drizzle-kit and SQLAlchemy list none of them, so ``drizzle-kit push`` sees only
the user's tables. (Prisma's introspection skips an exact list of names instead, so
``prisma db pull`` still shows these two: issue 18's note says what would hide them.)
Creating a table with such a name takes ``PRAGMA writable_schema`` for the two CREATE
statements (:func:`create`); reading and writing them needs nothing.
The authorizer keeps users from reading or writing them (``policy.HIDDEN_PREFIXES``).

Files written before held ``_shoal_state`` and ``_shoal_idempotency`` (the LEGACY layout),
and restoring old history brings such files back. They are read as they are; the first
write after a branch opens moves them to the new names (:func:`migrate`) in a commit of its
own, with its own txid, so the log holds the move like any other commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apsw

from shoal.engine.connection import TAG, Connection

STATE = "sqlite_shoal_state"
IDEMPOTENCY = "sqlite_shoal_idempotency"
LEGACY_STATE = "_shoal_state"
LEGACY_IDEMPOTENCY = "_shoal_idempotency"

_CREATE = """
CREATE TABLE IF NOT EXISTS {state}(
    k INTEGER PRIMARY KEY CHECK (k = 0),
    txid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS {idem}(
    subject TEXT NOT NULL,
    key TEXT NOT NULL,
    body_hash BLOB NOT NULL,
    status INTEGER NOT NULL,
    response BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (subject, key)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Layout:
    """Shoal's statements on its tables under one pair of names (tagged: cacheable)."""

    state: str
    get_txid: str
    set_txid: str
    put_idem: str
    get_idem: str
    purge_idem: str


def _layout(state: str, idem: str) -> Layout:
    # OR REPLACE: a record past idempotency_ttl may still be in the file (purged by the
    # first write batch after open, inside a numbered commit: every commit carries a txid)
    return Layout(
        state,
        f"SELECT txid FROM {state} /*{TAG}*/",
        f"UPDATE {state} SET txid = ? /*{TAG}*/",
        f"INSERT OR REPLACE INTO {idem}(subject, key, body_hash, status, response, "
        f"created_at) VALUES (?, ?, ?, ?, ?, ?) /*{TAG}*/",
        f"SELECT body_hash, status, response, created_at FROM {idem} "
        f"WHERE subject = ? AND key = ? /*{TAG}*/",
        f"DELETE FROM {idem} WHERE created_at < ? /*{TAG}*/",
    )


CURRENT = _layout(STATE, IDEMPOTENCY)
LEGACY = _layout(LEGACY_STATE, LEGACY_IDEMPOTENCY)
_FIND = f"SELECT name FROM sqlite_schema WHERE type = 'table' AND name IN (?, ?) /*{TAG}*/"


def layout_of(conn: Connection) -> Layout | None:
    """The layout the file holds; None for a file without Shoal's tables (a new one)."""
    found = {row[0] for row in conn.internal(_FIND, (STATE, LEGACY_STATE))}
    if STATE in found:
        return CURRENT
    return LEGACY if LEGACY_STATE in found else None


def create(conn: Connection) -> None:
    """Create Shoal's tables at txid 0 (inside the caller's transaction)."""
    conn.internal("PRAGMA writable_schema=ON")  # sqlite_* names are SQLite's otherwise
    try:
        conn.internal(_CREATE.format(state=STATE, idem=IDEMPOTENCY))
    finally:
        conn.internal("PRAGMA writable_schema=OFF")
    conn.internal(f"INSERT OR IGNORE INTO {STATE}(k, txid) VALUES (0, 0)")


def migrate(conn: Connection) -> None:
    """Move a LEGACY file's tables to the new names (inside the caller's transaction)."""
    create(conn)
    conn.internal(f"INSERT OR REPLACE INTO {STATE} SELECT k, txid FROM {LEGACY_STATE}")
    conn.internal(f"INSERT INTO {IDEMPOTENCY} SELECT * FROM {LEGACY_IDEMPOTENCY}")
    conn.internal(f"DROP TABLE {LEGACY_STATE}")
    conn.internal(f"DROP TABLE {LEGACY_IDEMPOTENCY}")


def read(run: Callable[[str, Any], list[Any]], first: Layout,
         statement: Callable[[Layout], str], args: Any = None) -> list[Any]:
    """Run one of Shoal's reads under ``first``'s names, or under the other layout's if
    this snapshot of the file has the other tables: a reader may still see a file from
    before its first write moved them, or see the move when it was told of none."""
    try:
        return run(statement(first), args)
    except apsw.SQLError as exc:
        if "no such table" not in str(exc):
            raise
    other = LEGACY if first is CURRENT else CURRENT
    return run(statement(other), args)
