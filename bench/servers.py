"""uvicorn or granian for Shoal's App: `python -m bench.servers [--quick]`.

The same point-read workload as bench.core (wrk, 64 keep-alive connections, a
random primary key per request over a 10,000-row table) against the same data
directory served two ways:

- uvicorn: `shoal serve` as shipped (uvloop, httptools);
- granian: `granian --interface asgi --factory bench.servers:make_app` (one worker,
  uvloop, HTTP/1), the same App built from the same SHOAL_* settings; granian's
  ASGI interface runs the lifespan, so the engine starts and stops as under uvicorn.

Runs alternate between the two servers (restarted each time, warmed up first) and
the medians are compared. Results go to bench/results/servers-<timestamp>.json and
(unless --quick) to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from bench import wrk
from bench.harness import (
    BENCH_DIR,
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
from tests.support.server import ServerProcess, free_port


def make_app() -> Any:
    """granian's factory: Shoal's App from SHOAL_* settings (lifespan starts the engine)."""
    from shoal.server.app import App
    from shoal.settings import load

    return App(load())


class Node(Protocol):
    proc: subprocess.Popen[bytes] | None

    @property
    def url(self) -> str: ...

    def start(self, timeout: float = 20.0) -> Any: ...

    def stop(self) -> None: ...


@dataclass
class GranianProcess:
    """Shoal's App under granian, with the same settings as a ServerProcess would pass."""

    data_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> GranianProcess:
        self.port = self.port or free_port()
        env = dict(os.environ)
        env.update({f"SHOAL_{k.upper()}": str(v) for k, v in self.settings.items()})
        env["SHOAL_DATA"] = str(self.data_dir)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(BENCH_DIR.parent), *filter(None, [env.get("PYTHONPATH")])])
        granian = Path(sys.executable).parent / "granian"
        log = open(self.data_dir.parent / "granian.log", "ab")  # noqa: SIM115 - child owns it
        self.proc = subprocess.Popen(
            [str(granian), "--interface", "asgi", "--factory", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1", "--loop", "uvloop", "--http", "1",
             "--no-ws", "--log-level", "warning", "--backlog", "4096",
             "bench.servers:make_app"],
            stdout=log, stderr=log, env=env, cwd=BENCH_DIR.parent)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("granian exited; see granian.log in the data root")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("granian did not become healthy")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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


def one_round(node: Node, opts: Options, token: str) -> tuple[Load, Load]:
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
        nodes: dict[str, Node] = {"uvicorn": ServerProcess(data, settings),
                                  "granian": GranianProcess(data, settings)}
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
