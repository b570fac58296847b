"""Hrana over HTTP against a real node: pipelines, stream requests, values, errors, addressing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest

from tests.integration.api_support import make_token, query
from tests.integration.api_support import rows as native_rows
from tests.integration.hrana_support import (
    err,
    execute,
    http_error,
    ok,
    pipeline,
    plain,
    post,
    rows,
    stmt,
    value,
)
from tests.support.server import ServerProcess


@pytest.fixture
def db(new_db: Callable[[], str], admin: httpx.Client) -> str:
    name = new_db()
    results, _ = pipeline(admin, name, [
        execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, n INTEGER, "
                "f REAL, b BLOB)"),
        {"type": "close"},
    ])
    ok(results[0])
    return name


def native_txid(admin: httpx.Client, db: str) -> int:
    body = admin.get(f"/v1/databases/{db}").json()
    return int(body["txid"])


# -- values and results ---------------------------------------------------------------------------
def test_values_round_trip_in_hrana_encoding(admin: httpx.Client, db: str) -> None:
    big = 2**63 - 1
    results, baton = pipeline(admin, db, [
        execute("INSERT INTO t (name, n, f, b) VALUES (?, ?, ?, ?)",
                "a", big, 1.25, b"\x00\x01\xff"),
        execute("INSERT INTO t (name, n, f, b) VALUES (?, ?, ?, ?)", "b", -(2**63), None, b""),
        execute("SELECT name, n, f, b, NULL AS z, 1e308 * 10 AS inf FROM t ORDER BY id"),
        {"type": "close"},
    ])
    assert baton is None
    first = ok(results[0])["result"]
    assert first["affected_row_count"] == 1
    assert first["last_insert_rowid"] == "1"
    assert first["rows_written"] == 1
    res = ok(results[2])["result"]
    assert [(c["name"], c["decltype"]) for c in res["cols"]] == [
        ("name", "TEXT"), ("n", "INTEGER"), ("f", "REAL"), ("b", "BLOB"), ("z", None),
        ("inf", None)]
    raw = res["rows"][0]
    assert raw[0] == {"type": "text", "value": "a"}
    assert raw[1] == {"type": "integer", "value": str(big)}
    assert raw[2] == {"type": "float", "value": 1.25}
    assert raw[3] == {"type": "blob", "base64": "AAH/"}
    assert raw[4] == {"type": "null"}
    assert raw[5] == {"type": "float", "value": float("inf")}  # sent as 1e999
    assert [plain(v) for v in res["rows"][1][:4]] == ["b", -(2**63), None, b""]
    assert res["rows_read"] == 2 and res["rows_written"] == 0
    assert res["affected_row_count"] == 0
    assert isinstance(res["query_duration_ms"], float)


def test_float_arguments_bind_as_real_and_text_as_text(admin: httpx.Client, db: str) -> None:
    results, _ = pipeline(admin, db, [
        {"type": "execute", "stmt": {"sql": "SELECT typeof(?), typeof(?), ?", "args": [
            {"type": "float", "value": 3}, {"type": "text", "value": "3"},
            {"type": "integer", "value": "-12"}]}},
    ])
    assert rows(results[0]) == [["real", "text", -12]]


def test_replication_index_is_the_txid_and_writes_take_the_native_path(
        admin: httpx.Client, db: str) -> None:
    before = native_txid(admin, db)
    results, _ = pipeline(admin, db, [execute("INSERT INTO t (name) VALUES ('ri')"),
                                      execute("SELECT count(*) FROM t")])
    assert ok(results[0])["result"]["replication_index"] == str(before + 1)
    assert ok(results[1])["result"]["replication_index"] == str(before + 1)
    assert native_txid(admin, db) == before + 1
    assert native_rows(admin, db, "SELECT name FROM t WHERE name = 'ri'") == [["ri"]]


def test_want_rows_false_returns_no_rows(admin: httpx.Client, db: str) -> None:
    results, _ = pipeline(admin, db, [execute("SELECT 1 UNION SELECT 2", want_rows=False)])
    res = ok(results[0])["result"]
    assert res["rows"] == [] and res["cols"] == [{"name": "1", "decltype": None}]


def test_positional_and_named_arguments(admin: httpx.Client, db: str) -> None:
    results, _ = pipeline(admin, db, [
        execute("SELECT ?2, ?1", "one", "two"),
        execute("SELECT :a, @b, $c", named={":a": 1, "@b": 2, "$c": 3}),
        execute("SELECT :a, @b, $c", named={"a": 1, "b": 2, "c": 3}),
        execute("SELECT :a", "positional"),
        {"type": "execute", "stmt": {"sql": "SELECT ?, :a", "args": [value(1)],
                                     "named_args": [{"name": "a", "value": value(2)}]}},
        execute("SELECT ?, ?", 1),
        execute("SELECT :missing", named={"other": 1}),
    ])
    assert rows(results[0]) == [["two", "one"]]
    assert rows(results[1]) == [[1, 2, 3]]
    assert rows(results[2]) == [[1, 2, 3]]
    assert rows(results[3]) == [["positional"]]
    err(results[4], "ARGS_BOTH_POSITIONAL_AND_NAMED")
    err(results[5], "ARGS_INVALID")
    err(results[6], "ARGS_INVALID")


def test_sqlite_errors_keep_sqlite_codes(admin: httpx.Client, db: str) -> None:
    results, _ = pipeline(admin, db, [
        execute("INSERT INTO t (name) VALUES ('dup')"),
        execute("INSERT INTO t (name) VALUES ('dup')"),
        execute("INSERT INTO t (name) VALUES (NULL)"),
        execute("SELEC 1"),
        execute("SELECT * FROM nowhere"),
        execute("SELECT 1; SELECT 2"),
        execute("ATTACH 'x.db' AS x"),
        execute("SELECT * FROM _cf_SHOAL_state"),
    ])
    ok(results[0])
    assert "UNIQUE" in err(results[1], "SQLITE_CONSTRAINT")["message"]
    err(results[2], "SQLITE_CONSTRAINT")
    assert "syntax error" in err(results[3], "SQLITE_ERROR")["message"]
    err(results[4], "SQLITE_ERROR")
    err(results[5], "SQL_MANY_STATEMENTS")
    err(results[6], "SQLITE_AUTH")
    err(results[7], "SQLITE_AUTH")


# -- stream requests -------------------------------------------------------------------------------
def test_batch_conditions(admin: httpx.Client, db: str) -> None:
    steps = [
        {"stmt": stmt("INSERT INTO t (name) VALUES ('c0')")},                              # 0 ok
        {"stmt": stmt("INSERT INTO t (name) VALUES ('c0')")},                              # 1 error
        {"condition": {"type": "ok", "step": 0}, "stmt": stmt("SELECT 'ok0'")},           # 2 runs
        {"condition": {"type": "ok", "step": 1}, "stmt": stmt("SELECT 'ok1'")},           # 3 skip
        {"condition": {"type": "error", "step": 1}, "stmt": stmt("SELECT 'err1'")},       # 4 runs
        {"condition": {"type": "not", "cond": {"type": "error", "step": 0}},
         "stmt": stmt("SELECT 'not'")},                                                   # 5 runs
        {"condition": {"type": "and", "conds": [{"type": "ok", "step": 0},
                                                {"type": "ok", "step": 1}]},
         "stmt": stmt("SELECT 'and'")},                                                   # 6 skip
        {"condition": {"type": "or", "conds": [{"type": "ok", "step": 1},
                                               {"type": "ok", "step": 2}]},
         "stmt": stmt("SELECT 'or'")},                                                    # 7 runs
        {"condition": {"type": "is_autocommit"}, "stmt": stmt("SELECT 'auto'")},          # 8 runs
        {"condition": {"type": "ok", "step": 3}, "stmt": stmt("SELECT 'skipped dep'")},   # 9 skip
        {"condition": {"type": "and", "conds": []}, "stmt": stmt("SELECT 'empty and'")},  # 10 runs
        {"condition": {"type": "or", "conds": []}, "stmt": stmt("SELECT 'empty or'")},    # 11 skip
    ]
    results, _ = pipeline(admin, db, [{"type": "batch", "batch": {"steps": steps}}],
                          path="v3/pipeline")
    res = ok(results[0])["result"]
    ran = [i for i, r in enumerate(res["step_results"]) if r is not None]
    failed = [i for i, e in enumerate(res["step_errors"]) if e is not None]
    assert ran == [0, 2, 4, 5, 7, 8, 10]
    assert failed == [1]
    assert res["step_errors"][1]["code"] == "SQLITE_CONSTRAINT"
    assert res["replication_index"] is not None


def test_batch_transaction_as_libsql_clients_send_it(admin: httpx.Client, db: str) -> None:
    def batch(*sqls: str) -> dict[str, Any]:
        steps: list[dict[str, Any]] = [{"stmt": stmt("BEGIN IMMEDIATE")}]
        for s in sqls:
            steps.append({"condition": {"type": "ok", "step": len(steps) - 1}, "stmt": stmt(s)})
        steps.append({"condition": {"type": "ok", "step": len(steps) - 1},
                      "stmt": stmt("COMMIT")})
        steps.append({"condition": {"type": "not", "cond": {"type": "ok",
                                                            "step": len(steps) - 1}},
                      "stmt": stmt("ROLLBACK")})
        return {"type": "batch", "batch": {"steps": steps}}

    before = native_txid(admin, db)
    results, _ = pipeline(admin, db, [
        batch("INSERT INTO t (name) VALUES ('bt1')", "INSERT INTO t (name) VALUES ('bt2')"),
        batch("INSERT INTO t (name) VALUES ('bt3')", "INSERT INTO t (name) VALUES ('bt1')"),
        {"type": "get_autocommit"},
    ])
    good = ok(results[0])["result"]
    assert good["step_errors"] == [None] * 5
    assert good["step_results"][4] is None  # ROLLBACK skipped
    assert good["step_results"][3]["replication_index"] == str(before + 1)
    bad = ok(results[1])["result"]
    assert bad["step_errors"][2]["code"] == "SQLITE_CONSTRAINT"
    assert bad["step_results"][3] is None and bad["step_results"][4] is not None  # rolled back
    assert ok(results[2])["is_autocommit"] is True
    assert native_rows(admin, db, "SELECT name FROM t WHERE name LIKE 'bt%' ORDER BY name") == \
        [["bt1"], ["bt2"]]
    assert native_txid(admin, db) == before + 1  # one commit for the whole batch


def test_batch_condition_naming_a_later_step_is_refused(admin: httpx.Client, db: str) -> None:
    results, _ = pipeline(admin, db, [{"type": "batch", "batch": {"steps": [
        {"condition": {"type": "ok", "step": 0}, "stmt": stmt("SELECT 1")}]}}])
    err(results[0], "BATCH_COND_BAD_STEP")


def test_sequence_runs_a_script(admin: httpx.Client, db: str) -> None:
    script = """
        CREATE TABLE s (x TEXT); -- semicolon; in a comment
        INSERT INTO s VALUES ('a;b');
        CREATE TRIGGER s_t AFTER INSERT ON s BEGIN
            UPDATE s SET x = x || '!' WHERE rowid = new.rowid;
        END;
        INSERT INTO s VALUES ('c')
    """
    results, _ = pipeline(admin, db, [
        {"type": "sequence", "sql": script},
        execute("SELECT x FROM s ORDER BY rowid"),
        {"type": "sequence", "sql": "INSERT INTO s VALUES ('d'); INSERT INTO nowhere VALUES (1); "
                                    "INSERT INTO s VALUES ('never')"},
        execute("SELECT count(*) FROM s"),
        {"type": "sequence", "sql": "BEGIN; INSERT INTO s VALUES ('tx'); ROLLBACK;"},
        execute("SELECT count(*) FROM s"),
    ])
    assert ok(results[0]) == {"type": "sequence"}
    assert rows(results[1]) == [["a;b"], ["c!"]]
    err(results[2], "SQLITE_ERROR")
    assert rows(results[3]) == [[3]]
    ok(results[4])
    assert rows(results[5]) == [[3]]


def test_describe(admin: httpx.Client, db: str) -> None:
    results, _ = pipeline(admin, db, [
        {"type": "describe", "sql": "SELECT id, name AS who FROM t WHERE n = ?3 AND name = :a "
                                    "AND f = @b AND b = $c OR id = ?"},
        {"type": "describe", "sql": "INSERT INTO t (name) VALUES (?)"},
        {"type": "describe", "sql": "EXPLAIN SELECT 1"},
        {"type": "describe", "sql": "SELECT * FROM nowhere"},
    ])
    d = ok(results[0])["result"]
    assert [p["name"] for p in d["params"]] == [None, None, "?3", ":a", "@b", "$c", None]
    assert d["cols"] == [{"name": "id", "decltype": "INTEGER"}, {"name": "who", "decltype": "TEXT"}]
    assert d["is_readonly"] is True and d["is_explain"] is False
    ins = ok(results[1])["result"]
    assert ins["is_readonly"] is False and ins["cols"] == []
    assert ok(results[2])["result"]["is_explain"] is True
    err(results[3], "SQLITE_ERROR")
    assert native_rows(admin, db, "SELECT count(*) FROM t") == [[0]]  # nothing ran


def test_store_sql_close_sql_and_sql_ids(admin: httpx.Client, db: str) -> None:
    results, baton = pipeline(admin, db, [
        {"type": "store_sql", "sql_id": 7, "sql": "SELECT ? * 2"},
        {"type": "execute", "stmt": {"sql_id": 7, "args": [value(21)]}},
        {"type": "store_sql", "sql_id": 7, "sql": "SELECT 0"},
        {"type": "batch", "batch": {"steps": [{"stmt": {"sql_id": 7, "args": [value(1)]}}]}},
        {"type": "describe", "sql_id": 7},
        {"type": "execute", "stmt": {"sql": "SELECT 1", "sql_id": 7}},
        {"type": "execute", "stmt": {}},
    ])
    assert rows(results[1]) == [[42]]
    err(results[2], "SQL_EXISTS")
    assert ok(results[3])["result"]["step_results"][0]["rows"] == [[value(2)]]
    assert len(ok(results[4])["result"]["params"]) == 1
    err(results[5], "SQL_ID_AND_SQL_GIVEN")
    err(results[6], "SQL_ID_OR_SQL_NOT_GIVEN")
    # stored SQL belongs to the stream: it is there on the next request, gone after close_sql
    results, baton = pipeline(admin, db, [
        {"type": "execute", "stmt": {"sql_id": 7, "args": [value(5)]}},
        {"type": "close_sql", "sql_id": 7},
        {"type": "close_sql", "sql_id": 7},
        {"type": "execute", "stmt": {"sql_id": 7, "args": [value(5)]}},
        {"type": "close"},
    ], baton)
    assert rows(results[0]) == [[10]]
    ok(results[1])
    ok(results[2])
    err(results[3], "SQL_NOT_FOUND")
    assert baton is None


def test_get_autocommit_close_and_requests_after_close(admin: httpx.Client, db: str) -> None:
    results, baton = pipeline(admin, db, [
        {"type": "get_autocommit"},
        execute("BEGIN"),
        {"type": "get_autocommit"},
        {"type": "close"},
        execute("SELECT 1"),
        {"type": "get_autocommit"},
    ], path="v3/pipeline")
    assert ok(results[0]) == {"type": "get_autocommit", "is_autocommit": True}
    assert ok(results[2])["is_autocommit"] is False
    assert ok(results[3]) == {"type": "close"}
    err(results[4], "STREAM_CLOSED")
    err(results[5], "STREAM_CLOSED")
    assert baton is None


def _timeless(result: dict[str, Any]) -> dict[str, Any]:
    """A pipeline entry without what differs from run to run (time, commit index)."""
    if result["type"] == "ok" and result["response"]["type"] == "execute":
        inner = dict(result["response"]["result"])
        inner.pop("query_duration_ms")
        inner.pop("replication_index")
        return {"type": "ok", "response": {"type": "execute", "result": inner}}
    return result


@pytest.mark.parametrize("sql", [
    "SELECT id, name FROM t ORDER BY id",
    "INSERT INTO t (name, n) VALUES ('once', 1)",
    "INSERT INTO t (name, n) VALUES ('twice', 2) RETURNING id, name",
    "BEGIN IMMEDIATE",
    "BEGIN",
    "COMMIT",
    "SELECT * FROM nowhere",
    "INSERT INTO t (name) VALUES (NULL)",
    "SELECT 1; SELECT 2",
])
def test_execute_and_close_in_one_request_is_a_whole_pipeline(
        admin: httpx.Client, db: str, sql: str) -> None:
    """execute + close without a baton (what a libSQL client sends for each statement
    outside a transaction) takes a shorter path on the node: its answer must be the one
    the same requests get as a longer pipeline, and nothing may outlive it (a BEGIN's
    transaction is rolled back, its write lock freed)."""
    assert query(admin, db, "DELETE FROM t").status_code == 200
    short, baton = pipeline(admin, db, [execute(sql), {"type": "close"}])
    assert baton is None
    assert query(admin, db, "DELETE FROM t").status_code == 200
    long, baton = pipeline(admin, db, [{"type": "get_autocommit"}, execute(sql),
                                       {"type": "close"}])
    assert baton is None
    assert [_timeless(r) for r in short] == [_timeless(r) for r in long[1:]]
    assert ok(short[1]) == {"type": "close"}
    # nothing held: another request writes at once, and finds no row of a rolled-back BEGIN
    results, _ = pipeline(admin, db, [execute("INSERT INTO t (name) VALUES ('after')"),
                                      {"type": "close"}])
    ok(results[0])
    assert native_rows(admin, db, "SELECT name FROM t WHERE name = 'after'") == [["after"]]


def test_cursor_streams_entries_as_json_lines(admin: httpx.Client, db: str) -> None:
    steps = [{"stmt": stmt("INSERT INTO t (name, n) VALUES ('cur', 1)")},
             {"stmt": stmt("SELECT name, n FROM t WHERE name = 'cur'")},
             {"stmt": stmt("SELECT * FROM nowhere")},
             {"condition": {"type": "ok", "step": 2}, "stmt": stmt("SELECT 'skipped'")}]
    r = post(admin, db, {"baton": None, "batch": {"steps": steps}}, "v3/cursor")
    assert r.status_code == 200, r.text
    lines = [msgspec.json.decode(line) for line in r.content.splitlines()]
    head, entries = lines[0], lines[1:]
    assert set(head) == {"baton", "base_url"} and head["baton"]
    kinds = [e["type"] for e in entries]
    assert kinds == ["step_begin", "step_end", "step_begin", "row", "step_end", "step_error"]
    assert entries[1]["affected_row_count"] == 1 and entries[1]["last_insert_rowid"] is not None
    assert entries[2]["cols"] == [{"name": "name", "decltype": "TEXT"},
                                  {"name": "n", "decltype": "INTEGER"}]
    assert entries[3]["row"] == [value("cur"), value(1)]
    assert entries[5]["step"] == 2 and entries[5]["error"]["code"] == "SQLITE_ERROR"
    # the stream goes on with the baton from the first line
    results, _ = pipeline(admin, db, [{"type": "get_autocommit"}, {"type": "close"}],
                          head["baton"], path="v3/pipeline")
    assert ok(results[0])["is_autocommit"] is True


# -- interactive transactions across requests ----------------------------------------------------
def test_transaction_across_pipelines_commits_once(admin: httpx.Client, db: str) -> None:
    before = native_txid(admin, db)
    results, baton = pipeline(admin, db, [execute("BEGIN"),
                                          execute("INSERT INTO t (name) VALUES ('x1')")])
    assert baton
    results, baton = pipeline(admin, db, [execute("INSERT INTO t (name) VALUES ('x2')"),
                                          execute("SELECT count(*) FROM t")], baton)
    assert rows(results[1]) == [[2]]
    assert native_rows(admin, db, "SELECT count(*) FROM t") == [[0]]  # not visible yet
    results, baton = pipeline(admin, db, [execute("COMMIT"), {"type": "close"}], baton)
    assert ok(results[0])["result"]["replication_index"] == str(before + 1)
    assert baton is None
    assert native_rows(admin, db, "SELECT count(*) FROM t") == [[2]]
    assert native_txid(admin, db) == before + 1


def test_rollback_and_errors_inside_a_transaction(admin: httpx.Client, db: str) -> None:
    results, baton = pipeline(admin, db, [
        execute("BEGIN IMMEDIATE"),
        execute("INSERT INTO t (name) VALUES ('keep')"),
        execute("INSERT INTO t (name) VALUES ('keep')"),
        execute("SELECT count(*) FROM t"),
        execute("BEGIN"),
        execute("SAVEPOINT sp"),
        execute("ROLLBACK"),
        {"type": "get_autocommit"},
        execute("COMMIT"),
        execute("ROLLBACK"),
    ], path="v3/pipeline")
    err(results[2], "SQLITE_CONSTRAINT")
    assert rows(results[3]) == [[1]]  # the failed statement undid only itself
    assert "within a transaction" in err(results[4], "SQLITE_ERROR")["message"]
    assert "savepoint" in err(results[5], "SQLITE_AUTH")["message"].lower()
    ok(results[6])
    assert ok(results[7])["is_autocommit"] is True
    assert "no transaction is active" in err(results[8], "SQLITE_ERROR")["message"]
    err(results[9], "SQLITE_ERROR")
    assert native_rows(admin, db, "SELECT count(*) FROM t") == [[0]]
    assert baton


def test_transaction_statements_are_found_by_sqlite_not_by_text(
        admin: httpx.Client, db: str) -> None:
    results, _ = pipeline(admin, db, [
        execute("/* hi */ begin   deferred -- comment\n transaction"),
        {"type": "get_autocommit"},
        execute("END TRANSACTION"),
        {"type": "get_autocommit"},
        execute("BEGIN; INSERT INTO t (name) VALUES ('smuggled')"),
        {"type": "get_autocommit"},
        execute("SELECT 'BEGIN'"),
    ], path="v3/pipeline")
    ok(results[0])
    assert ok(results[1])["is_autocommit"] is False
    ok(results[2])
    assert ok(results[3])["is_autocommit"] is True
    err(results[4], "SQL_MANY_STATEMENTS")
    assert ok(results[5])["is_autocommit"] is True
    assert rows(results[6]) == [["BEGIN"]]
    assert native_rows(admin, db, "SELECT count(*) FROM t") == [[0]]


def test_deferred_transaction_upgrade_conflicts_like_sqlite(
        admin: httpx.Client, db: str) -> None:
    _, a = pipeline(admin, db, [execute("BEGIN DEFERRED"), execute("SELECT count(*) FROM t")])
    pipeline(admin, db, [execute("INSERT INTO t (name) VALUES ('other')")])  # commits meanwhile
    results, a = pipeline(admin, db, [execute("INSERT INTO t (name) VALUES ('mine')"),
                                      {"type": "get_autocommit"}], a, path="v3/pipeline")
    assert "snapshot" in err(results[0], "SQLITE_BUSY")["message"]
    assert ok(results[1])["is_autocommit"] is False  # as in SQLite: roll back and retry
    pipeline(admin, db, [execute("ROLLBACK"), {"type": "close"}], a)
    # a deferred transaction that has read nothing yet upgrades freely
    _, b = pipeline(admin, db, [execute("BEGIN")])
    pipeline(admin, db, [execute("INSERT INTO t (name) VALUES ('other2')")])
    results, b = pipeline(admin, db, [execute("INSERT INTO t (name) VALUES ('mine2')"),
                                      execute("COMMIT"), {"type": "close"}], b)
    ok(results[0])
    ok(results[1])
    assert native_rows(admin, db, "SELECT name FROM t ORDER BY id") == \
        [["other"], ["other2"], ["mine2"]]


def test_a_write_transaction_holds_the_write_lock(
        start_server: Callable[..., ServerProcess]) -> None:
    node = start_server(transaction_timeout=30, busy_timeout=0.3)
    with node.client() as admin:
        admin.post("/v1/databases", json={"name": "lock"})
        pipeline(admin, "lock", [execute("CREATE TABLE t (name TEXT)")])
        _, baton = pipeline(admin, "lock", [execute("BEGIN IMMEDIATE"),
                                            execute("INSERT INTO t VALUES ('held')")])
        r = query(admin, "lock", "INSERT INTO t VALUES ('blocked')")
        assert r.status_code == 409 and r.json()["error"]["code"] == "DATABASE_BUSY"
        results, _ = pipeline(admin, "lock", [execute("INSERT INTO t VALUES ('hrana')")])
        err(results[0], "SQLITE_BUSY")  # Hrana names it as SQLite would
        assert native_rows(admin, "lock", "SELECT count(*) FROM t") == [[0]]  # readers go on
        results, _ = pipeline(admin, "lock", [execute("COMMIT"), {"type": "close"}], baton)
        ok(results[0])
        results, _ = pipeline(admin, "lock", [execute("INSERT INTO t VALUES ('after')")])
        ok(results[0])
        assert native_rows(admin, "lock", "SELECT name FROM t") == [["held"], ["after"]]


# -- tokens and addressing -------------------------------------------------------------------------
def test_read_token_reads_but_cannot_write(server: ServerProcess, admin: httpx.Client,
                                           db: str) -> None:
    _, token = make_token(admin, [db], "read")
    with server.client(token) as reader:
        results, _ = pipeline(reader, db, [
            execute("SELECT count(*) FROM t"),
            execute("INSERT INTO t (name) VALUES ('no')"),
            execute("BEGIN IMMEDIATE"),
            execute("BEGIN"),
            execute("DELETE FROM t"),
            execute("ROLLBACK"),
            {"type": "sequence", "sql": "CREATE TABLE nope (x)"},
        ])
    assert rows(results[0]) == [[0]]
    err(results[1], "SQLITE_READONLY")
    err(results[2], "SQLITE_READONLY")
    ok(results[3])
    err(results[4], "SQLITE_READONLY")
    ok(results[5])
    err(results[6], "SQLITE_READONLY")


def test_addressing_by_path_header_and_single_database_token(
        server: ServerProcess, admin: httpx.Client, db: str) -> None:
    sel = [execute("SELECT 7")]
    results, _ = pipeline(admin, db, sel)
    assert rows(results[0]) == [[7]]
    r = post(admin, None, {"requests": sel}, headers={"x-namespace": db})
    assert r.status_code == 200 and r.json()["results"][0]["type"] == "ok"
    _, token = make_token(admin, [db], "write")
    with server.client(token) as scoped:
        for path in ("v2/pipeline", "v3/pipeline", "db/v2/pipeline"):  # root; slashless db URL
            r = scoped.post("/" + path, json={"requests": sel})
            assert r.status_code == 200, (path, r.text)
        r = scoped.post(f"/db/{db}/v2/pipeline/", json={"requests": sel})
        assert r.status_code == 200
    body = http_error(admin.post("/db/v2/pipeline", json={"requests": sel}), 400,
                      "DATABASE_REQUIRED")
    assert "slash" in body["message"]
    http_error(post(admin, None, {"requests": sel}), 400, "DATABASE_REQUIRED")
    http_error(post(admin, "nosuchdb", {"requests": sel}), 404, "DATABASE_NOT_FOUND")
    http_error(post(admin, "Bad..Name", {"requests": sel}), 400, "INVALID_NAME")
    other = admin.post("/v1/databases", json={"name": db + "-other"}).json()["name"]
    with server.client(token) as scoped:
        http_error(post(scoped, other, {"requests": sel}), 403, "FORBIDDEN")
        http_error(scoped.post("/v2/pipeline", json={"requests": sel},
                               headers={"x-namespace": other}), 403, "FORBIDDEN")


def test_auth_errors_have_hrana_shape(server: ServerProcess, db: str) -> None:
    body = {"requests": [execute("SELECT 1")]}
    with httpx.Client(base_url=server.url) as anon:
        http_error(anon.post(f"/db/{db}/v2/pipeline", json=body), 401, "UNAUTHORIZED")
    with server.client("not-a-token") as forged:
        http_error(forged.post(f"/db/{db}/v2/pipeline", json=body), 401, "TOKEN_INVALID")


def test_version_endpoints(server: ServerProcess, db: str) -> None:
    with httpx.Client(base_url=server.url) as anon:  # clients probe these without a token
        for path in ("/v2", "/v3", f"/db/{db}/v2", f"/db/{db}/v3", "/db/v3"):
            r = anon.get(path)
            assert r.status_code == 200 and "Hrana" in r.text, path
        assert anon.get("/version").text.startswith("shoal ")
        assert anon.get("/v3-protobuf").status_code == 404  # clients then fall back to JSON
        assert anon.get(f"/db/{db}/v3-protobuf").status_code == 404


# -- HTTP API v1 and the legacy endpoint -----------------------------------------------------------
def test_v1_execute_and_batch(admin: httpx.Client, db: str) -> None:
    r = post(admin, db, {"stmt": stmt("INSERT INTO t (name) VALUES (?)", "v1")}, "v1/execute")
    assert r.status_code == 200 and r.json()["result"]["affected_row_count"] == 1
    r = post(admin, db, {"batch": {"steps": [
        {"stmt": stmt("BEGIN")},
        {"condition": {"type": "ok", "step": 0}, "stmt": stmt("SELECT name FROM t")},
        {"condition": {"type": "ok", "step": 1},
         "stmt": stmt("INSERT INTO t (name) VALUES ('v1')")},
    ]}}, "v1/batch")
    assert r.status_code == 200
    result = r.json()["result"]
    assert result["step_results"][1]["rows"] == [[value("v1")]]
    assert result["step_errors"][2]["code"] == "SQLITE_CONSTRAINT"
    r = post(admin, db, {"stmt": stmt("SELECT * FROM nowhere")}, "v1/execute")
    http_error(r, 400, "SQLITE_ERROR")
    # a transaction left open by a v1 batch is rolled back with its one-request stream
    r = post(admin, db, {"batch": {"steps": [
        {"stmt": stmt("BEGIN")}, {"stmt": stmt("INSERT INTO t (name) VALUES ('left open')")}]}},
        "v1/batch")
    assert r.status_code == 200
    assert native_rows(admin, db, "SELECT name FROM t") == [["v1"]]


def test_legacy_statements_endpoint(admin: httpx.Client, db: str) -> None:
    r = admin.post(f"/db/{db}", json={"statements": [
        "INSERT INTO t (name, n) VALUES ('legacy', 5)",
        {"q": "SELECT name, n FROM t WHERE n = :n", "params": {":n": 5}},
        {"q": "SELECT ? + 1 AS x", "params": [1]},
    ]})
    assert r.status_code == 200, r.text
    assert r.json() == [None, {"results": {"columns": ["name", "n"], "rows": [["legacy", 5]]}},
                        {"results": {"columns": ["x"], "rows": [[2]]}}]
    r = admin.post("/", headers={"x-namespace": db}, json={"statements": [
        "INSERT INTO t (name) VALUES ('legacy2')", "INSERT INTO t (name) VALUES ('legacy')"]})
    http_error(r, 400, "SQLITE_CONSTRAINT")
    assert native_rows(admin, db, "SELECT count(*) FROM t") == [[1]]  # all or nothing
    r = admin.post(f"/db/{db}", json={"statements": ["BEGIN"]})
    http_error(r, 403, "SQLITE_AUTH")


# -- idempotency ----------------------------------------------------------------------------------
def test_idempotency_key_applies_a_pipeline_once(admin: httpx.Client, db: str) -> None:
    body = {"requests": [execute("INSERT INTO t (name) VALUES ('once')"), {"type": "close"}]}
    headers = {"Idempotency-Key": f"k-{db}"}
    first = post(admin, db, body, headers=headers)
    second = post(admin, db, body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert native_rows(admin, db, "SELECT count(*) FROM t") == [[1]]
    other = {"requests": [execute("INSERT INTO t (name) VALUES ('twice')")]}
    r = post(admin, db, other, headers=headers)
    assert r.status_code == 422 and r.json()["code"] == "IDEMPOTENCY_KEY_REUSED"


def test_idempotency_key_covers_a_batch_transaction(admin: httpx.Client, db: str) -> None:
    steps = [{"stmt": stmt("BEGIN IMMEDIATE")},
             {"condition": {"type": "ok", "step": 0},
              "stmt": stmt("INSERT INTO t (name) VALUES ('b1')")},
             {"condition": {"type": "ok", "step": 1},
              "stmt": stmt("INSERT INTO t (name) VALUES ('b2')")},
             {"condition": {"type": "ok", "step": 2}, "stmt": stmt("COMMIT")},
             {"condition": {"type": "not", "cond": {"type": "ok", "step": 3}},
              "stmt": stmt("ROLLBACK")}]
    body = {"requests": [{"type": "batch", "batch": {"steps": steps}}, {"type": "close"}]}
    headers = {"Idempotency-Key": f"kb-{db}"}
    first = post(admin, db, body, headers=headers)
    second = post(admin, db, body, headers=headers)
    assert first.status_code == 200 and first.json() == second.json()
    assert native_rows(admin, db, "SELECT count(*) FROM t") == [[2]]
    assert first.json()["results"][0]["response"]["result"]["step_results"][4] is None


def test_idempotency_key_refuses_a_second_commit(admin: httpx.Client, db: str) -> None:
    body = {"requests": [execute("INSERT INTO t (name) VALUES ('c1')"),
                         execute("INSERT INTO t (name) VALUES ('c2')")]}
    results, _ = pipeline(admin, db, body["requests"],
                          headers={"Idempotency-Key": f"kc-{db}"})
    err(results[0], "IDEMPOTENCY_SCOPE")  # SQL follows: the response cannot be recorded
    ok(results[1])  # the last SQL work: recorded with its commit
    assert native_rows(admin, db, "SELECT name FROM t") == [["c2"]]
    results, _ = pipeline(admin, db, [execute("BEGIN"), execute("INSERT INTO t (name) "
                                      "VALUES ('c3')"), execute("COMMIT"), execute("SELECT 1")],
                          headers={"Idempotency-Key": f"kd-{db}"})
    err(results[2], "IDEMPOTENCY_SCOPE")  # the refused COMMIT rolls the transaction back
    assert native_rows(admin, db, "SELECT count(*) FROM t") == [[1]]


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, "INVALID_JSON"),
    (b"", 400, "INVALID_JSON"),
    (b"[]", 400, "HRANA_PROTO_ERROR"),
    (b'{"requests": {}}', 400, "HRANA_PROTO_ERROR"),
    (b'{"requests": [{"type": "frobnicate"}]}', 400, "HRANA_PROTO_ERROR"),
    (b'{"requests": [{"stmt": {"sql": "SELECT 1"}}]}', 400, "HRANA_PROTO_ERROR"),
    (b'{"requests": [{"type": "execute"}]}', 400, "HRANA_PROTO_ERROR"),
    (b'{"requests": [{"type": "execute", "stmt": {"sql": 5}}]}', 400, "HRANA_PROTO_ERROR"),
    (b'{"requests": [{"type": "execute", "stmt": {"sql": "SELECT ?", "args": [1]}}]}', 400,
     "HRANA_PROTO_ERROR"),
    (b'{"requests": [{"type": "execute", "stmt": {"sql": "SELECT ?", "args": '
     b'[{"type": "integer", "value": true}]}}]}', 400, "HRANA_PROTO_ERROR"),
    (b'{"requests": [{"type": "execute", "stmt": {"sql": "SELECT ?", "args": '
     b'[{"type": "date", "value": "2024"}]}}]}', 400, "HRANA_PROTO_ERROR"),
    (b'{"requests": [{"type": "batch", "batch": {"steps": [{"condition": {"type": "maybe"},'
     b' "stmt": {"sql": "SELECT 1"}}]}}]}', 400, "HRANA_PROTO_ERROR"),
    (b'{"baton": 5, "requests": []}', 400, "HRANA_PROTO_ERROR"),
])
def test_malformed_pipelines_are_refused_and_the_node_keeps_serving(
        admin: httpx.Client, db: str, body: bytes, status: int, code: str) -> None:
    r = admin.post(f"/db/{db}/v2/pipeline", content=body,
                   headers={"content-type": "application/json"})
    http_error(r, status, code)
    results, _ = pipeline(admin, db, [execute("SELECT 1")])
    assert rows(results[0]) == [[1]]


def test_wrong_value_contents_fail_only_their_request(admin: httpx.Client, db: str) -> None:
    results, _ = pipeline(admin, db, [
        {"type": "execute", "stmt": {"sql": "SELECT ?", "args": [
            {"type": "integer", "value": "x"}]}},
        {"type": "execute", "stmt": {"sql": "SELECT ?", "args": [
            {"type": "integer", "value": "99999999999999999999"}]}},
        {"type": "execute", "stmt": {"sql": "SELECT ?", "args": [
            {"type": "blob", "base64": "!!"}]}},
        {"type": "execute", "stmt": {"sql": "SELECT ?", "args": [
            {"type": "blob", "base64": "AAE"}]}},
        {"type": "execute", "stmt": {"sql": "SELECT 1", "unknown_field": True}},
    ])
    err(results[0], "ARGS_INVALID")
    err(results[1], "ARGS_INVALID")
    err(results[2], "ARGS_INVALID")
    assert rows(results[3]) == [[b"\x00\x01"]]  # unpadded base64 is fine
    assert rows(results[4]) == [[1]]  # unknown fields are ignored (forward compatibility)


def test_large_batches_run(admin: httpx.Client, db: str) -> None:
    """@libsql/client sends batches of thousands of steps (a bulk insert, a migration):
    they run, in every form that carries a batch, their bodies decoded a step at a time."""
    n = 10_000
    inserts = [{"stmt": stmt("INSERT INTO t (name) VALUES (?)", f"n{i}", want_rows=False),
                "condition": {"type": "ok", "step": i}} for i in range(n)]
    steps = [{"stmt": stmt("BEGIN IMMEDIATE")}, *inserts,
             {"stmt": stmt("COMMIT"), "condition": {"type": "ok", "step": n}}]
    results, _ = pipeline(admin, db, [{"type": "batch", "batch": {"steps": steps}},
                                      {"type": "close"}])
    batch = ok(results[0])["result"]
    assert batch["step_errors"] == [None] * (n + 2)
    assert [r["affected_row_count"] for r in batch["step_results"][1:-1]] == [1] * n
    r = post(admin, db, {"statements": [f"INSERT INTO t (name) VALUES ('legacy{i}')"
                                        for i in range(n)]}, path="")
    assert r.status_code == 200 and len(r.json()) == n, r.text[:300]
    reads = [{"stmt": stmt("SELECT count(*) FROM t WHERE name LIKE ?", f"{p}%")}
             for p in ("n", "legacy")] + [{"stmt": stmt("SELECT ?", i)} for i in range(3000)]
    r = post(admin, db, {"batch": {"steps": reads}}, path="v1/batch")
    assert r.status_code == 200, r.text[:300]
    answers = [plain(x["rows"][0][0]) for x in r.json()["result"]["step_results"]]
    assert answers == [n, n, *range(3000)]
    r = post(admin, db, {"baton": None, "batch": {"steps": reads}}, path="v3/cursor")
    ends = [line for line in r.text.splitlines() if '"step_end"' in line]
    assert r.status_code == 200 and len(ends) == len(reads), r.text[:300]


def test_huge_batches_and_bodies_are_refused(server: ServerProcess, admin: httpx.Client,
                                             db: str) -> None:
    over = 100_001  # max_statements is 100,000
    steps = [{"stmt": stmt("SELECT 1")}] * over
    results, _ = pipeline(admin, db, [{"type": "batch", "batch": {"steps": steps}}])
    err(results[0], "TOO_MANY_STATEMENTS")
    r = post(admin, db, {"requests": [execute("SELECT 1")] * over})
    http_error(r, 400, "TOO_MANY_STATEMENTS")
    r = post(admin, db, {"requests": [{"type": "sequence", "sql": "SELECT 1;" * over}]})
    err(r.json()["results"][0], "TOO_MANY_STATEMENTS")
    r = post(admin, db, {"statements": ["SELECT 1"] * over}, path="")
    http_error(r, 400, "TOO_MANY_STATEMENTS")
    big = "x" * (8 * 1024 * 1024 + 1)
    r = post(admin, db, {"requests": [execute("SELECT ?", big)]})
    http_error(r, 413, "PAYLOAD_TOO_LARGE")
    results, _ = pipeline(admin, db, [
        execute("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 200000) "
                "SELECT i, printf('%080d', i) FROM c"),
        execute("SELECT 2"),
    ])
    err(results[0], "RESPONSE_TOO_LARGE")
    err(results[1], "RESPONSE_TOO_LARGE")  # the response is spent: nothing more runs


# -- branches --------------------------------------------------------------------------------------
def test_branch_urls(admin: httpx.Client, db: str) -> None:
    pipeline(admin, db, [execute("INSERT INTO t (name) VALUES ('before fork')")])
    r = admin.post(f"/v1/databases/{db}/branches", json={"name": "dev"})
    assert r.status_code == 201, r.text
    results, baton = pipeline(admin, f"{db}/branches/dev", [
        execute("INSERT INTO t (name) VALUES ('on dev')"),
        execute("SELECT name FROM t ORDER BY id")])
    assert rows(results[1]) == [["before fork"], ["on dev"]]
    assert native_rows(admin, db, "SELECT name FROM t") == [["before fork"]]  # main untouched
    http_error(post(admin, db, {"baton": baton, "requests": [execute("SELECT 1")]}), 400,
               "BATON_INVALID")  # a stream stays on its branch
    results, _ = pipeline(admin, f"{db}/branches/nope", [execute("SELECT 1")])
    err(results[0], "BRANCH_NOT_FOUND")
