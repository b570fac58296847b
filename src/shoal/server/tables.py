"""The data API (``/v1/databases/{db}/tables/{table}``), row rules and named queries.

Requests name columns, filters, an order and a page; Shoal writes the SQL
(``shoal.rules``) and the engine adds the table's rules for a token bound by them. Rows
come back as JSON objects, values in the native API's value encoding. Every route also
exists under ``/v1/databases/{db}/branches/{branch}/...`` for another branch than main.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import msgspec

from shoal import names, rules
from shoal.engine import Idempotency, Rows
from shoal.errors import Code, ShoalError
from shoal.server.http import (
    BOOKMARK,
    JSON_HEADERS,
    Request,
    Response,
    Router,
    encode,
    json_response,
)
from shoal.server.ports import EngineAPI
from shoal.values import ArgValue, decode

DEFAULT_LIMIT = 100
_InsertBody = dict[str, ArgValue] | list[dict[str, ArgValue]]  # one row, or many


class SetRulesRequest(msgspec.Struct, forbid_unknown_fields=True):
    select: str | msgspec.UnsetType | None = msgspec.UNSET
    insert: str | msgspec.UnsetType | None = msgspec.UNSET
    update: str | msgspec.UnsetType | None = msgspec.UNSET
    delete: str | msgspec.UnsetType | None = msgspec.UNSET


class SetQueryRequest(msgspec.Struct, forbid_unknown_fields=True):
    sql: str
    description: str = ""


class RunQueryRequest(msgspec.Struct, forbid_unknown_fields=True):
    args: dict[str, ArgValue] = {}


def _rows_body(rows: Rows, with_next: bool = False) -> bytes:
    body: dict[str, Any] = {"rows": [dict(zip(rows.columns, r, strict=True))
                                     for r in rows.rows]}
    if with_next:
        body["next"] = rows.next
    body["bookmark"] = rows.bookmark
    return encode(body)


def _rows_response(status: int, rows: Rows, with_next: bool = False) -> Response:
    if rows.replay is not None:  # an Idempotency-Key's first answer
        status, body = rows.replay
    else:
        body = _rows_body(rows, with_next)
    return Response(status, body, [*JSON_HEADERS, (BOOKMARK, rows.bookmark.encode())]
                    if rows.bookmark else list(JSON_HEADERS))


def _idem(request: Request) -> Idempotency | None:
    """The request's Idempotency-Key, its fingerprint over the method, the path and query
    string (a PATCH's filters) and the body."""
    what = b"%s %s?%s\n" % (request.method.encode(), request.path.encode(),
                            request.scope.get("query_string", b""))
    return Idempotency.of(request.header(b"idempotency-key"), what + request.body)


def _render(status: int) -> Callable[[Rows], tuple[int, bytes]]:
    return lambda rows: (status, _rows_body(rows))


def _pairs(request: Request) -> list[tuple[str, str]]:
    """The filters of the query string, in order (``select``, ``order``... are not)."""
    raw = request.scope.get("query_string", b"").decode("latin-1")
    return parse_qsl(raw, keep_blank_values=True, max_num_fields=rules.MAX_FILTERS + 8)


def _row(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ShoalError(Code.INVALID_REQUEST, "each row is a JSON object of column: value")
    return {str(k): decode(v) for k, v in obj.items()}


class TablesAPI:
    def __init__(self, engine: EngineAPI):
        self.engine = engine

    def register(self, router: Router) -> None:
        for base in ("/v1/databases/{db}", "/v1/databases/{db}/branches/{branch}"):
            table = base + "/tables/{table}"
            for method, path, handler in (
                ("GET", table, self.read),
                ("POST", table, self.insert),
                ("PATCH", table, self.update),
                ("DELETE", table, self.delete),
                ("GET", table + "/schema", self.schema),
                ("GET", base + "/rules", self.rules),
                ("PUT", base + "/rules/{table}", self.set_rules),
                ("GET", base + "/queries", self.queries),
                ("PUT", base + "/queries/{query}", self.set_query),
                ("DELETE", base + "/queries/{query}", self.delete_query),
                ("POST", base + "/queries/{query}", self.run_query),
            ):
                router.add(method, path, handler)

    @staticmethod
    def _where(request: Request) -> tuple[str, str, str]:
        name = names.check(request.params["db"])
        branch = request.params.get("branch")
        if branch is not None:
            names.check(branch, "branch")
        return name, request.principal.on(branch), request.params.get("table", "")

    async def read(self, request: Request) -> Response:
        """A page of rows: ?select=a,b & filters (col=op.value) & order & limit & after."""
        name, branch, table = self._where(request)
        select = request.query("select")
        limit = request.query("limit")
        after = request.query("after")
        try:
            n = DEFAULT_LIMIT if limit is None else int(limit)
        except ValueError:
            raise ShoalError(Code.INVALID_REQUEST, "limit is a number") from None
        read = rules.Read(
            columns=tuple(c for c in select.split(",") if c) if select else None,
            filters=rules.parse_filters(_pairs(request)),
            order=rules.parse_order(request.query("order")),
            limit=n,
            after=rules.decode_cursor(after) if after else None)
        rows = await self.engine.read_rows(request.principal, name, table, read, branch=branch)
        return _rows_response(200, rows, with_next=True)

    async def insert(self, request: Request) -> Response:
        """Insert one row (an object) or many (an array); answers the rows as stored.
        ``?on_conflict=update``: a row conflicting with one there updates it (an upsert)."""
        name, branch, table = self._where(request)
        await request.read_body(self.engine.settings.max_request_bytes)
        body: Any = request.decode(_InsertBody)  # type: ignore[arg-type]
        items = body if isinstance(body, list) else [body]
        conflict = request.query("on_conflict")
        if conflict not in (None, "update"):
            raise ShoalError(Code.INVALID_REQUEST, "on_conflict=update (an upsert), or none")
        rows = await self.engine.insert_rows(request.principal, name, table,
                                             [_row(r) for r in items], branch=branch,
                                             idem=_idem(request), render=_render(201),
                                             upsert=conflict == "update")
        return _rows_response(201, rows)

    async def update(self, request: Request) -> Response:
        """Set the body's columns on the rows the filters match; answers them."""
        name, branch, table = self._where(request)
        await request.read_body(self.engine.settings.max_request_bytes)
        values = _row(request.decode(dict[str, ArgValue]))
        rows = await self.engine.update_rows(request.principal, name, table, values,
                                             rules.parse_filters(_pairs(request)),
                                             branch=branch, idem=_idem(request),
                                             render=_render(200))
        return _rows_response(200, rows)

    async def delete(self, request: Request) -> Response:
        name, branch, table = self._where(request)
        rows = await self.engine.delete_rows(request.principal, name, table,
                                             rules.parse_filters(_pairs(request)),
                                             branch=branch, idem=_idem(request),
                                             render=_render(200))
        return _rows_response(200, rows)

    async def schema(self, request: Request) -> Response:
        name, branch, table = self._where(request)
        return json_response(200, await self.engine.table_schema(request.principal, name,
                                                                 table, branch=branch))

    async def rules(self, request: Request) -> Response:
        name, branch, _ = self._where(request)
        found = await self.engine.rules_of(request.principal, name, branch=branch)
        return json_response(200, {"database": name, "branch": branch, "rules": found})

    async def set_rules(self, request: Request) -> Response:
        """Set the rules the body names (a text), remove those it sets to null."""
        name, branch, table = self._where(request)
        await request.read_body(self.engine.settings.max_request_bytes)
        body = request.decode(SetRulesRequest)
        verbs = {v: getattr(body, v) for v in rules.VERBS
                 if getattr(body, v) is not msgspec.UNSET}
        bookmark = await self.engine.set_rules(request.principal, name, table, verbs,
                                               branch=branch)
        found = await self.engine.rules_of(request.principal, name, branch=branch)
        mine = next((r for t, r in found.items() if t.lower() == table.lower()),
                    dict.fromkeys(rules.VERBS))
        return Response(200, encode({"table": table, "rules": mine, "bookmark": bookmark}),
                        [*JSON_HEADERS, (BOOKMARK, bookmark.encode())])

    async def queries(self, request: Request) -> Response:
        name, branch, _ = self._where(request)
        found = await self.engine.named_queries(request.principal, name, branch=branch)
        return json_response(200, {"queries": [
            {"name": q.name, "sql": q.sql.text, "description": q.description}
            for q in found]})

    async def set_query(self, request: Request) -> Response:
        name, branch, _ = self._where(request)
        await request.read_body(self.engine.settings.max_request_bytes)
        body = request.decode(SetQueryRequest)
        bookmark = await self.engine.set_named_query(
            request.principal, name, request.params["query"], body.sql, body.description,
            branch=branch)
        return json_response(200, {"name": request.params["query"], "sql": body.sql,
                                   "description": body.description, "bookmark": bookmark})

    async def delete_query(self, request: Request) -> Response:
        name, branch, _ = self._where(request)
        await self.engine.set_named_query(request.principal, name, request.params["query"],
                                          None, branch=branch)
        return Response(204)

    async def run_query(self, request: Request) -> Response:
        """Run a named query: {"args": {"name": value}}; answers like POST .../query."""
        name, branch, _ = self._where(request)
        await request.read_body(self.engine.settings.max_request_bytes)
        body = request.decode(RunQueryRequest) if request.body.strip() else RunQueryRequest()
        args = {k[1:] if k[:1] in ":@$" else k: decode(v) for k, v in body.args.items()}
        out = await self.engine.run_named_query(request.principal, name,
                                                request.params["query"], args, branch=branch)
        result = out.results[0]
        return Response(200, encode({
            "columns": result.columns,
            "rows": [dict(zip(result.columns, r, strict=False)) for r in result.rows],
            "rows_affected": result.rows_affected, "bookmark": out.bookmark}),
            [*JSON_HEADERS, (BOOKMARK, out.bookmark.encode())])
