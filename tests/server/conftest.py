"""The in-process tier: the HTTP API driven through httpx's ASGI transport, no subprocess
(tests/support/inprocess.py). tests/conftest.py's fixtures (server, start_server, admin,
new_db) build an InProcessNode here."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.inprocess import InProcessNode


@pytest.fixture(scope="session")
def node_kind() -> Any:
    return InProcessNode
