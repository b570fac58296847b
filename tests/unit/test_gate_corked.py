"""server/gate.py's Corked transport: what one turn of the event loop writes leaves as one
write (uvicorn writes a response's head and body apart), and nothing held is lost or sent
out of order by what ends the connection."""

from __future__ import annotations

import asyncio
from typing import Any

from shoal.server.gate import Corked


class Transport:
    """Records what reaches the real transport."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.closing = False
        self.buffered = 7

    def write(self, data: bytes) -> None:
        assert not self.closing, "a write after close"
        self.events.append(bytes(data))

    def writelines(self, lines: list[bytes]) -> None:  # one writev: the events show one write
        assert not self.closing, "a write after close"
        self.events.append(b"".join(lines))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.events.append("close")
        self.closing = True

    def abort(self) -> None:
        self.events.append("abort")
        self.closing = True

    def write_eof(self) -> None:
        self.events.append("eof")

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2),
                "socket": object(), "sslcontext": None}.get(name, default)


def corked() -> tuple[Corked, Transport, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    real = Transport()
    return Corked(real, loop), real, loop  # type: ignore[arg-type]


def turn(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0))


def test_the_writes_of_one_turn_leave_together_at_its_end() -> None:
    t, real, loop = corked()
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(bytearray(b"{}"))
    assert real.events == []
    assert t.get_write_buffer_size() == 7 + 21  # the transport's own and what is held
    turn(loop)
    assert real.events == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
    assert t.get_write_buffer_size() == 7
    t.writelines([b"a", memoryview(b"b")])  # the next turn: one write again
    turn(loop)
    t.write(b"c")
    turn(loop)
    assert real.events[1:] == [b"ab", b"c"]
    turn(loop)  # nothing held: nothing written
    assert len(real.events) == 3
    loop.close()


def test_a_held_buffer_is_copied() -> None:
    t, real, loop = corked()
    data = bytearray(b"abc")
    t.write(data)
    data[:] = b"xyz"
    turn(loop)
    assert real.events == [b"abc"]
    loop.close()


def test_close_and_write_eof_send_what_is_held_first() -> None:
    t, real, loop = corked()
    t.write(b"bye")
    t.write_eof()
    t.write(b"!")
    t.close()
    turn(loop)
    assert real.events == [b"bye", "eof", b"!", "close"]
    loop.close()


def test_abort_drops_what_is_held_as_a_transport_does() -> None:
    t, real, loop = corked()
    t.write(b"lost")
    t.abort()
    real.closing = False  # (whatever the transport says after it)
    assert t.get_write_buffer_size() == 7
    turn(loop)
    assert real.events == ["abort"]
    loop.close()


def test_what_is_held_when_the_peer_goes_is_dropped_not_written() -> None:
    t, real, loop = corked()
    t.write(b"late")
    real.closing = True  # connection_lost: the transport closed under it
    turn(loop)
    assert real.events == []
    assert t.is_closing() and t.get_extra_info("peername") == ("127.0.0.1", 1)
    loop.close()


def test_no_socket_and_no_local_address_reach_uvicorn() -> None:
    """uvicorn reads a new connection's addresses through its socket (uvloop makes a Python
    socket for each); Corked hides the socket and the local address, so uvicorn asks for
    the peer's address alone, which the gate needs."""
    from uvicorn.protocols.utils import get_local_addr, get_remote_addr

    t, _, loop = corked()
    assert t.get_extra_info("socket") is None
    assert t.get_extra_info("sockname", "x") == "x"
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)
    assert t.get_extra_info("unknown", 7) == 7
    assert get_remote_addr(t) == ("127.0.0.1", 1)  # type: ignore[arg-type]
    assert get_local_addr(t) is None  # type: ignore[arg-type]
    loop.close()
