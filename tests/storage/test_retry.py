"""RetryingStore: one-off calls ride out transport faults, and conditional puts stay exact."""

from __future__ import annotations

import pytest

from shoal.storage.base import Blob, PreconditionFailed, StorageUnavailable
from shoal.storage.faulty import FaultyStore
from shoal.storage.memory import MemoryStore
from shoal.storage.retry import RetryingStore


def flaky(seed: int) -> tuple[MemoryStore, RetryingStore]:
    inner = MemoryStore()
    return inner, RetryingStore(FaultyStore(inner, rate=0.3, seed=seed), attempts=30,
                                initial=0.0, maximum=0.0)


@pytest.mark.parametrize("seed", range(20))
def test_create_once_through_faults_lands_exactly_once(seed: int) -> None:
    inner, store = flaky(seed)
    for i in range(20):
        data = f"record {i} ".encode() * 50
        store.put(f"k/{i}", data, if_none_match="*")  # never a false "already exists"
        assert inner.get(f"k/{i}").data == data  # never a cut-short object left behind
    # (the injector's partial writes ignore conditions, which no real store does, so a
    # lost condition is checked on a store without faults)
    with pytest.raises(PreconditionFailed):
        RetryingStore(inner).put("k/1", b"someone else", if_none_match="*")


@pytest.mark.parametrize("seed", range(20))
def test_compare_and_swap_through_faults(seed: int) -> None:
    inner, store = flaky(seed)
    etag = store.put("branch", b"v0" * 100)
    for i in range(1, 20):
        data = f"v{i}".encode() * 100
        etag = store.put("branch", data, if_match=etag)
        assert inner.get("branch").data == data
        assert inner.get("branch").etag == etag
    with pytest.raises(PreconditionFailed):
        RetryingStore(inner).put("branch", b"stale", if_match='"not-the-etag"')


def test_reads_and_lists_retry_and_give_up_in_the_end() -> None:
    inner, store = flaky(3)
    for i in range(10):
        inner.put(f"p/{i:02d}", b"x")
    assert [o.key for o in store.list("p/")] == [f"p/{i:02d}" for i in range(10)]
    assert store.get("p/05").data == b"x"
    always = RetryingStore(FaultyStore(inner, rate=1.0, seed=1), attempts=3, initial=0.0,
                           maximum=0.0)
    with pytest.raises(StorageUnavailable):
        always.get("p/05")


class Broken(MemoryStore):
    """A store whose get has a bug: not the store failing."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def get(self, key: str) -> Blob:
        self.calls += 1
        raise TypeError("a bug")


def test_a_bug_is_not_retried() -> None:
    """Only StorageUnavailable is the store failing; anything else is raised at once."""
    inner = Broken()
    with pytest.raises(TypeError):
        RetryingStore(inner, attempts=5, initial=0.0, maximum=0.0).get("k")
    assert inner.calls == 1
