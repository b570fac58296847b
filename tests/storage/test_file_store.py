"""storage/file.py beyond the shared store contract: what makes a put durable and private.

The contract every store meets (conditions, listing, atomicity across processes) is in
test_object_store.py. Here: every put fsyncs its data and then its folder, a delete its
folder, no descriptor leaks, files are owner-only, the lock file a key maps to (a format
two processes on one host must agree on), and why a folder cannot be used. Numbers and
names are written out, not imported, so a changed constant fails.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.storage.base import NotFound, PreconditionFailed, StorageUnavailable, Unusable
from shoal.storage.file import FileStore


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths fsynced, in order (a file as its name, a folder as 'dir:<path>')."""
    done: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        done.append(f"dir:{target}" if os.path.isdir(target) else os.path.basename(target))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    yield done


def test_a_put_fsyncs_its_data_then_its_folder_and_a_delete_its_folder(
        tmp_path: Path, synced: list[str]) -> None:
    store = FileStore(tmp_path)
    before = open_fds()
    store.put("dbs/a/x.json", b"1")
    assert len(synced) == 2 and synced[0].startswith(".tmp-x.json-")
    assert synced[1] == f"dir:{tmp_path / 'dbs' / 'a'}"
    synced.clear()
    store.delete("dbs/a/x.json")
    assert synced == [f"dir:{tmp_path / 'dbs' / 'a'}"]
    synced.clear()
    store.probe()
    assert len(synced) == 2 and synced[0].startswith(".tmp-probe-")
    assert synced[1] == f"dir:{tmp_path}"
    for i in range(20):  # every path closes what it opened
        store.put(f"k{i}", b"v")
        store.put(f"k{i}", b"w", if_match=store.head(f"k{i}"))
        with pytest.raises(PreconditionFailed):
            store.put(f"k{i}", b"x", if_none_match="*")
        store.delete(f"k{i}")
        store.probe()
    assert open_fds() == before
    assert sorted(os.listdir(tmp_path)) == [".locks", "dbs"]  # no temp file left behind


def test_the_folder_and_every_object_are_owner_only(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    store = FileStore(root)
    store.put("dbs/a/x.json", b"1")
    mode = {p: stat.S_IMODE(os.stat(root / p).st_mode)
            for p in ("", "dbs/a", "dbs/a/x.json")}
    # (the root's 0700 is what keeps others out; mkdir applies no mode to "dbs" between)
    assert mode == {"": 0o700, "dbs/a": 0o700, "dbs/a/x.json": 0o600}
    locks = os.listdir(root / ".locks")
    assert locks and all(stat.S_IMODE(os.stat(root / ".locks" / n).st_mode) == 0o600
                         for n in locks)


def test_a_key_is_locked_by_a_file_named_for_its_hash(tmp_path: Path) -> None:
    # blake2b(key, digest_size=2)[0] % 64, two digits: processes of one host must agree
    store = FileStore(tmp_path)
    store.put("catalog/databases/orders.json", b"1")
    assert os.listdir(tmp_path / ".locks") == ["60"]
    store.delete("node/lease.json")
    store.put("dbs/orders/timelines/t1.json", b"1")  # its hash's first byte is 130
    assert sorted(os.listdir(tmp_path / ".locks")) == ["02", "47", "60"]


def test_a_failed_put_leaves_neither_object_nor_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path)

    def broken(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(StorageUnavailable, match="I/O error"):
        store.put("dbs/a", b"1")
    assert os.listdir(tmp_path / "dbs") == [] and list(store.list("")) == []


def test_keys_through_a_file_or_at_a_folder_are_not_found(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put("a", b"1")
    store.put("d/x", b"2")
    with pytest.raises(NotFound):
        store.get("a/b")  # NotADirectoryError
    with pytest.raises(NotFound):
        store.get("d")  # IsADirectoryError
    with pytest.raises(PreconditionFailed):
        store.put("d", b"3", if_match="some-etag")  # a folder has no etag to match
    store.delete("a/b")  # nothing there: a quiet no-op
    assert store.get("a").data == b"1"


def test_a_listing_without_a_slash_starts_at_the_root(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    for key in ("ab", "a/x", "b/y", "a/b/c"):
        store.put(key, b"1")
    assert [i.key for i in store.list("a")] == ["a/b/c", "a/x", "ab"]
    assert [i.key for i in store.list("a/b")] == ["a/b/c"]


def test_the_url_is_given_or_the_folders_own(tmp_path: Path) -> None:
    assert FileStore(tmp_path).url == tmp_path.resolve().as_uri()
    assert FileStore(tmp_path, "file:///elsewhere").url == "file:///elsewhere"


@pytest.mark.parametrize(("err", "says", "hint"), [
    (errno.EACCES, "is not writable by this process (uid {uid}): Denied", "chown"),
    (errno.EPERM, "is not writable by this process (uid {uid}): Denied", "chown"),
    (errno.EROFS, "is on a read-only file system", "Mount it read-write"),
    (errno.ENOSPC, "has no space left (Denied)", "Free space"),
    (errno.EDQUOT, "has no space left (Denied)", "raise the quota"),
    (errno.ENOTDIR, "cannot be created: part of its path is a file, not a folder",
     "file:///absolute"),
    (errno.EEXIST, "cannot be created: part of its path is a file, not a folder",
     "file:///absolute"),
    (errno.EIO, "cannot be used: Denied", "Check that the folder exists"),
])
def test_why_a_folder_cannot_be_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, says: str, hint: str) -> None:
    real_open = os.open

    def refused(path: object, flags: int, *args: int) -> int:
        if "probe" in str(path):
            raise OSError(err, "Denied", str(path))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    store = FileStore(tmp_path)
    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(Unusable) as found:
        store.probe()
    assert str(found.value) == \
        f"the object store folder {tmp_path.resolve()} " + says.format(uid=os.getuid())
    assert hint in found.value.hint


def test_a_probe_that_fails_after_writing_removes_its_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path)

    def no_room(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_room)
    with pytest.raises(Unusable, match="has no space left"):
        store.probe()
    assert os.listdir(tmp_path) == [".locks"]


def test_a_probe_writes_so_that_a_full_disk_shows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path)  # (an empty file can often still be made on a full disk)

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(Unusable, match="has no space left"):
        store.probe()


def test_a_root_that_cannot_be_made_is_unusable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(Unusable, match="part of its path is a file"):
        FileStore(tmp_path / "file" / "store")


def test_a_folder_that_cannot_be_read_fails_the_listing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a partial history: a listing that skipped a folder would lose its objects."""
    store = FileStore(tmp_path)
    store.put("dbs/a/x", b"1")
    store.put("dbs/b/y", b"2")
    real = os.scandir

    def denied(path: Any = ".") -> Any:
        if str(path).endswith("dbs/a"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(StorageUnavailable, match="Permission denied"):
        list(store.list("dbs/"))
    store.delete("dbs/b/y")  # a folder that vanished meanwhile lists nothing, quietly
    monkeypatch.setattr(os, "scandir", real)
    assert [i.key for i in store.list("dbs/")] == ["dbs/a/x"]
