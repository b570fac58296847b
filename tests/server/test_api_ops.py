"""Operations endpoints (/health, /metrics, /openapi.json), routing errors, the access log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.api_support import (
    assert_serving,
    connect,
    error_of,
    make_token,
    ok,
    query,
    wait_until,
)
from tests.support.server import ServerProcess

ROUTES = {
    "/health": {"get"},
    "/ready": {"get"},
    "/metrics": {"get"},
    "/openapi.json": {"get"},
    "/v1/databases": {"get", "post"},
    "/v1/databases/{db}": {"get", "delete"},
    "/v1/databases/{db}/query": {"post"},
    "/v1/databases/{db}/usage": {"get"},
    "/v1/databases/{db}/transactions": {"post"},
    "/v1/databases/{db}/transactions/{tx}/query": {"post"},
    "/v1/databases/{db}/transactions/{tx}/commit": {"post"},
    "/v1/databases/{db}/transactions/{tx}/rollback": {"post"},
    "/v1/tokens": {"get", "post"},
    "/v1/tokens/{id}": {"delete"},
}



@pytest.fixture(scope="module")
def anon(server: ServerProcess) -> Iterator[httpx.Client]:
    with connect(server, "") as c:
        yield c


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text as sample name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def sample(text: str, name: str, **labels: str) -> float:
    for got, value in samples(text).get(name, []):
        if all(got.get(k) == v for k, v in labels.items()):
            return value
    return 0.0


# -- /health ---------------------------------------------------------------------------------
def test_health_needs_no_token(server: ServerProcess, anon: httpx.Client) -> None:
    r = anon.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    r = server.client("").get("/health", headers={"Authorization": "Bearer garbage"})
    assert ok(r) == {"status": "ok"}  # a bad token does not matter there


# -- /metrics --------------------------------------------------------------------------------
def test_metrics_are_open_and_prometheus_text(admin: httpx.Client, anon: httpx.Client,
                                              new_db: Callable[[], str]) -> None:
    name = new_db()
    before = anon.get("/metrics").text
    ok(query(admin, name, "CREATE TABLE t(a)", "INSERT INTO t VALUES (1)"))
    ok(query(admin, name, "SELECT * FROM t"))
    error_of(query(admin, f"{name}-missing", "SELECT 1"), 404, "DATABASE_NOT_FOUND")

    r = anon.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    found = samples(text)
    for metric in ("shoal_requests_total", "shoal_request_seconds_bucket",
                   "shoal_group_commit_batch_size_bucket", "shoal_group_commit_batch_size_count",
                   "shoal_open_databases", "shoal_write_queue_depth_bucket",
                   "shoal_open_transactions"):
        assert metric in found, metric
    route = "/v1/databases/{db}/query"
    for status in ("200", "404"):
        assert sample(text, "shoal_requests_total", route=route, method="POST", status=status) \
            > sample(before, "shoal_requests_total", route=route, method="POST", status=status)
    assert sample(text, "shoal_request_seconds_count", route=route) \
        >= sample(before, "shoal_request_seconds_count", route=route) + 3
    assert sample(text, "shoal_group_commit_batch_size_count") \
        >= sample(before, "shoal_group_commit_batch_size_count") + 1
    assert sample(text, "shoal_open_databases") >= 1
    # labels are route templates: no database names, so cardinality stays bounded
    assert name not in text


def test_metrics_show_the_commit_log_shipping(admin: httpx.Client, anon: httpx.Client,
                                              new_db: Callable[[], str]) -> None:
    """Replication is observable: what it uploads and costs, and how far behind it is."""
    name = new_db()
    before = anon.get("/metrics").text
    ok(query(admin, name, "CREATE TABLE t(a)", "INSERT INTO t VALUES (1)"))
    ok(query(admin, name, "INSERT INTO t VALUES (2)"))

    def shipped() -> bool:
        text = anon.get("/metrics").text
        return sample(text, "shoal_log_segments_total") > sample(before,
                                                                 "shoal_log_segments_total") \
            and sample(text, "shoal_log_unshipped_commits") == 0

    wait_until(shipped, timeout=15, what="the writes to reach the store")
    text = anon.get("/metrics").text
    assert sample(text, "shoal_log_segment_bytes_total") \
        > sample(before, "shoal_log_segment_bytes_total")
    for work in ("capture", "encode", "upload"):
        assert sample(text, "shoal_log_cpu_seconds_total", work=work) \
            > sample(before, "shoal_log_cpu_seconds_total", work=work), work
    assert sample(text, "shoal_log_lag_seconds") == 0.0
    assert sample(text, "shoal_lease_held") == 1.0  # it holds its store's lease
    assert "shoal_lease_renewal_failures_total" in samples(text)
    assert "shoal_log_upload_failures_total" in samples(text)
    assert name not in text


def test_openapi_is_open_and_describes_every_route(anon: httpx.Client) -> None:
    r = anon.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    for path, methods in ROUTES.items():
        assert methods <= set(doc["paths"].get(path, {})), path
    schemas = doc["components"]["schemas"]
    for kind in ("QueryRequest", "StatementObject", "CreateDatabaseRequest",
                 "CreateTokenRequest", "BeginRequest", "Error"):
        assert kind in schemas, kind
    query_op = doc["paths"]["/v1/databases/{db}/query"]["post"]
    assert query_op["requestBody"]["content"]["application/json"]["schema"]["$ref"] \
        == "#/components/schemas/QueryRequest"
    assert any(p["name"] == "Idempotency-Key" for p in query_op["parameters"])
    assert "bearer" in doc["components"]["securitySchemes"]


def test_metrics_and_openapi_can_be_closed(start_server: Callable[..., ServerProcess]) -> None:
    node = start_server(metrics=False, openapi=False)
    with connect(node, "") as anon, connect(node) as admin:
        assert ok(anon.get("/health")) == {"status": "ok"}
        error_of(anon.get("/metrics"), 401, "UNAUTHORIZED")
        error_of(anon.get("/openapi.json"), 401, "UNAUTHORIZED")
        with connect(node, "not-a-token") as bad:
            error_of(bad.get("/metrics"), 401, "TOKEN_INVALID")
            error_of(bad.get("/openapi.json"), 401, "TOKEN_INVALID")
        assert "shoal_requests_total" in ok_text(admin.get("/metrics"))
        assert ok(admin.get("/openapi.json"))["openapi"].startswith("3.")
        ok(admin.post("/v1/databases", json={"name": "x"}), 201)
        _, reader = make_token(admin, ["x"], "read")
        with connect(node, reader) as c:
            assert ok(c.get("/openapi.json"))["paths"]
            error_of(c.get("/metrics"), 403, "FORBIDDEN")


def ok_text(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.text


# -- routing ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/nope"),
    ("GET", "/v1"),
    ("GET", "/v2/databases"),
    ("GET", "/v1/databases/x/unknown"),
    ("POST", "/v1/databases/x/transactions/t/finish"),
    ("GET", "/v1/databases/x/query/extra"),
    ("GET", "/v1/tokens/a/b"),
])
def test_unknown_routes_are_404(admin: httpx.Client, anon: httpx.Client, method: str,
                                path: str) -> None:
    for c in (admin, anon):
        error_of(c.request(method, path), 404, "NOT_FOUND")


@pytest.mark.parametrize(("method", "path"), [
    ("PUT", "/v1/databases"),
    ("DELETE", "/v1/databases"),
    ("PATCH", "/v1/databases/x"),
    ("POST", "/v1/databases/x"),
    ("GET", "/v1/databases/x/query"),
    ("PUT", "/v1/databases/x/query"),
    ("DELETE", "/v1/databases/x/usage"),
    ("GET", "/v1/databases/x/transactions"),
    ("GET", "/v1/databases/x/transactions/t/commit"),
    ("PUT", "/v1/tokens"),
    ("GET", "/v1/tokens/abc"),
    ("POST", "/health"),
    ("DELETE", "/metrics"),
    ("POST", "/openapi.json"),
])
def test_wrong_methods_are_405(admin: httpx.Client, method: str, path: str) -> None:
    error_of(admin.request(method, path), 405, "METHOD_NOT_ALLOWED")


def test_errors_share_one_envelope(admin: httpx.Client, anon: httpx.Client,
                                   new_db: Callable[[], str]) -> None:
    name = new_db()
    responses = [
        anon.get("/v1/databases"),
        admin.get("/nope"),
        admin.put("/v1/databases"),
        admin.post("/v1/databases", content=b"{"),
        admin.get("/v1/databases/UPPER"),
        query(admin, name, "SELECT * FROM nowhere"),
    ]
    for r in responses:
        assert r.status_code >= 400
        body: dict[str, Any] = r.json()
        assert list(body) == ["error"]
        assert {"code", "message"} <= set(body["error"])
        assert set(body["error"]) <= {"code", "message", "hint", "statement", "extended_code"}
    assert_serving(admin, name)


# -- access log ------------------------------------------------------------------------------

def test_server_still_serving(admin: httpx.Client, new_db: Callable[[], str]) -> None:
    name = new_db()
    assert_serving(admin, name)
