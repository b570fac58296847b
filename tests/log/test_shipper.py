"""The shipper: local and remote durability, shared uploads, retries without gaps, conflicts."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.log import layout
from shoal.log.errors import LogConflict, LogError
from shoal.log.restore import restore
from shoal.log.segment import Commit, encode_segment
from shoal.log.shipper import Backoff, Shipper
from shoal.log.timeline import create_timeline, segments
from shoal.storage.base import ObjectStore
from shoal.storage.faulty import FaultyStore
from shoal.storage.memory import MemoryStore
from tests.support.logged import LoggedDatabase, put_snapshot
from tests.support.s3 import MotoS3, moto_server

DB = "app"
FAST = Backoff(initial=0.001, maximum=0.01)


def make_commits(tmp: Path, count: int, seed: int = 0) -> tuple[LoggedDatabase, list[bytes]]:
    """A real workload of `count` commits; returns the database and the oracle per txid."""
    rng = random.Random(seed)
    logged = LoggedDatabase(tmp / "src.db")
    images = [logged.image()]
    logged.write("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    images.append(logged.image())
    for i in range(count - 1):
        if rng.random() < 0.2:
            logged.write(("DELETE FROM t WHERE id % 7 = ?", (i % 7,)))
        else:
            logged.write(*[("INSERT INTO t(v) VALUES (?)", (f"{i}-{j}" * rng.randint(1, 50),))
                           for j in range(rng.randint(1, 5))])
        images.append(logged.image())
    return logged, images


def prepare(store: ObjectStore, logged: LoggedDatabase, image0: bytes) -> str:
    timeline = create_timeline(store, DB, None, 0, 0.0).id
    put_snapshot(store, DB, timeline, image0, 0, 1.0)
    return timeline


def assert_contiguous(store: ObjectStore, timeline: str, head: int) -> None:
    """Segments tile 1..head exactly: no gap, no overlap."""
    segs = segments(store, DB, timeline)
    assert [s.first for s in segs] == [1] + [s.last + 1 for s in segs[:-1]]
    assert segs[-1].last == head


async def until(condition: object, timeout: float = 30.0) -> None:
    """Poll a zero-argument callable until true (the timeout only guards against a hang)."""
    async def poll() -> None:
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)
    await asyncio.wait_for(poll(), timeout)


def test_local_durability_ships_without_being_asked(tmp_path: Path) -> None:
    logged, images = make_commits(tmp_path, 30)
    store = MemoryStore()
    timeline = prepare(store, logged, images[0])
    durable: list[int] = []

    async def main() -> Shipper:
        shipper = Shipper(store, DB, timeline, durable_txid=0, sync_interval=0.01,
                          on_durable=durable.append)
        shipper.start()
        for c in logged.commits:
            shipper.append(c)
            if c.txid % 7 == 0:
                await asyncio.sleep(0.001)
        await until(lambda: shipper.durable_txid == len(logged.commits))
        await shipper.close()
        return shipper

    shipper = asyncio.run(main())
    assert durable == sorted(durable) and durable[-1] == 30
    assert shipper.backlog_bytes == 0
    assert_contiguous(store, timeline, 30)
    restored = restore(store, DB, timeline, tmp_path / "r.db")
    assert restored.txid == 30 and (tmp_path / "r.db").read_bytes() == images[30]


class GatedStore(MemoryStore):
    """Holds every put until the test opens the gate (to pile up concurrent commits)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.puts = 0

    def put(self, key: str, data: bytes, **kw: str | None) -> str:
        self.puts += 1
        assert self.gate.wait(30)
        return super().put(key, data, **kw)


def test_remote_durability_concurrent_commits_share_one_upload(tmp_path: Path) -> None:
    logged, images = make_commits(tmp_path, 40)
    store = GatedStore()
    store.gate.set()
    timeline = prepare(store, logged, images[0])
    store.gate.clear()
    store.puts = 0

    async def main() -> Shipper:
        shipper = Shipper(store, DB, timeline, durable_txid=0, sync_interval=60.0)
        shipper.start()
        commits = iter(logged.commits)
        append_lock = asyncio.Lock()  # the engine's write lock: appends in txid order

        async def writer() -> int:
            async with append_lock:
                c = next(commits)
                shipper.append(c)
            await shipper.wait_durable(c.txid)
            return c.txid

        first = asyncio.create_task(writer())
        await until(lambda: store.puts == 1)  # upload of txid 1 in flight, held at the gate
        rest = [asyncio.create_task(writer()) for _ in range(39)]
        await until(lambda: shipper.head_txid == 40)
        assert shipper.durable_txid == 0
        # the lag: 40 commits behind, the oldest being txid 1 (sealed, in flight)
        assert shipper.unshipped == 40
        assert shipper.oldest_unshipped() == logged.commits[0].time
        store.gate.set()
        done = await asyncio.gather(first, *rest)
        assert sorted(done) == list(range(1, 41))
        assert shipper.unshipped == 0 and shipper.oldest_unshipped() is None
        await shipper.close()
        return shipper

    shipper = asyncio.run(main())
    assert shipper.segments_shipped == 2  # 1 alone, then 2..40 together
    assert_contiguous(store, timeline, 40)


def test_append_from_worker_threads_and_in_order_only(tmp_path: Path) -> None:
    logged, images = make_commits(tmp_path, 12)
    store = MemoryStore()
    timeline = prepare(store, logged, images[0])

    async def main() -> None:
        shipper = Shipper(store, DB, timeline, durable_txid=0, sync_interval=0.01)
        shipper.start()
        loop = asyncio.get_running_loop()
        for c in logged.commits:
            await loop.run_in_executor(None, shipper.append, c)
        with pytest.raises(LogError, match="contiguous"):
            shipper.append(logged.commits[3])
        with pytest.raises(ValueError, match="never appended"):
            await shipper.wait_durable(99)
        await shipper.flush()
        assert shipper.durable_txid == 12
        await shipper.close()

    asyncio.run(main())
    assert_contiguous(store, timeline, 12)


def test_large_backlog_is_split_at_max_segment_bytes(tmp_path: Path) -> None:
    logged, images = make_commits(tmp_path, 25)
    store = MemoryStore()
    timeline = prepare(store, logged, images[0])
    limit = 3 * max(c.size for c in logged.commits)

    async def main() -> None:
        shipper = Shipper(store, DB, timeline, durable_txid=0, sync_interval=60.0,
                          max_segment_bytes=limit)
        shipper.start()
        for c in logged.commits:
            shipper.append(c)
        await shipper.close()  # flushes

    asyncio.run(main())
    segs = segments(store, DB, timeline)
    assert len(segs) >= 25 * min(c.size for c in logged.commits) // limit
    assert_contiguous(store, timeline, 25)


def test_faults_at_ten_percent_catch_up_without_gaps(tmp_path: Path) -> None:
    logged, images = make_commits(tmp_path, 150, seed=3)
    inner = MemoryStore()
    timeline = prepare(inner, logged, images[0])
    faulty = FaultyStore(inner, rate=0.1, seed=11)

    async def main() -> Shipper:
        shipper = Shipper(faulty, DB, timeline, durable_txid=0, sync_interval=0.002,
                          backoff=FAST)
        shipper.start()
        waits = []
        for c in logged.commits:
            shipper.append(c)
            if c.txid % 5:  # remote-durability writers: each waits through the faults
                await shipper.wait_durable(c.txid)
            else:  # and a few local ones, shipped in the background
                waits.append(asyncio.create_task(shipper.wait_durable(c.txid)))
        await asyncio.gather(*waits)
        faulty.enabled = False  # the store heals; everything must arrive
        await shipper.flush()
        await shipper.close()
        return shipper

    shipper = asyncio.run(main())
    counts = faulty.counts
    assert counts.errors and counts.timeouts and counts.partial_writes, counts
    assert shipper.failures >= counts.total - 5  # (faults on gets are retried too)
    assert shipper.durable_txid == 150
    assert_contiguous(inner, timeline, 150)
    for txid in (1, 37, 99, 150):
        restore(inner, DB, timeline, tmp_path / "r.db", txid=txid)
        assert (tmp_path / "r.db").read_bytes() == images[txid]


def test_another_writers_segment_stops_shipping(tmp_path: Path) -> None:
    store = MemoryStore()
    timeline = create_timeline(store, DB, None, 0, 0.0).id
    mine = Commit(1, 10.0, 512, 1, ((1, b"a" * 512),))
    theirs = Commit(1, 10.0, 512, 1, ((1, b"b" * 512),))
    store.put(layout.segment_key(DB, timeline, 1, 1, 10.0), encode_segment([theirs]))

    async def main() -> None:
        shipper = Shipper(store, DB, timeline, durable_txid=0, sync_interval=0.0)
        shipper.start()
        shipper.append(mine)
        with pytest.raises(LogConflict, match="another writer"):
            await shipper.wait_durable(1)
        assert isinstance(shipper.failed, LogConflict)
        with pytest.raises(LogConflict):
            await shipper.wait_durable(1)
        await shipper.close()

    asyncio.run(main())


def test_a_timed_out_upload_that_landed_is_not_a_conflict(tmp_path: Path) -> None:
    store = MemoryStore()
    timeline = create_timeline(store, DB, None, 0, 0.0).id
    mine = Commit(1, 10.0, 512, 1, ((1, b"a" * 512),))
    key = layout.segment_key(DB, timeline, 1, 1, 10.0)
    store.put(key, encode_segment([mine]))  # as if a previous attempt succeeded silently
    store.put(layout.segment_key(DB, timeline, 2, 2, 11.0), b"cut short")

    async def main() -> None:
        shipper = Shipper(store, DB, timeline, durable_txid=0, sync_interval=0.0)
        shipper.start()
        shipper.append(mine)
        await shipper.wait_durable(1)
        shipper.append(Commit(2, 11.0, 512, 1, ((1, b"c" * 512),)))
        await shipper.wait_durable(2)  # the truncated leftover is replaced
        await shipper.close()

    asyncio.run(main())
    assert_contiguous(store, timeline, 2)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with moto_server() as server:
        yield server


def test_ship_and_restore_over_s3(tmp_path: Path, moto: MotoS3) -> None:
    logged, images = make_commits(tmp_path, 20)
    store = moto.new_store()
    timeline = prepare(store, logged, images[0])

    async def main() -> None:
        shipper = Shipper(store, DB, timeline, durable_txid=0, sync_interval=0.005)
        shipper.start()
        for c in logged.commits:
            shipper.append(c)
            if c.txid % 5 == 0:
                await shipper.wait_durable(c.txid)
        await shipper.close()

    asyncio.run(main())
    assert_contiguous(store, timeline, 20)
    for txid in (0, 7, 20):
        restore(store, DB, timeline, tmp_path / "r.db", txid=txid)
        assert (tmp_path / "r.db").read_bytes() == images[txid]


class SlowRecord(MemoryStore):
    """A store whose writes of timeline records (the commit points) take a while, and
    that records the head each one writes and whether a segment upload overlapped it."""

    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay
        self.heads: list[int] = []
        self.committing = 0
        self.overlapped = 0

    def put(self, key: str, data: bytes, **kw: str | None) -> str:
        if "/timelines/" in key:
            self.committing += 1
            try:
                threading.Event().wait(self.delay)
                etag = super().put(key, data, **kw)
            finally:
                self.committing -= 1
            import json
            head = json.loads(data).get("head")
            if head:
                self.heads.append(head["txid"])
            return etag
        if self.committing:
            self.overlapped += 1
        return super().put(key, data, **kw)


def test_commits_overlap_uploads_and_land_in_order(tmp_path: Path) -> None:
    """With a writer, a segment is durable only once its commit landed; commits land one
    at a time in txid order while the next segment uploads; a writer fenced out stops
    the shipper and what it had not committed is never reported durable."""
    from shoal.log.errors import FencedOut
    from shoal.log.timeline import Writer, fence, load_timeline

    store = SlowRecord(0.02)
    timeline = create_timeline(store, DB, None, 0, 0.0)
    writer = Writer(store, fence(store, timeline, "me"))
    seen: list[tuple[int, int]] = []  # (durable_txid, record head) when durable moved

    async def main() -> None:
        shipper = Shipper(store, DB, timeline.id, durable_txid=0, sync_interval=0.0,
                          backoff=FAST, writer=writer)

        def durable(txid: int) -> None:
            head = load_timeline(store, DB, timeline.id).head
            seen.append((txid, head.txid if head else -1))

        shipper.on_durable = durable
        shipper.start()
        for txid in range(1, 41):
            shipper.append(Commit(txid, 10.0 + txid, 512, 1, ((1, bytes([txid]) * 512),)))
            await asyncio.sleep(0.004)
        await shipper.wait_durable(40)
        # another writer takes the timeline: the next commit is refused
        fence(store, load_timeline(store, DB, timeline.id), "other")
        shipper.append(Commit(41, 60.0, 512, 1, ((1, b"z" * 512),)))
        with pytest.raises(FencedOut):
            await shipper.wait_durable(41)
        assert shipper.durable_txid == 40
        await shipper.close(flush=False)

    asyncio.run(main())
    assert store.heads[1:] == sorted(store.heads[1:])  # commits in order (after the fence)
    assert all(d <= head for d, head in seen), seen  # durable only once committed
    assert store.overlapped > 0  # uploads ran while a commit was in flight
    assert len(store.heads) < 41  # group commit: fewer segments than commits


def test_a_follower_makes_the_open_segment_ship_at_the_follow_interval(tmp_path: Path) -> None:
    """A change feed's consumer asks while the segment waits out a long sync_interval: it
    ships within the follow interval, not the minute."""
    logged, images = make_commits(tmp_path, 3)
    store = MemoryStore()
    timeline = prepare(store, logged, images[0])

    async def main() -> float:
        shipper = Shipper(store, DB, timeline, durable_txid=0, sync_interval=60.0,
                          follow_interval=0.02)
        shipper.start()
        for c in logged.commits:
            shipper.append(c)
        await asyncio.sleep(0.1)
        assert shipper.durable_txid == 0  # waiting out the minute
        started = asyncio.get_running_loop().time()
        shipper.follow()
        await until(lambda: shipper.durable_txid == 3, timeout=10)
        took = asyncio.get_running_loop().time() - started
        shipper.follow()  # followed already: nothing to wake
        await shipper.close()
        return took

    assert asyncio.run(main()) < 5.0
