"""The feed: a timeline's latest durable segments, for the followers of its branch.

A node that leads a branch ships each segment to the store; the same encoded bytes
are kept here for the other nodes' replicas (``engine/replica.py``), which ask for
the segments after the txid they hold and apply them. A follower sees only what is
durable, so it never holds a commit that a failover could take back.

Nothing is kept unless a follower asked within ``keep`` seconds, and never more than
``max_bytes`` (the newest segment always): a follower that asks for what is no
longer here, or was never kept, gets None and rebuilds its copy from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from shoal.log.segment import Captured, read_changes

FEED_BYTES = 8 << 20  # encoded segment bytes kept per followed branch
FEED_KEEP = 60.0  # seconds segments are kept after a follower last asked
_LENGTH = struct.Struct(">I")


@dataclass
class Kept:
    """A kept segment as a change feed reads it: (first, last), its bytes, its commits
    (changes, no pages) once decoded."""

    key: tuple[int, int]
    data: bytes
    commits: list[Captured] | None


def decoded(kept: list[Kept], after: int) -> list[Captured]:
    """Worker thread: the commits after ``after`` of kept segments, decoding those not
    decoded yet (their decoding stays on each ``Kept``, for ``Feed.remember``)."""
    out: list[Captured] = []
    for segment in kept:
        if segment.commits is None:
            segment.commits = read_changes(segment.data)[1]
        out += (c for c in segment.commits if c.txid > after)
    return out


def pack(segments: list[bytes]) -> bytes:
    """Segments as one body: each after its 4-byte length (each carries its checksum)."""
    return b"".join(_LENGTH.pack(len(s)) + s for s in segments)


def unpack(body: bytes) -> list[bytes]:
    """What ``pack`` made; ValueError if the body is cut short."""
    out, at = [], 0
    while at < len(body):
        if at + _LENGTH.size > len(body):
            raise ValueError("feed body cut short")
        (size,) = _LENGTH.unpack_from(body, at)
        at += _LENGTH.size
        if at + size > len(body):
            raise ValueError("feed body cut short")
        out.append(body[at:at + size])
        at += size
    return out


class Feed:
    """Create on the event loop; ``stored`` and ``durable`` run on it too (the shipper's)."""

    def __init__(self, durable_txid: int, *, max_bytes: int = FEED_BYTES,
                 keep: float = FEED_KEEP, clock: Callable[[], float] = time.monotonic):
        self.durable_txid = durable_txid
        self.max_bytes = max_bytes
        self.keep = keep
        self.clock = clock
        self.followed_until = 0.0  # clock() until which segments are kept
        self.segments: deque[tuple[int, int, bytes]] = deque()  # (first, last, encoded)
        # segments a change feed has read, decoded once for all its consumers (their
        # commits without pages), by (first, last): dropped with their segment
        self._decoded: dict[tuple[int, int], list[Captured]] = {}
        self.bytes = 0
        self.ended = False
        self._changed = asyncio.Event()

    @property
    def followed(self) -> bool:
        """Whether a follower asked within ``keep`` seconds."""
        return self.clock() < self.followed_until

    def follow(self) -> None:
        """A follower asked: keep segments (and ship often) for ``keep`` seconds more."""
        self.followed_until = self.clock() + self.keep

    def stored(self, first: int, last: int, data: bytes) -> None:
        """A segment was uploaded (it is followed once the store's head moves over it)."""
        if not self.followed:
            self.segments.clear()
            self._decoded.clear()
            self.bytes = 0
            return
        self.segments.append((first, last, data))
        self.bytes += len(data)
        while self.bytes > self.max_bytes and len(self.segments) > 1:
            gone_first, gone_last, gone = self.segments.popleft()
            self.bytes -= len(gone)
            self._decoded.pop((gone_first, gone_last), None)

    def durable(self, txid: int) -> None:
        self.durable_txid = txid
        self._wake()

    def end(self) -> None:
        """Nothing more comes (the shipper closed or failed): waiting followers ask again."""
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def since(self, after: int, inside: bool = False) -> list[bytes] | None:
        """The encoded segments holding every durable commit after ``after``, in order ([]
        if there is none yet); None if they are not all here (the follower rebuilds).
        ``inside``: the first may also hold commits up to ``after`` (a change feed's
        consumer stands anywhere; a replica applies whole segments from its txid on)."""
        found = self._since(after, inside)
        return None if found is None else [data for _, _, data in found]

    def _since(self, after: int, inside: bool) -> list[tuple[int, int, bytes]] | None:
        self.follow()
        if after >= self.durable_txid:
            return [] if after == self.durable_txid else None
        out: list[tuple[int, int, bytes]] = []
        expect = after + 1
        for first, last, data in self.segments:
            if last < expect:
                continue
            if (first > expect if inside and not out else first != expect) or \
                    last > self.durable_txid:
                break
            out.append((first, last, data))
            expect = last + 1
        return out or None  # durable past ``after`` but not here: a gap

    def kept(self, after: int) -> list[Kept] | None:
        """The segments holding every durable commit after ``after`` for a change feed (its
        consumer stands anywhere: the first may hold earlier commits), each with its
        commits decoded if a consumer decoded them before; None if they are not all here.
        Decoding is left to the caller, off the event loop (:func:`decoded`)."""
        found = self._since(after, inside=True)
        if found is None:
            return None
        return [Kept((first, last), data, self._decoded.get((first, last)))
                for first, last, data in found]

    def remember(self, kept: list[Kept]) -> None:
        """Keep the decoding of segments still here, for the next consumer."""
        here = {(first, last) for first, last, _ in self.segments}
        for segment in kept:
            if segment.commits is not None and segment.key in here:
                self._decoded[segment.key] = segment.commits

    async def wait(self, after: int, timeout: float) -> None:
        """Return once a commit after ``after`` is durable, the feed ends, or ``timeout``."""
        if self.durable_txid > after or self.ended:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
