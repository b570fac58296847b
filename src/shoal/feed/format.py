"""The encoded form of one commit's row changes: a pinned format.

Encoded changes are kept in the object store (inside segments, ``log/segment.py``) for
as long as the history is, so every byte below is fixed; a change of layout gets a new
version number and decoders keep reading the old ones.

A commit without row changes encodes as ``b""`` (zero bytes). Otherwise the blob is
exactly one MessagePack value, with no bytes after it::

    [version, tables, changes]

    version   1
    tables    array of [name: str, columns: array of str (at least one)]: one entry per
              distinct (table, columns) pair among the changes, in order of first use
    changes   array of [table, op, key, new, old], in the commit's order:
                table  uint, index into ``tables``
                op     0 insert, 1 update, 2 delete (the index into OPS)
                key    array of value, at least one: the primary key's values in
                       PRIMARY KEY order; (rowid) for a table without a declared one
                new    array of value, one per column: the row after (insert, update);
                       nil for a delete
                old    array of value, one per column: the row before (update, delete);
                       nil for an insert
    value     nil (NULL), int (an INTEGER: -2**63..2**63-1), float (a REAL: float 64,
              -0.0 and the infinities kept), str (TEXT, UTF-8), bin (a BLOB: never str)

Integers are written in MessagePack's shortest form (2**63-1 as uint 64), floats always
as float 64, arrays and strings with their shortest headers; a decoder takes any valid
form. Anything else (a map, a bool, an extension type, an integer past 64 bits, another
version) is refused with ValueError.

The whole row is written on both sides of an update, unchanged columns included: a
reader needs nothing but the blob, and the segment's zstd frame takes out the repeats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from shoal.wire import SQLValue

OPS = ("insert", "update", "delete")
VERSION = 1

_OP_INDEX = {op: i for i, op in enumerate(OPS)}
_VALUE_TYPES = frozenset({type(None), float, str, bytes})  # and int, within 64 bits
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
# msgspec types no str | bytes union: values are decoded as Any and checked here
_Row = tuple[Any, ...]
_Table = tuple[str, tuple[str, ...]]
_Item = tuple[int, int, _Row, _Row | None, _Row | None]

_encoder = msgspec.msgpack.Encoder()
_head = msgspec.msgpack.Decoder(tuple[msgspec.Raw, ...])
_version = msgspec.msgpack.Decoder(int)
_tables = msgspec.msgpack.Decoder(tuple[_Table, ...])
_items = msgspec.msgpack.Decoder(tuple[_Item, ...])


@dataclass(frozen=True, slots=True)
class Change:
    """One row's net change in one commit."""

    table: str
    op: str  # one of OPS
    columns: tuple[str, ...]  # the table's columns at commit, in table order
    key: tuple[SQLValue, ...]  # the primary key's values; (rowid,) without a declared one
    new: tuple[SQLValue, ...] | None  # the whole row after (insert, update); None: delete
    old: tuple[SQLValue, ...] | None  # the whole row before (update, delete); None: an
    # insert's, or a change of a table that keeps no old values


def _check(op: str, columns: Sequence[str], key: Sequence[SQLValue],
           new: Sequence[SQLValue] | None, old: Sequence[SQLValue] | None) -> str | None:
    """What is wrong with a change (None: nothing), alike when encoding and decoding."""
    if op not in _OP_INDEX:
        return f"unknown op {op!r}"
    if not columns:
        return "no columns"
    if not key:
        return "an empty key"
    if (new is None) != (op == "delete"):
        return f"a {op} {'without' if new is None else 'with'} a new row"
    if old is not None and op == "insert":  # (an update's or a delete's may be left out:
        return "an insert with an old row"  # its table keeps no old values)
    for side, row in (("new", new), ("old", old)):
        if row is not None and len(row) != len(columns):
            return f"{side} row has {len(row)} values for {len(columns)} columns"
    return None


def encode_changes(changes: Sequence[Change]) -> bytes:
    """One commit's changes as the pinned blob (b"" for none); ValueError if a change is
    not well formed. Values are taken as SQLite hands them out (apsw never gives a bool
    or an int past 64 bits): they are not checked one by one on the commit path."""
    if not changes:
        return b""
    tables: list[tuple[str, tuple[str, ...]]] = []
    index: dict[tuple[str, tuple[str, ...]], int] = {}
    items = []
    for n, c in enumerate(changes):
        problem = _check(c.op, c.columns, c.key, c.new, c.old)
        if problem is not None:
            raise ValueError(f"change {n} (table {c.table!r}): {problem}")
        ref = (c.table, tuple(c.columns))
        t = index.get(ref)
        if t is None:
            t = index[ref] = len(tables)
            tables.append(ref)
        items.append((t, _OP_INDEX[c.op], c.key, c.new, c.old))
    try:
        return _encoder.encode((VERSION, tables, items))
    except (TypeError, OverflowError) as exc:  # a value that is no SQLite value
        raise ValueError(f"a change holds a value that cannot be encoded: {exc}") from None


def decode_changes(data: bytes) -> list[Change]:
    """The changes ``encode_changes`` wrote ([] for b""); ValueError, and only that, for
    anything else: a truncated blob, garbage, an unknown version, a malformed change."""
    if not data:
        return []
    try:
        parts = _head.decode(data)
        if not parts:
            raise ValueError("malformed changes: an empty array")
        version = _version.decode(parts[0])
        if version != VERSION:
            raise ValueError(f"unknown change format version {version}")
        if len(parts) != 3:
            raise ValueError(f"malformed changes: {len(parts)} parts, not 3")
        tables = _tables.decode(parts[1])
        items = _items.decode(parts[2])
    except (msgspec.MsgspecError, RecursionError) as exc:  # deep nesting: RecursionError
        raise ValueError(f"malformed changes: {exc}") from None
    out = []
    for n, (t, op_index, key, new, old) in enumerate(items):
        if not 0 <= t < len(tables):
            raise ValueError(f"malformed changes: change {n} names table {t} of "
                             f"{len(tables)}")
        if not 0 <= op_index < len(OPS):
            raise ValueError(f"malformed changes: change {n} has unknown op {op_index}")
        table, columns = tables[t]
        op = OPS[op_index]
        problem = _check(op, columns, key, new, old) or _values(key, new, old)
        if problem is not None:
            raise ValueError(f"malformed changes: change {n} (table {table!r}): {problem}")
        out.append(Change(table, op, columns, key, new, old))
    return out


def _values(*rows: tuple[Any, ...] | None) -> str | None:
    """What in decoded rows is no SQLite value (None: nothing)."""
    for row in rows:
        for v in row or ():
            t = type(v)
            if t is int:
                if not _INT_MIN <= v <= _INT_MAX:
                    return f"integer {v} does not fit in 64 bits"
            elif t not in _VALUE_TYPES:
                return f"a value of type {t.__name__}"
    return None
