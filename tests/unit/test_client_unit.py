"""shoal.client and shoal.dbapi without a server: values, SQL splitting, URLs, errors, requests.

The HTTP side runs against httpx.MockTransport, which records what the client sends.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import enum
import functools
import json
import math
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal import dbapi
from shoal.client import (
    AlreadyExists,
    AsyncClient,
    AuthError,
    Busy,
    Client,
    ClientError,
    ConnectionFailed,
    InvalidRequest,
    NotFound,
    ServerError,
    SQLError,
    Timeout,
    TransactionExpired,
    first_keyword,
    from_json,
    parse_url,
    split_sql,
    to_json,
    transaction_control,
)
from shoal.client.calls import peek_bookmark
from shoal.client.codec import args_json, statement_json
from shoal.client.errors import error_class

sql_values = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
)


# -- the package: what it may import ------------------------------------------------------------
CLIENT_PACKAGE = Path(__file__).resolve().parents[2] / "src" / "shoal" / "client"


def test_the_client_imports_without_apsw() -> None:
    """An application installs the client beside its own code: with apsw (the server's
    SQLite) impossible to import, the client, the DB-API module and the CLI still load, and
    the client alone loads nothing of the server nor the DB-API (no cycle)."""
    code = (
        "import sys\n"
        "sys.modules['apsw'] = None  # any import of apsw now raises ImportError\n"
        "import shoal.client\n"
        "print(sorted(m for m in sys.modules if m.startswith('shoal')))\n"
        "import shoal.dbapi, shoal.cli\n"
        "assert 'apsw' not in sys.modules or sys.modules['apsw'] is None\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.replace("'", '"')))
    assert loaded == {"shoal", "shoal.wire", "shoal.client"} | {
        f"shoal.client.{f.stem}" for f in CLIENT_PACKAGE.glob("*.py") if f.stem != "__init__"}


def test_the_client_package_imports_only_itself_and_wire() -> None:
    """Read, not run: an import inside a function (how client <-> dbapi was a cycle) counts."""
    outside: list[str] = []
    for source in sorted(CLIENT_PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            outside += [f"{source.name}: {name}" for name in names
                        if name.startswith("shoal") and name not in ("shoal", "shoal.wire")
                        and not name.startswith("shoal.client")]
    assert outside == []


# -- values ------------------------------------------------------------------------------------
@given(sql_values)
def test_value_round_trip_through_json_text(value: Any) -> None:
    wire = msgspec.json.decode(msgspec.json.encode(to_json(value)))
    back = from_json(wire)
    assert type(back) is type(value)
    assert back == value


def test_value_encoding_forms() -> None:
    assert to_json(2**53) == 2**53
    assert to_json(2**53 + 1) == {"integer": str(2**53 + 1)}
    assert to_json(-(2**63)) == {"integer": str(-(2**63))}
    assert to_json(b"\x00\xff") == {"base64": "AP8="}
    assert to_json(bytearray(b"ab")) == to_json(memoryview(b"ab")) == {"base64": "YWI="}
    assert to_json(math.inf) == {"float": "Infinity"}
    assert to_json(-math.inf) == {"float": "-Infinity"}
    assert to_json(math.nan) is None  # SQLite stores NaN as NULL
    assert to_json(True) == 1 and to_json(False) == 0

    class Color(enum.IntEnum):
        RED = 7

    assert to_json(Color.RED) == 7 and type(to_json(Color.RED)) is int


def test_unsupported_values_are_refused() -> None:
    with pytest.raises(TypeError, match="unsupported value type"):
        to_json(object())
    with pytest.raises(TypeError, match="not a single value"):
        args_json("abc")
    with pytest.raises(ValueError, match="not an encoded SQL value"):
        from_json({"what": 1})


def test_statement_json_shapes() -> None:
    assert statement_json("SELECT 1") == "SELECT 1"
    assert statement_json(("SELECT 1", None)) == "SELECT 1"
    assert statement_json(("SELECT ?", (1, b"\x01"))) == {
        "sql": "SELECT ?", "args": [1, {"base64": "AQ=="}]}
    assert statement_json(("SELECT :a", {"a": 2**60})) == {
        "sql": "SELECT :a", "args": {"a": {"integer": str(2**60)}}}


# -- SQL text ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("script", "expected"), [
    ("SELECT 1", ["SELECT 1"]),
    ("SELECT 1; SELECT 2;", ["SELECT 1;", "SELECT 2;"]),
    ("SELECT ';'; SELECT \"a;b\" ; -- c;\n", ["SELECT ';';", 'SELECT "a;b" ;']),
    ("/* ; */ SELECT 1;;", ["/* ; */ SELECT 1;"]),
    ("-- only a comment\n;", []),
    ("CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = 1; DELETE FROM u; END; SELECT 2",
     ["CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = 1; DELETE FROM u; END;",
      "SELECT 2"]),
    ("", []),
])
def test_split_sql(script: str, expected: list[str]) -> None:
    assert split_sql(script) == expected


def test_first_keyword_skips_comments() -> None:
    assert first_keyword("  -- note\n /* x */ insert into t values (1)") == "INSERT"
    assert first_keyword("BEGIN;") == "BEGIN"
    assert first_keyword("-- nothing") == ""


@pytest.mark.parametrize(("sql", "control"), [
    ("BEGIN", "BEGIN"), ("begin immediate;", "BEGIN"), ("COMMIT", "COMMIT"),
    ("END TRANSACTION", "COMMIT"), ("-- c\nrollback", "ROLLBACK"),
    ("ROLLBACK TO SAVEPOINT a", None), ("rollback transaction to a", None),
    ("SELECT 'BEGIN'", None), ("SAVEPOINT a", None),
])
def test_transaction_control(sql: str, control: str | None) -> None:
    assert transaction_control(sql) == control


# -- URLs --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "expected"), [
    ("http://h:8080", ("http://h:8080", None, None)),
    ("http://h:8080/", ("http://h:8080", None, None)),
    ("https://h/db/orders", ("https://h", "orders", None)),
    ("http://h/prefix/db/orders/", ("http://h/prefix", "orders", None)),
    ("http://h/db/orders/branches/preview-42", ("http://h", "orders", "preview-42")),
    ("http://h:1/p/db/orders/branches/b_1/", ("http://h:1/p", "orders", "b_1")),
    ("shoal://h:8080/orders", ("http://h:8080", "orders", None)),
    ("shoals://h/orders", ("https://h", "orders", None)),
    ("shoal://h:8080", ("http://h:8080", None, None)),
    ("shoal://h/orders/branches/preview-42", ("http://h", "orders", "preview-42")),
    ("shoals://h/orders/branches/b/", ("https://h", "orders", "b")),
    ("shoal://h/db/orders/branches/b", ("http://h", "orders", "b")),  # the long form too
    ("  HTTP://h/db/x  ", ("http://h", "x", None)),
])
def test_parse_url(url: str, expected: tuple[str, str | None, str | None]) -> None:
    assert parse_url(url) == expected
    assert parse_url(url).branch == expected[2]


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://h/x", "unsupported URL"),
    ("libsql://h/db/x", "unsupported URL"),
    ("http:///db/x", "has no host"),
    ("shoal:///orders", "has no host"),
    ("http://h/db/orders/branches/", "only /branches/BRANCH may follow"),
    ("http://h/db/orders/branch/b", "only /branches/BRANCH may follow"),
    ("http://h/db/orders/v2/pipeline", "only /branches/BRANCH may follow"),
])
def test_parse_url_refuses_other_forms(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_url(url)


@pytest.mark.parametrize(("url", "kwargs", "call", "path"), [
    # the URL's database and branch
    ("http://h/db/o/branches/pr", {}, {}, "/v1/databases/o/branches/pr/query"),
    ("shoal://h/o/branches/pr", {}, {}, "/v1/databases/o/branches/pr/query"),
    # arguments to the client, then to the call, win over the URL
    ("http://h/db/o", {"branch": "pr"}, {}, "/v1/databases/o/branches/pr/query"),
    ("http://h", {"database": "o", "branch": "pr"}, {}, "/v1/databases/o/branches/pr/query"),
    ("http://h/db/o/branches/pr", {"branch": "b2"}, {}, "/v1/databases/o/branches/b2/query"),
    ("http://h/db/o/branches/pr", {}, {"branch": "b3"}, "/v1/databases/o/branches/b3/query"),
    ("http://h/db/o/branches/pr", {}, {"branch": "main"}, "/v1/databases/o/query"),
    # a branch belongs to its database: another database is its main
    ("http://h/db/o/branches/pr", {}, {"database": "other"}, "/v1/databases/other/query"),
    ("http://h/db/o/branches/pr", {"database": "other"}, {}, "/v1/databases/other/query"),
    ("http://h/db/o/branches/pr", {}, {"database": "o"}, "/v1/databases/o/branches/pr/query"),
    ("http://h/db/o", {}, {"database": "x", "branch": "y"}, "/v1/databases/x/branches/y/query"),
    # main is the plain path, as before branches existed
    ("http://h/db/o/branches/main", {}, {}, "/v1/databases/o/query"),
])
def test_where_a_query_goes(url: str, kwargs: dict[str, str], call: dict[str, str],
                            path: str) -> None:
    seen: list[httpx.Request] = []
    with Client(url, "t", transport=_mock(seen, _answer(200, _query_body())), **kwargs) as c:
        c.execute("SELECT 1", **call)
        c.batch(["SELECT 1"], **call)
    assert [r.url.path for r in seen] == [path, path]


def test_a_branch_needs_a_database() -> None:
    with pytest.raises(ValueError, match="needs a database"):
        Client("http://h", branch="pr")
    with pytest.raises(ValueError, match="needs a database"):
        dbapi.connect("http://h", branch="pr")


def test_every_data_call_follows_the_branch() -> None:
    """Transactions, usage, history, compact, restore and branch info reach the client's
    branch; database-level calls (info, limits, the branch list) do not take one."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/transactions"):
            return httpx.Response(201, json={"id": "tx_1", "mode": "write", "expires_at": "t"})
        if request.url.path.endswith("/query"):
            return httpx.Response(200, json=_query_body())
        return httpx.Response(200, json={"branches": [], "committed": True})

    with Client("http://h/db/o/branches/pr", "t", transport=_mock(seen, handle)) as c:
        assert c.resolve() == ("o", "pr") and c.resolve("x") == ("x", "main")
        with c.transaction() as tx:
            tx.execute("SELECT 1")
        assert (tx.database, tx.branch) == ("o", "pr")
        c.usage()
        c.history()
        c.compact()
        c.restore(bookmark="bm")
        c.branch()
        c.branch("other")
        c.history(branch="main")
        c.database()
        c.limits()
        c.list_branches()
    br = "/v1/databases/o/branches/pr"
    assert [(r.method, r.url.path) for r in seen] == [
        ("POST", br + "/transactions"), ("POST", br + "/transactions/tx_1/query"),
        ("POST", br + "/transactions/tx_1/commit"), ("GET", br + "/usage"),
        ("GET", br + "/history"), ("POST", br + "/compact"), ("POST", "/v1/databases/o/restore"),
        ("GET", br), ("GET", "/v1/databases/o/branches/other"),
        ("GET", "/v1/databases/o/history"), ("GET", "/v1/databases/o"),
        ("GET", "/v1/databases/o/limits"), ("GET", "/v1/databases/o/branches")]
    assert _body(seen[6]) == {"branch": "pr", "bookmark": "bm"}


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_URL", "http://example.test:9/db/envdb")
    monkeypatch.setenv("SHOAL_TOKEN", "env-token")
    seen: list[httpx.Request] = []
    with Client(transport=_mock(seen, _answer(200, _query_body()))) as c:
        c.execute("SELECT 1")
    assert str(seen[0].url) == "http://example.test:9/v1/databases/envdb/query"
    assert seen[0].headers["authorization"] == "Bearer env-token"


def test_no_database_is_a_clear_error() -> None:
    with Client("http://h", "t") as c, pytest.raises(ValueError, match="no database"):
        c.execute("SELECT 1")
    with Client("http://h/db/keep", "t") as c, pytest.raises(ValueError, match="needs the"):
        c.delete_database("")  # the default database is never deleted by accident


# -- requests against a mock transport ---------------------------------------------------------
Handler = Callable[[httpx.Request], httpx.Response]


def _mock(seen: list[httpx.Request], handler: Handler) -> httpx.MockTransport:
    def record(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return handler(request)

    return httpx.MockTransport(record)


def _answer(status: int, body: Any) -> Handler:
    return lambda request: httpx.Response(status, json=body)


def _query_body(*results: dict[str, Any], txid: int = 3) -> dict[str, Any]:
    empty = {"columns": [], "decltypes": [], "rows": [], "rows_affected": 0,
             "last_insert_rowid": None}
    return {"results": list(results) or [empty],
            "meta": {"rows_read": 1, "rows_written": 0, "duration_ms": 0.1, "txid": txid,
                     "bookmark": "bm"}}


def _body(request: httpx.Request) -> Any:
    return json.loads(request.content)


def test_execute_sends_statement_and_decodes_rows() -> None:
    seen: list[httpx.Request] = []
    result_json = {"columns": ["b", "n", "f"], "decltypes": ["BLOB", None, "REAL"],
                   "rows": [[{"base64": "AAE="}, {"integer": "9007199254740993"},
                             {"float": "-Infinity"}], [None, 1, 2.5]],
                   "rows_affected": 0, "last_insert_rowid": {"integer": str(2**62)}}
    with Client("http://h:1/db/d", "tok", transport=_mock(
            seen, _answer(200, _query_body(result_json, txid=9)))) as c:
        result = c.execute("SELECT ?, ?", [b"\x00", 2**60], idempotency_key="k-1")
    request = seen[0]
    assert request.method == "POST"
    assert request.headers["idempotency-key"] == "k-1"
    assert request.headers["authorization"] == "Bearer tok"
    assert _body(request) == {"statements": [{"sql": "SELECT ?, ?", "args": [
        {"base64": "AA=="}, {"integer": str(2**60)}]}]}
    assert result.rows == [(b"\x00\x01", 2**53 + 1, -math.inf), (None, 1, 2.5)]
    assert result.columns == ["b", "n", "f"] and result.decltypes == ["BLOB", None, "REAL"]
    assert result.last_insert_rowid == 2**62
    assert (result.txid, result.bookmark) == (9, "bm")
    assert result.to_json()["rows"] == result_json["rows"]


def test_batch_sends_one_request_and_skips_empty() -> None:
    seen: list[httpx.Request] = []
    empty = _query_body()["results"][0]
    with Client("http://h", "t", database="d",
                transport=_mock(seen, _answer(200, _query_body(empty, empty)))) as c:
        assert c.batch([]) == []
        results = c.batch(["SELECT 1", ("SELECT :x", {"x": "y"})], database="other")
    assert len(seen) == 1 and len(results) == 2
    assert seen[0].url.path == "/v1/databases/other/query"
    assert _body(seen[0])["statements"] == ["SELECT 1", {"sql": "SELECT :x", "args": {"x": "y"}}]


@pytest.mark.parametrize(("status", "code", "kind"), [
    (401, "TOKEN_EXPIRED", AuthError),
    (403, "READ_ONLY", AuthError),
    (404, "DATABASE_NOT_FOUND", NotFound),
    (409, "DATABASE_EXISTS", AlreadyExists),
    (409, "DATABASE_BUSY", Busy),
    (409, "SQLITE_BUSY", Busy),
    (400, "STATEMENT_TIMEOUT", Timeout),
    (410, "TRANSACTION_EXPIRED", TransactionExpired),
    (400, "SQLITE_CONSTRAINT", SQLError),
    (400, "MULTIPLE_STATEMENTS", InvalidRequest),
    (422, "IDEMPOTENCY_KEY_REUSED", InvalidRequest),
    (500, "INTERNAL", ServerError),
])
def test_errors_are_typed_and_carry_the_envelope(status: int, code: str,
                                                 kind: type[ClientError]) -> None:
    envelope = {"error": {"code": code, "message": "m", "hint": "h", "statement": 1,
                          "extended_code": code + "_X"}}
    with Client("http://h/db/d", "t", transport=_mock([], _answer(status, envelope))) as c, \
            pytest.raises(kind) as caught:
        c.execute("SELECT 1")
    err = caught.value
    assert (err.code, err.message, err.hint, err.status) == (code, "m", "h", status)
    assert (err.statement, err.extended_code) == (1, code + "_X")
    assert str(err) == f"{code}: m (statement 1)"


def test_a_body_that_is_not_the_envelope_still_gives_a_typed_error() -> None:
    def bad_gateway(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>bad gateway</html>")

    with Client("http://h/db/d", transport=_mock([], bad_gateway)) as c, \
            pytest.raises(ServerError) as caught:
        c.execute("SELECT 1")
    assert caught.value.code == "HTTP_502" and "bad gateway" in caught.value.message


@pytest.mark.parametrize(("exc", "kind", "code"), [
    (httpx.ConnectError("refused"), ConnectionFailed, "CONNECTION_ERROR"),
    (httpx.ReadTimeout("slow"), Timeout, "CLIENT_TIMEOUT"),
])
def test_transport_failures_are_typed(exc: Exception, kind: type[ClientError], code: str) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    with Client("http://h/db/d", transport=httpx.MockTransport(fail)) as c, \
            pytest.raises(kind) as caught:
        c.execute("SELECT 1")
    assert caught.value.code == code and caught.value.status is None


def _pages(names: list[str]) -> Handler:
    """Serve the database list as the server does: limit/cursor, next_cursor."""

    def handle(request: httpx.Request) -> httpx.Response:
        limit = int(request.url.params["limit"])
        cursor = request.url.params.get("cursor")
        rest = [n for n in names if cursor is None or n > cursor][:limit]
        page = {"databases": [{"name": n, "created_at": "t"} for n in rest],
                "next_cursor": rest[-1] if len(rest) == limit else None}
        return httpx.Response(200, json=page)

    return handle


def test_list_databases_follows_pagination() -> None:
    names = [f"db{i:02d}" for i in range(7)]
    seen: list[httpx.Request] = []
    with Client("http://h", "t", transport=_mock(seen, _pages(names))) as c:
        assert [d["name"] for d in c.list_databases(page_size=3)] == names
        assert len(seen) == 3
        assert [d["name"] for d in c.list_databases(limit=4, page_size=3)] == names[:4]
        assert seen[-1].url.params["limit"] == "1"  # asks only for what is still missing


def _token_pages(request: httpx.Request) -> httpx.Response:
    """The token list as the server may serve it: a filtered page can be short (even
    empty) and still have a next_cursor."""
    pages = {None: (["tok_1", "tok_2"], "tok_2"), "tok_2": ([], "tok_5"),
             "tok_5": (["tok_6"], None)}
    found, cursor = pages[request.url.params.get("cursor")]
    return httpx.Response(200, json={"tokens": [{"id": t} for t in found],
                                     "next_cursor": cursor})


def test_tokens_sends_the_filters_and_follows_short_pages() -> None:
    seen: list[httpx.Request] = []
    with Client("http://h", "t", transport=_mock(seen, _token_pages)) as c:
        assert [t["id"] for t in c.tokens()] == ["tok_1", "tok_2", "tok_6"]
        assert [r.url.path for r in seen] == ["/v1/tokens"] * 3
        assert dict(seen[0].url.params) == {"limit": "100"}
        assert seen[1].url.params["cursor"] == "tok_2"
        seen.clear()
        c.tokens("orders", expired=True, revoked=True, page_size=5)
        assert dict(seen[0].url.params) == {"database": "orders", "include": "expired,revoked",
                                            "limit": "5"}
        seen.clear()
        assert [t["id"] for t in c.tokens(revoked=True, limit=1)] == ["tok_1"]
        assert len(seen) == 1 and dict(seen[0].url.params) == {"include": "revoked",
                                                                "limit": "1"}

    async def main() -> None:
        async with AsyncClient("http://h", "t", transport=_mock(seen, _token_pages)) as c:
            assert [t["id"] for t in await c.tokens(expired=True)] == ["tok_1", "tok_2",
                                                                      "tok_6"]

    seen.clear()
    asyncio.run(main())
    assert seen[0].url.params["include"] == "expired"


def test_create_token_sends_patterns_provision_and_branch() -> None:
    seen: list[httpx.Request] = []
    made = {"id": "tok_1", "token": "x", "databases": ["tenant-*"], "access": "provision",
            "expires_at": "t"}
    with Client("http://h", "t", transport=_mock(seen, _answer(201, made))) as c:
        assert c.create_token(["tenant-*"], "provision") == made
        c.create_token(["tenant-a"], "write", 60, branch="preview-42", idempotency_key="k")
    assert [_body(r) for r in seen] == [
        {"databases": ["tenant-*"], "access": "provision", "expires_in": 3600},
        {"databases": ["tenant-a"], "access": "write", "expires_in": 60,
         "branch": "preview-42"}]
    assert seen[1].headers["idempotency-key"] == "k"

    async def main() -> None:
        async with AsyncClient("http://h", "t", transport=_mock(seen, _answer(201, made))) as c:
            await c.create_token("*", "read", branch="main")

    seen.clear()
    asyncio.run(main())
    assert _body(seen[0]) == {"databases": "*", "access": "read", "expires_in": 3600,
                              "branch": "main"}


def _tx_server(log: list[str], fail_rollback: bool = False) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        log.append(path.rsplit("/", 1)[-1])
        if path.endswith("/transactions"):
            return httpx.Response(201, json={"id": "tx_1", "mode": "write", "expires_at": "t"})
        if path.endswith("/commit"):
            return httpx.Response(200, json={"committed": True, "txid": 5, "bookmark": "b5"})
        if path.endswith("/rollback"):
            if fail_rollback:
                return httpx.Response(410, json={"error": {"code": "TRANSACTION_EXPIRED",
                                                           "message": "gone"}})
            return httpx.Response(200, json={"rolled_back": True})
        return httpx.Response(200, json=_query_body())

    return handle


def test_transaction_commits_on_success() -> None:
    log: list[str] = []
    seen: list[httpx.Request] = []
    with Client("http://h/db/d", transport=_mock(seen, _tx_server(log))) as c:
        with c.transaction(idempotency_key="once") as tx:
            tx.execute("INSERT INTO t VALUES (1)")
            tx.batch(["SELECT 1", "SELECT 2"])
        assert (tx.committed, tx.txid, tx.bookmark, tx.open) == (True, 5, "b5", False)
    assert log == ["transactions", "query", "query", "commit"]
    assert seen[1].url.path == "/v1/databases/d/transactions/tx_1/query"
    assert seen[-1].headers["idempotency-key"] == "once"


def test_transaction_rolls_back_on_exception() -> None:
    log: list[str] = []
    c = Client("http://h/db/d", transport=_mock([], _tx_server(log)))
    with pytest.raises(KeyError), c.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (1)")
        raise KeyError("boom")
    assert log == ["transactions", "query", "rollback"]
    with pytest.raises(RuntimeError, match="already committed or rolled back"):
        tx.execute("SELECT 1")


def test_failed_rollback_keeps_the_original_error() -> None:
    c = Client("http://h/db/d", transport=_mock([], _tx_server([], fail_rollback=True)))
    with pytest.raises(ZeroDivisionError) as caught, c.transaction():
        _ = 1 / 0
    assert any("rollback also failed" in note for note in caught.value.__notes__)


def test_async_client_shares_the_request_shapes() -> None:
    log: list[str] = []
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/databases":
            return _pages(["a", "b", "c"])(request)
        return _tx_server(log)(request)

    async def main() -> None:
        async with AsyncClient("shoal://h:1/d", "tok",
                               transport=_mock(seen, handle)) as c:
            result = await c.execute("SELECT ?", [b"x"], idempotency_key="k")
            assert result.txid == 3
            assert [d["name"] for d in await c.list_databases(page_size=2)] == ["a", "b", "c"]
            async with c.transaction() as tx:
                await tx.execute("SELECT 1")
            assert tx.txid == 5
            with pytest.raises(ValueError, match="inside"):
                async with c.transaction():
                    raise ValueError("inside")

    asyncio.run(main())
    assert seen[0].headers["idempotency-key"] == "k"
    assert _body(seen[0]) == {"statements": [{"sql": "SELECT ?", "args": [{"base64": "eA=="}]}]}
    assert log == ["query", "transactions", "query", "commit", "transactions", "rollback"]


def test_webhook_requests() -> None:
    """Paths, bodies (what is left None is left to the server; the branch is the one a query
    would reach), ids quoted; an empty id is refused, never taken for the list or for all."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            return httpx.Response(204)
        if request.url.path.endswith("/replay"):
            return httpx.Response(202, json={"replaying": ["l1"]})
        if request.url.path.endswith("/dead-letters"):
            return httpx.Response(200, json={"dead_letters": [{"id": "l1"}]})
        if request.url.path.endswith("/webhooks") and request.method == "GET":
            return httpx.Response(200, json={"webhooks": [{"id": "wh_1"}]})
        return httpx.Response(200 if request.method == "GET" else 201, json={"id": "wh_1"})

    with Client("http://h:1/db/orders/branches/preview", "tok",
                transport=_mock(seen, handle)) as c:
        assert c.create_webhook(None, "https://r/x", tables="t") == {"id": "wh_1"}
        c.create_webhook("billing", "https://r/y", ops=("delete",), batch_size=5,
                         max_attempts=2, max_age=60.5,
                         since=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
        c.create_webhook(None, "https://r/z", branch="main", since="c1")
        assert c.webhooks() == [{"id": "wh_1"}]
        assert c.webhook("billing", "wh/1") == {"id": "wh_1"}
        assert c.delete_webhook(None, "wh_1") is None
        assert c.dead_letters(None, "wh_1") == [{"id": "l1"}]
        assert c.replay_dead_letters(None, "wh_1") == ["l1"]
        assert c.replay_dead_letters(None, "wh_1", "l1") == ["l1"]
        assert c.delete_dead_letter(None, "wh_1", "l1") is None
        for call in (lambda: c.webhook(None, ""), lambda: c.delete_webhook(None, ""),
                     lambda: c.dead_letters(None, ""),
                     lambda: c.replay_dead_letters(None, "wh_1", ""),
                     lambda: c.delete_dead_letter(None, "wh_1", ""),
                     lambda: c.create_webhook(None, "https://r/", ops=[]),
                     lambda: c.create_webhook(None, "https://r/", since=datetime(2026, 1, 2))):
            with pytest.raises(ValueError):
                call()
    base = "/v1/databases/orders/webhooks"
    assert [(r.method, r.url.raw_path.decode()) for r in seen] == [
        ("POST", base), ("POST", "/v1/databases/billing/webhooks"), ("POST", base),
        ("GET", base), ("GET", "/v1/databases/billing/webhooks/wh%2F1"),
        ("DELETE", f"{base}/wh_1"), ("GET", f"{base}/wh_1/dead-letters"),
        ("POST", f"{base}/wh_1/dead-letters/replay"),
        ("POST", f"{base}/wh_1/dead-letters/l1/replay"),
        ("DELETE", f"{base}/wh_1/dead-letters/l1")]
    assert _body(seen[0]) == {"url": "https://r/x", "branch": "preview", "tables": ["t"]}
    assert _body(seen[1]) == {"url": "https://r/y", "branch": "main", "ops": ["delete"],
                              "batch_size": 5, "max_attempts": 2, "max_age": 60.5,
                              "since": "2026-01-02T03:04:05+00:00"}
    assert _body(seen[2]) == {"url": "https://r/z", "branch": "main", "since": "c1"}
    assert _body(seen[7]) == {}


# -- DB-API pieces that need no server ---------------------------------------------------------
@pytest.mark.parametrize(("code", "kind"), [
    ("SQLITE_CONSTRAINT", dbapi.IntegrityError),
    ("SQLITE_ERROR", dbapi.OperationalError),
    ("SQLITE_TOOBIG", dbapi.DataError),
    ("MULTIPLE_STATEMENTS", dbapi.ProgrammingError),
    ("INVALID_ARGUMENT", dbapi.ProgrammingError),
    ("DATABASE_NOT_FOUND", dbapi.OperationalError),
    ("READ_ONLY", dbapi.OperationalError),
    ("INTERNAL", dbapi.InternalError),
])
def test_dbapi_error_mapping(code: str, kind: type[dbapi.Error]) -> None:
    source = error_class(code, 400)(code, "msg", extended_code=code + "_X", statement=0)
    err = dbapi._translate(source)
    assert type(err) is kind and isinstance(err, dbapi.DatabaseError)
    assert (err.code, err.extended_code, err.statement) == (code, code + "_X", 0)
    assert err.__cause__ is source
    assert err.sqlite_errorname == (code + "_X" if code.startswith("SQLITE_") else None)


def test_dbapi_module_globals_and_hierarchy() -> None:
    assert (dbapi.apilevel, dbapi.threadsafety, dbapi.paramstyle) == ("2.0", 1, "qmark")
    for name in ("InterfaceError", "DatabaseError"):
        assert issubclass(getattr(dbapi, name), dbapi.Error)
    for name in ("DataError", "OperationalError", "IntegrityError", "InternalError",
                 "ProgrammingError", "NotSupportedError"):
        assert issubclass(getattr(dbapi, name), dbapi.DatabaseError)
    assert dbapi.Binary(b"x") == b"x"
    assert dbapi.DateFromTicks(0).year in (1969, 1970)


def test_dbapi_connect_needs_a_database() -> None:
    with pytest.raises(dbapi.InterfaceError, match="no database"):
        dbapi.connect("http://h:1")
    with pytest.raises(ValueError, match="isolation_level"):
        dbapi.connect("http://h:1/db/x", isolation_level="SOMETIMES")


# -- sessions: bookmarks per (database, branch) ------------------------------------------------
def _mark(database: str, branch: str, txid: int, timeline: str | None = "t1") -> str:
    """A bookmark as the server makes one (engine/database.py make_bookmark)."""
    raw = f"{database}/{branch}/{txid}" + (f"/{timeline}" if timeline else "")
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _session_server(answers: dict[str, str], header: bool = False) -> Handler:
    """A query answers with the bookmark ``answers`` holds for its path, in the body's
    meta.bookmark (as today), or in the shoal-bookmark header too (with junk in the body)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if "/transactions" in request.url.path:
            return _tx_server([])(request)
        mark = answers.get(request.url.path)
        body = _query_body()
        if not header:
            body["meta"]["bookmark"] = mark
            return httpx.Response(200, json=body)
        return httpx.Response(200, json=body, headers={"shoal-bookmark": mark} if mark else {})

    return handle


def _sent(request: httpx.Request) -> tuple[str | None, str | None]:
    return request.headers.get("shoal-bookmark"), request.headers.get("shoal-consistency")


def test_peek_bookmark_is_a_hint_that_never_fails() -> None:
    assert peek_bookmark(_mark("orders", "main", 7)) == ("orders", "main", 7, "t1")
    assert peek_bookmark(_mark("orders", "p-1", 0, None)) == ("orders", "p-1", 0, None)
    cursor = _mark("orders", "main", 7, "t1/3")  # a change feed's cursor: an index too
    assert peek_bookmark(cursor) == ("orders", "main", 7, "t1")
    for junk in ("bm", "", "!!!", base64.urlsafe_b64encode(b"a/b/x").decode(),
                 base64.urlsafe_b64encode("a/b/\u00b2".encode()).decode(),
                 base64.urlsafe_b64encode(b"\xff\xfe").decode()):
        assert peek_bookmark(junk) is None


@pytest.mark.parametrize("header", [False, True])
def test_a_bookmark_goes_only_to_its_own_database_and_branch(header: bool) -> None:
    seen: list[httpx.Request] = []
    answers = {"/v1/databases/a/query": _mark("a", "main", 4),
               "/v1/databases/a/branches/p/query": _mark("a", "p", 9),
               "/v1/databases/b/query": _mark("b", "main", 2)}
    with Client("http://h/db/a", "t",
                transport=_mock(seen, _session_server(answers, header))) as c:
        c.execute("INSERT INTO t VALUES (1)")           # nothing known yet
        c.execute("SELECT 1", database="b")              # a's bookmark is not b's
        c.execute("SELECT 1", branch="p")                # nor a/p's
        c.execute("SELECT 1")                            # a/main: its own
        c.execute("SELECT 1", database="b")
        c.execute("SELECT 1", branch="p")
        assert c.bookmark() == _mark("a", "main", 4)
        assert c.bookmark("a", "p") == _mark("a", "p", 9)
        assert c.bookmark("b") == _mark("b", "main", 2)
        assert c.bookmark("nowhere") is None
    assert [_sent(r)[0] for r in seen] == [
        None, None, None, _mark("a", "main", 4), _mark("b", "main", 2), _mark("a", "p", 9)]


def test_the_header_wins_over_the_body() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        body = _query_body()  # meta.bookmark "bm"
        return httpx.Response(200, json=body, headers={"shoal-bookmark": _mark("d", "main", 3)})

    with Client("http://h/db/d", transport=_mock(seen, handle)) as c:
        c.execute("SELECT 1")
        c.execute("SELECT 1")
    assert _sent(seen[1])[0] == _mark("d", "main", 3)


def test_the_newer_txid_is_kept_and_a_new_timeline_replaces() -> None:
    marks = iter([_mark("d", "main", 8), _mark("d", "main", 5),    # late answer: keep 8
                  _mark("d", "main", 9), _mark("d", "main", 2, "t2"),  # restored: take t2
                  "opaque", _mark("d", "main", 1)])  # unreadable: the latest received wins
    with Client("http://h/db/d", transport=_mock([], lambda request: httpx.Response(
            200, json=_query_body(), headers={"shoal-bookmark": next(marks)}))) as c:
        held = []
        for _ in range(6):
            c.execute("SELECT 1")
            held.append(c.bookmark())
    assert held == [_mark("d", "main", 8), _mark("d", "main", 8), _mark("d", "main", 9),
                    _mark("d", "main", 2, "t2"), "opaque", _mark("d", "main", 1)]


def test_session_false_sends_no_bookmark_but_still_notes_it() -> None:
    seen: list[httpx.Request] = []
    answers = {"/v1/databases/d/query": _mark("d", "main", 4)}
    with Client("http://h/db/d", session=False, bookmarks=[_mark("d", "main", 3)],
                transport=_mock(seen, _session_server(answers))) as c:
        c.execute("SELECT 1")
        c.execute("SELECT 1")
        assert c.bookmark() == _mark("d", "main", 4)
        with c.transaction():
            pass
        assert c.bookmark() == "b5"  # the commit's (unreadable: the latest received wins)
    assert all(_sent(r) == (None, None) for r in seen)


def test_strong_consistency_for_the_client_or_one_call() -> None:
    seen: list[httpx.Request] = []
    with Client("http://h/db/d", transport=_mock(seen, _tx_server([]))) as c:
        c.execute("SELECT 1")
        c.execute("SELECT 1", consistency="strong")
        with c.transaction(consistency="strong") as tx:
            tx.execute("SELECT 1")
        with pytest.raises(ValueError, match="consistency"):
            c.execute("SELECT 1", consistency="eventual")  # type: ignore[arg-type]
    with Client("http://h/db/d", consistency="strong", transport=_mock(seen, _tx_server([]))) as c:
        c.batch(["SELECT 1"])
    assert [_sent(r)[1] for r in seen] == [None, "strong", "strong", None, None, "strong"]


def test_transactions_send_the_bookmark_at_begin_and_note_the_commit() -> None:
    seen: list[httpx.Request] = []
    log: list[str] = []
    committed = _mark("d", "main", 5)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/commit"):
            return httpx.Response(200, json={"committed": True, "txid": 5,
                                             "bookmark": committed})
        return _tx_server(log)(request)

    with Client("http://h/db/d", bookmarks=[_mark("d", "main", 4)],
                transport=_mock(seen, handle)) as c:
        with c.transaction() as tx:
            tx.execute("INSERT INTO t VALUES (1)")
        assert c.bookmark() == committed == tx.bookmark
        c.execute("SELECT 1")
    assert log == ["transactions", "query", "query"]
    # the begin carries the seed; the transaction's own requests carry none (it sees what
    # its begin saw); the next query carries the commit's bookmark
    assert [_sent(r)[0] for r in seen] == [_mark("d", "main", 4), None, None, committed]


def test_remember_files_a_bookmark_under_its_own_branch() -> None:
    c = Client("http://h/db/d")
    c.remember(_mark("e", "p", 3))
    assert c.bookmark("e", "p") == _mark("e", "p", 3) and c.bookmark() is None
    c.remember(_mark("e", "p", 2))  # older: kept out
    assert c.bookmark("e", "p") == _mark("e", "p", 3)
    c.remember("opaque")  # unreadable: the client's (or the named) branch
    c.remember("opaque2", database="e", branch="q")
    assert (c.bookmark(), c.bookmark("e", "q")) == ("opaque", "opaque2")
    with pytest.raises(ValueError, match="is of e/p"):
        c.remember(_mark("e", "p", 4), database="d")
    with pytest.raises(ValueError, match="is of e/p"):
        c.remember(_mark("e", "p", 4), branch="main")
    assert Client("http://h", bookmarks=[_mark("x", "main", 1)]).bookmark("x") == \
        Client("http://h", bookmarks=_mark("x", "main", 1)).bookmark("x") == \
        _mark("x", "main", 1)  # one string is one bookmark


def test_restore_reset_and_delete_drop_what_the_session_held() -> None:
    restored = _mark("d", "main", 3, "t2")

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/restore"):
            return httpx.Response(200, json={"branch": "main", "kept_as": "k",
                                             "restored_to": {"txid": 3, "bookmark": restored}})
        if request.method == "DELETE":
            return httpx.Response(204)
        return httpx.Response(200, json={"name": "x"})

    c = Client("http://h/db/d", transport=httpx.MockTransport(handle),
               bookmarks=[_mark("d", "main", 9), _mark("d", "p", 4), _mark("e", "main", 1)])
    c.restore(bookmark=_mark("d", "main", 3))
    assert c.bookmark() == restored  # the new timeline's, not txid 9 of the old one
    c.reset_branch("p")
    assert c.bookmark(branch="p") is None
    c.remember(_mark("d", "p", 4))
    c.delete_database("d")
    assert (c.bookmark(), c.bookmark(branch="p"), c.bookmark("e")) == \
        (None, None, _mark("e", "main", 1))
    c.delete_branch("main", database="e")
    assert c.bookmark("e") is None


def test_the_async_client_keeps_a_session_too() -> None:
    seen: list[httpx.Request] = []
    answers = {"/v1/databases/d/query": _mark("d", "main", 4),
               "/v1/databases/e/query": _mark("e", "main", 6)}

    async def main() -> None:
        async with AsyncClient("http://h/db/d", consistency="strong",
                               transport=_mock(seen, _session_server(answers, True))) as c:
            await c.execute("SELECT 1")
            await c.batch(["SELECT 1"], database="e")
            await c.execute("SELECT 1")
            assert c.bookmark("e") == _mark("e", "main", 6)

    asyncio.run(main())
    assert [_sent(r) for r in seen] == [(None, "strong"), (None, "strong"),
                                        (_mark("d", "main", 4), "strong")]


def test_the_cli_is_one_session(monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """`shoal sql --bookmark B --strong --show-bookmark`: B and the strong header go out,
    the answer's bookmark comes back alone on stderr; nothing new without the flags."""
    from shoal import cli

    seen: list[httpx.Request] = []
    answered = _mark("d", "main", 8)
    handler = _session_server({"/v1/databases/d/query": answered})
    monkeypatch.setattr(cli, "Client", functools.partial(Client, transport=_mock(seen, handler)))

    def run(*argv: str) -> int:
        args = cli.build_parser().parse_args(["sql", "--url", "http://h", "--token", "t",
                                              *argv])
        return int(args.func(args))

    assert run("d", "SELECT 1", "--bookmark", _mark("d", "main", 7), "--strong",
               "--show-bookmark") == 0
    assert _sent(seen[-1]) == (_mark("d", "main", 7), "strong")
    assert capsys.readouterr().err == answered + "\n"
    assert run("d", "SELECT 1") == 0
    assert _sent(seen[-1]) == (None, None) and capsys.readouterr().err == ""
    assert run("d", "SELECT 1", "--bookmark", _mark("e", "main", 1)) == 1  # another database's
    assert "error USAGE: --bookmark: the bookmark is of e/main" in capsys.readouterr().err
