"""The examples in docs/clients/*.md run, as written, against a real node and print their Output.

Each example addresses ``127.0.0.1:8080`` and database ``orders``; the test points them at
its own node and a fresh database, and compares what they print with the page's
``Output`` block.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conformance.conftest import NODE_DIR, run_node
from tests.support.server import ServerProcess

DOCS = Path(__file__).resolve().parents[2] / "docs" / "clients"
_names = itertools.count()


def blocks(page: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (DOCS / page).read_text(), re.S)


def fresh_database(node: ServerProcess) -> str:
    name = f"docs{next(_names)}"
    with node.client() as admin:
        assert admin.post("/v1/databases", json={"name": name}).status_code == 201
    return name


def localize(code: str, node: ServerProcess, db: str) -> str:
    return code.replace("127.0.0.1:8080", f"127.0.0.1:{node.port}").replace(
        "/db/orders", f"/db/{db}")


@pytest.fixture(scope="module")
def prisma_client(node_modules: Path) -> None:
    """Generate the Prisma client of the documented schema (kept in node/prisma/)."""
    schema = NODE_DIR / "prisma" / "schema.prisma"
    assert blocks("prisma.md", "prisma") == [schema.read_text()], "prisma.md shows the schema"
    env = dict(os.environ, PRISMA_SCHEMA_ENGINE_BINARY="/bin/false", CHECKPOINT_DISABLE="1",
               PRISMA_HIDE_UPDATE_MESSAGE="1")
    proc = subprocess.run(["node", str(node_modules / "prisma" / "build" / "index.js"),
                           "generate", "--schema", str(schema)], cwd=NODE_DIR, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("page", ["typescript.md", "drizzle.md", "prisma.md",
                                  "embedded-replicas.md"])
def test_javascript_example(page: str, node: ServerProcess, node_modules: Path,
                            request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if page == "prisma.md":
        request.getfixturevalue("prisma_client")
    [code] = blocks(page, "js")
    expected = blocks(page, "text")[-1]
    (tmp_path / "node_modules").symlink_to(node_modules)  # resolve packages as in a project
    script = tmp_path / "example.mjs"
    script.write_text(localize(code, node, fresh_database(node)))
    proc = run_node([str(script)], node, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == expected


def test_python_example(node: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_TOKEN", node.admin_token)
    db = fresh_database(node)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for code in blocks("python.md", "python"):
            exec(localize(code, node, db), {})
    assert out.getvalue() == blocks("python.md", "text")[-1]


@pytest.mark.parametrize(("module", "prefix"), [("libsql", ""), ("libsql_experimental", ""),
                                                ("libsql_experimental", "/grpc")])
def test_embedded_replica_example(node: ServerProcess, tmp_path: Path, module: str,
                                  prefix: str) -> None:
    """The Python replica example, with each module, and over V1 (``/grpc``) where the
    module speaks it (run in a process of its own, in a folder of its own: the replica's
    files are made where it runs)."""
    [code] = blocks("embedded-replicas.md", "python")
    script = tmp_path / "example.py"
    script.write_text(localize(code, node, fresh_database(node)).replace(
        "import libsql\n", f"import {module} as libsql\n").replace("/db/", f"{prefix}/db/"))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, SHOAL_TOKEN=node.admin_token, RUST_LOG="error"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == blocks("embedded-replicas.md", "text")[0]
    if not prefix:  # the HTTP protocol's place (V1 keeps its own)
        assert (tmp_path / "orders-replica.db-info").exists()


def test_embedded_replica_example_over_v1(node: ServerProcess, node_modules: Path,
                                          tmp_path: Path) -> None:
    """The Node replica example with the V1 sync URL (``/grpc``)."""
    [code] = blocks("embedded-replicas.md", "js")
    (tmp_path / "node_modules").symlink_to(node_modules)
    script = tmp_path / "example.mjs"
    script.write_text(localize(code, node, fresh_database(node)).replace("/db/", "/grpc/db/"))
    proc = run_node([str(script)], node, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == blocks("embedded-replicas.md", "text")[-1]
