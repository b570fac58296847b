"""Datasette as a peer: SQLite over HTTP JSON, in Python, on a file with the same rows.

`Datasette` writes the SQLite file (`bench.db`: table t, the same schema, rows and
primary key as Shoal's point-read table), serves it with `datasette serve` on
127.0.0.1 at a private port (default settings: the file is opened mutable, as a
database that may change), and stops it on exit. Its JSON row endpoint
`/bench/t/<id>.json` is the point read.
"""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.install import command_version, require, venv_bin
from bench.peers import Peer, spawn, stop_process, wait_ready
from bench.peers.sqlite import point_table
from tests.support.server import free_port


def datasette() -> str:
    return require(venv_bin("datasette"), "datasette", "pip install -e '.[bench]'")


@dataclass
class Datasette(Peer):
    """`datasette serve` on a copy of the point-read table; a context manager."""

    root: Path
    rows: int
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    commands: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def version(self) -> str:
        return command_version([datasette(), "--version"])

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/bench/t/1.json", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        db = point_table(self.root / "bench.db", self.rows)
        self.port = self.port or free_port()
        command = [datasette(), "serve", str(db), "--host", "127.0.0.1", "--port",
                   str(self.port)]
        self.commands.append(" ".join(command))
        log = self.root / "datasette.log"
        self.proc = spawn(command, log)
        wait_ready(self.proc, self._answers, "datasette", log, timeout=60)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)
        self.proc = None
