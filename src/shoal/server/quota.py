"""What Hrana clients keep on the node between requests, counted per token, per database
and for the whole node: open streams, and the memory of stored SQL texts and of cursor
entries not yet fetched.

A cap refuses only the token (or the database) that reached it, with a stable code
(``TOO_MANY_STREAMS``, ``HELD_BYTES_LIMIT``), so one tenant's use never refuses
another's; the node-wide caps bound the node's memory whatever the number of tenants.
A cap of 0 is no cap.
"""

from __future__ import annotations

import sys
from collections import Counter

from shoal.errors import Code
from shoal.server.hrana_proto import HranaError
from shoal.settings import Settings

_NODE = ("node", "")


class Quota:
    """The counters and caps shared by every Hrana stream and WebSocket connection."""

    def __init__(self, settings: Settings):
        self.stream_caps = {"token": ("max_streams_per_token", settings.max_streams_per_token),
                            "db": ("max_streams_per_database",
                                   settings.max_streams_per_database),
                            "node": ("max_streams", settings.max_streams)}
        self.byte_caps = {"token": ("max_held_bytes_per_token", settings.max_held_bytes_per_token),
                          "db": ("max_held_bytes_per_database",
                                 settings.max_held_bytes_per_database),
                          "node": ("max_held_bytes", settings.max_held_bytes)}
        self.streams: Counter[tuple[str, str]] = Counter()
        self.bytes: Counter[tuple[str, str]] = Counter()

    def holder(self, subject: str, db: str) -> Holder:
        return Holder(self, subject, db)

    @staticmethod
    def _take(counts: Counter[tuple[str, str]], keys: tuple[tuple[str, str], ...], n: int,
              caps: dict[str, tuple[str, int]], code: Code) -> None:
        for key in keys:
            setting, cap = caps[key[0]]
            if cap and counts[key] + n > cap:
                whose = {"token": "the token", "db": "the database", "node": "the node"}[key[0]]
                raise HranaError(code, f"{whose} is at {setting} ({cap})")
        for key in keys:
            counts[key] += n

    @staticmethod
    def _give(counts: Counter[tuple[str, str]], keys: tuple[tuple[str, str], ...],
              n: int) -> None:
        for key in keys:
            counts[key] -= n
            if counts[key] <= 0:
                del counts[key]


class Holder:
    """What one HTTP stream or one WebSocket connection holds, charged to the token and
    database it was opened with; ``release`` gives back whatever is left."""

    __slots__ = ("bytes", "keys", "quota", "streams")

    def __init__(self, quota: Quota, subject: str, db: str):
        self.quota = quota
        self.keys = (("token", subject), ("db", db), _NODE)
        self.streams = 0
        self.bytes = 0

    def add_stream(self) -> None:
        q = self.quota
        q._take(q.streams, self.keys, 1, q.stream_caps, Code.TOO_MANY_STREAMS)
        self.streams += 1

    def drop_stream(self) -> None:
        if self.streams:
            self.streams -= 1
            self.quota._give(self.quota.streams, self.keys, 1)

    def hold(self, n: int) -> None:
        q = self.quota
        q._take(q.bytes, self.keys, n, q.byte_caps, Code.HELD_BYTES_LIMIT)
        self.bytes += n

    def free(self, n: int) -> None:
        n = min(n, self.bytes)
        if n:
            self.bytes -= n
            self.quota._give(self.quota.bytes, self.keys, n)

    def release(self) -> None:
        self.free(self.bytes)
        if self.streams:
            self.quota._give(self.quota.streams, self.keys, self.streams)
            self.streams = 0


def size(value: str | bytes) -> int:
    """What a held text or entry costs: its size in memory."""
    return sys.getsizeof(value)
