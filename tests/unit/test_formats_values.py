"""SQLite values as JSON, pinned: the wire form of each type as literal JSON text, and the
boundaries as literal numbers (2**53 = 9007199254740992, 2**63 = 9223372036854775808).
Nothing here imports the module's constants: a changed boundary or form fails."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from shoal.errors import ShoalError
from shoal.values import decode, decode_args
from shoal.wire import encode, encode_row


def wire(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=True)


@pytest.mark.parametrize(("value", "text"), [
    (None, "null"),
    ("", '""'),
    ("héllo", '"h\\u00e9llo"'),
    (0, "0"),
    (-1, "-1"),
    (9007199254740991, "9007199254740991"),
    (9007199254740992, "9007199254740992"),  # |n| <= 2**53: a number
    (9007199254740993, '{"integer":"9007199254740993"}'),
    (-9007199254740991, "-9007199254740991"),
    (-9007199254740992, "-9007199254740992"),
    (-9007199254740993, '{"integer":"-9007199254740993"}'),
    (9223372036854775807, '{"integer":"9223372036854775807"}'),
    (-9223372036854775808, '{"integer":"-9223372036854775808"}'),
    (1.5, "1.5"),
    (-0.0, "-0.0"),
    (1e308, "1e+308"),
    (math.inf, '{"float":"Infinity"}'),
    (-math.inf, '{"float":"-Infinity"}'),
    (b"", '{"base64":""}'),
    (b"\x00\x01\x02\xff", '{"base64":"AAEC/w=="}'),
    (b"\xfb\xff", '{"base64":"+/8="}'),  # the standard alphabet, padded
    (b"abc", '{"base64":"YWJj"}'),
])
def test_each_type_encodes_to_pinned_json(value: Any, text: str) -> None:
    assert wire(encode(value)) == text
    assert wire(encode_row((value,))) == f"[{text}]"


def test_integers_at_the_boundary_stay_python_ints() -> None:
    for n in (9007199254740992, -9007199254740992, 0):
        assert type(encode(n)) is int and encode(n) == n


def test_nan_is_passed_through_as_a_float() -> None:
    out = encode(math.nan)
    assert isinstance(out, float) and math.isnan(out)
    (row,) = encode_row((math.nan,))
    assert isinstance(row, float) and math.isnan(row)


def test_a_row_in_pinned_json() -> None:
    row = (None, "x", 7, 9007199254740992, 9007199254740993, -9007199254740993, 2.5,
           math.inf, -math.inf, b"\x01")
    assert wire(encode_row(row)) == (
        '[null,"x",7,9007199254740992,{"integer":"9007199254740993"},'
        '{"integer":"-9007199254740993"},2.5,{"float":"Infinity"},{"float":"-Infinity"},'
        '{"base64":"AQ=="}]')


def test_a_row_of_plain_values_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """The common row costs one pass: a value JSON holds as it is never reaches `encode`."""
    def refuse(value: Any) -> Any:
        raise AssertionError(f"encode called for {value!r}")

    monkeypatch.setattr("shoal.wire.encode", refuse)
    row = (None, "", "x", 0, 9007199254740992, -9007199254740992, 1.5, -0.0, math.nan)
    out = encode_row(row)
    assert out[:8] == list(row[:8]) and math.isnan(out[8])
    for value in (9007199254740993, -9007199254740993, math.inf, -math.inf, b"", True):
        with pytest.raises(AssertionError, match="encode called"):
            encode_row((value,))


@pytest.mark.parametrize(("value", "message"), [
    (True, "not an SQLite value: bool"),
    ([1], "not an SQLite value: list"),
    (bytearray(b"x"), "not an SQLite value: bytearray"),
])
def test_encode_refuses_other_types(value: Any, message: str) -> None:
    with pytest.raises(TypeError) as err:
        encode(value)
    assert str(err.value) == message


@pytest.mark.parametrize(("text", "expected"), [
    ("null", None),
    ('"x"', "x"),
    ("true", 1),
    ("false", 0),
    ("1.5", 1.5),
    ("9223372036854775807", 9223372036854775807),
    ("-9223372036854775808", -9223372036854775808),
    ('{"integer":"9223372036854775807"}', 9223372036854775807),
    ('{"integer":"-9223372036854775808"}', -9223372036854775808),
    ('{"integer":"-7"}', -7),
    ('{"integer":"+7"}', 7),
    ('{"integer":"007"}', 7),
    ('{"base64":"AAEC/w=="}', b"\x00\x01\x02\xff"),
    ('{"base64":"+/8="}', b"\xfb\xff"),
    ('{"float":"Infinity"}', math.inf),
    ('{"float":"-Infinity"}', -math.inf),
])
def test_pinned_json_decodes(text: str, expected: Any) -> None:
    out = decode(json.loads(text))
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(("text", "message"), [
    ("9223372036854775808", "integer 9223372036854775808 does not fit in 64 bits"),
    ("-9223372036854775809", "integer -9223372036854775809 does not fit in 64 bits"),
    ('{"integer":"9223372036854775808"}',
     "integer 9223372036854775808 does not fit in 64 bits"),
    ('{"integer":"-9223372036854775809"}',
     "integer -9223372036854775809 does not fit in 64 bits"),
    ('{"integer":"' + "9" * 50 + '"}', "integer " + "9" * 40 + " does not fit in 64 bits"),
    ('{"integer":"abc"}', "invalid integer 'abc'"),
    ('{"integer":"0x10"}', "invalid integer '0x10'"),
    ('{"integer":"' + "z" * 50 + '"}', "invalid integer '" + "z" * 40 + "'"),
    ('{"base64":"-_8="}', "invalid base64 in blob argument"),  # the URL-safe alphabet
    ('{"base64":"AAE"}', "invalid base64 in blob argument"),
    ('{"base64":"AAEC /w=="}', "invalid base64 in blob argument"),  # nothing is skipped
    ('{"base64":"AAEC/w==!"}', "invalid base64 in blob argument"),
    ('{"float":"NaN"}', "unsupported argument value of type dict"),
    ('{"float":"infinity"}', "unsupported argument value of type dict"),
    ('{"integer":7}', "unsupported argument value of type dict"),
    ('{"base64":1}', "unsupported argument value of type dict"),
    ('{"bytes":"AA=="}', "unsupported argument value of type dict"),
    ("{}", "unsupported argument value of type dict"),
    ('{"integer":"1","base64":""}', "unsupported argument value of type dict"),
    ("[1]", "unsupported argument value of type list"),
])
def test_refusals_are_pinned(text: str, message: str) -> None:
    with pytest.raises(ShoalError) as err:
        decode(json.loads(text))
    assert (err.value.code, err.value.status, err.value.message) == (
        "INVALID_ARGUMENT", 400, message)


def test_a_bytes_argument_is_not_a_json_value() -> None:
    with pytest.raises(ShoalError) as err:
        decode(b"x")
    assert err.value.message == "unsupported argument value of type bytes"


def test_arguments_by_position_and_by_name() -> None:
    assert decode_args(None) is None
    assert decode_args([]) == ()
    assert decode_args([True, {"integer": "9007199254740993"}]) == (1, 9007199254740993)
    assert decode_args({}) == {}
    assert decode_args({":a": 1, "@b": 2, "$c": 3, "d": 4, "::e": 5, "?f": 6, "": 7}) == {
        "a": 1, "b": 2, "c": 3, "d": 4, ":e": 5, "?f": 6, "": 7}


@pytest.mark.parametrize("args", ["x", 5, 1.5, True, (1,)])
def test_other_argument_shapes_are_refused(args: Any) -> None:
    with pytest.raises(ShoalError) as err:
        decode_args(args)
    assert err.value.message == "'args' must be an array or an object"
