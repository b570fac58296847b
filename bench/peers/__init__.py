"""The systems Shoal is measured against, one module each, and what they share.

Every long-running peer is a context manager (`Peer`): entering starts it (and stops
whatever had started if that fails), leaving stops it. Processes are started in a
session of their own, so that a Ctrl-C reaches only the benchmark, which stops them.
"""

from __future__ import annotations

import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self


class Peer(ABC):
    """start() on entering (stop() if start fails), stop() on leaving."""

    @abstractmethod
    def start(self) -> None:
        """Start the system; raise if it does not come up."""

    @abstractmethod
    def stop(self) -> None:
        """Stop whatever start() started; safe to call more than once."""

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def spawn(command: list[str], log: Path | None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start command (in cwd) in a session of its own, its output appended to log (or
    dropped)."""
    if log is None:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd)
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True,
                                cwd=cwd)


def wait_ready(proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str,
               log: Path | None, timeout: float = 30.0) -> None:
    """Poll ready() until it is true; raise if proc exits first or timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited ({proc.returncode}): {tail}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready within {timeout:g} s")


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM,
                 timeout: float = 15.0) -> None:
    """Send sig, wait up to timeout, then kill."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
