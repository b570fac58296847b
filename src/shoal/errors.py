"""Every error code Shoal sends, with its HTTP status and hint: one enum, one table.

Every failure a client can see is a :class:`ShoalError` (or, to Hrana clients, a
``HranaError``) rendered as ``{"error": {"code", "message", "hint", ...}}``. Codes are
stable API: :class:`Code` lists each one with the only HTTP status it maps to and its
default hint, ``docs/api.md`` and ``docs/hrana.md`` document each one (generated from it
and checked by tests), and an error cannot be made with a code that is not in it.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from enum import StrEnum, auto
from typing import Any, Self

import apsw

HRANA = True  # marks a code of Hrana's own (libSQL clients; docs/hrana.md)


class Code(StrEnum):
    """An error code: its value is its name, the string on the wire; ``status`` the HTTP
    status it maps to, ``hint`` what to do (sent unless the error gives its own).

    The native API's codes come first, then SQLite's primary result codes (``from_sqlite``
    passes them through; ``extended_code`` carries the extended name), then Hrana's own.
    """

    status: int
    hint: str
    hrana: bool  # Hrana's own code, documented with the protocol in docs/hrana.md

    def __new__(cls, value: str, status: int, hint: str = "", hrana: bool = False) -> Self:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        member.hint = hint
        member.hrana = hrana
        return member

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last: list[Any]) -> str:
        return name  # the wire string is the member's name, spelled once

    @property
    def sqlite(self) -> bool:
        """One of SQLite's primary result codes, passed through as SQLite named it."""
        return self.startswith("SQLITE_")

    # request shape
    INVALID_JSON = auto(), 400, "The body must be one JSON object."
    INVALID_REQUEST = auto(), 400, "Check the field names and types against /openapi.json."
    INVALID_NAME = auto(), 400, "Names match [a-z0-9][a-z0-9_-]{0,62}."
    INVALID_ARGUMENT = auto(), 400, ("Values are null, numbers, strings, {\"base64\"}, "
                                     "{\"integer\"}.")
    TOO_MANY_STATEMENTS = auto(), 400, "Split the request or raise max_statements."
    MULTIPLE_STATEMENTS = auto(), 400, "Send one SQL statement per entry of 'statements'."
    PAYLOAD_TOO_LARGE = auto(), 413, "Send a smaller body or raise max_request_bytes."
    RESPONSE_TOO_LARGE = auto(), 400, "Select fewer rows (LIMIT) or raise max_response_bytes."
    STATEMENT_TIMEOUT = auto(), 400, "Make the statement cheaper or raise statement_timeout."
    # connections
    REQUEST_TIMEOUT = auto(), 408, ("Send the request line and headers within header_timeout and "
                                    "the body within body_timeout of them; the connection is "
                                    "closed.")
    HEADERS_TOO_LARGE = auto(), 431, "Send a request line and headers within max_header_bytes."
    TOO_MANY_CONNECTIONS = auto(), 503, ("The node or your address holds as many connections as "
                                         "it may (max_connections, max_connections_per_client): "
                                         "reuse connections (keep-alive) and retry shortly.")
    OUT_OF_MEMORY = auto(), 503, ("SQLite's memory on this node reached hard_heap_limit, which "
                                  "all its databases share; retry shortly. A statement that alone "
                                  "needs that much (a huge sort, join or value) keeps failing: "
                                  "make it cheaper.")
    # auth
    UNAUTHORIZED = auto(), 401, "Send 'Authorization: Bearer <token>'."
    TOKEN_INVALID = auto(), 401, "The token is malformed or its signature does not verify."
    TOKEN_EXPIRED = auto(), 401, "Create a new token."
    TOKEN_REVOKED = auto(), 401, "Create a new token."
    ISSUER_NOT_TRUSTED = auto(), 401, ("The token's issuer (iss) is trusted neither by the node "
                                       "(issuers_file) nor by a database (PUT /v1/databases/"
                                       "{db}/issuers).")
    FORBIDDEN = auto(), 403, "The token does not grant this database or action."
    READ_ONLY = auto(), 403, "This token may only read; use a token with write access."
    BRANCH_NOT_GRANTED = auto(), 403, ("The token is bound to one branch (its 'branch'): use "
                                       "that branch. It cannot create, reset, restore or delete "
                                       "branches; a token that is not bound can.")
    PROVISION_ONLY = auto(), 403, ("A provisioning token creates, deletes and lists the "
                                   "databases under its prefixes and mints their tokens; it "
                                   "cannot read or write data or change a database: use a "
                                   "token it minted.")
    SQL_NOT_ALLOWED = auto(), 403, ("SQL that reaches outside the database, weakens durability, "
                                    "leaves state on a pooled connection or touches Shoal's own "
                                    "tables is refused; see docs/api.md, 'What SQL may do'.")
    ORIGIN_NOT_ALLOWED = auto(), 403, ("A browser's preflight from a page whose origin neither "
                                       "the node (cors_origins) nor the database (PUT "
                                       "/v1/databases/{db}/cors) allows; see docs/api.md, "
                                       "'CORS'.")
    RULES_BOUND = auto(), 403, ("This token is bound by the database's row rules: it reaches "
                                "rows through the data API (/v1/databases/{db}/tables/{table}) "
                                "and the named queries an admin registered, never with SQL; "
                                "see docs/api.md, 'Row rules'.")
    RULE_DENIED = auto(), 403, ("A row rule refused this: no rule allows the verb on the table "
                                "for tokens bound by rules, or a row written would not pass "
                                "the table's insert or update rule; see GET "
                                "/v1/databases/{db}/rules.")
    INVALID_RULE = auto(), 400, ("A rule is one SQL boolean expression over the table's columns "
                                 "and auth.sub, auth.iss, auth.access, auth.claims.<name>.")
    UNKNOWN_COLUMN = auto(), 400, "Name columns of the table: GET .../tables/{table}/schema."
    # resources
    NOT_FOUND = auto(), 404, "See /openapi.json for the routes."
    METHOD_NOT_ALLOWED = auto(), 405, "See /openapi.json for the routes."
    DATABASE_NOT_FOUND = auto(), 404, "Create it with POST /v1/databases."
    TOKEN_NOT_FOUND = auto(), 404, "List tokens you created; ids are in the create response."
    TABLE_NOT_FOUND = auto(), 404, ("No such table, or one that a token bound by rules may not "
                                    "read (it has no select rule).")
    QUERY_NOT_FOUND = auto(), 404, "List named queries with GET /v1/databases/{db}/queries."
    TRANSACTION_NOT_FOUND = auto(), 404, "Open one with POST .../transactions."
    WEBHOOK_NOT_FOUND = auto(), 404, "List webhooks with GET /v1/databases/{db}/webhooks."
    DEAD_LETTER_NOT_FOUND = auto(), 404, ("List them with GET "
                                          "/v1/databases/{db}/webhooks/{id}/dead-letters.")
    DATABASE_EXISTS = auto(), 409, "Pick another name or use the existing database."
    DATABASE_BUSY = auto(), 409, "Another transaction holds the write lock; retry shortly."
    TOO_MANY_WEBHOOKS = auto(), 409, ("The database has as many webhooks as max_webhooks "
                                      "allows: delete one, or ask the node's admin to raise it.")
    TRANSACTION_EXPIRED = auto(), 410, "The transaction sat idle too long and was rolled back."
    TRANSACTION_ABORTED = auto(), 410, ("An error (e.g. a statement timeout) rolled the "
                                        "transaction back; open a new one.")
    CURSOR_EXPIRED = auto(), 410, ("The feed no longer holds the changes after this cursor "
                                   "(kept for feed_retention), or the branch was restored or "
                                   "reset since: read the database afresh, then follow the "
                                   "feed from the cursor the error names.")
    REPLICA_EXPIRED = auto(), 410, ("The embedded replica holds a place this branch never had (a "
                                    "database deleted and created again under its name, another "
                                    "branch) or no longer keeps (two restores behind): delete the "
                                    "local database file and its -info, -wal and -shm files, then "
                                    "sync again (it starts afresh).")
    SYNC_PUSH_UNSUPPORTED = auto(), 409, ("Shoal takes no offline writes from embedded replicas "
                                          "yet (their WAL frames pushed on sync): open the replica "
                                          "without offline mode, so its writes go to the server.")
    IDEMPOTENCY_KEY_REUSED = auto(), 422, "Use a new Idempotency-Key for a different request."
    OVERLOADED = auto(), 503, ("The node is short of memory (max_memory_bytes): retry shortly, "
                               "with backoff. Operators: GET /ready says why; give the node more "
                               "memory or fewer tenants.")
    TOO_MANY_SUBSCRIPTIONS = auto(), 429, ("The node serves as many change-feed event streams "
                                           "as max_feed_streams allows: close streams you no "
                                           "longer read, poll JSON pages, or raise the setting.")
    TOO_MANY_TRANSACTIONS = auto(), 429, ("Commit or roll back open transactions first, or raise "
                                          "max_transactions / max_transactions_per_token; the "
                                          "message says which limit.")
    # per-database quotas (docs/operations.md, "Quotas")
    QUOTA_EXCEEDED = auto(), 429, ("The database used a row limit (rows_read or rows_written, "
                                   "field 'limit') for this period; 'resets_at' says when the "
                                   "period ends and 'retry_after' (also the Retry-After header) "
                                   "in how many seconds. Its admin can ask the node's admin to "
                                   "raise it.")
    RATE_LIMITED = auto(), 429, ("The database runs as many queries per second as its "
                                 "queries_per_second limit allows: retry after 'retry_after' "
                                 "seconds (the Retry-After header).")
    DATABASE_FULL = auto(), 507, ("The database reached its size limit ('value', bytes; "
                                  "size_bytes): delete rows, then compact it (POST "
                                  "/v1/databases/{db}/compact) to give the space back; deletes "
                                  "and reads keep working.")
    # branches and history
    BRANCH_NOT_FOUND = auto(), 404, "List branches with GET /v1/databases/{db}/branches."
    BRANCH_EXISTS = auto(), 409, "Pick another branch name, or delete or reset the existing one."
    OUTSIDE_HISTORY = auto(), 400, ("Pick a point inside the restorable window: GET "
                                    "/v1/databases/{db}/history.")
    HISTORY_DISABLED = auto(), 409, ("This node runs with store = \"none\" (no object store, no "
                                     "history): restore, history, branches other than main and "
                                     "embedded replicas need a node started with --store.")
    PAGE_SIZE_UNSUPPORTED = auto(), 409, ("Embedded replicas need 4,096-byte pages: copy the data "
                                          "into a database created with them (the default).")
    # the node's disk
    DISK_FULL = auto(), 507, ("The disk of the node's data directory is full (with the default "
                              "store, the store's folder is on it too). Reads are served; writes "
                              "resume by themselves once space is free: free some on that disk "
                              "(docs/operations.md, 'A full disk'), then retry with the same "
                              "Idempotency-Key.")
    # object storage
    STORAGE_UNAVAILABLE = auto(), 503, ("The object store failed, timed out or is too far behind "
                                        "(max_unshipped_bytes); the message says which. A write "
                                        "that timed out waiting for it is committed on the node "
                                        "and ships once the store is back; one refused for the "
                                        "backlog was not run. Retry later with the same "
                                        "Idempotency-Key.")
    # the cluster: another node leads the database
    LEADER_UNAVAILABLE = auto(), 503, ("The database's leader, another node of the cluster, "
                                       "could not be reached or is handing the database over; "
                                       "the request was not run there if the connection failed "
                                       "before it was sent. Retry with the same "
                                       "Idempotency-Key.")
    CLAIMED = auto(), 409, ("Between a cluster's nodes only: the node asked to release a "
                            "database is claiming it itself at this moment, and takes "
                            "precedence; the asking node sends its request there instead.")
    DATA_DIR_CONFLICT = auto(), 500, ("Only at startup: the data directory belongs to the other "
                                      "kind of node (local-only or store-backed), or another "
                                      "process uses it; the message says what to do. The node "
                                      "does not start.")
    STORE_IN_USE = auto(), 500, ("Only at startup: another node holds the object store's lease "
                                 "(one writing node per store). Stop it; a node that died frees "
                                 "the store after lease_ttl. The node does not start.")
    STORE_UNUSABLE = auto(), 500, ("Only at startup: the object store failed the check a node "
                                   "makes before anything else (a missing bucket, refused "
                                   "credentials, an unreachable endpoint, a folder the node "
                                   "cannot write); the message names the cause and the hint what "
                                   "to do. The node does not start.")
    STORAGE_CORRUPT = auto(), 500, ("An object of the commit log is missing or fails its "
                                    "checksum; the message names it. Restore from another point "
                                    "or branch.")
    INTERNAL = auto(), 500, "A server fault; it is logged."
    # SQLite's primary result codes (OK, ROW and DONE are not errors); 400 unless below
    SQLITE_ERROR = auto(), 400
    SQLITE_INTERNAL = auto(), 500
    SQLITE_PERM = auto(), 400
    SQLITE_ABORT = auto(), 400
    SQLITE_BUSY = auto(), 409
    SQLITE_LOCKED = auto(), 409
    SQLITE_NOMEM = auto(), 400
    SQLITE_READONLY = auto(), 403
    SQLITE_INTERRUPT = auto(), 400
    SQLITE_IOERR = auto(), 500
    SQLITE_CORRUPT = auto(), 500
    SQLITE_NOTFOUND = auto(), 400
    SQLITE_FULL = auto(), 400
    SQLITE_CANTOPEN = auto(), 500
    SQLITE_PROTOCOL = auto(), 500
    SQLITE_EMPTY = auto(), 400
    SQLITE_SCHEMA = auto(), 400
    SQLITE_TOOBIG = auto(), 400, ("A string, blob or row was longer than max_value_bytes, or one "
                                  "statement's SQL text longer than max_sql_bytes: pass data as "
                                  "arguments, send less, or raise the setting "
                                  "(docs/operations.md, 'Limits that protect the node').")
    SQLITE_CONSTRAINT = auto(), 400
    SQLITE_MISMATCH = auto(), 400
    SQLITE_MISUSE = auto(), 400
    SQLITE_NOLFS = auto(), 400
    SQLITE_AUTH = auto(), 403
    SQLITE_FORMAT = auto(), 400
    SQLITE_RANGE = auto(), 400
    SQLITE_NOTADB = auto(), 500
    SQLITE_NOTICE = auto(), 400
    SQLITE_WARNING = auto(), 400
    # Hrana's own (the protocol leaves codes to the server; these follow sqld's); the status
    # is the one of a request that fails as a whole
    HRANA_PROTO_ERROR = auto(), 400, "The body is not a Hrana message of the expected shape.", HRANA
    BATON_INVALID = auto(), 400, "Send the baton from the previous response on this stream.", HRANA
    BATON_REUSED = auto(), 400, "A baton is good for one request; use the newest one.", HRANA
    STREAM_EXPIRED = auto(), 400, ("The stream sat idle past transaction_timeout or the server "
                                   "restarted; open a new stream (baton null)."), HRANA
    STREAM_CLOSED = auto(), 400, "The stream was closed; open a new one (baton null).", HRANA
    STREAM_NOT_FOUND = auto(), 400, "Open the stream with open_stream first.", HRANA
    STREAM_EXISTS = auto(), 400, "Close the stream id before opening it again.", HRANA
    CURSOR_NOT_FOUND = auto(), 400, "Open the cursor with open_cursor first.", HRANA
    CURSOR_EXISTS = auto(), 400, "Close the cursor id before opening it again.", HRANA
    SQL_NOT_FOUND = auto(), 400, "Store the SQL text with store_sql before using its sql_id.", HRANA
    SQL_EXISTS = auto(), 400, "Close the sql_id with close_sql before storing it again.", HRANA
    SQL_ID_AND_SQL_GIVEN = auto(), 400, "Send either sql or sql_id, not both.", HRANA
    SQL_ID_OR_SQL_NOT_GIVEN = auto(), 400, "Send sql or sql_id.", HRANA
    SQL_MANY_STATEMENTS = auto(), 400, ("Send one statement per execute; use sequence for "
                                        "scripts."), HRANA
    ARGS_INVALID = auto(), 400, "Arguments must match the statement's parameters.", HRANA
    ARGS_BOTH_POSITIONAL_AND_NAMED = auto(), 400, "Send args or named_args, not both.", HRANA
    BATCH_COND_BAD_STEP = auto(), 400, ("A condition may only name an earlier step of its "
                                        "batch."), HRANA
    TRANSACTION_TIMEOUT = auto(), 400, ("The transaction sat idle past transaction_timeout and "
                                        "was rolled back."), HRANA
    DATABASE_REQUIRED = auto(), 400, ("Name the database: http://HOST/db/NAME/ (with the trailing "
                                      "slash), the x-namespace header, or a token for one "
                                      "database."), HRANA
    IDEMPOTENCY_SCOPE = auto(), 400, ("With an Idempotency-Key a request may commit once, as its "
                                      "last SQL work."), HRANA
    TOO_MANY_STREAMS = auto(), 429, ("Close streams you no longer use (a pipeline that closes its "
                                     "stream holds none; an idle HTTP stream expires after "
                                     "transaction_timeout). Limits: max_streams_per_token, "
                                     "max_streams_per_database, max_streams_per_connection "
                                     "(WebSocket), max_streams (the node)."), HRANA
    TOO_MANY_CURSORS = auto(), 429, ("Fetch cursors to the end or close them; a WebSocket "
                                     "connection holds at most max_cursors_per_connection."), HRANA
    HELD_BYTES_LIMIT = auto(), 429, ("The node holds stored SQL texts and unfetched cursor "
                                     "entries for a token up to max_held_bytes_per_token (and "
                                     "max_held_bytes_per_database, max_held_bytes for the node): "
                                     "close_sql texts you no longer use, fetch or close "
                                     "cursors."), HRANA


class ShoalError(Exception):
    """An error with a stable code, shown to the client in the envelope.

    ``code`` is a :class:`Code`; a string is taken too (tests, a code read back) if it
    names one, so an error can never carry a code that has no status or documentation.
    """

    def __init__(self, code: Code, message: str, *, hint: str | None = None, **extra: Any):
        super().__init__(message)
        self.code = code if isinstance(code, Code) else Code[code]
        self.message = message
        self.hint = hint
        self.extra = extra

    @property
    def status(self) -> int:
        return self.code.status

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": str(self.code), "message": self.message}
        hint = self.code.hint if self.hint is None else self.hint
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
        return ShoalError(Code.DISK_FULL, f"no space left on the node's disk ({exc})", **extra)
    if primary == "SQLITE_NOMEM":
        return ShoalError(Code.OUT_OF_MEMORY, f"SQLite ran out of memory ({exc})", **extra)
    return ShoalError(Code[primary], str(exc), **extra)


_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})  # errnos of a disk (or quota) with no room


def _sqlite_full(exc: apsw.Error) -> bool:
    """SQLITE_FULL, or a -shm file SQLite could not grow (SQLITE_IOERR_SHMSIZE: on a full
    disk that is what a WAL commit fails with when the WAL index needs another page)."""
    return isinstance(exc, apsw.FullError) or (
        isinstance(exc, apsw.IOError)
        and getattr(exc, "extendedresult", None) == apsw.SQLITE_IOERR_SHMSIZE)


def disk_full(exc: BaseException) -> ShoalError | None:
    """DISK_FULL for an exception that says a local disk has no room, however it surfaced
    (SQLite, ENOSPC / EDQUOT from the OS, or an error raised from one: a folder store's
    StorageUnavailable); None for any other exception."""
    if isinstance(exc, ShoalError):
        return exc if exc.code == Code.DISK_FULL else None
    if isinstance(exc, apsw.Error) and _sqlite_full(exc):
        return from_sqlite(exc)
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return ShoalError(Code.DISK_FULL, f"no space left on the node's disk ({exc})")
    if exc.__cause__ is not None:
        return disk_full(exc.__cause__)
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
