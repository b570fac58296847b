"""storage/fenced.py: every write the node makes passes the lease's check; reads never do."""

from __future__ import annotations

import pytest

from shoal.storage.base import NotFound, PreconditionFailed
from shoal.storage.fenced import Fenced, FencedStore
from shoal.storage.memory import MemoryStore


class Check:
    def __init__(self) -> None:
        self.held = True
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if not self.held:
            raise Fenced("this node does not hold the object store's lease")


def test_writes_pass_the_check_and_reads_do_not_need_it() -> None:
    inner, check = MemoryStore(), Check()
    store = FencedStore(inner, check)
    assert store.url == inner.url
    etag = store.put("a", b"1", if_none_match="*")
    assert inner.get("a").data == b"1" and check.calls == 1
    with pytest.raises(PreconditionFailed):  # the conditions reach the inner store
        store.put("a", b"2", if_none_match="*")
    with pytest.raises(PreconditionFailed):
        store.put("a", b"2", if_match="other")
    assert store.put("a", b"2", if_match=etag) == store.head("a")
    check.held = False
    calls = check.calls
    assert store.get("a").data == b"2" and store.head("a") == inner.head("a")
    assert [i.key for i in store.list("")] == ["a"]
    assert [i.key for i in store.list("", start_after="a")] == []
    store.probe()
    assert check.calls == calls  # reads and the probe write nothing: no check


def test_a_node_without_the_lease_writes_and_deletes_nothing() -> None:
    inner, check = MemoryStore(), Check()
    store = FencedStore(inner, check)
    store.put("kept", b"1")
    check.held = False
    with pytest.raises(Fenced):
        store.put("new", b"1")
    with pytest.raises(Fenced):
        store.delete("kept")
    assert inner.get("kept").data == b"1"
    with pytest.raises(NotFound):
        inner.get("new")
    check.held = True
    store.delete("kept")
    with pytest.raises(NotFound):
        inner.get("kept")


def test_closing_closes_the_inner_store() -> None:
    closed: list[bool] = []

    class Closing(MemoryStore):
        def close(self) -> None:
            closed.append(True)

    FencedStore(Closing(), Check()).close()
    assert closed == [True]


def test_the_probe_reaches_the_inner_store_whatever_the_lease() -> None:
    probed: list[bool] = []

    class Probed(MemoryStore):
        def probe(self) -> None:
            probed.append(True)

    check = Check()
    check.held = False
    FencedStore(Probed(), check).probe()
    assert probed == [True] and check.calls == 0
