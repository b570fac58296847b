"""The change feed: `python -m bench.feed [--quick] [--runs N] [--seconds S]`.

In one run, next to each other (only ratios and same-run figures count):

1. **Capture, in process.** Single-row insert commits on an apsw connection (WAL, a file
   in /dev/shm: no fsync, so the capture's CPU shows): no capture, SQLite's session
   (what Shoal uses, ``feed/capture.py``), and a preupdate hook that records each change
   (the other way the issue names). CPU per commit.
2. **Write throughput, capture on against off.** Two nodes (``capture_changes`` true and
   false), 64 wrk connections of durable single-row inserts (bench/lua/insert.lua),
   alternating runs: the ratio on / off.
3. **Commit-to-consumer latency over SSE.** One node, writers paced to ``--commits``
   (1,000) single-row commits a second, one event-stream consumer: each change's
   arrival time minus its commit time (``at``; one machine, one clock).
4. **Fan-out.** ``--subscribers`` (1,000) event streams on one node while writers commit
   10-row inserts: row changes delivered per second over all streams.

JSON to bench/results/feed-<time>.json; the table is printed, RESULTS.md gets it by hand.
Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import apsw
import httpx

from bench import wrk
from bench.core import say
from bench.harness import RESULTS_DIR, paced_writes, percentile, run_load
from shoal.engine import tables
from shoal.feed import ChangeCapture
from tests.support.server import ServerProcess

ADMIN = "bench-feed-admin"
SCHEMA = "CREATE TABLE w(k TEXT PRIMARY KEY, v TEXT)"


# -- (1) capture in process --------------------------------------------------------------------
def capture_cost(mode: str, commits: int) -> float:
    """CPU microseconds per single-row insert commit with ``mode``'s capture."""
    path = f"/dev/shm/bench-feed-{os.getpid()}-{mode}.db"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    conn = apsw.Connection(path)
    try:
        conn.execute("PRAGMA journal_mode=wal; PRAGMA synchronous=off")
        conn.execute(SCHEMA)
        capture = ChangeCapture(conn, tables.hidden) if mode == "session" else None
        seen: list[tuple[Any, ...]] = []
        if mode == "preupdate":
            def hook(update: apsw.PreUpdate) -> None:
                seen.append((update.table_name, update.op, update.rowid,
                             update.old if update.op != "INSERT" else None,
                             update.new if update.op != "DELETE" else None))
            conn.preupdate_hook(hook)
        started = time.process_time()
        for i in range(commits):
            conn.execute("BEGIN IMMEDIATE")
            if capture is not None:
                capture.start()
            conn.execute("INSERT INTO w(k, v) VALUES (?, 'payload')", (f"k{i}",))
            if capture is not None:
                capture.finish()
            seen.clear()
            conn.execute("COMMIT")
        return (time.process_time() - started) / commits * 1e6
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)


# -- nodes ------------------------------------------------------------------------------------
def start_node(root: Path, name: str, **settings: Any) -> ServerProcess:
    return ServerProcess(root / name, {"admin_token": ADMIN, "access_log": "false",
                                       "log_level": "warning"} | settings).start(timeout=60)


def create(node: ServerProcess, db: str) -> None:
    with httpx.Client(base_url=node.url, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        http.post("/v1/databases", json={"name": db}).raise_for_status()
        http.post(f"/v1/databases/{db}/query",
                  json={"statements": [SCHEMA]}).raise_for_status()


# -- (2) write throughput -----------------------------------------------------------------------
def writes(opts: argparse.Namespace) -> dict[str, list[float]]:
    """Rows a second with the capture on and off, and the node's CPU per insert (us)."""
    out: dict[str, list[float]] = {"on": [], "off": [], "on_cpu_us": [], "off_cpu_us": []}
    with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
        nodes = {"on": start_node(Path(tmp), "on"),
                 "off": start_node(Path(tmp), "off", capture_changes="false")}
        try:
            for node in nodes.values():
                create(node, "w")
            for run in range(opts.runs):
                for kind in ("on", "off") if run % 2 == 0 else ("off", "on"):
                    node = nodes[kind]
                    assert node.proc is not None
                    load = run_load(node.proc.pid, f"{node.url}/v1/databases/w/query",
                                    "insert.lua", [ADMIN, f"{kind}-{run}-{time.time_ns()}"],
                                    connections=64, threads=2, seconds=opts.seconds)
                    out[kind].append(load.result.rate)
                    out[f"{kind}_cpu_us"].append(round(load.cpu_us_per_request, 1))
        finally:
            for node in nodes.values():
                node.stop()
    return out


# -- (3) latency over SSE ----------------------------------------------------------------------
def latency(opts: argparse.Namespace) -> dict[str, float]:
    """The consumer runs in a process of its own: beside the writer threads, its reading
    would wait for the GIL, and the wait would count as lag."""
    with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
        node = start_node(Path(tmp), "lat")
        out = Path(tmp) / "lags.json"
        try:
            create(node, "lat")
            ready = multiprocessing.Event()
            reader = multiprocessing.Process(
                target=consume, args=(node.url, opts.seconds + 3.0, str(out), ready))
            reader.start()
            ready.wait(30)
            time.sleep(0.5)
            rate = paced_writes(node.url, ADMIN, "lat", opts.commits, opts.seconds)
            reader.join(30)
        finally:
            node.stop()
        lags = json.loads(out.read_text()) if out.exists() else []
    return {"commits_per_s": round(rate, 1), "events": len(lags),
            "p50_ms": round(percentile(lags, 50) * 1000, 1) if lags else float("nan"),
            "p99_ms": round(percentile(lags, 99) * 1000, 1) if lags else float("nan")}


def consume(url: str, seconds: float, out: str, ready: Any) -> None:
    """Read the event stream for ``seconds``: each change's arrival after its commit."""
    lags: list[float] = []
    until = time.monotonic() + seconds
    with contextlib.suppress(httpx.HTTPError), httpx.stream(
            "GET", f"{url}/v1/databases/lat/changes",
            headers={"Authorization": f"Bearer {ADMIN}", "Accept": "text/event-stream"},
            timeout=60) as r:
        ready.set()
        for line in r.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                lags.append(time.time() - datetime.fromisoformat(event["at"]).timestamp())
            if time.monotonic() > until:
                break
    Path(out).write_text(json.dumps(lags))


# -- (4) fan-out -------------------------------------------------------------------------------
def fanout(opts: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
        node = start_node(Path(tmp), "fan", max_connections=opts.subscribers + 200,
                          max_connections_per_client=opts.subscribers + 200,
                          max_feed_streams=opts.subscribers + 10)
        try:
            create(node, "fan")
            counts = [0]
            opened = [0]
            stop = threading.Event()

            async def subscribers() -> None:
                conn = aiohttp.TCPConnector(limit=0)
                async with aiohttp.ClientSession(connector=conn) as session:
                    async def one() -> None:
                        async with session.get(
                                f"{node.url}/v1/databases/fan/changes",
                                headers={"Authorization": f"Bearer {ADMIN}",
                                         "Accept": "text/event-stream"},
                                timeout=aiohttp.ClientTimeout(total=None)) as r:
                            opened[0] += 1
                            async for line in r.content:
                                if line.startswith(b"id: "):
                                    counts[0] += 1
                                if stop.is_set():
                                    return
                    tasks = [asyncio.ensure_future(one()) for _ in range(opts.subscribers)]
                    while not stop.is_set():
                        await asyncio.sleep(0.1)
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)

            loop_thread = threading.Thread(target=lambda: asyncio.run(subscribers()),
                                           daemon=True)
            loop_thread.start()
            deadline = time.monotonic() + 60
            while opened[0] < opts.subscribers and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)
            before, started = counts[0], time.monotonic()
            rate = paced_writes(node.url, ADMIN, "fan", opts.fan_commits, opts.seconds,
                                rows=10, writers=8)
            time.sleep(1.0)
            delivered = (counts[0] - before) / (time.monotonic() - started)
            stop.set()
            loop_thread.join(30)
        finally:
            node.stop()
    return {"subscribers": opened[0], "commits_per_s": round(rate, 1),
            "row_changes_per_s": round(rate * 10, 1),
            "delivered_per_s": round(delivered, 1)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.feed",
                                description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 run of 2 s, 100 subscribers")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--commits", type=int, default=1000, help="commits/s for the latency")
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--fan-commits", type=int, default=50,
                   help="10-row commits/s during the fan-out")
    p.add_argument("--only", default="capture,writes,latency,fanout")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.runs, opts.seconds, opts.subscribers = 1, 2.0, 100
    parts = set(opts.only.split(","))
    wrk.ensure_wrk()
    result: dict[str, Any] = {}
    if "capture" in parts:
        say("capture in process: none, session, preupdate hook")
        result["capture_us"] = {mode: round(statistics.median(
            capture_cost(mode, 5000 if opts.quick else 20000) for _ in range(opts.runs)), 1)
            for mode in ("none", "session", "preupdate")}
        print("capture, CPU per one-row commit: " + ", ".join(
            f"{k} {v:g} us" for k, v in result["capture_us"].items()))
    if "writes" in parts:
        say("write throughput: capture on, off")
        result["writes"] = writes(opts)
        on, off = (statistics.median(result["writes"][k]) for k in ("on", "off"))
        cpu_on, cpu_off = (statistics.median(result["writes"][f"{k}_cpu_us"])
                           for k in ("on", "off"))
        print(f"64 writers: capture on {on:,.0f} rows/s, off {off:,.0f} rows/s "
              f"({on / off:.2f}x); node CPU per insert {cpu_on:g} us on, {cpu_off:g} us off")
    if "latency" in parts:
        say(f"commit to consumer over SSE at {opts.commits} commits/s")
        result["latency"] = latency(opts)
        got = result["latency"]
        print(f"SSE latency at {got['commits_per_s']:,.0f} commits/s: p50 {got['p50_ms']} ms, "
              f"p99 {got['p99_ms']} ms ({got['events']} events)")
    if "fanout" in parts:
        say(f"fan-out to {opts.subscribers} event streams")
        result["fanout"] = fanout(opts)
        got = result["fanout"]
        print(f"fan-out: {got['subscribers']} streams, {got['row_changes_per_s']:,.0f} row "
              f"changes/s written, {got['delivered_per_s']:,.0f} delivered/s in all")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    (RESULTS_DIR / f"feed-{stamp}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
