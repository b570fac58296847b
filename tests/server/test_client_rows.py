"""shoal.client's data API, row rules and named queries (``Client`` and ``AsyncClient``)
against the App in process: rows read with filters, order and pages (values decoded as
query results are), rows written (values encoded as query args are), rules set and kept,
a token bound by them seeing its rows only, named queries, and the mistakes the client
refuses before sending anything."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from shoal.client import KEEP, AsyncClient, AuthError, Client, InvalidRequest, NotFound
from shoal.tokens import Principal
from tests.support.inprocess import InProcessNode
from tests.support.server import ServerProcess


@pytest.fixture
def node(server: ServerProcess) -> InProcessNode:
    assert isinstance(server, InProcessNode)
    return server


@pytest.fixture
def client(node: InProcessNode) -> Iterator[Client]:
    with Client(node.url, node.admin_token, transport=node.transport()) as c:
        yield c


@pytest.fixture
def notes(client: Client, new_db: Callable[[], str]) -> str:
    db = new_db()
    client.batch(["CREATE TABLE notes(id INTEGER PRIMARY KEY, owner TEXT NOT NULL, "
                  "title TEXT, body BLOB, score REAL, at INTEGER DEFAULT 7)"]
                 + [("INSERT INTO notes(owner, title, score) VALUES (?, ?, ?)",
                     [owner, f"{owner} {i}", i / 2])
                    for i, owner in enumerate(["alice", "bob"] * 5)], database=db)
    return db


@pytest.fixture
def as_user(node: InProcessNode) -> Iterator[Callable[[Principal], Client]]:
    """A client whose bearer the node reads as the given principal (a token bound by
    rules, as an identity provider's would be: tests/server/test_data_api.py)."""
    assert node.app is not None
    engine = node.app.engine
    real = engine.authenticate
    known: dict[str, Principal] = {}
    engine.authenticate = lambda header: known.get((header or "").partition(" ")[2]) \
        or real(header)
    clients: list[Client] = []

    def make(principal: Principal) -> Client:
        bearer = f"user-{len(known)}"
        known[bearer] = principal
        clients.append(Client(node.url, bearer, transport=node.transport()))
        return clients[-1]

    yield make
    for c in clients:
        c.close()
    engine.authenticate = real


def bound(user: str, db: str) -> Principal:
    return Principal(f"ext-{user}", frozenset({db}), "write", issuer="https://idp.test",
                     user=user, claims={"sub": user}, bound=True)


def test_rows_filters_order_pages_and_values(client: Client, notes: str) -> None:
    page = client.rows(notes, "notes", where={"owner": "eq.alice"}, select=["id", "title"],
                       order="id.desc", limit=2)
    assert [r["title"] for r in page["rows"]] == ["alice 8", "alice 6"]
    assert set(page["rows"][0]) == {"id", "title"} and page["next"] and page["bookmark"]
    # a plain value is eq, None is null, a list is in (strings quoted: commas are values)
    assert [r["id"] for r in client.rows(notes, "notes", where={"id": 3})["rows"]] == [3]
    assert len(client.rows(notes, "notes", where={"body": None})["rows"]) == 10
    assert [r["id"] for r in client.rows(notes, "notes", where={
        "title": ["bob 1", "x,y", 'a "q"'], "id": [1, 2, 3]})["rows"]] == [2]
    # pairs name a column twice (a range)
    assert [r["id"] for r in client.rows(notes, "notes", select="id",
                                         where=[("id", "gt.2"), ("id", "lte.4")])["rows"]] \
        == [3, 4]
    # iter_rows follows next, a page a request
    assert [r["id"] for r in client.iter_rows(notes, "notes", order=["score.desc"],
                                              limit=3)] == list(range(10, 0, -1))
    # writes: values encoded (a blob), rows as stored (defaults) and decoded
    made = client.insert_rows(notes, "notes", [{"owner": "carol", "body": b"\x00\x01"},
                                               {"owner": "carol", "title": "two"}])
    assert [(r["body"], r["at"]) for r in made] == [(b"\x00\x01", 7), (None, 7)]
    one = client.insert_rows(notes, "notes", {"owner": "dan", "score": 2**53 + 1})
    assert len(one) == 1 and one[0]["owner"] == "dan"
    again = client.insert_rows(notes, "notes", {"id": one[0]["id"], "owner": "dan",
                                                "title": "upserted"}, upsert=True)
    assert [(r["id"], r["title"], r["score"]) for r in again] == [
        (one[0]["id"], "upserted", one[0]["score"])]
    assert client.rows(notes, "notes", where={"body": "is.notnull"})["rows"][0]["body"] == \
        b"\x00\x01"
    changed = client.update_rows(notes, "notes", {"title": "same", "body": bytearray(b"z")},
                                 {"owner": "eq.carol"})
    assert {(r["title"], r["body"]) for r in changed} == {("same", b"z")}
    gone = client.delete_rows(notes, "notes", {"owner": ["carol", "dan"]})
    assert len(gone) == 3
    assert client.rows(notes, "notes", where={"owner": "eq.carol"})["rows"] == []
    # the session holds the writes' bookmark: a query after them reads them
    assert client.bookmark(notes) is not None
    schema = client.table_schema(notes, "notes")
    assert schema["columns"][:2] == ["id", "owner"]
    assert schema["verbs"] == ["select", "insert", "update", "delete"]


def test_rules_set_kept_and_removed(client: Client, notes: str) -> None:
    assert client.rules(notes) == {}
    done = client.set_rules(notes, "notes", select="owner = auth.sub",
                            insert="owner = auth.sub")
    assert done["table"] == "notes" and done["bookmark"]
    assert done["rules"] == {"select": "owner = auth.sub", "insert": "owner = auth.sub",
                             "update": None, "delete": None}
    # verbs not given keep theirs; None removes one
    client.set_rules(notes, "notes", insert=None, delete="0", update=KEEP)
    assert client.rules(notes) == {"notes": {"select": "owner = auth.sub", "insert": None,
                                             "update": None, "delete": "0"}}
    # rules live in the branch
    client.create_branch("preview", database=notes)
    client.set_rules(notes, "notes", select=None, delete=None, branch="preview")
    assert client.rules(notes, branch="preview") == {}
    assert client.rules(notes)["notes"]["select"] == "owner = auth.sub"
    with pytest.raises(InvalidRequest) as bad:
        client.set_rules(notes, "notes", select="owner = ")
    assert bad.value.code == "INVALID_RULE"
    with pytest.raises(NotFound) as missing:
        client.set_rules(notes, "nope", select="1")
    assert missing.value.code == "TABLE_NOT_FOUND"


def test_a_bound_token_sees_its_rows_only(client: Client, notes: str,
                                          as_user: Callable[[Principal], Client]) -> None:
    client.set_rules(notes, "notes", select="owner = auth.sub", insert="owner = auth.sub")
    alice = as_user(bound("alice", notes))
    assert {r["owner"] for r in alice.iter_rows(notes, "notes", limit=2)} == {"alice"}
    assert alice.rows(notes, "notes", where={"owner": "eq.bob"})["rows"] == []
    assert alice.insert_rows(notes, "notes", {"owner": "alice"})[0]["owner"] == "alice"
    assert alice.table_schema(notes, "notes")["verbs"] == ["select", "insert"]
    for call, code in ((lambda: alice.insert_rows(notes, "notes", {"owner": "bob"}),
                        "RULE_DENIED"),
                       (lambda: alice.delete_rows(notes, "notes", {}), "RULE_DENIED"),
                       (lambda: alice.execute("SELECT 1", database=notes), "RULES_BOUND"),
                       (lambda: alice.rules(notes), "RULES_BOUND")):
        with pytest.raises(AuthError) as denied:
            call()
        assert denied.value.code == code and denied.value.status == 403


def test_named_queries(client: Client, notes: str,
                       as_user: Callable[[Principal], Client]) -> None:
    made = client.set_named_query(notes, "mine", "SELECT count(*) AS n, :tag AS tag FROM "
                                  "notes WHERE owner = auth.sub AND score >= :least",
                                  "my notes")
    assert made["name"] == "mine" and made["bookmark"]
    assert client.named_queries(notes) == [{"name": "mine", "sql": made["sql"],
                                            "description": "my notes"}]
    alice = as_user(bound("alice", notes))
    got = alice.run_named_query(notes, "mine", {"least": 1, "tag": b"\x01"})
    assert got["columns"] == ["n", "tag"] and got["rows"] == [{"n": 4, "tag": b"\x01"}]
    with pytest.raises(InvalidRequest) as missing_arg:
        alice.run_named_query(notes, "mine")
    assert missing_arg.value.code == "INVALID_ARGUMENT"
    client.delete_named_query(notes, "mine")
    assert client.named_queries(notes) == []
    with pytest.raises(NotFound) as gone:
        client.run_named_query(notes, "mine", {"least": 0, "tag": 1})
    assert gone.value.code == "QUERY_NOT_FOUND"


def test_the_client_refuses_before_sending(client: Client, notes: str) -> None:
    for call in (lambda: client.update_rows(notes, "notes", {"title": "x"}, None),  # type: ignore[arg-type]
                 lambda: client.delete_rows(notes, "notes", None),  # type: ignore[arg-type]
                 lambda: client.rows(notes, "notes", where={"limit": 5}),  # not a filter
                 lambda: client.rows(notes, "notes", where={"id": []}),
                 lambda: client.rows(notes, "notes", where={"owner": "bob"}),  # eq.bob
                 lambda: client.rows(notes, "", where={}),
                 lambda: client.insert_rows(notes, "notes", []),
                 lambda: client.set_rules(notes, "notes"),  # nothing to set
                 lambda: client.run_named_query(notes, "", {})):
        with pytest.raises(ValueError):
            call()
    for call in (lambda: client.rows(notes, "notes", where={"body": b"x"}),
                 lambda: client.insert_rows(notes, "notes", [1]),  # type: ignore[list-item]
                 lambda: client.run_named_query(notes, "q", [1])):  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            call()


def test_async_client(node: InProcessNode, notes: str) -> None:
    async def go() -> None:
        async with AsyncClient(node.url, node.admin_token, database=notes,
                               transport=node.async_transport()) as c:
            page = await c.rows(None, "notes", where={"owner": "eq.bob"}, limit=2)
            assert len(page["rows"]) == 2 and page["next"]
            assert [r["id"] async for r in c.iter_rows(None, "notes", select="id",
                                                       where={"owner": "eq.bob"},
                                                       limit=2)] == [2, 4, 6, 8, 10]
            made = await c.insert_rows(None, "notes", {"owner": "eve", "body": b"\xff"})
            assert made[0]["body"] == b"\xff"
            assert (await c.update_rows(None, "notes", {"score": 1.5},
                                        {"id": made[0]["id"]}))[0]["score"] == 1.5
            assert len(await c.delete_rows(None, "notes", {"owner": "eq.eve"})) == 1
            assert (await c.table_schema(None, "notes"))["table"] == "notes"
            await c.set_rules(None, "notes", select="1")
            assert (await c.rules())["notes"]["select"] == "1"
            await c.set_named_query(None, "n", "SELECT count(*) AS n FROM notes")
            assert [q["name"] for q in await c.named_queries()] == ["n"]
            assert (await c.run_named_query(None, "n"))["rows"] == [{"n": 10}]
            await c.delete_named_query(None, "n")
            with pytest.raises(NotFound):
                await c.rows(None, "nope")

    asyncio.run(go())

