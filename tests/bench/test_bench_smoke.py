"""The peer benchmark still runs end to end: `python -m bench --smoke`.

Shoal and in-process SQLite only, tiny sizes, one-second runs, nothing installed
(without wrk, the HTTP load runs are reported as skipped); every scenario but `many`
(bench.core's many-databases benchmark, which sleeps about 9 s for its memory figures).
No performance assertion: only that every scenario ran or said why not, and that the
report and results exist.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_writes_report_and_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out), "--data-root",
         str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    [results] = (out / "results").glob("*.json")
    run = json.loads(results.read_text())
    assert run["mode"] == "smoke"
    scenarios = {s["key"]: s for s in run["scenarios"]}
    assert list(scenarios) == ["reads", "serverless", "storm", "writes", "replication"]
    for scenario in scenarios.values():
        assert not scenario["skipped"].startswith("failed"), scenario["skipped"]
        for series in scenario["series"]:
            assert series["samples"] or series["skipped"], series
    # Systems that need nothing but Python ran: in-process SQLite, the storm's httpx clients.
    measured = {s["system"] for sc in scenarios.values() for s in sc["series"] if s["samples"]}
    assert "SQLite in-process (apsw, 1 thread)" in measured
    assert "Shoal (HTTP, httpx client)" in measured
    report = (out / "REPORT.md").read_text()
    assert "## Machine" in report and "## Versions" in report and "## Exact commands" in report
    assert "PostgreSQL (direct) | not selected" in report
