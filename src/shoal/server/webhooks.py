"""Webhooks' routes (``/v1/databases/{db}/webhooks``): make, list, show and delete a
database's webhooks, and list, replay and delete their dead letters. Each needs admin
access to the database (a webhook sees every row change of its branch). The deliveries
themselves are ``server/delivery.py``'s; on a cluster's node these requests go to the
database's leader like a write, so its dispatcher hears of a change at once.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import msgspec

from shoal import names
from shoal.engine import LETTERS_PAGE, DeadLetter, Delivery, Webhook, WebhookSpec
from shoal.errors import Code, ShoalError
from shoal.server.api import iso
from shoal.server.changes import MAX_LIMIT, OPS
from shoal.server.delivery import Dispatcher
from shoal.server.http import Request, Response, Router, encode, json_response
from shoal.server.ports import EngineAPI

MAX_AGE = 30 * 86400.0  # the longest max_age: a batch is retried for at most 30 days
MAX_ATTEMPTS = 100
MAX_URL = 2048


class CreateWebhookRequest(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    branch: str = "main"
    tables: list[str] | None = None
    ops: list[str] | None = None
    batch_size: int = 100
    max_attempts: int = 16
    max_age: float = 86400.0
    since: str | None = None


class WebhooksAPI:
    def __init__(self, engine: EngineAPI, dispatcher: Dispatcher):
        self.engine = engine
        self.dispatcher = dispatcher

    def register(self, router: Router) -> None:
        base = "/v1/databases/{db}/webhooks"
        hook = base + "/{id}"
        for method, path, handler in (
            ("POST", base, self.create),
            ("GET", base, self.list),
            ("GET", hook, self.get),
            ("DELETE", hook, self.delete),
            ("GET", hook + "/dead-letters", self.dead_letters),
            ("POST", hook + "/dead-letters/replay", self.replay),
            ("POST", hook + "/dead-letters/{letter}/replay", self.replay),
            ("DELETE", hook + "/dead-letters/{letter}", self.delete_letter),
        ):
            router.add(method, path, handler)

    async def create(self, request: Request) -> Response:
        """Make a webhook; the answer holds its secret, shown this once."""
        name = names.check(request.params["db"])
        await request.read_body(self.engine.settings.max_request_bytes)
        spec = webhook_spec(request.decode(CreateWebhookRequest))
        hook = await self.engine.create_webhook(request.principal, name, spec)
        self.dispatcher.add(hook)
        return json_response(201, webhook_json(hook, None) | {"secret": hook.secret})

    async def list(self, request: Request) -> Response:
        name = names.check(request.params["db"])
        found = await self.engine.webhooks(request.principal, name)
        return json_response(200, {"webhooks": [webhook_json(h, d) for h, d in found]})

    async def get(self, request: Request) -> Response:
        name = names.check(request.params["db"])
        hook, delivery = await self.engine.webhook(request.principal, name,
                                                   request.params["id"])
        return json_response(200, webhook_json(hook, delivery))

    async def delete(self, request: Request) -> Response:
        name = names.check(request.params["db"])
        await self.engine.delete_webhook(request.principal, name, request.params["id"])
        self.dispatcher.remove(request.params["id"])
        return Response(204, b"", [])

    async def dead_letters(self, request: Request) -> Response:
        name = names.check(request.params["db"])
        limit = request.query("limit")
        try:
            size = LETTERS_PAGE if limit is None else int(limit)
        except ValueError:
            size = 0
        if not 1 <= size <= LETTERS_PAGE:
            raise ShoalError(Code.INVALID_REQUEST, f"limit: from 1 to {LETTERS_PAGE}")
        letters = await self.engine.dead_letters(request.principal, name, request.params["id"],
                                                 request.query("after") or "", size)
        return json_response(200, {"dead_letters": [letter_json(x) for x in letters],
                                   "next": letters[-1].id if len(letters) == size else None})

    async def replay(self, request: Request) -> Response:
        """Deliver dead letters again (all, or the one named), before the next batch."""
        name = names.check(request.params["db"])
        hook_id = request.params["id"]
        marked = await self.engine.replay_dead_letters(request.principal, name, hook_id,
                                                       request.params.get("letter"))
        self.dispatcher.replay(hook_id)
        return Response(202, encode({"replaying": marked}))

    async def delete_letter(self, request: Request) -> Response:
        name = names.check(request.params["db"])
        await self.engine.delete_dead_letter(request.principal, name, request.params["id"],
                                             request.params["letter"])
        return Response(204, b"", [])


def webhook_spec(body: CreateWebhookRequest) -> WebhookSpec:
    """The request, checked: an http(s) URL with a host, known ops, ranges."""
    url = body.url
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (a malformed port raises here)
    except ValueError:
        host = None
    if len(url) > MAX_URL or parts.scheme not in ("http", "https") or not host:
        raise ShoalError(Code.INVALID_REQUEST, "url: an http:// or https:// URL with a host, "
                         f"at most {MAX_URL} characters")
    if body.ops is not None and (not body.ops or not set(body.ops) <= set(OPS)):
        raise ShoalError(Code.INVALID_REQUEST, f"ops: any of {', '.join(OPS)}")
    if body.tables is not None and (not body.tables or not all(body.tables)):
        raise ShoalError(Code.INVALID_REQUEST, "tables: names of tables (or leave it out: "
                                               "every table)")
    for what, value, low, high in (("batch_size", body.batch_size, 1, MAX_LIMIT),
                                   ("max_attempts", body.max_attempts, 1, MAX_ATTEMPTS),
                                   ("max_age", body.max_age, 1, MAX_AGE)):
        if not low <= value <= high:
            raise ShoalError(Code.INVALID_REQUEST, f"{what}: from {low:g} to {high:g}")
    return WebhookSpec(
        url, names.check(body.branch, "branch"),
        None if body.tables is None else tuple(sorted(set(body.tables))),
        None if body.ops is None else tuple(sorted(set(body.ops))),
        body.batch_size, body.max_attempts, float(body.max_age),
        None if body.since in (None, "", "now") else body.since)


def webhook_json(hook: Webhook, delivery: Delivery | None) -> dict[str, Any]:
    out = hook.public() | {"created_at": iso(hook.created_at)}
    if delivery is not None:
        out["delivery"] = {
            "cursor": delivery.cursor, "retrying": delivery.until is not None,
            "attempts": delivery.attempts, "next_attempt_at": _time(delivery.next_attempt),
            "last_error": delivery.last_error,
            "last_attempt_at": _time(delivery.last_attempt),
            "last_success_at": _time(delivery.last_success),
            "delivered": delivery.delivered, "dead_letters": delivery.dead_letters}
    return out


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {"id": letter.id, "since": letter.since, "until": letter.until,
            "events": letter.events, "attempts": letter.attempts,
            "first_attempt_at": _time(letter.first_attempt), "dead_at": iso(letter.dead_at),
            "error": letter.error, "replaying": letter.replay}


def _time(ts: float | None) -> str | None:
    return None if ts is None else iso(ts)
