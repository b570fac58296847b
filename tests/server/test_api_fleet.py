"""Tokens for fleets (in-process): prefix scopes (``tenant-*``), provisioning tokens, and
tokens bound to one branch, on every kind of route that takes a branch."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.api_support import error_of, make_token, ok, query, rows
from tests.support.inprocess import InProcessNode

_prefixes = (f"fl{i}" for i in itertools.count())


@pytest.fixture
def p() -> str:
    """A prefix of this test's own (its databases do not meet other tests')."""
    return next(_prefixes) + "-"


@pytest.fixture
def http(server: InProcessNode) -> Iterator[Any]:
    """http(token): a client of the shared node with that token (closed at the end)."""
    made: list[httpx.Client] = []

    def client(token: str) -> httpx.Client:
        made.append(server.client(token))
        return made[-1]

    yield client
    for c in made:
        c.close()


def create(client: httpx.Client, *names: str) -> None:
    for name in names:
        ok(client.post("/v1/databases", json={"name": name}), 201)


def mint(client: httpx.Client, databases: list[str] | str, access: str,
         **more: Any) -> dict[str, Any]:
    body = ok(client.post("/v1/tokens", json={"databases": databases, "access": access,
                                               **more}), 201)
    assert isinstance(body, dict)
    return body


def refused(r: httpx.Response, code: str, status: int = 403) -> str:
    return str(error_of(r, status, code)["message"])


def listed(client: httpx.Client, **params: Any) -> list[str]:
    return [d["name"] for d in ok(client.get("/v1/databases", params=params))["databases"]]


# -- prefix scopes ---------------------------------------------------------------------------

def test_a_prefix_reaches_databases_made_later_and_no_lookalike(
        admin: httpx.Client, http: Any, p: str) -> None:
    lookalike = p[:-1] + "x"  # fl0x: starts like fl0- but is not under it
    create(admin, p + "a", lookalike)
    made = mint(admin, [p + "*"], "write")
    assert made["databases"] == [p + "*"]
    tenant = http(made["token"])
    ok(query(tenant, p + "a", "CREATE TABLE t(x)", "INSERT INTO t VALUES (1)"))
    create(admin, p + "b", p[:-1] + "-")  # made after the token; and the prefix itself
    ok(query(tenant, p + "b", "CREATE TABLE t(x)"))
    assert rows(tenant, p[:-1] + "-", "SELECT 1") == [[1]]
    assert refused(query(tenant, lookalike, "SELECT 1"), "FORBIDDEN") == \
        f"token does not grant database {lookalike!r}"
    refused(tenant.get(f"/v1/databases/{lookalike}"), "FORBIDDEN")
    assert listed(tenant) == [p[:-1] + "-", p + "a", p + "b"]
    assert set(listed(admin)) >= {lookalike, p + "a"}


def test_names_and_patterns_mix(admin: httpx.Client, http: Any, p: str) -> None:
    create(admin, p + "a", p[:-1] + "one")
    made = mint(admin, [p + "*", p[:-1] + "one", p + "*"], "read")
    assert made["databases"] == [p + "*", p[:-1] + "one"]  # repeats dropped
    reader = http(made["token"])
    assert listed(reader) == [p + "a", p[:-1] + "one"]
    refused(query(reader, p + "a", "CREATE TABLE t(x)"), "READ_ONLY")


@pytest.mark.parametrize("bad", [["*"], ["ten*ant"], ["Tenant-*"], ["-x*"], ["**"], ["a**"],
                                 ["*a"], [""], ["a" * 64 + "*"]])
def test_patterns_are_checked(admin: httpx.Client, bad: list[str]) -> None:
    message = refused(admin.post("/v1/tokens", json={"databases": bad, "access": "read"}),
                      "INVALID_NAME", 400)
    assert message.startswith("invalid database name or pattern")


def test_a_prefix_token_mints_within_its_prefix_only(admin: httpx.Client, http: Any,
                                                     p: str) -> None:
    create(admin, p + "a")
    scoped = http(mint(admin, [p + "*"], "admin")["token"])
    for inside in ([p + "a"], [p + "a*"], [p + "*"], [p + "eu-*", p + "b"]):
        assert mint(scoped, inside, "read")["databases"] == inside
    for outside, what in (([p[:-1] + "*"], "every database of"), (["other"], "database"),
                          ([p + "a", "other*"], "every database of")):
        message = refused(scoped.post("/v1/tokens", json={"databases": outside,
                                                          "access": "read"}), "FORBIDDEN")
        assert message.startswith(f"token does not grant {what}")
    refused(scoped.post("/v1/tokens", json={"databases": "*", "access": "read"}), "FORBIDDEN")
    one = http(mint(admin, [p + "a"], "admin")["token"])  # a name does not cover a pattern
    refused(one.post("/v1/tokens", json={"databases": [p + "a*"], "access": "read"}),
            "FORBIDDEN")
    create(scoped, p + "c")  # an admin of the prefix creates its databases
    refused(scoped.post("/v1/databases", json={"name": "x" + p}), "FORBIDDEN")


def test_a_prefix_token_lists_and_revokes_what_it_covers(admin: httpx.Client, http: Any,
                                                         p: str) -> None:
    create(admin, p + "a")
    scoped_id, scoped_token = make_token(admin, [p + "*"], "admin")
    scoped = http(scoped_token)
    mine = mint(scoped, [p + "a*"], "write")["id"]
    theirs = mint(admin, [p + "a"], "read")["id"]
    wider = mint(admin, [p[:-1] + "*"], "read")["id"]
    star = mint(admin, "*", "read")["id"]
    seen = {t["id"]: t for t in ok(scoped.get("/v1/tokens"))["tokens"]}
    assert {mine, theirs, scoped_id} <= set(seen) and not {wider, star} & set(seen)
    assert seen[mine]["databases"] == [p + "a*"] and seen[mine]["branch"] is None
    named = {t["id"] for t in ok(scoped.get("/v1/tokens",
                                            params={"database": p + "a"}))["tokens"]}
    assert {mine, theirs, scoped_id} <= named  # patterns reaching it count
    named = {t["id"] for t in ok(admin.get("/v1/tokens",
                                           params={"database": p + "zz"}))["tokens"]}
    assert {scoped_id, wider, star} <= named and not {mine, theirs} & named
    refused(scoped.delete(f"/v1/tokens/{wider}"), "FORBIDDEN")
    refused(scoped.delete(f"/v1/tokens/{star}"), "FORBIDDEN")
    for tid in (mine, theirs):
        assert scoped.delete(f"/v1/tokens/{tid}").status_code == 204
    refused(scoped.get("/v1/tokens", params={"database": "x" + p}), "FORBIDDEN")


def test_a_prefix_outlives_a_deleted_name(admin: httpx.Client, http: Any, p: str) -> None:
    """Tokens naming a database exactly lose it when the name is used again (it is a new
    database); a pattern reaches the new one: it names the prefix, not a database."""
    create(admin, p + "a")
    exact = http(mint(admin, [p + "a"], "write")["token"])
    prefix = http(mint(admin, [p + "*"], "admin")["token"])
    assert prefix.delete(f"/v1/databases/{p}a").status_code == 204
    assert [d["name"] for d in ok(prefix.get("/v1/databases", params={"deleted": "true"}))
            ["databases"]] == [p + "a"]
    create(admin, p + "a")  # a new database of the name
    refused(query(exact, p + "a", "SELECT 1"), "FORBIDDEN")
    assert rows(prefix, p + "a", "SELECT 1") == [[1]]


# -- provisioning tokens ---------------------------------------------------------------------

def test_provisioning_what_it_may_do(admin: httpx.Client, http: Any, p: str) -> None:
    made = mint(admin, [p + "*"], "provision")
    assert made["access"] == "provision"
    plane = http(made["token"])
    create(plane, p + "t1", p + "t2")
    assert listed(plane) == [p + "t1", p + "t2"]
    assert ok(plane.get(f"/v1/databases/{p}t1"))["name"] == p + "t1"
    writer = mint(plane, [p + "t1"], "write")  # what the tenant gets
    ok(query(http(writer["token"]), p + "t1", "CREATE TABLE t(x)", "INSERT INTO t VALUES (7)"))
    admin_of_t1 = mint(plane, [p + "t1"], "admin", expires_in=60)
    bound = mint(plane, [p + "t1"], "read", branch="main")
    listed_ids = {t["id"] for t in ok(plane.get("/v1/tokens"))["tokens"]}
    assert {writer["id"], admin_of_t1["id"], bound["id"], made["id"]} <= listed_ids
    assert plane.delete(f"/v1/tokens/{admin_of_t1['id']}").status_code == 204
    assert plane.delete(f"/v1/databases/{p}t2").status_code == 204
    assert [d["name"] for d in ok(plane.get("/v1/databases", params={"deleted": "true"}))
            ["databases"]] == [p + "t2"]
    ok(plane.post(f"/v1/databases/{p}t2/undelete"))
    assert listed(plane) == [p + "t1", p + "t2"]
    assert plane.delete(f"/v1/databases/{p}t2", params={"purge": "true"}).status_code == 204
    assert rows(admin, p + "t1", "SELECT x FROM t") == [[7]]


def test_provisioning_what_it_may_not_do(admin: httpx.Client, http: Any, p: str) -> None:
    create(admin, p + "a", "x" + p)
    plane = http(mint(admin, [p + "*"], "provision")["token"])
    db = f"/v1/databases/{p}a"
    for method, path, body in [
        ("POST", db + "/query", {"statements": ["SELECT 1"]}),
        ("POST", db + "/branches/main/query", {"statements": ["SELECT 1"]}),
        ("POST", db + "/transactions", None),
        ("GET", db + "/branches", None),
        ("POST", db + "/branches", {"name": "b"}),
        ("GET", db + "/history", None),
        ("GET", db + "/usage", None),
        ("GET", db + "/limits", None),
        ("PUT", db + "/cors", {"origins": []}),
        ("POST", db + "/compact", None),
        ("GET", db + "/changes", None),
        ("GET", db + "/webhooks", None),
        ("POST", "/v1/databases/" + p + "a/restore", {"timestamp": "2020-01-01T00:00:00Z"}),
    ]:
        message = refused(plane.request(method, path, json=body), "PROVISION_ONLY")
        assert "provisioning token" in message, (method, path)
    r = plane.post(f"/db/{p}a/v2/pipeline", json={"requests": [
        {"type": "execute", "stmt": {"sql": "SELECT 1"}}, {"type": "close"}]})
    assert r.status_code == 403 and r.json()["code"] == "PROVISION_ONLY", r.text
    # outside its prefix: nothing
    refused(plane.post("/v1/databases", json={"name": "x" + p + "b"}), "FORBIDDEN")
    refused(plane.delete(f"/v1/databases/x{p}"), "FORBIDDEN")
    refused(plane.get(f"/v1/databases/x{p}"), "FORBIDDEN")
    refused(plane.post("/v1/tokens", json={"databases": ["x" + p], "access": "read"}),
            "FORBIDDEN")
    # no provisioning tokens, no "*"
    assert refused(plane.post("/v1/tokens", json={"databases": [p + "eu-*"],
                                                  "access": "provision"}), "FORBIDDEN") == \
        "a provisioning token cannot create provisioning tokens"
    refused(plane.post("/v1/tokens", json={"databases": "*", "access": "read"}), "FORBIDDEN")


def test_who_may_make_a_provisioning_token(admin: httpx.Client, http: Any, p: str) -> None:
    assert mint(admin, "*", "provision")["databases"] == "*"  # the node's admin only
    scoped = http(mint(admin, [p + "*"], "admin")["token"])
    assert mint(scoped, [p + "eu-*"], "provision")["databases"] == [p + "eu-*"]
    refused(scoped.post("/v1/tokens", json={"databases": "*", "access": "provision"}),
            "FORBIDDEN")
    for body in ({"databases": [p + "a"], "access": "provision"},
                 {"databases": [p + "*", p + "a"], "access": "provision"},
                 {"databases": [p + "*"], "access": "provision", "branch": "main"}):
        refused(admin.post("/v1/tokens", json=body), "INVALID_REQUEST", 400)
    reader = http(mint(admin, [p + "*"], "read")["token"])
    refused(reader.post("/v1/databases", json={"name": p + "r"}), "FORBIDDEN")
    refused(reader.post("/v1/tokens", json={"databases": [p + "a"], "access": "read"}),
            "FORBIDDEN")


# -- tokens bound to a branch ----------------------------------------------------------------

@pytest.fixture
def preview(admin: httpx.Client, p: str) -> str:
    """A database with a table on main and a branch 'preview' of it."""
    name = p + "app"
    create(admin, name)
    ok(query(admin, name, "CREATE TABLE t(x)", "INSERT INTO t VALUES ('main')"))
    ok(admin.post(f"/v1/databases/{name}/branches", json={"name": "preview"}), 201)
    return name


def bound_to_preview(admin: httpx.Client, db: str, access: str = "write") -> dict[str, Any]:
    made = mint(admin, [db], access, branch="preview")
    assert made["branch"] == "preview"
    return made


def test_a_bound_token_is_served_on_its_branch(admin: httpx.Client, http: Any,
                                               preview: str) -> None:
    made = bound_to_preview(admin, preview)
    b = http(made["token"])
    db = f"/v1/databases/{preview}"
    r = query(b, preview, "INSERT INTO t VALUES ('preview')")  # names no branch
    assert r.status_code == 200, r.text
    mark = r.json()["meta"]["bookmark"]  # it names the branch
    assert base64.urlsafe_b64decode(mark + "=" * (-len(mark) % 4)).split(b"/")[1] == b"preview"
    assert rows(admin, preview, "SELECT x FROM t") == [["main"]]
    on_preview = ok(admin.post(db + "/branches/preview/query",
                               json={"statements": ["SELECT x FROM t ORDER BY x"]}))
    assert on_preview["results"][0]["rows"] == [["main"], ["preview"]]
    ok(b.post(db + "/branches/preview/query", json={"statements": ["SELECT 1"]}))
    message = refused(b.post(db + "/branches/main/query", json={"statements": ["SELECT 1"]}),
                      "BRANCH_NOT_GRANTED")
    assert message == "token is bound to branch 'preview', not 'main'"
    # interactive transactions
    tx = ok(b.post(db + "/transactions"), 201)["id"]
    ok(b.post(f"{db}/transactions/{tx}/query", json={"statements": ["INSERT INTO t VALUES (2)"]}))
    ok(b.post(f"{db}/transactions/{tx}/commit"))
    assert [2] in ok(admin.post(db + "/branches/preview/query", json={
        "statements": ["SELECT x FROM t"]}))["results"][0]["rows"]
    refused(b.post(db + "/branches/main/transactions"), "BRANCH_NOT_GRANTED")
    tx = ok(admin.post(db + "/transactions"), 201)["id"]  # another token's, on main
    refused(b.post(f"{db}/branches/main/transactions/{tx}/query",
                   json={"statements": ["SELECT 1"]}), "BRANCH_NOT_GRANTED")
    ok(admin.post(f"{db}/transactions/{tx}/rollback"))
    # usage, history, branch info and the list
    assert ok(b.get(db + "/branches/preview/usage"))["branch"] == "preview"
    refused(b.get(db + "/branches/main/usage"), "BRANCH_NOT_GRANTED")
    assert ok(b.get(db + "/history"))["branch"] == "preview"
    refused(b.get(db + "/branches/main/history"), "BRANCH_NOT_GRANTED")
    assert ok(b.get(db + "/branches/preview"))["name"] == "preview"
    refused(b.get(db + "/branches/main"), "BRANCH_NOT_GRANTED")
    assert [x["name"] for x in ok(b.get(db + "/branches"))["branches"]] == ["preview"]
    listed_token = [t for t in ok(admin.get("/v1/tokens", params={"database": preview}))
                    ["tokens"] if t["id"] == made["id"]]
    assert listed_token[0]["branch"] == "preview"


def test_a_bound_token_changes_no_branch(admin: httpx.Client, http: Any,
                                         preview: str) -> None:
    b = http(bound_to_preview(admin, preview)["token"])
    db = f"/v1/databases/{preview}"
    refused(b.post(db + "/branches", json={"name": "other"}), "FORBIDDEN")
    refused(b.post(db + "/branches/preview/reset"), "FORBIDDEN")
    refused(b.delete(db + "/branches/preview"), "FORBIDDEN")
    refused(b.post(db + "/restore", json={"branch": "preview",
                                          "timestamp": "2020-01-01T00:00:00Z"}), "FORBIDDEN")
    refused(b.delete(db), "FORBIDDEN")
    refused(b.post("/v1/tokens", json={"databases": [preview], "access": "read"}), "FORBIDDEN")
    for access in ("admin", "provision"):
        refused(admin.post("/v1/tokens", json={"databases": [preview], "access": access,
                                               "branch": "preview"}), "INVALID_REQUEST", 400)
    refused(admin.post("/v1/tokens", json={"databases": [preview], "access": "read",
                                           "branch": "Not A Name"}), "INVALID_NAME", 400)


def test_a_bound_token_over_hrana_http(admin: httpx.Client, http: Any, preview: str) -> None:
    b = http(bound_to_preview(admin, preview, "read")["token"])
    pipeline = {"requests": [{"type": "execute", "stmt": {"sql": "SELECT count(*) FROM t"}},
                             {"type": "close"}]}
    ok(query(admin, preview, "INSERT INTO t VALUES ('main 2')"))  # main: 2 rows, preview: 1
    for path in (f"/db/{preview}/v2/pipeline", f"/db/{preview}/branches/preview/v3/pipeline",
                 "/v2/pipeline"):
        headers = {"x-namespace": preview} if not path.startswith("/db/") else {}
        got = ok(b.post(path, json=pipeline, headers=headers))
        result = got["results"][0]["response"]["result"]
        assert result["rows"][0][0]["value"] == "1", (path, result)
    r = b.post(f"/db/{preview}/branches/main/v2/pipeline", json=pipeline)
    assert r.status_code == 403 and r.json()["code"] == "BRANCH_NOT_GRANTED", r.text


def hrana_ws(node: InProcessNode, path: str, token: str,
             requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A Hrana WebSocket conversation: hello with ``token``, then each request in turn;
    the messages the server sent (after its accept), until each request is answered or the
    hello is refused."""
    assert node.app is not None
    app = node.app
    scope = {"type": "websocket", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"host", b"shoal.in-process")], "subprotocols": ["hrana3"],
             "client": ("127.0.0.1", 5001)}

    async def go() -> list[dict[str, Any]]:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        task = asyncio.ensure_future(app(scope, inbox.get, outbox.put))
        await inbox.put({"type": "websocket.connect"})
        assert (await asyncio.wait_for(outbox.get(), 10))["type"] == "websocket.accept"
        got: list[dict[str, Any]] = []

        async def say(message: dict[str, Any]) -> dict[str, Any]:
            await inbox.put({"type": "websocket.receive", "text": json.dumps(message)})
            sent = await asyncio.wait_for(outbox.get(), 10)
            got.append(json.loads(sent["text"]) if "text" in sent else sent)
            return got[-1]

        if (await say({"type": "hello", "jwt": token}))["type"] == "hello_ok":
            for i, request in enumerate(requests):
                await say({"type": "request", "request_id": i, "request": request})
        await inbox.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(task, 10)
        return got

    return node._run(go())  # type: ignore[no-any-return]


def test_a_bound_token_over_hrana_websocket(server: InProcessNode, admin: httpx.Client,
                                            preview: str) -> None:
    token = bound_to_preview(admin, preview, "read")["token"]
    ok(query(admin, preview, "INSERT INTO t VALUES ('main 2')"))
    asks = [{"type": "open_stream", "stream_id": 1},
            {"type": "execute", "stream_id": 1, "stmt": {"sql": "SELECT count(*) FROM t"}}]
    for path in (f"/db/{preview}", f"/db/{preview}/branches/preview"):
        got = hrana_ws(server, path, token, asks)
        assert [m["type"] for m in got] == ["hello_ok", "response_ok", "response_ok"], got
        assert got[2]["response"]["result"]["rows"][0][0]["value"] == "1"
    got = hrana_ws(server, f"/db/{preview}/branches/main", token, asks)
    assert got[0]["type"] == "hello_error", got
    assert "BRANCH_NOT_GRANTED" in json.dumps(got[0]["error"])


def test_a_bound_token_reads_its_branch_changes(admin: httpx.Client, http: Any,
                                                preview: str) -> None:
    b = http(bound_to_preview(admin, preview, "read")["token"])
    db = f"/v1/databases/{preview}"
    page = ok(b.get(db + "/changes"))
    assert page["branch"] == "preview"
    assert ok(b.get(db + "/branches/preview/changes"))["branch"] == "preview"
    refused(b.get(db + "/branches/main/changes"), "BRANCH_NOT_GRANTED")


def test_a_token_for_a_branch_made_later(admin: httpx.Client, http: Any, preview: str) -> None:
    b = http(mint(admin, [preview], "read", branch="later")["token"])
    refused(query(b, preview, "SELECT 1"), "BRANCH_NOT_FOUND", 404)
    ok(admin.post(f"/v1/databases/{preview}/branches", json={"name": "later"}), 201)
    assert rows(b, preview, "SELECT x FROM t") == [["main"]]
