"""Where a running node spends its time: py-spy samples summarised as top frames.

py-spy is not a dependency of Shoal: `.venv/bin/pip install py-spy` first. The
samples are written in py-spy's collapsed ("raw") format next to the results, and
summarised per function (line numbers folded) by self and by inclusive share.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
# Leaf frames of threads that py-spy reports active while they wait for work.
IDLE_LEAVES = ("_worker (concurrent/futures/thread.py",)


@dataclass(frozen=True)
class Profile:
    samples: int
    self_share: list[tuple[str, float]]  # function, share of active samples spent in it
    total_share: list[tuple[str, float]]  # function, share of samples with it on the stack

    def as_json(self) -> dict[str, object]:
        return {"samples": self.samples, "self": self.self_share, "inclusive": self.total_share}

    def render(self, top: int = 15) -> str:
        lines = [f"{self.samples} active samples"]
        for title, rows in (("self", self.self_share), ("inclusive", self.total_share)):
            lines.append(f"top {top} by {title} time:")
            lines += [f"  {share * 100:5.1f}%  {name}" for name, share in rows[:top]]
        return "\n".join(lines)


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


@contextmanager
def sampling(pid: int, out: Path, rate: int = 200, native: bool = False,
             limit: float = 600) -> Iterator[Path]:
    """Sample pid (all threads, active samples only) while the block runs, at most `limit` s.

    py-spy writes its collapsed stacks to `out` when it is interrupted (SIGINT).
    """
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    proc = subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", str(int(limit)), "--rate", str(rate),
         "--format", "raw", "--output", str(out), *(["--native"] if native else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)  # let py-spy attach
        yield out
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError("py-spy did not stop") from None
        if not out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')}")


def summarise(collapsed: Path, keep: int = 40) -> Profile:
    """Self and inclusive shares per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        if frames[-1].startswith(IDLE_LEAVES):
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    if not samples:
        return Profile(0, [], [])
    return Profile(samples,
                   [(name, n / samples) for name, n in own.most_common(keep)],
                   [(name, n / samples) for name, n in total.most_common(keep)])
