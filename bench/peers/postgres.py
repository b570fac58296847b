"""PostgreSQL as a peer: a private cluster on loopback, and pgbench to load it.

`Postgres` runs `initdb` into a fresh temporary directory (owned by the `postgres`
system user when this runs as root: the server refuses to run as root), configures it
to listen on 127.0.0.1 at a private port only, with the defaults that matter left as
shipped (`max_connections = 100`, `synchronous_commit = on`, `fsync = on`), starts it
with `pg_ctl`, and on exit stops it and removes the directory. `pgbench` runs a
custom script against it (or PgBouncer in front of it) and reads back every
transaction's latency from pgbench's per-transaction log.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import POINT_READ
from bench.install import command_version, postgres_bin, require
from bench.measure import Sample, from_latencies
from bench.peers import Peer
from tests.support.server import free_port

SERVER_USER = "postgres"
DATABASE = "bench"

# The same table, rows and query as Shoal's point-read table (bench.harness), in SQL
# that PostgreSQL takes.
SCHEMA = ("CREATE TABLE t(id integer PRIMARY KEY, name text NOT NULL, email text, "
          "score double precision)")
ROWS = ("INSERT INTO t SELECT i, 'user ' || i, 'user' || i || '@example.com', i * 0.5 "
        "FROM generate_series(1, {rows}) AS i")
WRITES = "CREATE TABLE w(k text PRIMARY KEY, v text NOT NULL)"
READ_SCRIPT = "\\set id random(1, {rows})\n" + POINT_READ.replace("?", ":id") + ";\n"
INSERT_SCRIPT = "INSERT INTO w(k, v) VALUES (gen_random_uuid()::text, 'payload');\n"


def as_server_user() -> list[str]:
    """The prefix that runs a command as the server's user (when this runs as root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise RuntimeError(f"running as root, PostgreSQL needs a system user "
                           f"{SERVER_USER!r} (Debian's postgresql package creates it)") from None
    return ["runuser", "-u", SERVER_USER, "--"]


def program(name: str) -> str:
    return require(postgres_bin(name), f"PostgreSQL's {name}", "apt-get install postgresql")


@dataclass
class Postgres(Peer):
    """A private PostgreSQL cluster on 127.0.0.1; a context manager that stops it."""

    max_connections: int = 100
    port: int = 0
    root: Path | None = None
    commands: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def version(self) -> str:
        return command_version([program("postgres"), "--version"])

    def _run(self, command: list[str], timeout: float = 120) -> str:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): "
                               f"{done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def start(self) -> None:
        # The system temporary directory: the server's user must be able to reach it.
        self.root = Path(tempfile.mkdtemp(prefix="shoal-bench-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, SERVER_USER, SERVER_USER)
        self.port = self.port or free_port()
        initdb = [*as_server_user(), program("initdb"), "-D", str(self.data), "-U", SERVER_USER,
                  "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"]
        self._run(initdb)
        settings = {
            "listen_addresses": "'127.0.0.1'", "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": str(self.max_connections),
            "synchronous_commit": "on", "fsync": "on", "logging_collector": "off",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# shoal bench\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        start = [*as_server_user(), program("pg_ctl"), "-D", str(self.data), "-l",
                 str(self.root / "postgres.log"), "-w", "-t", "60", "start"]
        self._run(start)
        self.commands += [" ".join(initdb), " ".join(start),
                          "postgresql.conf: " + ", ".join(f"{k}={v}" for k, v in settings.items())]

    def stop(self) -> None:
        if self.root is None:
            return
        if (self.data / "postmaster.pid").exists():
            for mode in ("fast", "immediate"):
                try:
                    self._run([*as_server_user(), program("pg_ctl"), "-D", str(self.data),
                               "-m", mode, "-w", "-t", "30", "stop"], timeout=60)
                    break
                except (RuntimeError, subprocess.TimeoutExpired):
                    continue
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def psql(self, sql: str, database: str = DATABASE) -> str:
        """Run SQL with psql as the superuser; the unaligned output."""
        return self._run([program("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                          SERVER_USER, "-d", database, "-v", "ON_ERROR_STOP=1", "-qAt",
                          "-c", sql], timeout=600)

    def seed(self, rows: int) -> None:
        """Database `bench` with table t (rows 1..rows, as Shoal's) and the insert table w."""
        self.psql(f"CREATE DATABASE {DATABASE}", "postgres")
        for sql in (SCHEMA, ROWS.format(rows=rows), WRITES, "VACUUM ANALYZE t"):
            self.psql(sql)
        got = self.psql(f"SELECT id FROM t WHERE id = {rows}").strip()
        if got != str(rows):
            raise RuntimeError(f"seeding PostgreSQL failed: {got!r}")

    def dsn(self) -> dict[str, object]:
        """Connection parameters for a client driver."""
        return {"host": "127.0.0.1", "port": self.port, "user": SERVER_USER,
                "database": DATABASE}


_PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")
_FAILED = re.compile(r"number of failed transactions: (\d+)")
_ABORTED = re.compile(r"client \d+ aborted")


@dataclass(frozen=True)
class PgBench:
    """pgbench with a custom script against a host:port (Postgres or PgBouncer)."""

    port: int
    work_dir: Path

    def command(self, script: Path, clients: int, seconds: int,
                reconnect: bool = False) -> list[str]:
        return [program("pgbench"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SERVER_USER,
                "-n", "-c", str(clients), "-j", str(min(2, clients)), "-T", str(seconds),
                *(["-C"] if reconnect else []), "-f", str(script), DATABASE]

    def script(self, name: str, text: str) -> Path:
        path = self.work_dir / name
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def run(self, script: Path, clients: int, seconds: float,
            reconnect: bool = False) -> Sample:
        """One pgbench run; latencies from its per-transaction log (-l). Clients that
        pgbench aborted (a refused connection: too many clients) count as errors."""
        whole = max(1, round(seconds))
        logs = Path(tempfile.mkdtemp(prefix="pgbench-", dir=self.work_dir))
        try:
            command = [*self.command(script, clients, whole, reconnect), "-l",
                       "--log-prefix", str(logs / "tx")]
            done = subprocess.run(command, capture_output=True, text=True, timeout=whole + 60,
                                  cwd=logs)
            output = done.stdout + done.stderr
            processed = _PROCESSED.search(output)
            if processed is None and "too many clients" in output:
                # pgbench opens every connection first and gives up on the first refusal
                return Sample(0, float(whole), clients, None, None,
                              {"refused": "the run could not start: FATAL: sorry, too many "
                                          "clients already"})
            if processed is None:
                raise RuntimeError(f"pgbench failed ({done.returncode}): {output[-1500:]}")
            latencies: list[float] = []
            failed = 0
            for path in logs.glob("tx.*"):
                for line in path.read_text().splitlines():
                    fields = line.split()
                    if len(fields) >= 3 and fields[2].isdigit():
                        latencies.append(int(fields[2]) / 1000)
                    elif len(fields) >= 3:
                        failed += 1
            failed_match = _FAILED.search(output)
            failed = max(failed, int(failed_match.group(1)) if failed_match else 0)
            aborted = len(_ABORTED.findall(output))
            refused = output.count("too many clients")
            return from_latencies(latencies, float(whole), failed + aborted,
                                  aborted_clients=aborted, refused_connections=refused)
        finally:
            shutil.rmtree(logs, ignore_errors=True)
