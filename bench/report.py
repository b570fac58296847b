"""The outputs of `python -m bench`: results JSON, REPORT.md, charts, RESULTS.md's headline.

REPORT.md is generated from one run and never edited by hand: the machine, the
version of every system, the exact commands, a table per scenario with the ratio of
Shoal's figure to every peer's (same run, same machine), and the charts (PNG, drawn
with matplotlib when it is installed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.context import Options, Outcome
from bench.harness import Report, Row, fmt, markdown_table, median, source_version
from bench.measure import Series


def _first_line(path: str, prefix: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip() if ":" in line else line
    except OSError:
        pass
    return "unknown"


def machine(scratch: Path) -> dict[str, Any]:
    """What the numbers were measured on."""
    memory = _first_line("/proc/meminfo", "MemTotal")
    if memory.endswith(" kB"):
        memory = f"{int(memory.split()[0]) / 1024 ** 2:.1f} GiB"
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(scratch)], capture_output=True,
                        text=True).stdout.strip() or "unknown"
    try:
        release = Path("/etc/os-release").read_text().splitlines()
    except OSError:
        release = []
    os_name = next((line.split("=", 1)[1].strip('"') for line in release
                    if line.startswith("PRETTY_NAME=")), "unknown")
    return {"cpu": _first_line("/proc/cpuinfo", "model name"), "cpus": os.cpu_count(),
            "memory": memory, "kernel": platform.release(), "os": os_name,
            "python": sys.version.split()[0], "scratch_filesystem": fs,
            "load_average": list(os.getloadavg()), "commit": source_version()}


@dataclass
class Run:
    """Everything one run produced."""

    opts: Options
    started: datetime
    machine: dict[str, Any]
    versions: dict[str, str]
    commands: list[str]
    outcomes: list[Outcome] = field(default_factory=list)
    finished: datetime | None = None

    @property
    def stamp(self) -> str:
        return self.started.strftime("%Y-%m-%dT%H%M%SZ")

    def as_json(self) -> dict[str, Any]:
        return {"started": self.started.isoformat(),
                "finished": self.finished.isoformat() if self.finished else None,
                "command": self.opts.command, "mode": self.opts.mode,
                "options": {k: (str(v) if isinstance(v, Path) else v)
                            for k, v in self.opts.__dict__.items()},
                "machine": self.machine, "versions": self.versions,
                "commands": self.commands, "headline": [r.as_json() for r in headline(self)],
                "scenarios": [o.as_json() for o in self.outcomes]}

    @classmethod
    def from_json(cls, data: dict[str, Any], out: Path) -> Run:
        """The Run as_json() wrote (a results/<stamp>.json), to be drawn again under out."""
        from bench.scenarios import RUNNERS

        names = {f.name for f in dataclasses.fields(Options)}
        options = {k: v for k, v in data["options"].items() if k in names}
        options |= {k: tuple(v) for k, v in options.items() if isinstance(v, list)}
        opts = Options(**(options | {"out": out}))
        outcomes = []
        for scenario in data["scenarios"]:
            # Results written before `about` and `alternate` were saved: the scenario's
            # docstring as it is now, and the storm's second Shoal client.
            runner = RUNNERS.get(scenario["key"])
            about = (sys.modules[runner.__module__].__doc__ or "") if runner else ""
            outcomes.append(Outcome.from_json(scenario, about, LEGACY_ALTERNATE.get(
                scenario["key"], "")))
        finished = data.get("finished")
        return cls(opts, datetime.fromisoformat(data["started"]), data["machine"],
                   data["versions"], list(data["commands"]), outcomes,
                   datetime.fromisoformat(finished) if finished else None)


# What results files written before Outcome.alternate was saved leave out.
LEGACY_ALTERNATE = {"storm": "Shoal (HTTP, plain asyncio client)"}


def load(path: Path, out: Path) -> Run:
    """A run saved by `python -m bench` (results/<stamp>.json), to be drawn under out."""
    return Run.from_json(json.loads(path.read_text()), out)


# -- ratios ------------------------------------------------------------------------------------
def ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None:
        return "-"
    if base == 0:
        return "∞" if value > 0 else "-"
    return f"{value / base:.2f}x"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f} ms"


def variants(outcome: Outcome) -> list[str]:
    return list(dict.fromkeys(s.variant for s in outcome.series))


def series_table(outcome: Outcome, variant: str) -> str:
    """One variant's systems: medians, errors and Shoal's ratios to each."""
    rows = [s for s in outcome.series if s.variant == variant]
    ref = next((s for s in rows if s.system == outcome.reference and s.measured), None)
    head = ["system", f"throughput ({outcome.unit})", "p50", "p99", "errors", "runs",
            "Shoal ÷ system, throughput", "system ÷ Shoal, p99"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for s in rows:
        if not s.measured:
            lines.append(f"| {s.system} | {s.skipped or 'not measured'} |" + " |" * 6)
            continue
        own = s is ref
        lines.append("| " + " | ".join([
            f"**{s.system}**" if own else s.system, fmt(s.rate), _ms(s.p50_ms), _ms(s.p99_ms),
            f"{s.errors:,}", str(len(s.samples)),
            "(reference)" if own else ratio(ref.rate if ref else None, s.rate),
            "(reference)" if own else ratio(s.p99_ms, ref.p99_ms if ref else None)]) + " |")
    return "\n".join(lines)


def sample_notes(outcome: Outcome) -> list[str]:
    """What the samples say beside the table: kinds of errors, the clients' CPU time."""
    notes = []
    for s in outcome.series:
        cpu = [x.extra["client_cpu_s"] for x in s.samples if "client_cpu_s" in x.extra]
        if cpu:
            notes.append(f"{s.system} ({s.variant}): the benchmark's clients used "
                         f"{median(cpu):.2f} s of CPU per run (median)")
        kinds: dict[str, int] = {}
        for sample in s.samples:
            for kind, count in (sample.extra.get("error_kinds") or {}).items():
                kinds[kind] = kinds.get(kind, 0) + count
            if sample.extra.get("refused"):
                kinds[sample.extra["refused"]] = kinds.get(sample.extra["refused"], 0) + 1
        if kinds:
            notes.append(f"{s.system} ({s.variant}): " + "; ".join(
                f"{kind} x{count:,}" for kind, count in sorted(kinds.items())))
    return notes


# -- headline (RESULTS.md) ---------------------------------------------------------------------
def _headline_variant(outcome: Outcome) -> str:
    names = variants(outcome)
    return next((v for v in names if v.split()[0] == "64"), names[-1] if names else "")


def _versus(outcome: Outcome, variant: str, ref: Series, peer: Series) -> Row:
    if outcome.key == "storm":  # every client at once: latency and refusals, not rate
        return Row(f"storm, {variant}: {ref.system} p99", ref.p99_ms or 0.0, "ms",
                   peer.system, peer.p99_ms,
                   detail=f"errors {ref.errors:,} vs {peer.errors:,} ({peer.system})")
    return Row(f"{outcome.key}, {variant}: {ref.system}", ref.rate or 0.0, outcome.unit,
               peer.system, peer.rate,
               detail=f"p99 {_ms(ref.p99_ms)} vs {_ms(peer.p99_ms)} ({peer.system}); errors "
                      f"{ref.errors:,} vs {peer.errors:,}")


def _stated(rows: Sequence[Row], ref: Series, peer: Series) -> bool:
    """Whether one of a scenario's own rows already compares ref's figure with peer's
    (e.g. reads against PocketBase, with the issue's target): not repeated above it."""
    return any(r.baseline_name == peer.system and r.value == ref.rate
               and r.baseline == peer.rate for r in rows)


def headline(run: Run) -> list[Row]:
    """Each scenario's Shoal figure against every peer (at 64 connections where there are
    several), and the figures of the scenarios measured once."""
    rows: list[Row] = []
    for outcome in run.outcomes:
        variant = _headline_variant(outcome)
        group = {s.system: s for s in outcome.series if s.variant == variant and s.measured}
        refs = [group[name] for name in (outcome.reference, outcome.alternate) if name in group]
        for i, ref in enumerate(refs):  # each system once against each reference
            done = refs[:i + 1]
            rows += [_versus(outcome, variant, ref, peer) for peer in group.values()
                     if all(peer is not r for r in done)
                     and not _stated(outcome.rows, ref, peer)]
        # many: creating, a cold first query and memory; the p99 and per-db rows stay below
        rows += [r for r in outcome.rows if outcome.key != "many"
                 or ("p99" not in r.name and "per open" not in r.name)]
    return rows


RATIO = ("Ratio: Shoal's figure ÷ the baseline's, both from the same run. For req/s, "
         "rows/s and dbs/s higher is better; for ms, lower is better.")


# -- charts -----------------------------------------------------------------------------------
def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(value: float | None) -> str:
    """A bar's label: 3 significant figures at most, k and M for thousands and millions."""
    if not value:
        return ""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def series_chart(outcome: Outcome, path: Path) -> bool:
    """Grouped bars per variant: throughput and p99 latency (log scale when spread)."""
    plt = _pyplot()
    measured = [s for s in outcome.series if s.measured]
    if plt is None or not measured:
        return False
    names = variants(outcome)
    systems = list(dict.fromkeys(s.system for s in measured))
    by = {(s.variant, s.system): s for s in measured}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / len(systems)
    handles = []
    for panel, (label, get) in zip(axes, ((f"throughput ({outcome.unit}, higher is better)",
                                           lambda s: s.rate),
                                          ("p99 latency (ms, lower is better)",
                                           lambda s: s.p99_ms)), strict=True):
        values = []
        for i, system in enumerate(systems):
            ys = [get(by[(v, system)]) if (v, system) in by else None for v in names]
            xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(names))]
            heights = [y or 0.0 for y in ys]
            values += [y for y in ys if y]
            bars = panel.bar(xs, heights, width, label=system)
            panel.bar_label(bars, labels=[_short(y) for y in ys], fontsize=6,
                            rotation=90 if len(systems) > 3 else 0, padding=2)
            handles.append(bars)
        if values and max(values) / max(min(values), 1e-9) > 50:
            panel.set_yscale("log")
            panel.set_ylim(top=max(values) * 4)  # room for the labels
        elif values:
            panel.set_ylim(top=max(values) * 1.2)
        panel.set_xticks(range(len(names)), names)
        panel.set_title(label, fontsize=10)
        panel.grid(axis="y", alpha=0.3)
    errors = {name: sum(s.errors for s in measured if s.system == name) for name in systems}
    labels = [name + (f" ({errors[name]:,} errors)" if errors[name] else "")
              for name in systems]
    fig.legend(handles[:len(systems)], labels, loc="lower center", fontsize=8,
               ncol=min(3, len(systems)), frameon=False)
    fig.suptitle(outcome.title)
    fig.tight_layout(rect=(0, 0.06 * ((len(systems) + 2) // 3), 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def rows_chart(title: str, rows: Sequence[Row], path: Path) -> bool:
    """One small panel per figure: Shoal's value beside its baseline from the same run."""
    plt = _pyplot()
    rows = [r for r in rows if r.baseline is not None]
    if plt is None or not rows:
        return False
    width = max(6.0, 3.4 * len(rows))  # room for the title over a single panel
    fig, axes = plt.subplots(1, len(rows), figsize=(width, 4), squeeze=False)
    for panel, row in zip(axes[0], rows, strict=True):
        bars = panel.bar(["Shoal", row.baseline_name], [row.value, row.baseline or 0.0],
                         color=["tab:blue", "tab:gray"])
        panel.bar_label(bars, labels=[_short(row.value), _short(row.baseline)], fontsize=7)
        panel.set_title(f"{row.name}\n({row.unit})", fontsize=8)
        panel.tick_params(axis="x", labelsize=7)
        panel.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# -- REPORT.md -------------------------------------------------------------------------------
def _section(outcome: Outcome, charts: Path, out: Path) -> list[str]:
    # The scenario module's docstring, less its title line, one line per paragraph.
    paragraphs = [" ".join(p.split()) for p in outcome.about.split("\n\n")[1:]]
    lines = [f"## {outcome.title}", ""]
    for paragraph in paragraphs:
        lines += [paragraph, ""]
    if outcome.skipped:
        return [*lines, f"**{outcome.skipped}**", ""]
    for variant in variants(outcome):
        lines += [f"**{variant}**", "", series_table(outcome, variant), ""]
    if outcome.rows:  # the table and, under it, each row's details
        lines += [markdown_table(outcome.rows), ""]
    notes = sample_notes(outcome) + outcome.notes
    notes += [f"{s.system}: {s.note}" for s in outcome.series
              if s.note and s.variant == (variants(outcome) or [""])[0]]
    if notes:
        lines += ["Notes:", "", *[f"- {n}" for n in notes], ""]
    drawn = [name for name, ok in (
        (f"{outcome.key}.png", series_chart(outcome, charts / f"{outcome.key}.png")),
        (f"{outcome.key}-figures.png", rows_chart(outcome.title, outcome.rows,
                                                  charts / f"{outcome.key}-figures.png")))
             if ok]
    for name in drawn:
        lines += [f"![{outcome.title}]({(charts / name).relative_to(out).as_posix()})", ""]
    return lines


def render(run: Run, out: Path) -> str:
    charts = out / "charts"
    charts.mkdir(parents=True, exist_ok=True)
    for stale in charts.glob("*.png"):  # every chart is this run's
        stale.unlink()
    m, o = run.machine, run.opts
    elapsed = (run.finished - run.started).total_seconds() if run.finished else 0.0
    lines = [
        "# Shoal against the systems users would pick instead",
        "",
        f"Generated by `{o.command}` ({o.mode} run) on {run.started:%Y-%m-%d %H:%M} UTC in "
        f"{elapsed / 60:.1f} minutes. **Do not edit: run it again.** Raw figures: "
        f"`results/{run.stamp}.json`.",
        "",
        "Every system ran on this one machine, on loopback, in the same run; the load "
        f"generators (wrk, pgbench, the Python clients) shared its {m['cpus']} cores with the "
        "servers, and other jobs may have been running, so compare figures within this "
        "report rather than with other machines. Each measurement is the median of "
        f"{o.reps} repetitions of {o.seconds:g} s after a {o.warmup:g} s warm-up, the "
        "systems taking turns in a rotating order. Ratios are Shoal's figure over the "
        "peer's: above 1x, Shoal serves more per second (or, for p99, the peer waits longer).",
        "",
        "## Machine",
        "",
        "| | |", "|---|---|",
        *[f"| {k.replace('_', ' ')} | {v if not isinstance(v, list) else ', '.join(f'{x:.2f}' for x in v)} |"  # noqa: E501
          for k, v in m.items()],
        "",
        "## Versions",
        "",
        "| system | version |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in run.versions.items()],
        "",
        "## Headline",
        "",
        RATIO,
        "",
        markdown_table(headline(run)),  # with each row's details under it
        "",
    ]
    for outcome in run.outcomes:
        lines += _section(outcome, charts, out)
    lines += ["## Exact commands", "",
              "PORT is each server's private port, chosen at start; <token> an admin token.", "",
              "```", *run.commands, "```", ""]
    return "\n".join(lines)


def write(run: Run, out: Path) -> tuple[Path, Path]:
    """results/<date>.json and REPORT.md (with charts/) under out."""
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    json_path = results / f"{run.stamp}.json"
    json_path.write_text(json.dumps(run.as_json(), indent=2, default=str) + "\n")
    return json_path, write_report(run, out)


def write_report(run: Run, out: Path) -> Path:
    """REPORT.md and charts/ under out (what `python -m bench --from` redraws)."""
    report = out / "REPORT.md"
    report.write_text(render(run, out))
    return report


def update_results_md(run: Run, json_path: Path) -> None:
    """The headline table of this (full) run into bench/RESULTS.md's `peers` section."""
    rows = headline(run)
    report = Report("peers", run.opts.command, {}, rows, started=run.started)
    # markdown_table puts each row's details under the table.
    report.update_results_md(json_path, "\n\n".join([
        RATIO, "Full tables, charts and the exact commands: [REPORT.md](REPORT.md)."]))


def now() -> datetime:
    return datetime.now(UTC)

