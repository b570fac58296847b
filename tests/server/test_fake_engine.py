"""The handlers on a fake engine (server/ports.py's EngineAPI): what the HTTP layer does with
the engine's answers, with no database, store or thread behind it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.engine import Condition
from shoal.errors import Code, ShoalError
from shoal.server.app import App
from shoal.settings import Settings
from shoal.tokens import Principal

ADMIN = Principal("admin", None, "admin")


class FakeEngine:
    """Answers only what these tests ask; anything else is an AttributeError (a 500)."""

    def __init__(self, root: Path) -> None:
        self.settings = Settings(data=str(root))
        self.root = root
        self.admin_token_path = None
        self.status: tuple[str, list[Condition]] = ("ok", [])
        self.calls: list[tuple[str, Any]] = []
        self.audit: set[Any] = set()  # the audit log's records (App.auditor adds them)

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    async def stop(self) -> None:
        pass

    def authenticate(self, header: str | None) -> Principal:
        if header != "Bearer good":
            raise ShoalError(Code.UNAUTHORIZED, "not the fake's token")
        return ADMIN

    def refuse_when_overloaded(self) -> None:
        pass

    def readiness(self) -> tuple[str, list[Condition]]:
        return self.status

    def has_database(self, name: str) -> bool:
        return name == "known"

    def require_database(self, name: str) -> None:
        if name != "known":
            raise ShoalError(Code.DATABASE_NOT_FOUND, f"database {name!r} does not exist")

    async def list_databases(self, principal: Principal, limit: int,
                             cursor: str | None) -> list[Any]:
        self.calls.append(("list_databases", (limit, cursor)))
        raise TypeError("a bug in the engine")


def serve(engine: FakeEngine, method: str, path: str, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        app = App(engine.settings, engine=engine)  # type: ignore[arg-type]
        await app.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://fake") as c:
                return await c.request(method, path, **kw)
        finally:
            await app.stop()

    return asyncio.run(go())


def test_ready_says_what_the_engine_reports(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path)
    engine.status = ("read_only", [Condition("disk_full", "read_only", "no room", 0.0)])
    r = serve(engine, "GET", "/ready")
    assert r.status_code == 503
    assert r.json() == {"status": "read_only", "reasons": [
        {"condition": "disk_full", "level": "read_only", "message": "no room",
         "since": "1970-01-01T00:00:00.000+00:00"}]}


def test_a_bug_in_the_engine_is_a_500_with_its_traceback_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine(tmp_path)
    with caplog.at_level(logging.ERROR):
        r = serve(engine, "GET", "/v1/databases?limit=5",
                  headers={"Authorization": "Bearer good"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "INTERNAL"
    assert "a bug in the engine" not in r.text  # the client is told no internals
    assert any("a bug in the engine" in (rec.exc_text or "") for rec in caplog.records)
    assert engine.calls == [("list_databases", (5, None))]


def test_hrana_asks_the_engine_whether_the_database_exists(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path)
    r = serve(engine, "POST", "/db/unknown/v2/pipeline", json={"requests": []},
              headers={"Authorization": "Bearer good"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "DATABASE_NOT_FOUND"
    r = serve(engine, "POST", "/db/known/v2/pipeline", json={"requests": []},
              headers={"Authorization": "Bearer bad"})
    assert r.status_code == 401


def test_a_bug_under_a_hrana_route_is_a_500_in_hranas_shape(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A libSQL client reads Hrana's top-level message and code; a native envelope alone
    would reach its user as a bare status."""
    engine = FakeEngine(tmp_path)
    with caplog.at_level(logging.ERROR):  # the fake has no streams: AttributeError
        r = serve(engine, "POST", "/db/known/v3/pipeline",
                  json={"requests": [{"type": "execute", "stmt": {"sql": "SELECT 1"}}]},
                  headers={"Authorization": "Bearer good"})
    assert r.status_code == 500
    body = r.json()
    assert body["code"] == "INTERNAL" and body["message"] == "internal error"
    assert body["error"]["code"] == "INTERNAL"  # Shoal's envelope beside it
    assert "FakeEngine" not in r.text
    assert any("FakeEngine" in (rec.exc_text or "") for rec in caplog.records)
