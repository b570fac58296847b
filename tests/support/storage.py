"""Helpers for the bottomless-storage tests: stores, nodes on them, acknowledged writes.

A writer thread inserts uniquely named rows into one branch until told to stop
or until the node dies, and records each row the node acknowledged with the
time of the acknowledgement; after a restart, every recorded row must be there
(or, with ``local`` durability, every row acknowledged before the last
``sync_interval``).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import httpx

from shoal.log import layout
from shoal.log.branch import get_branch
from shoal.log.timeline import covered, segments
from shoal.storage.base import ObjectStore
from tests.support.server import SSL_CONTEXT, ServerProcess

TABLE = "CREATE TABLE IF NOT EXISTS w(id TEXT PRIMARY KEY, n INTEGER, pad BLOB)"


def path(db: str, branch: str = "main", tail: str = "query") -> str:
    """The API path of a data endpoint: plain for main, under /branches/ otherwise."""
    base = f"/v1/databases/{db}" + ("" if branch == "main" else f"/branches/{branch}")
    return f"{base}/{tail}"


def iso(ts: float) -> str:
    """A time as the API takes it (ISO 8601, UTC)."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, (r.status_code, r.text)
    return r.json()


def run(http: httpx.Client, db: str, *statements: Any, branch: str = "main") -> Any:
    return ok(http.post(path(db, branch), json={"statements": list(statements)}))


def rows(http: httpx.Client, db: str, sql: str, branch: str = "main") -> list[Any]:
    out: list[Any] = run(http, db, sql, branch=branch)["results"][0]["rows"]
    return out


def ids(http: httpx.Client, db: str, branch: str = "main") -> set[str]:
    return {r[0] for r in rows(http, db, "SELECT id FROM w", branch)}


def checksum(http: httpx.Client, db: str, branch: str = "main") -> str:
    """A digest of the logical content of table t (the point-in-time oracle)."""
    found = rows(http, db, "SELECT * FROM t ORDER BY id", branch)
    return hashlib.sha256(json.dumps(found).encode()).hexdigest()


@dataclass
class Acked:
    """Rows a node acknowledged, per (database, branch), with when."""

    rows: dict[tuple[str, str], list[tuple[str, float]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ids(self, db: str, branch: str, before: float | None = None) -> set[str]:
        with self.lock:
            return {rid for rid, t in self.rows.get((db, branch), [])
                    if before is None or t < before}


class Running:
    """Threads started on entering the block, stopped (``stop``) and joined on leaving it."""

    threads: list[threading.Thread]
    stop: threading.Event

    def __enter__(self) -> Self:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


class Writers(Running):
    """One thread per (database, branch), inserting until stopped or the node is gone."""

    def __init__(self, node: ServerProcess, targets: list[tuple[str, str]], tag: str,
                 acked: Acked | None = None, pad: int = 100, warmup: int = 10):
        self.node = node
        self.targets = targets
        self.tag = tag
        self.acked = acked or Acked()
        self.pad = pad
        self.stop = threading.Event()
        self.ready = [threading.Event() for _ in targets]  # set after `warmup` acks each
        self.warmup = warmup
        self.threads = [threading.Thread(target=self._write, args=(i, db, br), daemon=True)
                        for i, (db, br) in enumerate(targets)]

    def wait_ready(self, timeout: float = 30.0) -> None:
        for event in self.ready:
            assert event.wait(timeout), "a writer got no acknowledgement"

    def _write(self, index: int, db: str, branch: str) -> None:
        token = self.node.admin_token
        with httpx.Client(base_url=self.node.url, timeout=30, verify=SSL_CONTEXT,
                          headers={"Authorization": f"Bearer {token}"}) as http:
            seq = 0
            while not self.stop.is_set():
                seq += 1
                rid = f"{self.tag}-{db}-{branch}-{seq}"
                body = {"statements": [{
                    "sql": "INSERT INTO w(id, n, pad) VALUES (?, ?, randomblob(?))",
                    "args": [rid, seq, self.pad]}]}
                try:
                    r = http.post(path(db, branch), json=body)
                except httpx.TransportError:
                    return  # the node is gone: not acknowledged
                if r.status_code != 200:
                    with self.acked.lock:
                        self.acked.errors.append(f"{db}/{branch} {r.status_code} {r.text[:200]}")
                    return
                with self.acked.lock:
                    self.acked.rows.setdefault((db, branch), []).append((rid, time.time()))
                if seq >= self.warmup:
                    self.ready[index].set()


def segment_files(store_root: Path, db: str) -> Iterator[Path]:
    """The segment files of a database in a file:// store, in key order."""
    yield from sorted((store_root / "dbs" / db / "log").glob("*/*.seg"))


def assert_log_contiguous(store: ObjectStore, db: str, branch: str = "main") -> int:
    """The branch's own segments tile its txids from the fork to the head: no gap, no
    overlap (segments that compaction merged into another are set aside). Returns the
    head."""
    record = get_branch(store, db, branch)
    found = segments(store, db, record.timeline)
    merged = covered(found)
    segs = [s for s in found if s.key not in merged]
    expected = record.fork_txid + 1
    for seg in segs:
        where = layout.log_prefix(db, record.timeline)
        assert seg.first == expected, \
            f"gap or overlap in {where}: expected txid {expected}, found {seg.key}"
        expected = seg.last + 1
    return expected - 1
