"""What a failed call raises: :class:`ClientError` and its subclasses, one per way to react.

The server's stable ``code`` rides on every one. The server's own exception
(:class:`shoal.errors.ShoalError`) is not imported: it lives beside apsw, and the client
must install without it, so the few codes the client sorts by are copied here.
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
import msgspec


class ClientError(Exception):
    """A failed call: the server's error envelope, or a transport failure (``status`` None)."""

    def __init__(self, code: str, message: str, *, hint: str | None = None,
                 status: int | None = None, statement: int | None = None,
                 extended_code: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.status = status
        self.statement = statement
        self.extended_code = extended_code
        self.details = details or {}

    def __str__(self) -> str:
        where = f" (statement {self.statement})" if self.statement is not None else ""
        return f"{self.code}: {self.message}{where}"


class AuthError(ClientError):
    """401/403: missing, invalid, expired or revoked token, or not allowed."""


class NotFound(ClientError):
    """404: no such database, branch, token, transaction or route."""


class AlreadyExists(ClientError):
    """409 DATABASE_EXISTS or BRANCH_EXISTS."""


class Busy(ClientError):
    """The write lock is held (DATABASE_BUSY, SQLITE_BUSY, SQLITE_LOCKED): retry later."""


class Timeout(ClientError):
    """A statement ran past statement_timeout, or the HTTP call timed out (CLIENT_TIMEOUT)."""


class TransactionExpired(ClientError):
    """The interactive transaction sat idle too long and was rolled back."""


class SQLError(ClientError):
    """SQLite refused the statement; ``code`` is SQLITE_*, ``extended_code`` the detail."""


class CursorExpired(ClientError):
    """410 CURSOR_EXPIRED: the change feed no longer holds what follows the cursor (past
    history_retention, or the branch was restored or reset). Rebuild what was derived from
    the feed, then go on from :attr:`earliest`."""

    @property
    def earliest(self) -> str | None:
        """A cursor the feed can go on from (the server's ``earliest``)."""
        found = self.details.get("earliest")
        return found if isinstance(found, str) else None


class InvalidRequest(ClientError):
    """400/413/422: the request itself is wrong (shape, arguments, size, idempotency reuse)."""


class ServerError(ClientError):
    """5xx: a server fault."""


class ConnectionFailed(ClientError):
    """The server could not be reached or the connection broke (code CONNECTION_ERROR)."""


_BY_CODE: dict[str, type[ClientError]] = {
    "DATABASE_EXISTS": AlreadyExists,
    "BRANCH_EXISTS": AlreadyExists,
    "DATABASE_BUSY": Busy,
    "SQLITE_BUSY": Busy,
    "SQLITE_LOCKED": Busy,
    "STATEMENT_TIMEOUT": Timeout,
    "TRANSACTION_EXPIRED": TransactionExpired,
    "CURSOR_EXPIRED": CursorExpired,
}


def error_class(code: str, status: int | None) -> type[ClientError]:
    """The exception type for a code: by code first, then SQLite's family, then the status."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    if code.startswith("SQLITE_"):
        return SQLError
    if status in (401, 403):
        return AuthError
    if status == 404:
        return NotFound
    if status is not None and status >= 500:
        return ServerError
    if status in (400, 413, 422):
        return InvalidRequest
    return ClientError


def error_from_response(response: httpx.Response) -> ClientError:
    """The typed error for a non-2xx response, tolerating bodies that are not the envelope."""
    status = response.status_code
    err: Any = None
    with contextlib.suppress(msgspec.DecodeError, AttributeError):
        err = msgspec.json.decode(response.content).get("error")
    if not isinstance(err, dict) or not isinstance(err.get("code"), str):
        text = response.text.strip()[:500] or response.reason_phrase
        return error_class("", status)(f"HTTP_{status}", text, status=status)
    code = err["code"]
    statement = err.get("statement")
    return error_class(code, status)(
        code, str(err.get("message", "")), hint=err.get("hint") or None, status=status,
        statement=statement if isinstance(statement, int) else None,
        extended_code=err.get("extended_code"), details=err)


def transport_error(exc: httpx.HTTPError) -> ClientError:
    """A typed error for an httpx failure that produced no response."""
    if isinstance(exc, httpx.TimeoutException):
        return Timeout("CLIENT_TIMEOUT", f"no answer in time: {exc}")
    return ConnectionFailed("CONNECTION_ERROR", f"{type(exc).__name__}: {exc}")
