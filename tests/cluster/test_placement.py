"""Which node leads a database: rendezvous hashing, checked on its format and its moves.

Every node must compute the same leader from the same members, whatever its version, so
the score is pinned to a number written out here. The rest are the properties the module
is chosen for, over 10,000 names: an even spread, and moves only to a joining node or away
from a leaving one.
"""

from __future__ import annotations

import pytest

from shoal.cluster import leader_of, placement

NAMES = [f"db{i}" for i in range(10_000)]
THREE = ["node-a", "node-b", "node-c"]


def leaders(nodes: list[str]) -> dict[str, str | None]:
    return {name: leader_of(name, nodes) for name in NAMES}


def test_the_score_is_the_first_8_bytes_of_blake2b_of_database_nul_node() -> None:
    assert placement.score("db", "a") == 17952008182235199098  # a format: written out
    assert leader_of("db", ["a", "b", "c"]) == "a"
    assert leader_of("orders", ["node-1", "node-2", "node-3"]) == "node-3"


def test_the_answer_depends_on_the_set_only() -> None:
    for name in NAMES[:200]:
        first = leader_of(name, THREE)
        assert first in THREE
        assert leader_of(name, reversed(THREE)) == first
        assert leader_of(name, (node for node in sorted(THREE, reverse=True))) == first
        assert leader_of(name, THREE + THREE) == first


def test_no_node_no_leader_and_one_node_leads_everything() -> None:
    assert leader_of("db", []) is None
    assert {leader_of(name, ["solo"]) for name in NAMES[:100]} == {"solo"}


def test_a_tie_goes_to_the_greater_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement, "score", lambda database, node: 7)
    assert leader_of("db", ["b", "c", "a"]) == "c"


def test_the_databases_spread_evenly() -> None:
    counts = {node: 0 for node in THREE}
    for leader in leaders(THREE).values():
        assert leader is not None
        counts[leader] += 1
    for node, count in counts.items():
        assert 3000 <= count <= 3700, (node, count)


def test_a_joining_node_takes_about_a_quarter_and_nothing_else_moves() -> None:
    before, after = leaders(THREE), leaders([*THREE, "node-d"])
    moved = [name for name in NAMES if before[name] != after[name]]
    assert all(after[name] == "node-d" for name in moved)
    assert 2200 <= len(moved) <= 2800


@pytest.mark.parametrize("gone", THREE)
def test_a_leaving_node_gives_up_its_own_and_they_spread_over_the_others(gone: str) -> None:
    before = leaders(THREE)
    rest = [node for node in THREE if node != gone]
    after = leaders(rest)
    for name in NAMES:
        if before[name] != gone:
            assert after[name] == before[name]
    takers = [after[name] for name in NAMES if before[name] == gone]
    assert all(takers.count(taker) > len(takers) / 3 for taker in rest)
