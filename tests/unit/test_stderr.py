"""The node's stderr lines: real JSON whatever the message holds, and error codes read
back from what a client was sent (for the access log)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from shoal.errors import ShoalError
from shoal.server import stderr
from shoal.server.hrana_proto import from_shoal
from shoal.server.http import encode, error_code
from shoal.server.stderr import JsonFormatter


def test_a_record_is_one_json_line_whatever_its_message_holds() -> None:
    try:
        raise OSError('disk "data" is\nfull')
    except OSError:
        record = logging.LogRecord("shoal.lease", logging.WARNING, __file__, 1,
                                   'renewing failed: %r', (OSError('a "quoted"\nerror'),),
                                   sys.exc_info())
    record.fields = {"code": "X"}
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "WARNING" and parsed["logger"] == "shoal.lease"
    assert parsed["message"] == "renewing failed: " + repr(OSError('a "quoted"\nerror'))
    assert parsed["code"] == "X" and parsed["ts"].endswith("+00:00")
    assert "Traceback" in parsed["exception"] and 'disk "data" is' in parsed["exception"]


def test_the_error_code_is_read_from_every_error_shape() -> None:
    native = ShoalError("DATABASE_NOT_FOUND", "database 'x' does not exist")
    assert error_code(encode(native.body())) == "DATABASE_NOT_FOUND"
    hrana = from_shoal(ShoalError("TOKEN_INVALID", "bad token"))
    assert error_code(encode(hrana.body())) == "TOKEN_INVALID"
    for body in (b"", b"not json", b'{"error": "text"}', b'{"results": []}', b"[1]"):
        assert error_code(body) == ""


def test_access_lines_leave_together_soon_after_the_first() -> None:
    class Out:
        def __init__(self) -> None:
            self.writes: list[bytes] = []
            self.flushes = 0

        def write(self, data: bytes) -> None:
            self.writes.append(data)

        def flush(self) -> None:
            self.flushes += 1

    out = Out()
    lines = stderr.AccessLines(out)

    async def main() -> None:
        lines.add(b"1\n")
        await asyncio.sleep(0)
        lines.add(b"2\n")
        assert out.writes == []  # held: a write per request is what this saves
        await asyncio.sleep(lines.FLUSH_AFTER * 2)
        assert out.writes == [b"1\n2\n"] and out.flushes == 1
        for i in range(lines.FLUSH_LINES):  # a full batch leaves at once
            lines.add(b"%d\n" % i)
        assert len(out.writes) == 2 and out.writes[1].count(b"\n") == lines.FLUSH_LINES
        lines.add(b"last\n")
        lines.flush()  # the node stopping: now, and its timer is cancelled
        await asyncio.sleep(lines.FLUSH_AFTER * 2)
        lines.flush()

    asyncio.run(main())
    assert out.writes[2:] == [b"last\n"] and out.flushes == 3


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_timestamps_are_datetimes_iso_text(seconds: float) -> None:
    assert stderr.timestamp(seconds) == \
        datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
