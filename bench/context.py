"""What the scenarios of `python -m bench` share: options, the running systems, outcomes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import Api, Row, run_load
from bench.measure import Measure, Series, from_load, repeat
from tests.support.server import ServerProcess

if TYPE_CHECKING:
    from bench.peers.datasette import Datasette
    from bench.peers.pgbouncer import PgBouncer
    from bench.peers.pocketbase import PocketBase
    from bench.peers.postgres import PgBench, Postgres

SYSTEMS = ("shoal", "postgres", "pgbouncer", "datasette", "pocketbase", "apsw", "litestream")
SCENARIOS = ("reads", "serverless", "storm", "writes", "many", "replication")

# How each system is named in the tables.
SHOAL = "Shoal (native HTTP)"
HRANA = "Shoal (Hrana)"
SHOAL_CLOSE = "Shoal (HTTP, Connection: close)"
POSTGRES = "PostgreSQL (direct)"
PGBOUNCER = "PostgreSQL via PgBouncer"
DATASETTE = "Datasette (JSON API)"
POCKETBASE = "PocketBase (REST API)"


def sqlite_name(threads: int, detail: str = "") -> str:
    """The name of in-process SQLite run on `threads` threads."""
    return f"SQLite in-process (apsw, {threads} thread{'s' if threads > 1 else ''}){detail}"


@dataclass(frozen=True)
class Options:
    mode: str  # "full", "quick" or "smoke"
    systems: tuple[str, ...]
    scenarios: tuple[str, ...]
    reps: int
    seconds: float  # one timed run
    warmup: float  # one warm-up run per system, discarded
    concurrency: tuple[int, ...]  # point reads
    serverless_concurrency: tuple[int, ...]
    rows: int  # rows of the point-read table, in every system
    storm_clients: int
    writers: int
    databases: int  # created in the many-databases scenario
    open_count: int  # kept open there (max_open)
    cold_samples: int  # closed databases queried there
    pg_databases: int  # CREATE DATABASE statements timed in PostgreSQL
    install: bool
    out: Path  # where REPORT.md, charts/ and results/ go
    data_root: str | None
    time_limit: float  # seconds any one setup loop may take
    command: str = ""


@dataclass
class Outcome:
    """One scenario's result: series of timed runs and/or rows of single figures."""

    key: str
    title: str
    about: str  # markdown: what is measured, and how
    reference: str = ""  # the system every ratio is taken against
    alternate: str = ""  # a second Shoal system the headline also compares with the peers
    unit: str = "req/s"  # of a series' rate
    series: list[Series] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "about": self.about,
                "reference": self.reference, "alternate": self.alternate, "unit": self.unit,
                "skipped": self.skipped, "notes": self.notes,
                "series": [s.as_json() for s in self.series],
                "rows": [r.as_json() for r in self.rows], "raw": self.raw}

    @classmethod
    def from_json(cls, data: dict[str, Any], about: str = "", alternate: str = "") -> Outcome:
        """The Outcome as_json() wrote; `about` and `alternate` stand in for what results
        written before they were saved lack."""
        return cls(data["key"], data["title"], data.get("about", about),
                   data.get("reference", ""), data.get("alternate", alternate),
                   data.get("unit", "req/s"), [Series.from_json(s) for s in data["series"]],
                   [Row.from_json(r) for r in data["rows"]], list(data.get("notes", [])),
                   data.get("skipped", ""), data.get("raw", {}))


@dataclass
class Context:
    """The run: options, a scratch directory, and every system that was started."""

    opts: Options
    scratch: Path
    has_wrk: bool
    node: ServerProcess | None = None  # the Shoal node of scenarios 1 to 4
    api: Api | None = None
    postgres: Postgres | None = None
    pgbouncer: PgBouncer | None = None
    datasette: Datasette | None = None
    pocketbase: PocketBase | None = None
    unavailable: dict[str, str] = field(default_factory=dict)  # system -> why not running
    commands: list[str] = field(default_factory=list)

    def wants(self, system: str) -> bool:
        return system in self.opts.systems and system not in self.unavailable

    def why_not(self, system: str, wrk: bool = False) -> str:
        """Why a system is not measured (empty when it is); `wrk`: its load needs wrk."""
        if system not in self.opts.systems:
            return f"not selected (--systems {','.join(self.opts.systems)})"
        if wrk and not self.has_wrk:
            return "wrk is not installed (run without --no-install)"
        return self.unavailable.get(system, "")

    def plan(self, scenario: str, variant: str, warm: bool = True) -> Plan:
        """A variant's systems; `warm`: warm each up first (a scenario's later variants
        find the servers warm already)."""
        return Plan(self, scenario, variant, warm)

    def command(self, text: str) -> str:
        """Record a command line for the report; returns it."""
        if text not in self.commands:
            self.commands.append(text)
        return text

    def shoal_wrk(self, path: str, script: str, args: list[str], connections: int,
                  headers: tuple[str, ...] = (), node: ServerProcess | None = None) -> Measure:
        """A wrk run against a Shoal node (this run's, by default) as a Measure."""
        target = node or self.node
        assert target is not None and target.proc is not None
        pid, url = target.proc.pid, target.url + path
        return lambda seconds: from_load(run_load(
            pid, url, script, args, connections=connections, threads=min(2, connections),
            seconds=seconds, headers=headers))

    def shoal_load(self, path: str, script: str, args: list[str], connections: int,
                   headers: tuple[str, ...] = ()) -> tuple[Measure, str]:
        """A wrk Measure against this run's node, and its command line (args[0] is the
        token, which the report does not show)."""
        return (self.shoal_wrk(path, script, args, connections, headers),
                self.wrk_command(path, script, connections, " ".join(["<token>", *args[1:]]),
                                 headers))

    def wrk_command(self, path: str, script: str, connections: int, args: str,
                    headers: tuple[str, ...] = ()) -> str:
        extra = "".join(f' -H "{h}"' for h in headers)
        return self.command(f"wrk -t {min(2, connections)} -c {connections} -d "
                            f"{self.opts.seconds:g}s --timeout 10s{extra} -s "
                            f"bench/lua/{script} http://127.0.0.1:PORT{path} -- {args}")

    def pgbench_command(self, bench: PgBench, script: Path, clients: int,
                        reconnect: bool = False) -> str:
        line = " ".join(bench.command(script, clients, round(self.opts.seconds), reconnect))
        return self.command(line + f" -l  # {script.name}: "
                            + script.read_text().strip().replace("\n", " "))



@dataclass
class Plan:
    """The systems of one variant of a scenario: each measured, or skipped with a reason."""

    ctx: Context
    scenario: str
    variant: str
    warm: bool = True
    series: dict[str, Series] = field(default_factory=dict)
    measures: dict[str, Measure] = field(default_factory=dict)

    def add(self, name: str, why_not: str,
            build: Callable[[], tuple[Measure, str]] | None = None, note: str = "") -> None:
        """Add system `name`: skipped if why_not, else measured by build()'s Measure
        (whose command line goes to the report)."""
        series = self.series[name] = Series(self.scenario, self.variant, name, note=note)
        if why_not:
            series.skipped = why_not
            return
        assert build is not None, f"{name}: nothing to measure it with"
        self.measures[name], series.command = build()

    def run(self) -> list[Series]:
        """Warm-up and repetitions of every measured system; all series, in order."""
        opts = self.ctx.opts
        repeat(self.series, self.measures, reps=opts.reps, seconds=opts.seconds,
               warmup=opts.warmup if self.warm else 0.0)
        return list(self.series.values())
