"""libSQL's HTTP sync protocol: embedded replicas of a branch (``engine/sync.py``).

A libSQL client given ``sync_url`` asks ``GET {sync_url}/info``; a 2xx makes it use this
protocol (``GET /export/{generation}``, then ``GET /sync/{generation}/{start}/{end}``), and
its writes go to the same URL over Hrana (``server/hrana.py``), after which it pulls them
back. The routes live at the root and under ``/db/{db}/`` and ``/db/{db}/branches/{branch}/``
like Hrana's; at the root the database is the ``x-namespace`` header's, the host's first
label's (``orders.db.example.com``, when it names a database), or the token's only one.

A pull past the frames there are is answered ``400 {"generation": N}``: the client reads it
as the generation's end, and moves on to ``N`` if it is past its own (the protocol's own
shape). Offline writes (frames pushed with ``POST /sync/...``) are refused with
SYNC_PUSH_UNSUPPORTED, which the client shows with the message.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import weakref
from collections.abc import AsyncGenerator, Callable

from shoal import names
from shoal.engine import SYNC_PAGE as PAGE
from shoal.errors import Code, ShoalError
from shoal.server.http import Request, Response, Router, json_response
from shoal.server.ports import EngineAPI

OCTETS = [(b"content-type", b"application/octet-stream")]
CHUNK = 1 << 20  # bytes of an export read and sent at a time
MAX_NUMBER = 2**32 - 1  # generations and frames are u32 for the clients
PREFIXES = ("", "/db/{db}", "/db/{db}/branches/{branch}")


def named_database(request: Request, sole: Callable[[], str | None],
                   known: Callable[[str], bool]) -> str | None:
    """The database a libSQL client's request names (Hrana's and the sync protocol's): the
    path's, else the x-namespace header's, else the token's only one (``sole``: asked only
    then), else the host's first label, if it names a database this node knows. The host
    comes last so that a database named like a node's own host name changes nothing for
    requests that name theirs."""
    return request.params.get("db") or request.header(b"x-namespace") or sole() or \
        host_database(request, known)


def host_database(request: Request, known: Callable[[str], bool]) -> str | None:
    """The database the host's first label names (``orders.db.example.com``), if it is a
    name this node knows: an IP address, a one-label host or an unknown name name none."""
    raw = request.header(b"host") or ""
    if raw.startswith("["):  # an IPv6 address
        return None
    host = raw.rsplit(":", 1)[0]
    label, dot, _ = host.partition(".")
    if not dot or not names.is_valid(label):
        return None
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    return label if known(label) else None


def _number(raw: str, what: str, low: int = 0) -> int:
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10) or \
            not low <= int(raw) <= MAX_NUMBER:
        raise ShoalError(Code.INVALID_REQUEST, f"{what} must be a whole number from {low} to "
                         f"{MAX_NUMBER}")
    return int(raw)


class SyncAPI:
    """The routes of embedded replicas."""

    def __init__(self, engine: EngineAPI):
        self.engine = engine

    def register(self, router: Router) -> set[str]:
        """Add the routes; return their templates (a cluster's node forwards them)."""
        routes: set[str] = set()
        for prefix in PREFIXES:
            for method, path, handler in (
                    ("GET", "/info", self.info),
                    ("GET", "/export/{generation}", self.export),
                    ("GET", "/sync/{generation}/{start}/{end}", self.pull),
                    ("POST", "/sync/{generation}/{start}/{end}", self.push),
                    ("POST", "/sync/{generation}/{start}/{end}/{baton}", self.push)):
                router.add(method, prefix + path, handler)
                routes.add(prefix + path)
        return routes

    def database(self, request: Request) -> str:
        """The database a request names (``named_database``)."""
        db = named_database(request, lambda: request.principal.sole, self.engine.has_database)
        if not db:
            raise ShoalError(Code.DATABASE_REQUIRED, "no database named: use a sync URL "
                             "http://HOST/db/NAME, the database as the host's first label, "
                             "or a token for exactly one database")
        return names.check(db)

    def _where(self, request: Request) -> tuple[str, str | None]:
        """The database and the branch the path names (None: main, or the branch a token
        bound to one is served on)."""
        branch = request.params.get("branch")
        return self.database(request), None if branch is None else \
            names.check(branch, "branch")

    async def info(self, request: Request) -> Response:
        db, branch = self._where(request)
        found = await self.engine.sync_info(request.principal, db, branch)
        return json_response(200, {"current_generation": found.generation})

    async def export(self, request: Request) -> Response:
        db, branch = self._where(request)
        generation = _number(request.params["generation"], "the generation", 1)
        state = await self.engine.sync_export(request.principal, db, branch, generation)
        size = state.pages * PAGE
        headers = [*OCTETS, (b"content-length", str(size).encode())]
        # opened now, before anything awaits: the cache may drop the file for a newer state
        # at any time after (an open file stays readable); closed at the end of the stream,
        # or when the stream is dropped unread (a client gone first)
        fd = os.open(state.path, os.O_RDONLY)
        held = [fd]
        stream = _read(held, size)
        weakref.finalize(stream, _close, held)
        return Response(200, b"", headers, stream=stream)

    async def pull(self, request: Request) -> Response:
        db, branch = self._where(request)
        generation = _number(request.params["generation"], "the generation", 1)
        start = _number(request.params["start"], "the first frame", 1)
        end = _number(request.params["end"], "the end frame")
        pulled = await self.engine.sync_pull(request.principal, db, branch, generation,
                                             start, end)
        if not pulled.frames:  # the protocol's own end-of-generation answer
            return json_response(400, {"generation": pulled.generation})
        return Response(200, pulled.frames, list(OCTETS))

    async def push(self, request: Request) -> Response:
        db, branch = self._where(request)
        return self.engine.sync_push(request.principal, db, branch)


async def _read(held: list[int], size: int) -> AsyncGenerator[bytes, None]:
    """An open state file's bytes (``held[0]``), a chunk at a time, read on a thread."""
    loop = asyncio.get_running_loop()
    try:
        sent = 0
        while sent < size:
            chunk = await loop.run_in_executor(None, os.pread, held[0],
                                               min(CHUNK, size - sent), sent)
            if not chunk:
                break
            sent += len(chunk)
            yield chunk
    finally:
        _close(held)


def _close(held: list[int]) -> None:
    """Close the file once (the stream's end and its finalizer may both come)."""
    if held[0] >= 0:
        os.close(held[0])
        held[0] = -1
