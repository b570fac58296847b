"""SQLite values <-> JSON: encoding rules, edge cases and the lossless round trip."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import apsw
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.errors import ShoalError
from shoal.values import decode, decode_args
from shoal.wire import INT64_MAX, INT64_MIN, SAFE_INT, SQLValue, encode, encode_row

# -- encode ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", ""),
        ("héllo ✓ 🐟", "héllo ✓ 🐟"),
        (0, 0),
        (SAFE_INT, SAFE_INT),
        (-SAFE_INT, -SAFE_INT),
        (SAFE_INT + 1, {"integer": str(SAFE_INT + 1)}),
        (-SAFE_INT - 1, {"integer": str(-SAFE_INT - 1)}),
        (INT64_MAX, {"integer": "9223372036854775807"}),
        (INT64_MIN, {"integer": "-9223372036854775808"}),
        (1.5, 1.5),
        (math.inf, {"float": "Infinity"}),
        (-math.inf, {"float": "-Infinity"}),
        (b"", {"base64": ""}),
        (b"\x00\xff\x10", {"base64": "AP8Q"}),
    ],
)
def test_encode(value: SQLValue, expected: Any) -> None:
    assert encode(value) == expected


def test_encode_negative_zero_keeps_its_sign() -> None:
    out = encode(-0.0)
    assert isinstance(out, float)
    assert math.copysign(1.0, out) == -1.0


@pytest.mark.parametrize("value", [True, [1], {"a": 1}, object(), bytearray(b"x")])
def test_encode_refuses_non_sqlite_values(value: Any) -> None:
    with pytest.raises(TypeError):
        encode(value)


def test_encode_row_converts_only_what_json_cannot_hold() -> None:
    row: tuple[SQLValue, ...] = (None, "a", 1, 2.5, SAFE_INT + 1, math.inf, b"\x01")
    assert encode_row(row) == [
        None, "a", 1, 2.5, {"integer": str(SAFE_INT + 1)}, {"float": "Infinity"},
        {"base64": "AQ=="},
    ]


# -- decode ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("text", "text"),
        (3, 3),
        (2.25, 2.25),
        (True, 1),
        (False, 0),
        (INT64_MAX, INT64_MAX),
        (INT64_MIN, INT64_MIN),
        ({"integer": "9223372036854775807"}, INT64_MAX),
        ({"integer": "-9223372036854775808"}, INT64_MIN),
        ({"integer": "12"}, 12),
        ({"base64": "AP8Q"}, b"\x00\xff\x10"),
        ({"base64": ""}, b""),
        ({"float": "Infinity"}, math.inf),
        ({"float": "-Infinity"}, -math.inf),
    ],
)
def test_decode(value: Any, expected: SQLValue) -> None:
    out = decode(value)
    assert out == expected
    assert type(out) is type(expected)


@pytest.mark.parametrize(
    "value",
    [
        INT64_MAX + 1,
        INT64_MIN - 1,
        2**100,
        {"integer": "9223372036854775808"},
        {"integer": "-9223372036854775809"},
        {"integer": "12.5"},
        {"integer": "0x10"},
        {"integer": ""},
        {"integer": 12},
        {"integer": "9" * 5000},  # longer than Python's int-from-string limit
        {"base64": "abc"},  # bad padding
        {"base64": "!!!!"},  # not in the alphabet
        {"base64": "AP8Q\n"},  # whitespace is not silently skipped
        {"base64": 5},
        {"base64": None},
        {"float": "NaN"},
        {"float": "inf"},
        {"float": 1.0},
        {"base64": {"base64": "AA=="}},  # nested dicts are refused
        {"integer": {"integer": "1"}},
        {"base64": "AA==", "integer": "1"},  # two keys
        {},
        {"text": "x"},
        [1, 2],
        b"raw bytes",
    ],
)
def test_decode_refuses(value: Any) -> None:
    with pytest.raises(ShoalError) as info:
        decode(value)
    assert info.value.code == "INVALID_ARGUMENT"
    assert info.value.status == 400


def test_decode_args_positional_named_and_none() -> None:
    assert decode_args(None) is None
    assert decode_args([1, "a", {"base64": "AA=="}]) == (1, "a", b"\x00")
    assert decode_args({":id": 1, "@b": 2, "$c": 3, "d": {"integer": str(2**60)}}) == {
        "id": 1, "b": 2, "c": 3, "d": 2**60,
    }


@pytest.mark.parametrize("args", ["x", 5, True, 1.5])
def test_decode_args_refuses_other_shapes(args: Any) -> None:
    with pytest.raises(ShoalError) as info:
        decode_args(args)
    assert info.value.code == "INVALID_ARGUMENT"


# -- the round trip through JSON and SQLite --------------------------------------------------

sqlite_values = st.one_of(
    st.none(),
    st.integers(min_value=INT64_MIN, max_value=INT64_MAX),
    st.sampled_from([SAFE_INT - 1, SAFE_INT, SAFE_INT + 1, -SAFE_INT - 1, INT64_MAX, INT64_MIN]),
    st.floats(allow_nan=False),  # SQLite stores NaN as NULL: it is not an SQLite value
    st.sampled_from([0.0, -0.0, math.inf, -math.inf, 5e-324, 1.7976931348623157e308]),
    st.text(alphabet=st.characters(exclude_categories=["Cs"])),  # SQLite text is UTF-8
    st.binary(),
)


@pytest.fixture(scope="module")
def sqlite() -> Iterator[apsw.Connection]:
    conn = apsw.Connection(":memory:")
    yield conn
    conn.close()


def same(a: SQLValue, b: SQLValue) -> bool:
    """Equal, with the same type, and -0.0 kept apart from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b


def through_json(value: SQLValue) -> SQLValue:
    wire = msgspec.json.encode(encode(value))
    return decode(msgspec.json.decode(wire))


@given(value=sqlite_values)
def test_round_trip_through_json_and_sqlite(sqlite: apsw.Connection, value: SQLValue) -> None:
    sent = through_json(value)
    assert same(sent, value)
    ((stored,),) = list(sqlite.execute("SELECT ?", (sent,)))
    assert same(stored, value)
    # ...and back out to a client, which decodes what the server sent.
    assert same(through_json(stored), value)


@given(row=st.lists(sqlite_values, min_size=1, max_size=8))
def test_row_round_trip(sqlite: apsw.Connection, row: list[SQLValue]) -> None:
    placeholders = ", ".join("?" for _ in row)
    (stored,) = list(sqlite.execute(f"SELECT {placeholders}", tuple(row)))
    wire = msgspec.json.encode(encode_row(stored))
    back = [decode(v) for v in msgspec.json.decode(wire)]
    assert all(same(a, b) for a, b in zip(back, row, strict=True))


@given(value=st.integers(min_value=INT64_MIN, max_value=INT64_MAX))
def test_integers_are_json_numbers_exactly_up_to_2_pow_53(value: int) -> None:
    out = encode(value)
    if abs(value) <= SAFE_INT:
        assert out == value
        # A JavaScript client parses numbers as doubles: these survive it exactly.
        assert int(float(value)) == value
    else:
        assert out == {"integer": str(value)}
