"""An object store in a local folder: the embedded default, safe across processes.

A put writes a temp file beside the target, fsyncs it, renames it over the key
and fsyncs the directory, so a reader sees the old object or the new one,
never a torn one, and a returned put survives power loss. Every mutation of a
key (put, conditional put, delete) holds an exclusive ``flock`` on one of a few
lock files picked by the key's hash, so check-then-rename is atomic against
other threads and other processes on the same host (not over NFS).

The folder is the node's alone: it holds the token signing key and the admin
token, so its root is made owner-only (0700) and every object is written 0600;
anyone else on the host reads nothing there.

An OSError on the folder (a failing disk, permissions changed under the node, a full
disk) is the store failing: StorageUnavailable, with the OSError as its cause.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

from shoal.storage.base import (
    Blob,
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    StorageUnavailable,
    Unusable,
    check_conditions,
    check_key,
    content_etag,
)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
LOCK_STRIPES = 64
LOCK_DIR = ".locks"
TEMP_PREFIX = ".tmp-"


def _unusable(root: Path, exc: OSError) -> Unusable:
    """What a failure on the store's folder means, for the operator reading why a node
    did not start."""
    where = f"the object store folder {root}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return Unusable(f"{where} is not writable by this process (uid {os.getuid()}): "
                        f"{exc.strerror}", "Give the node's user write access to the folder "
                                           "(chown, chmod), or point store at one it can write.")
    if exc.errno == errno.EROFS:
        return Unusable(f"{where} is on a read-only file system",
                        "Mount it read-write, or point store at another folder.")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Unusable(f"{where} has no space left ({exc.strerror})",
                        "Free space on its disk (or raise the quota), then start the node.")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return Unusable(f"{where} cannot be created: part of its path is a file, not a folder",
                        "Point store at a folder: file:///absolute/path.")
    return Unusable(f"{where} cannot be used: {exc.strerror or exc}",
                    "Check that the folder exists and that this process may write there.")


def _unless_gone(exc: OSError) -> None:
    """os.walk's onerror: a folder that is not there lists nothing; any other error fails."""
    if not isinstance(exc, FileNotFoundError | NotADirectoryError):
        raise exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore:
    """Objects as files under ``root``; keys map to relative paths."""

    def __init__(self, root: str | os.PathLike[str], url: str | None = None):
        self.root = Path(root).resolve()
        self.url = url or self.root.as_uri()
        try:
            (self.root / LOCK_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _unusable(self.root, exc) from None
        with contextlib.suppress(OSError):  # a folder this user does not own stays as it is
            os.chmod(self.root, PRIVATE_DIR)  # the signing key is in here

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextlib.contextmanager
    def _failing(self, op: str, key: str) -> Iterator[None]:
        """An OSError inside (the answers made of some, NotFound, are raised before) is
        the store failing: StorageUnavailable naming the operation, the key and the cause."""
        try:
            yield
        except OSError as exc:
            raise StorageUnavailable(key, f"{op} {key} in the object store folder {self.root} "
                                          f"failed: {exc.strerror or exc}") from exc

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        stripe = hashlib.blake2b(key.encode(), digest_size=2).digest()[0] % LOCK_STRIPES
        fd = os.open(self.root / LOCK_DIR / f"{stripe:02d}", os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def get(self, key: str) -> Blob:
        with self._failing("get", key):
            try:
                return Blob(self._path(key).read_bytes())
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise NotFound(key) from None

    def head(self, key: str) -> str:
        return self.get(key).etag

    def _current_etag(self, path: Path) -> str | None:
        try:
            return content_etag(path.read_bytes())
        # mutate: harmless drop NotADirectoryError (put made the parent folder: not reached)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def put(self, key: str, data: bytes, *, if_none_match: str | None = None,
            if_match: str | None = None) -> str:
        path = self._path(key)
        check_conditions(if_none_match, if_match)
        with self._failing("put", key):
            return self._put(key, path, data, if_none_match, if_match)

    def _put(self, key: str, path: Path, data: bytes, if_none_match: str | None,
             if_match: str | None) -> str:
        path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        tmp = path.parent / f"{TEMP_PREFIX}{path.name}-{secrets.token_hex(6)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            with self._locked(key):
                if if_none_match and path.exists():
                    raise PreconditionFailed(key, "If-None-Match")
                if if_match is not None and self._current_etag(path) != if_match:
                    raise PreconditionFailed(key, "If-Match")
                os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _fsync_dir(path.parent)
        return content_etag(data)

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        with self._failing("list", prefix):
            found = self._listed(prefix, start_after)
        yield from found

    def _listed(self, prefix: str, start_after: str) -> Sequence[ObjectInfo]:
        # Walk only the folder the prefix names; then filter and sort by key as S3 does.
        # A folder that cannot be read fails the listing (os.walk would skip it quietly);
        # one missing or removed meanwhile holds nothing.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = self.root / base if base else self.root
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(top, onerror=_unless_gone):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix) and key > start_after:
                    with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                        st = os.stat(os.path.join(dirpath, name))
                        found.append(ObjectInfo(key, st.st_size, st.st_mtime))
        found.sort(key=lambda info: info.key.encode())
        return found

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._failing("delete", key):
            with self._locked(key):
                try:
                    path.unlink()
                except (FileNotFoundError, NotADirectoryError):
                    return
            _fsync_dir(path.parent)

    def probe(self) -> None:
        """Create, write, fsync and remove a file in the folder: what every put does."""
        tmp = self.root / f"{TEMP_PREFIX}probe-{secrets.token_hex(6)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
            try:
                os.write(fd, b"probe")
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.unlink()
            _fsync_dir(self.root)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise _unusable(self.root, exc) from None

    def close(self) -> None:
        pass
