"""The Hrana protocol's JSON structures (libSQL), its values and its error codes.

Hrana is the protocol of libSQL's clients (@libsql/client, drizzle, Prisma's
adapter, Python's libsql-client). Requests decode into msgspec types, which
ignore unknown fields as the spec asks for forward compatibility; a body of the
wrong shape is a protocol error. Engine results arrive in the native API's
lossless encoding (``shoal.values``) and leave as Hrana values::

    {"type": "null"}   {"type": "integer", "value": "42"}   {"type": "float", "value": 1.5}
    {"type": "text", "value": "a"}   {"type": "blob", "base64": "AAE="}
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Union

import apsw
import msgspec

from shoal.engine.connection import Result
from shoal.errors import CODES as SHOAL_CODES
from shoal.errors import ShoalError
from shoal.values import INT64_MAX, INT64_MIN, SQLValue


# -- values ----------------------------------------------------------------------------------
class NullValue(msgspec.Struct, tag="null", tag_field="type"):
    pass


class IntegerValue(msgspec.Struct, tag="integer", tag_field="type"):
    value: str | int


class FloatValue(msgspec.Struct, tag="float", tag_field="type"):
    value: float


class TextValue(msgspec.Struct, tag="text", tag_field="type"):
    value: str


class BlobValue(msgspec.Struct, tag="blob", tag_field="type"):
    base64: str


Value = Union[NullValue, IntegerValue, FloatValue, TextValue, BlobValue]  # noqa: UP007


class NamedArg(msgspec.Struct):
    name: str
    value: Value


class Stmt(msgspec.Struct):
    sql: str | None = None
    sql_id: int | None = None
    args: list[Value] | None = None
    named_args: list[NamedArg] | None = None
    want_rows: bool | None = None
    replication_index: str | int | None = None  # sqld extension; one node is always current


# -- batches ---------------------------------------------------------------------------------
class OkCond(msgspec.Struct, tag="ok", tag_field="type"):
    step: int


class ErrorCond(msgspec.Struct, tag="error", tag_field="type"):
    step: int


class NotCond(msgspec.Struct, tag="not", tag_field="type"):
    cond: BatchCond


class AndCond(msgspec.Struct, tag="and", tag_field="type"):
    conds: list[BatchCond]


class OrCond(msgspec.Struct, tag="or", tag_field="type"):
    conds: list[BatchCond]


class IsAutocommitCond(msgspec.Struct, tag="is_autocommit", tag_field="type"):
    pass


BatchCond = Union[OkCond, ErrorCond, NotCond, AndCond, OrCond, IsAutocommitCond]  # noqa: UP007


class BatchStep(msgspec.Struct):
    stmt: Stmt
    condition: BatchCond | None = None


class Batch(msgspec.Struct):
    steps: list[BatchStep]
    replication_index: str | int | None = None


# -- stream requests (HTTP pipelines; WebSocket requests add stream_id) ---------------------
class CloseReq(msgspec.Struct, tag="close", tag_field="type"):
    pass


class ExecuteReq(msgspec.Struct, tag="execute", tag_field="type"):
    stmt: Stmt


class BatchReq(msgspec.Struct, tag="batch", tag_field="type"):
    batch: Batch


class SequenceReq(msgspec.Struct, tag="sequence", tag_field="type"):
    sql: str | None = None
    sql_id: int | None = None


class DescribeReq(msgspec.Struct, tag="describe", tag_field="type"):
    sql: str | None = None
    sql_id: int | None = None


class StoreSqlReq(msgspec.Struct, tag="store_sql", tag_field="type"):
    sql_id: int
    sql: str


class CloseSqlReq(msgspec.Struct, tag="close_sql", tag_field="type"):
    sql_id: int


class GetAutocommitReq(msgspec.Struct, tag="get_autocommit", tag_field="type"):
    pass


StreamRequest = Union[  # noqa: UP007
    CloseReq, ExecuteReq, BatchReq, SequenceReq, DescribeReq, StoreSqlReq, CloseSqlReq,
    GetAutocommitReq,
]


class PipelineBody(msgspec.Struct):
    requests: list[StreamRequest]
    baton: str | None = None


class CursorBody(msgspec.Struct):
    batch: Batch
    baton: str | None = None


class ExecuteBody(msgspec.Struct):
    """HTTP API v1 ``POST /v1/execute``: one statement on a fresh stream."""

    stmt: Stmt


class BatchBody(msgspec.Struct):
    """HTTP API v1 ``POST /v1/batch``: one batch on a fresh stream."""

    batch: Batch


class LegacyStatement(msgspec.Struct):
    q: str
    params: list[Any] | dict[str, Any] | None = None


class LegacyBody(msgspec.Struct):
    """sqld's oldest API, ``POST /`` with ``{"statements": [...]}``: one transaction."""

    statements: list[str | LegacyStatement]


# -- WebSocket messages (subprotocols hrana1, hrana2, hrana3; JSON) ----------------------------
class OpenStreamReq(msgspec.Struct, tag="open_stream", tag_field="type"):
    stream_id: int


class CloseStreamReq(msgspec.Struct, tag="close_stream", tag_field="type"):
    stream_id: int


class WsExecuteReq(msgspec.Struct, tag="execute", tag_field="type"):
    stream_id: int
    stmt: Stmt


class WsBatchReq(msgspec.Struct, tag="batch", tag_field="type"):
    stream_id: int
    batch: Batch


class OpenCursorReq(msgspec.Struct, tag="open_cursor", tag_field="type"):
    stream_id: int
    cursor_id: int
    batch: Batch


class CloseCursorReq(msgspec.Struct, tag="close_cursor", tag_field="type"):
    cursor_id: int


class FetchCursorReq(msgspec.Struct, tag="fetch_cursor", tag_field="type"):
    cursor_id: int
    max_count: int


class WsSequenceReq(msgspec.Struct, tag="sequence", tag_field="type"):
    stream_id: int
    sql: str | None = None
    sql_id: int | None = None


class WsDescribeReq(msgspec.Struct, tag="describe", tag_field="type"):
    stream_id: int
    sql: str | None = None
    sql_id: int | None = None


class WsGetAutocommitReq(msgspec.Struct, tag="get_autocommit", tag_field="type"):
    stream_id: int


WsRequest = Union[  # noqa: UP007
    OpenStreamReq, CloseStreamReq, WsExecuteReq, WsBatchReq, OpenCursorReq, CloseCursorReq,
    FetchCursorReq, WsSequenceReq, WsDescribeReq, StoreSqlReq, CloseSqlReq, WsGetAutocommitReq,
]


class HelloMsg(msgspec.Struct, tag="hello", tag_field="type"):
    jwt: str | None = None


class RequestMsg(msgspec.Struct, tag="request", tag_field="type"):
    request_id: int
    request: WsRequest


ClientMsg = Union[HelloMsg, RequestMsg]  # noqa: UP007


# -- errors ----------------------------------------------------------------------------------
# Hrana's own error codes (the protocol leaves codes to the server; these follow sqld's):
# code -> (HTTP status when the whole request fails, hint). docs/hrana.md lists them.
CODES: dict[str, tuple[int, str]] = {
    "HRANA_PROTO_ERROR": (400, "The body is not a Hrana message of the expected shape."),
    "BATON_INVALID": (400, "Send the baton from the previous response on this stream."),
    "BATON_REUSED": (400, "A baton is good for one request; use the newest one."),
    "STREAM_EXPIRED": (400, "The stream sat idle past transaction_timeout or the server "
                            "restarted; open a new stream (baton null)."),
    "STREAM_CLOSED": (400, "The stream was closed; open a new one (baton null)."),
    "STREAM_NOT_FOUND": (400, "Open the stream with open_stream first."),
    "STREAM_EXISTS": (400, "Close the stream id before opening it again."),
    "CURSOR_NOT_FOUND": (400, "Open the cursor with open_cursor first."),
    "CURSOR_EXISTS": (400, "Close the cursor id before opening it again."),
    "SQL_NOT_FOUND": (400, "Store the SQL text with store_sql before using its sql_id."),
    "SQL_EXISTS": (400, "Close the sql_id with close_sql before storing it again."),
    "SQL_ID_AND_SQL_GIVEN": (400, "Send either sql or sql_id, not both."),
    "SQL_ID_OR_SQL_NOT_GIVEN": (400, "Send sql or sql_id."),
    "SQL_MANY_STATEMENTS": (400, "Send one statement per execute; use sequence for scripts."),
    "ARGS_INVALID": (400, "Arguments must match the statement's parameters."),
    "ARGS_BOTH_POSITIONAL_AND_NAMED": (400, "Send args or named_args, not both."),
    "BATCH_COND_BAD_STEP": (400, "A condition may only name an earlier step of its batch."),
    "TRANSACTION_TIMEOUT": (400, "The transaction sat idle past transaction_timeout and was "
                                 "rolled back."),
    "DATABASE_REQUIRED": (400, "Name the database: http://HOST/db/NAME/ (with the trailing "
                               "slash), the x-namespace header, or a token for one database."),
    "IDEMPOTENCY_SCOPE": (400, "With an Idempotency-Key a request may commit once, as its "
                               "last SQL work."),
    "NOT_SUPPORTED": (400, "Not supported by this server."),
}

def codes_table() -> str:
    """The Markdown table of CODES that docs/hrana.md carries (a unit test keeps it current)."""
    rows = ["| code | HTTP | when / what to do |", "|---|---|---|"]
    rows += [f"| `{code}` | {status} | {hint} |" for code, (status, hint) in CODES.items()]
    return "\n".join(rows)


# Shoal codes whose Hrana spelling differs (sqld's, or SQLite's for what SQLite would say).
_RENAMED = {
    "MULTIPLE_STATEMENTS": "SQL_MANY_STATEMENTS",
    "INVALID_ARGUMENT": "ARGS_INVALID",
    "TRANSACTION_EXPIRED": "TRANSACTION_TIMEOUT",
    "DATABASE_BUSY": "SQLITE_BUSY",
    "READ_ONLY": "SQLITE_READONLY",
    "SQL_NOT_ALLOWED": "SQLITE_AUTH",
}


class HranaError(Exception):
    """An error in Hrana's shape, ``{"message", "code"}``."""

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self._status = status

    @property
    def status(self) -> int:
        if self._status is not None:
            return self._status
        if self.code in CODES:
            return CODES[self.code][0]
        return ShoalError(self.code, self.message).status

    def obj(self) -> dict[str, str]:
        return {"message": self.message, "code": self.code}

    def body(self) -> dict[str, Any]:
        """An HTTP error body: Hrana's Error at the top, Shoal's envelope beside it."""
        hint = CODES.get(self.code, SHOAL_CODES.get(self.code, (0, "")))[1]
        envelope: dict[str, Any] = {"code": self.code, "message": self.message}
        if hint:
            envelope["hint"] = hint
        return {"message": self.message, "code": self.code, "error": envelope}


def from_shoal(exc: ShoalError) -> HranaError:
    """A Shoal error as Hrana shows it: SQLite codes as they are, a few renamed."""
    return HranaError(_RENAMED.get(exc.code, exc.code), exc.message,
                      exc.status if exc.code in SHOAL_CODES else None)


def protocol_error(exc: msgspec.ValidationError | msgspec.DecodeError) -> HranaError:
    if isinstance(exc, msgspec.ValidationError):
        return HranaError("HRANA_PROTO_ERROR", f"not a valid Hrana message: {exc}")
    return HranaError("INVALID_JSON", f"body is not valid JSON: {exc}", 400)


# -- values in ---------------------------------------------------------------------------------
def to_sql(value: Value) -> SQLValue:
    """A Hrana value as a value SQLite binds."""
    t = type(value)
    if t is TextValue:
        return value.value  # type: ignore[union-attr]
    if t is IntegerValue:
        raw = value.value  # type: ignore[union-attr]
        try:
            n = int(raw)
        except ValueError:
            raise HranaError("ARGS_INVALID", f"integer value {str(raw)[:40]!r} is not a decimal "
                                             "integer") from None
        if not INT64_MIN <= n <= INT64_MAX:
            raise HranaError("ARGS_INVALID", f"integer {str(raw)[:40]} does not fit in 64 bits")
        return n
    if t is FloatValue:
        return float(value.value)  # type: ignore[union-attr]
    if t is BlobValue:
        text = value.base64  # type: ignore[union-attr]
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise HranaError("ARGS_INVALID", "blob value is not valid base64") from None
    return None


def strip_prefix(name: str) -> str:
    """SQLite names keep their prefix (":a"); apsw binds by the bare name."""
    return name[1:] if name[:1] in (":", "@", "$") else name


# -- values out --------------------------------------------------------------------------------
# Results are built from msgspec Structs (the value types above double as output types):
# on a point read that is half the cost of building and encoding dicts.
_NULL = NullValue()
_INF = msgspec.Raw(b"1e999")  # JSON has no infinity; JSON parsers read this as one
_NEG_INF = msgspec.Raw(b"-1e999")


class StmtResult(msgspec.Struct):
    """Hrana's StmtResult with sqld's extensions (rows_read, rows_written, ...)."""

    cols: Any  # list of {"name", "decltype"}, as cached JSON
    rows: list[list[Any]]
    affected_row_count: int
    last_insert_rowid: str | None
    replication_index: str | None
    rows_read: int
    rows_written: int
    query_duration_ms: float


def from_native(v: Any) -> Any:
    """One value of an engine result row (native JSON encoding) as a Hrana value."""
    t = type(v)
    if t is str:
        return TextValue(v)
    if t is int:
        return IntegerValue(str(v))
    if v is None:
        return _NULL
    if t is float:
        return FloatValue(v)
    if "base64" in v:
        return BlobValue(v["base64"])
    if "integer" in v:
        return IntegerValue(v["integer"])
    return FloatValue(_INF if v["float"] == "Infinity" else _NEG_INF)  # type: ignore[arg-type]


_cols_cache: dict[tuple[tuple[str, ...], tuple[str | None, ...]], msgspec.Raw] = {}
_NO_COLS = msgspec.Raw(b"[]")


def _cols(result: Result) -> msgspec.Raw:
    key = (tuple(result.columns), tuple(result.decltypes))
    cols = _cols_cache.get(key)
    if cols is None:
        if len(_cols_cache) >= 1024:
            _cols_cache.clear()
        cols = _cols_cache[key] = msgspec.Raw(msgspec.json.encode(
            [{"name": n, "decltype": d} for n, d in zip(*key, strict=True)]))
    return cols


def stmt_result(result: Result | None, want_rows: bool, rows_read: int, rows_written: int,
                txid: int | None, duration_ms: float) -> StmtResult:
    """A StmtResult; ``result`` is None for a transaction statement (no columns, no rows)."""
    index = None if txid is None else str(txid)
    ms = round(duration_ms, 3)
    if result is None:
        return StmtResult(_NO_COLS, [], 0, None, index, rows_read, rows_written, ms)
    rows = [[from_native(v) for v in row] for row in result.rows] if want_rows else []
    rowid = None if result.last_insert_rowid is None else str(result.last_insert_rowid)
    return StmtResult(_cols(result), rows, result.rows_affected, rowid, index, rows_read,
                      rows_written, ms)


# -- scripts -----------------------------------------------------------------------------------
def split_script(text: str) -> list[str]:
    """Cut a script into statements where SQLite's own tokenizer says one ends.

    ``sqlite3_complete`` knows string literals, comments and trigger bodies, so a
    semicolon inside any of them never splits. Empty pieces are dropped.
    """
    out: list[str] = []
    start = 0
    at = text.find(";")
    while at != -1:
        piece = text[start:at + 1]
        if apsw.complete(piece):
            out.append(piece)
            start = at + 1
        at = text.find(";", at + 1)
    tail = text[start:]
    if tail.strip():
        out.append(tail)
    return out
