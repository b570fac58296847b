"""`shoal serve`: build the engine and app, then run them under the chosen HTTP server.

Both servers run the app in this one process (granian in its embedded mode, I/O
on a Rust thread): a node is one process, so `kill -9` means what it says and
the engine's state is never split across workers. `serve --workers N` runs N such
processes, each a whole node (server/workers.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn
import uvloop

from shoal.engine import configure_sqlite, memory_ceiling
from shoal.errors import ShoalError
from shoal.server import stderr, workers
from shoal.server.app import App
from shoal.server.gate import Gate, protocols
from shoal.settings import Settings

log = logging.getLogger("shoal")

HANDOVER_LIMIT = 60.0  # seconds a stopping cluster node spends handing its databases over


def serve(settings: Settings, worker_socket: int | None = None, worker_count: int = 1) -> None:
    """Run the node until SIGTERM/SIGINT. ``worker_socket``: the node is one of ``serve
    --workers`` (server/workers.py), this inherited loopback socket is its advertised
    address, it listens on host:port beside the other workers (SO_REUSEPORT), and takes
    1/``worker_count`` of the machine's memory when max_memory_bytes is 0."""
    stderr.configure(settings.log_level, json_lines=settings.access_log)
    sockets: list[socket.socket] | None = None
    if worker_socket is not None:
        workers.die_with_parent()
        if settings.max_memory_bytes == 0 and memory_ceiling(0) > 0:
            settings = dataclasses.replace(
                settings, max_memory_bytes=max(1, memory_ceiling(0) // worker_count))
        try:  # bound, not listening: the kernel sends it connections once the node serves
            public = workers.listening_socket(settings.host, settings.port, reuse_port=True)
        except OSError as exc:
            stderr.announce(f"cannot start: cannot listen on {settings.host}:{settings.port}: "
                            f"{exc.strerror or exc}", logging.ERROR)
            sys.exit(1)
        sockets = [public, socket.socket(fileno=worker_socket)]
    try:
        configure_sqlite(soft_heap_limit=settings.soft_heap_limit,
                         hard_heap_limit=settings.hard_heap_limit)
        app = App(settings)
        app.engine.open()  # before listening: a node that cannot start says why and exits
    except ShoalError as exc:  # e.g. the object store is unreachable or refuses the keys
        stderr.cannot_start(exc)
        sys.exit(1)
    if app.engine.admin_token_path is not None:
        stderr.announce(f"admin token is in {app.engine.admin_token_path}")
    where = f"http://{settings.host}:{settings.port}"
    if worker_socket is not None:
        where += f" and {settings.advertise_url} (a worker)"
    stderr.announce(f"serving {settings.data_dir} on {where}")
    if settings.http_server == "granian":
        _serve_granian(app, settings)
        return
    http, ws = protocols(Gate(settings, raise_fd_limit()))
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, loop="uvloop", http=http,
        lifespan="on", access_log=False, log_level="warning", ws=ws,
        log_config=None,  # uvicorn's records go to the root logger: stderr.configure's format
        timeout_keep_alive=30, backlog=4096, ws_max_size=int(settings.max_request_bytes),
        # Nothing reads the client's address from the scope (the gate counts the socket's
        # peer), so X-Forwarded-For need not be parsed on every request; no Server header
        proxy_headers=False, server_header=False,
    )
    _Server(config, app).run(sockets)


class _Server(uvicorn.Server):
    """uvicorn's server, except that the first SIGTERM or SIGINT on a cluster's node hands
    its databases over (``App.hand_over``) while it still serves, then stops it as usual
    (a second signal stops it at once)."""

    def __init__(self, config: uvicorn.Config, app: App):
        super().__init__(config)
        self.app = app
        self.handing_over = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self.app.loop
        if not self.app.clustered or self.handing_over or self.should_exit or loop is None:
            super().handle_exit(sig, frame)
            return
        self.handing_over = True
        loop.call_soon_threadsafe(
            lambda: loop.create_task(_then(self.app, lambda: super(_Server, self).handle_exit(
                sig, frame))))


async def _then(app: App, stop: Callable[[], None]) -> None:
    """Hand the node's databases over (bounded), then stop the server whatever happened."""
    try:
        await asyncio.wait_for(app.hand_over(), HANDOVER_LIMIT)
    except Exception:  # the stop goes on: the others take over after lease_ttl at worst
        log.exception("handing the databases over failed")
    stop()


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one and return it: every connection
    and every SQLite file takes a descriptor, and a node out of them cannot open a
    database (the gate keeps connections to half of this)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _serve_granian(app: App, settings: Settings) -> None:
    from granian.constants import Interfaces
    from granian.server.embed import Server

    async def run() -> None:
        server = Server(app, address=settings.host, port=settings.port,
                        interface=Interfaces.ASGI, log_enabled=False, backlog=4096)
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task[None]] = []

        def stop() -> None:
            if app.clustered and not stopping:
                stopping.append(loop.create_task(_then(app, server.stop)))
            else:
                server.stop()  # type: ignore[no-untyped-call]

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await server.serve()

    uvloop.run(run())
