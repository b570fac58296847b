"""Branches: names that point at timelines. Creating one writes two small records.

A branch record is ``(database, name, timeline, parent, fork_txid, created_at)``;
its data is the parent's history up to ``fork_txid`` followed by its own log,
both found through its timeline. Moving a name to a new timeline (reset,
restore in place) is a compare-and-swap on the branch record, so two nodes
cannot both move it. Nothing here copies data: the cost is constant in the
size of the database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from shoal.log import layout
from shoal.log.errors import BranchExists, BranchNotFound, CorruptObject, LogConflict
from shoal.log.timeline import Timeline, create_timeline, load_timeline
from shoal.storage.base import NotFound, ObjectStore, PreconditionFailed


@dataclass(frozen=True, slots=True)
class Branch:
    database: str
    name: str
    timeline: str  # the timeline its writes go to
    parent: str | None  # the branch it was created from (None for a database's first)
    fork_txid: int
    created_at: float
    etag: str | None = field(default=None, compare=False)  # record version, for moves

    def record(self) -> bytes:
        return json.dumps({"database": self.database, "name": self.name,
                           "timeline": self.timeline, "parent": self.parent,
                           "fork_txid": self.fork_txid, "created_at": self.created_at},
                          sort_keys=True).encode()


def _decode(data: bytes, key: str, etag: str) -> Branch:
    try:
        raw = json.loads(data)
        return Branch(str(raw["database"]), str(raw["name"]), str(raw["timeline"]),
                      raw["parent"], int(raw["fork_txid"]), float(raw["created_at"]), etag)
    except (ValueError, KeyError, TypeError):
        raise CorruptObject(f"branch record {key} is not valid", key) from None


def _create(store: ObjectStore, branch: Branch) -> Branch:
    key = layout.branch_key(branch.database, branch.name)
    try:
        etag = store.put(key, branch.record(), if_none_match="*")
    except PreconditionFailed:
        raise BranchExists(f"branch {branch.name!r} of {branch.database!r} already exists",
                           key) from None
    return replace(branch, etag=etag)


def create_database(store: ObjectStore, db: str, created_at: float,
                    name: str = "main") -> Branch:
    """A database's first branch, on a fresh root timeline (the engine then uploads the
    snapshot at txid 0 of the new file, which every restore starts from)."""
    timeline = create_timeline(store, db, None, 0, created_at)
    return _create(store, Branch(db, name, timeline.id, None, 0, created_at))


def create_branch(store: ObjectStore, db: str, name: str, source: Branch, fork_txid: int,
                  created_at: float) -> Branch:
    """A new branch whose state is ``source``'s at ``fork_txid`` (which must be durable)."""
    timeline = create_timeline(store, db, source.timeline, fork_txid, created_at)
    return _create(store, Branch(db, name, timeline.id, source.name, fork_txid, created_at))


def adopt_timeline(store: ObjectStore, db: str, name: str, timeline: Timeline,
                   parent: str | None, created_at: float) -> Branch:
    """A new branch name for an existing timeline (keeps a pre-restore state reachable)."""
    return _create(store, Branch(db, name, timeline.id, parent, timeline.fork_txid,
                                 created_at))


def get_branch(store: ObjectStore, db: str, name: str) -> Branch:
    key = layout.branch_key(db, name)
    try:
        blob = store.get(key)
    except NotFound:
        raise BranchNotFound(f"no branch {name!r} in database {db!r}", key) from None
    return _decode(blob.data, key, blob.etag)


def list_branches(store: ObjectStore, db: str) -> list[Branch]:
    out = []
    for info in store.list(layout.branches_prefix(db)):
        try:
            blob = store.get(info.key)
        except NotFound:
            continue  # deleted meanwhile
        out.append(_decode(blob.data, info.key, blob.etag))
    return sorted(out, key=lambda b: b.name)


def delete_branch(store: ObjectStore, db: str, name: str) -> None:
    """Remove the name; its timeline's objects go when retention finds no one needs them."""
    get_branch(store, db, name)
    store.delete(layout.branch_key(db, name))


def move_branch(store: ObjectStore, branch: Branch, parent_timeline: str, fork_txid: int,
                created_at: float, parent: str | None = None) -> Branch:
    """Point ``branch`` at a new timeline forked from ``parent_timeline`` at ``fork_txid``.

    Compare-and-swap on the branch record: LogConflict if it changed since read.
    """
    db = branch.database
    load_timeline(store, db, parent_timeline)
    timeline = create_timeline(store, db, parent_timeline, fork_txid, created_at)
    moved = Branch(db, branch.name, timeline.id, parent if parent is not None else branch.parent,
                   fork_txid, created_at)
    key = layout.branch_key(db, branch.name)
    if branch.etag is None:
        raise ValueError("move_branch needs a branch read from the store (with its etag)")
    try:
        etag = store.put(key, moved.record(), if_match=branch.etag)
    except PreconditionFailed:
        raise LogConflict(f"branch {branch.name!r} of {db!r} changed concurrently", key) \
            from None
    return replace(moved, etag=etag)


def reset_branch(store: ObjectStore, branch: Branch, parent: Branch, parent_txid: int,
                 created_at: float) -> Branch:
    """Back to ``parent``'s state at ``parent_txid`` (its latest durable one, for previews)."""
    return move_branch(store, branch, parent.timeline, parent_txid, created_at, parent.name)


def restore_in_place(store: ObjectStore, branch: Branch, txid: int, keep_as: str,
                     created_at: float) -> tuple[Branch, Branch]:
    """Restore ``branch`` to its own ``txid``; its state before stays reachable as ``keep_as``.

    Returns (the moved branch, the branch keeping the old timeline).
    """
    db = branch.database
    old = load_timeline(store, db, branch.timeline)
    kept = adopt_timeline(store, db, keep_as, old, branch.name, created_at)
    moved = move_branch(store, branch, old.id, txid, created_at)
    return moved, kept
