"""The node's memory ceiling: refuse past it, take work again under nine tenths of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shoal.engine import memory
from shoal.engine.health import Health
from shoal.errors import ShoalError


def test_past_the_ceiling_new_work_is_refused_until_well_under_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rss = [500 << 20]
    monkeypatch.setattr(memory, "resident", lambda: rss[0])
    trimmed = []
    health = Health()
    m = memory.Memory(1000 << 20, health, lambda: trimmed.append(1))
    m.check()
    m.refuse()  # under: nothing
    rss[0] = 1100 << 20
    m.check()
    assert m.over and trimmed  # freed what it could first, still over
    with pytest.raises(ShoalError) as err:
        m.refuse()
    assert err.value.code == "OVERLOADED" and err.value.status == 503
    assert health.active("memory")
    rss[0] = 950 << 20  # under the ceiling, not yet under nine tenths
    m.check()
    assert m.over
    rss[0] = 850 << 20
    m.check()
    assert not m.over and not health.active("memory")
    m.refuse()


def test_the_ceiling_defaults_to_a_share_of_what_the_process_may_use() -> None:
    assert memory.ceiling(123) == 123
    assert 0 < memory.ceiling(0) <= memory.available()
    assert memory.resident() > 0


def test_resident_reads_the_second_field_of_statm_in_pages(tmp_path: Path) -> None:
    statm = tmp_path / "statm"
    statm.write_bytes(b"1000 25 3 4 0 5 0\n")
    assert memory.resident(str(statm)) == 25 * os.sysconf("SC_PAGE_SIZE")
    for odd in (b"", b"1000", b"1000 many 3"):
        statm.write_bytes(odd)
        assert memory.resident(str(statm)) == 0
    assert memory.resident(str(tmp_path / "missing")) == 0


def test_available_takes_the_first_cgroup_limit_that_is_one(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "memory.max", tmp_path / "limit_in_bytes"
    machine = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert memory.available((str(v2), str(v1))) == machine  # no cgroup files
    v2.write_text("max\n")  # v2 without a limit: the next file
    v1.write_text("536870912\n")
    assert memory.available((str(v2), str(v1))) == 512 << 20
    v2.write_text("1073741824\n")
    assert memory.available((str(v2), str(v1))) == 1 << 30
    v2.write_text(str(1 << 60))  # v1's "no limit" is a huge number
    v1.write_text(str((1 << 60) - 1))
    assert memory.available((str(v2), str(v1))) == (1 << 60) - 1
    v1.write_text(str(1 << 62))
    assert memory.available((str(v2), str(v1))) == machine
    assert memory.ceiling(0) == int(memory.available() * 0.8)


def test_at_the_ceiling_exactly_is_not_past_it(monkeypatch: pytest.MonkeyPatch) -> None:
    rss = [1000]
    monkeypatch.setattr(memory, "resident", lambda: rss[0])
    collected: list[int] = []
    monkeypatch.setattr(memory.gc, "collect", lambda: collected.append(1))
    health = Health()
    m = memory.Memory(1000, health)
    m.check()
    assert not m.over and not collected and m.rss == 1000
    rss[0] = 1001
    m.check()
    assert m.over and collected == [1] and m.rss == 1001  # collected first, no trim given
    assert health.active("memory")
    rss[0] = 900  # exactly nine tenths: not yet under it
    m.check()
    assert m.over
    rss[0] = 899
    m.check()
    assert not m.over
    rss[0] = 5000
    trimmed: list[int] = []
    m.trim = lambda: (trimmed.append(1), rss.__setitem__(0, 999))
    m.check()  # collecting and trimming brought it back under: not refused
    assert trimmed == [1] and not m.over and m.rss == 999
    off = memory.Memory(0, Health())  # no ceiling: never reads, never refuses
    off.check()
    assert off.rss == 0 and not off.over


def test_where_it_reads_and_what_it_falls_back_to(monkeypatch: pytest.MonkeyPatch) -> None:
    assert memory.STATM == "/proc/self/statm"
    assert memory.CGROUP_LIMITS == ("/sys/fs/cgroup/memory.max",
                                    "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert memory.ceiling(1) == 1  # any setting above 0 is the ceiling itself

    for error in (OSError, ValueError, AttributeError):
        def broken(name: str, error: type[Exception] = error) -> int:
            raise error(name)
        monkeypatch.setattr(memory.os, "sysconf", broken)
        assert memory.available(()) == 0  # nothing known: no automatic ceiling
    monkeypatch.undo()


def test_back_at_the_ceiling_after_collecting_is_not_past_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rss = [2000]
    monkeypatch.setattr(memory, "resident", lambda: rss[0])
    m = memory.Memory(1000, Health(), lambda: rss.__setitem__(0, 1000))
    m.check()
    assert not m.over and m.rss == 1000
