"""Per-database limits (quotas) set by the node's admin, and the metering that enforces them.

A database's limits are its operator's cost control: its size, the rows it may read and
write per period, the queries it may run per second, and its open transactions. Each is
the database's own value if it has one, else the node's default (settings ``database_*``);
0 is no limit. Counting is per database name (every branch counts), in memory on the
request path, and saved with the usage counters (so a period's counts survive a restart).

Over a limit only that database is refused, with a stable code, the limit, what was used
and when it resets: rows and queries ``429`` (``QUOTA_EXCEEDED``, ``RATE_LIMITED``), size
``507`` (``DATABASE_FULL``, enforced by SQLite's ``max_page_count`` on the writer, so that
one statement cannot write past it). A request that starts under a row limit runs to its
end: the counts may pass the limit by what one request reads or writes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from shoal.errors import Code, ShoalError
from shoal.metrics import METRICS


class DatabaseLimits(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A database's own limits: None takes the node's default, 0 is no limit."""

    size_bytes: int | None = None
    rows_read: int | None = None  # per period
    rows_written: int | None = None  # per period
    period: int | None = None  # seconds
    queries_per_second: float | None = None
    transactions: int | None = None

    def check(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if value is not None and (value < 0 or not math.isfinite(value)):
                raise ShoalError(Code.INVALID_REQUEST, f"limit {name} must be at least 0 "
                                                       f"(0: no limit; null: the node's default)")
        if self.period == 0:
            raise ShoalError(Code.INVALID_REQUEST, "period must be at least 1 second")
        if self.size_bytes is not None and 0 < self.size_bytes < MIN_SIZE:
            raise ShoalError(Code.INVALID_REQUEST, f"size_bytes must be 0 or at least {MIN_SIZE}")


MIN_SIZE = 64 * 1024  # a database holding Shoal's own tables needs a few pages
_decoder = msgspec.json.Decoder(DatabaseLimits)


def decode_limits(body: bytes | str | dict[str, Any] | None) -> DatabaseLimits:
    """DatabaseLimits from a request body or a stored record (INVALID_REQUEST if malformed)."""
    try:
        if body is None:
            return DatabaseLimits()
        limits = msgspec.convert(body, DatabaseLimits) if isinstance(body, dict) \
            else _decoder.decode(body)
    except msgspec.DecodeError as exc:  # a ValidationError is one too
        raise ShoalError(Code.INVALID_REQUEST, f"limits: {exc}") from None
    limits.check()
    return limits


def encode_limits(limits: DatabaseLimits) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(limits)
    return out


@dataclass(frozen=True, slots=True)
class Effective:
    """The limits in force for one database (the node's defaults filled in; 0: none)."""

    size_bytes: int
    rows_read: int
    rows_written: int
    period: int
    queries_per_second: float
    transactions: int

    @property
    def metered(self) -> bool:
        return bool(self.rows_read or self.rows_written or self.queries_per_second)

    def as_dict(self) -> dict[str, Any]:
        return {"size_bytes": self.size_bytes, "rows_read": self.rows_read,
                "rows_written": self.rows_written, "period": self.period,
                "queries_per_second": self.queries_per_second,
                "transactions": self.transactions}


@dataclass(slots=True)
class Window:
    """A database's counts in the current period (periods start at multiples of its length
    since the Unix epoch, so every node agrees where one ends)."""

    start: float
    rows_read: int = 0
    rows_written: int = 0


@dataclass(slots=True)
class _Bucket:
    """A token bucket for queries per second: holds up to one second's worth."""

    tokens: float
    at: float


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")


class Quotas:
    """The node's per-database limits and their meters (event loop only)."""

    def __init__(self, defaults: DatabaseLimits, max_transactions: int,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.defaults = defaults
        self.max_transactions = max_transactions
        self.clock = clock  # periods: wall time
        self.monotonic = monotonic  # the rate bucket
        self.own: dict[str, DatabaseLimits] = {}  # databases with limits of their own
        self.windows: dict[str, Window] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._effective: dict[str, Effective] = {}
        self.limited = self._any_default()

    def _any_default(self) -> bool:
        d = self.defaults
        return bool(d.rows_read or d.rows_written or d.queries_per_second)

    # -- limits -----------------------------------------------------------------------------
    def set(self, name: str, limits: DatabaseLimits) -> Effective:
        if limits == DatabaseLimits():
            self.own.pop(name, None)
        else:
            self.own[name] = limits
        self._effective.pop(name, None)
        self._buckets.pop(name, None)
        return self.of(name)

    def forget(self, name: str) -> None:
        """The database is gone: its limits and counts go with it."""
        for table in (self.own, self.windows, self._buckets, self._effective):
            table.pop(name, None)

    def of(self, name: str) -> Effective:
        found = self._effective.get(name)
        if found is not None:
            return found
        own, d = self.own.get(name, DatabaseLimits()), self.defaults

        def pick(field: str) -> Any:
            value = getattr(own, field)
            return getattr(d, field) if value is None else value

        tx = pick("transactions") or self.max_transactions
        found = Effective(int(pick("size_bytes") or 0), int(pick("rows_read") or 0),
                          int(pick("rows_written") or 0), int(pick("period") or 86400),
                          float(pick("queries_per_second") or 0.0),
                          min(int(tx), self.max_transactions))
        self._effective[name] = found
        return found

    # -- metering (the request path) -----------------------------------------------------------
    def window(self, name: str, period: int) -> Window:
        now = self.clock()
        start = now - now % period
        w = self.windows.get(name)
        if w is None or w.start != start:
            if w is not None and w.start > start:  # the clock went back: keep counting
                return w
            w = self.windows[name] = Window(start)
        return w

    def meter(self, name: str, rows_read: int, rows_written: int) -> None:
        if not (self.limited or name in self.own):
            return
        w = self.window(name, self.of(name).period)
        w.rows_read += rows_read
        w.rows_written += rows_written

    def admit(self, name: str, writes: bool = False) -> None:
        """Before a query: RATE_LIMITED or QUOTA_EXCEEDED if the database is over a limit."""
        # The early returns are fast paths: the checks after them find nothing to refuse.
        if not (self.limited or name in self.own):
            return  # mutate: harmless (a fast path)
        limits = self.of(name)
        if not limits.metered:
            return  # mutate: harmless (a fast path)
        if limits.queries_per_second:
            self._take(name, limits.queries_per_second)
        if limits.rows_read or (writes and limits.rows_written):
            w = self.window(name, limits.period)
            if limits.rows_read and w.rows_read >= limits.rows_read:
                raise self._over(name, "rows_read", limits.rows_read, w.rows_read, w, limits)
            if writes:
                self._check_written(name, limits, w)

    def admit_write(self, name: str) -> None:
        """Before a write: QUOTA_EXCEEDED once the period's rows written reached the limit."""
        if not (self.limited or name in self.own):
            return  # mutate: harmless (a fast path)
        limits = self.of(name)
        if limits.rows_written:
            self._check_written(name, limits, self.window(name, limits.period))

    def _check_written(self, name: str, limits: Effective, w: Window) -> None:
        if limits.rows_written and w.rows_written >= limits.rows_written:
            raise self._over(name, "rows_written", limits.rows_written, w.rows_written, w,
                             limits)

    def _take(self, name: str, rate: float) -> None:
        now = self.monotonic()
        burst = max(rate, 1.0)
        b = self._buckets.get(name)
        if b is None:
            b = self._buckets[name] = _Bucket(burst, now)
        b.tokens = min(burst, b.tokens + (now - b.at) * rate)
        b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return
        wait = (1.0 - b.tokens) / rate
        METRICS.quota_refusals.labels("queries_per_second").inc()
        raise ShoalError(Code.RATE_LIMITED,
                         f"database {name!r} is limited to {rate:g} queries per second",
                         limit="queries_per_second", value=rate, retry_after=round(wait, 3),
                         resets_at=iso(self.clock() + wait))

    def _over(self, name: str, limit: str, value: int, used: int, w: Window,
              limits: Effective) -> ShoalError:
        METRICS.quota_refusals.labels(limit).inc()
        resets = w.start + limits.period
        return ShoalError(Code.QUOTA_EXCEEDED,
                          f"database {name!r} used its {limit} limit for this period "
                          f"({used} of {value}); it resets at {iso(resets)}",
                          limit=limit, value=value, used=used, resets_at=iso(resets),
                          retry_after=round(max(0.0, resets - self.clock()), 3))

    def period_of(self, name: str) -> dict[str, Any]:
        """The current period's counts, as usage shows them."""
        limits = self.of(name)
        w = self.windows.get(name)
        now = self.clock()
        start = now - now % limits.period
        read, written = (w.rows_read, w.rows_written) if w is not None and \
            w.start == start else (0, 0)
        return {"start": iso(start), "resets_at": iso(start + limits.period),
                "rows_read": read, "rows_written": written}

    # -- saving ------------------------------------------------------------------------------
    def saved(self) -> dict[str, tuple[float, int, int]]:
        return {n: (w.start, w.rows_read, w.rows_written) for n, w in self.windows.items()}

    def load(self, windows: dict[str, tuple[float, int, int]]) -> None:
        for name, (start, read, written) in windows.items():
            self.windows[name] = Window(start, read, written)
