"""A data directory is for one kind of node: local-only (`store = "none"`) or store-backed.
On real nodes: the refused start's log names DATA_DIR_CONFLICT. What a local-only node
serves: tests/server/test_storage_local_only.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.server import ServerProcess
from tests.support.storage import ok


def test_a_data_directory_refuses_the_other_kind_of_node(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """A local-only node's directory is not silently reused by a store-backed node (whose
    database list would not show it), and the other way round: the node does not start."""
    local = start_server(tmp_path / "local", store="none")
    with local.client() as http:
        ok(http.post("/v1/databases", json={"name": "kept"}), 201)
    local.stop()
    with pytest.raises(RuntimeError, match="DATA_DIR_CONFLICT"):
        start_server(tmp_path / "local", store=(tmp_path / "store").as_uri())
    restarted = start_server(tmp_path / "local", store="none")  # still intact
    with restarted.client() as http:
        assert [d["name"] for d in ok(http.get("/v1/databases"))["databases"]] == ["kept"]
    stored = start_server(tmp_path / "stored", store=(tmp_path / "store").as_uri())
    stored.stop()
    with pytest.raises(RuntimeError, match="DATA_DIR_CONFLICT"):
        start_server(tmp_path / "stored", store="none")
