"""Regenerate the tables in docs/ that come from code: settings and error codes.

``python -m shoal.docgen`` rewrites the blocks between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->``; a unit test fails when a block is out of date, so the docs
cannot drift from ``settings.SETTINGS`` and ``errors.CODES``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from shoal.errors import _SQLITE_STATUS, CODES, SQLITE_HINTS
from shoal.settings import SETTINGS, Setting

DOCS = Path(__file__).resolve().parents[2] / "docs"


def settings_table() -> str:
    rows = ["| setting | env | type | default | meaning |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        default = "(generated)" if s.secret else f"`{s.default}`"
        rows.append(f"| `{s.name}` | `SHOAL_{s.name.upper()}` | {s.type.__name__} | "
                    f"{default} | {s.help}{_allowed(s)} |")
    return "\n".join(rows)


def _allowed(s: Setting) -> str:
    """The values a setting accepts, as the loader checks them."""
    if s.choices:
        return " One of " + ", ".join(f"`{c}`" for c in s.choices) + "."
    if s.minimum is not None:
        return f" At least {s.minimum:g}."
    if s.above is not None:
        return f" Above {s.above:g}."
    return ""


def errors_table() -> str:
    rows = ["| code | HTTP | when / what to do |", "|---|---|---|"]
    for code, (status, hint) in CODES.items():
        rows.append(f"| `{code}` | {status} | {hint} |")
    rows.append("| `SQLITE_*` (e.g. `SQLITE_CONSTRAINT`) | 400 unless below | An SQLite error, "
                "by primary result code name; `extended_code` holds the extended name. |")
    for code, status in _SQLITE_STATUS.items():
        hint = SQLITE_HINTS.get(code, "SQLite error of this class.")
        rows.append(f"| `{code}` | {status} | {hint} |")
    return "\n".join(rows)


BLOCKS: dict[str, dict[str, Callable[[], str]]] = {
    "operations.md": {"settings": settings_table},
    "api.md": {"errors": errors_table},
}


def render(text: str, blocks: dict[str, Callable[[], str]]) -> str:
    for name, fn in blocks.items():
        begin, end = f"<!-- {name}:begin -->\n", f"<!-- {name}:end -->"
        head, found, rest = text.partition(begin)
        if not found:
            raise ValueError(f"marker {begin.strip()} missing")
        tail = rest.partition(end)[2]
        text = head + begin + fn() + "\n" + end + tail
    return text


def stale() -> list[str]:
    """Doc files whose generated blocks differ from the code."""
    out = []
    for fname, blocks in BLOCKS.items():
        text = (DOCS / fname).read_text()
        if render(text, blocks) != text:
            out.append(fname)
    return out


def main() -> None:
    for fname, blocks in BLOCKS.items():
        path = DOCS / fname
        path.write_text(render(path.read_text(), blocks))
    print("docs regenerated", file=sys.stderr)


if __name__ == "__main__":
    main()
