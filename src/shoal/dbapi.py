"""DB-API 2.0 (PEP 249) over Shoal's HTTP API, so code written for ``sqlite3`` runs with a URL.

::

    from shoal import dbapi

    conn = dbapi.connect("http://127.0.0.1:8080/db/orders", token="...")
    cur = conn.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, name TEXT)")
    cur.executemany("INSERT INTO t (name) VALUES (?)", [("a",), ("b",)])
    conn.commit()
    cur.execute("SELECT * FROM t WHERE name = :name", {"name": "a"})
    print(cur.fetchall(), cur.description)

**Where the database is named.** ``connect(url, token=None, database=None, branch=None)``:
``url`` is ``http(s)://host:port[/prefix]`` with ``database=NAME``, or names the database
itself: ``http(s)://host:port[/prefix]/db/NAME``, ``shoal://host:port/NAME`` (HTTP) or
``shoals://host/NAME`` (HTTPS). A branch other than ``main`` is ``branch=BRANCH`` or the
URL's ``/db/NAME/branches/BRANCH`` (``shoal://host/NAME/branches/BRANCH``). ``url`` and
``token`` default to ``$SHOAL_URL`` and ``$SHOAL_TOKEN``.

**Transactions** follow ``sqlite3``. By default (``isolation_level=""``, legacy control) an
``INSERT``/``UPDATE``/``DELETE``/``REPLACE`` opens an interactive transaction on the server
(``POST .../transactions``), which ``commit()``/``rollback()`` end; other statements outside
one run on their own. ``isolation_level=None`` or ``autocommit=True``: every statement
commits by itself. ``autocommit=False``: the first statement of any kind opens the
transaction (it holds the database's write lock until it ends). ``BEGIN``, ``COMMIT``,
``END`` and ``ROLLBACK`` sent as SQL do the same through the API. An idle transaction is
rolled back by the server after its ``transaction_timeout``; the next call then raises
:class:`OperationalError`.

**Differences from sqlite3**: ``executemany`` sends its rows in one request per 500 (one
server transaction each); parameters are ``None``, ``int``, ``float``, ``str``, bytes-like,
and ``date``/``datetime`` (bound as ISO 8601 text, as sqlite3's default adapters did).
Errors carry the server's ``code``, ``extended_code`` (also ``sqlite_errorname``) and the
original :class:`shoal.client.ClientError` as ``__cause__``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import time as _time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Final

from shoal import client as _client

__all__ = [
    "Binary",
    "Connection",
    "Cursor",
    "DataError",
    "DatabaseError",
    "Date",
    "DateFromTicks",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "Row",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "Warning",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]

apilevel: Final = "2.0"
threadsafety: Final = 1  # threads may share the module, not connections
paramstyle: Final = "qmark"  # named (:name) parameters work too, with a mapping

LEGACY_TRANSACTION_CONTROL: Final = -1
BATCH_SIZE: Final = 500  # statements per request in executemany (well under max_statements)
_DML = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})
_ISOLATION_LEVELS = frozenset({"", "DEFERRED", "IMMEDIATE", "EXCLUSIVE"})

# -- types and constructors (PEP 249) ----------------------------------------------------------
Binary = bytes
Date = _dt.date
Time = _dt.time
Timestamp = _dt.datetime


def DateFromTicks(ticks: float) -> _dt.date:
    return Date(*_time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> _dt.time:
    return Time(*_time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> _dt.datetime:
    return Timestamp(*_time.localtime(ticks)[:6])


# -- exceptions (PEP 249 hierarchy) ------------------------------------------------------------
class Warning(Exception):  # PEP 249 name, shadows the builtin on purpose
    """Important warnings (PEP 249); Shoal raises none today."""


class Error(Exception):
    """Base of every DB-API error; carries the server's error code when there is one."""

    code: str | None = None
    extended_code: str | None = None
    hint: str | None = None
    status: int | None = None
    statement: int | None = None

    @property
    def sqlite_errorname(self) -> str | None:
        """As sqlite3's attribute: the SQLite (extended) result code name, if any."""
        name = self.extended_code or self.code
        return name if name and name.startswith("SQLITE_") else None


class InterfaceError(Error):
    """Misuse of the interface (e.g. unsupported parameter types)."""


class DatabaseError(Error):
    """Errors reported by the database."""


class DataError(DatabaseError):
    """A value is out of range or too big."""


class OperationalError(DatabaseError):
    """Not the program's fault: unreachable server, busy, timeout, denied, expired."""


class IntegrityError(DatabaseError):
    """A constraint failed (SQLITE_CONSTRAINT)."""


class InternalError(DatabaseError):
    """The server hit an internal fault."""


class ProgrammingError(DatabaseError):
    """Bad SQL use: wrong parameters, several statements, closed cursor or connection."""


class NotSupportedError(DatabaseError):
    """The operation is not supported."""


# Same mapping as sqlite3's for SQLite codes; Shoal's own codes by family.
_SQLITE_ERRORS: dict[str, type[Error]] = {
    "SQLITE_CONSTRAINT": IntegrityError,
    "SQLITE_MISMATCH": IntegrityError,
    "SQLITE_TOOBIG": DataError,
    "SQLITE_RANGE": InterfaceError,
    "SQLITE_MISUSE": InterfaceError,
    "SQLITE_INTERNAL": InternalError,
    "SQLITE_NOTFOUND": InternalError,
    "SQLITE_CORRUPT": DatabaseError,
    "SQLITE_NOTADB": DatabaseError,
}
_SHOAL_ERRORS: dict[str, type[Error]] = {
    "INVALID_REQUEST": ProgrammingError,
    "INVALID_ARGUMENT": ProgrammingError,
    "MULTIPLE_STATEMENTS": ProgrammingError,
    "TOO_MANY_STATEMENTS": ProgrammingError,
    "INVALID_JSON": InterfaceError,
    "RESPONSE_TOO_LARGE": DataError,
    "PAYLOAD_TOO_LARGE": DataError,
    "INTERNAL": InternalError,
}


def _translate(exc: _client.ClientError) -> Error:
    """The PEP 249 exception for a client error, keeping its code and details."""
    code = exc.code
    if code.startswith("SQLITE_"):
        kind = _SQLITE_ERRORS.get(code, OperationalError)
    elif code in _SHOAL_ERRORS:
        kind = _SHOAL_ERRORS[code]
    elif isinstance(exc, _client.ServerError):
        kind = InternalError
    else:
        kind = OperationalError
    err = kind(exc.message)
    err.code, err.extended_code, err.hint = code, exc.extended_code, exc.hint
    err.status, err.statement = exc.status, exc.statement
    err.__cause__ = exc
    return err


def _adapt(value: Any) -> Any:
    """sqlite3's former default adapters: dates and datetimes bind as ISO 8601 text."""
    if isinstance(value, _dt.datetime):
        return value.isoformat(" ")
    if isinstance(value, _dt.date):
        return value.isoformat()
    return value


def _params(parameters: Any) -> list[Any] | dict[str, Any] | None:
    """Sequence or mapping parameters, adapted; anything else is a ProgrammingError."""
    if parameters is None:
        return None
    if isinstance(parameters, Mapping):
        named = {str(k): _adapt(v) for k, v in parameters.items()}
        return named or None
    if isinstance(parameters, str | bytes | bytearray) or not isinstance(parameters, Iterable):
        raise ProgrammingError("parameters are of unsupported type: "
                               "pass a sequence (qmark) or a mapping (named)")
    return [_adapt(v) for v in parameters] or None


class Row(Sequence[Any]):
    """A row_factory like sqlite3.Row: index by position or (case-insensitive) column name."""

    __slots__ = ("_columns", "_values")

    def __init__(self, cursor: Cursor, values: tuple[Any, ...]):
        self._columns = tuple(d[0] for d in cursor.description or ())
        self._values = tuple(values)

    def keys(self) -> list[str]:
        return list(self._columns)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            folded = key.casefold()
            for i, name in enumerate(self._columns):
                if name.casefold() == folded:
                    return self._values[i]
            raise IndexError(f"no column named {key!r}")
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Row):
            return NotImplemented
        return self._columns == other._columns and self._values == other._values

    def __hash__(self) -> int:
        return hash((self._columns, self._values))

    def __repr__(self) -> str:
        return f"<Row {dict(zip(self._columns, self._values, strict=False))!r}>"


RowFactory = Callable[["Cursor", tuple[Any, ...]], Any]


class Connection:
    """A DB-API connection: one HTTP client, and at most one open server transaction."""

    Error = Error
    Warning = Warning
    InterfaceError = InterfaceError
    DatabaseError = DatabaseError
    DataError = DataError
    OperationalError = OperationalError
    IntegrityError = IntegrityError
    InternalError = InternalError
    ProgrammingError = ProgrammingError
    NotSupportedError = NotSupportedError

    def __init__(self, http: _client.Client, *, isolation_level: str | None = "",
                 autocommit: bool | int = LEGACY_TRANSACTION_CONTROL):
        self._client = http
        self._tx: _client.Transaction | None = None
        self._closed = False
        self._isolation_level = self._check_level(isolation_level)
        self._autocommit = self._check_autocommit(autocommit)
        self.row_factory: RowFactory | None = None
        self.total_changes = 0

    # -- transaction control (as sqlite3) ---------------------------------------------------
    @staticmethod
    def _check_level(level: str | None) -> str | None:
        if level is not None and level.upper() not in _ISOLATION_LEVELS:
            raise ValueError("isolation_level must be None, '', 'DEFERRED', 'IMMEDIATE' "
                             "or 'EXCLUSIVE'")
        return level

    @staticmethod
    def _check_autocommit(value: bool | int) -> bool | int:
        if value not in (True, False) and value != LEGACY_TRANSACTION_CONTROL:
            raise ValueError("autocommit must be True, False or LEGACY_TRANSACTION_CONTROL")
        return value if value == LEGACY_TRANSACTION_CONTROL else bool(value)

    @property
    def isolation_level(self) -> str | None:
        return self._isolation_level

    @isolation_level.setter
    def isolation_level(self, level: str | None) -> None:
        self._isolation_level = self._check_level(level)
        if level is None and self._autocommit == LEGACY_TRANSACTION_CONTROL:
            self.commit()

    @property
    def autocommit(self) -> bool | int:
        return self._autocommit

    @autocommit.setter
    def autocommit(self, value: bool | int) -> None:
        self._autocommit = self._check_autocommit(value)
        if self._autocommit is True:
            self.commit()

    @property
    def in_transaction(self) -> bool:
        return self._tx is not None

    @property
    def client(self) -> _client.Client:
        """The underlying :class:`shoal.client.Client`, for calls beyond DB-API."""
        return self._client

    def _opens_transaction(self, keyword: str) -> bool:
        if self._tx is not None or self._autocommit is True:
            return False
        if self._autocommit is False:
            return True
        return self._isolation_level is not None and keyword in _DML

    def _begin(self) -> None:
        tx = self._client.transaction()
        try:
            tx.begin()
        except _client.ClientError as exc:
            raise _translate(exc) from exc
        self._tx = tx

    def _end(self, commit: bool) -> None:
        tx, self._tx = self._tx, None
        if tx is None:
            return
        try:
            if commit:
                tx.commit()
            else:
                tx.rollback()
        except _client.ClientError as exc:
            raise _translate(exc) from exc

    def commit(self) -> None:
        """Commit the open transaction, if any."""
        self._check_open()
        self._end(True)

    def rollback(self) -> None:
        """Roll back the open transaction, if any."""
        self._check_open()
        self._end(False)

    # -- running statements -----------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed database.")

    def _control(self, sql: str) -> bool:
        """Run BEGIN/COMMIT/END/ROLLBACK through the API; False if ``sql`` is not one."""
        control = _client.transaction_control(sql)
        if control == "BEGIN":
            if self._tx is not None:
                raise OperationalError("cannot start a transaction within a transaction")
            self._begin()
        elif control is not None:
            if self._tx is None:
                verb = control.lower()
                raise OperationalError(f"cannot {verb} - no transaction is active")
            self._end(control == "COMMIT")
        return control is not None

    def _run(self, sql: str, params: list[Any]) -> list[_client.Result] | None:
        """Run ``sql`` once per parameter set, in the open transaction or on its own.

        Returns None for a transaction-control statement, which has no result.
        """
        self._check_open()
        if not isinstance(sql, str):
            raise ProgrammingError("operation must be a str")
        if self._control(sql):
            return None
        if not params:
            return []
        if self._opens_transaction(_client.first_keyword(sql)):
            self._begin()
        statements = [(sql, _params(p)) for p in params]
        results: list[_client.Result] = []
        try:
            for start in range(0, len(statements), BATCH_SIZE):
                chunk = statements[start:start + BATCH_SIZE]
                if self._tx is not None:
                    results += self._tx.batch(chunk)
                else:
                    results += self._client.batch(chunk)
        except _client.ClientError as exc:
            if self._tx is not None and self._tx.done:  # expired on the server
                self._tx = None
            raise _translate(exc) from exc
        except TypeError as exc:  # a parameter of a type SQL cannot hold
            raise ProgrammingError(f"Error binding parameter: {exc}") from exc
        self.total_changes += sum(r.rows_affected for r in results)
        return results

    def cursor(self, factory: Callable[[Connection], Cursor] | None = None) -> Cursor:
        self._check_open()
        return (factory or Cursor)(self)

    def execute(self, sql: str, parameters: Any = ()) -> Cursor:
        """Shortcut (as sqlite3): a new cursor's execute."""
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any]) -> Cursor:
        return self.cursor().executemany(sql, seq_of_parameters)

    def executescript(self, script: str) -> Cursor:
        return self.cursor().executescript(script)

    def close(self) -> None:
        """Roll back an open transaction (as sqlite3 does) and release the HTTP pool."""
        if self._closed:
            return
        try:
            # The server drops an abandoned transaction after its timeout anyway.
            with contextlib.suppress(Error):
                self._end(False)
        finally:
            self._closed = True
            self._client.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """As sqlite3: commit on success, roll back on an exception; the connection stays open."""
        if exc is None:
            self.commit()
        elif not self._closed:
            try:
                self.rollback()
            except Error as failed:
                exc.add_note(f"rollback also failed: {failed}")


class Cursor:
    """Results are fetched whole with each execute; fetch* pages through them locally."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.arraysize = 1
        self.description: tuple[tuple[str, None, None, None, None, None, None], ...] | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.row_factory: RowFactory | None = connection.row_factory
        self._rows: list[tuple[Any, ...]] = []
        self._pos = 0
        self._closed = False

    def _check(self) -> Connection:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed cursor.")
        self.connection._check_open()
        return self.connection

    def _reset(self) -> None:
        self.description = None
        self.rowcount = -1
        self._rows, self._pos = [], 0

    def execute(self, operation: str, parameters: Any = ()) -> Cursor:
        """Run one statement; qmark parameters as a sequence, named ones as a mapping."""
        conn = self._check()
        self._reset()
        results = conn._run(operation, [parameters if parameters is not None else ()])
        if not results:
            return self
        result = results[0]
        if result.columns:
            self.description = tuple((name, None, None, None, None, None, None)
                                     for name in result.columns)
            self._rows = result.rows
        else:
            self.rowcount = result.rows_affected
        if _client.first_keyword(operation) in ("INSERT", "REPLACE"):
            self.lastrowid = result.last_insert_rowid
        return self

    def executemany(self, operation: str, seq_of_parameters: Iterable[Any]) -> Cursor:
        """Run a statement once per parameter set, sent in batches rather than one by one."""
        conn = self._check()
        self._reset()
        if _client.first_keyword(operation) == "SELECT":
            raise ProgrammingError("executemany() can only execute DML statements.")
        params = list(seq_of_parameters)
        results = conn._run(operation, params)
        if results:
            self.rowcount = sum(r.rows_affected for r in results)
            if _client.first_keyword(operation) in ("INSERT", "REPLACE"):
                self.lastrowid = results[-1].last_insert_rowid
        elif results is not None:
            self.rowcount = 0
        return self

    def executescript(self, script: str) -> Cursor:
        """Commit any open transaction, then run each statement of the script in turn."""
        conn = self._check()
        if not isinstance(script, str):
            raise ValueError("script argument must be unicode.")
        conn.commit()
        self._reset()
        for statement in _client.split_sql(script):
            conn._run(statement, [()])
        return self

    # -- fetching ---------------------------------------------------------------------------
    def _make(self, row: tuple[Any, ...]) -> Any:
        return row if self.row_factory is None else self.row_factory(self, row)

    def fetchone(self) -> Any:
        self._check()
        if self._pos >= len(self._rows):
            return None
        row = self._rows[self._pos]
        self._pos += 1
        return self._make(row)

    def fetchmany(self, size: int | None = None) -> list[Any]:
        self._check()
        n = self.arraysize if size is None else size
        rows = self._rows[self._pos:self._pos + max(n, 0)]
        self._pos += len(rows)
        return [self._make(r) for r in rows]

    def fetchall(self) -> list[Any]:
        self._check()
        rows = self._rows[self._pos:]
        self._pos = len(self._rows)
        return [self._make(r) for r in rows]

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def close(self) -> None:
        self._closed = True
        self._rows = []

    def setinputsizes(self, sizes: Any) -> None:
        """Accepted and ignored (PEP 249 allows it)."""

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        """Accepted and ignored (PEP 249 allows it)."""


def connect(url: str | None = None, token: str | None = None, database: str | None = None, *,
            branch: str | None = None, isolation_level: str | None = "",
            autocommit: bool | int = LEGACY_TRANSACTION_CONTROL,
            timeout: float = _client.DEFAULT_TIMEOUT) -> Connection:
    """Open a connection; see the module docstring for URL forms and transaction control.

    No request is sent until the first statement (the API is stateless), but a missing
    database name is refused here.
    """
    http = _client.Client(url, token, database=database, branch=branch, timeout=timeout)
    if not http.default_database:
        http.close()
        raise InterfaceError("no database: pass database=NAME or a URL ending in /db/NAME")
    return Connection(http, isolation_level=isolation_level, autocommit=autocommit)
