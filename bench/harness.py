"""What the benchmarks share: a node to measure, its API, statistics and the results files."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import re
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apsw
import httpx

from bench import wrk
from tests.support.server import SSL_CONTEXT, ServerProcess

BENCH_DIR = Path(__file__).parent
RESULTS_DIR = BENCH_DIR / "results"
RESULTS_MD = BENCH_DIR / "RESULTS.md"

POINT_READ = "SELECT * FROM t WHERE id = ?"
POINT_SCHEMA = "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT, score REAL)"
POINT_ROWS = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
    "INSERT INTO t(id, name, email, score) "
    "SELECT i, 'user ' || i, 'user' || i || '@example.com', i * 0.5 FROM n"
)


# -- a node under test --------------------------------------------------------------------
def node_settings(**overrides: Any) -> dict[str, Any]:
    """Settings for a measured node: known admin token, no access log, quiet logs."""
    return {"admin_token": "bench-" + secrets.token_hex(16), "access_log": "false",
            "log_level": "warning"} | overrides


@contextmanager
def running_node(data_dir: Path, **settings: Any) -> Iterator[ServerProcess]:
    """A `shoal serve` subprocess on a free loopback port, stopped on exit."""
    node = ServerProcess(data_dir, node_settings(**settings))
    node.start()
    try:
        yield node
    finally:
        node.stop()


class Api:
    """A thin synchronous client of the native API (keep-alive)."""

    def __init__(self, url: str, token: str):
        self.url = url
        self.token = token
        self.http = httpx.Client(base_url=url, timeout=60,
                                 headers={"Authorization": f"Bearer {token}"})

    def close(self) -> None:
        self.http.close()

    def create_database(self, name: str) -> None:
        response = self.http.post("/v1/databases", json={"name": name})
        if response.status_code != 201:
            raise RuntimeError(f"create {name}: {response.status_code} {response.text}")

    def query(self, db: str, *statements: str | dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(f"/v1/databases/{db}/query",
                                  json={"statements": list(statements)})
        if response.status_code != 200:
            raise RuntimeError(f"query {db}: {response.status_code} {response.text}")
        out: dict[str, Any] = response.json()
        return out

    def metrics(self) -> dict[str, float]:
        return parse_metrics(self.http.get("/metrics").text)


def seed_point_table(api: Api, db: str, rows: int) -> None:
    """Create db with table t holding `rows` rows (ids 1..rows) in one request."""
    api.create_database(db)
    api.query(db, POINT_SCHEMA, {"sql": POINT_ROWS, "args": [rows]})
    got = api.query(db, {"sql": POINT_READ, "args": [rows]})["results"][0]["rows"]
    if not got or got[0][0] != rows:
        raise RuntimeError(f"seeding {db} failed: {got}")


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format to {"name{labels}": value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match:
            out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process and its live descendants (granian forks)."""
    total = 0.0
    for process in descendants(pid):
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def descendants(pid: int) -> list[int]:
    """pid and every live process it started (granian forks, say)."""
    out, pending = [], [pid]
    while pending:
        current = pending.pop()
        out.append(current)
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return out


def pin(pid: int, cpus: set[int]) -> None:
    """Bind every thread of pid and of its descendants to cpus (threads and processes they
    start later inherit it): a setup measured with less scheduling noise."""
    for process in descendants(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for task in Path(f"/proc/{process}/task").iterdir():
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(int(task.name), cpus)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# -- load ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Load:
    """One wrk run and the server CPU time (user + system, with children) it cost."""

    result: wrk.WrkResult
    cpu_s: float
    wall_s: float

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / max(1, self.result.requests) * 1e6

    @property
    def busy(self) -> float:
        """Server CPU seconds per second: 1.0 is one core fully used."""
        return self.cpu_s / self.wall_s

    def as_json(self) -> dict[str, Any]:
        return self.result.as_json() | {
            "server_cpu_s": round(self.cpu_s, 3),
            "server_cpu_us_per_request": round(self.cpu_us_per_request, 1),
            "server_cpu_utilisation": round(self.busy, 3)}


def run_load(pid: int, url: str, script: str, args: list[str], *, connections: int,
             threads: int, seconds: float, headers: Sequence[str] = (),
             also: Sequence[int] = ()) -> Load:
    """wrk against url, with the CPU time the server process `pid` (and the processes
    `also`, e.g. a replicator working beside it) spent meanwhile."""
    pids = (pid, *also)
    cpu0, wall0 = sum(map(cpu_seconds, pids)), time.perf_counter()
    result = wrk.run(url, script, args, connections=connections, threads=threads,
                     seconds=seconds, headers=headers)
    return Load(result, sum(map(cpu_seconds, pids)) - cpu0, time.perf_counter() - wall0)


# -- in-process ceilings --------------------------------------------------------------------
def apsw_point_reads(path: Path, rows: int, seconds: float, max_ops: int = 10_000_000) -> float:
    """Point reads per second run in-process with apsw on one thread (the ceiling)."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        ids = [random.randint(1, rows) for _ in range(4096)]
        done = 0
        started = time.perf_counter()
        deadline = started + seconds
        while done < max_ops and time.perf_counter() < deadline:
            for key in ids[:1024]:
                conn.execute(POINT_READ, (key,)).fetchall()
            done += 1024
            random.shuffle(ids)
        return done / (time.perf_counter() - started)
    finally:
        conn.close()


# -- statistics -----------------------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(a: Sequence[float], b: Sequence[float], rounds: int = 2000,
                 seed: int = 1) -> tuple[float, float, float]:
    """Geometric mean of a[i] / b[i] over repetitions measured side by side, and a 90 %
    bootstrap interval: how far a noisy machine lets a ratio of two setups be trusted."""
    logs = [math.log(x / y) for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(logs, k=len(logs))) for _ in range(rounds))
    return (math.exp(statistics.fmean(logs)), math.exp(means[int(0.05 * rounds)]),
            math.exp(means[int(0.95 * rounds) - 1]))


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


# -- the report -------------------------------------------------------------------------------
@dataclass
class Row:
    """One headline line: a figure, its baseline from the same run, and the target."""

    name: str
    value: float
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    target: str = ""
    met: bool | None = None
    detail: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "unit": self.unit,
                "baseline_name": self.baseline_name, "baseline": self.baseline,
                "ratio": self.ratio, "target": self.target, "met": self.met,
                "detail": self.detail}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        """The Row as_json() wrote (its `ratio` is derived)."""
        return cls(data["name"], data["value"], data["unit"], data.get("baseline_name", ""),
                   data.get("baseline"), data.get("target", ""), data.get("met"),
                   data.get("detail", ""))


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "MB":
        return f"{value:,.1f} MB"
    if unit == "ms":
        return f"{value:,.2f} ms"
    if abs(value) >= 100:
        return f"{value:,.0f}{(' ' + unit) if unit else ''}"
    return f"{value:,.2f}{(' ' + unit) if unit else ''}"


HEADERS = ("benchmark", "median", "baseline (same run)", "ratio", "target", "met")


def table_cells(row: Row) -> tuple[str, ...]:
    ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
    met = "-" if row.met is None else ("yes" if row.met else "NO")
    baseline = f"{fmt(row.baseline, row.unit)} ({row.baseline_name})" if row.baseline_name else "-"
    return (row.name, fmt(row.value, row.unit), baseline, ratio, row.target or "-", met)


def print_table(title: str, rows: Sequence[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for header in HEADERS:
        table.add_column(header, justify="left" if header == "benchmark" else "right")
    for row in rows:
        table.add_row(*table_cells(row))
    console = Console()
    console.width = max(console.width, 150)
    console.print(table)
    for row in rows:
        if row.detail:
            print(f"  {row.name}: {row.detail}")


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(HEADERS) - 1)) + "|"]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in rows]
    details = [f"- {row.name}: {row.detail}" for row in rows if row.detail]
    return "\n".join(lines + (["", *details] if details else []))


def source_version() -> str:
    """The checked-out commit, with "+dirty" when src/ has uncommitted changes (read-only)."""
    root = BENCH_DIR.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                                capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=root,
                               text=True, capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (commit or "unknown") + ("+dirty" if dirty else "")


@dataclass
class Report:
    """Everything one bench run produced; written as JSON and summarised in RESULTS.md."""

    kind: str
    command: str
    options: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def machine(self) -> dict[str, Any]:
        return {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                "platform": platform.platform(), "apsw": apsw.apsw_version(),
                "sqlite": apsw.sqlite_lib_version(), "load_avg_at_end": os.getloadavg(),
                "commit": source_version()}

    def write_json(self) -> Path:
        RESULTS_DIR.mkdir(exist_ok=True)
        stamp = self.started.strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"{self.kind}-{stamp}.json"
        path.write_text(json.dumps({
            "kind": self.kind, "command": self.command, "started": self.started.isoformat(),
            "machine": self.machine(), "options": self.options,
            "rows": [r.as_json() for r in self.rows], "raw": self.raw,
        }, indent=2) + "\n")
        return path

    def publish(self, title: str, quick: bool, notes: str = "") -> Path:
        """Print the table, write the JSON, and (unless a --quick smoke run) refresh this
        kind's section of RESULTS.md; the JSON's path."""
        print_table(title, self.rows)
        path = self.write_json()
        print(f"bench: wrote {path}")
        if not quick:
            self.update_results_md(path, notes)
            print("bench: refreshed bench/RESULTS.md")
        return path

    def update_results_md(self, json_path: Path, notes: str = "") -> None:
        """Replace this kind's section of RESULTS.md; everything else in the file is kept."""
        begin, end = f"<!-- {self.kind}:begin -->", f"<!-- {self.kind}:end -->"
        m = self.machine()
        section = "\n".join([
            begin,
            f"Produced by `{self.command}` on {self.started:%Y-%m-%d %H:%M} UTC "
            f"at commit {m['commit']} ({m['cpus']} CPUs, Python {m['python']}, "
            f"SQLite {m['sqlite']}, "
            f"load average at the end {m['load_avg_at_end'][0]:.2f}); "
            f"raw figures in `{json_path.relative_to(BENCH_DIR.parent)}`.",
            "",
            markdown_table(self.rows),
            *(["", notes] if notes else []),
            end,
        ])
        text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            text = head + section + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        RESULTS_MD.write_text(text)


@dataclass(frozen=True)
class Paced:
    """What paced writers made: ``commits`` requests answered in ``seconds``."""

    commits: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.commits / self.seconds


def paced_requests(url: str, request: Callable[[], tuple[str, Any]], commits: float,
                   seconds: float, *, writers: int = 16,
                   headers: dict[str, str] | None = None) -> Paced:
    """Writer threads paced to ``commits`` requests a second in all, for ``seconds``: each
    POSTs ``request()`` (a path and a JSON body, built just before it is sent) to ``url``.
    A writer that falls behind its pace sends the next at once."""
    stop = threading.Event()
    done = [0]
    pace = writers / commits

    def write() -> None:
        with httpx.Client(base_url=url, timeout=30, verify=SSL_CONTEXT,
                          headers=headers or {}) as http:
            due = time.monotonic()
            while not stop.is_set():
                path, body = request()
                http.post(path, json=body).raise_for_status()
                done[0] += 1
                due += pace
                time.sleep(max(0.0, due - time.monotonic()))

    threads = [threading.Thread(target=write) for _ in range(writers)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return Paced(done[0], time.monotonic() - started)


def insert_request(db: str, rows: int = 1) -> Callable[[], tuple[str, Any]]:
    """A request for `paced_requests`: an insert of ``rows`` rows into Shoal's ``w(k, v)``
    of database ``db``, each under a key of its own."""
    sql = "INSERT INTO w(k, v) VALUES " + ", ".join(["(?, 'x')"] * rows)

    def request() -> tuple[str, Any]:
        args = [f"{threading.get_ident()}-{time.time_ns()}-{i}" for i in range(rows)]
        return f"/v1/databases/{db}/query", {"statements": [{"sql": sql, "args": args}]}
    return request


def save_json(kind: str, result: Any) -> Path:
    """A run's figures as bench/results/<kind>-<UTC time>.json."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    path = RESULTS_DIR / f"{kind}-{stamp}.json"
    path.write_text(json.dumps(result, indent=1))
    return path


def paced_writes(url: str, token: str, db: str, commits: int, seconds: float, rows: int = 1,
                 writers: int = 16) -> float:
    """Writer threads paced to ``commits`` commits a second in all, each an insert of
    ``rows`` rows into ``w(k, v)``, for ``seconds``: the commits a second they made."""
    return paced_requests(url, insert_request(db, rows), commits, seconds, writers=writers,
                          headers={"Authorization": f"Bearer {token}"}).rate
