"""shoal.dbapi against a real server, next to the stdlib sqlite3 module running the same code."""

from __future__ import annotations

import datetime
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shoal import client, dbapi
from tests.support.server import ServerProcess


@pytest.fixture
def url(server: ServerProcess, new_db: Callable[[], str]) -> str:
    return f"{server.url}/db/{new_db()}"


@pytest.fixture
def conn(server: ServerProcess, url: str) -> Iterator[dbapi.Connection]:
    c = dbapi.connect(url, token=server.admin_token)
    yield c
    c.close()


def sqlite3_style_workload(module: Any, conn: Any) -> list[Any]:
    """Typical sqlite3-era code, written once; returns what it observed."""
    seen: list[Any] = []
    cur = conn.cursor()
    cur.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT UNIQUE, "
                "score REAL, avatar BLOB)")
    cur.executemany("INSERT INTO users (name, score, avatar) VALUES (?, ?, ?)",
                    [("ann", 1.5, b"\x00\x01"), ("bob", None, None), ("cy", -2.0, b"")])
    seen.append(("executemany", cur.rowcount, conn.in_transaction))
    conn.commit()
    seen.append(("committed", conn.in_transaction))
    cur.execute("INSERT INTO users (name) VALUES (?)", ("dee",))
    seen.append(("insert", cur.rowcount, cur.lastrowid))
    conn.rollback()
    cur.execute("SELECT id, name, score, avatar FROM users ORDER BY id")
    seen.append(("description", [d[0] for d in cur.description]))
    seen.append(("rowcount after select", cur.rowcount))
    seen.append(("fetchone", cur.fetchone()))
    cur.arraysize = 1
    seen.append(("fetchmany", cur.fetchmany()))
    seen.append(("fetchall", cur.fetchall()))
    seen.append(("exhausted", cur.fetchone(), cur.fetchall()))
    cur.execute("SELECT name FROM users WHERE score > :min ORDER BY name", {"min": 0})
    seen.append(("named", list(cur)))
    seen.append(("empty", conn.execute("SELECT * FROM users WHERE 0").fetchall()))
    cur.execute("UPDATE users SET score = 0 WHERE score IS NULL OR score < 0")
    seen.append(("update", cur.rowcount, cur.description))
    with conn:
        conn.execute("DELETE FROM users WHERE name = 'cy'")
    try:
        with conn:
            conn.execute("INSERT INTO users (name) VALUES ('zed')")
            conn.execute("INSERT INTO users (name) VALUES ('ann')")
    except module.IntegrityError as exc:
        seen.append(("integrity", type(exc).__name__, exc.sqlite_errorname))
    seen.append(("after ctx", conn.execute("SELECT name FROM users ORDER BY id").fetchall()))
    for bad in ("SELECT * FROM nowhere", "SELEC 1"):
        try:
            conn.execute(bad)
        except module.OperationalError as exc:
            seen.append(("operational", type(exc).__name__))
    try:
        conn.execute("SELECT 1; SELECT 2")
    except module.ProgrammingError as exc:
        seen.append(("two statements", type(exc).__name__))
    conn.executescript("CREATE TABLE log (m TEXT); INSERT INTO log VALUES ('a'); "
                       "INSERT INTO log VALUES ('b;c');")
    seen.append(("script", conn.execute("SELECT m FROM log").fetchall()))
    return seen


def test_runs_like_sqlite3(server: ServerProcess, url: str) -> None:
    expected = sqlite3_style_workload(sqlite3, sqlite3.connect(":memory:"))
    with dbapi.connect(url, token=server.admin_token) as shoal_conn:
        got = sqlite3_style_workload(dbapi, shoal_conn)
    assert got == expected


def test_lastrowid_rowcount_and_description(conn: dbapi.Connection) -> None:
    cur = conn.cursor()
    assert (cur.rowcount, cur.lastrowid, cur.description) == (-1, None, None)
    cur.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    cur.execute("INSERT INTO t (v) VALUES (?)", [2**62])
    assert (cur.rowcount, cur.lastrowid) == (1, 1)
    cur.execute("SELECT v FROM t")  # a select leaves lastrowid alone
    assert cur.lastrowid == 1 and cur.fetchone() == (2**62,)
    assert cur.description == (("v", None, None, None, None, None, None),)
    cur.executemany("INSERT INTO t (v) VALUES (?)", [[i] for i in range(3)])
    assert (cur.rowcount, cur.lastrowid) == (3, 4)
    conn.commit()
    assert conn.total_changes == 4


def test_executemany_in_batches(conn: dbapi.Connection) -> None:
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)")
    n = dbapi.BATCH_SIZE * 2 + 7
    cur = conn.executemany("INSERT INTO t (b) VALUES (?)", ((bytes([i % 256]),) for i in range(n)))
    assert cur.rowcount == n
    conn.commit()
    assert conn.execute("SELECT count(*), sum(length(b)) FROM t").fetchone() == (n, n)
    with pytest.raises(dbapi.ProgrammingError, match="DML"):
        conn.executemany("SELECT ?", [(1,)])


def test_uncommitted_writes_are_private_until_commit(server: ServerProcess, url: str,
                                                     conn: dbapi.Connection) -> None:
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    assert conn.in_transaction
    with dbapi.connect(url, token=server.admin_token, isolation_level=None) as other:
        assert other.execute("SELECT count(*) FROM t").fetchone() == (0,)
        conn.commit()
        assert other.execute("SELECT count(*) FROM t").fetchone() == (1,)


def test_autocommit_modes(server: ServerProcess, url: str) -> None:
    with dbapi.connect(url, token=server.admin_token, isolation_level=None) as auto:
        auto.execute("CREATE TABLE t (x)")
        auto.execute("INSERT INTO t VALUES (1)")
        assert not auto.in_transaction
        auto.execute("BEGIN")
        assert auto.in_transaction
        auto.execute("INSERT INTO t VALUES (2)")
        auto.execute("ROLLBACK")
        assert auto.execute("SELECT count(*) FROM t").fetchone() == (1,)
        with pytest.raises(dbapi.OperationalError, match="no transaction"):
            auto.execute("COMMIT")
    pep = dbapi.connect(url, token=server.admin_token, autocommit=False)
    try:
        assert pep.execute("SELECT count(*) FROM t").fetchone() == (1,)
        assert pep.in_transaction  # PEP 249 mode: always inside a transaction
        pep.execute("INSERT INTO t VALUES (3)")
        pep.autocommit = True  # commits, as sqlite3 does
        assert not pep.in_transaction
        assert pep.execute("SELECT count(*) FROM t").fetchone() == (2,)
    finally:
        pep.close()
    legacy = dbapi.connect(url, token=server.admin_token)
    legacy.execute("INSERT INTO t VALUES (4)")
    legacy.isolation_level = None  # commits the pending transaction
    assert not legacy.in_transaction
    legacy.execute("INSERT INTO t VALUES (5)")
    legacy.close()
    with dbapi.connect(url, token=server.admin_token) as check:
        assert check.execute("SELECT count(*) FROM t").fetchone() == (4,)


def test_close_rolls_back_and_refuses_further_use(server: ServerProcess, url: str) -> None:
    c = dbapi.connect(url, token=server.admin_token)
    c.execute("CREATE TABLE t (x)")
    cur = c.cursor()
    cur.execute("INSERT INTO t VALUES (1)")
    c.close()
    with pytest.raises(dbapi.ProgrammingError, match="closed"):
        cur.execute("SELECT 1")
    with pytest.raises(dbapi.ProgrammingError, match="closed"):
        c.cursor()
    with dbapi.connect(url, server.admin_token) as again:
        assert again.execute("SELECT count(*) FROM t").fetchone() == (0,)
        closed = again.cursor()
        closed.close()
        with pytest.raises(dbapi.ProgrammingError, match="closed cursor"):
            closed.fetchall()


def test_expired_transaction_is_operational_error(conn: dbapi.Connection) -> None:
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    time.sleep(2.0)  # transaction_timeout is 1 s in the fixture, swept every 0.25 s: margin
    with pytest.raises(dbapi.OperationalError) as caught:
        conn.execute("INSERT INTO t VALUES (2)")
    assert caught.value.code == "TRANSACTION_EXPIRED"
    assert not conn.in_transaction
    conn.execute("INSERT INTO t VALUES (3)")  # a new transaction starts
    conn.commit()
    assert conn.execute("SELECT x FROM t").fetchall() == [(3,)]


def test_row_factory_dates_and_bad_parameters(conn: dbapi.Connection) -> None:
    conn.row_factory = dbapi.Row
    conn.execute("CREATE TABLE e (day TEXT, at TEXT)")
    conn.execute("INSERT INTO e VALUES (?, ?)",
                 (dbapi.Date(2024, 2, 29), dbapi.Timestamp(2024, 2, 29, 12, 30, 1)))
    row = conn.execute("SELECT day AS Day, at FROM e").fetchone()
    assert row["day"] == row[0] == "2024-02-29" and row["AT"] == "2024-02-29 12:30:01"
    assert row.keys() == ["Day", "at"] and tuple(row) == ("2024-02-29", "2024-02-29 12:30:01")
    with pytest.raises(dbapi.ProgrammingError, match="binding"):
        conn.execute("SELECT ?", [datetime.timedelta(1)])
    with pytest.raises(dbapi.ProgrammingError):
        conn.execute("SELECT ?, ?", [1])  # wrong number of bindings


def test_read_token_cannot_write(server: ServerProcess, url: str) -> None:
    name = url.rsplit("/", 1)[-1]
    with client.Client(server.url, server.admin_token) as admin:
        admin.execute("CREATE TABLE t (x)", database=name)
        token = admin.create_token([name], "read", 60)["token"]
    with dbapi.connect(url, token=token) as reader:
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (0,)
        with pytest.raises(dbapi.OperationalError) as caught:
            reader.execute("INSERT INTO t VALUES (1)")
        assert caught.value.code == "READ_ONLY" and caught.value.status == 403


def test_connect_reaches_a_branch(server: ServerProcess, url: str) -> None:
    """By the URL (/db/NAME/branches/BRANCH) and by branch=; main sees neither write."""
    name = url.rsplit("/", 1)[-1]
    with client.Client(url, server.admin_token) as admin:
        admin.batch(["CREATE TABLE t (v TEXT)", "INSERT INTO t VALUES ('main')"])
        admin.create_branch("preview-42")
    with dbapi.connect(f"{url}/branches/preview-42", token=server.admin_token) as by_url:
        by_url.execute("INSERT INTO t VALUES ('url')")
        by_url.commit()
        assert by_url.client.resolve() == (name, "preview-42")
    with dbapi.connect(url, token=server.admin_token, branch="preview-42") as by_arg:
        by_arg.execute("BEGIN")
        by_arg.execute("INSERT INTO t VALUES ('arg')")
        by_arg.execute("COMMIT")
        assert by_arg.execute("SELECT v FROM t ORDER BY rowid").fetchall() == [
            ("main",), ("url",), ("arg",)]
    with dbapi.connect(url, token=server.admin_token) as main:
        assert main.execute("SELECT v FROM t").fetchall() == [("main",)]
    with dbapi.connect(url, token=server.admin_token, branch="nope") as missing, \
            pytest.raises(dbapi.OperationalError) as caught:
        missing.execute("SELECT 1")
    assert caught.value.code == "BRANCH_NOT_FOUND"
