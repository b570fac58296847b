"""Every server setting, declared once: the fields of :class:`Settings`.

Each field carries its default, its help and its bounds; the same declaration feeds
the TOML loader, the ``SHOAL_<NAME>`` environment variables, ``shoal serve --help``
and ``docs/operations.md`` (through :data:`SETTINGS`). Precedence, lowest first:
default, TOML file, environment, command-line flag. ``Settings`` is frozen and
checked when built, so ``Settings(port=0, readers=2)`` in a test is as valid as what
:func:`load` returns.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal import origins


class SettingsError(ValueError):
    """A setting could not be read, has the wrong type or is out of its bounds."""


@dataclass(frozen=True)
class Setting:
    """One setting as the loader, the CLI and the docs see it."""

    name: str
    type: type  # str, int, float or bool (a setting that may be unset has default None)
    default: Any
    help: str
    secret: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None  # at least this
    above: float | None = None  # strictly above this
    zero: str = ""  # what 0 means ("no cap", "no limit"), for the error message
    maximum: float | None = None  # at most this
    items: bool = False  # a str holding a list, separated by commas (a TOML array too)


def _s(default: Any, help: str, *, secret: bool = False, choices: tuple[str, ...] = (),
       minimum: float | None = None, above: float | None = None, zero: str = "",
       maximum: float | None = None, items: bool = False) -> Any:
    """A field of Settings with what the loader, the CLI and the docs need to know of it."""
    meta = {"help": help, "secret": secret, "choices": choices, "minimum": minimum,
            "above": above, "zero": zero, "maximum": maximum, "items": items}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class Settings:
    """The node's resolved settings (frozen; checked when built)."""

    host: str = _s("127.0.0.1", "Address to listen on.")
    port: int = _s(8080, "TCP port to listen on.")
    workers: int = _s(
        1, "Nodes this command starts on this machine, all behind host:port (SO_REUSEPORT), so "
        "that one command uses every core: each is a node of a cluster on the store, with its "
        "own data directory DATA/workers/<i> (docs/operations.md, 'One machine, all cores'). "
        "Above 1: not with advertise_url, store = 'none' or http_server = 'granian'.",
        minimum=1, maximum=256)
    data: str = _s("./shoal-data", "Data directory: catalog, databases, keys.")
    disk_reserve_bytes: int = _s(
        64 << 20, "Space kept allocated in DATA/reserve and released when the disk fills, so that "
        "recovery can still write; writes then get DISK_FULL until twice this much is free, and "
        "resume by themselves (a node without its reserve starts read-only with less). 0: no "
        "reserve.", minimum=0)
    admin_token: str | None = _s(
        None, "Admin bearer token. Unset: one is generated on first start into DATA/admin-token.",
        secret=True)
    idle_timeout: float = _s(60.0, "Seconds without requests before a database is closed.")
    max_open: int = _s(1000, "Most databases open at once; least recently used close first.")
    transaction_timeout: float = _s(
        10.0, "Seconds an interactive transaction may sit idle before it is rolled back.")
    transaction_max_age: float = _s(
        60.0, "Seconds an interactive transaction may stay open in all, busy or not, before it is "
        "rolled back (an open read snapshot keeps the WAL from being checkpointed).")
    max_transactions: int = _s(
        64, "Most interactive transactions open at once on one database (TOO_MANY_TRANSACTIONS "
        "past it).", minimum=1)
    max_transactions_per_token: int = _s(
        16, "Most interactive transactions one token holds open at once, over every database "
        "(TOO_MANY_TRANSACTIONS past it).", minimum=1)
    # per-database quotas (engine/quota.py): the defaults of databases without their own
    database_size_limit: int = _s(
        0, "Bytes each branch of a database may hold unless the database has its own size_bytes "
        "limit (507 DATABASE_FULL past it). 0: no limit.", minimum=0, zero="no limit")
    database_rows_read_limit: int = _s(
        0, "Rows a database may read per period unless it has its own rows_read limit (429 "
        "QUOTA_EXCEEDED). 0: no limit.", minimum=0, zero="no limit")
    database_rows_written_limit: int = _s(
        0, "Rows a database may write per period unless it has its own rows_written limit (429 "
        "QUOTA_EXCEEDED). 0: no limit.", minimum=0, zero="no limit")
    database_queries_per_second: float = _s(
        0.0, "Queries a database may run per second unless it has its own queries_per_second limit "
        "(429 RATE_LIMITED). 0: no limit.", minimum=0, zero="no limit")
    quota_period: int = _s(
        86400, "Seconds of a row-limit period unless the database has its own period; periods "
        "start at multiples of it since the Unix epoch (UTC midnight for a day).", minimum=1)
    busy_timeout: float = _s(
        5.0, "Seconds a write waits for the database's write lock before DATABASE_BUSY; "
        "also how long SQLite waits for a lock (compaction's checkpoint for open readers).")
    statement_timeout: float = _s(5.0, "Seconds one statement may run before STATEMENT_TIMEOUT.")
    max_request_bytes: int = _s(8 * 1024 * 1024, "Largest accepted request body.")
    max_response_bytes: int = _s(
        10 * 1000 * 1000, "Largest result a request may return, counted as the JSON bytes of its "
        "rows and column names.")
    max_sql_bytes: int = _s(
        256 * 1024, "Longest SQL text of one statement (SQLite's SQLITE_LIMIT_SQL_LENGTH); longer "
        "is SQLITE_TOOBIG. Preparing a statement cannot be interrupted and can grow with the "
        "square of its length: at 256 KiB, about 0.4 s.", minimum=1024)
    max_value_bytes: int = _s(
        2 * 1024 * 1024, "Largest string, blob or row SQLite may build or read "
        "(SQLITE_LIMIT_LENGTH); larger is SQLITE_TOOBIG. One function call cannot be interrupted, "
        "so its work is bounded by this size, not by statement_timeout.", minimum=1024)
    soft_heap_limit: int = _s(
        256 << 20, "Bytes of SQLite memory (all databases of the node) past which SQLite gives "
        "back cache memory before it allocates more. 0: no limit.", minimum=0, zero="no limit")
    hard_heap_limit: int = _s(
        1 << 30, "Bytes of SQLite memory (all databases of the node) that it never passes: the "
        "statement whose allocation would pass it gets OUT_OF_MEMORY (503), and the node keeps "
        "running. 0: no limit.", minimum=0, zero="no limit")
    max_statements: int = _s(
        100_000, "Most statements in one request (a native request's statements; a Hrana "
        "pipeline's requests, batch's steps or script's statements): a guard against absurd "
        "counts, refused before they are decoded. A request's bytes (max_request_bytes) bound "
        "ordinary ones: libSQL clients send batches of thousands of statements.", minimum=1)
    # connections (docs/operations.md, "Limits that protect the node")
    max_connections: int = _s(
        4096, "Most client connections open at once (never above half the process's file "
        "descriptor limit). At the cap a new connection takes the place of the one that has waited "
        "longest for its request; with none waiting it is refused (503 TOO_MANY_CONNECTIONS). 0: "
        "half the descriptor limit.", minimum=0, zero="no cap")
    max_connections_per_client: int = _s(
        1024, "Most connections open at once from one client address (503 TOO_MANY_CONNECTIONS). "
        "Behind a proxy every client has the proxy's address: raise it or set 0 (no cap) and let "
        "the proxy cap clients.", minimum=0, zero="no cap")
    header_timeout: float = _s(
        10.0, "Seconds a request's line and headers may take to arrive, from the connection's "
        "start or the request's first byte (408 REQUEST_TIMEOUT, then closed).", above=0)
    body_timeout: float = _s(
        30.0, "Seconds a request's body may take to arrive after its headers (408 REQUEST_TIMEOUT, "
        "then closed): an 8 MiB body needs 280 KB/s.", above=0)
    max_header_bytes: int = _s(
        64 * 1024, "Largest request line and headers (431 HEADERS_TOO_LARGE, then closed).",
        above=0)
    # Hrana (docs/hrana.md, "Limits")
    hello_timeout: float = _s(
        10.0, "Seconds a Hrana WebSocket may stay open without a hello (closed, code 1008).",
        above=0)
    websocket_idle_timeout: float = _s(
        300.0, "Seconds a Hrana WebSocket may stay open without a message while none of its "
        "requests runs (closed, code 1001).", above=0)
    max_streams: int = _s(
        4096, "Most Hrana streams open on the node at once, HTTP and WebSocket (TOO_MANY_STREAMS). "
        "An HTTP stream counts from the pipeline that opens it, unless that pipeline closes it, "
        "until closed or expired. 0: no cap.", minimum=0, zero="no cap")
    max_streams_per_token: int = _s(
        128, "Most Hrana streams one token holds open at once (TOO_MANY_STREAMS). 0: no cap.",
        minimum=0, zero="no cap")
    max_streams_per_database: int = _s(
        256, "Most Hrana streams open on one database at once (TOO_MANY_STREAMS). 0: no cap.",
        minimum=0, zero="no cap")
    max_streams_per_connection: int = _s(
        64, "Most streams one Hrana WebSocket connection holds open (TOO_MANY_STREAMS). 0: no cap.",
        minimum=0, zero="no cap")
    max_cursors_per_connection: int = _s(
        16, "Most cursors one Hrana WebSocket connection holds open (TOO_MANY_CURSORS). 0: no cap.",
        minimum=0, zero="no cap")
    max_held_bytes_per_token: int = _s(
        32 << 20, "Memory the node keeps for one token between Hrana requests: its stored SQL "
        "texts and its cursor entries not yet fetched (HELD_BYTES_LIMIT). 0: no cap.",
        minimum=0, zero="no cap")
    max_held_bytes_per_database: int = _s(
        64 << 20, "The same memory for all tokens of one database (HELD_BYTES_LIMIT). 0: no cap.",
        minimum=0, zero="no cap")
    max_held_bytes: int = _s(
        256 << 20, "The same memory for the whole node (HELD_BYTES_LIMIT). 0: no cap.",
        minimum=0, zero="no cap")
    synchronous: str = _s(
        "full", "SQLite synchronous mode for writes: 'full' (durable on ack) or 'normal'.",
        choices=("full", "normal"))
    readers: int = _s(4, "Reader connections per open database.")
    reader_idle_timeout: float = _s(
        5.0, "Seconds a database's unused reader connections stay open; its writer stays until "
        "idle_timeout (a reader costs about 130 KB of SQLite memory with its page cache, 40 KB "
        "once cache_idle_timeout gave the cache back).")
    cache_idle_timeout: float = _s(
        1.0, "Seconds a database's connections keep SQLite's page cache after its last request; "
        "then the sweeper gives it back (90 KB a connection at least: SQLite sets room for 20 "
        "pages aside at a connection's first read) and the next request reads its pages from the "
        "file again (from the operating system's cache). The schema and the prepared statements "
        "stay. 0: at the first sweep (every 0.25 s) after the request.", minimum=0)
    threads: int = _s(16, "Worker threads running SQLite work off the event loop.", minimum=1)
    max_memory_bytes: int = _s(
        0, "Resident memory past which new requests get 503 OVERLOADED (running ones finish) until "
        "it is under 90 % of it again; 0: 80 % of the machine's memory (or of the container's "
        "limit).")
    threads_per_database: int = _s(
        4, "Most worker threads one database's work holds at once; the rest of its work waits for "
        "them, so another database always finds a thread (the threads serve databases "
        "round-robin).", minimum=1)
    idempotency_ttl: float = _s(86400.0, "Seconds an Idempotency-Key is remembered.")
    metrics: bool = _s(True, "Serve GET /metrics without a token.")
    openapi: bool = _s(True, "Serve GET /openapi.json without a token.")
    # browsers (docs/api.md, "CORS"; shoal/origins.py)
    cors_origins: str = _s(
        "", "Origins (web pages) that may call every database of the node from a browser: CORS "
        "on the native API and Hrana over HTTP, and the Origin check of WebSocket upgrades. "
        "Separated by commas (a TOML array too): https://app.example.com (exactly that origin), "
        "https://*.example.com (its subdomains), '*' (any origin). A database may allow more "
        "(PUT /v1/databases/{db}/cors). Empty: none; clients that are not browsers send no "
        "Origin and are never affected.", items=True)
    cors_max_age: int = _s(
        600, "Seconds a browser may reuse a preflight's answer (Access-Control-Max-Age; "
        "Chromium caps it at 7200). An origin taken off a list may still send requests from "
        "browsers that cached one for this long: revoke its tokens to cut it off at once.",
        minimum=0, maximum=86400)
    # tokens of identity providers (docs/operations.md, "Identity providers"; shoal/identity)
    issuers_file: str | None = _s(
        None, "A JSON file of the identity providers whose tokens (RS256, ES256, EdDSA JWTs) "
        "this node accepts: [{\"issuer\", \"audience\", \"jwks_url\" (https) or "
        "\"jwks_file\", \"databases\": [\"tenant-{org_id}\"], \"access\", \"rules\", "
        "\"branch\", \"leeway\"}]. Read at start; a wrong file stops the start. A database "
        "may trust its own (PUT /v1/databases/{db}/issuers). Unset: none.")
    jwks_ca_file: str | None = _s(
        None, "A PEM file of certificate authorities trusted for reading issuers' keys (JWKS "
        "over HTTPS), besides the usual ones: a private CA.")
    jwks_refresh: float = _s(
        30.0, "Most seconds an issuer's keys (JWKS) are kept before they are read again (less "
        "if its Cache-Control max-age says so): a key the provider removes stops verifying "
        "within about this long. A token naming an unknown key makes them be read at once, "
        "at most every 30 seconds per issuer.", above=0, maximum=50)
    access_log: bool = _s(True, "Write one JSON line per request to stderr.")
    log_level: str = _s(
        "info", "Server log level: debug, info, warning, error.",
        choices=("debug", "info", "warning", "error"))
    http_server: str = _s(
        "uvicorn", "HTTP server: 'uvicorn' (uvloop + httptools) or 'granian' (Rust I/O, "
        "in-process; install the extra: pip install 'shoal[granian]').",
        choices=("uvicorn", "granian"))
    store: str | None = _s(
        None, "Object store holding every commit: file:///path or s3://bucket/prefix. Unset: "
        "file://DATA/store. 'none': a local-only node (no commit log, no shipping, SQLite "
        "auto-checkpoint on; restore, history and branches other than main answer "
        "HISTORY_DISABLED).")
    s3_endpoint: str | None = _s(
        None, "Endpoint URL of a non-AWS S3 service (MinIO, R2, GCS, Ceph); credentials and region "
        "come from the AWS_* variables.")
    durability: str = _s(
        "local", "'local': acknowledge after the local fsync, ship within sync_interval; 'remote': "
        "acknowledge once the commit is in the object store.", choices=("local", "remote"))
    sync_interval: float = _s(
        1.0, "Seconds within which a commit reaches the object store (local durability).")
    storage_timeout: float = _s(
        30.0, "Seconds a write waits for the object store (remote durability) before "
        "STORAGE_UNAVAILABLE.")
    max_unshipped_bytes: int = _s(
        256 << 20, "Page bytes of a branch's commits that may wait for the object store (committed "
        "on this node, not yet shipped); past it, writes to the branch get STORAGE_UNAVAILABLE "
        "until the store catches up. 0: no limit.")
    lease_ttl: float = _s(
        15.0, "Seconds the object store's lease (one writing node per store) outlives its last "
        "renewal; renewed every quarter of it. A node that dies frees the store after this long; "
        "one that cannot renew refuses writes after three quarters of it.", above=0)
    lease_wait: float = _s(
        60.0, "Seconds a starting node waits for another node's lease on the same store to be "
        "released or to lapse before it gives up (STORE_IN_USE).", minimum=0)
    advertise_url: str = _s(
        "", "The URL the other nodes of a cluster reach this node at (http://host:port). Set, the "
        "node joins the cluster of nodes sharing its store: each database is led by one of them "
        "and any node serves any request (docs/operations.md, 'Several nodes'). Unset on a store "
        "a cluster uses: the node does not start (STORE_IN_USE).")
    replica_sync_interval: float = _s(
        0.05, "Seconds within which a commit reaches the object store (local durability) while "
        "another node follows the branch with a replica: replicas see only what is in the "
        "store, so this bounds their lag. Each upload is a PUT: a branch written without pause "
        "costs up to 1 / this PUTs a second while followed (sync_interval otherwise).",
        above=0)
    bookmark_wait: float = _s(
        1.0, "Seconds a cluster's node waits for its replica of a database to reach the bookmark "
        "a read carries (Shoal-Bookmark) before it forwards the read to the database's leader.",
        minimum=0)
    capture_changes: bool = _s(
        True, "Capture every commit's row changes (the change feed) with its log entry in the "
        "object store. Off: no feed; commits cost a little less.")
    feed_sync: str = _s(
        "os", "When a commit's row changes are synced to the branch's spool (the change feed's "
        "copy of the commits not yet in the object store): 'os' leaves it to the operating "
        "system (a killed node loses none; a power cut may leave the changes of the commits "
        "not yet in the store unknown, which the feed then says: an 'uncaptured' event); "
        "'commit' syncs them with every commit (none unknown after a power cut either; about "
        "13% fewer durable writes a second on a small machine).", choices=("os", "commit"))
    feed_retention: float = _s(
        7 * 86400.0, "Seconds a branch's row changes stay readable in its change feed. They "
        "live in the history's segments, so the history is kept this long too when it is "
        "longer than history_retention (never shorter: the feed is kept as long as the "
        "history).", minimum=0)
    max_feed_streams: int = _s(
        1000, "Change-feed event streams (Server-Sent Events) this node serves at once; more "
        "are answered 429 TOO_MANY_SUBSCRIPTIONS.", minimum=0)
    max_webhooks: int = _s(
        20, "Webhooks a database may have; more are refused with 409 TOO_MANY_WEBHOOKS.",
        minimum=0)
    webhook_timeout: float = _s(
        10.0, "Seconds a webhook's endpoint has to answer a delivery (connecting included); "
        "later is a failed attempt, retried.", above=0)
    webhook_retry_base: float = _s(
        1.0, "Seconds before a failed webhook delivery's first retry; each retry waits twice "
        "as long as the one before (with jitter: half to all of it), up to "
        "webhook_retry_max.", above=0)
    webhook_retry_max: float = _s(
        3600.0, "Most seconds between two attempts of a webhook delivery.", above=0)
    history_retention: float = _s(
        7 * 86400.0, "Seconds of history kept restorable; older segments and snapshots are deleted "
        "unless a branch needs them.")
    audit_log: bool = _s(
        True, "Keep an audit log: a record per API request (token id, subject, issuer, route, "
        "database, branch, statement kind, rows, status, error code, time; never SQL, "
        "arguments or secrets) in the object store under audit/, kept for "
        "history_retention; GET /v1/audit reads it (docs/operations.md, 'Audit log').")
    audit_buffer: int = _s(
        100_000, "Audit records a node holds in memory while the object store does not take "
        "them; past this the oldest are dropped (shoal_audit_dropped_records_total).",
        minimum=1)
    checkpoint_frames: int = _s(
        4000, "WAL frames (pages) that make a checkpoint due; it runs once they are in the object "
        "store, holding writers back for one upload.")
    snapshot_interval: float = _s(
        3600.0, "Most seconds between snapshots of a branch that has new commits.")
    snapshot_log_bytes: int = _s(
        16 << 20, "Snapshot a branch once this many bytes of log follow its last snapshot (and "
        "snapshot_log_ratio x the database size).")
    snapshot_log_ratio: float = _s(
        0.5, "Log since the last snapshot, as a fraction of the database size, that makes a "
        "snapshot due.")
    compact_min_segments: int = _s(
        8, "Compaction (every 10 minutes) merges runs of at least this many consecutive small "
        "segments of a branch's log into one, so a restore downloads few objects; the small ones "
        "are deleted an hour later. 0: compaction off.")

    def __post_init__(self) -> None:
        for s in SETTINGS:
            _check(s, getattr(self, s.name))
        if 0 < self.database_size_limit < 65536:
            raise SettingsError("database_size_limit must be 0 or at least 65536")
        if self.advertise_url and not re.fullmatch(r"https?://[^/\s?#]+/?", self.advertise_url):
            raise SettingsError("advertise_url must be http://host:port (no path): the URL the "
                                f"other nodes reach this one at, got {self.advertise_url!r}")
        try:
            origins.parse(self.cors_origins)
        except ValueError as exc:
            raise SettingsError(f"cors_origins: {exc}") from None
        if self.issuers_file:  # a wrong file stops the start, as a wrong setting does
            from shoal.identity import IssuerError, load_issuers_file
            try:
                load_issuers_file(self.issuers_file)
            except IssuerError as exc:
                raise SettingsError(f"issuers_file: {exc}") from None
        if self.advertise_url and self.local_only:
            raise SettingsError("advertise_url needs an object store: the nodes of a cluster "
                                "share one (store = \"none\" keeps everything on this node)")
        if self.workers > 1:
            _check_workers(self)
        if self.http_server == "granian" and importlib.util.find_spec("granian") is None:
            raise SettingsError("http_server = 'granian' needs the granian extra: "
                                "pip install 'shoal[granian]'")

    @property
    def data_dir(self) -> Path:
        return Path(self.data).resolve()

    @property
    def local_only(self) -> bool:
        """store = "none": no object store, no commit log; the data directory is the truth."""
        return str(self.store or "").strip().lower() == "none"

    @property
    def store_url(self) -> str:
        """The object store: the ``store`` setting, else a folder inside the data directory."""
        return self.store or (self.data_dir / "store").as_uri()

    def public(self) -> dict[str, Any]:
        """Values safe to log or show: secrets masked."""
        return {s.name: ("***" if s.secret and getattr(self, s.name) else getattr(self, s.name))
                for s in SETTINGS}


def _check_workers(settings: Settings) -> None:
    """workers > 1 makes a cluster of this machine's nodes on its own: refuse what it
    cannot honour."""
    if settings.advertise_url:
        raise SettingsError("workers above 1 cannot take advertise_url: each worker advertises "
                            "its own loopback URL to the others of this machine; to join nodes "
                            "of several machines, run one node per machine with advertise_url")
    if settings.local_only:
        raise SettingsError("workers above 1 needs an object store: the workers share one "
                            "(store = \"none\" keeps everything in one node's directory)")
    if settings.http_server == "granian":
        raise SettingsError("workers above 1 needs http_server = 'uvicorn': granian's embedded "
                            "server binds one address itself, and each worker listens on two "
                            "(the public port and its own loopback port)")


def _base(annotation: Any) -> type:
    """str for ``str | None``, int for ``int``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) and len(args) == 1:
        return typing.cast(type, args[0])
    return typing.cast(type, annotation)


def _declared() -> tuple[Setting, ...]:
    hints = typing.get_type_hints(Settings)
    return tuple(Setting(f.name, _base(hints[f.name]), f.default, **f.metadata)
                 for f in dataclasses.fields(Settings))


SETTINGS: tuple[Setting, ...] = _declared()
BY_NAME = {s.name: s for s in SETTINGS}


def _check(s: Setting, value: Any) -> None:
    if value is None:
        if s.default is not None:
            raise SettingsError(f"{s.name} must be set")
        return
    right = isinstance(value, s.type) and (s.type is bool or not isinstance(value, bool))
    if not right and not (s.type is float and type(value) is int):
        raise SettingsError(f"{s.name} must be {s.type.__name__}, got {value!r}")
    if s.choices and value not in s.choices:
        raise SettingsError(f"{s.name} must be one of {', '.join(map(repr, s.choices))}, "
                            f"got {value!r}")
    zero = f" (0: {s.zero})" if s.zero else ""
    if s.minimum is not None and value < s.minimum:
        raise SettingsError(f"{s.name} must be at least {s.minimum:g}{zero}, got {value!r}")
    if s.maximum is not None and value > s.maximum:
        raise SettingsError(f"{s.name} must be at most {s.maximum:g}, got {value!r}")
    if s.above is not None and not value > s.above:
        raise SettingsError(f"{s.name} must be above {s.above:g}, got {value!r}")


def _coerce(setting: Setting, raw: Any, source: str) -> Any:
    if raw is None:
        return None
    want = setting.type
    if isinstance(raw, want) and not (want is int and isinstance(raw, bool)):
        return raw
    if isinstance(raw, str):
        text = raw.strip()
        try:
            if want is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if want is int:
                return int(text)
            if want is float:
                return float(text)
        except ValueError:
            raise SettingsError(
                f"{source}: {setting.name} must be {want.__name__}, got {raw!r}"
            ) from None
        return text
    if want is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if setting.items and isinstance(raw, list | tuple) and all(isinstance(i, str) for i in raw):
        return ", ".join(item.strip() for item in raw)  # a TOML array of strings
    raise SettingsError(f"{source}: {setting.name} must be {want.__name__}, got {raw!r}")


def load(
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Resolve settings: defaults < TOML file < SHOAL_* environment < overrides."""
    env = os.environ if environ is None else environ
    values = {s.name: s.default for s in SETTINGS}
    path = config_file or env.get("SHOAL_CONFIG")
    if path:
        try:
            with open(path, "rb") as fh:
                table = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config file {path}: {exc}") from None
        for key, raw in table.items():
            if key not in BY_NAME:
                raise SettingsError(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(BY_NAME[key], raw, path)
    for s in SETTINGS:
        raw = env.get("SHOAL_" + s.name.upper())
        if raw is not None and raw != "":
            values[s.name] = _coerce(s, raw, "SHOAL_" + s.name.upper())
    for key, raw in (overrides or {}).items():
        if key not in BY_NAME:
            raise SettingsError(f"unknown setting {key!r}")
        if raw is not None:
            values[key] = _coerce(BY_NAME[key], raw, "--" + key.replace("_", "-"))
    return Settings(**values)
