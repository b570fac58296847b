"""PgBouncer in transaction pooling mode in front of the bench's private PostgreSQL.

It listens on 127.0.0.1 at a private port, accepts up to `max_client_conn` clients
(4,096: far more than PostgreSQL's 100) and runs their transactions on a pool of
`default_pool_size` (20) server connections. As root it is started with `-u postgres`
(it refuses to run as root); it runs in its own session, so a Ctrl-C reaches only the
benchmark, which then stops it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.install import command_version, require, tool_path
from bench.peers import Peer, spawn, stop_process, wait_ready
from bench.peers.postgres import DATABASE, SERVER_USER, Postgres
from tests.support.server import free_port

POOL_SIZE = 20
MAX_CLIENTS = 4096


def pgbouncer() -> str:
    return require(tool_path("pgbouncer"), "pgbouncer", "apt-get install pgbouncer")


@dataclass
class PgBouncer(Peer):
    """PgBouncer (transaction pooling) for `postgres`; a context manager that stops it."""

    postgres: Postgres
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    commands: list[str] = field(default_factory=list)

    def version(self) -> str:
        return command_version([pgbouncer(), "--version"])

    def config(self, root: Path) -> str:
        return "\n".join([
            "[databases]",
            f"{DATABASE} = host=127.0.0.1 port={self.postgres.port} dbname={DATABASE} "
            f"user={SERVER_USER}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1", f"listen_port = {self.port}", "unix_socket_dir =",
            "auth_type = trust", f"auth_file = {root / 'userlist.txt'}",
            "pool_mode = transaction", f"default_pool_size = {POOL_SIZE}",
            f"max_client_conn = {MAX_CLIENTS}", f"logfile = {root / 'pgbouncer.log'}",
            "ignore_startup_parameters = extra_float_digits", "",
        ])

    def start(self) -> None:
        root = self.postgres.root
        assert root is not None, "start PostgreSQL first"
        self.port = self.port or free_port()
        ini = root / "pgbouncer.ini"
        ini.write_text(self.config(root))
        (root / "userlist.txt").write_text(f'"{SERVER_USER}" ""\n')
        if os.geteuid() == 0:
            for path in (ini, root / "userlist.txt"):
                shutil.chown(path, SERVER_USER, SERVER_USER)
        command = [pgbouncer(), *(["-u", SERVER_USER] if os.geteuid() == 0 else []), str(ini)]
        self.commands.append(" ".join(command) + "  # " + "; ".join(
            line for line in self.config(root).splitlines()[3:] if line))
        self.proc = spawn(command, None)  # it logs to its logfile
        log = root / "pgbouncer.log"
        wait_ready(self.proc, self._listening, "pgbouncer", log)

    def _listening(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def stop(self) -> None:
        stop_process(self.proc)  # SIGTERM: immediate shutdown
        self.proc = None
