"""Embedded replicas (libSQL's HTTP sync protocol) against their peers: `python -m bench.sync`.

One node on loopback (temporary data directory, its file store, access log off) holds a
database ``big``: ``--size-mb`` MiB of 1,000-byte random blobs (table ``big``, loaded in
commits of 4 MiB) and the 10,000-row point table ``t``. A libsql client (PyPI ``libsql``,
Rust) keeps an embedded replica of it (``libsql.connect(file, sync_url=...)``, ``sync()``).
Every figure has a peer measured in the same run:

1. Initial sync: a new replica's connect + sync, against downloading the same bytes as
   one file: ``curl -o`` from Python's static server (``python -m http.server``) of the
   replica's own database file. It is the floor of any "download the database" design on
   this machine: the same bytes, the same loopback, a Python server (as Shoal is) and a
   native client (as libsql is), with no framing, no request per 128 frames and no WAL to
   write and checkpoint. Measured twice: while the database is in its first generation
   (``/export`` of the empty start, then the frames of every commit) and at the end of the
   run, when the generation starts from a ~full state (``/export`` of it, then frames).
2. Incremental sync after ``--commits`` single-row commits over the native API, each one
   HTTP request (so one commit): ``spread`` updates rewrite the blob of rows
   ``rows // commits`` apart (a different leaf page each, in place), ``appends`` insert
   rows at the table's end (its last leaf again and again). The floor is the distinct
   pages that changed, counted independently of Shoal's frames: the replica's file before
   and after (each a copy, checkpointed with apsw) compared page by page, x 4,096 bytes.
   Target: bytes sent <= 1.2x that. The frames the client was served are then fetched
   again (the same ranges, straight from the node) and counted by page, to say which
   pages repeat.
3. Point reads by primary key, one client, one at a time: the replica (libsql, local)
   against the same read over HTTP: ``POST /v1/databases/big/query`` (httpx, keep-alive)
   and Hrana ``/v2/pipeline`` (libsql's remote client, ``libsql.connect(url)``).

Bytes are counted on the wire by a TCP proxy in front of each server (a child process:
libsql holds the GIL while it syncs), which also sizes each HTTP/1.1 message, so every
request's response body is known (export, frames, the end-of-generation answer). The
same proxy is in front of the static server. The replica is checked byte for byte
against the node's own database file after each sync that is measured.

Medians of ``--runs`` repetitions in alternating order; the table is printed, the raw
figures go to bench/results/sync-<UTC time>.json (``--json PATH``: there instead) and,
unless ``--quick``/``--smoke``, to bench/RESULTS.md (section ``sync``). Nothing here
asserts on timings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import apsw
import httpx

from bench.harness import (
    POINT_READ,
    POINT_ROWS,
    POINT_SCHEMA,
    Api,
    Report,
    Row,
    cpu_seconds,
    median,
    percentile,
    print_table,
    running_node,
)
from tests.support.server import ServerProcess, free_port

PAGE = 4096
FRAME = 24 + PAGE  # a frame: page number, size after a commit, salts and checksums, page
BLOB = 1000  # bytes of each row's blob: four rows to a leaf page, 1 KiB of file a row
FILL_ROWS = 4096  # rows a fill commit inserts (4 MiB)
TARGET = 1.2  # incremental bytes sent <= this x the distinct changed pages
DB = "big"
STATE = "_cf_SHOAL_state"  # Shoal's table in every database file, holding its txid


@dataclass(frozen=True)
class Options:
    size_mb: int
    commits: int
    runs: int  # initial syncs of each kind, and read runs of each system
    seconds: float  # one read run
    point_rows: int
    mode: str  # "full", "quick" or "smoke"
    json_path: str | None


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.sync", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=None, help="MiB of blobs (default 100)")
    p.add_argument("--commits", type=int, default=None,
                   help="single-row commits of each incremental workload (default 1,000)")
    p.add_argument("--runs", type=int, default=None, help="repetitions (default 3)")
    p.add_argument("--seconds", type=float, default=None, help="one read run (default 5)")
    p.add_argument("--quick", action="store_true",
                   help="10 MiB, 200 commits, 2 runs of 2 s: no RESULTS.md")
    p.add_argument("--smoke", action="store_true",
                   help="1 MiB, 20 commits, 1 run of 0.1 s: the test suite's run")
    p.add_argument("--json", dest="json_path", default=None,
                   help="write the raw figures here (default bench/results/sync-*.json)")
    a = p.parse_args(argv)
    mode = "smoke" if a.smoke else "quick" if a.quick else "full"
    size, commits, runs, seconds, rows = {
        "full": (100, 1000, 3, 5.0, 10_000), "quick": (10, 200, 2, 2.0, 10_000),
        "smoke": (1, 20, 1, 0.1, 1_000)}[mode]
    return Options(a.size_mb or size, a.commits or commits, a.runs or runs,
                   a.seconds or seconds, rows, mode, a.json_path)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] load {os.getloadavg()[0]:.2f}  {text}", flush=True)


# -- a counting proxy ------------------------------------------------------------------
class Messages:
    """The HTTP/1.1 messages of one direction of one connection, sized as their bytes
    pass: each one's start line, head bytes and body bytes (chunked framing included)."""

    def __init__(self, responses: bool):
        self.responses = responses
        self.buf = bytearray()
        self.state = "head"
        self.left = 0  # body bytes still to come; -1: until the connection closes
        self.msg: dict[str, Any] = {}
        self.done: list[dict[str, Any]] = []

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.state in ("head", "size"):
                self.buf += view
                mark = b"\r\n\r\n" if self.state == "head" else b"\r\n"
                end = self.buf.find(mark)
                if end < 0:
                    return
                used = end + len(mark)
                view = view[len(view) - (len(self.buf) - used):]
                line = bytes(self.buf[:end])
                self.buf.clear()
                if self.state == "head":
                    self._start(line, used)
                else:  # a chunk's size line; then its data and CRLF
                    self.msg["body"] += used
                    size = int(line.split(b";")[0], 16)
                    self.left, self.state = size + 2, "data" if size else "last"
            else:
                n = len(view) if self.left < 0 else min(self.left, len(view))
                self.msg["body"] += n
                view = view[n:]
                if self.left < 0:
                    continue
                self.left -= n
                if not self.left:
                    if self.state == "data":
                        self.state = "size"
                    else:
                        self._finish()

    def _start(self, head: bytes, size: int) -> None:
        lines = head.decode("latin-1").split("\r\n")
        headers = dict((k.strip().lower(), v.strip()) for k, _, v in
                       (h.partition(":") for h in lines[1:]))
        self.msg = {"start": lines[0], "head": size, "body": 0, "t0": time.monotonic()}
        status = int(lines[0].split()[1]) if self.responses else 0
        self.state = "body"
        if "chunked" in headers.get("transfer-encoding", ""):
            self.state = "size"
            return
        if "content-length" in headers:
            self.left = int(headers["content-length"])
        elif not self.responses or status < 200 or status in (204, 304):
            self.left = 0
        else:
            self.left = -1
        if not self.left:
            self._finish()

    def _finish(self) -> None:
        self.msg["t1"] = time.monotonic()
        self.done.append(self.msg)
        self.state, self.left, self.msg = "head", 0, {}

    def close(self) -> None:
        if self.state == "body" and self.left < 0:
            self._finish()


@dataclass
class Link:
    """One proxied connection: its bytes each way and its messages."""

    up: Messages = field(default_factory=lambda: Messages(False))
    down: Messages = field(default_factory=lambda: Messages(True))
    up_bytes: int = 0
    down_bytes: int = 0

    def clear(self) -> None:
        self.up.done.clear()
        self.down.done.clear()
        self.up_bytes = self.down_bytes = 0

    def exchanges(self) -> list[dict[str, Any]]:
        out = []
        for req, resp in zip(self.up.done, self.down.done, strict=False):
            method, _, rest = req["start"].partition(" ")
            out.append({"method": method, "path": rest.rsplit(" ", 1)[0],
                        "status": int(resp["start"].split()[1]),
                        "request_bytes": req["head"] + req["body"],
                        "head_bytes": resp["head"], "body_bytes": resp["body"],
                        "ms": round((resp["t1"] - req["t0"]) * 1000, 2),
                        "at": round(req["t0"], 4)})
        return out


async def _proxy(control: Pipe, target: int) -> None:
    links: list[Link] = []
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   link: Link, up: bool) -> None:
        messages = link.up if up else link.down
        try:
            while data := await reader.read(1 << 18):
                if up:
                    link.up_bytes += len(data)
                else:
                    link.down_bytes += len(data)
                messages.feed(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            messages.close()
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        link = Link()
        links.append(link)
        try:
            await asyncio.gather(pump(reader, server_writer, link, True),
                                 pump(server_reader, writer, link, False))
        except asyncio.CancelledError:  # the proxy stops
            pass
        finally:
            writer.close()
            server_writer.close()

    def command() -> None:
        what = control.recv()
        if what == "reset":
            for link in links:
                link.clear()
            control.send(None)
        elif what == "stats":
            control.send({"down": sum(x.down_bytes for x in links),
                          "up": sum(x.up_bytes for x in links),
                          "exchanges": [e for x in links for e in x.exchanges()]})
        else:
            control.send(None)
            stop.set_result(None)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    control.send(server.sockets[0].getsockname()[1])
    loop.add_reader(control.fileno(), command)
    await stop
    server.close()


def _proxy_main(control: Pipe, target: int) -> None:
    asyncio.run(_proxy(control, target))


@dataclass
class Traffic:
    """What a proxy carried since its last reset."""

    down: int  # bytes from the server to the clients
    up: int
    exchanges: list[dict[str, Any]]

    def kinds(self) -> dict[str, dict[str, int]]:
        """Requests, head and body bytes by kind of request (the path's protocol part)."""
        out: dict[str, dict[str, int]] = {}
        for e in self.exchanges:
            kind = next((k for k in ("/info", "/export/", "/sync/") if k in e["path"]),
                        "other")
            kind = kind.strip("/")
            if kind == "sync" and e["status"] != 200:
                kind = "sync (end of generation)"
            got = out.setdefault(kind, {"requests": 0, "head_bytes": 0, "body_bytes": 0,
                                        "ms": 0})
            got["requests"] += 1
            got["ms"] = round(got["ms"] + e["ms"], 1)
            got["head_bytes"] += e["head_bytes"]
            got["body_bytes"] += e["body_bytes"]
        return out

    def frames(self) -> int:
        return sum(e["body_bytes"] // FRAME for e in self.exchanges
                   if "/sync/" in e["path"] and e["status"] == 200)


class CountingProxy:
    """A TCP proxy to 127.0.0.1:target in a child process, counting what it carries."""

    def __init__(self, target: int):
        ctx = multiprocessing.get_context("spawn")
        self._pipe, child = ctx.Pipe()
        self._proc = ctx.Process(target=_proxy_main, args=(child, target), daemon=True)
        self._proc.start()
        if not self._pipe.poll(60):
            raise RuntimeError("the counting proxy did not start")
        self.port: int = self._pipe.recv()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ask(self, what: str) -> Any:
        self._pipe.send(what)
        return self._pipe.recv()

    def reset(self) -> None:
        self._ask("reset")

    def traffic(self) -> Traffic:
        return Traffic(**self._ask("stats"))

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, BrokenPipeError):
            self._ask("stop")
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)


@contextlib.contextmanager
def proxy(target: int) -> Iterator[CountingProxy]:
    p = CountingProxy(target)
    try:
        yield p
    finally:
        p.close()


@contextlib.contextmanager
def static_server(folder: Path) -> Iterator[int]:
    """Python's static file server on loopback serving folder: its port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


# -- files and pages ---------------------------------------------------------------------
def image(db: Path, scratch: Path) -> bytes:
    """The database a file and its WAL hold, as one file's bytes: both copied, the copy's
    WAL checkpointed by SQLite (apsw), the original untouched."""
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / "image.db"
    for suffix in ("", "-wal"):
        target = Path(str(copy) + suffix)
        target.unlink(missing_ok=True)
        if Path(str(db) + suffix).exists():
            shutil.copyfile(str(db) + suffix, target)
    Path(str(copy) + "-shm").unlink(missing_ok=True)
    conn = apsw.Connection(str(copy))
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()
    data = copy.read_bytes()
    for suffix in ("", "-wal", "-shm"):
        Path(str(copy) + suffix).unlink(missing_ok=True)
    return data


def changed_pages(before: bytes, after: bytes) -> list[int]:
    """Page numbers (1-based) whose bytes differ, pages new in ``after`` included."""
    return [i // PAGE + 1 for i in range(0, len(after), PAGE)
            if after[i:i + PAGE] != before[i:i + PAGE]]


def page_names(data: bytes, scratch: Path) -> dict[int, str]:
    """The root page of each table and index of a database image (by number)."""
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / "names.db"
    path.write_bytes(data)
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = conn.execute("SELECT rootpage, name FROM sqlite_schema WHERE rootpage > 0")
        out = {int(root): str(name) for root, name in rows}
    finally:
        conn.close()
    path.unlink()
    return out


def frame_pages(node_url: str, token: str, traffic: Traffic) -> Counter[int]:
    """The page number of every frame the client was served (the same /sync ranges asked
    again, straight from the node: a (generation, frame) always names the same frame)."""
    pages: Counter[int] = Counter()
    with httpx.Client(base_url=node_url, timeout=120,
                      headers={"Authorization": f"Bearer {token}"}) as http:
        for e in traffic.exchanges:
            if "/sync/" not in e["path"] or e["status"] != 200:
                continue
            body = http.get(e["path"]).content
            if len(body) != e["body_bytes"]:
                raise RuntimeError(f"{e['path']}: {len(body)} bytes now, "
                                   f"{e['body_bytes']} when synced")
            for at in range(0, len(body), FRAME):
                pages[int.from_bytes(body[at:at + 4], "big")] += 1
    return pages


# -- the node ----------------------------------------------------------------------------
def fill(api: Api, opts: Options) -> int:
    """Create ``big`` with the point table and opts.size_mb MiB of blobs: the rows."""
    api.create_database(DB)
    api.query(DB, POINT_SCHEMA, {"sql": POINT_ROWS, "args": [opts.point_rows]},
              "CREATE TABLE big(id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    rows = opts.size_mb * 1024
    for first in range(1, rows + 1, FILL_ROWS):
        last = min(rows, first + FILL_ROWS - 1)
        api.query(DB, {"sql": "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 "
                       "FROM n WHERE i < ?) INSERT INTO big(id, body) "
                       "SELECT i, randomblob(?) FROM n", "args": [first, last, BLOB]})
    return rows


def shipped(api: Api) -> None:
    """Wait until the node has shipped every commit (GET history ships what is pending)."""
    response = api.http.get(f"/v1/databases/{DB}/history")
    if response.status_code != 200:
        raise RuntimeError(f"history: {response.status_code} {response.text}")


def generation(api: Api) -> int:
    return int(api.http.get(f"/db/{DB}/info").json()["current_generation"])


def read_bytes(pid: int) -> int:
    """Bytes a process has passed to read()/pread() (rchar: from files, page cache or not)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def server_image(node: ServerProcess, scratch: Path) -> bytes:
    return image(node.data_dir / "dbs" / DB / "main.db", scratch)


# -- 1. initial sync -------------------------------------------------------------------------
@dataclass
class Initial:
    """Initial syncs of one state of ``big``: libsql's and the static download's."""

    label: str
    generation: int
    file_bytes: int = 0
    sync_s: list[float] = field(default_factory=list)
    sync_bytes: list[int] = field(default_factory=list)
    sync_server_cpu_s: list[float] = field(default_factory=list)
    sync_server_read: list[int] = field(default_factory=list)  # rchar of the node
    static_s: list[float] = field(default_factory=list)
    static_bytes: list[int] = field(default_factory=list)
    kinds: list[dict[str, dict[str, int]]] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    identical: bool = True


def connect(path: Path, url: str, token: str) -> Any:
    import libsql

    return libsql.connect(str(path), sync_url=url, auth_token=token)


def download(spx: CountingProxy, work: Path, size: int) -> tuple[float, int]:
    """The static peer: curl GETs work/static/big.db through spx; seconds, bytes sent."""
    out = work / "download.db"
    spx.reset()
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "--fail", "-o", str(out), f"{spx.url}/big.db"], check=True)
    took = time.perf_counter() - started
    if out.stat().st_size != size:
        raise RuntimeError("the static download is short")
    out.unlink()
    return took, spx.traffic().down


def initial_syncs(node: ServerProcess, px: CountingProxy, spx: CountingProxy, opts: Options,
                  work: Path, label: str, gen: int) -> tuple[Initial, Any, Path]:
    """opts.runs initial syncs of a new replica (through px) and as many downloads of the
    same file from the static server (through spx, serving work/static), alternating; the
    figures, and the last replica (connection, file) kept open."""
    assert node.proc is not None
    result = Initial(label, gen)
    expected = server_image(node, work / "server")
    result.file_bytes = len(expected)
    (work / "static" / "big.db").write_bytes(expected)
    kept: tuple[Any, Path] | None = None
    for rep in range(opts.runs):
        for kind in (("sync", "static") if rep % 2 == 0 else ("static", "sync")):
            result.loads.append(os.getloadavg()[0])
            if kind == "static":
                took, sent = download(spx, work, len(expected))
                result.static_s.append(took)
                result.static_bytes.append(sent)
                say(f"  static download {rep + 1}: {took:.2f} s, {sent:,} bytes")
                continue
            if kept is not None:
                kept[0].close()
                shutil.rmtree(kept[1].parent)
            replica = work / f"replica-{rep}" / "local.db"
            replica.parent.mkdir(parents=True)
            px.reset()
            cpu0, read0 = cpu_seconds(node.proc.pid), read_bytes(node.proc.pid)
            started = time.perf_counter()
            conn = connect(replica, f"{px.url}/db/{DB}", node.admin_token)
            conn.sync()
            result.sync_s.append(time.perf_counter() - started)
            result.sync_server_cpu_s.append(cpu_seconds(node.proc.pid) - cpu0)
            result.sync_server_read.append(read_bytes(node.proc.pid) - read0)
            kept = (conn, replica)
            traffic = px.traffic()
            result.sync_bytes.append(traffic.down)
            result.kinds.append(traffic.kinds())
            result.identical &= image(replica, work / "check") == expected
            say(f"  initial sync ({label}) {rep + 1}: {result.sync_s[-1]:.2f} s, "
                f"{traffic.down:,} bytes, {traffic.kinds()}")
    assert kept is not None
    return result, kept[0], kept[1]


# -- 2. incremental sync ---------------------------------------------------------------------
@dataclass
class Incremental:
    workload: str
    commits: int
    generations: tuple[int, int]
    sent: int = 0  # bytes from the server during the sync
    changed: int = 0  # distinct pages changed (replica file before vs after)
    frames: int = 0
    sync_s: float = 0.0
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    repeated: list[tuple[int, int, str]] = field(default_factory=list)  # page, frames, what
    state_frames: int = 0  # frames of Shoal's own table _cf_SHOAL_state (the txid)
    server_read: int = 0  # rchar of the node during the sync
    distinct_in_frames: int = 0
    load: float = 0.0
    identical: bool = True
    exchanges: list[dict[str, Any]] = field(default_factory=list)

    @property
    def floor(self) -> int:
        return self.changed * PAGE


def workload(kind: str, commits: int, rows: int) -> Iterator[dict[str, Any]]:
    """The statements of a workload, one request (one commit) each."""
    if kind == "spread":
        stride = max(1, rows // commits)
        for c in range(commits):
            yield {"sql": "UPDATE big SET body = randomblob(?) WHERE id = ?",
                   "args": [BLOB, 1 + (c * stride) % rows]}
    else:
        for c in range(commits):
            yield {"sql": "INSERT INTO big(id, body) VALUES (?, randomblob(?))",
                   "args": [rows + 1 + c, BLOB]}


def incremental(node: ServerProcess, api: Api, px: CountingProxy, conn: Any, replica: Path,
                kind: str, opts: Options, rows: int, work: Path) -> Incremental:
    before = image(replica, work / "check")
    gen0 = generation(api)
    for statement in workload(kind, opts.commits, rows):
        api.query(DB, statement)
    shipped(api)
    result = Incremental(kind, opts.commits, (gen0, generation(api)))
    result.load = os.getloadavg()[0]
    assert node.proc is not None
    px.reset()
    read0 = read_bytes(node.proc.pid)
    started = time.perf_counter()
    conn.sync()
    result.sync_s = time.perf_counter() - started
    result.server_read = read_bytes(node.proc.pid) - read0
    traffic = px.traffic()
    after = image(replica, work / "check")
    result.identical = after == server_image(node, work / "server")
    result.sent, result.kinds, result.frames = traffic.down, traffic.kinds(), traffic.frames()
    result.exchanges = traffic.exchanges
    changed = changed_pages(before, after)
    result.changed = len(changed)
    pages = frame_pages(node.url, node.admin_token, traffic)
    result.distinct_in_frames = len(pages)
    names = page_names(after, work / "check")
    result.state_frames = sum(n for page, n in pages.items()
                              if names.get(page, "").lower() == STATE.lower())
    changed_set = set(changed)
    for page, count in pages.most_common(8):
        what = names.get(page, "page 1 (header, sqlite_schema)" if page == 1 else "")
        what = what or ("changed" if page in changed_set else "unchanged")
        result.repeated.append((page, count, what))
    say(f"  incremental ({kind}): {result.sent:,} bytes sent, {result.changed} pages "
        f"changed ({result.floor:,} bytes), {result.frames} frames over "
        f"{result.distinct_in_frames} pages; most served: {result.repeated[:4]}; "
        f"{result.kinds}")
    return result


# -- 3. point reads ----------------------------------------------------------------------
SYSTEMS = {"replica": "embedded replica (libsql, local read)",
           "native": "native HTTP /v1/.../query (httpx, keep-alive)",
           "hrana": "Hrana /v2/pipeline (libsql remote client)"}


def timed(read: Callable[[int], Any], ids: list[int], seconds: float) -> dict[str, float]:
    """One client reading one id after another for ``seconds``: p50, p99 (ms), reads/s."""
    latencies: list[float] = []
    clock = time.perf_counter
    started = clock()
    deadline = started + seconds
    while (now := clock()) < deadline:
        read(ids[len(latencies) % len(ids)])
        latencies.append((clock() - now) * 1000)
    elapsed = clock() - started
    return {"p50_ms": median(latencies), "p99_ms": percentile(latencies, 99),
            "rate": len(latencies) / elapsed, "reads": len(latencies)}


@contextlib.contextmanager
def reader(name: str, node: ServerProcess, conn: Any) -> Iterator[Callable[[int], Any]]:
    """One system's point read (key -> rows), on a client opened for one run: libsql's
    remote client keeps its Hrana stream between statements, and after 10 s unused (the
    other systems' runs) its next statement fails with STREAM_EXPIRED."""
    if name == "replica":
        yield lambda key: conn.execute(POINT_READ, (key,)).fetchall()
    elif name == "hrana":
        import libsql

        remote = libsql.connect(f"{node.url}/db/{DB}", auth_token=node.admin_token)
        try:
            yield lambda key: remote.execute(POINT_READ, (key,)).fetchall()
        finally:
            remote.close()
    else:
        with httpx.Client(base_url=node.url, timeout=30, headers={
                "Authorization": f"Bearer {node.admin_token}"}) as http:
            def native(key: int) -> Any:
                response = http.post(f"/v1/databases/{DB}/query", json={
                    "statements": [{"sql": POINT_READ, "args": [key]}]})
                if response.status_code != 200:
                    raise RuntimeError(f"native read: {response.status_code} {response.text}")
                return response.json()["results"][0]["rows"]
            yield native


def point_reads(node: ServerProcess, conn: Any, opts: Options) -> dict[str, list[dict[str, float]]]:
    """opts.runs runs of opts.seconds of each system, in rotating order, each after a
    check that it reads the right row and a short warm-up (not timed)."""
    ids = [random.randint(1, opts.point_rows) for _ in range(10_000)]
    want = (7, "user 7", "user7@example.com", 3.5)
    names = list(SYSTEMS)
    out: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for rep in range(opts.runs):
        for name in names[rep % 3:] + names[:rep % 3]:
            with reader(name, node, conn) as read:
                got = read(7)
                if tuple(got[0]) != want:
                    raise RuntimeError(f"{name} read {got}, not {want}")
                timed(read, ids, min(0.5, opts.seconds))
                load = os.getloadavg()[0]
                figures = timed(read, ids, opts.seconds) | {"load": load}
            out[name].append(figures)
            say(f"  point reads {rep + 1} {name}: {figures['rate']:,.0f}/s, p50 "
                f"{figures['p50_ms']:.3f} ms, p99 {figures['p99_ms']:.3f} ms")
    return out


# -- the report --------------------------------------------------------------------------
def initial_rows(r: Initial, size: str) -> list[Row]:
    kinds = r.kinds[-1] if r.kinds else {}
    parts = ", ".join(f"{k}: {v['requests']} requests, {v['body_bytes']:,} body bytes"
                      for k, v in kinds.items())
    first = (f"first of {len(r.sync_s)} (the node's caches cold): {r.sync_s[0]:.2f} s; "
             if len(r.sync_s) > 1 else "")
    loads = f"load {min(r.loads):.2f}-{max(r.loads):.2f}"
    return [
        Row(f"initial sync of {size} ({r.label}, generation {r.generation}): time",
            median(r.sync_s), "s", "curl GET of the same file (python -m http.server)",
            median(r.static_s),
            detail=f"connect + sync; {first}server CPU {median(r.sync_server_cpu_s):.2f} s; "
                   f"the node read {median(r.sync_server_read):,.0f} bytes (rchar); "
                   f"file {r.file_bytes:,} bytes; replica byte-identical to the node's file: "
                   f"{'yes' if r.identical else 'NO'}; {loads}"),
        Row(f"initial sync of {size} ({r.label}): bytes sent by the server",
            median(r.sync_bytes) / 1e6, "MB", "the same file over the static server",
            median(r.static_bytes) / 1e6,
            detail=f"{median(r.sync_bytes):,.0f} vs {median(r.static_bytes):,.0f} bytes on the "
                   f"wire; {parts}"),
    ]


def incremental_row(r: Incremental) -> Row:
    about = {"spread": "single-row updates, each on its own leaf page",
             "appends": "single-row inserts at the table's end"}[r.workload]
    served = "; ".join(f"page {p} x {n} ({what})" for p, n, what in r.repeated[:4])
    pulls = sum(k["ms"] for name, k in r.kinds.items() if name.startswith("sync"))
    return Row(f"incremental sync after {r.commits:,} commits ({r.workload}): bytes sent",
               r.sent / 1024, "KiB", f"distinct changed pages x 4 KiB ({r.changed:,} pages)",
               r.floor / 1024, f"<= {TARGET}x", r.sent <= TARGET * r.floor,
               detail=f"{about}; generations {r.generations[0]} -> {r.generations[1]}; "
                      f"{r.frames:,} frames served ({r.frames / r.commits:.2f} a commit) over "
                      f"{r.distinct_in_frames:,} distinct pages; most served: {served}; "
                      f"without the {r.state_frames:,} frames of {STATE}: "
                      f"{(r.sent - r.state_frames * FRAME) / r.floor:.2f}x; sync "
                      f"{r.sync_s * 1000:.0f} ms, of which the node answered its pulls in "
                      f"{pulls:.0f} ms; the node read {r.server_read:,} bytes; replica "
                      f"byte-identical to the node's "
                      f"file: {'yes' if r.identical else 'NO'}; load {r.load:.2f}")


def read_rows(reads: dict[str, list[dict[str, float]]]) -> list[Row]:
    def med(system: str, key: str) -> float:
        scale = 1000 if key.endswith("_ms") else 1  # latencies shown in us
        return median([x[key] * scale for x in reads[system]])

    loads = [x["load"] for runs in reads.values() for x in runs]
    rows = []
    for key, unit, label in (("p50_ms", "us", "p50"), ("p99_ms", "us", "p99"),
                             ("rate", "reads/s", "reads/s")):
        for peer in ("native", "hrana"):
            rows.append(Row(f"point read, one client, {label}: {SYSTEMS['replica']}",
                            med("replica", key), unit, SYSTEMS[peer], med(peer, key)))
    rows[-1].detail = (f"runs of each: {len(reads['replica'])}; load "
                       f"{min(loads):.2f}-{max(loads):.2f}")
    return rows


NOTES = """\
Ratios are Shoal's figure over its peer's, both from the same run (lower is better for
s, MB, KiB and us; higher for reads/s). Bytes are counted on the wire (HTTP heads
included) by a proxy in front of each server; the incremental floor is counted from the
replica's file before and after, independently of the frames Shoal served."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(argv)
    if shutil.which("curl") is None:
        raise SystemExit("bench.sync needs curl (the static download's client)")
    report = Report("sync", " ".join(["python -m bench.sync", *map(shlex.quote, argv)]),
                    asdict(opts))
    size = f"{opts.size_mb} MiB"
    with tempfile.TemporaryDirectory(prefix="shoal-bench-sync-") as tmp, \
            running_node(Path(tmp) / "data", idle_timeout=3600,
                         statement_timeout=300) as node:
        work = Path(tmp)
        api = Api(node.url, node.admin_token)
        try:
            say(f"filling {DB}: {size} of blobs, {opts.point_rows:,} point rows")
            rows = fill(api, opts)
            shipped(api)
            (work / "static").mkdir()
            with proxy(node.port) as px, static_server(work / "static") as port, \
                    proxy(port) as spx:
                first, conn, replica = initial_syncs(node, px, spx, opts, work, "fresh",
                                                     generation(api))
                increments = []
                for kind in ("spread", "appends"):
                    increments.append(incremental(node, api, px, conn, replica, kind, opts,
                                                  rows, work))
                reads = point_reads(node, conn, opts)
                conn.close()
                shutil.rmtree(replica.parent)
                later, conn, replica = initial_syncs(node, px, spx, opts, work,
                                                     f"after {2 * opts.commits:,} commits",
                                                     generation(api))
                conn.close()
        finally:
            api.close()
    report.rows = [*initial_rows(first, size), *map(incremental_row, increments),
                   *read_rows(reads), *initial_rows(later, size)]
    report.raw = {"initial": [asdict(first), asdict(later)],
                  "incremental": [asdict(x) | {"floor": x.floor} for x in increments],
                  "reads": reads}
    title = "Embedded replicas (libSQL sync)" + ("" if opts.mode == "full"
                                                  else f" (--{opts.mode})")
    if opts.json_path:
        print_table(title, report.rows)
        Path(opts.json_path).write_text(json.dumps({
            "kind": report.kind, "command": report.command, "machine": report.machine(),
            "options": report.options, "rows": [r.as_json() for r in report.rows],
            "raw": report.raw}, indent=2) + "\n")
        print(f"bench: wrote {opts.json_path}")
    else:
        report.publish(title, opts.mode != "full", NOTES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
