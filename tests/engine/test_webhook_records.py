"""Webhooks' records in the store (engine/webhooks.py): definitions, the delivery state's
compare-and-swap, dead letters; and the delivery's pure parts (backoff, the body)."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from typing import Any

import pytest

from shoal.engine.webhooks import (
    DeadLetter,
    Delivery,
    StateMoved,
    Webhook,
    WebhookRecords,
    WebhookSpec,
    new_id,
    new_secret,
)
from shoal.server.delivery import backoff, letter_id, payload
from shoal.storage.base import NotFound
from shoal.storage.memory import MemoryStore


def hook(db: str = "shop", hook_id: str | None = None, **fields: object) -> Webhook:
    base = Webhook(hook_id or new_id(), db, "main", "https://example.com/h", ("t",), None,
                   10, 3, 60.0, 1.5, "inc1", new_secret())
    return replace(base, **fields)  # type: ignore[arg-type]


@pytest.fixture
def records() -> WebhookRecords:
    return WebhookRecords(MemoryStore())


def test_ids_and_secrets_have_their_forms() -> None:
    assert new_id().startswith("wh_") and len(new_id()) == 19 and new_id() != new_id()
    secret = new_secret()
    assert secret.startswith("whsec_") and len(secret) == 6 + 32
    import standardwebhooks
    standardwebhooks.Webhook(secret)  # the library takes it


def test_a_webhook_is_stored_whole_and_listed_by_database(records: WebhookRecords) -> None:
    a, b, c = hook("shop"), hook("shop"), hook("other", ops=("insert", "delete"))
    for h in (a, b, c):
        records.create(h, Delivery("cursor-0"))
    assert records.get("shop", a.id) == a
    assert records.get("other", c.id) == c and records.get("shop", c.id) is None
    assert sorted(h.id for h in records.all("shop")) == sorted([a.id, b.id])
    assert {h.id for h in records.all()} == {a.id, b.id, c.id}
    assert records.keys() == {("shop", a.id), ("shop", b.id), ("other", c.id)}
    state = records.state("shop", a.id)
    assert state is not None and state.cursor == "cursor-0" and state.etag
    public = a.public()
    assert "secret" not in public and "incarnation" not in public
    assert public["tables"] == ["t"] and public["ops"] is None
    assert c.public()["ops"] == ["insert", "delete"]


def test_creating_an_existing_webhook_fails(records: WebhookRecords) -> None:
    h = hook()
    records.create(h, Delivery("c"))
    with pytest.raises(Exception):  # noqa: B017 (the store's lost condition, mapped)
        records.create(h, Delivery("c"))


def test_the_state_is_compare_and_swap(records: WebhookRecords) -> None:
    h = hook()
    records.create(h, Delivery("c0"))
    first = records.state(h.database, h.id)
    assert first is not None
    saved = records.save(h.database, h.id, replace(first, cursor="c1", delivered=5))
    assert saved.etag != first.etag
    again = records.state(h.database, h.id)
    assert again is not None and (again.cursor, again.delivered) == ("c1", 5)
    with pytest.raises(StateMoved):  # written from a stale read
        records.save(h.database, h.id, replace(first, cursor="stale"))
    records.delete(h.database, h.id)
    with pytest.raises(StateMoved):  # deleted meanwhile
        records.save(h.database, h.id, saved)
    assert records.state(h.database, h.id) is None and records.get(h.database, h.id) is None


def test_dead_letters_oldest_first_and_deleted_with_the_webhook(
        records: WebhookRecords) -> None:
    h, other = hook(), hook()
    for x in (h, other):
        records.create(x, Delivery("c"))
    letters = [DeadLetter(letter_id(1000.0 + n), f"s{n}", f"u{n}", [{"n": n}], 3, 999.0,
                          1000.0 + n, "HTTP 500") for n in range(3)]
    for letter in reversed(letters):
        records.add_letter(h.database, h.id, letter)
    records.add_letter(other.database, other.id, letters[0])
    assert records.letters(h.database, h.id) == letters
    marked = replace(letters[1], replay=True)
    records.add_letter(h.database, h.id, marked)  # replaced in place
    assert records.letters(h.database, h.id)[1].replay
    assert records.delete_letter(h.database, h.id, letters[0].id) is True
    assert records.delete_letter(h.database, h.id, letters[0].id) is False
    assert [x.id for x in records.letters(h.database, h.id)] == [letters[1].id, letters[2].id]
    records.delete(h.database, h.id)
    assert records.letters(h.database, h.id) == []
    assert len(records.letters(other.database, other.id)) == 1  # another's untouched


def test_letter_ids_sort_by_time() -> None:
    ids = [letter_id(t) for t in (5.0, 10.0, 1000.5, 1e9)]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert ids[0].startswith("000000000005000-")


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    random.seed(1)
    for attempts, full in ((1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (12, 100.0), (500, 100.0)):
        waits = [backoff(attempts, 1.0, 100.0) for _ in range(200)]
        assert all(full / 2 <= w <= full for w in waits), (attempts, min(waits), max(waits))
        assert max(waits) - min(waits) > full / 4  # jittered, not fixed


def test_the_body_is_the_same_bytes_for_the_same_batch() -> None:
    h = hook()
    events = [{"cursor": "a", "at": "2026-12-04T10:00:00.000Z"},
              {"cursor": "b", "at": "2026-12-04T10:00:01.000Z"}]
    body = payload(h, events)
    assert payload(h, [dict(e) for e in events]) == body
    assert json.loads(body) == {"type": "changes", "timestamp": "2026-12-04T10:00:01.000Z",
                                "data": {"webhook": h.id, "database": "shop",
                                         "branch": "main", "events": events}}


def test_where_the_records_live_is_pinned() -> None:
    """Object names are a format: another version's node must find them."""
    store = MemoryStore()
    records = WebhookRecords(store)
    h = hook("shop", "wh_0123456789abcdef")
    records.create(h, Delivery("c"))
    records.add_letter("shop", h.id, DeadLetter("000000000001000-abcdef", "s", "u", [], 1,
                                                None, 1.0, "e"))
    assert sorted(i.key for i in store.list("")) == [
        "webhooks/dead/shop/wh_0123456789abcdef/000000000001000-abcdef.json",
        "webhooks/defs/shop/wh_0123456789abcdef.json",
        "webhooks/state/shop/wh_0123456789abcdef.json"]


def test_defaults_are_the_documented_ones() -> None:
    spec = WebhookSpec("https://example.com/")
    assert (spec.branch, spec.tables, spec.ops, spec.batch_size, spec.max_attempts,
            spec.max_age, spec.since) == ("main", None, None, 100, 16, 86400.0, None)
    d = Delivery("c")
    assert (d.until, d.attempts, d.first_attempt, d.next_attempt, d.last_error,
            d.last_attempt, d.last_success, d.delivered, d.dead_letters) == (
        None, 0, None, None, None, None, None, 0, 0)
    assert DeadLetter("i", "s", "u", [], 1, None, 1.0, "e").replay is False


def test_records_of_another_version_or_damaged_ones_are_read_or_skipped() -> None:
    store = MemoryStore()
    records = WebhookRecords(store)
    h = hook("shop", "wh_0123456789abcdef")
    records.create(h, Delivery("c"))
    key = "webhooks/defs/shop/wh_0123456789abcdef.json"
    raw = json.loads(store.get(key).data) | {"added_later": 1}
    store.put(key, json.dumps(raw).encode())
    assert records.get("shop", h.id) == h  # a field it does not know is left aside
    state_key = "webhooks/state/shop/wh_0123456789abcdef.json"
    store.put(state_key, json.dumps(json.loads(store.get(state_key).data)
                                    | {"added_later": 1}).encode())
    state = records.state("shop", h.id)
    assert state is not None and state.cursor == "c"
    store.put("webhooks/defs/shop/wh_ffffffffffffffff.json", b"{not json")
    store.put("webhooks/defs/shop/wh_eeeeeeeeeeeeeeee.json", b'{"id": 1}')
    assert records.get("shop", "wh_ffffffffffffffff") is None
    assert [x.id for x in records.all("shop")] == [h.id]  # the damaged ones skipped
    assert records.get("shop", "wh_dddddddddddddddd") is None  # none there
    dead = "webhooks/dead/shop/wh_0123456789abcdef/"
    store.put(dead + "000000000000001-aaaaaa.json", b"[1, 2")
    store.put(dead + "000000000000002-aaaaaa.json", b'{"id": "x"}')
    records.add_letter("shop", h.id, DeadLetter("000000000000003-aaaaaa", "s", "u", [], 1,
                                                None, 1.0, "e"))
    assert [x.id for x in records.letters("shop", h.id)] == ["000000000000003-aaaaaa"]


def test_the_secret_stays_out_of_repr_and_etags_out_of_equality() -> None:
    h = hook()
    assert h.secret not in repr(h)  # a webhook in a log line or a traceback
    assert Delivery("c", etag="a") == Delivery("c", etag="b")


class Vanishing(MemoryStore):
    """A store in which an object listed is gone when read (deleted in between)."""

    def get(self, key: str) -> Any:
        if "vanish" in key:
            raise NotFound(key)
        return super().get(key)


def test_a_record_deleted_between_listing_and_reading_is_skipped() -> None:
    store = Vanishing()
    records = WebhookRecords(store)
    h = hook("shop", "wh_0123456789abcdef")
    records.create(h, Delivery("c"))
    store.put("webhooks/defs/shop/vanish.json", b"{}")
    assert [x.id for x in records.all("shop")] == [h.id]
    store.put(f"webhooks/dead/shop/{h.id}/vanish.json", b"{}")
    assert records.letters("shop", h.id) == []


def test_dead_letters_are_read_a_page_at_a_time(records: WebhookRecords) -> None:
    h = hook()
    records.create(h, Delivery("c"))
    ids = [letter_id(1000.0 + n) for n in range(5)]
    for n, i in enumerate(ids):
        records.add_letter(h.database, h.id, DeadLetter(i, "s", "u", [{"n": n}], 1, None,
                                                        1.0, "e"))
    assert [x.id for x in records.letters(h.database, h.id, limit=2)] == ids[:2]
    assert [x.id for x in records.letters(h.database, h.id, ids[1], 2)] == ids[2:4]
    assert [x.id for x in records.letters(h.database, h.id, ids[4])] == []
    assert records.letter(h.database, h.id, ids[3]) == records.letters(
        h.database, h.id, ids[2], 1)[0]
    assert records.letter(h.database, h.id, "000000000000000-000000") is None
    assert records.keys(h.database) == {(h.database, h.id)} and records.keys("none") == set()
