"""An HTTP proxy in front of an S3 API that holds, delays, refuses or cuts chosen requests.

For store fault tests: point a real node (or an S3Store) at ``proxy.url`` instead of
moto, then decide the fate of individual store requests from the test thread::

    proxy = StoreProxy(upstream=moto.endpoint).start()      # proxy.url: http://127.0.0.1:PORT
    node = ServerProcess(data, s3_settings(proxy, bucket), env=AWS_ENV).start()
    rule = proxy.hold(method="PUT", path=r"/dbs/.*/timelines/", nth=2)
    held = rule.wait(timeout=10)   # -> [Seen]: the 2nd such PUT is held, nothing sent upstream
    node.kill()                    # ... then let the write land late, or never:
    rule.release()                 # or rule.drop() / rule.respond(503)

Rules, each returned as a `Rule`; all take ``method`` (None: any), ``path`` (a regex,
``re.search`` on the URL path without the query string, e.g. ``/bucket/prefix/key``),
``query`` (a regex searched in the URL-decoded query string: a listing is
``GET /bucket?list-type=2&prefix=prefix/dbs/d/log/...``), ``nth`` (skip the first nth-1
matching requests), ``count`` (act on this many from the nth on; None: all) and ``phase``:

- ``hold(...)``: keep matching requests waiting until ``rule.release()`` (forward them),
  ``rule.drop()`` (close their client connections) or ``rule.respond(status, body)``.
  Settling a hold also removes it: later requests are no longer held (default ``count=1``).
- ``delay(..., seconds)``: forward matching requests after a pause.
- ``refuse(..., status, code)``: answer with an S3-style XML error, not forwarding.
- ``cut(...)``: close the client connection, not forwarding.

``phase="request"`` (the default) acts before any byte of the request goes upstream.
``phase="response"`` forwards the request at once (it lands in the store) and acts on its
response instead: ``hold(phase="response")`` withholds the answer until release/drop,
``refuse``/``cut`` replace or lose it: "the write landed but its answer was lost".

Rules are checked in the order added; a request takes the first rule that applies (a
request skipped by ``nth`` or past ``count`` goes on to later rules). ``rule.remove()``
removes one rule (releasing what it holds), ``proxy.clear()`` all of them.
``proxy.down()`` / ``proxy.up()``: while down, new connections are closed at once and
requests arriving on open connections are cut (requests already past that point go on).
``proxy.seen`` lists every request (`Seen`: method, path, query, headers, body, time,
upstream ``status``, the ``answered`` status the client got, ``client_gone``, ``finished``);
``proxy.requests(method, path)`` filters it. ``stop()`` closes everything; held requests
are dropped.

Client behaviour to keep in mind: boto3 retries on 5xx and on connection errors (a node's
S3Store: up to 4 attempts), so a single dropped or refused request is re-sent and lands;
use ``count=None`` to catch the retries too, or a client that does not retry:
``Config(retries={"total_max_attempts": 1})`` (botocore's ``max_attempts`` counts retries,
so ``{"max_attempts": 1}`` still re-sends once).
A held request whose client gives up (boto3 read timeout: 60 s; it then retries, and the
retry is a new request that a ``count=1`` hold lets through) stays held, and is still
forwarded on release: a late write nobody hears about, as on a real network (its `Seen`
gets the upstream ``status``, ``answered=None`` and ``client_gone=True``).

Requests are read whole (bodies are buffered) before a rule acts; ``Expect: 100-continue``
(boto3 sends it with every PutObject) is answered by the proxy itself and not forwarded, so
a held PUT never waits for it. Request bodies go upstream with a Content-Length (a chunked
one is de-chunked: moto's server answers 500 to chunked bodies); responses pass through
byte for byte. One upstream connection per client connection. The proxy runs an asyncio
loop in a daemon thread; its methods block until the loop has applied them.

The node needs AWS credentials in its environment: ``ServerProcess(..., env=AWS_ENV)``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar
from urllib.parse import unquote, urlsplit

Phase = Literal["request", "response"]
Fate = Literal["go", "cut"] | tuple[int, bytes]  # forward / close / answer (status, body)
T = TypeVar("T")

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
_CODES = {400: "InvalidRequest", 403: "AccessDenied", 404: "NoSuchKey",
          409: "ConditionalRequestConflict", 412: "PreconditionFailed", 500: "InternalError",
          503: "ServiceUnavailable"}
_LIMIT = 1 << 20  # longest request or response head
_REFRAMED = {"expect", "transfer-encoding", "content-length"}  # requests go on with a length


def s3_settings(proxy: StoreProxy, bucket: str, prefix: str = "shoal") -> dict[str, str]:
    """ServerProcess settings for a node whose store is s3://bucket/prefix through `proxy`."""
    return {"store": f"s3://{bucket}/{prefix}", "s3_endpoint": proxy.url}


def s3_error(status: int, code: str | None = None) -> bytes:
    """An S3-style XML error body."""
    code = code or _CODES.get(status, "InternalError")
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>injected by StoreProxy</Message></Error>").encode()


@dataclass(eq=False)
class Seen:
    """One request through the proxy (fields after `time` are filled in as it goes)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    time: float  # time.monotonic() when it arrived
    rule: Rule | None = None
    status: int | None = None  # of the upstream response, if forwarded and answered
    answered: int | None = None  # status the client got; None: cut, gone or not yet
    client_gone: bool = False  # the client hung up (e.g. timed out) before its answer
    finished: float | None = None  # when the proxy was done with it (answered or cut)


class Rule:
    """What to do with matching requests; made by the StoreProxy methods."""

    def __init__(self, proxy: StoreProxy, action: str, method: str | None, path: str | None,
                 query: str | None, nth: int, count: int | None, phase: Phase, *,
                 seconds: float = 0.0, answer: tuple[int, bytes] = (503, b"")) -> None:
        if nth < 1 or (count is not None and count < 1):
            raise ValueError("nth and count start at 1")
        self.proxy, self.action, self.phase = proxy, action, phase
        self.method = method.upper() if method else None
        self.pattern = re.compile(path) if path else None
        self.query = re.compile(query) if query else None
        self.nth, self.count, self.seconds, self.answer = nth, count, seconds, answer
        self._n = 0  # matching requests so far (loop thread only)
        self._fate: Fate | None = None  # a hold's decision (loop thread only)
        self._waiters: list[asyncio.Future[Fate]] = []
        self._acted: list[Seen] = []
        self._cond = threading.Condition()

    def __repr__(self) -> str:
        return (f"Rule({self.action} {self.method or '*'} {self.pattern and self.pattern.pattern}"
                f" nth={self.nth} count={self.count} phase={self.phase})")

    @property
    def acted(self) -> list[Seen]:
        """Requests this rule has acted on (for a hold: that were held)."""
        with self._cond:
            return list(self._acted)

    def wait(self, n: int = 1, timeout: float = 10.0) -> list[Seen]:
        """Block until the rule has acted on (held, delayed, ...) `n` requests; TimeoutError."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._acted) >= n, timeout):
                raise TimeoutError(f"{self}: {len(self._acted)} of {n} requests in {timeout} s")
            return list(self._acted)

    def release(self) -> None:
        """Forward the held requests (or their responses); hold no more."""
        self.proxy._call(lambda: self._settle("go"))

    def drop(self) -> None:
        """Close the held requests' client connections, not forwarding; hold no more."""
        self.proxy._call(lambda: self._settle("cut"))

    def respond(self, status: int, body: bytes | None = None, code: str | None = None) -> None:
        """Answer the held requests with `status` (S3 XML error by default); hold no more."""
        answer = (status, s3_error(status, code) if body is None else body)
        self.proxy._call(lambda: self._settle(answer))

    def remove(self) -> None:
        """Stop applying this rule; requests it holds are released."""
        self.release()

    # -- loop thread --

    def _applies(self, seen: Seen) -> bool:
        if self.method and seen.method != self.method:
            return False
        if self.pattern and not self.pattern.search(seen.path):
            return False
        if self.query and not self.query.search(unquote(seen.query)):
            return False
        self._n += 1
        return self._n >= self.nth and (self.count is None or self._n < self.nth + self.count)

    async def _act(self, seen: Seen) -> Fate:
        with self._cond:
            self._acted.append(seen)
            self._cond.notify_all()
        if self.action == "delay":
            await asyncio.sleep(self.seconds)
            return "go"
        if self.action == "refuse":
            return self.answer
        if self.action == "cut":
            return "cut"
        if self._fate is not None:  # a response-phase hold settled while the request was out
            return self._fate
        waiter: asyncio.Future[Fate] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return await waiter

    def _settle(self, fate: Fate) -> None:
        self._fate = fate
        if self in self.proxy._rules:
            self.proxy._rules.remove(self)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(fate)
        self._waiters.clear()


@dataclass
class _Response:
    status: int
    raw: bytes  # head and body as received
    close: bool  # the upstream connection ends after it


class StoreProxy:
    """See the module docstring. `start()` binds 127.0.0.1 on a free port."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = upstream
        self._up_addr = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.port = 0
        self._rules: list[Rule] = []
        self._seen: list[Seen] = []
        self._down = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StoreProxy:
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="store-proxy", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(asyncio.start_server(
            self._serve, "127.0.0.1", 0, limit=_LIMIT), loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Close the listener and every connection (held requests are dropped)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread:
            self._thread.join(10)
        loop.close()

    def __enter__(self) -> StoreProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- rules --

    def hold(self, method: str | None = None, path: str | None = None, *,
             query: str | None = None, nth: int = 1, count: int | None = 1,
             phase: Phase = "request") -> Rule:
        """Keep matching requests (or responses) until rule.release/drop/respond."""
        return self._add(Rule(self, "hold", method, path, query, nth, count, phase))

    def delay(self, method: str | None = None, path: str | None = None, *,
              seconds: float = 1.0, query: str | None = None, nth: int = 1,
              count: int | None = None, phase: Phase = "request") -> Rule:
        """Forward matching requests (or their responses) after `seconds`."""
        return self._add(Rule(self, "delay", method, path, query, nth, count, phase,
                              seconds=seconds))

    def refuse(self, method: str | None = None, path: str | None = None, *, status: int = 503,
               code: str | None = None, query: str | None = None, nth: int = 1,
               count: int | None = None, phase: Phase = "request") -> Rule:
        """Answer matching requests with an S3 error (phase="response": after forwarding)."""
        return self._add(Rule(self, "refuse", method, path, query, nth, count, phase,
                              answer=(status, s3_error(status, code))))

    def cut(self, method: str | None = None, path: str | None = None, *,
            query: str | None = None, nth: int = 1, count: int | None = None,
            phase: Phase = "request") -> Rule:
        """Close matching requests' connections (phase="response": after forwarding)."""
        return self._add(Rule(self, "cut", method, path, query, nth, count, phase))

    def clear(self) -> None:
        """Remove every rule; held requests are released."""
        def clear() -> None:
            for rule in list(self._rules):
                rule._settle("go")
        self._call(clear)

    def down(self) -> None:
        """Cut new connections and new requests until up()."""
        self._call(lambda: setattr(self, "_down", True))

    def up(self) -> None:
        self._call(lambda: setattr(self, "_down", False))

    @property
    def seen(self) -> list[Seen]:
        """Every request so far, in arrival order."""
        return list(self._seen)

    def requests(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        """The requests seen so far with this method and a path matching this regex."""
        return [s for s in self.seen if (method is None or s.method == method.upper())
                and (path is None or re.search(path, s.path))]

    def _add(self, rule: Rule) -> Rule:
        self._call(lambda: self._rules.append(rule))
        return rule

    def _call(self, fn: Callable[[], T]) -> T:
        """Run fn on the loop thread (directly before start) and wait for it."""
        loop = self._loop
        if loop is None:
            return fn()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:
                done.set_exception(exc)
        loop.call_soon_threadsafe(run)
        return done.result(10)

    # -- loop thread --

    async def _shutdown(self) -> None:
        if self._server:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        seen: Seen | None = None
        try:
            while not self._down:
                head = await _read_head(reader)
                if head is None:
                    return
                start, fields = head
                method, target, _ = start.split(" ", 2)
                headers = {k.lower(): v for k, v in fields}
                path, _, query = target.partition("?")
                seen = Seen(method, path, query, headers, b"", time.monotonic())
                self._seen.append(seen)
                if self._down:
                    return
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await writer.drain()
                _, seen.body = await _read_body(reader, headers)
                fields = [(k, v) for k, v in fields if k.lower() not in _REFRAMED]
                if "content-length" in headers or "transfer-encoding" in headers:
                    fields.append(("Content-Length", str(len(seen.body))))

                rule = next((r for r in self._rules if r._applies(seen)), None)
                seen.rule = rule
                fate: Fate = "go"
                if rule and rule.phase == "request":
                    fate = await rule._act(seen)
                response = None
                if fate == "go":
                    try:
                        if upstream is None:
                            upstream = await asyncio.open_connection(*self._up_addr,
                                                                     limit=_LIMIT)
                            self._writers.add(upstream[1])
                        upstream[1].write(_head(start, fields) + seen.body)
                        await upstream[1].drain()
                        response = await _read_response(upstream[0], method)
                    except (OSError, EOFError, ValueError, asyncio.LimitOverrunError):
                        fate = "cut"
                    else:
                        seen.status = response.status
                        if rule and rule.phase == "response":
                            fate = await rule._act(seen)
                    if response is None or response.close:
                        if upstream:
                            upstream[1].close()
                            self._writers.discard(upstream[1])
                        upstream = None
                if fate == "cut":
                    return
                if reader.at_eof():  # no pipelining: EOF here means the client gave up
                    seen.client_gone = True
                    return
                if fate == "go":
                    assert response is not None
                    seen.answered, answer = response.status, response.raw
                else:
                    seen.answered, answer = fate[0], _answer(*fate, head_only=method == "HEAD")
                seen.finished, seen = time.monotonic(), None  # before the client can hear it
                writer.write(answer)
                await writer.drain()
                if (response and response.close) or headers.get("connection") == "close":
                    return
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # by stop(); ending normally spares 3.11's stream callback a spurious error
        finally:
            if seen is not None:
                seen.finished = time.monotonic()
            for w in (writer, upstream[1] if upstream else None):
                if w:
                    w.close()
                    self._writers.discard(w)
            self._tasks.discard(task)


# -- HTTP/1.1 framing --

async def _read_head(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]] | None:
    """The start line and header fields of the next message; None at a clean end of stream."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    start, *lines = raw[:-4].decode("latin-1").split("\r\n")
    fields = []
    for line in lines:
        name, _, value = line.partition(":")
        fields.append((name.strip(), value.strip()))
    return start, fields


def _head(start: str, fields: list[tuple[str, str]]) -> bytes:
    return "".join([start, "\r\n", *(f"{k}: {v}\r\n" for k, v in fields), "\r\n"]).encode(
        "latin-1")


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str],
                     to_eof: bool = False) -> tuple[bytes, bytes]:
    """(raw bytes as framed, decoded body) of a Content-Length, chunked or to-EOF body."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raw, body = bytearray(), bytearray()
        while True:
            line = await reader.readuntil(b"\r\n")
            raw += line
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while line != b"\r\n":  # trailer fields, then the blank line
                    line = await reader.readuntil(b"\r\n")
                    raw += line
                return bytes(raw), bytes(body)
            data = await reader.readexactly(size + 2)
            raw += data
            body += data[:-2]
    if "content-length" in headers:
        data = await reader.readexactly(int(headers["content-length"]))
        return data, data
    data = await reader.read() if to_eof else b""
    return data, data


async def _read_response(reader: asyncio.StreamReader, method: str) -> _Response:
    while True:
        head = await _read_head(reader)
        if head is None:
            raise EOFError("upstream closed the connection")
        start, fields = head
        status = int(start.split(" ", 2)[1])
        if not 100 <= status < 200:  # interim responses (100 Continue) are not passed on
            break
    headers = {k.lower(): v for k, v in fields}
    close = headers.get("connection", "").lower() == "close" or start.startswith("HTTP/1.0")
    if method == "HEAD" or status in (204, 304):
        raw = b""
    else:
        to_eof = "chunked" not in headers.get("transfer-encoding", "").lower() and (
            "content-length" not in headers)
        raw, _ = await _read_body(reader, headers, to_eof=to_eof)
        close = close or to_eof
    return _Response(status, _head(start, fields) + raw, close)


def _answer(status: int, body: bytes, head_only: bool = False) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Injected"
    fields = [("Content-Type", "application/xml"), ("Content-Length", str(len(body))),
              ("x-amz-request-id", "StoreProxy")]
    return _head(f"HTTP/1.1 {status} {reason}", fields) + (b"" if head_only else body)
