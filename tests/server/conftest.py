"""The in-process tier: the HTTP API driven through httpx's ASGI transport, no subprocess
(tests/support/inprocess.py). tests/conftest.py's fixtures (server, start_server, admin,
new_db) build an InProcessNode here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.api_support import ok, query
from tests.support.inprocess import InProcessNode


@pytest.fixture(scope="session")
def node_kind() -> Any:
    return InProcessNode


@pytest.fixture
def table(admin: httpx.Client, new_db: Callable[[], str]) -> str:
    """A new database with the replica tests' table ``t(id, v)`` (tests/support/replicas.py)."""
    db = new_db()
    ok(query(admin, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"))
    return db
