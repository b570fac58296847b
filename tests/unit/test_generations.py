"""log/generations.py: how embedded replicas number a branch's history, alone."""

from __future__ import annotations

import pytest

from shoal.log import generations as gens
from shoal.log.errors import CorruptObject, LogConflict
from shoal.log.generations import Kind, Line, Place, line_of, moved, place
from shoal.storage.memory import MemoryStore


def test_a_line_has_closed_generations_then_an_open_one() -> None:
    line = Line("t1", fork_txid=5, first=7)
    assert place(line, 7, 0) == Place(Kind.OPEN, 0)
    assert place(line, 7, 2) == Place(Kind.CLOSED, 0)
    assert place(line, 8, 2) == Place(Kind.CLOSED, 1)
    assert place(line, 9, 2) == Place(Kind.OPEN, 2)
    assert place(line, 10, 2) is None  # never had it: another history
    assert place(line, 6, 2) is None  # before the line, and no line before it


def test_a_moved_line_numbers_on_past_the_old_ones_open_generation() -> None:
    entry = {"timeline": "old", "fork_txid": 10, "generation": 100}
    line = moved(entry, 3, "new", 4)  # the old line had 3 cuts: 103 was its open one
    assert line == Line("new", 4, 104, 100)
    assert line_of({"timeline": "new", "fork_txid": 4, **line.entry()}) == line
    assert place(line, 104, 0) == Place(Kind.OPEN, 0)
    assert place(line, 103, 0) == Place(Kind.BRIDGE, -1)
    assert place(line, 100, 0) == place(line, 102, 0) == Place(Kind.PASSED, -1)
    assert place(line, 99, 0) is None  # two lines back
    again = moved({"timeline": "new", "fork_txid": 4, **line.entry()}, 0, "newer", 0)
    assert again == Line("newer", 0, 105, 104)  # one line back is kept, not more
    assert moved({"timeline": "t", "fork_txid": 0}, 0, "u", 0).first == 2  # made before


def test_new_branches_start_at_random_generations() -> None:
    firsts = {gens.fresh()["generation"] for _ in range(50)}
    assert len(firsts) > 45 and all(1 <= f <= gens.FIRST_MAX for f in firsts)
    assert line_of({"timeline": "t", "fork_txid": 0}).first == 1  # made before replicas
    assert gens.FIRST_MAX == 2**30  # 3 billion generations stay above any first one
    assert gens.CHUNK == 1000  # cuts per object: the store's layout of them


def test_cuts_are_made_once() -> None:
    store = MemoryStore()
    assert gens.count_cuts(store, "db", "t") == 0
    assert gens.make_cut(store, "db", "t", 0, 12) == 12
    assert gens.make_cut(store, "db", "t", 0, 15) == 12  # another node's came first
    assert gens.make_cut(store, "db", "t", 1, 20) == 20
    assert gens.make_cut(store, "db", "t", 1, 21) == 20
    assert gens.count_cuts(store, "db", "t") == 2
    assert gens.count_cuts(store, "db", "other") == 0
    assert [gens.read_cut(store, "db", "t", i) for i in (0, 1)] == [12, 20]
    assert gens.cut_key("db", "t", 1) == "dbs/db/sync/t/00000001"
    with pytest.raises(LogConflict):  # cut 3 without cut 2: a stale count
        gens.make_cut(store, "db", "t", 3, 30)
    with pytest.raises(CorruptObject):
        gens.read_cut(store, "db", "t", 2)
    with pytest.raises(LogConflict):  # a chunk that is not there yet, past its first cut
        gens.make_cut(store, "db", "t", gens.CHUNK + 1, 30)


class Racing(MemoryStore):
    """Another node adds cut 1 (txid 19) between a make_cut's read and its write."""

    def put(self, key: str, data: bytes, *, if_none_match: str | None = None,
            if_match: str | None = None) -> str:
        if if_match is not None and not getattr(self, "raced", False):
            self.raced = True
            super().put(key, b'{"cuts": [12, 19]}')
        return super().put(key, data, if_none_match=if_none_match, if_match=if_match)


def test_a_cut_made_meanwhile_by_another_node_wins() -> None:
    store = Racing()
    assert gens.make_cut(store, "db", "t", 0, 12) == 12
    assert gens.make_cut(store, "db", "t", 1, 20) == 19
    assert gens.make_cut(store, "db", "t", 2, 30) == 30
    assert [gens.read_cut(store, "db", "t", i) for i in range(3)] == [12, 19, 30]


class Stalled(MemoryStore):
    """This node's create of a chunk stalls in flight; another node, which took over
    meanwhile, creates it first; then the stalled request reaches the store."""

    def put(self, key: str, data: bytes, *, if_none_match: str | None = None,
            if_match: str | None = None) -> str:
        if if_none_match == "*" and not getattr(self, "stalled", False):
            self.stalled = True
            super().put(key, b'{"cuts": [7]}', if_none_match="*")  # the other node's
        return super().put(key, data, if_none_match=if_none_match, if_match=if_match)


def test_a_stalled_first_cut_released_after_another_node_made_it_loses() -> None:
    store = Stalled()
    assert gens.make_cut(store, "db", "t", 0, 12) == 7  # the store refused the late create
    assert gens.count_cuts(store, "db", "t") == 1
    assert gens.read_cut(store, "db", "t", 0) == 7


def test_cuts_are_counted_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting probes chunks (a few requests, however many there are)."""
    monkeypatch.setattr(gens, "CHUNK", 3)
    store = MemoryStore()
    for count in range(1, 40):
        assert gens.make_cut(store, "db", "t", count - 1, 10 * count) == 10 * count
        assert gens.count_cuts(store, "db", "t") == count
    assert [gens.read_cut(store, "db", "t", i) for i in range(39)] == \
        [10 * i for i in range(1, 40)]
    assert len(list(store.list("dbs/db/sync/t/"))) == 13


def test_a_damaged_chunk_is_named() -> None:
    store = MemoryStore()
    for bad in (b"{}", b"[", b'{"cuts": "1"}', b'{"cuts": [true]}', b'{"cuts": ["1"]}'):
        store.put(gens.cut_key("db", "t", 0), bad)
        with pytest.raises(CorruptObject, match="00000000"):
            gens.read_cut(store, "db", "t", 0)
