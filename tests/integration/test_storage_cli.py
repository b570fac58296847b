"""`shoal branch ...`, `shoal restore` and `shoal history`, and the same through the client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import httpx

from shoal.client import AlreadyExists, Client, NotFound
from tests.support.server import ServerProcess
from tests.support.storage import ok, rows, run


def shoal(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env.update(SHOAL_URL=server.url, SHOAL_TOKEN=server.admin_token, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_branch_and_restore_commands(server: ServerProcess, admin: httpx.Client) -> None:
    ok(admin.post("/v1/databases", json={"name": "cli-branches"}), 201)
    first = run(admin, "cli-branches", "CREATE TABLE t(v)", "INSERT INTO t VALUES (1)")
    run(admin, "cli-branches", "INSERT INTO t VALUES (2)")

    made = as_json(shoal(server, "branch", "create", "cli-branches", "early",
                         "--at", first["meta"]["bookmark"], "--json"))
    assert (made["name"], made["fork_txid"]) == ("early", first["meta"]["txid"])
    out = shoal(server, "branch", "create", "cli-branches", "late", "--materialise")
    assert out.returncode == 0 and "created branch late of main at txid 2" in out.stdout
    assert (server.data_dir / "dbs" / "cli-branches" / "late.db").exists()  # hydrated
    listed = shoal(server, "branch", "list", "cli-branches")
    assert listed.returncode == 0 and "│ early " in listed.stdout and "3 branches" in listed.stdout
    assert rows(admin, "cli-branches", "SELECT count(*) FROM t", "early") == [[1]]

    run(admin, "cli-branches", "INSERT INTO t VALUES (3)", branch="late")
    reset = shoal(server, "branch", "reset", "cli-branches", "late")
    assert reset.returncode == 0 and "reset branch late to main" in reset.stdout
    assert rows(admin, "cli-branches", "SELECT count(*) FROM t", "late") == [[2]]

    window = as_json(shoal(server, "history", "cli-branches", "--json"))
    assert window["latest"]["txid"] == 2
    done = as_json(shoal(server, "restore", "cli-branches", "--to", first["meta"]["bookmark"],
                         "--keep-as", "before", "--json"))
    assert (done["kept_as"], done["restored_to"]["txid"]) == ("before", 1)
    assert rows(admin, "cli-branches", "SELECT count(*) FROM t") == [[1]]
    assert rows(admin, "cli-branches", "SELECT count(*) FROM t", "before") == [[2]]
    text = shoal(server, "restore", "cli-branches", "--to", window["latest"]["time"])
    assert text.returncode == 0 and "the state before is branch main-before-restore-" in text.stdout

    gone = shoal(server, "branch", "delete", "cli-branches", "early")
    assert gone.returncode == 0 and "deleted branch early" in gone.stdout
    again = shoal(server, "branch", "delete", "cli-branches", "early")
    assert again.returncode == 1 and again.stderr.startswith("error BRANCH_NOT_FOUND: ")


def test_client_branch_methods(server: ServerProcess) -> None:
    with Client(server.url, server.admin_token, database="client-branches") as db:
        db.create_database("client-branches")
        first = db.execute("CREATE TABLE t(v)")
        db.execute("INSERT INTO t VALUES (1)")
        made = db.create_branch("copy", bookmark=first.bookmark)
        assert made["fork_txid"] == first.txid
        try:
            db.create_branch("copy")
        except AlreadyExists as exc:
            assert exc.code == "BRANCH_EXISTS"
        else:
            raise AssertionError("a second branch of the same name was created")
        assert [b["name"] for b in db.list_branches()] == ["copy", "main"]
        assert db.history(branch="copy")["latest"]["txid"] == first.txid
        done = db.restore(bookmark=first.bookmark, keep_as="kept")
        assert done["kept_as"] == "kept"
        assert db.execute("SELECT count(*) FROM t").rows == [(0,)]
        db.reset_branch("kept")
        db.delete_branch("kept")
        try:
            db.delete_branch("kept")
        except NotFound as exc:
            assert exc.code == "BRANCH_NOT_FOUND"
        else:
            raise AssertionError("deleting a missing branch succeeded")
