"""The feed (log/feed.py): a followed timeline's durable segments, for replicas."""

from __future__ import annotations

import asyncio

import pytest

from shoal.log.feed import FEED_BYTES, FEED_KEEP, Feed, pack, unpack


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_new_feed_is_not_followed() -> None:
    clock = Clock()
    clock.now = 0.5
    assert not Feed(0, clock=clock).followed


def test_segments_are_kept_only_while_followed_and_given_once_durable() -> None:
    asyncio.run(_kept())


async def _kept() -> None:
    clock = Clock()
    feed = Feed(10, max_bytes=100, keep=60, clock=clock)
    feed.stored(11, 12, b"a")  # nobody follows yet: not kept
    feed.durable(12)
    assert feed.since(12) == []  # up to date: wait
    assert feed.since(10) is None  # durable past 10, not kept: hydrate
    assert feed.followed
    feed.stored(13, 14, b"b")
    assert feed.since(12) == []  # stored, not yet durable
    feed.durable(14)
    feed.stored(15, 15, b"c")
    feed.durable(15)
    assert feed.since(12) == [b"b", b"c"]
    assert feed.since(13) is None  # a follower inside a segment: not served half of it
    assert feed.since(14) == [b"c"]
    assert feed.since(15) == []
    assert feed.since(16) is None  # ahead of what is durable: another history
    clock.now = feed.followed_until  # kept for exactly ``keep`` seconds
    assert not feed.followed
    clock.now += 1  # nobody asked for a minute: dropped at the next segment
    feed.stored(16, 16, b"d")
    assert not feed.segments and feed.bytes == 0


def test_bytes_are_bounded_keeping_the_newest() -> None:
    asyncio.run(_bounded())


async def _bounded() -> None:
    assert (FEED_BYTES, FEED_KEEP) == (8 << 20, 60.0)  # what docs/architecture.md says
    assert (Feed(0).max_bytes, Feed(0).keep, Feed(0).bytes) == (FEED_BYTES, FEED_KEEP, 0)
    exact = Feed(0, max_bytes=8, keep=60)
    exact.since(0)
    exact.stored(1, 1, bytes(4))
    exact.stored(2, 2, bytes(4))
    assert (exact.bytes, len(exact.segments)) == (8, 2)  # at the bound, both kept
    feed = Feed(0, max_bytes=10, keep=60)
    assert feed.since(0) == []
    for i in range(1, 6):
        feed.stored(i, i, bytes(4))
        feed.durable(i)
    assert feed.bytes <= 10 and [s[0] for s in feed.segments] == [4, 5]
    assert feed.since(3) == [bytes(4), bytes(4)]
    assert feed.since(2) is None
    feed.stored(6, 6, bytes(50))  # larger than the bound: still kept, alone
    assert [s[0] for s in feed.segments] == [6]


def test_a_waiting_follower_wakes_on_a_durable_commit_or_the_end() -> None:
    asyncio.run(_wakes())


async def _wakes() -> None:
    feed = Feed(5)
    waiter = asyncio.ensure_future(feed.wait(5, 5.0))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    feed.durable(6)
    await asyncio.wait_for(waiter, 1)
    waiter = asyncio.ensure_future(feed.wait(6, 5.0))
    await asyncio.sleep(0.02)
    assert not waiter.done()  # the wake of 6 does not wake a wait past 6
    await asyncio.sleep(0.01)
    feed.end()
    await asyncio.wait_for(waiter, 1)
    await asyncio.wait_for(feed.wait(6, 5.0), 1)  # ended: at once
    await Feed(1).wait(1, 0.01)  # nothing: the timeout


def test_pack_and_unpack() -> None:
    segments = [b"", b"x", bytes(range(256)) * 10, b""]
    assert unpack(pack(segments)) == segments
    assert unpack(b"") == []
    for cut in (b"\x00\x00", pack([b"abc"])[:-1]):
        with pytest.raises(ValueError, match="cut short"):
            unpack(cut)


def test_a_change_feed_reads_inside_segments_and_decodes_each_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(_captured(monkeypatch))


async def _captured(monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.log import feed as feeds
    from shoal.log.segment import Captured, Commit, encode_segment

    def segment(first: int, last: int) -> bytes:
        return encode_segment([Commit(t, 100.0 + t, 512, 1, ((1, bytes(512)),), b"c%d" % t)
                               for t in range(first, last + 1)])

    def captured(after: int) -> list[Captured] | None:
        """What a change feed's page reads: kept segments, decoded, remembered."""
        kept = feed.kept(after)
        if kept is None:
            return None
        commits = feeds.decoded(kept, after)
        feed.remember(kept)
        return commits

    decoded: list[int] = []
    real = feeds.read_changes
    monkeypatch.setattr(feeds, "read_changes",
                        lambda data: decoded.append(len(data)) or real(data))
    clock = Clock()
    first, second = segment(11, 13), segment(14, 15)
    feed = Feed(10, max_bytes=len(first) + len(second) + 10, keep=60, clock=clock)
    feed.follow()
    feed.stored(11, 13, first)
    feed.stored(14, 15, second)
    feed.durable(15)
    assert feed.since(11) is None  # a replica needs whole segments from its txid on
    got = captured(11)  # a consumer may stand inside one
    assert got is not None and [c.txid for c in got] == [12, 13, 14, 15]
    assert [c.changes for c in got][:2] == [b"c12", b"c13"]
    assert len(decoded) == 2
    assert [c.txid for c in captured(13) or []] == [14, 15]
    assert len(decoded) == 2  # decoded once, for every consumer
    assert captured(15) == [] and captured(9) is None
    feed.stored(16, 40, segment(16, 40))  # past max_bytes: the oldest go, and their decoding
    feed.durable(40)
    assert captured(11) is None
    assert (11, 13) not in feed._decoded
