"""Token scopes for fleets (shoal/scopes.py): patterns, what a token covers, what a
provisioning token may manage; the catalog's token records with a branch."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from shoal import scopes
from shoal.engine.catalog import Catalog, TokenInfo, TokenRecord
from shoal.errors import ShoalError
from shoal.tokens import Principal


def test_patterns_are_names_followed_by_a_star() -> None:
    assert scopes.check(["tenant-*", "orders", "a*", "tenant-*", "x_*"]) == \
        ["tenant-*", "orders", "a*", "x_*"]
    for bad in ("*", "**", "*a", "a*b", "a**", "-a*", "_a*", "A*", "", "a" * 64 + "*",
                "a b*"):
        with pytest.raises(ShoalError) as err:
            scopes.check(["ok", bad])
        assert err.value.code == "INVALID_NAME" and err.value.status == 400
        assert "'*' only at the end" in (err.value.hint or "")
    assert scopes.check(["a" * 63 + "*", "a" * 63]) == ["a" * 63 + "*", "a" * 63]


def test_matches() -> None:
    assert scopes.matches("tenant-*", "tenant-a") and scopes.matches("tenant-*", "tenant-")
    assert not scopes.matches("tenant-*", "tenantx") and not scopes.matches("tenant-*", "tenant")
    assert scopes.matches("orders", "orders") and not scopes.matches("orders", "orders2")


def test_covers() -> None:
    prefix = Principal("t", frozenset({"orders"}), "admin", prefixes=frozenset({"tenant-"}))
    for entry in ("tenant-a", "tenant-a*", "tenant-*", "tenant-", "orders"):
        assert scopes.covers(prefix, entry), entry
    for entry in ("tenant*", "tenantx", "orders*", "billing", "t*"):
        assert not scopes.covers(prefix, entry), entry
    every = Principal("t", None, "admin")
    assert scopes.covers(every, "anything*") and scopes.covers(every, "x")
    assert not scopes.covers(Principal("t", frozenset({"a"}), "admin"), "a*")


def test_manage() -> None:
    plane = Principal("p", frozenset(), "provision", prefixes=frozenset({"tenant-"}),
                      provision=True)
    scopes.manage(plane, "admin", "tenant-a")
    scopes.manage(plane, "read")
    with pytest.raises(ShoalError) as err:
        scopes.manage(plane, "admin", "billing")
    assert (err.value.code, err.value.message) == (
        "FORBIDDEN", "token does not grant database 'billing'")
    reader = Principal("r", frozenset({"tenant-a"}), "read")
    scopes.manage(reader, "read", "tenant-a")
    with pytest.raises(ShoalError) as err:
        scopes.manage(reader, "admin", "tenant-a")
    assert err.value.code == "FORBIDDEN"
    assert scopes.server_admin(Principal("admin", None, "admin"))
    assert not scopes.server_admin(Principal("p", None, "provision", provision=True))
    assert not scopes.server_admin(Principal("a", frozenset(), "admin",
                                             prefixes=frozenset({"x"})))


def test_catalog_keeps_a_token_branch(tmp_path: Path) -> None:
    catalog = Catalog(str(tmp_path / "catalog.db"))
    catalog.add_token(TokenRecord("tok_b", ["tenant-*"], "read", "admin", 1.0, 2e9, None,
                                  "preview"))
    catalog.add_token(TokenRecord("tok_u", ["orders"], "provision", "admin", 1.0, 2e9, None))
    page, _ = catalog.list_tokens(None, lambda info: True, 10)
    assert [(t.record.id, t.record.databases, t.record.branch) for t in page] == [
        ("tok_b", ["tenant-*"], "preview"), ("tok_u", ["orders"], None)]
    assert TokenInfo(page[0].record, ("tenant-*",)).reach == []  # as stored: never narrowed
    assert catalog.tokens_naming("tenant-a", 0) == []  # a pattern names no database
    catalog.close()


def test_a_catalog_of_before_gains_the_branch_column(tmp_path: Path) -> None:
    path = str(tmp_path / "catalog.db")
    old = apsw.Connection(path)
    old.execute("CREATE TABLE tokens(id TEXT PRIMARY KEY, databases TEXT NOT NULL, access TEXT "
                "NOT NULL, created_by TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL "
                "NOT NULL, revoked_at REAL)")
    old.execute("INSERT INTO tokens VALUES ('tok_old', '[\"orders\"]', 'read', 'admin', 1, "
                "2e9, NULL)")
    old.close()
    catalog = Catalog(path)
    page, _ = catalog.list_tokens(None, lambda info: True, 10)
    assert [(t.record.id, t.record.branch) for t in page] == [("tok_old", None)]
    catalog.close()
    Catalog(path).close()  # and again: the column is there now
