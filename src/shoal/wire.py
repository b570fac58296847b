"""SQLite values in the native API's JSON (the wire form), shared by the server and the client.

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

Pure Python on purpose: ``shoal.client`` writes values with :func:`encode` and must
import without apsw, so nothing here may reach the server's modules. Reading arguments
back (with the server's errors) is :mod:`shoal.values`.
"""

from __future__ import annotations

import base64
import math
from typing import Any

SAFE_INT = 2**53
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

SQLValue = None | int | float | str | bytes


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
