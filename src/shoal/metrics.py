"""Prometheus metrics (prometheus_client), one registry per process, served at /metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    open_databases: Gauge
    batch_size: Histogram
    queue_depth: Histogram
    open_transactions: Gauge

    _children: dict[tuple[str, str, int], tuple[Any, Any]] = field(default_factory=dict)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count and time one request; label lookups are cached (they cost on the hot path)."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, status), self.latency.labels(route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _build() -> Metrics:
    reg = CollectorRegistry()
    return Metrics(
        registry=reg,
        requests=Counter("shoal_requests", "HTTP requests by route and status",
                         ["route", "method", "status"], registry=reg),
        latency=Histogram("shoal_request_seconds", "HTTP request latency by route",
                          ["route"], buckets=LATENCY_BUCKETS, registry=reg),
        open_databases=Gauge("shoal_open_databases", "Databases open now", registry=reg),
        batch_size=Histogram("shoal_group_commit_batch_size",
                             "Write requests committed together by one fsync",
                             buckets=SIZE_BUCKETS, registry=reg),
        queue_depth=Histogram("shoal_write_queue_depth",
                              "Writes queued for a database's writer when one arrives",
                              buckets=SIZE_BUCKETS, registry=reg),
        open_transactions=Gauge("shoal_open_transactions", "Interactive transactions open now",
                                registry=reg),
    )


METRICS = _build()
