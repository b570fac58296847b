"""The names a restore keeps the state before it under: free, valid, readable."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shoal import settings as settings_mod
from shoal.engine.journal import Stores
from shoal.engine.registry import KEEP_TRIES, Registry, keep_names
from shoal.errors import ShoalError
from shoal.names import is_valid
from shoal.storage.memory import MemoryStore

DB = "named"
NOW = 1_795_000_000.0  # 2026-11-18 11:06:40 UTC


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    settings = settings_mod.Settings(data=str(tmp_path / "data"))
    store = MemoryStore()
    pool = ThreadPoolExecutor(1)
    reg = Registry(Stores(store, store, pool), settings, pool, tmp_path / "scratch")
    reg.create_database(DB, NOW - 60)
    return reg


def restore_main(reg: Registry, keep_as: str | None = None) -> str:
    timeline = reg.branch(DB, "main").timeline
    _, kept = reg.restore_branch(DB, "main", timeline, 0, keep_as, NOW)
    return kept.name


def test_restores_in_one_second_each_keep_a_name_of_their_own(reg: Registry) -> None:
    kept = [restore_main(reg) for _ in range(5)]
    base = "main-before-restore-20261118-110640"
    assert kept == [base] + [f"{base}-{n}" for n in range(2, 6)]
    listed = {b.branch.name for b in reg.branches(DB)}
    assert set(kept) <= listed


def test_a_given_name_that_is_taken_is_refused(reg: Registry) -> None:
    restore_main(reg, keep_as="before")
    with pytest.raises(ShoalError) as err:
        restore_main(reg, keep_as="before")
    assert err.value.code == "BRANCH_EXISTS"


def test_names_are_valid_for_the_longest_branch_names() -> None:
    longest = "b" * 63
    names = list(keep_names(longest, NOW))
    assert len(names) == KEEP_TRIES - 1
    assert all(is_valid(n) for n in names)
    assert len(set(names)) == len(names)
