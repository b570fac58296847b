"""The audit log through the HTTP API (in process): a record per request with who, what and
how it ended, never the token, SQL or arguments; GET /v1/audit's filters, pages and access
rules; a store that does not answer; a restart; a node without a store."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import zstandard

from shoal.engine.audit import PREFIX
from shoal.storage import open_store
from shoal.storage.base import StorageUnavailable
from tests.support.inprocess import InProcessNode

SECRET_VALUE = "s3cr3t-p4r4m-value"
IDEMPOTENCY_KEY = "idem-key-do-not-log"


def token(admin: httpx.Client, databases: list[str] | str, access: str) -> str:
    r = admin.post("/v1/tokens", json={"databases": databases, "access": access})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def audit(client: httpx.Client, **params: Any) -> httpx.Response:
    return client.get("/v1/audit", params=params)


def every(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = audit(client, **params, **({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200, r.text
        out += r.json()["records"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return out


def stored_bytes(node: InProcessNode) -> bytes:
    store = open_store(node.store_url)
    return b"".join(zstandard.ZstdDecompressor().decompress(store.get(o.key).data)
                    for o in store.list(PREFIX))


def test_requests_are_recorded_with_who_what_and_outcome_and_nothing_secret(
        start_server: Callable[..., InProcessNode]) -> None:
    node = start_server()
    with node.client() as admin:
        assert admin.post("/v1/databases", json={"name": "orders"}).status_code == 201
        writer = token(admin, ["orders"], "write")
        reader = token(admin, ["orders"], "read")
        with node.client(writer) as w, node.client(reader) as r:
            q = "/v1/databases/orders/query"
            assert w.post(q, json={"statements": ["CREATE TABLE t(a)"]}).status_code == 200
            assert w.post(q, json={"statements": [
                {"sql": "INSERT INTO t VALUES (?)", "args": [SECRET_VALUE]}]},
                headers={"Idempotency-Key": IDEMPOTENCY_KEY}).status_code == 200
            assert r.post(q, json={"statements": ["SELECT a FROM t"]}).status_code == 200
            assert r.post(q, json={"statements": ["INSERT INTO t VALUES (1)"]}
                          ).status_code == 403
            assert w.post(q, json={"statements": ["SELEC nonsense"]}).status_code == 400
            hrana = w.post("/db/orders/v2/pipeline", json={"requests": [
                {"type": "execute", "stmt": {"sql": "SELECT count(*) FROM t"}},
                {"type": "close"}]})
            assert hrana.status_code == 200, hrana.text
            begun = w.post("/v1/databases/orders/transactions", json={"mode": "write"})
            tx = begun.json()["id"]
            assert w.post(f"/v1/databases/orders/transactions/{tx}/query", json={
                "statements": ["INSERT INTO t VALUES (2)"]}).status_code == 200
            assert w.post(f"/v1/databases/orders/transactions/{tx}/commit").status_code == 200
        assert node.client("bad-token").get("/v1/databases").status_code == 401
        assert admin.get("/health").status_code == 200
        got = every(admin)
    by_route = [(x["route"], x["kind"], x["status"]) for x in got]
    assert ("/health", "admin", 200) not in by_route and all(x["route"] != "/health"
                                                             for x in got)
    q_route = "/v1/databases/{db}/query"
    sql = [x for x in got if x["route"] == q_route]
    assert [(x["kind"], x["status"], x["code"], x["rows_read"], x["rows_written"])
            for x in sql] == [
        ("schema", 200, None, 0, 0),
        ("write", 200, None, 0, 1),
        ("read", 200, None, 1, 0),
        ("write", 403, "READ_ONLY", 0, 0),
        ("read", 400, "SQLITE_ERROR", 0, 0),
    ]
    assert {x["token"] for x in sql} == {json.loads(_claims(writer))["jti"],
                                         json.loads(_claims(reader))["jti"]}
    for x in sql:
        assert x["database"] == "orders" and x["branch"] == "main"
        assert x["issuer"] == "shoal" and x["subject"] is None and x["method"] == "POST"
        assert x["node"] and x["ms"] >= 0 and x["time"].endswith("Z")
    hrana_rec = next(x for x in got if x["route"] == "/db/{db}/v2/pipeline")
    assert (hrana_rec["database"], hrana_rec["kind"], hrana_rec["rows_read"]) == \
        ("orders", "read", 1)
    tx_kinds = [(x["route"].rsplit("/", 1)[-1], x["kind"], x["rows_written"]) for x in got
                if "/transactions" in x["route"]]
    assert tx_kinds == [("transactions", "transaction", 0), ("query", "write", 1),
                        ("commit", "transaction", 0)]
    refused = next(x for x in got if x["status"] == 401)
    assert refused["token"] is None and refused["code"] == "TOKEN_INVALID"
    assert got[0]["route"] == "/v1/databases" and got[0]["kind"] == "admin"
    raw = stored_bytes(node)
    for secret in (writer, reader, node.admin_token, SECRET_VALUE, IDEMPOTENCY_KEY,
                   "INSERT INTO", "CREATE TABLE", "SELECT"):
        assert secret.encode() not in raw, secret


def _claims(jwt: str) -> str:
    import base64
    part = jwt.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


def test_filters_pages_and_times(start_server: Callable[..., InProcessNode]) -> None:
    node = start_server()
    with node.client() as admin:
        for name in ("one", "two"):
            assert admin.post("/v1/databases", json={"name": name}).status_code == 201
        time.sleep(0.01)
        middle = time.time()
        time.sleep(0.01)
        for _ in range(5):
            for name in ("one", "two"):
                assert admin.get(f"/v1/databases/{name}").status_code == 200
        first = audit(admin, database="one", limit=2).json()
        assert len(first["records"]) == 2 and first["next_cursor"]
        ones = every(admin, database="one", limit=2)
        assert len(ones) == 6 and {x["database"] for x in ones} == {"one"}
        assert ones[:2] == first["records"]
        def gets(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [x for x in records if x["route"] != "/v1/audit"]  # (reads are recorded)

        since_unix = gets(every(admin, since=f"{middle:.3f}"))
        rfc = datetime.fromtimestamp(middle, UTC).isoformat(timespec="milliseconds")
        since_rfc = gets(every(admin, since=rfc.replace("+00:00", "Z")))
        assert len(since_unix) == 10 and since_rfc == since_unix
        assert every(admin, until=f"{middle:.3f}", database="two") == [
            x for x in every(admin, database="two") if x["route"] == "/v1/databases"]
        for bad in ({"limit": "0"}, {"limit": "5000"}, {"cursor": "nope"},
                    {"since": "yesterday"}, {"since": "10", "until": "5"},
                    {"database": "Not A Name"}):
            r = audit(admin, **bad)
            assert r.status_code == 400, (bad, r.text)


def test_only_admins_read_the_log_and_a_scoped_admin_only_its_databases(
        start_server: Callable[..., InProcessNode]) -> None:
    node = start_server()
    with node.client() as admin:
        for name in ("mine", "theirs"):
            assert admin.post("/v1/databases", json={"name": name}).status_code == 201
            assert admin.get(f"/v1/databases/{name}").status_code == 200
        scoped = token(admin, ["mine"], "admin")
        for access in ("read", "write"):
            with node.client(token(admin, "*", access)) as c:
                r = audit(c)
                assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN"
        with node.client(scoped) as c:
            assert {x["database"] for x in every(c)} == {"mine"}
            assert {x["database"] for x in every(c, database="mine")} == {"mine"}
            assert audit(c, database="theirs").status_code == 403
        assert {"mine", "theirs", None} <= {x["database"] for x in every(admin)}


def test_records_survive_a_restart_and_retention_deletes_old_ones(
        start_server: Callable[..., InProcessNode]) -> None:
    node = start_server()
    with node.client() as admin:
        assert admin.post("/v1/databases", json={"name": "kept"}).status_code == 201
    node.restart()  # the stop flushes what the last second buffered
    with node.client() as admin:
        assert any(x["route"] == "/v1/databases" and x["status"] == 201
                   for x in every(admin))
    assert node.app is not None
    engine: Any = node.app.engine
    engine.audit.add((time.time() - 30 * 86400, "tok_old", None, "shoal", "GET",
                      "/v1/databases", None, None, "admin", 0, 0, 200, None, 1.0))
    node._run(engine.audit.flush())
    store = open_store(node.store_url)
    before = len(list(store.list(PREFIX)))
    node._run(engine._retain())
    assert len(list(store.list(PREFIX))) == before - 1  # the old one
    with node.client() as admin:
        assert all(x["token"] != "tok_old" for x in every(admin))
        assert any(x["status"] == 201 for x in every(admin))


class _Down:
    """The node's store, refusing puts (reads and lists still answer)."""

    def __init__(self, inner: Any):
        self.inner = inner

    def put(self, key: str, data: bytes, **kw: Any) -> str:
        raise StorageUnavailable(key, "put failed: connection refused")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_store_that_does_not_take_records_never_holds_requests_back(
        start_server: Callable[..., InProcessNode]) -> None:
    node = start_server(audit_buffer=5)
    assert node.app is not None
    log: Any = node.app.engine.audit  # type: ignore[attr-defined]
    healthy = log.store
    log.store = _Down(healthy)
    with node.client() as admin:
        assert admin.post("/v1/databases", json={"name": "busy"}).status_code == 201
        for _ in range(20):
            assert admin.get("/v1/databases/busy").status_code == 200
        r = audit(admin)  # flushes first: refused again, and still answers from the store
        assert r.status_code == 200
        assert len(log.buffer) <= 5 and log.dropped >= 16
        metrics = admin.get("/metrics").text
        assert "shoal_audit_dropped_records_total" in metrics
        log.store = healthy
        node._run(log.flush())  # (the next second's flush would do it)
        kept = every(admin)
    assert 5 <= len(kept) <= 7  # the newest five, then the audit reads themselves
    assert all(x["route"] in ("/v1/databases/{db}", "/v1/audit") for x in kept)


def test_a_node_without_a_store_keeps_its_log_in_the_data_directory(
        start_server: Callable[..., InProcessNode]) -> None:
    node = start_server(store="none")
    with node.client() as admin:
        assert admin.post("/v1/databases", json={"name": "local"}).status_code == 201
        node.restart()
    with node.client() as admin:
        got = every(admin, database="local")
    assert [x["route"] for x in got] == ["/v1/databases"]
    assert list((node.data_dir / "audit-store" / "audit").glob("*.jsonl.zst"))


def test_a_hrana_websocket_leaves_one_record_with_its_requests_rows(
        start_server: Callable[..., InProcessNode]) -> None:
    node = start_server()
    with node.client() as admin:
        assert admin.post("/v1/databases", json={"name": "ws"}).status_code == 201
        assert admin.post("/v1/databases/ws/query", json={"statements": [
            "CREATE TABLE t(a)", "INSERT INTO t VALUES (1), (2)"]}).status_code == 200
    writer = ""
    with node.client() as admin:
        writer = token(admin, ["ws"], "write")
    assert node.app is not None
    app = node.app

    async def converse() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        answered = asyncio.Event()
        script = [{"type": "websocket.connect"}] + [
            {"type": "websocket.receive", "text": json.dumps(message)} for message in (
                {"type": "hello", "jwt": writer},
                {"type": "request", "request_id": 1,
                 "request": {"type": "open_stream", "stream_id": 1}},
                {"type": "request", "request_id": 2, "request": {
                    "type": "execute", "stream_id": 1,
                    "stmt": {"sql": "INSERT INTO t SELECT a FROM t", "want_rows": False}}})]

        async def receive() -> dict[str, Any]:
            if script:
                return script.pop(0)
            await answered.wait()
            return {"type": "websocket.disconnect", "code": 1000}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if '"request_id":2' in message.get("text", ""):
                answered.set()

        scope = {"type": "websocket", "path": "/db/ws", "headers": [],
                 "subprotocols": ["hrana3"]}
        await app(scope, receive, send)
        return sent

    sent = node._run(converse())
    assert any('"request_id":2' in m.get("text", "") and '"response_ok"' in m.get("text", "")
               for m in sent), sent
    with node.client() as admin:
        got = [x for x in every(admin, database="ws") if x["route"] == "(hrana websocket)"]
    assert len(got) == 1
    assert (got[0]["kind"], got[0]["rows_written"], got[0]["status"], got[0]["branch"]) == \
        ("write", 2, 101, "main")
    assert got[0]["token"] == json.loads(_claims(writer))["jti"]


def test_the_clients_and_the_cli_read_the_log(start_server: Callable[..., InProcessNode],
                                              capsys: Any) -> None:
    from shoal import cli
    from shoal.client import AsyncClient, Client

    node = start_server()
    with Client(node.url, node.admin_token, transport=node.transport()) as c:
        c.create_database("viaclient")
        start = time.time() - 5
        got = c.audit("viaclient", since=start, page_size=1)
        assert [x["route"] for x in got] == ["/v1/databases"]
        assert c.audit(since=datetime.now(UTC) + timedelta(hours=1)) == []  # (a datetime)
        args = cli.build_parser().parse_args(["audit", "--database", "viaclient", "--json",
                                              "--since", "10m"])
        assert cli._audit(args, c, cli.Output(True)) == 0
        printed = json.loads(capsys.readouterr().out)
        assert [x["database"] for x in printed["records"]] == ["viaclient"]

    async def via_async() -> list[dict[str, Any]]:
        async with AsyncClient(node.url, node.admin_token,
                               transport=node.async_transport()) as a:
            return await a.audit("viaclient", since=f"{start:.3f}")

    assert [x["route"] for x in asyncio.run(via_async())] == ["/v1/databases"]
    assert cli._when("2h") is not None and float(cli._when("2h") or 0) < time.time() - 7000
    assert cli._when("2026-01-01T00:00:00Z") == "2026-01-01T00:00:00Z"
