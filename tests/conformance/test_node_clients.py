"""@libsql/client and drizzle-orm (pinned in node/package-lock.json) against a real node.

The scripts live in tests/conformance/node/*.test.mjs and run under `node --test`;
each creates its own databases through the native API.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conformance.conftest import run_node
from tests.support.server import ServerProcess


@pytest.mark.parametrize("script", ["client.test.mjs", "drizzle.test.mjs"])
def test_node_client_suite(node_modules: Path, node: ServerProcess, script: str) -> None:
    proc = run_node(["--test", "--test-reporter=tap", script], node)
    report = proc.stdout[-8000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, report
    counts = dict(re.findall(r"^# (pass|fail) (\d+)$", proc.stdout, re.M))
    assert counts.get("fail") == "0" and int(counts.get("pass", "0")) > 0, report
