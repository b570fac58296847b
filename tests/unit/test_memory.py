"""The node's memory ceiling: refuse past it, take work again under nine tenths of it."""

from __future__ import annotations

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
