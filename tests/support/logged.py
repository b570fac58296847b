"""A SQLite database captured the way the engine will capture it, for the log's tests.

apsw in WAL mode, auto-checkpoint off, no checkpoint on close; a WAL hook records
the frame count; after every commit the new frames are captured as the next txid.
``image()`` gives the oracle: the database file SQLite itself produces for the
current commit (the files copied aside, checkpointed by the stdlib sqlite3).
``workload()`` runs a mixed workload on one, keeping the oracle of every commit.
"""

from __future__ import annotations

import io
import random
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import apsw

from shoal.log import layout
from shoal.log.capture import Capture
from shoal.log.segment import Commit, encode_segment
from shoal.log.snapshot import encode_snapshot
from shoal.storage.base import ObjectStore


class LoggedDatabase:
    def __init__(self, path: Path, *, page_size: int = 4096,
                 clock: Callable[[], float] | None = None, auto_vacuum: bool = False,
                 txid: int | None = None, start_time: float = 1_000_000.0,
                 verify: bool = True):
        """A new database, or (``txid`` given) an existing file at that txid, e.g. a
        branch materialised by restore."""
        self.path = path
        existing = txid is not None
        self.conn = apsw.Connection(str(path))
        self.conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        if not existing:
            self.conn.execute(f"PRAGMA page_size={page_size}")
        if auto_vacuum and not existing:
            self.conn.execute("PRAGMA auto_vacuum=FULL")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA wal_autocheckpoint=0")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.frames = 0
        self.conn.set_wal_hook(self._hook)
        if not existing:
            self.conn.execute("CREATE TABLE _state(k INTEGER PRIMARY KEY, txid INTEGER NOT NULL);"
                              "INSERT INTO _state VALUES (0, 0)")
        self.checkpoint()  # the file now holds the start txid; the log continues after it
        self.txid = txid or 0
        self.time = start_time
        self.capture = Capture(f"{path}-wal", clock=clock or self._tick, verify=verify)
        self.commits: list[Commit] = []

    def _tick(self) -> float:
        self.time += 0.5
        return self.time

    def _hook(self, conn: apsw.Connection, name: str, frames: int) -> int:
        self.frames = frames
        return apsw.SQLITE_OK

    def write(self, *statements: str | tuple[str, Any]) -> Commit:
        """One transaction: the statements plus the txid bump; returns the captured commit."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in statements:
                if isinstance(stmt, tuple):
                    self.conn.execute(stmt[0], stmt[1])
                else:
                    self.conn.execute(stmt)
            self.conn.execute("UPDATE _state SET txid = txid + 1")
            self.conn.execute("COMMIT")
        except BaseException:
            if not self.conn.get_autocommit():
                self.conn.execute("ROLLBACK")
            raise
        return self._captured()

    def vacuum(self) -> Commit:
        """VACUUM is its own transaction (the database may shrink)."""
        self.conn.execute("VACUUM")
        return self._captured()

    def _captured(self) -> Commit:
        self.txid += 1
        commit = self.capture.commit(self.txid, max_frame=self.frames)
        self.commits.append(commit)
        return commit

    def checkpoint(self) -> None:
        """Backfill and truncate the WAL (the engine does this once frames are durable)."""
        row = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert row is not None and row[0] == 0  # not busy: every frame backfilled

    def image(self) -> bytes:
        """The database file SQLite produces for the current state (the oracle)."""
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "copy.db"
            shutil.copyfile(self.path, copy)
            wal = Path(f"{self.path}-wal")
            if wal.exists():
                shutil.copyfile(wal, f"{copy}-wal")
            con = sqlite3.connect(copy)
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.close()
            return copy.read_bytes()

    def close(self) -> None:
        self.conn.close()


def dump(path: Path) -> tuple[list[str], str]:
    """(logical SQL dump, integrity_check) of a database file, read with the stdlib."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(con.iterdump()), con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def dump_image(image: bytes) -> tuple[list[str], str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.db"
        path.write_bytes(image)
        return dump(path)


def put_segments(store: ObjectStore, db: str, timeline: str, commits: list[Commit],
                 sizes: Iterable[int]) -> list[str]:
    """Upload commits as consecutive segments of the given sizes (the rest as one)."""
    keys = []
    i = 0
    for size in [*sizes, len(commits)]:
        group = commits[i:i + max(1, size)]
        if not group:
            break
        key = layout.segment_key(db, timeline, group[0].txid, group[-1].txid, group[-1].time)
        store.put(key, encode_segment(group))
        keys.append(key)
        i += len(group)
    return keys


def put_snapshot(store: ObjectStore, db: str, timeline: str, image: bytes, txid: int,
                 time: float) -> str:
    key = layout.snapshot_key(db, timeline, txid, time)
    store.put(key, encode_snapshot(io.BytesIO(image), txid, time))
    return key


def workload(logged: LoggedDatabase, rng: random.Random, steps: int) -> list[bytes]:
    """Run a mixed workload; return the oracle image after each commit (index = txid)."""
    images = [logged.image()]
    logged.write("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB)",
                 "CREATE INDEX t_v ON t(v)")
    images.append(logged.image())
    for step in range(steps):
        kind = rng.choice(["insert", "insert", "update", "delete", "blob", "ddl", "vacuum"])
        if kind == "insert":
            logged.write(*[("INSERT INTO t(v) VALUES (?)", (f"v{rng.random()}",))
                           for _ in range(rng.randint(1, 30))])
        elif kind == "update":
            logged.write(("UPDATE t SET v = v || ? WHERE id % 3 = ?", ("u", rng.randint(0, 2))))
        elif kind == "delete":
            logged.write(("DELETE FROM t WHERE id % 4 = ?", (rng.randint(0, 3),)))
        elif kind == "blob":
            logged.write(("INSERT INTO t(v, b) VALUES ('blob', randomblob(?))",
                          (rng.randint(1, 20000),)))
        elif kind == "ddl":
            logged.write(f"CREATE TABLE IF NOT EXISTS x{step % 3}(a)",
                         f"DROP TABLE IF EXISTS x{(step + 1) % 3}")
        else:
            logged.vacuum()
        images.append(logged.image())
    logged.write("INSERT INTO t(v, b) VALUES ('big', randomblob(200000))")  # grow, then shrink
    images.append(logged.image())
    logged.write("DELETE FROM t WHERE b IS NOT NULL")
    images.append(logged.image())
    logged.vacuum()
    images.append(logged.image())
    return images
