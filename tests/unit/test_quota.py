"""Hrana's quotas: streams and held bytes per token, per database and per node."""

from __future__ import annotations

import pytest

from shoal.server.hrana_proto import HranaError
from shoal.server.quota import Quota, size
from shoal.settings import Settings


def quota(**caps: int) -> Quota:
    return Quota(Settings(**caps))


def test_a_token_at_its_stream_cap_refuses_only_itself() -> None:
    q = quota(max_streams_per_token=2, max_streams_per_database=3, max_streams=4)
    a = [q.holder("alice", "orders") for _ in range(3)]
    a[0].add_stream()
    a[1].add_stream()
    with pytest.raises(HranaError) as info:
        a[2].add_stream()
    assert info.value.code == "TOO_MANY_STREAMS" and "max_streams_per_token" in info.value.message
    q.holder("bob", "orders").add_stream()  # another token of the same database
    with pytest.raises(HranaError) as info:  # the database is full now
        q.holder("carol", "orders").add_stream()
    assert "max_streams_per_database" in info.value.message
    q.holder("dave", "invoices").add_stream()
    with pytest.raises(HranaError) as info:  # and now the node
        q.holder("erin", "reports").add_stream()
    assert "max_streams" in info.value.message and info.value.status == 429
    a[0].drop_stream()
    a[2].add_stream()  # room again for alice, not beyond
    assert q.streams[("token", "alice")] == 2


def test_held_bytes_are_charged_and_all_given_back() -> None:
    q = quota(max_held_bytes_per_token=100, max_held_bytes_per_database=150,
              max_held_bytes=1000)
    one, two = q.holder("alice", "orders"), q.holder("alice", "orders")
    one.hold(60)
    with pytest.raises(HranaError) as info:
        two.hold(41)
    assert info.value.code == "HELD_BYTES_LIMIT"
    two.hold(40)
    q.holder("bob", "orders").hold(50)  # the database's cap is 150
    with pytest.raises(HranaError):
        q.holder("carol", "orders").hold(1)
    one.add_stream()
    one.free(1000)  # never below zero
    one.release()
    two.release()
    assert q.bytes == {("token", "bob"): 50, ("db", "orders"): 50, ("node", ""): 50}
    assert not q.streams


def test_zero_is_no_cap() -> None:
    q = quota(max_streams_per_token=0, max_streams_per_database=0, max_streams=0)
    h = q.holder("alice", "orders")
    for _ in range(10_000):
        h.add_stream()
    assert h.streams == 10_000


def test_counts_go_back_down_exactly_and_vanish_at_zero() -> None:
    q = quota(max_streams_per_token=3, max_held_bytes_per_token=100)
    h = q.holder("alice", "orders")
    h.drop_stream()  # nothing held: nothing given back
    assert not q.streams and h.streams == 0
    h.add_stream()
    h.add_stream()
    assert q.streams == {("token", "alice"): 2, ("db", "orders"): 2, ("node", ""): 2}
    h.drop_stream()
    assert q.streams == {("token", "alice"): 1, ("db", "orders"): 1, ("node", ""): 1}
    assert h.streams == 1
    h.drop_stream()
    assert q.streams == {} and h.streams == 0  # keys at zero are removed, not kept at 0
    h.hold(30)
    h.free(0)
    assert q.bytes[("token", "alice")] == 30 and h.bytes == 30
    h.free(10)
    assert q.bytes == {("token", "alice"): 20, ("db", "orders"): 20, ("node", ""): 20}
    h.add_stream()
    h.add_stream()
    h.release()  # every stream and byte at once
    assert q.streams == {} and q.bytes == {} and (h.streams, h.bytes) == (0, 0)
    h.release()  # twice is harmless
    assert q.streams == {} and q.bytes == {}


@pytest.mark.parametrize(("caps", "whose"), [
    ({"max_streams_per_token": 1}, "the token is at max_streams_per_token (1)"),
    ({"max_streams_per_database": 1}, "the database is at max_streams_per_database (1)"),
    ({"max_streams": 1}, "the node is at max_streams (1)"),
])
def test_each_refusal_names_its_cap(caps: dict[str, int], whose: str) -> None:
    q = quota(**caps)
    q.holder("alice", "orders").add_stream()
    with pytest.raises(HranaError) as info:
        q.holder("alice", "orders").add_stream()
    assert info.value.message == whose
    assert sum(q.streams.values()) == 3  # the refused one took nothing


def test_a_refused_hold_takes_nothing_and_the_cap_is_inclusive() -> None:
    q = quota(max_held_bytes_per_token=100, max_held_bytes_per_database=1000,
              max_held_bytes=1000)
    h = q.holder("alice", "orders")
    h.hold(100)  # exactly the cap is allowed
    with pytest.raises(HranaError) as info:
        h.hold(1)
    assert info.value.message == "the token is at max_held_bytes_per_token (100)"
    assert q.bytes == {("token", "alice"): 100, ("db", "orders"): 100, ("node", ""): 100}


def test_size_is_memory_not_length() -> None:
    assert size("") > 0 and size(b"") > 0
    assert size("x" * 1000) >= 1000 and size(b"x" * 1000) >= 1000
