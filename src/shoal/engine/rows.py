"""The Engine's data API, row rules and named queries (a part of the Engine's one door).

A token bound by rules (an identity provider's, ``Principal.bound``) never sends SQL: it
reads and writes rows through statements :mod:`shoal.rules` writes, holding the table's
rule for the verb, and runs the named queries an admin registered. Every other token may
use the same API without rules (its access level still holds: a read token reads). The
rules and queries are kept in the database file (engine/rowrules.py); they are managed
by admins on the branch the request names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from shoal import rules as rr
from shoal.engine import rowrules
from shoal.engine.connection import Connection, Statement
from shoal.engine.rowrules import NamedQuery, TableAccess
from shoal.errors import Code, ShoalError
from shoal.feed.reader import Event
from shoal.names import check as check_name
from shoal.tokens import Principal
from shoal.values import decode
from shoal.wire import SQLValue

if TYPE_CHECKING:
    from shoal.engine.database import Committed, Database, IdempotencyRecord
    from shoal.engine.disk import Disk
    from shoal.engine.engine import Idempotency, Outcome
    from shoal.engine.lifecycle import Lifecycle
    from shoal.engine.quota import Quotas

T = TypeVar("T")

MAX_ROWS = 1000  # rows a read page or a write may hold
FEED_PARAMS = 30_000  # bound values per rule check of feed rows (SQLite allows 32,766)


@dataclass(frozen=True, slots=True)
class Rows:
    """Rows a data API request read or wrote (values in the JSON value encoding), the next
    page's cursor (reads) and the bookmark of the commit (writes) or snapshot (reads)."""

    columns: list[str]
    rows: list[list[Any]]
    next: str | None
    bookmark: str
    replay: tuple[int, bytes] | None = None  # an Idempotency-Key's stored answer, sent as is


RowsRender = Callable[[Rows], tuple[int, bytes]]  # a write's answer (status, body), as kept
# with its Idempotency-Key


def unbound(principal: Principal) -> None:
    """RULES_BOUND for a token bound by rules: it may not send SQL, nor manage anything."""
    if principal.bound:
        raise ShoalError(Code.RULES_BOUND, "this token is bound by row rules: use the data "
                         "API (/v1/databases/{db}/tables/{table}) or a named query")


class RowsAPI:
    """The Engine's methods for the data API (mixed into Engine)."""

    if TYPE_CHECKING:
        lifecycle: Lifecycle
        quotas: Quotas
        disk: Disk

        async def _run(self, fn: Callable[..., T], *args: Any) -> T: ...
        async def _query(self, principal: Principal, db: Database,
                         statements: list[Statement],
                         record: IdempotencyRecord | None) -> Outcome: ...
        async def _idempotent(self, key: tuple[str, str, str],
                              run: Callable[[], Awaitable[Outcome]]) -> Outcome: ...
        async def _query_once(self, principal: Principal, db: Database,
                              statements: list[Statement], idem: Idempotency,
                              render: Callable[[Committed], tuple[int, bytes]]) -> Outcome: ...

    # -- a table's view --
    async def _access(self, db: Database, table: str) -> TableAccess:
        """The table's shape and rules, read once per schema and rules generation."""
        key = table.lower()
        generation = (db.access_generation, db.schema_generation)
        found: TableAccess | None = db.access.get(key)
        if found is not None and found.generation == generation:
            return found
        found = await db.read_own(lambda conn: rowrules.read_table(conn, table))
        found = replace(found, generation=generation)
        if (db.access_generation, db.schema_generation) == generation:
            if len(db.access) >= rowrules.CACHED_TABLES:
                db.access.clear()
            db.access[key] = found
        return found

    async def _table(self, principal: Principal, db: Database, table: str,
                     verb: str) -> tuple[rr.Shape, rr.Rules | None]:
        """The shape, and the rules that bind this token (None: it is not bound). A table a
        bound token has no select rule for does not exist for it."""
        access = await self._access(db, table)
        if access.shape is None or (principal.bound and access.rules.select is None):
            raise ShoalError(Code.TABLE_NOT_FOUND, f"no table {table[:100]!r}")
        if not principal.bound:
            return access.shape, None
        if access.rules.get(verb) is None:
            raise ShoalError(Code.RULE_DENIED, f"no {verb} rule on {access.shape.table}: "
                             "tokens bound by rules may not " + verb + " its rows")
        return access.shape, access.rules

    async def _run_rows(self, principal: Principal, db: Database,
                        statements: list[Statement]) -> Outcome:
        self.quotas.admit(db.name)
        return await self._query(principal, db, statements, None)

    # -- the data API --
    async def read_rows(self, principal: Principal, name: str, table: str, read: rr.Read,
                        *, branch: str = "main") -> Rows:
        """A page of a table's rows (GET .../tables/{table})."""
        principal.require("read", name)
        principal.on(branch)
        if not 1 <= read.limit <= MAX_ROWS:
            raise ShoalError(Code.INVALID_REQUEST, f"limit is 1 to {MAX_ROWS}")
        db = await self.lifecycle.acquire(name, branch)
        try:
            shape, rules = await self._table(principal, db, table, "select")
            sql, args, shown = rr.select_sql(shape, read, rules.select if rules else None,
                                             principal)
            out = await self._run_rows(principal, db, [Statement(sql, args)])
        finally:
            self.lifecycle.release(db)
        result = out.results[0]
        rows = result.rows
        cursor = None
        if len(rows) > read.limit:
            rows = rows[:read.limit]
            cursor = rr.encode_cursor([decode(v) for v in rows[-1][shown:]])
        return Rows(result.columns[:shown], [r[:shown] for r in rows], cursor, out.bookmark)

    async def _write_rows(self, principal: Principal, name: str, table: str, verb: str,
                          branch: str,
                          build: Callable[[rr.Shape, rr.Rules | None],
                                          list[tuple[str, dict[str, SQLValue]]]],
                          idem: Idempotency | None, render: RowsRender | None) -> Rows:
        """Run a write's statements in one transaction; with an Idempotency-Key, once (a
        retry gets the first answer, kept with the commit)."""
        principal.require("write", name)
        principal.on(branch)
        db = await self.lifecycle.acquire(name, branch)
        try:
            # an upsert is an insert that may update: a bound token needs both rules
            shape, rules = await self._table(principal, db, table,
                                             "insert" if verb == "upsert" else verb)
            if rules is not None and verb == "upsert":
                await self._table(principal, db, table, "update")
            statements = [Statement(sql, args) for sql, args in build(shape, rules)]
            n = len(shape.columns)

            def rows_of(results: list[Any], bookmark: str) -> Rows:
                return Rows(list(shape.columns),
                            [r[:n] for result in results for r in result.rows], None, bookmark)

            if idem is None or render is None:
                out = await self._run_rows(principal, db, statements)
            else:
                self.quotas.admit(db.name)
                out = await self._idempotent(
                    (db.usage_key, principal.subject, idem.key),
                    lambda: self._query_once(
                        principal, db, statements, idem,
                        lambda done: render(rows_of(done.counters.results, done.bookmark))))
        finally:
            self.lifecycle.release(db)
        if out.replay is not None:
            return Rows([], [], None, out.bookmark, replay=out.replay)
        return rows_of(out.results, out.bookmark)

    async def insert_rows(self, principal: Principal, name: str, table: str,
                          rows: list[dict[str, SQLValue]], *, branch: str = "main",
                          idem: Idempotency | None = None,
                          render: RowsRender | None = None, upsert: bool = False) -> Rows:
        """Insert rows (POST .../tables/{table}); each must pass the insert rule.
        ``upsert``: a row conflicting with one there updates it (shoal.rules.insert_sql);
        a bound token needs the insert, update and select rules."""
        if not 1 <= len(rows) <= MAX_ROWS:
            raise ShoalError(Code.INVALID_REQUEST, f"send 1 to {MAX_ROWS} rows")
        return await self._write_rows(
            principal, name, table, "upsert" if upsert else "insert", branch,
            lambda shape, rules: rr.insert_sql(shape, rows, rules, principal, upsert),
            idem, render)

    async def update_rows(self, principal: Principal, name: str, table: str,
                          values: dict[str, SQLValue], filters: list[rr.Filter], *,
                          branch: str = "main", idem: Idempotency | None = None,
                          render: RowsRender | None = None) -> Rows:
        """Set columns of the rows the filters match (PATCH .../tables/{table})."""
        return await self._write_rows(
            principal, name, table, "update", branch,
            lambda shape, rules: [rr.update_sql(shape, values, filters, rules, principal)],
            idem, render)

    async def delete_rows(self, principal: Principal, name: str, table: str,
                          filters: list[rr.Filter], *, branch: str = "main",
                          idem: Idempotency | None = None,
                          render: RowsRender | None = None) -> Rows:
        """Delete the rows the filters match (DELETE .../tables/{table})."""
        return await self._write_rows(
            principal, name, table, "delete", branch,
            lambda shape, rules: [rr.delete_sql(shape, filters, rules, principal)],
            idem, render)

    async def table_schema(self, principal: Principal, name: str, table: str, *,
                           branch: str = "main") -> dict[str, Any]:
        """A table's columns and key, and the verbs this token may use on it."""
        principal.require("read", name)
        principal.on(branch)
        db = await self.lifecycle.acquire(name, branch)
        try:
            shape, rules = await self._table(principal, db, table, "select")
        finally:
            self.lifecycle.release(db)
        verbs = [v for v in rr.VERBS if rules is None or rules.get(v) is not None]
        if not principal.can_write:
            verbs = [v for v in verbs if v == "select"]
        return {"table": shape.table, "columns": list(shape.columns),
                "generated": [c for c in shape.columns if c not in shape.writable],
                "key": list(shape.key), "verbs": verbs}

    # -- rules --
    async def rules_of(self, principal: Principal, name: str, *,
                       branch: str = "main") -> dict[str, dict[str, str | None]]:
        """Every table's rules on the branch (admins)."""
        principal.require("admin", name)
        principal.on(branch)
        unbound(principal)
        async with self.lifecycle.use(name, branch) as db:
            found = await db.read_own(rowrules.read_rules)
        return {table: r.as_json() for table, r in sorted(found.items())}

    async def _own_write(self, principal: Principal, name: str, branch: str,
                         own: Callable[[Connection], None]) -> str:
        """A commit of Shoal's own rows in the database (rules, queries): its bookmark."""
        principal.require("admin", name)
        principal.on(branch)
        unbound(principal)
        self.disk.refuse()
        async with self.lifecycle.use(name, branch) as db:
            done = await db.write([], own=own)
            db.access_generation += 1
            db.access.clear()
        return done.bookmark

    async def set_rules(self, principal: Principal, name: str, table: str,
                        verbs: dict[str, str | None], *, branch: str = "main") -> str:
        """Set (a text) or remove (None) the rules of these verbs on ``table``; the verbs not
        named keep theirs. Each rule is checked against the table first (INVALID_RULE)."""
        check_name(name)
        unknown = set(verbs) - set(rr.VERBS)
        if unknown or not verbs:
            raise ShoalError(Code.INVALID_REQUEST, f"rules are given by verb: "
                             f"{', '.join(rr.VERBS)}")
        compiled = {v: None if t is None else rr.compile_expr(t) for v, t in verbs.items()}
        return await self._own_write(principal, name, branch,
                                     rowrules.save_rules(table, compiled))

    # -- named queries --
    async def named_queries(self, principal: Principal, name: str, *,
                            branch: str = "main") -> list[NamedQuery]:
        principal.require("read", name)
        principal.on(branch)
        async with self.lifecycle.use(name, branch) as db:
            return await db.read_own(lambda conn: rowrules.read_queries(conn))

    async def set_named_query(self, principal: Principal, name: str, query: str,
                              sql: str | None, description: str = "", *,
                              branch: str = "main") -> str:
        """Register (or, sql None, remove) a named query: one statement whose ``:name``
        parameters the caller gives and whose ``auth.*`` the token does."""
        check_name(query, "query")
        expr = None if sql is None else await self._run(  # up to 100,000 characters: off
            rr.compile_expr, sql, True, rowrules.MAX_QUERY_CHARS)  # the event loop
        return await self._own_write(principal, name, branch,
                                     rowrules.save_query(query, expr, description[:1000]))

    async def run_named_query(self, principal: Principal, name: str, query: str,
                              args: dict[str, SQLValue], *, branch: str = "main") -> Outcome:
        """Run a named query with the caller's arguments and the token's claims (a read
        token runs it read-only)."""
        principal.require("read", name)
        principal.on(branch)
        if any(k.startswith(rr.PARAM) for k in args):
            raise ShoalError(Code.INVALID_ARGUMENT, "auth_* parameters are the token's")
        db = await self.lifecycle.acquire(name, branch)
        try:
            found = await db.read_own(lambda conn: rowrules.read_queries(conn, query))
            if not found:
                raise ShoalError(Code.QUERY_NOT_FOUND, f"no named query {query!r}")
            expr = found[0].sql
            bound: dict[str, SQLValue] = dict(args)
            expr.bind(principal, bound)
            return await self._run_rows(principal, db, [Statement(expr.sql, bound)])
        finally:
            self.lifecycle.release(db)

    # -- the feed, as rules show it --
    async def _visible(self, principal: Principal, name: str, branch: str,
                       found: list[Event]) -> list[Event]:
        """The events of rows a bound token may read: an insert of a row its select rule
        passes, a delete of one it passed (by the old row: a table that keeps no old rows
        shows it no deletes), an update as an update, an insert (the row came into its
        view) or a delete (it left). Uncaptured runs carry no row: kept."""
        db = await self.lifecycle.acquire(name, branch)
        try:
            by_table: dict[str, list[tuple[SQLValue, ...]]] = {}
            for e in found:
                c = e.change
                if c is not None:
                    rows = by_table.setdefault(c.table, [])
                    rows.extend(r for r in (c.new, c.old) if r is not None)
            passed: dict[str, dict[tuple[SQLValue, ...], bool]] = {}
            for table, rows in by_table.items():
                passed[table] = await self._passes(principal, db, table, rows, found)
        finally:
            self.lifecycle.release(db)
        out = []
        for e in found:
            c = e.change
            if c is None:
                out.append(e)
                continue
            ok = passed.get(c.table, {})
            new = c.new is not None and ok.get(c.new, False)
            old = c.old is not None and ok.get(c.old, False)
            if (c.op == "insert" and new) or (c.op == "delete" and old):
                out.append(e)
            elif c.op == "update":
                if new and (old or c.old is None):
                    out.append(e)
                elif new:
                    out.append(replace(e, change=replace(c, op="insert", old=None)))
                elif old:
                    out.append(replace(e, change=replace(c, op="delete", new=None)))
        return out

    async def _passes(self, principal: Principal, db: Database, table: str,
                      rows: list[tuple[SQLValue, ...]],
                      found: list[Event]) -> dict[tuple[SQLValue, ...], bool]:
        """Whether the table's select rule passes each row (none without a rule)."""
        access = await self._access(db, table)
        rule = access.rules.select
        if rule is None or not rows:
            return {}
        columns = next(e.change.columns for e in found
                       if e.change is not None and e.change.table == table)
        out: dict[tuple[SQLValue, ...], bool] = {}
        unique = list(dict.fromkeys(rows))
        step = max(1, FEED_PARAMS // max(1, len(columns)))
        for i in range(0, len(unique), step):
            chunk = [r for r in unique[i:i + step] if len(r) == len(columns)]
            if not chunk:
                continue
            sql, args, names = rr.visible_sql(columns, table, rule, len(chunk), principal)
            for n, v in zip(names, (v for r in chunk for v in r), strict=True):
                args[n] = v
            try:
                counters, _ = await db.read([Statement(sql, args)])
            except ShoalError:  # a rule that no longer fits the table shows nothing
                continue
            for row, result in zip(chunk, counters.results[0].rows, strict=True):
                out[row] = bool(result[0])
        return out
