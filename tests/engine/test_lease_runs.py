"""The lease as it runs in production: its renewal thread, its cadence, its losses.

Time is simulated. ``Time`` is both the lease's clock and its wait: the renewal thread
blocks in ``wait`` until the test moves the time past the wait's end (``advance``), so a
minute of renewals takes milliseconds and every renewal happens at an exact instant. A
wait called from the test's own thread (``acquire`` polling) moves the time by itself.

The values checked are written out as numbers and strings here (the key, the JSON, the
cadence of a ttl of 8 s: a renewal every 2 s, a retry 0.4 s after a failure, held for 6 s
after a renewal's start), not imported from the module: a changed format or fraction fails.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shoal.engine.lease import Lease, Record
from shoal.errors import Code, ShoalError
from shoal.metrics import METRICS
from shoal.storage.base import Blob, NotFound
from shoal.storage.fenced import Fenced
from shoal.storage.file import FileStore
from shoal.storage.memory import MemoryStore

KEY = "node/lease.json"  # written out: the key is a format other nodes read
TTL = 8.0  # renew every 2.0 s, retry after 0.4 s, held for 6.0 s after a renewal's start
HOST, PID = socket.gethostname(), os.getpid()
START = 1000.0


class Time:
    """A simulated clock and the wait that goes with it (see the module's docstring)."""

    def __init__(self) -> None:
        self.now = START
        self.pauses: list[float] = []  # every wait's seconds, in order
        self._cond = threading.Condition()
        self._deadline: float | None = None  # the end of the renewal thread's current wait
        self._entered = 0
        self._driver = threading.get_ident()

    def clock(self) -> float:
        return self.now

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if threading.get_ident() == self._driver:  # acquire's polls, in the test's thread
            self.pauses.append(seconds)
            if event.is_set():
                return True
            self.now += seconds
            return False
        with self._cond:
            self.pauses.append(seconds)
            deadline = self.now + seconds
            self._deadline = deadline
            self._entered += 1
            self._cond.notify_all()
            hung = time.monotonic() + 10.0  # a broken test fails instead of hanging
            while not event.is_set() and self.now < deadline:
                assert time.monotonic() < hung, "the renewal thread waited forever"
                self._cond.wait(0.001)
            self._deadline = None
            self._cond.notify_all()
            return event.is_set()

    def advance(self, seconds: float, lease: Lease) -> None:
        """Move the time on by ``seconds``, letting the renewal thread run at each of its
        wakings on the way (a waking at the very end runs too)."""
        thread = lease._thread
        assert thread is not None
        target = self.now + seconds
        hung = time.monotonic() + 10.0
        with self._cond:
            while True:
                while self._deadline is None and thread.is_alive():  # until it waits
                    assert time.monotonic() < hung, "the renewal thread never waited"
                    self._cond.wait(0.001)
                if self._deadline is None or self._deadline > target:
                    self.now = target
                    self._cond.notify_all()
                    return
                self.now = self._deadline
                entered = self._entered
                self._cond.notify_all()
                while self._entered == entered and thread.is_alive():  # it runs, waits again
                    assert time.monotonic() < hung, "the renewal thread never came back"
                    self._cond.wait(0.001)


class Store(MemoryStore):
    """A memory store whose puts can fail (``fail_puts``), take time (``put_takes``) or
    run a hook first (``before_put``: another node acting between a read and a write);
    ``before_get`` likewise, and ``get_missing`` answers NotFound though the object is
    there. It counts the lease writes that landed."""

    def __init__(self, clock: Time) -> None:
        super().__init__()
        self.time = clock
        self.fail_puts = 0
        self.put_takes = 0.0
        self.before_put: list[Callable[[], None]] = []
        self.before_get: list[Callable[[], None]] = []
        self.get_missing = 0
        self.puts_not_found = 0
        self.landed = 0

    def get(self, key: str) -> Blob:
        if self.before_get:
            self.before_get.pop(0)()
        if self.get_missing:
            self.get_missing -= 1
            raise NotFound(key)
        return super().get(key)

    def put(self, key: str, data: bytes, *, if_none_match: str | None = None,
            if_match: str | None = None) -> str:
        if self.before_put:
            self.before_put.pop(0)()
        self.time.now += self.put_takes
        if self.fail_puts:
            self.fail_puts -= 1
            raise ConnectionError("the store is down")
        if self.puts_not_found and if_match is not None:
            self.puts_not_found -= 1
            raise NotFound(key)  # what S3 may answer to If-Match on a key it lost
        etag = super().put(key, data, if_none_match=if_none_match, if_match=if_match)
        self.landed += 1
        return etag

    def record(self) -> dict[str, object]:
        raw = json.loads(super().get(KEY).data)
        assert isinstance(raw, dict)
        return raw

    def plant(self, node: str, seq: int, ttl: float = TTL, host: str = "elsewhere",
              pid: int = 7, released: bool = False) -> None:
        """Another node's write (unconditional)."""
        super().put(KEY, json.dumps({"node": node, "seq": seq, "ttl": ttl, "host": host,
                                     "pid": pid, "released": released}).encode())


@pytest.fixture
def clock() -> Time:
    return Time()


@pytest.fixture
def store(clock: Time) -> Store:
    return Store(clock)


@pytest.fixture
def lost() -> list[str]:
    return []


@pytest.fixture
def leases() -> Iterator[list[Lease]]:
    made: list[Lease] = []
    yield made
    for lease in made:  # no renewal thread outlives its test
        lease._stop.set()
        if lease._thread is not None:
            lease._thread.join(5)


@pytest.fixture
def make(store: Store, clock: Time, lost: list[str],
         leases: list[Lease]) -> Callable[..., Lease]:
    def make(node: str = "a", ttl: float = TTL) -> Lease:
        lease = Lease(store, node, ttl, lost.append, clock.clock, clock.wait)
        leases.append(lease)
        return lease
    return make


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings logged, all of them by the "shoal.lease" logger."""
    assert {(r.name, r.levelname) for r in caplog.records} <= {("shoal.lease", "WARNING")}
    return [r.getMessage() for r in caplog.records]


def failures() -> float:
    return METRICS.registry.get_sample_value("shoal_lease_renewal_failures_total") or 0.0


# -- the format in the store --------------------------------------------------------------------

def test_the_lease_is_one_object_at_node_lease_json_in_a_pinned_shape(
        store: Store, make: Callable[..., Lease]) -> None:
    before = time.time()
    make().acquire(wait=0)
    assert [info.key for info in store.list("")] == ["node/lease.json"]
    raw = json.loads(store.get("node/lease.json").data)
    assert list(raw) == ["node", "seq", "ttl", "host", "pid", "released", "cluster",
                         "written_at"]
    written_at = raw.pop("written_at")
    assert raw == {"node": "a", "seq": 1, "ttl": 8.0, "host": HOST, "pid": PID,
                   "released": False, "cluster": False}
    assert before <= written_at <= time.time()  # wall-clock seconds, for people reading it


def test_a_record_decodes_with_defaults_and_refuses_what_is_not_one() -> None:
    full = b'{"node": "n", "seq": "3", "ttl": 2, "host": "h", "pid": 9, "released": 1}'
    assert Record.decode(full) == Record("n", 3, 2.0, "h", 9, True)
    assert Record.decode(b'{"node": 5, "seq": 1, "ttl": 1}') == Record("5", 1, 1.0, "", 0, False)
    for bad in [b"", b"garbage", b'{"node": "a", "se', b"[]", b"null", b"\xff\xfe",
                b'{"seq": 1, "ttl": 1}', b'{"node": "a", "ttl": 1}', b'{"node": "a", "seq": 1}',
                b'{"node": "a", "seq": "x", "ttl": 1}', b'{"node": "a", "seq": 1, "ttl": []}',
                b'{"node": "a", "seq": 1, "ttl": 1, "pid": "p"}']:
        assert Record.decode(bad) is None, bad
    assert Record.decode(Record("a", 2, 4.0, "h", 3).encode()) == Record("a", 2, 4.0, "h", 3)


def test_a_record_is_a_frozen_value_not_released_by_default() -> None:
    record = Record("a", 1, 1.0)
    assert (record.host, record.pid, record.released) == ("", 0, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(record, "seq", 2)  # noqa: B010 (the assignment a frozen dataclass refuses)


def test_a_holder_is_named_by_node_host_and_pid() -> None:
    assert Record("a", 1, 1.0, "box", 42).holder() == "node a (host box, pid 42)"
    assert Record("a", 1, 1.0).holder() == "node a (host ?, pid ?)"


# -- held(), check() ----------------------------------------------------------------------------

def test_held_for_three_quarters_of_ttl_from_the_start_of_the_write(
        store: Store, clock: Time, make: Callable[..., Lease]) -> None:
    a = make()
    assert not a.held()  # not before it is taken
    clock.now = 0.0
    assert not a.held()  # whatever the clock says
    clock.now = START
    with pytest.raises(Fenced) as err:
        a.check()
    assert str(err.value) == ("this node does not hold the object store's lease: "
                              "it has not been renewed for 6 s")
    store.put_takes = 1.5  # the write's answer comes 1.5 s after it started
    a.acquire(wait=0)
    assert clock.now == START + 1.5
    clock.now = START + 5.999
    assert a.held()
    a.check()
    clock.now = START + 6.0
    assert not a.held()
    with pytest.raises(Fenced) as err:
        a.check()
    assert str(err.value).endswith("it has not been renewed for 6 s")


def test_a_lost_lease_is_not_held_whatever_the_clock_says(
        store: Store, clock: Time, make: Callable[..., Lease], lost: list[str]) -> None:
    a = make()
    a.acquire(wait=0)
    store.plant("b", 9)
    a.renew()
    assert a.lost and not a.held()
    with pytest.raises(Fenced) as err:
        a.check()
    assert str(err.value) == ("this node does not hold the object store's lease: "
                              "another node took it")


# -- the renewal thread -------------------------------------------------------------------------

def test_the_thread_renews_every_quarter_ttl(
        store: Store, clock: Time, make: Callable[..., Lease]) -> None:
    a = make()
    a.acquire(wait=0)
    a.start()
    assert a._thread is not None and a._thread.daemon and a._thread.name == "shoal-lease"
    clock.advance(1.75, a)
    assert store.record()["seq"] == 1  # not yet
    clock.advance(0.25, a)
    assert store.record()["seq"] == 2  # 2 s after the start
    clock.advance(18.0, a)
    assert store.record()["seq"] == 11  # one renewal every 2 s: ten in 20 s
    assert clock.pauses == [2.0] * 11  # the eleventh wait is under way
    for _ in range(20):  # a minute more: held all along, no renewal missed
        clock.advance(3.0, a)
        assert a.held()
    assert store.record()["seq"] == 41 and store.landed == 41
    assert not a.lost and a._thread.is_alive()


def test_a_failed_renewal_is_retried_after_a_twentieth_of_ttl(
        store: Store, clock: Time, make: Callable[..., Lease], lost: list[str],
        caplog: pytest.LogCaptureFixture) -> None:
    a = make()
    a.acquire(wait=0)
    a.start()
    before = failures()
    store.fail_puts = 2
    with caplog.at_level(logging.WARNING, logger="shoal.lease"):
        clock.advance(2.0, a)  # the renewal at 2.0 fails
        assert clock.pauses == [2.0, 0.4]
        assert store.record()["seq"] == 1 and a.held()
        clock.advance(0.4, a)  # the retry at 2.4 fails too
        assert clock.pauses == [2.0, 0.4, 0.4]
        clock.advance(0.4, a)  # the one at 2.8 lands, and the cadence is back to 2 s
        assert clock.pauses == [2.0, 0.4, 0.4, 2.0]
        assert store.record()["seq"] == 2
        clock.advance(2.0, a)
        assert clock.pauses == [2.0, 0.4, 0.4, 2.0, 2.0] and store.record()["seq"] == 3
    assert failures() == before + 2
    assert messages(caplog) == [
        "renewing the object store's lease failed: ConnectionError('the store is down')"] * 2
    assert not a.lost and lost == [] and a.held()


def test_renewals_that_keep_failing_let_the_lease_lapse_but_do_not_lose_it(
        store: Store, clock: Time, make: Callable[..., Lease], lost: list[str]) -> None:
    a = make()
    a.acquire(wait=0)
    a.start()
    clock.advance(2.0, a)  # renewed at 2.0: held until 8.0
    store.fail_puts = 1000
    clock.advance(5.75, a)
    assert a.held()
    clock.advance(0.25, a)
    assert not a.held() and not a.lost and lost == []
    assert a._thread is not None and a._thread.is_alive()  # it keeps trying
    store.fail_puts = 0
    clock.advance(0.4, a)
    assert a.held()
    assert clock.pauses[-1] == 2.0


def test_a_renewal_finding_another_nodes_lease_stops_the_thread_and_reports(
        store: Store, clock: Time, make: Callable[..., Lease], lost: list[str]) -> None:
    a = make()
    a.acquire(wait=0)
    a.start()
    clock.advance(4.0, a)
    store.plant("b", 7, host="box", pid=12)
    clock.advance(2.0, a)
    assert lost == ["the object store's lease is now held by node b (host box, pid 12)"]
    assert a.lost and not a.held() and a._stop.is_set()
    assert a._thread is not None and not a._thread.is_alive()
    assert clock.pauses == [2.0, 2.0, 2.0]  # no wait after the loss
    assert store.record()["node"] == "b"  # and nothing written over it
    a.release()
    assert store.record() == {"node": "b", "seq": 7, "ttl": 8.0, "host": "box", "pid": 12,
                              "released": False}


def test_a_deleted_lease_object_is_a_loss(
        store: Store, clock: Time, make: Callable[..., Lease], lost: list[str]) -> None:
    a = make()
    a.acquire(wait=0)
    a.start()
    store.delete(KEY)
    clock.advance(2.0, a)
    assert lost == ["the object store's lease is now held by nobody (it is gone)"]
    assert a.lost and a._stop.is_set() and not a.held()
    assert a._thread is not None and not a._thread.is_alive()
    with pytest.raises(NotFound):
        store.get(KEY)  # not written back: someone meant it gone


def test_an_unreadable_lease_that_changes_under_the_repair_is_a_loss(
        store: Store, clock: Time, make: Callable[..., Lease], lost: list[str]) -> None:
    a = make()
    a.acquire(wait=0)
    MemoryStore.put(store, KEY, b"garbage")
    store.before_put = [lambda: None,  # the renewal (its condition fails)
                        lambda: MemoryStore.put(store, KEY, b"other garbage")]  # the repair
    a.renew()
    assert lost == ["the object store's lease is now held by nobody (it is unreadable)"]
    assert a.lost and a._stop.is_set()


def test_an_unreadable_lease_is_repaired_by_the_renewal(
        store: Store, clock: Time, make: Callable[..., Lease], lost: list[str]) -> None:
    a = make()
    a.acquire(wait=0)
    MemoryStore.put(store, KEY, b'{"node": "a", "se')
    a.renew()
    assert lost == [] and a.held() and store.record()["seq"] == 2
    a.renew()  # and renewals go on from the repair's etag
    assert store.record()["seq"] == 3


@pytest.mark.parametrize(("node", "seq", "released"), [
    ("a", 2, True),   # this node's next seq, but a released lease
    ("a", 5, False),  # this node's id, another seq: not this renewal
    ("b", 2, False),  # the seq, another node
])
def test_a_renewal_that_did_not_land_is_told_from_one_that_did(
        store: Store, make: Callable[..., Lease], lost: list[str],
        node: str, seq: int, released: bool) -> None:
    a = make()
    a.acquire(wait=0)
    store.plant(node, seq, host=HOST, pid=PID, released=released)
    a.renew()
    assert a.lost and len(lost) == 1


def test_a_renewal_whose_answer_was_lost_goes_on_from_it(
        store: Store, make: Callable[..., Lease], lost: list[str]) -> None:
    a = make()
    a.acquire(wait=0)
    store.plant("a", 2, host=HOST, pid=PID)  # seq 2 landed; its answer never came
    a.renew()  # writes seq 3 over it
    assert not a.lost and lost == [] and store.record()["seq"] == 3
    a.renew()
    assert store.record()["seq"] == 4


def test_a_node_taking_over_while_the_lost_answer_is_recognised_wins(
        store: Store, make: Callable[..., Lease], lost: list[str]) -> None:
    a = make()
    a.acquire(wait=0)
    store.plant("a", 2, host=HOST, pid=PID)  # seq 2 landed; its answer never came
    store.before_put = [lambda: None,  # the renewal (its condition fails)
                        lambda: store.plant("b", 3)]  # b, before the renewal from seq 2
    a.renew()
    assert a.lost and len(lost) == 1
    assert store.record()["node"] == "b"  # not written over


# -- release() ----------------------------------------------------------------------------------

def test_release_stops_the_thread_and_marks_the_lease_released(
        store: Store, clock: Time, make: Callable[..., Lease]) -> None:
    a = make()
    a.acquire(wait=0)
    a.start()
    clock.advance(4.0, a)
    a.release()
    assert a._thread is not None and not a._thread.is_alive()
    assert not a.held() and not a.lost
    clock.now = 0.0
    assert not a.held()  # at any clock
    raw = store.record()
    del raw["written_at"]
    assert raw == {"node": "a", "seq": 4, "ttl": 8.0, "host": HOST, "pid": PID,
                   "released": True, "cluster": False}
    landed = store.landed
    clock.now += 100.0  # no thread is left to renew
    assert store.landed == landed


def test_release_after_an_unseen_takeover_leaves_the_new_holders_lease(
        store: Store, make: Callable[..., Lease], caplog: pytest.LogCaptureFixture) -> None:
    a = make()
    a.acquire(wait=0)
    store.plant("b", 2)  # b took over; a has not renewed since
    with caplog.at_level(logging.WARNING, logger="shoal.lease"):
        a.release()
    assert store.record() == {"node": "b", "seq": 2, "ttl": 8.0, "host": "elsewhere", "pid": 7,
                              "released": False}
    assert [m.split(":")[0] for m in messages(caplog)] == [
        "releasing the object store's lease failed"]


def test_release_without_the_lease_writes_nothing(
        store: Store, make: Callable[..., Lease]) -> None:
    make().release()
    assert store.landed == 0
    with pytest.raises(NotFound):
        store.get(KEY)


def test_a_failed_release_is_logged_and_the_lease_is_no_longer_held(
        store: Store, make: Callable[..., Lease], caplog: pytest.LogCaptureFixture) -> None:
    a = make()
    a.acquire(wait=0)
    store.fail_puts = 1
    with caplog.at_level(logging.WARNING, logger="shoal.lease"):
        a.release()
    assert not a.held()
    assert store.record()["released"] is False  # it lapses by itself
    assert messages(caplog) == [
        "releasing the object store's lease failed: ConnectionError('the store is down')"]


# -- acquire() ----------------------------------------------------------------------------------

def test_a_missing_lease_is_created_at_once(
        store: Store, clock: Time, make: Callable[..., Lease]) -> None:
    a = make()
    a.acquire(wait=30, poll=1)
    assert a.previous is None and a.held() and clock.pauses == [] and clock.now == START
    assert store.record()["seq"] == 1


def test_a_live_lease_is_waited_for_up_to_lease_wait_then_store_in_use(
        store: Store, clock: Time, make: Callable[..., Lease],
        caplog: pytest.LogCaptureFixture) -> None:
    store.plant("b", 3, host="box", pid=5)
    a = make()
    with caplog.at_level(logging.WARNING, logger="shoal.lease"), \
            pytest.raises(ShoalError) as err:
        a.acquire(wait=5)  # polling once a second
    assert err.value.code == "STORE_IN_USE"
    assert err.value.message == ("the object store is in use by node b (host box, pid 5), "
                                 "which renewed its lease within the last 8 s; waited 5 s")
    assert clock.pauses == [1.0] * 5 and clock.now == START + 5
    assert a.previous is None and not a.held()
    assert store.record()["node"] == "b"
    assert messages(caplog) == [
        "the object store's lease is held by node b (host box, pid 5); waiting for it to be "
        "released or to lapse (8 s without renewal)"]


def test_a_lease_not_renewed_for_ttl_is_taken_over(
        store: Store, clock: Time, make: Callable[..., Lease],
        caplog: pytest.LogCaptureFixture) -> None:
    store.plant("b", 3, host="box", pid=5)
    a = make()
    with caplog.at_level(logging.WARNING, logger="shoal.lease"):
        a.acquire(wait=60, poll=1)
    assert clock.now == START + 8 and clock.pauses == [1.0] * 8  # exactly ttl, not before
    assert a.previous == "b" and a.held()
    assert store.record()["node"] == "a" and store.record()["seq"] == 4
    assert messages(caplog)[-1] == (
        "took over the object store's lease from node b (host box, pid 5), which had not "
        "renewed it for 8 s")


def test_a_renewing_holder_restarts_the_wait_and_is_named_once(
        store: Store, clock: Time, make: Callable[..., Lease],
        caplog: pytest.LogCaptureFixture) -> None:
    seqs = iter(range(10, 100))
    store.plant("b", 9)
    a = make()
    store.before_get = [lambda: store.plant("b", next(seqs)) if clock.now < START + 5
                        else None for _ in range(100)]
    with caplog.at_level(logging.WARNING, logger="shoal.lease"):
        a.acquire(wait=60, poll=1)
    # b renewed on each of the polls before 5 s; its last write, at 4 s, was seen at 4 s
    assert clock.now == START + 4 + 8 and a.previous == "b"
    held = [r for r in caplog.records if "is held by" in r.getMessage()]
    assert len(held) == 1


def test_the_longer_of_the_two_ttls_is_waited_out(
        store: Store, clock: Time, make: Callable[..., Lease]) -> None:
    store.plant("b", 1, ttl=20.0)
    a = make()
    with pytest.raises(ShoalError) as err:
        a.acquire(wait=19, poll=1)
    assert "within the last 20 s; waited 19 s" in err.value.message
    a.acquire(wait=60, poll=1)
    assert clock.now == START + 19 + 20  # its own wait started anew
    store.plant("c", 1, ttl=2.0)
    b = make("b", ttl=8.0)
    before = clock.now
    b.acquire(wait=60, poll=1)
    assert clock.now == before + 8 and b.previous == "c"


def test_a_released_lease_is_taken_at_once_and_its_seq_goes_on(
        store: Store, clock: Time, make: Callable[..., Lease],
        caplog: pytest.LogCaptureFixture) -> None:
    store.plant("b", 6, released=True)
    a = make()
    with caplog.at_level(logging.WARNING, logger="shoal.lease"):
        a.acquire(wait=0)
    assert a.previous == "b" and a.held() and clock.pauses == []
    assert store.record()["seq"] == 7
    assert caplog.records == []  # nobody to wait for, nothing taken over


def test_this_nodes_own_lease_on_this_host_is_taken_at_once(
        store: Store, clock: Time, make: Callable[..., Lease],
        caplog: pytest.LogCaptureFixture) -> None:
    store.plant("a", 4, host=HOST, pid=1)
    a = make()
    with caplog.at_level(logging.WARNING, logger="shoal.lease"):
        a.acquire(wait=0)
    assert a.previous == "a" and clock.now == START and store.record()["seq"] == 5
    assert caplog.records == []
    store.plant("b", 4, host=HOST, pid=1)  # another node on this host waits
    b = make("c")
    with pytest.raises(ShoalError) as err:
        b.acquire(wait=2, poll=1)
    assert err.value.code == "STORE_IN_USE" and "node b (host " in err.value.message


def test_an_unreadable_lease_is_taken_after_ttl_and_its_seq_restarts(
        store: Store, clock: Time, make: Callable[..., Lease],
        caplog: pytest.LogCaptureFixture) -> None:
    MemoryStore.put(store, KEY, b"garbage")
    a = make(ttl=0.5)  # shorter than a second: the unreadable lease has no ttl of its own
    with pytest.raises(ShoalError) as err:
        a.acquire(wait=0.25, poll=0.25)
    assert err.value.message == ("the object store is in use by an unreadable lease, which "
                                 "renewed its lease within the last 0.5 s; waited 0.25 s")
    with caplog.at_level(logging.WARNING, logger="shoal.lease"):
        a.acquire(wait=10, poll=0.25)
    assert clock.now == START + 0.25 + 0.5 and a.previous == "?"
    assert store.record()["seq"] == 1
    assert messages(caplog) == [
        "took over the object store's lease from an unreadable lease, which had not renewed "
        "it for 0.5 s"]


def test_a_lease_created_by_another_node_meanwhile_is_waited_for(
        store: Store, clock: Time, make: Callable[..., Lease]) -> None:
    a = make()
    store.before_put = [lambda: store.plant("b", 1)]  # b creates it between a's read and write
    with pytest.raises(ShoalError) as err:
        a.acquire(wait=0)
    assert err.value.code == "STORE_IN_USE" and "node b" in err.value.message


def test_a_takeover_that_loses_the_race_waits_again(
        store: Store, clock: Time, make: Callable[..., Lease]) -> None:
    store.plant("b", 1, released=True)
    a = make()
    store.before_put = [lambda: store.plant("c", 1)]  # c took it first
    with pytest.raises(ShoalError) as err:
        a.acquire(wait=3, poll=1)
    assert "node c" in err.value.message and clock.pauses == [1.0] * 3


def test_a_write_answered_not_found_is_tried_again_at_once(
        store: Store, clock: Time, make: Callable[..., Lease],
        caplog: pytest.LogCaptureFixture) -> None:
    store.plant("b", 1, released=True)
    store.puts_not_found = 1
    store.put_takes = 8.0  # a slow store: the released lease has been seen for a ttl
    a = make()
    with caplog.at_level(logging.WARNING, logger="shoal.lease"):
        a.acquire(wait=0)
    assert a.previous == "b" and clock.pauses == [] and store.record()["seq"] == 2
    assert clock.now == START + 16  # two writes of 8 s: the lease is not held any more
    assert caplog.records == []  # released, so not taken over: nothing to warn of


def test_a_read_answered_not_found_is_a_missing_lease(
        store: Store, clock: Time, make: Callable[..., Lease]) -> None:
    store.plant("b", 1)
    store.get_missing = 1  # then the create finds it there: read again, and wait
    a = make()
    with pytest.raises(ShoalError) as err:
        a.acquire(wait=1, poll=1)
    assert err.value.code == "STORE_IN_USE" and clock.pauses == [1.0]


def test_a_store_that_keeps_failing_is_storage_unavailable_after_lease_wait(
        store: Store, clock: Time, make: Callable[..., Lease]) -> None:
    def down() -> None:
        raise ConnectionError("no route to host")

    store.before_get = [down] * 100
    a = make()
    with pytest.raises(ShoalError) as err:
        a.acquire(wait=3, poll=1)
    assert err.value.code == "STORAGE_UNAVAILABLE"
    assert err.value.message == ("the object store's lease could not be read or written: "
                                 "ConnectionError('no route to host')")
    assert clock.pauses == [1.0] * 3


def test_a_store_that_recovers_leaves_store_in_use_not_unavailable(
        store: Store, clock: Time, make: Callable[..., Lease]) -> None:
    def down() -> None:
        raise ConnectionError("no route to host")

    store.plant("b", 1)
    store.before_get = [down]
    with pytest.raises(ShoalError) as err:
        make().acquire(wait=2, poll=1)
    assert err.value.code == "STORE_IN_USE"


def test_release_ends_an_acquire_that_is_waiting(
        store: Store, clock: Time, make: Callable[..., Lease]) -> None:
    store.plant("b", 1)
    a = make()
    store.before_get = [a.release]  # a clean stop while it waits
    with pytest.raises(ShoalError) as err:
        a.acquire(wait=60, poll=1)
    assert err.value.code == "STORE_IN_USE" and clock.now == START and clock.pauses == [1.0]


# -- on the file store --------------------------------------------------------------------------

def test_two_nodes_on_a_file_store(tmp_path: Path, clock: Time, leases: list[Lease]) -> None:
    """The same run on the embedded default's store: its etags and conditions."""
    store = FileStore(tmp_path / "store")
    lost: list[str] = []
    a = Lease(store, "a", TTL, lost.append, clock.clock, clock.wait)
    b = Lease(FileStore(tmp_path / "store"), "b", TTL, lost.append, clock.clock, clock.wait)
    leases += [a, b]
    a.acquire(wait=0)
    a.start()
    clock.advance(10.0, a)
    raw = json.loads((tmp_path / "store" / "node" / "lease.json").read_bytes())
    assert (raw["node"], raw["seq"], raw["released"]) == ("a", 6, False)
    a._stop.set()  # a stalls (its thread is gone): b takes over after ttl
    assert a._thread is not None
    a._thread.join(5)
    b.acquire(wait=60, poll=1)
    assert b.previous == "a" and clock.now == START + 10 + 8
    a.renew()
    assert lost == [f"the object store's lease is now held by node b (host {HOST}, pid {PID})"]


def test_a_lost_race_to_a_lease_released_meanwhile_takes_it_without_waiting(
        store: Store, clock: Time, make: Callable[..., Lease]) -> None:
    store.plant("b", 1, released=True)
    a = make()
    # b comes back, takes its lease and releases it again between a's read and a's write:
    # a's write fails its If-Match, and the lease it reads again at once is free
    store.before_put = [lambda: store.plant("b", 2, released=True)]
    a.acquire(wait=5, poll=1)
    assert clock.pauses == [] and a.held() and store.record()["seq"] == 3


# -- a cluster's store --------------------------------------------------------------------------
def test_a_clusters_node_marks_the_store_as_a_clusters_for_good(
        store: Store, make: Callable[..., Lease]) -> None:
    make().acquire(wait=0, cluster=True)
    assert store.record()["cluster"] is True
    landed = store.landed
    make(node="b").acquire(wait=0, cluster=True)  # another of its nodes: nothing to take
    assert store.landed == landed


def test_a_single_node_is_refused_at_once_on_a_clusters_store(
        store: Store, make: Callable[..., Lease]) -> None:
    make().acquire(wait=0, cluster=True)
    with pytest.raises(ShoalError) as info:
        make(node="b").acquire(wait=60)  # refused without waiting out the 60 s
    assert info.value.code == Code.STORE_IN_USE
    assert "advertise_url" in info.value.message


def test_a_clusters_first_node_waits_for_a_live_single_node(
        store: Store, make: Callable[..., Lease]) -> None:
    store.plant("b", 3)
    with pytest.raises(ShoalError) as info:
        make().acquire(wait=0, cluster=True)
    assert info.value.code == Code.STORE_IN_USE
    assert store.record().get("cluster", False) is False  # still the single node's
