"""`shoal serve --workers N`: a supervisor and N worker nodes behind one port, on one store.

Real processes: the public port is served by every worker (SO_REUSEPORT), the workers are
the members of one cluster, a worker killed with ``kill -9`` is started again, SIGTERM to
the supervisor stops every worker and exits 0, and what --workers cannot honour is refused
before anything starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import SSL_CONTEXT, ServerProcess
from tests.support.storage import ok, run

ADMIN = "workers-admin-token"
TTL = 2.0


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data", {"workers": 2, "admin_token": ADMIN,
                                               "lease_ttl": TTL, "lease_wait": 10})
    server.start(timeout=30)
    yield server
    server.stop()


def fresh(server: ServerProcess) -> httpx.Client:
    """A client on a new connection: the kernel picks the worker for each connection."""
    return httpx.Client(base_url=server.url, timeout=30, verify=SSL_CONTEXT,
                        headers={"Authorization": f"Bearer {ADMIN}"})


def cluster(server: ServerProcess) -> dict[str, Any]:
    with fresh(server) as http:
        return ok(http.get("/v1/cluster"))


def settled(server: ServerProcess, count: int = 2, timeout: float = 20.0) -> dict[str, int]:
    """Wait until the worker answering sees ``count`` members, each read from its record
    (one known only by its announcement has pid 0); their node ids -> pids."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            members = cluster(server)["members"]
            if len(members) == count and all(m["pid"] for m in members):
                return {m["node"]: m["pid"] for m in members}
        except (httpx.HTTPError, AssertionError):
            pass
        assert time.monotonic() < deadline, f"not {count} members in {timeout} s"
        time.sleep(0.1)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is no worker
    except FileNotFoundError:
        return True


def write_and_read(server: ServerProcess, db: str, row: str) -> None:
    """A write, then a read on a new connection (maybe another worker's replica) that
    carries the write's bookmark, as a session does: it sees the write."""
    with fresh(server) as http:
        bookmark = run(http, db, {"sql": "INSERT INTO w VALUES (?)",
                                  "args": [row]})["meta"]["bookmark"]
    with fresh(server) as http:
        http.headers["Shoal-Bookmark"] = bookmark
        rows = run(http, db, {"sql": "SELECT id FROM w WHERE id = ?", "args": [row]})
    assert rows["results"][0]["rows"] == [[row]]


def test_two_workers_serve_one_port_on_one_store(workers: ServerProcess) -> None:
    pids = settled(workers)
    assert len(pids) == 2 and all(not gone(pid) for pid in pids.values())
    data = workers.data_dir
    assert sorted(p.name for p in (data / "workers").iterdir()) == ["0", "1"]
    assert (data / "store").is_dir()  # the data root's default store, shared
    with fresh(workers) as http:
        for i in range(6):
            ok(http.post("/v1/databases", json={"name": f"db{i}"}), 201)
            run(http, f"db{i}", "CREATE TABLE w(id TEXT PRIMARY KEY)")
    answered = set()
    for n in range(30):
        write_and_read(workers, f"db{n % 6}", f"row{n}")
        answered.add(cluster(workers)["node"])
    assert answered == set(pids)  # both workers took connections on the public port
    led = []
    for _ in range(20):
        status = cluster(workers)
        led.append((status["node"], status["databases_led"]))
    assert sum(dict(led).values()) == 6  # each database led by one worker
    with fresh(workers) as http:
        http.headers["Shoal-Consistency"] = "strong"  # the leader's: every write (a
        for i in range(6):  # replica without a bookmark may be a moment behind)
            got = run(http, f"db{i}", "SELECT count(*) FROM w")["results"][0]["rows"]
            assert got == [[5]]
    second = serve(workers.data_dir.parent / "second", "--workers", "2",
                   "--port", str(workers.port))  # SO_REUSEPORT would let it share the port
    assert second.returncode == 1
    assert "cannot listen" in second.stderr and "in use" in second.stderr


def test_a_killed_worker_is_started_again_and_sigterm_stops_them_all(
        workers: ServerProcess) -> None:
    pids = settled(workers)
    with fresh(workers) as http:
        for i in range(4):
            ok(http.post("/v1/databases", json={"name": f"k{i}"}), 201)
            run(http, f"k{i}", "CREATE TABLE w(id TEXT PRIMARY KEY)")
    victim, survivor = sorted(pids)
    os.kill(pids[victim], signal.SIGKILL)
    deadline = time.monotonic() + 30
    n = 0
    while True:  # requests during the window may fail; the worker comes back
        n += 1
        with contextlib.suppress(httpx.HTTPError, AssertionError):
            write_and_read(workers, f"k{n % 4}", f"window{n}")
        try:
            now = settled(workers, timeout=1)
        except AssertionError:
            now = {}
        if now.get(victim, pids[victim]) != pids[victim]:
            break  # the same node (its data directory) in a new process
        assert time.monotonic() < deadline, "the killed worker was not started again"
        time.sleep(0.1)
    assert now[survivor] == pids[survivor]
    assert gone(pids[victim])
    time.sleep(0.5)
    for i in range(24):  # back: every request succeeds, through either worker
        write_and_read(workers, f"k{i % 4}", f"after{i}")
    assert "worker" in workers.log() and "starting it again" in workers.log()

    proc = workers.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, workers.log()
    deadline = time.monotonic() + 5
    while not all(gone(pid) for pid in now.values()):
        assert time.monotonic() < deadline, "a worker outlived the supervisor"
        time.sleep(0.05)


def serve(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`shoal serve` run to its end (on port 0 unless the flags name one)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    environ |= {"SHOAL_ACCESS_LOG": "false", "SHOAL_LEASE_WAIT": "2", "SHOAL_PORT": "0"}
    return subprocess.run(
        [sys.executable, "-m", "shoal", "serve", "--data", str(tmp_path / "data"), *flags],
        env=environ, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("flags", "said"), [
    (["--workers", "0"], "workers must be at least 1"),
    (["--workers", "257"], "workers must be at most 256"),
    (["--workers", "2", "--advertise-url", "http://127.0.0.1:9"], "cannot take advertise_url"),
    (["--workers", "2", "--store", "none"], "needs an object store"),
    (["--workers", "2", "--http-server", "granian"], "http_server = 'uvicorn'"),
])
def test_what_workers_cannot_honour_is_refused(tmp_path: Path, flags: list[str],
                                               said: str) -> None:
    done = serve(tmp_path, *flags)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr
    assert not (tmp_path / "data").exists()


def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path: Path) -> None:
    done = serve(tmp_path, "--workers", "2", "--store", "bogus://nowhere")
    assert done.returncode == 1, done.stderr
    assert "STORE_UNUSABLE" in done.stderr
    assert "worker 0 exited with code 1 before it served" in done.stderr
    assert "starting it again" not in done.stderr
