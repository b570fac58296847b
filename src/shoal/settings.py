"""Every server setting, declared once as data.

The same table feeds the TOML loader, the ``SHOAL_<NAME>`` environment
variables, ``shoal serve --help`` and ``docs/operations.md``. Precedence, lowest
first: default, TOML file, environment, command-line flag.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Setting:
    name: str
    type: type
    default: Any
    help: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("host", str, "127.0.0.1", "Address to listen on."),
    Setting("port", int, 8080, "TCP port to listen on."),
    Setting("data", str, "./shoal-data", "Data directory: catalog, databases, keys."),
    Setting("disk_reserve_bytes", int, 64 << 20,
            "Space kept allocated in DATA/reserve and released when the disk fills, so "
            "that recovery can still write; writes then get DISK_FULL until twice this "
            "much is free, and resume by themselves (a node without its reserve starts "
            "read-only with less). 0: no reserve."),
    Setting(
        "admin_token", str, None,
        "Admin bearer token. Unset: one is generated on first start into DATA/admin-token.",
        secret=True,
    ),
    Setting("idle_timeout", float, 60.0, "Seconds without requests before a database is closed."),
    Setting("max_open", int, 1000, "Most databases open at once; least recently used close first."),
    Setting("transaction_timeout", float, 10.0,
            "Seconds an interactive transaction may sit idle before it is rolled back."),
    Setting("transaction_max_age", float, 60.0,
            "Seconds an interactive transaction may stay open in all, busy or not, before it "
            "is rolled back (an open read snapshot keeps the WAL from being checkpointed)."),
    Setting("max_transactions", int, 64,
            "Most interactive transactions open at once on one database "
            "(TOO_MANY_TRANSACTIONS past it)."),
    Setting("max_transactions_per_token", int, 16,
            "Most interactive transactions one token holds open at once, over every "
            "database (TOO_MANY_TRANSACTIONS past it)."),
    # per-database quotas (engine/quota.py): the defaults of databases without their own
    Setting("database_size_limit", int, 0,
            "Bytes each branch of a database may hold unless the database has its own "
            "size_bytes limit (507 DATABASE_FULL past it). 0: no limit."),
    Setting("database_rows_read_limit", int, 0,
            "Rows a database may read per period unless it has its own rows_read limit "
            "(429 QUOTA_EXCEEDED). 0: no limit."),
    Setting("database_rows_written_limit", int, 0,
            "Rows a database may write per period unless it has its own rows_written limit "
            "(429 QUOTA_EXCEEDED). 0: no limit."),
    Setting("database_queries_per_second", float, 0.0,
            "Queries a database may run per second unless it has its own "
            "queries_per_second limit (429 RATE_LIMITED). 0: no limit."),
    Setting("quota_period", int, 86400,
            "Seconds of a row-limit period unless the database has its own period; periods "
            "start at multiples of it since the Unix epoch (UTC midnight for a day)."),
    Setting("busy_timeout", float, 5.0,
            "Seconds a write waits for the database's write lock before DATABASE_BUSY."),
    Setting("statement_timeout", float, 5.0,
            "Seconds one statement may run before STATEMENT_TIMEOUT."),
    Setting("max_request_bytes", int, 8 * 1024 * 1024, "Largest accepted request body."),
    Setting("max_response_bytes", int, 10 * 1000 * 1000,
            "Largest result a request may return, counted as the JSON bytes of its rows and "
            "column names."),
    Setting("max_sql_bytes", int, 256 * 1024,
            "Longest SQL text of one statement (SQLite's SQLITE_LIMIT_SQL_LENGTH); longer is "
            "SQLITE_TOOBIG. Preparing a statement cannot be interrupted and can grow with "
            "the square of its length: at 256 KiB, about 0.4 s."),
    Setting("max_value_bytes", int, 2 * 1024 * 1024,
            "Largest string, blob or row SQLite may build or read (SQLITE_LIMIT_LENGTH); "
            "larger is SQLITE_TOOBIG. One function call cannot be interrupted, so its work "
            "is bounded by this size, not by statement_timeout."),
    Setting("soft_heap_limit", int, 256 << 20,
            "Bytes of SQLite memory (all databases of the node) past which SQLite gives back "
            "cache memory before it allocates more. 0: no limit."),
    Setting("hard_heap_limit", int, 1 << 30,
            "Bytes of SQLite memory (all databases of the node) that it never passes: the "
            "statement whose allocation would pass it gets OUT_OF_MEMORY (503), and the node "
            "keeps running. 0: no limit."),
    Setting("max_statements", int, 100_000,
            "Most statements in one request (a native request's statements; a Hrana "
            "pipeline's requests, batch's steps or script's statements): a guard against "
            "absurd counts, refused before they are decoded. A request's bytes "
            "(max_request_bytes) bound ordinary ones: libSQL clients send batches of "
            "thousands of statements."),
    # connections (docs/operations.md, "Limits that protect the node")
    Setting("max_connections", int, 4096,
            "Most client connections open at once (never above half the process's file "
            "descriptor limit). At the cap a new connection takes the place of the one "
            "that has waited longest for its request; with none waiting it is refused "
            "(503 TOO_MANY_CONNECTIONS). 0: half the descriptor limit."),
    Setting("max_connections_per_client", int, 1024,
            "Most connections open at once from one client address (503 "
            "TOO_MANY_CONNECTIONS). Behind a proxy every client has the proxy's address: "
            "raise it or set 0 (no cap) and let the proxy cap clients."),
    Setting("header_timeout", float, 10.0,
            "Seconds a request's line and headers may take to arrive, from the connection's "
            "start or the request's first byte (408 REQUEST_TIMEOUT, then closed)."),
    Setting("body_timeout", float, 30.0,
            "Seconds a request's body may take to arrive after its headers (408 "
            "REQUEST_TIMEOUT, then closed): an 8 MiB body needs 280 KB/s."),
    Setting("max_header_bytes", int, 64 * 1024,
            "Largest request line and headers (431 HEADERS_TOO_LARGE, then closed)."),
    # Hrana (docs/hrana.md, "Limits")
    Setting("hello_timeout", float, 10.0,
            "Seconds a Hrana WebSocket may stay open without a hello (closed, code 1008)."),
    Setting("websocket_idle_timeout", float, 300.0,
            "Seconds a Hrana WebSocket may stay open without a message while none of its "
            "requests runs (closed, code 1001)."),
    Setting("max_streams", int, 4096,
            "Most Hrana streams open on the node at once, HTTP and WebSocket "
            "(TOO_MANY_STREAMS). An HTTP stream counts from the pipeline that opens it, "
            "unless that pipeline closes it, until closed or expired. 0: no cap."),
    Setting("max_streams_per_token", int, 128,
            "Most Hrana streams one token holds open at once (TOO_MANY_STREAMS). 0: no cap."),
    Setting("max_streams_per_database", int, 256,
            "Most Hrana streams open on one database at once (TOO_MANY_STREAMS). 0: no cap."),
    Setting("max_streams_per_connection", int, 64,
            "Most streams one Hrana WebSocket connection holds open (TOO_MANY_STREAMS). "
            "0: no cap."),
    Setting("max_cursors_per_connection", int, 16,
            "Most cursors one Hrana WebSocket connection holds open (TOO_MANY_CURSORS). "
            "0: no cap."),
    Setting("max_held_bytes_per_token", int, 32 << 20,
            "Memory the node keeps for one token between Hrana requests: its stored SQL "
            "texts and its cursor entries not yet fetched (HELD_BYTES_LIMIT). 0: no cap."),
    Setting("max_held_bytes_per_database", int, 64 << 20,
            "The same memory for all tokens of one database (HELD_BYTES_LIMIT). 0: no cap."),
    Setting("max_held_bytes", int, 256 << 20,
            "The same memory for the whole node (HELD_BYTES_LIMIT). 0: no cap."),
    Setting("synchronous", str, "full",
            "SQLite synchronous mode for writes: 'full' (durable on ack) or 'normal'."),
    Setting("readers", int, 4, "Reader connections per open database."),
    Setting("reader_idle_timeout", float, 5.0,
            "Seconds a database's unused reader connections stay open; its writer stays "
            "until idle_timeout (a reader costs ~150 KB of SQLite memory)."),
    Setting("threads", int, 16, "Worker threads running SQLite work off the event loop."),
    Setting("max_memory_bytes", int, 0,
            "Resident memory past which new requests get 503 OVERLOADED (running ones "
            "finish) until it is under 90 % of it again; 0: 80 % of the machine's memory "
            "(or of the container's limit)."),
    Setting("threads_per_database", int, 4,
            "Most worker threads one database's work holds at once; the rest of its work "
            "waits for them, so another database always finds a thread (the threads serve "
            "databases round-robin)."),
    Setting("idempotency_ttl", float, 86400.0, "Seconds an Idempotency-Key is remembered."),
    Setting("metrics", bool, True, "Serve GET /metrics without a token."),
    Setting("openapi", bool, True, "Serve GET /openapi.json without a token."),
    Setting("access_log", bool, True, "Write one JSON line per request to stderr."),
    Setting("log_level", str, "info", "Server log level: debug, info, warning, error."),
    Setting("http_server", str, "uvicorn",
            "HTTP server: 'uvicorn' (uvloop + httptools) or 'granian' (Rust I/O, in-process)."),
    Setting("store", str, None,
            "Object store holding every commit: file:///path or s3://bucket/prefix. "
            "Unset: file://DATA/store. 'none': a local-only node (no commit log, no "
            "shipping, SQLite auto-checkpoint on; restore, history and branches other "
            "than main answer HISTORY_DISABLED)."),
    Setting("s3_endpoint", str, None,
            "Endpoint URL of a non-AWS S3 service (MinIO, R2, GCS, Ceph); credentials and "
            "region come from the AWS_* variables."),
    Setting("durability", str, "local",
            "'local': acknowledge after the local fsync, ship within sync_interval; "
            "'remote': acknowledge once the commit is in the object store."),
    Setting("sync_interval", float, 1.0,
            "Seconds within which a commit reaches the object store (local durability)."),
    Setting("storage_timeout", float, 30.0,
            "Seconds a write waits for the object store (remote durability) before "
            "STORAGE_UNAVAILABLE."),
    Setting("max_unshipped_bytes", int, 256 << 20,
            "Page bytes of a branch's commits that may wait for the object store (committed "
            "on this node, not yet shipped); past it, writes to the branch get "
            "STORAGE_UNAVAILABLE until the store catches up. 0: no limit."),
    Setting("lease_ttl", float, 15.0,
            "Seconds the object store's lease (one writing node per store) outlives its last "
            "renewal; renewed every quarter of it. A node that dies frees the store after "
            "this long; one that cannot renew refuses writes after three quarters of it."),
    Setting("lease_wait", float, 60.0,
            "Seconds a starting node waits for another node's lease on the same store to be "
            "released or to lapse before it gives up (STORE_IN_USE)."),
    Setting("history_retention", float, 7 * 86400.0,
            "Seconds of history kept restorable; older segments and snapshots are deleted "
            "unless a branch needs them."),
    Setting("checkpoint_frames", int, 4000,
            "WAL frames (pages) that make a checkpoint due; it runs once they are in the "
            "object store, holding writers back for one upload."),
    Setting("snapshot_interval", float, 3600.0,
            "Most seconds between snapshots of a branch that has new commits."),
    Setting("snapshot_log_bytes", int, 16 << 20,
            "Snapshot a branch once this many bytes of log follow its last snapshot "
            "(and snapshot_log_ratio x the database size)."),
    Setting("snapshot_log_ratio", float, 0.5,
            "Log since the last snapshot, as a fraction of the database size, that makes "
            "a snapshot due."),
    Setting("compact_min_segments", int, 8,
            "Compaction (every 10 minutes) merges runs of at least this many consecutive "
            "small segments of a branch's log into one, so a restore downloads few "
            "objects; the small ones are deleted an hour later. 0: compaction off."),
)

BY_NAME = {s.name: s for s in SETTINGS}
_POSITIVE = ("header_timeout", "body_timeout", "max_header_bytes", "hello_timeout",
             "websocket_idle_timeout")
_CAPS = ("max_connections", "max_connections_per_client", "max_streams",
         "max_streams_per_token", "max_streams_per_database", "max_streams_per_connection",
         "max_cursors_per_connection", "max_held_bytes_per_token",
         "max_held_bytes_per_database", "max_held_bytes")


class SettingsError(ValueError):
    """A setting could not be read or has the wrong type."""


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
    raise SettingsError(f"{source}: {setting.name} must be {want.__name__}, got {raw!r}")


@dataclass
class Settings:
    """Resolved settings; attribute access by setting name."""

    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def data_dir(self) -> Path:
        return Path(self.values["data"]).resolve()

    @property
    def local_only(self) -> bool:
        """store = "none": no object store, no commit log; the data directory is the truth."""
        return str(self.values.get("store") or "").strip().lower() == "none"

    @property
    def store_url(self) -> str:
        """The object store: the ``store`` setting, else a folder inside the data directory."""
        return self.values.get("store") or (self.data_dir / "store").as_uri()

    def public(self) -> dict[str, Any]:
        """Values safe to log or show: secrets masked."""
        return {
            s.name: ("***" if s.secret and self.values[s.name] else self.values[s.name])
            for s in SETTINGS
        }


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
    if values["http_server"] not in ("uvicorn", "granian"):
        raise SettingsError("http_server must be 'uvicorn' or 'granian'")
    if values["synchronous"] not in ("full", "normal"):
        raise SettingsError("synchronous must be 'full' or 'normal'")
    if values["durability"] not in ("local", "remote"):
        raise SettingsError("durability must be 'local' or 'remote'")
    for name in ("threads", "threads_per_database", "max_transactions",
                 "max_transactions_per_token"):
        if values[name] < 1:
            raise SettingsError(f"{name} must be at least 1")
    if not values["lease_ttl"] > 0 or not values["lease_wait"] >= 0:
        raise SettingsError("lease_ttl must be above 0 and lease_wait at least 0")
    if values["disk_reserve_bytes"] < 0:
        raise SettingsError("disk_reserve_bytes must be at least 0")
    for name in _POSITIVE:
        if not values[name] > 0:
            raise SettingsError(f"{name} must be above 0")
    for name in _CAPS:
        if values[name] < 0:
            raise SettingsError(f"{name} must be at least 0 (0: no cap)")
    for name in ("max_sql_bytes", "max_value_bytes"):
        if values[name] < 1024:
            raise SettingsError(f"{name} must be at least 1024")
    for name in ("soft_heap_limit", "hard_heap_limit", "database_size_limit",
                 "database_rows_read_limit", "database_rows_written_limit",
                 "database_queries_per_second"):
        if values[name] < 0:
            raise SettingsError(f"{name} must be at least 0 (0: no limit)")
    if 0 < values["database_size_limit"] < 65536:
        raise SettingsError("database_size_limit must be 0 or at least 65536")
    if values["quota_period"] < 1:
        raise SettingsError("quota_period must be at least 1")
    return Settings(values)
