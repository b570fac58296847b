"""engine/quota.py (per-database limits): resolved against the node's defaults, periods, the rate
bucket."""

from __future__ import annotations

import pytest

from shoal.engine.quota import DatabaseLimits, Quotas, decode_limits
from shoal.errors import ShoalError


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_own_limits_override_the_node_defaults_and_zero_means_none() -> None:
    q = Quotas(DatabaseLimits(size_bytes=1 << 20, rows_read=100, period=60), max_transactions=64)
    assert q.of("a").size_bytes == 1 << 20 and q.of("a").period == 60
    q.set("a", DatabaseLimits(size_bytes=0, rows_read=5, transactions=1000))
    a = q.of("a")
    assert (a.size_bytes, a.rows_read, a.period, a.transactions) == (0, 5, 60, 64)
    q.set("a", DatabaseLimits())  # back to the defaults
    assert q.of("a").rows_read == 100 and "a" not in q.own


def test_row_limits_refuse_until_the_period_ends() -> None:
    clock = Clock(1_000_000.0)  # 1,000,000 = 277 h 46 min 40 s: mid-period for 3600
    q = Quotas(DatabaseLimits(), 64, clock)
    q.set("a", DatabaseLimits(rows_read=10, rows_written=3, period=3600))
    q.admit("a", writes=True)
    q.meter("a", 12, 3)  # one request may pass the limit; the next is refused
    with pytest.raises(ShoalError) as err:
        q.admit("a")
    assert err.value.code == "QUOTA_EXCEEDED" and err.value.extra["limit"] == "rows_read"
    assert err.value.extra["resets_at"] == "1970-01-12T14:00:00Z"
    assert err.value.extra["retry_after"] == 1_000_800 - 1_000_000
    q.set("a", DatabaseLimits(rows_written=3, period=3600))  # reads unlimited now, writes still not
    q.admit("a")
    with pytest.raises(ShoalError) as err:
        q.admit_write("a")
    assert err.value.extra["limit"] == "rows_written" and err.value.extra["used"] == 3
    q.admit("b", writes=True)  # another database: untouched
    clock.now = 1_000_800.0  # the next period
    q.admit_write("a")
    assert q.period_of("a")["rows_written"] == 0


def test_a_clock_going_back_keeps_the_counts() -> None:
    clock = Clock(7200.0)
    q = Quotas(DatabaseLimits(rows_written=1, period=3600), 64, clock)
    q.meter("a", 0, 1)
    clock.now = 7100.0
    with pytest.raises(ShoalError):
        q.admit_write("a")


def test_the_rate_bucket_holds_one_second() -> None:
    q = Quotas(DatabaseLimits(queries_per_second=3), 64)
    for _ in range(3):
        q.admit("a")
    with pytest.raises(ShoalError) as err:
        q.admit("a")
    assert err.value.code == "RATE_LIMITED" and 0 < err.value.extra["retry_after"] <= 1 / 3 + 0.01
    q.admit("b")  # its own bucket


def test_period_counts_are_saved_and_loaded() -> None:
    clock = Clock(100.0)
    q = Quotas(DatabaseLimits(rows_written=10, period=3600), 64, clock)
    q.meter("a", 2, 9)
    again = Quotas(DatabaseLimits(rows_written=10, period=3600), 64, clock)
    again.load(q.saved())
    again.meter("a", 0, 1)
    with pytest.raises(ShoalError):
        again.admit_write("a")


@pytest.mark.parametrize("body", [b'{"size_bytes": -1}', b'{"period": 0}', b'{"nope": 1}',
                                  b'{"size_bytes": 100}', b'{"queries_per_second": 1e999}',
                                  b'[]', b'{"rows_read": 1.5}'])
def test_malformed_limits_are_invalid_requests(body: bytes) -> None:
    with pytest.raises(ShoalError) as err:
        decode_limits(body)
    assert err.value.code == "INVALID_REQUEST"


def test_limits_round_trip_through_a_record() -> None:
    limits = decode_limits(b'{"size_bytes": 65536, "queries_per_second": 2.5, "rows_read": null}')
    assert limits == decode_limits({"size_bytes": 65536, "queries_per_second": 2.5})
