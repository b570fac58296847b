"""Run wrk with one of the Lua scripts in bench/lua and read back its summary.

Every script is run with ``lua/report.lua`` appended, whose ``done`` hook prints
one ``WRK_JSON {...}`` line; that line is parsed rather than wrk's human output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LUA_DIR = Path(__file__).parent / "lua"
MARKER = "WRK_JSON "


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: dict[str, int]
    latency_us: dict[str, float]

    @property
    def rate(self) -> float:
        """Completed requests per second (including non-2xx answers; see `failed`)."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        """Requests that got a 4xx/5xx answer, or connections that broke or timed out."""
        return sum(self.errors.values())

    @property
    def succeeded(self) -> int:
        return self.requests - self.errors.get("status", 0)

    def as_json(self) -> dict[str, object]:
        return {"requests": self.requests, "seconds": round(self.seconds, 3),
                "rate": round(self.rate, 1), "errors": self.errors,
                "latency_us": self.latency_us}


def ensure_wrk() -> str:
    """The path of wrk, installing Debian's package first if it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise RuntimeError("wrk is not installed and apt-get is not available; install wrk")
    print("bench: wrk not found; installing it from Debian's packages", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        subprocess.run(command, check=True, timeout=600, env=env)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("apt-get install wrk succeeded but wrk is still not on PATH")
    return found


def parse_summary(output: str) -> WrkResult:
    """The WrkResult from wrk's stdout; raises if report.lua's line is missing."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER):])
            return WrkResult(
                requests=int(data["requests"]),
                seconds=data["duration_us"] / 1e6,
                errors={k: int(v) for k, v in data["errors"].items()},
                latency_us={k: float(v) for k, v in data["latency_us"].items()},
            )
    raise RuntimeError(f"wrk printed no summary line:\n{output[-2000:]}")


def run(url: str, script: str, args: list[str], *, connections: int = 64, threads: int = 2,
        seconds: float = 10, request_timeout: float = 10.0,
        headers: Sequence[str] = ()) -> WrkResult:
    """Run wrk against url for `seconds` (whole, at least 1; killed if it overruns by 30 s),
    with extra request `headers` ("Name: value", e.g. "Connection: close")."""
    wrk = ensure_wrk()
    seconds = max(1, round(seconds))
    source = (LUA_DIR / script).read_text() + "\n" + (LUA_DIR / "report.lua").read_text()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-") as fh:
        fh.write(source)
        fh.flush()
        command = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
                   "--timeout", f"{request_timeout:g}s",
                   *[arg for header in headers for arg in ("-H", header)],
                   "-s", fh.name, url, "--", *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_summary(done.stdout)
