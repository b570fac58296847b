"""Row rules and named queries, kept inside each database file; the data API's tables.

Both live in tables of Shoal's own in the user's database (``_cf_SHOAL_rules``,
``_cf_SHOAL_queries``; the authorizer keeps every SQL statement away from them, see
engine/tables.py), so a branch forks with the rules it had, a restore brings back the
rules of its point in time, and a change of rules is a commit like any other, in the
history. They are written by Shoal inside a write job's savepoint (``WriteJob.own``),
after a check that they compile against the table under the users' authorizer.

A table's shape and rules are read once and kept on the open branch (``Database.access``)
until the schema changes or a rule is saved there (``access_generation``): the hot path
of a rule-bound read is a dict lookup, then one statement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import apsw

from shoal.engine.connection import TAG, Connection, Limits, Statement
from shoal.engine.tables import hidden
from shoal.errors import Code, ShoalError
from shoal.rules import VERBS, Expr, Rules, Shape, compile_expr, quote
from shoal.wire import SQLValue

RULES = "_cf_SHOAL_rules"
QUERIES = "_cf_SHOAL_queries"
MAX_QUERY_CHARS = 100_000
CACHED_TABLES = 256  # per open branch; past it the view of tables is read afresh

_CREATE_RULES = (f"CREATE TABLE IF NOT EXISTS {RULES} (tbl TEXT NOT NULL COLLATE NOCASE, "
                 "verb TEXT NOT NULL, expr TEXT NOT NULL, PRIMARY KEY (tbl, verb)) "
                 "WITHOUT ROWID")
_CREATE_QUERIES = (f"CREATE TABLE IF NOT EXISTS {QUERIES} (name TEXT PRIMARY KEY, "
                   "sql TEXT NOT NULL, description TEXT NOT NULL) WITHOUT ROWID")
_KIND = f"SELECT name, type, wr FROM pragma_table_list(?) WHERE schema = 'main' /*{TAG}*/"
_XINFO = (f"SELECT name, pk, hidden, type, \"notnull\" FROM pragma_table_xinfo(?, 'main') "
          f"/*{TAG}*/")
_TABLE_RULES = f"SELECT verb, expr FROM {RULES} WHERE tbl = ? /*{TAG}*/"
_ALL_RULES = f"SELECT tbl, verb, expr FROM {RULES} ORDER BY tbl, verb /*{TAG}*/"
_PUT_RULE = f"INSERT OR REPLACE INTO {RULES}(tbl, verb, expr) VALUES (?, ?, ?) /*{TAG}*/"
_DROP_RULE = f"DELETE FROM {RULES} WHERE tbl = ? AND verb = ? /*{TAG}*/"
_ALL_QUERIES = f"SELECT name, sql, description FROM {QUERIES} ORDER BY name /*{TAG}*/"
_QUERY = f"SELECT sql, description FROM {QUERIES} WHERE name = ? /*{TAG}*/"
_PUT_QUERY = (f"INSERT OR REPLACE INTO {QUERIES}(name, sql, description) VALUES (?, ?, ?) "
              f"/*{TAG}*/")
_DROP_QUERY = f"DELETE FROM {QUERIES} WHERE name = ? /*{TAG}*/"


@dataclass(frozen=True, slots=True)
class TableAccess:
    """A table as the data API sees it: its shape (None: no such table, or a view, a
    virtual table or one of Shoal's) and its rules."""

    shape: Shape | None
    rules: Rules
    generation: tuple[int, int] = (-1, -1)  # (access, schema) generation it was read at


@dataclass(frozen=True, slots=True)
class NamedQuery:
    name: str
    sql: Expr
    description: str


def _missing(exc: apsw.SQLError) -> bool:
    return "no such table" in str(exc)


def _rules(rows: list[tuple[str, str]]) -> Rules:
    return Rules(**{verb: compile_expr(text) for verb, text in rows if verb in VERBS})


def read_table(conn: Connection, table: str) -> TableAccess:
    """A reader's snapshot: the table's shape and rules."""
    found = conn.internal(_KIND, (table,))
    if not found or found[0][1] != "table" or hidden(found[0][0]) or \
            found[0][0].lower().startswith("sqlite_"):
        return TableAccess(None, Rules())
    name, _, without_rowid = found[0]
    shape = Shape.of(name, conn.internal(_XINFO, (name,)), bool(without_rowid))
    try:
        rules = _rules(conn.internal(_TABLE_RULES, (name,)))
    except apsw.SQLError as exc:
        if not _missing(exc):
            raise
        rules = Rules()
    return TableAccess(shape, rules)


def read_rules(conn: Connection) -> dict[str, Rules]:
    """Every table's rules, by table name as saved."""
    try:
        rows = conn.internal(_ALL_RULES)
    except apsw.SQLError as exc:
        if _missing(exc):
            return {}
        raise
    by: dict[str, list[tuple[str, str]]] = {}
    for table, verb, text in rows:
        by.setdefault(table, []).append((verb, text))
    return {t: _rules(r) for t, r in by.items()}


def read_queries(conn: Connection, name: str | None = None) -> list[NamedQuery]:
    try:
        rows = conn.internal(_QUERY, (name,)) if name is not None else \
            conn.internal(_ALL_QUERIES)
    except apsw.SQLError as exc:
        if _missing(exc):
            return []
        raise
    if name is not None:
        rows = [(name, *r) for r in rows]
    return [NamedQuery(n, compile_expr(sql, query=True, limit=MAX_QUERY_CHARS), d)
            for n, sql, d in rows]


def _try(conn: Connection, sql: str, expr: Expr, what: str) -> None:
    """Prepare (and run, reading no row) ``sql`` holding ``expr`` under the users'
    authorizer: a rule or query that names what is not there, or what SQL may not
    reach (Shoal's tables), is refused now rather than at every request."""
    args: dict[str, SQLValue] = {f"auth_{i}": None for i in range(len(expr.paths))}
    try:
        conn.run([Statement(sql, args)], Limits(5.0, 1 << 20))
    except ShoalError as exc:
        raise ShoalError(Code.INVALID_RULE, f"{what}: {exc.message}") from None


def save_rules(table: str, verbs: dict[str, Expr | None]) -> Callable[[Connection], None]:
    """A write job's own step: check each rule against ``table``, then store (or drop, for
    None) it."""
    def own(conn: Connection) -> None:
        found = conn.internal(_KIND, (table,))
        if not found or found[0][1] != "table" or hidden(found[0][0]):
            raise ShoalError(Code.TABLE_NOT_FOUND, f"no table {table!r} to set rules on")
        name = found[0][0]
        for verb, expr in verbs.items():
            if expr is not None:
                _try(conn, f"SELECT 1 FROM main.{quote(name)} WHERE ({expr.sql}) LIMIT 0",
                     expr, f"the {verb} rule")
        conn.internal(_CREATE_RULES)
        for verb, expr in verbs.items():
            if expr is None:
                conn.internal(_DROP_RULE, (name, verb))
            else:
                conn.internal(_PUT_RULE, (name, verb, expr.text))
    return own


def save_query(name: str, expr: Expr | None, description: str) -> Callable[[Connection], None]:
    """A write job's own step: store (after a check that it prepares) or drop a named
    query."""
    def own(conn: Connection) -> None:
        if expr is None:
            try:
                conn.internal(_DROP_QUERY, (name,))
            except apsw.SQLError as exc:
                if not _missing(exc):
                    raise
            return
        _describe(conn, expr)
        conn.internal(_CREATE_QUERIES)
        conn.internal(_PUT_QUERY, (name, expr.text, description))
    return own


def _describe(conn: Connection, expr: Expr) -> None:
    """Prepare a named query's statement without running it (users' authorizer)."""
    try:
        conn.describe(expr.sql, 5.0)
    except ShoalError as exc:
        raise ShoalError(Code.INVALID_RULE, f"the query: {exc.message}") from None
