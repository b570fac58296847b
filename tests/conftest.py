from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import ServerProcess

_names = itertools.count()

# Every node a test starts would otherwise allocate the default 64 MiB DATA/reserve.
os.environ.setdefault("SHOAL_DISK_RESERVE_BYTES", str(1 << 20))


@pytest.fixture(scope="session")
def node_kind() -> type[ServerProcess]:
    """What a test's node is: a real `shoal serve` here; tests/server runs the App in
    process (tests/support/inprocess.py), through the same fixtures."""
    return ServerProcess


@pytest.fixture
def start_server(tmp_path: Path,
                 node_kind: type[ServerProcess]) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: start_server(**settings) -> a running node (stopped after the test)."""
    started: list[ServerProcess] = []

    def start(data_dir: Path | None = None, **settings: Any) -> ServerProcess:
        node = node_kind(data_dir or tmp_path / f"data{next(_names)}", settings)
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           node_kind: type[ServerProcess]) -> Iterator[ServerProcess]:
    """One node shared by a test module (default settings, short transaction timeout)."""
    node = node_kind(tmp_path_factory.mktemp("shared") / "data",
                     {"transaction_timeout": 1.0, "busy_timeout": 0.5})
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture
def new_db(admin: httpx.Client) -> Callable[[], str]:
    """Create a fresh database on the shared node and return its name."""

    def make() -> str:
        name = f"db{next(_names)}"
        r = admin.post("/v1/databases", json={"name": name})
        assert r.status_code == 201, r.text
        return name

    return make
