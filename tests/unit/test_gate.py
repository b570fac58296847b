"""The gate's bookkeeping: caps per address and per node, and who makes room at the cap."""

from __future__ import annotations

from shoal.errors import Code
from shoal.metrics import METRICS
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


# -- the bookkeeping line by line (numbers written out) -------------------------------------------


def cut_count(reason: str) -> float:
    return METRICS.registry.get_sample_value("shoal_connections_cut_total",
                                             {"reason": reason}) or 0.0


def open_gauge() -> float | None:
    return METRICS.registry.get_sample_value("shoal_connections")


def test_a_new_gate_carries_its_settings_and_counts_nothing() -> None:
    g = Gate(load(overrides={"max_connections": 10, "max_connections_per_client": 7,
                             "header_timeout": 1.5, "body_timeout": 2.5,
                             "max_header_bytes": 1000}, environ={}), fd_limit=1 << 20)
    assert (g.max_total, g.max_per_client) == (10, 7)
    assert (g.header_timeout, g.body_timeout, g.max_header_bytes) == (1.5, 2.5, 1000)
    assert g.members == {} and g.per_client == {} and not g.idle and not g.uploading
    assert g.lingering == 0 and g.evicted == 0


def test_the_cap_is_never_below_16_nor_above_half_the_fds() -> None:
    def total(max_connections: int, fd_limit: int) -> int:
        return Gate(load(overrides={"max_connections": max_connections}, environ={}),
                    fd_limit=fd_limit).max_total

    assert total(4096, 32) == 16
    assert total(4096, 34) == 17
    assert total(4096, 20) == 16  # a tiny fd limit still leaves 16
    assert total(4096, 1) == 16
    assert total(10, 1 << 20) == 10  # the setting, under the fd cap
    assert total(0, 1 << 20) == 524288  # 0: only the fd cap


def test_refusals_say_why_and_count_nothing() -> None:
    g = gate(max_connections=3, max_connections_per_client=2)
    a, b = Conn(g), Conn(g)
    assert g.admit(a, "10.0.0.1") is None and g.admit(b, "10.0.0.1") is None
    assert open_gauge() == 2
    assert g.admit(Conn(g), "10.0.0.1") == (
        "your address holds 2 connections (max_connections_per_client)")
    g.working(a)  # type: ignore[arg-type]
    g.working(b)  # type: ignore[arg-type]
    c = Conn(g)
    assert g.admit(c, "10.0.0.2") is None
    g.working(c)  # type: ignore[arg-type]
    assert g.admit(Conn(g), "10.0.0.3") == "the node holds 3 connections (max_connections)"
    assert list(g.members.values()) == ["10.0.0.1", "10.0.0.1", "10.0.0.2"]
    assert g.per_client == {"10.0.0.1": 2, "10.0.0.2": 1}
    assert open_gauge() == 3 and g.evicted == 0 and g.lingering == 0


def test_no_per_address_cap_at_zero() -> None:
    g = gate(max_connections=100, max_connections_per_client=0)
    for _ in range(50):
        assert g.admit(Conn(g), "10.0.0.1") is None
    assert g.per_client == {"10.0.0.1": 50}


def test_leave_takes_a_connection_out_of_every_count() -> None:
    g = gate(max_connections=10, max_connections_per_client=0)
    a, b, c = Conn(g), Conn(g), Conn(g)
    for conn, host in ((a, "10.0.0.1"), (b, "10.0.0.1"), (c, "10.0.0.2")):
        assert g.admit(conn, host) is None
    g.waiting(a)  # type: ignore[arg-type]
    g.receiving(b)  # type: ignore[arg-type]
    g.leave(a)
    assert a not in g.idle and g.per_client == {"10.0.0.1": 1, "10.0.0.2": 1}
    assert open_gauge() == 2
    g.leave(b)
    assert b not in g.uploading
    assert g.per_client == {"10.0.0.2": 1}  # an address at 0 is forgotten
    assert list(g.members) == [c] and open_gauge() == 1
    g.leave(b)  # twice: nothing more
    g.leave(Conn(g))  # never admitted: nothing
    assert g.per_client == {"10.0.0.2": 1} and list(g.members) == [c]
    g.leave(c)
    assert g.members == {} and g.per_client == {} and open_gauge() == 0


def test_handover_gives_the_place_to_the_websocket() -> None:
    g = gate(max_connections=10, max_connections_per_client=0)
    http, ws = Conn(g), Conn(g)
    assert g.admit(http, "10.0.0.1") is None
    g.receiving(http)  # type: ignore[arg-type]  # the upgrade request's headers are in
    g.handover(http, ws)
    assert g.members == {ws: "10.0.0.1"} and g.per_client == {"10.0.0.1": 1}
    assert not g.idle and not g.uploading
    g.waiting(http)  # type: ignore[arg-type]
    g.handover(http, ws)  # a second handover finds no place: nothing changes
    assert g.members == {ws: "10.0.0.1"} and not g.idle
    g.handover(Conn(g), Conn(g))  # never admitted
    assert g.members == {ws: "10.0.0.1"}
    g.leave(ws)
    assert g.members == {} and g.per_client == {}


def test_the_phases_move_a_connection_between_the_lists() -> None:
    g = gate(max_connections=10, max_connections_per_client=0)
    a, b, c = Conn(g), Conn(g), Conn(g)
    for conn in (a, b, c):
        assert g.admit(conn, "10.0.0.1") is None
        g.waiting(conn)  # type: ignore[arg-type]
    assert list(g.idle) == [a, b, c] and not g.uploading
    g.receiving(a)  # type: ignore[arg-type]
    assert list(g.idle) == [b, c] and list(g.uploading) == [a]
    g.waiting(a)  # type: ignore[arg-type]  # its request done: waits again, last in line
    assert list(g.idle) == [b, c, a] and not g.uploading
    g.receiving(b)  # type: ignore[arg-type]
    g.working(b)  # type: ignore[arg-type]
    g.working(c)  # type: ignore[arg-type]
    assert list(g.idle) == [a] and not g.uploading
    g.receiving(c)  # type: ignore[arg-type]
    g.working(c)  # type: ignore[arg-type]
    assert list(g.idle) == [a] and not g.uploading


def test_eviction_takes_the_oldest_waiting_and_counts_it() -> None:
    g = gate(max_connections=3, max_connections_per_client=0)
    a, b, c = Conn(g), Conn(g), Conn(g)
    for conn in (a, b, c):
        assert g.admit(conn, "10.0.0.1") is None
    g.waiting(b)  # type: ignore[arg-type]
    g.waiting(a)  # type: ignore[arg-type]
    g.receiving(c)  # type: ignore[arg-type]
    evicted = cut_count("evicted")
    d = Conn(g)
    assert g.admit(d, "10.0.0.2") is None
    assert b.evicted and not a.evicted and not c.evicted
    assert g.evicted == 1 and cut_count("evicted") == evicted + 1
    assert list(g.members) == [a, c, d] and list(g.idle) == [a]
    assert g.per_client == {"10.0.0.1": 2, "10.0.0.2": 1} and open_gauge() == 3
    assert g.admit(Conn(g), "10.0.0.2") is None
    assert a.evicted and not c.evicted and g.evicted == 2
    assert cut_count("evicted") == evicted + 2 and open_gauge() == 3


def test_every_raw_answer_is_whole() -> None:
    assert raw_response(Code.HEADERS_TOO_LARGE, "big") == (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
        b"content-length: 120\r\nconnection: close\r\n\r\n"
        b'{"error":{"code":"HEADERS_TOO_LARGE","message":"big","hint":"Send a request line '
        b'and headers within max_header_bytes."}}')
    assert raw_response(Code.TOO_MANY_CONNECTIONS, "full").startswith(
        b"HTTP/1.1 503 Service Unavailable\r\n")
    assert raw_response(Code.REQUEST_TIMEOUT, "late").startswith(
        b"HTTP/1.1 408 Request Timeout\r\n")
    assert raw_response(Code.INTERNAL, "odd").startswith(b"HTTP/1.1 500 \r\ncontent-type")
