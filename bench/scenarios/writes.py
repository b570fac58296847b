"""Scenario 4: concurrent small durable writes into one database.

64 clients insert single rows, each acknowledged only once durable: Shoal over HTTP
(wrk, one insert per request; group commit turns concurrent requests into one
transaction and one fsync), PostgreSQL with pgbench running a one-line INSERT script
(`synchronous_commit = on`, `fsync = on`: each commit waits for its WAL flush, which
concurrent commits share), directly and through PgBouncer (transaction pooling: the 64
clients' transactions share its pool of 20 server connections), and raw SQLite
in-process: 64 threads, each with its own connection, one autocommit transaction (and
fsync, `synchronous=FULL`, WAL) per row, taking turns on the write lock; and the same
with one thread.

PocketBase: wrk posts one record per request to `POST /api/collections/w/records`
(a collection with the insert table's shape: the record id, chosen by the client, is
the key, and a text field `v`), with no credentials: the collection's create rule is
`""` (public), its list, view, update and delete rules null (superusers only). Its
request log is off, as Shoal's access log is. PocketBase runs SQLite in WAL mode with
`synchronous=NORMAL`, which it does not let one change: its commits are not fsynced
(a commit survives PocketBase dying, not the machine losing power), so its figure is a
write rate without the durability the others pay for.
"""

from __future__ import annotations

import itertools
from functools import partial

from bench.context import (
    PGBOUNCER,
    POCKETBASE,
    POSTGRES,
    SHOAL,
    Context,
    Outcome,
    sqlite_name,
)
from bench.harness import Api
from bench.measure import Measure, Sample, run_threads, wrk_load
from bench.peers import sqlite
from bench.peers.pgbouncer import PgBouncer
from bench.peers.pocketbase import WRITES
from bench.peers.postgres import INSERT_SCRIPT, PgBench, Postgres
from bench.scenarios.reads import versus_pocketbase
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

    def postgres(server: Postgres | PgBouncer | None) -> tuple[Measure, str]:
        assert server is not None
        bench = PgBench(server.port, ctx.scratch / "pgbench")
        script = bench.script("insert.sql", INSERT_SCRIPT)
        return (partial(bench.run, script, opts.writers),
                ctx.pgbench_command(bench, script, opts.writers))

    plan.add(POSTGRES, ctx.why_not("postgres"), partial(postgres, ctx.postgres))
    plan.add(PGBOUNCER, ctx.why_not("pgbouncer"), partial(postgres, ctx.pgbouncer))
    plan.add(POCKETBASE, ctx.why_not("pocketbase", wrk=True),
             partial(pocketbase_inserts, ctx, opts.writers))

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
    out.rows += versus_pocketbase(out, "writes")
    return out


def run_tag(n: int) -> str:
    """Run n's prefix of PocketBase record ids: "w" and two base-36 digits (1,296 runs)."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    if not 0 <= n < 36 * 36:
        raise ValueError(f"run {n}: out of run tags")
    return "w" + digits[n // 36] + digits[n % 36]


def pocketbase_inserts(ctx: Context, clients: int) -> tuple[Measure, str]:
    """wrk's PocketBase insert script; every run inserts under a tag of its own (record
    ids are 15 characters of [a-z0-9], the tag 3 of them), so ids stay unique."""
    assert ctx.pocketbase is not None
    url = f"{ctx.pocketbase.url}/api/collections/{WRITES}/records"
    tags = itertools.count()

    def measure(seconds: float) -> Sample:
        return wrk_load(url, "pocketbase_insert.lua", [run_tag(next(tags))], clients)(seconds)

    return measure, ctx.wrk_command(f"/api/collections/{WRITES}/records",
                                    "pocketbase_insert.lua", clients, "<run-tag>")
