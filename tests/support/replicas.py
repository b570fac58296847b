"""Embedded replicas of the published libSQL clients, driven by plans of steps, each client
in a process of its own (tests/support/replica_driver.py for Python's, and
tests/conformance/node/replica.mjs for @libsql/client), and the check every test ends with."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.integration.api_support import ok, query
from tests.support.server import ServerProcess

DRIVER = Path(__file__).resolve().parent / "replica_driver.py"
NODE_DIR = Path(__file__).resolve().parents[1] / "conformance" / "node"
ROWS = "SELECT id, v FROM t ORDER BY id"


def run_replica(client: str, file: Path, url: str, token: str, steps: list[dict[str, Any]],
                offline: bool = False) -> list[Any]:
    """Run ``steps`` on the replica in ``file`` with ``client`` (``libsql``,
    ``libsql_experimental`` or ``node``); the answers, one per step."""
    plan = json.dumps({"file": str(file), "url": url, "token": token, "steps": steps,
                       "offline": offline})
    if client == "node":
        cmd, cwd = ["node", "replica.mjs", plan], NODE_DIR
    else:
        cmd, cwd = [sys.executable, str(DRIVER), client, plan], DRIVER.parent
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    answers: list[Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return answers


def intact(file: Path, tmp: Path) -> list[list[Any]]:
    """The replica's rows, read from a copy of its files (the client's own stay as they
    are), after ``PRAGMA integrity_check``."""
    copy = tmp / f"check-{file.name}"
    for suffix in ("", "-wal"):
        if Path(f"{file}{suffix}").exists():
            shutil.copyfile(f"{file}{suffix}", f"{copy}{suffix}")
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return [list(row) for row in conn.execute(ROWS)]
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)


def server_rows(node: ServerProcess, db: str, branch: str | None = None) -> list[list[Any]]:
    path = f"/v1/databases/{db}" + (f"/branches/{branch}" if branch else "") + "/query"
    with node.client() as c:
        r = c.post(path, json={"statements": [{"sql": ROWS}]})
        assert r.status_code == 200, r.text
        rows: list[list[Any]] = r.json()["results"][0]["rows"]
        return rows


def write(node: ServerProcess, db: str, *sqls: str, branch: str | None = None) -> str:
    """Statements run on the server (one transaction); the commit's bookmark."""
    path = f"/v1/databases/{db}" + (f"/branches/{branch}" if branch else "") + "/query"
    with node.client() as c:
        r = c.post(path, json={"statements": [{"sql": sql} for sql in sqls]})
        assert r.status_code == 200, r.text
        return str(r.json()["meta"]["bookmark"])


def make(node: ServerProcess, db: str) -> None:
    with node.client() as c:
        assert c.post("/v1/databases", json={"name": db}).status_code == 201
    write(node, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
          "INSERT INTO t(v) VALUES ('a'), ('b')")


def admin_rows(admin: httpx.Client, db: str) -> list[list[Any]]:
    """The table's rows through a client of the node (the server's truth)."""
    out: list[list[Any]] = ok(query(admin, db, ROWS))["results"][0]["rows"]
    return out


def insert(admin: httpx.Client, db: str, *values: str) -> str:
    """One commit per value; the last one's bookmark."""
    mark = ""
    for v in values:
        mark = ok(query(admin, db, {"sql": "INSERT INTO t(v) VALUES (?)", "args": [v]}))[
            "meta"]["bookmark"]
    return mark


def compact_between(node: ServerProcess, db: str) -> None:
    """Writes, a compaction (VACUUM: the log keeps that txid only as a snapshot), a write."""
    write(node, db, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                    "WHERE i < 300) INSERT INTO t(v) SELECT 'x' || i FROM n")
    write(node, db, "DELETE FROM t WHERE id % 3 = 0")
    with node.client() as c:
        assert c.post(f"/v1/databases/{db}/compact").status_code == 200
    write(node, db, "INSERT INTO t(v) VALUES ('after compaction')")
