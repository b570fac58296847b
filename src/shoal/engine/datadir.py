"""A data directory belongs to one kind of node: local-only (store none) or store-backed.

The two keep different truths: a local-only node's data directory *is* the
database (catalog, signing key, files), while a store-backed node's is only a
cache of the object store (its catalog, keys and history live in the store).
Starting one kind on the other's directory would not lose data, but it would
hide it: a local-only node's databases do not exist in any store, and a
store-backed node's local files are not in a local-only node's catalog. So the
first start records the kind in ``DATA/node-kind`` and later starts of the other
kind are refused with a message that says what to do.

A data directory also belongs to one process at a time (``DATA/lock``, a file
lock), and holds the node's id (``DATA/node-id``), by which the object store's
lease (``lease.py``) knows a node that restarts on the same disk.

At start, under that lock, `sweep_leftovers` removes what a killed process left
half-written: restores cut short and database images being built.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
from pathlib import Path

from shoal.engine.disk import optional
from shoal.errors import Code, ShoalError, disk_errors

log = logging.getLogger("shoal")

KIND_FILE = "node-kind"
LOCK_FILE = "lock"
NODE_ID_FILE = "node-id"
DBS = "dbs"
TMP = "tmp"  # the registry builds new databases' first images here
RESTORING = ".restoring"  # log/restore.py writes <branch>.db.restoring, then renames it
LOCAL_ONLY = "local-only"
STORE = "object-store"


def _inferred(root: Path) -> str | None:
    """The kind of a data directory written before KIND_FILE existed, from its files."""
    if (root / "signing-key").exists():
        return LOCAL_ONLY  # a store-backed node keeps its signing key in the store
    if any((root / DBS).glob("*/*.timeline")):
        return STORE  # branch markers of the commit log
    return None


def claim(root: Path, local_only: bool) -> None:
    """Record this node's kind in ``root``, or refuse (DATA_DIR_CONFLICT) the other kind."""
    kind = LOCAL_ONLY if local_only else STORE
    path = root / KIND_FILE
    try:
        recorded: str | None = path.read_text().strip()
    except FileNotFoundError:
        recorded = _inferred(root)
    if recorded is not None and recorded != kind:
        if recorded == LOCAL_ONLY:
            advice = ("its databases exist only in this directory, not in any object store: "
                      "start it with store = \"none\" again, or give the store-backed node an "
                      "empty data directory")
        else:
            advice = ("it is a cache of an object store, which holds its databases, tokens "
                      "and history: start it with that --store again, or give the local-only "
                      "node an empty data directory")
        raise ShoalError(Code.DATA_DIR_CONFLICT, f"the data directory {root} belongs to a "
                                                 f"{recorded} node, not a {kind} one: {advice}")
    if not path.exists():
        _write_new(path, kind + "\n")


def _write_new(path: Path, text: str) -> None:
    """Write a small file of the data directory; on a full disk, leave none behind (an empty
    node-kind would read as the other kind) and fail with DISK_FULL."""
    try:
        with disk_errors():
            path.write_text(text)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def lock(root: Path) -> int:
    """Hold ``root`` for this process (a file lock the kernel drops when the process dies);
    DATA_DIR_CONFLICT if another process holds it. Returns the descriptor to close."""
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ShoalError(Code.DATA_DIR_CONFLICT, f"the data directory {root} is in use by another "
                                                 f"process (pid {holder}): stop it, or give this "
                                                 f"node a data directory of its own") from None
    with optional(f"writing the pid into {root / LOCK_FILE}"):  # only shown to a second process
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def node_id(root: Path) -> str:
    """This node's id, kept in ``root``: the object store's lease names its holder by it."""
    path = root / NODE_ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        node = secrets.token_hex(8)
        _write_new(path, node + "\n")
        return node


def forget_cache(root: Path) -> bool:
    """Drop the local copies of every branch (True if there were any): another node has
    written to the store since this one last held it, so they may hold commits that
    history no longer has."""
    if not (root / DBS).exists():
        return False
    shutil.rmtree(root / DBS)
    return True


def sweep_leftovers(root: Path) -> list[Path]:
    """Remove the partial files of a process that was killed mid-way: restores of a branch
    (``dbs/*/*.restoring``) and everything under ``tmp``. Call with ``root`` locked (no
    other process is writing them); they are never reused, only left to fill the disk.
    Returns what was removed."""
    gone = sorted((root / DBS).glob(f"*/*{RESTORING}"))
    for path in gone:
        path.unlink(missing_ok=True)
    scratch = root / TMP
    if scratch.is_dir():
        gone += sorted(scratch.iterdir())
        shutil.rmtree(scratch, ignore_errors=True)
    if gone:
        log.info("removed %d leftovers of an interrupted run: %s", len(gone),
                 ", ".join(str(p.relative_to(root)) for p in gone[:5]) +
                 (", ..." if len(gone) > 5 else ""))
    return gone
