"""Databases and their branches: one record per database, changed by compare-and-swap.

A database's record (``catalog/databases/{db}.json``) names its live incarnation's
branches, each ``(timeline, parent, fork_txid, created_at)``, and its deleted
incarnations (restorable until retention expires them). Every change to a
database's metadata (create, branch create, delete, reset, restore in place, delete
and undelete of the database) is one conditional write of that record, so it happens
whole or not at all, and two nodes cannot both make a change from the same version.

A branch's data is its timeline's history (see ``timeline.py``); nothing here copies
data, so the cost is constant in the size of the database. A new branch always gets a
new timeline, and a state kept by a restore gets one too (forked at the old head), so
two branches never share a timeline's head.

Taking a branch *off* its timeline (restore, reset, delete) is two writes: first the
timeline is sealed, naming the intent (nothing can commit on it after that, so no
write acknowledged by any node can be left behind on a timeline no branch reads),
then the record is changed. If the second write never happens (a crash), whoever next
finds the sealed timeline under the branch finishes the intent (:func:`complete`):
the operation happened at its seal.

Records written before the database record held branches kept each branch in
``dbs/{db}/branches/{name}.json``; they are read as the record's branches until the
first change writes them into it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from shoal.log import generations, layout
from shoal.log.errors import (
    BranchExists,
    BranchNotFound,
    CorruptObject,
    DatabaseExists,
    DatabaseNotFound,
    LogConflict,
)
from shoal.log.timeline import (
    Timeline,
    create_timeline,
    load_timeline,
    seal,
    segments,
    snapshots,
)
from shoal.storage.base import NotFound, ObjectStore, PreconditionFailed

UPDATE_TRIES = 16  # conditional writes of a database record against concurrent changes
KEEP_TRIES = 1000  # names tried for a state kept by a restore


@dataclass(frozen=True, slots=True)
class Branch:
    database: str
    name: str
    timeline: str  # the timeline its writes go to
    parent: str | None  # the branch it was created from (None for a database's first)
    fork_txid: int
    created_at: float
    etag: str | None = field(default=None, compare=False)  # the database record's version
    # how libSQL's sync protocol numbers this line (log/generations.py): absent for a
    # branch never restored or reset
    sync: dict[str, Any] = field(default_factory=dict, compare=False)

    def entry(self) -> dict[str, Any]:
        return {"timeline": self.timeline, "parent": self.parent,
                "fork_txid": self.fork_txid, "created_at": self.created_at, **self.sync}


@dataclass(frozen=True, slots=True)
class Incarnation:
    """One life of a database name: created, maybe deleted (and then restorable)."""

    id: str
    created_at: float
    branches: dict[str, dict[str, Any]]  # name -> Branch.entry()
    deleted_at: float | None = None
    limits: dict[str, Any] = field(default_factory=dict)  # engine/quota.py, set by an admin
    cors_origins: tuple[str, ...] = ()  # shoal/origins.py: pages a browser may let call it
    without_old: tuple[str, ...] = ()  # tables whose feed keeps no old rows (shoal/feed)
    issuers: tuple[dict[str, Any], ...] = ()  # identity providers it trusts (shoal/identity)

    def raw(self) -> dict[str, Any]:
        out = {"incarnation": self.id, "created_at": self.created_at,
               "deleted_at": self.deleted_at, "branches": self.branches}
        if self.limits:
            out["limits"] = self.limits
        if self.cors_origins:
            out["cors_origins"] = list(self.cors_origins)
        if self.without_old:
            out["feed_without_old"] = list(self.without_old)
        if self.issuers:
            out["issuers"] = list(self.issuers)
        return out


@dataclass(frozen=True, slots=True)
class Record:
    """A database name's record: its live incarnation (None while deleted) and its deleted
    ones, newest last."""

    name: str
    live: Incarnation | None
    deleted: tuple[Incarnation, ...] = ()
    etag: str | None = field(default=None, compare=False)
    legacy: bool = field(default=False, compare=False)  # branches still in legacy records

    def encode(self) -> bytes:
        live = self.live
        out: dict[str, Any] = {
            "name": self.name,
            "created_at": live.created_at if live else None,
            "incarnation": live.id if live else None,
            "branches": live.branches if live else None,
            "deleted": [d.raw() for d in self.deleted],
        }
        if live is not None and live.limits:
            out["limits"] = live.limits
        if live is not None and live.cors_origins:
            out["cors_origins"] = list(live.cors_origins)
        if live is not None and live.without_old:
            out["feed_without_old"] = list(live.without_old)
        if live is not None and live.issuers:
            out["issuers"] = list(live.issuers)
        return json.dumps(out, sort_keys=True).encode()

    def branch(self, name: str) -> Branch:
        if self.live is None or name not in self.live.branches:
            raise BranchNotFound(f"no branch {name!r} in database {self.name!r}",
                                 layout.database_key(self.name))
        return _branch(self.name, name, self.live.branches[name], self.etag)


def _branch(db: str, name: str, raw: dict[str, Any], etag: str | None) -> Branch:
    return Branch(db, name, str(raw["timeline"]), raw["parent"], int(raw["fork_txid"]),
                  float(raw["created_at"]), etag,
                  {k: raw[k] for k in generations.ENTRY if k in raw})


def new_incarnation_id() -> str:
    return secrets.token_hex(6)


# -- reading -----------------------------------------------------------------------------------
def _incarnation(raw: dict[str, Any]) -> Incarnation:
    branches = raw["branches"]
    for entry in branches.values():
        _branch("", "", entry, None)  # checks the shape
    return Incarnation(str(raw["incarnation"]), float(raw["created_at"]), dict(branches),
                       None if raw.get("deleted_at") is None else float(raw["deleted_at"]),
                       dict(raw.get("limits") or {}),
                       tuple(str(o) for o in raw.get("cors_origins") or ()),
                       tuple(str(t) for t in raw.get("feed_without_old") or ()),
                       tuple(dict(i) for i in raw.get("issuers") or ()))


def _legacy_branches(store: ObjectStore, db: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for info in store.list(layout.branches_prefix(db)):
        try:
            raw = json.loads(store.get(info.key).data)
        except NotFound:
            continue
        except ValueError:
            raise CorruptObject(f"branch record {info.key} is not valid", info.key) from None
        try:
            out[str(raw["name"])] = _branch(db, str(raw["name"]), raw, None).entry()
        except (KeyError, TypeError, ValueError):
            raise CorruptObject(f"branch record {info.key} is not valid", info.key) from None
    return out


def decode_record(store: ObjectStore, db: str, data: bytes, etag: str | None) -> Record:
    key = layout.database_key(db)
    try:
        raw = json.loads(data)
        deleted = tuple(_incarnation(d) for d in raw.get("deleted") or ())
        if "branches" not in raw:  # written before records held branches
            legacy = Incarnation("", float(raw["created_at"]), _legacy_branches(store, db))
            return Record(db, legacy, deleted, etag, legacy=True)
        live = None if raw.get("incarnation") is None else _incarnation(raw)
        return Record(db, live, deleted, etag)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptObject(f"database record {key} is not valid", key) from None


def load_record(store: ObjectStore, db: str) -> Record | None:
    """The database name's record, or None if the name was never used (or was purged)."""
    try:
        blob = store.get(layout.database_key(db))
    except NotFound:
        return None
    return decode_record(store, db, blob.data, blob.etag)


def live_record(store: ObjectStore, db: str) -> Record:
    """The record of a live database; DatabaseNotFound otherwise."""
    record = load_record(store, db)
    if record is None or record.live is None:
        raise DatabaseNotFound(f"database {db!r} does not exist", layout.database_key(db))
    return record


def get_branch(store: ObjectStore, db: str, name: str) -> Branch:
    record = load_record(store, db)
    if record is None:
        raise BranchNotFound(f"no branch {name!r} in database {db!r}",
                             layout.database_key(db))
    return record.branch(name)


def referenced(record: Record | None) -> set[str]:
    """Timelines the record's branches point at, live or deleted incarnations alike."""
    if record is None:
        return set()
    incarnations = [*record.deleted, *([record.live] if record.live else [])]
    return {str(e["timeline"]) for inc in incarnations for e in inc.branches.values()}


def intended(timeline: Timeline) -> set[str]:
    """Timelines a sealed timeline's intent will point branches at (once finished)."""
    intent = timeline.sealed or {}
    out = {str(intent["to"]["timeline"])} if intent.get("to") else set()
    if intent.get("keep"):
        out.add(str(intent["keep"]["timeline"]))
    return out


def list_branches(store: ObjectStore, db: str) -> list[Branch]:
    record = load_record(store, db)
    if record is None or record.live is None:
        return []
    return sorted((record.branch(n) for n in record.live.branches), key=lambda b: b.name)


# -- changing ----------------------------------------------------------------------------------
def update(store: ObjectStore, db: str, change: Callable[[Record | None], Record]) -> Record:
    """Apply ``change`` to the current record and write it back conditionally, again on a
    lost race (``change`` sees the new version and may raise). Returns what was written."""
    key = layout.database_key(db)
    for _ in range(UPDATE_TRIES):
        current = load_record(store, db)
        new = change(current)
        try:
            if current is None:
                etag = store.put(key, new.encode(), if_none_match="*")
            else:
                assert current.etag is not None
                etag = store.put(key, new.encode(), if_match=current.etag)
        except PreconditionFailed:
            continue
        if current is not None and current.legacy:
            for info in store.list(layout.branches_prefix(db)):  # migrated: now stale
                with contextlib.suppress(Exception):
                    store.delete(info.key)
        return replace(new, etag=etag, legacy=False)
    raise LogConflict(f"database {db!r} kept changing while it was being updated", key)


def _with_branches(record: Record, branches: dict[str, dict[str, Any]]) -> Record:
    assert record.live is not None
    return replace(record, live=replace(record.live, branches=branches))


def add_database(store: ObjectStore, db: str, created_at: float, timeline: Timeline,
                 name: str = "main") -> Branch:
    """Make the database exist, with its first branch on ``timeline`` (a root whose txid-0
    snapshot is stored): the one write that creates it. A deleted incarnation of the same
    name stays restorable beside the new one."""
    main = Branch(db, name, timeline.id, None, 0, created_at, sync=generations.fresh())

    def change(current: Record | None) -> Record:
        if current is not None and current.live is not None:
            raise DatabaseExists(f"database {db!r} already exists", layout.database_key(db))
        live = Incarnation(new_incarnation_id(), created_at, {name: main.entry()})
        return Record(db, live, current.deleted if current is not None else ())

    return update(store, db, change).branch(name)


def create_database(store: ObjectStore, db: str, created_at: float,
                    name: str = "main") -> Branch:
    """A database's first branch, on a fresh root timeline (the engine stores the txid-0
    snapshot before the record, which every restore starts from)."""
    return add_database(store, db, created_at, create_timeline(store, db, None, 0, created_at),
                        name)


def create_branch(store: ObjectStore, db: str, name: str, source: Branch, fork_txid: int,
                  created_at: float) -> Branch:
    """A new branch whose state is ``source``'s at ``fork_txid`` (which must be committed)."""
    timeline = create_timeline(store, db, source.timeline, fork_txid, created_at)
    made = Branch(db, name, timeline.id, source.name, fork_txid, created_at,
                  sync=generations.fresh())

    def change(current: Record | None) -> Record:
        if current is None or current.live is None:
            raise DatabaseNotFound(f"database {db!r} does not exist", layout.database_key(db))
        if name in current.live.branches:
            raise BranchExists(f"branch {name!r} of {db!r} already exists",
                               layout.database_key(db))
        return _with_branches(current, {**current.live.branches, name: made.entry()})

    return update(store, db, change).branch(name)


def keep_names(base: str) -> Iterator[str]:
    """Names for a kept state: ``base``, then ``base-2``, ``base-3``... (the first free)."""
    yield base
    for n in range(2, KEEP_TRIES):
        yield f"{base}-{n}"


class _Done(Exception):
    """The intent was finished already (or is moot): nothing to write."""


def complete(store: ObjectStore, db: str, sealed: Timeline) -> Record | None:
    """Finish the operation named in a sealed timeline's record, if its branch still points
    at it (idempotent: a finished one changes nothing). Returns the record written, if
    any."""
    intent = sealed.sealed
    assert intent is not None
    branch = str(intent["branch"])

    def change(current: Record | None) -> Record:
        if current is None or current.live is None or \
                current.live.id != intent.get("incarnation", current.live.id) or \
                current.live.branches.get(branch, {}).get("timeline") != sealed.id:
            raise _Done
        branches = dict(current.live.branches)
        if intent["op"] == "delete":
            del branches[branch]
            return _with_branches(current, branches)
        moved = intent["to"]
        branches[branch] = dict(moved)
        kept = intent.get("keep")
        if kept:  # the name chosen before sealing, or (taken since) the next free one
            free = next((n for n in keep_names(kept["name"]) if n not in branches), None)
            if free is None:
                raise BranchExists(f"every name for the state of {db}/{branch} before this "
                                   f"operation is taken", layout.database_key(db))
            branches[free] = {"timeline": kept["timeline"], "parent": branch,
                              "fork_txid": kept["fork_txid"],
                              "created_at": moved["created_at"], **generations.fresh()}
        return _with_branches(current, branches)

    try:
        return update(store, db, change)
    except _Done:
        return None


def _current(store: ObjectStore, branch: Branch) -> tuple[Record, Timeline]:
    """The record and the branch's timeline, checking the branch was not moved since it was
    read (LogConflict: a concurrent operation won)."""
    db = branch.database
    record = live_record(store, db)
    if record.branch(branch.name).timeline != branch.timeline:
        raise LogConflict(f"branch {branch.name!r} of {db!r} changed concurrently",
                          layout.database_key(db))
    return record, load_timeline(store, db, branch.timeline)


def retire(store: ObjectStore, branch: Branch, intent: Callable[[int], dict[str, Any]],
           node: str = "") -> Record:
    """Take ``branch`` off its timeline: seal it with ``intent(head)`` (the commit point),
    then change the database record as the intent says. Returns the record after."""
    record, timeline = _current(store, branch)
    incarnation = record.live.id if record.live is not None else ""
    sealed = seal(store, timeline, node,
                  lambda txid: {"branch": branch.name, "incarnation": incarnation,
                                **intent(txid)})
    done = complete(store, branch.database, sealed)
    return done if done is not None else live_record(store, branch.database)


def delete_branch(store: ObjectStore, db: str, name: str, node: str = "") -> None:
    """Remove the name; its timeline's objects go when retention finds no one needs them."""
    retire(store, get_branch(store, db, name), lambda txid: {"op": "delete"}, node)


def _move(store: ObjectStore, branch: Branch, parent_timeline: str, fork_txid: int,
          created_at: float, parent: str | None, keep_as: str | None,
          node: str) -> tuple[Branch, Branch | None]:
    db = branch.database
    load_timeline(store, db, parent_timeline)
    timeline = create_timeline(store, db, parent_timeline, fork_txid, created_at)
    to = {"timeline": timeline.id, "parent": parent if parent is not None else branch.parent,
          "fork_txid": fork_txid, "created_at": created_at}
    kept_id: list[str] = []

    def intent(head: int) -> dict[str, Any]:
        # numbered on from the line left (its cuts counted while the branch is out of
        # service: none is made meanwhile), for embedded replicas to follow
        cuts = generations.count_cuts(store, db, branch.timeline)
        line = generations.moved(branch.entry(), cuts, timeline.id, fork_txid)
        out: dict[str, Any] = {"op": "move", "to": {**to, **line.entry()}}
        if keep_as:
            kept = create_timeline(store, db, branch.timeline, head, created_at)
            kept_id[:] = [kept.id]
            out["keep"] = {"name": keep_as, "timeline": kept.id, "fork_txid": head}
        return out

    record = retire(store, branch, intent, node)
    assert record.live is not None
    kept_branch = next((record.branch(n) for n, e in record.live.branches.items()
                        if kept_id and e["timeline"] == kept_id[0]), None)
    return record.branch(branch.name), kept_branch


def move_branch(store: ObjectStore, branch: Branch, parent_timeline: str, fork_txid: int,
                created_at: float, parent: str | None = None, node: str = "") -> Branch:
    """Point ``branch`` at a new timeline forked from ``parent_timeline`` at ``fork_txid``.
    LogConflict if the branch changed since it was read."""
    return _move(store, branch, parent_timeline, fork_txid, created_at, parent, None, node)[0]


def reset_branch(store: ObjectStore, branch: Branch, parent: Branch, parent_txid: int,
                 created_at: float, node: str = "") -> Branch:
    """Back to ``parent``'s state at ``parent_txid`` (its latest durable one, for previews)."""
    return move_branch(store, branch, parent.timeline, parent_txid, created_at, parent.name,
                       node=node)


def restore_in_place(store: ObjectStore, branch: Branch, txid: int, keep_as: str,
                     created_at: float, node: str = "",
                     timeline: str | None = None) -> tuple[Branch, Branch]:
    """Restore ``branch`` to ``txid`` of its own timeline (or of ``timeline``, a bookmark's);
    its state before stays reachable as ``keep_as`` (or the first free ``keep_as-N``), on a
    timeline of its own forked at the old head.

    Returns (the moved branch, the branch keeping the old state)."""
    moved, kept = _move(store, branch, timeline or branch.timeline, txid, created_at,
                        None, keep_as, node)
    if kept is None:
        raise BranchNotFound(f"the state of {branch.database}/{branch.name} before the "
                             f"restore was not kept: the branch changed concurrently",
                             layout.database_key(branch.database))
    return moved, kept


def sharing(record: Record) -> dict[str, str]:
    """Branches that share a timeline with an older branch (name -> timeline): a state only
    a store written before timelines were fenced can hold (a restore cut short between
    its two records left the kept branch on the restored branch's timeline)."""
    if record.live is None:
        return {}
    owners: dict[str, tuple[float, str]] = {}
    for name, entry in record.live.branches.items():
        key = (float(entry["created_at"]), name)
        owners[entry["timeline"]] = min(owners.get(entry["timeline"], key), key)
    return {name: str(e["timeline"]) for name, e in record.live.branches.items()
            if owners[e["timeline"]][1] != name}


def separate(store: ObjectStore, db: str, now: float) -> list[str]:
    """Give every branch in :func:`sharing` a timeline of its own, forked from the shared
    one at its head (the oldest branch keeps the shared timeline). Returns their names."""
    record = live_record(store, db)
    assert record.live is not None
    shared = sharing(record)
    moved: dict[str, dict[str, Any]] = {}
    for name, tid in shared.items():
        old = load_timeline(store, db, tid)
        head = old.head.txid if old.head is not None else max(
            [old.fork_txid] + [s.last for s in segments(store, db, tid)] +
            [s.txid for s in snapshots(store, db, tid)])
        own = create_timeline(store, db, tid, head, now)
        moved[name] = {**record.live.branches[name], "timeline": own.id, "fork_txid": head,
                       "created_at": now}

    def change(current: Record | None) -> Record:
        if current is None or current.live is None:
            raise DatabaseNotFound(f"database {db!r} does not exist", layout.database_key(db))
        branches = dict(current.live.branches)
        for name, entry in moved.items():
            if branches.get(name, {}).get("timeline") == shared[name]:  # not moved since
                branches[name] = entry
        return _with_branches(current, branches)

    if moved:
        update(store, db, change)
    return sorted(moved)


# -- deleting and undeleting databases ---------------------------------------------------------
def set_live(store: ObjectStore, db: str, **fields: Any) -> Record:
    """Replace fields of the live database's incarnation (``limits``: engine/quota.py;
    ``cors_origins``: shoal/origins.py; ``without_old``: the change feed's tables without
    old rows; ``issuers``: shoal/identity): one conditional write."""

    def change(current: Record | None) -> Record:
        if current is None or current.live is None:
            raise DatabaseNotFound(f"database {db!r} does not exist", layout.database_key(db))
        return replace(current, live=replace(current.live, **fields))

    return update(store, db, change)


def delete_database(store: ObjectStore, db: str, deleted_at: float) -> Record:
    """Soft delete: the live incarnation joins the deleted ones (restorable), the name is
    free for a new database. One write."""

    def change(current: Record | None) -> Record:
        if current is None or current.live is None:
            raise DatabaseNotFound(f"database {db!r} does not exist", layout.database_key(db))
        gone = replace(current.live, deleted_at=deleted_at)
        return Record(db, None, (*current.deleted, gone))

    return update(store, db, change)


def undelete_database(store: ObjectStore, db: str, incarnation: str | None = None) -> Record:
    """Bring back a deleted incarnation (the newest by default); DatabaseExists while the
    name is live, DatabaseNotFound if there is no such incarnation."""

    def change(current: Record | None) -> Record:
        if current is not None and current.live is not None:
            raise DatabaseExists(f"database {db!r} exists: delete it before bringing back "
                                 f"a deleted one", layout.database_key(db))
        found = [d for d in (current.deleted if current else ())
                 if incarnation is None or d.id == incarnation]
        if current is None or not found:
            raise DatabaseNotFound(f"database {db!r} has no deleted incarnation"
                                   + (f" {incarnation!r}" if incarnation else ""),
                                   layout.database_key(db))
        back = found[-1]
        return Record(db, replace(back, deleted_at=None),
                      tuple(d for d in current.deleted if d.id != back.id))

    return update(store, db, change)


def forget_incarnations(store: ObjectStore, db: str,
                        ids: set[str] | None = None) -> list[Incarnation]:
    """Drop deleted incarnations (all, or those in ``ids``) from the record (purge or
    expiry); the ones dropped, as they were when the write succeeded (one undeleted in
    the meantime is not among them): their objects are the caller's to remove next."""
    dropped: list[Incarnation] = []

    def change(current: Record | None) -> Record:
        dropped[:] = [d for d in (current.deleted if current else ())
                      if ids is None or d.id in ids]
        if current is None or not dropped:
            raise _Done
        return replace(current, deleted=tuple(d for d in current.deleted if d not in dropped))

    try:
        update(store, db, change)
    except _Done:
        return []
    return dropped
