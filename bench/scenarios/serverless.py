"""Scenario 2: the serverless pattern, a new connection for every request.

A function that runs once per request cannot keep a connection: each request
connects, runs one point read and disconnects. Shoal over HTTP with keep-alive off
(wrk sends `Connection: close`, so every request opens a new TCP connection)
against PostgreSQL directly and through PgBouncer with `pgbench -C` (a new
connection, with its startup and authentication, for every transaction).
"""

from __future__ import annotations

from functools import partial

from bench.context import PGBOUNCER, POSTGRES, SHOAL_CLOSE, Context, Outcome
from bench.scenarios.reads import NATIVE_PATH, pgbench_reads

CLOSE = ("Connection: close",)


def run(ctx: Context) -> Outcome:
    out = Outcome("serverless", "2. Serverless pattern: a new connection per request",
                  __doc__ or "", reference=SHOAL_CLOSE)
    rows = str(ctx.opts.rows)
    token = ctx.api.token if ctx.api else ""
    for clients in ctx.opts.serverless_concurrency:
        plan = ctx.plan(out.key, f"{clients} concurrent clients",
                        warm=clients == ctx.opts.serverless_concurrency[0])
        plan.add(SHOAL_CLOSE, ctx.why_not("shoal", wrk=True),
                 partial(ctx.shoal_load, NATIVE_PATH, "point_read.lua", [token, rows], clients,
                         CLOSE))
        plan.add(POSTGRES, ctx.why_not("postgres"),
                 partial(pgbench_reads, ctx, ctx.postgres, clients, True))
        plan.add(PGBOUNCER, ctx.why_not("pgbouncer"),
                 partial(pgbench_reads, ctx, ctx.pgbouncer, clients, True))
        out.series += plan.run()
    return out
