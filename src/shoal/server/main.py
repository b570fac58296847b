"""`shoal serve`: build the engine and app, then run them under uvicorn (uvloop, httptools)."""

from __future__ import annotations

import logging
import sys

import uvicorn

from shoal.server.app import App
from shoal.settings import Settings


def serve(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format='{"level": "%(levelname)s", "logger": "%(name)s", '
                               '"message": "%(message)s"}')
    app = App(settings)
    if app.engine.admin_token_path is not None:
        print(f"shoal: admin token is in {app.engine.admin_token_path}", file=sys.stderr)
    print(f"shoal: serving {settings.data_dir} on http://{settings.host}:{settings.port}",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, loop="uvloop", http="httptools",
        lifespan="on", access_log=False, log_level="warning", ws="websockets-sansio",
        timeout_keep_alive=30, backlog=4096,
    )
    uvicorn.Server(config).run()
