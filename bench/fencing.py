"""What the store fence costs: `python -m bench.fencing [--against REF] [--runs N]`.

Every segment became two store writes (the segment, then the conditional write of its
timeline's record that commits it) and a branch's first write after it opens one more
(the fence). This measures that cost against the same code without it, in one run:
Shoal at ``--against`` (default: the commit before fencing, bbe51d9), checked out with
``git worktree`` into a temporary folder and started with it first on PYTHONPATH,
next to Shoal as it is in this tree. Both on ``file://`` stores on the same disk, or
with ``--s3-latency MS`` on moto's S3 server behind a proxy that delays every store
request by MS milliseconds (a store across a network, as S3 is: 20-50 ms a request):

1. 64 writers, one single-row insert per request (wrk, bench/lua/insert.lua), with
   ``remote`` durability (every answer waits for the store: the commit point is on the
   path of every write) and with ``local`` durability (it is not: the answer comes at the
   local fsync); fresh nodes for every repetition, the two versions in rotating order;
2. one writer, ``remote`` durability, sequential inserts: the latency of one commit,
   where the extra round trip to the store shows whole;
3. the segments per second each node shipped during (1) (``shoal_log_segments_total``):
   before, one store write each; after, two (the segment and its commit).

Medians of ``--runs`` repetitions; ratios are after / before, paired by repetition
(geometric mean and a 90 % bootstrap interval). The table goes to bench/RESULTS.md
(section ``fencing``) unless ``--quick``; raw figures to bench/results/. Nothing here
asserts on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import wrk
from bench.core import say
from bench.harness import (
    Api,
    Load,
    Report,
    Row,
    median,
    node_settings,
    paired_ratio,
    run_load,
)
from tests.support.server import SSL_CONTEXT, ServerProcess

REPO = Path(__file__).resolve().parents[1]
BEFORE, AFTER = "before", "after"


@dataclass(frozen=True)
class Options:
    against: str
    runs: int
    seconds: float
    connections: int
    sequential: int  # inserts of the one-writer latency run
    quick: bool
    s3_latency: float  # ms; 0: file stores


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.fencing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", default="bbe51d9", help="the git ref to compare with")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seconds", type=float, default=10.0, help="wrk seconds per node")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--sequential", type=int, default=300, help="one-writer inserts")
    p.add_argument("--quick", action="store_true", help="2 runs of 4 s: a smoke run")
    p.add_argument("--s3-latency", type=float, default=0.0, metavar="MS",
                   help="nodes on moto's S3 behind a proxy delaying each request this long")
    a = p.parse_args(argv)
    if a.quick:
        return Options(a.against, 2, 4.0, a.connections, 100, True, a.s3_latency)
    return Options(a.against, a.runs, a.seconds, a.connections, a.sequential, False,
                   a.s3_latency)


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """The tree at ``ref`` (git worktree, detached), removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-against-"))
    tree = tmp / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet",
                    str(tree), ref], check=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                       check=False)
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class S3:
    """moto's S3 server and a proxy in front of it that delays every request."""

    moto: Any
    proxy: Any
    buckets: int = 0

    def settings(self) -> dict[str, str]:
        from tests.support.proxy import s3_settings

        self.buckets += 1
        bucket = f"fencing-bench-{self.buckets}"
        self.moto.client.create_bucket(Bucket=bucket)
        return s3_settings(self.proxy, bucket)


@contextlib.contextmanager
def s3_store(latency_ms: float) -> Iterator[S3 | None]:
    if not latency_ms:
        yield None
        return
    from tests.support.proxy import StoreProxy
    from tests.support.s3 import moto_server

    with moto_server() as moto, StoreProxy(moto.endpoint) as proxy:
        proxy.delay(seconds=latency_ms / 1000)
        yield S3(moto, proxy)


def start(root: Path, name: str, src: Path | None, durability: str,
          s3: S3 | None = None) -> ServerProcess:
    """A node of one version: ``src`` first on PYTHONPATH (None: this tree's Shoal)."""
    from tests.support.proxy import AWS_ENV

    env = {"PYTHONPATH": str(src)} if src is not None else {}
    store = s3.settings() if s3 is not None else {"store": (root / f"{name}-store").as_uri()}
    node = ServerProcess(root / name, node_settings(idle_timeout=3600, statement_timeout=300,
                                                    durability=durability, **store),
                         env={**env, **AWS_ENV})
    node.start()
    api = Api(node.url, node.admin_token)
    try:
        api.create_database("writes")
        api.query("writes", "CREATE TABLE w(k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    finally:
        api.close()
    return node


def segments_shipped(node: ServerProcess) -> float:
    text = httpx.get(node.url + "/metrics", timeout=10, verify=SSL_CONTEXT).text
    for line in text.splitlines():
        if line.startswith("shoal_log_segments_total "):
            return float(line.split()[1])
    return 0.0


def wrk_rep(opts: Options, node: ServerProcess, tag: str) -> tuple[Load, float]:
    """wrk inserts; the load and the store writes per second it caused."""
    assert node.proc is not None
    api = Api(node.url, node.admin_token)
    try:
        run_load(node.proc.pid, f"{node.url}/v1/databases/writes/query", "insert.lua",
                 [api.token, "warm"], connections=opts.connections, threads=2, seconds=2)
        before = segments_shipped(node)
        started = time.monotonic()
        load = run_load(node.proc.pid, f"{node.url}/v1/databases/writes/query", "insert.lua",
                        [api.token, tag], connections=opts.connections, threads=2,
                        seconds=opts.seconds)
        api.http.get("/v1/databases/writes/history")  # ships what is pending
        segs = segments_shipped(node) - before
    finally:
        api.close()
    return load, segs / (time.monotonic() - started)


def sequential(opts: Options, node: ServerProcess) -> list[float]:
    """Milliseconds of each of ``opts.sequential`` one-row inserts, one after another."""
    out = []
    with httpx.Client(base_url=node.url, verify=SSL_CONTEXT, timeout=60,
                      headers={"Authorization": f"Bearer {node.admin_token}"}) as http:
        for i in range(opts.sequential):
            body = {"statements": [{"sql": "INSERT INTO w VALUES (?, 'x')",
                                    "args": [f"seq-{i}-{time.time_ns()}"]}]}
            t0 = time.perf_counter()
            r = http.post("/v1/databases/writes/query", json=body)
            out.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"insert: {r.status_code} {r.text}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(argv)
    wrk.ensure_wrk()
    kind = "fencing" + (f"-s3-{opts.s3_latency:g}ms" if opts.s3_latency else "")
    report = Report(kind, " ".join(["python -m bench.fencing", *map(shlex.quote, argv)]),
                    asdict(opts))
    rates: dict[tuple[str, str], list[float]] = {}
    p99s: dict[tuple[str, str], list[float]] = {}
    puts: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    seq: dict[str, list[float]] = {BEFORE: [], AFTER: []}
    with checkout(opts.against) as tree, s3_store(opts.s3_latency) as s3, \
            tempfile.TemporaryDirectory(prefix="shoal-bench-fencing-") as tmp:
        srcs = {BEFORE: tree / "src", AFTER: None}
        for rep in range(opts.runs):
            order = [BEFORE, AFTER] if rep % 2 == 0 else [AFTER, BEFORE]
            for durability in ("remote", "local"):
                for version in order:
                    root = Path(tmp) / f"r{rep}-{durability}-{version}"
                    root.mkdir()
                    node = start(root, "node", srcs[version], durability, s3)
                    try:
                        load, per_s = wrk_rep(opts, node, f"r{rep}")
                        key = (version, durability)
                        rates.setdefault(key, []).append(load.result.rate)
                        p99s.setdefault(key, []).append(load.result.latency_us["p99"] / 1000)
                        puts.setdefault(key, []).append(per_s)
                        cpu.setdefault(key, []).append(load.cpu_us_per_request)
                        say(f"  rep {rep + 1} {durability} {version}: "
                            f"{load.result.rate:,.0f} rows/s, p99 "
                            f"{load.result.latency_us['p99'] / 1000:.2f} ms, "
                            f"{per_s:.1f} segments/s, CPU {load.cpu_us_per_request:.0f} "
                            f"us/row, failed {load.result.failed}")
                        if durability == "remote":
                            seq[version] += sequential(opts, node)
                    finally:
                        node.stop()
                        shutil.rmtree(root, ignore_errors=True)
    rows: list[Row] = []
    for durability in ("remote", "local"):
        after, before = rates[(AFTER, durability)], rates[(BEFORE, durability)]
        mean, lo, hi = paired_ratio(after, before)
        rows.append(Row(f"inserts, {durability} durability (64 writers)", median(after),
                        "rows/s", f"before fencing ({opts.against})", median(before),
                        detail=f"paired ratio {mean:.3f} ({lo:.3f}-{hi:.3f}); p99 "
                               f"{median(p99s[(AFTER, durability)]):.2f} ms vs "
                               f"{median(p99s[(BEFORE, durability)]):.2f} ms; server CPU "
                               f"{median(cpu[(AFTER, durability)]):.0f} vs "
                               f"{median(cpu[(BEFORE, durability)]):.0f} us/row; segments "
                               f"{median(puts[(AFTER, durability)]):.1f}/s (2 store writes "
                               f"each) vs {median(puts[(BEFORE, durability)]):.1f}/s (1 each)"))
    for pct, name in ((50, "p50"), (99, "p99")):
        a = statistics.quantiles(seq[AFTER], n=100)[pct - 1]
        b = statistics.quantiles(seq[BEFORE], n=100)[pct - 1]
        rows.append(Row(f"one writer, remote durability, commit latency {name}", a, "ms",
                        f"before fencing ({opts.against})", b,
                        detail=f"{len(seq[AFTER])} inserts each"))
    report.raw.update({"rates": {f"{v}/{d}": x for (v, d), x in rates.items()},
                       "p99_ms": {f"{v}/{d}": x for (v, d), x in p99s.items()},
                       "segments_per_s": {f"{v}/{d}": x for (v, d), x in puts.items()},
                       "cpu_us_per_row": {f"{v}/{d}": x for (v, d), x in cpu.items()},
                       "sequential_ms": seq})
    report.rows = rows
    report.publish("The cost of the store fence" + (" (--quick)" if opts.quick else ""),
                   opts.quick, NOTES)
    return 0


NOTES = """\
Ratios are after / before (the same code without the store fence, checked out at the
ref named), measured in the same run on fresh nodes in rotating order. With remote
durability every answer waits for the commit point, which is now two store writes (the
segment, then its timeline's record) instead of one; with local durability the answer
comes at the local fsync and the second write is off the request's path."""


if __name__ == "__main__":
    sys.exit(main())
