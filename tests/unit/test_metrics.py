"""Request metrics counted as plain numbers and exposed at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shoal.metrics import RequestCollector


def _samples(collector: RequestCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_counts_by_route_method_and_status() -> None:
    c = RequestCollector(buckets=(0.1, 1.0))
    for _ in range(3):
        c.observe("/v1/databases/{db}/query", "POST", 200, 0.01)
    c.observe("/v1/databases/{db}/query", "POST", 400, 0.01)
    c.observe("/health", "GET", 200, 0.01)
    got = _samples(c)
    key = (("method", "POST"), ("route", "/v1/databases/{db}/query"))
    assert got[("shoal_requests_total", (*key, ("status", "200")))] == 3
    assert got[("shoal_requests_total", (*key, ("status", "400")))] == 1
    assert got[("shoal_requests_total", (("method", "GET"), ("route", "/health"),
                                         ("status", "200")))] == 1


def test_latency_buckets_are_cumulative_and_inclusive() -> None:
    """A bucket counts observations <= its bound (Prometheus' `le`), the +Inf one all."""
    c = RequestCollector(buckets=(0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 1.0, 3.0):
        c.observe("/r", "GET", 200, seconds)
    got = _samples(c)

    def bucket(le: str) -> float:
        return got[("shoal_request_seconds_bucket", (("le", le), ("route", "/r")))]

    assert (bucket("0.1"), bucket("1.0"), bucket("+Inf")) == (2, 4, 5)
    assert got[("shoal_request_seconds_count", (("route", "/r"),))] == 5
    assert abs(got[("shoal_request_seconds_sum", (("route", "/r"),))] - 4.65) < 1e-9


def test_nothing_observed_shows_no_series() -> None:
    got = _samples(RequestCollector())
    assert not [k for k in got if k[0].startswith("shoal_request")]
