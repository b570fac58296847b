"""A full disk: nothing acknowledged is lost, reads go on, writes resume by themselves.

Each test gives a real `shoal serve` a data directory on a tmpfs of its own (its
store elsewhere unless said otherwise), puts a ballast file beside it, and writes
rows until the disk is full. Then:

- every refused write is ``507 DISK_FULL``, never a 500; so are a new database and a
  new token; ``/ready`` says ``read_only`` (``disk_full``);
- reads are served: point and multi-statement reads, and a database that was closed
  and opens while the disk is full;
- deleting the ballast (space back, outside Shoal) resumes writes within seconds,
  with no restart;
- a node killed on the full disk starts (read-only), and resumes the same way, also
  when its store is a folder on that disk (the default; then the store's side may
  answer ``503 STORAGE_UNAVAILABLE``);
- deleting a database on the full disk removes its files, and writes resume;
- every acknowledged row is there after recovery, and on a node started on an empty
  data directory with the same store.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.errors import Code
from tests.integration.api_support import error_of, ok, query, rows, wait_until
from tests.support.server import ServerProcess

MIB = 1 << 20
DISK = "24m"  # the tmpfs under the data directory
BALLAST = 5 * MIB  # a file beside the node's; deleting it gives the space back
ROW = 48 * 1024  # bytes of one row's blob
RESERVE = MIB  # disk_reserve_bytes: writes resume at twice this much free
ADMIN = "disk-full-admin-token"
FILL = "INSERT INTO t(b) VALUES (randomblob(?)) RETURNING id"
BOTH = ("DISK_FULL", "STORAGE_UNAVAILABLE")  # the node's disk; the store's folder on it


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A data directory that is a small tmpfs of its own (the node's log stays outside)."""
    data = tmp_path / "data"
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(data)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root): "
                    f"{mounted.stderr.strip()}")
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def node_of(data: Path, store: Path | None, **settings: Any) -> ServerProcess:
    """A node whose branches keep their commits in the WAL (no checkpoint, no snapshot):
    a checkpoint needs room for the pages it copies, so one that starts once space is
    back can take it again at once (docs/operations.md); these tests look at the node's
    own handling. Two open branches at most: opening a third closes one."""
    base: dict[str, Any] = {"admin_token": ADMIN, "disk_reserve_bytes": RESERVE,
                            "checkpoint_frames": 1 << 30, "snapshot_log_bytes": 1 << 40,
                            "max_open": 2}
    if store is not None:
        base["store"] = store.as_uri()
    return ServerProcess(data, base | settings)


@pytest.fixture
def nodes() -> Iterator[list[ServerProcess]]:
    """Nodes to stop at the end (before the tmpfs is unmounted: request this after disk)."""
    started: list[ServerProcess] = []
    yield started
    for node in started:
        node.stop()


def ballast(data: Path) -> Path:
    path = data / "ballast"
    with open(path, "wb") as fh:
        fh.write(os.urandom(BALLAST))
    return path


def ready(client: httpx.Client) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/ready").json()
    return body


def refusal(r: httpx.Response, codes: tuple[str, ...]) -> dict[str, Any]:
    """r is a refused write with one of ``codes`` (a 500 never is); its error object."""
    assert r.status_code != 500, r.text
    code = r.json()["error"]["code"] if r.status_code in (503, 507) else "?"
    assert code in codes, r.text
    return error_of(r, Code[code].status, code)


def fill(client: httpx.Client, acked: list[int],
         codes: tuple[str, ...] = ("DISK_FULL",)) -> dict[str, Any]:
    """Write rows until one is refused; record each acknowledged id. Returns the
    refusal's error object."""
    for _ in range(2000):
        r = query(client, "a", {"sql": FILL, "args": [ROW]})
        if r.status_code != 200:
            return refusal(r, codes)
        acked.append(r.json()["results"][0]["rows"][0][0])
    raise AssertionError("the disk never filled")


def refused_fast(client: httpx.Client) -> None:
    """While full, a write is refused at once, before it reaches the disk."""
    started = time.monotonic()
    err = error_of(query(client, "a", {"sql": FILL, "args": [10]}), 507, "DISK_FULL")
    assert "resume by themselves" in err["message"], err
    assert err["hint"] == Code.DISK_FULL.hint
    assert time.monotonic() - started < 0.5
    assert ready(client)["status"] == "read_only"
    assert "disk_full" in conditions(client)


def resumes(client: httpx.Client, acked: list[int], within: float = 3.0,
            codes: tuple[str, ...] = ("DISK_FULL",)) -> None:
    """Writes succeed again by themselves, and the node no longer says its disk is full."""

    def written() -> bool:
        r = query(client, "a", {"sql": FILL, "args": [10]})
        if r.status_code == 200:
            acked.append(r.json()["results"][0]["rows"][0][0])
            return True
        refusal(r, codes)
        return False

    wait_until(written, timeout=within, what="writes to resume")
    assert "disk_full" not in conditions(client)


def conditions(client: httpx.Client) -> list[str]:
    return [r["condition"] for r in ready(client).get("reasons", [])]


def has_all(client: httpx.Client, acked: list[int]) -> None:
    found = {r[0] for r in rows(client, "a", "SELECT id FROM t")}
    missing = sorted(set(acked) - found)
    assert not missing, f"{len(missing)} acknowledged rows lost: {missing[:10]}"


def on_empty_disk(tmp_path: Path, store: Path, acked: list[int],
                  nodes: list[ServerProcess]) -> None:
    """A node on an empty data directory with the same store has every acknowledged row."""
    fresh = node_of(tmp_path / "fresh", store)
    nodes.append(fresh)
    fresh.start()
    with fresh.client() as client:
        has_all(client, acked)


def create(client: httpx.Client, *names: str) -> None:
    """Databases with a table each: ``a`` is the one filled."""
    for name in names:
        ok(client.post("/v1/databases", json={"name": name}), 201)
        ok(query(client, name, "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB)"))


def test_full_disk_refuses_writes_serves_reads_and_resumes(
        disk: Path, nodes: list[ServerProcess], tmp_path: Path) -> None:
    store = tmp_path / "store"
    node = node_of(disk, store)
    nodes.append(node)
    node.start()
    acked: list[int] = []
    with node.client() as client:
        create(client, "a", "b")
        ok(query(client, "b", "INSERT INTO t(id) VALUES (42)"))
        create(client, "c")  # opening c closed a
        extra = ballast(disk)
        err = fill(client, acked)  # opening a closed b
        # SQLite met the full disk, or the change feed's spool did, just before the COMMIT
        # (its write failing, or cut short: both are ENOSPC, errno 28)
        assert err.get("extended_code", "").startswith(("SQLITE_FULL", "SQLITE_IOERR")) or \
            "No space left on device" in err["message"] or "[Errno 28]" in err["message"], err
        assert len(acked) > 20
        refused_fast(client)

        # reads go on: a point read, a multi-statement read, a database that opens now
        last = acked[-1]
        assert rows(client, "a", "SELECT id FROM t WHERE id = ?", [last]) == [[last]]
        both = ok(query(client, "a", "SELECT count(*) FROM t", "SELECT max(id) FROM t"))
        assert [r["rows"] for r in both["results"]] == [[[len(acked)]], [[last]]]
        assert not ok(client.get("/v1/databases/b"))["open"]
        assert rows(client, "b", "SELECT id FROM t") == [[42]]

        # the node's other writes are refused the same way
        error_of(client.post("/v1/databases", json={"name": "d"}), 507, "DISK_FULL")
        error_of(client.post("/v1/tokens", json={"databases": ["a"], "access": "read",
                                                  "expires_in": 60}), 507, "DISK_FULL")
        error_of(query(client, "b", "INSERT INTO t(id) VALUES (1)"), 507, "DISK_FULL")
        error_of(client.post("/v1/databases/b/transactions", json={"mode": "write"}), 507,
                 "DISK_FULL")

        extra.unlink()  # an operator frees space; nobody restarts anything
        resumes(client, acked)
        ok(client.post("/v1/databases", json={"name": "d"}), 201)
        ok(query(client, "b", "INSERT INTO t(id) VALUES (1)"))
        has_all(client, acked)
        assert (disk / "reserve").stat().st_size == RESERVE  # made again
    node.stop()
    on_empty_disk(tmp_path, store, acked, nodes)


def test_killed_on_a_full_disk_starts_read_only_and_resumes(
        disk: Path, nodes: list[ServerProcess], tmp_path: Path) -> None:
    store = tmp_path / "store"
    node = node_of(disk, store)
    nodes.append(node)
    node.start()
    acked: list[int] = []
    with node.client() as client:
        create(client, "a")
        extra = ballast(disk)
        fill(client, acked)
    node.kill()

    node.start()  # on the full disk
    with node.client() as client:
        has_all(client, acked)
        refused_fast(client)
        extra.unlink()
        resumes(client, acked)
        has_all(client, acked)
    node.stop()
    on_empty_disk(tmp_path, store, acked, nodes)


def test_store_on_the_full_disk_refuses_clearly_and_recovers(
        disk: Path, nodes: list[ServerProcess]) -> None:
    """The default store (a folder in the data directory) fills with the disk: writes are
    refused with DISK_FULL or, for the store's side, STORAGE_UNAVAILABLE; a node killed
    then starts, and both clear by themselves once there is room."""
    node = node_of(disk, None)
    nodes.append(node)
    node.start()
    acked: list[int] = []
    with node.client() as client:
        create(client, "a")
        extra = ballast(disk)
        fill(client, acked, BOTH)
    node.kill()
    node.start()  # its store is full too: the start writes the lease there
    with node.client() as client:
        has_all(client, acked)
        refusal(query(client, "a", {"sql": FILL, "args": [10]}), BOTH)
        extra.unlink()
        resumes(client, acked, within=10.0, codes=BOTH)
        has_all(client, acked)
    node.stop()
    node.start()  # what is not in the store yet ships from the local WAL
    with node.client() as client:
        has_all(client, acked)


def test_deleting_a_database_on_a_full_disk_frees_its_files(
        disk: Path, nodes: list[ServerProcess], tmp_path: Path) -> None:
    """No reserve and not a free block: the catalog's write fails, the files go first."""
    node = node_of(disk, tmp_path / "store", disk_reserve_bytes=0)
    nodes.append(node)
    node.start()
    with node.client() as client:
        create(client, "a", "b")
        ballast(disk)
        fill(client, [])
        squeeze(disk)
        r = client.delete("/v1/databases/a")
        assert not (disk / "dbs" / "a").exists(), r.text
        assert r.status_code == 204, r.text
        wait_until(lambda: query(client, "b", "INSERT INTO t(id) VALUES (1)").status_code
                   == 200, timeout=3, what="writes to resume")


def squeeze(data: Path) -> None:
    """Take the last free blocks too (SQLite may have left a few)."""
    fd = os.open(data / "squeeze", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError):
            while True:
                os.write(fd, bytes(4096))
    finally:
        os.close(fd)
