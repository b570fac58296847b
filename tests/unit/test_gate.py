"""The gate's bookkeeping: caps per address and per node, and who makes room at the cap."""

from __future__ import annotations

from shoal.errors import Code
from shoal.server.gate import Gate, raw_response
from shoal.settings import load


class Conn:
    """Stands in for a protocol object: the gate only calls evict() on it."""

    def __init__(self, gate: Gate):
        self.gate = gate
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True
        self.gate.leave(self)


def gate(**settings: int) -> Gate:
    return Gate(load(overrides=settings, environ={}), fd_limit=1 << 20)


def test_one_address_holds_at_most_its_cap() -> None:
    g = gate(max_connections_per_client=2)
    a, b, c = Conn(g), Conn(g), Conn(g)
    assert g.admit(a, "10.0.0.1") is None and g.admit(b, "10.0.0.1") is None
    assert "max_connections_per_client" in (g.admit(c, "10.0.0.1") or "")
    assert g.admit(c, "10.0.0.2") is None
    g.leave(a)
    assert g.admit(Conn(g), "10.0.0.1") is None


def test_at_the_node_cap_the_longest_waiting_makes_room() -> None:
    g = gate(max_connections=3, max_connections_per_client=0)
    busy, slow, upload = Conn(g), Conn(g), Conn(g)
    for conn in (busy, slow, upload):
        assert g.admit(conn, "10.0.0.1") is None
    g.working(busy)  # type: ignore[arg-type]
    g.waiting(slow)  # type: ignore[arg-type]
    g.receiving(upload)  # type: ignore[arg-type]
    first = Conn(g)
    assert g.admit(first, "10.0.0.2") is None
    assert slow.evicted and not upload.evicted  # waiting for a request goes first
    assert g.admit(Conn(g), "10.0.0.2") is None
    assert upload.evicted and not busy.evicted  # then one still sending its body
    assert "max_connections" in (g.admit(Conn(g), "10.0.0.2") or "")  # nobody to evict
    assert len(g.members) == 3 and g.evicted == 2


def test_the_cap_is_at_most_half_the_fd_limit() -> None:
    settings = load(overrides={"max_connections": 4096}, environ={})
    assert Gate(settings, fd_limit=1024).max_total == 512
    assert Gate(load(overrides={"max_connections": 0}, environ={}), 1000).max_total == 500


def test_raw_answers_carry_the_envelope() -> None:
    raw = raw_response(Code.REQUEST_TIMEOUT, "too slow")  # the status is the code's
    head, body = raw.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout") and b"connection: close" in head
    assert f"content-length: {len(body)}".encode() in head
    assert body.startswith(b'{"error":{"code":"REQUEST_TIMEOUT","message":"too slow"')
