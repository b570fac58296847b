"""The SQL threads, shared fairly: one tenant's slow work cannot take every thread.

Every open database hands its SQLite work (write batches, reads that outgrow the inline
budget, the statements of its transactions, checkpoints) to a *lane* of its own. The
pool's threads serve the lanes round-robin, one piece of work at a time, and a lane never
runs more than ``per_lane`` pieces at once: a database with many slow statements queues
behind itself while another database's work finds a free thread. (A plain thread pool
serves work in arrival order: sixteen slow reads of one tenant took all sixteen threads
and another tenant's write waited for them.)

Work submitted to the pool itself (the engine's own: catalog writes, usage) has a lane
too. Threads start on demand, up to ``threads``. A lane is an ``Executor``, so
``loop.run_in_executor(lane, fn)`` works as with any thread pool.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class _Work:
    __slots__ = ("args", "fn", "future", "kwargs", "lane")

    def __init__(self, lane: Lane, future: Future[Any], fn: Callable[..., Any],
                 args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.lane, self.future, self.fn, self.args, self.kwargs = lane, future, fn, args, kwargs


class Lane(Executor):
    """One database's share of the pool (or the engine's own)."""

    def __init__(self, pool: Pool, key: str):
        self.pool = pool
        self.key = key
        self.queue: deque[_Work] = deque()
        self.running = 0

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self.pool.enqueue(self, fn, args, kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """A lane has no threads of its own: the pool's shutdown stops them."""


class Pool(Executor):
    """``threads`` worker threads serving lanes round-robin, ``per_lane`` at once each."""

    def __init__(self, threads: int, per_lane: int, name: str = "shoal-sql"):
        self.threads = max(1, threads)
        self.per_lane = max(1, min(per_lane, self.threads))
        self.name = name
        self._cond = threading.Condition()
        self._ready: deque[Lane] = deque()  # lanes with queued work, in serving order
        self._lanes: weakref.WeakValueDictionary[str, Lane] = weakref.WeakValueDictionary()
        self._own = Lane(self, "")
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def lane(self, key: str) -> Lane:
        """The lane of ``key`` (a database's name): every branch of a database shares it."""
        with self._cond:
            found = self._lanes.get(key)
            if found is None:
                found = self._lanes[key] = Lane(self, key)
            return found

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self.enqueue(self._own, fn, args, kwargs)

    def enqueue(self, lane: Lane, fn: Callable[..., T], args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Future[T]:
        future: Future[T] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if not lane.queue:
                self._ready.append(lane)
            lane.queue.append(_Work(lane, future, fn, args, kwargs))
            if self._idle == 0 and len(self._workers) < self.threads:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"{self.name}_{len(self._workers)}")
                self._workers.append(thread)
                thread.start()
            else:
                self._cond.notify()
        return future

    def _next(self) -> _Work | None:
        """The next runnable work, round-robin over lanes below their cap (lock held)."""
        for _ in range(len(self._ready)):
            lane = self._ready[0]
            self._ready.rotate(-1)
            if lane.running < self.per_lane:
                work = lane.queue.popleft()
                lane.running += 1
                if not lane.queue:
                    self._ready.remove(lane)
                return work
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                while (work := self._next()) is None:
                    if self._closed and not self._ready:
                        return
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
            if work.future.set_running_or_notify_cancel():
                try:
                    result = work.fn(*work.args, **work.kwargs)
                except BaseException as exc:
                    work.future.set_exception(exc)
                else:
                    work.future.set_result(result)
            with self._cond:
                work.lane.running -= 1
                if work.lane.queue:  # it may have been held back by its cap
                    self._cond.notify()
            del work

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._closed = True
            if cancel_futures:
                for lane in self._ready:
                    for work in lane.queue:
                        work.future.cancel()
                    lane.queue.clear()
                self._ready.clear()
            self._cond.notify_all()
        if wait:
            for thread in self._workers:
                thread.join()


def lane_of(executor: Executor, key: str) -> Executor:
    """``key``'s lane of a Pool; any other executor as it is (tests pass plain ones)."""
    return executor.lane(key) if isinstance(executor, Pool) else executor
