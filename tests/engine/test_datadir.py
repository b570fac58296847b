"""A data directory serves one kind of node: local-only or store-backed, never both."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.engine import datadir
from shoal.errors import Code, ShoalError


@pytest.mark.parametrize("first_local", [True, False])
def test_the_first_start_claims_the_directory_for_its_kind(tmp_path: Path,
                                                           first_local: bool) -> None:
    datadir.claim(tmp_path, first_local)
    datadir.claim(tmp_path, first_local)  # the same kind again: fine
    with pytest.raises(ShoalError) as refused:
        datadir.claim(tmp_path, not first_local)
    assert refused.value.code == Code.DATA_DIR_CONFLICT
    assert str(tmp_path) in refused.value.message
    assert ("store = \"none\"" if first_local else "--store") in refused.value.message
    kind = datadir.LOCAL_ONLY if first_local else datadir.STORE
    assert (tmp_path / datadir.KIND_FILE).read_text() == kind + "\n"


def test_directories_from_before_the_kind_file_are_recognised(tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    (local / "signing-key").write_text("k")
    with pytest.raises(ShoalError):
        datadir.claim(local, local_only=False)
    stored = tmp_path / "stored"
    (stored / "dbs" / "app").mkdir(parents=True)
    (stored / "dbs" / "app" / "main.timeline").write_text("0123abcd\n")
    with pytest.raises(ShoalError):
        datadir.claim(stored, local_only=True)
    datadir.claim(stored, local_only=False)
    assert (stored / datadir.KIND_FILE).read_text() == datadir.STORE + "\n"


def test_leftovers_of_a_killed_process_are_swept_at_start(tmp_path: Path) -> None:
    branches = tmp_path / datadir.DBS / "app"
    branches.mkdir(parents=True)
    keep = [branches / "main.db", branches / "main.db-wal", branches / "main.timeline"]
    for path in keep:
        path.write_bytes(b"kept")
    partial = [branches / "main.db.restoring", branches / "side.db.restoring"]
    for path in partial:
        path.write_bytes(b"half a restore")
    scratch = tmp_path / datadir.TMP / "tmpab12cd"
    scratch.mkdir(parents=True)
    (scratch / "new.db").write_bytes(b"half an image")
    gone = datadir.sweep_leftovers(tmp_path)
    assert sorted(gone) == sorted([*partial, scratch])
    assert not any(p.exists() for p in partial) and not (tmp_path / datadir.TMP).exists()
    assert all(p.read_bytes() == b"kept" for p in keep)
    assert datadir.sweep_leftovers(tmp_path) == []  # nothing left: nothing to do
