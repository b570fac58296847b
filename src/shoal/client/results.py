"""What the server answers, as Python: a :class:`Result` per statement, one :class:`Meta`;
a :class:`Change` per event of the change feed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shoal.client.codec import decode_row, from_json, to_json
from shoal.wire import SQLValue


@dataclass(frozen=True, slots=True)
class Meta:
    """Per-request facts: rows metered, time spent, and the commit it saw or made."""

    rows_read: int = 0
    rows_written: int = 0
    duration_ms: float = 0.0
    txid: int | None = None
    bookmark: str | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """One statement's result; rows hold Python values (bytes for blobs, int for big ints)."""

    columns: list[str]
    decltypes: list[str | None]
    rows: list[tuple[SQLValue, ...]]
    rows_affected: int
    last_insert_rowid: int | None
    meta: Meta = field(default_factory=Meta)

    @property
    def txid(self) -> int | None:
        return self.meta.txid

    @property
    def bookmark(self) -> str | None:
        return self.meta.bookmark

    def __iter__(self) -> Iterator[tuple[SQLValue, ...]]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def to_json(self) -> dict[str, Any]:
        """The API's JSON shape again (values re-encoded), e.g. for ``--json`` output."""
        return {
            "columns": self.columns,
            "decltypes": self.decltypes,
            "rows": [[to_json(v) for v in row] for row in self.rows],
            "rows_affected": self.rows_affected,
            "last_insert_rowid": to_json(self.last_insert_rowid),
        }


def parse_results(data: Any) -> list[Result]:
    """A query response body as Results sharing one Meta."""
    m = data.get("meta") or {}
    meta = Meta(m.get("rows_read", 0), m.get("rows_written", 0), m.get("duration_ms", 0.0),
                m.get("txid"), m.get("bookmark"))
    return [
        Result(r["columns"], r["decltypes"], [decode_row(row) for row in r["rows"]],
               r["rows_affected"], from_json(r.get("last_insert_rowid")),  # type: ignore[arg-type]
               meta)
        for r in data["results"]
    ]


UNCAPTURED = "uncaptured"  # the op of a run of commits whose changes are unknown


@dataclass(frozen=True, slots=True)
class Change:
    """One event of a branch's change feed: a row's net change in a commit, values as
    Python (bytes for blobs, int for big ints), ``at`` the commit's time (UTC).

    ``op`` "uncaptured" is a run of commits, txids ``from_txid`` to ``txid``, whose
    changes are unknown (``table``, ``key``, ``new`` and ``old`` are None): whatever was
    derived from the feed may have missed something there. ``cursor`` is where the event
    stands: a feed started from it gives what follows, and it is a bookmark of the branch
    (``remember`` it, or read with it, to see at least the state after its commit).
    """

    cursor: str
    txid: int
    at: datetime
    table: str | None
    op: str
    key: tuple[SQLValue, ...] | None
    new: dict[str, SQLValue] | None
    old: dict[str, SQLValue] | None
    from_txid: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The API's JSON shape again (values re-encoded), e.g. for ``--json`` output."""
        out: dict[str, Any] = {"cursor": self.cursor, "txid": self.txid,
                               "at": self.at.isoformat(timespec="milliseconds")
                               .replace("+00:00", "Z")}
        if self.op == UNCAPTURED:
            return out | {"op": self.op, "from_txid": self.from_txid}
        return out | {"table": self.table, "op": self.op,
                      "key": None if self.key is None else [to_json(v) for v in self.key],
                      "new": _row_json(self.new), "old": _row_json(self.old)}


@dataclass(frozen=True, slots=True)
class ChangesPage:
    """One page of the feed: its events, and the cursor the next page starts from (past
    every change the page read, those its filters left out included)."""

    changes: list[Change]
    cursor: str


def _row(data: dict[str, Any] | None) -> dict[str, SQLValue] | None:
    if data is None:
        return None
    return {k: from_json(v) if type(v) is dict else v for k, v in data.items()}


def _row_json(row: dict[str, SQLValue] | None) -> dict[str, Any] | None:
    return None if row is None else {k: to_json(v) for k, v in row.items()}


def parse_change(data: dict[str, Any]) -> Change:
    """One event of a page, decoded."""
    at = datetime.fromisoformat(data["at"])
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    key = data.get("key")
    return Change(data["cursor"], data["txid"], at.astimezone(UTC), data.get("table"),
                  data["op"], None if key is None else decode_row(key), _row(data.get("new")),
                  _row(data.get("old")), data.get("from_txid"))


def parse_changes_page(data: Any) -> ChangesPage:
    """A changes response body."""
    return ChangesPage([parse_change(c) for c in data["changes"]], data["cursor"])
