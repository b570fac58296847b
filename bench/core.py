"""The core benchmark: `python -m bench.core [--quick]` (or `make bench-core`).

It starts its own `shoal serve` nodes on loopback (temporary data directories,
access log off) and measures, each next to a baseline taken in the same run:

1. point reads by primary key over HTTP, 64 keep-alive connections (wrk), against
   the same query run in-process with apsw on one thread (the ceiling);
2. single-row durable inserts into one database from 64 connections (wrk), against
   in-process apsw inserts committing (and fsyncing) one row at a time, with the
   group-commit batch size scraped from /metrics;
3. first-query latency of closed databases among many (10,000), against a second
   query to the same, now open, database;
4. resident memory of the node with 10,000 databases created and 1,000 open,
   against the same node with the databases created and none open.

Medians of several runs are printed as a table, written as JSON to
bench/results/core-<timestamp>.json, and (unless --quick) into bench/RESULTS.md.
Every loop is bounded in count and in time. Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import apsw
import httpx

from bench import wrk
from bench.harness import (
    POINT_READ,
    POINT_SCHEMA,
    Api,
    Report,
    Row,
    apsw_point_reads,
    median,
    percentile,
    print_table,
    rss_bytes,
    running_node,
    seed_point_table,
)

MB = 1024 * 1024


@dataclass(frozen=True)
class Options:
    quick: bool
    runs: int
    seconds: float  # one wrk run
    ceiling_seconds: float  # one in-process apsw run
    connections: int
    wrk_threads: int
    rows: int  # rows in the point-read table
    databases: int  # databases created for the cold-open and memory benchmarks
    open_count: int  # databases kept open for the memory benchmark (= max_open)
    cold_samples: int  # closed databases queried for first-query latency
    data_root: str | None
    time_limit: float  # seconds any setup loop (creating databases, ...) may take


def parse_args(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.core", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1,000 databases, 3 s wrk runs; RESULTS.md is not touched")
    p.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    p.add_argument("--seconds", type=float, help="seconds per wrk run (default 10, quick 3)")
    p.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk threads")
    p.add_argument("--rows", type=int, default=10_000, help="rows in the point-read table")
    p.add_argument("--databases", type=int, help="databases created (default 10,000, quick 1,000)")
    p.add_argument("--open", dest="open_count", type=int,
                   help="databases open for the memory figure (default 1,000, quick 200)")
    p.add_argument("--cold-samples", type=int,
                   help="closed databases timed (default 300, quick 50)")
    p.add_argument("--data-root", help="directory for the temporary data directories")
    args = p.parse_args(argv)
    quick = bool(args.quick)
    databases = args.databases or (1_000 if quick else 10_000)
    open_count = args.open_count or (200 if quick else 1_000)
    cold = args.cold_samples or (50 if quick else 300)
    if open_count + cold > databases:
        p.error("--open plus --cold-samples must not exceed --databases")
    seconds = args.seconds or (3.0 if quick else 10.0)
    return Options(quick=quick, runs=max(1, args.runs), seconds=seconds,
                   ceiling_seconds=min(seconds, 3.0), connections=args.connections,
                   wrk_threads=args.wrk_threads, rows=args.rows, databases=databases,
                   open_count=open_count, cold_samples=cold, data_root=args.data_root,
                   time_limit=600.0)


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- 1. point reads ----------------------------------------------------------------------------
def bench_reads(opts: Options, url: str, api: Api, db_file: Path, raw: dict[str, Any]) -> list[Row]:
    seed_point_table(api, "reads", opts.rows)
    query_url = f"{url}/v1/databases/reads/query"
    args = [api.token, str(opts.rows)]
    say(f"point reads: warm-up, then {opts.runs} x ({opts.seconds:g} s wrk + "
        f"{opts.ceiling_seconds:g} s in-process apsw + {opts.seconds / 2:g} s GET /health)")
    wrk.run(query_url, "point_read.lua", args, connections=opts.connections,
            threads=opts.wrk_threads, seconds=min(2.0, opts.seconds))
    http, ceiling, health = [], [], []
    for i in range(opts.runs):
        ceiling.append(apsw_point_reads(db_file, opts.rows, opts.ceiling_seconds))
        result = wrk.run(query_url, "point_read.lua", args, connections=opts.connections,
                         threads=opts.wrk_threads, seconds=opts.seconds)
        http.append(result)
        health.append(wrk.run(url + "/health", "get.lua", [], connections=opts.connections,
                              threads=opts.wrk_threads, seconds=opts.seconds / 2))
        say(f"  run {i + 1}: HTTP {result.rate:,.0f}/s (failed {result.failed}, "
            f"p50 {result.latency_us['p50'] / 1000:.2f} ms), apsw {ceiling[-1]:,.0f}/s, "
            f"/health {health[-1].rate:,.0f}/s")
    raw["point_reads"] = {"http": [r.as_json() for r in http], "apsw_in_process": ceiling,
                          "health": [r.as_json() for r in health]}
    rate = median([r.rate for r in http])
    failed = sum(r.failed for r in http)
    return [
        Row("point reads over HTTP (64 conns)", rate, "req/s", "apsw in-process",
            median(ceiling), ">= 10,000 req/s", rate >= 10_000 and failed == 0,
            f"p50 {median([r.latency_us['p50'] for r in http]) / 1000:.2f} ms, "
            f"p99 {median([r.latency_us['p99'] for r in http]) / 1000:.2f} ms, "
            f"failed requests {failed}"),
        Row("GET /health over HTTP (HTTP floor)", median([r.rate for r in health]), "req/s",
            "point reads over HTTP", rate,
            detail="the same server answering without touching SQLite or JSON bodies"),
    ]


# -- 2. durable inserts ------------------------------------------------------------------------
def bench_inserts(opts: Options, url: str, api: Api, scratch: Path,
                  raw: dict[str, Any]) -> list[Row]:
    api.create_database("writes")
    api.query("writes", "CREATE TABLE w(k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    query_url = f"{url}/v1/databases/writes/query"
    say(f"inserts: {opts.runs} x ({opts.seconds:g} s wrk + {opts.ceiling_seconds:g} s "
        "in-process apsw, one fsync per row)")
    runs: list[dict[str, Any]] = []
    for i in range(opts.runs):
        baseline = apsw_durable_inserts(scratch / f"inserts-{i}.db", opts.ceiling_seconds)
        before = api.metrics()
        result = wrk.run(query_url, "insert.lua", [api.token, f"r{i}"],
                         connections=opts.connections, threads=opts.wrk_threads,
                         seconds=opts.seconds)
        time.sleep(0.5)  # let requests still in flight when wrk stopped commit
        after = api.metrics()
        count = api.query("writes", {"sql": "SELECT count(*) FROM w WHERE k LIKE ?",
                                     "args": [f"r{i}-%"]})["results"][0]["rows"][0][0]
        batches = delta(after, before, "shoal_group_commit_batch_size_count")
        batched = delta(after, before, "shoal_group_commit_batch_size_sum")
        runs.append({"wrk": result.as_json(), "apsw_per_commit": baseline,
                     "rows_committed": count, "commits": batches, "rows_in_commits": batched,
                     "mean_batch": batched / batches if batches else 0.0})
        say(f"  run {i + 1}: HTTP {result.rate:,.0f}/s (failed {result.failed}, committed "
            f"{count:,} >= acknowledged {result.succeeded:,}), mean batch "
            f"{runs[-1]['mean_batch']:.1f}, apsw one-fsync-per-row {baseline:,.0f}/s")
    raw["inserts"] = runs
    rate = median([r["wrk"]["rate"] for r in runs])
    failed = sum(sum(r["wrk"]["errors"].values()) for r in runs)
    lost = sum(1 for r in runs if r["rows_committed"] < r["wrk"]["requests"]
               - r["wrk"]["errors"]["status"])
    return [
        Row("durable inserts over HTTP (64 conns)", rate, "rows/s", "apsw, fsync per row",
            median([r["apsw_per_commit"] for r in runs]), ">= 5,000 rows/s",
            rate >= 5_000 and failed == 0 and lost == 0,
            f"p50 {median([r['wrk']['latency_us']['p50'] for r in runs]) / 1000:.2f} ms, "
            f"p99 {median([r['wrk']['latency_us']['p99'] for r in runs]) / 1000:.2f} ms, "
            f"failed requests {failed}, runs with fewer rows than acknowledged {lost}"),
        Row("group-commit batch (rows per fsync)", median([r["mean_batch"] for r in runs]),
            "rows", detail="mean of shoal_group_commit_batch_size over each run, median of runs"),
    ]


def delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def apsw_durable_inserts(path: Path, seconds: float, max_rows: int = 1_000_000) -> float:
    """Rows per second in-process, one transaction (and fsync) per row: no group commit."""
    conn = apsw.Connection(str(path))
    try:
        conn.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE w(k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        done = 0
        started = time.perf_counter()
        deadline = started + seconds
        while done < max_rows and time.perf_counter() < deadline:
            conn.execute("INSERT INTO w(k, v) VALUES (?, ?)", (f"k{done}", "payload"))
            done += 1
        return done / (time.perf_counter() - started)
    finally:
        conn.close()


# -- 3 and 4. many databases: cold first query, memory -----------------------------------------
async def bounded(items: Sequence[str], work: Callable[[str], Awaitable[None]],
                  concurrency: int, time_limit: float) -> None:
    """Run work(item) for every item, `concurrency` at a time, failing after time_limit."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            await work(queue.get_nowait())

    async with asyncio.timeout(time_limit):
        await asyncio.gather(*(worker() for _ in range(concurrency)))


def async_client(url: str, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"},
                             limits=httpx.Limits(max_connections=16), timeout=60)


async def create_databases(url: str, token: str, names: Sequence[str],
                           time_limit: float) -> float:
    """Create every database (16 requests at a time); returns databases created per second."""
    async with async_client(url, token) as client:
        async def create(name: str) -> None:
            r = await client.post("/v1/databases", json={"name": name})
            if r.status_code != 201:
                raise RuntimeError(f"create {name}: {r.status_code} {r.text}")

        started = time.perf_counter()
        await bounded(names, create, 16, time_limit)
        return len(names) / (time.perf_counter() - started)


async def open_databases(url: str, token: str, names: Sequence[str], time_limit: float) -> None:
    """Open each database with a write (table t, one row) and a read, roughly in order."""
    async with async_client(url, token) as client:
        async def open_one(name: str) -> None:
            for statements in (
                [POINT_SCHEMA, "INSERT INTO t VALUES (1, 'one', 'one@example.com', 1.0)"],
                [{"sql": POINT_READ, "args": [1]}],
            ):
                r = await client.post(f"/v1/databases/{name}/query",
                                      json={"statements": statements})
                if r.status_code != 200:
                    raise RuntimeError(f"open {name}: {r.status_code} {r.text}")

        deadline = time.monotonic() + time_limit
        for i in range(0, len(names), 50):  # small groups: the first ones stay least recent
            await bounded(names[i:i + 50], open_one, 8, max(0.0, deadline - time.monotonic()))


def bench_many(opts: Options, root: Path, raw: dict[str, Any]) -> list[Row]:
    names = [f"db{i:05d}" for i in range(opts.databases)]
    picked = random.sample(names, opts.cold_samples + opts.open_count)
    cold, hot = picked[:opts.cold_samples], picked[opts.cold_samples:]
    with running_node(root / "many", max_open=opts.open_count, idle_timeout=3600) as node:
        api = Api(node.url, node.admin_token)
        assert node.proc is not None
        pid = node.proc.pid
        rss_empty = rss_bytes(pid)
        say(f"many databases: creating {opts.databases:,}, opening {len(cold)} then "
            f"{len(hot):,} (max_open {opts.open_count:,}), so the first {len(cold)} close again")
        t0 = time.perf_counter()
        create_rate = asyncio.run(create_databases(node.url, api.token, names, opts.time_limit))
        time.sleep(1.0)
        rss_created = rss_bytes(pid)
        asyncio.run(open_databases(node.url, api.token, cold + hot, opts.time_limit))
        time.sleep(1.0)
        rss_open = rss_bytes(pid)
        open_now = api.metrics().get("shoal_open_databases", -1)
        say(f"  set up in {time.perf_counter() - t0:.1f} s ({create_rate:,.0f} creates/s); "
            f"RSS {rss_open / MB:.1f} MB with {open_now:.0f} open")
        cold_ms, warm_ms, server_ms = measure_cold(api, cold, opts.time_limit)
        rss_after = rss_bytes(pid)
        api.close()
    raw["many"] = {"databases": opts.databases, "open": open_now, "create_rate": create_rate,
                   "rss_bytes": {"empty": rss_empty, "created": rss_created, "open": rss_open,
                                 "after_cold_queries": rss_after},
                   "cold_ms": cold_ms, "warm_ms": warm_ms, "cold_server_ms": server_ms}
    scale = f"{opts.databases:,} dbs"
    per_open = (rss_open - rss_created) / max(1.0, open_now) / 1024
    return [
        Row(f"first query, closed db ({scale}) p50", median(cold_ms), "ms",
            "same db, open (p50)", median(warm_ms), "p50 <= 5 ms", median(cold_ms) <= 5.0,
            f"p99 {percentile(cold_ms, 99):.2f} ms (warm p99 {percentile(warm_ms, 99):.2f} ms), "
            f"server-side p50 {median(server_ms):.2f} ms, {len(cold_ms)} samples"),
        Row(f"first query, closed db ({scale}) p99", percentile(cold_ms, 99), "ms",
            "same db, open (p99)", percentile(warm_ms, 99)),
        Row(f"RSS, {scale} created, {open_now:,.0f} open", rss_open / MB, "MB",
            "same node, none open", rss_created / MB, "<= 300 MB", rss_open / MB <= 300,
            f"{per_open:.0f} KB per open database; fresh node {rss_empty / MB:.1f} MB; "
            f"{rss_after / MB:.1f} MB after the cold queries"),
    ]


def measure_cold(api: Api, names: Sequence[str],
                 time_limit: float) -> tuple[list[float], list[float], list[float]]:
    """Time a first (cold) and a second (warm) point read on each closed database."""
    cold: list[float] = []
    warm: list[float] = []
    server: list[float] = []
    body = {"statements": [{"sql": POINT_READ, "args": [1]}]}
    deadline = time.monotonic() + time_limit
    for name in names:
        if time.monotonic() > deadline:
            raise RuntimeError(f"cold-open loop exceeded {time_limit:g} s")
        info = api.http.get(f"/v1/databases/{name}").json()
        if info.get("open") is not False:
            raise RuntimeError(f"{name} should be closed before its first query: {info}")
        for out in (cold, warm):
            started = time.perf_counter()
            response = api.http.post(f"/v1/databases/{name}/query", json=body)
            out.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200 or response.json()["results"][0]["rows"][0][0] != 1:
                raise RuntimeError(f"query {name}: {response.status_code} {response.text}")
            if out is cold:
                server.append(float(response.json()["meta"]["duration_ms"]))
    return cold, warm, server


# -- the run ---------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    wrk.ensure_wrk()
    command = "python -m bench.core" + (" " + shlex.join(argv if argv is not None
                                                          else sys.argv[1:])).rstrip()
    report = Report("core", command.strip(), asdict(opts))
    with tempfile.TemporaryDirectory(prefix="shoal-bench-", dir=opts.data_root) as tmp:
        root = Path(tmp)
        with running_node(root / "node") as node:
            api = Api(node.url, node.admin_token)
            db_file = node.data_dir / "dbs" / "reads" / "main.db"
            report.rows += bench_reads(opts, node.url, api, db_file, report.raw)
            report.rows += bench_inserts(opts, node.url, api, root, report.raw)
            api.close()
        report.rows += bench_many(opts, root, report.raw)
    title = "Shoal core benchmark" + (" (--quick: smoke run, not the targets' scale)"
                                      if opts.quick else "")
    print_table(title, report.rows)
    path = report.write_json()
    print(f"bench: wrote {path}")
    if not opts.quick:
        report.update_results_md(path)
        print("bench: refreshed bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
