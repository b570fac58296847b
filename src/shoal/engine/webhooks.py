"""Webhooks' records in the object store: what each webhook is, how far its deliveries
got, and the batches that were given up on (its dead letters).

::

    webhooks/defs/{db}/{id}.json           the webhook: URL, filter, batch size, retry
                                           policy, its signing secret, the database's
                                           incarnation it was made for
    webhooks/state/{db}/{id}.json          its delivery: the cursor after the last batch
                                           delivered, the batch being retried (CAS)
    webhooks/dead/{db}/{id}/{letter}.json  a batch given up on: its events, its attempts;
                                           ``replay`` marks it to be delivered again

The store holds them, not a node: a restarted node, or the next leader of the database,
resumes the deliveries where the last one stopped. The state is written with If-Match
(compare-and-swap), so of two nodes that both believe they deliver a webhook, the one
with the stale state learns it at its next write (``StateMoved``) and reads it again.
Blocking calls: the engine runs them on its I/O threads.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from shoal.engine.registry import mapped
from shoal.storage.base import NotFound, ObjectStore, PreconditionFailed

DEFS = "webhooks/defs/"
STATES = "webhooks/state/"
DEAD = "webhooks/dead/"
LETTERS_PAGE = 1000  # dead letters read at most at once (each holds up to a batch)


@dataclass(frozen=True)
class WebhookSpec:
    """A webhook as asked for (the server checks each field's range)."""

    url: str
    branch: str = "main"
    tables: tuple[str, ...] | None = None
    ops: tuple[str, ...] | None = None
    batch_size: int = 100
    max_attempts: int = 16
    max_age: float = 86400.0
    since: str | None = None  # where its deliveries start: None (now), a cursor, a time


@dataclass(frozen=True)
class Webhook:
    """A webhook as it was made (never changed: delete it and make another)."""

    id: str
    database: str
    branch: str
    url: str
    tables: tuple[str, ...] | None  # None: every table
    ops: tuple[str, ...] | None  # None: insert, update and delete
    batch_size: int
    max_attempts: int
    max_age: float  # seconds from a batch's first attempt to its last
    created_at: float
    incarnation: str  # the database's life it was made for (a name may be made again)
    secret: str = field(repr=False)  # whsec_...: shown once, when it is made

    def public(self) -> dict[str, Any]:
        """The webhook as the API shows it after its creation: without its secret."""
        out = asdict(self)
        del out["secret"], out["incarnation"]
        out["tables"] = None if self.tables is None else list(self.tables)
        out["ops"] = None if self.ops is None else list(self.ops)
        return out


@dataclass(frozen=True)
class Delivery:
    """How far a webhook's deliveries got. ``cursor`` is after the last event delivered or
    dead-lettered; ``until``, when set, is the last event of the batch being retried (the
    batch is the events after ``cursor`` up to it: the same batch, the same webhook-id,
    after a restart)."""

    cursor: str
    until: str | None = None
    attempts: int = 0
    first_attempt: float | None = None
    next_attempt: float | None = None
    last_error: str | None = None
    last_attempt: float | None = None
    last_success: float | None = None
    delivered: int = 0  # events delivered, ever
    dead_letters: int = 0  # batches dead-lettered, ever
    etag: str = field(default="", compare=False)  # the stored object's (not stored)

    def stored(self) -> bytes:
        out = asdict(self)
        del out["etag"]
        return json.dumps(out).encode()


@dataclass(frozen=True)
class DeadLetter:
    """A batch given up on after ``max_attempts`` or ``max_age`` (or events the feed no
    longer had: ``events`` empty, ``error`` says so). ``since`` is the cursor before its
    first event; its events are kept whole, so a replay needs nothing of the history."""

    id: str
    since: str
    until: str
    events: list[dict[str, Any]]
    attempts: int
    first_attempt: float | None
    dead_at: float
    error: str
    replay: bool = False  # asked to be delivered again


class StateMoved(Exception):
    """The delivery state changed in the store since it was read (another node delivers
    this webhook, or the webhook was deleted)."""


def _key(prefix: str, db: str, hook_id: str) -> str:
    return f"{prefix}{db}/{hook_id}.json"


def new_id() -> str:
    return "wh_" + secrets.token_hex(8)


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and the base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _webhook(raw: dict[str, Any]) -> Webhook:
    names = {f.name for f in fields(Webhook)}
    raw = {k: v for k, v in raw.items() if k in names}
    for key in ("tables", "ops"):
        if raw.get(key) is not None:
            raw[key] = tuple(raw[key])
    return Webhook(**raw)


class WebhookRecords:
    """The records above, on one store."""

    def __init__(self, store: ObjectStore):
        self.store = store

    # -- webhooks ------------------------------------------------------------------------------
    @mapped
    def create(self, hook: Webhook, delivery: Delivery) -> None:
        """The state first: a webhook is never listed without one."""
        self.store.put(_key(STATES, hook.database, hook.id), delivery.stored(),
                       if_none_match="*")
        data = json.dumps(asdict(hook)).encode()
        self.store.put(_key(DEFS, hook.database, hook.id), data, if_none_match="*")

    @mapped
    def get(self, db: str, hook_id: str) -> Webhook | None:
        try:
            raw = json.loads(self.store.get(_key(DEFS, db, hook_id)).data)
        except (NotFound, ValueError):
            return None
        return _webhook(raw)

    @mapped
    def all(self, db: str | None = None) -> list[Webhook]:
        """Every webhook (of ``db``, or of every database), in key order."""
        out = []
        for info in self.store.list(DEFS + (f"{db}/" if db else "")):
            with contextlib.suppress(NotFound, ValueError, TypeError):  # deleted since
                out.append(_webhook(json.loads(self.store.get(info.key).data)))  # listed;
                # or not a record of ours
        return out

    @mapped
    def keys(self, db: str | None = None) -> set[tuple[str, str]]:
        """(database, id) of every webhook (of ``db``), from one listing."""
        out = set()
        for info in self.store.list(DEFS + (f"{db}/" if db else "")):
            db, _, name = info.key[len(DEFS):].partition("/")
            if name.endswith(".json"):
                out.add((db, name[:-len(".json")]))
        return out

    @mapped
    def delete(self, db: str, hook_id: str) -> None:
        """The definition first (it stops being delivered), then its state and letters."""
        self.store.delete(_key(DEFS, db, hook_id))
        self.store.delete(_key(STATES, db, hook_id))
        for info in self.store.list(f"{DEAD}{db}/{hook_id}/"):
            self.store.delete(info.key)

    # -- delivery state ------------------------------------------------------------------------
    @mapped
    def state(self, db: str, hook_id: str) -> Delivery | None:
        try:
            blob = self.store.get(_key(STATES, db, hook_id))
        except NotFound:
            return None
        raw = json.loads(blob.data)
        names = {f.name for f in fields(Delivery)}
        return Delivery(**{k: v for k, v in raw.items() if k in names}, etag=blob.etag)

    @mapped
    def save(self, db: str, hook_id: str, delivery: Delivery) -> Delivery:
        """Write the state if it is still the one read (its etag); StateMoved if not."""
        try:
            etag = self.store.put(_key(STATES, db, hook_id), delivery.stored(),
                                  if_match=delivery.etag)
        except PreconditionFailed:  # (a missing object fails If-Match too)
            raise StateMoved(hook_id) from None
        return replace(delivery, etag=etag)

    # -- dead letters --------------------------------------------------------------------------
    @mapped
    def add_letter(self, db: str, hook_id: str, letter: DeadLetter) -> None:
        self.store.put(f"{DEAD}{db}/{hook_id}/{letter.id}.json",
                       json.dumps(asdict(letter)).encode())

    @mapped
    def letters(self, db: str, hook_id: str, after: str = "",
                limit: int = LETTERS_PAGE) -> list[DeadLetter]:
        """Up to ``limit`` of them after the one named ``after``, oldest first (a letter's
        id begins with the time it was made)."""
        out: list[DeadLetter] = []
        prefix = f"{DEAD}{db}/{hook_id}/"
        start = f"{prefix}{after}.json" if after else ""
        for info in self.store.list(prefix, start_after=start):
            if len(out) >= limit:
                break
            with contextlib.suppress(NotFound, ValueError, TypeError):  # (as in all())
                out.append(DeadLetter(**json.loads(self.store.get(info.key).data)))
        return out

    @mapped
    def letter(self, db: str, hook_id: str, letter_id: str) -> DeadLetter | None:
        try:
            raw = json.loads(self.store.get(f"{DEAD}{db}/{hook_id}/{letter_id}.json").data)
        except (NotFound, ValueError):
            return None
        return DeadLetter(**raw)

    @mapped
    def delete_letter(self, db: str, hook_id: str, letter_id: str) -> bool:
        key = f"{DEAD}{db}/{hook_id}/{letter_id}.json"
        try:
            self.store.head(key)
        except NotFound:
            return False
        self.store.delete(key)
        return True
