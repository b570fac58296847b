"""What every scenario of the peer benchmark records: samples, series, repetitions.

A `Sample` is one timed run of one system (operations, seconds, errors, median and
p99 latency); a `Series` is every repetition of one system in one variant of a
scenario (e.g. point reads at 16 connections, Postgres through PgBouncer), and
reports medians. `repeat` warms every system up, then runs the repetitions in a
rotating order, so that noise from other jobs on the machine is spread evenly.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import wrk
from bench.core import say
from bench.harness import Load, median, percentile


@dataclass(frozen=True)
class Sample:
    """One timed run: `ops` operations that succeeded in `seconds`, and `errors` that did not."""

    ops: int
    seconds: float
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict[str, Any]:
        # seconds unrounded: `python -m bench --from` recomputes the rate from ops / seconds,
        # and must get the very figures the run printed.
        return {"ops": self.ops, "seconds": self.seconds, "rate": round(self.rate, 1),
                "errors": self.errors, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
                **self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sample:
        """The Sample as_json() wrote (its `rate` is derived; the other keys are `extra`)."""
        base = {"ops", "seconds", "rate", "errors", "p50_ms", "p99_ms"}
        return cls(int(data["ops"]), float(data["seconds"]), int(data["errors"]),
                   data.get("p50_ms"), data.get("p99_ms"),
                   {k: v for k, v in data.items() if k not in base})


def from_latencies(latencies_ms: list[float], seconds: float, errors: int,
                   **extra: Any) -> Sample:
    """A Sample from the latency of every operation that succeeded."""
    if not latencies_ms:
        return Sample(0, seconds, errors, None, None, extra)
    return Sample(len(latencies_ms), seconds, errors, median(latencies_ms),
                  percentile(latencies_ms, 99), extra)


def from_wrk(result: wrk.WrkResult, **extra: Any) -> Sample:
    """A Sample from wrk: non-2xx answers, broken and timed-out connections are errors."""
    return Sample(result.succeeded, result.seconds, result.failed,
                  result.latency_us["p50"] / 1000, result.latency_us["p99"] / 1000,
                  {"wrk_errors": result.errors, **extra})


def from_load(load: Load, **extra: Any) -> Sample:
    """A Sample from a wrk run that also measured the server's CPU time."""
    return from_wrk(load.result, server_cpu_us_per_request=round(load.cpu_us_per_request, 1),
                    **extra)


def wrk_load(url: str, script: str, args: list[str], connections: int,
             headers: tuple[str, ...] = ()) -> Callable[[float], Sample]:
    """A wrk run as a Measure (seconds -> Sample), for a server whose CPU is not measured."""
    return lambda seconds: from_wrk(wrk.run(
        url, script, args, connections=connections, threads=min(2, connections),
        seconds=seconds, headers=headers))


def run_threads(make_worker: Callable[[int], Callable[[], object]], threads: int,
                seconds: float, max_ops: int = 2_000_000) -> Sample:
    """Call each thread's operation in a loop for `seconds` (at most max_ops calls in all),
    timing every call. make_worker(i) runs in thread i (so it can open its own connection)
    and returns the operation; an exception in a call counts as an error."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    per_thread = max(1, max_ops // threads)
    clock = time.perf_counter
    window = [0.0, 0.0]  # start, deadline: set once every thread is ready

    def go() -> None:
        window[0] = clock()
        window[1] = window[0] + seconds

    ready = threading.Barrier(threads + 1, action=go)

    def loop(i: int) -> None:
        op = make_worker(i)
        ready.wait()
        out = latencies[i]
        while len(out) < per_thread:
            started = clock()
            if started >= window[1]:
                break
            try:
                op()
            except Exception as exc:
                with lock:
                    errors[type(exc).__name__] += 1
                continue
            out.append((clock() - started) * 1000)

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    ready.wait(timeout=60)
    for worker in workers:
        worker.join(timeout=seconds + 120)
    elapsed = clock() - window[0]
    merged = [x for out in latencies for x in out]
    return from_latencies(merged, elapsed, sum(errors.values()), error_kinds=dict(errors))


Measure = Callable[[float], Sample]  # seconds -> one timed run


@dataclass
class Series:
    """Every repetition of one system in one variant of a scenario."""

    scenario: str
    variant: str
    system: str
    samples: list[Sample] = field(default_factory=list)
    command: str = ""
    skipped: str = ""  # why it was not measured (then samples is empty)
    note: str = ""

    @property
    def measured(self) -> bool:
        return bool(self.samples) and not self.skipped

    @property
    def rate(self) -> float | None:
        return median([s.rate for s in self.samples]) if self.measured else None

    def _latency(self, name: str) -> float | None:
        values = [getattr(s, name) for s in self.samples if getattr(s, name) is not None]
        return median(values) if values else None

    @property
    def p50_ms(self) -> float | None:
        return self._latency("p50_ms")

    @property
    def p99_ms(self) -> float | None:
        return self._latency("p99_ms")

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.samples)

    @property
    def ops(self) -> int:
        return sum(s.ops for s in self.samples)

    def as_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "variant": self.variant, "system": self.system,
                "command": self.command, "skipped": self.skipped, "note": self.note,
                "median_rate": self.rate, "median_p50_ms": self.p50_ms,
                "median_p99_ms": self.p99_ms, "errors": self.errors,
                "samples": [s.as_json() for s in self.samples]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Series:
        """The Series as_json() wrote (medians and error counts are derived from samples)."""
        return cls(data["scenario"], data["variant"], data["system"],
                   [Sample.from_json(s) for s in data["samples"]], data.get("command", ""),
                   data.get("skipped", ""), data.get("note", ""))


def repeat(series: dict[str, Series], measures: dict[str, Measure], *, reps: int,
           seconds: float, warmup: float) -> None:
    """Warm each system up (a run of `warmup` seconds, discarded; none if 0), then `reps`
    rounds over all of them in a rotating order, appending to its series. A system that
    raises is marked skipped with the error and left out of later rounds; the others go on."""
    names = [n for n in measures if not series[n].skipped]
    for name in names if warmup > 0 else []:
        try:
            measures[name](warmup)
        except Exception as exc:
            series[name].skipped = f"failed during warm-up: {exc}"
    for rep in range(reps):
        live = [n for n in names if not series[n].skipped]
        order = live[rep % len(live):] + live[:rep % len(live)] if live else []
        for name in order:
            try:
                sample = measures[name](seconds)
            except Exception as exc:
                series[name].skipped = f"failed in repetition {rep + 1}: {exc}"
                say(f"  {series[name].variant} {name}: FAILED: {exc}")
                continue
            series[name].samples.append(sample)
            p99 = f"{sample.p99_ms:.2f} ms" if sample.p99_ms is not None else "-"
            say(f"  {series[name].variant} rep {rep + 1} {name}: {sample.rate:,.0f}/s, "
                f"p99 {p99}, errors {sample.errors}")
