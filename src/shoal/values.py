"""SQLite values <-> JSON, lossless both ways.

JSON has one number type and no bytes, so the native API encodes:

==================  =====================================================
SQLite              JSON
==================  =====================================================
NULL                ``null``
INTEGER             a number when ``|n| <= 2**53``, else ``{"integer": "<decimal>"}``
REAL                a number; infinities as ``{"float": "Infinity"}`` / ``"-Infinity"``
TEXT                a string
BLOB                ``{"base64": "<standard base64>"}``
==================  =====================================================

Arguments accept the same forms; ``true``/``false`` bind as 1/0 and
``{"integer"}`` is accepted at any size that fits 64 bits. ``ArgValue`` is an
argument as request types decode it: its nesting is bounded (three containers
deep), so that a body nested thousands deep is refused as it is decoded, in
linear time, instead of recursing (deeper than any argument form, shallow enough
that every malformed argument still reaches :func:`decode` and its message).
"""

from __future__ import annotations

import base64
import math
from typing import Any

from shoal.errors import Code, ShoalError

SAFE_INT = 2**53
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

SQLValue = None | int | float | str | bytes

_Leaf = None | bool | int | float | str
_Depth1 = _Leaf | list[_Leaf] | dict[str, _Leaf]
_Depth2 = _Leaf | list[_Depth1] | dict[str, _Depth1]
ArgValue = _Leaf | list[_Depth2] | dict[str, _Depth2]
Args = list[ArgValue] | dict[str, ArgValue]


def encode(value: SQLValue) -> Any:
    """One SQLite value as JSON-ready data."""
    t = type(value)
    if t is str or value is None:
        return value
    if t is int:
        assert isinstance(value, int)
        return value if -SAFE_INT <= value <= SAFE_INT else {"integer": str(value)}
    if t is float:
        assert isinstance(value, float)
        if math.isinf(value):
            return {"float": "Infinity" if value > 0 else "-Infinity"}
        return value
    if t is bytes:
        assert isinstance(value, bytes)
        return {"base64": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"not an SQLite value: {t.__name__}")


def encode_row(row: tuple[SQLValue, ...]) -> list[Any]:
    """A row as a JSON-ready list; the common all-simple row costs one pass."""
    out: list[Any] = list(row)
    for i, v in enumerate(out):
        t = type(v)
        if t is str or v is None:
            continue
        if t is int and -SAFE_INT <= v <= SAFE_INT:
            continue
        if t is float and not math.isinf(v):
            continue
        out[i] = encode(v)
    return out


def _bad(message: str) -> ShoalError:
    return ShoalError(Code.INVALID_ARGUMENT, message)


def decode(value: Any) -> SQLValue:
    """One JSON argument as a value SQLite can bind."""
    t = type(value)
    if value is None or t is str or t is float:
        return value
    if t is bool:
        return int(value)
    if t is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise _bad(f"integer {value} does not fit in 64 bits")
        return value
    if t is dict and len(value) == 1:
        ((kind, inner),) = value.items()
        if kind == "base64" and isinstance(inner, str):
            try:
                return base64.b64decode(inner, validate=True)
            except ValueError:  # binascii.Error is one
                raise _bad("invalid base64 in blob argument") from None
        if kind == "integer" and isinstance(inner, str):
            try:
                n = int(inner, 10)
            except ValueError:
                raise _bad(f"invalid integer {inner[:40]!r}") from None
            if not INT64_MIN <= n <= INT64_MAX:
                raise _bad(f"integer {inner[:40]} does not fit in 64 bits")
            return n
        if kind == "float" and inner in ("Infinity", "-Infinity"):
            return math.inf if inner == "Infinity" else -math.inf
    raise _bad(f"unsupported argument value of type {t.__name__}")


def decode_args(args: Any) -> tuple[SQLValue, ...] | dict[str, SQLValue] | None:
    """Positional (list) or named (object) arguments for one statement."""
    if args is None:
        return None
    if type(args) is list:
        return tuple(decode(v) for v in args)
    if type(args) is dict:
        named: dict[str, SQLValue] = {}
        for k, v in args.items():
            # Accept ":id", "@id", "$id" and bare "id" alike.
            key = k[1:] if k[:1] in (":", "@", "$") else k
            named[key] = decode(v)
        return named
    raise _bad("'args' must be an array or an object")
