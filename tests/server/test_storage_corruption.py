"""A damaged log stops a restore with an error naming the object, never a wrong database.

A node ships commits (remote durability: one segment per commit here), then a
byte of one segment is flipped; a node on an empty disk must refuse to serve the
branch, naming that segment, while a branch at a point before the damage still
opens. Then the segment is deleted: the error names the missing txids.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.support.server import ServerProcess
from tests.support.storage import iso, ok, rows, run, segment_files

DB = "fragile"


def test_corrupt_or_missing_segments_are_named(start_server: Callable[..., ServerProcess],
                                               tmp_path: Path) -> None:
    root = tmp_path / "store"
    settings = {"store": root.as_uri(), "durability": "remote", "admin_token": "corrupt-admin"}
    node = start_server(tmp_path / "first", **settings)
    marks = {}
    with node.client() as http:
        ok(http.post("/v1/databases", json={"name": DB}), 201)
        run(http, DB, "CREATE TABLE t(v INTEGER)")
        for i in range(10):
            marks[i] = run(http, DB, {"sql": "INSERT INTO t VALUES (?)", "args": [i]})["meta"]
    node.stop()

    segs = [s for s in segment_files(root, DB) if int(s.name.split("-")[0]) >= 3]
    assert len(segs) >= 2
    victim = segs[len(segs) // 2]
    key = victim.relative_to(root).as_posix()
    first = int(victim.name.split("-")[0])  # txids 1 (the table), 2.. (value txid - 2)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))

    node = start_server(tmp_path / "second", **settings)  # an empty disk: restores from the store
    with node.client() as http:
        r = http.post(f"/v1/databases/{DB}/query", json={"statements": ["SELECT count(*) FROM t"]})
        assert r.status_code == 500, r.text
        err = r.json()["error"]
        assert err["code"] == "STORAGE_CORRUPT" and err["object"] == key
        assert key in err["message"] and "checksum" in err["message"]
        # history before the damage is intact: a branch there opens and is right
        before = next(m for m in marks.values() if m["txid"] == first - 1)
        ok(http.post(f"/v1/databases/{DB}/branches",
                     json={"name": "salvage", "at": {"bookmark": before["bookmark"]}}), 201)
        assert rows(http, DB, "SELECT count(*) FROM t", "salvage") == [[first - 2]]
        # and main itself can be restored there; the damaged history stays as a branch
        out = ok(http.post(f"/v1/databases/{DB}/restore", json={"bookmark": before["bookmark"]}))
        assert rows(http, DB, "SELECT count(*) FROM t") == [[first - 2]]
        r = http.post(f"/v1/databases/{DB}/branches/{out['kept_as']}/query",
                      json={"statements": ["SELECT 1"]})
        assert r.json()["error"]["code"] == "STORAGE_CORRUPT"
    node.stop()

    victim.unlink()
    node = start_server(tmp_path / "third", **settings)
    with node.client() as http:
        r = http.post(f"/v1/databases/{DB}/branches/{out['kept_as']}/query",
                      json={"statements": ["SELECT count(*) FROM t"]})
        err = r.json()["error"]
        assert err["code"] == "STORAGE_CORRUPT", r.text
        assert f"txids {first}.." in err["message"] and "missing" in err["message"]
        assert err["object"].startswith(f"dbs/{DB}/log/")


def test_a_restore_over_a_damaged_log_fails_before_it_changes_anything(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """Restore to a point whose history holds a flipped byte, then a deleted segment:
    STORAGE_CORRUPT naming the object, and the branch is as it was (same rows, no branch
    kept, still writable). A missing segment is "missing", never "before the window"."""
    root = tmp_path / "store"
    settings = {"store": root.as_uri(), "durability": "remote", "admin_token": "corrupt-admin",
                "compact_min_segments": 0}
    node = start_server(tmp_path / "node", **settings)
    with node.client() as http:
        ok(http.post("/v1/databases", json={"name": DB}), 201)
        run(http, DB, "CREATE TABLE t(v INTEGER)")
        marks = [run(http, DB, {"sql": "INSERT INTO t VALUES (?)", "args": [i]})["meta"]
                 for i in range(8)]
        segs = [s for s in segment_files(root, DB) if int(s.name.split("-")[0]) >= 3]
        flipped, missing = segs[1], segs[-2]
        data = bytearray(flipped.read_bytes())
        data[len(data) // 2] ^= 0xFF
        flipped.write_bytes(bytes(data))
        before = {b["name"] for b in ok(http.get(f"/v1/databases/{DB}/branches"))["branches"]}

        def unchanged() -> None:
            assert rows(http, DB, "SELECT count(*) FROM t") == [[8]]
            names = {b["name"] for b in ok(http.get(f"/v1/databases/{DB}/branches"))["branches"]}
            assert names == before

        r = http.post(f"/v1/databases/{DB}/restore", json={"bookmark": marks[-1]["bookmark"]})
        assert r.status_code == 500, r.text
        err = r.json()["error"]
        assert err["code"] == "STORAGE_CORRUPT", err
        assert err["object"] == flipped.relative_to(root).as_posix()
        unchanged()
        data[len(data) // 2] ^= 0xFF  # repaired; now a segment goes missing
        flipped.write_bytes(bytes(data))
        missing.unlink()
        gone = int(missing.name.split("-")[0])
        for body in ({"bookmark": marks[-1]["bookmark"]},
                     {"timestamp": iso(time.time())}):
            r = http.post(f"/v1/databases/{DB}/restore", json=body)
            err = r.json()["error"]
            assert (r.status_code, err["code"]) == (500, "STORAGE_CORRUPT"), (body, r.text)
            assert f"txids {gone}" in err["message"] and "missing" in err["message"], err
            assert "window" not in err["message"]
            unchanged()
        # a branch at a point past the hole is refused at once, naming it too
        r = http.post(f"/v1/databases/{DB}/branches",
                      json={"name": "past-hole", "at": {"bookmark": marks[-1]["bookmark"]}})
        assert r.json()["error"]["code"] == "STORAGE_CORRUPT", r.text
        unchanged()
        run(http, DB, {"sql": "INSERT INTO t VALUES (?)", "args": [99]})  # still writable
        # before the hole, restore works and keeps the state before as a branch
        point = next(m for m in marks if m["txid"] == gone - 1)
        out = ok(http.post(f"/v1/databases/{DB}/restore", json={"bookmark": point["bookmark"]}))
        assert rows(http, DB, "SELECT count(*) FROM t") == [[gone - 2]]
        assert out["kept_as"] not in before
