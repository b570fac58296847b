"""Scenario 4: concurrent small durable writes into one database.

64 clients insert single rows, each acknowledged only once durable: Shoal over HTTP
(wrk, one insert per request; group commit turns concurrent requests into one
transaction and one fsync), PostgreSQL with pgbench running a one-line INSERT script
(`synchronous_commit = on`, `fsync = on`: each commit waits for its WAL flush, which
concurrent commits share), and raw SQLite in-process: 64 threads, each with its own
connection, one autocommit transaction (and fsync, `synchronous=FULL`, WAL) per row,
taking turns on the write lock; and the same with one thread.
"""

from __future__ import annotations

import itertools
from functools import partial

from bench.context import POSTGRES, SHOAL, Context, Outcome, sqlite_name
from bench.harness import Api
from bench.measure import Measure, Sample, run_threads
from bench.peers import sqlite
from bench.peers.postgres import INSERT_SCRIPT, PgBench
from tests.support.server import ServerProcess

DATABASE = "writes"
PATH = f"/v1/databases/{DATABASE}/query"


def prepare_shoal(api: Api) -> None:
    """Database `writes` with the insert table w on a node."""
    api.create_database(DATABASE)
    api.query(DATABASE, "CREATE TABLE w(k TEXT PRIMARY KEY, v TEXT NOT NULL)")


def shoal_inserts(ctx: Context, clients: int,
                  node: ServerProcess | None = None) -> tuple[Measure, str]:
    """wrk's insert script against node (this run's by default); every run inserts under a
    tag of its own, so keys stay unique."""
    target = node or ctx.node
    assert target is not None
    tags = itertools.count()

    def measure(seconds: float) -> Sample:
        args = [target.admin_token, f"run{next(tags)}"]
        return ctx.shoal_wrk(PATH, "insert.lua", args, clients, node=target)(seconds)

    return measure, ctx.wrk_command(PATH, "insert.lua", clients, "<token> <run-tag>")


def run(ctx: Context) -> Outcome:
    opts = ctx.opts
    out = Outcome("writes", f"4. Concurrent small writes: {opts.writers} clients, one database",
                  __doc__ or "", reference=SHOAL, unit="rows/s")
    plan = ctx.plan(out.key, f"{opts.writers} writers")
    if ctx.wants("shoal") and ctx.api is not None:
        prepare_shoal(ctx.api)
    plan.add(SHOAL, ctx.why_not("shoal", wrk=True), partial(shoal_inserts, ctx, opts.writers))

    def postgres() -> tuple[Measure, str]:
        assert ctx.postgres is not None
        bench = PgBench(ctx.postgres.port, ctx.scratch / "pgbench")
        script = bench.script("insert.sql", INSERT_SCRIPT)
        return (partial(bench.run, script, opts.writers),
                ctx.pgbench_command(bench, script, opts.writers))

    plan.add(POSTGRES, ctx.why_not("postgres"), postgres)

    def in_process(threads: int) -> tuple[Measure, str]:
        db = sqlite.insert_table(ctx.scratch / f"writes-{threads}.db")
        return (partial(run_threads, sqlite.autocommit_inserter(db), threads),
                ctx.command(f"in-process (apsw): {threads} thread(s), a connection each, "
                            "INSERT one row per autocommit transaction, WAL, "
                            "synchronous=FULL, busy timeout 30 s"))

    plan.add(sqlite_name(opts.writers), ctx.why_not("apsw"),
             partial(in_process, opts.writers))
    plan.add(sqlite_name(1), ctx.why_not("apsw"), partial(in_process, 1))
    out.series += plan.run()
    return out
