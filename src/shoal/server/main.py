"""`shoal serve`: build the engine and app, then run them under the chosen HTTP server.

Both servers run the app in this one process (granian in its embedded mode, I/O
on a Rust thread): a node is one process, so `kill -9` means what it says and
the engine's state is never split across workers.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvicorn
import uvloop

from shoal.engine.connection import configure_sqlite
from shoal.errors import ShoalError
from shoal.server import stderr
from shoal.server.app import App
from shoal.settings import Settings


def serve(settings: Settings) -> None:
    stderr.configure(settings.log_level, json_lines=settings.access_log)
    try:
        configure_sqlite(soft_heap_limit=settings.soft_heap_limit,
                         hard_heap_limit=settings.hard_heap_limit)
        app = App(settings)
    except ShoalError as exc:  # e.g. the object store is unreachable or refuses the keys
        stderr.cannot_start(exc)
        sys.exit(1)
    if app.engine.admin_token_path is not None:
        stderr.announce(f"admin token is in {app.engine.admin_token_path}")
    stderr.announce(f"serving {settings.data_dir} on http://{settings.host}:{settings.port}")
    if settings.http_server == "granian":
        _serve_granian(app, settings)
        return
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, loop="uvloop", http="httptools",
        lifespan="on", access_log=False, log_level="warning", ws="websockets-sansio",
        log_config=None,  # uvicorn's records go to the root logger: stderr.configure's format
        timeout_keep_alive=30, backlog=4096,
    )
    uvicorn.Server(config).run()


def _serve_granian(app: App, settings: Settings) -> None:
    from granian.constants import Interfaces
    from granian.server.embed import Server

    async def run() -> None:
        server = Server(app, address=settings.host, port=settings.port,
                        interface=Interfaces.ASGI, log_enabled=False, backlog=4096)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.stop)
        await server.serve()

    uvloop.run(run())
