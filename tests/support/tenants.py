"""Two tenants on one real node: the attacker's own database and token, and a second
tenant whose point query is timed in a loop on a thread while the attack runs (issue 12:
"a second tenant's latency is the measure")."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from tests.integration.api_support import make_token
from tests.support.server import SSL_CONTEXT, ServerProcess


@dataclass
class Tenant:
    db: str
    token: str


def tenant(node: ServerProcess, name: str, access: str = "write") -> Tenant:
    with node.client() as admin:
        r = admin.post("/v1/databases", json={"name": name})
        assert r.status_code == 201, r.text
        return Tenant(name, make_token(admin, [name], access)[1])


def client(node: ServerProcess, who: Tenant, source: str = "127.0.0.1",
           timeout: float = 30, fresh: bool = False) -> httpx.Client:
    """An HTTP client from this address; ``fresh``: a new connection per request."""
    limits = httpx.Limits(max_keepalive_connections=0 if fresh else 20)
    return httpx.Client(base_url=node.url, timeout=timeout, verify=SSL_CONTEXT,
                        headers={"Authorization": f"Bearer {who.token}"},
                        transport=httpx.HTTPTransport(local_address=source, limits=limits))


@dataclass
class Timed:
    """The second tenant's point query, timed in a loop on a thread."""

    node: ServerProcess
    who: Tenant
    fresh: bool = False  # a new connection per query, as serverless functions do
    samples: list[tuple[float, int | str]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with client(self.node, self.who, timeout=10, fresh=self.fresh) as http:
            while not self.done.is_set():
                started = time.perf_counter()
                try:
                    r = http.post(f"/v1/databases/{self.who.db}/query",
                                  json={"statements": ["SELECT 40 + 2"]})
                    status: int | str = r.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.samples.append((time.perf_counter() - started, status))
                time.sleep(0.005)

    def report(self, case: str) -> float:
        """Print the figure: the second tenant's p99 while the attack ran."""
        statuses = Counter(status for _, status in self.samples)
        latencies = sorted(elapsed for elapsed, _ in self.samples) or [float("nan")]
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"\n{case}: second tenant p99 {p99 * 1000:.1f} ms, max "
              f"{latencies[-1] * 1000:.1f} ms over {len(self.samples)} queries {dict(statuses)}")
        return p99

    def check(self, case: str) -> None:
        p99 = self.report(case)
        statuses = Counter(status for _, status in self.samples)
        assert len(self.samples) >= 5, f"{case}: only {len(self.samples)} queries ran"
        assert statuses == Counter({200: len(self.samples)}), statuses
        assert p99 < 1.0, f"{case}: p99 {p99:.3f} s"


@contextmanager
def timed(node: ServerProcess, who: Tenant, case: str, fresh: bool = False) -> Iterator[Timed]:
    """Time the second tenant while the block runs; then check it and the node's log."""
    probe = Timed(node, who, fresh)
    thread = threading.Thread(target=probe.run, daemon=True)
    thread.start()
    time.sleep(0.2)  # a few queries before the attack starts
    try:
        yield probe
    except BaseException:
        probe.done.set()
        thread.join(30)
        probe.report(case)
        raise
    time.sleep(0.2)
    probe.done.set()
    thread.join(30)
    probe.check(case)
    no_traceback(node)


def no_traceback(node: ServerProcess) -> None:
    assert node.log_path is not None
    text = node.log_path.read_text(errors="replace")
    assert "Traceback" not in text and "Exception in ASGI" not in text, text[-3000:]


