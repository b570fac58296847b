"""Regenerate the tables in docs/ that come from code: settings and error codes.

``python -m shoal.docgen`` rewrites the blocks between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->``; a unit test fails when a block is out of date, so the docs
cannot drift from ``settings.SETTINGS`` and ``errors.Code``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from shoal.errors import Code
from shoal.settings import SETTINGS, Setting

DOCS = Path(__file__).resolve().parents[2] / "docs"


def settings_table() -> str:
    rows = ["| setting | env | type | default | meaning |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        default = "(generated)" if s.secret else f"`{s.default}`"
        kind = "list" if s.items else s.type.__name__  # (a str of items, comma-separated)
        rows.append(f"| `{s.name}` | `SHOAL_{s.name.upper()}` | {kind} | "
                    f"{default} | {s.help}{_allowed(s)} |")
    return "\n".join(rows)


def _allowed(s: Setting) -> str:
    """The values a setting accepts, as the loader checks them."""
    if s.choices:
        return " One of " + ", ".join(f"`{c}`" for c in s.choices) + "."
    if s.minimum is not None and s.maximum is not None:
        return f" From {s.minimum:g} to {s.maximum:g}."
    if s.minimum is not None:
        return f" At least {s.minimum:g}."
    if s.above is not None:
        return f" Above {s.above:g}."
    return ""


def _grouped(codes: list[Code], text: Callable[[Code], str]) -> list[str]:
    """One row per status and text (by status), naming every code that shares them."""
    groups: dict[tuple[int, str], list[Code]] = {}
    for code in codes:
        groups.setdefault((code.status, text(code)), []).append(code)
    return [f"| {', '.join(f'`{c}`' for c in group)} | {status} | {what} |"
            for (status, what), group in sorted(groups.items(), key=lambda g: g[0][0])]


SQLITE_TEXT = ("An SQLite error, by primary result code name; `extended_code` holds the "
               "extended name.")
HRANA_TEXT = "Hrana (libSQL clients) only: docs/hrana.md says when and what to do."


def errors_table() -> str:
    """Every code Shoal sends: the native API's one by one, SQLite's and Hrana's grouped."""
    rows = ["| code | HTTP | when / what to do |", "|---|---|---|"]
    rows += [f"| `{c}` | {c.status} | {c.hint} |" for c in Code if not c.sqlite and not c.hrana]
    rows += _grouped([c for c in Code if c.sqlite], lambda c: c.hint or SQLITE_TEXT)
    rows += _grouped([c for c in Code if c.hrana], lambda c: HRANA_TEXT)
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
