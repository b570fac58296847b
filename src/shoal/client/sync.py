"""The blocking client: :class:`Client` and its :class:`Transaction`."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
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


class Client(BaseClient):
    """Blocking client over one keep-alive connection pool; use as a context manager.

    ``database`` and ``branch`` are where calls go when they name none (a URL ending in
    ``/db/NAME`` or ``/db/NAME/branches/BRANCH`` says the same). ``verify``: TLS
    verification as httpx takes it (a context, a CA bundle path, False).

    The client is a session: it sends the newest bookmark it holds for a branch
    (``Shoal-Bookmark``) with each query and transaction begin on that branch, so it reads
    its own writes even from a replica. ``session=False`` sends none; ``bookmarks`` seeds it
    (see :meth:`remember`, and :meth:`bookmark` to pass one on);
    ``consistency="strong"`` has the leader answer every query and transaction (also per
    call).
    """

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 database: str | None = None, branch: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None,
                 verify: ssl.SSLContext | bool | None = None, session: bool = True,
                 consistency: Consistency | None = None, bookmarks: Iterable[str] = ()):
        super().__init__(url, token, database, branch, session=session,
                         consistency=consistency, bookmarks=bookmarks)
        self._http = httpx.Client(base_url=self.url, headers=self._headers(), timeout=timeout,
                                  transport=transport, verify=self._verify(verify))

    def _send(self, call: Call[T]) -> T:
        try:
            response = self._http.send(call.request(self._http))
        except httpx.HTTPError as exc:
            raise transport_error(exc) from exc
        return self._finish(call, response)

    def _run(self, plan: Plan[T]) -> T:
        try:
            call = next(plan)
            while True:
                call = plan.send(self._send(call))
        except StopIteration as stop:
            return stop.value

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- SQL --------------------------------------------------------------------------------
    def execute(self, sql: str, args: Args = None, *, database: str | None = None,
                branch: str | None = None, idempotency_key: str | None = None,
                consistency: Consistency | None = None) -> Result:
        """Run one statement in its own transaction."""
        return self._send(self._query([(sql, args)], database, branch, idempotency_key,
                                      consistency=consistency))[0]

    def batch(self, statements: Sequence[StatementLike], *, database: str | None = None,
              branch: str | None = None, idempotency_key: str | None = None,
              consistency: Consistency | None = None) -> list[Result]:
        """Run statements in one transaction: all apply or none does."""
        if not statements:
            return []
        return self._send(self._query(statements, database, branch, idempotency_key,
                                      consistency=consistency))

    def transaction(self, mode: Literal["read", "write"] | None = None, *,
                    database: str | None = None, branch: str | None = None,
                    idempotency_key: str | None = None,
                    consistency: Consistency | None = None) -> Transaction:
        """An interactive transaction; ``with`` begins it, commits on success, rolls back on error.

        ``mode`` None means write when the token may write. ``idempotency_key`` guards the commit.
        """
        return Transaction(self, mode, database, branch, idempotency_key, consistency)

    # -- administration ---------------------------------------------------------------------
    def create_database(self, name: str, *, idempotency_key: str | None = None) -> dict[str, Any]:
        return self._send(self._create_database(name, idempotency_key))

    def list_databases(self, *, limit: int | None = None,
                       page_size: int = 100) -> list[dict[str, Any]]:
        """Every database the token may see (following pagination), or the first ``limit``."""
        return self._run(self._list(limit, page_size))

    def database(self, name: str | None = None) -> dict[str, Any]:
        """Name, created_at, size_bytes, branches, txid, open."""
        return self._send(self._database(name))

    def delete_database(self, name: str, *, purge: bool = False) -> None:
        """Delete a database: restorable (``undelete_database``) for the node's
        history_retention, unless ``purge`` (gone at once, with its history)."""
        self._send(self._delete_database(name, purge))

    def undelete_database(self, name: str, incarnation: str | None = None) -> dict[str, Any]:
        """Bring back a deleted database (its newest deleted incarnation unless named)."""
        return self._send(self._undelete_database(name, incarnation))

    def deleted_databases(self) -> list[dict[str, Any]]:
        """Deleted databases still restorable: name, incarnation, deleted_at,
        restorable_until, branches."""
        return self._send(self._deleted_databases())

    def usage(self, name: str | None = None, *, branch: str | None = None) -> dict[str, Any]:
        """Cumulative rows_read, rows_written, queries and storage_bytes; size_bytes, the
        limits in force and the current period's counts (of one branch, when not main)."""
        return self._send(self._usage(name, branch))

    def limits(self, name: str | None = None) -> dict[str, Any]:
        """The database's own limits and those in force (node defaults filled in)."""
        return self._send(self._limits(name))

    def set_limits(self, name: str | None = None, **limits: Any) -> dict[str, Any]:
        """Replace the database's own limits (size_bytes, rows_read, rows_written, period,
        queries_per_second, transactions; None or absent: the node's default, 0: none).
        Needs an admin token for every database."""
        return self._send(self._set_limits(name, limits))

    def compact(self, name: str | None = None, *, branch: str | None = None) -> dict[str, Any]:
        """Give a branch's free pages back (admin; writes wait while it runs):
        ``{"database", "branch", "txid", "bytes_before", "bytes_after", "storage_bytes",
        "ms"}``."""
        return self._send(self._compact(name, branch))

    def create_token(self, databases: Sequence[str] | Literal["*"] = "*",
                     access: Literal["read", "write", "admin", "provision"] = "read",
                     expires_in: int = 3600, *, branch: str | None = None,
                     idempotency_key: str | None = None) -> dict[str, Any]:
        """A new token: ``{"id", "token", "databases", "access", "expires_at"}`` (and
        ``"branch"`` when bound to one). ``databases`` takes names and prefix patterns
        (``"tenant-*"``); ``access="provision"`` makes a fleet's provisioning token (it
        creates and deletes the databases of its patterns and mints their tokens, no data);
        ``branch`` binds a read or write token to that branch."""
        return self._send(self._create_token(databases, access, expires_in, idempotency_key,
                                             branch))

    def revoke_token(self, token_id: str) -> None:
        self._send(self._revoke_token(token_id))

    def tokens(self, database: str | None = None, *, expired: bool = False,
               revoked: bool = False, limit: int | None = None,
               page_size: int = 100) -> list[dict[str, Any]]:
        """The tokens this (admin) token may list, following pagination: ``{"id",
        "databases", "narrowed", "access", "created_by", "created_at", "expires_at",
        "expired", "revoked", "revoked_at", "branch"}``, never the token itself. Live ones only
        unless ``expired``/``revoked``; those reaching ``database`` when named."""
        return self._run(self._tokens(database, expired, revoked, limit, page_size))

    def audit(self, database: str | None = None, *, since: str | float | datetime | None = None,
              until: str | float | datetime | None = None, limit: int | None = None,
              page_size: int = 100) -> list[dict[str, Any]]:
        """The audit log (an admin token: every database's, or those of the databases it
        administers), oldest first, following pagination: ``{"time", "node", "token",
        "subject", "issuer", "method", "route", "database", "branch", "kind",
        "rows_read", "rows_written", "status", "code", "ms"}``. ``since`` (inclusive) and
        ``until``: unix seconds, RFC 3339 text or an aware datetime."""
        return self._run(self._audit(database, since, until, limit, page_size))

    # -- trusted identity providers ---------------------------------------------------------
    @overload
    def issuers(self, database: None = None) -> dict[str, Any]: ...
    @overload
    def issuers(self, database: str) -> list[dict[str, Any]]: ...

    def issuers(self, database: str | None = None) -> dict[str, Any] | list[dict[str, Any]]:
        """A database's own trusted issuers, as declared (an admin of it): ``[{"issuer",
        "audience", "jwks_url", "access", "rules", "leeway", "branch"?}]``. With no
        database (never the client's: the node's, an admin of every database) the node's
        answer: ``{"issuers": [...], "keys": [{"source", "kids", "fetched", "error"}]}``."""
        return self._send(self._issuers(database))

    def set_issuers(self, database: str,
                    issuers: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Replace a database's own trusted issuers (an admin of it; ``[]``: none, at most
        4): each ``{"issuer", "audience", "jwks_url", "access", "rules", "branch",
        "leeway"}``. The list as now declared; ``InvalidRequest`` names a wrong field."""
        return self._send(self._set_issuers(database, issuers))

    def revoke_issuer(self, issuer: str, *, jti: str | None = None,
                      database: str | None = None) -> dict[str, Any]:
        """Revoke the token ``jti`` of an identity provider, or with no ``jti`` every token
        it issued before now (by ``iat``): the node's issuer (an admin of every database)
        or, with ``database``, that database's own (an admin of it). ``{"issuer",
        "database", "jti", "id"}`` or ``{"issuer", "database", "issued_before"}``;
        ``NotFound`` if no such issuer is trusted there."""
        return self._send(self._revoke_issuer(issuer, jti, database))

    # -- branches and point in time -----------------------------------------------------------
    def list_branches(self, database: str | None = None) -> list[dict[str, Any]]:
        """Every branch: name, parent, fork_txid, created_at, timeline, txid, sizes."""
        return self._send(self._branches(database))

    def branch(self, name: str | None = None, *, database: str | None = None) -> dict[str, Any]:
        """One branch (the client's unless named): as an entry of :meth:`list_branches`."""
        return self._send(self._branch(name, database))

    def create_branch(self, name: str, *, database: str | None = None,
                      source: str | None = None, timestamp: str | datetime | None = None,
                      bookmark: str | None = None, materialise: bool = False
                      ) -> dict[str, Any]:
        """A branch of ``source`` (default main) at its latest state, a time or a bookmark.
        No data is copied; ``materialise`` waits until the node has hydrated it."""
        return self._send(self._create_branch(name, database, source, timestamp, bookmark,
                                              materialise))

    def delete_branch(self, name: str, *, database: str | None = None) -> None:
        self._send(self._delete_branch(name, database))

    def reset_branch(self, name: str, *, database: str | None = None) -> dict[str, Any]:
        """Back to its parent's latest state; the branch's own writes are dropped."""
        return self._send(self._reset_branch(name, database))

    def restore(self, *, database: str | None = None, branch: str | None = None,
                timestamp: str | datetime | None = None, bookmark: str | None = None,
                keep_as: str | None = None) -> dict[str, Any]:
        """Restore a branch in place; the answer's ``kept_as`` names the branch that keeps
        the state before."""
        return self._send(self._restore(database, branch, timestamp, bookmark, keep_as))

    def history(self, *, database: str | None = None,
                branch: str | None = None) -> dict[str, Any]:
        """The restorable window: ``earliest`` and ``latest`` points (txid, time)."""
        return self._send(self._history(database, branch))

    # -- change feed -------------------------------------------------------------------------
    def changes(self, since: str | None = None, *, database: str | None = None,
                branch: str | None = None, tables: str | Iterable[str] | None = None,
                ops: str | Iterable[str] | None = None, wait: float = 25.0,
                limit: int = 100, follow: bool = True,
                retry_for: float = RETRY_FOR) -> ChangeFeed:
        """A branch's committed row changes after ``since`` (a cursor or a bookmark; None:
        from now), in commit order, as :class:`~shoal.client.Change` objects.

        The iterator long-polls page after page (``limit`` changes, ``wait`` seconds) and
        goes on from where it stands by itself, through a node's restart (see
        :class:`~shoal.client.calls.BaseFeed`); ``follow=False`` reads what there is and
        ends (waiting up to ``wait`` for a first change: a commit shows once durable, so
        right after one pass a few seconds; with nothing new that is the time it takes).
        ``tables`` and ``ops`` (insert, update, delete) filter. Store each change's
        ``cursor`` with what you made of it, in the same transaction, and resume from it:
        every change is then applied once. ``CursorExpired`` (its ``earliest``) when the
        feed no longer holds what follows ``since``.
        """
        return ChangeFeed(self, since, database=database, branch=branch, tables=tables,
                          ops=ops, wait=wait, limit=limit, follow=follow, retry_for=retry_for)


    # -- webhooks ----------------------------------------------------------------------------
    def create_webhook(self, database: str | None, url: str, *, branch: str | None = None,
                       tables: str | Iterable[str] | None = None,
                       ops: str | Iterable[str] | None = None, batch_size: int | None = None,
                       max_attempts: int | None = None, max_age: float | None = None,
                       since: str | datetime | None = None) -> dict[str, Any]:
        """A webhook (admin): the branch's committed row changes POSTed to ``url`` in signed
        batches (Standard Webhooks). ``database`` None: the client's; ``branch`` None: the
        client's branch of it, else main. ``tables`` and ``ops`` filter as
        :meth:`changes` does; ``batch_size`` (events a request), ``max_attempts`` and
        ``max_age`` (seconds) before a batch becomes a dead letter; ``since`` a cursor, a
        time or None (from now). None leaves a setting to the server's default. The answer
        holds ``secret`` (``whsec_...``), which the receiver verifies signatures with: it
        is shown this once."""
        return self._send(self._create_webhook(database, url, branch, tables, ops, batch_size,
                                                max_attempts, max_age, since))

    def webhooks(self, database: str | None = None) -> list[dict[str, Any]]:
        """A database's webhooks, each with its ``delivery`` state (no secret)."""
        return self._send(self._webhooks(database))

    def webhook(self, database: str | None, webhook_id: str) -> dict[str, Any]:
        """One webhook, with its ``delivery``: ``cursor``, ``retrying``, ``attempts``,
        ``next_attempt_at``, ``last_error``, ``last_attempt_at``, ``last_success_at``,
        ``delivered`` (events, ever), ``dead_letters`` (batches, ever)."""
        return self._send(self._webhook(database, webhook_id))

    def delete_webhook(self, database: str | None, webhook_id: str) -> None:
        """Stop its deliveries and drop it, with its dead letters."""
        self._send(self._delete_webhook(database, webhook_id))

    def dead_letters(self, database: str | None, webhook_id: str) -> list[dict[str, Any]]:
        """The batches given up on, oldest first, each whole: ``id``, ``since``, ``until``,
        ``events``, ``attempts``, ``first_attempt_at``, ``dead_at``, ``error``,
        ``replaying``."""
        return self._send(self._dead_letters(database, webhook_id))

    def replay_dead_letters(self, database: str | None, webhook_id: str,
                            letter: str | None = None) -> list[str]:
        """Deliver dead letters again (all, or ``letter``), before the next batch; the ids
        marked. A replayed letter leaves the list once delivered."""
        return self._send(self._replay_dead_letters(database, webhook_id, letter))

    def delete_dead_letter(self, database: str | None, webhook_id: str, letter: str) -> None:
        """Drop a dead letter without delivering it."""
        self._send(self._delete_dead_letter(database, webhook_id, letter))

    # -- the data API, row rules and named queries ------------------------------------------
    def rows(self, database: str | None, table: str, *,
             select: str | Sequence[str] | None = None, where: Where | None = None,
             order: str | Sequence[str] | None = None, limit: int | None = None,
             after: str | None = None, branch: str | None = None) -> dict[str, Any]:
        """A page of a table's rows through the data API (read access; a token bound by
        rules sees what its select rule passes): ``{"rows": [{column: value}], "next",
        "bookmark"}``. ``select``: columns (default all); ``where``: column ->
        ``"op.value"`` (``"eq.open"``, ``"gte.5"``, ``"in.(1,2)"``, ``"is.null"``,
        ``"like.a%"``: a text is always one, ``"eq.bob"`` for equality), or a number
        meaning eq (None: is null; a list: in, texts in it as they are), ANDed; a
        sequence of pairs names a column twice. ``order``: ``"at.desc,id"`` or names;
        ``limit``: rows a page, 1 to 1,000 (default 100); ``after``: the ``next`` of the
        page before (None on the last page)."""
        return self._send(self._rows(database, table, select, where, order, limit, after,
                                     branch))

    def iter_rows(self, database: str | None, table: str, *,
                  select: str | Sequence[str] | None = None, where: Where | None = None,
                  order: str | Sequence[str] | None = None, limit: int | None = None,
                  after: str | None = None, branch: str | None = None
                  ) -> Iterator[dict[str, Any]]:
        """Every row :meth:`rows` finds, a page (``limit`` rows) per request, following
        ``next``: a page is as fast as the first (keyset pages)."""
        while True:
            page = self.rows(database, table, select=select, where=where, order=order,
                             limit=limit, after=after, branch=branch)
            yield from page["rows"]
            after = page["next"]
            if after is None:
                return

    def insert_rows(self, database: str | None, table: str,
                    rows: Mapping[str, Any] | Sequence[Mapping[str, Any]], *,
                    branch: str | None = None, upsert: bool = False) -> list[dict[str, Any]]:
        """Insert one row (a mapping of column: value) or up to 1,000, in one transaction:
        all or none. The rows as stored (defaults, triggers). ``upsert``: a row that
        conflicts with one there (its key, a UNIQUE column) updates it instead."""
        return self._send(self._insert_rows(database, table, rows, branch, upsert))

    def update_rows(self, database: str | None, table: str, values: Mapping[str, Any],
                    where: Where, *, branch: str | None = None) -> list[dict[str, Any]]:
        """Set ``values`` on the rows ``where`` finds (as :meth:`rows`' filters; ``{}``:
        every row the token may touch); the rows updated, with their new values."""
        return self._send(self._update_rows(database, table, values, where, branch))

    def delete_rows(self, database: str | None, table: str, where: Where, *,
                    branch: str | None = None) -> list[dict[str, Any]]:
        """Delete the rows ``where`` finds (``{}``: every row the token may touch); the
        rows deleted."""
        return self._send(self._delete_rows(database, table, where, branch))

    def table_schema(self, database: str | None, table: str, *,
                     branch: str | None = None) -> dict[str, Any]:
        """``{"table", "columns", "generated", "key", "verbs"}``: ``verbs`` are those this
        token may use on the table."""
        return self._send(self._table_schema(database, table, branch))

    def rules(self, database: str | None = None, *,
              branch: str | None = None) -> dict[str, dict[str, str | None]]:
        """The row rules of a branch (admin): ``{table: {"select", "insert", "update",
        "delete"}}``, None for a verb without one (refused to tokens bound by rules)."""
        return self._send(self._rules(database, branch))

    def set_rules(self, database: str | None, table: str, *, select: str | None = KEEP,
                  insert: str | None = KEEP, update: str | None = KEEP,
                  delete: str | None = KEEP, branch: str | None = None) -> dict[str, Any]:
        """Set a table's rules for the verbs given (admin): an SQL expression over the
        row's columns and ``auth.*``; None removes one; a verb not given keeps its rule.
        ``{"table", "rules", "bookmark"}``: every change of rules is a commit."""
        return self._send(self._set_rules(database, table, {
            "select": select, "insert": insert, "update": update, "delete": delete},
            branch))

    def named_queries(self, database: str | None = None, *,
                      branch: str | None = None) -> list[dict[str, Any]]:
        """The named queries: ``[{"name", "sql", "description"}]``."""
        return self._send(self._named_queries(database, branch))

    def set_named_query(self, database: str | None, name: str, sql: str,
                        description: str = "", *, branch: str | None = None
                        ) -> dict[str, Any]:
        """Register (or replace) a named query (admin): ``:name`` parameters, ``auth.*``
        the caller's claims (bound by Shoal)."""
        return self._send(self._set_named_query(database, name, sql, description, branch))

    def delete_named_query(self, database: str | None, name: str, *,
                           branch: str | None = None) -> None:
        self._send(self._delete_named_query(database, name, branch))

    def run_named_query(self, database: str | None, name: str,
                        args: Mapping[str, Any] | None = None, *,
                        branch: str | None = None) -> dict[str, Any]:
        """Run a named query with ``args`` (name: value): ``{"columns", "rows": [{column:
        value}], "rows_affected", "bookmark"}`` (a read token runs it read-only)."""
        return self._send(self._run_named_query(database, name, args, branch))


class ChangeFeed(BaseFeed):
    """The iterator :meth:`Client.changes` returns: each page is one request, so stopping
    (``break``, :meth:`close`) leaves nothing open; ``cursor`` is where it stands."""

    _client: Client

    def __init__(self, client: Client, since: str | None, **options: Any):
        super().__init__(client, since, **options)
        self._client = client

    def __iter__(self) -> ChangeFeed:
        return self

    def __next__(self) -> Change:
        while (change := self._pop()) is None:
            if (step := self._next()) is None:
                raise StopIteration
            call, pause = step
            if pause:
                time.sleep(pause)
            try:
                page = self._client._send(call)
            except ClientError as exc:
                if self._failed(exc):
                    continue
                raise
            self._took(page)
        return change


class Transaction(BaseTransaction):
    """A blocking interactive transaction; every call is one request on the client's pool."""

    _client: Client

    def __init__(self, client: Client, mode: Literal["read", "write"] | None,
                 database: str | None, branch: str | None, idempotency_key: str | None,
                 consistency: Consistency | None = None):
        super().__init__(client, mode, database, branch, idempotency_key, consistency)
        self._client = client

    def begin(self) -> Transaction:
        self._begun(self._client._send(self._begin_call()))
        return self

    def execute(self, sql: str, args: Args = None) -> Result:
        return self.batch([(sql, args)])[0]

    def batch(self, statements: Sequence[StatementLike]) -> list[Result]:
        """Statements run in order; a failure undoes this request only, not the transaction."""
        try:
            return self._client._send(self._query_call(statements))
        except ClientError as exc:
            self._expired(exc)
            raise

    def commit(self, idempotency_key: str | None = None) -> None:
        self._ended(self._client._send(self._end_call(True, idempotency_key
                                                      or self.idempotency_key)))

    def rollback(self) -> None:
        self._ended(self._client._send(self._end_call(False, None)))

    def __enter__(self) -> Transaction:
        return self.begin() if self.id is None else self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.open:
            return
        if exc is None:
            self.commit()
            return
        try:
            self.rollback()
        except ClientError as failed:  # the original error matters more
            exc.add_note(f"rollback also failed: {failed}")
