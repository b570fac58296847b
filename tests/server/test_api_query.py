"""Native API: POST /v1/databases/{db}/query — results, values, limits and every SQL error."""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.api_support import (
    assert_serving,
    connect,
    error_of,
    make_token,
    ok,
    query,
    rows,
    scalar,
)
from tests.support.server import ServerProcess
from tests.support.tables import DRIZZLE_TABLES, PRISMA_TABLES

ENDLESS = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r"



@pytest.fixture
def db(admin: httpx.Client, new_db: Callable[[], str]) -> str:
    """A fresh database holding t(id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)."""
    name = new_db()
    ok(query(admin, name, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)"))
    return name


def count(admin: httpx.Client, db: str, table: str = "t") -> int:
    return int(scalar(admin, db, f"SELECT count(*) FROM {table}"))


# -- results ---------------------------------------------------------------------------------
def test_documented_example(admin: httpx.Client, db: str) -> None:
    body = ok(query(admin, db,
                    "SELECT 1",
                    {"sql": "INSERT INTO t VALUES (?, ?)", "args": [1, "a"]},
                    {"sql": "SELECT * FROM t WHERE id = :id", "args": {"id": 1}}))
    first, insert, select = body["results"]
    assert first == {"columns": ["1"], "decltypes": [None], "rows": [[1]],
                     "rows_affected": 0, "last_insert_rowid": None}
    assert insert["columns"] == [] and insert["rows"] == []
    assert insert["rows_affected"] == 1
    assert insert["last_insert_rowid"] == 1
    assert select["columns"] == ["id", "v"]
    assert select["decltypes"] == ["INTEGER", "TEXT"]
    assert select["rows"] == [[1, "a"]]
    meta = body["meta"]
    assert set(meta) == {"rows_read", "rows_written", "duration_ms", "txid", "bookmark"}
    assert meta["rows_read"] == 2
    assert meta["rows_written"] == 1
    assert isinstance(meta["duration_ms"], float | int) and meta["duration_ms"] >= 0
    assert meta["txid"] == 2  # CREATE TABLE was 1
    assert isinstance(meta["bookmark"], str) and meta["bookmark"]


def test_columns_of_an_empty_result(admin: httpx.Client, db: str) -> None:
    result = ok(query(admin, db, "SELECT id, v, id + 1 AS n FROM t"))["results"][0]
    assert result["columns"] == ["id", "v", "n"]
    assert result["decltypes"] == ["INTEGER", "TEXT", None]
    assert result["rows"] == []


def test_named_argument_prefixes(admin: httpx.Client, db: str) -> None:
    ok(query(admin, db, {"sql": "INSERT INTO t VALUES (1, 'one')"}))
    for sql, args in [
        ("SELECT v FROM t WHERE id = :id", {"id": 1}),
        ("SELECT v FROM t WHERE id = :id", {":id": 1}),
        ("SELECT v FROM t WHERE id = @id", {"@id": 1}),
        ("SELECT v FROM t WHERE id = $id", {"id": 1}),
        ("SELECT v FROM t WHERE id = ?1", [1]),
    ]:
        assert rows(admin, db, sql, args) == [["one"]], sql  # type: ignore[arg-type]


def test_updates_report_rows_affected(admin: httpx.Client, db: str) -> None:
    ok(query(admin, db, "INSERT INTO t(v) VALUES ('a'), ('b'), ('c')"))
    body = ok(query(admin, db, "UPDATE t SET v = v || '!' WHERE id > 1",
                    "DELETE FROM t WHERE id = 1"))
    update, delete = body["results"]
    assert update["rows_affected"] == 2
    assert delete["rows_affected"] == 1
    assert body["meta"]["rows_written"] == 3
    returning = ok(query(admin, db, "INSERT INTO t(v) VALUES ('d') RETURNING id, v"))
    assert returning["results"][0]["rows"] == [[4, "d"]]
    assert returning["results"][0]["last_insert_rowid"] == 4


# -- all or nothing --------------------------------------------------------------------------
def test_failing_third_statement_applies_nothing(admin: httpx.Client, db: str) -> None:
    before = ok(query(admin, db, "SELECT 1"))["meta"]["txid"]
    err = error_of(query(admin, db,
                         "INSERT INTO t VALUES (1, 'a')",
                         "INSERT INTO t VALUES (2, 'b')",
                         "INSERT INTO t VALUES (3, 'a')",
                         "INSERT INTO t VALUES (4, 'd')"), 400, "SQLITE_CONSTRAINT")
    assert err["extended_code"] == "SQLITE_CONSTRAINT_UNIQUE"
    assert err["statement"] == 2
    assert count(admin, db) == 0
    assert ok(query(admin, db, "SELECT 1"))["meta"]["txid"] == before  # no commit was made


def test_failure_after_schema_change_undoes_it(admin: httpx.Client, db: str) -> None:
    error_of(query(admin, db, "CREATE TABLE u(a)", "INSERT INTO u VALUES (1)",
                   "SELECT * FROM nowhere"), 400, "SQLITE_ERROR")
    err = error_of(query(admin, db, "SELECT * FROM u"), 400, "SQLITE_ERROR")
    assert "no such table" in err["message"]


def test_a_failing_read_statement_fails_the_request(admin: httpx.Client, db: str) -> None:
    err = error_of(query(admin, db, "SELECT 1", "SELECT nope FROM t"), 400, "SQLITE_ERROR")
    assert err["statement"] == 1


# -- SQLite errors by name -------------------------------------------------------------------
@pytest.mark.parametrize(("setup", "sql", "code", "extended"), [
    ([], "INSERT INTO t VALUES (1, 'x')", "SQLITE_CONSTRAINT", "SQLITE_CONSTRAINT_PRIMARYKEY"),
    ([], "INSERT INTO t VALUES (9, 'one')", "SQLITE_CONSTRAINT", "SQLITE_CONSTRAINT_UNIQUE"),
    ([], "INSERT INTO t VALUES (9, NULL)", "SQLITE_CONSTRAINT", "SQLITE_CONSTRAINT_NOTNULL"),
    (["CREATE TABLE c(a CHECK (a > 0))"], "INSERT INTO c VALUES (0)",
     "SQLITE_CONSTRAINT", "SQLITE_CONSTRAINT_CHECK"),
    (["CREATE TABLE p(id INTEGER PRIMARY KEY)", "CREATE TABLE ch(p REFERENCES p(id))"],
     "INSERT INTO ch VALUES (5)", "SQLITE_CONSTRAINT", "SQLITE_CONSTRAINT_FOREIGNKEY"),
    (["CREATE TRIGGER no_del BEFORE DELETE ON t BEGIN SELECT RAISE(ABORT, 'kept'); END"],
     "DELETE FROM t", "SQLITE_CONSTRAINT", "SQLITE_CONSTRAINT_TRIGGER"),
    (["CREATE TRIGGER no_del BEFORE DELETE ON t BEGIN SELECT RAISE(ROLLBACK, 'kept'); END"],
     "DELETE FROM t", "SQLITE_CONSTRAINT", "SQLITE_CONSTRAINT_TRIGGER"),
    ([], "INSERT OR ROLLBACK INTO t VALUES (1, 'x')",
     "SQLITE_CONSTRAINT", "SQLITE_CONSTRAINT_PRIMARYKEY"),
    ([], "SELEC 1", "SQLITE_ERROR", "SQLITE_ERROR"),
    ([], "SELECT * FROM nowhere", "SQLITE_ERROR", "SQLITE_ERROR"),
    ([], "SELECT no_such_function(1)", "SQLITE_ERROR", "SQLITE_ERROR"),
    ([], "INSERT INTO t VALUES (1)", "SQLITE_ERROR", "SQLITE_ERROR"),
])
def test_sqlite_errors_by_name(admin: httpx.Client, db: str, setup: list[str], sql: str,
                               code: str, extended: str) -> None:
    ok(query(admin, db, "INSERT INTO t VALUES (1, 'one')", *setup))
    err = error_of(query(admin, db, "SELECT 1", sql), 400, code)
    assert err["extended_code"] == extended
    assert err["statement"] == 1
    assert rows(admin, db, "SELECT id, v FROM t") == [[1, "one"]]
    assert_serving(admin, db)


def test_whole_transaction_aborts_do_not_hurt_concurrent_writes(
        server: ServerProcess, admin: httpx.Client, db: str) -> None:
    """INSERT OR ROLLBACK drops SQLite's whole transaction; group commit must fail it alone."""
    ok(query(admin, db, "INSERT INTO t VALUES (1, 'one')"))
    results: dict[int, int] = {}

    def write(i: int) -> None:
        with connect(server) as c:
            sql = "INSERT OR ROLLBACK INTO t VALUES (1, 'x')" if i % 4 == 0 else \
                f"INSERT INTO t(v) VALUES ('w{i}')"
            results[i] = query(c, db, sql).status_code

    threads = [threading.Thread(target=write, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: s for i, s in results.items() if i % 4 == 0} == {i: 400 for i in range(0, 24, 4)}
    assert {i: s for i, s in results.items() if i % 4} == {i: 200 for i in range(24) if i % 4}
    assert count(admin, db) == 1 + 18


# -- values ----------------------------------------------------------------------------------
BLOB = bytes(range(256))
ROUND_TRIP: list[tuple[Any, Any, str]] = [
    # (argument as sent, value as returned, SQLite type)
    (None, None, "null"),
    (0, 0, "integer"),
    (-1, -1, "integer"),
    (2**53, 2**53, "integer"),
    (-(2**53), -(2**53), "integer"),
    (2**53 + 1, {"integer": str(2**53 + 1)}, "integer"),
    ({"integer": str(2**53 + 1)}, {"integer": str(2**53 + 1)}, "integer"),
    ({"integer": str(-(2**53) - 1)}, {"integer": str(-(2**53) - 1)}, "integer"),
    ({"integer": str(2**63 - 1)}, {"integer": str(2**63 - 1)}, "integer"),
    ({"integer": str(-(2**63))}, {"integer": str(-(2**63))}, "integer"),
    ({"integer": "12"}, 12, "integer"),
    (True, 1, "integer"),
    (1.5, 1.5, "real"),
    (2.0, 2.0, "real"),
    (1e3, 1000.0, "real"),
    (0.1, 0.1, "real"),
    (1e300, 1e300, "real"),
    (-2.5e-300, -2.5e-300, "real"),
    (3.141592653589793, 3.141592653589793, "real"),
    ({"float": "Infinity"}, {"float": "Infinity"}, "real"),
    ({"float": "-Infinity"}, {"float": "-Infinity"}, "real"),
    ("", "", "text"),
    ("héllo wörld ✓ 🐟 日本語", "héllo wörld ✓ 🐟 日本語", "text"),
    ("a\u0000b", "a\u0000b", "text"),
    ("{\"base64\": \"AA==\"}", "{\"base64\": \"AA==\"}", "text"),
    ({"base64": ""}, {"base64": ""}, "blob"),
    ({"base64": base64.b64encode(BLOB).decode()}, {"base64": base64.b64encode(BLOB).decode()},
     "blob"),
]


def test_values_round_trip_losslessly(admin: httpx.Client, new_db: Callable[[], str]) -> None:
    name = new_db()
    ok(query(admin, name, "CREATE TABLE v(i INTEGER PRIMARY KEY, x)"))
    ok(query(admin, name, *[{"sql": "INSERT INTO v VALUES (?, ?)", "args": [i, sent]}
                            for i, (sent, _, _) in enumerate(ROUND_TRIP)]))
    got = rows(admin, name, "SELECT i, x, typeof(x) FROM v ORDER BY i")
    assert got == [[i, back, kind] for i, (_, back, kind) in enumerate(ROUND_TRIP)]
    # the returned forms are accepted back as arguments and compare equal in SQLite
    for i, (_, back, _) in enumerate(ROUND_TRIP):
        if back is None:
            continue
        found = rows(admin, name, "SELECT i FROM v WHERE x = ?", [back])
        assert [i] in found, (i, back)


def test_result_values_from_sql(admin: httpx.Client, db: str) -> None:
    got = rows(admin, db, "SELECT 9007199254740993, -9223372036854775808, x'00ff', 1.25, NULL,"
                          " 'ünï', 9007199254740992, 1e999, CAST(5 AS REAL)")
    assert got == [[{"integer": "9007199254740993"}, {"integer": "-9223372036854775808"},
                    {"base64": "AP8="}, 1.25, None, "ünï", 9007199254740992,
                    {"float": "Infinity"}, 5.0]]


INVALID_ARGS: list[Any] = [
    {"integer": "12abc"},
    {"integer": str(2**63)},
    {"integer": str(-(2**63) - 1)},
    {"integer": 5},
    2**64,
    -(2**63) - 1,
    {"base64": "not base64!"},
    {"base64": 12},
    {"float": "NaN"},
    {"blob": "AA=="},
    {"integer": "1", "base64": "AA=="},
    {},
    [1, 2],
]


def test_invalid_arguments(admin: httpx.Client, db: str) -> None:
    for arg in INVALID_ARGS:
        err = error_of(query(admin, db, "SELECT 1",
                             {"sql": "INSERT INTO t(v) VALUES (?)", "args": [arg]}),
                       400, "INVALID_ARGUMENT")
        assert err["statement"] == 1, arg
    assert count(admin, db) == 0
    assert_serving(admin, db)


def test_wrong_bindings(admin: httpx.Client, db: str) -> None:
    for sql, args in [
        ("SELECT ?", [1, 2]),                  # too many
        ("SELECT ?, ?", [1]),                  # too few
        ("SELECT :a", {"b": 1}),               # a name missing
        ("SELECT :a, :b", {"a": 1}),           # one of two names missing
        ("INSERT INTO t(v) VALUES (:v)", {}),  # on the writer
        ("SELECT ?", {"a": 1}),                # names for a positional parameter
    ]:
        err = error_of(query(admin, db, {"sql": sql, "args": args}), 400, "INVALID_ARGUMENT")
        assert err["statement"] == 0, sql
    assert count(admin, db) == 0
    assert_serving(admin, db)


# -- request shape ---------------------------------------------------------------------------
BAD_BODIES = [
    (b"", "INVALID_JSON"),
    (b"{", "INVALID_JSON"),
    (b'{"statements": ["SELECT 1"]} trailing', "INVALID_JSON"),
    (b"\xff\xfe", "INVALID_JSON"),
    (b"SELECT 1", "INVALID_JSON"),
    (b"{}", "INVALID_REQUEST"),
    (b"[]", "INVALID_REQUEST"),
    (b'"SELECT 1"', "INVALID_REQUEST"),
    (b'{"statements": "SELECT 1"}', "INVALID_REQUEST"),
    (b'{"statements": []}', "INVALID_REQUEST"),
    (b'{"statements": null}', "INVALID_REQUEST"),
    (b'{"statements": [1]}', "INVALID_REQUEST"),
    (b'{"statements": [null]}', "INVALID_REQUEST"),
    (b'{"statements": [["SELECT 1"]]}', "INVALID_REQUEST"),
    (b'{"statements": [{"args": []}]}', "INVALID_REQUEST"),
    (b'{"statements": [{"sql": 1}]}', "INVALID_REQUEST"),
    (b'{"statements": [{"sql": "SELECT ?", "args": "x"}]}', "INVALID_REQUEST"),
    (b'{"statements": [{"sql": "SELECT ?", "args": 1}]}', "INVALID_REQUEST"),
    (b'{"statements": [{"sql": "SELECT 1", "arg": []}]}', "INVALID_REQUEST"),
    (b'{"statements": ["SELECT 1"], "mode": "fast"}', "INVALID_REQUEST"),
    (b'{"Statements": ["SELECT 1"]}', "INVALID_REQUEST"),
]


def test_bad_request_bodies(admin: httpx.Client, db: str) -> None:
    for body, code in BAD_BODIES:
        r = admin.post(f"/v1/databases/{db}/query", content=body,
                       headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == code, (body, r.text)
    assert_serving(admin, db)


def test_many_statements(admin: httpx.Client, db: str) -> None:
    """Thousands of statements are an ordinary request (a large body is decoded, and its
    results encoded, a piece at a time); an absurd count is refused before it is decoded."""
    n = 10_000
    inserts = [{"sql": "INSERT INTO t(v) VALUES (?)", "args": [f"x{i}"]} for i in range(n)]
    out = ok(query(admin, db, *inserts))
    assert [r["last_insert_rowid"] for r in out["results"]] == list(range(1, n + 1))
    reads = [{"sql": "SELECT v FROM t WHERE id = ?", "args": [i + 1]} for i in range(n)]
    for _ in range(2):  # the second time the text is known cheap: tried inline, then moved
        out = ok(query(admin, db, *reads))
        assert [r["rows"] for r in out["results"]] == [[[f"x{i}"]] for i in range(n)]
    bad = error_of(query(admin, db, *["SELECT 1", {"sql": "SELECT ?", "args": [[1]]}] * 3000),
                   400, "INVALID_ARGUMENT")
    assert bad["statement"] == 1
    bad = error_of(query(admin, db, *["SELECT 1"] * 5000, 7), 400, "INVALID_REQUEST")
    assert "`$.statements[5000]`" in bad["message"]  # as a whole decode would say
    limit = 100_000  # max_statements default
    error_of(query(admin, db, *["INSERT INTO t(v) VALUES ('x')"] * (limit + 1)),
             400, "TOO_MANY_STATEMENTS")
    assert count(admin, db) == n
    assert_serving(admin, db)


def test_two_statements_in_one_entry(admin: httpx.Client, db: str) -> None:
    ok(query(admin, db, "INSERT INTO t VALUES (1, 'kept')"))
    for sql in [
        "SELECT 1; SELECT 2",
        "SELECT 1;SELECT 2;",
        "INSERT INTO t(v) VALUES ('a'); INSERT INTO t(v) VALUES ('b')",
        "INSERT INTO t(v) VALUES ('a'); DROP TABLE t",
        "SELECT 1; /* two */ DELETE FROM t",
        "SELECT 1; -- a comment\nDELETE FROM t",
    ]:
        err = error_of(query(admin, db, "SELECT 1", sql), 400, "MULTIPLE_STATEMENTS")
        assert err["statement"] == 1, sql
    assert rows(admin, db, "SELECT id, v FROM t") == [[1, "kept"]]
    assert_serving(admin, db)


def test_trailing_semicolon_and_comments_are_one_statement(admin: httpx.Client, db: str) -> None:
    for sql in ["SELECT 1;", "SELECT 1;  -- done", "SELECT 1 /* c */ ;\n", "SELECT 1; ; ;",
                "-- first\nSELECT 1"]:
        assert rows(admin, db, sql) == [[1]], sql
    done = ok(query(admin, db, "INSERT INTO t(v) VALUES ('a'); -- one row"))
    assert done["results"][0]["rows_affected"] == 1
    assert count(admin, db) == 1


# -- limits ----------------------------------------------------------------------------------
def test_payload_too_large(admin: httpx.Client, db: str) -> None:
    big = "x" * (8 * 1024 * 1024 + 10)  # max_request_bytes default is 8 MiB
    r = query(admin, db, {"sql": "INSERT INTO t(v) VALUES (?)", "args": [big]})
    error_of(r, 413, "PAYLOAD_TOO_LARGE")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        yield b'{"statements": [{"sql": "INSERT INTO t(v) VALUES (?)", "args": ["'
        for _ in range(9):
            yield b"y" * (1024 * 1024)
        yield b'"]}]}'

    r = admin.post(f"/v1/databases/{db}/query", content=chunks(),
                   headers={"content-type": "application/json"})
    error_of(r, 413, "PAYLOAD_TOO_LARGE")
    assert count(admin, db) == 0
    fits = "z" * (1024 * 1024)
    ok(query(admin, db, {"sql": "INSERT INTO t(v) VALUES (?)", "args": [fits]}))
    assert count(admin, db) == 1
    assert_serving(admin, db)


def test_response_too_large(admin: httpx.Client, db: str) -> None:
    # max_response_bytes default is 10 MB: 12,000 rows of 1,000 characters exceed it
    many = ("WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 12000)"
            " SELECT x, printf('%.1000c', 'x') FROM r")
    err = error_of(query(admin, db, "SELECT 1", many), 400, "RESPONSE_TOO_LARGE")
    assert err["statement"] == 1
    # on the writer: the rows RETURNING would produce are not inserted either
    ok(query(admin, db, "CREATE TABLE big(v)"))
    err = error_of(query(admin, db, "INSERT INTO big(v) " + many.replace(
        "SELECT x, printf", "SELECT printf") + " RETURNING v"), 400, "RESPONSE_TOO_LARGE")
    assert err["statement"] == 0
    assert count(admin, db, "big") == 0
    # several statements add up
    half = many.replace("x < 12000", "x < 6000")
    error_of(query(admin, db, half, half), 400, "RESPONSE_TOO_LARGE")
    assert len(ok(query(admin, db, half))["results"][0]["rows"]) == 6000
    assert_serving(admin, db)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A node with a short statement_timeout, for timeouts."""
    node = ServerProcess(tmp_path_factory.mktemp("quick") / "data",
                         {"statement_timeout": 0.3, "busy_timeout": 5.0})
    node.start()
    yield node
    node.stop()


def test_statement_timeout_on_a_read(quick: ServerProcess) -> None:
    with connect(quick) as c:
        ok(c.post("/v1/databases", json={"name": "slowread"}), 201)
        ok(query(c, "slowread", "CREATE TABLE t(a)", "INSERT INTO t VALUES (1)"))
        err = error_of(query(c, "slowread", "SELECT 1", ENDLESS), 400, "STATEMENT_TIMEOUT")
        assert err["statement"] == 1
        assert rows(c, "slowread", "SELECT a FROM t") == [[1]]
        assert_serving(c, "slowread")


def test_statement_timeout_on_a_write(quick: ServerProcess) -> None:
    with connect(quick) as c:
        ok(c.post("/v1/databases", json={"name": "slowwrite"}), 201)
        ok(query(c, "slowwrite", "CREATE TABLE t(a)"))
        txid = ok(query(c, "slowwrite", "INSERT INTO t VALUES (1)"))["meta"]["txid"]
        endless_insert = ENDLESS.replace("SELECT count(*)", "INSERT INTO t SELECT count(*)")
        err = error_of(query(c, "slowwrite", "INSERT INTO t VALUES (2)", endless_insert),
                       400, "STATEMENT_TIMEOUT")
        assert err["statement"] == 1
        assert rows(c, "slowwrite", "SELECT a FROM t") == [[1]]
        done = ok(query(c, "slowwrite", "INSERT INTO t VALUES (3)"))
        assert done["meta"]["txid"] == txid + 1
        assert rows(c, "slowwrite", "SELECT a FROM t ORDER BY a") == [[1], [3]]
        assert_serving(c, "slowwrite")


def test_statement_timeout_beside_other_writes(quick: ServerProcess) -> None:
    """A write stopped by the timeout fails alone; writes batched with it commit."""
    with connect(quick) as c:
        ok(c.post("/v1/databases", json={"name": "slowmix"}), 201)
        ok(query(c, "slowmix", "CREATE TABLE t(a)"))
    statuses: dict[int, int] = {}

    def write(i: int) -> None:
        with connect(quick) as c:
            sql = ENDLESS.replace("SELECT count(*)", "INSERT INTO t SELECT count(*)") \
                if i == 0 else f"INSERT INTO t VALUES ({i})"
            statuses[i] = query(c, "slowmix", sql).status_code

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == {0: 400} | {i: 200 for i in range(1, 8)}
    with connect(quick) as c:
        assert rows(c, "slowmix", "SELECT a FROM t ORDER BY a") == [[i] for i in range(1, 8)]


# -- what SQL may do -------------------------------------------------------------------------
# a name of this run's own: a file another run left (a mutation run, say) proves nothing here
ATTACK_DB = f"/tmp/shoal-attack-{uuid.uuid4().hex}.db"
NOT_ALLOWED = [
    f"ATTACH DATABASE '{ATTACK_DB}' AS other",
    "ATTACH ':memory:' AS other",
    "DETACH DATABASE main",
    "DETACH other",
    "SELECT load_extension('/tmp/shoal-attack.so')",
    "PRAGMA journal_mode=DELETE",
    "PRAGMA journal_mode",
    "PRAGMA main.journal_mode=OFF",
    "PRAGMA synchronous=OFF",
    "PRAGMA synchronous",
    "PRAGMA writable_schema=ON",
    "PRAGMA query_only=0",
    "PRAGMA temp_store_directory='/tmp'",
    "PRAGMA locking_mode=EXCLUSIVE",
    "PRAGMA wal_checkpoint(TRUNCATE)",
    "PRAGMA mmap_size=1000000",
    "CREATE TEMP TABLE tmp(a)",
    "CREATE TEMPORARY VIEW tv AS SELECT 1",
    "CREATE TEMP TRIGGER tt AFTER INSERT ON t BEGIN SELECT 1; END",
    "BEGIN",
    "BEGIN IMMEDIATE",
    "COMMIT",
    "ROLLBACK",
    "END",
    "SAVEPOINT s",
    "RELEASE s",
    "SELECT * FROM _cf_SHOAL_state",
    "SELECT * FROM _cf_SHOAL_idempotency",
    "SELECT txid FROM main._cf_SHOAL_state",
    "UPDATE _cf_SHOAL_state SET txid = 99",
    "DELETE FROM _cf_SHOAL_idempotency",
    "DROP TABLE _cf_SHOAL_state",
    "CREATE TABLE _shoal_mine(a)",
    "INSERT INTO t(v) SELECT txid FROM _cf_SHOAL_state",
    "SELECT (SELECT count(*) FROM _CF_SHOAL_IDEMPOTENCY)",
]


def test_sql_not_allowed_for_every_token(server: ServerProcess, admin: httpx.Client,
                                         db: str) -> None:
    ok(query(admin, db, "INSERT INTO t VALUES (1, 'kept')"))
    _, reader = make_token(admin, [db], "read")
    _, writer = make_token(admin, "*", "write")
    with connect(server, reader) as read_client, connect(server, writer) as write_client:
        for sql in NOT_ALLOWED:
            for c in (admin, write_client):
                err = error_of(query(c, db, "SELECT 1", sql), 403, "SQL_NOT_ALLOWED")
                assert err["statement"] == 1, sql
            r = query(read_client, db, sql)
            assert r.status_code == 403, (sql, r.text)
            assert r.json()["error"]["code"] in ("SQL_NOT_ALLOWED", "READ_ONLY"), (sql, r.text)
            # inside an interactive transaction too
            tx = ok(admin.post(f"/v1/databases/{db}/transactions"), 201)["id"]
            r = admin.post(f"/v1/databases/{db}/transactions/{tx}/query",
                           json={"statements": [sql]})
            error_of(r, 403, "SQL_NOT_ALLOWED")
            ok(admin.post(f"/v1/databases/{db}/transactions/{tx}/rollback"))
    assert rows(admin, db, "SELECT id, v FROM t") == [[1, "kept"]]
    assert rows(admin, db, "PRAGMA user_version") == [[0]]
    assert not Path(ATTACK_DB).exists()
    assert_serving(admin, db)


def test_schema_tools_see_only_the_users_tables(admin: httpx.Client, db: str) -> None:
    """Shoal's tables are _cf_SHOAL_* (engine/tables.py): the names Prisma's and
    drizzle-kit's introspection leave out, and Datasette's (every name starting with _)."""
    ok(query(admin, db, "CREATE VIEW tv AS SELECT v FROM t"))
    everything = [r[0] for r in rows(admin, db, "SELECT name FROM sqlite_master "
                                                "WHERE type IN ('table', 'view')")]
    assert {"_cf_SHOAL_state", "_cf_SHOAL_idempotency"} <= set(everything)
    users = sorted(n for n in everything if not n.startswith(("_cf_SHOAL_", "sqlite_")))
    assert [r[0] for r in rows(admin, db, PRISMA_TABLES)] == users
    assert [r[0] for r in rows(admin, db, DRIZZLE_TABLES)] == users
    for sql in ("CREATE INDEX i ON _cf_SHOAL_state(txid)",
                "CREATE TRIGGER tr AFTER INSERT ON _cf_SHOAL_state BEGIN SELECT 1; END",
                "CREATE TABLE _cf_SHOAL_x(a)", "ALTER TABLE _cf_SHOAL_state RENAME TO x"):
        error_of(query(admin, db, sql), 403, "SQL_NOT_ALLOWED")
    ok(query(admin, db, "DROP VIEW tv"))
    assert_serving(admin, db)


def test_durability_pragmas_keep_their_values(admin: httpx.Client, db: str) -> None:
    for sql in ("PRAGMA journal_mode=DELETE", "PRAGMA synchronous=OFF",
                "PRAGMA writable_schema=ON"):
        error_of(query(admin, db, sql), 403, "SQL_NOT_ALLOWED")
    # informational and file-resident PRAGMAs work
    assert rows(admin, db, "PRAGMA user_version") == [[0]]
    ok(query(admin, db, "PRAGMA user_version = 7"))
    assert rows(admin, db, "PRAGMA user_version") == [[7]]
    assert rows(admin, db, "PRAGMA integrity_check") == [["ok"]]
    assert [r[1] for r in rows(admin, db, "PRAGMA table_info(t)")] == ["id", "v"]
    assert rows(admin, db, "PRAGMA foreign_keys") == [[1]]


def test_vacuum_into_never_writes_a_file(server: ServerProcess, admin: httpx.Client, db: str,
                                         tmp_path: Path) -> None:
    target = tmp_path / "copy.db"
    ok(query(admin, db, "INSERT INTO t VALUES (1, 'kept')"))
    # every request is a transaction, so SQLite refuses VACUUM (docs/api.md)
    err = error_of(query(admin, db, f"VACUUM INTO '{target}'"), 400, "SQLITE_ERROR")
    assert "VACUUM" in err["message"]
    error_of(query(admin, db, "VACUUM"), 400, "SQLITE_ERROR")
    _, reader = make_token(admin, [db], "read")
    with connect(server, reader) as c:
        error_of(query(c, db, f"VACUUM INTO '{target}'"), 403, "READ_ONLY")
    assert not target.exists()
    assert rows(admin, db, "SELECT v FROM t") == [["kept"]]


def test_reads_see_the_schema_of_the_last_commit(admin: httpx.Client, db: str) -> None:
    ok(query(admin, db, "INSERT INTO t VALUES (1, 'one')"))
    assert ok(query(admin, db, "SELECT * FROM t"))["results"][0]["columns"] == ["id", "v"]
    ok(query(admin, db, "ALTER TABLE t ADD COLUMN w INTEGER DEFAULT 5"))
    result = ok(query(admin, db, "SELECT * FROM t"))["results"][0]
    assert result["columns"] == ["id", "v", "w"]
    assert result["decltypes"] == ["INTEGER", "TEXT", "INTEGER"]
    assert result["rows"] == [[1, "one", 5]]
    ok(query(admin, db, "ALTER TABLE t RENAME COLUMN w TO n"))
    assert ok(query(admin, db, "SELECT * FROM t"))["results"][0]["columns"] == ["id", "v", "n"]
    ok(query(admin, db, "DROP TABLE t", "CREATE TABLE t(x)", "INSERT INTO t VALUES ('new')"))
    assert ok(query(admin, db, "SELECT * FROM t"))["results"][0]["columns"] == ["x"]
    assert rows(admin, db, "SELECT * FROM t") == [["new"]]


def test_ordinary_schema_changes_are_allowed(admin: httpx.Client, db: str) -> None:
    ok(query(admin, db, "INSERT INTO t VALUES (1, 'one')"))
    for sql in [
        "ALTER TABLE t ADD COLUMN w INTEGER DEFAULT 5",
        "SELECT 1",  # a read between: readers must not keep the old schema
        "ALTER TABLE t RENAME COLUMN w TO n",
        "CREATE INDEX t_n ON t(n)",
        "CREATE VIEW tv AS SELECT id, v FROM t",
        "CREATE TRIGGER t_ai AFTER INSERT ON t BEGIN UPDATE t SET v = v || '!'"
        " WHERE id = new.id; END",
        "ALTER TABLE t RENAME TO t2",
        "INSERT INTO t2(id, v) VALUES (2, 'two')",
        "DROP INDEX t_n",
        "ALTER TABLE t2 DROP COLUMN n",
        "CREATE TABLE s AS SELECT * FROM t2",
        "DROP VIEW tv",
        "ANALYZE",
        "REINDEX",
        "PRAGMA optimize",
        "PRAGMA optimize=0x10002",
    ]:
        ok(query(admin, db, sql))
    assert rows(admin, db, "SELECT id, v FROM s ORDER BY id") == [[1, "one"], [2, "two!"]]
    assert rows(admin, db, "SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')"
                           " AND name NOT LIKE '\\_cf\\_SHOAL\\_%' ESCAPE '\\' AND name"
                           " NOT LIKE 'sqlite_%' ORDER BY name") == [["s"], ["t2"], ["t_ai"]]


def test_sqlite_master_is_readable_but_not_writable(admin: httpx.Client, db: str) -> None:
    names = [r[0] for r in rows(admin, db, "SELECT name FROM sqlite_master WHERE type='table'")]
    assert "t" in names
    r = query(admin, db, "UPDATE sqlite_master SET sql = 'x'")
    assert r.status_code in (400, 403), r.text
    assert [r[1] for r in rows(admin, db, "PRAGMA table_info(t)")] == ["id", "v"]


def test_server_keeps_serving_after_bad_inputs(admin: httpx.Client, db: str) -> None:
    assert_serving(admin, db)
