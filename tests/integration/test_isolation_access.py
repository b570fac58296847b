"""The store folder holds the signing key and the admin token: owner-only (issue 12), on a
real node, which generates its admin token. The other access mistakes between tenants:
tests/server/test_isolation_access.py.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

from tests.support.server import ServerProcess


def test_the_store_folder_is_owner_only(start_server: Callable[..., ServerProcess],
                                        tmp_path: Path) -> None:
    root = tmp_path / "store"
    start_server(tmp_path / "node", store=root.as_uri())
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for secret in ("signing-key", "admin-token"):
        assert stat.S_IMODE((root / "catalog" / secret).stat().st_mode) == 0o600
