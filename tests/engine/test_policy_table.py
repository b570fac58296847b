"""The authorizer, entry by entry: every allow-list and deny-list of policy.py, walked
through a real connection set up as Shoal sets one up (engine.connection.Connection).

The lists are written out here on purpose, never imported from policy.py: a test
that iterates over the module's own sets cannot notice an entry that goes missing.
When policy.py gains or loses an entry, this file changes with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import pytest

from shoal.engine import tables
from shoal.engine.connection import Connection, Limits, Statement
from shoal.engine.policy import Guard
from shoal.errors import ShoalError
from tests.support.tables import legacy_tables, reserved_tables

LIMITS = Limits(statement_timeout=5.0, max_response_bytes=10_000_000)

# -- the lists, as literals ------------------------------------------------------------------

READABLE = [
    "application_id", "collation_list", "compile_options", "data_version",
    "defer_foreign_keys", "encoding", "foreign_key_check", "foreign_key_list", "foreign_keys",
    "freelist_count", "function_list", "index_info", "index_list", "index_xinfo",
    "integrity_check", "module_list", "page_count", "page_size", "pragma_list",
    "quick_check", "read_uncommitted", "schema_version", "table_info", "table_list",
    "table_xinfo", "user_version", "optimize",
]
# settable pragma -> (value to set, what reading it back in the same transaction gives)
SETTABLE = {
    "application_id": ("42", [[42]]),
    "user_version": ("7", [[7]]),
    "defer_foreign_keys": ("1", [[1]]),
    "foreign_keys": ("0", [[1]]),  # accepted and ignored: enforcement stays on
    "optimize": ("0x10002", None),
}
# argument pragma -> its argument (a table or index of the fixture) and rows it must give
ARGUMENT = {
    "foreign_key_check": ("c", 0),
    "foreign_key_list": ("c", 1),
    "index_info": ("t_v", 1),
    "index_list": ("t", 1),
    "index_xinfo": ("t_v", 2),
    "integrity_check": ("t", 1),
    "quick_check": ("t", 1),
    "table_info": ("t", 2),
    "table_list": ("t", 1),
    "table_xinfo": ("t", 2),
}
READ_ONLY = sorted(set(READABLE) - set(SETTABLE) - set(ARGUMENT))
# a sample of the PRAGMAs that are in no list: each changes or reveals connection state
NOT_ALLOWED = [
    "journal_mode", "synchronous", "writable_schema", "query_only", "locking_mode",
    "wal_checkpoint", "wal_autocheckpoint", "mmap_size", "cache_size", "temp_store",
    "auto_vacuum", "trusted_schema", "cell_size_check", "busy_timeout", "recursive_triggers",
    "case_sensitive_like", "secure_delete", "max_page_count", "database_list",
    "reverse_unordered_selects", "ignore_check_constraints", "automatic_index",
    "shrink_memory", "soft_heap_limit", "hard_heap_limit", "threads", "analysis_limit",
]
DENIED_FUNCTIONS = ["load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"]
RESERVED = "is reserved by Shoal"
TEMPORARY = "temporary objects are not allowed"


def reserved(table: str) -> str:
    return f"table {table} is reserved by Shoal"


def pragma(name: str) -> str:
    return f"PRAGMA {name} is not allowed"


def function(name: str) -> str:
    return f"function {name} is not allowed"


def both_cases(names: list[str]) -> list[str]:
    return [n for name in names for n in (name, name.upper())]


# -- the connection, as Shoal sets it up ------------------------------------------------------


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("policy") / "main.db")


@pytest.fixture(scope="module")
def writer(path: str) -> Iterator[Connection]:
    conn = Connection(path, reader=False)
    tables.create(conn)
    conn.internal("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.internal("CREATE INDEX t_v ON t(v)")
    conn.internal("CREATE TABLE c(id INTEGER PRIMARY KEY, t_id INTEGER REFERENCES t(id))")
    conn.internal("INSERT INTO t VALUES (1, 'one')")
    # functions SQLite's shell adds: a build that has them must still refuse them
    for name in ("ReadFile", "WriteFile", "Edit"):
        conn.raw.create_scalar_function(name, lambda *args: None)
    yield conn
    conn.close()


def _older_file(factory: pytest.TempPathFactory, make: Callable[[Connection], None],
                ) -> Iterator[Connection]:
    """A writer on a file of an older layout (tests/support/tables.py)."""
    conn = Connection(str(factory.mktemp("older") / "main.db"), reader=False)
    make(conn)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Connection]:
    yield from _older_file(tmp_path_factory, legacy_tables)


@pytest.fixture(scope="module")
def reserved_layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Connection]:
    yield from _older_file(tmp_path_factory, reserved_tables)


@pytest.fixture(scope="module")
def reader(writer: Connection, path: str) -> Iterator[Connection]:
    conn = Connection(path, reader=True)
    yield conn
    conn.close()


def run(conn: Connection, sql: str, *, tx: bool = True) -> list[list[object]]:
    """One user statement; on the writer inside a transaction that is rolled back."""
    tx = tx and not conn.reader
    if tx:
        conn.internal("BEGIN IMMEDIATE")
    try:
        return conn.run([Statement(sql)], LIMITS).results[0].rows
    finally:
        if tx:
            conn.internal("ROLLBACK")


def run_then(conn: Connection, sql: str, then: str) -> list[list[object]]:
    """sql, then ``then``, in one (rolled back) transaction: what ``then`` returned."""
    conn.internal("BEGIN IMMEDIATE")
    try:
        conn.run([Statement(sql)], LIMITS)
        return conn.run([Statement(then)], LIMITS).results[0].rows
    finally:
        conn.internal("ROLLBACK")


def refused(conn: Connection, sql: str, message: str, *, tx: bool = True) -> None:
    with pytest.raises(ShoalError) as info:
        run(conn, sql, tx=tx)
    assert info.value.code == "SQL_NOT_ALLOWED", info.value.message
    assert message in info.value.message


# -- PRAGMAs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", both_cases(READABLE))
def test_each_readable_pragma_is_readable(writer: Connection, name: str) -> None:
    run(writer, f"PRAGMA {name}")


@pytest.mark.parametrize("name", both_cases([n for n in READABLE if n != "optimize"]))
def test_each_readable_pragma_is_readable_on_a_reader(reader: Connection, name: str) -> None:
    run(reader, f"PRAGMA {name}")


def test_readable_pragmas_answer(writer: Connection) -> None:
    """Allowed means allowed, not silently ignored (an ignored PRAGMA answers nothing)."""
    assert run(writer, "PRAGMA user_version") == [[0]]
    assert run(writer, "PRAGMA FOREIGN_KEYS") == [[1]]
    assert run(writer, "PRAGMA page_size") == [[4096]]
    assert run(writer, "PRAGMA encoding") == [["UTF-8"]]


@pytest.mark.parametrize("name", both_cases(list(SETTABLE)))
def test_each_settable_pragma_is_settable(writer: Connection, name: str) -> None:
    value, readback = SETTABLE[name.lower()]
    got = run_then(writer, f"PRAGMA {name} = {value}", f"PRAGMA {name}")
    if readback is not None:
        assert got == readback


def test_pragma_optimize_with_a_mask(writer: Connection) -> None:
    run(writer, "PRAGMA optimize(0x10002)")


@pytest.mark.parametrize("name", both_cases(list(ARGUMENT)))
def test_each_argument_pragma_takes_its_argument(writer: Connection, name: str) -> None:
    arg, rows = ARGUMENT[name.lower()]
    assert len(run(writer, f"PRAGMA {name}({arg})")) == rows
    assert len(run(writer, f"PRAGMA main.{name}({arg})")) == rows


@pytest.mark.parametrize("name", both_cases(READ_ONLY))
def test_readable_pragmas_outside_the_settable_list_cannot_be_set(
        writer: Connection, name: str) -> None:
    refused(writer, f"PRAGMA {name} = 1", f"PRAGMA {name.lower()} is not allowed")


@pytest.mark.parametrize("name", both_cases(NOT_ALLOWED))
def test_other_pragmas_are_refused_read_or_set(writer: Connection, name: str) -> None:
    refused(writer, f"PRAGMA {name}", f"PRAGMA {name.lower()} is not allowed")
    refused(writer, f"PRAGMA {name} = 1", f"PRAGMA {name.lower()} is not allowed")


def test_foreign_keys_cannot_be_switched_off(writer: Connection) -> None:
    for sql in ("PRAGMA foreign_keys = OFF", "PRAGMA FOREIGN_KEYS = 0", "PRAGMA foreign_keys(0)"):
        assert run_then(writer, sql, "PRAGMA foreign_keys") == [[1]]
        with pytest.raises(ShoalError) as info:
            run_then(writer, sql, "INSERT INTO c(t_id) VALUES (99)")
        assert info.value.code == "SQLITE_CONSTRAINT"


# -- temp schema ------------------------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "PRAGMA temp.table_info(t)",  # SQLAlchemy's reflection asks this
    "PRAGMA temp.TABLE_INFO(t)",
    "PRAGMA temp.table_xinfo(t)",
    "PRAGMA temp.index_list(t)",
    "PRAGMA temp.foreign_key_list(t)",
    "PRAGMA temp.user_version",
    "PRAGMA TEMP.USER_VERSION",
    "SELECT name FROM temp.sqlite_master",
    "SELECT name FROM sqlite_temp_master",
])
def test_temp_schema_reads_are_allowed(writer: Connection, sql: str) -> None:
    assert run(writer, sql) == ([[0]] if "VERSION" in sql.upper() else [])


@pytest.mark.parametrize("sql", [
    "CREATE TEMP TABLE tt(a)",
    "CREATE TEMPORARY TABLE tt AS SELECT 1",
    "CREATE TABLE temp.tt(a)",
    "CREATE TEMP VIEW tv AS SELECT 1",
    "CREATE VIEW temp.tv AS SELECT 1",
    "CREATE TEMP TRIGGER ttr AFTER INSERT ON t BEGIN SELECT 1; END",
    "CREATE VIRTUAL TABLE temp.f USING fts5(x)",
    "PRAGMA temp.user_version = 3",  # settable in main, never in temp
    "PRAGMA temp.application_id = 3",
    "PRAGMA TEMP.USER_VERSION = 3",
])
def test_temp_objects_are_refused(writer: Connection, sql: str) -> None:
    refused(writer, sql, TEMPORARY)
    assert writer.internal("SELECT count(*) FROM sqlite_temp_master") == [(0,)]


# -- what SQLite reports, call by call: each check on its own ---------------------------------

OK, DENY, IGNORE = apsw.SQLITE_OK, apsw.SQLITE_DENY, apsw.SQLITE_IGNORE

# (op, p1, p2, dbname) as SQLite reports them (recorded from real statements), the answer,
# and a piece of the reason. Two checks overlap on temp objects: CREATE TEMP TABLE is
# first reported as an INSERT into temp's schema table (the temp-schema check), CREATE
# TEMP TRIGGER first as SQLITE_CREATE_TEMP_TRIGGER (the temp-operation check); each
# is tested here alone.
CALLS = [
    # the temp-schema check
    (apsw.SQLITE_INSERT, "sqlite_temp_master", None, "temp", DENY, TEMPORARY),
    (apsw.SQLITE_INSERT, "sqlite_master", None, "temp", DENY, TEMPORARY),
    (apsw.SQLITE_CREATE_TABLE, "x", None, "temp", DENY, TEMPORARY),
    (apsw.SQLITE_CREATE_VIEW, "v", None, "temp", DENY, TEMPORARY),
    (apsw.SQLITE_CREATE_VTABLE, "f", "fts5", "temp", DENY, TEMPORARY),
    (apsw.SQLITE_PRAGMA, "user_version", "3", "temp", DENY, TEMPORARY),
    (apsw.SQLITE_PRAGMA, "user_version", None, "temp", OK, None),
    (apsw.SQLITE_PRAGMA, "table_info", "t", "temp", OK, None),
    (apsw.SQLITE_PRAGMA, "TABLE_INFO", "t", "temp", OK, None),
    (apsw.SQLITE_PRAGMA, "journal_mode", None, "temp", DENY, pragma("journal_mode")),
    (apsw.SQLITE_READ, "sqlite_temp_master", "name", "temp", OK, None),
    # ALTER TABLE ... RENAME rewrites temp's schema table too
    (apsw.SQLITE_UPDATE, "sqlite_temp_master", "sql", "temp", OK, None),
    # the temp-operation check (dbname as SQLite gives it, and without one)
    (apsw.SQLITE_CREATE_TEMP_TABLE, "tt", None, "temp", DENY, TEMPORARY),
    (apsw.SQLITE_CREATE_TEMP_TABLE, "tt", None, None, DENY, TEMPORARY),
    (apsw.SQLITE_CREATE_TEMP_VIEW, "tv", None, "temp", DENY, TEMPORARY),
    (apsw.SQLITE_CREATE_TEMP_VIEW, "tv", None, None, DENY, TEMPORARY),
    (apsw.SQLITE_CREATE_TEMP_INDEX, "ti", "t", "temp", DENY, TEMPORARY),
    (apsw.SQLITE_CREATE_TEMP_INDEX, "ti", "t", None, DENY, TEMPORARY),
    (apsw.SQLITE_CREATE_TEMP_TRIGGER, "tr", "t", "temp", DENY, TEMPORARY),
    (apsw.SQLITE_CREATE_TEMP_TRIGGER, "tr", "t", None, DENY, TEMPORARY),
    # the same operations in main are fine
    (apsw.SQLITE_INSERT, "sqlite_master", None, "main", OK, None),
    (apsw.SQLITE_CREATE_TABLE, "x", None, "main", OK, None),
    (apsw.SQLITE_CREATE_VIEW, "v", None, "main", OK, None),
    (apsw.SQLITE_PRAGMA, "user_version", "3", "main", OK, None),
    (apsw.SQLITE_PRAGMA, "user_version", "3", None, OK, None),
    # reserved names: table first for table operations, second for index/trigger/alter
    (apsw.SQLITE_READ, "sqlite_shoal_state", "txid", "main", DENY, reserved("sqlite_shoal_state")),
    (apsw.SQLITE_READ, "sqlite_Shoal_State", "txid", "main", DENY, reserved("sqlite_Shoal_State")),
    (apsw.SQLITE_INSERT, "SQLITE_SHOAL_STATE", None, "main", DENY, reserved("SQLITE_SHOAL_STATE")),
    (apsw.SQLITE_UPDATE, "sqlite_shoal_state", "txid", "main", DENY,
     reserved("sqlite_shoal_state")),
    (apsw.SQLITE_DELETE, "sqlite_shoal_idempotency", None, "main", DENY,
     reserved("sqlite_shoal_idempotency")),
    (apsw.SQLITE_CREATE_TABLE, "_SHOAL_NEW", None, "main", DENY, reserved("_SHOAL_NEW")),
    (apsw.SQLITE_DROP_TABLE, "sqlite_shoal_state", None, "main", DENY,
     reserved("sqlite_shoal_state")),
    (apsw.SQLITE_CREATE_INDEX, "mine", "SQLITE_SHOAL_STATE", "main", DENY,
     reserved("SQLITE_SHOAL_STATE")),
    (apsw.SQLITE_DROP_INDEX, "mine", "sqlite_shoal_state", "main", DENY,
     reserved("sqlite_shoal_state")),
    (apsw.SQLITE_CREATE_TRIGGER, "mine", "sqlite_Shoal_State", "main", DENY,
     reserved("sqlite_Shoal_State")),
    (apsw.SQLITE_DROP_TRIGGER, "mine", "sqlite_shoal_state", "main", DENY,
     reserved("sqlite_shoal_state")),
    (apsw.SQLITE_ALTER_TABLE, "main", "SQLITE_SHOAL_STATE", None, DENY,
     reserved("SQLITE_SHOAL_STATE")),
    (apsw.SQLITE_READ, "_cf_SHOAL_state", "txid", "main", DENY, reserved("_cf_SHOAL_state")),
    (apsw.SQLITE_UPDATE, "_CF_shoal_State", "txid", "main", DENY, reserved("_CF_shoal_State")),
    (apsw.SQLITE_CREATE_TABLE, "_cf_SHOAL_new", None, "main", DENY, reserved("_cf_SHOAL_new")),
    (apsw.SQLITE_ALTER_TABLE, "main", "_cf_SHOAL_idempotency", None, DENY,
     reserved("_cf_SHOAL_idempotency")),
    (apsw.SQLITE_READ, "_cf_KV", "value", "main", OK, None),  # a user's own _cf_ table
    (apsw.SQLITE_CREATE_INDEX, "_shoal_like", "t", "main", OK, None),  # an index's own name
    (apsw.SQLITE_ALTER_TABLE, "main", "t", None, OK, None),
    (apsw.SQLITE_READ, "shoal_state", "txid", "main", OK, None),
    (apsw.SQLITE_READ, "x_shoal_state", "txid", "main", OK, None),
    (apsw.SQLITE_READ, "t", None, "main", OK, None),
    (apsw.SQLITE_CREATE_TABLE, None, None, "main", OK, None),
    (apsw.SQLITE_CREATE_INDEX, "i", None, "main", OK, None),
    # ANALYZE (plain, or run by PRAGMA optimize) skips reserved tables instead of failing
    (apsw.SQLITE_ANALYZE, "sqlite_shoal_state", None, "main", IGNORE, None),
    (apsw.SQLITE_ANALYZE, "SQLITE_SHOAL_STATE", None, "main", IGNORE, None),
    (apsw.SQLITE_ANALYZE, "_cf_SHOAL_idempotency", None, "main", IGNORE, None),
    (apsw.SQLITE_ANALYZE, "t", None, "main", OK, None),
    # PRAGMAs
    (apsw.SQLITE_PRAGMA, "foreign_keys", "OFF", None, IGNORE, None),
    (apsw.SQLITE_PRAGMA, "FOREIGN_KEYS", "OFF", None, IGNORE, None),
    (apsw.SQLITE_PRAGMA, "foreign_keys", None, None, OK, None),
    (apsw.SQLITE_PRAGMA, "Table_Info", "t", "main", OK, None),
    (apsw.SQLITE_PRAGMA, "page_count", "1", None, DENY, pragma("page_count")),
    (apsw.SQLITE_PRAGMA, "Journal_Mode", None, None, DENY, pragma("journal_mode")),
    (apsw.SQLITE_PRAGMA, None, None, None, DENY, pragma("")),
    (apsw.SQLITE_PRAGMA, None, "1", None, DENY, pragma("")),
    # functions
    (apsw.SQLITE_FUNCTION, None, "load_extension", None, DENY, function("load_extension")),
    (apsw.SQLITE_FUNCTION, None, "LOAD_EXTENSION", None, DENY, function("LOAD_EXTENSION")),
    (apsw.SQLITE_FUNCTION, None, "abs", None, OK, None),
    (apsw.SQLITE_FUNCTION, None, None, None, OK, None),
    # outside the database file
    (apsw.SQLITE_ATTACH, "x.db", None, None, DENY, "ATTACH and DETACH are not allowed"),
    (apsw.SQLITE_DETACH, "x", None, None, DENY, "ATTACH and DETACH are not allowed"),
    # anything else is left to SQLite
    (apsw.SQLITE_SELECT, None, None, None, OK, None),
    (apsw.SQLITE_RECURSIVE, None, None, None, OK, None),
    (apsw.SQLITE_REINDEX, "t_v", None, "main", OK, None),
]


@pytest.mark.parametrize(("op", "p1", "p2", "dbname", "answer", "reason"), CALLS)
def test_each_call_alone(op: int, p1: str | None, p2: str | None, dbname: str | None,
                         answer: int, reason: str | None) -> None:
    guard = Guard()
    assert guard(op, p1, p2, dbname, None) == answer
    if reason is None:
        assert guard.reason is None
    else:
        assert guard.reason is not None
        assert guard.reason[0] == "SQL_NOT_ALLOWED"
        assert guard.reason[1] == reason
    assert guard.control is None
    guard.internal = True  # Shoal's own SQL is never checked
    assert guard(op, p1, p2, dbname, None) == OK


@pytest.mark.parametrize(("op", "p1", "verb"), [
    (apsw.SQLITE_TRANSACTION, "BEGIN", "BEGIN"),
    (apsw.SQLITE_TRANSACTION, "COMMIT", "COMMIT"),
    (apsw.SQLITE_TRANSACTION, "rollback", "ROLLBACK"),
    (apsw.SQLITE_SAVEPOINT, "BEGIN", "SAVEPOINT"),
    (apsw.SQLITE_SAVEPOINT, "begin", "SAVEPOINT"),
    (apsw.SQLITE_SAVEPOINT, "RELEASE", "RELEASE"),
    (apsw.SQLITE_SAVEPOINT, "ROLLBACK", "ROLLBACK TO"),
    (apsw.SQLITE_SAVEPOINT, "Rollback", "ROLLBACK TO"),
    (apsw.SQLITE_SAVEPOINT, "other", "SAVEPOINT"),
    (apsw.SQLITE_SAVEPOINT, None, "SAVEPOINT"),
    (apsw.SQLITE_TRANSACTION, None, ""),
])
def test_transaction_calls_name_their_verb(op: int, p1: str | None, verb: str) -> None:
    guard = Guard()
    assert guard(op, p1, "sp", None, None) == DENY
    assert guard.control == verb
    assert guard.reason is not None
    assert guard.reason[0] == "SQL_NOT_ALLOWED"
    assert guard.reason[1] == ("transaction statements are not allowed here; every request is "
                               "already a transaction, and POST .../transactions opens an "
                               "interactive one")


# -- reserved names, through SQL --------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "CREATE TABLE {s}_new(a)",
    "CREATE TABLE {s}_new AS SELECT 1",
    "CREATE TABLE IF NOT EXISTS {s}_state(a)",
    "CREATE INDEX mine ON {s}_state(txid)",
    "CREATE TRIGGER mine AFTER UPDATE ON {s}_state BEGIN SELECT 1; END",
    "ALTER TABLE {s}_state ADD COLUMN x",
    "ALTER TABLE {s}_state RENAME TO mine",
    "DROP TABLE {s}_state",
    "DROP TABLE IF EXISTS {s}_idempotency",
    "INSERT INTO {s}_state VALUES (1, 1)",
    "REPLACE INTO {s}_state VALUES (0, 5)",
    "UPDATE {s}_state SET txid = 99",
    "DELETE FROM {s}_idempotency",
    "SELECT * FROM {s}_state",
    "SELECT count(*) FROM main.{s}_idempotency",
])
@pytest.mark.parametrize(("file", "prefix"), [
    ("writer", "_cf_SHOAL"), ("writer", "_CF_SHOAL"), ("writer", "_cf_shoal"),
    ("legacy", "_shoal"), ("legacy", "_SHOAL"), ("legacy", "_Shoal")])
def test_reserved_names_in_any_case(request: pytest.FixtureRequest, sql: str, file: str,
                                    prefix: str) -> None:
    """The authorizer refuses Shoal's names, and the LEGACY ones in a file from before
    (restored from old history until its first write moves them)."""
    conn: Connection = request.getfixturevalue(file)
    refused(conn, sql.format(s=prefix), RESERVED)
    assert conn.internal(f"SELECT txid FROM {prefix}_state") == [(0,)]


@pytest.mark.parametrize("sql", [
    "INSERT INTO {s}_state VALUES (1, 1)",
    "REPLACE INTO {s}_state VALUES (0, 5)",
    "UPDATE {s}_state SET txid = 99",
    "DELETE FROM {s}_idempotency",
    "SELECT * FROM {s}_state",
    "SELECT count(*) FROM main.{s}_idempotency",
    "DROP TABLE IF EXISTS {s}_idempotency",
])
@pytest.mark.parametrize("prefix", ["sqlite_shoal", "SQLITE_SHOAL", "Sqlite_Shoal"])
def test_reserved_layout_names_in_any_case(reserved_layout: Connection, sql: str,
                                           prefix: str) -> None:
    """A file of the RESERVED layout (sqlite_shoal_*; SQLite itself refuses schema changes
    to its sqlite_* names). DROP: the authorizer is asked before SQLite's own refusal."""
    refused(reserved_layout, sql.format(s=prefix), RESERVED)
    assert reserved_layout.internal("SELECT txid FROM sqlite_shoal_state") == [(0,)]


def test_analyze_skips_reserved_tables(writer: Connection) -> None:
    for sql in ("ANALYZE", "ANALYZE main", "ANALYZE _cf_SHOAL_state",
                "ANALYZE _CF_SHOAL_STATE", "PRAGMA optimize(0x10002)", "PRAGMA OPTIMIZE"):
        tables = run_then(writer, sql, "SELECT DISTINCT tbl FROM sqlite_stat1 ORDER BY tbl")
        assert not [t for t in tables if "shoal" in str(t[0]).lower()], sql
    # the user's own tables are analyzed
    assert ["t"] in run_then(writer, "ANALYZE", "SELECT DISTINCT tbl FROM sqlite_stat1")
    assert ["t"] in run_then(writer, "ANALYZE t", "SELECT DISTINCT tbl FROM sqlite_stat1")


# -- functions and the world outside the file ----------------------------------------------------


@pytest.mark.parametrize("name", [*both_cases(DENIED_FUNCTIONS), "ReadFile"])
def test_denied_functions(writer: Connection, name: str) -> None:
    with pytest.raises(ShoalError) as info:
        run(writer, f"SELECT {name}('x')")
    assert info.value.code == "SQL_NOT_ALLOWED"
    assert info.value.message.lower() == f"function {name.lower()} is not allowed"


def test_ordinary_functions_run(writer: Connection) -> None:
    assert run(writer, "SELECT abs(-1), upper('a'), json_object('a', 1)") == \
        [[1, "A", '{"a":1}']]


@pytest.mark.parametrize("sql", [
    "ATTACH DATABASE 'other.db' AS x",
    "ATTACH ':memory:' AS m",
    "DETACH DATABASE main",
    "SELECT load_extension('/tmp/evil.so')",
])
def test_nothing_reaches_outside_the_file(writer: Connection, sql: str) -> None:
    with pytest.raises(ShoalError) as info:
        run(writer, sql)
    assert info.value.code == "SQL_NOT_ALLOWED"


def test_vacuum_into_is_refused(writer: Connection, tmp_path: Path) -> None:
    target = tmp_path / "copy.db"
    # outside a transaction (inside one SQLite refuses any VACUUM itself) it is an ATTACH
    refused(writer, f"VACUUM INTO '{target}'", "ATTACH and DETACH are not allowed", tx=False)
    assert not target.exists()


# -- readers: read-only is query_only, not the authorizer ------------------------------------------


def test_a_reader_stays_query_only(reader: Connection) -> None:
    for sql in ("PRAGMA query_only = 0", "PRAGMA QUERY_ONLY = OFF", "PRAGMA query_only"):
        refused(reader, sql, pragma("query_only"))
    assert reader.internal("PRAGMA query_only") == [(1,)]
    assert run(reader, "SELECT v FROM t") == [["one"]]
    refused(reader, "SELECT * FROM _CF_SHOAL_STATE", RESERVED)
    refused(reader, "PRAGMA temp.user_version = 1", TEMPORARY)


def test_a_later_denial_is_not_a_transaction_statement() -> None:
    """A statement denied for a transaction verb and then for something else is refused as
    SQL_NOT_ALLOWED: only the last denial counts, as Connection reads it."""
    guard = Guard()
    assert guard(apsw.SQLITE_TRANSACTION, "BEGIN", None, None, None) == DENY
    assert guard(apsw.SQLITE_ATTACH, "x.db", None, None, None) == DENY
    assert guard.control is None
    assert guard.reason == ("SQL_NOT_ALLOWED", "ATTACH and DETACH are not allowed")
