"""The in-process tier: the HTTP API driven through httpx's ASGI transport, no subprocess
(tests/support/inprocess.py). Same fixtures as tests/conftest.py's, on an InProcessNode."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.inprocess import InProcessNode

_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessNode]:
    """One in-process node per test module (short transaction timeout, as the process one)."""
    node = InProcessNode(tmp_path_factory.mktemp("shared") / "data",
                         {"transaction_timeout": 1.0, "busy_timeout": 0.5})
    node.start()
    yield node
    node.stop()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., InProcessNode]]:
    """Factory: start_server(**settings) -> a running in-process node (stopped after)."""
    started: list[InProcessNode] = []

    def start(data_dir: Path | None = None, **settings: Any) -> InProcessNode:
        node = InProcessNode(data_dir or tmp_path / f"data{next(_names)}", settings)
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.stop()
