"""Several setups measured at the same time, each with an equal share of one CPU.

Setups measured one after the other see a shared machine change under them: on
the 2-CPU bench machine two identical nodes measured in turn differ by up to 25 %
from one repetition to the next, and whole runs drift by more than a run's own
interval. Measured at once, each setup (a node and, say, the replicator beside it)
in a CPU cgroup of equal weight, all bound to CPU 0 with the load generators on
CPU 1, they share whatever the machine gives at that moment equally: their ratio
cancels the drift. What it measures is throughput per equal share of one CPU, so
a setup that needs more CPU per row (or waits longer for its disk) serves fewer.

cgroup v1 (``cpu.shares``) or v2 (``cpu.weight``); it needs root. Bench only.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import wrk
from bench.harness import Load, cpu_seconds, descendants, pin

CGROUP = Path("/sys/fs/cgroup")
NODE_CPU, LOAD_CPU = 0, 1


def _root() -> tuple[Path, str, str]:
    """The cgroup directory under which groups go, their weight file and its value."""
    if (CGROUP / "cpu" / "cpu.shares").exists():
        return CGROUP / "cpu", "cpu.shares", "1024"
    if "cpu" in (CGROUP / "cgroup.controllers").read_text().split():
        (CGROUP / "cgroup.subtree_control").write_text("+cpu")
        return CGROUP, "cpu.weight", "100"
    raise OSError("no cgroup cpu controller (v1 cpu.shares or v2 cpu.weight)")


def unavailable() -> str | None:
    """Why equal shares cannot be set up here, or None."""
    if (os.cpu_count() or 1) < 2:
        return "needs at least two CPUs"
    try:
        root, _, _ = _root()
    except OSError as exc:
        return str(exc)
    if not os.access(root, os.W_OK):
        return f"{root} is not writable (run as root)"
    return None


@dataclass(frozen=True)
class Setup:
    """One setup to load: the URL wrk targets, and the processes that serve it."""

    url: str
    pids: list[int]


@contextlib.contextmanager
def equal_shares(setups: dict[str, Setup], prefix: str = "shoal-bench") -> Iterator[None]:
    """Each setup's processes (and their threads and children) in a cgroup of its own,
    of equal weight, bound to CPU 0; this process (and so wrk) on CPU 1. Undone on exit."""
    root, weight_file, weight = _root()
    groups: list[Path] = []
    before = os.sched_getaffinity(0)
    try:
        for setup in setups.values():
            group = root / f"{prefix}-{os.getpid()}-{len(groups)}"
            group.mkdir()
            groups.append(group)
            (group / weight_file).write_text(weight)
            for pid in setup.pids:
                for process in descendants(pid):
                    with contextlib.suppress(ProcessLookupError, OSError):
                        (group / "cgroup.procs").write_text(str(process))
                pin(pid, {NODE_CPU})
        os.sched_setaffinity(0, {LOAD_CPU})
        yield
    finally:
        os.sched_setaffinity(0, before)
        for group in groups:
            for left in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError, OSError):
                    (root / "cgroup.procs").write_text(left)
            with contextlib.suppress(OSError):
                group.rmdir()


def load_at_once(setups: dict[str, Setup], script: str, args: dict[str, list[str]], *,
                 connections: int, seconds: float) -> dict[str, Load]:
    """wrk (bench/lua/``script`` with ``args[label]``) against every setup at the same
    time, one wrk each, with the CPU time each setup's processes spent meanwhile."""
    results: dict[str, wrk.WrkResult] = {}
    errors: list[BaseException] = []

    def run(label: str, setup: Setup) -> None:
        try:
            results[label] = wrk.run(setup.url, script, args[label], connections=connections,
                                     threads=1, seconds=seconds)
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    cpu0 = {label: _cpu(s.pids) for label, s in setups.items()}
    wall0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=item) for item in setups.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall0
    if errors:
        raise errors[0]
    return {label: Load(results[label], _cpu(s.pids) - cpu0[label], wall)
            for label, s in setups.items()}


def _cpu(pids: Sequence[int]) -> float:
    return sum(map(cpu_seconds, pids))
