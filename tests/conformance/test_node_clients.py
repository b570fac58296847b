"""@libsql/client, drizzle-orm and drizzle-kit (pinned in node/package-lock.json) against a real
node.

The scripts live in tests/conformance/node/*.test.mjs and run under `node --test`;
each creates its own databases through the native API.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conformance.conftest import run_node
from tests.support.server import ServerProcess
from tests.support.tables import DRIZZLE_TABLES, PRISMA_TABLES


@pytest.mark.parametrize("script", ["client.test.mjs", "drizzle.test.mjs"])
def test_node_client_suite(node_modules: Path, node: ServerProcess, script: str) -> None:
    proc = run_node(["--test", "--test-reporter=tap", script], node)
    report = proc.stdout[-8000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, report
    counts = dict(re.findall(r"^# (pass|fail) (\d+)$", proc.stdout, re.M))
    assert counts.get("fail") == "0" and int(counts.get("pass", "0")) > 0, report


def test_drizzle_kit_push_sees_only_the_users_tables(node_modules: Path,
                                                     node: ServerProcess) -> None:
    """`drizzle-kit push` (no tablesFilter) on a fresh database creates the schema without a
    prompt, and on the database that has it finds nothing to change: Shoal's own tables are
    _cf_SHOAL_* names, which it skips (engine/tables.py). Prisma's introspection query, with
    its rule of names to leave out, lists the same two tables (its schema engine is a binary
    fetched from Prisma's host, which this machine cannot reach)."""
    with node.client() as c:
        assert c.post("/v1/databases", json={"name": "kit"}).status_code == 201
    host = node.url.split("//", 1)[1]
    push = [str(node_modules / ".bin" / "drizzle-kit"), "push", "--dialect=turso",
            "--schema=./drizzle-kit/schema.mjs", f"--url=http://{host}/db/kit/",
            f"--auth-token={node.admin_token}", "--strict=false", "--verbose"]
    outputs = []
    for _ in range(2):
        proc = subprocess.run(push, cwd=node_modules.parent, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL,
                              env=dict(os.environ, NODE_NO_WARNINGS="1"))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        outputs.append(proc.stdout)
    assert "CREATE TABLE `users`" in outputs[0] and "Changes applied" in outputs[0]
    assert "shoal" not in outputs[0].lower()
    assert "No changes detected" in outputs[1], outputs[1]
    with node.client() as c:
        r = c.post("/v1/databases/kit/query", json={"statements": [
            {"sql": PRISMA_TABLES}, {"sql": DRIZZLE_TABLES},
            {"sql": "SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_cf\\_SHOAL\\_%' "
                    "ESCAPE '\\'"}]})
        prisma, drizzle, shoals = r.json()["results"]
        assert prisma["rows"] == drizzle["rows"] == [["posts"], ["users"]]
        assert shoals["rows"] == [[2]]  # they are there, and left out
