"""Minimal ASGI plumbing: the request, the router, JSON responses, and pacing.

A framework would add a few microseconds to every request on the hot path for
features the API does not use, so routing is a dictionary of path templates by
segment count.

The event loop serves every tenant, so work in proportion to a request's size (the
items of a long list in its body or its answer) is done a piece at a time: ``paced``
lets other work in every ``SLICE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs

import msgspec

from shoal.engine import ReadAt
from shoal.errors import Code, ShoalError
from shoal.tokens import Principal

ANONYMOUS = Principal("anonymous", frozenset(), "read")

T = TypeVar("T")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
BOOKMARK = b"shoal-bookmark"  # a response's position in its branch; a read's lower bound
CONSISTENCY = b"shoal-consistency"  # "strong": served by the database's leader
_encoder = msgspec.json.Encoder()
SLICE = 0.002  # seconds of event loop one request's work takes before it lets others in
SPLIT_BYTES = 64 * 1024  # JSON past which a body's long lists are decoded an item at a time
PACED_ITEMS = 1000  # lists longer than this are decoded, built or encoded paced


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=lambda: list(JSON_HEADERS))
    # a body sent as it comes (an event stream) instead of ``body``: chunked, no length
    stream: AsyncGenerator[bytes, None] | None = None
    relayed: bool = False  # another node's answer (a forwarded request): it audited it


def json_response(status: int, data: Any) -> Response:
    return Response(status, _encoder.encode(data))


def error_response(exc: ShoalError, body: Any = None) -> Response:
    """The envelope of exc (or ``body``, a protocol's own shape), with Retry-After when
    the error says when to come back (quotas)."""
    response = json_response(exc.status, exc.body() if body is None else body)
    retry = exc.extra.get("retry_after")
    if retry is not None:
        response.headers = [*response.headers,
                            (b"retry-after", str(max(1, math.ceil(retry))).encode())]
    return response


def encode(data: Any) -> bytes:
    return _encoder.encode(data)


async def until_gone(items: AsyncGenerator[T, None], request: Request,
                     disconnect: str) -> AsyncIterator[T]:
    """The items of a long-lived answer (an event stream, a WebSocket's messages) as they
    come, until they end or the client goes away (a ``disconnect`` message: then
    ``request.gone``, and what the generator was waiting for is cancelled). The generator
    is closed either way."""

    async def gone() -> None:
        while (await request.receive())["type"] != disconnect:
            pass  # what the client sends is not read
        request.gone = True

    watch = asyncio.ensure_future(gone())
    try:
        while True:
            step = asyncio.ensure_future(anext(items))
            await asyncio.wait((step, watch), return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
                return
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        watch.cancel()
        await items.aclose()


async def paced(items: Iterable[T]) -> AsyncIterator[T]:
    """The items, letting other work run every SLICE of event loop time spent on them (the
    caller's work on each item included)."""
    until = time.monotonic() + SLICE
    for item in items:
        yield item
        if time.monotonic() >= until:
            await asyncio.sleep(0)
            until = time.monotonic() + SLICE


async def decode_each(items: Sequence[msgspec.Raw], decoder: msgspec.json.Decoder[T],
                      where: str) -> list[T]:
    """Each item of a long list decoded in turn, paced: decoding small objects costs about
    20 ms a MB, which one call would spend without a break. A ValidationError names the
    item (``where[i]``), as decoding the whole list would."""
    out: list[T] = []
    i = 0
    try:
        async for item in paced(items):
            out.append(decoder.decode(item))
            i += 1
    except msgspec.ValidationError as exc:
        raise msgspec.ValidationError(located(exc, f"{where}[{i}]")) from None
    return out


def located(exc: msgspec.ValidationError, where: str) -> str:
    """msgspec's message for a value decoded alone, with its path inside the whole body."""
    text = str(exc)
    if " - at `$" in text:
        return text.replace(" - at `$", f" - at `{where}", 1)
    return f"{text} - at `{where}`"


async def encode_each(items: Iterable[Any], each: Callable[[Any], Any]) -> msgspec.Raw:
    """A JSON array of ``each(item)`` encoded an item at a time, paced: for long lists
    (PACED_ITEMS), which one call would encode without a break."""
    parts = [_encoder.encode(each(item)) async for item in paced(items)]
    return msgspec.Raw(b"[" + b",".join(parts) + b"]")


class _Code(msgspec.Struct):
    code: str = ""


class _Envelope(msgspec.Struct):
    error: _Code | None = None


_envelope = msgspec.json.Decoder(_Envelope)


def error_code(body: bytes) -> str:
    """The ``error.code`` of an error body ("" if it has none): every error a client sees
    carries the envelope (Hrana's beside its own fields), replies to retried idempotent
    requests included, so the access log reads the code from what was sent."""
    try:
        found = _envelope.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""
    return found.code if found is not None else ""


def read_at(request: Request, bookmark: str | None = None) -> ReadAt | None:
    """What a request asks of the state it reads: a bookmark (the Shoal-Bookmark header's,
    else ``bookmark``, the body's), and whether this node may read it from a replica
    (``request.follow``; docs/api.md, 'Consistency'). None when it asks nothing (the
    common case: no allocation)."""
    header = request.headers.get(BOOKMARK)
    consistency = request.headers.get(CONSISTENCY)
    if consistency is not None and consistency not in (b"strong", b"default"):
        raise ShoalError(Code.INVALID_REQUEST, "Shoal-Consistency: 'strong' or 'default'")
    if header is not None:
        bookmark = header.decode("latin-1")
    if bookmark is None and not request.follow:
        return None
    return ReadAt(bookmark, request.follow)


class Request:
    __slots__ = ("_query", "body", "body_read", "follow", "gone", "headers", "method", "params",
                 "path", "principal", "receive", "route", "scope")

    def __init__(self, scope: Scope, receive: Receive):
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        self.params: dict[str, str] = {}
        self.route = "unmatched"
        self.body = b""
        self.body_read = False  # the whole body was received: only a disconnect can follow
        self.gone = False  # the client went away before the answer
        self._query: dict[str, list[str]] | None = None
        self.principal: Principal = ANONYMOUS
        self.follow = False  # a cluster's node reads it from its replica (server/app.py)

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return value.decode("latin-1") if value is not None else None

    def query(self, name: str) -> str | None:
        values = self.queries(name)
        return values[0] if values else None

    def queries(self, name: str) -> list[str]:
        """Every value the query string gives ``name``, in order."""
        if self._query is None:
            self._query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        return self._query.get(name, [])

    async def read_body(self, limit: int) -> bytes:
        """The whole body (PAYLOAD_TOO_LARGE past ``limit``); read once, then kept: a request
        forwarding gave up on may be served here after all (server/app.py)."""
        if self.body_read:
            return self.body
        length = self.headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ShoalError(Code.PAYLOAD_TOO_LARGE, f"body exceeds max_request_bytes ({limit})")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":  # gone, or cut at body_timeout
                self.gone = True
                raise ShoalError(Code.REQUEST_TIMEOUT, "the connection closed before the body "
                                                       "was complete")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ShoalError(Code.PAYLOAD_TOO_LARGE,
                                 f"body exceeds max_request_bytes ({limit})")
            chunks.append(chunk)
            if not message.get("more_body"):
                self.body_read = True
                break
        self.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self.body

    def decode(self, kind: type[T]) -> T:
        """The body as a msgspec type: invalid JSON and wrong shapes are distinct 400s."""
        if not self.body:
            raise ShoalError(Code.INVALID_JSON, "request body is empty; send a JSON object")
        try:  # (not `with decoding()`: every request passes here, a generator costs ~2 us)
            return msgspec.json.decode(self.body, type=kind)
        except (ValueError, RecursionError) as exc:
            raise _decode_error(exc) from None


def _decode_error(exc: BaseException) -> BaseException:
    """A decoding error as the native API's 400: invalid JSON and wrong shapes differ."""
    if isinstance(exc, msgspec.ValidationError):
        return ShoalError(Code.INVALID_REQUEST, str(exc))
    if isinstance(exc, msgspec.DecodeError):
        return ShoalError(Code.INVALID_JSON, f"body is not valid JSON: {exc}")
    if isinstance(exc, RecursionError):  # a type holding Any met JSON nested too deeply
        return ShoalError(Code.INVALID_REQUEST, "the body is nested too deeply")
    return exc


@contextlib.contextmanager
def decoding() -> Iterator[None]:
    """Decoding errors as the native API's 400s, around a decode done piece by piece."""
    try:
        yield
    except (ValueError, RecursionError) as exc:
        raise _decode_error(exc) from None


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    """Routes by path template, e.g. ``/v1/databases/{db}/query``."""

    RESOLVED = 4096  # paths whose template and parameters are kept (then forgotten at once)
    RESOLVED_CHARS = 256  # longer paths are not kept (a valid name has at most 63 characters)

    def __init__(self) -> None:
        self._static: dict[str, dict[str, Handler]] = {}
        self._templates: dict[int, list[tuple[str, list[str], dict[str, Handler]]]] = {}
        # path -> (template, params, handlers): routes are added before serving and never
        # change after, so a path resolves the same way for the process's life
        self._resolved: dict[str, tuple[str, dict[str, str], dict[str, Handler]]] = {}
        self._methods: dict[str, list[str]] = {}  # template -> its methods

    def add(self, method: str, template: str, handler: Handler) -> None:
        self._resolved.clear()
        self._methods.setdefault(template, []).append(method)
        if "{" not in template:
            self._static.setdefault(template, {})[method] = handler
            return
        parts = template.strip("/").split("/")
        for entry in self._templates.setdefault(len(parts), []):
            if entry[0] == template:
                entry[2][method] = handler
                return
        self._templates[len(parts)].append((template, parts, {method: handler}))

    def resolve(self, request: Request) -> Handler:
        path = request.path
        methods = self._static.get(path)
        if methods is not None:
            request.route = path
            return self._pick(methods, request)
        resolved = self._resolved.get(path)
        if resolved is not None:
            request.route, params, methods = resolved
            request.params = params.copy()
            return self._pick(methods, request)
        parts = path.strip("/").split("/")
        first = parts[0]
        for template, pattern, handlers in self._templates.get(len(parts), ()):
            head = pattern[0]
            if head != first and head[0] != "{":  # most templates differ at once
                continue
            params = {}
            for want, got in zip(pattern, parts, strict=True):
                if want[0] == "{":
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                if len(path) <= self.RESOLVED_CHARS:  # a long path must not make a big cache
                    if len(self._resolved) >= self.RESOLVED:
                        self._resolved.clear()
                    self._resolved[path] = (template, params.copy(), handlers)
                request.route = template
                request.params = params
                return self._pick(handlers, request)
        raise ShoalError(Code.NOT_FOUND, f"no route for {request.method} {path[:200]}")

    def methods(self, request: Request) -> list[str]:
        """The methods of the route of the request's path (``route`` and ``params`` set as
        ``resolve`` sets them); none for a path of no route."""
        with contextlib.suppress(ShoalError):  # another method (OPTIONS), or no route
            self.resolve(request)
        return self._methods.get(request.route, [])

    @staticmethod
    def _pick(handlers: dict[str, Handler], request: Request) -> Handler:
        handler = handlers.get(request.method)
        if handler is None:
            raise ShoalError(Code.METHOD_NOT_ALLOWED,
                             f"{request.method} is not allowed here; use {', '.join(handlers)}")
        return handler

    def routes(self) -> list[tuple[str, str]]:
        out = [(m, p) for p, hs in self._static.items() for m in hs]
        for entries in self._templates.values():
            out += [(m, t) for t, _, hs in entries for m in hs]
        return out
