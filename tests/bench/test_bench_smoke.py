"""The peer benchmark still runs end to end: `python -m bench --smoke`.

Shoal and in-process SQLite only, tiny sizes, one-second runs, nothing installed
(without wrk, the HTTP load runs are reported as skipped); every scenario but `many`
(bench.core's many-databases benchmark, which sleeps about 9 s for its memory figures).
No performance assertion: only that every scenario ran or said why not, that the
report and results exist, and that `python -m bench --from` draws the same report and
charts again from the results file, byte for byte.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str | Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One smoke run for the module: its --out directory."""
    tmp = tmp_path_factory.mktemp("smoke")
    out = tmp / "out"
    done = bench("--smoke", "--out", out, "--data-root", tmp)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_smoke_run_writes_report_and_results(smoke: Path) -> None:
    [results] = (smoke / "results").glob("*.json")
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
    report = (smoke / "REPORT.md").read_text()
    assert "## Machine" in report and "## Versions" in report and "## Exact commands" in report
    assert "PostgreSQL (direct) | not selected" in report
    # The peers added by issue 15 are there, said not to be selected.
    assert "PocketBase (REST API) | not selected" in report
    assert report.count("PostgreSQL via PgBouncer | not selected") >= 3  # reads, ..., writes
    # Each headline detail once, under the table.
    details = [line for line in report.splitlines() if line.startswith("- reads, ")]
    assert details and len(details) == len(set(details)), details


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in [root / "REPORT.md", *sorted((root / "charts").glob("*.png"))]}


def test_redraw_from_results_is_identical(smoke: Path, tmp_path: Path) -> None:
    [results] = (smoke / "results").glob("*.json")
    again = tmp_path / "again"
    done = bench("--from", results, "--out", again, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    assert not (again / "results").exists()  # a redraw writes no results file
    drawn, redrawn = _files(smoke), _files(again)
    assert sorted(redrawn) == sorted(drawn)
    for name, content in drawn.items():
        assert redrawn[name] == content, f"{name} differs when redrawn"


def test_redraw_of_results_from_before_about_was_saved(smoke: Path, tmp_path: Path) -> None:
    """Results written before a scenario's text and second reference were saved (e.g.
    bench/results/2026-11-22T053621Z.json) are drawn with the scenario texts of now."""
    from bench.report import load, render

    [results] = (smoke / "results").glob("*.json")
    data = json.loads(results.read_text())
    for scenario in data["scenarios"]:
        del scenario["about"], scenario["alternate"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    report = render(load(old, tmp_path / "old"), tmp_path / "old")
    assert report == (smoke / "REPORT.md").read_text()


def test_redraw_takes_no_run_flags(tmp_path: Path) -> None:
    done = bench("--from", tmp_path / "x.json", "--quick", timeout=60)
    assert done.returncode == 2 and "--quick" in done.stderr, done.stderr
