"""shoal.client against a real `shoal serve`: values, batches, transactions, errors, admin."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.client import (
    AlreadyExists,
    AsyncClient,
    AuthError,
    Busy,
    Client,
    ConnectionFailed,
    InvalidRequest,
    NotFound,
    SQLError,
    TransactionExpired,
)
from tests.support.server import ServerProcess, free_port


@pytest.fixture
def db(server: ServerProcess, new_db: Callable[[], str]) -> Iterator[Client]:
    """A client bound to a fresh database, with the admin token."""
    with Client(server.url, server.admin_token, database=new_db()) as c:
        yield c


SAMPLES: list[Any] = [
    None, 0, -1, 2**53, 2**53 + 1, -(2**53) - 1, 2**63 - 1, -(2**63),
    0.0, -0.5, 1e308, 5e-324, math.inf, -math.inf,
    "", "text", "ünïcödé ☃", "nul\x00inside",
    b"", b"\x00", bytes(range(256)),
]


def test_values_round_trip_through_a_table(db: Client) -> None:
    db.execute("CREATE TABLE v (id INTEGER PRIMARY KEY, x)")
    db.batch([("INSERT INTO v (x) VALUES (?)", [value]) for value in SAMPLES])
    got = [row[0] for row in db.execute("SELECT x FROM v ORDER BY id").rows]
    assert got == SAMPLES
    assert [type(v) for v in got] == [type(v) for v in SAMPLES]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1),
                          st.floats(allow_nan=False), st.text(), st.binary()),
                min_size=1, max_size=5))
def test_value_round_trip_property(db: Client, values: list[Any]) -> None:
    sql = "SELECT " + ", ".join("?" for _ in values)
    row = db.execute(sql, values).rows[0]
    assert list(row) == values
    assert [type(v) for v in row] == [type(v) for v in values]


def test_named_arguments_and_result_shape(db: Client) -> None:
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, data BLOB)")
    written = db.execute("INSERT INTO t (name, data) VALUES (:name, :data)",
                         {"name": "a", "data": b"\x01\x02"})
    assert (written.rows_affected, written.last_insert_rowid) == (1, 1)
    assert written.txid is not None and written.bookmark
    result = db.execute("SELECT * FROM t WHERE name = ?", ["a"])
    assert result.columns == ["id", "name", "data"]
    assert result.decltypes == ["INTEGER", "TEXT", "BLOB"]
    assert result.rows == [(1, "a", b"\x01\x02")]
    assert list(result) == result.rows and len(result) == 1
    assert result.meta.rows_read >= 1


def test_batch_is_one_transaction(db: Client) -> None:
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    results = db.batch(["INSERT INTO t VALUES (1)", ("INSERT INTO t VALUES (?)", [2]),
                        "SELECT count(*) FROM t"])
    assert results[2].rows == [(2,)]
    assert results[0].txid == results[1].txid == results[2].txid
    with pytest.raises(SQLError) as caught:
        db.batch(["INSERT INTO t VALUES (3)", "INSERT INTO t VALUES (4)",
                  "INSERT INTO t VALUES (1)"])
    err = caught.value
    assert (err.code, err.extended_code, err.statement) == (
        "SQLITE_CONSTRAINT", "SQLITE_CONSTRAINT_PRIMARYKEY", 2)
    assert err.status == 400
    assert db.execute("SELECT id FROM t ORDER BY id").rows == [(1,), (2,)]


def test_transaction_commits(db: Client) -> None:
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    before = db.database()["txid"]
    with db.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (1)")
        tx.batch([("INSERT INTO t VALUES (?)", [2])])
        assert tx.execute("SELECT count(*) FROM t").rows == [(2,)]  # its own writes
        assert db.execute("SELECT count(*) FROM t").rows == [(0,)]  # nobody else's view
    assert tx.committed and tx.txid == before + 1 and tx.bookmark
    assert db.execute("SELECT count(*) FROM t").rows == [(2,)]


def test_transaction_rolls_back_on_exception(db: Client) -> None:
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    with pytest.raises(RuntimeError, match="changed my mind"), db.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("changed my mind")
    assert not tx.committed
    assert db.execute("SELECT count(*) FROM t").rows == [(0,)]


def test_failed_statement_in_a_transaction_keeps_the_rest(db: Client) -> None:
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    with db.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(SQLError):
            tx.batch(["INSERT INTO t VALUES (2)", "INSERT INTO t VALUES (1)"])
        tx.execute("INSERT INTO t VALUES (3)")
    assert db.execute("SELECT id FROM t ORDER BY id").rows == [(1,), (3,)]


def test_read_transaction_sees_one_snapshot(db: Client) -> None:
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    with db.transaction("read") as tx:
        assert tx.mode == "read"
        db.execute("INSERT INTO t VALUES (1)")
        assert tx.execute("SELECT count(*) FROM t").rows == [(0,)]
        with pytest.raises(AuthError) as caught:
            tx.execute("INSERT INTO t VALUES (2)")
        assert caught.value.code == "READ_ONLY"


def test_idle_transaction_expires(db: Client) -> None:
    tx = db.transaction().begin()
    time.sleep(2.0)  # transaction_timeout is 1 s in the fixture, swept every 0.25 s: margin
    with pytest.raises(TransactionExpired) as caught:
        tx.execute("SELECT 1")
    assert caught.value.status == 410 and not tx.open


def test_second_writer_gets_busy(db: Client) -> None:
    with db.transaction():
        started = time.monotonic()
        with pytest.raises(Busy) as caught:
            db.transaction().begin()
        assert caught.value.code == "DATABASE_BUSY"
        assert time.monotonic() - started < 5  # busy_timeout is 1 s in the fixture


def test_idempotency_key_applies_once(db: Client) -> None:
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v)")
    first = db.execute("INSERT INTO t (v) VALUES (?)", ["x"], idempotency_key="pay-1")
    again = db.execute("INSERT INTO t (v) VALUES (?)", ["x"], idempotency_key="pay-1")
    assert (again.txid, again.last_insert_rowid) == (first.txid, first.last_insert_rowid)
    assert db.execute("SELECT count(*) FROM t").rows == [(1,)]
    with pytest.raises(InvalidRequest) as caught:
        db.execute("INSERT INTO t (v) VALUES (?)", ["y"], idempotency_key="pay-1")
    assert (caught.value.code, caught.value.status) == ("IDEMPOTENCY_KEY_REUSED", 422)
    batch = [("INSERT INTO t (v) VALUES (?)", ["b"])]
    assert db.batch(batch, idempotency_key="b-1")[0].txid == \
        db.batch(batch, idempotency_key="b-1")[0].txid
    assert db.execute("SELECT count(*) FROM t").rows == [(2,)]


def test_typed_errors_from_the_server(server: ServerProcess, db: Client) -> None:
    with pytest.raises(NotFound) as missing:
        db.execute("SELECT 1", database="no-such-db")
    assert (missing.value.code, missing.value.status) == ("DATABASE_NOT_FOUND", 404)
    assert missing.value.hint
    with pytest.raises(SQLError) as syntax:
        db.execute("SELEC 1")
    assert syntax.value.code == "SQLITE_ERROR" and "syntax" in syntax.value.message
    with pytest.raises(InvalidRequest) as two:
        db.execute("SELECT 1; SELECT 2")
    assert two.value.code == "MULTIPLE_STATEMENTS"
    with Client(server.url, "not-a-token", database=db.default_database) as bad, \
            pytest.raises(AuthError) as forged:
        bad.execute("SELECT 1")
    assert forged.value.status == 401
    with pytest.raises(AlreadyExists):
        db.create_database(str(db.default_database))


def test_unreachable_server_is_a_connection_error() -> None:
    with Client(f"http://127.0.0.1:{free_port()}/db/x", "t", timeout=2) as c, \
            pytest.raises(ConnectionFailed) as caught:
        c.execute("SELECT 1")
    assert caught.value.code == "CONNECTION_ERROR" and caught.value.status is None


def test_database_admin_and_pagination(server: ServerProcess) -> None:
    with Client(server.url, server.admin_token) as c:
        names = [f"page-{i}" for i in range(5)]
        for name in names:
            created = c.create_database(name, idempotency_key=f"create-{name}")
            assert created["name"] == name
        listed = [d["name"] for d in c.list_databases(page_size=2)]
        assert len(listed) == len(set(listed))
        assert set(names) <= set(listed)
        assert len(c.list_databases(limit=3, page_size=2)) == 3
        info = c.database("page-0")
        assert info["name"] == "page-0" and "main" in [b["name"] for b in info["branches"]]
        assert {"size_bytes", "txid", "open", "created_at"} <= set(info)
        c.execute("CREATE TABLE t (x)", database="page-0")
        c.execute("INSERT INTO t VALUES (1)", database="page-0")
        usage = c.usage("page-0")
        assert usage["rows_written"] >= 1 and usage["queries"] >= 2
        for name in names:
            c.delete_database(name)
        with pytest.raises(NotFound):
            c.database("page-0")
        assert not set(names) & {d["name"] for d in c.list_databases()}


def test_tokens_scope_and_revocation(server: ServerProcess, db: Client) -> None:
    name = str(db.default_database)
    db.execute("CREATE TABLE t (x)")
    made = db.create_token([name], "read", 60)
    assert made["access"] == "read" and made["id"] and made["token"]
    with Client(server.url, made["token"], database=name) as reader:
        assert reader.execute("SELECT count(*) FROM t").rows == [(0,)]
        with pytest.raises(AuthError) as read_only:
            reader.execute("INSERT INTO t VALUES (1)")
        assert (read_only.value.code, read_only.value.status) == ("READ_ONLY", 403)
        with pytest.raises(AuthError) as other:
            reader.execute("SELECT 1", database="elsewhere")
        assert other.value.status == 403
        db.revoke_token(made["id"])
        with pytest.raises(AuthError) as revoked:
            reader.execute("SELECT 1")
        assert revoked.value.status == 401
    with pytest.raises(NotFound):
        db.revoke_token("tok_does_not_exist")


def test_url_may_name_the_database(server: ServerProcess, new_db: Callable[[], str]) -> None:
    name = new_db()
    for url in (f"{server.url}/db/{name}", f"shoal://127.0.0.1:{server.port}/{name}"):
        with Client(url, server.admin_token) as c:
            assert c.execute("SELECT 42").rows == [(42,)]


def test_async_client(server: ServerProcess, new_db: Callable[[], str]) -> None:
    name = new_db()

    async def main() -> None:
        async with AsyncClient(server.url, server.admin_token, database=name) as c:
            await c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)")
            written = await asyncio.gather(*(
                c.execute("INSERT INTO t (b) VALUES (?)", [bytes([i])]) for i in range(20)))
            assert all(r.rows_affected == 1 for r in written)
            results = await c.batch(["SELECT count(*) FROM t",
                                     ("SELECT b FROM t WHERE id = ?", [1])])
            assert results[0].rows == [(20,)] and isinstance(results[1].rows[0][0], bytes)
            async with c.transaction() as tx:
                await tx.execute("DELETE FROM t WHERE id > 10")
            assert tx.committed
            with pytest.raises(SQLError):
                async with c.transaction() as tx:
                    await tx.execute("DELETE FROM t")
                    await tx.execute("SELECT * FROM missing_table")
            assert (await c.execute("SELECT count(*) FROM t")).rows == [(10,)]
            assert name in [d["name"] for d in await c.list_databases(page_size=3)]
            assert (await c.database(name))["name"] == name
            with pytest.raises(NotFound):
                await c.usage("no-such-db")

    asyncio.run(main())


@pytest.fixture
def branched(server: ServerProcess, new_db: Callable[[], str]) -> tuple[str, str]:
    """A database with one row on main, and branch preview-42 of it."""
    name = new_db()
    with Client(server.url, server.admin_token, database=name) as c:
        c.batch(["CREATE TABLE t (v TEXT)", "INSERT INTO t VALUES ('main')"])
        c.create_branch("preview-42")
    return name, "preview-42"


def _values(server: ServerProcess, name: str, branch: str) -> list[Any]:
    with Client(server.url, server.admin_token, database=name, branch=branch) as c:
        return [row[0] for row in c.execute("SELECT v FROM t ORDER BY rowid").rows]


def test_client_reaches_a_branch_by_url_and_by_argument(server: ServerProcess,
                                                        branched: tuple[str, str]) -> None:
    name, branch = branched
    for i, url in enumerate((f"{server.url}/db/{name}/branches/{branch}",
                             f"shoal://127.0.0.1:{server.port}/{name}/branches/{branch}")):
        with Client(url, server.admin_token) as c:
            c.execute("INSERT INTO t VALUES (?)", [f"url{i}"])
            c.batch([("INSERT INTO t VALUES (?)", [f"batch{i}"])])
            with c.transaction() as tx:
                tx.execute("INSERT INTO t VALUES (?)", [f"tx{i}"])
            assert tx.committed and (tx.database, tx.branch) == (name, branch)
    with Client(server.url, server.admin_token, database=name, branch=branch) as c:
        c.execute("INSERT INTO t VALUES ('arg')")
        assert c.branch()["name"] == branch
        assert c.history()["branch"] == branch
        assert c.usage()["branch"] == branch
        assert c.execute("SELECT count(*) FROM t", branch="main").rows == [(1,)]
    with Client(server.url, server.admin_token, database=name) as c:
        c.execute("INSERT INTO t VALUES ('call')", branch=branch)
        with pytest.raises(NotFound) as missing:
            c.execute("SELECT 1", branch="nope")
        assert missing.value.code == "BRANCH_NOT_FOUND"
    assert _values(server, name, branch) == [
        "main", "url0", "batch0", "tx0", "url1", "batch1", "tx1", "arg", "call"]
    assert _values(server, name, "main") == ["main"]


def test_async_client_reaches_a_branch(server: ServerProcess,
                                       branched: tuple[str, str]) -> None:
    name, branch = branched

    async def main() -> None:
        async with AsyncClient(f"{server.url}/db/{name}/branches/{branch}",
                               server.admin_token) as c:
            await c.execute("INSERT INTO t VALUES ('url')")
            async with c.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES ('tx')")
            assert (await c.branch())["name"] == branch
            assert (await c.history())["branch"] == branch
        async with AsyncClient(server.url, server.admin_token, database=name,
                               branch=branch) as c:
            await c.batch(["INSERT INTO t VALUES ('arg')"])
            await c.execute("INSERT INTO t VALUES ('main2')", branch="main")

    asyncio.run(main())
    assert _values(server, name, branch) == ["main", "url", "tx", "arg"]
    assert _values(server, name, "main") == ["main", "main2"]
