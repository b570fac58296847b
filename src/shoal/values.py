"""JSON arguments -> SQLite values, as the server binds them (errors are the server's).

The forms are :mod:`shoal.wire`'s, which writes values (results, and the client's
arguments) without importing the server. Arguments accept the same forms;
``true``/``false`` bind as 1/0 and ``{"integer"}`` is accepted at any size that
fits 64 bits. ``ArgValue`` is an argument as request types decode it: its nesting
is bounded (three containers deep), so that a body nested thousands deep is refused
as it is decoded, in linear time, instead of recursing (deeper than any argument
form, shallow enough that every malformed argument still reaches :func:`decode` and
its message).
"""

from __future__ import annotations

import base64
import math
from typing import Any

from shoal.errors import Code, ShoalError
from shoal.wire import INT64_MAX, INT64_MIN, SQLValue

_Leaf = None | bool | int | float | str
_Depth1 = _Leaf | list[_Leaf] | dict[str, _Leaf]
_Depth2 = _Leaf | list[_Depth1] | dict[str, _Depth1]
ArgValue = _Leaf | list[_Depth2] | dict[str, _Depth2]
Args = list[ArgValue] | dict[str, ArgValue]


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
