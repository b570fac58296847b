"""log/generations.py: how embedded replicas number a branch's history, alone."""

from __future__ import annotations

from shoal.log import generations as gens
from shoal.log.generations import SPAN, Generation, Line, line_of, locate, moved


def test_a_line_numbers_its_commits_in_spans() -> None:
    line = Line("t1", fork_txid=5, first=7)
    assert line.last(5) == 7 and line.last(5 + SPAN - 1) == 7 and line.last(5 + SPAN) == 8
    assert locate(line, 7, 5) == Generation(7, "t1", 5, None)
    assert locate(line, 8, 5 + SPAN) == Generation(8, "t1", 5 + SPAN, None)
    assert locate(line, 8, 5 + SPAN - 1) is None  # not begun yet
    assert locate(line, 6, 5) is None  # before the line, and no line before it
    gen = locate(line, 7, 5 + 2 * SPAN)
    assert gen is not None
    assert gen.upto(5 + 2 * SPAN) == 5 + SPAN and gen.closed(5 + 2 * SPAN)
    gen = locate(line, 7, 9)
    assert gen is not None
    assert gen.upto(9) == 9 and not gen.closed(9)
    full = locate(line, 7, 5 + SPAN)  # its last commit is the head: it is over
    assert full is not None and full.closed(5 + SPAN) and not full.closed(5 + SPAN - 1)


def test_the_numbering_is_pinned() -> None:
    """Replicas hold positions numbered by these: changing one strands every replica."""
    assert SPAN == 1000
    assert gens.FIRST_MAX == 2**30  # 3 billion generations stay above any first one


def test_a_moved_line_numbers_on_past_the_old_one_and_bridges_to_it() -> None:
    entry = {"timeline": "old", "fork_txid": 10, "generation": 100}
    head = 10 + 2 * SPAN + 3  # the old line's last generation is 102
    line = moved(entry, head, "new", 4)
    assert line == Line("new", 4, 103, Line("old", 10, 100, head=head))
    assert line_of({"timeline": "new", "fork_txid": 4, **line.entry()}) == line
    assert locate(line, 103, 4) == Generation(103, "new", 4, None)
    assert locate(line, 102, 50) == Generation(102, "old", 10 + 2 * SPAN, head, ("new", 4))
    assert locate(line, 101, 50) == Generation(101, "old", 10 + SPAN, 10 + 2 * SPAN)
    assert locate(line, 100, 50) == Generation(100, "old", 10, 10 + SPAN)
    assert locate(line, 99, 50) is None  # two lines back
    again = moved({"timeline": "new", "fork_txid": 4, **line.entry()}, 4, "newer", 0)
    assert again.first == 104 and again.previous is not None
    assert again.previous.previous is None  # one line back is kept, not more


def test_a_line_sealed_at_a_span_boundary_still_has_its_last_generation() -> None:
    line = moved({"timeline": "old", "fork_txid": 0}, SPAN, "new", 3)  # an entry of before
    assert line.first == 3  # the old line's generations were 1 and 2 (2 holds no commit)
    gen = locate(line, 2, 3)
    assert gen == Generation(2, "old", SPAN, SPAN, ("new", 3))
    assert gen.upto(3) == SPAN  # no commit of its own: only the bridge


def test_new_branches_start_at_random_generations() -> None:
    firsts = {gens.fresh()["generation"] for _ in range(50)}
    assert len(firsts) > 45 and all(1 <= f <= gens.FIRST_MAX for f in firsts)
    assert line_of({"timeline": "t", "fork_txid": 0}).first == 1  # made before replicas
