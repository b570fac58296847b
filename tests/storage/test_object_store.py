"""One conformance suite, run against every ObjectStore backend (file, memory, S3 on moto)."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shoal.storage import NotFound, ObjectStore, PreconditionFailed, open_store
from shoal.storage.file import FileStore
from shoal.storage.memory import MemoryStore
from shoal.storage.s3 import S3Store
from tests.support.s3 import MotoS3, moto_server

BACKENDS = ["file", "memory", "s3"]
MakeStore = Callable[..., ObjectStore]


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with moto_server() as server:
        yield server


@pytest.fixture(params=BACKENDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """Factory for fresh, empty stores of one backend (page_size small to exercise paging)."""
    made: list[ObjectStore] = []

    def make(page_size: int = 1000) -> ObjectStore:
        store: ObjectStore
        if request.param == "file":
            store = FileStore(tmp_path / f"store{len(made)}")
        elif request.param == "memory":
            store = MemoryStore(page_size=page_size)
        else:
            store = request.getfixturevalue("moto").new_store(page_size=page_size)
        made.append(store)
        return store

    yield make
    for store in made:
        if not isinstance(store, S3Store):  # S3 stores share the module's client
            store.close()


@pytest.fixture
def store(make_store: MakeStore) -> ObjectStore:
    return make_store()


def test_get_and_head_missing_raise_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound) as info:
        store.get("no/such/key")
    assert info.value.key == "no/such/key"
    with pytest.raises(NotFound):
        store.head("no/such/key")


def test_put_get_round_trip_and_etags_agree(store: ObjectStore) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB of every byte value
    etag = store.put("a/b/c.bin", data)
    blob = store.get("a/b/c.bin")
    assert blob.data == data
    assert blob.etag == etag == store.head("a/b/c.bin")


def test_empty_object(store: ObjectStore) -> None:
    store.put("empty", b"")
    assert store.get("empty").data == b""
    assert [(i.key, i.size) for i in store.list("")] == [("empty", 0)]


def test_overwrite_changes_content_and_etag(store: ObjectStore) -> None:
    first = store.put("k", b"one")
    second = store.put("k", b"two")
    assert store.get("k").data == b"two"
    assert first != second


def test_if_none_match_creates_only_once(store: ObjectStore) -> None:
    store.put("lease", b"mine", if_none_match="*")
    with pytest.raises(PreconditionFailed) as info:
        store.put("lease", b"theirs", if_none_match="*")
    assert info.value.key == "lease"
    assert store.get("lease").data == b"mine"


def test_if_match_swaps_only_the_current_version(store: ObjectStore) -> None:
    v1 = store.put("lease", b"v1")
    v2 = store.put("lease", b"v2", if_match=v1)
    assert store.get("lease").data == b"v2"
    with pytest.raises(PreconditionFailed):
        store.put("lease", b"stale", if_match=v1)
    assert store.get("lease").data == b"v2"
    v3 = store.put("lease", b"v3", if_match=v2)
    assert store.head("lease") == v3


def test_if_match_on_missing_key_fails(store: ObjectStore) -> None:
    etag = store.put("other", b"x")
    with pytest.raises(PreconditionFailed):
        store.put("missing", b"x", if_match=etag)
    with pytest.raises(NotFound):
        store.get("missing")


def test_conditions_are_checked(store: ObjectStore) -> None:
    with pytest.raises(ValueError):
        store.put("k", b"x", if_none_match="*", if_match='"abc"')
    with pytest.raises(ValueError):
        store.put("k", b"x", if_none_match='"abc"')


def test_invalid_keys_are_refused(store: ObjectStore) -> None:
    for key in ["", "/abs", "a//b", "a/../b", "../up", ".hidden", "a/.tmp-x", "a/", "sp ace",
                "new\nline", "x" * 1000]:
        with pytest.raises(ValueError):
            store.put(key, b"x")
        with pytest.raises(ValueError):
            store.get(key)
        with pytest.raises(ValueError):
            store.delete(key)


def test_list_by_prefix_sorted_with_sizes(store: ObjectStore) -> None:
    keys = ["dbs/a/log/0002", "dbs/a/log/0001", "dbs/a/snap/0001", "dbs/ab/log/0001",
            "dbs/b/log/0001", "top"]
    for i, key in enumerate(keys):
        store.put(key, b"x" * i)
    assert [i.key for i in store.list("dbs/a/")] == \
        ["dbs/a/log/0001", "dbs/a/log/0002", "dbs/a/snap/0001"]
    assert [i.key for i in store.list("dbs/a")] == \
        ["dbs/a/log/0001", "dbs/a/log/0002", "dbs/a/snap/0001", "dbs/ab/log/0001"]
    assert {i.key: i.size for i in store.list("dbs/a/log/")} == \
        {"dbs/a/log/0001": 1, "dbs/a/log/0002": 0}
    assert [i.key for i in store.list("")] == sorted(keys)
    assert list(store.list("nothing/")) == []


def test_list_pages_and_start_after(make_store: MakeStore) -> None:
    store = make_store(page_size=7)
    keys = [f"log/{i:05d}" for i in range(25)]
    for key in keys:
        store.put(key, b".")
    assert [i.key for i in store.list("log/")] == keys
    assert [i.key for i in store.list("log/", start_after="log/00017")] == keys[18:]
    assert [i.key for i in store.list("log/", start_after="log/00017x")] == keys[18:]
    assert list(store.list("log/", start_after="zzz")) == []


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put("gone/soon", b"x")
    store.put("gone/stays", b"y")
    store.delete("gone/soon")
    store.delete("gone/soon")
    store.delete("never/was")
    with pytest.raises(NotFound):
        store.get("gone/soon")
    assert [i.key for i in store.list("gone/")] == ["gone/stays"]


def test_recreate_after_delete_with_if_none_match(store: ObjectStore) -> None:
    store.put("k", b"1", if_none_match="*")
    store.delete("k")
    store.put("k", b"2", if_none_match="*")
    assert store.get("k").data == b"2"


def test_concurrent_creates_have_one_winner(store: ObjectStore) -> None:
    wins: list[int] = []
    losses: list[int] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        try:
            store.put("leader", str(i).encode(), if_none_match="*")
            wins.append(i)
        except PreconditionFailed:
            losses.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 7
    assert store.get("leader").data == str(wins[0]).encode()


def cas_increment(store: ObjectStore, key: str, times: int) -> int:
    """Add one to a counter object `times` times with If-Match; returns the retries."""
    retries = 0
    done = 0
    while done < times:
        blob = store.get(key)
        try:
            store.put(key, str(int(blob.data) + 1).encode(), if_match=blob.etag)
            done += 1
        except PreconditionFailed:
            retries += 1
    return retries


def test_compare_and_swap_counter_loses_no_increment(store: ObjectStore) -> None:
    store.put("counter", b"0")
    threads = [threading.Thread(target=cas_increment, args=(store, "counter", 15))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(store.get("counter").data) == 60


# -- backend specifics -------------------------------------------------------------------------

def _process_increments(root: str, times: int) -> None:
    cas_increment(FileStore(root), "counter", times)


def _process_create(root: str, i: int, out: multiprocessing.Queue[int]) -> None:
    try:
        FileStore(root).put("leader", str(i).encode(), if_none_match="*")
        out.put(i)
    except PreconditionFailed:
        out.put(-1)


def test_file_store_conditional_puts_are_atomic_across_processes(tmp_path: Path) -> None:
    root = str(tmp_path / "shared")
    FileStore(root).put("counter", b"0")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_process_increments, args=(root, 25)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    assert FileStore(root).get("counter").data == b"100"

    out: multiprocessing.Queue[int] = ctx.Queue()
    procs = [ctx.Process(target=_process_create, args=(root, i, out)) for i in range(6)]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join()
    winners = [r for r in results if r >= 0]
    assert len(winners) == 1
    assert FileStore(root).get("leader").data == str(winners[0]).encode()


def test_file_store_leaves_no_temp_files_and_hides_them(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    store.put("a/b", b"1")
    with pytest.raises(PreconditionFailed):
        store.put("a/b", b"2", if_none_match="*")
    assert sorted(os.listdir(tmp_path / "s" / "a")) == ["b"]
    (tmp_path / "s" / "a" / ".tmp-b-dead").write_bytes(b"crashed mid-put")
    assert [i.key for i in store.list("")] == ["a/b"]


def test_s3_prefixes_isolate_stores(moto: MotoS3) -> None:
    one = moto.new_store(prefix="tenant-1")
    two = S3Store(one.bucket, "tenant-2", client=one.client)
    one.put("k", b"1")
    two.put("k", b"2")
    assert one.get("k").data == b"1" and two.get("k").data == b"2"
    assert [i.key for i in one.list("")] == ["k"]
    assert one.url == f"s3://{one.bucket}/tenant-1/"


def test_open_store_urls(tmp_path: Path) -> None:
    file_store = open_store((tmp_path / "x").as_uri())
    assert isinstance(file_store, FileStore) and file_store.root == (tmp_path / "x").resolve()
    assert isinstance(open_store("memory://"), MemoryStore)
    s3 = open_store("s3://bucket/some/prefix", endpoint_url="http://127.0.0.1:1",
                    region="us-east-1")
    assert isinstance(s3, S3Store) and s3.bucket == "bucket" and s3.prefix == "some/prefix/"
    faulty = open_store("faulty+memory://?rate=0.5&seed=3")
    assert faulty.url == "memory://"
    for bad in ("ftp://x", "file://host/path", "s3:///nobucket", "relative/path"):
        with pytest.raises(ValueError):
            open_store(bad)


def test_open_store_s3_with_endpoint_and_env_credentials(
        moto: MotoS3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    moto.client.create_bucket(Bucket="opened-by-url")
    store = open_store("s3://opened-by-url/pre/fix", endpoint_url=moto.endpoint,
                       region="us-east-1")
    etag = store.put("a/b", b"hello", if_none_match="*")
    assert store.get("a/b").data == b"hello" and store.head("a/b") == etag
    assert moto.client.get_object(Bucket="opened-by-url", Key="pre/fix/a/b")["Body"].read() \
        == b"hello"
    store.close()
