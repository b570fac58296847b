"""What SQL may do, decided inside SQLite by the authorizer — never by reading SQL text.

Connections are pooled across requests and tokens, so anything that would
change a connection's state for the next request (temp objects, per-connection
PRAGMAs) or reach outside the database file (ATTACH, extensions, VACUUM INTO)
is refused for everyone. Read-only access is enforced by ``PRAGMA query_only``
on reader connections, not here.

Internal statements (BEGIN, SAVEPOINT, bookkeeping) run with
``guard.internal`` set. The authorizer only runs when a statement is prepared,
so apsw's statement cache keeps an internal statement only if it carries the
per-process secret tag that no user can send (``Connection.internal``).
"""

from __future__ import annotations

import apsw

from shoal.errors import Code

# Shoal's own tables (engine/tables.py), and the names they had before (compared lowercased)
HIDDEN_PREFIXES = ("_cf_shoal_", "sqlite_shoal_", "_shoal_")

# PRAGMAs anyone may read. Setting is allowed only for SETTABLE.
READABLE_PRAGMAS = frozenset({
    "application_id", "collation_list", "compile_options", "data_version",
    "defer_foreign_keys", "encoding", "foreign_key_check", "foreign_key_list", "foreign_keys",
    "freelist_count", "function_list", "index_info", "index_list", "index_xinfo",
    "integrity_check", "module_list", "page_count", "page_size", "pragma_list",
    "quick_check", "read_uncommitted", "schema_version", "table_info", "table_list", "table_xinfo",
    "user_version", "optimize",
})
# Settable ones live in the database file (transactional) or reset at commit.
# (foreign_keys is IGNORED_SETTINGS' below: setting it is accepted and does nothing.)
SETTABLE_PRAGMAS = frozenset({"application_id", "user_version", "defer_foreign_keys",
                              "optimize"})

# Per-connection settings a client may send (migration tools do) but that must not
# change a pooled connection for later requests: accepted and ignored. Foreign keys
# stay enforced; inside a transaction SQLite itself ignores this PRAGMA.
IGNORED_SETTINGS = frozenset({"foreign_keys"})

# PRAGMAs whose argument (a table or index name) SQLite reports like a value being set.
ARGUMENT_PRAGMAS = frozenset({
    "foreign_key_check", "foreign_key_list", "index_info", "index_list", "index_xinfo",
    "integrity_check", "quick_check", "table_info", "table_list", "table_xinfo",
})

_TABLE_OPS = {
    apsw.SQLITE_READ, apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE,
    apsw.SQLITE_CREATE_TABLE, apsw.SQLITE_DROP_TABLE, apsw.SQLITE_ANALYZE,
}
# The table name comes second for these (ALTER TABLE reports (schema, table)).
_INDEX_TRIGGER_OPS = {
    apsw.SQLITE_CREATE_INDEX, apsw.SQLITE_DROP_INDEX,
    apsw.SQLITE_CREATE_TRIGGER, apsw.SQLITE_DROP_TRIGGER, apsw.SQLITE_ALTER_TABLE,
}
_TEMP_OPS = {
    apsw.SQLITE_CREATE_TEMP_TABLE, apsw.SQLITE_CREATE_TEMP_INDEX,
    apsw.SQLITE_CREATE_TEMP_TRIGGER, apsw.SQLITE_CREATE_TEMP_VIEW,
}
# In schema "temp" (ALTER TABLE RENAME legitimately updates temp's schema table).
_TEMP_SCHEMA_OPS = {
    apsw.SQLITE_INSERT, apsw.SQLITE_CREATE_TABLE, apsw.SQLITE_CREATE_VIEW,
    apsw.SQLITE_CREATE_VTABLE, apsw.SQLITE_PRAGMA,
}
# What changes the schema (the audit log's "schema" kind; temp objects are refused anyway).
_SCHEMA_OPS = frozenset({
    apsw.SQLITE_CREATE_TABLE, apsw.SQLITE_DROP_TABLE, apsw.SQLITE_ALTER_TABLE,
    apsw.SQLITE_CREATE_INDEX, apsw.SQLITE_DROP_INDEX, apsw.SQLITE_CREATE_VIEW,
    apsw.SQLITE_DROP_VIEW, apsw.SQLITE_CREATE_TRIGGER, apsw.SQLITE_DROP_TRIGGER,
    apsw.SQLITE_CREATE_VTABLE, apsw.SQLITE_DROP_VTABLE,
})
_DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})


# SQLITE_SAVEPOINT's p1 -> the verb as written (BEGIN is SAVEPOINT, the default below).
_SAVEPOINT_VERBS = {"RELEASE": "RELEASE", "ROLLBACK": "ROLLBACK TO"}


class Denied(Exception):
    """Raised by the authorizer's owner to explain why SQLite said SQLITE_AUTH."""


class Guard:
    """The authorizer of one pooled connection, with the reason of its last denial (its
    ``control`` set when that denial was of a transaction statement: Connection turns it
    into TransactionControl)."""

    __slots__ = ("control", "defers", "internal", "reason", "schema")

    def __init__(self) -> None:
        self.internal = False
        self.reason: tuple[Code, str] | None = None
        # The transaction verb SQLite reported when it denied one ("BEGIN", "COMMIT",
        # "ROLLBACK", "SAVEPOINT", "RELEASE", "ROLLBACK TO"): protocols whose clients
        # send transactions as SQL (Hrana) act on it, without reading the SQL text.
        self.control: str | None = None
        # The statement being prepared changes the schema (reset by Connection per
        # statement; a cached statement is prepared again after any schema change).
        self.schema = False
        # A statement that sets defer_foreign_keys was ever prepared on the connection: it
        # may run again from apsw's statement cache (with no authorizer call), so this
        # stays set, and the group commit turns the pragma off after each job.
        self.defers = False

    def _deny(self, message: str, control: str | None = None) -> int:
        self.reason = (Code.SQL_NOT_ALLOWED, message)
        self.control = control
        return apsw.SQLITE_DENY

    def __call__(self, op: int, p1: str | None, p2: str | None,
                 dbname: str | None, trigger: str | None) -> int:
        if self.internal:
            return apsw.SQLITE_OK
        if op in _SCHEMA_OPS:
            self.schema = True
        reads_temp = op == apsw.SQLITE_PRAGMA and (
            p2 is None or (p1 or "").lower() in ARGUMENT_PRAGMAS)
        if dbname == "temp" and op in _TEMP_SCHEMA_OPS and not reads_temp:
            # CREATE TABLE temp.x is reported as a plain CREATE TABLE in schema "temp".
            # Reading PRAGMAs of the (always empty) temp schema is harmless: ORMs such as
            # SQLAlchemy ask PRAGMA temp.table_info(...) when they look for a table.
            return self._deny("temporary objects are not allowed")
        if op in _TABLE_OPS:
            if p1 and p1.lower().startswith(HIDDEN_PREFIXES):
                if op == apsw.SQLITE_ANALYZE:  # plain ANALYZE / PRAGMA optimize: skip it
                    return apsw.SQLITE_IGNORE
                return self._deny(f"table {p1} is reserved by Shoal")
            return apsw.SQLITE_OK  # mutate: harmless delete (falls through to the same SQLITE_OK)
        if op in _INDEX_TRIGGER_OPS:
            if p2 and p2.lower().startswith(HIDDEN_PREFIXES):
                return self._deny(f"table {p2} is reserved by Shoal")
            return apsw.SQLITE_OK  # mutate: harmless delete (falls through to the same SQLITE_OK)
        if op == apsw.SQLITE_PRAGMA:
            name = (p1 or "").lower()
            if name == "defer_foreign_keys" and p2 is not None:
                self.defers = True
            if p2 is not None and name in IGNORED_SETTINGS:
                return apsw.SQLITE_IGNORE
            if name in READABLE_PRAGMAS and (p2 is None or name in SETTABLE_PRAGMAS
                                             or name in ARGUMENT_PRAGMAS):
                return apsw.SQLITE_OK
            return self._deny(f"PRAGMA {name} is not allowed")
        if op == apsw.SQLITE_FUNCTION:
            if (p2 or "").lower() in _DENIED_FUNCTIONS:
                return self._deny(f"function {p2} is not allowed")
            return apsw.SQLITE_OK  # mutate: harmless delete (falls through to the same SQLITE_OK)
        if op in (apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH):
            return self._deny("ATTACH and DETACH are not allowed")
        if op in _TEMP_OPS:
            return self._deny("temporary objects are not allowed")
        if op in (apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT):
            verb = (p1 or "").upper()  # SQLITE_TRANSACTION: BEGIN, COMMIT or ROLLBACK
            if op == apsw.SQLITE_SAVEPOINT:  # p1 is BEGIN, RELEASE or ROLLBACK
                verb = _SAVEPOINT_VERBS.get(verb, "SAVEPOINT")
            return self._deny(
                "transaction statements are not allowed here; every request is already a "
                "transaction, and POST .../transactions opens an interactive one",
                control=verb,
            )
        return apsw.SQLITE_OK
