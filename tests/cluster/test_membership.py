"""Cluster membership through the object store, on a memory store and a hand-driven clock.

Each node is a Membership on the same store; the clock only moves when a test moves it
(``Clock.wait`` moves it by a poll's seconds, for `join`), so "not renewed for ttl" is
exact. Rounds are run by hand with `round`, except in the tests of the thread. The store
counts its calls, can fail, take time or lose a put's answer after the put landed, and
stamps each put with the next of 1, 2, 3...: a modification time that is no clock at all.

The values checked are written out (the key, the JSON's fields, the cadence of a ttl of
8 s: a round every 2 s, a retry 0.4 s after a failure, held for 6 s after a write's start,
a silent member gone after 8 s and its record deleted an hour later).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.cluster import Member, Membership
from shoal.errors import ShoalError
from shoal.storage import open_store
from shoal.storage.base import Blob, NotFound, ObjectInfo, ObjectStore, StorageUnavailable
from shoal.storage.fenced import Fenced
from shoal.storage.memory import MemoryStore

TTL = 8.0
HOUR = 3600.0
HOST, PID = socket.gethostname(), os.getpid()


def key(node: str) -> str:
    return f"cluster/nodes/{node}.json"


def url(node: str, port: int = 8080) -> str:
    return f"http://{node}.internal:{port}"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """`join`'s polls: the time passes at once."""
        if event.is_set():
            return True
        self.now += seconds
        return False


class Store(MemoryStore):
    """A memory store that counts its calls, can fail puts and listings, make puts take
    time, lose a put's answer after it landed, and run ``on_get`` before each read."""

    def __init__(self, clock: Clock) -> None:
        stamps = itertools.count(1)
        super().__init__(clock=lambda: float(next(stamps)))
        self.time = clock
        self.calls: Counter[str] = Counter()
        self.put_takes = 0.0
        self.fail_puts = 0
        self.fail_gets = 0
        self.fail_lists = 0
        self.lose_answers = 0
        self.not_found = False  # If-Match on a missing key answers NotFound, as S3 may
        self.on_get: Callable[[], None] | None = None
        self.before_put: list[Callable[[], None]] = []  # one per put, in order

    def get(self, key: str) -> Blob:
        self.calls["get"] += 1
        if self.on_get is not None:
            self.on_get()
        if self.fail_gets:
            self.fail_gets -= 1
            raise StorageUnavailable(key, "the store is down")
        return super().get(key)

    def put(self, key: str, data: bytes, *, if_none_match: str | None = None,
            if_match: str | None = None) -> str:
        self.calls["put"] += 1
        if self.before_put:
            self.before_put.pop(0)()
        self.time.now += self.put_takes
        if self.fail_puts:
            self.fail_puts -= 1
            raise StorageUnavailable(key, "the store is down")
        if self.not_found and if_match is not None and key not in self._objects:
            raise NotFound(key)
        etag = super().put(key, data, if_none_match=if_none_match, if_match=if_match)
        if self.lose_answers:
            self.lose_answers -= 1
            raise StorageUnavailable(key, "the answer was lost; the write landed")
        return etag

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        self.calls["list"] += 1
        if self.fail_lists:
            self.fail_lists -= 1
            raise StorageUnavailable(prefix, "the store is down")
        return super().list(prefix, start_after=start_after)

    def delete(self, key: str) -> None:
        self.calls["delete"] += 1
        super().delete(key)

    def record(self, node: str) -> dict[str, object]:
        raw = json.loads(MemoryStore.get(self, key(node)).data)
        assert isinstance(raw, dict)
        return raw

    def plant(self, node: str, at: str | None = None, **fields: object) -> None:
        """Another process's write (unconditional, not counted), at ``key(node)`` unless
        ``at`` names another key."""
        record = {"node": node, "url": url(node, 9999), "host": "elsewhere", "pid": 7,
                  "seq": 7, "ttl": TTL, "released": False, "started": 1.5, **fields}
        MemoryStore.put(self, at or key(node), json.dumps(record).encode())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> Store:
    return Store(clock)


def node(store: ObjectStore, clock: Clock, name: str, port: int = 8080,
         lost: list[str] | None = None, wait: Callable[[threading.Event, float], bool] |
         None = None, on_change: Callable[[], None] | None = None) -> Membership:
    return Membership(store, name, url(name, port), TTL,
                      (lost if lost is not None else []).append, clock,
                      wait or clock.wait, on_change)


def joined(store: ObjectStore, clock: Clock, name: str, **kwargs: Any) -> Membership:
    member = node(store, clock, name, **kwargs)
    member.join(wait=0)
    return member


def me(name: str, port: int = 8080) -> Member:
    return Member(name, url(name, port), HOST, PID, False)


# -- taking the record ---------------------------------------------------------------------
def test_joining_an_empty_store_writes_the_record_and_holds_it(
        store: Store, clock: Clock) -> None:
    a = joined(store, clock, "a")
    record = store.record("a")
    assert set(record) == {"node", "url", "host", "pid", "seq", "ttl", "released", "started"}
    assert (record["node"], record["url"], record["host"], record["pid"], record["seq"],
            record["ttl"], record["released"]) == ("a", url("a"), HOST, PID, 1, TTL, False)
    assert isinstance(record["started"], float) and abs(record["started"] - time.time()) < 60
    assert a.held() and not a.lost and a.members() == {"a": me("a")}
    a.check()
    assert store.calls == {"get": 1, "put": 1, "list": 1}


def test_a_restart_on_the_same_host_takes_the_record_at_once_and_the_others_see_its_url(
        store: Store, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    a_lost: list[str] = []
    a = joined(store, clock, "a", port=8081, lost=a_lost)
    b = joined(store, clock, "b")
    assert b.members()["a"] == me("a", 8081)
    old_size = len(MemoryStore.get(store, key("a")).data)
    with caplog.at_level(logging.WARNING, "shoal.cluster"):
        again = joined(store, clock, "a", port=8082)  # the process died; no leave
    assert caplog.records == []  # nothing waited for, nothing taken over
    assert again.held() and store.record("a")["seq"] == 2
    assert len(MemoryStore.get(store, key("a")).data) > old_size  # the others notice
    b.refresh()
    assert b.members()["a"] == me("a", 8082)  # a URL of the same length, read again
    a.round()
    assert a.lost and not a.held() and len(a_lost) == 1
    assert f"node a (host {HOST}, pid {PID})" in a_lost[0]


def test_a_released_record_is_taken_at_once_and_is_no_member(
        store: Store, clock: Clock) -> None:
    store.plant("a", released=True)
    store.plant("c", released=True)
    a = joined(store, clock, "a")
    assert a.held() and store.record("a")["seq"] == 8
    assert a.members() == {"a": me("a")}


def test_a_copy_on_another_host_is_waited_out_while_it_renews(
        store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    host = ["elsewhere"]
    monkeypatch.setattr(socket, "gethostname", lambda: host[0])
    far = joined(store, clock, "a")
    host[0] = "here"

    def far_renews() -> None:  # between the copy's polls, time passes and the original renews
        host[0] = "elsewhere"
        far.renew()
        host[0] = "here"

    store.on_get = far_renews
    copy = node(store, clock, "a")
    start = clock.now
    with caplog.at_level(logging.WARNING, "shoal.cluster"), \
            pytest.raises(ShoalError) as err:
        copy.join(wait=3 * TTL)
    assert err.value.code == "STORE_IN_USE" and "host elsewhere" in err.value.message
    assert clock.now - start == 3 * TTL
    assert [r.getMessage() for r in caplog.records] == [
        f"the cluster record {key('a')} is renewed by node a (host elsewhere, pid {PID}); "
        f"waiting for it to stop (8 s without renewal)"]
    assert not copy.held() and store.record("a")["host"] == "elsewhere" and not far.lost


def test_a_silent_copy_on_another_host_is_taken_over_after_ttl(
        store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    host = ["elsewhere"]
    monkeypatch.setattr(socket, "gethostname", lambda: host[0])
    far_lost: list[str] = []
    far = joined(store, clock, "a", lost=far_lost)
    host[0] = "here"
    copy = node(store, clock, "a")
    start = clock.now
    store.fail_gets = 1  # a failure on the way is not what it reports
    with pytest.raises(ShoalError) as err:
        copy.join(wait=TTL / 2)
    assert err.value.code == "STORE_IN_USE" and clock.now - start == TTL / 2
    start = clock.now
    with caplog.at_level(logging.WARNING, "shoal.cluster"):
        copy.join(wait=2 * TTL)
    assert clock.now - start == TTL  # a full ttl of its own clock, not one poll more
    assert "took over the cluster record" in caplog.records[-1].getMessage()
    assert copy.held() and store.record("a")["host"] == "here"
    host[0] = "elsewhere"
    far.renew()
    assert far.lost and "host here" in far_lost[0]


def test_an_unreadable_record_of_this_id_is_waited_out_then_taken(
        store: Store, clock: Clock) -> None:
    MemoryStore.put(store, key("a"), b'{"node": "a", "se')
    a = node(store, clock, "a")
    with pytest.raises(ShoalError) as err:
        a.join(wait=TTL / 2)
    assert err.value.code == "STORE_IN_USE" and "an unreadable record" in err.value.message
    start = clock.now
    a.join(wait=2 * TTL)
    assert clock.now - start == TTL and a.held() and store.record("a")["seq"] == 1


def test_a_store_that_keeps_failing_is_storage_unavailable(
        store: Store, clock: Clock) -> None:
    store.fail_lists = 100
    start = clock.now
    with pytest.raises(ShoalError) as err:
        node(store, clock, "a").join(wait=3)
    assert err.value.code == "STORAGE_UNAVAILABLE" and key("a") in err.value.message
    assert clock.now - start == 3


def test_a_store_that_fails_for_a_while_is_tried_again(store: Store, clock: Clock) -> None:
    store.fail_puts = 1
    store.fail_lists = 1
    start = clock.now
    a = node(store, clock, "a")
    a.join(wait=5)
    assert a.held() and a.members() == {"a": me("a")} and clock.now - start == 2
    assert store.calls["put"] == 2 and store.calls["list"] == 2


# -- the others ----------------------------------------------------------------------------
def test_two_nodes_see_each_other_after_a_listing(store: Store, clock: Clock) -> None:
    a = joined(store, clock, "a")
    b = joined(store, clock, "b")
    assert b.members() == {"a": me("a"), "b": me("b")}
    assert a.members() == {"a": me("a")}
    a.refresh()
    assert a.members() == {"a": me("a"), "b": me("b")}


def test_a_silent_node_drops_out_after_ttl_of_the_observers_clock(
        store: Store, clock: Clock) -> None:
    a = joined(store, clock, "a")
    far_clock = Clock(5_000_000.0)  # another host's clock: never compared with a's
    b = joined(store, far_clock, "b")
    clock.now += 2
    b.round()
    a.round()  # a sees b's renewal now: b is live until now + ttl on a's clock
    seen = clock.now
    for step in range(8):
        clock.now = seen + step
        a.round()
        assert "b" in a.members(), step
    clock.now = seen + TTL - 0.01
    a.round()
    assert "b" in a.members()
    clock.now = seen + TTL
    a.round()
    assert a.members() == {"a": me("a")}
    b.round()  # b comes back
    a.round()
    assert "b" in a.members()


def test_a_member_is_waited_for_with_its_own_longer_ttl(store: Store, clock: Clock) -> None:
    a = joined(store, clock, "a")
    slow = Membership(store, "slow", url("slow"), 3 * TTL, lambda why: None, clock)
    slow.join(wait=0)
    a.refresh()
    clock.now += 3 * TTL - 0.01
    a.round()
    assert "slow" in a.members()
    clock.now += 0.01
    a.round()
    assert "slow" not in a.members()


def test_a_leaving_node_drops_out_at_the_next_listing(store: Store, clock: Clock) -> None:
    a = joined(store, clock, "a")
    b = joined(store, clock, "b")
    a.refresh()
    version = a.version
    b.leave()
    with pytest.raises(NotFound):
        store.get(key("b"))
    assert not b.held() and b.members() == {"a": me("a")}
    with pytest.raises(Fenced, match="has left"):
        b.check()
    a.refresh()  # no time has passed
    assert a.members() == {"a": me("a")} and a.version == version + 1


def test_a_node_that_lost_its_record_does_not_delete_it_on_leaving(
        store: Store, clock: Clock) -> None:
    a = joined(store, clock, "a")
    store.plant("a")
    a.round()
    a.leave()
    assert store.record("a")["host"] == "elsewhere" and store.calls["delete"] == 0


def test_a_failed_delete_on_leaving_is_logged_not_raised(
        store: Store, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    a = joined(store, clock, "a")

    def down(key: str) -> None:
        raise StorageUnavailable(key, "the store is down")

    store.delete = down  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, "shoal.cluster"):
        a.leave()
    assert not a.held() and "deleting this node's cluster record failed" in caplog.text


def test_unreadable_and_foreign_records_are_no_members(store: Store, clock: Clock) -> None:
    MemoryStore.put(store, key("x"), b'{"node": "x", "ur')  # not JSON
    MemoryStore.put(store, key("v"), b'["v"]')  # not an object
    store.plant("w", pid="seven")  # a field of the wrong type
    store.plant("u", at=key("t"))  # another node's record under this one's key
    store.plant("readme.txt", at="cluster/nodes/readme.txt")  # not a .json
    store.plant("deeper/s", at="cluster/nodes/deeper/s.json")  # deeper than the folder
    MemoryStore.put(store, key("r"), json.dumps({"node": "r", "url": url("r")}).encode())
    a = joined(store, clock, "a")
    assert a.members() == {"a": me("a")}
    store.plant("x", url=url("x"), host=HOST, pid=PID)
    a.refresh()  # an unreadable record is read again once it changes
    assert a.members() == {"a": me("a"), "x": me("x")}


def test_a_listing_reads_only_new_or_resized_records(store: Store, clock: Clock) -> None:
    others = [joined(store, clock, name) for name in ("b", "c", "d")]
    store.calls.clear()
    a = joined(store, clock, "a")
    assert store.calls == {"get": 1 + 3, "put": 1, "list": 1}  # its own; the three others
    for _ in range(7):  # seq 1 -> 8 for each
        for other in others:
            other.round()
    store.calls.clear()
    a.refresh()
    assert store.calls == {"list": 1}  # three renewals seen, nothing read
    a.refresh()
    assert store.calls == {"list": 2}
    others[0].round()  # seq 9
    others[0].round()  # seq 10: a digit more, a byte more
    store.calls.clear()
    a.refresh()
    assert store.calls == {"list": 1, "get": 1}
    assert a.members().keys() == {"a", "b", "c", "d"}


def test_a_record_deleted_between_the_listing_and_its_read_is_skipped(
        store: Store, clock: Clock) -> None:
    joined(store, clock, "b")
    a = joined(store, clock, "a")
    c = joined(store, clock, "c")
    store.on_get = lambda: c.leave()
    a.refresh()
    assert a.members().keys() == {"a", "b"}


def test_a_stale_record_is_deleted_an_hour_after_it_stopped_being_live(
        store: Store, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    b_lost: list[str] = []
    b = joined(store, clock, "b", lost=b_lost)
    a = joined(store, clock, "a")
    seen = clock.now
    clock.now = seen + TTL
    a.round()
    assert "b" not in a.members()
    clock.now = seen + TTL + HOUR - 0.01
    a.round()
    assert store.record("b")["node"] == "b"
    clock.now = seen + TTL + HOUR
    with caplog.at_level(logging.INFO, "shoal.cluster"):
        a.round()
    with pytest.raises(NotFound):
        store.get(key("b"))
    assert "node b" in caplog.text
    b.round()  # b comes back: its membership is gone
    assert b.lost and "deleted" in b_lost[0]
    with pytest.raises(NotFound):
        store.get(key("b"))


def test_version_moves_when_the_live_set_changes_only(store: Store, clock: Clock) -> None:
    changes: list[int] = []
    a = joined(store, clock, "a")
    a.on_change = lambda: changes.append(a.version)
    assert a.version == 1  # this node itself
    for _ in range(3):
        a.round()
    assert a.version == 1 and changes == []
    b = joined(store, clock, "b")
    a.round()
    assert a.version == 2 and changes == [2]
    b.round()
    a.round()
    a.refresh()
    assert a.version == 2 and changes == [2]
    b.leave()
    a.refresh()
    assert a.version == 3 and changes == [2]  # refresh alone does not call on_change


# -- holding it ----------------------------------------------------------------------------
def test_membership_lapses_6_s_after_the_start_of_the_last_good_write(
        store: Store, clock: Clock) -> None:
    store.put_takes = 1.0
    a = joined(store, clock, "a")  # the write started at 1000.0 and ended at 1001.0
    clock.now = 1005.99
    assert a.held() and "a" in a.members()
    clock.now = 1006.0
    assert not a.held() and a.members() == {}
    with pytest.raises(Fenced, match="not been renewed for 6 s"):
        a.check()
    store.fail_puts = 1
    with pytest.raises(StorageUnavailable):
        a.round()
    assert not a.held() and a.version == 2  # the round's failure still drops it from its view
    a.round()
    assert a.held() and a.members() == {"a": me("a")} and a.version == 3


def test_a_renewal_whose_answer_was_lost_keeps_membership(store: Store, clock: Clock) -> None:
    lost: list[str] = []
    a = joined(store, clock, "a", lost=lost)
    store.lose_answers = 1
    with pytest.raises(StorageUnavailable):
        a.round()
    assert store.record("a")["seq"] == 2
    a.round()  # its condition fails on the etag it never learned; the seq says it landed
    assert a.held() and not a.lost and lost == [] and store.record("a")["seq"] == 3
    a.round()
    assert store.record("a")["seq"] == 4


def test_a_record_rewritten_by_another_node_loses_membership_once(
        store: Store, clock: Clock) -> None:
    lost: list[str] = []
    a = joined(store, clock, "a", lost=lost)
    store.plant("a")
    a.round()
    assert a.lost and not a.held() and a.members() == {}
    assert len(lost) == 1 and "node a (host elsewhere, pid 7)" in lost[0]
    with pytest.raises(Fenced, match="another node took"):
        a.check()
    a.round()
    a.renew()
    assert len(lost) == 1 and store.record("a")["host"] == "elsewhere"


def test_a_deleted_record_loses_membership_and_is_not_written_again(
        store: Store, clock: Clock) -> None:
    lost: list[str] = []
    a = joined(store, clock, "a", lost=lost)
    store.delete(key("a"))
    a.round()
    assert a.lost and len(lost) == 1 and "deleted" in lost[0]
    with pytest.raises(NotFound):
        store.get(key("a"))


def test_a_record_rewritten_between_the_read_and_the_write_after_a_lost_answer(
        store: Store, clock: Clock) -> None:
    lost: list[str] = []
    a = joined(store, clock, "a", lost=lost)
    store.lose_answers = 1
    with pytest.raises(StorageUnavailable):
        a.round()
    store.before_put = [lambda: None, lambda: store.plant("a")]
    a.round()  # its own write is recognised, but another lands before it writes again
    assert a.lost and lost == ["this node's cluster membership is lost: its record was "
                               "rewritten meanwhile"]


def test_a_record_missing_on_a_store_that_answers_not_found_loses_membership(
        store: Store, clock: Clock) -> None:
    lost: list[str] = []
    a = joined(store, clock, "a", lost=lost)
    store.not_found = True
    store.delete(key("a"))
    a.round()
    assert a.lost and "deleted" in lost[0]


def test_nothing_is_renewed_before_joining_or_deleted_on_leaving(
        store: Store, clock: Clock) -> None:
    a = node(store, clock, "a")
    a.round()
    with pytest.raises(Fenced, match="has not joined"):
        a.check()
    a.leave()
    assert store.calls == {"list": 1} and not a.lost and a.members() == {}


# -- the thread ----------------------------------------------------------------------------
class Wakings:
    """The thread's wait: each moves the clock on by its seconds at once and runs the hook
    for that waking, ``count`` times; then it parks until leave() sets the event."""

    def __init__(self, clock: Clock, count: int,
                 hooks: dict[int, Callable[[], None]] | None = None) -> None:
        self.clock = clock
        self.count = count
        self.hooks = hooks or {}
        self.pauses: list[float] = []
        self.parked = threading.Event()

    def __call__(self, event: threading.Event, seconds: float) -> bool:
        self.pauses.append(seconds)
        if len(self.pauses) > self.count:
            self.parked.set()
            return event.wait(10.0)
        self.clock.now += seconds
        self.hooks.get(len(self.pauses), lambda: None)()
        return event.is_set()


def test_the_thread_renews_every_2_s_lists_between_retries_after_0_4_s_and_reports_changes(
        store: Store, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    b = joined(store, clock, "b")
    wakings = Wakings(clock, 7, {3: b.leave})
    changes: list[str] = []
    a = node(store, clock, "a", wait=wakings,
             on_change=lambda: changes.append(threading.current_thread().name))
    a.join(wait=0)
    assert a.members().keys() == {"a", "b"}
    store.fail_puts = 1
    assert a._thread is None
    with caplog.at_level(logging.WARNING, "shoal.cluster"):
        a.start()
        assert wakings.parked.wait(5.0)
    # a listing, a round that fails, its retry, then listings and rounds by turns
    assert wakings.pauses == pytest.approx([1.0, 1.0, 0.4, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert a._thread is not None and a._thread.daemon  # a stuck store cannot hold an exit
    assert "round of this node's cluster membership failed" in caplog.text
    assert changes == ["shoal-members"] and a.members() == {"a": me("a")}
    assert store.record("a")["seq"] == 4  # join, then three good rounds of four
    a.leave()
    assert a._thread is not None and not a._thread.is_alive()
    with pytest.raises(NotFound):
        store.get(key("a"))


def test_lapses_count_the_holds_that_began_after_none(store: Store, clock: Clock) -> None:
    a = joined(store, clock, "a")
    assert a.lapses == 1  # the join's hold
    clock.now += 5.9  # within the hold (3/4 of 8 s): a renewal continues it
    a.renew()
    assert a.lapses == 1
    clock.now += 6.0  # exactly at the hold's end: it lapsed
    a.renew()
    assert a.lapses == 2 and a.held()


def test_the_thread_lists_between_rounds_and_sees_a_joining_member(
        store: Store, clock: Clock) -> None:
    changes: list[str] = []
    listed: list[bool] = []  # b in the view after the first listing (before the round)
    wakings = Wakings(clock, 3, {1: lambda: joined(store, clock, "b"),
                                 2: lambda: listed.append("b" in a.members())})
    a = node(store, clock, "a", wait=wakings,
             on_change=lambda: changes.append(threading.current_thread().name))
    a.join(wait=0)
    landed = store.record("a")["seq"]
    a.start()
    assert wakings.parked.wait(5.0)
    # a listing (b is seen), a round, a listing that changes nothing (no report)
    assert wakings.pauses[:3] == pytest.approx([1.0, 1.0, 1.0])
    assert listed == [True] and changes == ["shoal-members"]
    assert store.record("a")["seq"] == landed + 1  # the round's rewrite, none at listings
    a.leave()


def test_a_member_runs_out_without_anyone_to_tell(store: Store, clock: Clock) -> None:
    joined(store, clock, "b")
    a = node(store, clock, "a")  # no on_change
    a.join(wait=0)
    clock.now += 8.0
    a._expire()
    assert "b" not in a.members()


def test_the_thread_wakes_when_a_members_ttl_runs_out(store: Store, clock: Clock) -> None:
    joined(store, clock, "b")  # and never renews
    changes: list[int] = []
    wakings = Wakings(clock, 8)
    a = node(store, clock, "a", wait=wakings, on_change=lambda: changes.append(a.version))
    a.join(wait=0)  # sees b now: b's ttl (8 s) runs out 8 s from here
    clock.now += 0.3  # the thread's rounds and listings fall elsewhere
    a.start()
    assert wakings.parked.wait(5.0)
    assert wakings.pauses[:8] == pytest.approx([1.0] * 7 + [0.7])
    assert "b" not in a.members() and changes == [a.version]
    a.leave()


def test_a_member_drops_out_when_its_ttl_runs_out_not_at_the_next_round(
        store: Store, clock: Clock) -> None:
    """The thread wakes at the first member's expiry: no store request, just the view."""
    joined(store, clock, "b")
    changes: list[int] = []
    a = node(store, clock, "a", on_change=lambda: changes.append(a.version))
    a.join(wait=0)
    seen_at = clock.now
    assert a._next_expiry() == pytest.approx(seen_at + 8.0)
    clock.now = seen_at + 7.9
    a._expire()
    assert "b" in a.members() and changes == []
    clock.now = seen_at + 8.0
    a._expire()
    assert "b" not in a.members() and changes == [a.version]  # (a, unrenewed, is out too)
    assert a._next_expiry() is None


def test_the_thread_stops_once_membership_is_lost(store: Store, clock: Clock) -> None:
    lost: list[str] = []
    wakings = Wakings(clock, 10)
    a = node(store, clock, "a", lost=lost, wait=wakings)
    a.join(wait=0)
    store.plant("a")
    a.start()
    assert a._thread is not None
    a._thread.join(5.0)
    assert not a._thread.is_alive() and wakings.pauses == [1.0, 1.0] and len(lost) == 1


# -- a folder store ------------------------------------------------------------------------
def test_two_nodes_on_a_folder_store(tmp_path: Path, clock: Clock) -> None:
    store = open_store(f"file://{tmp_path}")
    a = joined(store, clock, "a")
    b = joined(store, clock, "b")
    a.refresh()
    assert a.members() == b.members() == {"a": me("a"), "b": me("b")}
    clock.now += 2
    a.round()
    b.round()
    assert json.loads((tmp_path / "cluster" / "nodes" / "b.json").read_bytes())["seq"] == 2
    b.leave()
    assert not (tmp_path / "cluster" / "nodes" / "b.json").exists()
    a.round()
    assert a.members() == {"a": me("a")}
