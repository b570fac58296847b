"""Webhooks in process, delivering to a real HTTP endpoint (tests/support/receiver.py):
signed as Standard Webhooks say, batched, in order, at least once through failures and
timeouts, dead letters and their replay, isolation between endpoints, the routes' errors."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.integration.api_support import error_of, make_token, ok, query
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess

FAST = {"webhook_retry_base": 0.05, "webhook_retry_max": 0.2, "webhook_timeout": 0.5}


@pytest.fixture
def node(start_server: Callable[..., ServerProcess]) -> Iterator[ServerProcess]:
    yield start_server(**FAST)


@pytest.fixture
def client(node: ServerProcess) -> Iterator[httpx.Client]:
    with node.client() as c:
        yield c


def make_db(client: httpx.Client, name: str = "shop") -> str:
    ok(client.post("/v1/databases", json={"name": name}), 201)
    ok(query(client, name, "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT)",
             "CREATE TABLE other(id INTEGER PRIMARY KEY)"))
    return name


def make_hook(client: httpx.Client, db: str, receiver: Receiver, **spec: Any) -> dict[str, Any]:
    made: dict[str, Any] = ok(client.post(f"/v1/databases/{db}/webhooks",
                                          json={"url": receiver.url, **spec}), 201)
    receiver.secret = made["secret"]
    return made


def insert(client: httpx.Client, db: str, first: int, count: int, table: str = "items") -> None:
    for n in range(first, first + count):
        ok(query(client, db, {"sql": f"INSERT INTO {table} VALUES (?, ?)"
                              if table == "items" else f"INSERT INTO {table} VALUES (?)",
                              "args": [n, f"item {n}"] if table == "items" else [n]}))


def in_order(events: list[dict[str, Any]]) -> list[int]:
    """The keys of the accepted events, once each, checking that a key seen again only
    comes back as part of a batch sent again (at least once, never reordered)."""
    seen: list[int] = []
    for event in events:
        key = event["key"][0]
        if key not in seen:
            assert not seen or key > seen[-1], f"{key} after {seen[-1]}: out of order"
            seen.append(key)
    return seen


def test_deliveries_are_signed_batched_and_in_order(client: httpx.Client) -> None:
    db = make_db(client)
    with Receiver() as receiver:
        made = make_hook(client, db, receiver, batch_size=5, tables=["items"])
        assert made["secret"].startswith("whsec_") and made["id"].startswith("wh_")
        insert(client, db, 1, 12)
        insert(client, db, 1, 3, table="other")  # not in the webhook's tables
        events = receiver.wait_for(12)
        assert in_order(events) == list(range(1, 13))
        assert receiver.bad_signatures == 0
        assert all(len(r.events) <= 5 for r in receiver.received)
        first = receiver.received[0]
        assert first.headers["webhook-id"] == first.events[-1]["cursor"]
        assert first.headers["content-type"] == "application/json"
        assert {e["table"] for e in events} == {"items"}
        assert events[0]["op"] == "insert" and events[0]["new"] == {"id": 1, "name": "item 1"}
    # the secret is shown once: never again
    shown = ok(client.get(f"/v1/databases/{db}/webhooks/{made['id']}"))
    assert "secret" not in shown and shown["url"] == receiver.url
    listed = ok(client.get(f"/v1/databases/{db}/webhooks"))["webhooks"]
    assert [h["id"] for h in listed] == [made["id"]] and "secret" not in listed[0]


def test_at_least_once_in_order_through_failures_and_timeouts(client: httpx.Client) -> None:
    db = make_db(client)
    with Receiver(fail=0.3, hang=0.05, hang_for=0.8, seed=7) as receiver:
        make_hook(client, db, receiver, batch_size=4, max_attempts=100)
        insert(client, db, 1, 60)
        events = receiver.wait_for(60, timeout=60)
        assert in_order(events) == list(range(1, 61))
        statuses = {r.status for r in receiver.received}
        assert {0, 500, 204} <= statuses  # it did fail and time out
        # a batch sent again is the same batch: same id, same events
        bodies: dict[str, bytes] = {}
        for r in receiver.received:
            assert bodies.setdefault(r.headers["webhook-id"], r.body) == r.body


def test_dead_letters_and_their_replay(client: httpx.Client) -> None:
    db = make_db(client)
    with Receiver() as receiver:
        receiver.down = True
        made = make_hook(client, db, receiver, batch_size=10, max_attempts=3)
        hook = f"/v1/databases/{db}/webhooks/{made['id']}"
        ok(query(client, db, *[f"INSERT INTO items VALUES ({n}, 'item {n}')"
                               for n in (1, 2, 3)]))  # one commit: one batch, one letter
        letters = wait_letters(client, hook, 1)
        assert letters[0]["attempts"] == 3 and letters[0]["error"] == "HTTP 503"
        dead = [e["key"][0] for letter in letters for e in letter["events"]]
        # the deliveries went on past it: new changes reach a working endpoint
        receiver.down = False
        insert(client, db, 100, 1)
        receiver.wait_for(1)
        assert [e["key"][0] for e in receiver.accepted] == [100]
        delivery = ok(client.get(hook))["delivery"]
        assert delivery["dead_letters"] >= 1 and delivery["last_error"] is None
        # replay one: delivered, then gone from the list
        answer = client.post(f"{hook}/dead-letters/{letters[0]['id']}/replay")
        assert answer.status_code == 202, answer.text
        receiver.wait_for(1 + len(letters[0]["events"]))
        assert sorted(e["key"][0] for e in receiver.accepted[1:]) == sorted(
            e["key"][0] for e in letters[0]["events"])
        deadline = time.monotonic() + 10
        while any(x["id"] == letters[0]["id"] for x in
                  ok(client.get(f"{hook}/dead-letters"))["dead_letters"]):
            assert time.monotonic() < deadline, "a replayed letter stayed"
            time.sleep(0.05)
        assert sorted(dead) == [1, 2, 3]
    # a letter deleted; unknown ones
    error_of(client.post(f"{hook}/dead-letters/000000000000001-abcdef/replay"), 404,
             "DEAD_LETTER_NOT_FOUND")
    error_of(client.delete(f"{hook}/dead-letters/nope"), 404, "DEAD_LETTER_NOT_FOUND")


def wait_letters(client: httpx.Client, hook: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        letters: list[dict[str, Any]] = ok(client.get(f"{hook}/dead-letters"))["dead_letters"]
        if len(letters) >= count:
            return letters
        assert time.monotonic() < deadline, f"{len(letters)} dead letters"
        time.sleep(0.05)


def test_a_dead_endpoint_does_not_slow_a_healthy_one(client: httpx.Client) -> None:
    db = make_db(client)
    with Receiver(hang=1.0, hang_for=1.0) as stuck, Receiver() as healthy:
        make_hook(client, db, stuck, max_attempts=100)
        make_hook(client, db, healthy)
        lags = []
        for n in range(1, 11):
            insert(client, db, n, 1)
            started = time.monotonic()
            healthy.wait_for(n)
            lags.append(time.monotonic() - started)
        assert in_order(healthy.accepted) == list(range(1, 11))
        assert max(lags) < 0.5 * 1.0 * 10  # far below what waiting on the stuck one costs
        assert len(stuck.received) >= 2  # it was tried, timed out, tried again


def test_a_restarted_node_resumes_from_the_store(start_server: Callable[..., ServerProcess]
                                                 ) -> None:
    node = start_server(**FAST)
    with Receiver() as receiver:
        with node.client() as client:
            db = make_db(client)
            made = make_hook(client, db, receiver)
            insert(client, db, 1, 5)
            receiver.wait_for(5)
        node.restart()  # type: ignore[attr-defined]
        with node.client() as client:
            hook = ok(client.get(f"/v1/databases/{db}/webhooks/{made['id']}"))
            assert hook["delivery"]["delivered"] == 5  # saved when it stopped
            insert(client, db, 6, 2)
            assert in_order(receiver.wait_for(7)) == list(range(1, 8))


def test_filters_and_since(client: httpx.Client) -> None:
    db = make_db(client)
    insert(client, db, 1, 1)
    cursor = ok(query(client, db, "INSERT INTO items VALUES (2, 'item 2')"))["meta"]["bookmark"]
    insert(client, db, 3, 2)
    ok(query(client, db, "UPDATE items SET name = 'x' WHERE id = 3", "DELETE FROM items "
             "WHERE id = 4"))
    with Receiver() as deletes, Receiver() as later:
        make_hook(client, db, deletes, ops=["delete"], since="2000-01-01T00:00:00Z")
        make_hook(client, db, later, since=cursor)
        assert [(e["op"], e["key"]) for e in deletes.wait_for(1)] == [("delete", [4])]
        assert [(e["op"], e["key"][0]) for e in later.wait_for(4)] == [
            ("insert", 3), ("insert", 4), ("update", 3), ("delete", 4)]
        assert deletes.accepted[0]["old"] == {"id": 4, "name": "item 4"}


def test_bad_requests_and_access(node: ServerProcess, client: httpx.Client) -> None:
    db = make_db(client)
    base = f"/v1/databases/{db}/webhooks"
    for body in ({"url": "ftp://x/y"}, {"url": "http://"}, {"url": "not a url"},
                 {"url": "http://h/", "ops": ["upsert"]}, {"url": "http://h/", "ops": []},
                 {"url": "http://h/", "batch_size": 0}, {"url": "http://h/", "tables": []},
                 {"url": "http://h/", "max_attempts": 1000}, {"url": "http://h/", "max_age": 0},
                 {"url": "http://h/", "what": 1}, {}):
        assert client.post(base, json=body).status_code == 400, body
    error_of(client.post(base, json={"url": "http://h/", "since": "garbage"}), 400,
             "INVALID_REQUEST")
    error_of(client.post(base, json={"url": "http://h/", "branch": "nope"}), 404,
             "BRANCH_NOT_FOUND")
    error_of(client.post("/v1/databases/nope/webhooks", json={"url": "http://h/"}), 404,
             "DATABASE_NOT_FOUND")
    error_of(client.get(f"{base}/wh_0123456789abcdef"), 404, "WEBHOOK_NOT_FOUND")
    error_of(client.delete(f"{base}/nope"), 404, "WEBHOOK_NOT_FOUND")
    _, writer = make_token(client, [db], "write")
    with node.client(writer) as w:
        error_of(w.post(base, json={"url": "http://h/"}), 403, "FORBIDDEN")
        error_of(w.get(base), 403, "FORBIDDEN")


def test_limits_and_deletion(start_server: Callable[..., ServerProcess]) -> None:
    node = start_server(max_webhooks=2, **FAST)
    with node.client() as client:
        db = make_db(client)
        base = f"/v1/databases/{db}/webhooks"
        first = ok(client.post(base, json={"url": "http://127.0.0.1:9/a"}), 201)
        ok(client.post(base, json={"url": "http://127.0.0.1:9/b"}), 201)
        error_of(client.post(base, json={"url": "http://127.0.0.1:9/c"}), 409, "TOO_MANY_WEBHOOKS")
        assert client.delete(f"{base}/{first['id']}").status_code == 204
        ok(client.post(base, json={"url": "http://127.0.0.1:9/c"}), 201)
        # a deleted database takes its webhooks along: the name made again has none
        assert client.delete(f"/v1/databases/{db}").status_code == 204
        make_db(client)
        assert ok(client.get(base))["webhooks"] == []


def test_a_node_without_a_store_has_no_webhooks(start_server: Callable[..., ServerProcess]
                                                ) -> None:
    """No commit log, no feed: the routes say so (the node serves on)."""
    node = start_server(store="none")
    with node.client() as client:
        ok(client.post("/v1/databases", json={"name": "local"}), 201)
        base = "/v1/databases/local/webhooks"
        error_of(client.post(base, json={"url": "http://127.0.0.1:9/"}), 409,
                 "HISTORY_DISABLED")
        error_of(client.get(base), 409, "HISTORY_DISABLED")
        ok(query(client, "local", "SELECT 1"))
