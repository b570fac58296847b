"""The fair SQL pool: lanes served round-robin, each capped, so one database's slow work
never takes every thread."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

from shoal.engine.pool import Pool, lane_of


def test_a_busy_lane_leaves_threads_for_the_others() -> None:
    pool = Pool(threads=4, per_lane=2)
    slow, other = pool.lane("slow"), pool.lane("other")
    release = threading.Event()
    running = []
    lock = threading.Lock()

    def hold(i: int) -> int:
        with lock:
            running.append(i)
        release.wait(10)
        return i

    held = [slow.submit(hold, i) for i in range(20)]
    time.sleep(0.1)
    assert len(running) == 2  # the slow lane's cap, whatever it queued
    started = time.monotonic()
    assert other.submit(lambda: "served").result(timeout=5) == "served"
    assert time.monotonic() - started < 1.0  # did not wait for the slow lane
    release.set()
    assert [f.result(timeout=10) for f in held] == list(range(20))
    pool.shutdown()


def test_lanes_take_turns_and_errors_reach_their_futures() -> None:
    pool = Pool(threads=1, per_lane=1)
    order: list[str] = []
    gate = threading.Event()
    first = pool.lane("a").submit(gate.wait, 10)  # holds the only thread
    futures = [pool.lane(key).submit(order.append, f"{key}{i}")
               for i in range(3) for key in ("a", "b")]
    gate.set()
    first.result(timeout=5)
    for f in futures:
        f.result(timeout=5)
    lanes = [o[0] for o in order]  # round-robin: the lanes alternate, whoever starts
    assert all(x != y for x, y in itertools.pairwise(lanes)), order
    assert [o for o in order if o[0] == "a"] == ["a0", "a1", "a2"]  # each lane in order

    def boom() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        pool.lane("a").submit(boom).result(timeout=5)
    assert pool.submit(lambda: 7).result(timeout=5) == 7  # the pool's own lane
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(lambda: 1)


def test_a_lane_works_with_asyncio() -> None:
    pool = Pool(threads=2, per_lane=1)

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        lane = lane_of(pool, "db")
        return list(await asyncio.gather(*(loop.run_in_executor(lane, pow, 2, i)
                                           for i in range(5))))

    assert asyncio.run(main()) == [1, 2, 4, 8, 16]
    pool.shutdown()
