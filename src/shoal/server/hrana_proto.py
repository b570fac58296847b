"""The Hrana protocol's JSON structures (libSQL), its values and its errors.

Hrana is the protocol of libSQL's clients (@libsql/client, drizzle, Prisma's
adapter, Python's libsql-client). Requests decode into msgspec types, which
ignore unknown fields as the spec asks for forward compatibility; a body of the
wrong shape is a protocol error. Engine results arrive in the native API's
lossless encoding (``shoal.wire``) and leave as Hrana values::

    {"type": "null"}   {"type": "integer", "value": "42"}   {"type": "float", "value": 1.5}
    {"type": "text", "value": "a"}   {"type": "blob", "base64": "AAE="}
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from typing import Any, Union

import msgspec

from shoal.engine.connection import Result
from shoal.errors import Code, ShoalError
from shoal.wire import INT64_MAX, INT64_MIN, SQLValue


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


_EMPTY_STEP = BatchStep(Stmt(sql=""))


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


# -- large bodies: decoded a piece at a time -------------------------------------------------
SPLIT_BYTES = 64 * 1024  # JSON past which a body is decoded request by request


class PipelineSplit(msgspec.Struct):
    """A pipeline's outline: each request kept as raw JSON. Finding the requests' bounds
    costs about 1 ms per MB; decoding them (structs for every step, statement and value)
    about 20 ms per MB, which the handler does a request at a time, letting other work
    in between (100 batches of 1,000 steps took 55 ms in one piece)."""

    requests: list[msgspec.Raw]
    baton: str | None = None


class _Outline(msgspec.Struct):
    type: str = ""  # a request's
    baton: str | None = None  # a cursor body's


_outline = msgspec.json.Decoder(_Outline)  # skips the rest: about 1 ms per MB


def oversized_batch(raw: bytes | msgspec.Raw, limit: int, request: bool = True
                    ) -> tuple[Batch, str | None] | None:
    """For a large batch request (or cursor body, ``request=False``) of more than ``limit``
    steps: a stand-in batch of as many empty steps, and the body's baton, found without
    decoding the steps (100,000 take 55 ms). The stream refuses it (TOO_MANY_STATEMENTS)
    as it would the real one. Steps are counted by their ``"stmt":`` keys (a JSON string
    followed by a colon is a key, never a value): a client that writes ``"stmt" :``
    is counted short and decoded in full, which is only slower. Anything else: None."""
    if len(raw) <= SPLIT_BYTES:
        return None
    steps = bytes(raw).count(b'"stmt":')
    if steps <= limit:
        return None
    try:
        outline = _outline.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None  # the full decode says what is wrong
    if request and outline.type != "batch":
        return None
    return Batch([_EMPTY_STEP] * steps), outline.baton


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
# Hrana's own error codes are in shoal.errors.Code (marked ``hrana``), with every other code
# Shoal sends: docs/hrana.md lists them.
def codes_table() -> str:
    """The Markdown table of Hrana's own codes that docs/hrana.md carries (a unit test keeps
    it current)."""
    rows = ["| code | HTTP | when / what to do |", "|---|---|---|"]
    rows += [f"| `{code}` | {code.status} | {code.hint} |" for code in Code if code.hrana]
    return "\n".join(rows)


# Shoal codes whose Hrana spelling differs (sqld's, or SQLite's for what SQLite would say).
_RENAMED = {
    Code.MULTIPLE_STATEMENTS: Code.SQL_MANY_STATEMENTS,
    Code.INVALID_ARGUMENT: Code.ARGS_INVALID,
    Code.TRANSACTION_EXPIRED: Code.TRANSACTION_TIMEOUT,
    Code.DATABASE_BUSY: Code.SQLITE_BUSY,
    Code.READ_ONLY: Code.SQLITE_READONLY,
    Code.SQL_NOT_ALLOWED: Code.SQLITE_AUTH,
}


class HranaError(Exception):
    """An error in Hrana's shape, ``{"message", "code"}``; ``status`` overrides the code's
    (a renamed Shoal error keeps the status of its own code)."""

    def __init__(self, code: Code, message: str, status: int | None = None):
        super().__init__(message)
        self.code = code if isinstance(code, Code) else Code[code]
        self.message = message
        self._status = status

    @property
    def status(self) -> int:
        return self.code.status if self._status is None else self._status

    def obj(self) -> dict[str, str]:
        return {"message": self.message, "code": str(self.code)}

    def body(self) -> dict[str, Any]:
        """An HTTP error body: Hrana's Error at the top, Shoal's envelope beside it."""
        code = str(self.code)
        envelope: dict[str, Any] = {"code": code, "message": self.message}
        if self.code.hint:
            envelope["hint"] = self.code.hint
        return {"message": self.message, "code": code, "error": envelope}


def from_shoal(exc: ShoalError) -> HranaError:
    """A Shoal error as Hrana shows it: SQLite codes as they are, a few renamed (with the
    status of the code they had)."""
    return HranaError(_RENAMED.get(exc.code, exc.code), exc.message, exc.status)


@functools.cache
def _decoder(kind: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(kind)


def decode(raw: bytes | str, kind: Any) -> Any:
    """A Hrana message of this type. A wrong shape, bad JSON or JSON nested deeper than
    msgspec may go (it raises RecursionError near Python's recursion limit) is a
    HranaError, never a 500."""
    try:
        return _decoder(kind).decode(raw)
    except msgspec.ValidationError as exc:
        raise HranaError(Code.HRANA_PROTO_ERROR, f"not a valid Hrana message: {exc}") from None
    except msgspec.DecodeError as exc:
        raise HranaError(Code.INVALID_JSON, f"body is not valid JSON: {exc}", 400) from None
    except RecursionError:
        raise HranaError(Code.HRANA_PROTO_ERROR, "the message is nested too deeply") from None


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
            raise HranaError(Code.ARGS_INVALID, f"integer value {str(raw)[:40]!r} is not a decimal "
                                                "integer") from None
        if not INT64_MIN <= n <= INT64_MAX:
            raise HranaError(Code.ARGS_INVALID, f"integer {str(raw)[:40]} does not fit in 64 bits")
        return n
    if t is FloatValue:
        return float(value.value)  # type: ignore[union-attr]
    if t is BlobValue:
        text = value.base64  # type: ignore[union-attr]
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise HranaError(Code.ARGS_INVALID, "blob value is not valid base64") from None
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
# Cutting a script where SQLite would (sqlite3_complete's state machine, from complete.c): a
# semicolon ends a statement unless it is inside a string, an identifier quote, a comment
# or the body of CREATE TRIGGER (which ends at "; END ;"). Tokens: SEMI, WS (blanks and
# comments), OTHER, and the keywords EXPLAIN, CREATE, TEMP, TRIGGER, END.
_SEMI, _OTHER, _EXPLAIN, _CREATE, _TEMP, _TRIGGER, _END = 0, 2, 3, 4, 5, 6, 7
_COMPLETE = (  # state x token -> state; 1 is "a statement just ended" (WS leaves all alone)
    (1, 0, 2, 3, 4, 2, 2, 2),  # 0 start
    (1, 1, 2, 3, 4, 2, 2, 2),  # 1 a statement ended
    (1, 2, 2, 2, 2, 2, 2, 2),  # 2 a statement
    (1, 3, 3, 2, 4, 2, 2, 2),  # 3 EXPLAIN
    (1, 4, 2, 2, 2, 4, 5, 2),  # 4 CREATE [TEMP]
    (6, 5, 5, 5, 5, 5, 5, 5),  # 5 a trigger's body
    (6, 6, 5, 5, 5, 5, 5, 7),  # 6 a semicolon in it
    (1, 7, 5, 5, 5, 5, 5, 5),  # 7 "; END" in it
)
_KEYWORDS = {"explain": _EXPLAIN, "create": _CREATE, "temp": _TEMP, "temporary": _TEMP,
             "trigger": _TRIGGER, "end": _END}
_ID = "0-9A-Za-z_$\u0080-\U0010ffff"  # SQLite's identifier characters (any non-ASCII too)
_KW = rf"(?<![{_ID}])(?:explain|create|temporary|temp|trigger|end)(?![{_ID}])"
_BLANK = r"[ \t\n\r\f]++|--[^\n]*+|/\*.*?\*/"
_QUOTED = r"'[^']*+'|\"[^\"]*+\"|`[^`]*+`|\[[^\]]*+\]"
_PLAIN = r"[^;'\"`\[\-/]++|-(?!-)|/(?!\*)"  # no semicolon, quote or comment starts here
_CET = rf"[^;'\"`\[\-/cCeEtT]++|-(?!-)|/(?!\*)|(?<=[{_ID}])[cCeEtT]|(?!{_KW})[cCeEtT]"
_FLAGS = re.IGNORECASE | re.DOTALL
_BLANKS = re.compile(rf"(?:{_BLANK})*+", _FLAGS)
# What each state skips in one match (the tokens that leave it as it is), possessively:
# the work is one pass over the text, whatever the text.
_SKIP = {
    0: _BLANKS, 1: _BLANKS, 7: _BLANKS,
    2: re.compile(rf"(?:{_PLAIN}|{_BLANK}|{_QUOTED})*+", _FLAGS),
    3: re.compile(rf"(?:{_CET}|{_BLANK}|{_QUOTED})*+", _FLAGS),
    4: re.compile(rf"(?:{_BLANK}|(?<![{_ID}])temp(?:orary)?(?![{_ID}]))*+", _FLAGS),
    # semicolons that are not followed by END (and then another semicolon) stay in the body
    5: re.compile(rf"(?:{_PLAIN}|{_BLANK}|{_QUOTED}|;(?:;|{_BLANK})*+"
                  rf"(?:end(?![{_ID}])(?:{_BLANK})*+)?+(?=[^;]))*+", _FLAGS),
    6: re.compile(rf"(?:;|{_BLANK})*+", _FLAGS),
}
_TOKEN = re.compile(rf"(?P<semi>;)|(?P<kw>{_KW})|(?P<other>{_QUOTED}|{_CET})", _FLAGS)


def split_script(text: str, limit: int | None = None) -> list[str]:
    """Cut a script into statements where SQLite's own tokenizer says one ends.

    The same cuts as calling ``sqlite3_complete`` on the text up to each semicolon, in
    one pass (that was quadratic: a long string full of semicolons froze the node).
    Blank pieces at the end are dropped; past ``limit`` pieces it stops (the caller
    refuses the script).
    """
    out: list[str] = []
    start = pos = state = 0
    while True:
        pos = _SKIP[state].match(text, pos).end()  # type: ignore[union-attr]
        token = _TOKEN.match(text, pos)
        if token is None:  # the end, or a quote or comment never closed: no more cuts
            break
        pos = token.end()
        kind = token.lastgroup
        if kind == "semi":
            state = _COMPLETE[state][_SEMI]
            if state == 1:
                out.append(text[start:pos])
                start, state = pos, 0
                if limit is not None and len(out) > limit:
                    return out
        elif kind == "kw":
            state = _COMPLETE[state][_KEYWORDS[token.group().lower()]]
        else:
            state = _COMPLETE[state][_OTHER]
    tail = text[start:]
    if tail.strip():
        out.append(tail)
    return out
