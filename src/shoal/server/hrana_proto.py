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

import asyncio
import base64
import binascii
import functools
import re
from collections.abc import Callable
from typing import Any, TypeVar, Union

import msgspec

from shoal.engine import Result
from shoal.errors import Code, ShoalError
from shoal.server.http import SPLIT_BYTES, decode_each
from shoal.wire import INT64_MAX, INT64_MIN, SQLValue

T = TypeVar("T")


class Tree(msgspec.Struct, gc=False):
    """What a statement or a step decodes into (values, arguments, conditions, steps) and
    what a result renders from. JSON decodes to a tree, never a reference cycle, so these
    are not tracked by the garbage collector: a batch of 10,000 steps makes some 100,000
    of them, and every full collection would walk them all, on the event loop."""


# -- values ----------------------------------------------------------------------------------
class NullValue(Tree, tag="null", tag_field="type"):
    pass


class IntegerValue(Tree, tag="integer", tag_field="type"):
    value: str | int


class FloatValue(Tree, tag="float", tag_field="type"):
    value: float


class TextValue(Tree, tag="text", tag_field="type"):
    value: str


class BlobValue(Tree, tag="blob", tag_field="type"):
    base64: str


Value = Union[NullValue, IntegerValue, FloatValue, TextValue, BlobValue]  # noqa: UP007


class NamedArg(Tree):
    name: str
    value: Value


class Stmt(Tree):
    sql: str | None = None
    sql_id: int | None = None
    args: list[Value] | None = None
    named_args: list[NamedArg] | None = None
    want_rows: bool | None = None
    replication_index: str | int | None = None  # sqld extension; one node is always current


# -- batches ---------------------------------------------------------------------------------
class OkCond(Tree, tag="ok", tag_field="type"):
    step: int


class ErrorCond(Tree, tag="error", tag_field="type"):
    step: int


class NotCond(Tree, tag="not", tag_field="type"):
    cond: BatchCond


class AndCond(Tree, tag="and", tag_field="type"):
    conds: list[BatchCond]


class OrCond(Tree, tag="or", tag_field="type"):
    conds: list[BatchCond]


class IsAutocommitCond(Tree, tag="is_autocommit", tag_field="type"):
    pass


BatchCond = Union[OkCond, ErrorCond, NotCond, AndCond, OrCond, IsAutocommitCond]  # noqa: UP007


class BatchStep(Tree):
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
class PipelineSplit(msgspec.Struct):
    """A pipeline's outline: each request kept as raw JSON. Finding the requests' bounds
    costs about 1 ms per MB; decoding them (structs for every step, statement and value)
    several times that, which the handler does a request at a time, and a large batch a
    step at a time (``decode_message``), letting other work in between."""

    requests: list[msgspec.Raw]
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


class LegacyStatement(Tree):
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


# -- messages that carry a batch, decoded a step at a time -----------------------------------
class _Type(msgspec.Struct):
    """What a pipeline's request is, read without decoding the rest (about 1 ms per MB)."""

    type: str = ""


class _Kind(msgspec.Struct):
    """The same of a WebSocket message, and of its request."""

    type: str = ""
    request: _Type | None = None


class _Steps(msgspec.Struct):
    """A batch with its steps still one piece of JSON."""

    steps: msgspec.Raw
    replication_index: str | int | None = None


class _HttpCarrier(msgspec.Struct):
    """A batch request of a pipeline, a cursor body or a v1 batch body (Hrana ignores the
    fields it does not know, so one shape reads all three)."""

    batch: _Steps
    baton: str | None = None


class _WsBatch(msgspec.Struct, tag="batch", tag_field="type"):
    stream_id: int
    batch: _Steps


class _WsCursor(msgspec.Struct, tag="open_cursor", tag_field="type"):
    stream_id: int
    cursor_id: int
    batch: _Steps


class _WsCarrier(msgspec.Struct, tag="request", tag_field="type"):
    request_id: int
    request: _WsBatch | _WsCursor


_step_decoder = msgspec.json.Decoder(BatchStep)
_STEP_KEY = b'"stmt":'


async def decode_message(raw: bytes | str | msgspec.Raw, kind: Any, limit: int) -> Any:
    """A Hrana message of type ``kind`` (``StreamRequest``, ``CursorBody``, ``BatchBody``
    or ``ClientMsg``), as ``decode`` makes it, without holding the event loop.

    Decoding a batch costs about 3 ms per MB (a struct for every step, statement, value
    and condition), so the batch of a message over SPLIT_BYTES is decoded a step at a time,
    paced, after passes that find its parts (about 1 ms per MB each, one per turn of the
    loop). One of more than ``limit`` steps is not decoded at all: it gets a stand-in of
    as many empty steps, which the stream refuses (TOO_MANY_STATEMENTS) as it would the
    real one. Steps are first counted by their ``"stmt":`` keys (a JSON string followed by
    a colon is a key, never a value), which costs no allocation however many there are;
    a count that falls short (``"stmt" :``) is made exact by finding each step's bounds.
    """
    if len(raw) <= SPLIT_BYTES:
        return decode(raw, kind)
    await asyncio.sleep(0)  # each pass over a large message in a turn of the loop of its own
    if not _carries_batch(raw, kind):
        return decode(raw, kind)
    await asyncio.sleep(0)
    steps_json, index, build = _carrier(raw, kind)
    await asyncio.sleep(0)
    count = bytes(steps_json).count(_STEP_KEY)
    if count <= limit:
        await asyncio.sleep(0)
        raws: list[msgspec.Raw] = decode(steps_json, list[msgspec.Raw])
        count = len(raws)
    if count > limit:
        return build(Batch([_EMPTY_STEP] * count, index))
    return build(Batch(await _decode_each(raws, _step_decoder, "$.batch.steps"), index))


def _carries_batch(raw: bytes | str | msgspec.Raw, kind: Any) -> bool:
    """Whether a message of this kind carries a batch: cursor and v1 batch bodies always
    do; a pipeline's request or a WebSocket message if its type says so."""
    if kind is not StreamRequest and kind is not ClientMsg:
        return kind is CursorBody or kind is BatchBody
    try:  # read as the whole decode reads the tags it chooses a type by
        what = _decoder(_Type if kind is StreamRequest else _Kind).decode(raw)
    except msgspec.ValidationError:  # a tag that is not a string: whole, it fails there
        return False
    except msgspec.DecodeError as exc:  # found at the end: not after decoding every step
        raise HranaError(Code.INVALID_JSON, f"body is not valid JSON: {exc}", 400) from None
    if isinstance(what, _Type):
        return what.type == "batch"
    return what.type == "request" and what.request is not None \
        and what.request.type in ("batch", "open_cursor")


def _carrier(raw: bytes | str | msgspec.Raw, kind: Any
             ) -> tuple[msgspec.Raw, str | int | None, Callable[[Batch], Any]]:
    """A message that carries a batch: its steps (JSON), its replication index, and how to
    build the message around the decoded batch. The outline's errors are final: decoding
    the message whole to find them would cost what this avoids."""
    if kind is ClientMsg:
        msg: _WsCarrier = decode(raw, _WsCarrier)
        req = msg.request
        if isinstance(req, _WsBatch):
            return req.batch.steps, req.batch.replication_index, \
                lambda b: RequestMsg(msg.request_id, WsBatchReq(req.stream_id, b))
        return req.batch.steps, req.batch.replication_index, \
            lambda b: RequestMsg(msg.request_id, OpenCursorReq(req.stream_id, req.cursor_id, b))
    body: _HttpCarrier = decode(raw, _HttpCarrier)
    builds: dict[Any, Callable[[Batch], Any]] = {
        StreamRequest: BatchReq, CursorBody: lambda b: CursorBody(b, body.baton),
        BatchBody: BatchBody}
    return body.batch.steps, body.batch.replication_index, builds[kind]


class _LegacyOutline(msgspec.Struct):
    statements: list[msgspec.Raw]


_legacy_decoder = msgspec.json.Decoder(str | LegacyStatement)


async def decode_statements(raw: bytes, limit: int) -> list[str | LegacyStatement]:
    """A legacy body's 1 to ``limit`` statements; a large body's are counted first, then
    decoded one at a time, paced."""
    if len(raw) <= SPLIT_BYTES:
        items: list[str | LegacyStatement] = decode(raw, LegacyBody).statements
        _check_count(len(items), limit)
        return items
    raws = decode(raw, _LegacyOutline).statements
    _check_count(len(raws), limit)
    return await _decode_each(raws, _legacy_decoder, "$.statements")


def _check_count(n: int, limit: int) -> None:
    if not n or n > limit:
        raise HranaError(Code.TOO_MANY_STATEMENTS if n else Code.HRANA_PROTO_ERROR,
                         f"send 1 to {limit} statements")


async def _decode_each(raws: list[msgspec.Raw], decoder: msgspec.json.Decoder[T],
                       where: str) -> list[T]:
    """decode_each with decode's errors."""
    try:
        return await decode_each(raws, decoder, where)
    except msgspec.ValidationError as exc:
        raise HranaError(Code.HRANA_PROTO_ERROR, f"not a valid Hrana message: {exc}") from None
    except RecursionError:
        raise HranaError(Code.HRANA_PROTO_ERROR, "the message is nested too deeply") from None


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


class StmtResult(Tree):
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
