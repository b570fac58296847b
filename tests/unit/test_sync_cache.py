"""engine/sync.py's files on disk (states, generations' frames): bounded by count and by
bytes, the newest of each kept."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from shoal.engine import sync
from shoal.engine.sync import PAGE, Frames, State, Syncs


def _state(folder: Path, name: str, pages: int) -> State:
    path = folder / name
    path.write_bytes(b"")
    return State(path, pages)


def _frames(folder: Path, name: str, count: int) -> Frames:
    path = folder / name
    path.write_bytes(b"")
    return Frames(path, count)


def test_files_are_bounded_by_count_and_bytes(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync, "CACHE_BYTES", 10 * PAGE)
    syncs = Syncs(tmp_path)
    syncs.states[("d", "t", 1)] = first = _state(tmp_path, "a.db", 4)
    syncs.frames[("d", "t", 0, 1)] = small = _frames(tmp_path, "a.frames", 1)
    syncs._trim()
    assert first.path.exists() and small.path.exists()  # 4 pages + a frame: under the cap
    syncs.states[("d", "t", 2)] = big = _state(tmp_path, "b.db", 9)
    syncs._trim()  # 13 pages: the older state goes, the newest stays
    assert not first.path.exists() and big.path.exists() and small.path.exists()
    syncs.states[("d", "t", 3)] = huge = _state(tmp_path, "c.db", 50)
    syncs._trim()  # alone past the cap: kept (it is being served), the older one goes
    assert huge.path.exists() and not big.path.exists()
    assert list(syncs.states) == [("d", "t", 3)] and list(syncs.frames) == [("d", "t", 0, 1)]
    for i in range(3):  # while the huge state is served, frames files go down to the newest
        syncs.frames[("d", "t", 10 + i, 11 + i)] = _frames(tmp_path, f"{i}.frames", 0)
    syncs._trim()
    assert list(syncs.frames) == [("d", "t", 12, 13)] and not small.path.exists()
    syncs.states.clear()
    for i in range(sync.FRAME_FILES + 3):  # small ones: bounded by their count
        syncs.frames[("d", "t", 20 + i, 21 + i)] = _frames(tmp_path, f"x{i}.frames", 0)
    syncs._trim()
    assert len(syncs.frames) == sync.FRAME_FILES
    assert ("d", "t", 20 + sync.FRAME_FILES + 2, 21 + sync.FRAME_FILES + 2) in syncs.frames


def test_reading_frames_keeps_no_file_open(tmp_path: Path) -> None:
    path = tmp_path / "g.frames"
    path.write_bytes(b"".join(bytes([i]) * sync.FRAME for i in range(3)))
    frames = Frames(path, 3)
    gc.collect()  # another test's garbage holding a descriptor goes now, not mid-count
    before = len(list(Path("/proc/self/fd").iterdir()))
    assert [frames.read(1, 5)[::sync.FRAME], frames.read(3, 2), frames.read(0, 1)[:1]] == \
        [bytes([1, 2]), b"", b"\x00"]
    for _ in range(50):
        frames.read(0, 3)
    assert len(list(Path("/proc/self/fd").iterdir())) == before


def test_an_export_reads_its_file_even_once_dropped_and_never_leaks_it(
        tmp_path: Path) -> None:
    """server/sync.py opens a state when it answers: the cache may drop the file at once
    (a newer state), the stream still reads it; a stream dropped unread closes it too."""
    import asyncio
    import os
    import weakref

    from shoal.server import sync as server_sync

    path = tmp_path / "state.db"
    path.write_bytes(b"x" * (3 * PAGE))
    gc.collect()  # another test's garbage holding a descriptor goes now, not mid-count
    before = len(list(Path("/proc/self/fd").iterdir()))

    async def read_all() -> bytes:
        held = [os.open(path, os.O_RDONLY)]
        stream = server_sync._read(held, 3 * PAGE)
        path.unlink()  # dropped by the cache before the first chunk
        return b"".join([chunk async for chunk in stream])

    assert asyncio.run(read_all()) == b"x" * (3 * PAGE)
    path.write_bytes(b"y")
    held = [os.open(path, os.O_RDONLY)]
    stream = server_sync._read(held, 1)
    weakref.finalize(stream, server_sync._close, held)
    del stream  # never read: a client that went away first
    gc.collect()
    assert held == [-1]
    assert len(list(Path("/proc/self/fd").iterdir())) == before
