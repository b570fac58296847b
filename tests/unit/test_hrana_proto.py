"""Hrana values, scripts, conditions and error codes, without a server."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.errors import ShoalError
from shoal.server import hrana_proto as p
from shoal.server.hrana_proto import HranaError
from shoal.server.hrana_stream import _check_cond
from shoal.values import encode as native_encode

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
