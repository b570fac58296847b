"""The node's stderr lines: real JSON whatever the message holds, and error codes read
back from what a client was sent (for the access log)."""

from __future__ import annotations

import json
import logging
import sys

from shoal.errors import ShoalError
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
