"""The error envelope, the code -> HTTP status table, the SQLite code mapping, and that
Shoal's source sends no code the table lacks."""

from __future__ import annotations

import ast
import errno
import re
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from shoal.errors import (
    Code,
    ShoalError,
    disk_errors,
    disk_full,
    from_sqlite,
    sqlite_names,
)
from shoal.server.hrana_proto import HranaError

SRC = Path(__file__).resolve().parents[2] / "src" / "shoal"

EXPECTED_STATUS = {
    "INVALID_JSON": 400,
    "TOO_MANY_TRANSACTIONS": 429,
    "TOO_MANY_SUBSCRIPTIONS": 429,
    "CURSOR_EXPIRED": 410,
    "REPLICA_EXPIRED": 410,
    "SYNC_PUSH_UNSUPPORTED": 409,
    "WEBHOOK_NOT_FOUND": 404,
    "TABLE_NOT_FOUND": 404,
    "QUERY_NOT_FOUND": 404,
    "RULES_BOUND": 403,
    "RULE_DENIED": 403,
    "INVALID_RULE": 400,
    "UNKNOWN_COLUMN": 400,
    "DEAD_LETTER_NOT_FOUND": 404,
    "TOO_MANY_WEBHOOKS": 409,
    "QUOTA_EXCEEDED": 429,
    "RATE_LIMITED": 429,
    "DATABASE_FULL": 507,
    "OVERLOADED": 503,
    "INVALID_REQUEST": 400,
    "INVALID_NAME": 400,
    "INVALID_ARGUMENT": 400,
    "TOO_MANY_STATEMENTS": 400,
    "MULTIPLE_STATEMENTS": 400,
    "PAYLOAD_TOO_LARGE": 413,
    "RESPONSE_TOO_LARGE": 400,
    "STATEMENT_TIMEOUT": 400,
    "REQUEST_TIMEOUT": 408,
    "HEADERS_TOO_LARGE": 431,
    "TOO_MANY_CONNECTIONS": 503,
    "OUT_OF_MEMORY": 503,
    "UNAUTHORIZED": 401,
    "TOKEN_INVALID": 401,
    "TOKEN_EXPIRED": 401,
    "TOKEN_REVOKED": 401,
    "ISSUER_NOT_TRUSTED": 401,
    "FORBIDDEN": 403,
    "READ_ONLY": 403,
    "BRANCH_NOT_GRANTED": 403,
    "PROVISION_ONLY": 403,
    "SQL_NOT_ALLOWED": 403,
    "ORIGIN_NOT_ALLOWED": 403,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "DATABASE_NOT_FOUND": 404,
    "TOKEN_NOT_FOUND": 404,
    "TRANSACTION_NOT_FOUND": 404,
    "DATABASE_EXISTS": 409,
    "DATABASE_BUSY": 409,
    "TRANSACTION_EXPIRED": 410,
    "TRANSACTION_ABORTED": 410,
    "IDEMPOTENCY_KEY_REUSED": 422,
    "BRANCH_NOT_FOUND": 404,
    "BRANCH_EXISTS": 409,
    "OUTSIDE_HISTORY": 400,
    "HISTORY_DISABLED": 409,
    "PAGE_SIZE_UNSUPPORTED": 409,
    "DISK_FULL": 507,
    "STORAGE_UNAVAILABLE": 503,
    "LEADER_UNAVAILABLE": 503, "CLAIMED": 409,
    "STORAGE_CORRUPT": 500,
    "DATA_DIR_CONFLICT": 500,
    "STORE_IN_USE": 500,
    "STORE_UNUSABLE": 500,
    "INTERNAL": 500,
}


@pytest.mark.parametrize(("code", "status"), sorted(EXPECTED_STATUS.items()))
def test_status_of_each_documented_code(code: str, status: int) -> None:
    assert ShoalError(code, "m").status == status


def test_every_code_in_the_table_is_stable_and_has_a_hint() -> None:
    for code in Code:
        assert code.value == code.name and str(code) == code.name  # the wire string
        assert re.fullmatch(r"[A-Z][A-Z_]*", code)
        assert 400 <= code.status <= 599
        assert not (code.sqlite and code.hrana)
        if code.sqlite:
            continue
        assert code.hint.strip(), code
        if not code.hrana:
            assert code in EXPECTED_STATUS, f"{code} is new: add it to this test"


def test_every_sqlite_result_code_that_is_an_error_is_a_code() -> None:
    """from_sqlite passes SQLite's primary result code names through: each one must be a
    Code (an apsw upgrade that adds one fails here, not in a request)."""
    names = {k for k in apsw.mapping_result_codes if isinstance(k, str)}
    errors = names - {"SQLITE_OK", "SQLITE_ROW", "SQLITE_DONE"}
    assert errors <= set(Code.__members__)
    assert {c.name for c in Code if c.sqlite} == errors


@pytest.mark.parametrize("make", [ShoalError, HranaError])
def test_an_unknown_code_cannot_be_made(make: type[Exception]) -> None:
    with pytest.raises(KeyError):
        make("SOMETHING_UNKNOWN", "m")
    assert make("DATABASE_BUSY", "m").code is Code.DATABASE_BUSY  # a known name is its member


def test_idempotency_scope_is_a_code_with_its_status_and_hint() -> None:
    """Raised as a ShoalError inside the engine's commit (Hrana's idempotent pipelines)."""
    err = ShoalError(Code.IDEMPOTENCY_SCOPE, "m")
    assert (err.status, err.body()["error"]["hint"]) == (400, Code.IDEMPOTENCY_SCOPE.hint)
    assert Code.IDEMPOTENCY_SCOPE.hrana


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("SQLITE_CONSTRAINT", 400),
        ("SQLITE_ERROR", 400),
        ("SQLITE_MISMATCH", 400),
        ("SQLITE_RANGE", 400),
        ("SQLITE_TOOBIG", 400),
        ("SQLITE_BUSY", 409),
        ("SQLITE_LOCKED", 409),
        ("SQLITE_READONLY", 403),
        ("SQLITE_AUTH", 403),
        ("SQLITE_IOERR", 500),
        ("SQLITE_CORRUPT", 500),
        ("SQLITE_CANTOPEN", 500),
        ("SQLITE_NOTADB", 500),
    ],
)
def test_status_of_sqlite_codes(code: str, status: int) -> None:
    assert ShoalError(code, "m").status == status


def test_body_carries_code_message_default_hint_and_extras() -> None:
    body = ShoalError("DATABASE_BUSY", "busy", statement=2).body()
    assert body == {"error": {
        "code": "DATABASE_BUSY", "message": "busy", "hint": Code.DATABASE_BUSY.hint,
        "statement": 2,
    }}


def test_body_hint_override_and_empty_hint() -> None:
    assert ShoalError("INTERNAL", "m", hint="look here").body()["error"]["hint"] == "look here"
    assert "hint" not in ShoalError("INTERNAL", "m", hint="").body()["error"]
    assert "hint" not in ShoalError("SQLITE_ERROR", "m").body()["error"]


# -- mapping real SQLite failures ------------------------------------------------------------


@pytest.fixture
def conn() -> Iterator[apsw.Connection]:
    c = apsw.Connection(":memory:")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, u TEXT UNIQUE, n TEXT NOT NULL, "
              "c INTEGER CHECK (c > 0), p INTEGER REFERENCES t(id))")
    c.execute("PRAGMA foreign_keys=ON")
    yield c
    c.close()


@pytest.mark.parametrize(
    ("sql", "primary", "extended"),
    [
        ("INSERT INTO t(id, n) VALUES (1, 'a'), (1, 'b')", "SQLITE_CONSTRAINT",
         "SQLITE_CONSTRAINT_PRIMARYKEY"),
        ("INSERT INTO t(u, n) VALUES ('x', 'a'), ('x', 'b')", "SQLITE_CONSTRAINT",
         "SQLITE_CONSTRAINT_UNIQUE"),
        ("INSERT INTO t(n) VALUES (NULL)", "SQLITE_CONSTRAINT", "SQLITE_CONSTRAINT_NOTNULL"),
        ("INSERT INTO t(n, c) VALUES ('a', 0)", "SQLITE_CONSTRAINT", "SQLITE_CONSTRAINT_CHECK"),
        ("INSERT INTO t(n, p) VALUES ('a', 99)", "SQLITE_CONSTRAINT",
         "SQLITE_CONSTRAINT_FOREIGNKEY"),
        ("SELECT * FROM nowhere", "SQLITE_ERROR", "SQLITE_ERROR"),
        ("SELEC 1", "SQLITE_ERROR", "SQLITE_ERROR"),
    ],
)
def test_sqlite_errors_map_by_name_with_the_extended_name(
        conn: apsw.Connection, sql: str, primary: str, extended: str) -> None:
    with pytest.raises(apsw.Error) as info:
        conn.execute(sql)
    assert sqlite_names(info.value) == (primary, extended)
    err = from_sqlite(info.value, statement=3)
    assert err.code == primary
    assert err.status == 400
    body = err.body()["error"]
    assert body["code"] == primary
    assert body["extended_code"] == extended
    assert body["statement"] == 3
    assert body["message"] == str(info.value)


def test_busy_maps_to_409(tmp_path: Path) -> None:
    path = f"{tmp_path}/busy.db"
    a, b = apsw.Connection(path), apsw.Connection(path)
    try:
        a.execute("PRAGMA journal_mode=WAL")
        a.execute("CREATE TABLE t(x)")
        a.execute("BEGIN IMMEDIATE")
        with pytest.raises(apsw.BusyError) as info:
            b.execute("BEGIN IMMEDIATE")
        err = from_sqlite(info.value)
        assert err.code == "SQLITE_BUSY"
        assert err.status == 409
        assert "statement" not in err.body()["error"]
        a.execute("ROLLBACK")
    finally:
        a.close()
        b.close()


def test_too_big_keeps_its_sqlite_name_with_a_hint_naming_the_settings() -> None:
    c = apsw.Connection(":memory:")
    c.limit(apsw.SQLITE_LIMIT_LENGTH, 1000)
    with pytest.raises(apsw.TooBigError) as info:
        c.execute("SELECT zeroblob(5000)")
    err = from_sqlite(info.value, statement=1)
    assert (err.code, err.status) == ("SQLITE_TOOBIG", 400)
    hint = err.body()["error"]["hint"]
    assert hint == Code.SQLITE_TOOBIG.hint
    assert "max_value_bytes" in hint and "max_sql_bytes" in hint


def test_sqlite_out_of_memory_is_out_of_memory_503() -> None:
    """SQLite's hard heap limit (process-wide: set for the statement, then lifted again)."""
    c = apsw.Connection(":memory:")
    before = apsw.hard_heap_limit(64 << 20)
    try:
        with pytest.raises(apsw.NoMemError) as info:
            c.execute("SELECT length(randomblob(200000000))")
    finally:
        apsw.hard_heap_limit(before)
    err = from_sqlite(info.value)
    assert (err.code, err.status) == ("OUT_OF_MEMORY", 503)
    assert err.body()["error"]["extended_code"] == "SQLITE_NOMEM"


def test_an_exception_without_codes_is_sqlite_error() -> None:
    assert sqlite_names(apsw.Error("bare")) == ("SQLITE_ERROR", "SQLITE_ERROR")


# -- a full disk -------------------------------------------------------------------------------


def test_sqlite_full_is_disk_full_507_with_its_sqlite_names() -> None:
    c = apsw.Connection(":memory:")
    c.execute("CREATE TABLE t(b); PRAGMA max_page_count = 4")  # SQLite's way to say "full"
    with pytest.raises(apsw.FullError) as info:
        c.execute("INSERT INTO t VALUES (randomblob(100000))")
    err = from_sqlite(info.value, statement=0)
    assert (err.code, err.status) == ("DISK_FULL", 507)
    body = err.body()["error"]
    assert body["extended_code"] == "SQLITE_FULL" and body["statement"] == 0
    assert body["hint"] == Code.DISK_FULL.hint
    assert disk_full(info.value) is not None


def _shm_not_grown() -> apsw.IOError:
    """What a WAL commit fails with on a full disk when the -shm needs another page."""
    exc = apsw.IOError("disk I/O error")
    exc.result, exc.extendedresult = apsw.SQLITE_IOERR, apsw.SQLITE_IOERR_SHMSIZE
    return exc


@pytest.mark.parametrize("exc", [
    _shm_not_grown(),
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    ShoalError("DISK_FULL", "m"),
])
def test_no_space_from_the_os_is_disk_full(exc: BaseException) -> None:
    full = disk_full(exc)
    assert full is not None and full.code == "DISK_FULL"
    with pytest.raises(ShoalError) as info, disk_errors():
        raise exc
    assert info.value.code == "DISK_FULL"


@pytest.mark.parametrize("exc", [OSError(errno.EIO, "I/O error"), apsw.IOError("io"),
                                 ShoalError("STORAGE_UNAVAILABLE", "m"), ValueError("v")])
def test_other_failures_pass_through_disk_errors(exc: BaseException) -> None:
    assert disk_full(exc) is None
    with pytest.raises(type(exc)) as info, disk_errors():
        raise exc
    assert info.value is exc


def test_a_store_error_raised_from_a_full_disk_is_disk_full() -> None:
    """A folder store's StorageUnavailable keeps the OSError as its cause: the node's disk
    is full, not the store unreachable."""
    from shoal.storage.base import StorageUnavailable

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise StorageUnavailable("k", "put k failed") from exc
    except StorageUnavailable as exc:
        full = disk_full(exc)
    assert full is not None and full.code == Code.DISK_FULL
    assert disk_full(StorageUnavailable("k", "timed out")) is None


# -- no code outside the table -----------------------------------------------------------------


def _calls(tree: ast.AST) -> Iterator[tuple[ast.Call, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(
                fn, ast.Attribute) else ""
            if name in ("ShoalError", "HranaError"):
                yield node, name


def _sources() -> list[Path]:
    # the client package reads codes a server sent, as strings: it imports nothing of the
    # server (no apsw), so not this enum either
    return [p for p in sorted(SRC.rglob("*.py")) if "client" not in p.relative_to(SRC).parts]


def test_every_error_made_in_the_source_names_a_member_of_code() -> None:
    """Each ShoalError / HranaError in src/ passes its code as ``Code.X`` (X a member) or as
    an expression mypy checks to be a Code, never a string literal; and no code is compared
    with a string literal. mypy checks the rest (``ShoalError.__init__`` takes a Code)."""
    found, bad = 0, []
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for call, name in _calls(tree):
            found += 1
            first = call.args[0] if call.args else None
            where = f"{path.relative_to(SRC)}:{call.lineno} {name}"
            if isinstance(first, ast.Constant):
                bad.append(f"{where}: a literal code {first.value!r}")
            elif isinstance(first, ast.Attribute) and isinstance(first.value, ast.Name) \
                    and first.value.id == "Code" and first.attr not in Code.__members__:
                bad.append(f"{where}: Code.{first.attr} is not a member")
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(
                    isinstance(side, ast.Attribute) and side.attr == "code"
                    for side in [node.left, *node.comparators]) and any(
                    isinstance(side, ast.Constant) and isinstance(side.value, str)
                    for side in [node.left, *node.comparators]):
                bad.append(f"{path.relative_to(SRC)}:{node.lineno}: .code compared with a "
                           f"string literal")
    assert found > 150  # the walk sees the source's errors
    assert bad == []
