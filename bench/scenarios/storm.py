"""Scenario 3: a connection storm, 1,000 clients at once.

Every client is released at the same instant; each opens its own connection, runs
one point read and closes it (asyncio in the benchmark's process, on uvloop): httpx
for Shoal (a new TCP connection per client, no keep-alive), asyncpg for PostgreSQL
directly (expected to refuse all but about 100: `max_connections` is left at its
default) and through PgBouncer (which queues the clients on its pool). Latency runs
from the release to the answer; a refused connection, a failed query or one not
answered within the time limit is an error. The rate is clients served per second of
the storm. The clients run in one Python process on the same cores as the servers:
their own CPU time (httpx costs more per request than asyncpg) is inside these figures,
and the report gives it per storm. So Shoal is also stormed by a plain asyncio client
that writes the same HTTP/1.1 request by hand.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

import httpx
import uvloop

from bench.context import PGBOUNCER, POSTGRES, Context, Outcome
from bench.harness import POINT_READ
from bench.measure import Measure, Sample, from_latencies
from bench.scenarios.reads import NATIVE_PATH
from tests.support.server import SSL_CONTEXT

SHOAL_HTTPX = "Shoal (HTTP, httpx client)"
SHOAL_PLAIN = "Shoal (HTTP, plain asyncio client)"
SETTLE = 0.5  # seconds between storms: let servers finish closing connections


def _kind(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0][:80] if str(exc).strip() else ""
    return type(exc).__name__ + (f": {message}" if message else "")


async def storm(client: Callable[[int], Awaitable[object]], clients: int,
                time_limit: float) -> Sample:
    """Release `clients` coroutines at once; each runs client(i) within time_limit."""
    gate = asyncio.Event()
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    released = 0.0

    async def one(i: int) -> None:
        await gate.wait()
        try:
            async with asyncio.timeout(time_limit):
                await client(i)
        except Exception as exc:
            errors[_kind(exc)] += 1
            return
        latencies.append((time.perf_counter() - released) * 1000)

    tasks = [asyncio.create_task(one(i)) for i in range(clients)]
    await asyncio.sleep(0.2)  # every task is waiting at the gate
    cpu = time.process_time()
    released = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    return from_latencies(latencies, time.perf_counter() - released, sum(errors.values()),
                          error_kinds=dict(errors),
                          client_cpu_s=round(time.process_time() - cpu, 3))


async def _shoal(url: str, token: str, rows: int, clients: int, limit: float) -> Sample:
    no_reuse = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"},
                                 limits=no_reuse, timeout=limit, verify=SSL_CONTEXT) as http:
        async def client(i: int) -> None:
            body = {"statements": [{"sql": POINT_READ, "args": [random.randint(1, rows)]}]}
            response = await http.post(NATIVE_PATH, json=body)
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}")

        return await storm(client, clients, limit)


async def _plain(url: str, token: str, rows: int, clients: int, limit: float) -> Sample:
    """The same request written by hand on an asyncio stream: HTTP/1.1, Connection: close."""
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST {NATIVE_PATH} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}"
            "\r\nContent-Type: application/json\r\nConnection: close\r\n")

    async def client(i: int) -> None:
        body = json.dumps({"statements": [{"sql": POINT_READ,
                                           "args": [random.randint(1, rows)]}]}).encode()
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status = await reader.readline()
            await reader.read()  # the rest, until the server closes
            if not status.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(status.decode(errors="replace").strip())
        finally:
            writer.close()

    return await storm(client, clients, limit)


async def _postgres(dsn: dict[str, object], pooled: bool, rows: int, clients: int,
                    limit: float) -> Sample:
    import asyncpg

    sql = POINT_READ.replace("?", "$1")
    # PgBouncer's transaction pooling cannot keep named prepared statements.
    cache = {"statement_cache_size": 0} if pooled else {}

    async def client(i: int) -> None:
        conn = await asyncpg.connect(**dsn, timeout=limit, **cache)
        try:
            await conn.fetchrow(sql, random.randint(1, rows))
        finally:
            await conn.close()

    return await storm(client, clients, limit)


def _settled(run: Callable[[], Coroutine[Any, Any, Sample]]) -> Sample:
    sample = uvloop.run(run())
    time.sleep(SETTLE)
    return sample


def run(ctx: Context) -> Outcome:
    opts = ctx.opts
    out = Outcome("storm", f"3. Connection storm: {opts.storm_clients:,} clients at once",
                  __doc__ or "", reference=SHOAL_HTTPX, alternate=SHOAL_PLAIN, unit="clients/s")
    limit = min(60.0, opts.time_limit)
    n, rows = opts.storm_clients, opts.rows
    plan = ctx.plan(out.key, f"{n:,} clients")

    def shoal(plain: bool) -> tuple[Measure, str]:
        assert ctx.node is not None and ctx.api is not None
        url, token = ctx.node.url, ctx.api.token
        how = "asyncio.open_connection + HTTP/1.1 by hand" if plain else "httpx.AsyncClient"
        return (lambda _: _settled(partial(_plain if plain else _shoal, url, token, rows, n,
                                           limit)),
                ctx.command(f"{n:,} x {how}: new TCP connection, POST {NATIVE_PATH} "
                            "(point read), close; released at once"))

    def postgres(pooled: bool) -> tuple[Measure, str]:
        server = ctx.pgbouncer if pooled else ctx.postgres
        assert ctx.postgres is not None and server is not None
        dsn = ctx.postgres.dsn() | {"port": server.port}
        target = "PgBouncer" if pooled else "PostgreSQL"
        return (lambda _: _settled(partial(_postgres, dsn, pooled, rows, n, limit)),
                ctx.command(f"{n:,} x asyncpg.connect({target}), fetchrow(point read), "
                            "close; released at once"))

    plan.add(SHOAL_HTTPX, ctx.why_not("shoal"), partial(shoal, False))
    plan.add(SHOAL_PLAIN, ctx.why_not("shoal"), partial(shoal, True),
             note="the same requests without httpx: how much of the storm is the client")
    plan.add(POSTGRES, ctx.why_not("postgres"), partial(postgres, False))
    plan.add(PGBOUNCER, ctx.why_not("pgbouncer"), partial(postgres, True))
    out.series += plan.run()
    return out
