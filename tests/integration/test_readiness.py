"""Operators see trouble: readiness, the store check at start, the log on stderr.

Real `shoal serve` processes on a file:// store (and moto's S3 for the start-up check):

- ``/ready`` says ``read_only`` (503) with its reasons while the node refuses writes, for
  a lease it cannot renew and for a store too far behind, and ``ok`` once it recovers;
  ``/health`` stays 200 throughout, and each transition is a WARNING line.
- A store that cannot be used stops the start in under 5 s with the cause and a hint.
- With the access log on, every stderr line is one JSON object; access lines carry the
  error code and the token's id, never a token.
- Partial files of a killed restore are gone after the next start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.api_support import (
    error_of,
    make_token,
    metric_value,
    ok,
    query,
    rows,
    wait_until,
)
from tests.integration.hrana_support import execute, http_error, pipeline, post
from tests.support.s3 import MotoS3, moto_server
from tests.support.server import ServerProcess, free_port

DB = "watched"
ADMIN = "readiness-admin-token-0123456789"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def ready(anon: httpx.Client) -> tuple[int, dict[str, Any]]:
    r = anon.get("/ready")
    return r.status_code, r.json()


def reason(body: dict[str, Any], condition: str) -> dict[str, Any]:
    found = [r for r in body.get("reasons", []) if r["condition"] == condition]
    assert found, body
    datetime.fromisoformat(found[0]["since"])
    return found[0]


def readiness(anon: httpx.Client) -> float | None:
    return metric_value(anon.get("/metrics").text, "shoal_readiness")


def json_lines(node: ServerProcess) -> list[dict[str, Any]]:
    """Every line the node wrote to stderr (and stdout), each parsed as one JSON object."""
    assert node.log_path is not None
    out = []
    for line in node.log_path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line on stderr: {line!r}")
    return out


def test_ready_is_open_listed_and_ok(server: ServerProcess) -> None:
    with server.client("") as anon:
        assert ready(anon) == (200, {"status": "ok"})
        assert ok(httpx.get(server.url + "/ready", headers={"Authorization": "Bearer junk"})) \
            == {"status": "ok"}  # no token needed, a bad one does not matter
        doc = ok(anon.get("/openapi.json"))["paths"]["/ready"]["get"]
        assert "security" not in doc and {"200", "503"} <= set(doc["responses"])
        assert readiness(anon) == 0.0


def test_a_node_that_cannot_renew_its_lease_refuses_writes_until_it_can(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    store = tmp_path / "store"
    node = start_server(tmp_path / "node", store=store.as_uri(), lease_ttl=2.0,
                        admin_token=ADMIN, access_log=True)
    with node.client() as http, node.client("") as anon:
        ok(http.post("/v1/databases", json={"name": DB}), 201)
        ok(query(http, DB, "CREATE TABLE t(a)"))
        # Renewals fail while node/ is a file (the test runs as root: chmod would not do)
        folder, aside = store / "node", tmp_path / "node-aside"
        folder.rename(aside)
        folder.write_text("")
        wait_until(lambda: ready(anon)[0] == 503, timeout=10, what="/ready to say read_only")
        status, body = ready(anon)
        assert (status, body["status"]) == (503, "read_only")
        lease = reason(body, "lease")
        assert lease["level"] == "read_only" and "has not been renewed" in lease["message"]
        error_of(query(http, DB, "INSERT INTO t VALUES (1)"), 503, "STORAGE_UNAVAILABLE")
        assert rows(http, DB, "SELECT count(*) FROM t") == [[0]]  # reads go on
        assert ok(anon.get("/health")) == {"status": "ok"}  # alive all along
        assert readiness(anon) == 2.0
        folder.unlink()
        aside.rename(folder)
        wait_until(lambda: ready(anon) == (200, {"status": "ok"}), timeout=20,
                   what="/ready to say ok again")
        ok(query(http, DB, "INSERT INTO t VALUES (1)"))
    node.stop()
    said = [e["message"] for e in json_lines(node)
            if e.get("logger") == "shoal.health" and e["level"] == "WARNING"]
    assert any(m.startswith("readiness read_only (was ok): the node refuses writes; lease "
                            "read_only: this node does not hold") for m in said), said
    assert any("lease cleared (was read_only" in m for m in said), said
    assert said[-1].startswith("readiness ok (was "), said


def test_a_store_too_far_behind_makes_the_node_read_only_until_it_catches_up(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    store = tmp_path / "store"
    node = start_server(tmp_path / "node", store=store.as_uri(), sync_interval=0.02,
                        max_unshipped_bytes=32768)
    with node.client() as http, node.client("") as anon:
        ok(http.post("/v1/databases", json={"name": DB}), 201)
        blocker = store / "dbs" / DB / "log"  # every segment of the database goes below it
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_bytes(b"")
        ok(query(http, DB, "CREATE TABLE t(id INTEGER PRIMARY KEY, pad BLOB)"))
        for i in range(200):
            r = query(http, DB, {"sql": "INSERT INTO t VALUES (?, zeroblob(4000))",
                                 "args": [i]})
            if r.status_code != 200:
                break
        error_of(r, 503, "STORAGE_UNAVAILABLE")
        wait_until(lambda: ready(anon)[0] == 503, what="/ready to say read_only")
        store_reason = reason(ready(anon)[1], "store")
        assert store_reason["level"] == "read_only"
        assert "max_unshipped_bytes" in store_reason["message"]
        assert "file:" not in json.dumps(ready(anon)[1])  # /ready is open: no store address
        blocker.unlink()
        wait_until(lambda: ready(anon) == (200, {"status": "ok"}), timeout=30,
                   what="the backlog to ship")
        ok(query(http, DB, "INSERT INTO t VALUES (-1, NULL)"))


def test_stderr_is_json_and_access_lines_name_the_code_and_the_token(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    node = start_server(tmp_path / "node", admin_token=ADMIN, access_log=True)
    with node.client() as admin:
        ok(admin.post("/v1/databases", json={"name": DB}), 201)
        token_id, token = make_token(admin, [DB], "write")
        with node.client(token) as c:
            ok(query(c, DB, 'CREATE TABLE "quoted ""name"""(a)'))
            error_of(query(c, DB, "SELECT * FROM nowhere"), 400, "SQLITE_ERROR")
            error_of(c.get("/v1/databases/other"), 403, "FORBIDDEN")
            pipeline(c, DB, [execute("SELECT 1"), {"type": "close"}])
        with node.client(token + "x") as bad:
            http_error(post(bad, DB, {"baton": None, "requests": []}), 401, "TOKEN_INVALID")
        error_of(admin.get("/nope"), 404, "NOT_FOUND")
    node.stop()
    lines = json_lines(node)
    assert {"ts", "level", "logger", "message"} <= set(lines[0])
    assert lines[0]["message"] == f"serving {node.data_dir} on http://127.0.0.1:{node.port}"
    access = [e for e in lines if "route" in e]
    by_status = {(e["route"], e["status"]): e for e in access}
    failed = by_status["/v1/databases/{db}/query", 400]
    assert (failed["code"], failed["token"], failed["database"]) == ("SQLITE_ERROR", token_id, DB)
    assert by_status["/v1/databases/{db}", 403]["code"] == "FORBIDDEN"
    assert by_status["/db/{db}/v2/pipeline", 200]["token"] == token_id
    assert "code" not in by_status["/db/{db}/v2/pipeline", 200]
    unknown = by_status["/db/{db}/v2/pipeline", 401]
    assert unknown["code"] == "TOKEN_INVALID" and "token" not in unknown
    unrouted = by_status["unmatched", 404]  # refused before the token was read
    assert unrouted["code"] == "NOT_FOUND" and "token" not in unrouted
    assert by_status["/v1/databases", 201]["token"] == "admin" and \
        "code" not in by_status["/v1/databases", 201]
    everything = json.dumps(lines)
    assert ADMIN not in everything and token.split(".")[2] not in everything


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with moto_server() as server:
        yield server


def cannot_start(tmp_path: Path, store: str, endpoint: str | None = None,
                 **env: str) -> tuple[float, str]:
    """Run `shoal serve` on a store it cannot use: (seconds until it exited 1, stderr)."""
    args = [sys.executable, "-m", "shoal", "serve", "--data", str(tmp_path / "data"),
            "--port", str(free_port()), "--store", store]
    if endpoint:
        args += ["--s3-endpoint", endpoint]
    started = time.monotonic()
    proc = subprocess.run(args, env=os.environ | AWS_ENV | env, capture_output=True,
                          timeout=30, text=True)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    return elapsed, proc.stderr


def test_a_missing_bucket_stops_the_start_at_once_with_a_hint(moto: MotoS3,
                                                              tmp_path: Path) -> None:
    elapsed, err = cannot_start(tmp_path, "s3://no-such-bucket/shoal", moto.endpoint)
    assert elapsed < 5, err
    lines = [json.loads(line) for line in err.splitlines()]  # access logs on: JSON
    [line] = [e for e in lines if e["level"] == "ERROR"]
    assert line["code"] == "STORE_UNUSABLE" and line["logger"] == "shoal"
    assert line["message"].startswith("cannot start: STORE_UNUSABLE: the bucket "
                                      "'no-such-bucket' does not exist")
    assert f"aws s3 mb s3://no-such-bucket --endpoint-url {moto.endpoint}" in line["hint"]


def test_an_endpoint_nobody_listens_on_stops_the_start_at_once(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    elapsed, err = cannot_start(tmp_path, "s3://bucket/shoal", dead,
                                SHOAL_ACCESS_LOG="false", SHOAL_LEASE_WAIT="60")
    assert elapsed < 5, err
    assert err.splitlines()[-2:] == [
        f"shoal: cannot start: STORE_UNUSABLE: cannot reach the object store at {dead}: Could "
        f"not connect to the endpoint URL: \"{dead}/bucket?list-type=2&prefix=shoal%2F&"
        f"max-keys=1&encoding-type=url\"",
        "shoal: hint: Check s3_endpoint (scheme, host, port) and that the service runs and is "
        "reachable from this host."], err


def test_a_file_store_that_cannot_be_a_folder_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    _, err = cannot_start(tmp_path, (tmp_path / "file" / "store").as_uri(),
                          SHOAL_ACCESS_LOG="false")
    assert "STORE_UNUSABLE" in err and "part of its path is a file" in err


def test_leftovers_of_a_killed_restore_are_removed_at_start(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    node = start_server(tmp_path / "node", admin_token=ADMIN)
    with node.client() as http:
        ok(http.post("/v1/databases", json={"name": DB}), 201)
        ok(query(http, DB, "CREATE TABLE t(a)", "INSERT INTO t VALUES (1)"))
    node.kill()
    partial = node.data_dir / "dbs" / DB / "main.db.restoring"
    partial.write_bytes(b"half a restore")
    scratch = node.data_dir / "tmp" / "tmp1234"
    scratch.mkdir(parents=True)
    (scratch / "new.db").write_bytes(b"half an image")
    node.start()
    assert not partial.exists() and not (node.data_dir / "tmp").exists()
    assert "removed 2 leftovers of an interrupted run" in node.log()
    with node.client() as http:
        assert rows(http, DB, "SELECT a FROM t") == [[1]]
