"""The node's stderr: one JSON object per line while the access log is on, else plain text.

The access log is JSON lines, so a log shipper reading a node's stderr gets one format:
every record of every logger (Shoal's, uvicorn's, Python warnings), uncaught exceptions
(the traceback in ``exception``) and the start-up lines, each an object with ``ts``,
``level``, ``logger`` and ``message``. A node run without the access log (at a terminal,
in the tests) writes plain lines, which a person reads more easily.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from shoal.errors import ShoalError

log = logging.getLogger("shoal")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# their info lines are chatter ("Found credentials in environment variables."), each start
CHATTY = ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "httpcore")  # a line per call
_json_lines = False


_second: tuple[int, str] = (-1, "")  # the last whole second timestamp() wrote, as text


def timestamp(seconds: float) -> str:
    """ISO 8601 in UTC to the millisecond (as ``datetime.isoformat`` writes it): the ``ts``
    of every JSON line. A second's text is made once (an access log line per request)."""
    global _second
    whole = int(seconds // 1)
    micros = round((seconds - whole) * 1_000_000)  # datetime rounds to the microsecond so
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    if _second[0] != whole:
        _second = (whole, datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{micros // 1000:03d}+00:00"


class AccessLines:
    """The access log's lines, written to ``out`` together at most FLUSH_AFTER seconds
    after the first of them (or once FLUSH_LINES are held), as a web server buffers its
    access log: a write and a flush per request was about a tenth of a point read's CPU.
    ``flush`` when the node stops."""

    FLUSH_AFTER = 0.05
    FLUSH_LINES = 512

    __slots__ = ("_held", "_loop", "_out", "_timer")

    def __init__(self, out: Any) -> None:
        self._out = out
        self._held: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def add(self, line: bytes) -> None:
        held = self._held
        held.append(line)
        if len(held) >= self.FLUSH_LINES:
            self.flush()
        elif self._timer is None:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._timer = self._loop.call_later(self.FLUSH_AFTER, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, []
        if held:
            self._out.write(b"".join(held))
            self._out.flush()  # stderr's binary buffer is block-buffered unless unbuffered


class JsonFormatter(logging.Formatter):
    """A record as one JSON object on one line, whatever its message holds (quotes,
    newlines); ``extra={"fields": {...}}`` adds keys (e.g. an error's code and hint)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": timestamp(record.created), "level": record.levelname,
                                "logger": record.name, "message": record.getMessage()}
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"), default=str)


def configure(level: str, json_lines: bool) -> None:
    """Send every logger's records to stderr in one format (uvicorn's too: it must run with
    ``log_config=None``); in JSON, uncaught exceptions become records as well."""
    global _json_lines
    _json_lines = json_lines
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    if level.lower() != "debug":
        for name in CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    if json_lines:
        sys.excepthook = _uncaught
        threading.excepthook = _uncaught_in_thread


def _uncaught(kind: type[BaseException], exc: BaseException,
              tb: TracebackType | None) -> None:
    log.critical("uncaught exception: %r", exc, exc_info=(kind, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    log.critical("uncaught exception in thread %s: %r", name, args.exc_value,
                 exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def announce(message: str, level: int = logging.INFO, **fields: Any) -> None:
    """A start-up line, shown whatever log_level says: ``shoal: <message>``, or a JSON
    record of logger ``shoal`` with ``fields`` beside the message."""
    if not _json_lines:
        print(f"shoal: {message}", file=sys.stderr, flush=True)
        return
    log.handle(log.makeRecord(log.name, level, __file__, 0, message, (), None,
                              extra={"fields": fields}))


def cannot_start(exc: ShoalError) -> None:
    """Why the node did not start: the code, the message, and the hint on what to do."""
    hint = exc.body()["error"].get("hint")
    if _json_lines:
        announce(f"cannot start: {exc.code}: {exc.message}", logging.ERROR, code=exc.code,
                 **({"hint": hint} if hint else {}))
        return
    announce(f"cannot start: {exc.code}: {exc.message}")
    if hint:
        announce(f"hint: {hint}")
