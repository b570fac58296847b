"""Hrana values, scripts, conditions and error codes, without a server."""

from __future__ import annotations

import asyncio
import json
import math
import re
from pathlib import Path
from typing import Any

import apsw
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.errors import ShoalError
from shoal.server import hrana_proto as p
from shoal.server import http
from shoal.server.hrana_proto import HranaError
from shoal.server.hrana_stream import _check_cond
from shoal.wire import encode as native_encode

DOCS = Path(__file__).resolve().parents[2] / "docs" / "hrana.md"

sql_values = st.one_of(
    st.none(), st.integers(-(2**63), 2**63 - 1), st.text(),
    st.binary(), st.floats(allow_nan=False),
)


@given(sql_values)
def test_engine_values_come_out_as_hrana_values_losslessly(v: object) -> None:
    # stdlib json, as clients parse: it reads 1e999 (an infinity) as JavaScript does
    out = json.loads(msgspec.json.encode(p.from_native(native_encode(v))))  # type: ignore[arg-type]
    finite = out["type"] != "float" or math.isfinite(out["value"])
    back = p.to_sql(msgspec.convert(out, p.Value)) if finite else out["value"]
    assert back == v and type(back) is type(v)


@pytest.mark.parametrize(("native", "json_text"), [
    (None, b'{"type":"null"}'),
    (42, b'{"type":"integer","value":"42"}'),
    ({"integer": "9223372036854775807"}, b'{"type":"integer","value":"9223372036854775807"}'),
    (2.5, b'{"type":"float","value":2.5}'),
    ("a", b'{"type":"text","value":"a"}'),
    ({"base64": "AAE="}, b'{"type":"blob","base64":"AAE="}'),
    ({"float": "-Infinity"}, b'{"type":"float","value":-1e999}'),
])
def test_value_shapes_are_the_specs(native: object, json_text: bytes) -> None:
    assert msgspec.json.encode(p.from_native(native)) == json_text


@pytest.mark.parametrize(("raw", "expected"), [
    ('{"type": "integer", "value": "-9223372036854775808"}', -(2**63)),
    ('{"type": "integer", "value": 12}', 12),
    ('{"type": "float", "value": 3}', 3.0),
    ('{"type": "blob", "base64": "AAE"}', b"\x00\x01"),
    ('{"type": "text", "value": ""}', ""),
    ('{"type": "null"}', None),
])
def test_arguments_decode(raw: str, expected: object) -> None:
    got = p.to_sql(msgspec.json.decode(raw, type=p.Value))
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("raw", [
    '{"type": "integer", "value": "9223372036854775808"}',
    '{"type": "integer", "value": "1.5"}',
    '{"type": "blob", "base64": "@@@"}',
])
def test_bad_argument_contents_are_args_invalid(raw: str) -> None:
    with pytest.raises(HranaError) as info:
        p.to_sql(msgspec.json.decode(raw, type=p.Value))
    assert info.value.code == "ARGS_INVALID"


@pytest.mark.parametrize(("script", "pieces"), [
    ("SELECT 1; SELECT 2;", ["SELECT 1;", " SELECT 2;"]),
    ("SELECT ';'; SELECT 2", ["SELECT ';';", " SELECT 2"]),
    ("SELECT 1 -- a; comment\n; SELECT 2", ["SELECT 1 -- a; comment\n;", " SELECT 2"]),
    ("CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT 1; SELECT 2; END; SELECT 3",
     ["CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT 1; SELECT 2; END;", " SELECT 3"]),
    ("  \n", []),
    ('SELECT "a;b" /* ; */;', ['SELECT "a;b" /* ; */;']),
])
def test_scripts_split_where_sqlite_says(script: str, pieces: list[str]) -> None:
    assert p.split_script(script) == pieces


def complete_split(text: str) -> list[str]:
    """The oracle: cut where sqlite3_complete says the text up to a semicolon is complete
    (what split_script did before; quadratic)."""
    out, start, at = [], 0, text.find(";")
    while at != -1:
        if apsw.complete(text[start:at + 1]):
            out.append(text[start:at + 1])
            start = at + 1
        at = text.find(";", at + 1)
    return out + ([text[start:]] if text[start:].strip() else [])


SCRIPT_TOKENS = [
    ";", " ", "\n", "\t", "\r", "\f", "\v", "'a;b'", "'", '"x;"', '"', "`q`", "`", "[b;]", "[",
    "]", "/* c; */", "/*", "*/", "-- d;\n", "--", "-", "/", "end", "END", "End", "create",
    "CREATE", "temp", "TEMP", "temporary", "trigger", "TRIGGER", "explain", "EXPLAIN", "begin",
    "BEGIN", "select", "ON", "x", "1", "endx", "xend", "tend", "cend", "é", "$v", "_", "(",
    "+", "c", "e", "t", "end\u00e9",
]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SCRIPT_TOKENS), st.sampled_from(["", " ", "\n"])),
                max_size=30))
def test_scripts_split_exactly_as_sqlite3_complete_would(parts: list[tuple[str, str]]) -> None:
    script = "".join(token + gap for token, gap in parts)
    assert p.split_script(script) == complete_split(script)


class Spy:
    """A compiled pattern that counts the characters its matches consume."""

    def __init__(self, pattern: re.Pattern[str], seen: list[int]):
        self.pattern, self.seen = pattern, seen

    def match(self, text: str, pos: int) -> re.Match[str] | None:
        found = self.pattern.match(text, pos)
        self.seen.append(found.end() - pos if found else 0)
        return found


@pytest.mark.parametrize("script", [
    "SELECT '" + ";" * 200_000 + "'",  # 400 KB of this froze a node for 78 s
    "CREATE TRIGGER t AFTER INSERT ON x BEGIN " + "a;" * 100_000 + "END;",
    "CREATE TRIGGER t AFTER INSERT ON x BEGIN " + "; end x" * 30_000 + "; END;",
    "EXPLAIN " + "c " * 100_000, "SELECT " + "'', " * 60_000 + "1;", "/**/" * 50_000,
])
def test_splitting_reads_each_character_once(script: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The work is linear: the matches consume the text once, in few steps."""
    seen: list[int] = []
    monkeypatch.setattr(p, "_TOKEN", Spy(p._TOKEN, seen))
    monkeypatch.setattr(p, "_SKIP", {k: Spy(v, seen) for k, v in p._SKIP.items()})
    p.split_script(script)
    assert sum(seen) <= len(script)
    assert len(seen) <= 10 + len(script) // 2


def test_splitting_stops_past_the_limit() -> None:
    assert len(p.split_script("SELECT 1;" * 100_000, limit=1000)) == 1001


def test_deep_json_is_a_protocol_error_not_a_recursion_error() -> None:
    deep = '{"type":"not","cond":' * 5000 + '{"type":"ok","step":0}' + "}" * 5000
    with pytest.raises(HranaError) as info:
        p.decode(deep, p.BatchCond)
    assert info.value.code == "HRANA_PROTO_ERROR" and info.value.status == 400


def test_conditions_nest_a_bounded_depth() -> None:
    cond = msgspec.convert({"type": "ok", "step": 0}, p.BatchCond)
    for _ in range(150):
        cond = p.NotCond(cond)
    with pytest.raises(HranaError) as info:
        _check_cond(cond, 1)
    assert info.value.code == "HRANA_PROTO_ERROR"


def test_conditions_may_only_name_earlier_steps() -> None:
    ok = msgspec.convert({"type": "and", "conds": [{"type": "ok", "step": 0},
                                                   {"type": "not", "cond": {"type": "error",
                                                                            "step": 1}}]},
                         p.BatchCond)
    _check_cond(ok, 2)
    with pytest.raises(HranaError) as info:
        _check_cond(ok, 1)
    assert info.value.code == "BATCH_COND_BAD_STEP"


@pytest.mark.parametrize(("shoal", "hrana", "status"), [
    ("READ_ONLY", "SQLITE_READONLY", 403),
    ("SQL_NOT_ALLOWED", "SQLITE_AUTH", 403),
    ("DATABASE_BUSY", "SQLITE_BUSY", 409),
    ("MULTIPLE_STATEMENTS", "SQL_MANY_STATEMENTS", 400),
    ("INVALID_ARGUMENT", "ARGS_INVALID", 400),
    ("TRANSACTION_EXPIRED", "TRANSACTION_TIMEOUT", 410),
    ("SQLITE_CONSTRAINT", "SQLITE_CONSTRAINT", 400),
    ("FORBIDDEN", "FORBIDDEN", 403),
    ("UNAUTHORIZED", "UNAUTHORIZED", 401),
])
def test_shoal_errors_in_hrana(shoal: str, hrana: str, status: int) -> None:
    err = p.from_shoal(ShoalError(shoal, "why"))
    assert (err.code, err.status, err.obj()) == (hrana, status, {"message": "why", "code": hrana})
    body = err.body()
    assert body["message"] == "why" and body["code"] == hrana and body["error"]["code"] == hrana


def test_every_hrana_code_is_documented() -> None:
    text = DOCS.read_text()
    block = re.search(r"<!-- hrana-codes:begin -->\n(.*?)\n<!-- hrana-codes:end -->", text, re.S)
    assert block is not None
    assert block.group(1) == p.codes_table(), "refresh the table in docs/hrana.md"


def _batch(steps: int, sep: str = ":", **extra: object) -> bytes:
    step = '{"stmt"' + sep + ' {"sql": "SELECT 1"}}'
    fields = "".join(f', "{k}": {json.dumps(v)}' for k, v in extra.items())
    return ('{"type": "batch", "batch": {"steps": [' + ", ".join([step] * steps) + "]}"
            + fields + "}").encode()


def _decode(raw: bytes | str, kind: object, limit: int = 1000) -> Any:
    return asyncio.run(p.decode_message(raw, kind, limit))


def _steps(n: int) -> list[dict[str, Any]]:
    """Steps as @libsql/client writes them: arguments, conditions, stored SQL."""
    return [{"stmt": {"sql": "INSERT INTO t VALUES (?, ?)", "args": [
                {"type": "integer", "value": str(i)}, {"type": "text", "value": f"r{i}"}],
             "want_rows": False},
             "condition": {"type": "and", "conds": [{"type": "ok", "step": max(i - 1, 0)},
                                                    {"type": "not", "cond": {
                                                        "type": "is_autocommit"}}]}}
            if i % 2 else {"stmt": {"sql_id": 7, "named_args": [
                {"name": ":a", "value": {"type": "blob", "base64": "AAE="}}]}}
            for i in range(n)]


@pytest.mark.parametrize(("kind", "message"), [
    (p.StreamRequest, {"type": "batch", "batch": {"steps": _steps(3000),
                                                  "replication_index": "9"}}),
    # fields Hrana does not know are ignored, whatever their type: still a step at a time
    (p.StreamRequest, {"type": "batch", "request": 7, "batch": {"steps": _steps(3000)}}),
    (p.CursorBody, {"baton": "b1", "batch": {"steps": _steps(3000)}}),
    (p.BatchBody, {"batch": {"steps": _steps(3000)}}),
    (p.ClientMsg, {"type": "request", "request_id": 4, "request": {
        "type": "batch", "stream_id": 2, "batch": {"steps": _steps(3000)}}}),
    (p.ClientMsg, {"type": "request", "request_id": 5, "request": {
        "type": "open_cursor", "stream_id": 2, "cursor_id": 3,
        "batch": {"steps": _steps(3000)}}}),
])
def test_a_large_batch_decodes_a_step_at_a_time_to_the_same_message(
        kind: object, message: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    raw = msgspec.json.encode(message)
    assert len(raw) > p.SPLIT_BYTES
    ticks = 0

    async def both() -> Any:
        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        try:
            return await p.decode_message(raw.decode(), kind, 10_000)  # WebSocket text too
        finally:
            task.cancel()

    monkeypatch.setattr(http, "SLICE", 0.0)  # let other work in after every step
    assert asyncio.run(both()) == p.decode(raw, kind)
    assert ticks > 1000  # the loop was not held for the whole batch


def test_small_and_other_messages_are_decoded_whole() -> None:
    small = _batch(20)
    assert _decode(small, p.StreamRequest, 10) == p.decode(small, p.StreamRequest)
    # a value "stmt" is not a key; an execute request is never taken for a batch
    text = b'{"type": "execute", "stmt": {"sql": "SELECT ?", "args": [' + \
        b", ".join([b'{"type": "text", "value": "stmt"}'] * 5000) + b"]}}"
    assert len(_decode(text, p.StreamRequest).stmt.args) == 5000
    hello = msgspec.json.encode({"type": "hello", "jwt": "x" * 100_000})
    assert _decode(hello, p.ClientMsg) == p.HelloMsg("x" * 100_000)


def test_a_batch_of_too_many_steps_gets_a_stand_in_without_decoding_them() -> None:
    body = _decode(_batch(5000, baton="b1").replace(b'"type": "batch", ', b""), p.CursorBody)
    assert len(body.batch.steps) == 5000 and body.baton == "b1"
    assert set(map(id, body.batch.steps)) == {id(body.batch.steps[0])}  # one empty step
    assert body.batch.steps[0].stmt.sql == ""
    # counted short ("stmt" with a space): the steps' bounds give the exact count
    assert len(_decode(_batch(5000, " :"), p.StreamRequest).batch.steps) == 5000
    assert len(_decode(_batch(5000), p.StreamRequest, 5000).batch.steps[-1].stmt.sql) == 8
    msg = _decode(b'{"type": "request", "request_id": 9, "request": {"type": "batch", '
                  b'"stream_id": 1, "batch": {"steps": ['
                  + b", ".join([b'{"stmt": {"sql_id": 1}}'] * 5000) + b"]}}}", p.ClientMsg)
    assert msg.request_id == 9 and msg.request.stream_id == 1
    assert len(msg.request.batch.steps) == 5000


def test_errors_in_a_large_batch_name_their_place() -> None:
    steps = [{"stmt": {"sql": "SELECT 1"}}] * 5000
    steps = [*steps[:4321], {"stmt": {"sql": 5}}, *steps[4321:]]
    raw = msgspec.json.encode({"type": "batch", "batch": {"steps": steps}})
    with pytest.raises(HranaError) as info:
        _decode(raw, p.StreamRequest, 10_000)
    assert info.value.code == "HRANA_PROTO_ERROR"
    assert "`$.batch.steps[4321].stmt.sql`" in info.value.message
    with pytest.raises(HranaError) as info:  # as the whole message would have said
        _decode(msgspec.json.encode({"type": "request", "request_id": 1, "request": {
            "type": "batch", "batch": {"steps": steps}}}), p.ClientMsg, 10_000)
    assert info.value.code == "HRANA_PROTO_ERROR" and "stream_id" in info.value.message
    with pytest.raises(HranaError) as info:  # broken at the very end: no whole decode first
        _decode(_batch(5000)[:-1], p.StreamRequest, 10_000)
    assert info.value.code == "INVALID_JSON"
    with pytest.raises(HranaError) as info:
        _decode(b'{"type": "batch", "batch": {"steps": 5, "x": "' + b"y" * 70_000 + b'"}}',
                p.StreamRequest)
    assert info.value.code == "HRANA_PROTO_ERROR"
