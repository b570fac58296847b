"""In-process SQLite with apsw: the ceiling for reads and the raw baseline for writes.

No server, no protocol: the same query on the same rows, called from Python threads
in the benchmark's own process. `point_reader` and `autocommit_inserter` return
worker factories for `bench.measure.run_threads` (each thread opens its own
connection); `point_table` and `insert_table` create the files they use.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Callable
from pathlib import Path

import apsw

from bench.harness import POINT_READ, POINT_ROWS, POINT_SCHEMA

INSERT = "INSERT INTO w(k, v) VALUES (?, ?)"
Worker = Callable[[int], Callable[[], object]]


def _wal(path: Path) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    return conn


def point_table(path: Path, rows: int) -> Path:
    """A SQLite file with Shoal's point-read table t (ids 1..rows), in WAL mode."""
    conn = _wal(path)
    try:
        with conn:
            conn.execute(POINT_SCHEMA)
            conn.execute(POINT_ROWS, (rows,))
    finally:
        conn.close()
    return path


def insert_table(path: Path) -> Path:
    """A SQLite file (WAL) with the insert table w(k PRIMARY KEY, v)."""
    conn = _wal(path)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS w(k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    finally:
        conn.close()
    return path


def point_reader(path: Path, rows: int) -> Worker:
    """Each thread: a read-only connection running the point read with a random id."""
    def make(thread: int) -> Callable[[], object]:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        pick = random.Random(thread).randint
        return lambda: conn.execute(POINT_READ, (pick(1, rows),)).fetchall()
    return make


def autocommit_inserter(path: Path) -> Worker:
    """Each thread: its own connection inserting one row per transaction (autocommit),
    durably (synchronous=FULL: an fsync per commit), waiting up to 30 s for the lock."""
    def make(thread: int) -> Callable[[], object]:
        conn = apsw.Connection(str(path))
        conn.setbusytimeout(30_000)
        conn.execute("PRAGMA synchronous=FULL")
        prefix = f"{uuid.uuid4().hex[:8]}-{thread}-"
        counter = itertools.count()
        return lambda: conn.execute(INSERT, (prefix + str(next(counter)), "payload"))
    return make
