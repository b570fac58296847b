"""The data API's SQL: what a request asks of a table, written as SQL by Shoal.

A request never sends SQL text. It names columns, filters, an order and a page; each
name is checked against the table's columns and each value is bound as a parameter,
so a request can only ever be one of the statements below:

- read: ``SELECT cols FROM t WHERE (select rule) AND filters AND after-cursor ORDER BY
  order, key LIMIT n``;
- insert: ``INSERT INTO t (cols) VALUES ... RETURNING cols, check``, where ``check`` is
  ``CASE WHEN (insert rule) THEN 1 ELSE shoal_deny('insert') END``: a new row the rule
  refuses fails the statement (and the request's transaction with it);
- update: ``UPDATE t SET ... WHERE (select rule) AND (update rule) AND filters
  RETURNING cols, check``: a row is updated only if its old values pass both, and its
  new values must pass the update rule;
- delete: ``DELETE FROM t WHERE (select rule) AND (delete rule) AND filters RETURNING
  cols``.

For a token bound by rules a verb without a rule is refused (a table without a select
rule does not exist for it); for any other token there is no rule and the SQL is the
same without it. The page's order always ends with the table's key (its rowid, or a
WITHOUT ROWID table's primary key), so the cursor of the last row names one place and
the next page starts right after it (keyset pagination: no OFFSET, every page as fast).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shoal.errors import Code, ShoalError
from shoal.rules.expr import PARAM, Claims, Expr, value_of
from shoal.wire import SQLValue

VERBS = ("select", "insert", "update", "delete")
OPS = {"eq": "=", "neq": "!=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">=",
       "like": "LIKE", "glob": "GLOB"}
RESERVED = frozenset({"select", "order", "limit", "after", "branch"})  # not filters
MAX_FILTERS = 32
MAX_ORDER = 4
MAX_IN = 100
# the SQL function that fails a statement whose row a rule refuses (engine/connection.py
# registers it under this name)
DENY = "shoal_deny"  # mutate: harmless constant (the tests register the same name)
_ROWID_NAMES = ("_rowid_", "rowid", "oid")


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _bad(message: str, code: Code = Code.INVALID_REQUEST) -> ShoalError:
    return ShoalError(code, message)


@dataclass(frozen=True, slots=True)
class Shape:
    """A table as the data API sees it (from ``PRAGMA table_xinfo``)."""

    table: str  # the name as the schema holds it
    columns: tuple[str, ...]  # in table order, generated ones included
    writable: frozenset[str]  # not generated
    key: tuple[str, ...]  # the rowid's name, or a WITHOUT ROWID table's primary key
    not_null: frozenset[str] = frozenset()  # declared NOT NULL (the key is, whatever it says)

    @classmethod
    def of(cls, table: str, xinfo: Iterable[Sequence[Any]], without_rowid: bool) -> Shape:
        """From rows (name, pk, hidden[, declared type, notnull]) of ``PRAGMA table_xinfo``.
        The key
        of a rowid table is its INTEGER PRIMARY KEY column (the rowid's alias) if it has
        one, else the rowid under a name no column takes."""
        columns: list[str] = []
        writable: set[str] = set()
        pk: list[tuple[int, str, str]] = []
        not_null: set[str] = set()
        for name, ordinal, hidden, *more in xinfo:
            if hidden == 1:  # a virtual table's hidden column
                continue
            columns.append(name)
            if hidden == 0:
                writable.add(name)
            if ordinal:
                pk.append((ordinal, name, str(more[0] if more else "").upper()))
            if len(more) > 1 and more[1]:
                not_null.add(name)
        if without_rowid:
            key = tuple(name for _, name, _ in sorted(pk))
        elif len(pk) == 1 and pk[0][2] == "INTEGER":
            key = (pk[0][1],)
        else:
            taken = {c.lower() for c in columns}
            rowid = next((r for r in _ROWID_NAMES if r not in taken), None)
            if rowid is None:
                raise _bad(f"table {table} has columns named rowid, _rowid_ and oid: the "
                           "data API cannot page it", Code.SQL_NOT_ALLOWED)
            key = (rowid,)
        return cls(table, tuple(columns), frozenset(writable), key, frozenset(not_null))

    def column(self, name: str) -> str:
        """The column of that name (SQLite's names are case-insensitive)."""
        for c in self.columns:
            if c.lower() == name.lower():
                return c
        raise _bad(f"table {self.table} has no column {name[:100]!r}", Code.UNKNOWN_COLUMN)


@dataclass(frozen=True, slots=True)
class Rules:
    """One table's rules (None: no rule for that verb)."""

    select: Expr | None = None
    insert: Expr | None = None
    update: Expr | None = None
    delete: Expr | None = None

    def get(self, verb: str) -> Expr | None:
        found: Expr | None = getattr(self, verb)
        return found

    def as_json(self) -> dict[str, str | None]:
        return {verb: e.text if (e := self.get(verb)) is not None else None for verb in VERBS}


@dataclass(frozen=True, slots=True)
class Filter:
    column: str
    op: str  # a key of OPS, "in", "is"
    value: Any  # SQLValue; a tuple for "in"; "null"/"notnull" for "is"


@dataclass(frozen=True, slots=True)
class Order:
    column: str
    desc: bool = False


@dataclass(slots=True)
class Read:
    """A read's parameters (GET .../tables/{table})."""

    columns: tuple[str, ...] | None = None  # None: every column
    filters: list[Filter] = field(default_factory=list)
    order: list[Order] = field(default_factory=list)
    limit: int = 100
    after: list[SQLValue] | None = None


def parse_filters(pairs: Iterable[tuple[str, str]]) -> list[Filter]:
    """``column=op.value`` pairs: eq, neq, lt, lte, gt, gte, like, glob (``name=like.a%``),
    in (``id=in.(1,2,3)``, values separated by commas, a value quoted with "" to hold one)
    and is (``deleted_at=is.null``, ``is.notnull``). Values bind as text: a column of
    INTEGER, REAL or NUMERIC affinity compares them as numbers (SQLite's rule)."""
    out: list[Filter] = []
    for column, raw in pairs:
        if column in RESERVED:
            continue
        op, dot, value = raw.partition(".")
        if not dot:
            raise _bad(f"filter {column[:100]}: write column=op.value (eq, neq, lt, lte, gt, "
                       "gte, like, glob, in, is)")
        if op in OPS:
            out.append(Filter(column, op, value))
        elif op == "in":
            out.append(Filter(column, op, _in_list(column, value)))
        elif op == "is":
            if value not in ("null", "notnull"):
                raise _bad(f"filter {column[:100]}: is.null or is.notnull")
            out.append(Filter(column, op, value))
        else:
            raise _bad(f"filter {column[:100]}: unknown operator {op[:20]!r} (eq, neq, lt, "
                       "lte, gt, gte, like, glob, in, is)")
        if len(out) > MAX_FILTERS:
            raise _bad(f"at most {MAX_FILTERS} filters")
    return out


def _in_list(column: str, raw: str) -> tuple[str, ...]:
    if not (raw.startswith("(") and raw.endswith(")")):
        raise _bad(f"filter {column[:100]}: in.(a,b,c)")
    body = raw[1:-1]
    values: list[str] = []
    i = 0
    while i <= len(body) and body:
        if body[i:i + 1] == '"':
            j = i + 1
            buf = []
            while True:
                k = body.find('"', j)
                if k < 0:  # mutate: harmless (j is past a quote: never 0)
                    raise _bad(f"filter {column[:100]}: an unterminated quoted value")
                buf.append(body[j:k])
                if body[k + 1:k + 2] == '"':
                    buf.append('"')
                    j = k + 2
                    continue
                break
            values.append("".join(buf))
            i = k + 1
            if i < len(body) and body[i] != ",":
                raise _bad(f"filter {column[:100]}: a ',' after a quoted value")
            i += 1
        else:
            k = body.find(",", i)
            k = len(body) if k < 0 else k
            values.append(body[i:k])
            i = k + 1
        if len(values) > MAX_IN:
            raise _bad(f"filter {column[:100]}: at most {MAX_IN} values in a list")
    if not values:
        raise _bad(f"filter {column[:100]}: an empty in.() list")
    return tuple(values)


def parse_order(raw: str | None) -> list[Order]:
    """``order=created_at.desc,id`` (asc unless .desc)."""
    if not raw:
        return []
    out = []
    for part in raw.split(","):
        name, dot, way = part.rpartition(".")
        if not dot or way not in ("asc", "desc"):
            name, way = part, "asc"
        out.append(Order(name, way == "desc"))
    if len(out) > MAX_ORDER:
        raise _bad(f"order by at most {MAX_ORDER} columns")
    return out


_cursor_encoder = msgspec.msgpack.Encoder()
_cursor_decoder = msgspec.msgpack.Decoder(list[Any])


def encode_cursor(values: Sequence[SQLValue]) -> str:
    return base64.urlsafe_b64encode(_cursor_encoder.encode(list(values))).decode().rstrip("=")


def decode_cursor(raw: str) -> list[SQLValue]:
    try:
        values = _cursor_decoder.decode(base64.urlsafe_b64decode(raw + "=="))  # (padding
        # past what is missing is ignored)
    except ValueError:  # (msgspec.DecodeError is one)
        raise _bad("'after' is not a cursor this API gave") from None
    if not all(v is None or type(v) in (int, float, str, bytes) for v in values):
        raise _bad("'after' is not a cursor this API gave")
    return values


class Writer:
    """One statement's SQL and its named parameters, built piece by piece."""

    def __init__(self, who: Claims | None):
        self.who = who
        self.args: dict[str, SQLValue] = {}

    def value(self, v: SQLValue) -> str:
        name = f"p{len(self.args)}"
        self.args[name] = v
        return ":" + name

    def rule(self, expr: Expr) -> str:
        """The rule as SQL, its ``auth.*`` bound (once per statement, whatever the rows).
        Each rule numbers its parameters from 0: they are renamed into this statement's."""
        sql = expr.sql
        for i in reversed(range(len(expr.paths))):  # :auth_10 before :auth_1
            name = f"a{len(self.args)}"
            sql = sql.replace(f":{PARAM}{i}", ":" + name)
            self.args[name] = value_of(self.who, expr.paths[i]) if self.who else None
        return f"({sql})"


def _where(shape: Shape, w: Writer, filters: list[Filter]) -> list[str]:
    out = []
    for f in filters:
        col = quote(shape.column(f.column))
        if f.op == "in":
            out.append(f"{col} IN ({', '.join(w.value(v) for v in f.value)})")
        elif f.op == "is":
            out.append(f"{col} IS {'NOT ' if f.value == 'notnull' else ''}NULL")
        else:
            out.append(f"{col} {OPS[f.op]} {w.value(f.value)}")
    return out


def _after(w: Writer, keys: list[tuple[str, bool, bool]], values: list[SQLValue]) -> str:
    """Rows strictly after ``values`` in the order ``keys`` ((quoted column, desc,
    nullable)); SQLite sorts NULL first ascending, last descending.

    One direction and no NULL in the cursor (the common case) is a row-value comparison,
    which an index in that order serves as a range (``(n, id) > (?, ?)``); descending,
    the rows with a NULL in a nullable column come after it too. Anything else is the
    comparison spelled out, column by column."""
    if len(values) != len(keys):
        raise _bad("'after' is not a cursor of this order")
    if len({desc for _, desc, _ in keys}) == 1 and all(v is not None for v in values):
        desc = keys[0][1]
        cols = ", ".join(c for c, _, _ in keys)
        params = ", ".join(w.value(v) for v in values)
        cut = f"({cols}) {'<' if desc else '>'} ({params})"
        tails = []
        if desc:
            for i, (col, _, nullable) in enumerate(keys):
                if nullable:
                    pairs = zip(keys[:i], values[:i], strict=True)  # mutate: harmless (one length)
                    ties = [f"{c} = {w.value(v)}" for (c, _, _), v in pairs]
                    tails.append("(" + " AND ".join([*ties, f"{col} IS NULL"]) + ")")
        return "(" + " OR ".join([cut, *tails]) + ")"
    alts = []
    # mutate: harmless constant (checked above: one length)
    for i, ((col, desc, nullable), v) in enumerate(zip(keys, values, strict=True)):
        ties = [f"{c} IS {w.value(x)}" for (c, _, _), x in zip(
            keys[:i], values[:i], strict=True)]  # mutate: harmless constant (one length)
        if v is None:
            step = "0" if desc else f"{col} IS NOT NULL"
        elif desc:
            step = f"({col} < {w.value(v)} OR {col} IS NULL)" if nullable else \
                f"{col} < {w.value(v)}"
        else:
            step = f"{col} > {w.value(v)}"
        alts.append("(" + " AND ".join([*ties, step]) + ")")
    return "(" + " OR ".join(alts) + ")"


def select_sql(shape: Shape, read: Read, rule: Expr | None,
               who: Claims | None) -> tuple[str, dict[str, SQLValue], int]:
    """The read's SQL, its parameters and the number of columns the caller shows (the
    rest, the order's values and the key, make the next page's cursor)."""
    w = Writer(who)
    shown = [shape.column(c) for c in read.columns] if read.columns else list(shape.columns)
    certain = set(shape.key) | shape.not_null  # columns that hold no NULL
    order = [(quote(c := shape.column(o.column)), o.desc, c not in certain)
             for o in read.order]
    seen = {c for c, _, _ in order}
    last = order[-1][1] if order else False  # the key breaks ties in the last one's direction
    keys = order + [(quote(k), last, False) for k in shape.key if quote(k) not in seen]
    conds = [w.rule(rule)] if rule is not None else []
    conds += _where(shape, w, read.filters)
    if read.after is not None:
        conds.append(_after(w, keys, read.after))
    cols = [quote(c) for c in shown] + [c for c, _, _ in keys]
    sql = f"SELECT {', '.join(cols)} FROM main.{quote(shape.table)}"
    if conds:
        sql += " WHERE " + " AND ".join(conds)
    sql += " ORDER BY " + ", ".join(f"{c} DESC" if d else c for c, d, _ in keys)
    sql += f" LIMIT {int(read.limit) + 1}"
    return sql, w.args, len(shown)


def _returning(shape: Shape, w: Writer, rules: Sequence[Expr | None], verb: str) -> str:
    """RETURNING's columns: the row's, then a check that the row passes every rule given
    (none: no check)."""
    columns = [quote(c) for c in shape.columns]
    checks = [f"coalesce({w.rule(rule)}, 0)" for rule in rules if rule is not None]
    if checks:
        columns.append(f"CASE WHEN {' AND '.join(checks)} THEN 1 ELSE {DENY}('{verb}') END")
    return " RETURNING " + ", ".join(columns)


def _writable(shape: Shape, name: str) -> str:
    col = shape.column(name)
    if col not in shape.writable:
        raise _bad(f"column {col} of {shape.table} is generated: it cannot be written",
                   Code.INVALID_REQUEST)
    return col


def insert_sql(shape: Shape, rows: list[dict[str, SQLValue]], rules: Rules | None,
               who: Claims | None, upsert: bool = False
               ) -> list[tuple[str, dict[str, SQLValue]]]:
    """One INSERT per set of columns the rows give (in their order), each returning its
    rows (and checking the insert rule on each new row).

    ``upsert``: a row that conflicts with one there (any UNIQUE or primary key) updates it
    instead, setting the columns the row gives (not the key's). For a bound token the row
    there must pass the select and update rules (else it is left as it is, and not
    returned), and every row written must pass both the insert and the update rule."""
    groups: dict[tuple[str, ...], list[dict[str, SQLValue]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    out = []
    for names, group in groups.items():
        w = Writer(who)
        cols = [_writable(shape, n) for n in names]
        if len({c.lower() for c in cols}) != len(cols):
            raise _bad("a row names a column twice")
        target = f"INSERT INTO main.{quote(shape.table)}"
        if cols:
            values = ", ".join("(" + ", ".join(w.value(r[n]) for n in names) + ")"
                               for r in group)
            body = f"{target} ({', '.join(quote(c) for c in cols)}) VALUES {values}"
        elif upsert:
            raise _bad("an upsert names the columns it sets")
        else:
            if len(group) > 1:
                raise _bad("rows without columns are inserted one at a time")
            body = f"{target} DEFAULT VALUES"
        checks: list[Expr | None] = [rules.insert] if rules is not None else []
        if upsert:
            body += _on_conflict(shape, w, cols, rules)
            checks += [rules.update] if rules is not None else []
        out.append((body + _returning(shape, w, checks, "insert"), w.args))
    return out


def _on_conflict(shape: Shape, w: Writer, cols: list[str], rules: Rules | None) -> str:
    """An upsert's clause: set the given columns but the key's, on the row there if it
    passes the select and update rules (a bound token's)."""
    sets = [f"{quote(c)} = excluded.{quote(c)}" for c in cols if c not in shape.key]
    if not sets:
        return " ON CONFLICT DO NOTHING"
    clause = " ON CONFLICT DO UPDATE SET " + ", ".join(sets)
    if rules is not None:
        assert rules.select is not None and rules.update is not None
        clause += f" WHERE {w.rule(rules.select)} AND {w.rule(rules.update)}"
    return clause


def _reached(shape: Shape, w: Writer, filters: list[Filter], rules: Rules | None,
             verb: str) -> str:
    """The WHERE of an update or delete: the rows passing the select rule and the verb's
    (for a bound token), and the filters."""
    conds = []
    if rules is not None:
        own = rules.get(verb)
        assert rules.select is not None and own is not None
        conds += [w.rule(rules.select), w.rule(own)]
    conds += _where(shape, w, filters)
    return " WHERE " + " AND ".join(conds) if conds else ""


def update_sql(shape: Shape, values: dict[str, SQLValue], filters: list[Filter],
               rules: Rules | None, who: Claims | None) -> tuple[str, dict[str, SQLValue]]:
    if not values:
        raise _bad("an update sets at least one column")
    w = Writer(who)
    sets = ", ".join(f"{quote(_writable(shape, n))} = {w.value(v)}" for n, v in values.items())
    sql = f"UPDATE main.{quote(shape.table)} SET {sets}" + \
        _reached(shape, w, filters, rules, "update")
    return sql + _returning(shape, w, [rules.update] if rules is not None else [],
                            "update"), w.args


def delete_sql(shape: Shape, filters: list[Filter], rules: Rules | None,
               who: Claims | None) -> tuple[str, dict[str, SQLValue]]:
    w = Writer(who)
    sql = f"DELETE FROM main.{quote(shape.table)}" + \
        _reached(shape, w, filters, rules, "delete")
    return sql + _returning(shape, w, [], "delete"), w.args


def visible_sql(shape_columns: Sequence[str], table: str, rule: Expr, rows: int,
                who: Claims) -> tuple[str, dict[str, SQLValue], list[str]]:
    """A query giving, for each of ``rows`` rows (bound afterwards as :r<i>_<j>), whether
    the select rule holds for it: how the change feed shows a token bound by rules only
    the changes of rows it may read. The rows stand in for the table (a CTE of its name),
    so the rule reads them as it reads the table's."""
    w = Writer(who)
    expr = w.rule(rule)
    names = [[f"r{i}_{j}" for j in range(len(shape_columns))] for i in range(rows)]
    values = ", ".join("(" + ", ".join(":" + n for n in row) + ")" for row in names)
    cols = ", ".join(quote(c) for c in shape_columns)
    sql = (f"WITH {quote(table)}({cols}) AS (VALUES {values}) "
           f"SELECT coalesce({expr}, 0) FROM {quote(table)}")
    return sql, w.args, [n for row in names for n in row]
