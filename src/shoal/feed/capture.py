"""Capture: one write transaction's row changes, recorded by SQLite's session extension.

:meth:`ChangeCapture.start` runs right after BEGIN and attaches an ``apsw.Session`` to
every table of ``main``; :meth:`ChangeCapture.finish` runs just before COMMIT, after the
last statement, and turns the session's changeset into :class:`~shoal.feed.format.Change`
values with whole rows. The session keeps one entry per row (by primary key) holding the
row as it was before the transaction first touched it, and builds the changeset by
comparing that with the row as it is now, so what comes out is the transaction's *net*
change of each row: a statement that failed (a UNIQUE violation midway through a
multi-row INSERT), a ``ROLLBACK TO`` a savepoint, an insert later deleted leave no trace;
an insert later updated is one insert of the final row. Rows written by triggers and by
foreign key actions (ON DELETE CASCADE) are rows like any other.

What is captured, and how:

- every table of ``main`` except those ``skip(name)`` names (Shoal's own), ``sqlite_*``
  (sqlite_sequence, sqlite_stat1) and shadow tables (the storage of FTS and R*Tree
  virtual tables: index blobs, not rows of the user's); virtual tables have no rows of
  their own to capture. Tables created inside the transaction are captured, but not the
  rows ``CREATE TABLE ... AS SELECT`` writes: SQLite reports no row changes for those.
- ``columns`` are the table's columns at commit in table order, as ``PRAGMA
  table_xinfo`` lists them, without generated columns (VIRTUAL or STORED): the changeset
  carries no value for those, so the rows do not either.
- ``key`` is the PRIMARY KEY's values in declaration order; for a rowid table without a
  declared primary key it is ``(rowid,)`` (the session is set to record those tables by
  rowid), and the rowid is not one of the columns. An INTEGER PRIMARY KEY is a column.
- an update's changeset entry holds the changed columns only. The transaction is still
  open, so the row as it is now is the row as committed: ``new`` is read back by key, one
  prepared SELECT per table run over all its updated keys (``executemany``), and ``old``
  is ``new`` with the changed columns' old values put back.
- the order is the changeset's: by table in the order they were first changed, then the
  session's (deterministic) order of rows within a table.

Schema changes inside the transaction. The session fails as a whole (SQLITE_SCHEMA, for
every table, and it stays failed) if a table it holds rows of is no longer there, or has
lost columns or changed its primary key, by the time of the changeset. So the capture
notes each table's definition when its first row changes; at finish, if the schema
version moved since then, tables that are gone, or no longer fit, are stood in for by
empty tables of the noted shape inside a savepoint, rolled back right after the
changeset is built:

- a table that no longer exists at commit (dropped, or renamed away: the copy table of a
  12-step ALTER TABLE) contributes no changes: the feed reports rows of tables as they
  are at commit, and a dropped table's rows are not reported as deletes either.
- a table that exists at commit but no longer fits (a column dropped after its rows were
  changed, its primary key changed) contributes no changes, and its name is in
  :attr:`ChangeCapture.lost`; so is every table changed, if even the stand-ins fail
  (a table grown by ADD COLUMN after its first change, then dropped). Adding a column
  is fine: old rows read the column's default. A table dropped and created again alike
  is read as it is at commit, so its rows' changes are told against the new table's.
- a rowid table without a declared key whose rowid has no name left (columns named
  rowid, _rowid_ and oid) cannot have its updated rows read back: its updates are left
  out and its name is in ``lost``. (SQLite's session itself reads such a rowid wrong.)

Cost: capturing a commit of a one-row insert adds about 40 us to it on this machine (2
vCPU; a WAL file database in /dev/shm; 38-48 us over several runs, the commit itself
taking 7-17 us). Most of it is SQLite's session: about 20 us for a bare apsw.Session,
mostly the SQL it prepares again at every changeset (PRAGMA table_xinfo, a SELECT per
table, SAVEPOINT changeset). The capture's own part is the Python table filter and a
PRAGMA schema_version at the first change of each table, one more PRAGMA and the
building of the Changes at finish. An update of 100,000 rows takes about a second in
finish() (one prepared SELECT run for every key).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import Any

import apsw

from shoal.feed.format import Change
from shoal.wire import SQLValue

# The capture's cached SQL ends in a per-process secret comment: prepared under whatever
# authorizer is on at the time (finish() runs with none), it stays in apsw's statement
# cache under a text no user can send (as the engine tags its own SQL).
_TAG = f" /*{secrets.token_hex(8)}*/"
_VERSION = "PRAGMA main.schema_version" + _TAG
_KIND = "SELECT type FROM pragma_table_list(?) WHERE schema = 'main'" + _TAG
_XINFO = "SELECT name, pk, hidden FROM pragma_table_xinfo(?, 'main')" + _TAG
_ROWID_NAMES = ("rowid", "_rowid_", "oid")  # SQLite's names for the rowid, unless a column's
_CAPTURED_KINDS = ("table", "shadow")  # PRAGMA table_list types with rows of their own
_SAVEPOINT = "shoal_feed_capture"
_NO_CHANGE = apsw.no_change


def _quote(name: str) -> str:
    """An SQL identifier, quoted whatever it holds (spaces, quotes, keywords)."""
    return '"' + name.replace('"', '""') + '"'


def _trust(cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
    """The capture's cursors' exec tracer: its SQL is not the connection's user's, and
    the connection's own tracer (which may vet and count a user's statements) must not
    see it."""
    return True


@dataclass(frozen=True, slots=True)
class _Table:
    """A table as the session records it, from ``PRAGMA table_xinfo``.

    A changeset record of it, and a row ``read`` returns, are laid out alike: the rowid
    first if the table has no declared primary key (``offset`` 1), then ``columns``.
    """

    kind: str  # PRAGMA table_list's type: "table", or "shadow" (a virtual table's storage)
    columns: tuple[str, ...]  # not generated, in table order
    ordinals: tuple[int, ...]  # each column's place in the PRIMARY KEY (1..n), 0: none
    key: tuple[int, ...]  # record indexes of the key, in PRIMARY KEY order
    offset: int
    read: str | None  # a whole record by key; None: every name of the rowid is a column's
    key_of: Callable[[Sequence[Any]], tuple[Any, ...]]  # a record's key

    def fits(self, then: _Table) -> bool:
        """Whether the session, holding rows recorded as ``then``, can read this table:
        the same key, and no column gone (columns added after are read as defaults)."""
        n = len(then.ordinals)
        return (self.offset == then.offset and len(self.ordinals) >= n
                and self.ordinals[:n] == then.ordinals and not any(self.ordinals[n:]))

    def shell(self, name: str) -> str:
        """CREATE TABLE for an empty stand-in of this shape (see the module docstring)."""
        cols = [f"c{i}" for i in range(len(self.columns))]
        pk = [cols[i] for _, i in sorted((o, i) for i, o in enumerate(self.ordinals) if o)]
        body = ", ".join(cols) + (f", PRIMARY KEY ({', '.join(pk)})" if pk else "")
        return f"CREATE TABLE main.{_quote(name)} ({body})"


def _load(cursor: apsw.Cursor, name: str) -> _Table | None:
    """The table ``name`` of ``main`` (None: no such table, or a view or virtual table)."""
    kind = cursor.execute(_KIND, (name,)).get
    if kind not in _CAPTURED_KINDS:
        return None
    columns, ordinals = [], []
    for column, pk, hidden in cursor.execute(_XINFO, (name,)):
        if not hidden:  # generated (2, 3); 1 is a virtual table's hidden column
            columns.append(column)
            ordinals.append(pk)
    names = [_quote(c) for c in columns]
    declared = sorted((o, i) for i, o in enumerate(ordinals) if o)
    if declared:
        key, offset = tuple(i for _, i in declared), 0
        picked, where = names, [names[i] for i in key]
    else:
        key, offset = (0,), 1
        taken = {c.lower() for c in columns}
        rowid = next((r for r in _ROWID_NAMES if r not in taken), None)
        picked, where = ([rowid, *names], [rowid]) if rowid else ([], [])
    key_of: Callable[[Sequence[Any]], tuple[Any, ...]]
    if len(key) == 1:
        i = key[0]
        key_of = lambda record: (record[i],)  # noqa: E731
    else:
        key_of = itemgetter(*key)  # a tuple for two or more
    read = None
    if where:
        read = (f"SELECT {', '.join(picked)} FROM main.{_quote(name)} "
                f"WHERE {' AND '.join(f'{w} = ?' for w in where)}{_TAG}")
    return _Table(str(kind), tuple(columns), tuple(ordinals), key, offset, read, key_of)


class ChangeCapture:
    """One write transaction's row changes on a connection (see the module docstring).

    Reused transaction after transaction: start(), then finish() or abort().

    The capture runs SQL of its own on the connection: reads of ``PRAGMA schema_version``
    and ``table_xinfo`` when a table's first row changes (inside the statement changing
    it), and at finish() the whole-row reads and the stand-ins' DDL, while SQLite's
    session itself wraps the changeset in ``SAVEPOINT changeset``. Its cursors carry
    their own exec tracer, so a tracer of the connection's never sees that SQL; the
    connection's authorizer does, and must let finish() through whole (Shoal's Guard:
    ``Connection.unguarded()``), or finish() raises apsw.AuthError. Setting the
    authorizer aside here instead would cost every commit: SQLite expires every prepared
    statement of a connection whose authorizer is set. The SQL that apsw caches is
    tagged (``_TAG``); the stand-ins' is never cached.
    """

    def __init__(self, conn: apsw.Connection, skip: Callable[[str], bool]) -> None:
        self.conn = conn
        self.skip = skip
        # tables the last finish() left out although they exist at commit (see above)
        self.lost: frozenset[str] = frozenset()
        self._session: apsw.Session | None = None
        self._cursor: apsw.Cursor | None = None
        # per table changed in this transaction: the schema version and its definition
        # when its first row changed (None: could not be read)
        self._touched: dict[str, tuple[int, _Table | None]] = {}
        self._refused: set[str] = set()  # tables not captured (asked again at every row)
        self._tables: dict[str, _Table | None] = {}  # definitions at schema _version
        self._version = -1
        # tables whose changes keep no old row (the database's feed settings; set between
        # transactions by the engine, read at finish)
        self.without_old: frozenset[str] = frozenset()

    # -- the transaction -------------------------------------------------------------------
    def start(self) -> None:
        """Right after BEGIN: record every row change from here on (a session left by a
        transaction that neither finished nor aborted is dropped first)."""
        self.abort()
        self.lost = frozenset()
        if self._cursor is None:
            self._cursor = self.conn.cursor()
            self._cursor.exec_trace = _trust
        session = apsw.Session(self.conn, "main")
        try:
            session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)  # before attach
            session.table_filter(self._want)
            session.attach()
        except BaseException:
            session.close()
            raise
        self._session = session

    def finish(self) -> list[Change]:
        """Just before COMMIT, after the last statement: the transaction's net row
        changes with whole rows ([] if none). Ends the capture."""
        session = self._session
        if session is None:
            raise RuntimeError("ChangeCapture.finish() without start()")
        self._session = None
        try:
            if not self._touched:  # no captured table had a row change
                return []
            version = self._schema_version()
            gone: set[str] = set()
            lost: set[str] = set()
            try:
                for then, _ in self._touched.values():
                    if then != version:  # the schema changed since: see the docstring
                        data = self._changeset_after_ddl(session, version, gone, lost)
                        break
                else:
                    data = session.changeset()
            except apsw.AuthError:
                raise  # an authorizer in the way (see the class docstring), not the session
            except apsw.Error:  # the session failed regardless: nothing can be told
                gone = {name for name in self._touched if self._table(name, version) is None}
                lost = set(self._touched) - gone
                data = b""
            changes = self._changes(data, version, gone, lost) if data else []
            self.lost = frozenset(lost)
            if self.without_old:
                changes = [replace(c, old=None) if c.table in self.without_old else c
                           for c in changes]
            return changes
        finally:
            session.close()
            self._touched.clear()
            self._refused.clear()

    def close(self) -> None:
        """The connection is closing: drop the session and the capture's cursor."""
        self.abort()
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None

    def abort(self) -> None:
        """The transaction rolls back: drop what was recorded. Safe at any time."""
        session, self._session = self._session, None
        self._touched.clear()
        self._refused.clear()
        if session is not None:
            session.close()

    # -- recording ---------------------------------------------------------------------------
    def _want(self, name: str) -> bool:
        """The session's table filter, asked at a table's first row change (and at every
        row of a table it refused). An exception here would make apsw refuse the table
        without a word, so reading the table's definition may fail but never raises."""
        if name in self._refused:
            return False
        if name[:7].lower() == "sqlite_" or self.skip(name):
            self._refused.add(name)
            return False
        try:
            version = self._schema_version()
            table = self._table(name, version)
        except Exception:  # an interrupt, say: finish() then knows nothing of its shape
            version, table = -1, None
        if table is not None and table.kind == "shadow":
            self._refused.add(name)
            return False
        self._touched.setdefault(name, (version, table))
        return True

    def _schema_version(self) -> int:
        assert self._cursor is not None
        return int(self._cursor.execute(_VERSION).get)

    def _table(self, name: str, version: int) -> _Table | None:
        """The definition of ``name`` at schema ``version`` (the current one), cached."""
        if version != self._version:
            self._tables.clear()
            self._version = version
        try:
            return self._tables[name]
        except KeyError:
            assert self._cursor is not None
            found = self._tables[name] = _load(self._cursor, name)
            return found

    # -- the changeset -----------------------------------------------------------------------
    def _changeset_after_ddl(self, session: apsw.Session, version: int, gone: set[str],
                             lost: set[str]) -> bytes:
        """The changeset when the schema changed after some table's first row change:
        tables that are gone (into ``gone``) or no longer fit (into ``lost``) get empty
        stand-ins of their noted shape for as long as it is being built."""
        stand_ins: list[tuple[str, _Table, bool]] = []  # name, shape, the table exists
        for name, (then, noted) in self._touched.items():
            now = self._table(name, version)
            if then == version and now is not None:
                continue
            if noted is None:
                raise apsw.SchemaChangeError(f"the definition of {name} was not read")
            if now is None:
                gone.add(name)
                stand_ins.append((name, noted, False))
            elif not now.fits(noted):
                lost.add(name)
                stand_ins.append((name, noted, True))
        if not stand_ins:
            return session.changeset()
        cursor = self._cursor
        assert cursor is not None
        cursor.execute(f"SAVEPOINT {_SAVEPOINT}", can_cache=False)
        try:
            for name, noted, exists in stand_ins:
                if exists:
                    aside = f"{name}_shoal_aside_{secrets.token_hex(6)}"
                    cursor.execute(f"ALTER TABLE main.{_quote(name)} RENAME TO "
                                   f"{_quote(aside)}", can_cache=False)
                cursor.execute(noted.shell(name), can_cache=False)
            return session.changeset()
        finally:
            cursor.execute(f"ROLLBACK TO {_SAVEPOINT}; RELEASE {_SAVEPOINT}",
                           can_cache=False)

    def _changes(self, data: bytes, version: int, gone: set[str],
                 lost: set[str]) -> list[Change]:
        """The changeset as Changes, updates' whole rows read back (into ``lost``: tables
        whose changes cannot be told)."""
        out: list[Change | None] = []
        updates: dict[str, list[tuple[int, tuple[Any, ...]]]] = {}  # (place, old record)
        name = ""
        table: _Table | None = None
        columns: tuple[str, ...] = ()
        key_of: Callable[[Sequence[Any]], tuple[Any, ...]] = tuple
        offset = 0
        row: Any  # a record: SQLite values, and apsw.no_change in an update's
        for change in apsw.Changeset.iter(data):
            if change.name != name:
                name = change.name
                table = None if name in gone or name in lost else self._table(name, version)
                if table is not None and change.column_count != table.offset + len(
                        table.columns):
                    table = None  # not the table the session recorded: never seen
                if table is None:
                    if name not in gone:
                        lost.add(name)
                    continue
                columns, key_of, offset = table.columns, table.key_of, table.offset
            elif table is None:
                continue
            op = change.op
            if op == "INSERT":
                row = change.new
                out.append(Change(name, "insert", columns, key_of(row), row[offset:], None))
            elif op == "DELETE":
                row = change.old
                out.append(Change(name, "delete", columns, key_of(row), None, row[offset:]))
            else:  # UPDATE
                row = change.old
                updates.setdefault(name, []).append((len(out), row))
                out.append(None)
        if not updates:
            return out  # type: ignore[return-value]  # no None left to fill
        for name, found in updates.items():
            self._read_updates(name, found, version, out, lost)
        return [c for c in out if c is not None]

    def _read_updates(self, name: str, found: list[tuple[int, tuple[Any, ...]]],
                      version: int, out: list[Change | None], lost: set[str]) -> None:
        """Fill in ``out`` the updates of ``name``: whole rows, read back by key."""
        table = self._table(name, version)
        assert table is not None and self._cursor is not None
        if table.read is None:
            lost.add(name)
            return
        key_of = table.key_of
        keys = [key_of(old) for _, old in found]
        rows = self._cursor.executemany(table.read, keys).fetchall()
        if len(rows) != len(keys):  # every updated row is there: nothing ran since
            raise RuntimeError(f"{len(rows)} rows of {name} for {len(keys)} updated keys")
        offset = table.offset
        for (place, old), key, row in zip(found, keys, rows, strict=True):
            if key_of(row) != key:
                raise RuntimeError(f"a row of {name} read back under another key")
            new: tuple[SQLValue, ...] = row[offset:]
            before = tuple(n if o is _NO_CHANGE else o
                           for o, n in zip(old[offset:], new, strict=True))
            out[place] = Change(name, "update", table.columns, key, new, before)
