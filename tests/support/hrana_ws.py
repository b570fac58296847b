"""A Hrana WebSocket client for the tests: requests by id, responses that arrive out of
order kept until asked for (tests/integration/test_hrana_ws.py, test_hrana_close.py)."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
from websockets.sync.client import ClientConnection

from tests.integration.hrana_support import plain, stmt
from tests.support.server import ServerProcess


class Hrana:
    """A minimal Hrana WebSocket client that keeps responses that arrive out of order."""

    def __init__(self, conn: ClientConnection):
        self.conn = conn
        self.ids = itertools.count(1)
        self.early: dict[int, dict[str, Any]] = {}

    def send(self, msg: dict[str, Any]) -> None:
        self.conn.send(msgspec.json.encode(msg).decode())

    def recv(self) -> dict[str, Any]:
        msg: dict[str, Any] = msgspec.json.decode(self.conn.recv(timeout=20))
        return msg

    def hello(self, jwt: str | None) -> dict[str, Any]:
        self.send({"type": "hello", "jwt": jwt})
        return self.recv()

    def request(self, req: dict[str, Any]) -> int:
        rid = next(self.ids)
        self.send({"type": "request", "request_id": rid, "request": req})
        return rid

    def wait(self, rid: int) -> dict[str, Any]:
        while rid not in self.early:
            msg = self.recv()
            assert msg["type"] in ("response_ok", "response_error"), msg
            self.early[msg["request_id"]] = msg
        return self.early.pop(rid)

    def ok(self, req: dict[str, Any]) -> dict[str, Any]:
        msg = self.wait(self.request(req))
        assert msg["type"] == "response_ok", msg
        response: dict[str, Any] = msg["response"]
        assert response["type"] == req["type"]
        return response

    def error(self, req: dict[str, Any], code: str) -> dict[str, Any]:
        msg = self.wait(self.request(req))
        assert msg["type"] == "response_error", msg
        assert msg["error"]["code"] == code, msg
        error: dict[str, Any] = msg["error"]
        return error

    def rows(self, stream_id: int, sql: str, *args: Any) -> list[list[Any]]:
        res = self.ok({"type": "execute", "stream_id": stream_id, "stmt": stmt(sql, *args)})
        return [[plain(v) for v in row] for row in res["result"]["rows"]]


def ws_url(server: ServerProcess, path: str) -> str:
    return server.url.replace("http://", "ws://") + path
