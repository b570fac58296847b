"""Python values <-> the native API's JSON, for the client: the inverse of the server's side.

:func:`to_json` and :func:`from_json` are the one conversion path. Writing a value is
:func:`shoal.wire.encode` (the server's own encoder, which imports nothing of the
server); this module adds what a caller may hand in (bools, int and float subclasses,
buffers) and what only a client reads (results).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Any

from shoal.wire import SQLValue, encode

Args = Sequence[Any] | Mapping[str, Any] | None
StatementLike = str | tuple[str, Args]


def to_json(value: Any) -> Any:
    """One Python value as the API's JSON form; subclasses and buffers are normalised first."""
    t = type(value)
    if t is str or value is None:
        return value
    if t is bool:
        return int(value)
    if t is float and math.isnan(value):
        return None  # SQLite stores NaN as NULL; JSON cannot carry it
    if t not in (int, float, bytes):
        if isinstance(value, int):
            value = int(value)
        elif isinstance(value, float):
            value = None if math.isnan(value) else float(value)
        elif isinstance(value, str):
            value = str(value)
        elif isinstance(value, bytearray | memoryview):
            value = bytes(value)
        else:
            raise TypeError(f"unsupported value type {t.__name__}: "
                            "use None, int, float, str or bytes")
    return encode(value)


def from_json(value: Any) -> SQLValue:
    """One JSON value from the API as Python: the inverse of :func:`to_json`."""
    if type(value) is not dict:
        return value
    if len(value) == 1:
        ((kind, inner),) = value.items()
        if type(inner) is str:
            if kind == "base64":
                return base64.b64decode(inner)
            if kind == "integer":
                return int(inner, 10)
            if kind == "float" and inner in ("Infinity", "-Infinity", "NaN"):
                return float(inner)
    raise ValueError(f"not an encoded SQL value: {str(value)[:80]}")


def decode_row(values: list[Any]) -> tuple[SQLValue, ...]:
    """A result row as a tuple, decoding only the (rare) tagged values."""
    return tuple(from_json(v) if type(v) is dict else v for v in values)


def decode_fields(values: Mapping[str, Any]) -> dict[str, SQLValue]:
    """A row as a JSON object (the data API's, a named query's) as a dict, decoding only
    the (rare) tagged values."""
    return {k: from_json(v) if type(v) is dict else v for k, v in values.items()}


def fields_json(values: Mapping[str, Any]) -> dict[str, Any]:
    """Column: value pairs (a row to insert, the values of an update) as the API's JSON."""
    if not isinstance(values, Mapping):
        raise TypeError("a row is a mapping of column: value")
    return {str(k): to_json(v) for k, v in values.items()}


def args_json(args: Args) -> list[Any] | dict[str, Any] | None:
    """Positional (sequence) or named (mapping) arguments as the API's ``args``."""
    if args is None:
        return None
    if isinstance(args, Mapping):
        return {str(k): to_json(v) for k, v in args.items()}
    if isinstance(args, str | bytes | bytearray | memoryview):
        raise TypeError("args must be a sequence or a mapping of values, not a single value")
    return [to_json(v) for v in args]


def statement_json(item: StatementLike) -> str | dict[str, Any]:
    """A statement as an entry of the API's ``statements`` list."""
    if isinstance(item, str):
        return item
    sql, args = item
    encoded = args_json(args)
    return sql if encoded is None else {"sql": sql, "args": encoded}
