"""The core benchmark: `python -m bench.core [--quick]` (or `make bench-core`).

It starts its own `shoal serve` nodes on loopback (temporary data directories,
access log off) and measures, each next to a baseline taken in the same run:

1. point reads by primary key over HTTP, 64 keep-alive connections (wrk), against
   the same query run in-process with apsw on one thread (the ceiling), Shoal's
   ASGI app called in-process (no HTTP), and GET /health (the HTTP server floor);
2. single-row durable inserts into one database from 64 connections (wrk), against
   in-process apsw inserts committing (and fsyncing) one row at a time, with the
   group-commit batch size scraped from /metrics;
3. first-query latency of closed databases among many (10,000), against a second
   query to the same, now open, database and against opening the file in-process;
4. resident memory of the node with 10,000 databases created and 1,000 open,
   against the same node with none open and against the SQLite floor per database.

Medians of several runs are printed as a table, written as JSON to
bench/results/core-<timestamp>.json, and (unless --quick) into bench/RESULTS.md.
When a throughput target is missed (or with --profile) and py-spy is installed, an
extra, unmeasured run is sampled with py-spy and its top frames are reported.
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

from bench import profile, wrk
from bench.harness import (
    POINT_READ,
    POINT_SCHEMA,
    RESULTS_DIR,
    Api,
    Load,
    Report,
    Row,
    apsw_point_reads,
    median,
    percentile,
    print_table,
    rss_bytes,
    run_load,
    running_node,
    seed_point_table,
)
from bench.inproc import asgi_point_reads, run_floor

MB = 1024 * 1024
PARTS = ("reads", "inserts", "many")


@dataclass(frozen=True)
class Options:
    quick: bool
    runs: int
    seconds: float  # one wrk run
    ceiling_seconds: float  # one in-process run
    connections: int
    wrk_threads: int
    rows: int  # rows in the point-read table
    databases: int  # databases created for the cold-open and memory benchmarks
    open_count: int  # databases kept open for the memory benchmark (= max_open)
    cold_samples: int  # closed databases queried for first-query latency
    only: tuple[str, ...]
    profile: bool
    data_root: str | None
    time_limit: float  # seconds any setup loop (creating databases, ...) may take


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.core", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1,000 databases, 3 s wrk runs; RESULTS.md is not touched")
    p.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    p.add_argument("--seconds", type=int, help="seconds per wrk run (default 10, quick 3)")
    p.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk threads")
    p.add_argument("--rows", type=int, default=10_000, help="rows in the point-read table")
    p.add_argument("--databases", type=int, help="databases created (default 10,000, quick 1,000)")
    p.add_argument("--open", dest="open_count", type=int,
                   help="databases open for the memory figure (default 1,000, quick 200)")
    p.add_argument("--cold-samples", type=int,
                   help="closed databases timed (default 300, quick 50)")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(PARTS)} "
                                  "(RESULTS.md is then not touched)")
    p.add_argument("--profile", action="store_true",
                   help="sample the read and insert workloads with py-spy even if targets are met")
    p.add_argument("--data-root", help="directory for the temporary data directories")
    args = p.parse_args(argv)
    quick = bool(args.quick)
    databases = args.databases or (1_000 if quick else 10_000)
    open_count = args.open_count or (200 if quick else 1_000)
    cold = args.cold_samples or (50 if quick else 300)
    if open_count + cold > databases:
        p.error("--open plus --cold-samples must not exceed --databases")
    only = tuple(args.only.split(",")) if args.only else PARTS
    if not set(only) <= set(PARTS):
        p.error(f"--only takes a subset of {','.join(PARTS)}")
    seconds = args.seconds or (3 if quick else 10)
    return Options(quick=quick, runs=max(1, args.runs), seconds=seconds,
                   ceiling_seconds=min(seconds, 3), connections=args.connections,
                   wrk_threads=args.wrk_threads, rows=args.rows, databases=databases,
                   open_count=open_count, cold_samples=cold, only=only,
                   profile=bool(args.profile), data_root=args.data_root, time_limit=600.0)


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def measure(pid: int, opts: Options, url: str, script: str, args: list[str],
            seconds: float | None = None) -> Load:
    return run_load(pid, url, script, args, connections=opts.connections,
                    threads=opts.wrk_threads, seconds=seconds or opts.seconds)


def profiled(pid: int, name: str, workload: Callable[[], object]) -> dict[str, Any] | None:
    """Sample the node with py-spy while workload() runs (an extra, unmeasured run)."""
    if profile.py_spy() is None:
        say("py-spy is not installed (.venv/bin/pip install py-spy): no profile")
        return None
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    with profile.sampling(pid, RESULTS_DIR / f"core-{stamp}-{name}.pyspy.txt") as out:
        workload()
    summary = profile.summarise(out)
    say(f"py-spy profile of {name} (collapsed stacks in {out.name}):\n{summary.render(15)}")
    return summary.as_json() | {"collapsed": out.name}


# -- 1. point reads ----------------------------------------------------------------------------
def bench_reads(opts: Options, pid: int, url: str, api: Api, scratch: Path,
                raw: dict[str, Any]) -> list[Row]:
    seed_point_table(api, "reads", opts.rows)
    db_file = scratch / "node" / "dbs" / "reads" / "main.db"
    query_url = f"{url}/v1/databases/reads/query"
    args = [api.token, str(opts.rows)]
    say(f"point reads: warm-up, then {opts.runs} x ({opts.seconds:g} s wrk, "
        f"{opts.seconds / 2:g} s GET /health, {opts.ceiling_seconds:g} s apsw in-process, "
        f"{opts.ceiling_seconds:g} s ASGI app in-process)")
    measure(pid, opts, query_url, "point_read.lua", args, seconds=2)
    http: list[Load] = []
    health: list[Load] = []
    ceiling: list[float] = []
    asgi: list[float] = []
    for i in range(opts.runs):
        http.append(measure(pid, opts, query_url, "point_read.lua", args))
        health.append(measure(pid, opts, url + "/health", "get.lua", [], seconds=opts.seconds / 2))
        ceiling.append(apsw_point_reads(db_file, opts.rows, opts.ceiling_seconds))
        asgi.append(asgi_point_reads(scratch / f"asgi-{i}", opts.rows, opts.ceiling_seconds))
        r = http[-1]
        say(f"  run {i + 1}: HTTP {r.result.rate:,.0f}/s (failed {r.result.failed}, "
            f"{r.cpu_us_per_request:.0f} us server CPU each, server busy "
            f"{r.busy:.0%}), /health {health[-1].result.rate:,.0f}/s, "
            f"apsw {ceiling[-1]:,.0f}/s, ASGI app {asgi[-1]:,.0f}/s")
    raw["point_reads"] = {"http": [r.as_json() for r in http],
                          "health": [r.as_json() for r in health],
                          "apsw_in_process": ceiling, "asgi_in_process": asgi}
    rate = median([r.result.rate for r in http])
    failed = sum(r.result.failed for r in http)
    met = rate >= 10_000 and failed == 0
    if not met or opts.profile:
        raw["point_reads"]["profile"] = profiled(
            pid, "reads", lambda: measure(pid, opts, query_url, "point_read.lua", args))
    cpu_read = median([r.cpu_us_per_request for r in http])
    cpu_health = median([r.cpu_us_per_request for r in health])
    return [
        Row("point reads over HTTP (64 conns)", rate, "req/s", "apsw in-process",
            median(ceiling), ">= 10,000 req/s", met,
            f"p50 {median([r.result.latency_us['p50'] for r in http]) / 1000:.2f} ms, "
            f"p99 {median([r.result.latency_us['p99'] for r in http]) / 1000:.2f} ms, "
            f"failed requests {failed}, server busy "
            f"{median([r.busy for r in http]):.0%} of one core"),
        Row("point reads, ASGI app in-process (no HTTP)", median(asgi), "req/s",
            "apsw in-process", median(ceiling),
            detail="Shoal's App called directly, one request at a time"),
        Row("GET /health over HTTP (HTTP server floor)", median([r.result.rate for r in health]),
            "req/s", "point reads over HTTP", rate),
        Row("server CPU per point read over HTTP", cpu_read, "us", "per GET /health", cpu_health,
            detail="user + system CPU of the node divided by requests served"),
    ]


# -- 2. durable inserts ------------------------------------------------------------------------
def bench_inserts(opts: Options, pid: int, url: str, api: Api, scratch: Path,
                  raw: dict[str, Any]) -> list[Row]:
    api.create_database("writes")
    api.query("writes", "CREATE TABLE w(k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    query_url = f"{url}/v1/databases/writes/query"
    say(f"inserts: {opts.runs} x ({opts.seconds:g} s wrk, {opts.ceiling_seconds:g} s "
        "apsw in-process with one fsync per row)")
    runs: list[dict[str, Any]] = []
    for i in range(opts.runs):
        before = api.metrics()
        run = measure(pid, opts, query_url, "insert.lua", [api.token, f"r{i}"])
        time.sleep(0.5)  # let requests still in flight when wrk stopped commit
        after = api.metrics()
        count = api.query("writes", {"sql": "SELECT count(*) FROM w WHERE k LIKE ?",
                                     "args": [f"r{i}-%"]})["results"][0]["rows"][0][0]
        commits = delta(after, before, "shoal_group_commit_batch_size_count")
        rows = delta(after, before, "shoal_group_commit_batch_size_sum")
        baseline = apsw_durable_inserts(scratch / f"inserts-{i}.db", opts.ceiling_seconds)
        runs.append({"http": run.as_json(), "apsw_fsync_per_row": baseline,
                     "rows_committed": count, "commits": commits, "rows_in_commits": rows,
                     "mean_batch": rows / commits if commits else 0.0})
        say(f"  run {i + 1}: HTTP {run.result.rate:,.0f}/s (failed {run.result.failed}, "
            f"committed {count:,} >= acknowledged {run.result.succeeded:,}: "
            f"{count >= run.result.succeeded}), mean batch {runs[-1]['mean_batch']:.1f}, "
            f"{run.cpu_us_per_request:.0f} us server CPU each, apsw {baseline:,.0f}/s")
    raw["inserts"] = runs
    rate = median([r["http"]["rate"] for r in runs])
    failed = sum(sum(r["http"]["errors"].values()) for r in runs)
    short = sum(1 for r in runs if r["rows_committed"]
                < r["http"]["requests"] - r["http"]["errors"]["status"])
    met = rate >= 5_000 and failed == 0 and short == 0
    if not met or opts.profile:
        raw["inserts_profile"] = profiled(
            pid, "inserts", lambda: measure(pid, opts, query_url, "insert.lua",
                                            [api.token, "profile"]))
    return [
        Row("durable inserts over HTTP (64 conns)", rate, "rows/s", "apsw, fsync per row",
            median([r["apsw_fsync_per_row"] for r in runs]), ">= 5,000 rows/s", met,
            f"p50 {median([r['http']['latency_us']['p50'] for r in runs]) / 1000:.2f} ms, "
            f"p99 {median([r['http']['latency_us']['p99'] for r in runs]) / 1000:.2f} ms, "
            f"failed requests {failed}, runs with fewer rows than acknowledged {short}, "
            f"server CPU {median([r['http']['server_cpu_us_per_request'] for r in runs]):.0f} "
            "us per insert"),
        Row("group-commit batch (rows per fsync)", median([r["mean_batch"] for r in runs]),
            "rows", detail="shoal_group_commit_batch_size sum/count over each run"),
    ]


def delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def apsw_durable_inserts(path: Path, seconds: float, max_rows: int = 1_000_000) -> float:
    """Rows per second in-process, one transaction (and fsync) per row: no group commit."""
    conn = apsw.Connection(str(path))
    try:
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute("PRAGMA synchronous=FULL")
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


def measure_cold(api: Api, names: Sequence[str],
                 time_limit: float) -> tuple[list[float], list[float], list[float]]:
    """Time a first (cold) and a second (warm) point read on each closed database, in turn."""
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


def closed_among(api: Api, names: Sequence[str], want: int) -> list[str]:
    """Up to `want` of names that the node reports closed."""
    found: list[str] = []
    for name in names:
        if len(found) >= want:
            break
        if api.http.get(f"/v1/databases/{name}").json().get("open") is False:
            found.append(name)
    return found


READER_IDLE_TIMEOUT = 5.0  # the node's default reader_idle_timeout


def bench_many(opts: Options, root: Path, raw: dict[str, Any]) -> list[Row]:
    names = [f"db{i:05d}" for i in range(opts.databases)]
    picked = random.sample(names, opts.cold_samples + opts.open_count)
    cold, hot = picked[:opts.cold_samples], picked[opts.cold_samples:]
    say(f"many databases: create {opts.databases:,}; open {len(cold)} then {len(hot):,} "
        f"(max_open {opts.open_count:,}) so that the first {len(cold)} close again; "
        "then query those one by one")
    out: dict[str, Any] = {"databases": opts.databases}
    with running_node(root / "many", max_open=opts.open_count, idle_timeout=3600) as node:
        api = Api(node.url, node.admin_token)
        assert node.proc is not None
        pid = node.proc.pid
        rss = {"empty": rss_bytes(pid)}
        started = time.perf_counter()
        out["create_rate"] = asyncio.run(
            create_databases(node.url, api.token, names, opts.time_limit))
        time.sleep(1.0)
        rss["created"] = rss_bytes(pid)
        asyncio.run(open_databases(node.url, api.token, cold + hot, opts.time_limit))
        rss["open_at_once"] = rss_bytes(pid)  # before the sweeper gives quiet caches back
        time.sleep(1.0)
        rss["open"] = rss_bytes(pid)
        out["open"] = open_now = int(api.metrics().get("shoal_open_databases", -1))
        say(f"  set up in {time.perf_counter() - started:.1f} s "
            f"({out['create_rate']:,.0f} creates/s); RSS {rss['open'] / MB:.1f} MB with "
            f"{open_now} open")
        cold_ms, warm_ms, server_ms = measure_cold(api, cold, opts.time_limit)
        rss["after_cold_queries"] = rss_bytes(pid)
        # A quiet node: readers unused for reader_idle_timeout (default 5 s) are closed,
        # writers stay; measured once the sweeper had time to do it.
        time.sleep(READER_IDLE_TIMEOUT + 1.5)
        rss["quiet"] = rss_bytes(pid)
        quiet_open = int(api.metrics().get("shoal_open_databases", -1))
        cold_met = median(cold_ms) <= 5.0
        if not cold_met or opts.profile:
            again = closed_among(api, hot, min(100, len(cold)))
            out["cold_profile"] = profiled(
                pid, "cold-open", lambda: measure_cold(api, again, opts.time_limit))
        api.close()
    floors = [run_floor(root / f"floor-{i}", opts.open_count, connections, lookaside)
              for i, (connections, lookaside) in enumerate(((2, True), (2, False), (1, True)))]
    floor = floors[0]
    say("  SQLite floor per database opened in-process: " + "; ".join(
        f"{f['connections']} connection(s){'' if f['lookaside'] else ', lookaside off'} "
        f"{f['per_db_bytes'] / 1024:.0f} KB, {f['open_ms_p50']:.2f} ms" for f in floors))
    out |= {"rss_bytes": rss, "cold_ms": cold_ms, "warm_ms": warm_ms,
            "cold_server_ms": server_ms, "sqlite_floor": floors}
    raw["many"] = out
    scale = f"{opts.databases:,} dbs"
    per_open = (rss["open"] - rss["created"]) / max(1, open_now)
    return [
        Row(f"first query, closed db ({scale}) p50", median(cold_ms), "ms",
            "same db, open (p50)", median(warm_ms), "p50 <= 5 ms", cold_met,
            f"server-side p50 {median(server_ms):.2f} ms; {len(cold_ms)} samples; an "
            f"in-process open of writer + reader + query takes {floor['open_ms_p50']:.2f} ms"),
        Row(f"first query, closed db ({scale}) p99", percentile(cold_ms, 99), "ms",
            "same db, open (p99)", percentile(warm_ms, 99)),
        Row(f"RSS, {scale} created, {open_now:,} open", rss["open"] / MB, "MB",
            "same node, none open", rss["created"] / MB, "<= 300 MB", rss["open"] / MB <= 300,
            f"fresh node {rss['empty'] / MB:.1f} MB; {rss['open_at_once'] / MB:.1f} MB right "
            f"after the last read (this row: 1 s later); {rss['after_cold_queries'] / MB:.1f} MB "
            "after the cold queries"),
        Row(f"RSS, {quiet_open:,} open, quiet {READER_IDLE_TIMEOUT:g} s (readers trimmed)",
            rss["quiet"] / MB, "MB", "same node, none open", rss["created"] / MB, "<= 300 MB",
            rss["quiet"] / MB <= 300,
            "every open database keeps its writer; readers unused for reader_idle_timeout "
            "are closed by the sweeper"),
        Row("RSS per open database", per_open / 1024, "KB", "SQLite floor, 2 connections",
            floor["per_db_bytes"] / 1024,
            detail="floor: a fresh process opening a writer and a reader per database as a "
                   f"node does; with lookaside off {floors[1]['per_db_bytes'] / 1024:.0f} KB, "
                   f"with one connection {floors[2]['per_db_bytes'] / 1024:.0f} KB"),
    ]


def profile_notes(raw: dict[str, Any], top: int = 8) -> str:
    """Markdown: the top self-time frames of each py-spy profile taken in this run."""
    found = [("point reads", raw.get("point_reads", {}).get("profile")),
             ("inserts", raw.get("inserts_profile")),
             ("first query of closed databases", raw.get("many", {}).get("cold_profile"))]
    parts = []
    for title, prof in found:
        if not prof:
            continue
        lines = [f"  - {share * 100:.1f}% `{name}`" for name, share in prof["self"][:top]]
        parts.append(f"- {title} ({prof['samples']} active samples, "
                     f"`bench/results/{prof['collapsed']}`), top frames by self time:\n"
                     + "\n".join(lines))
    if not parts:
        return ""
    return ("py-spy profiles of extra, unmeasured runs (taken because a target was missed "
            "or --profile was given):\n\n" + "\n".join(parts))


# -- the run ---------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(argv)
    wrk.ensure_wrk()
    report = Report("core", " ".join(["python -m bench.core", *map(shlex.quote, argv)]),
                    asdict(opts))
    with tempfile.TemporaryDirectory(prefix="shoal-bench-", dir=opts.data_root) as tmp:
        root = Path(tmp)
        if "reads" in opts.only or "inserts" in opts.only:
            with running_node(root / "node") as node:
                assert node.proc is not None
                api = Api(node.url, node.admin_token)
                if "reads" in opts.only:
                    report.rows += bench_reads(opts, node.proc.pid, node.url, api, root,
                                               report.raw)
                if "inserts" in opts.only:
                    report.rows += bench_inserts(opts, node.proc.pid, node.url, api, root,
                                                 report.raw)
                api.close()
        if "many" in opts.only:
            report.rows += bench_many(opts, root, report.raw)
    title = "Shoal core benchmark" + (" (--quick: a smoke run, not the targets' scale)"
                                      if opts.quick else "")
    print_table(title, report.rows)
    path = report.write_json()
    print(f"bench: wrote {path}")
    if not opts.quick and set(opts.only) == set(PARTS):
        report.update_results_md(path, profile_notes(report.raw))
        print("bench: refreshed bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
