"""A node is stateless: kill -9 it, delete its data directory, start another on the same store.

Writers hammer two databases and a branch while the node is killed. The new
node, on an empty disk, must serve every database and branch with every
acknowledged commit (``remote`` durability: every one; ``local``: all but those
acknowledged within the last ``sync_interval``), accept the tokens the first
node issued (and refuse the one it revoked), and have the same generated admin
token. Runs on a file:// store and on S3 (moto's server). The killed node's lease is
released for the new node (tests/support/lease.py): the lapse is
tests/integration/test_storage_lease.py's subject.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.storage import open_store
from tests.support.lease import release_killed_lease
from tests.support.s3 import MotoS3, moto_server
from tests.support.server import ServerProcess
from tests.support.storage import TABLE, Acked, Writers, assert_log_contiguous, ids, ok, run

SYNC_INTERVAL = 0.1
SLACK = 0.6  # beyond sync_interval: an upload's own time, on a busy test machine
TARGETS = [("alpha", "main"), ("alpha", "dev"), ("beta", "main")]


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with moto_server() as server:
        yield server


def store_settings(backend: str, tmp_path: Path, moto: MotoS3 | None,
                   monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    if backend == "file":
        return {"store": (tmp_path / "store").as_uri()}
    assert moto is not None
    bucket = f"stateless-{time.monotonic_ns()}"
    moto.client.create_bucket(Bucket=bucket)
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)  # the node's boto3 reads them, as in production
    return {"store": f"s3://{bucket}/shoal", "s3_endpoint": moto.endpoint}


@pytest.mark.parametrize("durability", ["remote", "local"])
@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_node_on_an_empty_disk_serves_every_acknowledged_commit(
        backend: str, durability: str, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch, start_server: Callable[..., ServerProcess]) -> None:
    moto = request.getfixturevalue("moto") if backend == "s3" else None
    settings = store_settings(backend, tmp_path, moto, monkeypatch) | {
        "durability": durability, "sync_interval": SYNC_INTERVAL}
    first = start_server(tmp_path / "first", **settings)
    admin_token = first.admin_token  # generated: it must live in the store too
    with first.client() as http:
        for db in ("alpha", "beta"):
            ok(http.post("/v1/databases", json={"name": db}), 201)
            run(http, db, TABLE, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        ok(http.post("/v1/databases/alpha/branches", json={"name": "dev"}), 201)
        writer = ok(http.post("/v1/tokens", json={"databases": ["alpha"], "access": "write"}),
                    201)
        revoked = ok(http.post("/v1/tokens", json={"databases": "*", "access": "read"}), 201)
        assert http.delete(f"/v1/tokens/{revoked['id']}").status_code == 204

    acked = Acked()
    with Writers(first, TARGETS, "w", acked) as writers:
        writers.wait_ready()
        if durability == "local":  # long enough that some writes are older than the window
            writers.stop.wait(SYNC_INTERVAL + SLACK + 0.3)
        killed_at = time.time()
        first.kill()
    assert acked.errors == []
    shutil.rmtree(first.data_dir)
    store = open_store(settings["store"], endpoint_url=settings.get("s3_endpoint"))
    release_killed_lease(first, store)

    second = start_server(tmp_path / "second", **settings)
    assert second.admin_token == admin_token
    with second.client() as http:
        listed = ok(http.get("/v1/databases"))["databases"]
        assert sorted(d["name"] for d in listed) == ["alpha", "beta"]
        branches = ok(http.get("/v1/databases/alpha/branches"))["branches"]
        assert sorted(b["name"] for b in branches) == ["dev", "main"]
        for db, branch in TARGETS:
            present = ids(http, db, branch)
            if durability == "remote":
                must = acked.ids(db, branch)
            else:
                must = acked.ids(db, branch, before=killed_at - SYNC_INTERVAL - SLACK)
                assert must, "the workload was too short to check anything"
            missing = must - present
            assert not missing, f"{db}/{branch} lost acknowledged rows: {sorted(missing)[:5]}"
        # the branch kept its own history: the writes to dev are not on main, and back
        assert not {r for r in ids(http, "alpha", "main") if "-dev-" in r}
        assert not {r for r in ids(http, "alpha", "dev") if "-main-" in r}
        # the second node carries on writing, with the next txids
        head = ok(http.get("/v1/databases/beta"))["txid"]
        assert run(http, "beta", "INSERT INTO t(v) VALUES ('after')")["meta"]["txid"] == head + 1

    with httpx.Client(base_url=second.url, timeout=30,
                      headers={"Authorization": f"Bearer {writer['token']}"}) as http:
        assert run(http, "alpha", "SELECT count(*) FROM w")["results"][0]["rows"][0][0] > 0
    with httpx.Client(base_url=second.url, timeout=30,
                      headers={"Authorization": f"Bearer {revoked['token']}"}) as http:
        r = http.post("/v1/databases/alpha/query", json={"statements": ["SELECT 1"]})
        assert r.status_code == 401 and r.json()["error"]["code"] == "TOKEN_REVOKED"

    second.stop()  # a clean stop ships everything: the log is complete and contiguous
    for db, branch in TARGETS:
        assert_log_contiguous(store, db, branch)
