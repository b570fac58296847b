"""Webhook delivery: `python -m bench.webhooks [--quick] [--runs N] [--rows N]`.

In one run, next to each other (only same-run ratios count):

1. **Throughput.** A backlog of ``--rows`` row changes (commits of 100 rows) is delivered
   to a local receiver (aiohttp, in a process of its own, answering 204 at once) by a
   webhook made with ``since`` before the backlog: changes delivered per second, for
   batch sizes 1, 10 and 100. The peer: a relay as a user would write it without
   webhooks: a Python process reading the same feed as JSON pages (httpx) and POSTing each
   page, signed the same way, to the same receiver.
2. **Latency.** Writers paced to ``--commits`` single-row commits a second; each change's
   arrival at the receiver minus its commit time (one machine, one clock): p50, p99.

JSON to bench/results/webhooks-<time>.json; the table is printed, RESULTS.md gets it by
hand. Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import standardwebhooks

from bench.core import say
from bench.feed import ADMIN, create, start_node
from bench.harness import paced_writes, percentile, save_json
from tests.support.server import ServerProcess, free_port

DB = "w"


# -- the receiver ------------------------------------------------------------------------------
def receive(port: int) -> None:
    """A receiver in its own process: counts events, keeps each one's lag."""
    from aiohttp import web

    state: dict[str, Any] = {"events": 0, "lags": [], "last": 0.0}

    async def hook(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        now = time.time()
        events = body["data"]["events"]
        state["events"] += len(events)
        state["last"] = time.monotonic()
        state["lags"] += [now - datetime.fromisoformat(e["at"]).timestamp() for e in events]
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"events": state["events"], "lags": state["lags"]})

    async def reset(request: web.Request) -> web.Response:
        state.update(events=0, lags=[])
        return web.Response(status=204)

    app = web.Application(client_max_size=64 << 20)
    app.add_routes([web.post("/hook", hook), web.get("/stats", stats),
                    web.post("/reset", reset)])
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = multiprocessing.Process(target=receive, args=(self.port,), daemon=True)

    def __enter__(self) -> Receiver:
        self.proc.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/stats", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the receiver did not start")

    def __exit__(self, *exc: Any) -> None:
        self.proc.terminate()
        self.proc.join(10)

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/stats", timeout=30).json()  # type: ignore[no-any-return]

    def reset(self) -> None:
        httpx.post(f"{self.url}/reset", timeout=10)

    def wait_for(self, count: int, timeout: float) -> float:
        """Seconds until ``count`` events arrived (counted from now)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.stats()["events"] >= count:
                return time.monotonic() - started
            time.sleep(0.05)
        raise RuntimeError(f"{self.stats()['events']} of {count} events in {timeout} s")


# -- the relay (the peer) ----------------------------------------------------------------------
def relay(url: str, since: str, target: str, batch: int, count: int) -> None:
    """Follow the feed as JSON pages and POST each page, signed, until ``count`` events."""
    signer = standardwebhooks.Webhook("whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    sent = 0
    with httpx.Client(base_url=url, timeout=60,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as feed, \
            httpx.Client(timeout=60) as out:
        while sent < count:
            page = feed.get(f"/v1/databases/{DB}/changes",
                            params={"since": since, "limit": batch, "wait": 5}).json()
            since = page["cursor"]
            events = page["changes"]
            if not events:
                continue
            body = json.dumps({"type": "changes", "timestamp": events[-1]["at"],
                               "data": {"events": events}}).encode()
            msg = events[-1]["cursor"]
            stamp = datetime.now(UTC)
            out.post(target, content=body, headers={
                "content-type": "application/json", "webhook-id": msg,
                "webhook-timestamp": str(int(stamp.timestamp())),
                "webhook-signature": signer.sign(msg, stamp, body)}).raise_for_status()
            sent += len(events)


# -- the measurements --------------------------------------------------------------------------
def backlog(http: httpx.Client, rows: int) -> str:
    """Write ``rows`` rows in commits of 100; the cursor before them."""
    since = http.post(f"/v1/databases/{DB}/query", json={"statements": [
        "INSERT INTO w(k, v) VALUES ('start', 'x')"]}).json()["meta"]["bookmark"]
    values = ", ".join(["(?, 'x')"] * 100)
    for n in range(rows // 100):
        http.post(f"/v1/databases/{DB}/query", json={"statements": [{
            "sql": f"INSERT INTO w(k, v) VALUES {values}",
            "args": [f"{n}-{i}" for i in range(100)]}]}).raise_for_status()
    return str(since)


@contextlib.contextmanager
def setup(name: str) -> Iterator[tuple[ServerProcess, httpx.Client, Receiver]]:
    """A node with the table, an admin client of it, and a receiver."""
    with tempfile.TemporaryDirectory(prefix="bench-hooks-") as tmp, Receiver() as receiver:
        node = start_node(Path(tmp), name)
        try:
            create(node, DB)
            with httpx.Client(base_url=node.url, timeout=60,
                              headers={"Authorization": f"Bearer {ADMIN}"}) as http:
                yield node, http, receiver
        finally:
            node.stop()


def throughput(opts: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with setup("hooks") as (node, http, receiver):
        since = backlog(http, opts.rows)
        for batch in (1, 10, 100):
            count = opts.rows if batch > 1 else min(opts.rows, 2000)
            for run in range(opts.runs):
                for kind in ("webhook", "relay") if run % 2 == 0 else ("relay", "webhook"):
                    receiver.reset()
                    started = time.monotonic()
                    if kind == "webhook":
                        made = http.post(f"/v1/databases/{DB}/webhooks", json={
                            "url": f"{receiver.url}/hook", "since": since,
                            "batch_size": batch}).json()
                        receiver.wait_for(count, 300)
                        http.delete(f"/v1/databases/{DB}/webhooks/{made['id']}")
                    else:
                        p = multiprocessing.Process(target=relay, args=(
                            node.url, since, f"{receiver.url}/hook", batch, count))
                        p.start()
                        receiver.wait_for(count, 300)
                        p.join(30)
                    rate = count / (time.monotonic() - started)
                    out.setdefault(f"{kind}_{batch}", []).append(round(rate))
                    say(f"{kind}, batch {batch}: {rate:,.0f} changes/s")
    return out


def latency(opts: argparse.Namespace) -> dict[str, Any]:
    with setup("lat") as (node, http, receiver):
        http.post(f"/v1/databases/{DB}/webhooks",
                  json={"url": f"{receiver.url}/hook"}).raise_for_status()
        time.sleep(1.0)
        rate = paced_writes(node.url, ADMIN, DB, opts.commits, opts.seconds)
        time.sleep(2.0)
        lags = receiver.stats()["lags"]
    return {"commits_per_s": round(rate, 1), "events": len(lags),
            "p50_ms": round(percentile(lags, 50) * 1000, 1) if lags else None,
            "p99_ms": round(percentile(lags, 99) * 1000, 1) if lags else None}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.webhooks",
                                description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 run, 5,000 rows, 3 s")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--commits", type=int, default=200, help="commits/s for the latency")
    p.add_argument("--only", default="throughput,latency")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.runs, opts.rows, opts.seconds = 1, 5000, 3.0
    parts = set(opts.only.split(","))
    result: dict[str, Any] = {}
    if "throughput" in parts:
        say(f"delivering a backlog of {opts.rows:,} changes: webhook, relay")
        result["throughput"] = got = throughput(opts)
        for batch in (1, 10, 100):
            hook = statistics.median(got[f"webhook_{batch}"])
            peer = statistics.median(got[f"relay_{batch}"])
            print(f"batch {batch:>3}: webhook {hook:,.0f} changes/s, relay {peer:,.0f} "
                  f"changes/s ({hook / peer:.2f}x)")
    if "latency" in parts:
        say(f"commit to receiver at {opts.commits} commits/s")
        result["latency"] = got = latency(opts)
        print(f"webhook latency at {got['commits_per_s']:,.0f} commits/s: p50 "
              f"{got['p50_ms']} ms, p99 {got['p99_ms']} ms ({got['events']} events)")
    save_json("webhooks", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
