"""The data API and row rules in process: reads with filters, order and keyset pages,
writes returning rows, rules that bind tokens (deny by default, claims bound once per
statement), named queries, the feed as rules show it, and every refusal's code.

Tokens bound by rules come from an identity provider (tests/server/test_identity.py signs
real ones); here the node's authenticate() also knows a few test bearers, so that the
rules are tested apart from the tokens."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from shoal.tokens import Principal
from tests.integration.api_support import ok, query

_names = itertools.count()


def bound(user: str, db: str, access: str = "write", **claims: Any) -> Principal:
    return Principal(f"ext-{user}", frozenset({db}), access, issuer="https://idp.test",
                     user=user, claims={"sub": user, **claims}, bound=True)


@pytest.fixture
def as_user(server: Any, admin: httpx.Client) -> Iterator[Callable[[Principal], httpx.Client]]:
    """A client whose bearer the node reads as the given principal."""
    engine = server.app.engine
    real = engine.authenticate
    known: dict[str, Principal] = {}

    def authenticate(header: str | None) -> Principal:
        token = (header or "").partition(" ")[2]
        return known[token] if token in known else real(header)

    engine.authenticate = authenticate
    clients: list[httpx.Client] = []

    def make(principal: Principal) -> httpx.Client:
        bearer = f"test-{len(known)}"
        known[bearer] = principal
        c = server.client()
        c.headers["authorization"] = f"Bearer {bearer}"
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()
    engine.authenticate = real


@pytest.fixture
def notes(admin: httpx.Client) -> str:
    db = f"notes{next(_names)}"
    ok(admin.post("/v1/databases", json={"name": db}), 201)
    ok(query(admin, db,
             "CREATE TABLE notes(id INTEGER PRIMARY KEY, owner TEXT NOT NULL, org TEXT, "
             "title TEXT, body BLOB, score REAL, at INTEGER DEFAULT 0)",
             "CREATE INDEX notes_owner ON notes(owner, id)",
             "CREATE TABLE secrets(id INTEGER PRIMARY KEY, owner TEXT, value TEXT)"))
    rows = [{"sql": "INSERT INTO notes(owner, org, title, score, at) VALUES (?, ?, ?, ?, ?)",
             "args": [owner, org, f"{owner} {i}", i / 2, i % 3]}
            for i, (owner, org) in enumerate([("alice", "a"), ("bob", "b")] * 10)]
    rows.append({"sql": "INSERT INTO secrets(owner, value) VALUES ('alice', 'x'), "
                        "('bob', 'y')"})
    ok(query(admin, db, *rows))
    return db


def code_of(r: httpx.Response, status: int) -> str:
    """The error envelope's code, after checking the status and the envelope's shape."""
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["message"]
    return str(err["code"])


def rows_of(r: httpx.Response, status: int = 200) -> list[dict[str, Any]]:
    return ok(r, status)["rows"]  # type: ignore[no-any-return]


def own_rules(admin: httpx.Client, db: str, **extra: str | None) -> None:
    body = {"select": "owner = auth.sub", "insert": "owner = auth.sub",
            "update": "owner = auth.sub", "delete": "owner = auth.sub", **extra}
    ok(admin.put(f"/v1/databases/{db}/rules/notes", json=body))


# -- reads ---------------------------------------------------------------------------------------

def test_read_filters_order_and_select(admin: httpx.Client, notes: str) -> None:
    base = f"/v1/databases/{notes}/tables/notes"
    got = rows_of(admin.get(base, params={"owner": "eq.alice", "select": "id,title",
                                          "order": "id.desc", "limit": "3"}))
    assert [r["title"] for r in got] == ["alice 18", "alice 16", "alice 14"]
    assert set(got[0]) == {"id", "title"}
    got = rows_of(admin.get(base, params={"id": "in.(1,2,3)", "score": "gte.0.5"}))
    assert [r["id"] for r in got] == [2, 3]
    assert rows_of(admin.get(base, params={"title": "like.bob 1%"})) != []
    assert rows_of(admin.get(base, params={"body": "is.null", "limit": "1"}))[0]["id"] == 1
    assert rows_of(admin.get(base, params={"body": "is.notnull"})) == []
    assert len(rows_of(admin.get(base, params={"id": "neq.1", "at": "lt.1"}))) == 6


def test_keyset_pages_cover_every_row_once(admin: httpx.Client, notes: str) -> None:
    ok(query(admin, notes, "UPDATE notes SET score = NULL WHERE id % 4 = 0"))
    base = f"/v1/databases/{notes}/tables/notes"
    for order in ("id", "score.desc", "score", "at.desc,score", "at,title.desc"):
        seen: list[int] = []
        after = None
        while True:
            params = {"order": order, "limit": "3", "select": "id"}
            if after:
                params["after"] = after
            page = ok(admin.get(base, params=params))
            seen += [r["id"] for r in page["rows"]]
            after = page["next"]
            if after is None:
                break
        assert sorted(seen) == list(range(1, 21)), order
        every = [r["id"] for r in rows_of(admin.get(base, params={"order": order,
                                                                  "select": "id"}))]
        assert seen == every, order


def test_writes_return_rows(admin: httpx.Client, notes: str) -> None:
    base = f"/v1/databases/{notes}/tables/notes"
    made = rows_of(admin.post(base, json=[{"owner": "carol", "title": "one"},
                                          {"owner": "carol", "title": "two",
                                           "body": {"base64": "AAE="}}]), 201)
    assert [r["title"] for r in made] == ["one", "two"] and made[0]["at"] == 0
    assert made[1]["body"] == {"base64": "AAE="}
    changed = rows_of(admin.patch(base, params={"owner": "eq.carol"}, json={"score": 9}))
    assert {r["score"] for r in changed} == {9.0}
    gone = rows_of(admin.delete(base, params={"owner": "eq.carol", "title": "eq.one"}))
    assert [r["title"] for r in gone] == ["one"]
    assert len(rows_of(admin.get(base, params={"owner": "eq.carol"}))) == 1


def test_bad_requests(admin: httpx.Client, notes: str) -> None:
    base = f"/v1/databases/{notes}/tables/notes"
    assert code_of(admin.get(base, params={"nope": "eq.1"}), 400) == "UNKNOWN_COLUMN"
    assert code_of(admin.get(base, params={"select": "id,nope"}), 400) == "UNKNOWN_COLUMN"
    assert code_of(admin.get(base, params={"order": "nope"}), 400) == "UNKNOWN_COLUMN"
    assert code_of(admin.get(base, params={"id": "between.1"}), 400) == "INVALID_REQUEST"
    assert code_of(admin.get(base, params={"id": "eq"}), 400) == "INVALID_REQUEST"
    assert code_of(admin.get(base, params={"limit": "0"}), 400) == "INVALID_REQUEST"
    assert code_of(admin.get(base, params={"after": "!!"}), 400) == "INVALID_REQUEST"
    assert code_of(admin.get(f"/v1/databases/{notes}/tables/nope"), 404) == "TABLE_NOT_FOUND"
    for hidden in ("_cf_SHOAL_state", "_cf_SHOAL_rules", "sqlite_schema", "sqlite_master"):
        assert code_of(admin.get(f"/v1/databases/{notes}/tables/{hidden}"),
                        404) == "TABLE_NOT_FOUND"
    assert code_of(admin.post(base, json={"nope": 1}), 400) == "UNKNOWN_COLUMN"
    assert code_of(admin.post(base, json=[1]), 400) == "INVALID_REQUEST"
    assert code_of(admin.patch(base, json={}), 400) == "INVALID_REQUEST"
    # a column name is never SQL: a filter naming a crafted "column" matches no column
    for name in ('id" OR 1=1 --', "id) OR (1", "id=1 OR 1"):
        assert code_of(admin.get(base, params={name: "eq.1"}), 400) == "UNKNOWN_COLUMN"


# -- rules ---------------------------------------------------------------------------------------

def test_bound_tokens_see_their_rows_only(admin: httpx.Client, notes: str,
                                          as_user: Callable[[Principal], httpx.Client]) -> None:
    own_rules(admin, notes)
    alice = as_user(bound("alice", notes))
    bob = as_user(bound("bob", notes))
    base = f"/v1/databases/{notes}/tables/notes"
    assert {r["owner"] for r in rows_of(alice.get(base))} == {"alice"}
    assert len(rows_of(bob.get(base, params={"limit": "1000"}))) == 10
    # a filter cannot widen the rule: it is ANDed with it
    assert rows_of(alice.get(base, params={"owner": "eq.bob"})) == []
    assert rows_of(alice.get(base, params={"owner": "in.(alice,bob)"})) != []
    # writes: only rows that pass the rule, before and after
    made = rows_of(alice.post(base, json={"owner": "alice", "title": "mine"}), 201)
    assert made[0]["owner"] == "alice"
    assert code_of(alice.post(base, json={"owner": "bob", "title": "forged"}),
                    403) == "RULE_DENIED"
    assert code_of(alice.post(base, json=[{"owner": "alice", "title": "ok"},
                                           {"owner": "bob", "title": "forged"}]),
                    403) == "RULE_DENIED"
    assert rows_of(admin.get(base, params={"title": "eq.ok"})) == []  # all or nothing
    assert rows_of(alice.patch(base, params={"owner": "eq.bob"}, json={"title": "x"})) == []
    assert code_of(alice.patch(base, params={"id": f"eq.{made[0]['id']}"},
                                json={"owner": "bob"}), 403) == "RULE_DENIED"
    assert rows_of(alice.delete(base, params={"owner": "eq.bob"})) == []
    assert len(rows_of(admin.get(base, params={"owner": "eq.bob"}))) == 10
    assert len(rows_of(alice.delete(base, params={"title": "eq.mine"}))) == 1


def test_deny_by_default(admin: httpx.Client, notes: str,
                         as_user: Callable[[Principal], httpx.Client]) -> None:
    alice = as_user(bound("alice", notes))
    base = f"/v1/databases/{notes}/tables"
    # no rule at all: the table does not exist for a bound token
    assert code_of(alice.get(f"{base}/notes"), 404) == "TABLE_NOT_FOUND"
    assert code_of(alice.get(f"{base}/secrets"), 404) == "TABLE_NOT_FOUND"
    ok(admin.put(f"/v1/databases/{notes}/rules/notes", json={"select": "owner = auth.sub"}))
    assert rows_of(alice.get(f"{base}/notes")) != []
    for r in (alice.post(f"{base}/notes", json={"owner": "alice"}),
              alice.patch(f"{base}/notes", json={"title": "x"}),
              alice.delete(f"{base}/notes")):
        assert code_of(r, 403) == "RULE_DENIED"
    # SQL, Hrana and every admin route are closed to it
    assert code_of(query(alice, notes, "SELECT 1"), 403) == "RULES_BOUND"
    assert code_of(alice.post(f"/v1/databases/{notes}/transactions", json={}),
                    403) == "RULES_BOUND"
    pipe = alice.post(f"/db/{notes}/v2/pipeline",
                      json={"requests": [{"type": "execute", "stmt": {"sql": "SELECT 1"}}]})
    assert "RULES_BOUND" in pipe.text
    for r in (alice.get(f"/v1/databases/{notes}/rules"),
              alice.put(f"/v1/databases/{notes}/rules/notes", json={"select": "1"}),
              alice.post(f"/v1/databases/{notes}/branches", json={"name": "x"}),
              alice.post("/v1/tokens", json={"databases": [notes], "access": "read"})):
        assert r.status_code == 403, r.text
    # a read token bound by rules reads, never writes
    reader = as_user(bound("alice", notes, access="read"))
    own_rules(admin, notes)
    assert rows_of(reader.get(f"{base}/notes")) != []
    assert code_of(reader.post(f"{base}/notes", json={"owner": "alice"}), 403) == "READ_ONLY"


def test_claims_and_subqueries_in_rules(admin: httpx.Client, notes: str,
                                        as_user: Callable[[Principal], httpx.Client]) -> None:
    ok(admin.put(f"/v1/databases/{notes}/rules/notes", json={
        "select": "org IN (SELECT value FROM json_each(auth.claims.orgs)) "
                  "OR owner = auth.claims.profile.name"}))
    base = f"/v1/databases/{notes}/tables/notes"
    both = as_user(bound("zed", notes, orgs=["a", "b"]))
    assert len(rows_of(both.get(base, params={"limit": "100"}))) == 20
    one = as_user(bound("zed", notes, orgs=["b"], profile={"name": "alice"}))
    assert len(rows_of(one.get(base, params={"limit": "100"}))) == 20
    none = as_user(bound("zed", notes))  # missing claims are NULL: nothing passes
    assert rows_of(none.get(base)) == []
    # a rule must compile, and may not reach Shoal's own tables
    for bad, code in (("owner = ", "INVALID_RULE"), ("nope = 1", "INVALID_RULE"),
                      ("1) OR (1", "INVALID_RULE"), ("x = ?", "INVALID_RULE"),
                      ("1; DROP TABLE notes", "INVALID_RULE"),
                      ("auth.password = 1", "INVALID_RULE"),
                      ("EXISTS (SELECT 1 FROM _cf_SHOAL_state)", "INVALID_RULE")):
        r = admin.put(f"/v1/databases/{notes}/rules/notes", json={"select": bad})
        assert code_of(r, 400) == code, bad
    assert code_of(admin.put(f"/v1/databases/{notes}/rules/nope", json={"select": "1"}),
                    404) == "TABLE_NOT_FOUND"
    listed = ok(admin.get(f"/v1/databases/{notes}/rules"))["rules"]
    assert listed["notes"]["select"].startswith("org IN")
    ok(admin.put(f"/v1/databases/{notes}/rules/notes", json={"select": None}))
    assert ok(admin.get(f"/v1/databases/{notes}/rules"))["rules"] == {}
    assert code_of(one.get(base), 404) == "TABLE_NOT_FOUND"


def test_rules_live_in_the_branch(admin: httpx.Client, notes: str,
                                  as_user: Callable[[Principal], httpx.Client]) -> None:
    own_rules(admin, notes)
    ok(admin.post(f"/v1/databases/{notes}/branches", json={"name": "preview"}), 201)
    ok(admin.put(f"/v1/databases/{notes}/branches/preview/rules/notes",
                 json={"select": "1"}))
    alice = as_user(bound("alice", notes))
    assert len(rows_of(alice.get(f"/v1/databases/{notes}/branches/preview/tables/notes",
                                 params={"limit": "100"}))) == 20
    assert len(rows_of(alice.get(f"/v1/databases/{notes}/tables/notes",
                                 params={"limit": "100"}))) == 10
    # users' SQL cannot touch the rules
    assert code_of(query(admin, notes, "DELETE FROM _cf_SHOAL_rules"), 403) == \
        "SQL_NOT_ALLOWED"


def test_named_queries(admin: httpx.Client, notes: str,
                       as_user: Callable[[Principal], httpx.Client]) -> None:
    base = f"/v1/databases/{notes}/queries"
    ok(admin.put(f"{base}/mine", json={
        "sql": "SELECT count(*) AS n FROM notes WHERE owner = auth.sub AND at >= :at",
        "description": "my notes"}))
    alice = as_user(bound("alice", notes))
    got = ok(alice.post(f"{base}/mine", json={"args": {"at": 1}}))
    assert got["rows"] == [{"n": 6}]
    assert code_of(alice.post(f"{base}/mine", json={"args": {"at": 0, "auth_0": "bob"}}),
                    400) == "INVALID_ARGUMENT"
    assert code_of(alice.post(f"{base}/mine", json={}), 400) == "INVALID_ARGUMENT"
    assert code_of(alice.post(f"{base}/nope", json={}), 404) == "QUERY_NOT_FOUND"
    assert [q["name"] for q in ok(alice.get(base))["queries"]] == ["mine"]
    assert code_of(alice.put(f"{base}/x", json={"sql": "SELECT 1"}), 403) == "RULES_BOUND"
    assert code_of(admin.put(f"{base}/bad", json={"sql": "SELECT * FROM nope"}),
                    400) == "INVALID_RULE"
    assert code_of(admin.put(f"{base}/bad", json={"sql": "SELECT 1; SELECT 2"}),
                    400) == "INVALID_RULE"
    assert admin.delete(f"{base}/mine").status_code == 204
    assert code_of(alice.post(f"{base}/mine", json={}), 404) == "QUERY_NOT_FOUND"


def test_schema_route(admin: httpx.Client, notes: str,
                      as_user: Callable[[Principal], httpx.Client]) -> None:
    got = ok(admin.get(f"/v1/databases/{notes}/tables/notes/schema"))
    assert got["columns"][:2] == ["id", "owner"] and got["key"] == ["id"]
    assert got["verbs"] == ["select", "insert", "update", "delete"]
    ok(admin.put(f"/v1/databases/{notes}/rules/notes", json={"select": "1"}))
    alice = as_user(bound("alice", notes))
    assert ok(alice.get(f"/v1/databases/{notes}/tables/notes/schema"))["verbs"] == ["select"]


def test_the_feed_shows_a_bound_token_its_rows_only(
        admin: httpx.Client, notes: str, as_user: Callable[[Principal], httpx.Client]) -> None:
    own_rules(admin, notes)
    ok(admin.put(f"/v1/databases/{notes}/rules/secrets", json={"select": "0"}))
    alice = as_user(bound("alice", notes))
    feed = f"/v1/databases/{notes}/changes"
    start = ok(alice.get(feed))["cursor"]
    ok(query(admin, notes,
             "INSERT INTO notes(id, owner, title) VALUES (100, 'alice', 'a'), "
             "(101, 'bob', 'b'), (102, 'bob', 'c')",
             "INSERT INTO secrets(owner, value) VALUES ('alice', 'hidden')"))
    ok(query(admin, notes, "UPDATE notes SET owner = 'bob' WHERE id = 100",  # leaves her view
             "UPDATE notes SET owner = 'alice' WHERE id = 101",  # comes into it
             "UPDATE notes SET title = 'bb' WHERE id = 102"))  # never hers
    ok(query(admin, notes, "DELETE FROM notes WHERE id IN (101, 102)"))  # (commits apart:
    # the feed holds each commit's net change of a row)
    seen: list[tuple[str, str, Any, Any]] = []
    cursor = start
    for _ in range(20):
        page = ok(alice.get(feed, params={"since": cursor, "wait": "0.5"}))
        seen += [(c["table"], c["op"], c["new"] and c["new"]["owner"],
                  c["old"] and c["old"]["owner"]) for c in page["changes"]
                 if c["key"][0] >= 100]  # (the fixture's rows may come first)
        cursor = page["cursor"]
        if len(seen) >= 4 and not page["changes"]:
            break
    assert seen == [("notes", "insert", "alice", None),
                    ("notes", "delete", None, "alice"),  # id 100 left her view
                    ("notes", "insert", "alice", None),  # id 101 came into it
                    ("notes", "delete", None, "alice")]  # and was deleted
    # the admin sees all of it, the same commits rendered whole
    every = ok(admin.get(feed, params={"since": start, "limit": "100"}))["changes"]
    assert len([c for c in every if c["key"][0] >= 100]) == 8


def test_idempotent_writes(admin: httpx.Client, notes: str,
                           as_user: Callable[[Principal], httpx.Client]) -> None:
    own_rules(admin, notes)
    alice = as_user(bound("alice", notes))
    base = f"/v1/databases/{notes}/tables/notes"
    key = {"Idempotency-Key": "insert-1"}
    first = alice.post(base, json={"owner": "alice", "title": "once"}, headers=key)
    again = alice.post(base, json={"owner": "alice", "title": "once"}, headers=key)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()  # the first answer, not a second row
    assert len(rows_of(admin.get(base, params={"title": "eq.once"}))) == 1
    assert code_of(alice.post(base, json={"owner": "alice", "title": "other"}, headers=key),
                   422) == "IDEMPOTENCY_KEY_REUSED"
    # the key covers the filters too: the same body with other filters is another request
    patch = {"Idempotency-Key": "patch-1"}
    one = alice.patch(base, params={"title": "eq.once"}, json={"score": 1}, headers=patch)
    assert len(one.json()["rows"]) == 1
    assert code_of(alice.patch(base, params={"title": "eq.x"}, json={"score": 1},
                               headers=patch), 422) == "IDEMPOTENCY_KEY_REUSED"
    # a refused write keeps nothing under its key
    bad = {"Idempotency-Key": "bad-1"}
    assert code_of(alice.post(base, json={"owner": "bob"}, headers=bad), 403) == "RULE_DENIED"
    assert code_of(alice.post(base, json={"owner": "bob"}, headers=bad), 403) == "RULE_DENIED"


def test_a_restore_brings_back_the_rules_of_its_time(
        admin: httpx.Client, notes: str, as_user: Callable[[Principal], httpx.Client]) -> None:
    own_rules(admin, notes)
    before = ok(admin.put(f"/v1/databases/{notes}/rules/notes",
                          json={"select": "owner = auth.sub"}))["bookmark"]
    ok(admin.put(f"/v1/databases/{notes}/rules/notes", json={"select": "1"}))
    alice = as_user(bound("alice", notes))
    base = f"/v1/databases/{notes}/tables/notes"
    assert len(rows_of(alice.get(base, params={"limit": "100"}))) == 20
    ok(admin.post(f"/v1/databases/{notes}/restore", json={"bookmark": before}))
    assert len(rows_of(alice.get(base, params={"limit": "100"}))) == 10
    assert ok(admin.get(f"/v1/databases/{notes}/rules"))["rules"]["notes"]["select"] == \
        "owner = auth.sub"


def test_upserts(admin: httpx.Client, notes: str,
                 as_user: Callable[[Principal], httpx.Client]) -> None:
    base = f"/v1/databases/{notes}/tables/notes"
    upsert = {"on_conflict": "update"}
    # an admin: a new row, then the same key again updates it
    made = rows_of(admin.post(base, params=upsert, json={"id": 500, "owner": "carol",
                                                          "title": "v1"}), 201)
    assert made[0]["title"] == "v1"
    again = rows_of(admin.post(base, params=upsert, json=[
        {"id": 500, "owner": "carol", "title": "v2"}, {"id": 501, "owner": "carol"}]), 201)
    assert [(r["id"], r["title"]) for r in again] == [(500, "v2"), (501, None)]
    assert code_of(admin.post(base, params={"on_conflict": "ignore"}, json={"id": 1}),
                   400) == "INVALID_REQUEST"
    # a bound token: its rows updated, another's left as they are, never taken over
    own_rules(admin, notes)
    alice = as_user(bound("alice", notes))
    mine = rows_of(alice.get(base, params={"limit": "1"}))[0]
    got = rows_of(alice.post(base, params=upsert, json={"id": mine["id"], "owner": "alice",
                                                         "title": "edited"}), 201)
    assert got[0]["title"] == "edited"
    bobs = rows_of(admin.get(base, params={"owner": "eq.bob", "limit": "1"}))[0]
    assert rows_of(alice.post(base, params=upsert, json={"id": bobs["id"], "owner": "alice",
                                                          "title": "taken"}), 201) == []
    assert rows_of(admin.get(base, params={"id": f"eq.{bobs['id']}"}))[0]["owner"] == "bob"
    assert code_of(alice.post(base, params=upsert, json={"id": mine["id"], "owner": "bob"}),
                   403) == "RULE_DENIED"
    ok(admin.put(f"/v1/databases/{notes}/rules/notes", json={"update": None}))
    assert code_of(alice.post(base, params=upsert, json={"id": 900, "owner": "alice"}),
                   403) == "RULE_DENIED"  # an upsert needs the update rule too
