"""shoal.client's webhook methods (``Client`` and ``AsyncClient``) against the App in
process, delivering to a real endpoint (tests/support/receiver.py): make, list, show and
delete a webhook, its dead letters listed, replayed and discarded, where a call goes (the
client's database and branch), and the errors as the client's exception types."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest

from shoal.client import AsyncClient, AuthError, Client, ClientError, InvalidRequest, NotFound
from tests.support.inprocess import InProcessNode
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess

T = TypeVar("T")


@pytest.fixture
def node(server: ServerProcess) -> InProcessNode:
    assert isinstance(server, InProcessNode)
    return server


@pytest.fixture
def client(node: InProcessNode) -> Iterator[Client]:
    with Client(node.url, node.admin_token, transport=node.transport()) as c:
        yield c


def make_db(c: Client, new_db: Callable[[], str]) -> str:
    db = new_db()
    c.batch(["CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT)",
             "CREATE TABLE other(id INTEGER PRIMARY KEY)"], database=db)
    return db


def insert(c: Client, db: str, *keys: int) -> None:
    """One commit per key: with batch_size 1, one batch (one dead letter) each."""
    for key in keys:
        c.execute("INSERT INTO items VALUES (?, ?)", [key, f"item {key}"], database=db)


def eventually(probe: Callable[[], T], ok: Callable[[T], bool], what: str,
               timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if ok(found):
            return found
        assert time.monotonic() < deadline, f"{what}: {found}"
        time.sleep(0.05)


async def eventually_async(probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool],
                           what: str, timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = await probe()
        if ok(found):
            return found
        assert time.monotonic() < deadline, f"{what}: {found}"
        await asyncio.sleep(0.05)


def keys(events: list[dict[str, Any]]) -> list[int]:
    return sorted({e["key"][0] for e in events})


def test_create_list_show_and_delete(client: Client, new_db: Callable[[], str]) -> None:
    db = make_db(client, new_db)
    with Receiver() as receiver:
        made = client.create_webhook(db, receiver.url, tables="items", ops=["insert"],
                                     batch_size=5, max_attempts=3, max_age=60)
        receiver.secret = made["secret"]  # deliveries are verified with it from here on
        assert made["secret"].startswith("whsec_") and made["id"].startswith("wh_")
        assert (made["database"], made["branch"], made["url"]) == (db, "main", receiver.url)
        assert (made["tables"], made["ops"]) == (["items"], ["insert"])
        assert (made["batch_size"], made["max_attempts"], made["max_age"]) == (5, 3, 60)
        insert(client, db, 1, 2, 3)
        client.execute("INSERT INTO other VALUES (1)", database=db)  # filtered out
        assert keys(receiver.wait_for(3)) == [1, 2, 3]
        assert receiver.bad_signatures == 0
        listed = client.webhooks(db)
        assert [h["id"] for h in listed] == [made["id"]]
        assert "secret" not in listed[0] and "delivery" in listed[0]
        shown = eventually(lambda: client.webhook(db, made["id"]),
                           lambda h: h["delivery"]["delivered"] == 3, "delivered")
        assert "secret" not in shown
        delivery = shown["delivery"]
        assert delivery["retrying"] is False and delivery["last_error"] is None
        assert delivery["dead_letters"] == 0 and delivery["cursor"]
        assert client.dead_letters(db, made["id"]) == []
    client.delete_webhook(db, made["id"])
    assert client.webhooks(db) == []
    with pytest.raises(NotFound) as missing:
        client.webhook(db, made["id"])
    assert missing.value.code == "WEBHOOK_NOT_FOUND" and missing.value.status == 404
    with pytest.raises(NotFound):
        client.delete_webhook(db, made["id"])


def test_dead_letters_replayed_and_discarded(client: Client,
                                             new_db: Callable[[], str]) -> None:
    db = make_db(client, new_db)
    with Receiver() as receiver:
        receiver.down = True
        hook = client.create_webhook(db, receiver.url, batch_size=1, max_attempts=1)["id"]
        insert(client, db, 1, 2)
        letters = eventually(lambda: client.dead_letters(db, hook), lambda x: len(x) == 2,
                             "dead letters")
        assert [keys(x["events"]) for x in letters] == [[1], [2]]
        assert letters[0]["error"] == "HTTP 503" and letters[0]["attempts"] == 1
        assert not letters[0]["replaying"]
        assert client.webhook(db, hook)["delivery"]["dead_letters"] == 2
        client.delete_dead_letter(db, hook, letters[0]["id"])
        assert [x["id"] for x in client.dead_letters(db, hook)] == [letters[1]["id"]]
        receiver.down = False
        assert client.replay_dead_letters(db, hook, letters[1]["id"]) == [letters[1]["id"]]
        assert keys(receiver.wait_for(1)) == [2]  # the discarded one never comes
        eventually(lambda: client.dead_letters(db, hook), lambda x: x == [],
                   "a replayed letter left")
        assert client.replay_dead_letters(db, hook) == []  # all of them: none left
        # a replay of all of them
        receiver.down = True
        insert(client, db, 3)
        late = eventually(lambda: client.dead_letters(db, hook), lambda x: len(x) == 1,
                          "another dead letter")
        receiver.down = False
        assert client.replay_dead_letters(db, hook) == [late[0]["id"]]
        assert keys(receiver.wait_for(2)) == [2, 3]
    for call in (lambda: client.delete_dead_letter(db, hook, letters[0]["id"]),  # gone
                 lambda: client.replay_dead_letters(db, hook, "000000000000001-abcdef")):
        with pytest.raises(NotFound) as gone:
            call()
        assert gone.value.code == "DEAD_LETTER_NOT_FOUND"
    client.delete_webhook(db, hook)


def test_calls_go_to_the_clients_database_and_branch(node: InProcessNode, client: Client,
                                                     new_db: Callable[[], str]) -> None:
    db = make_db(client, new_db)
    insert(client, db, 1)
    client.create_branch("preview", database=db)
    with Client(f"{node.url}/db/{db}/branches/preview", node.admin_token,
                transport=node.transport()) as preview, Receiver() as receiver:
        # since: a time (a datetime with its zone): the branch's changes after it (its
        # own: main's key 1 is before the fork)
        preview.execute("INSERT INTO items VALUES (2, 'on preview')")
        made = preview.create_webhook(None, receiver.url,
                                      since=datetime(2000, 1, 1, tzinfo=UTC))
        assert (made["database"], made["branch"]) == (db, "preview")
        receiver.secret = made["secret"]
        preview.execute("INSERT INTO items VALUES (3, 'on preview')")
        events = receiver.wait_for(2)
        assert keys(events) == [2, 3]
        assert {json.loads(r.body)["data"]["branch"] for r in receiver.received} == {"preview"}
        on_main = preview.create_webhook(db, receiver.url, branch="main")
        assert on_main["branch"] == "main"
        assert {h["id"] for h in preview.webhooks()} == {made["id"], on_main["id"]}
        assert preview.webhook(None, made["id"])["branch"] == "preview"
        preview.delete_webhook(None, made["id"])
        client.delete_webhook(db, on_main["id"])
        assert client.webhooks(db) == []


def test_errors_map_to_the_clients_types(start_server: Callable[..., ServerProcess],
                                         node: InProcessNode, client: Client,
                                         new_db: Callable[[], str]) -> None:
    db = make_db(client, new_db)
    for spec in ({"url": "ftp://x/y"}, {"url": "http://h/", "ops": "upsert"},
                 {"url": "http://h/", "batch_size": 0}, {"url": "http://h/", "max_age": 0},
                 {"url": "http://h/", "since": "garbage"}):
        with pytest.raises(InvalidRequest) as bad:
            client.create_webhook(db, **spec)
        assert bad.value.code == "INVALID_REQUEST" and bad.value.status == 400, spec
    with pytest.raises(NotFound) as branch:
        client.create_webhook(db, "http://h/", branch="nope")
    assert branch.value.code == "BRANCH_NOT_FOUND"
    with pytest.raises(NotFound) as database:
        client.webhooks("nope")
    assert database.value.code == "DATABASE_NOT_FOUND"
    for call in (lambda: client.create_webhook(db, "http://h/", tables=[]),
                 lambda: client.create_webhook(db, "http://h/",
                                               since=datetime(2000, 1, 1)),  # no zone
                 lambda: client.webhook(db, ""), lambda: client.delete_webhook(db, ""),
                 lambda: client.replay_dead_letters(db, "wh_x", ""),  # not "all of them"
                 lambda: client.delete_dead_letter(db, "wh_x", "")):
        with pytest.raises(ValueError):
            call()
    writer = client.create_token([db], "write")["token"]
    with Client(node.url, writer, transport=node.transport()) as w:
        with pytest.raises(AuthError) as denied:
            w.webhooks(db)
        assert denied.value.code == "FORBIDDEN"
    small = start_server(max_webhooks=1)
    assert isinstance(small, InProcessNode)
    with Client(small.url, small.admin_token, transport=small.transport()) as c:
        c.create_database("one")
        c.create_webhook("one", "http://127.0.0.1:9/a")
        with pytest.raises(ClientError) as full:
            c.create_webhook("one", "http://127.0.0.1:9/b")
        assert full.value.code == "TOO_MANY_WEBHOOKS" and full.value.status == 409


def test_async_client_webhooks(node: InProcessNode, client: Client,
                               new_db: Callable[[], str]) -> None:
    db = make_db(client, new_db)

    async def go(receiver: Receiver) -> None:
        async with AsyncClient(node.url, node.admin_token, database=db,
                               transport=node.async_transport()) as c:
            made = await c.create_webhook(None, receiver.url, tables=["items"], batch_size=1,
                                          max_attempts=1, max_age=30, since="now")
            receiver.secret = made["secret"]
            assert made["secret"].startswith("whsec_") and made["branch"] == "main"
            assert [h["id"] for h in await c.webhooks()] == [made["id"]]
            hook = made["id"]
            receiver.down = True
            await c.batch([("INSERT INTO items VALUES (?, ?)", [1, "a"])])
            await c.batch([("INSERT INTO items VALUES (?, ?)", [2, "b"])])
            letters = await eventually_async(lambda: c.dead_letters(None, hook),
                                             lambda x: len(x) == 2, "dead letters")
            shown = await c.webhook(db, hook)
            assert shown["delivery"]["dead_letters"] == 2 and "secret" not in shown
            await c.delete_dead_letter(None, hook, letters[1]["id"])
            receiver.down = False
            assert await c.replay_dead_letters(None, hook) == [letters[0]["id"]]
            await eventually_async(lambda: c.dead_letters(db, hook), lambda x: x == [],
                                   "a replayed letter left")
            assert keys(receiver.accepted) == [1]
            with pytest.raises(NotFound):
                await c.replay_dead_letters(db, hook, letters[1]["id"])
            await c.execute("INSERT INTO items VALUES (3, 'c')")
            await asyncio.to_thread(receiver.wait_for, 2)
            await c.delete_webhook(None, hook)
            assert await c.webhooks(db) == []
            with pytest.raises(NotFound) as gone:
                await c.webhook(db, hook)
            assert gone.value.code == "WEBHOOK_NOT_FOUND"
            with pytest.raises(InvalidRequest):
                await c.create_webhook(db, "http://h/", ops=["upsert"])

    with Receiver() as receiver:
        asyncio.run(go(receiver))
    assert keys(receiver.accepted) == [1, 3]
