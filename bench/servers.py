"""uvicorn or granian for Shoal's App: `python -m bench.servers [--quick]`.

The same point-read workload as bench.core (wrk, 64 keep-alive connections, a
random primary key per request over a 10,000-row table) against the same data
directory served two ways:

- uvicorn: `shoal serve` as shipped (`http_server = "uvicorn"`: uvloop, httptools);
- granian: `shoal serve` with `http_server = "granian"` (granian's embedded server,
  in the node's one process, I/O on a Rust thread): what a user gets by that setting.

Runs alternate between the two servers (restarted each time, warmed up first) and
the medians are compared. Results go to bench/results/servers-<timestamp>.json and
(unless --quick) to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import wrk
from bench.harness import (
    Api,
    Load,
    Report,
    Row,
    median,
    node_settings,
    print_table,
    run_load,
    seed_point_table,
)
from tests.support.server import ServerProcess


@dataclass(frozen=True)
class Options:
    quick: bool
    runs: int
    seconds: int
    connections: int
    wrk_threads: int
    rows: int
    data_root: str | None


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 s wrk runs; RESULTS.md is not touched")
    p.add_argument("--runs", type=int, default=3, help="runs per server (median)")
    p.add_argument("--seconds", type=int, help="seconds per wrk run (default 10, quick 3)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--data-root", help="directory for the temporary data directory")
    args = p.parse_args(argv)
    return Options(quick=bool(args.quick), runs=max(1, args.runs),
                   seconds=args.seconds or (3 if args.quick else 10),
                   connections=args.connections, wrk_threads=args.wrk_threads,
                   rows=args.rows, data_root=args.data_root)


def one_round(node: ServerProcess, opts: Options, token: str) -> tuple[Load, Load]:
    """Start node, warm it up, measure point reads and GET /health, stop it."""
    node.start()
    try:
        assert node.proc is not None
        pid = node.proc.pid
        query_url = f"{node.url}/v1/databases/reads/query"
        args = [token, str(opts.rows)]
        common: dict[str, Any] = {"connections": opts.connections, "threads": opts.wrk_threads}
        run_load(pid, query_url, "point_read.lua", args, seconds=2, **common)
        reads = run_load(pid, query_url, "point_read.lua", args, seconds=opts.seconds, **common)
        health = run_load(pid, node.url + "/health", "get.lua", [],
                          seconds=max(1, opts.seconds // 2), **common)
        return reads, health
    finally:
        node.stop()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(argv)
    wrk.ensure_wrk()
    report = Report("servers", " ".join(["python -m bench.servers", *map(shlex.quote, argv)]),
                    opts.__dict__.copy())
    results: dict[str, dict[str, list[Load]]] = {"uvicorn": {"reads": [], "health": []},
                                                 "granian": {"reads": [], "health": []}}
    with tempfile.TemporaryDirectory(prefix="shoal-servers-", dir=opts.data_root) as tmp:
        data = Path(tmp) / "data"
        settings = node_settings()
        token = str(settings["admin_token"])
        nodes = {name: ServerProcess(data, settings | {"http_server": name})
                 for name in ("uvicorn", "granian")}
        seeding = nodes["uvicorn"].start()
        try:
            api = Api(seeding.url, token)
            seed_point_table(api, "reads", opts.rows)
            api.close()
        finally:
            seeding.stop()
        print(f"bench: {opts.runs} rounds of {opts.seconds} s point reads + "
              f"{max(1, opts.seconds // 2)} s GET /health per server, alternating",
              file=sys.stderr, flush=True)
        for i in range(opts.runs):
            order = ["uvicorn", "granian"] if i % 2 == 0 else ["granian", "uvicorn"]
            for name in order:
                reads, health = one_round(nodes[name], opts, token)
                results[name]["reads"].append(reads)
                results[name]["health"].append(health)
                print(f"bench:   round {i + 1} {name}: reads {reads.result.rate:,.0f}/s "
                      f"(failed {reads.result.failed}, {reads.cpu_us_per_request:.0f} us CPU "
                      f"each, busy {reads.busy:.0%}), /health {health.result.rate:,.0f}/s",
                      file=sys.stderr, flush=True)
    report.raw = {name: {kind: [load.as_json() for load in loads]
                         for kind, loads in by_kind.items()}
                  for name, by_kind in results.items()}

    def med(name: str, kind: str, attr: str = "rate") -> float:
        loads = results[name][kind]
        return median([getattr(x.result, attr) if attr == "rate" else getattr(x, attr)
                       for x in loads])

    def failed(name: str) -> int:
        return sum(x.result.failed for kind in results[name].values() for x in kind)

    report.rows = [
        Row("point reads, uvicorn (shoal serve)", med("uvicorn", "reads"), "req/s",
            detail=f"failed requests {failed('uvicorn')}"),
        Row("point reads, granian", med("granian", "reads"), "req/s", "uvicorn",
            med("uvicorn", "reads"), detail=f"failed requests {failed('granian')}"),
        Row("GET /health, granian", med("granian", "health"), "req/s", "uvicorn",
            med("uvicorn", "health")),
        Row("server CPU per point read, granian", med("granian", "reads", "cpu_us_per_request"),
            "us", "uvicorn", med("uvicorn", "reads", "cpu_us_per_request"),
            detail="user + system CPU of the server processes divided by requests served"),
    ]
    print_table("uvicorn vs granian, Shoal point reads" + (" (--quick)" if opts.quick else ""),
                report.rows)
    path = report.write_json()
    print(f"bench: wrote {path}")
    if not opts.quick:
        report.update_results_md(path)
        print("bench: refreshed bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
