"""A database file in the layout Shoal wrote before its tables took sqlite_* names."""

from __future__ import annotations

from shoal.engine.connection import Connection

LEGACY_SCHEMA = """
CREATE TABLE IF NOT EXISTS _shoal_state(
    k INTEGER PRIMARY KEY CHECK (k = 0),
    txid INTEGER NOT NULL
);
INSERT OR IGNORE INTO _shoal_state(k, txid) VALUES (0, 0);
CREATE TABLE IF NOT EXISTS _shoal_idempotency(
    subject TEXT NOT NULL,
    key TEXT NOT NULL,
    body_hash BLOB NOT NULL,
    status INTEGER NOT NULL,
    response BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (subject, key)
) WITHOUT ROWID;
"""


def legacy_tables(conn: Connection) -> None:
    """Shoal's tables as releases up to 2026-12 created them (verbatim)."""
    conn.internal(LEGACY_SCHEMA)
