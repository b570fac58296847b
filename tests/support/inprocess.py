"""The App in the test's own process: no port, no subprocess, the server's tracebacks in the
test's log.

``InProcessNode`` has the interface of ``ServerProcess`` that HTTP tests use (``start``,
``stop``, ``client``, ``admin_token``, ``data_dir``, ``url``), so a test module moves from
a real ``shoal serve`` to this tier by swapping its fixture. The App runs on an event loop of
its own thread, started and stopped through the ASGI lifespan as uvicorn does it; a client's
requests go to it through ``httpx.ASGITransport``, handed across to that loop. Its object
store is a ``memory://NAME`` of its own (found again by ``restart()``) unless the test names
another. What needs a real process stays in
tests/integration: connection limits and deadlines (uvicorn's protocol classes), crashes,
the lease between processes, the CLI.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shoal.server.app import App
from shoal.settings import Settings

ADMIN_TOKEN = "in-process-admin-token"  # set, not generated: no file to read back


class LoopTransport(httpx.BaseTransport):
    """A blocking httpx transport that runs each request on the App's loop (ASGITransport)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, app: App):
        self.loop = loop
        self.inner = httpx.ASGITransport(app=app)

    async def send(self, request: httpx.Request, body: bytes) -> httpx.Response:
        """On the App's loop: the request, answered whole."""
        async_request = httpx.Request(request.method, request.url,
                                      headers=request.headers, content=body)
        response = await self.inner.handle_async_request(async_request)
        content = await response.aread()
        return httpx.Response(response.status_code, headers=response.headers,
                              content=content, request=request)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        return asyncio.run_coroutine_threadsafe(self.send(request, body), self.loop).result()


class AsyncLoopTransport(httpx.AsyncBaseTransport):
    """The same for an asyncio client on another loop (a test's ``asyncio.run``):
    cancelling the caller cancels the request on the App's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, app: App):
        self.blocking = LoopTransport(loop, app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        done = asyncio.run_coroutine_threadsafe(self.blocking.send(request, body),
                                                self.blocking.loop)
        return await asyncio.wrap_future(done)


@dataclass
class InProcessNode:
    data_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    app: App | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _lifespan: Future[None] | None = None
    _events: asyncio.Queue[dict[str, Any]] | None = None
    _answers: asyncio.Queue[dict[str, Any]] | None = None

    url = "http://shoal.in-process"
    store_url: str = field(default_factory=lambda: f"memory://{uuid.uuid4().hex}")

    @property
    def admin_token(self) -> str:
        return str(self.settings.get("admin_token", ADMIN_TOKEN))

    def start(self) -> InProcessNode:
        values = {"data": str(self.data_dir), "store": self.store_url,
                  "admin_token": ADMIN_TOKEN, "access_log": False, **self.settings}
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="shoal-in-process",
                                        daemon=True)
        self._thread.start()
        self.app = self._run(self._boot(Settings(**values)))
        return self

    async def _boot(self, settings: Settings) -> App:
        app = App(settings)
        self._events, self._answers = asyncio.Queue(), asyncio.Queue()
        events, answers = self._events, self._answers
        self._lifespan = asyncio.ensure_future(app({"type": "lifespan"}, events.get,
                                                   answers.put))  # type: ignore[arg-type]
        await events.put({"type": "lifespan.startup"})
        answer = await answers.get()
        if answer["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"the App did not start: {answer}")
        return app

    async def _shutdown(self) -> None:
        assert self._events is not None and self._answers is not None
        await self._events.put({"type": "lifespan.shutdown"})
        await self._answers.get()

    def _run(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            if self.app is not None:
                self._run(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._thread is not None
            self._thread.join(10)
            self._loop.close()
            self._loop = None
            self.app = None

    def restart(self) -> InProcessNode:
        """A clean stop and a new App on the same data directory and store."""
        self.stop()
        return self.start()

    def transport(self) -> LoopTransport:
        """A blocking httpx transport to this node (for shoal.client.Client(transport=))."""
        assert self._loop is not None and self.app is not None, "start() the node first"
        return LoopTransport(self._loop, self.app)

    def async_transport(self) -> AsyncLoopTransport:
        """An asyncio httpx transport to this node (for shoal.client.AsyncClient)."""
        assert self._loop is not None and self.app is not None, "start() the node first"
        return AsyncLoopTransport(self._loop, self.app)

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client of this node: admin token by default, no Authorization when ""."""
        headers = {} if token == "" else {"Authorization": f"Bearer {token or self.admin_token}"}
        return httpx.Client(base_url=self.url, timeout=30, headers=headers,
                            transport=self.transport())
