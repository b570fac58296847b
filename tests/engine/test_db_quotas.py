"""engine/quota.py (per-database limits): resolved against the node's defaults, periods, the rate
bucket."""

from __future__ import annotations

import pytest

from shoal.engine.quota import DatabaseLimits, Quotas, decode_limits, encode_limits
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


def test_zero_and_the_smallest_size_are_valid_limits() -> None:
    assert decode_limits(b'{"rows_read": 0, "size_bytes": 0}') == \
        DatabaseLimits(size_bytes=0, rows_read=0)
    assert decode_limits(b'{"size_bytes": 65536}').size_bytes == 65536
    for bad in (b'{"size_bytes": 1}', b'{"size_bytes": 65535}', b'{"rows_read": -1}', b"{",
                b'{"period": "day"}'):
        with pytest.raises(ShoalError):
            decode_limits(bad)
    assert decode_limits(None) == DatabaseLimits()
    assert decode_limits("{}") == DatabaseLimits()


def test_limits_encode_only_what_is_set() -> None:
    assert encode_limits(DatabaseLimits(size_bytes=65536, queries_per_second=2.5)) == \
        {"size_bytes": 65536, "queries_per_second": 2.5}
    assert encode_limits(DatabaseLimits()) == {}


def test_effective_limits_as_usage_shows_them() -> None:
    q = Quotas(DatabaseLimits(), max_transactions=64)
    assert q.of("a").as_dict() == {"size_bytes": 0, "rows_read": 0, "rows_written": 0,
                                   "period": 86400, "queries_per_second": 0.0,
                                   "transactions": 64}
    assert not q.of("a").metered
    effective = q.set("a", DatabaseLimits(transactions=8, queries_per_second=1))
    assert effective.transactions == 8 and effective.metered
    assert q.of("a") is q.of("a")  # resolved once, until the limits change
    q.set("a", DatabaseLimits(transactions=9))
    assert q.of("a").transactions == 9


def test_new_limits_start_a_new_bucket_and_forget_drops_everything() -> None:
    now = [0.0]
    q = Quotas(DatabaseLimits(), 64, monotonic=lambda: now[0])
    q.set("a", DatabaseLimits(queries_per_second=1, rows_written=1, period=3600))
    q.admit("a")
    with pytest.raises(ShoalError):
        q.admit("a")
    q.set("a", DatabaseLimits(queries_per_second=1, rows_written=1, period=3600))
    q.admit("a")  # a new bucket with the new limits
    q.meter("a", 0, 1)
    q.forget("a")
    assert "a" not in q.own and "a" not in q.windows
    q.admit("a", writes=True)  # no limits, no counts
    q.admit_write("a")


def test_the_bucket_refills_at_its_rate_up_to_one_second() -> None:
    now = [100.0]
    q = Quotas(DatabaseLimits(queries_per_second=2), 64, monotonic=lambda: now[0])
    q.admit("a")
    q.admit("a")
    with pytest.raises(ShoalError) as err:
        q.admit("a")
    assert err.value.extra["retry_after"] == 0.5
    now[0] += 0.5  # one more query's worth
    q.admit("a")
    with pytest.raises(ShoalError):
        q.admit("a")
    now[0] += 60  # a long pause fills the bucket to one second's worth, not more
    q.admit("a")
    q.admit("a")
    with pytest.raises(ShoalError):
        q.admit("a")
    slow = Quotas(DatabaseLimits(queries_per_second=0.5), 64, monotonic=lambda: now[0])
    slow.admit("b")  # below one per second the bucket still holds one
    with pytest.raises(ShoalError) as err:
        slow.admit("b")
    assert err.value.extra["retry_after"] == 2.0


def test_reads_are_refused_at_the_limit_and_writes_only_when_writing() -> None:
    clock = Clock(1_000_000.0)
    q = Quotas(DatabaseLimits(), 64, clock)
    q.set("a", DatabaseLimits(rows_read=5, rows_written=2, period=3600))
    q.meter("a", 4, 2)
    q.admit("a")  # 4 of 5 read: still allowed
    with pytest.raises(ShoalError) as err:
        q.admit("a", writes=True)  # writes: the written limit is used
    assert err.value.extra["limit"] == "rows_written"
    q.meter("a", 1, 0)
    with pytest.raises(ShoalError) as err:
        q.admit("a")  # exactly at the limit
    assert err.value.extra == {"limit": "rows_read", "value": 5, "used": 5,
                               "resets_at": "1970-01-12T14:00:00Z", "retry_after": 800.0}
    only_writes = Quotas(DatabaseLimits(rows_written=1, period=3600), 64, clock)
    only_writes.meter("b", 100, 1)
    only_writes.admit("b")  # reading is not limited
    with pytest.raises(ShoalError):
        only_writes.admit("b", writes=True)


def test_a_database_without_limits_is_not_counted() -> None:
    q = Quotas(DatabaseLimits(), 64)
    q.meter("a", 10, 10)
    assert q.windows == {} and q.saved() == {}
    q.set("b", DatabaseLimits(size_bytes=65536))  # its own limits, but none metered
    q.admit("b", writes=True)
    q.meter("b", 1, 1)
    assert q.period_of("b")["rows_read"] == 1


def test_periods_start_at_multiples_of_their_length() -> None:
    clock = Clock(86400 * 3 + 5.0)
    q = Quotas(DatabaseLimits(rows_read=10), 64, clock)  # the default period: a day
    q.meter("a", 3, 0)
    assert q.period_of("a") == {"start": "1970-01-04T00:00:00Z",
                                "resets_at": "1970-01-05T00:00:00Z",
                                "rows_read": 3, "rows_written": 0}
    clock.now = 86400 * 4.0  # exactly the next period
    assert q.period_of("a")["rows_read"] == 0
    q.meter("a", 1, 0)
    assert q.saved() == {"a": (86400 * 4.0, 1, 0)}


def test_limits_of_the_wrong_type_are_invalid_requests() -> None:
    for body in ({"size_bytes": "big"}, {"period": [60]}, {"rows_read": 1.5}):
        with pytest.raises(ShoalError) as err:
            decode_limits(body)  # a dict goes through msgspec.convert: a ValidationError
        assert err.value.code == "INVALID_REQUEST" and "limits" in err.value.message


def _refusals(limit: str) -> float:
    from shoal.metrics import METRICS
    return METRICS.quota_refusals.labels(limit)._value.get()  # type: ignore[attr-defined]


def test_each_refusal_is_counted_with_its_limit_and_an_exact_retry_after() -> None:
    clock = Clock(3600.0 * 10 + 3599.12345)  # 0.87655 s before the period's end
    now = [0.0]
    q = Quotas(DatabaseLimits(), 64, clock, monotonic=lambda: now[0])
    q.set("a", DatabaseLimits(rows_read=1, rows_written=1, period=3600, queries_per_second=3))
    before = {k: _refusals(k) for k in ("rows_read", "rows_written", "queries_per_second")}
    q.admit("a")
    q.meter("a", 1, 1)
    with pytest.raises(ShoalError) as err:
        q.admit("a")
    assert err.value.extra["retry_after"] == 0.877  # rounded to the millisecond, under 1 s
    with pytest.raises(ShoalError):
        q.admit_write("a")
    now[0] = 0.0
    q.set("b", DatabaseLimits(queries_per_second=3))
    for _ in range(3):
        q.admit("b")
    now[0] = 1 / 7  # 3/7 of a token back: the next one is 4/21 s away
    with pytest.raises(ShoalError) as err:
        q.admit("b")
    assert err.value.extra["retry_after"] == 0.19
    after = {k: _refusals(k) for k in before}
    assert {k: after[k] - before[k] for k in before} == {
        "rows_read": 1, "rows_written": 1, "queries_per_second": 1}


def test_a_database_without_a_window_shows_zero_counts() -> None:
    q = Quotas(DatabaseLimits(rows_read=5), 64, Clock(100.0))
    assert q.period_of("never") == {"start": "1970-01-01T00:00:00Z",
                                    "resets_at": q.period_of("never")["resets_at"],
                                    "rows_read": 0, "rows_written": 0}
