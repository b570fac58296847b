"""One error type and one table from error code to HTTP status.

Every failure a client can see is a :class:`ShoalError` rendered as
``{"error": {"code", "message", "hint", ...}}``. Codes are stable API; the
table below is the only place that decides their HTTP status, and
``docs/api.md`` documents each one.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from typing import Any

import apsw

# code -> (HTTP status, default hint)
CODES: dict[str, tuple[int, str]] = {
    # request shape
    "INVALID_JSON": (400, "The body must be one JSON object."),
    "INVALID_REQUEST": (400, "Check the field names and types against /openapi.json."),
    "INVALID_NAME": (400, "Names match [a-z0-9][a-z0-9_-]{0,62}."),
    "INVALID_ARGUMENT": (400, "Values are null, numbers, strings, {\"base64\"}, {\"integer\"}."),
    "TOO_MANY_STATEMENTS": (400, "Split the request or raise max_statements."),
    "MULTIPLE_STATEMENTS": (400, "Send one SQL statement per entry of 'statements'."),
    "PAYLOAD_TOO_LARGE": (413, "Send a smaller body or raise max_request_bytes."),
    "RESPONSE_TOO_LARGE": (400, "Select fewer rows (LIMIT) or raise max_response_bytes."),
    "STATEMENT_TIMEOUT": (400, "Make the statement cheaper or raise statement_timeout."),
    # connections
    "REQUEST_TIMEOUT": (408, "Send the request line and headers within header_timeout and the "
                             "body within body_timeout of them; the connection is closed."),
    "HEADERS_TOO_LARGE": (431, "Send a request line and headers within max_header_bytes."),
    "TOO_MANY_CONNECTIONS": (503, "The node or your address holds as many connections as it "
                                  "may (max_connections, max_connections_per_client): reuse "
                                  "connections (keep-alive) and retry shortly."),
    "OUT_OF_MEMORY": (503, "SQLite's memory on this node reached hard_heap_limit, which all its "
                           "databases share; retry shortly. A statement that alone needs that "
                           "much (a huge sort, join or value) keeps failing: make it cheaper."),
    # auth
    "UNAUTHORIZED": (401, "Send 'Authorization: Bearer <token>'."),
    "TOKEN_INVALID": (401, "The token is malformed or its signature does not verify."),
    "TOKEN_EXPIRED": (401, "Create a new token."),
    "TOKEN_REVOKED": (401, "Create a new token."),
    "FORBIDDEN": (403, "The token does not grant this database or action."),
    "READ_ONLY": (403, "This token may only read; use a token with write access."),
    "SQL_NOT_ALLOWED": (403, "SQL that reaches outside the database, weakens durability, leaves "
                             "state on a pooled connection or touches _shoal_* tables is refused; "
                             "see docs/api.md, 'What SQL may do'."),
    # resources
    "NOT_FOUND": (404, "See /openapi.json for the routes."),
    "METHOD_NOT_ALLOWED": (405, "See /openapi.json for the routes."),
    "DATABASE_NOT_FOUND": (404, "Create it with POST /v1/databases."),
    "TOKEN_NOT_FOUND": (404, "List tokens you created; ids are in the create response."),
    "TRANSACTION_NOT_FOUND": (404, "Open one with POST .../transactions."),
    "DATABASE_EXISTS": (409, "Pick another name or use the existing database."),
    "DATABASE_BUSY": (409, "Another transaction holds the write lock; retry shortly."),
    "TRANSACTION_EXPIRED": (410, "The transaction sat idle too long and was rolled back."),
    "TRANSACTION_ABORTED": (410, "An error (e.g. a statement timeout) rolled the transaction "
                                 "back; open a new one."),
    "IDEMPOTENCY_KEY_REUSED": (422, "Use a new Idempotency-Key for a different request."),
    "OVERLOADED": (503, "The node is short of memory (max_memory_bytes): retry shortly, with "
                        "backoff. Operators: GET /ready says why; give the node more memory "
                        "or fewer tenants."),
    "TOO_MANY_TRANSACTIONS": (429, "Commit or roll back open transactions first, or raise "
                                   "max_transactions / max_transactions_per_token; the "
                                   "message says which limit."),
    # per-database quotas (docs/operations.md, "Quotas")
    "QUOTA_EXCEEDED": (429, "The database used a row limit (rows_read or rows_written, field "
                            "'limit') for this period; 'resets_at' says when the period ends "
                            "and 'retry_after' (also the Retry-After header) in how many "
                            "seconds. Its admin can ask the node's admin to raise it."),
    "RATE_LIMITED": (429, "The database runs as many queries per second as its "
                          "queries_per_second limit allows: retry after 'retry_after' seconds "
                          "(the Retry-After header)."),
    "DATABASE_FULL": (507, "The database reached its size limit ('value', bytes; size_bytes): "
                           "delete rows, then compact it (POST /v1/databases/{db}/compact) to "
                           "give the space back; deletes and reads keep working."),
    # branches and history
    "BRANCH_NOT_FOUND": (404, "List branches with GET /v1/databases/{db}/branches."),
    "BRANCH_EXISTS": (409, "Pick another branch name, or delete or reset the existing one."),
    "OUTSIDE_HISTORY": (400, "Pick a point inside the restorable window: "
                             "GET /v1/databases/{db}/history."),
    "HISTORY_DISABLED": (409, "This node runs with store = \"none\" (no object store, no "
                              "history): restore, history and branches other than main need "
                              "a node started with --store."),
    # the node's disk
    "DISK_FULL": (507, "The disk of the node's data directory is full (with the default "
                       "store, the store's folder is on it too). Reads are served; writes "
                       "resume by themselves once space is free: free some on that disk "
                       "(docs/operations.md, 'A full disk'), then retry with the same "
                       "Idempotency-Key."),
    # object storage
    "STORAGE_UNAVAILABLE": (503, "The object store failed, timed out or is too far behind "
                                 "(max_unshipped_bytes); the message says which. A write that "
                                 "timed out waiting for it is committed on the node and ships "
                                 "once the store is back; one refused for the backlog was not "
                                 "run. Retry later with the same Idempotency-Key."),
    "DATA_DIR_CONFLICT": (500, "Only at startup: the data directory belongs to the other "
                               "kind of node (local-only or store-backed), or another process "
                               "uses it; the message says what to do. The node does not "
                               "start."),
    "STORE_IN_USE": (500, "Only at startup: another node holds the object store's lease "
                          "(one writing node per store). Stop it; a node that died frees the "
                          "store after lease_ttl. The node does not start."),
    "STORE_UNUSABLE": (500, "Only at startup: the object store failed the check a node makes "
                            "before anything else (a missing bucket, refused credentials, an "
                            "unreachable endpoint, a folder the node cannot write); the message "
                            "names the cause and the hint what to do. The node does not start."),
    "STORAGE_CORRUPT": (500, "An object of the commit log is missing or fails its checksum; "
                             "the message names it. Restore from another point or branch."),
    "INTERNAL": (500, "A server fault; it is logged."),
}

# SQLite primary result code name -> HTTP status. Unknown names fall back to 400.
_SQLITE_STATUS = {
    "SQLITE_BUSY": 409,
    "SQLITE_LOCKED": 409,
    "SQLITE_READONLY": 403,
    "SQLITE_AUTH": 403,
    "SQLITE_IOERR": 500,
    "SQLITE_CORRUPT": 500,
    "SQLITE_CANTOPEN": 500,
    "SQLITE_INTERNAL": 500,
    "SQLITE_NOTADB": 500,
    "SQLITE_PROTOCOL": 500,
    "SQLITE_TOOBIG": 400,
}

# SQLite primary result code name -> hint, for the codes whose cause is a node's setting.
SQLITE_HINTS = {
    "SQLITE_TOOBIG": "A string, blob or row was longer than max_value_bytes, or one statement's "
                     "SQL text longer than max_sql_bytes: pass data as arguments, send less, or "
                     "raise the setting (docs/operations.md, 'Limits that protect the node').",
}


class ShoalError(Exception):
    """An error with a stable code, shown to the client in the envelope."""

    def __init__(self, code: str, message: str, *, hint: str | None = None, **extra: Any):
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.extra = extra

    @property
    def status(self) -> int:
        if self.code in CODES:
            return CODES[self.code][0]
        return _SQLITE_STATUS.get(self.code, 400)

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        hint = self.hint if self.hint is not None else CODES.get(self.code, (0, None))[1]
        if hint:
            err["hint"] = hint
        err.update(self.extra)
        return {"error": err}


def sqlite_names(exc: apsw.Error) -> tuple[str, str]:
    """(primary, extended) SQLite result code names for an apsw exception."""
    primary = str(apsw.mapping_result_codes.get(getattr(exc, "result", 1) or 1, "SQLITE_ERROR"))
    ext_code = getattr(exc, "extendedresult", None)
    extended = str(apsw.mapping_extended_result_codes.get(ext_code, primary)) if ext_code \
        else primary
    return primary, extended


def from_sqlite(exc: apsw.Error, statement: int | None = None) -> ShoalError:
    """Map an apsw exception to the envelope: code by SQLite name, extended name too;
    a full disk is DISK_FULL and SQLite's memory at hard_heap_limit OUT_OF_MEMORY (the
    node's conditions, not the request's fault)."""
    primary, extended = sqlite_names(exc)
    extra: dict[str, Any] = {"extended_code": extended}
    if statement is not None:
        extra["statement"] = statement
    if _sqlite_full(exc):
        return ShoalError("DISK_FULL", f"no space left on the node's disk ({exc})", **extra)
    if primary == "SQLITE_NOMEM":
        return ShoalError("OUT_OF_MEMORY", f"SQLite ran out of memory ({exc})", **extra)
    return ShoalError(primary, str(exc), hint=SQLITE_HINTS.get(primary, ""), **extra)


_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})  # errnos of a disk (or quota) with no room


def _sqlite_full(exc: apsw.Error) -> bool:
    """SQLITE_FULL, or a -shm file SQLite could not grow (SQLITE_IOERR_SHMSIZE: on a full
    disk that is what a WAL commit fails with when the WAL index needs another page)."""
    return isinstance(exc, apsw.FullError) or (
        isinstance(exc, apsw.IOError)
        and getattr(exc, "extendedresult", None) == apsw.SQLITE_IOERR_SHMSIZE)


def disk_full(exc: BaseException) -> ShoalError | None:
    """DISK_FULL for an exception that says a local disk has no room, however it surfaced
    (SQLite, or ENOSPC / EDQUOT from the OS); None for any other exception."""
    if isinstance(exc, ShoalError):
        return exc if exc.code == "DISK_FULL" else None
    if isinstance(exc, apsw.Error) and _sqlite_full(exc):
        return from_sqlite(exc)
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return ShoalError("DISK_FULL", f"no space left on the node's disk ({exc})")
    return None


@contextlib.contextmanager
def disk_errors() -> Iterator[None]:
    """A full disk inside the block becomes DISK_FULL; other errors pass as they are."""
    try:
        yield
    except Exception as exc:
        full = disk_full(exc)
        if full is None or full is exc:
            raise
        raise full from None
