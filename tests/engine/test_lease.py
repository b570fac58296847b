"""The object store's lease, on a memory store with a hand-driven clock.

Each node is a Lease; the clock only moves when a test moves it, so "the holder stopped
renewing for ttl" is exact. A store wrapper lets a test act between a waiting node's
polls (a live holder renewing) or lose a write's answer after it landed.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from shoal.engine.lease import HELD_FRACTION, KEY, Lease
from shoal.errors import ShoalError
from shoal.storage.base import Blob, PreconditionFailed
from shoal.storage.fenced import Fenced, FencedStore
from shoal.storage.memory import MemoryStore
from shoal.storage.retry import RetryingStore

TTL = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Hooked(MemoryStore):
    """A memory store that runs ``on_get`` before each read and can lose put answers."""

    def __init__(self) -> None:
        super().__init__()
        self.on_get: Callable[[], None] = lambda: None
        self.lose_answers = 0

    def get(self, key: str) -> Blob:
        self.on_get()
        return super().get(key)

    def put(self, key: str, data: bytes, *, if_none_match: str | None = None,
            if_match: str | None = None) -> str:
        etag = super().put(key, data, if_none_match=if_none_match, if_match=if_match)
        if self.lose_answers:
            self.lose_answers -= 1
            raise TimeoutError("the answer was lost; the write landed")
        return etag


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> Hooked:
    return Hooked()


def node(store: Hooked, clock: Clock, name: str, lost: list[str] | None = None) -> Lease:
    return Lease(store, name, TTL, (lost if lost is not None else []).append, clock)


def test_a_free_store_is_taken_at_once_and_written_with_the_holder(
        store: Hooked, clock: Clock) -> None:
    a = node(store, clock, "a")
    a.acquire(wait=0, poll=0)
    assert a.held() and a.previous is None
    record = json.loads(store.get(KEY).data)
    assert (record["node"], record["seq"], record["released"]) == ("a", 1, False)
    a.check()


def test_the_lease_lapses_without_renewal_and_comes_back_with_one(
        store: Hooked, clock: Clock) -> None:
    a = node(store, clock, "a")
    a.acquire(wait=0, poll=0)
    clock.now += TTL * HELD_FRACTION - 0.01
    assert a.held()
    clock.now += 0.02
    assert not a.held()
    with pytest.raises(Fenced, match="has not been renewed"):
        a.check()
    a.renew()
    assert a.held()


def test_a_live_holder_keeps_the_store_and_the_other_node_gives_up(
        store: Hooked, clock: Clock) -> None:
    a = node(store, clock, "a")
    a.acquire(wait=0, poll=0)

    def tick() -> None:  # between b's polls, time passes and a renews
        clock.now += 1.0
        a.renew()

    store.on_get = tick
    b = node(store, clock, "b")
    with pytest.raises(ShoalError) as err:
        b.acquire(wait=3 * TTL, poll=0)
    assert err.value.code == "STORE_IN_USE" and "node a" in err.value.message
    assert a.held() and json.loads(store.get(KEY).data)["node"] == "a"


def test_a_dead_holder_is_taken_over_after_ttl_of_the_waiters_own_clock(
        store: Hooked, clock: Clock) -> None:
    a = node(store, clock, "a")
    a.acquire(wait=0, poll=0)
    polls: list[float] = []

    def tick() -> None:
        polls.append(clock.now)
        clock.now += 1.0

    store.on_get = tick
    b = node(store, clock, "b")
    b.acquire(wait=3 * TTL, poll=0)
    assert b.held() and b.previous == "a"
    assert clock.now - polls[0] >= TTL  # not before a full ttl without a renewal
    assert not a.held()  # a's own view had lapsed already, before b took it
    lost: list[str] = []
    a.on_lost = lost.append
    a.renew()  # a comes back: it finds b's lease and reports the loss
    assert a.lost and "node b" in lost[0]
    with pytest.raises(Fenced, match="another node took it"):
        a.check()


def test_a_released_lease_is_taken_at_once_and_names_the_previous_holder(
        store: Hooked, clock: Clock) -> None:
    a = node(store, clock, "a")
    a.acquire(wait=0, poll=0)
    a.release()
    assert not a.held() and json.loads(store.get(KEY).data)["released"]
    b = node(store, clock, "b")
    b.acquire(wait=0, poll=0)
    assert b.held() and b.previous == "a"


def test_a_node_restarting_on_its_own_disk_takes_its_lease_at_once(
        store: Hooked, clock: Clock) -> None:
    node(store, clock, "a").acquire(wait=0, poll=0)  # then the process dies (no release)
    again = node(store, clock, "a")
    again.acquire(wait=0, poll=0)
    assert again.held() and again.previous == "a"


def test_a_copy_of_the_disk_on_another_host_waits_like_any_other_node(
        store: Hooked, clock: Clock) -> None:
    store.put(KEY, json.dumps({"node": "a", "seq": 7, "ttl": TTL, "host": "elsewhere",
                               "pid": 1, "released": False}).encode())
    store.on_get = lambda: setattr(clock, "now", clock.now + 1.0)
    clone = node(store, clock, "a")
    with pytest.raises(ShoalError) as err:
        clone.acquire(wait=TTL / 2, poll=0)
    assert err.value.code == "STORE_IN_USE" and "host elsewhere" in err.value.message


def test_a_renewal_whose_answer_was_lost_keeps_the_lease(
        store: Hooked, clock: Clock) -> None:
    a = node(store, clock, "a")
    a.acquire(wait=0, poll=0)
    store.lose_answers = 1
    with pytest.raises(TimeoutError):
        a.renew()
    a.renew()  # its condition fails on the etag it never learned; the seq says it landed
    assert a.held() and not a.lost
    a.renew()
    assert json.loads(store.get(KEY).data)["seq"] == 4


def test_a_renewal_cut_short_is_written_again(store: Hooked, clock: Clock) -> None:
    a = node(store, clock, "a")
    a.acquire(wait=0, poll=0)
    store.put(KEY, b'{"node": "a", "se')  # what a crashed write leaves behind
    a.renew()
    assert a.held() and json.loads(store.get(KEY).data)["node"] == "a"


def test_an_unreadable_lease_is_waited_out_like_a_silent_holder(
        store: Hooked, clock: Clock) -> None:
    store.put(KEY, b"garbage")
    store.on_get = lambda: setattr(clock, "now", clock.now + 1.0)
    b = node(store, clock, "b")
    with pytest.raises(ShoalError) as err:
        b.acquire(wait=TTL / 2, poll=0)
    assert err.value.code == "STORE_IN_USE" and "an unreadable lease" in err.value.message
    b.acquire(wait=2 * TTL, poll=0)
    assert b.held() and b.previous == "?"


def test_a_store_that_keeps_failing_is_storage_unavailable(clock: Clock) -> None:
    class Down(MemoryStore):
        def get(self, key: str) -> Blob:
            clock.now += 1.0
            raise ConnectionError("no route to host")

    lease = Lease(Down(), "a", TTL, lambda why: None, clock)
    with pytest.raises(ShoalError) as err:
        lease.acquire(wait=3, poll=0)
    assert err.value.code == "STORAGE_UNAVAILABLE"


def test_fenced_writes_are_refused_reads_pass_and_nothing_is_retried() -> None:
    inner = MemoryStore()
    inner.put("k", b"v")
    allowed = [False]
    calls: list[str] = []

    def check() -> None:
        calls.append("check")
        if not allowed[0]:
            raise Fenced("no lease")

    store = RetryingStore(FencedStore(inner, check))
    assert store.get("k").data == b"v" and [i.key for i in store.list("")] == ["k"]
    with pytest.raises(Fenced):
        store.put("k2", b"v")
    with pytest.raises(Fenced):
        store.delete("k")
    assert calls == ["check", "check"]  # refused once each, not retried
    allowed[0] = True
    store.put("k2", b"v")
    with pytest.raises(PreconditionFailed):
        store.put("k2", b"w", if_none_match="*")
