"""CORS, in process: preflights answered without a token (allowed: 204 with what the browser
needs; refused: 403 ORIGIN_NOT_ALLOWED), every answer to an allowed page naming its origin
back, the node's origins and a database's own (PUT /v1/databases/{db}/cors), event streams,
the Origin check of WebSocket upgrades, and answers to requests without Origin unchanged."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.server.cors import ALLOWED_HEADERS
from tests.integration.api_support import error_of, make_token, ok, query
from tests.server.test_api_ops import sample
from tests.support.inprocess import InProcessNode

APP = "https://app.example.com"
NODE_ORIGINS = f"{APP}, https://*.preview.example.com, http://localhost:5173"
_names = itertools.count()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessNode]:
    n = InProcessNode(tmp_path_factory.mktemp("cors") / "data",
                      {"cors_origins": NODE_ORIGINS, "cors_max_age": 300})
    n.start()
    yield n
    n.stop()


@pytest.fixture(scope="module")
def admin(node: InProcessNode) -> Iterator[httpx.Client]:
    with node.client() as c:
        yield c


@pytest.fixture(scope="module")
def anon(node: InProcessNode) -> Iterator[httpx.Client]:
    with node.client("") as c:  # a browser's preflight carries no token
        yield c


@pytest.fixture
def db(admin: httpx.Client) -> str:
    name = f"cors{next(_names)}"
    ok(admin.post("/v1/databases", json={"name": name}), 201)
    return name


def preflight(client: httpx.Client, path: str, origin: str, method: str = "POST",
              headers: str = "authorization, content-type") -> httpx.Response:
    return client.options(path, headers={"Origin": origin,
                                         "Access-Control-Request-Method": method,
                                         "Access-Control-Request-Headers": headers})


def listed(value: str) -> list[str]:
    return [v.strip().lower() for v in value.split(",")]


def cors_headers(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.startswith("access-control-") or k == "vary"}


# -- preflights ----------------------------------------------------------------------------------
def test_a_preflight_from_an_allowed_origin_needs_no_token(anon: httpx.Client, db: str) -> None:
    r = preflight(anon, f"/v1/databases/{db}/query", APP,
                  headers="Authorization, Content-Type, Idempotency-Key, Shoal-Bookmark, "
                          "X-Trace-Id")
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert r.headers["access-control-allow-origin"] == APP  # named back, never "*"
    assert listed(r.headers["access-control-allow-methods"]) == ["post"]
    allowed = listed(r.headers["access-control-allow-headers"])
    assert set(ALLOWED_HEADERS) | {"x-trace-id"} <= set(allowed)
    for header in ("authorization", "content-type", "idempotency-key", "shoal-bookmark",
                   "shoal-consistency", "last-event-id", "x-request-id"):
        assert header in allowed  # sqld's preflight refused Authorization (its issue 245)
    assert r.headers["access-control-max-age"] == "300"
    assert "origin" in listed(r.headers["vary"])
    assert "access-control-allow-credentials" not in r.headers  # bearer tokens, no cookies


@pytest.mark.parametrize(("path", "methods"), [
    ("/v1/databases/{db}", {"get", "delete"}),
    ("/v1/databases/{db}/branches/main", {"get", "delete"}),
    ("/v1/databases/{db}/cors", {"get", "put"}),
    ("/v1/databases/{db}/changes", {"get"}),
    ("/v1/databases/{db}/tables/notes", {"get", "post", "patch", "delete"}),
    ("/v1/databases/{db}/branches/main/tables/notes", {"get", "post", "patch", "delete"}),
    ("/v1/databases/{db}/queries/mine", {"put", "post", "delete"}),
    ("/v1/databases", {"get", "post"}),
    ("/v1/tokens", {"get", "post"}),
    ("/v2/pipeline", {"post"}),
    ("/v3/pipeline", {"post"}),
    ("/db/{db}/v3/pipeline", {"post"}),
    ("/db/{db}/v3/cursor", {"post"}),
    ("/", {"post"}),
    ("/health", {"get"}),
])
def test_every_route_answers_preflights_with_its_methods(
        anon: httpx.Client, db: str, path: str, methods: set[str]) -> None:
    r = preflight(anon, path.format(db=db), APP)
    assert r.status_code == 204, (path, r.text)
    assert set(listed(r.headers["access-control-allow-methods"])) == methods


def test_a_path_of_no_route_is_preflighted_so_that_its_404_can_be_read(
        admin: httpx.Client, anon: httpx.Client) -> None:
    r = preflight(anon, "/v1/nothing/here", APP)
    assert r.status_code == 204
    assert "post" in listed(r.headers["access-control-allow-methods"])
    missing = admin.post("/v1/nothing/here", headers={"Origin": APP})
    error_of(missing, 404, "NOT_FOUND")
    assert missing.headers["access-control-allow-origin"] == APP


@pytest.mark.parametrize("origin", [
    "https://evil.example", "http://app.example.com", "https://app.example.com:8443",
    "https://app.example.com.evil.example", "https://preview.example.com",
    "https://a.preview.example.com.evil.example", "http://a.preview.example.com",
    "http://localhost:5174", "null",
])
def test_a_preflight_from_another_origin_is_refused(anon: httpx.Client, db: str,
                                                    origin: str) -> None:
    r = preflight(anon, f"/v1/databases/{db}/query", origin)
    err = error_of(r, 403, "ORIGIN_NOT_ALLOWED")
    assert origin in err["message"] and "cors_origins" in err["message"]
    assert f"/v1/databases/{db}/cors" in err["message"]
    assert "access-control-allow-origin" not in r.headers  # the browser reports a CORS error
    assert "origin" in listed(r.headers["vary"])


@pytest.mark.parametrize("origin", [
    "https://a.preview.example.com", "https://b.a.preview.example.com", "http://localhost:5173",
    "HTTPS://APP.EXAMPLE.COM",
])
def test_subdomains_and_ports_as_written(anon: httpx.Client, db: str, origin: str) -> None:
    r = preflight(anon, f"/v1/databases/{db}/query", origin)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == origin  # as the browser sent it


def test_refusals_are_counted(admin: httpx.Client, anon: httpx.Client, db: str) -> None:
    def refused() -> float:
        return sample(admin.get("/metrics").text, "shoal_cors_refusals_total",
                      kind="preflight") or 0.0

    before = refused()
    error_of(preflight(anon, f"/v1/databases/{db}/query", "https://evil.example"), 403,
             "ORIGIN_NOT_ALLOWED")
    assert refused() == before + 1


def test_a_private_network_preflight_is_allowed_for_an_allowed_origin(
        anon: httpx.Client, db: str) -> None:
    r = anon.options(f"/v1/databases/{db}/query", headers={
        "Origin": APP, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Private-Network": "true"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-private-network"] == "true"


def test_options_that_is_not_a_preflight_is_still_405(admin: httpx.Client, db: str) -> None:
    error_of(admin.options(f"/v1/databases/{db}/query"), 405, "METHOD_NOT_ALLOWED")
    r = admin.options(f"/v1/databases/{db}/query", headers={"Origin": APP})  # no method asked
    error_of(r, 405, "METHOD_NOT_ALLOWED")
    assert r.headers["access-control-allow-origin"] == APP  # (readable by the page)


# -- actual requests --------------------------------------------------------------------------
def test_an_allowed_page_reads_the_answer_and_its_bookmark(admin: httpx.Client, db: str) -> None:
    r = query(admin, db, "CREATE TABLE t(x)", "INSERT INTO t VALUES (1)",
              headers={"Origin": APP})
    ok(r)
    assert r.headers["access-control-allow-origin"] == APP
    exposed = listed(r.headers["access-control-expose-headers"])
    assert "shoal-bookmark" in exposed and "retry-after" in exposed
    assert r.headers["shoal-bookmark"]
    assert "origin" in listed(r.headers["vary"])
    assert "access-control-allow-credentials" not in r.headers
    assert len(r.headers.get_list("access-control-allow-origin")) == 1


def test_errors_are_readable_by_an_allowed_page(anon: httpx.Client, db: str) -> None:
    r = query(anon, db, "SELECT 1", headers={"Origin": APP})  # no token
    error_of(r, 401, "UNAUTHORIZED")
    assert r.headers["access-control-allow-origin"] == APP


def test_another_origin_gets_no_cors_headers_and_the_same_answer(admin: httpx.Client,
                                                                 db: str) -> None:
    r = query(admin, db, "SELECT 1", headers={"Origin": "https://evil.example"})
    assert ok(r)["results"][0]["rows"] == [[1]]  # served: the browser keeps it from the page
    assert cors_headers(r) == {"vary": "Origin"}


def test_an_answer_without_origin_is_unchanged(admin: httpx.Client, db: str) -> None:
    r = query(admin, db, "SELECT 1")
    ok(r)
    assert cors_headers(r) == {}
    assert set(r.headers) == {"content-type", "content-length", "shoal-bookmark"}
    assert cors_headers(admin.get("/health")) == {}


def test_hrana_over_http_from_an_allowed_page(admin: httpx.Client, db: str) -> None:
    body = {"requests": [{"type": "execute", "stmt": {"sql": "SELECT 40 + 2"}},
                         {"type": "close"}]}
    r = admin.post(f"/db/{db}/v3/pipeline", json=body, headers={"Origin": APP})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == APP
    assert "shoal-bookmark" in listed(r.headers["access-control-expose-headers"])


# -- a database's own origins ---------------------------------------------------------------
TENANT = "https://tenant.example"


def test_a_database_allows_origins_of_its_own(admin: httpx.Client, anon: httpx.Client,
                                              db: str) -> None:
    other = f"cors{next(_names)}"
    ok(admin.post("/v1/databases", json={"name": other}), 201)
    assert ok(admin.get(f"/v1/databases/{db}/cors")) == {"database": db, "origins": []}
    got = ok(admin.put(f"/v1/databases/{db}/cors",
                       json={"origins": ["https://Tenant.example:443/", "https://*.tenant.example",
                                         TENANT]}))
    assert got == {"database": db, "origins": [TENANT, "https://*.tenant.example"]}
    assert ok(admin.get(f"/v1/databases/{db}/cors")) == got
    for path in (f"/v1/databases/{db}/query", f"/v1/databases/{db}/branches/main/query",
                 f"/db/{db}/v3/pipeline", f"/v1/databases/{db}/changes"):
        r = preflight(anon, path, TENANT)
        assert r.status_code == 204, path
        assert r.headers["access-control-allow-origin"] == TENANT
    assert preflight(anon, f"/v1/databases/{db}/query", "https://x.tenant.example"
                     ).status_code == 204
    # ... not for another database, nor routes of no database (the node's list alone)
    for path in (f"/v1/databases/{other}/query", "/v1/databases", "/v1/tokens", "/v3/pipeline"):
        err = error_of(preflight(anon, path, TENANT), 403, "ORIGIN_NOT_ALLOWED")
        assert TENANT in err["message"]
    r = query(admin, db, "SELECT 1", headers={"Origin": TENANT})
    assert r.headers["access-control-allow-origin"] == TENANT
    r = query(admin, other, "SELECT 1", headers={"Origin": TENANT})
    assert "access-control-allow-origin" not in r.headers
    # the node's origins stay allowed; [] gives the database's up
    assert preflight(anon, f"/v1/databases/{db}/query", APP).status_code == 204
    assert ok(admin.put(f"/v1/databases/{db}/cors", json={"origins": []}))["origins"] == []
    error_of(preflight(anon, f"/v1/databases/{db}/query", TENANT), 403, "ORIGIN_NOT_ALLOWED")


def test_only_an_admin_of_the_database_sets_its_origins(admin: httpx.Client, db: str) -> None:
    other = f"cors{next(_names)}"
    ok(admin.post("/v1/databases", json={"name": other}), 201)
    body = {"origins": [TENANT]}
    for databases, access in (([db], "read"), ([db], "write"), ([other], "admin")):
        _, token = make_token(admin, databases, access)
        with httpx.Client(base_url=admin.base_url, transport=admin._transport,
                          headers={"Authorization": f"Bearer {token}"}) as c:
            error_of(c.put(f"/v1/databases/{db}/cors", json=body), 403, "FORBIDDEN")
            if databases == [db]:  # its readers may look
                assert ok(c.get(f"/v1/databases/{db}/cors"))["origins"] == []
    _, token = make_token(admin, [db], "admin")
    with httpx.Client(base_url=admin.base_url, transport=admin._transport,
                      headers={"Authorization": f"Bearer {token}"}) as c:
        assert ok(c.put(f"/v1/databases/{db}/cors", json=body))["origins"] == [TENANT]
    error_of(admin.put("/v1/databases/nosuchdb/cors", json=body), 404, "DATABASE_NOT_FOUND")


@pytest.mark.parametrize("body", [
    {"origins": ["null"]},
    {"origins": ["https://app.example.com/path"]},
    {"origins": ["https://*.com"]},
    {"origins": ["https://a.*.example.com"]},
    {"origins": ["app.example.com"]},
    {"origins": ["https://user@app.example.com"]},
    {"origins": ["https://app.example.com:99999"]},
    {"origins": [f"https://a{i}.example.com" for i in range(101)]},
    {"origins": "https://app.example.com"},
    {"origins": [1]},
    {"origin": [TENANT]},
    {},
])
def test_bad_origins_are_refused(admin: httpx.Client, db: str, body: dict[str, Any]) -> None:
    error_of(admin.put(f"/v1/databases/{db}/cors", json=body), 400, "INVALID_REQUEST")
    assert ok(admin.get(f"/v1/databases/{db}/cors"))["origins"] == []


def test_a_database_keeps_its_origins_across_restart_and_undelete(tmp_path: Path) -> None:
    node = InProcessNode(tmp_path / "data").start()
    try:
        with node.client() as admin:
            ok(admin.post("/v1/databases", json={"name": "kept"}), 201)
            ok(admin.put("/v1/databases/kept/cors", json={"origins": [TENANT]}))
        node.restart()
        with node.client() as admin:
            assert ok(admin.get("/v1/databases/kept/cors"))["origins"] == [TENANT]
            assert preflight(admin, "/v1/databases/kept/query", TENANT).status_code == 204
            assert admin.delete("/v1/databases/kept").status_code == 204
            error_of(preflight(admin, "/v1/databases/kept/query", TENANT), 403,
                     "ORIGIN_NOT_ALLOWED")
            ok(admin.post("/v1/databases", json={"name": "kept"}), 201)  # a new life: none
            assert ok(admin.get("/v1/databases/kept/cors"))["origins"] == []
            assert admin.delete("/v1/databases/kept").status_code == 204
            deleted = ok(admin.get("/v1/databases?deleted=true"))["databases"]
            first = min((d for d in deleted if d["name"] == "kept"),
                        key=lambda d: d["deleted_at"])
            ok(admin.post("/v1/databases/kept/undelete",
                          json={"incarnation": first["incarnation"]}))
            assert ok(admin.get("/v1/databases/kept/cors"))["origins"] == [TENANT]
            assert preflight(admin, "/v1/databases/kept/query", TENANT).status_code == 204
    finally:
        node.stop()


def test_a_local_only_node_keeps_them_in_its_catalog(tmp_path: Path) -> None:
    node = InProcessNode(tmp_path / "data", {"store": "none"}).start()
    try:
        with node.client() as admin:
            ok(admin.post("/v1/databases", json={"name": "local"}), 201)
            ok(admin.put("/v1/databases/local/cors", json={"origins": [TENANT]}))
        node.restart()
        with node.client() as admin:
            assert ok(admin.get("/v1/databases/local/cors"))["origins"] == [TENANT]
    finally:
        node.stop()


# -- event streams and WebSockets (the App driven through ASGI) ----------------------------------
def asgi(node: InProcessNode, scope: dict[str, Any],
         first: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages the App sends for ``scope`` until its answer starts (then the client goes
    away): ``first`` is the client's first message."""
    assert node.app is not None
    app = node.app

    async def go() -> list[dict[str, Any]]:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await inbox.put(first)
        sent: list[dict[str, Any]] = []
        started = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] in ("http.response.start", "websocket.accept",
                                   "websocket.close"):
                started.set()

        task = asyncio.ensure_future(app(scope, inbox.get, send))
        await asyncio.wait_for(started.wait(), 10)
        await inbox.put({"type": "http.disconnect" if scope["type"] == "http"
                         else "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(task, 10)
        return sent

    return node._run(go())  # type: ignore[no-any-return]


def headers_of(node: InProcessNode, *pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in
            (("host", "shoal.in-process"), ("authorization", f"Bearer {node.admin_token}"),
             *pairs)]


def test_an_event_stream_names_an_allowed_origin(node: InProcessNode, db: str) -> None:
    path = f"/v1/databases/{db}/changes"
    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
             "query_string": b"", "client": ("127.0.0.1", 5000),
             "headers": headers_of(node, ("accept", "text/event-stream"),
                                   ("origin", APP))}
    sent = asgi(node, scope, {"type": "http.request", "body": b"", "more_body": False})
    start = sent[0]
    assert start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"].startswith(b"text/event-stream")
    assert headers[b"access-control-allow-origin"] == APP.encode()
    assert headers[b"vary"] == b"Origin"


def websocket(node: InProcessNode, path: str, origin: str | None,
              host: str = "shoal.in-process") -> str:
    """What the App answers a WebSocket upgrade: accept or close."""
    pairs = [("host", host)] + ([("origin", origin)] if origin is not None else [])
    scope = {"type": "websocket", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(k.encode(), v.encode()) for k, v in pairs],
             "subprotocols": ["hrana3"] if "changes" not in path else [],
             "client": ("127.0.0.1", 5000)}
    sent = asgi(node, scope, {"type": "websocket.connect"})
    kind = sent[0]["type"]
    if kind == "websocket.close":
        assert sent[0]["code"] == 1008  # before the accept: HTTP 403
    return str(kind.split(".")[1])


def test_websocket_upgrades_from_another_origin_are_refused(
        node: InProcessNode, admin: httpx.Client, db: str) -> None:
    before = sample(admin.get("/metrics").text, "shoal_cors_refusals_total",
                    kind="websocket") or 0.0
    changes = f"/v1/databases/{db}/changes"
    assert websocket(node, "/", "https://evil.example") == "close"
    assert websocket(node, f"/db/{db}", "https://evil.example") == "close"
    assert websocket(node, changes, "https://evil.example") == "close"
    assert sample(admin.get("/metrics").text, "shoal_cors_refusals_total",
                  kind="websocket") == before + 3
    assert websocket(node, "/", None) == "accept"  # not a browser: as before
    assert websocket(node, "/", APP) == "accept"
    assert websocket(node, f"/db/{db}", "https://a.preview.example.com") == "accept"
    assert websocket(node, "/", "http://shoal.in-process") == "accept"  # the node's own page
    assert websocket(node, "/", "https://db.example.net", host="db.example.net") == "accept"
    ok(admin.put(f"/v1/databases/{db}/cors", json={"origins": [TENANT]}))
    assert websocket(node, f"/db/{db}", TENANT) == "accept"
    assert websocket(node, f"/db/{db}/branches/main", TENANT) == "accept"
    assert websocket(node, "/", TENANT) == "close"  # names no database: the node's list
