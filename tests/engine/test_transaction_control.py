"""Transaction statements are recognised by SQLite (the authorizer), never by reading SQL text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.engine import tables
from shoal.engine.connection import (
    Connection,
    Limits,
    Statement,
    TransactionControl,
    probe_transaction,
)
from shoal.errors import ShoalError

LIMITS = Limits(statement_timeout=5.0, max_response_bytes=10_000_000)


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[Connection]:
    writer = Connection(str(tmp_path / "main.db"), reader=False)
    tables.create(writer)
    writer.internal("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn = Connection(str(tmp_path / "main.db"), reader=True)
    yield conn
    conn.close()
    writer.close()


def control(conn: Connection, sql: str) -> TransactionControl:
    with pytest.raises(TransactionControl) as info:
        conn.run([Statement(sql)], LIMITS)
    assert info.value.code == "SQL_NOT_ALLOWED"  # what the native API shows
    assert info.value.extra["statement"] == 0
    return info.value


@pytest.mark.parametrize(("sql", "verb", "immediate"), [
    ("BEGIN", "BEGIN", False),
    ("begin deferred transaction", "BEGIN", False),
    ("BEGIN TRANSACTION READONLY", "BEGIN", False),  # libSQL's read mode; a name to SQLite
    ("BEGIN IMMEDIATE", "BEGIN", True),
    ("/* x */ BEGIN EXCLUSIVE -- y", "BEGIN", True),
    ("COMMIT", "COMMIT", False),
    ("END TRANSACTION", "COMMIT", False),
    ("ROLLBACK", "ROLLBACK", False),
    ("BEGIN;", "BEGIN", False),
    ("SAVEPOINT a", "SAVEPOINT", False),
    ("RELEASE a", "RELEASE", False),
    ("ROLLBACK TO a", "ROLLBACK TO", False),
])
def test_the_verb_comes_from_sqlite(reader: Connection, sql: str, verb: str,
                                    immediate: bool) -> None:
    tc = control(reader, sql)
    assert (tc.verb, tc.immediate) == (verb, immediate)


@pytest.mark.parametrize("sql", ["BEGIN; DELETE FROM t", "BEGIN; COMMIT", "COMMIT; SELECT 1",
                                 "BEGIN; garbage"])
def test_nothing_may_hide_behind_a_transaction_statement(reader: Connection, sql: str) -> None:
    with pytest.raises(ShoalError) as info:
        reader.run([Statement(sql)], LIMITS)
    assert info.value.code == "MULTIPLE_STATEMENTS"
    assert not isinstance(info.value, TransactionControl)


def test_a_transaction_statement_after_another_statement_is_just_refused(
        reader: Connection) -> None:
    with pytest.raises(ShoalError) as info:
        reader.run([Statement("SELECT 1; BEGIN")], LIMITS)
    assert info.value.code == "SQL_NOT_ALLOWED"
    assert not isinstance(info.value, TransactionControl)


def test_text_that_only_mentions_begin_runs(reader: Connection) -> None:
    out = reader.run([Statement("SELECT 'BEGIN; COMMIT' AS begin")], LIMITS)
    assert out.results[0].rows == [["BEGIN; COMMIT"]]


def test_the_probe_leaves_no_transaction_behind() -> None:
    assert probe_transaction("BEGIN IMMEDIATE", "BEGIN", 0) is True
    assert probe_transaction("BEGIN", "BEGIN", 0) is False
    assert probe_transaction("COMMIT", "COMMIT", 0) is False
    assert probe_transaction("BEGIN IMMEDIATE", "BEGIN", 0) is True  # still usable


def test_describe_prepares_without_running(reader: Connection) -> None:
    d = reader.describe("SELECT id, v AS value FROM t WHERE id = ?2 OR v = :v OR v = @w", 5.0)
    assert d.params == [None, "?2", ":v", "@w"]
    assert (d.columns, d.decltypes) == (["id", "value"], ["INTEGER", "TEXT"])
    assert d.is_readonly and not d.is_explain
    ins = reader.describe("INSERT INTO t (v) VALUES ($x)", 5.0)
    assert ins.params == ["$x"] and not ins.is_readonly
    assert reader.describe("BEGIN", 5.0).is_readonly
    with pytest.raises(ShoalError) as info:
        reader.describe("ATTACH 'x' AS x", 5.0)
    assert info.value.code == "SQL_NOT_ALLOWED"
    assert reader.run([Statement("SELECT count(*) FROM t")], LIMITS).results[0].rows == [[0]]
