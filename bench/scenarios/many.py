"""Scenario 5: many databases on one node.

bench.core's many-databases benchmark, at this run's scale: a fresh node creates the
databases (16 requests at a time; time and rate), opens `max_open` of them with a write
and a read, and reports its resident memory, then the first-query latency of databases
it has closed again (against a second query to the same, now open, database), next to
the SQLite floor per open database measured in a fresh process. The peer figure is
PostgreSQL's `CREATE DATABASE` (one connection, one after another): what a database
per tenant or per preview costs there.
"""

from __future__ import annotations

import time

import uvloop

from bench import core
from bench.context import Context, Outcome
from bench.harness import Row


async def _create_pg_databases(dsn: dict[str, object], count: int, time_limit: float) -> float:
    """Databases created per second by `count` sequential CREATE DATABASE statements."""
    import asyncpg

    conn = await asyncpg.connect(**(dsn | {"database": "postgres"}))
    try:
        started = time.perf_counter()
        deadline = started + time_limit
        done = 0
        while done < count and time.perf_counter() < deadline:
            await conn.execute(f"CREATE DATABASE tenant{done:05d}")
            done += 1
        return done / (time.perf_counter() - started)
    finally:
        await conn.close()


def run(ctx: Context) -> Outcome:
    opts = ctx.opts
    out = Outcome("many", f"5. Many databases: {opts.databases:,} created, "
                          f"{opts.open_count:,} open", __doc__ or "")
    if not ctx.wants("shoal"):
        out.skipped = ctx.why_not("shoal")
        return out
    core_opts = core.parse_args(["--databases", str(opts.databases), "--open",
                                 str(opts.open_count), "--cold-samples", str(opts.cold_samples)])
    ctx.command(f"bench.core.bench_many: {opts.databases:,} databases, max_open "
                f"{opts.open_count:,}, {opts.cold_samples} closed databases queried")
    root = ctx.scratch / "many"
    root.mkdir()
    out.rows = core.bench_many(core_opts, root, out.raw)
    shoal_rate = float(out.raw["many"]["create_rate"])
    pg_rate = None
    if ctx.wants("postgres") and ctx.postgres is not None:
        pg_rate = uvloop.run(_create_pg_databases(ctx.postgres.dsn(), opts.pg_databases,
                                                  opts.time_limit))
        out.raw["postgres_create_rate"] = pg_rate
        ctx.command(f"asyncpg: {opts.pg_databases} x CREATE DATABASE tenantNNNNN, one after "
                    "another")
    else:
        out.notes.append(f"PostgreSQL CREATE DATABASE: {ctx.why_not('postgres')}")
    out.rows.insert(0, Row(
        f"create databases ({opts.databases:,})", shoal_rate, "dbs/s",
        "PostgreSQL CREATE DATABASE" if pg_rate else "", pg_rate,
        detail=f"{opts.databases:,} created in {opts.databases / shoal_rate:.1f} s"
               + (f"; PostgreSQL would take {opts.databases / pg_rate:,.0f} s at its rate "
                  f"({opts.pg_databases} timed)" if pg_rate else "")))
    return out
