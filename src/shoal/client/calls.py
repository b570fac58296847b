"""The requests both clients send, built and read without a transport.

A :class:`Call` is one HTTP request and how to read its answer; a :data:`Plan` is a flow of
several (pagination). :class:`BaseClient` builds them from the client's settings, so the
blocking and the asyncio client differ only in how they send a call (``_send``) and run a
plan (``_run``); :class:`BaseTransaction` is the same for their transactions.

Where a call goes: its database is the one it names, else the client's; its branch is the
one it names, else the client's when the call is on the client's database, else ``main``.
A branch belongs to the database it was named with: a client made for
``.../db/orders/branches/preview`` reaches ``billing``'s ``main`` when a call names
``billing``.

Sessions (read-your-writes): a client keeps the newest bookmark the server answered per
(database, branch) and sends it as ``Shoal-Bookmark`` on later queries and transaction
begins of that same branch, so a replica answers only once it has caught up with what this
client saw or wrote. A bookmark is never sent to another database or branch: the server
would refuse it. Calls that start a branch's history anew (restore, reset, delete, create)
drop what the session held for it.
"""

from __future__ import annotations

import base64
import os
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from shoal import __version__
from shoal.client.codec import (
    StatementLike,
    decode_fields,
    fields_json,
    statement_json,
)
from shoal.client.errors import ClientError, TransactionExpired, error_from_response
from shoal.client.results import Change, ChangesPage, Result, parse_changes_page, parse_results
from shoal.client.urls import DEFAULT_URL, parse_url

DEFAULT_TIMEOUT = 30.0
MAIN = "main"
BOOKMARK_HEADER = "shoal-bookmark"
CONSISTENCY_HEADER = "shoal-consistency"

# "strong": the leader answers (no replica, whatever the bookmark); None: the session's
Consistency = Literal["strong"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list (databases, or tokens: ``databases`` holds the page's entries)."""

    databases: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Begun:
    """An opened interactive transaction."""

    id: str
    mode: str
    expires_at: str


@dataclass(frozen=True, slots=True)
class Ended:
    """A finished interactive transaction (txid/bookmark None for a read or a rollback)."""

    committed: bool
    txid: int | None
    bookmark: str | None


def _point(timestamp: str | datetime | None, bookmark: str | None) -> dict[str, str]:
    """A point in history as the API takes it: {"timestamp"} or {"bookmark"}."""
    if (timestamp is None) == (bookmark is None):
        raise ValueError("give timestamp or bookmark (one of them)")
    if bookmark is not None:
        return {"bookmark": bookmark}
    if isinstance(timestamp, datetime):
        if timestamp.tzinfo is None:
            raise ValueError("a datetime timestamp needs a time zone (e.g. UTC)")
        return {"timestamp": timestamp.isoformat()}
    assert timestamp is not None
    return {"timestamp": timestamp}


def peek_bookmark(bookmark: str) -> tuple[str, str, int, str | None] | None:
    """(database, branch, txid, timeline) as today's server writes a bookmark, else None.

    Bookmarks are opaque to clients: this reading (urlsafe base64, unpadded, of
    ``database/branch/txid[/timeline[/index]]``; a change feed's cursor has the index) is
    only a hint, used to keep the newer of two bookmarks of one branch and to file a
    bookmark given to ``remember``. Nothing else rests on it: a bookmark it cannot read is
    still kept (the latest received wins) and sent.
    """
    try:
        raw = base64.urlsafe_b64decode(bookmark + "=" * (-len(bookmark) % 4)).decode()
        parts = raw.split("/")
        if len(parts) not in (3, 4, 5) or not parts[2].isdigit():
            return None
        return parts[0], parts[1], int(parts[2]), parts[3] if len(parts) >= 4 else None
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors too
        return None


_NO_BODY = object()


def _identity(data: Any) -> Any:
    return data


def _nothing(data: Any) -> None:
    return None


def _results_bookmark(results: list[Result]) -> str | None:
    return results[0].meta.bookmark if results else None


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One HTTP request and how to read its answer; the transport is the caller's.

    ``session``: the (database, branch) whose session the answer's bookmark advances (the
    ``Shoal-Bookmark`` header, else what ``bookmark`` finds in the parsed body).
    ``restarts``: the (database, branch) whose history the call may start anew (branch
    None: every branch of the database); the session forgets what it held for it.
    ``wait``: seconds the server may hold the answer back (a long poll), added to the
    client's read timeout for this call.
    """

    method: str
    path: str
    parse: Callable[[Any], T]
    body: Any = _NO_BODY
    idempotency_key: str | None = None
    params: dict[str, str] | list[tuple[str, str]] | None = None  # a list: keys repeat
    headers: dict[str, str] | None = None
    session: tuple[str, str] | None = None
    bookmark: Callable[[T], str | None] = _nothing
    restarts: tuple[str, str | None] | None = None
    wait: float = 0.0

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        headers = dict(self.headers or ())
        content = None
        if self.body is not _NO_BODY:
            content = msgspec.json.encode(self.body)
            headers["content-type"] = "application/json"
        if self.idempotency_key is not None:
            headers["idempotency-key"] = self.idempotency_key
        params = tuple(self.params) if isinstance(self.params, list) else self.params
        request = http.build_request(self.method, self.path, content=content,
                                     headers=headers, params=params)
        if self.wait:
            t = http.timeout
            request.extensions["timeout"] = httpx.Timeout(
                connect=t.connect, write=t.write, pool=t.pool,
                read=None if t.read is None else t.read + self.wait).as_dict()
        return request

    def finish(self, response: httpx.Response) -> T:
        if response.status_code >= 400:
            raise error_from_response(response)
        data = msgspec.json.decode(response.content) if response.content else None
        return self.parse(data)


# A multi-request flow: yields calls, receives their results, returns the outcome.
Plan = Generator[Call[Any], Any, T]


def _consistency(value: str | None) -> Consistency | None:
    if value not in (None, "strong"):
        raise ValueError(f"consistency {value!r}: use \"strong\" or None (the session's)")
    return "strong" if value else None


@cache
def _default_tls() -> ssl.SSLContext:
    return ssl.create_default_context()


class BaseClient:
    """Settings and request building common to :class:`Client` and :class:`AsyncClient`.

    Session settings (see the module): ``session`` False sends no bookmark (answers' are
    still noted, for :meth:`bookmark`); ``consistency="strong"`` asks the leader for every
    query and transaction; ``bookmarks`` seeds the session (as :meth:`remember`).
    """

    def __init__(self, url: str | None, token: str | None, database: str | None,
                 branch: str | None, *, session: bool = True,
                 consistency: Consistency | None = None, bookmarks: Iterable[str] = ()):
        address = parse_url(url or os.environ.get("SHOAL_URL") or DEFAULT_URL)
        self.url = address.base
        self.default_database = database or address.database
        if branch is None and self.default_database == address.database:
            branch = address.branch
        if branch and not self.default_database:
            raise ValueError(f"branch {branch!r} needs a database: pass database= too, "
                             "or use a URL ending in /db/NAME/branches/BRANCH")
        self.default_branch = branch or MAIN
        self.token = token if token is not None else os.environ.get("SHOAL_TOKEN") or None
        self.session = session
        self.consistency = _consistency(consistency)
        self._bookmarks: dict[tuple[str, str], str] = {}
        self._bookmarks_lock = threading.Lock()  # a blocking client may serve many threads
        for bookmark in [bookmarks] if isinstance(bookmarks, str) else bookmarks:
            self.remember(bookmark)

    def _verify(self, verify: ssl.SSLContext | bool | None) -> ssl.SSLContext | bool:
        """TLS settings: building a default context costs ~40 ms, so plain HTTP skips it
        (redirects are never followed) and HTTPS shares one per process."""
        if verify is not None:
            return verify
        return _default_tls() if self.url.startswith("https:") else False

    def _headers(self) -> dict[str, str]:
        headers = {"user-agent": f"shoal-python/{__version__}", "accept": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        return headers

    def resolve(self, database: str | None = None, branch: str | None = None) -> tuple[str, str]:
        """The (database, branch) a call given these arguments reaches (see the module)."""
        name = database or self.default_database
        if not name:
            raise ValueError("no database: pass database= here or to the client, "
                             "or use a URL ending in /db/NAME")
        if branch:
            return name, branch
        return name, self.default_branch if name == self.default_database else MAIN

    # -- the session ------------------------------------------------------------------------
    def bookmark(self, database: str | None = None, branch: str | None = None) -> str | None:
        """The newest bookmark this client holds for a branch (found as :meth:`resolve` finds
        a call's), or None: hand it to the next request, process or invocation (a cookie, a
        ``Shoal-Bookmark`` header) so that it reads what this one wrote."""
        return self._bookmarks.get(self.resolve(database, branch))

    def remember(self, bookmark: str, *, database: str | None = None,
                 branch: str | None = None) -> None:
        """Seed the session with a bookmark from elsewhere (a cookie, a previous run): later
        queries of its branch send it, until the server answers a newer one. Its database
        and branch are read from the bookmark; ``database``/``branch`` say them when it
        cannot be read (else the client's), and must agree with it when it can."""
        seen = peek_bookmark(bookmark)
        if seen is None:
            key = self.resolve(database, branch)
        else:
            key = seen[0], seen[1]
            if (database or key[0], branch or key[1]) != key:
                raise ValueError(f"the bookmark is of {key[0]}/{key[1]}, not "
                                 f"{database or key[0]}/{branch or key[1]}")
        self._note(key, bookmark)

    def _note(self, key: tuple[str, str], bookmark: str | None) -> None:
        """Keep ``bookmark`` as the branch's newest, unless the one held is later on the
        same timeline (answers of concurrent requests arrive in any order)."""
        if not bookmark:
            return
        with self._bookmarks_lock:
            held = self._bookmarks.get(key)
            if held is not None and held != bookmark:
                old, new = peek_bookmark(held), peek_bookmark(bookmark)
                if old is not None and new is not None and old[3] == new[3] \
                        and old[2] > new[2]:
                    return
            self._bookmarks[key] = bookmark

    def _forget(self, database: str, branch: str | None) -> None:
        with self._bookmarks_lock:
            for key in [k for k in self._bookmarks
                        if k[0] == database and branch in (None, k[1])]:
                del self._bookmarks[key]

    def _session_headers(self, key: tuple[str, str],
                         consistency: Consistency | None) -> dict[str, str]:
        """What a query or a begin of ``key`` sends: its bookmark, the consistency asked."""
        headers = {}
        if self.session and (held := self._bookmarks.get(key)):
            headers[BOOKMARK_HEADER] = held
        if (_consistency(consistency) or self.consistency) == "strong":
            headers[CONSISTENCY_HEADER] = "strong"
        return headers

    def _finish(self, call: Call[T], response: httpx.Response) -> T:
        """Read an answer (``Call.finish``) and advance the session by it."""
        if call.restarts is not None:  # first: a restore that failed may still have happened
            self._forget(*call.restarts)
        result = call.finish(response)
        if call.session is not None:
            self._note(call.session,
                       response.headers.get(BOOKMARK_HEADER) or call.bookmark(result))
        return result

    def _db_path(self, database: str | None) -> str:
        """A database's own resource (its record, limits, branch list): no branch."""
        return "/v1/databases/" + quote(self.resolve(database)[0], safe="")

    def _branch_path(self, database: str | None, branch: str) -> str:
        """A branch as a resource (get, delete, reset), ``main`` included."""
        return f"{self._db_path(database)}/branches/{quote(branch, safe='')}"

    def _data_path(self, database: str | None, branch: str | None) -> str:
        """Where a branch's data lives (query, transactions, usage, history, compact); the
        plain database path for ``main``, as before branches existed."""
        name, branch = self.resolve(database, branch)
        if branch == MAIN:
            return self._db_path(name)
        return self._branch_path(name, branch)

    # -- calls ------------------------------------------------------------------------------
    def _query(self, statements: Sequence[StatementLike], database: str | None,
               branch: str | None, idempotency_key: str | None, tx: str | None = None,
               consistency: Consistency | None = None) -> Call[list[Result]]:
        """A query, alone or in a transaction (which sends no session headers: it sees what
        its begin saw)."""
        key = self.resolve(database, branch)
        path = self._data_path(*key)
        headers = None
        if tx is None:
            headers = self._session_headers(key, consistency)
        else:
            path += "/transactions/" + quote(tx, safe="")
        return Call("POST", path + "/query", parse_results,
                    {"statements": [statement_json(s) for s in statements]}, idempotency_key,
                    headers=headers, session=key, bookmark=_results_bookmark)

    def _begin(self, mode: Literal["read", "write"] | None, database: str | None,
               branch: str | None, consistency: Consistency | None = None) -> Call[Begun]:
        key = self.resolve(database, branch)
        return Call("POST", self._data_path(*key) + "/transactions",
                    lambda d: Begun(d["id"], d.get("mode", ""), d.get("expires_at", "")),
                    {"mode": mode} if mode else {},
                    headers=self._session_headers(key, consistency), session=key)

    def _end(self, tx: str, commit: bool, database: str | None, branch: str | None,
             idempotency_key: str | None = None) -> Call[Ended]:
        action = "commit" if commit else "rollback"
        key = self.resolve(database, branch)
        path = f"{self._data_path(*key)}/transactions/{quote(tx, safe='')}/{action}"
        return Call("POST", path,
                    lambda d: Ended(commit, d.get("txid"), d.get("bookmark")),
                    {}, idempotency_key, session=key, bookmark=lambda ended: ended.bookmark)

    def _create_database(self, name: str, idempotency_key: str | None) -> Call[dict[str, Any]]:
        return Call("POST", "/v1/databases", _identity, {"name": name}, idempotency_key,
                    restarts=(name, None))

    def _database(self, name: str | None) -> Call[dict[str, Any]]:
        return Call("GET", self._db_path(name), _identity)

    def _delete_database(self, name: str, purge: bool = False) -> Call[None]:
        if not name:  # never fall back to the default database for a delete
            raise ValueError("delete_database needs the database name")
        return Call("DELETE", self._db_path(name), _nothing,
                    params={"purge": "true"} if purge else None, restarts=(name, None))

    def _undelete_database(self, name: str, incarnation: str | None) -> Call[dict[str, Any]]:
        if not name:
            raise ValueError("undelete_database needs the database name")
        body = {"incarnation": incarnation} if incarnation else {}
        return Call("POST", self._db_path(name) + "/undelete", _identity, body=body,
                    restarts=(name, None))

    def _deleted_databases(self) -> Call[list[dict[str, Any]]]:
        return Call("GET", "/v1/databases", lambda d: list(d["databases"]),
                    params={"deleted": "true"})

    def _usage(self, name: str | None, branch: str | None) -> Call[dict[str, Any]]:
        return Call("GET", self._data_path(name, branch) + "/usage", _identity)

    def _limits(self, name: str | None) -> Call[dict[str, Any]]:
        return Call("GET", self._db_path(name) + "/limits", _identity)

    def _set_limits(self, name: str | None, limits: dict[str, Any]) -> Call[dict[str, Any]]:
        return Call("PUT", self._db_path(name) + "/limits", _identity, body=limits)

    def _compact(self, name: str | None, branch: str | None) -> Call[dict[str, Any]]:
        return Call("POST", self._data_path(name, branch) + "/compact", _identity, {})

    def _create_token(self, databases: Sequence[str] | Literal["*"], access: str,
                      expires_in: int, idempotency_key: str | None,
                      branch: str | None = None) -> Call[dict[str, Any]]:
        scope: list[str] | str = "*" if databases == "*" else list(databases)
        body: dict[str, Any] = {"databases": scope, "access": access,
                                "expires_in": int(expires_in)}
        if branch is not None:
            body["branch"] = branch
        return Call("POST", "/v1/tokens", _identity, body, idempotency_key)

    def _revoke_token(self, token_id: str) -> Call[None]:
        return Call("DELETE", "/v1/tokens/" + quote(token_id, safe=""), _nothing)

    # -- branches and history ----------------------------------------------------------------
    def _branches(self, database: str | None) -> Call[list[dict[str, Any]]]:
        return Call("GET", self._db_path(database) + "/branches", lambda d: d["branches"])

    def _branch(self, name: str | None, database: str | None) -> Call[dict[str, Any]]:
        database, name = self.resolve(database, name)
        return Call("GET", self._branch_path(database, name), _identity)

    def _create_branch(self, name: str, database: str | None, source: str | None,
                       timestamp: str | datetime | None, bookmark: str | None,
                       materialise: bool) -> Call[dict[str, Any]]:
        body: dict[str, Any] = {"name": name}
        if source is not None:
            body["from"] = source
        if timestamp is not None or bookmark is not None:
            body["at"] = _point(timestamp, bookmark)
        if materialise:
            body["materialise"] = True
        key = self.resolve(database, name)
        return Call("POST", self._db_path(database) + "/branches", _identity, body,
                    session=key, restarts=key)

    def _delete_branch(self, name: str, database: str | None) -> Call[None]:
        return Call("DELETE", self._branch_path(database, name), _nothing,
                    restarts=self.resolve(database, name))

    def _reset_branch(self, name: str, database: str | None) -> Call[dict[str, Any]]:
        key = self.resolve(database, name)
        return Call("POST", self._branch_path(database, name) + "/reset", _identity, {},
                    session=key, restarts=key)

    def _restore(self, database: str | None, branch: str | None,
                 timestamp: str | datetime | None, bookmark: str | None,
                 keep_as: str | None) -> Call[dict[str, Any]]:
        database, branch = self.resolve(database, branch)
        body = {"branch": branch} | _point(timestamp, bookmark)
        if keep_as is not None:
            body["keep_as"] = keep_as
        key = database, branch
        return Call("POST", self._db_path(database) + "/restore", _identity, body,
                    session=key, restarts=key,
                    bookmark=lambda d: (d.get("restored_to") or {}).get("bookmark"))

    def _history(self, database: str | None, branch: str | None) -> Call[dict[str, Any]]:
        return Call("GET", self._data_path(database, branch) + "/history", _identity)

    def _changes(self, key: tuple[str, str], since: str | None, limit: int, wait: float,
                 tables: Sequence[str] | None, ops: Sequence[str] | None) -> Call[ChangesPage]:
        """A page of a branch's change feed. It touches no session: the feed's cursors are
        the consumer's to keep (they are bookmarks, should it want to read at one)."""
        params = {"limit": str(limit), "wait": f"{wait:g}"}
        if since is not None:
            params["since"] = since
        if tables:
            params["table"] = ",".join(tables)
        if ops:
            params["op"] = ",".join(ops)
        return Call("GET", self._data_path(*key) + "/changes", parse_changes_page,
                    params=params, wait=wait)

    # -- webhooks ----------------------------------------------------------------------------
    def _hooks_path(self, database: str | None, webhook_id: str | None = None) -> str:
        """A database's webhooks, or one of them (an id is never left out by mistake: an
        empty one would name the whole list)."""
        path = self._db_path(database) + "/webhooks"
        if webhook_id is None:
            return path
        return f"{path}/{quote(_given('webhook id', webhook_id), safe='')}"

    def _create_webhook(self, database: str | None, url: str, branch: str | None,
                        tables: str | Iterable[str] | None, ops: str | Iterable[str] | None,
                        batch_size: int | None, max_attempts: int | None,
                        max_age: float | None,
                        since: str | datetime | None) -> Call[dict[str, Any]]:
        """A webhook of a branch (found as a query's: the client's on its own database);
        the server's defaults for what is left None."""
        name, branch = self.resolve(database, branch)
        body: dict[str, Any] = {"url": url, "branch": branch}
        for key, value in (("tables", _names("tables", tables)), ("ops", _names("ops", ops)),
                           ("batch_size", batch_size), ("max_attempts", max_attempts),
                           ("max_age", max_age), ("since", _since(since))):
            if value is not None:
                body[key] = value
        return Call("POST", self._hooks_path(name), _identity, body)

    def _webhooks(self, database: str | None) -> Call[list[dict[str, Any]]]:
        return Call("GET", self._hooks_path(database), lambda d: list(d["webhooks"]))

    def _webhook(self, database: str | None, webhook_id: str) -> Call[dict[str, Any]]:
        return Call("GET", self._hooks_path(database, webhook_id), _identity)

    def _delete_webhook(self, database: str | None, webhook_id: str) -> Call[None]:
        return Call("DELETE", self._hooks_path(database, webhook_id), _nothing)

    def _dead_letters(self, database: str | None,
                      webhook_id: str) -> Call[list[dict[str, Any]]]:
        return Call("GET", self._hooks_path(database, webhook_id) + "/dead-letters",
                    lambda d: list(d["dead_letters"]))

    def _replay_dead_letters(self, database: str | None, webhook_id: str,
                             letter: str | None) -> Call[list[str]]:
        """Every dead letter of the webhook (``letter`` None), or the one named: an empty
        name is refused, never taken for all of them."""
        path = self._hooks_path(database, webhook_id) + "/dead-letters"
        if letter is not None:
            path += "/" + quote(_given("dead letter id", letter), safe="")
        return Call("POST", path + "/replay", lambda d: list(d["replaying"]), {})

    def _delete_dead_letter(self, database: str | None, webhook_id: str,
                            letter: str) -> Call[None]:
        return Call("DELETE", self._hooks_path(database, webhook_id) + "/dead-letters/"
                    + quote(_given("dead letter id", letter), safe=""), _nothing)

    # -- the data API, row rules and named queries ------------------------------------------
    def _table_path(self, key: tuple[str, str], table: str) -> str:
        return f"{self._data_path(*key)}/tables/{quote(_given('table', table), safe='')}"

    def _rows(self, database: str | None, table: str, select: str | Sequence[str] | None,
              where: Where | None, order: str | Sequence[str] | None, limit: int | None,
              after: str | None, branch: str | None) -> Call[dict[str, Any]]:
        """A page of a table's rows: ``{"rows", "next", "bookmark"}``. It reads what the
        session saw or later (the session's bookmark goes with it) and advances it."""
        key = self.resolve(database, branch)
        params = _filters(where)
        for name, value in (("select", _columns(select)), ("order", _columns(order)),
                            ("limit", None if limit is None else str(int(limit))),
                            ("after", after or None)):
            if value is not None:
                params.append((name, value))
        return Call("GET", self._table_path(key, table), _page, params=params,
                    headers=self._session_headers(key, None), session=key)

    def _insert_rows(self, database: str | None, table: str,
                     rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                     branch: str | None, upsert: bool = False) -> Call[list[dict[str, Any]]]:
        """One row (a mapping) or many, in one transaction; the rows as stored. ``upsert``:
        a row conflicting with one there updates it (``?on_conflict=update``)."""
        body: Any = fields_json(rows) if isinstance(rows, Mapping) else \
            [fields_json(r) for r in rows]
        if body == []:
            raise ValueError("insert_rows: give at least one row")
        key = self.resolve(database, branch)
        path = self._table_path(key, table) + ("?on_conflict=update" if upsert else "")
        return Call("POST", path, _written, body, session=key)

    def _update_rows(self, database: str | None, table: str, values: Mapping[str, Any],
                     where: Where, branch: str | None) -> Call[list[dict[str, Any]]]:
        key = self.resolve(database, branch)
        return Call("PATCH", self._table_path(key, table), _written, fields_json(values),
                    params=_filters(where, needed=True), session=key)

    def _delete_rows(self, database: str | None, table: str, where: Where,
                     branch: str | None) -> Call[list[dict[str, Any]]]:
        key = self.resolve(database, branch)
        return Call("DELETE", self._table_path(key, table), _written,
                    params=_filters(where, needed=True), session=key)

    def _table_schema(self, database: str | None, table: str,
                      branch: str | None) -> Call[dict[str, Any]]:
        key = self.resolve(database, branch)
        return Call("GET", self._table_path(key, table) + "/schema", _identity)

    def _rules(self, database: str | None, branch: str | None) -> Call[dict[str, Any]]:
        return Call("GET", self._data_path(database, branch) + "/rules",
                    lambda d: dict(d["rules"]))

    def _set_rules(self, database: str | None, table: str, verbs: dict[str, Any],
                   branch: str | None) -> Call[dict[str, Any]]:
        """Set the verbs given (a text), remove those given None; KEEP leaves one as it is."""
        body = {verb: rule for verb, rule in verbs.items() if rule is not KEEP}
        if not body:
            raise ValueError("set_rules: give at least one of select, insert, update, delete "
                             "(None removes a rule)")
        key = self.resolve(database, branch)
        return Call("PUT", f"{self._data_path(*key)}/rules/"
                    + quote(_given("table", table), safe=""), _identity, body, session=key)

    def _queries_path(self, key: tuple[str, str], name: str | None = None) -> str:
        path = self._data_path(*key) + "/queries"
        if name is None:
            return path
        return f"{path}/{quote(_given('query name', name), safe='')}"

    def _named_queries(self, database: str | None,
                       branch: str | None) -> Call[list[dict[str, Any]]]:
        return Call("GET", self._queries_path(self.resolve(database, branch)),
                    lambda d: list(d["queries"]))

    def _set_named_query(self, database: str | None, name: str, sql: str, description: str,
                         branch: str | None) -> Call[dict[str, Any]]:
        key = self.resolve(database, branch)
        return Call("PUT", self._queries_path(key, name), _identity,
                    {"sql": sql, "description": description}, session=key)

    def _delete_named_query(self, database: str | None, name: str,
                            branch: str | None) -> Call[None]:
        return Call("DELETE", self._queries_path(self.resolve(database, branch), name),
                    _nothing)

    def _run_named_query(self, database: str | None, name: str,
                         args: Mapping[str, Any] | None,
                         branch: str | None) -> Call[dict[str, Any]]:
        """``{"columns", "rows" (dicts, values as Python), "rows_affected", "bookmark"}``."""
        if args is not None and not isinstance(args, Mapping):
            raise TypeError("a named query's args are a mapping of name: value")
        key = self.resolve(database, branch)
        return Call("POST", self._queries_path(key, name), _query_answer,
                    {"args": fields_json(args or {})}, session=key)

    # -- trusted identity providers ---------------------------------------------------------
    # None names the node, never the client's database: a database's issuers are named.
    def _issuers(self, database: str | None) -> Call[Any]:
        """A database's own issuers (the list), or the node's (``{"issuers", "keys"}``)."""
        if database is None:
            return Call("GET", "/v1/issuers", _identity)
        return Call("GET", self._issuers_path(database), lambda d: list(d["issuers"]))

    def _set_issuers(self, database: str,
                     issuers: Sequence[Mapping[str, Any]]) -> Call[list[dict[str, Any]]]:
        """Replace a database's own issuers (``[]``: none); the list as now declared."""
        if isinstance(issuers, Mapping | str | bytes):
            raise TypeError("issuers: a list of issuers ({\"issuer\", \"audience\", "
                            "\"jwks_url\", ...}), [] for none")
        return Call("PUT", self._issuers_path(database), lambda d: list(d["issuers"]),
                    {"issuers": [dict(i) for i in issuers]})

    def _issuers_path(self, database: str) -> str:
        return "/v1/databases/" + quote(_given("database", database), safe="") + "/issuers"

    def _revoke_issuer(self, issuer: str, jti: str | None,
                       database: str | None) -> Call[dict[str, Any]]:
        """One token (``jti``) or every token issued until now (no ``jti``) of the node's
        issuer, or of ``database``'s own. An empty ``jti`` is refused, never taken for
        all of the issuer's tokens."""
        body = {"issuer": _given("issuer", issuer)}
        if jti is not None:
            body["jti"] = _given("jti", jti)
        if database is not None:
            body["database"] = _given("database", database)
        return Call("POST", "/v1/issuers/revoke", _identity, body)

    def _list(self, limit: int | None, page_size: int) -> Plan[list[dict[str, Any]]]:
        """Follow ``next_cursor`` until the list (or ``limit`` entries) is complete."""
        return self._pages("/v1/databases", "databases", {}, limit, page_size)

    def _tokens(self, database: str | None, expired: bool, revoked: bool, limit: int | None,
                page_size: int) -> Plan[list[dict[str, Any]]]:
        """Every token the client's token may list (live ones unless ``expired`` or
        ``revoked``; those reaching ``database`` if named), or the first ``limit``."""
        params = {"include": ",".join(name for name, on in (("expired", expired),
                                                           ("revoked", revoked)) if on)}
        if database is not None:
            params["database"] = _given("database", database)
        return self._pages("/v1/tokens", "tokens",
                           {k: v for k, v in params.items() if v}, limit, page_size)

    def _audit(self, database: str | None, since: str | float | datetime | None,
               until: str | float | datetime | None, limit: int | None,
               page_size: int) -> Plan[list[dict[str, Any]]]:
        """The audit log's records (oldest first, from ``since``, before ``until``; those
        of ``database`` if named), or the first ``limit``."""
        params = {"database": _given("database", database) if database is not None else "",
                  "since": _instant("since", since), "until": _instant("until", until)}
        return self._pages("/v1/audit", "records", {k: v for k, v in params.items() if v},
                           limit, min(page_size, 1000))

    def _pages(self, path: str, key: str, params: dict[str, str], limit: int | None,
               page_size: int) -> Plan[list[dict[str, Any]]]:
        """Follow ``next_cursor`` until the list (or ``limit`` entries) is complete. A page
        may hold fewer entries than asked for (a filtered token list) and still go on."""
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            size = page_size if limit is None else max(1, min(page_size, limit - len(out)))
            query = params | {"limit": str(size)} | ({"cursor": cursor} if cursor else {})
            page: Page = yield Call(
                "GET", path, lambda d: Page(d[key], d.get("next_cursor")), params=query)
            out.extend(page.databases)
            if page.next_cursor is None or (limit is not None and len(out) >= limit):
                return out if limit is None else out[:limit]
            cursor = page.next_cursor


class BaseTransaction:
    """What both transaction kinds know: their database and branch, id and outcome.

    The database and branch are fixed when the transaction is made: the server ties a
    transaction to its branch, and every later call must name the same one.
    """

    def __init__(self, api: BaseClient, mode: Literal["read", "write"] | None,
                 database: str | None, branch: str | None, idempotency_key: str | None,
                 consistency: Consistency | None = None):
        self._api = api
        self.mode = mode
        self.consistency = _consistency(consistency)
        self.database, self.branch = api.resolve(database, branch)
        self.idempotency_key = idempotency_key
        self.id: str | None = None
        self.expires_at: str | None = None
        self.done = False
        self.committed = False
        self.txid: int | None = None
        self.bookmark: str | None = None

    @property
    def open(self) -> bool:
        return self.id is not None and not self.done

    def _begin_call(self) -> Call[Begun]:
        if self.id is not None:
            raise RuntimeError("this transaction was already begun")
        return self._api._begin(self.mode, self.database, self.branch, self.consistency)

    def _begun(self, begun: Begun) -> None:
        self.id, self.expires_at = begun.id, begun.expires_at
        self.mode = "read" if begun.mode == "read" else "write"

    def _query_call(self, statements: Sequence[StatementLike]) -> Call[list[Result]]:
        return self._api._query(statements, self.database, self.branch, None, self._live_id())

    def _end_call(self, commit: bool, idempotency_key: str | None) -> Call[Ended]:
        tx = self._live_id()
        self.done = True  # the server ends it whatever the answer; never try twice
        return self._api._end(tx, commit, self.database, self.branch,
                              idempotency_key if commit else None)

    def _ended(self, ended: Ended) -> None:
        self.committed, self.txid, self.bookmark = ended.committed, ended.txid, ended.bookmark

    def _live_id(self) -> str:
        if self.id is None:
            raise RuntimeError("transaction not begun: use it in a with block or call begin()")
        if self.done:
            raise RuntimeError("transaction already committed or rolled back")
        return self.id

    def _expired(self, exc: ClientError) -> None:
        """A transaction the server no longer knows cannot be ended by us either."""
        if isinstance(exc, TransactionExpired) or exc.code == "TRANSACTION_NOT_FOUND":
            self.done = True


RETRY_STATUS = frozenset({502, 503})  # a node starting or stopping, a leader moving
RETRY_CODES = frozenset({"CONNECTION_ERROR", "CLIENT_TIMEOUT"})  # no answer at all
RETRY_FIRST = 0.1  # seconds before the first retry; doubled each time, up to RETRY_MAX
RETRY_MAX = 2.0
RETRY_FOR = 30.0  # seconds of failures in a row after which a feed gives up
POLL_EVERY = 1.0  # seconds at least between the starts of two empty pages of a followed feed


def _names(what: str, given: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """A filter: None for everything, else at least one name (a lone str is one name)."""
    if given is None:
        return None
    names = (given,) if isinstance(given, str) else tuple(given)
    if not names:
        raise ValueError(f"{what}: name at least one, or pass None for all")
    return names


def _given(what: str, value: str) -> str:
    """An id a call needs (a webhook's, a dead letter's): never empty."""
    if not value:
        raise ValueError(f"{what}: give one")
    return value


def _instant(name: str, when: str | float | datetime | None) -> str:
    """A time as the audit log's query takes it: unix seconds or RFC 3339 ("" for none)."""
    if when is None:
        return ""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ValueError(f"a datetime {name} needs a time zone (e.g. UTC)")
        return when.isoformat()
    if isinstance(when, int | float):
        return f"{when:.3f}"
    return when


def _since(since: str | datetime | None) -> str | None:
    """Where a webhook starts, as the API takes it: a cursor (or bookmark), an ISO 8601
    time (a datetime needs a zone), "now"; None: the server's default (now)."""
    if isinstance(since, datetime):
        if since.tzinfo is None:
            raise ValueError("a datetime since needs a time zone (e.g. UTC)")
        return since.isoformat()
    return since


class _Keep:
    """``set_rules``' default for a verb: leave its rule as it is (None removes it)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()

# A data API filter: column -> "op.value" (a str is always one, sent as written: "eq.open",
# "in.(1,2)", "is.null"), or a number or bool meaning eq (None: is.null; a list, tuple or
# set: in, its texts as they are); pairs for a column named twice (a range).
Where = Mapping[str, Any] | Sequence[tuple[str, Any]]
RESERVED = frozenset({"select", "order", "limit", "after", "branch"})  # not filterable


FILTER_OPS = frozenset({"eq", "neq", "lt", "lte", "gt", "gte", "like", "glob", "in", "is"})


def _filter_text(column: str, value: Any) -> str:
    if isinstance(value, str):
        if value.partition(".")[0] not in FILTER_OPS or "." not in value:
            raise ValueError(f"where {column}: {value[:40]!r} is not op.value (a text is "
                             f"always one: 'eq.{value[:20]}' for equality; "
                             f"{', '.join(sorted(FILTER_OPS))})")
        return value
    if value is None:
        return "is.null"
    if isinstance(value, list | tuple | set | frozenset):
        if not value:
            raise ValueError(f"where {column}: an empty list matches nothing; leave it out")
        return "in.(" + ",".join(_bound_text(column, v) for v in value) + ")"
    return "eq." + _bound_text(column, value, quoted=False)


def _bound_text(column: str, value: Any, quoted: bool = True) -> str:
    """A value as the data API binds it: text (numbers compare as numbers in a column of
    numeric affinity). A string in an in-list is quoted, so it may hold commas."""
    if isinstance(value, str):
        return '"' + value.replace('"', '""') + '"' if quoted else value
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | float):
        return repr(float(value)) if isinstance(value, float) else str(int(value))
    raise TypeError(f"where {column}: {type(value).__name__} cannot be a filter's value "
                    "(values bind as text: use str, int, float, bool or None)")


def _filters(where: Where | None, needed: bool = False) -> list[tuple[str, str]]:
    """The query string's filters. ``needed`` (an update, a delete): None is refused, so
    every row is never reached by a forgotten argument; ``{}`` says every row."""
    if where is None:
        if needed:
            raise ValueError("where: give the filters ({} for every row the token may "
                             "touch)")
        return []
    pairs = list(where.items()) if isinstance(where, Mapping) else list(where)
    out = []
    for column, value in pairs:
        if not isinstance(column, str) or not column:
            raise ValueError(f"where: a column name, not {column!r}")
        if column in RESERVED:
            raise ValueError(f"where {column}: the data API cannot filter a column named "
                             f"{', '.join(sorted(RESERVED))}")
        out.append((column, _filter_text(column, value)))
    return out


def _columns(names: str | Sequence[str] | None) -> str | None:
    """select= and order=: a comma-separated text, or names (``"x.desc"`` for an order)."""
    if names is None or isinstance(names, str):
        return names or None
    return ",".join(names) or None


def _page(data: Any) -> dict[str, Any]:
    return {"rows": [decode_fields(r) for r in data["rows"]], "next": data.get("next"),
            "bookmark": data.get("bookmark")}


def _written(data: Any) -> list[dict[str, Any]]:
    return [decode_fields(r) for r in data["rows"]]


def _query_answer(data: Any) -> dict[str, Any]:
    return data | {"rows": [decode_fields(r) for r in data["rows"]]}


class BaseFeed:
    """A branch's change feed being read, for :class:`~shoal.client.sync.ChangeFeed` and
    :class:`~shoal.client.aio.AsyncChangeFeed`, which only pause, send its calls and hand
    their answers back.

    Pages are long polls of ``wait`` seconds, each asked from where the last one ended. With
    ``follow`` False pages wait only until one brings changes (what was just committed
    becomes durable), and the feed ends at the first page that brings nothing and does not
    move. A followed feed asks again at once after a page that moved, and at most every
    ``POLL_EVERY`` seconds after one that did not (``wait=0`` polls; a server that answers
    a long poll at once is not hammered). Failures with no answer, 502 and 503 (a node
    restarting, a leader moving) are retried with a backoff, for up to ``retry_for``
    seconds after the last page; any other error is raised and ends the feed.

    ``cursor``: where a new feed would go on from, exactly after what this one yielded (past
    a whole page once all of it was yielded, the changes its filters left out too); the
    ``since`` given until then.
    """

    def __init__(self, api: BaseClient, since: str | None, *, database: str | None,
                 branch: str | None, tables: str | Iterable[str] | None,
                 ops: str | Iterable[str] | None, wait: float, limit: int, follow: bool,
                 retry_for: float):
        self.key = api.resolve(database, branch)
        self.cursor = since or None
        self.follow = follow
        self.done = False
        self._api = api
        self._tables = _names("tables", tables)
        self._ops = _names("ops", ops)
        self._wait = wait
        self._limit = limit
        self._retry_for = retry_for
        self._pending: deque[Change] = deque()
        self._page_end: str | None = None
        self._changed = False  # a page brought changes
        self._pause = 0.0  # before the next request
        self._backoff = RETRY_FIRST
        self._good = self._asked_at = time.monotonic()

    def close(self) -> None:
        """Stop: the iterator yields nothing more (no request is left open between pages)."""
        self.done = True
        self._pending.clear()

    def _pop(self) -> Change | None:
        """The next change of the last page, moving the cursor past it; None when none is left."""
        if not self._pending:
            return None
        change = self._pending.popleft()
        self.cursor = change.cursor if self._pending else self._page_end
        return change

    def _next(self) -> tuple[Call[ChangesPage], float] | None:
        """The next page's request and the seconds to pause before sending it; None once the
        feed ended."""
        if self.done:
            return None
        pause, self._pause = self._pause, 0.0
        self._asked_at = time.monotonic() + pause
        wait = self._wait if self.follow or not self._changed else 0.0
        return self._api._changes(self.key, self.cursor, self._limit, wait, self._tables,
                                  self._ops), pause

    def _took(self, page: ChangesPage) -> None:
        self._good, self._backoff = time.monotonic(), RETRY_FIRST
        if page.changes:
            self._changed = True
            self._pending.extend(page.changes)
            self._page_end = page.cursor
            return
        if page.cursor != self.cursor:  # it moved past changes the filters left out
            self.cursor = page.cursor
        elif not self.follow:
            self.done = True
        else:
            self._pause = max(0.0, self._asked_at + POLL_EVERY - self._good)

    def _failed(self, exc: ClientError) -> bool:
        """Whether to ask again (after a backoff) rather than raise ``exc``, ending the feed."""
        transient = exc.status in RETRY_STATUS or (exc.status is None
                                                   and exc.code in RETRY_CODES)
        if self.done or not transient or time.monotonic() - self._good > self._retry_for:
            self.done = True
            return False
        self._pause = self._backoff * random.uniform(0.5, 1.0)  # consumers out of step
        self._backoff = min(self._backoff * 2, RETRY_MAX)
        return True
