"""Row rules against an attacker holding a real token of an identity provider (bound by
rules): SQL smuggled through every part of the data API (table, columns, filters, order,
cursor, values, named query arguments), views, pragmas and Shoal's tables as tables, case
and quoting games, defaults and triggers, the feed of rows they cannot see (deletes
included), SQL and Hrana, and forged tokens of every kind at the data API's door. Each
probe must leave the other users' rows unseen and untouched, with a clear 4xx."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.integration.api_support import ok, query
from tests.support.idp import IdentityProvider, compact, hs256_with, new_key
from tests.support.inprocess import InProcessNode

_names = itertools.count()
RULE = "owner = auth.sub"


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider(audience="app") as provider:
        yield provider


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, idp: IdentityProvider
         ) -> Iterator[InProcessNode]:
    root: Path = tmp_path_factory.mktemp("adversary")
    (root / "issuers.json").write_text(json.dumps({"issuers": [idp.declaration(
        databases=["{tenant}"], access={"claim": "role", "map": {"member": "write"}},
        rules=True)]}))
    n = InProcessNode(root / "data", {"issuers_file": str(root / "issuers.json"),
                                      "jwks_ca_file": IdentityProvider.ca_file()}).start()
    yield n
    n.stop()


@pytest.fixture(scope="module")
def admin(node: InProcessNode) -> Iterator[httpx.Client]:
    with node.client() as c:
        yield c


@pytest.fixture
def db(admin: httpx.Client) -> str:
    name = f"adv{next(_names)}"
    ok(admin.post("/v1/databases", json={"name": name}), 201)
    ok(query(admin, name,
             "CREATE TABLE notes(id INTEGER PRIMARY KEY, owner TEXT NOT NULL DEFAULT 'bob', "
             "title TEXT, secret TEXT, twice TEXT GENERATED ALWAYS AS (title || title))",
             "CREATE TABLE secrets(id INTEGER PRIMARY KEY, owner TEXT, value TEXT)",
             'CREATE TABLE "we""ird"("o""wner" TEXT, "sel ect" TEXT)',
             "CREATE VIEW all_notes AS SELECT * FROM notes",
             "CREATE TABLE log(what TEXT)",
             "CREATE TRIGGER notes_log AFTER INSERT ON notes BEGIN "
             "INSERT INTO log VALUES (new.owner); END",
             "INSERT INTO notes(id, owner, title, secret) VALUES "
             "(1, 'alice', 'a1', 'alice-s'), (2, 'bob', 'b1', 'bob-s'), "
             "(3, 'bob', 'b2', 'bob-s2')",
             "INSERT INTO secrets(owner, value) VALUES ('bob', 'top')",
             """INSERT INTO "we""ird" VALUES ('bob', 'x')"""))
    ok(admin.put(f"/v1/databases/{name}/rules/notes",
                 json={"select": RULE, "insert": RULE, "update": RULE, "delete": RULE}))
    ok(admin.put(f'/v1/databases/{name}/rules/we"ird', json={"select": '"o""wner" = auth.sub'}))
    return name


def user(node: InProcessNode, idp: IdentityProvider, db: str, sub: str = "alice",
         **claims: Any) -> httpx.Client:
    return node.client(idp.mint({"sub": sub, "tenant": db, "role": "member", **claims}))


def code(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    return str(r.json()["error"]["code"])


def bobs_rows_untouched(admin: httpx.Client, db: str) -> None:
    rows = ok(query(admin, db, "SELECT id, owner, title, secret FROM notes WHERE owner = 'bob' "
                               "ORDER BY id"))["results"][0]["rows"]
    assert rows == [[2, "bob", "b1", "bob-s"], [3, "bob", "b2", "bob-s2"]]


def test_sql_smuggled_through_the_request(node: InProcessNode, admin: httpx.Client,
                                          idp: IdentityProvider, db: str) -> None:
    base = f"/v1/databases/{db}/tables/notes"
    with user(node, idp, db) as alice:
        for params in (
            {"select": "id,(SELECT value FROM secrets)"}, {"select": "*"},
            {"select": "id,secret FROM notes --"}, {"order": "(SELECT 1)"},
            {"order": "id;DELETE FROM notes"}, {"owner) OR (1=1": "eq.1"},
            {'owner" OR "1"="1': "eq.x"}, {"rowid": "gt.0"}, {"1": "eq.1"},
        ):
            assert code(alice.get(base, params=params), 400) == "UNKNOWN_COLUMN", params
        for params in (
            {"owner": "eq.bob' OR '1'='1"}, {"owner": "in.(bob,\"x) OR (1=1\")"},
            {"owner": "in.(alice,bob)"}, {"id": "in.(2,3)"}, {"title": "like.%"},
            {"owner": "neq.alice"}, {"id": "gt.0", "secret": "is.notnull"},
            {"owner": "glob.*"}, {"id": "eq.2 UNION SELECT * FROM secrets"},
        ):
            got = ok(alice.get(base, params=params))["rows"]
            assert all(r["owner"] == "alice" for r in got), (params, got)
        assert code(alice.get(base, params={"owner": "in.(bob) OR 1=1"}),
                    400) == "INVALID_REQUEST"
        # a forged cursor binds values, nothing else
        forged = base64.urlsafe_b64encode(msgspec.msgpack.encode(
            ["x' OR 1=1 --", 0])).decode().rstrip("=")
        assert code(alice.get(base, params={"after": forged}), 400) == "INVALID_REQUEST"
        one = base64.urlsafe_b64encode(msgspec.msgpack.encode([0])).decode().rstrip("=")
        assert [r["id"] for r in ok(alice.get(base, params={"after": one}))["rows"]] == [1]
        # values are values: a write cannot reach past its row
        r = alice.post(base, json={"owner": "alice", "title": "x'); DELETE FROM notes; --"})
        assert r.status_code == 201
        assert ok(alice.patch(base, params={"id": "eq.2"}, json={"title": "pwned"}))[
            "rows"] == []
        assert ok(alice.delete(base, params={"owner": "eq.bob"}))["rows"] == []
        assert code(alice.patch(base, params={"id": "eq.1"}, json={"twice": "x"}),
                    400) == "INVALID_REQUEST"  # a generated column
    bobs_rows_untouched(admin, db)


def test_tables_that_are_not_tables(node: InProcessNode, admin: httpx.Client,
                                    idp: IdentityProvider, db: str) -> None:
    with user(node, idp, db) as alice:
        for table in ("secrets", "all_notes", "log", "sqlite_schema", "sqlite_master",
                      "_cf_SHOAL_rules", "_cf_SHOAL_state", "pragma_table_info",
                      "notes WHERE 1=1", 'notes"--', "main.notes", "temp.notes",
                      "json_each", "generate_series"):
            r = alice.get(f"/v1/databases/{db}/tables/{table}")
            assert code(r, 404) == "TABLE_NOT_FOUND", table
        # SQLite's names are case-insensitive: the rule follows the table, not the spelling
        got = ok(alice.get(f"/v1/databases/{db}/tables/NOTES", params={"OWNER": "eq.bob"}))
        assert got["rows"] == []
        assert {r["owner"] for r in ok(alice.get(f"/v1/databases/{db}/tables/NoTeS"))[
            "rows"]} == {"alice"}
        # quoted names are names
        weird = ok(alice.get(f'/v1/databases/{db}/tables/we"ird'))["rows"]
        assert weird == []
    with user(node, idp, db, sub="bob") as bob:
        assert ok(bob.get(f'/v1/databases/{db}/tables/we"ird',
                          params={"sel ect": "eq.x"}))["rows"] == [{'o"wner': "bob",
                                                                    "sel ect": "x"}]


def test_defaults_and_triggers_cannot_write_for_another(
        node: InProcessNode, admin: httpx.Client, idp: IdentityProvider, db: str) -> None:
    base = f"/v1/databases/{db}/tables/notes"
    with user(node, idp, db) as alice:
        # owner defaults to 'bob': the rule judges the row as stored
        assert code(alice.post(base, json={"title": "no owner"}), 403) == "RULE_DENIED"
        r = alice.post(base, json={"id": 2, "owner": "alice"})  # bob's id: a conflict only
        assert r.status_code == 400 and "bob" not in r.text
        made = ok(alice.post(base, json={"owner": "alice", "title": "t"}), 201)["rows"]
        assert made[0]["twice"] == "tt"
    # the trigger ran with the row (an admin's SQL); the refused insert left nothing
    log = ok(query(admin, db, "SELECT what FROM log"))["results"][0]["rows"]
    assert log == [["alice"], ["bob"], ["bob"], ["alice"]]  # the fixture's three, then hers
    bobs_rows_untouched(admin, db)


def test_sql_hrana_and_management_are_closed(node: InProcessNode, admin: httpx.Client,
                                             idp: IdentityProvider, db: str) -> None:
    with user(node, idp, db) as alice:
        assert code(query(alice, db, "SELECT * FROM notes"), 403) == "RULES_BOUND"
        assert code(alice.post(f"/v1/databases/{db}/transactions", json={}),
                    403) == "RULES_BOUND"
        pipe = alice.post(f"/db/{db}/v3/pipeline", json={"requests": [
            {"type": "execute", "stmt": {"sql": "SELECT * FROM notes"}}]})
        assert "RULES_BOUND" in pipe.text and "bob-s" not in pipe.text
        for r in (alice.put(f"/v1/databases/{db}/rules/notes", json={"select": "1"}),
                  alice.get(f"/v1/databases/{db}/rules"),
                  alice.put(f"/v1/databases/{db}/queries/x", json={"sql": "SELECT 1"}),
                  alice.post("/v1/tokens", json={"databases": [db], "access": "admin"}),
                  alice.put(f"/v1/databases/{db}/issuers", json={"issuers": []}),
                  alice.post(f"/v1/databases/{db}/webhooks", json={"url": "http://x"}),
                  alice.delete(f"/v1/databases/{db}")):
            assert r.status_code == 403, r.text
        # another tenant's database is not reached at all
        assert code(alice.get("/v1/databases/other/tables/notes"), 403) == "FORBIDDEN"


def test_named_query_arguments_are_values(node: InProcessNode, admin: httpx.Client,
                                          idp: IdentityProvider, db: str) -> None:
    ok(admin.put(f"/v1/databases/{db}/queries/by_title", json={
        "sql": "SELECT id, title FROM notes WHERE owner = auth.sub AND title LIKE :t"}))
    with user(node, idp, db) as alice:
        q = f"/v1/databases/{db}/queries/by_title"
        got = ok(alice.post(q, json={"args": {"t": "%' OR owner = 'bob"}}))["rows"]
        assert got == []
        assert [r["id"] for r in ok(alice.post(q, json={"args": {"t": "%"}}))["rows"]] == [1]
        for args in ({"t": "%", "auth_0": "bob"}, {"t": "%", ":auth_0": "bob"}):
            assert code(alice.post(q, json={"args": args}), 400) == "INVALID_ARGUMENT"


def test_the_feed_hides_other_rows_and_their_deletes(
        node: InProcessNode, admin: httpx.Client, idp: IdentityProvider, db: str) -> None:
    feed = f"/v1/databases/{db}/changes"
    with user(node, idp, db) as alice:
        start = ok(alice.get(feed, params={"wait": "1"}))["cursor"]
        ok(query(admin, db, "DELETE FROM notes WHERE owner = 'bob'",
                 "UPDATE secrets SET value = 'changed'",
                 "INSERT INTO notes(owner, title) VALUES ('alice', 'mine')"))
        seen: list[dict[str, Any]] = []
        cursor = start
        for _ in range(20):
            page = ok(alice.get(feed, params={"since": cursor, "wait": "0.5"}))
            seen += page["changes"]
            cursor = page["cursor"]
            if any(c.get("new", {}) and c["new"].get("title") == "mine" for c in seen):
                break
        assert [(c["table"], c["op"]) for c in seen] == [("notes", "insert")], seen
        assert "bob" not in json.dumps(seen) and "top" not in json.dumps(seen)
        # a filter cannot ask for what rules hide
        page = ok(alice.get(feed, params={"since": start, "table": "secrets"}))
        assert page["changes"] == []


def test_forged_tokens_at_the_data_api(node: InProcessNode, idp: IdentityProvider,
                                       db: str) -> None:
    base = f"/v1/databases/{db}/tables/notes"
    claims = idp.claims({"sub": "bob", "tenant": db, "role": "member"})
    rsa = idp.key("RS256")
    stranger = new_key("RS256", kid=rsa.kid)  # the same kid, another key
    forged = {
        "expired": idp.mint({"sub": "bob", "tenant": db}, expires_in=-120),
        "audience": idp.mint({"sub": "bob", "tenant": db, "aud": "other"}),
        "issuer": idp.mint({"sub": "bob", "tenant": db, "iss": "https://evil.example/"}),
        "alg none": compact({"alg": "none", "kid": rsa.kid}, claims),
        "hs256 with the public key": compact({"alg": "HS256", "kid": rsa.kid}, claims,
                                             hs256_with(rsa.public_pem())),
        "another key, same kid": idp.mint({"sub": "bob", "tenant": db}, key=stranger),
        "jku elsewhere": idp.mint({"sub": "bob", "tenant": db},
                                  headers={"jku": "https://127.0.0.1:9/jwks.json"},
                                  key=stranger),
        "shoal's issuer": idp.mint({"sub": "bob", "tenant": db, "iss": "shoal",
                                    "dbs": "*", "acc": "admin"}),
        "truncated": idp.mint({"sub": "bob", "tenant": db})[:-5],
    }
    fetched = idp.fetches
    for what, token in forged.items():
        with node.client(token) as c:
            r = c.get(base)
            assert r.status_code == 401, (what, r.text)
            assert "bob-s" not in r.text
    assert all(not p.startswith("/jwks.json?") for p in idp.requests)
    assert idp.fetches - fetched <= 1  # an unknown kid's one read at most (then none)
