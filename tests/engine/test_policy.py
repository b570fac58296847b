"""The authorizer: what user SQL may do, decided inside SQLite on a real connection."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from shoal.engine import tables
from shoal.engine.connection import Connection, Limits, NeedsWriter, Statement
from shoal.engine.policy import Guard
from shoal.errors import ShoalError

LIMITS = Limits(statement_timeout=5.0, max_response_bytes=10_000_000)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Connection]:
    conn = Connection(str(tmp_path / "main.db"), reader=False)
    tables.create(conn)
    conn.internal("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.internal("INSERT INTO t VALUES (1, 'one')")
    yield conn
    conn.close()


@pytest.fixture
def reader(writer: Connection, tmp_path: Path) -> Iterator[Connection]:
    conn = Connection(str(tmp_path / "main.db"), reader=True)
    yield conn
    conn.close()


def run(conn: Connection, sql: str) -> list[list[object]]:
    """One user statement as the writer runs it: inside a transaction and a savepoint."""
    tx = not conn.reader
    if tx:
        conn.internal("BEGIN IMMEDIATE")
    try:
        return conn.run([Statement(sql)], LIMITS).results[0].rows
    finally:
        if tx:
            conn.internal("COMMIT")


def refused(conn: Connection, sql: str, code: str = "SQL_NOT_ALLOWED") -> ShoalError:
    with pytest.raises(ShoalError) as info:
        run(conn, sql)
    assert info.value.code == code, info.value.message
    assert info.value.extra.get("statement") == 0
    return info.value


# -- allowed ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM t",
        "INSERT INTO t(v) VALUES ('two')",
        "UPDATE t SET v = 'uno' WHERE id = 1",
        "DELETE FROM t WHERE id = 99",
        "CREATE TABLE u(a, b)",
        "CREATE INDEX t_v ON t(v)",
        "CREATE VIEW tv AS SELECT v FROM t",
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET v = upper(new.v) "
        "WHERE id = new.id; END",
        "CREATE VIRTUAL TABLE ft USING fts5(body)",
        "ALTER TABLE t ADD COLUMN extra INTEGER",
        "ALTER TABLE t RENAME COLUMN v TO value",
        "ALTER TABLE t RENAME TO t2",
        "DROP TABLE IF EXISTS absent",
        "PRAGMA index_list(t)",
        "PRAGMA foreign_key_check(t)",
        "PRAGMA integrity_check(t)",
        "PRAGMA user_version = 7",
        "PRAGMA application_id = 42",
        "PRAGMA foreign_keys",
        "PRAGMA table_info(t)",
        "PRAGMA integrity_check",
        "PRAGMA quick_check",
        "PRAGMA page_count",
        "SELECT * FROM pragma_table_info('t')",
        "SELECT json_object('a', 1), sqlite_version(), abs(-1)",
    ],
)
def test_allowed_on_the_writer(writer: Connection, sql: str) -> None:
    run(writer, sql)


def test_integrity_check_answers_ok(writer: Connection, reader: Connection) -> None:
    assert run(writer, "PRAGMA integrity_check") == [["ok"]]
    assert run(reader, "PRAGMA integrity_check") == [["ok"]]


def test_user_version_is_set(writer: Connection) -> None:
    run(writer, "PRAGMA user_version = 12")
    assert run(writer, "PRAGMA user_version") == [[12]]


# -- refused for everyone --------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "ATTACH DATABASE '/tmp/shoal-attack-unit.db' AS x",
        "ATTACH ':memory:' AS m",
        "DETACH DATABASE main",
        "PRAGMA journal_mode",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA main.journal_mode = OFF",
        "PRAGMA synchronous = OFF",
        "PRAGMA synchronous",
        "PRAGMA writable_schema = ON",
        "PRAGMA query_only = 0",
        "PRAGMA locking_mode = EXCLUSIVE",
        "PRAGMA wal_checkpoint(TRUNCATE)",
        "PRAGMA wal_autocheckpoint = 1",
        "PRAGMA mmap_size = 1000000",
        "PRAGMA cache_size = 1",
        "PRAGMA temp_store = MEMORY",
        "PRAGMA page_size = 512",
        "PRAGMA auto_vacuum = FULL",
        "PRAGMA trusted_schema = ON",
        "PRAGMA cell_size_check = OFF",
        "SELECT * FROM pragma_journal_mode",
        "SELECT load_extension('/tmp/evil.so')",
        "SELECT fts3_tokenizer('simple')",
        "CREATE TEMP TABLE tt(a)",
        "CREATE TEMPORARY VIEW tv AS SELECT 1",
        "CREATE TEMP TRIGGER ttr AFTER INSERT ON t BEGIN SELECT 1; END",
        "CREATE TABLE temp.tt(a)",
        "CREATE VIEW temp.tv AS SELECT 1",
        "CREATE VIRTUAL TABLE temp.f USING fts5(x)",
        "PRAGMA temp.user_version = 3",
        "BEGIN",
        "BEGIN IMMEDIATE",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT sp",
        "RELEASE sp",
        "SELECT * FROM _cf_SHOAL_state",
        "SELECT txid FROM main._cf_SHOAL_state",
        "SELECT * FROM _CF_SHOAL_STATE",
        "SELECT * FROM _cf_SHOAL_idempotency",
        "UPDATE _cf_SHOAL_state SET txid = 99",
        "DELETE FROM _cf_SHOAL_idempotency",
        "INSERT INTO _cf_SHOAL_state VALUES (1, 1)",
        "DROP TABLE _cf_SHOAL_state",
        "CREATE TABLE _shoal_new(a)",
    ],
)
def test_refused_on_the_writer(writer: Connection, sql: str) -> None:
    refused(writer, sql)
    # the connection is still usable and unchanged
    assert run(writer, "SELECT v FROM t WHERE id = 1") == [["one"]]


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE _cf_SHOAL_state RENAME TO mine",
        "ALTER TABLE _cf_SHOAL_idempotency ADD COLUMN x",
        "ALTER TABLE _cf_SHOAL_state RENAME COLUMN txid TO x",
        "CREATE INDEX mine ON _cf_SHOAL_state(txid)",
        "CREATE TRIGGER mine AFTER UPDATE ON _cf_SHOAL_state BEGIN SELECT 1; END",
        "CREATE TABLE _cf_SHOAL_new(a)",
        "CREATE TABLE _CF_shoal_new AS SELECT 1",
    ],
)
def test_schema_changes_to_shoals_tables_are_refused(writer: Connection, sql: str) -> None:
    refused(writer, sql)
    assert writer.internal("SELECT txid FROM _cf_SHOAL_state") == [(0,)]


def test_a_users_table_cannot_take_the_name_of_shoals(writer: Connection) -> None:
    """The authorizer is not told the new name of ALTER TABLE RENAME; SQLite refuses a name
    that exists, and Shoal's tables exist before any user statement writes (a file of an
    older layout moves them at its first write). A user's table renamed to another
    _cf_SHOAL_ name stays whole but only Shoal may read it: docs/api.md says so."""
    err = refused(writer, "ALTER TABLE t RENAME TO _cf_SHOAL_state", "SQLITE_ERROR")
    assert "already another table" in err.message
    assert writer.internal("SELECT txid FROM _cf_SHOAL_state") == [(0,)]


def test_refusals_leave_the_connection_as_it_was(writer: Connection) -> None:
    for sql in ("CREATE TABLE temp.t(shadow)", "PRAGMA journal_mode = DELETE",
                "ALTER TABLE _cf_SHOAL_state RENAME TO mine", "UPDATE _cf_SHOAL_state "
                "SET txid = 5"):
        with pytest.raises(ShoalError):
            run(writer, sql)
    assert writer.internal("PRAGMA journal_mode") == [("wal",)]
    assert writer.internal("SELECT name FROM sqlite_temp_master") == []
    assert writer.internal("SELECT txid FROM _cf_SHOAL_state") == [(0,)]
    # `t` still names the real table, not a temporary shadow of it
    run(writer, "INSERT INTO t(v) VALUES ('kept')")
    assert writer.internal("SELECT count(*) FROM main.t") == [(2,)]


def test_a_trigger_cannot_reach_reserved_tables(writer: Connection) -> None:
    run(writer, "CREATE TRIGGER sneaky AFTER INSERT ON t BEGIN "
                "UPDATE _cf_SHOAL_state SET txid = 1000; END")
    refused(writer, "INSERT INTO t(v) VALUES ('x')")
    assert writer.internal("SELECT txid FROM _cf_SHOAL_state") == [(0,)]


def test_a_view_cannot_reach_reserved_tables(writer: Connection) -> None:
    run(writer, "CREATE VIEW peek AS SELECT * FROM _cf_SHOAL_idempotency")
    refused(writer, "SELECT * FROM peek")


def test_internal_statements_bypass_the_authorizer(writer: Connection) -> None:
    assert writer.internal("SELECT txid FROM _cf_SHOAL_state") == [(0,)]
    assert writer.guard.internal is False  # reset afterwards


# -- readers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t(v) VALUES ('x')",
        "UPDATE t SET v = 'y'",
        "DELETE FROM t",
        "CREATE TABLE r(a)",
        "DROP TABLE t",
        "PRAGMA user_version = 5",
        "VACUUM",
        "VACUUM INTO '/tmp/shoal-vacuum-into.db'",
        "VACUUM INTO 'copy.db'",
        "PRAGMA optimize(0x10002)",
        "INSERT INTO t(v) VALUES ('x')",
    ],
)
def test_writes_on_a_reader_move_to_the_writer(reader: Connection, sql: str) -> None:
    with pytest.raises(NeedsWriter):
        run(reader, sql)


def test_reader_reads_and_keeps_query_only(reader: Connection) -> None:
    assert run(reader, "SELECT v FROM t") == [["one"]]
    refused(reader, "PRAGMA query_only = 0")
    assert reader.internal("PRAGMA query_only") == [(1,)]
    with pytest.raises(apsw.ReadOnlyError):  # even past the authorizer, SQLite refuses
        reader.internal("INSERT INTO t(v) VALUES ('direct')")


# -- the Guard itself, on a bare apsw connection ----------------------------------------------


def test_guard_records_why_it_denied() -> None:
    conn = apsw.Connection(":memory:")
    guard = Guard()
    conn.authorizer = guard
    try:
        with pytest.raises(apsw.AuthError):
            conn.execute("ATTACH ':memory:' AS other")
        assert guard.reason is not None
        assert guard.reason[0] == "SQL_NOT_ALLOWED"
        assert "ATTACH" in guard.reason[1]
        guard.internal = True
        conn.execute("ATTACH ':memory:' AS other")  # Shoal's own SQL is not checked
        guard.internal = False
        conn.execute("CREATE TABLE t(a)")
        assert list(conn.execute("SELECT count(*) FROM t")) == [(0,)]
    finally:
        conn.close()


def test_a_denial_does_not_leak_into_the_next_error(writer: Connection) -> None:
    refused(writer, "SELECT load_extension('x')")
    err = refused(writer, "SELEC 1", code="SQLITE_ERROR")
    assert "syntax error" in err.message


def test_foreign_keys_setting_is_ignored_and_never_sticks_to_a_pooled_reader(
        tmp_path: Path) -> None:
    """PRAGMA foreign_keys=OFF is read-only to SQLite, so it runs on a reader: it must not
    switch enforcement off for the next request on that pooled connection."""
    path = str(tmp_path / "fk.db")
    writer = Connection(path, reader=False)
    writer.internal("CREATE TABLE p(id INTEGER PRIMARY KEY)")
    reader = Connection(path, reader=True)
    limits = Limits(5.0, 1_000_000)
    reader.run([Statement("PRAGMA foreign_keys=OFF")], limits)
    out = reader.run([Statement("PRAGMA foreign_keys")], limits)
    assert out.results[0].rows == [[1]]
    reader.close()
    writer.close()


# -- what the guard notes while SQLite prepares a statement --------------------------------------


@pytest.mark.parametrize("sql", [
    "CREATE TABLE s(a)", "DROP TABLE plain", "ALTER TABLE t ADD COLUMN w",
    "CREATE INDEX i ON t(v)", "DROP INDEX IF EXISTS tv", "CREATE VIEW vw AS SELECT 1",
    "DROP VIEW IF EXISTS vv", "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END",
    "DROP TRIGGER IF EXISTS tt",
    # fts5vocab keeps no tables of its own: SQLite reports only the virtual table's op
    "CREATE VIRTUAL TABLE g USING fts5vocab(f, 'row')", "DROP TABLE vocab",
])
def test_the_guard_notes_a_statement_that_changes_the_schema(writer: Connection, sql: str) -> None:
    """Counters.schema (the audit log's `schema` kind) comes from here."""
    writer.internal("CREATE TABLE IF NOT EXISTS plain(a)")  # nothing on it: one op to drop
    writer.internal("CREATE VIRTUAL TABLE IF NOT EXISTS f USING fts5(x)")
    writer.internal("CREATE VIRTUAL TABLE IF NOT EXISTS vocab USING fts5vocab(f, 'row')")
    writer.internal("CREATE INDEX IF NOT EXISTS tv ON t(v)")
    writer.internal("CREATE VIEW IF NOT EXISTS vv AS SELECT 1")
    writer.internal("CREATE TRIGGER IF NOT EXISTS tt AFTER DELETE ON t BEGIN SELECT 1; END")
    with contextlib.suppress(ShoalError):  # refused or not, the guard saw what it would change
        run(writer, sql)
    assert writer.guard.schema


@pytest.mark.parametrize("sql", ["SELECT * FROM t", "INSERT INTO t(v) VALUES ('x')",
                                 "UPDATE t SET v = 'y'", "PRAGMA user_version = 3"])
def test_the_guard_notes_no_schema_change_for_data(writer: Connection, sql: str) -> None:
    run(writer, sql)
    assert not writer.guard.schema


def test_a_new_guard_has_seen_nothing() -> None:
    guard = Guard()
    assert (guard.schema, guard.defers, guard.internal, guard.reason) == (False, False, False,
                                                                          None)


@pytest.mark.parametrize(("sql", "defers"), [
    ("PRAGMA defer_foreign_keys = ON", True), ("PRAGMA main.defer_foreign_keys=1", True),
    ("PRAGMA defer_foreign_keys", False), ("PRAGMA foreign_keys", False),
    ("PRAGMA user_version = 7", False), ("SELECT 1", False),
])
def test_the_guard_marks_a_connection_that_set_defer_foreign_keys(
        writer: Connection, sql: str, defers: bool) -> None:
    """The group commit turns the pragma off after each job only on such a connection; the
    mark stays (a cached statement runs again without the authorizer)."""
    run(writer, sql)
    assert writer.guard.defers is defers
    run(writer, "SELECT 2")
    assert writer.guard.defers is defers
