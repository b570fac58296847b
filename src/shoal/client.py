"""Python client for Shoal's native HTTP API: :class:`Client` (blocking) and :class:`AsyncClient`.

Both speak the same ``/v1`` API over one keep-alive ``httpx`` connection pool::

    from shoal.client import Client

    with Client("http://127.0.0.1:8080", token, database="orders") as db:
        db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)")
        db.execute("INSERT INTO t (v) VALUES (?)", [b"\\x00\\x01"], idempotency_key="req-42")
        rows = db.execute("SELECT * FROM t").rows          # [(1, b'\\x00\\x01')]
        with db.transaction() as tx:                        # commit on success,
            tx.execute("UPDATE t SET v = NULL")             # rollback on an exception

``url`` defaults to ``$SHOAL_URL`` (else ``http://127.0.0.1:8080``) and ``token`` to
``$SHOAL_TOKEN``. The URL may name a database too: ``http://host:8080/db/orders``,
``shoal://host:8080/orders`` (plain HTTP) or ``shoals://host/orders`` (HTTPS).

Values travel losslessly: ``None``, ``int`` (any 64-bit value; beyond 2**53 as
``{"integer"}``), ``float`` (infinities as ``{"float"}``; NaN binds as NULL, as SQLite
stores it), ``str`` and ``bytes``-like (as ``{"base64"}``); rows come back as tuples of
the same Python types. :func:`to_json` and :func:`from_json` are the one conversion path.

Failures raise :class:`ShoalError` subclasses carrying the server's stable ``code``.
Request building and response parsing live in :class:`_API`, shared by both clients, so
the blocking and the asyncio client differ only in the transport call.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import re
import sqlite3
import ssl
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar
from urllib.parse import quote, urlsplit

import httpx
import msgspec

from shoal import __version__
from shoal.wire import encode as encode_value

if TYPE_CHECKING:
    from shoal.dbapi import Connection

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "AsyncTransaction",
    "AuthError",
    "Busy",
    "Client",
    "ConnectionFailed",
    "InvalidRequest",
    "Meta",
    "NotFound",
    "Result",
    "SQLError",
    "ServerError",
    "ShoalError",
    "Timeout",
    "Transaction",
    "TransactionExpired",
    "connect",
    "first_keyword",
    "from_json",
    "parse_url",
    "split_sql",
    "to_json",
    "transaction_control",
]

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 30.0

Value = None | int | float | str | bytes
Args = Sequence[Any] | Mapping[str, Any] | None
StatementLike = str | tuple[str, Args]
T = TypeVar("T")


# -- values ------------------------------------------------------------------------------------
def to_json(value: Any) -> Any:
    """One Python value as the API's JSON form; subclasses and buffers are normalised first."""
    t = type(value)
    if t is str or value is None:
        return value
    if t is bool:
        return int(value)
    if t is float and math.isnan(value):
        return None  # SQLite stores NaN as NULL; JSON cannot carry it
    if t not in (int, float, bytes):
        if isinstance(value, int):
            value = int(value)
        elif isinstance(value, float):
            value = None if math.isnan(value) else float(value)
        elif isinstance(value, str):
            value = str(value)
        elif isinstance(value, bytearray | memoryview):
            value = bytes(value)
        else:
            raise TypeError(f"unsupported value type {t.__name__}: "
                            "use None, int, float, str or bytes")
    return encode_value(value)


def from_json(value: Any) -> Value:
    """One JSON value from the API as Python: the inverse of :func:`to_json`."""
    if type(value) is not dict:
        return value
    if len(value) == 1:
        ((kind, inner),) = value.items()
        if type(inner) is str:
            if kind == "base64":
                return base64.b64decode(inner)
            if kind == "integer":
                return int(inner, 10)
            if kind == "float" and inner in ("Infinity", "-Infinity", "NaN"):
                return float(inner)
    raise ValueError(f"not an encoded SQL value: {str(value)[:80]}")


def _row(values: list[Any]) -> tuple[Value, ...]:
    """A result row as a tuple, decoding only the (rare) tagged values."""
    return tuple(from_json(v) if type(v) is dict else v for v in values)


def args_json(args: Args) -> list[Any] | dict[str, Any] | None:
    """Positional (sequence) or named (mapping) arguments as the API's ``args``."""
    if args is None:
        return None
    if isinstance(args, Mapping):
        return {str(k): to_json(v) for k, v in args.items()}
    if isinstance(args, str | bytes | bytearray | memoryview):
        raise TypeError("args must be a sequence or a mapping of values, not a single value")
    return [to_json(v) for v in args]


def statement_json(item: StatementLike) -> str | dict[str, Any]:
    """A statement as an entry of the API's ``statements`` list."""
    if isinstance(item, str):
        return item
    sql, args = item
    encoded = args_json(args)
    return sql if encoded is None else {"sql": sql, "args": encoded}


# -- SQL text ----------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""'(?:[^']|'')*'?|"(?:[^"]|"")*"?|`[^`]*`?|\[[^\]]*\]?|--[^\n]*|/\*.*?(?:\*/|\Z)"""
    r"""|;|[^'"`\[\-/;]+|.""",
    re.S,
)
_WORD = re.compile(r"[A-Za-z_]+")


def _is_comment(token: str) -> bool:
    return token.startswith(("--", "/*"))


def split_sql(script: str) -> list[str]:
    """Cut a script into single statements (the API takes one per entry).

    Semicolons inside quotes, comments and trigger bodies do not cut: a piece ends
    only where SQLite itself would call the statement complete. Comment-only pieces
    are dropped; a trailing statement without ``;`` is kept.
    """
    out: list[str] = []
    start = 0
    content = False
    pos = 0
    for match in _TOKEN.finditer(script):
        token = match.group()
        pos = match.end()
        if token == ";":
            piece = script[start:pos]
            if sqlite3.complete_statement(piece):
                if content:
                    out.append(piece.strip())
                start, content = pos, False
        elif not content and not _is_comment(token) and token.strip():
            content = True
    if content:
        out.append(script[start:].strip())
    return out


def first_keyword(sql: str) -> str:
    """The statement's first keyword, upper case, skipping comments ('' if none)."""
    for match in _TOKEN.finditer(sql):
        token = match.group()
        if _is_comment(token) or not token.strip():
            continue
        word = _WORD.match(token.lstrip())
        return word.group().upper() if word else ""
    return ""


def transaction_control(sql: str) -> str | None:
    """"BEGIN", "COMMIT" or "ROLLBACK" when ``sql`` starts or ends a transaction, else None.

    The API refuses these as SQL (every request is a transaction already); the shell and
    the DB-API map them onto interactive transactions. ``END`` is ``COMMIT``; ``ROLLBACK TO``
    (a savepoint) is ordinary SQL.
    """
    keyword = first_keyword(sql)
    if keyword in ("BEGIN", "COMMIT"):
        return keyword
    if keyword == "END":
        return "COMMIT"
    if keyword == "ROLLBACK" and not re.search(r"\bTO\b", sql, re.IGNORECASE):
        return "ROLLBACK"
    return None


# -- URLs --------------------------------------------------------------------------------------
_DB_PATH = re.compile(r"^(.*)/db/([^/]+)/?$")


def parse_url(url: str) -> tuple[str, str | None]:
    """(base URL, database or None) from ``http(s)://host[/prefix][/db/NAME]`` or ``shoal(s)://``."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme in ("shoal", "shoals"):
        scheme = "https" if scheme == "shoals" else "http"
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) == 1:
            return f"{scheme}://{parts.netloc}", segments[0]
    elif scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL {url!r}: use http(s)://, shoal:// or shoals://")
    if not parts.netloc:
        raise ValueError(f"URL {url!r} has no host")
    path = parts.path
    database = None
    found = _DB_PATH.match(path)
    if found:
        path, database = found.group(1), found.group(2)
    return f"{scheme}://{parts.netloc}{path.rstrip('/')}", database


# -- errors ------------------------------------------------------------------------------------
class ShoalError(Exception):
    """A failed call: the server's error envelope, or a transport failure (``status`` None)."""

    def __init__(self, code: str, message: str, *, hint: str | None = None,
                 status: int | None = None, statement: int | None = None,
                 extended_code: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.status = status
        self.statement = statement
        self.extended_code = extended_code
        self.details = details or {}

    def __str__(self) -> str:
        where = f" (statement {self.statement})" if self.statement is not None else ""
        return f"{self.code}: {self.message}{where}"


class AuthError(ShoalError):
    """401/403: missing, invalid, expired or revoked token, or not allowed."""


class NotFound(ShoalError):
    """404: no such database, token, transaction or route."""


class AlreadyExists(ShoalError):
    """409 DATABASE_EXISTS or BRANCH_EXISTS."""


class Busy(ShoalError):
    """The write lock is held (DATABASE_BUSY, SQLITE_BUSY, SQLITE_LOCKED): retry later."""


class Timeout(ShoalError):
    """A statement ran past statement_timeout, or the HTTP call timed out (CLIENT_TIMEOUT)."""


class TransactionExpired(ShoalError):
    """The interactive transaction sat idle too long and was rolled back."""


class SQLError(ShoalError):
    """SQLite refused the statement; ``code`` is SQLITE_*, ``extended_code`` the detail."""


class InvalidRequest(ShoalError):
    """400/413/422: the request itself is wrong (shape, arguments, size, idempotency reuse)."""


class ServerError(ShoalError):
    """5xx: a server fault."""


class ConnectionFailed(ShoalError):
    """The server could not be reached or the connection broke (code CONNECTION_ERROR)."""


_BY_CODE: dict[str, type[ShoalError]] = {
    "DATABASE_EXISTS": AlreadyExists,
    "BRANCH_EXISTS": AlreadyExists,
    "DATABASE_BUSY": Busy,
    "SQLITE_BUSY": Busy,
    "SQLITE_LOCKED": Busy,
    "STATEMENT_TIMEOUT": Timeout,
    "TRANSACTION_EXPIRED": TransactionExpired,
}


def error_class(code: str, status: int | None) -> type[ShoalError]:
    """The exception type for a code: by code first, then SQLite's family, then the status."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    if code.startswith("SQLITE_"):
        return SQLError
    if status in (401, 403):
        return AuthError
    if status == 404:
        return NotFound
    if status is not None and status >= 500:
        return ServerError
    if status in (400, 413, 422):
        return InvalidRequest
    return ShoalError


def error_from_response(response: httpx.Response) -> ShoalError:
    """The typed error for a non-2xx response, tolerating bodies that are not the envelope."""
    status = response.status_code
    err: Any = None
    with contextlib.suppress(msgspec.DecodeError, AttributeError):
        err = msgspec.json.decode(response.content).get("error")
    if not isinstance(err, dict) or not isinstance(err.get("code"), str):
        text = response.text.strip()[:500] or response.reason_phrase
        return error_class("", status)(f"HTTP_{status}", text, status=status)
    code = err["code"]
    statement = err.get("statement")
    return error_class(code, status)(
        code, str(err.get("message", "")), hint=err.get("hint") or None, status=status,
        statement=statement if isinstance(statement, int) else None,
        extended_code=err.get("extended_code"), details=err)


def transport_error(exc: httpx.HTTPError) -> ShoalError:
    """A typed error for an httpx failure that produced no response."""
    if isinstance(exc, httpx.TimeoutException):
        return Timeout("CLIENT_TIMEOUT", f"no answer in time: {exc}")
    return ConnectionFailed("CONNECTION_ERROR", f"{type(exc).__name__}: {exc}")


# -- results -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Meta:
    """Per-request facts: rows metered, time spent, and the commit it saw or made."""

    rows_read: int = 0
    rows_written: int = 0
    duration_ms: float = 0.0
    txid: int | None = None
    bookmark: str | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """One statement's result; rows hold Python values (bytes for blobs, int for big ints)."""

    columns: list[str]
    decltypes: list[str | None]
    rows: list[tuple[Value, ...]]
    rows_affected: int
    last_insert_rowid: int | None
    meta: Meta = field(default_factory=Meta)

    @property
    def txid(self) -> int | None:
        return self.meta.txid

    @property
    def bookmark(self) -> str | None:
        return self.meta.bookmark

    def __iter__(self) -> Iterator[tuple[Value, ...]]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def to_json(self) -> dict[str, Any]:
        """The API's JSON shape again (values re-encoded), e.g. for ``--json`` output."""
        return {
            "columns": self.columns,
            "decltypes": self.decltypes,
            "rows": [[to_json(v) for v in row] for row in self.rows],
            "rows_affected": self.rows_affected,
            "last_insert_rowid": to_json(self.last_insert_rowid),
        }


def parse_results(data: Any) -> list[Result]:
    """A query response body as Results sharing one Meta."""
    m = data.get("meta") or {}
    meta = Meta(m.get("rows_read", 0), m.get("rows_written", 0), m.get("duration_ms", 0.0),
                m.get("txid"), m.get("bookmark"))
    return [
        Result(r["columns"], r["decltypes"], [_row(row) for row in r["rows"]],
               r["rows_affected"], from_json(r.get("last_insert_rowid")),  # type: ignore[arg-type]
               meta)
        for r in data["results"]
    ]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of the database list."""

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


# -- requests, shared by both clients ----------------------------------------------------------
_NO_BODY = object()


def _identity(data: Any) -> Any:
    return data


def _nothing(data: Any) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One HTTP request and how to read its answer; the transport is the caller's."""

    method: str
    path: str
    parse: Callable[[Any], T]
    body: Any = _NO_BODY
    idempotency_key: str | None = None
    params: dict[str, str] | None = None

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        headers = {}
        content = None
        if self.body is not _NO_BODY:
            content = msgspec.json.encode(self.body)
            headers["content-type"] = "application/json"
        if self.idempotency_key is not None:
            headers["idempotency-key"] = self.idempotency_key
        return http.build_request(self.method, self.path, content=content, headers=headers,
                                  params=self.params)

    def finish(self, response: httpx.Response) -> T:
        if response.status_code >= 400:
            raise error_from_response(response)
        data = msgspec.json.decode(response.content) if response.content else None
        return self.parse(data)


# A multi-request flow: yields calls, receives their results, returns the outcome.
Plan = Generator[Call[Any], Any, T]


@cache
def _default_tls() -> ssl.SSLContext:
    return ssl.create_default_context()


class _API:
    """Settings and request building common to :class:`Client` and :class:`AsyncClient`."""

    def __init__(self, url: str | None, token: str | None, database: str | None):
        base, named = parse_url(url or os.environ.get("SHOAL_URL") or DEFAULT_URL)
        self.url = base
        self.default_database = database or named
        self.token = token if token is not None else os.environ.get("SHOAL_TOKEN") or None

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

    def _db_path(self, database: str | None) -> str:
        name = database or self.default_database
        if not name:
            raise ValueError("no database: pass database= here or to the client, "
                             "or use a URL ending in /db/NAME")
        return "/v1/databases/" + quote(name, safe="")

    # -- calls ------------------------------------------------------------------------------
    def _query(self, statements: Sequence[StatementLike], database: str | None,
               idempotency_key: str | None, tx: str | None = None) -> Call[list[Result]]:
        path = self._db_path(database)
        if tx is not None:
            path += "/transactions/" + quote(tx, safe="")
        return Call("POST", path + "/query", parse_results,
                    {"statements": [statement_json(s) for s in statements]}, idempotency_key)

    def _begin(self, mode: Literal["read", "write"] | None, database: str | None) -> Call[Begun]:
        return Call("POST", self._db_path(database) + "/transactions",
                    lambda d: Begun(d["id"], d.get("mode", ""), d.get("expires_at", "")),
                    {"mode": mode} if mode else {})

    def _end(self, tx: str, commit: bool, database: str | None,
             idempotency_key: str | None = None) -> Call[Ended]:
        action = "commit" if commit else "rollback"
        path = f"{self._db_path(database)}/transactions/{quote(tx, safe='')}/{action}"
        return Call("POST", path,
                    lambda d: Ended(commit, d.get("txid"), d.get("bookmark")),
                    {}, idempotency_key)

    def _create_database(self, name: str, idempotency_key: str | None) -> Call[dict[str, Any]]:
        return Call("POST", "/v1/databases", _identity, {"name": name}, idempotency_key)

    def _database(self, name: str | None) -> Call[dict[str, Any]]:
        return Call("GET", self._db_path(name), _identity)

    def _delete_database(self, name: str, purge: bool = False) -> Call[None]:
        if not name:  # never fall back to the default database for a delete
            raise ValueError("delete_database needs the database name")
        return Call("DELETE", self._db_path(name), _nothing,
                    params={"purge": "true"} if purge else None)

    def _undelete_database(self, name: str, incarnation: str | None) -> Call[dict[str, Any]]:
        if not name:
            raise ValueError("undelete_database needs the database name")
        body = {"incarnation": incarnation} if incarnation else {}
        return Call("POST", self._db_path(name) + "/undelete", _identity, body=body)

    def _deleted_databases(self) -> Call[list[dict[str, Any]]]:
        return Call("GET", "/v1/databases", lambda d: list(d["databases"]),
                    params={"deleted": "true"})

    def _usage(self, name: str | None) -> Call[dict[str, Any]]:
        return Call("GET", self._db_path(name) + "/usage", _identity)

    def _limits(self, name: str | None) -> Call[dict[str, Any]]:
        return Call("GET", self._db_path(name) + "/limits", _identity)

    def _set_limits(self, name: str | None, limits: dict[str, Any]) -> Call[dict[str, Any]]:
        return Call("PUT", self._db_path(name) + "/limits", _identity, body=limits)

    def _compact(self, name: str | None, branch: str) -> Call[dict[str, Any]]:
        base = self._db_path(name) if branch == "main" else self._branch_path(name, branch)
        return Call("POST", base + "/compact", _identity, {})

    def _create_token(self, databases: Sequence[str] | Literal["*"], access: str,
                      expires_in: int, idempotency_key: str | None) -> Call[dict[str, Any]]:
        scope: list[str] | str = "*" if databases == "*" else list(databases)
        return Call("POST", "/v1/tokens", _identity,
                    {"databases": scope, "access": access, "expires_in": int(expires_in)},
                    idempotency_key)

    def _revoke_token(self, token_id: str) -> Call[None]:
        return Call("DELETE", "/v1/tokens/" + quote(token_id, safe=""), _nothing)

    # -- branches and history ----------------------------------------------------------------
    def _branch_path(self, database: str | None, branch: str) -> str:
        return f"{self._db_path(database)}/branches/{quote(branch, safe='')}"

    def _branches(self, database: str | None) -> Call[list[dict[str, Any]]]:
        return Call("GET", self._db_path(database) + "/branches", lambda d: d["branches"])

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
        return Call("POST", self._db_path(database) + "/branches", _identity, body)

    def _delete_branch(self, name: str, database: str | None) -> Call[None]:
        return Call("DELETE", self._branch_path(database, name), _nothing)

    def _reset_branch(self, name: str, database: str | None) -> Call[dict[str, Any]]:
        return Call("POST", self._branch_path(database, name) + "/reset", _identity, {})

    def _restore(self, database: str | None, branch: str, timestamp: str | datetime | None,
                 bookmark: str | None, keep_as: str | None) -> Call[dict[str, Any]]:
        body = {"branch": branch} | _point(timestamp, bookmark)
        if keep_as is not None:
            body["keep_as"] = keep_as
        return Call("POST", self._db_path(database) + "/restore", _identity, body)

    def _history(self, database: str | None, branch: str) -> Call[dict[str, Any]]:
        base = self._db_path(database) if branch == "main" else \
            self._branch_path(database, branch)
        return Call("GET", base + "/history", _identity)

    def _list(self, limit: int | None, page_size: int) -> Plan[list[dict[str, Any]]]:
        """Follow ``next_cursor`` until the list (or ``limit`` entries) is complete."""
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            size = page_size if limit is None else max(1, min(page_size, limit - len(out)))
            params = {"limit": str(size)} | ({"cursor": cursor} if cursor else {})
            page: Page = yield Call(
                "GET", "/v1/databases",
                lambda d: Page(d["databases"], d.get("next_cursor")), params=params)
            out.extend(page.databases)
            if page.next_cursor is None or (limit is not None and len(out) >= limit):
                return out if limit is None else out[:limit]
            cursor = page.next_cursor


class _TxState:
    """What both transaction kinds know: their database, id and outcome."""

    def __init__(self, api: _API, mode: Literal["read", "write"] | None,
                 database: str | None, idempotency_key: str | None):
        self._api = api
        self.mode = mode
        self.database = database or api.default_database
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
        return self._api._begin(self.mode, self.database)

    def _begun(self, begun: Begun) -> None:
        self.id, self.expires_at = begun.id, begun.expires_at
        self.mode = "read" if begun.mode == "read" else "write"

    def _query_call(self, statements: Sequence[StatementLike]) -> Call[list[Result]]:
        return self._api._query(statements, self.database, None, self._live_id())

    def _end_call(self, commit: bool, idempotency_key: str | None) -> Call[Ended]:
        tx = self._live_id()
        self.done = True  # the server ends it whatever the answer; never try twice
        return self._api._end(tx, commit, self.database,
                              idempotency_key if commit else None)

    def _ended(self, ended: Ended) -> None:
        self.committed, self.txid, self.bookmark = ended.committed, ended.txid, ended.bookmark

    def _live_id(self) -> str:
        if self.id is None:
            raise RuntimeError("transaction not begun: use it in a with block or call begin()")
        if self.done:
            raise RuntimeError("transaction already committed or rolled back")
        return self.id

    def _expired(self, exc: ShoalError) -> None:
        """A transaction the server no longer knows cannot be ended by us either."""
        if isinstance(exc, TransactionExpired) or exc.code == "TRANSACTION_NOT_FOUND":
            self.done = True


# -- the blocking client -----------------------------------------------------------------------
class Client(_API):
    """Blocking client over one keep-alive connection pool; use as a context manager.

    ``verify``: TLS verification as httpx takes it (a context, a CA bundle path, False).
    """

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 database: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None,
                 verify: ssl.SSLContext | bool | None = None):
        super().__init__(url, token, database)
        self._http = httpx.Client(base_url=self.url, headers=self._headers(), timeout=timeout,
                                  transport=transport, verify=self._verify(verify))

    def _send(self, call: Call[T]) -> T:
        try:
            response = self._http.send(call.request(self._http))
        except httpx.HTTPError as exc:
            raise transport_error(exc) from exc
        return call.finish(response)

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
                idempotency_key: str | None = None) -> Result:
        """Run one statement in its own transaction."""
        return self._send(self._query([(sql, args)], database, idempotency_key))[0]

    def batch(self, statements: Sequence[StatementLike], *, database: str | None = None,
              idempotency_key: str | None = None) -> list[Result]:
        """Run statements in one transaction: all apply or none does."""
        if not statements:
            return []
        return self._send(self._query(statements, database, idempotency_key))

    def transaction(self, mode: Literal["read", "write"] | None = None, *,
                    database: str | None = None,
                    idempotency_key: str | None = None) -> Transaction:
        """An interactive transaction; ``with`` begins it, commits on success, rolls back on error.

        ``mode`` None means write when the token may write. ``idempotency_key`` guards the commit.
        """
        return Transaction(self, mode, database, idempotency_key)

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

    def usage(self, name: str | None = None) -> dict[str, Any]:
        """Cumulative rows_read, rows_written, queries and storage_bytes; size_bytes, the
        limits in force and the current period's counts."""
        return self._send(self._usage(name))

    def limits(self, name: str | None = None) -> dict[str, Any]:
        """The database's own limits and those in force (node defaults filled in)."""
        return self._send(self._limits(name))

    def set_limits(self, name: str | None = None, **limits: Any) -> dict[str, Any]:
        """Replace the database's own limits (size_bytes, rows_read, rows_written, period,
        queries_per_second, transactions; None or absent: the node's default, 0: none).
        Needs an admin token for every database."""
        return self._send(self._set_limits(name, limits))

    def compact(self, name: str | None = None, *, branch: str = "main") -> dict[str, Any]:
        """Give a branch's free pages back (admin; writes wait while it runs):
        ``{"database", "branch", "txid", "bytes_before", "bytes_after", "storage_bytes",
        "ms"}``."""
        return self._send(self._compact(name, branch))

    def create_token(self, databases: Sequence[str] | Literal["*"] = "*",
                     access: Literal["read", "write", "admin"] = "read",
                     expires_in: int = 3600, *,
                     idempotency_key: str | None = None) -> dict[str, Any]:
        """A new token: ``{"id", "token", "databases", "access", "expires_at"}``."""
        return self._send(self._create_token(databases, access, expires_in, idempotency_key))

    def revoke_token(self, token_id: str) -> None:
        self._send(self._revoke_token(token_id))

    # -- branches and point in time -----------------------------------------------------------
    def list_branches(self, database: str | None = None) -> list[dict[str, Any]]:
        """Every branch: name, parent, fork_txid, created_at, timeline, txid, sizes."""
        return self._send(self._branches(database))

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

    def restore(self, *, database: str | None = None, branch: str = "main",
                timestamp: str | datetime | None = None, bookmark: str | None = None,
                keep_as: str | None = None) -> dict[str, Any]:
        """Restore a branch in place; the answer's ``kept_as`` names the branch that keeps
        the state before."""
        return self._send(self._restore(database, branch, timestamp, bookmark, keep_as))

    def history(self, *, database: str | None = None, branch: str = "main") -> dict[str, Any]:
        """The restorable window: ``earliest`` and ``latest`` points (txid, time)."""
        return self._send(self._history(database, branch))


class Transaction(_TxState):
    """A blocking interactive transaction; every call is one request on the client's pool."""

    _client: Client

    def __init__(self, client: Client, mode: Literal["read", "write"] | None,
                 database: str | None, idempotency_key: str | None):
        super().__init__(client, mode, database, idempotency_key)
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
        except ShoalError as exc:
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
        except ShoalError as failed:  # the original error matters more
            exc.add_note(f"rollback also failed: {failed}")


# -- the asyncio client ------------------------------------------------------------------------
class AsyncClient(_API):
    """asyncio client with the same methods as :class:`Client`, awaited."""

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 database: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None,
                 verify: ssl.SSLContext | bool | None = None):
        super().__init__(url, token, database)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self._headers(),
                                       timeout=timeout, transport=transport,
                                       verify=self._verify(verify))

    async def _send(self, call: Call[T]) -> T:
        try:
            response = await self._http.send(call.request(self._http))
        except httpx.HTTPError as exc:
            raise transport_error(exc) from exc
        return call.finish(response)

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
                      idempotency_key: str | None = None) -> Result:
        return (await self._send(self._query([(sql, args)], database, idempotency_key)))[0]

    async def batch(self, statements: Sequence[StatementLike], *, database: str | None = None,
                    idempotency_key: str | None = None) -> list[Result]:
        if not statements:
            return []
        return await self._send(self._query(statements, database, idempotency_key))

    def transaction(self, mode: Literal["read", "write"] | None = None, *,
                    database: str | None = None,
                    idempotency_key: str | None = None) -> AsyncTransaction:
        """Use with ``async with``: begins, commits on success, rolls back on error."""
        return AsyncTransaction(self, mode, database, idempotency_key)

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

    async def usage(self, name: str | None = None) -> dict[str, Any]:
        return await self._send(self._usage(name))

    async def limits(self, name: str | None = None) -> dict[str, Any]:
        return await self._send(self._limits(name))

    async def set_limits(self, name: str | None = None, **limits: Any) -> dict[str, Any]:
        return await self._send(self._set_limits(name, limits))

    async def compact(self, name: str | None = None, *,
                      branch: str = "main") -> dict[str, Any]:
        return await self._send(self._compact(name, branch))

    async def create_token(self, databases: Sequence[str] | Literal["*"] = "*",
                           access: Literal["read", "write", "admin"] = "read",
                           expires_in: int = 3600, *,
                           idempotency_key: str | None = None) -> dict[str, Any]:
        return await self._send(self._create_token(databases, access, expires_in,
                                                   idempotency_key))

    async def revoke_token(self, token_id: str) -> None:
        await self._send(self._revoke_token(token_id))

    async def list_branches(self, database: str | None = None) -> list[dict[str, Any]]:
        return await self._send(self._branches(database))

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

    async def restore(self, *, database: str | None = None, branch: str = "main",
                      timestamp: str | datetime | None = None, bookmark: str | None = None,
                      keep_as: str | None = None) -> dict[str, Any]:
        return await self._send(self._restore(database, branch, timestamp, bookmark, keep_as))

    async def history(self, *, database: str | None = None,
                      branch: str = "main") -> dict[str, Any]:
        return await self._send(self._history(database, branch))


class AsyncTransaction(_TxState):
    """An asyncio interactive transaction."""

    _client: AsyncClient

    def __init__(self, client: AsyncClient, mode: Literal["read", "write"] | None,
                 database: str | None, idempotency_key: str | None):
        super().__init__(client, mode, database, idempotency_key)
        self._client = client

    async def begin(self) -> AsyncTransaction:
        self._begun(await self._client._send(self._begin_call()))
        return self

    async def execute(self, sql: str, args: Args = None) -> Result:
        return (await self.batch([(sql, args)]))[0]

    async def batch(self, statements: Sequence[StatementLike]) -> list[Result]:
        try:
            return await self._client._send(self._query_call(statements))
        except ShoalError as exc:
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
        except ShoalError as failed:
            exc.add_note(f"rollback also failed: {failed}")


def connect(url: str | None = None, token: str | None = None, database: str | None = None,
            **kwargs: Any) -> Connection:
    """A DB-API 2.0 connection; see :func:`shoal.dbapi.connect`."""
    from shoal import dbapi

    return dbapi.connect(url, token, database, **kwargs)
