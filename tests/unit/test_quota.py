"""Hrana's quotas: streams and held bytes per token, per database and per node."""

from __future__ import annotations

import pytest

from shoal.server.hrana_proto import HranaError
from shoal.server.quota import Quota
from shoal.settings import load


def quota(**caps: int) -> Quota:
    return Quota(load(overrides=caps, environ={}))


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
