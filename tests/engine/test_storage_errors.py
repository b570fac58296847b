"""What a failure under the engine becomes: the store's failures and the log's by name,
a full disk DISK_FULL, and a bug a 500 INTERNAL with its traceback in the log (never 503
STORAGE_UNAVAILABLE, which tells clients to retry what will fail again).

The in-process tests drive the ASGI app with a Registry whose branch lookup fails, as
each protocol sees it: the native API and Hrana's pipeline.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import apsw
import pytest

from shoal import settings as settings_mod
from shoal.engine.registry import storage_errors
from shoal.errors import Code, ShoalError
from shoal.log.errors import BranchNotFound, CorruptObject, LogConflict, MissingObject
from shoal.server.app import App
from shoal.server.hrana_proto import from_shoal
from shoal.storage import NotFound, PreconditionFailed, StorageUnavailable
from shoal.storage.fenced import Fenced

ADMIN = "admin-token-for-tests"


# -- storage_errors, alone ---------------------------------------------------------------------


@pytest.mark.parametrize(("exc", "code"), [
    (StorageUnavailable("k", "S3 PutObject of s3://b/k failed: SlowDown (HTTP 503)"),
     Code.STORAGE_UNAVAILABLE),
    (PreconditionFailed("k", "If-Match"), Code.STORAGE_UNAVAILABLE),
    (NotFound("k"), Code.STORAGE_UNAVAILABLE),
    (Fenced("this node does not hold the object store's lease"), Code.STORAGE_UNAVAILABLE),
    (LogConflict("another writer"), Code.STORAGE_UNAVAILABLE),
    (MissingObject("gone", "dbs/x/1.seg"), Code.STORAGE_CORRUPT),
    (CorruptObject("bad", "dbs/x/1.seg"), Code.STORAGE_CORRUPT),
    (BranchNotFound("no branch"), Code.BRANCH_NOT_FOUND),
    (OSError(errno.ENOSPC, "No space left on device"), Code.DISK_FULL),
    (apsw.FullError("database or disk is full"), Code.DISK_FULL),
])
def test_failures_map_by_name(exc: Exception, code: Code) -> None:
    with pytest.raises(ShoalError) as info, storage_errors():
        raise exc
    assert info.value.code == code


@pytest.mark.parametrize("exc", [TypeError("a bug"), AttributeError("a bug"),
                                 KeyError("a bug"), ValueError("a bug"),
                                 OSError(errno.EIO, "I/O error"), apsw.SQLError("a bug")])
def test_anything_else_goes_up_as_it_is(exc: Exception) -> None:
    """Not the store's failure: the server's handler of the unexpected answers it."""
    with pytest.raises(type(exc)) as info, storage_errors():
        raise exc
    assert info.value is exc


def test_the_store_failure_is_logged_without_a_traceback(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    with caplog.at_level(logging.WARNING, "shoal.registry"), \
            pytest.raises(ShoalError) as info, storage_errors():
        raise StorageUnavailable("k", "get k failed: timed out")
    assert info.value.status == 503 and info.value.message == "object store: get k failed: " \
                                                               "timed out"
    assert [r.getMessage() for r in caplog.records] == \
        ["object store call failed: get k failed: timed out"]


def test_hrana_shows_a_store_failure_as_its_code_and_status() -> None:
    err = from_shoal(ShoalError(Code.STORAGE_UNAVAILABLE, "object store: down"))
    assert (err.code, err.status) == (Code.STORAGE_UNAVAILABLE, 503)
    assert err.body()["error"]["hint"] == Code.STORAGE_UNAVAILABLE.hint


# -- through the app ---------------------------------------------------------------------------


async def call(app: App, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request through the ASGI app; (status, decoded JSON body)."""
    raw = json.dumps(body).encode() if body is not None else b""
    scope = {"type": "http", "method": method, "path": path, "query_string": b"",
             "headers": [(b"authorization", f"Bearer {ADMIN}".encode()),
                         (b"content-type", b"application/json"),
                         (b"content-length", str(len(raw)).encode())]}
    sent = False
    out: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.Event().wait()  # the client stays
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        else:
            out["body"] = message["body"]

    await app(scope, receive, send)
    return out["status"], json.loads(out["body"])


def serve(tmp_path: Path, failure: Exception,
          scenario: Callable[[App], Coroutine[Any, Any, None]]) -> None:
    """An app on a folder store holding database "d", whose branch lookup then raises
    ``failure`` (inside the Registry methods that open a branch)."""
    settings = settings_mod.load(environ={"SHOAL_DATA": str(tmp_path / "data"),
                                          "SHOAL_ADMIN_TOKEN": ADMIN,
                                          "SHOAL_ACCESS_LOG": "false"})

    async def main() -> None:
        app = App(settings)
        await app.engine.start()
        try:
            status, _ = await call(app, "POST", "/v1/databases", {"name": "d"})
            assert status == 201

            def fail(*args: Any) -> Any:
                raise failure

            app.engine.registry._settled = fail  # type: ignore[method-assign]
            await scenario(app)
        finally:
            await app.engine.stop()

    asyncio.run(main())


QUERY = {"statements": ["SELECT 1"]}
PIPELINE = {"baton": None, "requests": [{"type": "execute", "stmt": {"sql": "SELECT 1"}}]}


def test_a_bug_in_the_registry_is_500_internal_with_its_traceback(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(app: App) -> None:
        with caplog.at_level(logging.WARNING):
            status, body = await call(app, "POST", "/v1/databases/d/query", QUERY)
        assert status == 500 and body["error"]["code"] == "INTERNAL", body
        assert "NoneType" not in json.dumps(body)  # the client sees no internals
        bugs = [r for r in caplog.records if r.exc_info is not None]
        assert len(bugs) == 1 and bugs[0].exc_info is not None
        assert bugs[0].exc_info[0] is TypeError and "unhandled error" in bugs[0].getMessage()
        assert not any("object store call failed" in r.getMessage() for r in caplog.records)

        caplog.clear()
        with caplog.at_level(logging.WARNING):
            status, body = await call(app, "POST", "/db/d/v2/pipeline", PIPELINE)
        assert status == 500 and body["error"]["code"] == "INTERNAL", body
        assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [TypeError]

    serve(tmp_path, TypeError("'NoneType' object is not subscriptable"), scenario)


def test_a_store_that_fails_is_503_storage_unavailable(tmp_path: Path) -> None:
    async def scenario(app: App) -> None:
        status, body = await call(app, "POST", "/v1/databases/d/query", QUERY)
        assert status == 503 and body["error"]["code"] == "STORAGE_UNAVAILABLE", body
        assert "SlowDown (HTTP 503)" in body["error"]["message"]
        assert body["error"]["hint"] == Code.STORAGE_UNAVAILABLE.hint

        status, body = await call(app, "POST", "/db/d/v2/pipeline", PIPELINE)
        assert status == 200, body  # Hrana: the statement's own error, in its shape
        error = body["results"][0]["error"]
        assert error["code"] == "STORAGE_UNAVAILABLE" and "SlowDown" in error["message"]

    serve(tmp_path, StorageUnavailable("catalog/x", "S3 GetObject of s3://b/catalog/x "
                                                    "failed: SlowDown (HTTP 503)"), scenario)
