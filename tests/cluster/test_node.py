"""Cluster (cluster/node.py): who leads, claims once per member set, releases, leaving.

The member set and the other nodes are fakes here; tests/cluster/test_nodes.py runs real
nodes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shoal.cluster import FORWARDED, Member, leader_of
from shoal.cluster.node import Cluster
from shoal.storage import open_store


class Members:
    """A member set that tests change by hand."""

    def __init__(self, *nodes: str):
        self.ttl = 4.0
        self.version = 1
        self.set(*nodes)

    def set(self, *nodes: str) -> None:
        self.current = {n: Member(n, f"http://{n}", "host", 1, False) for n in nodes}
        self.version += 1

    def members(self) -> dict[str, Member]:
        return dict(self.current)


class Peers:
    """The other nodes: records each request; ``down`` ones fail like a refused connection."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[bytes, bytes], bytes]] = []
        self.down: set[str] = set()

    async def request(self, url: str, method: str, path: str,
                      headers: list[tuple[bytes, bytes]], body: bytes) -> Any:
        self.calls.append((url, path, dict(headers), body))
        if url in self.down:
            raise ConnectionRefusedError(url)
        return 204, [], b""


def make(node: str, *nodes: str) -> tuple[Cluster, Members, Peers]:
    cluster = Cluster(open_store("memory://"), node, f"http://{node}", 4.0, 1.0,
                      lambda why: None, lambda: "the-admin-token")
    members, peers = Members(*nodes), Peers()
    cluster.membership = members  # type: ignore[assignment]
    cluster.forwarder = peers  # type: ignore[assignment]
    return cluster, members, peers


def led_by(node: str, nodes: list[str], count: int = 1) -> list[str]:
    return [n for n in (f"db{i}" for i in range(1000)) if leader_of(n, nodes) == node][:count]


def test_the_leader_is_the_rendezvous_winner_among_live_members() -> None:
    cluster, members, _ = make("a", "a", "b", "c")
    for db in (f"db{i}" for i in range(50)):
        winner = leader_of(db, ["a", "b", "c"])
        leader = cluster.leader(db)
        assert (leader is None) == (winner == "a")
        assert leader is None or leader.node == winner
    mine = led_by("b", ["a", "b", "c"])[0]
    assert cluster.leader(mine) is not None
    members.set("a", "c")  # b is gone: its databases are led by a or c
    assert cluster.leads(mine) == (leader_of(mine, ["a", "c"]) == "a")


def test_no_member_at_all_means_serving_here() -> None:
    cluster, _, _ = make("a")  # not even itself (membership not held)
    assert cluster.leader("anything") is None


def test_a_claim_asks_every_other_member_once_per_member_set() -> None:
    cluster, members, peers = make("a", "a", "b", "c")
    asyncio.run(cluster.claim("orders"))
    assert sorted(c[0] for c in peers.calls) == ["http://b", "http://c"]
    _, path, headers, _ = peers.calls[0]
    assert path == "/v1/cluster/release/orders?from=http%3A%2F%2Fa"
    assert headers[b"authorization"] == b"Bearer the-admin-token"
    assert headers[FORWARDED] == b"a"
    asyncio.run(cluster.claim("orders"))
    assert len(peers.calls) == 2  # same member set: no second claim
    members.set("a", "b", "c", "d")
    asyncio.run(cluster.claim("orders"))
    assert len(peers.calls) == 5  # the set changed: b, c and d are asked


def test_a_member_that_cannot_be_reached_is_passed_over() -> None:
    cluster, _, peers = make("a", "a", "b", "c")
    peers.down.add("http://b")
    asyncio.run(cluster.claim("orders"))  # no exception: c released, b passed over
    assert cluster.claimed["orders"] == cluster.membership.version


def test_a_released_database_is_forwarded_to_its_claimant_until_the_view_changes() -> None:
    nodes = ["a", "b", "c"]
    mine = led_by("a", nodes)[0]
    cluster, members, _ = make("a", *nodes)
    assert cluster.leads(mine)
    cluster.released_to(mine, "c")
    leader = cluster.leader(mine)
    assert leader is not None and leader.node == "c"
    members.set(*nodes)  # a new view (same members): the hash decides again
    assert cluster.leads(mine)
    assert mine not in cluster.released


def test_a_release_to_a_node_no_longer_live_is_forgotten() -> None:
    nodes = ["a", "b", "c"]
    mine = led_by("a", nodes)[0]
    cluster, _, _ = make("a", *nodes)
    cluster.released_to(mine, "zz")  # not a member
    assert cluster.leads(mine)


def test_a_node_that_says_it_leaves_is_out_of_the_view_at_once() -> None:
    nodes = ["a", "b", "c"]
    theirs = led_by("b", nodes)[0]
    cluster, members, _ = make("a", *nodes)
    cluster.left("b")
    assert "b" not in cluster.live()
    assert cluster.leader(theirs) is None or cluster.leader(theirs).node == "c"  # type: ignore[union-attr]
    members.set("a", "c")  # its record is gone from the listing: forgotten
    assert cluster.live().keys() == {"a", "c"}
    assert "b" not in cluster.gone
    cluster.left("a")  # itself: ignored
    assert "a" in cluster.live()


def test_a_leaving_node_leads_nothing_and_tells_the_others() -> None:
    nodes = ["a", "b", "c"]
    mine = led_by("a", nodes)[0]
    cluster, _, peers = make("a", *nodes)
    asyncio.run(cluster.announce_leaving())
    assert not cluster.leads(mine)
    assert sorted(c[0] for c in peers.calls) == ["http://b", "http://c"]
    assert {c[1] for c in peers.calls} == {"/v1/cluster/notify"}
    assert all(c[3] == b'{"left":"a"}' for c in peers.calls)


@pytest.mark.parametrize("notice", [{"database": "orders"}, {"revoked": "t1"}])
def test_a_notice_reaches_every_other_member_even_when_one_is_down(
        notice: dict[str, str]) -> None:
    cluster, _, peers = make("a", "a", "b", "c")
    peers.down.add("http://c")
    asyncio.run(cluster.notify(notice))
    assert sorted(c[0] for c in peers.calls) == ["http://b", "http://c"]


def test_two_claims_at_once_are_decided_by_rank_the_same_on_both_nodes() -> None:
    from shoal.cluster.placement import score

    a, _, _ = make("a", "a", "b")
    b, _, _ = make("b", "a", "b")
    db = "orders"
    a.claiming.add(db)
    b.claiming.add(db)
    a_wins = (score(db, "a"), "a") > (score(db, "b"), "b")
    assert a.yields(db, "b") == (not a_wins)  # the loser yields, the winner does not
    assert b.yields(db, "a") == a_wins
    a.claiming.clear()
    assert a.yields(db, "b")  # not claiming: always yields


def test_a_claim_that_yielded_meanwhile_sends_the_request_to_the_winner() -> None:
    from shoal.cluster import Moved

    cluster, _, peers = make("a", "a", "b", "c")

    async def claim() -> None:
        original = peers.request

        async def answering(*args: Any) -> Any:  # b claims it too, and ranks higher
            cluster.released_to("orders", "b")
            return await original(*args)

        peers.request = answering  # type: ignore[method-assign]
        await cluster.claim("orders")

    with pytest.raises(Moved) as info:
        asyncio.run(claim())
    assert info.value.url == "http://b"
    assert "orders" not in cluster.claimed


def test_a_claimant_not_listed_yet_is_counted_once_it_claims() -> None:
    cluster, _, _ = make("a", "a", "b")
    cluster.released_to("orders", "z", "http://z:1")  # back from a pause: not listed here
    assert "z" in cluster.live()
    leader = cluster.leader("orders")
    assert leader is not None and leader.url == "http://z:1"


def test_generation_refuses_while_not_held_and_changes_after_a_lapse() -> None:
    from shoal.errors import ShoalError

    cluster, members, _ = make("a", "a", "b")
    members.held = lambda: True  # type: ignore[attr-defined]
    members.lapses = 1  # type: ignore[attr-defined]
    first = cluster.generation()
    cluster.claimed["orders"] = members.version
    members.held = lambda: False  # type: ignore[attr-defined]
    with pytest.raises(ShoalError) as info:
        cluster.generation()
    assert info.value.code.name == "LEADER_UNAVAILABLE"
    members.held = lambda: True  # type: ignore[attr-defined]
    members.lapses = 2  # type: ignore[attr-defined]
    assert cluster.generation() != first
    assert cluster.claimed == {}  # every database is claimed again
