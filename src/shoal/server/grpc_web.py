"""gRPC-web over HTTP/1.1, as tonic-web's client speaks it (libSQL's V1 sync protocol,
``server/sync_v1.py``): no HTTP/2, no grpcio.

- A call is ``POST /{package}.{Service}/{Method}`` with ``content-type:
  application/grpc-web`` (or ``+proto``), metadata as plain headers (``-bin`` ones in
  base64), and a body (chunked, as the client streams it) of one message: a flag byte (0:
  not compressed; Shoal offers no compression), its length (u32, big-endian), its bytes.
- An answer is ``200``, ``application/grpc-web+proto``, its messages framed the same way,
  then a trailers frame (flag ``0x80``) holding ``grpc-status:0``. A streamed answer (a
  Snapshot) sends frames as they come, and a failure half way as that last frame's status.
- A failure before any message is a trailers-only answer: ``grpc-status`` and
  ``grpc-message`` in the headers, where tonic looks first whatever the HTTP status is.
  Its HTTP status and body are Shoal's (the error envelope), so the access log, the audit
  and curl see the code; the protocol's own signals (``NEED_SNAPSHOT``, ``NO_HELLO``) are
  sent as 200s with no body.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from urllib.parse import quote

from shoal.errors import Code, ShoalError
from shoal.server.http import Request, Response, encode

CONTENT_TYPES = (b"application/grpc-web", b"application/grpc-web+proto")
ANSWER_HEADERS = [(b"content-type", b"application/grpc-web+proto")]
_PREFIX = struct.Struct(">BI")  # flag, length
_TRAILERS = 0x80


class Status(IntEnum):
    """gRPC's status codes (the ones Shoal sends)."""

    OK = 0
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


_BY_HTTP = {400: Status.INVALID_ARGUMENT, 401: Status.UNAUTHENTICATED,
            403: Status.PERMISSION_DENIED, 404: Status.NOT_FOUND,
            408: Status.DEADLINE_EXCEEDED, 409: Status.FAILED_PRECONDITION,
            410: Status.FAILED_PRECONDITION, 413: Status.RESOURCE_EXHAUSTED,
            422: Status.FAILED_PRECONDITION, 429: Status.RESOURCE_EXHAUSTED,
            503: Status.UNAVAILABLE, 507: Status.RESOURCE_EXHAUSTED}


def status_of(http_status: int) -> Status:
    """The gRPC status of a Shoal error's HTTP status (one table for every code)."""
    return _BY_HTTP.get(http_status, Status.INTERNAL)


def request_message(request: Request) -> bytes:
    """The one message of a unary call's body (read already), or INVALID_REQUEST."""
    kind = (request.headers.get(b"content-type") or b"").split(b";")[0].strip().lower()
    if kind not in CONTENT_TYPES:
        raise ShoalError(Code.INVALID_REQUEST, "a gRPC-web call needs content-type "
                         "application/grpc-web (binary; not -text, not plain gRPC)")
    body = request.body
    if len(body) < _PREFIX.size:
        raise ShoalError(Code.INVALID_REQUEST, "the body holds no gRPC message (5-byte prefix: "
                         "flag, length)")
    flag, length = _PREFIX.unpack_from(body)
    if flag != 0:
        raise ShoalError(Code.INVALID_REQUEST, "compressed or flagged gRPC messages are not "
                         "accepted: send the message uncompressed (flag 0)")
    if length != len(body) - _PREFIX.size:
        raise ShoalError(Code.INVALID_REQUEST, f"the message's prefix says {length} bytes and "
                         f"the body holds {len(body) - _PREFIX.size}: send exactly one message")
    return body[_PREFIX.size:]


def message(data: bytes) -> bytes:
    """One message, framed."""
    return _PREFIX.pack(0, len(data)) + data


def trailers(status: Status = Status.OK, text: str = "") -> bytes:
    """The trailers frame that ends an answer."""
    block = f"grpc-status:{int(status)}\r\n".encode()
    if text:
        block += b"grpc-message:" + _escape(text) + b"\r\n"
    return _PREFIX.pack(_TRAILERS, len(block)) + block


def answer(*messages: bytes) -> Response:
    """A whole answer: its messages, then grpc-status 0 (sent in the same write)."""
    return Response(200, b"".join(message(m) for m in messages) + trailers(),
                    list(ANSWER_HEADERS))


def signal(status: Status, text: str) -> Response:
    """A trailers-only answer that is part of the protocol (NEED_SNAPSHOT, NO_HELLO)."""
    return Response(200, b"", [*ANSWER_HEADERS, *_status_headers(status, text)])


def failure(exc: ShoalError, text: str | None = None, status: Status | None = None,
            ) -> Response:
    """A trailers-only answer of a Shoal error: its status in gRPC's headers (with
    ``text``, default ``CODE: message``), its HTTP status and envelope as usual."""
    grpc = status_of(exc.status) if status is None else status
    words = f"{exc.code}: {exc.message}" if text is None else text
    return Response(exc.status, encode(exc.body()),
                    [(b"content-type", b"application/json"), *_status_headers(grpc, words)])


def _status_headers(status: Status, text: str) -> list[tuple[bytes, bytes]]:
    return [(b"grpc-status", str(int(status)).encode()), (b"grpc-message", _escape(text))]


def _escape(text: str) -> bytes:
    """grpc-message's percent-encoding: printable ASCII but '%' as it is, the rest %XX of
    its UTF-8 (at most 1,000 characters of it)."""
    return quote(text[:1000], safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode("ascii")
