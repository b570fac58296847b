"""Database files in the layouts Shoal wrote before its tables took their _cf_SHOAL_* names
(engine/tables.py), each made verbatim as that release made it."""

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

RESERVED_SCHEMA = """
CREATE TABLE IF NOT EXISTS sqlite_shoal_state(
    k INTEGER PRIMARY KEY CHECK (k = 0),
    txid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sqlite_shoal_idempotency(
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
    """Shoal's tables as releases up to 2026-12 created them (the LEGACY layout)."""
    conn.internal(LEGACY_SCHEMA)


def reserved_tables(conn: Connection) -> None:
    """Shoal's tables as main created them on 2026-12-03 (the RESERVED layout)."""
    conn.internal("PRAGMA writable_schema=ON")
    try:
        conn.internal(RESERVED_SCHEMA)
    finally:
        conn.internal("PRAGMA writable_schema=OFF")
    conn.internal("INSERT OR IGNORE INTO sqlite_shoal_state(k, txid) VALUES (0, 0)")


# What schema tools list, as their own introspection asks SQLite:
# Prisma's (schema-engine/sql-schema-describer/src/sqlite.rs: this query, then it leaves out
# an exact list of SQLite's and D1's names and every name matching ^(_cf_[A-Z]+).*$)
PRISMA_TABLES = (
    "SELECT name FROM sqlite_master WHERE (type = 'table' OR type = 'view') AND name NOT IN "
    "('sqlite_sequence', 'sqlite_stat1', 'sqlite_stat2', 'sqlite_stat3', 'sqlite_stat4', "
    "'d1_migrations') AND NOT (name GLOB '_cf_[A-Z]*') ORDER BY name ASC")
# drizzle-kit's (filterIgnoredTablesByField in drizzle-kit 0.31)
DRIZZLE_TABLES = (
    "SELECT name FROM sqlite_master WHERE (type = 'table' OR type = 'view') "
    "AND name != '__drizzle_migrations' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' "
    "AND name NOT LIKE '\\_litestream\\_%' ESCAPE '\\' AND name NOT LIKE 'libsql\\_%' "
    "ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")
