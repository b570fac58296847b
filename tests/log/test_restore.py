"""Restore to every txid reproduces exactly the database as of that commit; faults are named."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.log import layout
from shoal.log.errors import CorruptObject, MissingObject
from shoal.log.restore import history, restore
from shoal.log.timeline import create_timeline
from shoal.storage.memory import MemoryStore
from tests.support.logged import (
    LoggedDatabase,
    dump,
    dump_image,
    put_segments,
    put_snapshot,
    workload,
)

DB = "app"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[MemoryStore, str, LoggedDatabase, list[bytes]]:
    """One workload of 40 commits in a memory store: snapshot 0 and at txid 20, segments."""
    tmp = tmp_path_factory.mktemp("recorded")
    logged = LoggedDatabase(tmp / "src.db")
    images = workload(logged, random.Random(7), 36)
    store = MemoryStore()
    timeline = create_timeline(store, DB, None, 0, 0.0).id
    put_snapshot(store, DB, timeline, images[0], 0, logged.time - 1000)
    put_snapshot(store, DB, timeline, images[20], 20, logged.commits[19].time)
    put_segments(store, DB, timeline, logged.commits, [1, 5, 3, 7, 2, 9, 4])
    return store, timeline, logged, images


def test_restore_to_each_txid_is_byte_exact(
        recorded: tuple[MemoryStore, str, LoggedDatabase, list[bytes]], tmp_path: Path) -> None:
    store, timeline, logged, images = recorded
    dest = tmp_path / "restored.db"
    assert any(c.db_pages < p.db_pages for p, c in zip(logged.commits, logged.commits[1:],
                                                      strict=False))  # the file shrank
    for txid, image in enumerate(images):
        done = restore(store, DB, timeline, dest, txid=txid)
        assert done.txid == txid
        assert dest.read_bytes() == image, f"txid {txid}"
        expected_dump, _ = dump_image(image)
        got_dump, check = dump(dest)
        assert (got_dump, check) == (expected_dump, "ok")
        assert done.snapshot.endswith(f"{20 if txid >= 20 else 0:020d}-" +
                                      done.snapshot.rsplit("-", 1)[1])


def test_restore_defaults_to_the_head_and_reports_history(
        recorded: tuple[MemoryStore, str, LoggedDatabase, list[bytes]], tmp_path: Path) -> None:
    store, timeline, logged, images = recorded
    done = restore(store, DB, timeline, tmp_path / "head.db")
    assert done.txid == len(images) - 1 and done.time == logged.commits[-1].time
    assert (tmp_path / "head.db").read_bytes() == images[-1]
    window = history(store, DB, timeline)
    assert window.earliest.txid == 0 and window.latest.txid == len(images) - 1
    assert window.latest.time >= logged.commits[-1].time


def test_restore_to_a_timestamp(
        recorded: tuple[MemoryStore, str, LoggedDatabase, list[bytes]], tmp_path: Path) -> None:
    store, timeline, logged, images = recorded
    dest = tmp_path / "t.db"
    for commit in logged.commits[::3]:
        for when, want in ((commit.time, commit.txid), (commit.time + 0.25, commit.txid),
                           (commit.time - 0.25, commit.txid - 1)):
            assert restore(store, DB, timeline, dest, timestamp=when).txid == want
            assert dest.read_bytes() == images[want]
    after = restore(store, DB, timeline, dest, timestamp=logged.time + 1e6)
    assert after.txid == len(images) - 1
    with pytest.raises(MissingObject, match="before the history window"):
        restore(store, DB, timeline, dest, timestamp=0.0)


def copy_store(store: MemoryStore) -> MemoryStore:
    out = MemoryStore()
    for info in store.list(""):
        out.put(info.key, store.get(info.key).data)
    return out


def test_flipped_byte_in_a_segment_is_named(
        recorded: tuple[MemoryStore, str, LoggedDatabase, list[bytes]], tmp_path: Path) -> None:
    base, timeline, _, images = recorded
    segs = [i.key for i in base.list(layout.log_prefix(DB, timeline))]
    dest = tmp_path / "d.db"
    dest.write_bytes(b"previous content")
    rng = random.Random(1)
    for key in rng.sample(segs, 4):
        store = copy_store(base)
        data = bytearray(store.get(key).data)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        store.put(key, bytes(data))
        last = layout.parse_segment(next(i for i in store.list(key)))
        assert last is not None
        with pytest.raises(CorruptObject) as info:
            restore(store, DB, timeline, dest, txid=last.last)
        assert info.value.key == key and key in str(info.value)
        assert dest.read_bytes() == b"previous content"  # untouched on failure
        assert not Path(f"{dest}.restoring").exists()
    # a different txid that does not need the bad segment still restores
    assert restore(store, DB, timeline, dest, txid=0).txid == 0
    assert dest.read_bytes() == images[0]


def test_deleted_segment_is_a_named_gap(
        recorded: tuple[MemoryStore, str, LoggedDatabase, list[bytes]], tmp_path: Path) -> None:
    store = copy_store(recorded[0])
    timeline = recorded[1]
    infos = [layout.parse_segment(i) for i in store.list(layout.log_prefix(DB, timeline))]
    victim = infos[2]
    assert victim is not None
    store.delete(victim.key)
    with pytest.raises(MissingObject) as info:
        restore(store, DB, timeline, tmp_path / "d.db", txid=victim.last + 1)
    message = str(info.value)
    assert f"txids {victim.first}..{victim.last}" in message
    assert layout.log_prefix(DB, timeline) in message
    assert restore(store, DB, timeline, tmp_path / "d.db", txid=victim.first - 1)


def test_snapshot_faults_are_named(
        recorded: tuple[MemoryStore, str, LoggedDatabase, list[bytes]], tmp_path: Path) -> None:
    store = copy_store(recorded[0])
    timeline = recorded[1]
    snaps = [i.key for i in store.list(layout.snapshot_prefix(DB, timeline))]
    data = bytearray(store.get(snaps[1]).data)
    data[len(data) // 2] ^= 0x40
    store.put(snaps[1], bytes(data))
    with pytest.raises(CorruptObject) as info:
        restore(store, DB, timeline, tmp_path / "d.db", txid=25)
    assert info.value.key == snaps[1]
    store.delete(snaps[0])
    with pytest.raises(MissingObject, match="no snapshot at or before txid 5"):
        restore(store, DB, timeline, tmp_path / "d.db", txid=5)


def test_segment_whose_key_lies_is_refused(
        recorded: tuple[MemoryStore, str, LoggedDatabase, list[bytes]], tmp_path: Path) -> None:
    store = copy_store(recorded[0])
    timeline = recorded[1]
    info = layout.parse_segment(next(iter(store.list(layout.log_prefix(DB, timeline)))))
    assert info is not None and info.first == 1
    # the second segment's bytes under a key claiming the first segment's range
    second = list(store.list(layout.log_prefix(DB, timeline)))[1].key
    store.put(info.key, store.get(second).data)
    with pytest.raises(CorruptObject, match="its key says"):
        restore(store, DB, timeline, tmp_path / "d.db", txid=3)


def test_restore_removes_a_stale_wal(
        recorded: tuple[MemoryStore, str, LoggedDatabase, list[bytes]], tmp_path: Path) -> None:
    store, timeline, _, _ = recorded
    dest = tmp_path / "w.db"
    Path(f"{dest}-wal").write_bytes(b"stale")
    Path(f"{dest}-shm").write_bytes(b"stale")
    restore(store, DB, timeline, dest, txid=10)
    assert not Path(f"{dest}-wal").exists() and not Path(f"{dest}-shm").exists()
    assert dump(dest)[1] == "ok"


OPS = st.lists(st.one_of(
    st.tuples(st.just("insert"), st.integers(1, 40)),
    st.tuples(st.just("blob"), st.integers(0, 30000)),
    st.tuples(st.just("update"), st.integers(0, 4)),
    st.tuples(st.just("delete"), st.integers(0, 4)),
    st.tuples(st.just("table"), st.integers(0, 3)),
    st.tuples(st.just("vacuum"), st.just(0)),
    st.tuples(st.just("checkpoint"), st.just(0)),
), min_size=1, max_size=18)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=OPS, page_size=st.sampled_from([512, 1024, 4096]), auto_vacuum=st.booleans(),
       seed=st.integers(0, 2**16))
def test_random_workloads_restore_exactly(tmp_path_factory: pytest.TempPathFactory,
                                          ops: list[tuple[str, int]], page_size: int,
                                          auto_vacuum: bool, seed: int) -> None:
    tmp = tmp_path_factory.mktemp("hyp")
    rng = random.Random(seed)
    logged = LoggedDatabase(tmp / "src.db", page_size=page_size, auto_vacuum=auto_vacuum)
    images = [logged.image()]
    logged.write("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT UNIQUE, b BLOB)")
    images.append(logged.image())
    for i, (op, n) in enumerate(ops):
        if op == "checkpoint":  # only moves frames into the file; not a commit
            logged.checkpoint()
            continue
        if op == "insert":
            logged.write(*[("INSERT INTO t(v) VALUES (?)", (f"{i}-{j}-{rng.random()}",))
                           for j in range(n)])
        elif op == "blob":
            logged.write(("INSERT INTO t(v, b) VALUES (?, randomblob(?))", (f"b{i}", n)))
        elif op == "update":
            logged.write(("UPDATE t SET b = randomblob(100) WHERE id % 5 = ?", (n,)))
        elif op == "delete":
            logged.write(("DELETE FROM t WHERE id % 5 = ?", (n,)))
        elif op == "table":
            logged.write(f"CREATE TABLE IF NOT EXISTS x{n}(a, b)",
                         f"INSERT INTO x{n} SELECT v, b FROM t",
                         f"DROP TABLE IF EXISTS x{(n + 1) % 4}")
        else:
            logged.vacuum()
        images.append(logged.image())
    store = MemoryStore()
    timeline = create_timeline(store, DB, None, 0, 0.0).id
    put_snapshot(store, DB, timeline, images[0], 0, 1.0)
    sizes = [rng.randint(1, 4) for _ in range(len(logged.commits))]
    put_segments(store, DB, timeline, logged.commits, sizes)
    if len(images) > 3:  # a snapshot in the middle, taken from the oracle image
        mid = rng.randrange(1, len(images))
        put_snapshot(store, DB, timeline, images[mid], mid, logged.commits[mid - 1].time)
    targets = sorted([*rng.sample(range(len(images)), min(4, len(images))), len(images) - 1])
    for txid in targets:
        dest = tmp / f"r{txid}.db"
        restore(store, DB, timeline, dest, txid=txid)
        assert dest.read_bytes() == images[txid]
        assert dump(dest) == (dump_image(images[txid])[0], "ok")
    logged.close()
