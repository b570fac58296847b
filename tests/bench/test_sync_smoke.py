"""The embedded-replica benchmark still runs end to end: `python -m bench.sync --smoke`.

1 MiB, 20 commits a workload, one repetition, 0.1 s read runs (about 5 s in all). No
performance assertion: only that every figure was measured, that the bytes were counted
on the wire and that each measured replica came out byte-identical to the node's file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_measures_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "sync.json"
    done = subprocess.run([sys.executable, "-m", "bench.sync", "--smoke", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    run = json.loads(out.read_text())
    names = [row["name"] for row in run["rows"]]
    assert sum("initial sync" in n for n in names) == 4  # time and bytes, twice
    assert sum("incremental sync" in n for n in names) == 2  # spread, appends
    assert sum("point read" in n for n in names) == 6
    for row in run["rows"]:
        assert row["value"] > 0 and row["baseline"] > 0, row
    for initial in run["raw"]["initial"]:
        assert initial["identical"], initial
        assert initial["sync_bytes"][0] >= initial["file_bytes"] - 4096 * 4, initial
        assert initial["static_bytes"][0] > initial["file_bytes"], initial
    for inc in run["raw"]["incremental"]:
        assert inc["identical"], inc["workload"]
        assert 0 < inc["changed"] <= inc["frames"], inc["workload"]  # each changed page, once
        assert inc["sent"] > inc["frames"] * (24 + 4096), inc["workload"]
    for system, runs in run["raw"]["reads"].items():
        assert runs and all(r["reads"] > 0 for r in runs), system
