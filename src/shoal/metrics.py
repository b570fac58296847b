"""Prometheus metrics (prometheus_client), one registry per process, served at /metrics."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
T = TypeVar("T")


class RequestCollector:
    """``shoal_requests_total`` and ``shoal_request_seconds`` kept as plain numbers and
    turned into metrics at scrape time: a prometheus_client child takes a lock per update,
    and a request made three (about 2 us of the hot path). Updated on the event loop only."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self.counts: dict[tuple[str, str, int], int] = {}
        # route -> a count per bucket (the last one past every bound), then the sum
        self.latency: dict[str, list[float]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        times = self.latency.get(route)
        if times is None:
            times = self.latency[route] = [0] * (len(self.buckets) + 2)
        times[bisect_left(self.buckets, seconds)] += 1  # le: the first bound >= seconds
        times[-1] += seconds

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily("shoal_requests", "HTTP requests by route and status",
                                       labels=["route", "method", "status"])
        for (route, method, status), total in sorted(self.counts.items()):
            requests.add_metric([route, method, str(status)], total)
        latency = HistogramMetricFamily("shoal_request_seconds", "HTTP request latency by route",
                                        labels=["route"])
        bounds = [*map(str, map(float, self.buckets)), "+Inf"]
        for route, times in sorted(self.latency.items()):
            running, cumulative = 0, []
            for bound, observed in zip(bounds, times, strict=False):  # times ends with the sum
                running += int(observed)
                cumulative.append((bound, running))
            latency.add_metric([route], cumulative, sum_value=times[-1])
        yield requests
        yield latency


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: RequestCollector
    open_databases: Gauge
    batch_size: Histogram
    queue_depth: Histogram
    open_transactions: Gauge
    log_cpu: Counter
    log_segments: Counter
    log_bytes: Counter
    log_upload_failures: Counter
    log_checkpoints: Counter
    log_snapshots: Counter
    log_unshipped: Gauge
    log_lag: Gauge
    lease_held: Gauge
    lease_renewal_failures: Counter
    log_fenced_commits: Counter
    cluster_members: Gauge
    cluster_claims: Counter
    cluster_releases: Counter
    cluster_forwarded: Counter
    cluster_forward_failures: Counter
    cluster_served_by_replica: Counter
    replica_hydrations: Counter
    replica_applied: Counter
    replica_lag: Histogram
    readiness: Gauge
    connections: Gauge
    connections_cut: Counter
    quota_refusals: Counter
    cors_refusals: Counter
    compactions: Counter
    audit_written: Counter
    audit_dropped: Counter

    _cpu_children: dict[str, Any] = field(default_factory=dict)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count and time one request (on the event loop)."""
        self.requests.observe(route, method, status, seconds)

    def cpu(self, work: str, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args), adding the CPU time it took on this thread to shoal_log_cpu."""
        started = time.thread_time()
        try:
            return fn(*args)
        finally:
            child = self._cpu_children.get(work)
            if child is None:
                child = self._cpu_children[work] = self.log_cpu.labels(work)
            child.inc(time.thread_time() - started)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _build() -> Metrics:
    reg = CollectorRegistry()
    requests = RequestCollector()
    reg.register(requests)
    return Metrics(
        registry=reg,
        requests=requests,
        open_databases=Gauge("shoal_open_databases", "Databases open now", registry=reg),
        batch_size=Histogram("shoal_group_commit_batch_size",
                             "Write requests committed together by one fsync",
                             buckets=SIZE_BUCKETS, registry=reg),
        queue_depth=Histogram("shoal_write_queue_depth",
                              "Writes queued for a database's writer when one arrives",
                              buckets=SIZE_BUCKETS, registry=reg),
        open_transactions=Gauge("shoal_open_transactions", "Interactive transactions open now",
                                registry=reg),
        log_cpu=Counter("shoal_log_cpu_seconds", "CPU time spent on the commit log by kind of "
                        "work: capture, encode, upload, checkpoint, snapshot", ["work"],
                        registry=reg),
        log_segments=Counter("shoal_log_segments", "Segments uploaded to the object store",
                             registry=reg),
        log_bytes=Counter("shoal_log_segment_bytes", "Compressed segment bytes uploaded",
                          registry=reg),
        log_upload_failures=Counter("shoal_log_upload_failures",
                                    "Failed segment uploads (each is retried)", registry=reg),
        log_checkpoints=Counter("shoal_log_checkpoints", "Checkpoints of durable WAL frames",
                                registry=reg),
        log_snapshots=Counter("shoal_log_snapshots", "Snapshots uploaded", registry=reg),
        log_unshipped=Gauge("shoal_log_unshipped_commits", "Commits of open branches not yet "
                            "in the object store", registry=reg),
        log_lag=Gauge("shoal_log_lag_seconds", "Age of the oldest commit not yet in the "
                      "object store, over every open branch (0 when all are shipped)",
                      registry=reg),
        lease_held=Gauge("shoal_lease_held", "1 while this node holds the object store's "
                         "lease (it takes writes), else 0", registry=reg),
        lease_renewal_failures=Counter("shoal_lease_renewal_failures", "Failed renewals of "
                                       "the object store's lease (each retried)", registry=reg),
        cluster_members=Gauge("shoal_cluster_members", "Live members of this node's cluster as "
                              "it sees them, itself included (0 outside a cluster)",
                              registry=reg),
        cluster_claims=Counter("shoal_cluster_claims", "Databases this node took the lead of "
                               "(a claim asks the other members to release them)",
                               registry=reg),
        cluster_releases=Counter("shoal_cluster_releases", "Databases this node handed over "
                                 "to another member that claimed them", registry=reg),
        cluster_forwarded=Counter("shoal_cluster_forwarded", "Requests forwarded to the "
                                  "leader of their database, by protocol", ["protocol"],
                                  registry=reg),
        cluster_forward_failures=Counter("shoal_cluster_forward_failures", "Forwarded "
                                         "requests the leader could not be reached for "
                                         "(answered LEADER_UNAVAILABLE)", registry=reg),
        cluster_served_by_replica=Counter("shoal_cluster_served_by_replica", "Reads of a "
                                          "database led by another node, served here from "
                                          "this node's replica", registry=reg),
        replica_hydrations=Counter("shoal_replica_hydrations", "Replica copies made from the "
                                   "store (a new replica, a gap in the leader's feed, "
                                   "another timeline)", registry=reg),
        replica_applied=Counter("shoal_replica_applied", "Batches of the leaders' durable "
                                "commits applied to this node's replicas", registry=reg),
        replica_lag=Histogram("shoal_replica_lag_seconds", "Seconds from a commit on its "
                              "leader to its apply on a replica here (clocks of two nodes)",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                       10), registry=reg),
        log_fenced_commits=Counter("shoal_log_fenced_commits", "Commits made on this node "
                                   "that never became history: another writer took their "
                                   "timeline first (with local durability they had been "
                                   "acknowledged; with remote durability never)", registry=reg),
        readiness=Gauge("shoal_readiness", "What GET /ready says: 0 ok, 1 degraded (serving, "
                        "needs attention), 2 read_only (writes are refused)", registry=reg),
        connections=Gauge("shoal_connections", "Client connections open now (HTTP and "
                          "WebSocket)", registry=reg),
        connections_cut=Counter("shoal_connections_cut", "Connections the node refused or "
                                "closed to protect itself, by reason: refused (a cap), "
                                "evicted (room for a new one), header_timeout, body_timeout, "
                                "headers_too_large", ["reason"], registry=reg),
        quota_refusals=Counter("shoal_quota_refusals", "Requests refused for a database's "
                               "limit, by limit: rows_read, rows_written, queries_per_second, "
                               "size_bytes, transactions", ["limit"], registry=reg),
        cors_refusals=Counter("shoal_cors_refusals", "Browser requests refused for their "
                              "page's origin (ORIGIN_NOT_ALLOWED), by kind: preflight, "
                              "websocket", ["kind"], registry=reg),
        compactions=Counter("shoal_compactions", "Databases compacted on request (VACUUM, "
                            "then the log re-based on a snapshot)", registry=reg),
        audit_written=Counter("shoal_audit_written_records", "Audit log records this node "
                              "wrote to the object store", registry=reg),
        audit_dropped=Counter("shoal_audit_dropped_records", "Audit log records this node "
                              "dropped: the store did not take them and audit_buffer was "
                              "full (the oldest go first)", registry=reg),
    )


class UsageCollector:
    """Per-database usage at scrape time (``shoal_database_*``): the counts saved in the
    catalog plus those still in memory, so /metrics shows work within a scrape."""

    def __init__(self, usage: Callable[[], dict[str, tuple[int, int, int]]]):
        self.usage = usage

    def collect(self) -> Iterator[CounterMetricFamily]:
        names = ("rows_read", "Rows a database's queries returned"), \
            ("rows_written", "Rows a database's queries wrote"), \
            ("queries", "Queries run on a database (a request's statements, or one Hrana "
                        "statement or batch)")
        families = [CounterMetricFamily(f"shoal_database_{n}", doc, labels=["database",
                                                                           "branch"])
                    for n, doc in names]
        for key, counts in sorted(self.usage().items()):
            database, _, branch = key.partition("/")
            for family, value in zip(families, counts, strict=True):
                family.add_metric([database, branch or "main"], value)
        yield from families


METRICS = _build()
