"""A webhook endpoint for tests: a real HTTP server on a thread of its own.

Each request is recorded; one whose signature verifies (with the ``standardwebhooks``
library, as a receiver would) and that the policy lets through is answered 204 and its
events are *accepted*. The policy fails a share of requests (``fail``: 500) and lets a
share hang past the sender's timeout (``hang``), at random (seeded); ``down`` refuses
everything with 503.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import standardwebhooks


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what it was answered (0: left hanging; -1: not yet)
    at: float = field(default_factory=time.monotonic)

    @property
    def events(self) -> list[dict[str, Any]]:
        return json.loads(self.body)["data"]["events"]  # type: ignore[no-any-return]


class Receiver:
    def __init__(self, secret: str | None = None, *, fail: float = 0.0, hang: float = 0.0,
                 hang_for: float = 2.0, seed: int = 0):
        self.secret = secret
        self.fail, self.hang, self.hang_for = fail, hang, hang_for
        self.down = False
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.accepted: list[dict[str, Any]] = []  # events of the requests answered 2xx
        self.bad_signatures = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _answer(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            roll = self.random.random()
        if self.down:
            return 503
        if roll < self.hang:
            time.sleep(self.hang_for)
            return 0
        if roll < self.hang + self.fail:
            return 500
        if self.secret is not None:
            try:
                standardwebhooks.Webhook(self.secret).verify(body, headers)
            except standardwebhooks.WebhookVerificationError:
                with self.lock:
                    self.bad_signatures += 1
                return 401
        return 204

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                record = Received(headers, body, -1)
                with receiver.lock:
                    receiver.received.append(record)
                status = record.status = receiver._answer(headers, body)
                with receiver.lock:
                    if 200 <= status < 300:
                        receiver.accepted += json.loads(body)["data"]["events"]
                if status:
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def wait_for(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The accepted events once at least ``count`` distinct ones arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len({e["cursor"] for e in self.accepted}) >= count:
                    return list(self.accepted)
            time.sleep(0.05)
        with self.lock:
            raise AssertionError(f"{len({e['cursor'] for e in self.accepted})} of {count} "
                                 f"events arrived; {len(self.received)} requests")
