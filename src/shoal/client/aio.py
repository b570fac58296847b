"""The asyncio client: :class:`AsyncClient` and its :class:`AsyncTransaction`.

The same calls as :mod:`shoal.client.sync`, awaited; see :class:`~shoal.client.Client` for
what each does.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import httpx

from shoal.client.calls import (
    DEFAULT_TIMEOUT,
    KEEP,
    RETRY_FOR,
    BaseClient,
    BaseFeed,
    BaseTransaction,
    Call,
    Consistency,
    Plan,
    Where,
)
from shoal.client.codec import Args, StatementLike
from shoal.client.errors import ClientError, transport_error
from shoal.client.results import Change, Result

T = TypeVar("T")


class AsyncClient(BaseClient):
    """asyncio client with the same methods as :class:`Client`, awaited (the same session
    too: ``bookmark`` and ``remember`` are plain methods)."""

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 database: str | None = None, branch: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None,
                 verify: ssl.SSLContext | bool | None = None, session: bool = True,
                 consistency: Consistency | None = None, bookmarks: Iterable[str] = ()):
        super().__init__(url, token, database, branch, session=session,
                         consistency=consistency, bookmarks=bookmarks)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self._headers(),
                                       timeout=timeout, transport=transport,
                                       verify=self._verify(verify))

    async def _send(self, call: Call[T]) -> T:
        try:
            response = await self._http.send(call.request(self._http))
        except httpx.HTTPError as exc:
            raise transport_error(exc) from exc
        return self._finish(call, response)

    async def _run(self, plan: Plan[T]) -> T:
        try:
            call = next(plan)
            while True:
                call = plan.send(await self._send(call))
        except StopIteration as stop:
            return stop.value

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def execute(self, sql: str, args: Args = None, *, database: str | None = None,
                      branch: str | None = None, idempotency_key: str | None = None,
                      consistency: Consistency | None = None) -> Result:
        return (await self._send(self._query([(sql, args)], database, branch,
                                             idempotency_key, consistency=consistency)))[0]

    async def batch(self, statements: Sequence[StatementLike], *, database: str | None = None,
                    branch: str | None = None, idempotency_key: str | None = None,
                    consistency: Consistency | None = None) -> list[Result]:
        if not statements:
            return []
        return await self._send(self._query(statements, database, branch, idempotency_key,
                                            consistency=consistency))

    def transaction(self, mode: Literal["read", "write"] | None = None, *,
                    database: str | None = None, branch: str | None = None,
                    idempotency_key: str | None = None,
                    consistency: Consistency | None = None) -> AsyncTransaction:
        """Use with ``async with``: begins, commits on success, rolls back on error."""
        return AsyncTransaction(self, mode, database, branch, idempotency_key, consistency)

    async def create_database(self, name: str, *,
                              idempotency_key: str | None = None) -> dict[str, Any]:
        return await self._send(self._create_database(name, idempotency_key))

    async def list_databases(self, *, limit: int | None = None,
                             page_size: int = 100) -> list[dict[str, Any]]:
        return await self._run(self._list(limit, page_size))

    async def database(self, name: str | None = None) -> dict[str, Any]:
        return await self._send(self._database(name))

    async def delete_database(self, name: str, *, purge: bool = False) -> None:
        await self._send(self._delete_database(name, purge))

    async def undelete_database(self, name: str,
                                incarnation: str | None = None) -> dict[str, Any]:
        return await self._send(self._undelete_database(name, incarnation))

    async def deleted_databases(self) -> list[dict[str, Any]]:
        return await self._send(self._deleted_databases())

    async def usage(self, name: str | None = None, *,
                    branch: str | None = None) -> dict[str, Any]:
        return await self._send(self._usage(name, branch))

    async def limits(self, name: str | None = None) -> dict[str, Any]:
        return await self._send(self._limits(name))

    async def set_limits(self, name: str | None = None, **limits: Any) -> dict[str, Any]:
        return await self._send(self._set_limits(name, limits))

    async def compact(self, name: str | None = None, *,
                      branch: str | None = None) -> dict[str, Any]:
        return await self._send(self._compact(name, branch))

    async def create_token(self, databases: Sequence[str] | Literal["*"] = "*",
                           access: Literal["read", "write", "admin", "provision"] = "read",
                           expires_in: int = 3600, *, branch: str | None = None,
                           idempotency_key: str | None = None) -> dict[str, Any]:
        return await self._send(self._create_token(databases, access, expires_in,
                                                   idempotency_key, branch))

    async def revoke_token(self, token_id: str) -> None:
        await self._send(self._revoke_token(token_id))

    async def tokens(self, database: str | None = None, *, expired: bool = False,
                     revoked: bool = False, limit: int | None = None,
                     page_size: int = 100) -> list[dict[str, Any]]:
        return await self._run(self._tokens(database, expired, revoked, limit, page_size))

    async def audit(self, database: str | None = None, *,
                    since: str | float | datetime | None = None,
                    until: str | float | datetime | None = None, limit: int | None = None,
                    page_size: int = 100) -> list[dict[str, Any]]:
        return await self._run(self._audit(database, since, until, limit, page_size))

    @overload
    async def issuers(self, database: None = None) -> dict[str, Any]: ...
    @overload
    async def issuers(self, database: str) -> list[dict[str, Any]]: ...

    async def issuers(self, database: str | None = None
                      ) -> dict[str, Any] | list[dict[str, Any]]:
        return await self._send(self._issuers(database))

    async def set_issuers(self, database: str,
                          issuers: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return await self._send(self._set_issuers(database, issuers))

    async def revoke_issuer(self, issuer: str, *, jti: str | None = None,
                            database: str | None = None) -> dict[str, Any]:
        return await self._send(self._revoke_issuer(issuer, jti, database))

    async def list_branches(self, database: str | None = None) -> list[dict[str, Any]]:
        return await self._send(self._branches(database))

    async def branch(self, name: str | None = None, *,
                     database: str | None = None) -> dict[str, Any]:
        return await self._send(self._branch(name, database))

    async def create_branch(self, name: str, *, database: str | None = None,
                            source: str | None = None,
                            timestamp: str | datetime | None = None,
                            bookmark: str | None = None,
                            materialise: bool = False) -> dict[str, Any]:
        return await self._send(self._create_branch(name, database, source, timestamp,
                                                    bookmark, materialise))

    async def delete_branch(self, name: str, *, database: str | None = None) -> None:
        await self._send(self._delete_branch(name, database))

    async def reset_branch(self, name: str, *, database: str | None = None) -> dict[str, Any]:
        return await self._send(self._reset_branch(name, database))

    async def restore(self, *, database: str | None = None, branch: str | None = None,
                      timestamp: str | datetime | None = None, bookmark: str | None = None,
                      keep_as: str | None = None) -> dict[str, Any]:
        return await self._send(self._restore(database, branch, timestamp, bookmark, keep_as))

    async def history(self, *, database: str | None = None,
                      branch: str | None = None) -> dict[str, Any]:
        return await self._send(self._history(database, branch))

    async def create_webhook(self, database: str | None, url: str, *,
                             branch: str | None = None,
                             tables: str | Iterable[str] | None = None,
                             ops: str | Iterable[str] | None = None,
                             batch_size: int | None = None, max_attempts: int | None = None,
                             max_age: float | None = None,
                             since: str | datetime | None = None) -> dict[str, Any]:
        return await self._send(self._create_webhook(database, url, branch, tables, ops,
                                                     batch_size, max_attempts, max_age, since))

    async def webhooks(self, database: str | None = None) -> list[dict[str, Any]]:
        return await self._send(self._webhooks(database))

    async def webhook(self, database: str | None, webhook_id: str) -> dict[str, Any]:
        return await self._send(self._webhook(database, webhook_id))

    async def delete_webhook(self, database: str | None, webhook_id: str) -> None:
        await self._send(self._delete_webhook(database, webhook_id))

    async def dead_letters(self, database: str | None,
                           webhook_id: str) -> list[dict[str, Any]]:
        return await self._send(self._dead_letters(database, webhook_id))

    async def replay_dead_letters(self, database: str | None, webhook_id: str,
                                  letter: str | None = None) -> list[str]:
        return await self._send(self._replay_dead_letters(database, webhook_id, letter))

    async def delete_dead_letter(self, database: str | None, webhook_id: str,
                                 letter: str) -> None:
        await self._send(self._delete_dead_letter(database, webhook_id, letter))

    async def rows(self, database: str | None, table: str, *,
                   select: str | Sequence[str] | None = None, where: Where | None = None,
                   order: str | Sequence[str] | None = None, limit: int | None = None,
                   after: str | None = None, branch: str | None = None) -> dict[str, Any]:
        return await self._send(self._rows(database, table, select, where, order, limit,
                                           after, branch))

    async def iter_rows(self, database: str | None, table: str, *,
                        select: str | Sequence[str] | None = None,
                        where: Where | None = None, order: str | Sequence[str] | None = None,
                        limit: int | None = None, after: str | None = None,
                        branch: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """An async generator (``async for row in db.iter_rows(...)``), as
        :meth:`Client.iter_rows <shoal.client.Client.iter_rows>`."""
        while True:
            page = await self.rows(database, table, select=select, where=where, order=order,
                                   limit=limit, after=after, branch=branch)
            for row in page["rows"]:
                yield row
            after = page["next"]
            if after is None:
                return

    async def insert_rows(self, database: str | None, table: str,
                          rows: Mapping[str, Any] | Sequence[Mapping[str, Any]], *,
                          branch: str | None = None,
                          upsert: bool = False) -> list[dict[str, Any]]:
        return await self._send(self._insert_rows(database, table, rows, branch, upsert))

    async def update_rows(self, database: str | None, table: str, values: Mapping[str, Any],
                          where: Where, *, branch: str | None = None) -> list[dict[str, Any]]:
        return await self._send(self._update_rows(database, table, values, where, branch))

    async def delete_rows(self, database: str | None, table: str, where: Where, *,
                          branch: str | None = None) -> list[dict[str, Any]]:
        return await self._send(self._delete_rows(database, table, where, branch))

    async def table_schema(self, database: str | None, table: str, *,
                           branch: str | None = None) -> dict[str, Any]:
        return await self._send(self._table_schema(database, table, branch))

    async def rules(self, database: str | None = None, *,
                    branch: str | None = None) -> dict[str, dict[str, str | None]]:
        return await self._send(self._rules(database, branch))

    async def set_rules(self, database: str | None, table: str, *,
                        select: str | None = KEEP, insert: str | None = KEEP,
                        update: str | None = KEEP, delete: str | None = KEEP,
                        branch: str | None = None) -> dict[str, Any]:
        return await self._send(self._set_rules(database, table, {
            "select": select, "insert": insert, "update": update, "delete": delete},
            branch))

    async def named_queries(self, database: str | None = None, *,
                            branch: str | None = None) -> list[dict[str, Any]]:
        return await self._send(self._named_queries(database, branch))

    async def set_named_query(self, database: str | None, name: str, sql: str,
                              description: str = "", *, branch: str | None = None
                              ) -> dict[str, Any]:
        return await self._send(self._set_named_query(database, name, sql, description,
                                                      branch))

    async def delete_named_query(self, database: str | None, name: str, *,
                                 branch: str | None = None) -> None:
        await self._send(self._delete_named_query(database, name, branch))

    async def run_named_query(self, database: str | None, name: str,
                              args: Mapping[str, Any] | None = None, *,
                              branch: str | None = None) -> dict[str, Any]:
        return await self._send(self._run_named_query(database, name, args, branch))

    def changes(self, since: str | None = None, *, database: str | None = None,
                branch: str | None = None, tables: str | Iterable[str] | None = None,
                ops: str | Iterable[str] | None = None, wait: float = 25.0,
                limit: int = 100, follow: bool = True,
                retry_for: float = RETRY_FOR) -> AsyncChangeFeed:
        """The change feed as an async iterator (``async for change in db.changes()``); a
        plain method, as :meth:`Client.changes <shoal.client.Client.changes>`."""
        return AsyncChangeFeed(self, since, database=database, branch=branch, tables=tables,
                               ops=ops, wait=wait, limit=limit, follow=follow,
                               retry_for=retry_for)


class AsyncChangeFeed(BaseFeed):
    """The async iterator :meth:`AsyncClient.changes` returns (see
    :class:`~shoal.client.ChangeFeed`); cancelling a task waiting on it leaves nothing open."""

    _client: AsyncClient

    def __init__(self, client: AsyncClient, since: str | None, **options: Any):
        super().__init__(client, since, **options)
        self._client = client

    def __aiter__(self) -> AsyncChangeFeed:
        return self

    async def __anext__(self) -> Change:
        while (change := self._pop()) is None:
            if (step := self._next()) is None:
                raise StopAsyncIteration
            call, pause = step
            if pause:
                await asyncio.sleep(pause)
            try:
                page = await self._client._send(call)
            except ClientError as exc:
                if self._failed(exc):
                    continue
                raise
            self._took(page)
        return change

    async def aclose(self) -> None:
        """As an async generator's: stop (nothing is left open between pages)."""
        self.close()


class AsyncTransaction(BaseTransaction):
    """An asyncio interactive transaction."""

    _client: AsyncClient

    def __init__(self, client: AsyncClient, mode: Literal["read", "write"] | None,
                 database: str | None, branch: str | None, idempotency_key: str | None,
                 consistency: Consistency | None = None):
        super().__init__(client, mode, database, branch, idempotency_key, consistency)
        self._client = client

    async def begin(self) -> AsyncTransaction:
        self._begun(await self._client._send(self._begin_call()))
        return self

    async def execute(self, sql: str, args: Args = None) -> Result:
        return (await self.batch([(sql, args)]))[0]

    async def batch(self, statements: Sequence[StatementLike]) -> list[Result]:
        try:
            return await self._client._send(self._query_call(statements))
        except ClientError as exc:
            self._expired(exc)
            raise

    async def commit(self, idempotency_key: str | None = None) -> None:
        self._ended(await self._client._send(self._end_call(True, idempotency_key
                                                            or self.idempotency_key)))

    async def rollback(self) -> None:
        self._ended(await self._client._send(self._end_call(False, None)))

    async def __aenter__(self) -> AsyncTransaction:
        return await self.begin() if self.id is None else self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if not self.open:
            return
        if exc is None:
            await self.commit()
            return
        try:
            await self.rollback()
        except ClientError as failed:
            exc.add_note(f"rollback also failed: {failed}")
