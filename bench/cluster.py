"""Several nodes on one store: `python -m bench.cluster [--quick] [--runs N]`.

Real `shoal serve` nodes on loopback sharing a ``file://`` store, each with its own data
directory and ``advertise_url``. In one run, next to each other:

1. **Forwarded against direct writes.** Two nodes; a database led by node A. 64
   connections of single-row inserts (wrk, bench/lua/insert.lua) sent to A (direct) and to
   B (B forwards each to A): throughput and latency, the ratio B / A. Then one writer's
   sequential inserts through each, the latency of one forwarded hop.
2. **Point reads through the leader and through the other node** (bench/lua/point_read.lua):
   the other node answers from its replica of the database (engine/replica.py).
3. **One node against two** for point reads of one database: 64 connections to a single
   node, then 32 to each of two (the second answers from its replica), in one run; the
   ratio of the sums.
   And the same with ``shoal serve --workers 2`` against a single node, one port each
   (``--workers`` puts two nodes behind one port; the kernel spreads the connections).
4. **Replica lag** under about ``--commits`` (1,000) commits a second on the leader: each
   commit's time to its apply on the other node (``shoal_replica_lag_seconds``, both
   nodes on this machine's clock), local durability (``replica_sync_interval``) and remote;
   paced Python writers, then wrk's inserts on ``--lag-connections`` (32) connections, as
   fast as the leader acknowledges them. ``--lag-only`` runs this part alone.
5. **Failover.** Three nodes; ``kill -9`` of the leader of a database; the time from the
   kill to the first write acknowledged through another node (a write every 20 ms), with
   the nodes' ``lease_ttl`` (``--ttl``, default 15 s as shipped).

Medians of ``--runs`` repetitions; JSON to bench/results/cluster-<time>.json. The table is
printed; bench/RESULTS.md gets it by hand. Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench import wrk
from bench.core import say
from bench.harness import (
    Api,
    Load,
    paced_writes,
    parse_metrics,
    run_load,
    save_json,
    seed_point_table,
)
from shoal.cluster import leader_of
from tests.support.server import SSL_CONTEXT, ServerProcess, free_port

ADMIN = "bench-cluster-admin"
ROWS = 10_000


def node(root: Path, name: str, store: str, ttl: float, **settings: Any) -> ServerProcess:
    port = free_port()
    return ServerProcess(root / name, {
        "store": store, "admin_token": ADMIN, "lease_ttl": ttl, "lease_wait": 30,
        "advertise_url": f"http://127.0.0.1:{port}", "durability": "local"} | settings,
        port=port).start(timeout=60)


def status(n: ServerProcess) -> dict[str, Any]:
    with httpx.Client(base_url=n.url, verify=SSL_CONTEXT, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        out: dict[str, Any] = http.get("/v1/cluster").json()
    return out


def wait_members(nodes: Sequence[ServerProcess], count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while any(len(status(n)["members"]) != count for n in nodes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the nodes did not see {count} members")
        time.sleep(0.2)


def led_by(nodes: Sequence[ServerProcess], index: int, prefix: str) -> str:
    """A database name the node ``index`` leads among ``nodes``."""
    ids = [status(n)["node"] for n in nodes]
    return next(f"{prefix}{i}" for i in range(10_000)
                if leader_of(f"{prefix}{i}", ids) == ids[index])


@contextlib.contextmanager
def cluster(count: int, ttl: float, **settings: Any) -> Iterator[list[ServerProcess]]:
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        root = Path(tmp)
        store = (root / "store").as_uri()
        nodes = [node(root, f"n{i}", store, ttl, **settings) for i in range(count)]
        try:
            wait_members(nodes, count)
            yield nodes
        finally:
            for n in nodes:
                n.stop()


def loads(opts: argparse.Namespace) -> dict[str, Any]:
    """(1) and (2): each load through the leader and through the other node."""
    out: dict[str, Any] = {}
    with cluster(2, 15.0) as nodes:
        leader, other = nodes
        writes = led_by(nodes, 0, "w")
        reads = led_by(nodes, 0, "r")
        api = Api(leader.url, ADMIN)
        try:
            api.create_database(writes)
            api.query(writes, "CREATE TABLE w(k TEXT PRIMARY KEY, v TEXT)")
            seed_point_table(api, reads, ROWS)
        finally:
            api.close()
        for kind, db, script, args in (
                ("write", writes, "insert.lua", [ADMIN]),
                ("read", reads, "point_read.lua", [ADMIN, str(ROWS)])):
            for rep in range(opts.runs):
                for name, target in (("direct", leader), ("forwarded", other)):
                    assert target.proc is not None and leader.proc is not None
                    extra = [f"{kind}-{name}-{rep}-{time.time_ns()}"] if kind == "write" else []
                    load = run_load(target.proc.pid, f"{target.url}/v1/databases/{db}/query",
                                    script, args + extra, connections=64, threads=2,
                                    seconds=opts.seconds,
                                    also=[leader.proc.pid] if target is other else [])
                    out.setdefault(f"{kind}_{name}", []).append(_load(load))
        out["sequential_write_ms"] = {name: _sequential(target, writes, opts.sequential)
                                      for name, target in (("direct", leader),
                                                           ("forwarded", other))}
    return out


def replica_ready(n: ServerProcess, db: str, timeout: float = 60) -> None:
    """Read through ``n`` until its replica of ``db`` answers (it hydrates meanwhile)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=n.url, verify=SSL_CONTEXT, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        while not any(r["database"] == db for r in status(n)["replicas"]) or \
                _served(n) == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica of {db} on {n.url}")
            http.post(f"/v1/databases/{db}/query",
                      json={"statements": ["SELECT 1"]}).raise_for_status()
            time.sleep(0.05)


def _served(n: ServerProcess) -> float:
    text = httpx.get(f"{n.url}/metrics", verify=SSL_CONTEXT).text
    return parse_metrics(text).get("shoal_cluster_served_by_replica_total", 0.0)


def scaling(opts: argparse.Namespace) -> dict[str, Any]:
    """(3): point reads of one database through one node, then through two."""
    out: dict[str, Any] = {"one": [], "two": []}
    with cluster(2, 15.0) as nodes:
        leader, other = nodes
        db = led_by(nodes, 0, "s")
        api = Api(leader.url, ADMIN)
        try:
            seed_point_table(api, db, ROWS)
        finally:
            api.close()
        replica_ready(other, db)
        for _ in range(opts.runs):
            assert leader.proc is not None and other.proc is not None
            one = run_load(leader.proc.pid, f"{leader.url}/v1/databases/{db}/query",
                           "point_read.lua", [ADMIN, str(ROWS)], connections=64, threads=2,
                           seconds=opts.seconds)
            out["one"].append(round(one.result.rate, 1))
            with ThreadPoolExecutor(2) as pool:
                both = list(pool.map(lambda n: run_load(
                    n.proc.pid, f"{n.url}/v1/databases/{db}/query", "point_read.lua",
                    [ADMIN, str(ROWS)], connections=32, threads=1, seconds=opts.seconds),
                    (leader, other)))
            out["two"].append(round(sum(b.result.rate for b in both), 1))
    return out


def workers_scaling(opts: argparse.Namespace) -> dict[str, Any]:
    """(3), one port: a single node against ``--workers 2``, 64 connections each."""
    out: dict[str, Any] = {"one": [], "two": []}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        servers = {
            "one": ServerProcess(Path(tmp) / "one", {"admin_token": ADMIN}),
            "two": ServerProcess(Path(tmp) / "two", {"admin_token": ADMIN, "workers": 2,
                                                      "lease_ttl": 15.0}),
        }
        try:
            for server in servers.values():
                server.start(timeout=60)
                api = Api(server.url, ADMIN)
                try:
                    seed_point_table(api, "p", ROWS)
                finally:
                    api.close()
            # the worker that does not lead "p" hydrates its replica on the first reads
            assert servers["two"].proc is not None
            run_load(servers["two"].proc.pid, f"{servers['two'].url}/v1/databases/p/query",
                     "point_read.lua", [ADMIN, str(ROWS)], connections=64, threads=2,
                     seconds=3)
            for _ in range(opts.runs):
                for name, server in servers.items():
                    assert server.proc is not None
                    load = run_load(server.proc.pid, f"{server.url}/v1/databases/p/query",
                                    "point_read.lua", [ADMIN, str(ROWS)], connections=64,
                                    threads=2, seconds=opts.seconds)
                    out[name].append(round(load.result.rate, 1))
        finally:
            for server in servers.values():
                server.stop()
    return out


def lag(opts: argparse.Namespace, durability: str, load: str = "paced") -> dict[str, float]:
    """(4): the replica's lag behind ``opts.commits`` commits a second on the leader (as
    many as the writers manage, if fewer), or behind wrk's inserts on
    ``opts.lag_connections`` connections (``load="wrk"``: as many as the leader takes):
    percentiles of its histogram."""
    with cluster(2, 15.0, durability=durability) as nodes:
        leader, other = nodes
        db = led_by(nodes, 0, "l")
        with httpx.Client(base_url=leader.url, verify=SSL_CONTEXT, timeout=30,
                          headers={"Authorization": f"Bearer {ADMIN}"}) as http:
            http.post("/v1/databases", json={"name": db}).raise_for_status()
            http.post(f"/v1/databases/{db}/query", json={"statements": [
                "CREATE TABLE w(k TEXT PRIMARY KEY, v TEXT)"]}).raise_for_status()
        replica_ready(other, db)
        before = _histogram(other)
        if load == "wrk":
            assert leader.proc is not None
            got = run_load(leader.proc.pid, f"{leader.url}/v1/databases/{db}/query",
                           "insert.lua", [ADMIN, f"lag-{time.time_ns()}"],
                           connections=opts.lag_connections,
                           threads=1, seconds=opts.seconds)
            time.sleep(1.0)
            after = _histogram(other)
            return _lag_figures(before, after, got.result.rate)
        # remote durability: each waits for the store (~20 ms a commit), so 32 writers
        rate = paced_writes(leader.url, ADMIN, db, opts.commits, opts.seconds, writers=32)
        time.sleep(1.0)
        after = _histogram(other)
    return _lag_figures(before, after, rate)


def _lag_figures(before: dict[str, float], after: dict[str, float],
                 rate: float) -> dict[str, float]:
    """The lag histogram's growth between two readings, as percentiles."""
    counts = {le: after[le] - before.get(le, 0.0) for le in after}
    return {"commits_per_s": round(rate, 1), "p50_ms": _quantile(counts, 0.5),
            "p99_ms": _quantile(counts, 0.99), "applies": counts.get("+Inf", 0.0)}


def _histogram(n: ServerProcess) -> dict[str, float]:
    """shoal_replica_lag_seconds' cumulative buckets (le -> count)."""
    text = httpx.get(f"{n.url}/metrics", verify=SSL_CONTEXT).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("shoal_replica_lag_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


def _quantile(buckets: dict[str, float], q: float) -> float:
    """The upper bound (ms) of the bucket holding quantile q (a histogram's resolution)."""
    total = buckets.get("+Inf", 0.0)
    if not total:
        return float("nan")
    for le, count in sorted(((k, v) for k, v in buckets.items() if k != "+Inf"),
                            key=lambda kv: float(kv[0])):
        if count >= q * total:
            return float(le) * 1000
    return float("inf")


def _load(load: Load) -> dict[str, Any]:
    return load.as_json() | {"rate": round(load.result.rate, 1)}


def _sequential(target: ServerProcess, db: str, count: int) -> dict[str, float]:
    times = []
    with httpx.Client(base_url=target.url, verify=SSL_CONTEXT, timeout=60,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        for i in range(count):
            body = {"statements": [{"sql": "INSERT INTO w VALUES (?, 'x')",
                                    "args": [f"seq-{i}-{time.time_ns()}"]}]}
            t0 = time.perf_counter()
            r = http.post(f"/v1/databases/{db}/query", json=body)
            times.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"insert: {r.status_code} {r.text}")
    times.sort()
    return {"p50": round(statistics.median(times), 3),
            "p99": round(times[int(len(times) * 0.99) - 1], 3)}


def failover(ttl: float) -> float:
    """(3): seconds from kill -9 of a database's leader to a write acknowledged through
    another node (remote durability: with local, the killed leader's last second of
    commits, the table included, may never have reached the store)."""
    with cluster(3, ttl, durability="remote") as nodes:
        db = led_by(nodes, 2, "f")
        with httpx.Client(base_url=nodes[0].url, verify=SSL_CONTEXT, timeout=60,
                          headers={"Authorization": f"Bearer {ADMIN}"}) as http:
            http.post("/v1/databases", json={"name": db}).raise_for_status()
            http.post(f"/v1/databases/{db}/query", json={"statements": [
                "CREATE TABLE w(k TEXT PRIMARY KEY, v TEXT)"]}).raise_for_status()
            nodes[2].kill()
            killed = time.monotonic()
            i = 0
            while time.monotonic() - killed < ttl * 4 + 60:
                i += 1
                body = {"statements": [{"sql": "INSERT INTO w VALUES (?, 'x')",
                                        "args": [f"after-{i}"]}]}
                if http.post(f"/v1/databases/{db}/query", json=body).status_code == 200:
                    return time.monotonic() - killed
                time.sleep(0.02)
    raise RuntimeError("no write was acknowledged after the leader was killed")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 run of 2 s, 100 sequential")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--sequential", type=int, default=500)
    p.add_argument("--ttl", type=float, default=15.0, help="lease_ttl for the failover")
    p.add_argument("--commits", type=int, default=1000, help="commits/s for the lag")
    p.add_argument("--lag-connections", type=int, default=32,
                   help="wrk's connections for the lag's unpaced load")
    p.add_argument("--replicas-only", action="store_true", help="only (3) and (4)")
    p.add_argument("--lag-only", action="store_true", help="only (4)")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.runs, opts.seconds, opts.sequential = 1, 2.0, 100
    wrk.ensure_wrk()
    result: dict[str, Any] = {}
    opts.replicas_only |= opts.lag_only
    if not opts.replicas_only:
        say("forwarded and direct loads (2 nodes)")
        result = loads(opts)
    if not opts.lag_only:
        say("point reads: one node, then two")
        result["scaling"] = scaling(opts)
        say("point reads: one node, then --workers 2")
        result["workers"] = workers_scaling(opts)
    say(f"replica lag at {opts.commits} commits/s")
    result["lag"] = {f"{d}, {load}": lag(opts, d, load) for load in ("paced", "wrk")
                     for d in ("local", "remote")}
    if not opts.replicas_only:
        say(f"failover (3 nodes, lease_ttl {opts.ttl:g} s)")
        result["failover_s"] = [round(failover(opts.ttl), 3)
                                for _ in range(min(opts.runs, 2))]
    rows = []
    for kind in ("write", "read") if not opts.replicas_only else ():
        direct = statistics.median(r["rate"] for r in result[f"{kind}_direct"])
        fwd = statistics.median(r["rate"] for r in result[f"{kind}_forwarded"])
        p99d = statistics.median(r["latency_us"]["p99"] for r in result[f"{kind}_direct"])
        p99f = statistics.median(r["latency_us"]["p99"] for r in result[f"{kind}_forwarded"])
        rows.append(f"| {kind}s, 64 conns | {direct:,.0f}/s | {fwd:,.0f}/s | "
                    f"{fwd / direct:.2f}x | {p99d / 1000:.1f} ms | {p99f / 1000:.1f} ms |")
    if not opts.replicas_only:
        seq = result["sequential_write_ms"]
        rows.append(f"| one writer, p50 | {seq['direct']['p50']:.2f} ms | "
                    f"{seq['forwarded']['p50']:.2f} ms | "
                    f"{seq['direct']['p50'] / seq['forwarded']['p50']:.2f}x | "
                    f"{seq['direct']['p99']:.2f} ms | {seq['forwarded']['p99']:.2f} ms |")
        print("| load | direct (leader) | forwarded | ratio | p99 direct | p99 forwarded |")
        print("|---|---|---|---|---|---|")
        print("\n".join(rows))
    if not opts.lag_only:
        one, two = (statistics.median(result["scaling"][k]) for k in ("one", "two"))
        print(f"\npoint reads of one database: one node {one:,.0f}/s, two nodes "
              f"{two:,.0f}/s ({two / one:.2f}x)")
        one, two = (statistics.median(result["workers"][k]) for k in ("one", "two"))
        print(f"point reads, one port: a single node {one:,.0f}/s, --workers 2 "
              f"{two:,.0f}/s ({two / one:.2f}x)")
    for key, got in result["lag"].items():
        durability, load = key.split(", ")
        print(f"replica lag, {durability} durability, {load} load, "
              f"{got['commits_per_s']:,.0f} commits/s: "
              f"p50 <= {got['p50_ms']:g} ms, p99 <= {got['p99_ms']:g} ms "
              f"({got['applies']:.0f} applies)")
    if "failover_s" in result:
        print(f"\nfailover (kill -9 of the leader to the first acknowledged write through "
              f"another node, lease_ttl {opts.ttl:g} s): "
              + ", ".join(f"{s:.2f} s" for s in result["failover_s"]))
    save_json("cluster", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
