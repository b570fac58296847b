"""Start a real `shoal serve` subprocess on a free port, for integration tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# One SSL context for every test client: httpx builds one per client otherwise (~40 ms),
# although every URL here is plain HTTP on loopback.
SSL_CONTEXT = ssl.create_default_context()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PortTaken(RuntimeError):
    """The node could not bind its port."""


@dataclass
class ServerProcess:
    """A running node. `settings` become SHOAL_* environment variables; `env` (e.g. AWS
    credentials) is added to the subprocess environment as is."""

    data_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    prefix: list[str] = field(default_factory=list)  # e.g. ["prlimit", "--nofile=512"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        if "admin_token" in self.settings:
            return str(self.settings["admin_token"])
        return (self.data_dir / "admin-token").read_text().strip()

    def start(self, timeout: float = 20.0) -> ServerProcess:
        """Start the node and wait for /health. A port picked here may be taken by another
        process between free_port() and the node's bind: then another is picked (a port the
        caller chose is kept, and its failure raised)."""
        picked = not self.port
        for _ in range(3 if picked else 1):
            if picked:
                self.port = free_port()
            try:
                return self._start(timeout)
            except PortTaken:
                if not picked:
                    raise
        raise PortTaken(f"three free ports were taken before the node bound them: {self.log()}")

    def _start(self, timeout: float) -> ServerProcess:
        env = dict(os.environ)
        env.update(self.env)
        env.update({f"SHOAL_{k.upper()}": str(v) for k, v in self.settings.items()})
        env["SHOAL_ACCESS_LOG"] = str(self.settings.get("access_log", "false"))
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the subprocess
        logged_before = log.tell()
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "shoal", "serve", "--data", str(self.data_dir),
             "--port", str(self.port)],
            stdout=log, stderr=log, env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        # one client for the polls: httpx.get() would build an SSL context per attempt
        # (~20 ms of CPU each, taken from the node that is starting)
        with httpx.Client(timeout=1, verify=SSL_CONTEXT) as probe:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    said = self.log()
                    if b"address already in use" in self.log_path.read_bytes()[logged_before:]:
                        raise PortTaken(f"shoal serve exited: {said}")
                    raise RuntimeError(f"shoal serve exited: {said}")
                try:
                    if probe.get(self.url + "/health").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
        raise RuntimeError(f"shoal serve did not become healthy: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client of this node: admin token by default, no Authorization when ""."""
        headers = {} if token == "" else {"Authorization": f"Bearer {token or self.admin_token}"}
        return httpx.Client(base_url=self.url, timeout=30, headers=headers, verify=SSL_CONTEXT)
