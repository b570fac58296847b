"""Baselines measured without HTTP, in the benchmark's own process or a fresh one.

- `asgi_point_reads`: Shoal's ASGI App called directly (no sockets, no HTTP
  parsing): what the app itself costs per point read.
- `python -m bench.inproc floor DIR N`: in a fresh process, open N database files
  the way a node opens one (a writer and a reader connection, WAL, a point read)
  and print the time per open and the resident memory they add, as JSON: the
  SQLite floor under Shoal's cold open and memory per open database. Variants:
  one connection per database, SQLite's lookaside allocator off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import apsw

from bench.harness import POINT_READ, POINT_ROWS, POINT_SCHEMA, rss_bytes


# -- the ASGI app without a server ----------------------------------------------------------------
class AsgiDriver:
    """Runs Shoal's App in this process: lifespan, then one request at a time."""

    def __init__(self, data_dir: Path):
        from shoal.server.app import App
        from shoal.settings import load

        self.token = "bench-" + secrets.token_hex(16)
        settings = load(overrides={"data": str(data_dir), "admin_token": self.token,
                                   "access_log": False, "log_level": "warning"}, environ={})
        self.app = App(settings)
        self._lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._lifespan_out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.app(
            {"type": "lifespan"}, self._lifespan.get, self._lifespan_out.put))
        await self._lifespan.put({"type": "lifespan.startup"})
        message = await self._lifespan_out.get()
        if message["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"lifespan startup failed: {message}")

    async def stop(self) -> None:
        await self._lifespan.put({"type": "lifespan.shutdown"})
        await self._lifespan_out.get()
        if self._task:
            await self._task

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        scope = {"type": "http", "method": method, "path": path, "query_string": b"",
                 "headers": [(b"authorization", f"Bearer {self.token}".encode()),
                             (b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode())]}
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        return sent[0]["status"], sent[1].get("body", b"")


async def _asgi_point_reads(data_dir: Path, rows: int, seconds: float, max_requests: int) -> float:
    driver = AsgiDriver(data_dir)
    await driver.start()
    try:
        path = "/v1/databases/reads/query"
        setup = [("/v1/databases", {"name": "reads"}),
                 (path, {"statements": [POINT_SCHEMA, {"sql": POINT_ROWS, "args": [rows]}]})]
        for url, payload in setup:
            status, out = await driver.request("POST", url, json.dumps(payload).encode())
            if status not in (200, 201):
                raise RuntimeError(f"in-process setup failed: {status} {out!r}")
        template = '{"statements":[{"sql":"%s","args":[%d]}]}'
        bodies = [(template % (POINT_READ, random.randint(1, rows))).encode()
                  for _ in range(4096)]
        done = 0
        started = time.perf_counter()
        deadline = started + seconds
        while done < max_requests and time.perf_counter() < deadline:
            for body in bodies[:512]:
                status, out = await driver.request("POST", path, body)
                if status != 200:
                    raise RuntimeError(f"in-process read failed: {status} {out!r}")
            done += 512
            random.shuffle(bodies)
        return done / (time.perf_counter() - started)
    finally:
        await driver.stop()


def asgi_point_reads(data_dir: Path, rows: int, seconds: float,
                     max_requests: int = 5_000_000) -> float:
    """Point reads per second through Shoal's App called in-process, one at a time."""
    return asyncio.run(_asgi_point_reads(data_dir, rows, seconds, max_requests))


# -- the SQLite floor of an open database ----------------------------------------------------
def _open_like_a_node(path: Path, connections: int) -> list[apsw.Connection]:
    """A writer (and a reader) connection set up as a node sets them up, and one point read."""
    conns = []
    for i in range(connections):
        conn = apsw.Connection(str(path))
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON")
        if i == connections - 1:
            if i:
                conn.execute("PRAGMA query_only=1")
            conn.execute(POINT_READ, (1,)).fetchall()
        conns.append(conn)
    return conns


def floor(root: Path, count: int, connections: int = 2, lookaside: bool = True) -> dict[str, Any]:
    """Time per open and RSS added by `count` databases opened as a node opens them."""
    if not lookaside:
        apsw.shutdown()
        apsw.config(apsw.SQLITE_CONFIG_LOOKASIDE, 0, 0)
        apsw.initialize()
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"db{i:05d}.db" for i in range(count)]
    for path in paths:
        conn = apsw.Connection(str(path))
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute(POINT_SCHEMA)
        conn.execute("INSERT INTO t VALUES (1, 'one', 'one@example.com', 1.0)")
        conn.close()
    rss_before = rss_bytes(os.getpid())
    held, times = [], []
    for path in paths:
        started = time.perf_counter()
        held.append(_open_like_a_node(path, connections))
        times.append((time.perf_counter() - started) * 1000)
    time.sleep(0.5)
    rss_after = rss_bytes(os.getpid())
    return {"count": count, "connections": connections, "lookaside": lookaside,
            "open_ms_p50": statistics.median(times), "rss_before": rss_before,
            "rss_after": rss_after, "per_db_bytes": (rss_after - rss_before) / count,
            "sqlite_heap_per_db_bytes": apsw.memory_used() / count}


def run_floor(root: Path, count: int, connections: int = 2, lookaside: bool = True,
              timeout: float = 300) -> dict[str, Any]:
    """`floor` in a fresh interpreter, so that its RSS starts clean."""
    command = [sys.executable, "-m", "bench.inproc", "floor", str(root), str(count),
               "--connections", str(connections), *([] if lookaside else ["--no-lookaside"])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.inproc")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("floor", help="open databases as a node does; print time and RSS as JSON")
    f.add_argument("dir", type=Path)
    f.add_argument("count", type=int)
    f.add_argument("--connections", type=int, default=2, choices=(1, 2))
    f.add_argument("--no-lookaside", action="store_true", help="SQLITE_CONFIG_LOOKASIDE 0, 0")
    args = p.parse_args()
    print(json.dumps(floor(args.dir, args.count, args.connections, not args.no_lookaside)))


if __name__ == "__main__":
    main()
