"""Webhook deliveries: each webhook's change feed, POSTed in batches to its URL.

One task per webhook (a :class:`Deliverer`), each with its own HTTP connection: an
endpoint that fails or hangs delays only its own webhook. A deliverer reads its branch's
feed from the cursor its state holds, sends up to ``batch_size`` events in one request
signed as Standard Webhooks say (``webhook-id`` = the batch's last cursor, the same on
every attempt; ``webhook-timestamp``; ``webhook-signature`` = ``v1,`` HMAC-SHA256), and
moves the cursor on a 2xx. Any other answer, a timeout or a refused connection is a
failed attempt: the same batch again after an exponential backoff with jitter, until
``max_attempts`` attempts or ``max_age`` seconds, after which the batch becomes a dead
letter (kept whole in the store, replayable) and the deliveries go on. One batch is in
flight per webhook, so its events arrive in commit order (at least once: a batch sent
again after a restart is a duplicate the receiver drops by its events' cursors).

The state is the store's (``engine/webhooks.py``), written at most every
``SAVE_INTERVAL`` seconds while batches succeed and at once when one fails: a restarted
node, or the database's next leader, resumes there. Only the database's leader delivers;
a database that is closed and caught up is not opened (it commits nothing while closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
import standardwebhooks

from shoal import __version__
from shoal.engine import (
    ChangesPage,
    DeadLetter,
    Delivery,
    FeedFilter,
    StateMoved,
    Webhook,
)
from shoal.errors import Code, ShoalError
from shoal.server.changes import event_json, page_cursor
from shoal.server.ports import EngineAPI
from shoal.tokens import Principal

log = logging.getLogger("shoal")

INTERNAL = Principal("webhooks", None, "admin")  # the deliverers' own access
RESCAN = 10.0  # seconds between listings of the store's webhooks (made on other nodes)
LEADER_PAUSE = 2.0  # seconds between checks whether this node now leads the database
IDLE_PAUSE = 1.0  # seconds between checks whether a caught-up, closed database opened
ERROR_PAUSE = 5.0  # seconds after a failure of Shoal's own (the store, the feed)
SAVE_INTERVAL = 1.0  # seconds of successful deliveries at most unsaved
WAIT = 25.0  # seconds a feed page waits for the next change
USER_AGENT = f"shoal-webhooks/{__version__}"


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: doubling from
    ``base`` up to ``cap``, then a random half to all of it (jitter: the retries of many
    webhooks after one outage do not arrive together)."""
    full: float = min(cap, base * 2.0 ** min(attempts - 1, 60))
    return full * random.uniform(0.5, 1.0)


def payload(hook: Webhook, events: list[dict[str, Any]]) -> bytes:
    """A batch's body: Standard Webhooks' ``{"type", "timestamp", "data"}``, the same
    bytes on every attempt (its time is its last change's commit time)."""
    return msgspec.json.encode({
        "type": "changes", "timestamp": events[-1]["at"],
        "data": {"webhook": hook.id, "database": hook.database, "branch": hook.branch,
                 "events": events}})


def letter_id(now: float) -> str:
    """Sorts by the time it was made: milliseconds, then randomness against a tie."""
    return f"{int(now * 1000):015d}-{secrets.token_hex(3)}"


class Dispatcher:
    """Every webhook's deliverer on this node; each delivers while this node leads its
    database. ``start`` lists the store's webhooks and lists them again every RESCAN
    seconds (those made through another node); the routes tell it of their own at once."""

    def __init__(self, engine: EngineAPI):
        self.engine = engine
        self.deliverers: dict[str, Deliverer] = {}
        self.dormant: set[tuple[str, str]] = set()  # listed, but not deliverable: not read again
        self._scanner: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._scanner = asyncio.get_running_loop().create_task(self._scan())

    async def _scan(self) -> None:
        while True:
            try:
                await self.rescan()
            except ShoalError as exc:
                if exc.code is Code.HISTORY_DISABLED:
                    return  # a node without a store has no feed to deliver
                log.warning("listing webhooks failed: %s", exc)
            except Exception:  # the scanner must survive anything
                log.exception("listing webhooks failed")
            await asyncio.sleep(RESCAN)

    async def rescan(self) -> None:
        """Start a deliverer for each webhook the store lists that has none here, and stop
        those of webhooks it no longer lists. Only new ones are read."""
        found = await self.engine.webhook_keys(INTERNAL)
        for hook_id in set(self.deliverers) - {hook_id for _, hook_id in found}:
            self.remove(hook_id)
        for db, hook_id in found:
            if hook_id in self.deliverers or (db, hook_id) in self.dormant:
                continue
            try:
                hook, _ = await self.engine.webhook(INTERNAL, db, hook_id)
            except ShoalError as exc:
                if exc.code is Code.WEBHOOK_NOT_FOUND:  # of an earlier life of the name
                    self.dormant.add((db, hook_id))
                elif exc.code is not Code.DATABASE_NOT_FOUND:  # (not known here yet: next
                    raise  # time; or deleted: its webhooks are being deleted too)
                continue
            self.add(hook)
        self.dormant &= found

    def add(self, hook: Webhook) -> None:
        if hook.id not in self.deliverers:
            self.deliverers[hook.id] = Deliverer(self.engine, hook)
            self.deliverers[hook.id].start()

    def remove(self, hook_id: str) -> None:
        deliverer = self.deliverers.pop(hook_id, None)
        if deliverer is not None:
            deliverer.cancel()

    def replay(self, hook_id: str) -> None:
        """The webhook has dead letters marked for replay: its deliverer sends them next."""
        deliverer = self.deliverers.get(hook_id)
        if deliverer is not None:
            deliverer.replays_due = True
            deliverer.wake.set()

    async def stop(self) -> None:
        if self._scanner is not None:
            self._scanner.cancel()
        deliverers = list(self.deliverers.values())
        self.deliverers.clear()
        for deliverer in deliverers:
            deliverer.cancel()
        await asyncio.gather(*(d.wait() for d in deliverers), return_exceptions=True)


class Deliverer:
    """One webhook's deliveries (see the module's docstring)."""

    def __init__(self, engine: EngineAPI, hook: Webhook):
        self.engine = engine
        self.hook = hook
        self.settings = engine.settings
        self.signer = standardwebhooks.Webhook(hook.secret)
        self.wanted = FeedFilter(None if hook.tables is None else frozenset(hook.tables),
                                 None if hook.ops is None else frozenset(hook.ops))
        self.state: Delivery | None = None  # as last read or written (None: read it)
        self.saved_at = 0.0
        self.dirty = False  # progress not yet in the store
        self.idle = False  # the last page was empty: caught up
        self.replays_due = True  # dead letters may be marked for replay (looked at first)
        self.wake = asyncio.Event()  # set: stop waiting for the feed (a replay is due)
        self.task: asyncio.Task[None] | None = None
        self.session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def wait(self) -> None:
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout)
        connector = aiohttp.TCPConnector(limit=1)  # one batch in flight: its own connection
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            self.session = session
            try:
                while True:
                    try:
                        await self.step()
                    except StateMoved:  # another node wrote it: read it again
                        self.state = None
                    except ShoalError as exc:
                        if exc.code not in (Code.STORAGE_UNAVAILABLE, Code.OVERLOADED):
                            log.warning("webhook %s of %s: %s", self.hook.id,
                                        self.hook.database, exc)
                        self.state = None
                        await asyncio.sleep(ERROR_PAUSE)
                    except Exception:  # a deliverer must survive anything
                        log.exception("webhook %s of %s failed", self.hook.id,
                                      self.hook.database)
                        self.state = None
                        await asyncio.sleep(ERROR_PAUSE)
            finally:
                if self.dirty:  # what was delivered since the last save (best effort)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(self._save(True)), 5.0)

    async def step(self) -> None:
        """One turn: a replay, a pending batch, or the next page of the feed."""
        hook = self.hook
        if self.engine.leader_url(hook.database) is not None:  # another node delivers
            self.state = None
            await asyncio.sleep(LEADER_PAUSE)
            return
        if self.state is None:
            _, self.state = await self.engine.webhook(INTERNAL, hook.database, hook.id)
            self.idle = False
        if self.replays_due:
            await self.replay()
            return
        if self.state.until is not None:  # a batch was being retried: the same one again
            events = await self._batch(self.state.cursor, self.state.until)
            if events:
                await self.deliver(events)
            return
        is_open = self.engine.is_open(hook.database)
        if self.idle and not is_open:  # caught up, and closed: nothing can come
            await self._save(True)
            await asyncio.sleep(IDLE_PAUSE)
            return
        try:  # waiting only once caught up, with the progress saved
            wait = WAIT if self.idle and is_open and not self.dirty else 0.0
            page = await self._page(self.state.cursor, wait)
        except ShoalError as exc:
            if exc.code is not Code.CURSOR_EXPIRED:
                raise
            await self._expired(exc)
            return
        if page is None:  # woken for a replay
            return
        if not page.events:
            self.idle = True
            cursor = page_cursor(page)
            if cursor != self.state.cursor:  # past changes the filter leaves out
                self.state = replace(self.state, cursor=cursor)
                self.dirty = True
            await self._save(True)
            return
        self.idle = False
        await self.deliver([event_json(page, e) for e in page.events])

    async def _page(self, since: str, wait: float) -> ChangesPage | None:
        """The next page of the webhook's feed; None if ``wake`` was set while it waited
        (a replay was asked for)."""
        hook = self.hook
        asked = self.engine.changes(INTERNAL, hook.database, hook.branch, since,
                                    hook.batch_size, wait, self.wanted, touch=False)
        if not wait:
            return await asked
        self.wake.clear()
        page = asyncio.ensure_future(asked)
        woken = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait((page, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            answered = page.done()
            if not answered:
                page.cancel()  # carried out at the task's next step: not cancelled() yet
        return page.result() if answered else None

    async def _batch(self, since: str, until: str) -> list[dict[str, Any]]:
        """The events after ``since`` up to the one whose cursor is ``until``."""
        hook = self.hook
        out: list[dict[str, Any]] = []
        cursor = since
        while True:
            try:
                page = await self.engine.changes(INTERNAL, hook.database, hook.branch, cursor,
                                                 hook.batch_size, 0.0, self.wanted,
                                                 touch=False)
            except ShoalError as exc:
                if exc.code is not Code.CURSOR_EXPIRED:
                    raise
                await self._expired(exc)
                return []
            for event in page.events:
                out.append(event_json(page, event))
                if out[-1]["cursor"] == until:
                    return out
            if not page.events:  # the feed no longer reaches it (not expected): go on
                assert self.state is not None
                self.state = replace(self.state, until=None)
                return out
            cursor = page_cursor(page)

    async def _expired(self, exc: ShoalError) -> None:
        """The feed no longer holds the changes after the cursor (past feed_retention, or
        the branch was restored in place): a dead letter without events says which were
        lost, and the deliveries go on from the earliest cursor the feed has."""
        assert self.state is not None
        earliest = str(exc.extra.get("earliest") or self.state.cursor)
        now = time.time()
        await self._bury(DeadLetter(letter_id(now), self.state.cursor, earliest, [], 0, None,
                                    now, exc.message))

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        """Send a batch until it is delivered or given up on (then a dead letter)."""
        assert self.state is not None
        hook, until = self.hook, events[-1]["cursor"]
        body = payload(hook, events)
        while True:
            wait = (self.state.next_attempt or 0.0) - time.time()
            if wait > 0:  # a retry's backoff, maybe begun before a restart
                await asyncio.sleep(wait)
            error = await self.post(until, body)
            now = time.time()
            if error is None:
                self.state = replace(
                    self.state, cursor=until, until=None, attempts=0, first_attempt=None,
                    next_attempt=None, last_error=None, last_attempt=now, last_success=now,
                    delivered=self.state.delivered + len(events))
                self.dirty = True
                await self._save(False)
                return
            attempts = self.state.attempts + 1
            first = self.state.first_attempt or now
            if self._given_up(attempts, first, now):
                self.state = replace(self.state, last_attempt=now)
                await self._bury(DeadLetter(letter_id(now), self.state.cursor, until, events,
                                            attempts, first, now, error))
                return
            self.state = replace(self.state, until=until, attempts=attempts,
                                 first_attempt=first, next_attempt=now + self._backoff(attempts),
                                 last_error=error, last_attempt=now)
            self.dirty = True
            await self._save(True)

    async def replay(self) -> None:
        """Send the dead letters marked for replay, oldest first, each until delivered
        (then deleted) or given up on again (then unmarked, its attempts counted)."""
        hook = self.hook
        self.replays_due = False
        after = ""
        while page := await self.engine.dead_letters(INTERNAL, hook.database, hook.id, after):
            after = page[-1].id
            for letter in page:
                if letter.replay and letter.events:
                    await self._replay(letter)

    async def _replay(self, letter: DeadLetter) -> None:
        """One letter again, until delivered (then deleted) or given up on again."""
        hook = self.hook
        body = payload(hook, letter.events)
        first, attempts = time.time(), 0
        while True:
            error = await self.post(letter.until, body)
            attempts += 1
            now = time.time()
            if error is None:
                with contextlib.suppress(ShoalError):  # deleted meanwhile: as good
                    await self.engine.delete_dead_letter(INTERNAL, hook.database, hook.id,
                                                         letter.id)
                return
            if self._given_up(attempts, first, now):
                await self.engine.put_dead_letter(INTERNAL, hook, replace(
                    letter, replay=False, attempts=letter.attempts + attempts, dead_at=now,
                    error=error))
                return
            await asyncio.sleep(self._backoff(attempts))

    def _given_up(self, attempts: int, first: float, now: float) -> bool:
        """Whether a batch failed ``attempts`` times since ``first`` is a dead letter now."""
        return attempts >= self.hook.max_attempts or now - first >= self.hook.max_age

    def _backoff(self, attempts: int) -> float:
        return backoff(attempts, self.settings.webhook_retry_base,
                       self.settings.webhook_retry_max)

    async def _bury(self, letter: DeadLetter) -> None:
        """Keep a batch as a dead letter and go on past it."""
        assert self.state is not None
        await self.engine.put_dead_letter(INTERNAL, self.hook, letter)
        self.state = replace(self.state, cursor=letter.until, until=None, attempts=0,
                             first_attempt=None, next_attempt=None, last_error=letter.error,
                             dead_letters=self.state.dead_letters + 1)
        self.dirty = True
        await self._save(True)

    async def post(self, msg_id: str, body: bytes) -> str | None:
        """One attempt: None if the endpoint took it (a 2xx), else what went wrong (no
        credential of the URL in it)."""
        assert self.session is not None
        stamp = int(time.time())
        headers = {
            "content-type": "application/json", "user-agent": USER_AGENT,
            "webhook-id": msg_id, "webhook-timestamp": str(stamp),
            "webhook-signature": self.signer.sign(msg_id, datetime.fromtimestamp(stamp, UTC),
                                                  body)}
        try:
            async with self.session.post(self.hook.url, data=body, headers=headers,
                                         allow_redirects=False) as answer:
                await answer.content.read(4096)  # not kept: the status is the answer
                if 200 <= answer.status < 300:
                    return None
                return f"HTTP {answer.status}"
        except TimeoutError:
            return f"no answer within {self.settings.webhook_timeout:g} s (webhook_timeout)"
        except aiohttp.ClientError as exc:
            said = f"{type(exc).__name__}: {exc}"
            password = urlsplit(self.hook.url).password
            return (said.replace(password, "***") if password else said)[:300]

    async def _save(self, now: bool) -> None:
        """Write the state if it changed, at once or (``now`` false) once SAVE_INTERVAL
        passed since the last write."""
        if self.state is None or not self.dirty:
            return
        if not now and time.monotonic() - self.saved_at < SAVE_INTERVAL:
            return
        self.state = await self.engine.save_delivery(INTERNAL, self.hook, self.state)
        self.saved_at, self.dirty = time.monotonic(), False


