"""Fixtures for the conformance tier: real third-party clients against a real `shoal serve`."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess

NODE_DIR = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One node per test module, with room for interactive transactions between requests."""
    server = ServerProcess(tmp_path_factory.mktemp("conformance") / "data",
                           {"transaction_timeout": 10.0, "busy_timeout": 5.0})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The pinned Node packages (``npm ci``; `make test` installs them when the lock changes)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js is not installed")
    marker = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    linked = (NODE_DIR / "node_modules").is_symlink()  # a worktree's: npm ci would empty it
    if not linked and (not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime):
        subprocess.run(["npm", "ci"], cwd=NODE_DIR, check=True, timeout=600,
                       env=dict(os.environ, npm_config_update_notifier="false"))
    return NODE_DIR / "node_modules"


def run_node(args: list[str], server: ServerProcess, cwd: Path = NODE_DIR,
             timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SHOAL_URL=server.url, SHOAL_TOKEN=server.admin_token,
               NODE_NO_WARNINGS="1")
    return subprocess.run(["node", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
