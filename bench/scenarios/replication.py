"""Scenario 6: replication to object storage, and restore.

Write throughput: the insert workload of scenario 4 (wrk, 64 connections, one row
per request) against Shoal nodes that ship every commit to a `file://` object store:
`local` durability (acknowledged after the local fsync, shipped within
`sync_interval` = 1 s), `remote` durability (acknowledged once in the store), and
with shipping off (`store = "none"`: a local-only node; on a build without it, commits
are captured but not uploaded during the run, `sync_interval` = 3,600 s). Next to them,
the raw SQLite workload of scenario 4 (64 threads, autocommit, WAL, synchronous=FULL)
alone and with `litestream replicate` shipping the same file to a file replica.

Restore: the same rows (inserted in the same batches, one transaction each) written
to Shoal and to a litestream-replicated SQLite file, then restored from each replica
into a new file: Shoal's restore (`shoal.log.restore.restore`: nearest snapshot +
log replay) against `litestream restore`. Both restored files are checked for every
row.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import apsw

from bench.context import Context, Outcome, sqlite_name
from bench.harness import Api, Row, node_settings
from bench.measure import run_threads
from bench.peers import sqlite
from bench.peers.litestream import Litestream
from bench.peers.litestream import restore as litestream_restore
from bench.peers.sqlite import INSERT
from bench.scenarios.writes import prepare_shoal, shoal_inserts
from tests.support.server import ServerProcess

SHIP_LOCAL = "Shoal, shipping on (local durability)"
SHIP_REMOTE = "Shoal, shipping on (remote durability)"
SHIP_OFF = "Shoal, shipping off (store = none)"
SHIP_DEFERRED = "Shoal, shipping deferred (sync_interval 3,600 s)"
Settings = dict[str, Any]
BATCH = 100  # rows per transaction in the restore data set
PAYLOAD = "x" * 100


def _shoal_restore(store: Path, db: str, dest: Path) -> int:
    """Restore db's main branch from a file store into dest; its txid."""
    from shoal.log.branch import get_branch
    from shoal.log.restore import restore
    from shoal.storage import open_store

    opened = open_store(store.as_uri())
    return restore(opened, db, get_branch(opened, db, "main").timeline, dest).txid


def storage_settings() -> str:
    """Empty if `shoal serve` has the storage settings; else why the scenario is skipped."""
    try:
        from shoal.settings import BY_NAME
    except ImportError as exc:
        return f"skipped: storage not available ({exc})"
    if not {"store", "durability", "sync_interval"} <= BY_NAME.keys():
        return "skipped: storage not available (no store/durability settings in shoal serve)"
    return ""


def ships(node: ServerProcess, store: Path, time_limit: float = 15.0) -> str:
    """Empty if a commit made on node can be restored from its store within time_limit."""
    api = Api(node.url, node.admin_token)
    try:
        api.create_database("probe")
        api.query("probe", "CREATE TABLE p(x)", "INSERT INTO p VALUES (1)")
    finally:
        api.close()
    deadline = time.monotonic() + time_limit
    while True:
        try:
            if _shoal_restore(store, "probe", store.parent / "probe.db") >= 1:
                return ""
        except Exception as exc:
            if time.monotonic() > deadline:
                return f"skipped: storage not available (nothing restorable: {exc})"
        time.sleep(0.2)


def shipping_modes(smoke: bool) -> dict[str, Settings]:
    """The nodes to compare, by name: their settings besides a file store of their own.
    Shipping off is `store = "none"` (a local-only node) where this build has it; before
    that, commits are captured but not uploaded during the run (sync_interval 3,600 s)."""
    from shoal.settings import Settings as NodeSettings

    local: Settings = {"durability": "local", "sync_interval": 1.0}
    if smoke:
        return {SHIP_LOCAL: local}
    off = ({SHIP_OFF: {"store": "none"}} if hasattr(NodeSettings, "local_only")
           else {SHIP_DEFERRED: {"durability": "local", "sync_interval": 3600.0}})
    return {SHIP_LOCAL: local, SHIP_REMOTE: {"durability": "remote", "sync_interval": 1.0},
            **off}


def start_nodes(ctx: Context, stack: ExitStack) -> dict[str, tuple[ServerProcess, Path]]:
    """A node per shipping mode (only local in a smoke run), each with a file store of its
    own, started at once."""
    nodes: dict[str, tuple[ServerProcess, Path]] = {}
    modes = shipping_modes(ctx.opts.mode == "smoke")
    for i, (name, settings) in enumerate(modes.items()):
        root = ctx.scratch / f"ship-{i}"
        root.mkdir()
        node = ServerProcess(root / "data", node_settings(
            **({"store": (root / "store").as_uri()} | settings)))
        stack.callback(node.stop)
        nodes[name] = (node, root / "store")
    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(lambda pair: pair[0].start(), nodes.values()))
    ctx.command("shoal serve with SHOAL_STORE=file:///DIR unless given and " + "; ".join(
        f"{name}: " + ", ".join(f"SHOAL_{k.upper()}={v}" for k, v in settings.items())
        for name, settings in modes.items()))
    return nodes


def _count(path: Path) -> int:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        [(count,)] = conn.execute("SELECT count(*) FROM w").fetchall()
        assert isinstance(count, int)
        return count
    finally:
        conn.close()


def _batches(rows: int) -> list[list[tuple[str, str]]]:
    keys = [(f"k{i:08d}", PAYLOAD) for i in range(rows)]
    return [keys[i:i + BATCH] for i in range(0, rows, BATCH)]


def restore_shoal(node: ServerProcess, store: Path, dest: Path, rows: int,
                  sync_wait: float) -> float:
    """Write the restore data set into database `restore` on node; seconds to restore it."""
    api = Api(node.url, node.admin_token)
    try:
        api.create_database("restore")
        api.query("restore", "CREATE TABLE w(k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        for batch in _batches(rows):
            api.query("restore", *[{"sql": INSERT, "args": list(row)} for row in batch])
    finally:
        api.close()
    time.sleep(sync_wait)  # the last commits reach the store
    started = time.perf_counter()
    _shoal_restore(store, "restore", dest)
    return time.perf_counter() - started


def restore_litestream(ctx: Context, root: Path, dest: Path, rows: int,
                       sync_wait: float) -> float:
    """The same data set into a litestream-replicated SQLite file; seconds to restore it."""
    db, replica = sqlite.insert_table(root / "litestream.db"), root / "replica"
    with Litestream(db, replica) as shipping:
        ctx.command(shipping.commands[-1])
        conn = apsw.Connection(str(db))
        conn.setbusytimeout(30_000)
        conn.execute("PRAGMA synchronous=FULL")
        for batch in _batches(rows):
            with conn:
                conn.executemany(INSERT, batch)
        conn.close()
        shipping.sync(sync_wait)
    ctx.command(f"litestream restore -o OUT {replica.as_uri()}")
    return litestream_restore(replica, dest)


def restore_rows(ctx: Context, node: ServerProcess, store: Path, rows: int) -> list[Row]:
    """Restore time of the same rows for Shoal and (when selected) litestream."""
    root = ctx.scratch / "restore"
    root.mkdir()
    restored = {"Shoal": root / "shoal.db", "litestream": root / "litestream-restored.db"}
    shoal_s = restore_shoal(node, store, restored["Shoal"], rows, sync_wait=2.5)
    peer_s = (restore_litestream(ctx, root, restored["litestream"], rows, sync_wait=2.5)
              if ctx.wants("litestream") else None)
    counts = {name: _count(path) for name, path in restored.items() if path.exists()}
    if set(counts.values()) != {rows}:
        raise RuntimeError(f"a restore lost rows: {counts} of {rows}")
    size = restored["Shoal"].stat().st_size / 1e6
    return [Row(f"restore {rows:,} rows ({rows // BATCH:,} commits, {size:.1f} MB)",
                shoal_s * 1000, "ms", "litestream restore" if peer_s else "",
                peer_s * 1000 if peer_s else None,
                detail="Shoal: shoal.log.restore.restore from the file store, in-process; "
                       "litestream: `litestream restore` from the file replica (a process); "
                       "both restored files hold every row"
                       + ("" if peer_s else f"; litestream {ctx.why_not('litestream')}"))]


def run(ctx: Context) -> Outcome:
    opts = ctx.opts
    out = Outcome("replication", "6. Replication: shipping on and off, restore", __doc__ or "",
                  reference=SHIP_LOCAL, unit="rows/s")
    why = ctx.why_not("shoal", wrk=True) or storage_settings()
    if why:
        out.skipped = why
        return out
    with ExitStack() as stack:
        nodes = start_nodes(ctx, stack)
        out.skipped = ships(*nodes[SHIP_LOCAL])
        if out.skipped:
            return out
        plan = ctx.plan(out.key, f"{opts.writers} writers")
        for name, (node, _) in nodes.items():
            api = Api(node.url, node.admin_token)
            prepare_shoal(api)
            api.close()
            plan.add(name, "", partial(shoal_inserts, ctx, opts.writers, node))
        alone = sqlite_name(opts.writers, ", alone")
        streamed = sqlite_name(opts.writers, " + litestream")
        if ctx.wants("apsw"):
            plain = sqlite.insert_table(ctx.scratch / "ship-plain.db")
            plan.add(alone, "", lambda: (
                partial(run_threads, sqlite.autocommit_inserter(plain), opts.writers),
                "in-process (apsw), as scenario 4"))
        else:
            plan.add(alone, ctx.why_not("apsw"))
        if ctx.wants("apsw") and ctx.wants("litestream"):
            shipped = sqlite.insert_table(ctx.scratch / "ship-litestream.db")
            stream = stack.enter_context(Litestream(shipped, ctx.scratch / "ship-replica"))
            plan.add(streamed, "", lambda: (
                partial(run_threads, sqlite.autocommit_inserter(shipped), opts.writers),
                ctx.command(stream.commands[-1] + " (while the in-process workload runs)")))
        else:
            plan.add(streamed, ctx.why_not("litestream") or ctx.why_not("apsw"))
        out.series += plan.run()
        if opts.mode == "smoke":
            out.notes.append("restore: not timed in a --smoke run")
        else:
            rows = opts.rows * (5 if opts.mode == "full" else 1)
            out.rows = restore_rows(ctx, *nodes[SHIP_LOCAL], rows=rows)
    return out


__all__ = ["run", "ships", "storage_settings"]
