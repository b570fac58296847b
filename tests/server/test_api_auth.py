"""Native API: bearer tokens — creation, scopes, access levels, expiry, revocation, forgeries."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import jwt
import pytest

from tests.integration.api_support import (
    assert_serving,
    connect,
    error_of,
    make_token,
    ok,
    query,
    rows,
    scalar,
)
from tests.support.server import ServerProcess


@pytest.fixture
def db(admin: httpx.Client, new_db: Callable[[], str]) -> str:
    name = new_db()
    ok(query(admin, name, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)",
             "INSERT INTO t VALUES (1, 'one')"))
    return name


def signing_key(node: ServerProcess) -> str:
    return (node.data_dir / "signing-key").read_text().strip()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"iss": "shoal", "jti": "tok_forged", "dbs": "*", "acc": "admin",
                            "iat": now, "exp": now + 3600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def every_endpoint(db: str) -> list[tuple[str, str, Any]]:
    tx = f"/v1/databases/{db}/transactions/tx_0"
    return [
        ("GET", "/v1/databases", None),
        ("POST", "/v1/databases", {"name": "nobody-may"}),
        ("GET", f"/v1/databases/{db}", None),
        ("DELETE", f"/v1/databases/{db}", None),
        ("POST", f"/v1/databases/{db}/query", {"statements": ["SELECT 1"]}),
        ("GET", f"/v1/databases/{db}/usage", None),
        ("POST", f"/v1/databases/{db}/transactions", None),
        ("POST", tx + "/query", {"statements": ["SELECT 1"]}),
        ("POST", tx + "/commit", None),
        ("POST", tx + "/rollback", None),
        ("POST", "/v1/tokens", {"databases": "*", "access": "admin"}),
        ("GET", "/v1/tokens", None),
        ("DELETE", "/v1/tokens/tok_0", None),
    ]


# -- 401 -------------------------------------------------------------------------------------
def test_every_endpoint_needs_a_token(server: ServerProcess, admin: httpx.Client,
                                      db: str) -> None:
    with connect(server, "") as anon:
        for method, path, body in every_endpoint(db):
            error_of(anon.request(method, path, json=body), 401, "UNAUTHORIZED")
    assert rows(admin, db, "SELECT v FROM t") == [["one"]]
    error_of(admin.get("/v1/databases/nobody-may"), 404, "DATABASE_NOT_FOUND")


@pytest.mark.parametrize("header", ["", "Bearer", "Basic YTpi", "Token abc", "bearer",
                                    "Bearer\tx"])
def test_malformed_authorization(server: ServerProcess, header: str) -> None:
    r = server.client("").get("/v1/databases", headers={"Authorization": header})
    error_of(r, 401, "UNAUTHORIZED")


def test_scheme_is_case_insensitive(server: ServerProcess) -> None:
    r = server.client("").get("/v1/databases",
                  headers={"Authorization": f"bearer {server.admin_token}"})
    ok(r)


def _tamper(token: str) -> str:
    """The token with its payload changed to admin on every database, same signature."""
    head, payload, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update({"acc": "admin", "dbs": "*"})
    raw = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    return f"{head}.{raw}.{sig}"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_forged_and_malformed_tokens(server: ServerProcess, admin: httpx.Client,
                                     db: str) -> None:
    key = signing_key(server)
    _, read_token = make_token(admin, [db], "read")
    head, payload, sig = read_token.split(".")
    forged = {
        "garbage": "garbage",
        "three garbage parts": "a.b.c",
        "admin token with a suffix": server.admin_token + "x",
        "another key": jwt.encode(claims(), "another-secret-key-of-32-bytes!!", "HS256"),
        "tampered payload": _tamper(read_token),
        "truncated signature": f"{head}.{payload}.{sig[:-4]}",
        "signature of another token": f"{head}.{payload}."
                                      + make_token(admin, [db], "read")[1].split(".")[2],
        "alg none": jwt.encode(claims(), "", algorithm="none"),
        "HS512 with the right key": jwt.encode(claims(), key, "HS512"),
        "wrong issuer": jwt.encode(claims(iss="someone"), key, "HS256"),
        "no issuer": jwt.encode(claims(iss=None), key, "HS256"),
        "no expiry": jwt.encode(claims(exp=None), key, "HS256"),
        "no id": jwt.encode(claims(jti=None), key, "HS256"),
        "unknown access": jwt.encode(claims(acc="root"), key, "HS256"),
        "databases not a list": jwt.encode(claims(dbs="orders"), key, "HS256"),
    }
    for what, token in forged.items():
        with connect(server, token) as c:
            r = query(c, db, "DELETE FROM t")
        assert r.status_code == 401, (what, r.text)
        assert r.json()["error"]["code"] == "TOKEN_INVALID", (what, r.text)
    assert rows(admin, db, "SELECT v FROM t") == [["one"]]
    # a token signed with the node's own key and proper claims is accepted (the test is fair)
    with connect(server, jwt.encode(claims(acc="read"), key, "HS256")) as c:
        assert rows(c, db, "SELECT v FROM t") == [["one"]]
    assert_serving(admin, db)


def test_expired_token(server: ServerProcess, admin: httpx.Client, db: str) -> None:
    key = signing_key(server)
    old = jwt.encode(claims(iat=int(time.time()) - 100, exp=int(time.time()) - 10), key, "HS256")
    with connect(server, old) as c:
        error_of(query(c, db, "SELECT 1"), 401, "TOKEN_EXPIRED")

    made = ok(admin.post("/v1/tokens", json={"databases": [db], "access": "read",
                                              "expires_in": 2}), 201)
    with connect(server, made["token"]) as c:
        assert rows(c, db, "SELECT v FROM t") == [["one"]]  # valid for a second at least
        expires_at = datetime.fromisoformat(made["expires_at"].replace("Z", "+00:00"))
        time.sleep(max(0.0, expires_at.timestamp() - time.time()) + 0.05)
        error_of(query(c, db, "SELECT 1"), 401, "TOKEN_EXPIRED")
        error_of(c.get(f"/v1/databases/{db}"), 401, "TOKEN_EXPIRED")


def test_revocation_takes_effect_at_once(server: ServerProcess, admin: httpx.Client,
                                         db: str) -> None:
    token_id, token = make_token(admin, [db], "write")
    with connect(server, token) as c:
        ok(query(c, db, "INSERT INTO t VALUES (2, 'two')"))
        r = admin.delete(f"/v1/tokens/{token_id}")
        assert r.status_code == 204 and r.content == b""
        error_of(query(c, db, "INSERT INTO t VALUES (3, 'three')"), 401, "TOKEN_REVOKED")
        error_of(query(c, db, "SELECT 1"), 401, "TOKEN_REVOKED")
    assert admin.delete(f"/v1/tokens/{token_id}").status_code == 204  # revoking again is fine
    error_of(admin.delete("/v1/tokens/tok_doesnotexist"), 404, "TOKEN_NOT_FOUND")
    assert rows(admin, db, "SELECT id FROM t ORDER BY id") == [[1], [2]]



# -- token creation --------------------------------------------------------------------------
def test_create_token_shape(server: ServerProcess, admin: httpx.Client, db: str) -> None:
    before = time.time()
    made = ok(admin.post("/v1/tokens", json={"databases": [db], "access": "write",
                                              "expires_in": 600}), 201)
    assert set(made) >= {"id", "token", "expires_at"}
    assert made["databases"] == [db]
    assert made["access"] == "write"
    assert made["expires_at"].endswith("Z")
    expires = datetime.fromisoformat(made["expires_at"].replace("Z", "+00:00")).timestamp()
    assert before + 595 <= expires <= time.time() + 605
    assert server.admin_token not in made["token"]
    default = ok(admin.post("/v1/tokens", json={"databases": "*", "access": "read"}), 201)
    assert default["databases"] == "*"
    expires = datetime.fromisoformat(default["expires_at"].replace("Z", "+00:00")).timestamp()
    assert before + 3500 <= expires <= time.time() + 3700  # default expires_in is an hour
    assert default["id"] != made["id"] and default["token"] != made["token"]


@pytest.mark.parametrize(("body", "code"), [
    ({"databases": "*", "access": "root"}, "INVALID_REQUEST"),
    ({"databases": "*", "access": "READ"}, "INVALID_REQUEST"),
    ({"databases": "*"}, "INVALID_REQUEST"),
    ({"access": "read"}, "INVALID_REQUEST"),
    ({"databases": "orders", "access": "read"}, "INVALID_REQUEST"),
    ({"databases": [1], "access": "read"}, "INVALID_REQUEST"),
    ({"databases": "*", "access": "read", "expires_in": 0}, "INVALID_REQUEST"),
    ({"databases": "*", "access": "read", "expires_in": -5}, "INVALID_REQUEST"),
    ({"databases": "*", "access": "read", "expires_in": 10 * 365 * 86400 + 1},
     "INVALID_REQUEST"),
    ({"databases": "*", "access": "read", "expires_in": "60"}, "INVALID_REQUEST"),
    ({"databases": "*", "access": "read", "expires_in": 1.5}, "INVALID_REQUEST"),
    ({"databases": "*", "access": "read", "scope": "all"}, "INVALID_REQUEST"),
    ({"databases": ["../x"], "access": "read"}, "INVALID_NAME"),
    ({"databases": ["Orders"], "access": "read"}, "INVALID_NAME"),
])
def test_create_token_validation(admin: httpx.Client, body: dict[str, Any], code: str) -> None:
    error_of(admin.post("/v1/tokens", json=body), 400, code)


def test_create_token_bad_json(admin: httpx.Client) -> None:
    error_of(admin.post("/v1/tokens", content=b"{oops"), 400, "INVALID_JSON")
    error_of(admin.post("/v1/tokens", content=b""), 400, "INVALID_JSON")


# -- 403 FORBIDDEN ---------------------------------------------------------------------------
def test_token_for_one_database_is_forbidden_on_another(
        server: ServerProcess, admin: httpx.Client, new_db: Callable[[], str]) -> None:
    orders, billing = new_db(), new_db()
    for name in (orders, billing):
        ok(query(admin, name, "CREATE TABLE t(a)", "INSERT INTO t VALUES (1)"))
    billing_tx = ok(admin.post(f"/v1/databases/{billing}/transactions"), 201)["id"]
    try:
        for access in ("read", "write", "admin"):
            _, token = make_token(admin, [orders], access)
            with connect(server, token) as c:
                assert rows(c, orders, "SELECT a FROM t") == [[1]]
                tx = f"/v1/databases/{billing}/transactions/{billing_tx}"
                for method, path, body in [
                    ("POST", f"/v1/databases/{billing}/query", {"statements": ["SELECT 1"]}),
                    ("POST", f"/v1/databases/{billing}/query",
                     {"statements": ["DELETE FROM t"]}),
                    ("GET", f"/v1/databases/{billing}", None),
                    ("GET", f"/v1/databases/{billing}/usage", None),
                    ("DELETE", f"/v1/databases/{billing}", None),
                    ("POST", f"/v1/databases/{billing}/transactions", None),
                    ("POST", tx + "/query", {"statements": ["DELETE FROM t"]}),
                    ("POST", tx + "/commit", None),
                    ("POST", tx + "/rollback", None),
                    ("POST", "/v1/databases/nosuchdb/query", {"statements": ["SELECT 1"]}),
                    ("POST", "/v1/databases", {"name": "not-granted"}),
                ]:
                    r = c.request(method, path, json=body)
                    assert r.status_code == 403, (access, method, path, r.text)
                    assert r.json()["error"]["code"] == "FORBIDDEN", (access, path, r.text)
                listed = [d["name"] for d in ok(c.get("/v1/databases?limit=1000"))["databases"]]
                assert listed == [orders]
        # the transaction on billing is untouched by all that
        ok(admin.post(f"/v1/databases/{billing}/transactions/{billing_tx}/query",
                      json={"statements": ["SELECT 1"]}))
    finally:
        ok(admin.post(f"/v1/databases/{billing}/transactions/{billing_tx}/rollback"))
    assert rows(admin, billing, "SELECT a FROM t") == [[1]]
    error_of(admin.get("/v1/databases/not-granted"), 404, "DATABASE_NOT_FOUND")


def test_admin_actions_need_admin(server: ServerProcess, admin: httpx.Client, db: str) -> None:
    victim_id, victim = make_token(admin, [db], "read")
    for access in ("read", "write"):
        _, token = make_token(admin, "*", access)
        with connect(server, token) as c:
            error_of(c.post("/v1/databases", json={"name": f"made-by-{access}"}), 403,
                     "FORBIDDEN")
            error_of(c.delete(f"/v1/databases/{db}"), 403, "FORBIDDEN")
            error_of(c.post("/v1/tokens", json={"databases": [db], "access": "read"}), 403,
                     "FORBIDDEN")
            error_of(c.delete(f"/v1/tokens/{victim_id}"), 403, "FORBIDDEN")
            assert rows(c, db, "SELECT v FROM t") == [["one"]]  # "*" reaches every database
    with connect(server, victim) as c:
        assert rows(c, db, "SELECT v FROM t") == [["one"]]  # not revoked by them


def test_scoped_admin_stays_in_its_scope(server: ServerProcess, admin: httpx.Client,
                                         new_db: Callable[[], str]) -> None:
    mine, other = new_db(), new_db()
    fresh = f"{mine}-fresh"
    _, token = make_token(admin, [mine, fresh], "admin")
    with connect(server, token) as c:
        ok(c.post("/v1/databases", json={"name": fresh}), 201)
        error_of(c.post("/v1/databases", json={"name": f"{other}-x"}), 403, "FORBIDDEN")
        error_of(c.post("/v1/tokens", json={"databases": "*", "access": "read"}), 403,
                 "FORBIDDEN")
        error_of(c.post("/v1/tokens", json={"databases": [other], "access": "read"}), 403,
                 "FORBIDDEN")
        error_of(c.post("/v1/tokens", json={"databases": [mine, other], "access": "read"}),
                 403, "FORBIDDEN")
        _, sub = make_token(c, [mine], "write")
        error_of(c.delete(f"/v1/databases/{other}"), 403, "FORBIDDEN")
        assert c.delete(f"/v1/databases/{fresh}").status_code == 204
    with connect(server, sub) as c:
        ok(query(c, mine, "CREATE TABLE t(a)"))
        error_of(query(c, other, "SELECT 1"), 403, "FORBIDDEN")
    assert ok(admin.get(f"/v1/databases/{other}"))["name"] == other


# -- 403 READ_ONLY ---------------------------------------------------------------------------
WRITES: list[list[Any]] = [
    ["INSERT INTO t VALUES (2, 'two')"],
    ["INSERT INTO t VALUES (2, 'two') RETURNING id"],
    ["REPLACE INTO t VALUES (1, 'uno')"],
    ["UPDATE t SET v = 'uno'"],
    ["DELETE FROM t"],
    ["CREATE TABLE u(a)"],
    ["CREATE INDEX iv ON t(v)"],
    ["CREATE VIEW vv AS SELECT 1"],
    ["CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END"],
    ["DROP TABLE t"],
    ["ALTER TABLE t ADD COLUMN w"],
    ["ALTER TABLE t RENAME TO t2"],
    ["PRAGMA user_version=1"],
    ["PRAGMA application_id=7"],
    ["ANALYZE"],
    ["WITH x(a) AS (SELECT 5) INSERT INTO t(v) SELECT a FROM x"],
    [{"sql": "INSERT INTO t VALUES (?, ?)", "args": [3, "three"]}],
    ["SELECT 1", "SELECT * FROM t", "INSERT INTO t VALUES (4, 'four')"],
    ["INSERT INTO t VALUES (5, 'five')", "SELECT 1"],
]


def test_read_token_cannot_change_anything(server: ServerProcess, admin: httpx.Client,
                                           db: str) -> None:
    schema = rows(admin, db, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    txid = ok(query(admin, db, "SELECT 1"))["meta"]["txid"]
    _, token = make_token(admin, [db], "read")
    _, star = make_token(admin, "*", "read")
    for t in (token, star):
        with connect(server, t) as c:
            for statements in WRITES:
                r = query(c, db, *statements)
                assert r.status_code == 403, (statements, r.text)
                assert r.json()["error"]["code"] == "READ_ONLY", (statements, r.text)
                r = query(c, db, *statements, headers={"Idempotency-Key": "k"})
                assert r.json()["error"]["code"] == "READ_ONLY", (statements, r.text)
            assert rows(c, db, "SELECT id, v FROM t") == [[1, "one"]]  # reads work
    assert rows(admin, db, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema
    assert rows(admin, db, "PRAGMA user_version") == [[0]]
    assert rows(admin, db, "PRAGMA application_id") == [[0]]
    assert ok(query(admin, db, "SELECT 1"))["meta"]["txid"] == txid  # nothing was committed
    assert_serving(admin, db)


def test_read_token_transactions(server: ServerProcess, admin: httpx.Client, db: str) -> None:
    _, token = make_token(admin, [db], "read")
    with connect(server, token) as c:
        error_of(c.post(f"/v1/databases/{db}/transactions", json={"mode": "write"}), 403,
                 "READ_ONLY")
        tx = ok(c.post(f"/v1/databases/{db}/transactions"), 201)
        assert tx["mode"] == "read"
        path = f"/v1/databases/{db}/transactions/{tx['id']}"
        for statements in WRITES:
            r = c.post(path + "/query", json={"statements": statements})
            assert r.status_code == 403, (statements, r.text)
            assert r.json()["error"]["code"] == "READ_ONLY", (statements, r.text)
        body = ok(c.post(path + "/query", json={"statements": ["SELECT v FROM t"]}))
        assert body["results"][0]["rows"] == [["one"]]
        ok(c.post(path + "/commit"))
    assert rows(admin, db, "SELECT id, v FROM t") == [[1, "one"]]


def test_write_and_admin_tokens_can_write(server: ServerProcess, admin: httpx.Client,
                                          db: str) -> None:
    for i, access in enumerate(("write", "admin"), start=2):
        _, token = make_token(admin, [db], access)
        with connect(server, token) as c:
            ok(query(c, db, {"sql": "INSERT INTO t VALUES (?, ?)", "args": [i, access]}))
    assert scalar(admin, db, "SELECT count(*) FROM t") == 3


def test_revocation_survives_a_restart(start_server: Callable[..., ServerProcess]) -> None:
    node = start_server()
    with connect(node) as a:
        ok(a.post("/v1/databases", json={"name": "kept"}), 201)
        revoked_id, revoked = make_token(a, ["kept"], "read")
        _, kept = make_token(a, ["kept"], "read")
        assert a.delete(f"/v1/tokens/{revoked_id}").status_code == 204
    node.restart()
    with connect(node, revoked) as c:
        error_of(c.get("/v1/databases/kept"), 401, "TOKEN_REVOKED")
    with connect(node, kept) as c:  # the signing key is kept too
        assert ok(c.get("/v1/databases/kept"))["name"] == "kept"
