"""Hrana point reads against native point reads: `python -m bench.hrana [--quick]`.

One node on loopback (temporary data directory, access log off) serves the same
primary-key read two ways, 64 keep-alive connections each (wrk), alternating in one
run: the native ``POST /v1/databases/{db}/query`` and Hrana's
``POST /db/{db}/v2/pipeline`` with ``execute`` + ``close`` (what @libsql/client's
``execute()`` sends). The target is Hrana >= 0.9x native. Medians are printed,
written as JSON to bench/results/hrana-<timestamp>.json and (unless --quick) into
bench/RESULTS.md. Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.harness import (
    Api,
    Report,
    Row,
    median,
    print_table,
    run_load,
    running_node,
    seed_point_table,
)

ROWS = 10_000
TARGET = 0.9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 runs of 3 s (a smoke run)")
    parser.add_argument("--runs", type=int, default=None, help="alternating runs of each")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per wrk run")
    args = parser.parse_args(argv)
    runs = args.runs or (2 if args.quick else 5)
    seconds = args.seconds or (3 if args.quick else 10)
    native: list[float] = []
    hrana: list[float] = []
    native_cpu: list[float] = []
    hrana_cpu: list[float] = []
    raw: dict[str, list[object]] = {"native": [], "hrana": []}
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp, \
            running_node(Path(tmp) / "data") as node:
        api = Api(node.url, node.admin_token)
        seed_point_table(api, "bench", ROWS)
        check = api.http.post("/db/bench/v2/pipeline", json={"requests": [
            {"type": "execute", "stmt": {"sql": "SELECT * FROM t WHERE id = ?",
                                         "args": [{"type": "integer", "value": "7"}]}}]})
        if check.status_code != 200 or check.json()["results"][0]["type"] != "ok":
            raise RuntimeError(f"Hrana point read failed: {check.text}")
        api.close()
        assert node.proc is not None
        pid = node.proc.pid
        for i in range(runs):
            order = ("native", "hrana") if i % 2 == 0 else ("hrana", "native")
            for kind in order:
                url = node.url + ("/v1/databases/bench/query" if kind == "native"
                                  else "/db/bench/v2/pipeline")
                script = "point_read.lua" if kind == "native" else "hrana_point_read.lua"
                load = run_load(pid, url, script, [node.admin_token, str(ROWS)],
                                connections=64, threads=2, seconds=seconds)
                if load.result.failed:
                    raise RuntimeError(f"{kind}: {load.result.errors}")
                raw[kind].append(load.as_json())
                (native if kind == "native" else hrana).append(load.result.rate)
                (native_cpu if kind == "native" else hrana_cpu).append(
                    load.cpu_us_per_request)
                print(f"run {i + 1}/{runs} {kind}: {load.result.rate:,.0f} req/s, "
                      f"{load.cpu_us_per_request:.0f} us server CPU per request", flush=True)
    ratio = median(hrana) / median(native)
    rows = [
        Row("Hrana point reads, /v2/pipeline (64 conns)", median(hrana), "req/s",
            "native /v1/.../query", median(native), f">= {TARGET}x native",
            ratio >= TARGET),
        Row("server CPU per Hrana point read", median(hrana_cpu), "us",
            "per native point read", median(native_cpu)),
    ]
    print_table("Hrana against the native API (medians)", rows)
    command = "python -m bench.hrana" + (" --quick" if args.quick else "")
    report = Report("hrana", command, {"runs": runs, "seconds": seconds, "rows": ROWS},
                    rows, raw)
    path = report.write_json()
    if not args.quick:
        report.update_results_md(path)
    print(f"raw figures: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
