"""What a query answers, as Python: a :class:`Result` per statement, one :class:`Meta`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
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
