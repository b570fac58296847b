"""A change feed consumer in a process of its own, as an application runs one: every change
it writes out, it writes with its cursor, in one write, so what it stored and where it
stands cannot part (tests/integration/test_changes_exactness.py).

    python tests/support/feed_consumer.py URL TOKEN DATABASE CURSOR OUT

Follows DATABASE's change feed (``Client.changes``) from the cursor of OUT's last line, or
from CURSOR while OUT holds none, and appends each change to OUT as one JSON line in the
API's shape (its ``cursor`` in it): a batch of changes is one ``write`` and an ``fsync``.
A line counts once its newline is written: a kill -9 may end a write part way (a fatal
signal stops a write to a file between pages of the page cache), so a start first cuts OUT
back to its last newline. Killed at any moment and started again, it writes every change
once. It exits (non-zero) only on an error the client does not ride out.
"""

from __future__ import annotations

import json
import os
import sys

from shoal.client import Client

BATCH = 200  # changes at most in one write
WAIT = 2.0  # seconds a pass waits for its first change
RETRY_FOR = 300.0  # seconds of a node's absence the client rides out (restarts, a lost disk)


def resume(path: str, start: str) -> str:
    """The cursor to go on from: the last whole line's, once a torn tail is cut off."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return start
    with os.fdopen(fd, "r+b") as out:
        data = out.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            out.truncate(end)
            out.flush()
            os.fsync(out.fileno())
        if end == 0:
            return start
        last = data[data.rfind(b"\n", 0, end - 1) + 1:end]
        return str(json.loads(last)["cursor"])


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def follow(url: str, token: str, database: str, start: str, path: str) -> None:
    cursor = resume(path, start)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    with Client(url, token, database=database, timeout=10) as client:
        while True:
            # one pass: the changes there are (up to BATCH), then one write of all of them
            lines: list[str] = []
            for change in client.changes(cursor, follow=False, wait=WAIT, limit=BATCH,
                                         retry_for=RETRY_FOR):
                lines.append(json.dumps(change.to_json(), separators=(",", ":")))
                if len(lines) == BATCH:
                    break
            if lines:
                write_all(fd, ("\n".join(lines) + "\n").encode())
                cursor = json.loads(lines[-1])["cursor"]


if __name__ == "__main__":
    follow(*sys.argv[1:6])
